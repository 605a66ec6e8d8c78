//! `lancer-sweeper`: fails the running tasks whose runner stopped heartbeating (or requeues
//! them while attempts remain), hands pending tasks to the dispatcher, and advances running
//! pipelines. Under AWS Lambda once per scheduled invocation, answering what the round did
//! (`{"requeued", "failed", "pending", "running", "pipelines", "errors"}`); anywhere else
//! on a timer until Ctrl-C.

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use lancer::app::{init_tracing, on_lambda, reconcile_once, service, spawn_reconciler};
use lancer::config::Config;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let config = Config::from_env()?;
    let service = Arc::new(service(&config).await?);
    if on_lambda() {
        let handler = service_fn(move |_: LambdaEvent<Value>| {
            let service = service.clone();
            async move {
                let report = reconcile_once(&service).await;
                Ok::<_, lambda_runtime::Error>(serde_json::to_value(report)?)
            }
        });
        return lambda_runtime::run(handler).await;
    }
    spawn_reconciler(service, config.dispatch.lease);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
