//! `lancer-api`: the REST API. Under AWS Lambda it answers API Gateway HTTP API (v2) events
//! with the same axum `Router` that `lancer serve` serves; anywhere else it is `lancer serve`.

use lancer::app::{app_state, init_tracing, on_lambda, serve};
use lancer::config::Config;
use lancer::http::router;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    init_tracing();
    let config = Config::from_env()?;
    if !on_lambda() {
        return Ok(serve(&config).await?);
    }
    // A function is frozen between invocations: the sweeper's schedule reconciles.
    lambda_http::run(router(app_state(&config, None).await?)).await
}
