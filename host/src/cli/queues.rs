//! `kiln queues`: list, pause and resume queues through the API.

use super::output::{JsonOutput, say};
use crate::client::{ApiClient, render};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub(crate) enum QueuesCommand {
    /// List the queues: concurrency, paused, jobs by state, oldest wait.
    List {
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Stop claiming jobs from a queue (running jobs finish).
    Pause {
        name: String,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Claim jobs from a queue again.
    Resume {
        name: String,
        #[command(flatten)]
        json: JsonOutput,
    },
}

pub(crate) fn queues(client: &ApiClient, command: QueuesCommand) -> anyhow::Result<ExitCode> {
    let answer = match command {
        QueuesCommand::List { json } => {
            let answer = client.get("/queues")?;
            say(json, &answer, || render::queue_table(&answer))
        }
        QueuesCommand::Pause { name, json } => {
            let answer = client.post(&format!("/queues/{name}/pause"), None)?;
            say(json, &answer, || format!("queue {name} paused: no job of it starts until `kiln queues resume {name}`\n"))
        }
        QueuesCommand::Resume { name, json } => {
            let answer = client.post(&format!("/queues/{name}/resume"), None)?;
            say(json, &answer, || format!("queue {name} resumed\n"))
        }
    };
    print!("{answer}");
    Ok(ExitCode::SUCCESS)
}
