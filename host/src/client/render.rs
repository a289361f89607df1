//! What the CLI prints for people: tables and one-line answers made from
//! the API's JSON (`--json` prints that JSON instead, for scripts).

use serde_json::Value;
use std::time::Duration;

/// Rows as columns padded to their widest cell.
pub fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One job for a person: what it is, where it stands, what it held and returned.
pub fn job_summary(job: &Value) -> String {
    let cut = |s: String| if s.chars().count() > 200 { format!("{}… ({} bytes)", s.chars().take(200).collect::<String>(), s.len()) } else { s };
    let mut out = format!(
        "job {}: {} (queue {}), {}, attempt {}/{}\n",
        job["id"], text(&job["kind"]), text(&job["queue"]), text(&job["state"]), job["attempt"], job["max_attempts"]
    );
    for (label, key) in [("created", "created_at"), ("due", "scheduled_at"), ("last run", "attempted_at"), ("finished", "finalized_at")] {
        if !job[key].is_null() {
            out.push_str(&format!("  {label:<9} {}\n", text(&job[key])));
        }
    }
    out.push_str(&format!("  payload   {}\n  result    {}\n", cut(text(&job["payload"])), cut(text(&job["result"]))));
    if let Some(percent) = job["progress"]["percent"].as_u64() {
        let note = job["progress"]["note"].as_str().map(|n| format!(" {n}")).unwrap_or_default();
        out.push_str(&format!("  progress  {percent}%{note}\n"));
    }
    for a in job["attempts"].as_array().into_iter().flatten() {
        let mut line = format!("  attempt {} {}", a["attempt"], text(&a["outcome"]));
        if let Some(host) = a["host"].as_str() {
            line.push_str(&format!(" on {host}"));
        }
        if let Some(version) = a["plugin_version"].as_str() {
            line.push_str(&format!(" (version {version})"));
        }
        if let Some(ms) = a["duration_ms"].as_f64() {
            line.push_str(&format!(", {ms:.1} ms, {} fuel, {} memory", a["fuel_used"], mib(a["peak_memory_bytes"].as_u64().unwrap_or(0))));
        }
        if let Some(error) = a["error"].as_str() {
            line.push_str(&format!(": {}", cut(error.to_string())));
        }
        out.push_str(&line);
        out.push('\n');
    }
    if job["attempts"].is_null() {
        for error in job["errors"].as_array().into_iter().flatten() {
            out.push_str(&format!("  error     attempt {} ({}, {}): {}\n", error["attempt"], text(&error["outcome"]), text(&error["at"]), cut(text(&error["message"]))));
        }
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// `GET /jobs/{id}/logs` lines, one a line: attempt, time, level, source, message.
pub fn log_lines(lines: &[Value]) -> String {
    lines
        .iter()
        .map(|l| format!("[attempt {}] {} {:<5} {}: {}\n", l["attempt"], text(&l["at"]), text(&l["level"]).to_uppercase(), text(&l["source"]), text(&l["message"])))
        .collect()
}

/// What `kiln jobs watch` shows of a job: its state, its percent (100 once
/// completed) and a line for people.
pub fn watch_line(job: &Value) -> (String, u8, String) {
    let state = text(&job["state"]);
    let reported = job["progress"]["percent"].as_u64().map(|p| p.min(100) as u8);
    let percent = if state == "completed" { 100 } else { reported.unwrap_or(0) };
    let mut line = format!("{state}, attempt {}/{}", job["attempt"], job["max_attempts"]);
    if let Some(p) = reported {
        line.push_str(&format!(", {p}%"));
    }
    if let Some(note) = job["progress"]["note"].as_str() {
        line.push_str(&format!(": {note}"));
    }
    if state == "dead" || state == "cancelled" {
        if let Some(error) = job["errors"].as_array().and_then(|e| e.last()) {
            line.push_str(&format!(" ({})", text(&error["message"])));
        }
    }
    (state, percent, line)
}

/// `GET /queues` as a table.
pub fn queue_table(answer: &Value) -> String {
    let states = ["available", "scheduled", "running", "retryable", "completed", "cancelled", "dead"];
    let mut header = vec!["QUEUE".to_string(), "CONCURRENCY".to_string(), "PAUSED".to_string()];
    header.extend(states.iter().map(|s| s.to_ascii_uppercase()));
    header.push("OLDEST WAITING".to_string());
    let mut rows = vec![header];
    for q in answer["queues"].as_array().into_iter().flatten() {
        let mut row = vec![q["name"].as_str().unwrap_or("?").to_string(), q["concurrency"].to_string(), q["paused"].to_string()];
        row.extend(states.iter().map(|s| q["jobs"][s].to_string()));
        row.push(match q["oldest_waiting_ms"].as_u64() {
            Some(ms) => humantime::format_duration(Duration::from_millis(ms - ms % 1000)).to_string(),
            None => "-".to_string(),
        });
        rows.push(row);
    }
    table(&rows)
}

/// A page of `GET /jobs` as a table, with how to get the next page.
pub fn job_table(page: &Value, now: i64) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut rows = vec![["ID", "KIND", "QUEUE", "STATE", "ATTEMPT", "AGE", "LAST ERROR"].map(String::from).to_vec()];
    for job in page["jobs"].as_array().into_iter().flatten() {
        let created = job["created_at"].as_str().and_then(|t| crate::queue::from_rfc3339(t).ok()).unwrap_or(now);
        let age = humantime::format_duration(Duration::from_secs(((now - created).max(0) / 1000) as u64)).to_string();
        let age = if age == "0s" { "now".to_string() } else { age.split(' ').take(2).collect::<Vec<_>>().join(" ") };
        let error: String = job["errors"].as_array().and_then(|e| e.last()).map(|e| text(&e["message"])).unwrap_or_default();
        let error: String = error.lines().next().unwrap_or("").chars().take(60).collect();
        rows.push(vec![
            job["id"].to_string(),
            text(&job["kind"]),
            text(&job["queue"]),
            text(&job["state"]),
            format!("{}/{}", job["attempt"], job["max_attempts"]),
            age,
            error,
        ]);
    }
    let mut out = table(&rows);
    if rows.len() == 1 {
        out = "no jobs\n".to_string();
    }
    if let Some(before) = page["next_before"].as_i64() {
        out.push_str(&format!("more: kiln jobs list --before {before}\n"));
    }
    out
}

/// A JSON value as a person reads it: strings bare, `null` as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// What a single-job action (`retry`, `cancel`, `delete`) did, in a line.
pub fn job_action(done: &str, job: &Value) -> String {
    format!(
        "{done} job {} ({}, queue {}): now {}, attempt {}/{}\n",
        job["id"],
        text(&job["kind"]),
        text(&job["queue"]),
        text(&job["state"]),
        job["attempt"],
        job["max_attempts"]
    )
}

/// What a bulk action on dead jobs did (`{"retried"|"deleted", "skipped", "more"}`).
pub fn bulk_action(key: &str, answer: &Value) -> String {
    let mut out = format!("{key} {} dead jobs", answer[key]);
    if answer["skipped"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(" ({} left as they were: their unique key was taken, or a schedule's newest tick)", answer["skipped"]));
    }
    out.push('\n');
    if answer["more"].as_bool() == Some(true) {
        out.push_str("more dead jobs are left: run it again\n");
    }
    out
}

/// `GET /plugins` as a table: name, version, trigger, versions archived.
pub fn plugin_table(answer: &Value) -> String {
    let mut rows = vec![["PLUGIN", "VERSION", "TRIGGER", "ARCHIVED", "VERSION ID"].map(String::from).to_vec()];
    for p in answer["plugins"].as_array().into_iter().flatten() {
        let id = text(&p["version_id"]);
        rows.push(vec![
            text(&p["name"]),
            text(&p["version"]),
            text(&p["trigger_detail"]),
            p["versions"].as_array().map_or(0, Vec::len).to_string(),
            id.chars().take(16).collect(),
        ]);
    }
    if rows.len() == 1 { "no plugins\n".to_string() } else { table(&rows) }
}

/// What a deploy or rollback did (`{"name", "version", "previous", "changed"}`).
pub fn deployed(verb: &str, answer: &Value) -> String {
    let (name, version) = (text(&answer["name"]), text(&answer["version"]));
    match (answer["changed"].as_bool(), answer["previous"].as_str()) {
        (Some(false), _) => format!("{name} {version} already serves; nothing changed\n"),
        (_, Some(previous)) => format!("{verb} {name}: {previous} -> {version}; jobs from now on run it\n"),
        (_, None) => format!("{verb} {name} {version}; jobs from now on run it\n"),
    }
}
