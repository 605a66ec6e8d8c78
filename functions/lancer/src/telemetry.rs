//! Counters and histograms in Prometheus' text format: the process's own (HTTP latency,
//! dispatch, missed heartbeats, uploads), kept in one global registry, and those a scrape
//! derives from the task table into a registry of its own.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

/// One metric family: its name, kind and what it counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    /// The metric's name as exposed, e.g. `lancer_tasks`.
    pub name: &'static str,
    /// Counter, gauge or histogram, with a histogram's bucket bounds.
    pub kind: Kind,
    /// The `# HELP` text: what it counts, and by which labels.
    pub help: &'static str,
}

/// What a family's series hold, as its `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A total that only grows: `Registry::add` adds to it.
    Counter,
    /// A value as it stands, which may go down as well as up (tasks by status).
    Gauge,
    /// Observations counted into buckets with these upper bounds, ascending, plus their sum
    /// and count; the `+Inf` bucket is implied.
    Histogram(&'static [f64]),
}

/// Request and dispatch latencies, in seconds.
pub const LATENCY: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Queue waits and run times, in seconds: a second to a day.
pub const TASK_TIME: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// The latency of every HTTP request the API answers, labelled `method`, `route` (the
/// matched template) and `status` (its class, `2xx`).
pub const HTTP_REQUESTS: Family = Family {
    name: "lancer_http_request_duration_seconds",
    kind: Kind::Histogram(LATENCY),
    help: "Time to answer an HTTP request, by method, route and status.",
};
/// How long handing a newly stored task to its dispatcher took, labelled `backend` and
/// `outcome` (`ok` or `error`).
pub const DISPATCH: Family = Family {
    name: "lancer_dispatch_duration_seconds",
    kind: Kind::Histogram(LATENCY),
    help: "Time to hand a task to its backend, by backend and outcome.",
};
/// Running tasks reconcile found past their lease, labelled `outcome`: requeued or failed.
pub const HEARTBEATS_MISSED: Family = Family {
    name: "lancer_heartbeats_missed_total",
    kind: Kind::Counter,
    help: "Running tasks whose runner stopped heartbeating past the lease, by what became of them.",
};
/// Reconcile rounds over the tasks this process finished, labelled `outcome`: `ok`, or
/// `errors` when a step of the round failed (and is tried again next round). A client can
/// wait on it to know the server has looked at the table since some moment.
pub const RECONCILE_ROUNDS: Family = Family {
    name: "lancer_reconcile_rounds_total",
    kind: Kind::Counter,
    help: "Reconcile rounds over the tasks this process finished, by outcome (ok or errors).",
};
/// Uploads stored under `raw/`.
pub const UPLOADS: Family = Family {
    name: "lancer_uploads_total",
    kind: Kind::Counter,
    help: "Uploads stored under raw/.",
};
/// Bytes of the uploads stored under `raw/`.
pub const UPLOAD_BYTES: Family = Family {
    name: "lancer_upload_bytes_total",
    kind: Kind::Counter,
    help: "Bytes of the uploads stored under raw/.",
};
/// Ingestions a rule started for an upload, labelled `started`: `task` or `pipeline`.
pub const INGESTIONS: Family = Family {
    name: "lancer_ingestions_total",
    kind: Kind::Counter,
    help: "Ingestions a rule started for an upload, by what it started (task or pipeline).",
};
/// Requests through an alias's endpoint, labelled `tenant`, `model`, `alias`, `version`
/// (the one that answered) and `status` (its class, `2xx`, or `none` when no replica
/// answered). Past 256 aliases a process has seen, `model` and `alias` are `other`.
pub const ALIAS_REQUESTS: Family = Family {
    name: "lancer_alias_requests_total",
    kind: Kind::Counter,
    help: "Requests through an alias's endpoint, by tenant, model, alias, answering version and status.",
};
/// Time from a request's arrival at an alias's endpoint to its replica's answer headers,
/// labelled as `ALIAS_REQUESTS` less `status`.
pub const ALIAS_LATENCY: Family = Family {
    name: "lancer_alias_request_duration_seconds",
    kind: Kind::Histogram(LATENCY),
    help: "Time to a replica's answer through an alias's endpoint, by tenant, model, alias and version.",
};
/// Requests that found no replica of their alias ready and waited for one to start (a
/// scale from zero), labelled `tenant`, `model`, `alias` and `outcome` (`started` or
/// `timeout`), observed as the seconds they waited.
pub const ALIAS_COLD_STARTS: Family = Family {
    name: "lancer_alias_cold_start_seconds",
    kind: Kind::Histogram(TASK_TIME_SHORT),
    help: "Waits of requests that found no replica of their alias ready, by tenant, model, alias and outcome.",
};
/// Replicas by `tenant`, `model`, `version` and `state` (`starting` or `ready`), as this
/// process's last serving round saw them.
pub const REPLICAS: Family = Family {
    name: "lancer_replicas",
    kind: Kind::Gauge,
    help: "Replicas serving model versions, by tenant, model, version and state.",
};

/// Cold-start waits, in seconds: a tenth of a second to ten minutes.
pub const TASK_TIME_SHORT: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 600.0];

/// Tasks in the task table, labelled `tenant` and `status`: derived from the table at each
/// scrape, not kept in `global`.
pub const TASKS: Family = Family {
    name: "lancer_tasks",
    kind: Kind::Gauge,
    help: "Tasks in the table, by tenant and status.",
};
/// Seconds from each started task's creation to its latest start, labelled `tenant`:
/// derived from the task table at each scrape.
pub const QUEUE_WAIT: Family = Family {
    name: "lancer_task_queue_wait_seconds",
    kind: Kind::Histogram(TASK_TIME),
    help: "From a task's submission to its (latest) start, by tenant.",
};
/// Seconds from each finished task's start to its end, labelled `tenant` and `status`:
/// derived from the task table at each scrape.
pub const RUN_TIME: Family = Family {
    name: "lancer_task_run_seconds",
    kind: Kind::Histogram(TASK_TIME),
    help: "From a finished task's start to its end, by tenant and status.",
};

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
enum Value {
    Number(f64),
    Histogram {
        buckets: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

/// Series by family (its name) and labels.
#[derive(Default)]
pub struct Registry {
    series: Mutex<BTreeMap<&'static str, (Family, Series)>>,
}

/// A family's series by their labels.
type Series = BTreeMap<Labels, Value>;

/// The process's registry.
pub fn global() -> &'static Registry {
    static GLOBAL: OnceLock<Registry> = OnceLock::new();
    GLOBAL.get_or_init(Registry::default)
}

impl Registry {
    /// Adds `by` to a counter, or sets a gauge to it when it is new.
    pub fn add(&self, family: Family, labels: &[(&'static str, &str)], by: f64) {
        self.update(family, labels, |value| match value {
            Value::Number(n) => *n += by,
            Value::Histogram { .. } => {}
        });
    }

    /// Records one observation of a histogram.
    pub fn observe(&self, family: Family, labels: &[(&'static str, &str)], value: f64) {
        let Kind::Histogram(bounds) = family.kind else {
            return;
        };
        self.update(family, labels, |series| {
            if let Value::Histogram {
                buckets,
                sum,
                count,
            } = series
            {
                if let Some(at) = bounds.iter().position(|&bound| value <= bound) {
                    buckets[at] += 1;
                }
                *sum += value;
                *count += 1;
            }
        });
    }

    /// Replaces every series of a gauge family by `values`: what a round counted, with
    /// the series it no longer saw gone.
    pub fn set_all(&self, family: Family, values: Vec<(Vec<(&'static str, String)>, f64)>) {
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let all = values
            .into_iter()
            .map(|(labels, value)| (labels, Value::Number(value)))
            .collect();
        series.insert(family.name, (family, all));
    }

    fn update(
        &self,
        family: Family,
        labels: &[(&'static str, &str)],
        change: impl FnOnce(&mut Value),
    ) {
        let labels: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let value = series
            .entry(family.name)
            .or_insert_with(|| (family, BTreeMap::new()))
            .1
            .entry(labels)
            .or_insert_with(|| match family.kind {
                Kind::Histogram(bounds) => Value::Histogram {
                    buckets: vec![0; bounds.len()],
                    sum: 0.0,
                    count: 0,
                },
                _ => Value::Number(0.0),
            });
        change(value);
    }

    /// Every series in the text exposition format, families in name order.
    pub fn render(&self, out: &mut String) {
        let series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (family, all) in series.values() {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} {kind}",
                family.name, family.help, family.name
            );
            for (labels, value) in all {
                render_series(out, family, labels, value);
            }
        }
    }
}

fn render_series(out: &mut String, family: &Family, labels: &Labels, value: &Value) {
    let name = family.name;
    match (value, family.kind) {
        (Value::Number(n), _) => {
            let _ = writeln!(out, "{name}{} {n}", label_text(labels, None));
        }
        (
            Value::Histogram {
                buckets,
                sum,
                count,
            },
            Kind::Histogram(bounds),
        ) => {
            let mut cumulative = 0;
            for (bound, n) in bounds.iter().zip(buckets) {
                cumulative += n;
                let le = bound.to_string();
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {cumulative}",
                    label_text(labels, Some(&le))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {count}",
                label_text(labels, Some("+Inf"))
            );
            let _ = writeln!(out, "{name}_sum{} {sum}", label_text(labels, None));
            let _ = writeln!(out, "{name}_count{} {count}", label_text(labels, None));
        }
        _ => {}
    }
}

/// `{a="x",le="0.5"}`, values escaped as the format asks; empty without labels.
fn label_text(labels: &Labels, le: Option<&str>) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(le.map(|le| ("le", le)))
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_with_sum_and_count() {
        let registry = Registry::default();
        // Powers of two, so the sum is exact.
        for seconds in [0.0009765625, 0.25, 0.5, 32.0] {
            registry.observe(DISPATCH, &[("backend", "local")], seconds);
        }
        registry.add(UPLOADS, &[], 2.0);
        let mut text = String::new();
        registry.render(&mut text);
        for line in [
            "# TYPE lancer_dispatch_duration_seconds histogram",
            "lancer_dispatch_duration_seconds_bucket{backend=\"local\",le=\"0.001\"} 1",
            "lancer_dispatch_duration_seconds_bucket{backend=\"local\",le=\"0.005\"} 1",
            "lancer_dispatch_duration_seconds_bucket{backend=\"local\",le=\"0.25\"} 2",
            "lancer_dispatch_duration_seconds_bucket{backend=\"local\",le=\"0.5\"} 3",
            "lancer_dispatch_duration_seconds_bucket{backend=\"local\",le=\"10\"} 3",
            "lancer_dispatch_duration_seconds_bucket{backend=\"local\",le=\"+Inf\"} 4",
            "lancer_dispatch_duration_seconds_sum{backend=\"local\"} 32.7509765625",
            "lancer_dispatch_duration_seconds_count{backend=\"local\"} 4",
            "# TYPE lancer_uploads_total counter",
            "lancer_uploads_total 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let registry = Registry::default();
        registry.add(TASKS, &[("tenant", "a\"b\\c\nd")], 1.0);
        let mut text = String::new();
        registry.render(&mut text);
        assert!(
            text.contains(r#"lancer_tasks{tenant="a\"b\\c\nd"} 1"#),
            "{text}"
        );
    }
}
