//! `lancer serve`: the REST API and the local dispatcher on the embedded defaults.

use std::sync::Arc;

use anyhow::{Context, Result};
use lancer::app::{local_dispatcher, open_lake, open_store};
use lancer::config::Config;
use lancer::http::{AppState, router};
use lancer::ports::Dispatcher;
use tracing::{info, warn};

pub async fn serve(config: Config) -> Result<()> {
    let store = open_store(&config)?;
    let lake = open_lake(&config)?;
    let dispatcher = local_dispatcher(&config, store.clone())?;
    // Tasks left pending or running by a previous server are picked up again.
    dispatcher.reconcile().await?;
    dispatcher.spawn_reconciler();
    let app = router(AppState {
        store,
        lake,
        dispatcher: Arc::new(dispatcher),
        scripts: config.scripts.clone(),
        api_keys: config.api_keys.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen_addr())
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr()))?;
    let addr = listener.local_addr()?;
    if config.api_keys.is_none() && !addr.ip().is_loopback() {
        warn!(%addr, "no API keys are configured and the server listens beyond loopback: anyone who can reach it can run code");
    }
    info!(lake = %config.lake, db = %config.db.display(), scripts = %config.scripts.display(), "embedded platform ready");
    // The one line on stdout, so scripts and tests can find a port-0 server.
    println!("lancer listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
