//! `lancer serve`: the REST API and the configured dispatcher (local subprocesses by
//! default, or Ray jobs), on the embedded defaults.

use anyhow::{Context, Result};
use lancer::app::app_state;
use lancer::config::Config;
use lancer::dispatch::spawn_reconciler;
use lancer::http::router;
use tracing::{info, warn};

pub async fn serve(config: Config) -> Result<()> {
    let state = app_state(&config).await?;
    // Tasks left pending or running by a previous server are picked up again.
    if let Err(err) = state.dispatcher.reconcile().await {
        warn!(%err, backend = state.dispatcher.backend(), "first reconcile failed; retrying every half lease");
    }
    spawn_reconciler(state.dispatcher.clone(), config.lease);
    let app = router(state);
    let listener = tokio::net::TcpListener::bind(config.listen_addr())
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr()))?;
    let addr = listener.local_addr()?;
    if config.api_keys.is_none() && !addr.ip().is_loopback() {
        warn!(%addr, "no API keys are configured and the server listens beyond loopback: anyone who can reach it can run code");
    }
    info!(backend = config.backend_name(), lake = %config.lake, db = %config.db.display(), scripts = %config.scripts.display(), "embedded platform ready");
    // The one line on stdout, so scripts and tests can find a port-0 server.
    println!("lancer listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
