//! `lancer`: run the embedded platform (`serve`) and drive any lancer over HTTP.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

mod bench;
mod client;

use client::Client;

#[derive(Parser)]
#[command(
    name = "lancer",
    version,
    about = "ML tasks on a Lance data lake: ingest, train, serve"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API and the local dispatcher (SQLite task table, Lance lake on disk).
    Serve(ServeArgs),
    /// Submit, list, inspect, cancel and follow tasks.
    #[command(subcommand)]
    Tasks(TaskCommand),
    /// Datasets in the lake.
    Datasets(ArtifactArgs),
    /// Models in the lake.
    Models(ArtifactArgs),
    /// Print throughput and latency figures of a running lancer (tasks it submits do run).
    Bench {
        #[command(flatten)]
        remote: Remote,
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

#[derive(Args)]
struct ServeArgs {
    #[arg(long, env = "LANCER_LAKE")]
    lake: Option<String>,
    #[arg(long, env = "LANCER_DB")]
    db: Option<PathBuf>,
    #[arg(long, env = "LANCER_HOST")]
    host: Option<std::net::IpAddr>,
    #[arg(long, env = "LANCER_PORT")]
    port: Option<u16>,
    #[arg(long, env = "LANCER_SCRIPTS")]
    scripts: Option<PathBuf>,
    #[arg(long, env = "LANCER_CONCURRENCY")]
    concurrency: Option<usize>,
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
    Submit {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        name: String,
        /// Script path relative to the server's scripts folder.
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
    },
    /// List tasks, newest first.
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one task as JSON.
    Get {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
    /// Cancel a pending or running task.
    Cancel {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
    /// Print a task's log; -f follows it until the task ends.
    Logs {
        #[command(flatten)]
        remote: Remote,
        id: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Wait for a task to end, showing its progress; fails unless it completed.
    Wait {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
}

#[derive(Args)]
struct ArtifactArgs {
    #[command(subcommand)]
    command: ArtifactCommand,
}

#[derive(Subcommand)]
enum ArtifactCommand {
    List {
        #[command(flatten)]
        remote: Remote,
    },
    Get {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
    Delete {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
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
    match cli.command {
        Command::Serve(args) => {
            let mut config = lancer::config::Config::from_env()?;
            if let Some(lake) = args.lake {
                config.lake = lake;
            }
            if let Some(db) = args.db {
                config.db = db;
            }
            if let Some(host) = args.host {
                config.host = host;
            }
            if let Some(port) = args.port {
                config.port = port;
            }
            if let Some(scripts) = args.scripts {
                config.scripts = scripts;
            }
            if let Some(concurrency) = args.concurrency {
                config.concurrency = concurrency.max(1);
            }
            Ok(lancer::app::serve(&config).await?)
        }
        Command::Tasks(command) => tasks(command).await,
        Command::Datasets(args) => artifacts("datasets", args.command).await,
        Command::Models(args) => artifacts("models", args.command).await,
        Command::Bench {
            remote,
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

fn print_json(value: &Value) -> Result<()> {
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

async fn tasks(command: TaskCommand) -> Result<()> {
    match command {
        TaskCommand::Submit {
            remote,
            name,
            script,
            input,
            output,
            params,
            param,
            cpus,
            gpus,
            memory_mb,
            max_attempts,
            idempotency_key,
            wait,
        } => {
            let mut spec = json!({
                "name": name, "script": script, "input": input, "output": output,
                "params": params_of(params, param)?,
            });
            let mut resources = Map::new();
            if let Some(cpus) = cpus {
                resources.insert("cpus".into(), json!(cpus));
            }
            if let Some(gpus) = gpus {
                resources.insert("gpus".into(), json!(gpus));
            }
            if let Some(memory_mb) = memory_mb {
                resources.insert("memory_mb".into(), json!(memory_mb));
            }
            if !resources.is_empty() {
                spec["resources"] = Value::Object(resources);
            }
            if let Some(max_attempts) = max_attempts {
                spec["max_attempts"] = json!(max_attempts);
            }
            let client = remote.client()?;
            let task = client.submit(&spec, idempotency_key.as_deref()).await?;
            print_json(&task)?;
            if wait {
                let id = task["id"]
                    .as_str()
                    .context("the server answered a task without id")?;
                wait_for(&client, id).await?;
            }
            Ok(())
        }
        TaskCommand::List {
            remote,
            status,
            limit,
            page_token,
        } => {
            let page = remote
                .client()?
                .list_tasks(status.as_deref(), limit, page_token.as_deref())
                .await?;
            println!(
                "{:<38} {:<24} {:<10} {:>8}  CREATED",
                "ID", "NAME", "STATUS", "PROGRESS"
            );
            for task in page["tasks"].as_array().into_iter().flatten() {
                let progress = task["progress"]["fraction"]
                    .as_f64()
                    .map(|f| format!("{:.0}%", f * 100.0))
                    .unwrap_or_default();
                println!(
                    "{:<38} {:<24} {:<10} {:>8}  {}",
                    task["id"].as_str().unwrap_or(""),
                    task["spec"]["name"].as_str().unwrap_or(""),
                    task["status"].as_str().unwrap_or(""),
                    progress,
                    task["created_at"].as_str().unwrap_or(""),
                );
            }
            if let Some(token) = page["next_page_token"].as_str() {
                println!("more: --page-token {token}");
            }
            Ok(())
        }
        TaskCommand::Get { remote, id } => print_json(&remote.client()?.task(&id).await?),
        TaskCommand::Cancel { remote, id } => print_json(&remote.client()?.cancel(&id).await?),
        TaskCommand::Logs { remote, id, follow } => {
            let client = remote.client()?;
            let mut offset = 0;
            loop {
                let slice = client.logs(&id, offset).await?;
                print!("{}", slice.text);
                offset = slice.next_offset;
                // The server answers in chunks: an empty one means the log has no more yet.
                if slice.text.is_empty() {
                    let ended =
                        matches!(slice.status.as_str(), "completed" | "failed" | "cancelled");
                    if !follow || ended {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        TaskCommand::Wait { remote, id } => wait_for(&remote.client()?, &id).await,
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
        let status = task["status"].as_str().unwrap_or("unknown").to_owned();
        let progress = &task["progress"];
        if let Some(fraction) = progress["fraction"].as_f64() {
            bar.set_position((fraction.clamp(0.0, 1.0) * 1000.0) as u64);
        }
        let message = progress["message"].as_str().unwrap_or("");
        let endpoint = task["endpoint"]
            .as_str()
            .map(|e| format!(" serving {e}"))
            .unwrap_or_default();
        bar.set_message(format!("{status} {message}{endpoint}"));
        if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
            break task;
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish();
    match task["status"].as_str() {
        Some("completed") => {
            print_json(&task["result"])?;
            Ok(())
        }
        Some(status) => bail!(
            "task {id} {status}: {}",
            task["error"]["message"]
                .as_str()
                .unwrap_or("no error recorded")
        ),
        None => bail!("task {id} has no status"),
    }
}

async fn artifacts(kind: &str, command: ArtifactCommand) -> Result<()> {
    match command {
        ArtifactCommand::List { remote } => {
            let list = remote.client()?.artifacts(kind).await?;
            println!("{:<32} {:>10}  SCHEMA", "ID", "ROWS");
            for item in list.as_array().into_iter().flatten() {
                let schema = item["schema"]
                    .as_object()
                    .map(|fields| {
                        fields
                            .iter()
                            .map(|(name, ty)| format!("{name}: {}", ty.as_str().unwrap_or("?")))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                println!(
                    "{:<32} {:>10}  {schema}",
                    item["id"].as_str().unwrap_or(""),
                    item["num_rows"].as_u64().unwrap_or(0)
                );
            }
            Ok(())
        }
        ArtifactCommand::Get { remote, id } => {
            print_json(&remote.client()?.artifact(kind, &id).await?)
        }
        ArtifactCommand::Delete { remote, id } => {
            remote.client()?.delete_artifact(kind, &id).await?;
            println!("deleted {kind}/{id}");
            Ok(())
        }
    }
}
