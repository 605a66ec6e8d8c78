//! `lancer pipelines`: submit a pipeline file, list, get, cancel, retry, and wait with a
//! progress line per step.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lancer::domain::pipeline::{Pipeline, PipelineStatus, Step, StepStatus};
use serde_json::Value;

use crate::client::Client;
use crate::print_json;

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Submit a pipeline described by a JSON file (`-` reads standard input); prints it.
    Submit {
        file: String,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait for it to end, with a progress line per step.
        #[arg(long)]
        wait: bool,
    },
    /// List pipelines, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one pipeline as JSON: its status and each step's status and tasks.
    Get { id: String },
    /// Cancel a pipeline: waiting steps never start, running ones are cancelled.
    Cancel { id: String },
    /// Resume a failed or cancelled pipeline from the steps that did not complete.
    Retry {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Wait for a pipeline to end, with a progress line per step; fails unless it completed.
    Wait { id: String },
}

pub async fn run(client: &Client, command: PipelineCommand) -> Result<()> {
    match command {
        PipelineCommand::Submit {
            file,
            idempotency_key,
            wait,
        } => {
            let spec = read_spec(&file)?;
            let pipeline = client
                .submit_pipeline(&spec, idempotency_key.as_deref())
                .await?;
            print_json(&pipeline)?;
            if wait {
                wait_for(client, pipeline.id.as_str()).await?;
            }
            Ok(())
        }
        PipelineCommand::List { limit, page_token } => {
            list(client, limit, page_token.as_deref()).await
        }
        PipelineCommand::Get { id } => print_json(&client.pipeline(&id).await?),
        PipelineCommand::Cancel { id } => print_json(&client.pipeline_action(&id, "cancel").await?),
        PipelineCommand::Retry { id, wait } => {
            print_json(&client.pipeline_action(&id, "retry").await?)?;
            if wait {
                wait_for(client, &id).await?;
            }
            Ok(())
        }
        PipelineCommand::Wait { id } => wait_for(client, &id).await,
    }
}

fn read_spec(file: &str) -> Result<Value> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("{file} is not JSON"))
}

async fn list(client: &Client, limit: usize, page_token: Option<&str>) -> Result<()> {
    let page = client.list_pipelines(limit, page_token).await?;
    println!(
        "{:<38} {:<24} {:<10} {:<30} CREATED",
        "ID", "NAME", "STATUS", "STEPS"
    );
    for pipeline in &page.pipelines {
        let done = pipeline
            .steps
            .iter()
            .filter(|step| matches!(step.status, StepStatus::Completed | StepStatus::Serving))
            .count();
        let steps = format!("{done}/{} done", pipeline.steps.len());
        println!(
            "{:<38} {:<24} {:<10} {:<30} {}",
            pipeline.id,
            pipeline.spec.name,
            pipeline.status,
            steps,
            pipeline.created_at.format("%Y-%m-%d %H:%M:%S"),
        );
    }
    if let Some(token) = page.next_page_token {
        println!("more: --page-token {token}");
    }
    Ok(())
}

/// Polls a pipeline until it ends, one line per step with its task's progress; an error
/// naming the steps that failed unless it completed.
async fn wait_for(client: &Client, id: &str) -> Result<()> {
    let lines = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:<16} {bar:24} {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    // Without a terminal the bars are hidden: a line is printed as each step changes status.
    let mut said: HashMap<String, StepStatus> = HashMap::new();
    let pipeline = loop {
        let pipeline = client.pipeline(id).await?;
        for step in &pipeline.steps {
            let bar = bars.entry(step.name.clone()).or_insert_with(|| {
                let bar = lines.add(ProgressBar::new(1000).with_style(style.clone()));
                bar.set_prefix(step.name.clone());
                bar
            });
            let line = show_step(client, bar, step).await;
            if lines.is_hidden() && said.get(&step.name) != Some(&step.status) {
                eprintln!("{:<16} {line}", step.name);
                said.insert(step.name.clone(), step.status);
            }
        }
        if pipeline.status != PipelineStatus::Running {
            break pipeline;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for bar in bars.values() {
        bar.finish();
    }
    outcome(&pipeline)
}

/// A step's line: its status, and while its task runs, the task's progress and message.
async fn show_step(client: &Client, bar: &ProgressBar, step: &Step) -> String {
    let status = serde_json::to_value(step.status).unwrap_or_default();
    let mut message = status.as_str().unwrap_or_default().to_owned();
    if step.status == StepStatus::Completed {
        bar.set_position(1000);
    }
    let live = step.task_id.as_ref().filter(|_| step.status.is_live());
    if let Some(Ok(task)) = match live {
        Some(id) => Some(client.task(id.as_str()).await),
        None => None,
    } {
        let progress = task.progress.unwrap_or_default();
        if let Some(fraction) = progress.fraction {
            bar.set_position((fraction.clamp(0.0, 1.0) * 1000.0) as u64);
        }
        message.extend(progress.message.map(|m| format!(" {m}")));
        message.extend(task.endpoint.map(|e| format!(" serving {e}")));
    }
    if let Some(error) = &step.error {
        message.push_str(&format!(": {}", error.message));
    }
    bar.set_message(message.clone());
    message
}

fn outcome(pipeline: &Pipeline) -> Result<()> {
    if pipeline.status == PipelineStatus::Completed {
        println!("pipeline {} completed", pipeline.id);
        return Ok(());
    }
    let failed: Vec<&str> = pipeline
        .steps
        .iter()
        .filter(|step| step.status == StepStatus::Failed)
        .map(|step| step.name.as_str())
        .collect();
    bail!(
        "pipeline {} {}; failed steps: {}",
        pipeline.id,
        pipeline.status,
        if failed.is_empty() {
            "none".to_owned()
        } else {
            failed.join(", ")
        }
    )
}
