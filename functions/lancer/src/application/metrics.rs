//! What `GET /metrics` shows: the process's own series, and those of the task table.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Service;
use crate::domain::task::{Task, TaskStatus};
use crate::domain::tenant::Tenant;
use crate::error::Result;
use crate::ports::ListQuery;
use crate::telemetry::{self, QUEUE_WAIT, RUN_TIME, Registry, TASKS};

/// The most tasks one scrape reads from the table.
const MAX_SCANNED: usize = 200_000;

/// How long the table's figures are reused: reading 10,000 tasks takes most of a second
/// (scripts/bench-console), so back-to-back scrapes must not each read the table.
const TABLE_TTL: Duration = Duration::from_secs(5);

/// The table's figures as last rendered, by scope (a tenant, or every tenant).
type Rendered = Mutex<HashMap<Option<String>, (Instant, String)>>;

fn cache() -> &'static Rendered {
    static CACHE: OnceLock<Rendered> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

impl Service {
    /// Prometheus text: `tenant`'s tasks by status with their queue waits and run times
    /// (every tenant's when `None`), then the process's own series.
    /// With a tenant that shares the server with others, only that tenant's series: the
    /// process's own (requests, uploads, dispatch) count every tenant's traffic and are
    /// the operator's (`LANCER_METRICS_OPEN`).
    pub async fn metrics_text(&self, tenant: Option<&Tenant>) -> Result<String> {
        let scope = tenant.map(|t| t.name.to_string());
        let fresh = cache()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&scope)
            .filter(|(at, _)| at.elapsed() < TABLE_TTL)
            .map(|(_, text)| text.clone());
        let mut text = match fresh {
            Some(text) => text,
            None => {
                let text = self.table_metrics(tenant).await?;
                let mut cached = cache()
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                cached.insert(scope, (Instant::now(), text.clone()));
                text
            }
        };
        let shared = tenant.is_some() && self.api_keys.is_some();
        if !shared {
            telemetry::global().render(&mut text);
        }
        Ok(text)
    }

    /// The task table's series for `tenant` (every tenant when `None`).
    async fn table_metrics(&self, tenant: Option<&Tenant>) -> Result<String> {
        let table = Registry::default();
        if let Some(tenant) = tenant {
            for status in TaskStatus::ALL {
                let labels = [
                    ("tenant", tenant.name.as_str()),
                    ("status", status.as_str()),
                ];
                table.add(TASKS, &labels, 0.0);
            }
        }
        let mut query = ListQuery {
            tenant: tenant.map(|t| t.name.clone()),
            status: None,
            name_prefix: None,
            limit: crate::ports::MAX_PAGE,
            page_token: None,
        };
        let mut scanned = 0;
        loop {
            let page = self.store.list(&query).await?;
            scanned += page.tasks.len();
            page.tasks.iter().for_each(|task| record(&table, task));
            match page.next_page_token {
                Some(token) if scanned < MAX_SCANNED => query.page_token = Some(token),
                Some(_) => {
                    tracing::warn!(scanned, "metrics cover the newest tasks only");
                    break;
                }
                None => break,
            }
        }
        let mut text = String::new();
        table.render(&mut text);
        Ok(text)
    }
}

fn record(table: &Registry, task: &Task) {
    let tenant = task.tenant.as_str();
    let status = task.status.as_str();
    table.add(TASKS, &[("tenant", tenant), ("status", status)], 1.0);
    let seconds = |delta: chrono::TimeDelta| delta.num_milliseconds().max(0) as f64 / 1000.0;
    if let Some(started) = task.started_at {
        table.observe(
            QUEUE_WAIT,
            &[("tenant", tenant)],
            seconds(started - task.created_at),
        );
        if let Some(finished) = task.finished_at {
            let labels = [("tenant", tenant), ("status", status)];
            table.observe(RUN_TIME, &labels, seconds(finished - started));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::task::TaskId;
    use crate::domain::tenant::TenantName;
    use crate::scripts::MemoryScripts;

    fn service() -> Service {
        Service::in_memory(MemoryScripts::default())
    }

    async fn add_task(service: &Service, tenant: &Tenant) {
        let id = TaskId::from_uuid(uuid::Uuid::now_v7());
        let spec = serde_json::from_value(json!({"name": "t", "script": "job.py"})).expect("spec");
        let task = Task::new(&id, tenant, spec, None, None, chrono::Utc::now());
        service.store.create(task).await.expect("create");
    }

    #[tokio::test]
    async fn the_tables_figures_are_reused_for_five_seconds_then_read_again() {
        let service = service();
        // The cache is the process's: a tenant no other test scrapes.
        let name = format!("metrics-{}", uuid::Uuid::now_v7().simple());
        let tenant = Tenant::keyed(TenantName::parse(&name).expect("a tenant name"));
        let pending = |n: u32| {
            format!(
                "lancer_tasks{{tenant=\"{}\",status=\"pending\"}} {n}\n",
                tenant.name
            )
        };
        add_task(&service, &tenant).await;
        let first = service.metrics_text(Some(&tenant)).await.expect("metrics");
        assert!(first.contains(&pending(1)), "{first}");
        add_task(&service, &tenant).await;
        let reused = service.metrics_text(Some(&tenant)).await.expect("metrics");
        assert!(
            reused.contains(&pending(1)),
            "read the table again: {reused}"
        );
        // As if the figures had been rendered TABLE_TTL ago.
        let scope = Some(tenant.name.to_string());
        cache()
            .lock()
            .expect("lock")
            .get_mut(&scope)
            .expect("cached")
            .0 -= TABLE_TTL;
        let fresh = service.metrics_text(Some(&tenant)).await.expect("metrics");
        assert!(fresh.contains(&pending(2)), "{fresh}");
    }
}
