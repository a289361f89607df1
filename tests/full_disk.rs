//! A full disk under a running host: enqueues are refused as unavailable
//! (503, with the cause), jobs that finish meanwhile keep their completion
//! (written once there is room, never run again), and a host started on a
//! full disk does not call its database foreign. The data directory is a
//! small tmpfs (mounting needs root: `KILN_TEST_MOUNT=1`).

use crate::support::host::{HostDir, eventually};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs of `size` mounted at `at` while it lives.
pub struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"]).arg(at).status().unwrap();
        assert!(mounted.success(), "cannot mount a tmpfs at {} (KILN_TEST_MOUNT says this machine may)", at.display());
        Self { at: at.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// A host directory whose `data/` is a tmpfs of `size`.
pub fn host_on_tmpfs(config: &str, size: &str) -> (HostDir, Tmpfs) {
    let dir = HostDir::new(config);
    let data = dir.path().join("data");
    // HostDir shares compiled artifacts through data/artifacts; the mount
    // hides that link, so make it again inside.
    let shared = std::fs::read_link(data.join("artifacts")).unwrap();
    let mount = Tmpfs::mount(&data, size);
    std::os::unix::fs::symlink(shared, data.join("artifacts")).unwrap();
    (dir, mount)
}

/// Fills the file system holding `dir` until it has no room left.
pub fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    // Whatever is left, byte by byte.
    while file.write_all(&[0]).is_ok() {}
    let _ = file.sync_all();
    filler
}

#[test]
#[cfg_attr(not(kiln_mount), ignore = "mounts a tmpfs: set KILN_TEST_MOUNT=1 where the tests may mount (root)")]
fn a_full_disk_refuses_enqueues_as_unavailable_and_loses_no_completion() {
    let (dir, _mount) = host_on_tmpfs(
        "lease_ms = 1500\npoll_interval_ms = 100\nshutdown_grace_ms = 2000\n\n[queues.default]\nconcurrency = 4\n",
        "64m",
    );
    let mut host = dir.start();
    // Four slow jobs hold every slot; behind them, jobs whose results need
    // room (echo returns its 900 KB payload) run once the disk is full.
    let mut ids: Vec<i64> = Vec::new();
    for _ in 0..4 {
        ids.push(host.enqueue(json!({"kind": "send-email", "payload": {"to": "a@b.co", "subject": "s", "send_ms": 1500}})));
    }
    let payload = "y".repeat(900_000);
    for _ in 0..8 {
        ids.push(host.enqueue(json!({"kind": "echo", "payload": payload})));
    }
    let filler = fill(&dir.path().join("data"));

    // Enqueues with room-taking payloads: refused as unavailable, with the cause.
    let big = "z".repeat(900_000);
    let mut refused = None;
    for _ in 0..20 {
        let (status, body) = host.post("/jobs", &json!({"kind": "echo", "payload": big}));
        match status {
            201 => ids.push(body["id"].as_i64().unwrap()),
            _ => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("a full disk refused an enqueue");
    assert_eq!(status, 503, "store trouble is 503, not 500: {body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("full") || error.contains("disk"), "the cause is named: {error}");

    // Runs end while there is no room: their ends wait (or their claims
    // do), for longer than a lease, and are not rescued from under the host.
    eventually("the host is waiting for room", || {
        let log = dir.stderr();
        log.contains("cannot write transitions yet") || log.contains("claim failed")
    });
    std::thread::sleep(Duration::from_millis(3000));
    std::fs::remove_file(&filler).unwrap();

    for id in &ids {
        let job = host.wait_for(*id, "completed");
        assert_eq!(job["attempt"], 1, "completed on its first run, never run again: {job}");
        assert!(job["errors"].as_array().unwrap().is_empty(), "{job}");
    }
    assert!(!dir.stderr().contains("not a Kiln database"));

    // Stopped and started again on a full disk: a healthy database is not
    // called foreign, whatever else fails.
    let (status, _) = host.sigterm();
    assert!(status.success());
    let filler = fill(&dir.path().join("data"));
    let mut restarted = dir.command().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = restarted.kill();
    let output = restarted.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!log.contains("not a Kiln database"), "{log}");
    std::fs::remove_file(&filler).unwrap();
    let _host = dir.start();
    let conn = rusqlite::Connection::open(dir.database()).unwrap();
    let completed: i64 = conn.query_row("SELECT count(*) FROM jobs WHERE state = 'completed'", [], |r| r.get(0)).unwrap();
    assert_eq!(completed as usize, ids.len(), "nothing was lost");
}
