//! `lancer-runner <task-id>`: one task, one process. Exit status 0 when the task was run
//! (whatever its outcome) or was not ours to run; 1 when the runner itself could not work.
//! `lancer-runner sandbox ...` is how the runner starts a script inside the sandbox.

use lancer::app::{init_tracing, runner_context};
use lancer::config::Config;
use lancer::runner::{Outcome, run_task};

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    // Starting a sandboxed script: restrict this process, then become the script. It must
    // happen before any runtime thread exists, in the thread that then execs.
    match args.next() {
        Some(first) if first == lancer::sandbox::SUBCOMMAND => {
            return lancer::sandbox::exec_main(args.collect());
        }
        Some(first) if first == lancer::sandbox::namespaces::INNER => {
            return lancer::sandbox::inner_main(args.collect());
        }
        _ => {}
    }
    run()
}

#[tokio::main]
async fn run() -> std::process::ExitCode {
    init_tracing();
    let Some(task_id) = std::env::args()
        .nth(1)
        .and_then(|id| lancer::domain::task::TaskId::parse(&id).ok())
    else {
        eprintln!("usage: lancer-runner <task-id>");
        return std::process::ExitCode::from(2);
    };
    let outcome: Result<Outcome, Box<dyn std::error::Error + Send + Sync>> = async {
        let config = Config::from_env()?;
        let ctx = runner_context(&config).await?;
        Ok(run_task(&ctx, &task_id).await?)
    }
    .await;
    match outcome {
        Ok(Outcome::NotClaimed(status)) => {
            tracing::info!(task = %task_id, %status, "not claimed: the task is not pending");
            std::process::ExitCode::SUCCESS
        }
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(task = %task_id, %err, "runner failed");
            std::process::ExitCode::FAILURE
        }
    }
}
