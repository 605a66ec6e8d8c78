//! `lancer-sweeper`: fails the running tasks whose runner stopped heartbeating (or requeues
//! them while attempts remain) and hands pending tasks to the dispatcher. Under AWS Lambda
//! once per scheduled invocation; anywhere else every half lease until Ctrl-C.

use lambda_runtime::{LambdaEvent, service_fn};
use lancer::app::{init_tracing, on_lambda, open_dispatcher, open_store};
use lancer::config::Config;
use lancer::dispatch::spawn_reconciler;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let config = Config::from_env()?;
    let store = open_store(&config).await?;
    let dispatcher = open_dispatcher(&config, store)?;
    if on_lambda() {
        let handler = service_fn(move |_: LambdaEvent<Value>| {
            let dispatcher = dispatcher.clone();
            async move {
                dispatcher.reconcile().await?;
                Ok::<_, lambda_runtime::Error>(json!({"swept": true}))
            }
        });
        return lambda_runtime::run(handler).await;
    }
    spawn_reconciler(dispatcher, config.dispatch.lease);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
