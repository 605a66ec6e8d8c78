//! `mnist-bench`: the MNIST workload's figures, printed (never asserted).
//!
//! Runs the three jobs exactly as the platform's runner does (contract flags, params file,
//! progress file), one after the other on raw IDX files, and prints:
//! clean rows/s; train seconds per epoch beside PyTorch's reference, and accuracy after
//! each epoch; `/predict` requests/s and p50/p99 latency at concurrency 1 and 32; and the
//! peak RSS of each job. `--scale DIR` also cleans DIR's IDX files as they are and
//! repeated ten times, to show that memory stays flat as the input grows.
//!
//! Usage: `mnist-bench --raw DIR [--epochs N] [--requests N] [--scale DIR] [--only clean]`
//! (`mnist/bench` fetches the digits and builds it in release).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mnist::idx::{IMAGE_MAGIC, ImageReader, LABEL_MAGIC, PIXELS, read_labels, write_idx};
use serde_json::{Value, json};
use tokio::process::Command;

/// PyTorch's own MNIST example on the same 8,600/1,400 digits and 2 cores (the figure).
const PYTORCH_SECONDS_PER_EPOCH: f64 = 14.0;

/// The MNIST workload's figures, printed, never asserted.
#[derive(clap::Parser)]
#[command(name = "mnist-bench")]
struct Options {
    /// A folder holding the four MNIST IDX files (`mnist/fetch-data` writes one).
    #[arg(long)]
    raw: PathBuf,
    /// Training epochs (default: the trainer's own, as the pipeline runs it).
    #[arg(long)]
    epochs: Option<u64>,
    /// `/predict` requests per concurrency level.
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    /// Also clean this folder's IDX files as they are and repeated ten times, to show
    /// that memory stays flat as the input grows.
    #[arg(long)]
    scale: Option<PathBuf>,
    /// Run one stage only.
    #[arg(long, value_enum)]
    only: Option<Stage>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Stage {
    Clean,
}

/// A job run under the run contract, measured by a `mnist-bench measure` parent of its own,
/// so the peak RSS reported is that job's alone.
struct Job {
    child: tokio::process::Child,
    progress: PathBuf,
    result: PathBuf,
    rss_file: PathBuf,
    started: Instant,
}

struct Finished {
    result: Value,
    progress: Vec<Value>,
    seconds: f64,
    peak_rss_mb: f64,
}

fn job_binary(name: &str) -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the mnist binaries first",
            path.display()
        );
    }
    Ok(path)
}

async fn start_job(
    work: &Path,
    name: &str,
    input: &Path,
    output: &Path,
    params: Value,
) -> Result<Job> {
    let dir = work.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let params_file = dir.join("params.json");
    std::fs::write(&params_file, params.to_string())?;
    let (progress, result, rss_file) = (
        dir.join("progress.jsonl"),
        dir.join("result.json"),
        dir.join("peak-rss-kb"),
    );
    let child = Command::new(std::env::current_exe()?)
        .arg("measure")
        .arg(&rss_file)
        .arg(job_binary(name)?)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--params-file")
        .arg(&params_file)
        .arg("--result-file")
        .arg(&result)
        .env("LANCER_PROGRESS_FILE", &progress)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Job {
        child,
        progress,
        result,
        rss_file,
        started: Instant::now(),
    })
}

fn progress_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

impl Job {
    async fn finish(mut self) -> Result<Finished> {
        let status = self.child.wait().await?;
        let seconds = self.started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("the job failed: {status}");
        }
        let rss_kb: f64 = std::fs::read_to_string(&self.rss_file)?.trim().parse()?;
        Ok(Finished {
            result: std::fs::read(&self.result)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or(Value::Null),
            progress: progress_lines(&self.progress),
            seconds,
            peak_rss_mb: rss_kb / 1024.0,
        })
    }

    /// Stops a service the way a cancel does: SIGTERM, which `measure` passes on.
    async fn stop(self) -> Result<Finished> {
        if let Some(pid) = self.child.id() {
            terminate(pid)?;
        }
        self.finish().await
    }
}

async fn clean(work: &Path, raw: &Path, label: &str) -> Result<(u64, Finished)> {
    let output = work.join(format!("datasets/{label}.lance"));
    let job = start_job(
        work,
        "mnist-clean",
        raw,
        &output,
        json!({"normalize": true, "flatten": true}),
    )
    .await?;
    let done = job.finish().await?;
    let rows = done.result["total_records"].as_u64().unwrap_or(0);
    println!(
        "clean {label:<22} {rows:>8} rows  {:>7.2} s  {:>9.0} rows/s  peak RSS {:>7.1} MB",
        done.seconds,
        rows as f64 / done.seconds,
        done.peak_rss_mb
    );
    Ok((rows, done))
}

/// The IDX files of `dir` with every image and label written `times` times over.
fn repeated(dir: &Path, times: usize, into: &Path) -> Result<()> {
    std::fs::create_dir_all(into)?;
    for part in mnist::clean::find_parts(dir)? {
        let mut reader = ImageReader::open(&part.images)?;
        let mut images = Vec::new();
        while reader.read_chunk(4096, &mut images)? > 0 {}
        let labels = read_labels(&part.labels)?;
        let count = (labels.len() * times) as u32;
        let prefix = if part.split == "train" {
            "train"
        } else {
            "t10k"
        };
        write_idx(
            &into.join(format!("{prefix}-images-idx3-ubyte")),
            IMAGE_MAGIC,
            &[count, 28, 28],
            &images.repeat(times),
        )?;
        write_idx(
            &into.join(format!("{prefix}-labels-idx1-ubyte")),
            LABEL_MAGIC,
            &[count],
            &labels.repeat(times),
        )?;
    }
    Ok(())
}

async fn train(work: &Path, epochs: Option<u64>) -> Result<PathBuf> {
    let model = work.join("models/mnist_cnn.lance");
    let (params, what) = match epochs {
        Some(epochs) => (
            json!({ "epochs": epochs }),
            format!("{epochs} epochs, other params default"),
        ),
        None => (json!({}), "default params".to_owned()),
    };
    let job = start_job(
        work,
        "mnist-train",
        &work.join("datasets/mnist.lance"),
        &model,
        params,
    )
    .await?;
    let done = job.finish().await?;
    println!("\ntrain, {what}: seconds per epoch beside PyTorch's example");
    println!("epoch   seconds   PyTorch   accuracy   test loss");
    let mut seconds = Vec::new();
    for line in &done.progress {
        let metrics = &line["metrics"];
        if let (Some(epoch), Some(secs), Some(accuracy)) = (
            metrics["epoch"].as_u64(),
            metrics["seconds"].as_f64(),
            metrics["accuracy"].as_f64(),
        ) {
            seconds.push(secs);
            println!(
                "{epoch:>5}   {secs:>7.1}   {PYTORCH_SECONDS_PER_EPOCH:>7.1}   {:>7.2}%   {:>9.4}",
                accuracy * 100.0,
                metrics["loss"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    let mean = seconds.iter().sum::<f64>() / seconds.len().max(1) as f64;
    println!(
        "train: {:.1} s/epoch mean ({:.2}x PyTorch's {PYTORCH_SECONDS_PER_EPOCH} s), final accuracy {:.2}%, {:.0} s in all, peak RSS {:.1} MB",
        mean,
        mean / PYTORCH_SECONDS_PER_EPOCH,
        done.result["accuracy"].as_f64().unwrap_or(f64::NAN) * 100.0,
        done.seconds,
        done.peak_rss_mb
    );
    Ok(model)
}

async fn wait_for_endpoint(progress: &Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(url) = progress_lines(progress)
            .iter()
            .find_map(|line| line["endpoint"].as_str().map(str::to_owned))
        {
            return Ok(url);
        }
        if Instant::now() > deadline {
            bail!("mnist-serve reported no endpoint within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `requests` single-image predictions from `concurrency` clients.
async fn load(url: &str, image: &[f32], concurrency: usize, requests: usize) -> Result<()> {
    let client = reqwest::Client::new();
    let body = json!({ "image": image }).to_string();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, body, next, url) = (
            client.clone(),
            body.clone(),
            next.clone(),
            format!("{url}/predict"),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("/predict answered {}", response.status());
                }
                response.bytes().await?;
                latencies.push(sent.elapsed());
            }
            Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "/predict concurrency {concurrency:>2}: {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} requests)",
        latencies.len() as f64 / elapsed,
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies.len()
    );
    Ok(())
}

async fn serve(work: &Path, model: &Path, raw: &Path, requests: usize) -> Result<()> {
    let job = start_job(
        work,
        "mnist-serve",
        model,
        Path::new(""),
        json!({"port": 0}),
    )
    .await?;
    let url = wait_for_endpoint(&job.progress).await?;
    // A real held-out digit, scaled to [0, 1] as the page sends it.
    let part = mnist::clean::find_parts(raw)?
        .into_iter()
        .last()
        .context("no IDX files")?;
    let mut pixels = Vec::new();
    ImageReader::open(&part.images)?.read_chunk(1, &mut pixels)?;
    let image: Vec<f32> = pixels[..PIXELS]
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect();
    println!("\nserve: {url}");
    for concurrency in [1, 32] {
        load(&url, &image, concurrency, requests).await?;
    }
    let done = job.stop().await?;
    println!("serve: peak RSS {:.1} MB", done.peak_rss_mb);
    Ok(())
}

fn terminate(pid: u32) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    Ok(())
}

/// `mnist-bench measure RSS_FILE PROGRAM ARGS...`: runs one job as this process's only
/// child and writes the child's peak RSS (KiB) when it ends. A SIGTERM meant for the job
/// is passed on, so a stopped service is measured too.
async fn measure(mut args: impl Iterator<Item = String>) -> Result<()> {
    let rss_file = args.next().context("measure needs a file")?;
    let program = args.next().context("measure needs a program")?;
    let mut child = Command::new(program).args(args).spawn()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let status = tokio::select! {
        status = child.wait() => status?,
        _ = term.recv() => {
            if let Some(pid) = child.id() {
                terminate(pid)?;
            }
            child.wait().await?
        }
    };
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    std::fs::write(&rss_file, usage.max_rss().to_string())?;
    if !status.success() && status.code().is_some() {
        bail!("job exited with {status}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("measure") {
        return measure(std::env::args().skip(2)).await;
    }
    let options = <Options as clap::Parser>::parse();
    let work = tempfile::Builder::new().prefix("mnist-bench-").tempdir()?;
    println!(
        "mnist-bench: {} CPUs, raw digits from {}\n",
        std::thread::available_parallelism()?,
        options.raw.display()
    );
    clean(work.path(), &options.raw, "mnist").await?;
    if let Some(dir) = &options.scale {
        clean(work.path(), dir, "scale-1x").await?;
        let tenfold = work.path().join("raw-10x");
        repeated(dir, 10, &tenfold)?;
        clean(work.path(), &tenfold, "scale-10x").await?;
        std::fs::remove_dir_all(&tenfold)?;
        for name in ["scale-1x", "scale-10x"] {
            std::fs::remove_dir_all(work.path().join(format!("datasets/{name}.lance")))?;
        }
    }
    if options.only == Some(Stage::Clean) {
        return Ok(());
    }
    let model = train(work.path(), options.epochs).await?;
    serve(work.path(), &model, &options.raw, options.requests).await
}
