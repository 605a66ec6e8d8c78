//! `lancer`: run the embedded platform (`serve`) and drive any lancer over HTTP.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

mod bench;
mod client;
mod models;
mod pipelines;

use client::Client;
use lancer::domain::task::TaskStatus;

/// The server reads big values (a page of large binary cells, an upload's parts) on
/// whichever thread Lance or tokio picks; glibc's per-thread arenas keep what each freed,
/// so its peak memory grows with the threads. mimalloc returns freed memory to be reused.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "lancer",
    version,
    about = "ML tasks on a Lance data lake: ingest, train, serve"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where the commands that talk to a lancer send their requests.
    #[command(flatten)]
    remote: Remote,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API and the local dispatcher (SQLite task table, Lance lake on disk).
    Serve(ServeArgs),
    /// Submit, list, inspect, cancel and follow tasks.
    #[command(subcommand)]
    Tasks(TaskCommand),
    /// Submit, list, inspect, cancel, retry and wait for pipelines of tasks.
    #[command(subcommand)]
    Pipelines(pipelines::PipelineCommand),
    /// Datasets in the lake.
    Datasets(ArtifactArgs),
    /// Models in the lake, and their aliases.
    Models(models::ModelArgs),
    /// Print throughput and latency figures of a running lancer (tasks it submits do run).
    Bench {
        /// POST+GET pairs per concurrency level (0 skips the API benchmark).
        #[arg(long, default_value_t = 400)]
        requests: usize,
        /// A no-op script in the server's scripts folder.
        #[arg(long, default_value = "tests/bench/noop.py")]
        script: String,
        /// No-op tasks timed from submit to completed.
        #[arg(long, default_value_t = 20)]
        noop_tasks: usize,
    },
}

/// Each flag stands in for its `LANCER_*` variable and is read by the same loader, so
/// it is checked the same way; unset flags leave the environment's value.
#[derive(Args)]
struct ServeArgs {
    /// LANCER_LAKE: a local folder or s3://bucket/prefix.
    #[arg(long)]
    lake: Option<String>,
    /// LANCER_DB: the SQLite task table.
    #[arg(long)]
    db: Option<String>,
    /// LANCER_HOST.
    #[arg(long)]
    host: Option<String>,
    /// LANCER_PORT (0 picks a free port).
    #[arg(long)]
    port: Option<String>,
    /// LANCER_SCRIPTS: the folder holding lancer-scripts.json.
    #[arg(long)]
    scripts: Option<String>,
    /// LANCER_CONCURRENCY: batch tasks run at once.
    #[arg(long)]
    concurrency: Option<String>,
}

impl ServeArgs {
    /// The configuration: these flags over the environment, through one loader.
    fn config(self) -> Result<lancer::config::Config> {
        let flags: HashMap<&str, String> = [
            ("LANCER_LAKE", self.lake),
            ("LANCER_DB", self.db),
            ("LANCER_HOST", self.host),
            ("LANCER_PORT", self.port),
            ("LANCER_SCRIPTS", self.scripts),
            ("LANCER_CONCURRENCY", self.concurrency),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect();
        Ok(lancer::config::Config::from_lookup(|name| {
            flags
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
        })?)
    }
}

#[derive(Args)]
struct Remote {
    /// The lancer API.
    #[arg(
        long,
        env = "LANCER_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    url: String,
    #[arg(long, env = "LANCER_API_KEY", global = true, hide_env_values = true)]
    api_key: Option<String>,
}

impl Remote {
    fn client(&self) -> Result<Client> {
        Client::new(&self.url, self.api_key.clone())
    }
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Submit a task; prints it as JSON.
    Submit(SubmitArgs),
    /// List tasks, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one task as JSON.
    Get { id: String },
    /// Cancel a pending or running task.
    Cancel { id: String },
    /// Print a task's log; -f follows it until the task ends.
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Wait for a task to end, showing its progress; fails unless it completed.
    Wait { id: String },
}

#[derive(Args)]
struct SubmitArgs {
    #[arg(long)]
    name: String,
    /// A script the server registered in its lancer-scripts.json, e.g. mnist/bin/mnist-clean.
    #[arg(long)]
    script: String,
    #[arg(long, default_value = "")]
    input: String,
    #[arg(long, default_value = "")]
    output: String,
    /// Params as one JSON object.
    #[arg(long)]
    params: Option<String>,
    /// One param as key=value (value parsed as JSON, else taken as a string); repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    param: Vec<String>,
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    gpus: Option<f64>,
    #[arg(long)]
    memory_mb: Option<u64>,
    #[arg(long)]
    max_attempts: Option<u32>,
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait for the task to finish, with a progress bar.
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
struct ArtifactArgs {
    #[command(subcommand)]
    command: ArtifactCommand,
}

#[derive(Subcommand)]
pub(crate) enum ArtifactCommand {
    List,
    Get { id: String },
    Delete { id: String },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lancer::app::init_tracing();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let remote = cli.remote;
    match cli.command {
        Command::Serve(args) => Ok(lancer::app::serve(&args.config()?).await?),
        Command::Tasks(command) => tasks(&remote.client()?, command).await,
        Command::Pipelines(command) => pipelines::run(&remote.client()?, command).await,
        Command::Datasets(args) => artifacts(&remote.client()?, "datasets", args.command).await,
        Command::Models(args) => models::run(&remote.client()?, args).await,
        Command::Bench {
            requests,
            script,
            noop_tasks,
        } => {
            let client = remote.client()?;
            let options = bench::BenchOptions {
                requests,
                script,
                noop_tasks,
            };
            if requests > 0 {
                bench::api(&client, &options).await?;
            }
            bench::submit_to_completed(&client, &options).await
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Builds the params object from `--params` and repeated `--param key=value`.
fn params_of(json_object: Option<String>, pairs: Vec<String>) -> Result<Map<String, Value>> {
    let mut params = match json_object {
        Some(text) => match serde_json::from_str(&text).context("--params must be JSON")? {
            Value::Object(map) => map,
            _ => bail!("--params must be a JSON object"),
        },
        None => Map::new(),
    };
    for pair in pairs {
        let (key, raw) = pair.split_once('=').context("--param takes key=value")?;
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        params.insert(key.to_owned(), value);
    }
    Ok(params)
}

async fn tasks(client: &Client, command: TaskCommand) -> Result<()> {
    match command {
        TaskCommand::Submit(args) => submit(client, args).await,
        TaskCommand::List {
            status,
            limit,
            page_token,
        } => list(client, status.as_deref(), limit, page_token.as_deref()).await,
        TaskCommand::Get { id } => print_json(&client.task(&id).await?),
        TaskCommand::Cancel { id } => print_json(&client.cancel(&id).await?),
        TaskCommand::Logs { id, follow } => logs(client, &id, follow).await,
        TaskCommand::Wait { id } => wait_for(client, &id).await,
    }
}

/// The JSON spec the flags describe; the server validates it.
fn spec_of(args: SubmitArgs) -> Result<Value> {
    let mut spec = json!({
        "name": args.name, "script": args.script, "input": args.input, "output": args.output,
        "params": params_of(args.params, args.param)?,
    });
    let resources: Map<String, Value> = [
        ("cpus", args.cpus.map(|n| json!(n))),
        ("gpus", args.gpus.map(|n| json!(n))),
        ("memory_mb", args.memory_mb.map(|n| json!(n))),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name.to_owned(), value?)))
    .collect();
    if !resources.is_empty() {
        spec["resources"] = Value::Object(resources);
    }
    if let Some(max_attempts) = args.max_attempts {
        spec["max_attempts"] = json!(max_attempts);
    }
    Ok(spec)
}

async fn submit(client: &Client, args: SubmitArgs) -> Result<()> {
    let (key, wait) = (args.idempotency_key.clone(), args.wait);
    let task = client.submit(&spec_of(args)?, key.as_deref()).await?;
    print_json(&task)?;
    if wait {
        wait_for(client, task.id.as_str()).await?;
    }
    Ok(())
}

async fn list(
    client: &Client,
    status: Option<&str>,
    limit: usize,
    page_token: Option<&str>,
) -> Result<()> {
    let page = client.list_tasks(status, limit, page_token).await?;
    println!(
        "{:<38} {:<24} {:<10} {:>8}  CREATED",
        "ID", "NAME", "STATUS", "PROGRESS"
    );
    for task in &page.tasks {
        let progress = task
            .progress
            .as_ref()
            .and_then(|p| p.fraction)
            .map(|f| format!("{:.0}%", f * 100.0))
            .unwrap_or_default();
        println!(
            "{:<38} {:<24} {:<10} {:>8}  {}",
            task.id,
            task.spec.name,
            task.status,
            progress,
            task.created_at.format("%Y-%m-%d %H:%M:%S"),
        );
    }
    if let Some(token) = page.next_page_token {
        println!("more: --page-token {token}");
    }
    Ok(())
}

/// Prints a task's log from the start; with `follow`, keeps printing until the task ends.
async fn logs(client: &Client, id: &str, follow: bool) -> Result<()> {
    let mut offset = 0;
    loop {
        let slice = client.logs(id, offset).await?;
        print!("{}", slice.text);
        offset = slice.next_offset;
        // The server answers in chunks: an empty one means the log has no more yet.
        if slice.text.is_empty() {
            let ended = slice.status.is_none_or(TaskStatus::is_terminal);
            if !follow || ended {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Polls a task until it ends, drawing its progress; an error unless it completed.
async fn wait_for(client: &Client, id: &str) -> Result<()> {
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let task = loop {
        let task = client.task(id).await?;
        let progress = task.progress.clone().unwrap_or_default();
        if let Some(fraction) = progress.fraction {
            bar.set_position((fraction.clamp(0.0, 1.0) * 1000.0) as u64);
        }
        let endpoint = task
            .endpoint
            .as_deref()
            .map(|e| format!(" serving {e}"))
            .unwrap_or_default();
        let message = progress.message.unwrap_or_default();
        bar.set_message(format!("{} {message}{endpoint}", task.status));
        if task.status.is_terminal() {
            break task;
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish();
    if task.status == TaskStatus::Completed {
        return print_json(&task.result);
    }
    let why = task.error.map_or("no error recorded".into(), |e| e.message);
    bail!("task {id} {}: {why}", task.status)
}

pub(crate) async fn artifacts(client: &Client, kind: &str, command: ArtifactCommand) -> Result<()> {
    match command {
        ArtifactCommand::List => {
            println!("{:<32} {:>10}  SCHEMA", "ID", "ROWS");
            for item in client.artifacts(kind).await? {
                let schema = item
                    .schema
                    .iter()
                    .map(|(name, ty)| format!("{name}: {ty}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                println!("{:<32} {:>10}  {schema}", item.id, item.num_rows);
            }
            Ok(())
        }
        ArtifactCommand::Get { id } => print_json(&client.artifact(kind, &id).await?),
        ArtifactCommand::Delete { id } => {
            client.delete_artifact(kind, &id).await?;
            println!("deleted {kind}/{id}");
            Ok(())
        }
    }
}
