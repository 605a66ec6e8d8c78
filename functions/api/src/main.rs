//! `lancer-api`: the REST API. Under AWS Lambda it answers API Gateway HTTP API (v2) events
//! with the same axum `Router` that `lancer serve` serves; anywhere else it is a local HTTP
//! server on `LANCER_HOST:LANCER_PORT`.

use lancer::app::{app_state, init_tracing, on_lambda};
use lancer::config::Config;
use lancer::dispatch::spawn_reconciler;
use lancer::http::router;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    init_tracing();
    let config = Config::from_env()?;
    let state = app_state(&config).await?;
    if on_lambda() {
        // A function is frozen between invocations: the sweeper's schedule reconciles.
        return lambda_http::run(router(state)).await;
    }
    spawn_reconciler(state.dispatcher.clone(), config.lease);
    let listener = tokio::net::TcpListener::bind(config.listen_addr()).await?;
    println!("lancer-api listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
