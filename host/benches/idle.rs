//! An idle host: the real `kiln serve` with the example plugins and no
//! jobs, its CPU (share of one core), bytes read per second and open file
//! descriptors; and the same host with a refused plugin directory dropped
//! into its watched plugins directory (which once made it re-validate
//! the plugin 30–46 times a second, for ever).
//!
//! Run: `cargo bench --bench idle` (add `-- --quick` for a short run).
//! Variants alternate round by round; figures are medians over rounds.

mod served;

use served::ServedHost;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The examples as the build lays them out beside the binary.
fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_BIN_EXE_kiln")).parent().unwrap().join("plugins");
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
}

fn start(with_refused: bool) -> ServedHost {
    let examples = examples();
    let host = ServedHost::start("", &examples.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    // Start-up plugins (the warm-up) and the first schedule tick settle.
    std::thread::sleep(Duration::from_secs(3));
    if with_refused {
        let broken = host.plugins_dir().join("broken");
        std::fs::create_dir(&broken).unwrap();
        std::fs::write(broken.join("plugin.toml"), "name = \"broken\"\nversion = 1\n").unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    host
}

/// utime + stime of the whole process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Bytes the process has read (any file or socket).
fn read_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

struct Sample {
    cpu_percent: f64,
    read_kib_per_s: f64,
    fds: usize,
}

fn measure(host: &ServedHost, window: Duration) -> Sample {
    let pid = host.pid();
    let (cpu, read, at) = (cpu_seconds(pid), read_bytes(pid), Instant::now());
    std::thread::sleep(window);
    let elapsed = at.elapsed().as_secs_f64();
    Sample {
        cpu_percent: (cpu_seconds(pid) - cpu) / elapsed * 100.0,
        read_kib_per_s: (read_bytes(pid) - read) as f64 / 1024.0 / elapsed,
        fds: fds(pid),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, window) = if quick { (1, Duration::from_secs(5)) } else { (3, Duration::from_secs(20)) };
    let variants = [("examples loaded, no jobs", false), ("... plus a refused plugin directory", true)];
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, (_, with_refused)) in variants.iter().enumerate() {
            let host = start(*with_refused);
            samples[i].push(measure(&host, window));
        }
    }
    println!("idle `kiln serve`, {rounds} round(s) of {} s each, medians", window.as_secs());
    println!("| host | CPU (% of one core) | read (KiB/s) | open fds |");
    println!("|---|---:|---:|---:|");
    let mut cpus = Vec::new();
    for ((name, _), samples) in variants.iter().zip(&samples) {
        let cpu = median(&mut samples.iter().map(|s| s.cpu_percent).collect::<Vec<_>>());
        let read = median(&mut samples.iter().map(|s| s.read_kib_per_s).collect::<Vec<_>>());
        let fds = median(&mut samples.iter().map(|s| s.fds as f64).collect::<Vec<_>>());
        println!("| {name} | {cpu:.3} | {read:.1} | {fds:.0} |");
        cpus.push(cpu);
    }
    println!("refused plugin / examples only: {:.2}x CPU (goal: under 0.5 % of a core either way)", cpus[1] / cpus[0].max(0.001));
}
