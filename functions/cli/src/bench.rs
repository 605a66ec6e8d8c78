//! `lancer bench`: figures for a running lancer, printed, never asserted.
//! API throughput and latency of `POST /tasks` + `GET /tasks/{id}` at concurrency 1 and 32,
//! then submit-to-completed latency of a no-op task.

use std::time::{Duration, Instant};

use anyhow::Result;
use lancer::domain::task::TaskStatus;
use serde_json::json;

use crate::client::Client;

pub struct BenchOptions {
    pub requests: usize,
    pub script: String,
    pub noop_tasks: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One worker's share: submit a task then read it back, timing each request.
async fn worker(
    client: Client,
    script: String,
    count: usize,
    tag: String,
) -> Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(count * 2);
    for n in 0..count {
        let spec = json!({"name": format!("bench-{tag}-{n}"), "script": script});
        let started = Instant::now();
        let task = client.submit(&spec, None).await?;
        latencies.push(started.elapsed());
        let started = Instant::now();
        client.task(task.id.as_str()).await?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

pub async fn api(client: &Client, options: &BenchOptions) -> Result<()> {
    println!(
        "lancer bench: {} POST+GET pairs per level, script {}",
        options.requests, options.script
    );
    println!(
        "{:>11} {:>10} {:>10} {:>10} {:>10}",
        "concurrency", "requests", "req/s", "p50 ms", "p99 ms"
    );
    for concurrency in [1usize, 32] {
        let per_worker = options.requests.div_ceil(concurrency);
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency)
            .map(|w| {
                tokio::spawn(worker(
                    client.clone(),
                    options.script.clone(),
                    per_worker,
                    format!("c{concurrency}w{w}"),
                ))
            })
            .collect();
        let mut latencies = Vec::new();
        for handle in workers {
            latencies.extend(handle.await??);
        }
        let elapsed = started.elapsed();
        latencies.sort();
        println!(
            "{concurrency:>11} {:>10} {:>10.0} {:>10.2} {:>10.2}",
            latencies.len(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
        );
    }
    Ok(())
}

/// Waits for the queue the API benchmark filled, then times no-op tasks one by one.
pub async fn submit_to_completed(client: &Client, options: &BenchOptions) -> Result<()> {
    let drain_started = Instant::now();
    loop {
        let busy = ["pending", "running"]
            .iter()
            .map(|status| client.list_tasks(Some(status), 1, None));
        let mut idle = true;
        for page in futures::future::join_all(busy).await {
            idle &= page?.tasks.is_empty();
        }
        if idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "queue drained in {:.1} s",
        drain_started.elapsed().as_secs_f64()
    );
    let mut latencies = Vec::new();
    for n in 0..options.noop_tasks {
        let started = Instant::now();
        let task = client
            .submit(
                &json!({"name": format!("bench-noop-{n}"), "script": options.script}),
                None,
            )
            .await?;
        loop {
            let now = client.task(task.id.as_str()).await?;
            match now.status {
                TaskStatus::Completed => break,
                status if status.is_terminal() => {
                    anyhow::bail!("no-op task {} ended {status}", task.id)
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "submit-to-completed of a no-op task ({} runs): median {:.0} ms, min {:.0} ms, max {:.0} ms",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(latencies.first().copied().unwrap_or_default()),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    Ok(())
}
