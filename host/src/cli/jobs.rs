//! `kiln enqueue` and `kiln jobs`: enqueue through the API; list, show,
//! follow the logs of, watch, retry, cancel and delete jobs.

use super::output::{JsonOutput, say};
use super::run::text_or_file;
use crate::client::{ApiClient, render};
use crate::queue::SystemClock;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub(crate) struct EnqueueArgs {
    /// The job's kind: a loaded plugin's name.
    pub(crate) kind: String,
    /// The payload: JSON text, or @FILE.
    #[arg(long)]
    pub(crate) payload: Option<String>,
    /// The queue to put it in [default: default].
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// Higher runs first [default: 0].
    #[arg(long)]
    pub(crate) priority: Option<i32>,
    /// A job with this key already waiting or done makes this a no-op (at most 512 bytes).
    #[arg(long)]
    pub(crate) unique_key: Option<String>,
    /// Its group under the plugin's `[throttle] max_per_key` (a customer id, say; at most 256 bytes).
    #[arg(long)]
    pub(crate) concurrency_key: Option<String>,
    /// Runs before it is dead-lettered, 1–1000 [default: the plugin's].
    #[arg(long)]
    pub(crate) max_attempts: Option<u32>,
    /// Run no earlier than this RFC 3339 time, with an offset (2030-01-01T09:00:00+02:00).
    #[arg(long)]
    pub(crate) at: Option<String>,
    #[command(flatten)]
    pub(crate) json: JsonOutput,
}

#[derive(Subcommand, Debug)]
pub(crate) enum JobsCommand {
    /// List jobs, newest first, as a table (id, kind, queue, state, attempt, age, last error).
    List {
        /// Only jobs in this state: scheduled, available, running, retryable, completed, cancelled, dead.
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs of this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Jobs per page (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The next page: only jobs older than this id (the previous page says which).
        #[arg(long)]
        before: Option<i64>,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Show one job: its state, payload, result, progress and every attempt.
    Show {
        id: i64,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Print the log lines a job's attempts wrote (`context.log`, stdout, stderr).
    Logs {
        id: i64,
        /// Only this attempt's lines.
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing lines as attempts end, until the job is done.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Follow a job until it is done: its state and progress as a bar (a
    /// line per change when not on a terminal). Exits 0 once it completed,
    /// 1 if it ended dead or cancelled.
    Watch { id: i64 },
    /// Run a dead or cancelled job again (or, with --all-dead, every dead job).
    Retry(PickJobs),
    /// Delete a dead or cancelled job (or, with --all-dead, every dead job).
    Delete(PickJobs),
    /// Cancel a job (a running one is asked to stop, then interrupted).
    Cancel {
        id: i64,
        #[command(flatten)]
        json: JsonOutput,
    },
}

/// One job by id, or every dead job (of a kind, a queue).
#[derive(Args, Debug)]
pub(crate) struct PickJobs {
    /// The job.
    #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
    pub(crate) id: Option<i64>,
    /// Every dead job (of --kind and --queue, if given), up to 10,000 a call.
    #[arg(long)]
    pub(crate) all_dead: bool,
    /// With --all-dead: only dead jobs of this kind.
    #[arg(long, requires = "all_dead")]
    pub(crate) kind: Option<String>,
    /// With --all-dead: only dead jobs of this queue.
    #[arg(long, requires = "all_dead")]
    pub(crate) queue: Option<String>,
    #[command(flatten)]
    pub(crate) json: JsonOutput,
}

impl PickJobs {
    /// The query naming every dead job picked.
    fn dead_query(&self) -> String {
        let mut query = "state=dead".to_string();
        for (key, value) in [("kind", &self.kind), ("queue", &self.queue)] {
            if let Some(value) = value {
                query.push_str(&format!("&{key}={value}"));
            }
        }
        query
    }
}

pub(crate) fn enqueue(client: &ApiClient, args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let mut job = serde_json::json!({ "kind": args.kind });
    if let Some(payload) = args.payload {
        let bytes = text_or_file(payload, "--payload")?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).context("--payload is not JSON")?;
        job["payload"] = value;
    }
    let strings = [("queue", args.queue), ("unique_key", args.unique_key), ("concurrency_key", args.concurrency_key), ("scheduled_at", args.at)];
    for (key, value) in strings {
        if let Some(value) = value {
            job[key] = serde_json::Value::String(value);
        }
    }
    if let Some(priority) = args.priority {
        job["priority"] = priority.into();
    }
    if let Some(max_attempts) = args.max_attempts {
        job["max_attempts"] = max_attempts.into();
    }
    let answer = client.post("/jobs", Some(&job))?;
    let kind_state = format!("{}, {}", answer["kind"].as_str().unwrap_or("?"), answer["state"].as_str().unwrap_or("?"));
    let id = &answer["id"];
    print!(
        "{}",
        say(args.json, &answer, || match answer["created"].as_bool() {
            Some(false) => format!("job {id} already holds that unique key ({kind_state}); nothing new was enqueued\n"),
            _ => format!("enqueued job {id} ({kind_state}): kiln jobs show {id}\n"),
        })
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn jobs(client: &ApiClient, command: JobsCommand) -> anyhow::Result<ExitCode> {
    let answer = match command {
        JobsCommand::List { state, kind, queue, limit, before, json } => {
            let mut query = vec![format!("limit={limit}"), "order=newest".to_string()];
            for (key, value) in [("state", state), ("kind", kind), ("queue", queue), ("before", before.map(|b| b.to_string()))] {
                if let Some(value) = value {
                    query.push(format!("{key}={value}"));
                }
            }
            let page = client.get(&format!("/jobs?{}", query.join("&")))?;
            say(json, &page, || render::job_table(&page, crate::queue::Clock::now(&SystemClock)))
        }
        JobsCommand::Show { id, json } => {
            let job = client.get(&format!("/jobs/{id}"))?;
            say(json, &job, || render::job_summary(&job))
        }
        JobsCommand::Logs { id, attempt, follow: false, json } => {
            let query = attempt.map(|n| format!("?attempt={n}")).unwrap_or_default();
            let page = client.get(&format!("/jobs/{id}/logs{query}"))?;
            say(json, &page, || render::log_lines(page["lines"].as_array().map_or(&[][..], Vec::as_slice)))
        }
        JobsCommand::Logs { id, attempt, follow: true, json } => return follow_logs(client, id, attempt, json),
        JobsCommand::Watch { id } => return watch_job(client, id),
        JobsCommand::Retry(pick) => match pick.id {
            Some(id) => {
                let job = client.post(&format!("/jobs/{id}/retry"), None)?;
                say(pick.json, &job, || render::job_action("retried", &job))
            }
            None => {
                let answer = client.post(&format!("/jobs/retry?{}", pick.dead_query()), None)?;
                say(pick.json, &answer, || render::bulk_action("retried", &answer))
            }
        },
        JobsCommand::Delete(pick) => match pick.id {
            Some(id) => {
                let job = client.delete(&format!("/jobs/{id}"))?;
                say(pick.json, &job, || render::job_action("deleted", &job))
            }
            None => {
                let answer = client.delete(&format!("/jobs?{}", pick.dead_query()))?;
                say(pick.json, &answer, || render::bulk_action("deleted", &answer))
            }
        },
        JobsCommand::Cancel { id, json } => {
            let job = client.post(&format!("/jobs/{id}/cancel"), None)?;
            let done = if job["state"] == "running" { "asked to stop" } else { "cancelled" };
            say(json, &job, || render::job_action(done, &job))
        }
    };
    print!("{answer}");
    Ok(ExitCode::SUCCESS)
}

/// How often `jobs logs --follow` and `jobs watch` look again.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// `kiln jobs logs ID --follow`: prints lines as the job's attempts end
/// (an attempt's lines are stored when it ends), until the job is done.
pub(crate) fn follow_logs(client: &ApiClient, id: i64, attempt: Option<u32>, json: JsonOutput) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let query = attempt.map(|n| format!("?attempt={n}")).unwrap_or_default();
    let mut printed = 0usize;
    loop {
        // Read the state first: lines stored before a final state is read are all there.
        let done = client.get(&format!("/jobs/{id}"))?["state"].as_str().is_some_and(|s| ["completed", "cancelled", "dead"].contains(&s));
        let page = client.get(&format!("/jobs/{id}/logs{query}"))?;
        let lines = page["lines"].as_array().map_or(&[][..], Vec::as_slice);
        let fresh = lines.get(printed..).unwrap_or_default();
        let mut out = std::io::stdout().lock();
        match json.on {
            true => fresh.iter().try_for_each(|line| writeln!(out, "{line}"))?,
            false => write!(out, "{}", render::log_lines(fresh))?,
        }
        out.flush()?;
        printed = printed.max(lines.len());
        if done {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// `kiln jobs watch ID`.
pub(crate) fn watch_job(client: &ApiClient, id: i64) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    let bar = indicatif::ProgressBar::new(100);
    let on_terminal = std::io::stderr().is_terminal();
    if on_terminal {
        bar.set_style(indicatif::ProgressStyle::with_template("job {prefix} [{bar:40}] {pos:>3}% {msg}").expect("a valid template").progress_chars("=> "));
        bar.set_prefix(id.to_string());
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last = String::new();
    loop {
        let job = client.get(&format!("/jobs/{id}"))?;
        let (state, percent, line) = render::watch_line(&job);
        bar.set_position(u64::from(percent));
        bar.set_message(line.clone());
        if !on_terminal && line != last {
            eprintln!("job {id}: {line}");
        }
        last = line;
        match state.as_str() {
            "completed" => {
                bar.finish();
                return Ok(ExitCode::SUCCESS);
            }
            "dead" | "cancelled" => {
                bar.abandon();
                return Ok(ExitCode::FAILURE);
            }
            _ => std::thread::sleep(FOLLOW_EVERY),
        }
    }
}
