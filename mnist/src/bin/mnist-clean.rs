//! `mnist-clean`: the pipeline's ingestion step. MNIST IDX files (plain or gzip) in,
//! a Lance dataset of `index`, `image`, `label`, `split` out, streamed batch by batch.
//! The input is a local folder or an `s3://` prefix.
//!
//! Params: `normalize` (default true), `flatten` (default true), `test_ratio` (optional),
//! `batch_rows` (default 4096); any other param is refused, naming it. Result:
//! `{total_records, train, test, dropped}`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use mnist::clean::{CleanBatches, CleanOptions, find_parts};
use mnist::contract::{Invocation, Progress, init_logging, storage_options};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let task = Invocation::from_args()?;
    if task.input.is_empty() || task.output.is_empty() {
        bail!("mnist-clean needs an input folder of IDX files and an output dataset");
    }
    // Raw files on object storage are fetched to a scratch folder first: IDX files are
    // read front to back, and gzip streams cannot be read from the middle anyway.
    let scratch = tempfile::Builder::new().prefix("mnist-raw-").tempdir()?;
    let input_dir = if task.input.starts_with("s3://") {
        let fetched = mnist::lake::fetch_folder(&task.input, &storage_options(), scratch.path())
            .await
            .with_context(|| format!("fetching {}", task.input))?;
        tracing::info!(files = fetched, from = %task.input, "raw files fetched");
        scratch.path().to_path_buf()
    } else if task.input.contains("://") {
        bail!(
            "mnist-clean reads IDX files from a local folder or s3://; {} is neither",
            task.input
        );
    } else {
        Path::new(&task.input).to_path_buf()
    };
    let options: CleanOptions = task.params()?;
    // A batch of no rows would never finish; 0 has always meant 1.
    let options = CleanOptions {
        batch_rows: options.batch_rows.max(1),
        ..options
    };
    let parts = find_parts(&input_dir)?;
    let mut progress = Progress::from_env();
    progress
        .report(json!({"fraction": 0.0, "message": format!("cleaning {} IDX parts", parts.len())}));
    let started = std::time::Instant::now();
    let batches = CleanBatches::new(parts, options)?;
    let report = batches.report.clone();
    let dataset =
        mnist::lake::overwrite(batches.in_background()?, &task.output, &storage_options()).await?;
    let report = report
        .lock()
        .map_err(|_| anyhow::anyhow!("report lock poisoned"))?
        .clone();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        rows = report.total_records,
        dropped = report.dropped,
        version = dataset.version().version,
        rows_per_second = report.total_records as f64 / seconds,
        "cleaned"
    );
    progress.report(json!({"fraction": 1.0, "message": "cleaned", "metrics": {"rows_per_second": report.total_records as f64 / seconds}}));
    task.finish(&serde_json::to_value(&report).context("report")?)
}
