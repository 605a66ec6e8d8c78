//! `lancer-ingest`: S3 `ObjectCreated` events, directly or inside SQS messages, become
//! ingestion tasks by `LANCER_INGEST_RULES`. Under AWS Lambda each invocation is one event;
//! anywhere else it reads events as JSON, one per line, on stdin and prints what it did.

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use lancer::app::{init_tracing, on_lambda, service};
use lancer::config::Config;
use lancer::events::ingest_event;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let config = Config::from_env()?;
    if config.ingest_rules.is_empty() {
        tracing::warn!("LANCER_INGEST_RULES is empty: uploads will be stored but start nothing");
    }
    let service = Arc::new(service(&config).await?);
    let lake = Arc::new(config.lake.root.clone());
    if on_lambda() {
        let handler = service_fn(move |event: LambdaEvent<Value>| {
            let (service, lake) = (service.clone(), lake.clone());
            async move {
                Ok::<_, lambda_runtime::Error>(ingest_event(&service, &lake, &event.payload).await?)
            }
        });
        return lambda_runtime::run(handler).await;
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line)?;
        println!("{}", ingest_event(&service, &lake, &event).await?);
    }
    Ok(())
}
