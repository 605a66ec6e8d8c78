//! `mnist-bench`: the MNIST workload's figures, printed (never asserted).
//!
//! Runs the three jobs exactly as the platform's runner does (contract flags, params file,
//! progress file), one after the other on raw IDX files, and prints clean rows/s, train
//! seconds per epoch with accuracy after each epoch, `/predict` requests/s with p50/p99 at
//! concurrency 1 and 32 (from wrk), and each job's peak RSS. `--scale DIR` also cleans
//! DIR's IDX files as they are and repeated ten times, to show that memory stays flat as
//! the input grows. With `--peers PYTHON`, each figure is printed beside its Python peer's,
//! measured the same way in the same run, with the ratio; without it no peer figure is
//! printed at all. `--only kernels` times our GEMM against the gemm crate on conv2's
//! products instead, and needs no digits (`kernels`).
//!
//! Usage: `mnist-bench --raw DIR [--epochs N] [--seconds N] [--scale DIR] [--only clean]
//! [--peers PYTHON --peer-scripts DIR]` (`mnist/bench` fetches the digits and builds it),
//! or `mnist-bench --only kernels`.

mod kernels;
mod peers;
mod wrk;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mnist::idx::{IMAGE_MAGIC, ImageReader, LABEL_MAGIC, PIXELS, read_labels, write_idx};
use serde_json::{Value, json};
use tokio::process::Command;

use peers::{Peers, epoch_seconds};

/// The MNIST workload's figures, printed, never asserted.
#[derive(clap::Parser)]
#[command(name = "mnist-bench")]
struct Options {
    /// A folder holding the four MNIST IDX files (`mnist/fetch-data` writes one); every
    /// stage but the kernels needs it.
    #[arg(long, required_unless_present = "only")]
    raw: Option<PathBuf>,
    /// Training epochs (default: the trainer's own, as the pipeline runs it).
    #[arg(long)]
    epochs: Option<usize>,
    /// Seconds of `/predict` load per concurrency level.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Batch waits (microseconds) to measure p99 at concurrency 32 with.
    #[arg(long, value_delimiter = ',', default_value = "0,200,1000,3000")]
    waits: Vec<u64>,
    /// Also clean this folder's IDX files as they are and repeated ten times.
    #[arg(long)]
    scale: Option<PathBuf>,
    /// Run one stage only.
    #[arg(long, value_enum)]
    only: Option<Stage>,
    /// A Python with torch, torchvision, fastapi, uvicorn and pylance: run the peers too.
    #[arg(long, requires = "peer_scripts")]
    peers: Option<PathBuf>,
    /// The folder of the peer scripts (`mnist/peers`).
    #[arg(long)]
    peer_scripts: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Stage {
    /// Only the clean runs.
    Clean,
    /// Only our GEMM against the gemm crate, on conv2's products.
    Kernels,
}

/// A process run under `mnist-bench measure`, so the peak RSS reported is its alone, in a
/// folder of its own that holds its stdout, progress lines and result.
struct Job {
    child: tokio::process::Child,
    dir: PathBuf,
    started: Instant,
}

struct Finished {
    dir: PathBuf,
    seconds: f64,
    peak_rss_mb: f64,
}

/// A fresh folder for one job's files.
fn job_dir(work: &Path, name: &str) -> Result<PathBuf> {
    let dir = work.join(format!("{name}-{}", unique()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

impl Job {
    fn start(dir: PathBuf, program: &Path, args: &[OsString]) -> Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .arg("measure")
            .arg(dir.join("peak-rss-kb"))
            .arg(program)
            .args(args)
            .env("LANCER_PROGRESS_FILE", dir.join("progress.jsonl"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout"))?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            child,
            dir,
            started: Instant::now(),
        })
    }

    async fn finish(mut self) -> Result<Finished> {
        let status = self.child.wait().await?;
        let seconds = self.started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("{} failed: {status}", self.dir.display());
        }
        let rss_kb: f64 = std::fs::read_to_string(self.dir.join("peak-rss-kb"))?
            .trim()
            .parse()?;
        Ok(Finished {
            dir: self.dir,
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

impl Finished {
    fn result(&self) -> Value {
        std::fs::read(self.dir.join("result.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or(Value::Null)
    }

    fn progress(&self) -> Vec<Value> {
        json_lines(&self.dir.join("progress.jsonl"))
    }

    fn stdout_json(&self) -> Vec<Value> {
        json_lines(&self.dir.join("stdout"))
    }
}

/// One of lancer's MNIST jobs under the run contract.
fn start_job(work: &Path, name: &str, input: &Path, output: &Path, params: Value) -> Result<Job> {
    let dir = job_dir(work, name)?;
    std::fs::write(dir.join("params.json"), params.to_string())?;
    let args: Vec<OsString> = vec![
        "--input".into(),
        input.into(),
        "--output".into(),
        output.into(),
        "--params-file".into(),
        dir.join("params.json").into(),
        "--result-file".into(),
        dir.join("result.json").into(),
    ];
    Job::start(dir, &job_binary(name)?, &args)
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

/// The ratio a target is stated in: lancer's figure over the peer's.
fn ratio(ours: f64, peer: f64) -> String {
    format!("{:.2}x", ours / peer)
}

async fn clean(work: &Path, raw: &Path, label: &str, peers: Option<&Peers>) -> Result<()> {
    let output = work.join(format!("datasets/{label}.lance"));
    let params = json!({"normalize": true, "flatten": true});
    let done = start_job(work, "mnist-clean", raw, &output, params)?
        .finish()
        .await?;
    let rows = done.result()["total_records"].as_u64().unwrap_or(0);
    let line = |who: &str, rows: u64, done: &Finished| {
        println!(
            "clean {label:<10} {who:<8} {rows:>8} rows  {:>7.2} s  {:>9.0} rows/s  peak RSS {:>7.1} MB",
            done.seconds,
            rows as f64 / done.seconds,
            done.peak_rss_mb
        )
    };
    line("lancer", rows, &done);
    if let Some(peers) = peers {
        let (peer_rows, peer) = peers.clean(work, raw, label).await?;
        line("pylance", peer_rows, &peer);
        println!(
            "clean {label:<10} lancer/pylance: rows/s {}, peak RSS {}",
            ratio(rows as f64 / done.seconds, peer_rows as f64 / peer.seconds),
            ratio(done.peak_rss_mb, peer.peak_rss_mb)
        );
    }
    Ok(())
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

async fn scale(work: &Path, dir: &Path, peers: Option<&Peers>) -> Result<()> {
    clean(work, dir, "scale-1x", peers).await?;
    let tenfold = work.join("raw-10x");
    repeated(dir, 10, &tenfold)?;
    clean(work, &tenfold, "scale-10x", peers).await?;
    std::fs::remove_dir_all(&tenfold)?;
    for name in ["scale-1x", "scale-10x"] {
        std::fs::remove_dir_all(work.join(format!("datasets/{name}.lance")))?;
    }
    Ok(())
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Trains with `epochs` (or the trainer's default); the model's path and, with peers, the
/// PyTorch peer's saved weights.
async fn train(
    work: &Path,
    raw: &Path,
    epochs: Option<usize>,
    peers: Option<&Peers>,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let model = work.join("models/mnist_cnn.lance");
    let params = epochs.map_or(json!({}), |epochs| json!({ "epochs": epochs }));
    let dataset = work.join("datasets/mnist.lance");
    let done = start_job(work, "mnist-train", &dataset, &model, params)?
        .finish()
        .await?;
    let ours = epoch_seconds(&done.progress());
    let peer = match peers {
        Some(peers) => Some(peers.train(work, raw, ours.len()).await?),
        None => None,
    };
    let theirs = peer
        .as_ref()
        .map(|(done, _)| epoch_seconds(&done.stdout_json()));
    print_epochs(&ours, theirs.as_deref());
    let per_epoch = mean(&ours.iter().map(|e| e.1).collect::<Vec<_>>());
    println!(
        "train lancer : {per_epoch:.2} s/epoch, final accuracy {:.2}%, {:.1} s in all, peak RSS {:.1} MB",
        done.result()["accuracy"].as_f64().unwrap_or(f64::NAN) * 100.0,
        done.seconds,
        done.peak_rss_mb
    );
    if let (Some((peer, weights)), Some(theirs)) = (peer, theirs) {
        let peer_epoch = mean(&theirs.iter().map(|e| e.1).collect::<Vec<_>>());
        println!(
            "train PyTorch: {peer_epoch:.2} s/epoch, final accuracy {:.2}%, {:.1} s in all, peak RSS {:.1} MB",
            theirs.last().map_or(f64::NAN, |e| e.2 * 100.0),
            peer.seconds,
            peer.peak_rss_mb
        );
        println!(
            "train lancer/PyTorch: s/epoch {}, peak RSS {}",
            ratio(per_epoch, peer_epoch),
            ratio(done.peak_rss_mb, peer.peak_rss_mb)
        );
        return Ok((model, Some(weights)));
    }
    Ok((model, None))
}

/// Seconds and test accuracy after each epoch, with the peer's beside them if it ran.
fn print_epochs(ours: &[(u64, f64, f64)], theirs: Option<&[(u64, f64, f64)]>) {
    println!(
        "\ntrain, {} epochs: seconds and test accuracy after each epoch",
        ours.len()
    );
    let peer_header = if theirs.is_some() {
        "   PyTorch s  accuracy"
    } else {
        ""
    };
    println!("epoch   lancer s  accuracy{peer_header}");
    for (at, (epoch, seconds, accuracy)) in ours.iter().enumerate() {
        let peer_cells = theirs
            .and_then(|lines| lines.get(at))
            .map(|(_, s, a)| format!("   {s:>9.2}  {:>7.2}%", a * 100.0))
            .unwrap_or_default();
        println!(
            "{epoch:>5}   {seconds:>8.2}  {:>7.2}%{peer_cells}",
            accuracy * 100.0
        );
    }
}

async fn wait_for_endpoint(job: &Job) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(url) = json_lines(&job.dir.join("progress.jsonl"))
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

/// Waits until `url/predict` answers the benchmark's request.
async fn wait_until_up(url: &str, body: &str) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = client
            .post(format!("{url}/predict"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url}/predict did not answer within two minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A real held-out digit, scaled to [0, 1] as the page sends it, as a request body.
fn request_body(raw: &Path) -> Result<String> {
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
    Ok(json!({ "image": image }).to_string())
}

/// Loads at concurrency 1 and 32 (after a second's warm-up); the two measurements.
async fn load_levels(url: &str, script: &Path, seconds: u64) -> Result<Vec<wrk::Load>> {
    wrk::run(url, script, 32, Duration::from_secs(1)).await?;
    let mut loads = Vec::new();
    for connections in [1, 32] {
        loads.push(wrk::run(url, script, connections, Duration::from_secs(seconds)).await?);
    }
    Ok(loads)
}

async fn serve(
    work: &Path,
    model: &Path,
    raw: &Path,
    options: &Options,
    peer: Option<(&Peers, &Path)>,
) -> Result<()> {
    let body = request_body(raw)?;
    let script = wrk::script(work, &body)?;
    let job = start_job(
        work,
        "mnist-serve",
        model,
        Path::new(""),
        json!({"port": 0}),
    )?;
    let url = wait_for_endpoint(&job).await?;
    wait_until_up(&url, &body).await?;
    let ours = load_levels(&url, &script, options.seconds).await?;
    let done = job.stop().await?;
    println!(
        "\nserve /predict, one real digit per request, wrk -t1, {} s per level",
        options.seconds
    );
    let theirs = match peer {
        Some((peers, weights)) => {
            Some(serve_peer(work, peers, weights, &script, &body, options.seconds).await?)
        }
        None => None,
    };
    for (at, connections) in [1, 32].into_iter().enumerate() {
        println!("concurrency {connections:>2}  lancer  {}", ours[at]);
        if let Some((loads, _)) = &theirs {
            println!("concurrency {connections:>2}  FastAPI {}", loads[at]);
            println!(
                "concurrency {connections:>2}  lancer/FastAPI: req/s {}, p99 {}",
                ratio(ours[at].requests_per_second, loads[at].requests_per_second),
                ratio(ours[at].p99_ms, loads[at].p99_ms)
            );
        }
    }
    println!("serve lancer peak RSS {:.1} MB", done.peak_rss_mb);
    if let Some((_, peer)) = theirs {
        println!("serve FastAPI peak RSS {:.1} MB", peer.peak_rss_mb);
    }
    batch_waits(work, model, &script, &body, options).await
}

async fn serve_peer(
    work: &Path,
    peers: &Peers,
    weights: &Path,
    script: &Path,
    body: &str,
    seconds: u64,
) -> Result<(Vec<wrk::Load>, Finished)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let job = peers.serve(work, weights, port)?;
    let url = format!("http://127.0.0.1:{port}");
    wait_until_up(&url, body).await?;
    let loads = load_levels(&url, script, seconds).await?;
    Ok((loads, job.stop().await?))
}

/// How p99 and req/s at concurrency 32 move with mnist-serve's batch wait.
async fn batch_waits(
    work: &Path,
    model: &Path,
    script: &Path,
    body: &str,
    options: &Options,
) -> Result<()> {
    println!("\nserve, concurrency 32, by batch wait");
    for &wait in &options.waits {
        let params = json!({"port": 0, "batch_wait_us": wait});
        let job = start_job(work, "mnist-serve", model, Path::new(""), params)?;
        let url = wait_for_endpoint(&job).await?;
        wait_until_up(&url, body).await?;
        wrk::run(&url, script, 32, Duration::from_secs(1)).await?;
        let load = wrk::run(&url, script, 32, Duration::from_secs(options.seconds)).await?;
        println!("batch wait {wait:>5} us  {load}");
        job.stop().await?;
    }
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
    if options.only == Some(Stage::Kernels) {
        return kernels::run();
    }
    let raw = options
        .raw
        .clone()
        .context("--raw DIR is needed but for --only kernels")?;
    let peers = match (&options.peers, &options.peer_scripts) {
        (Some(python), Some(scripts)) => Some(Peers {
            python: python.clone(),
            scripts: scripts.clone(),
        }),
        _ => None,
    };
    let work = tempfile::Builder::new().prefix("mnist-bench-").tempdir()?;
    let work = work.path();
    println!(
        "mnist-bench: {} CPUs, raw digits from {}{}\n",
        std::thread::available_parallelism()?,
        raw.display(),
        if peers.is_some() {
            ", with the Python peers"
        } else {
            ""
        }
    );
    clean(work, &raw, "mnist", peers.as_ref()).await?;
    if let Some(dir) = &options.scale {
        scale(work, dir, peers.as_ref()).await?;
    }
    if options.only == Some(Stage::Clean) {
        return Ok(());
    }
    let (model, weights) = train(work, &raw, options.epochs, peers.as_ref()).await?;
    let peer = peers.as_ref().zip(weights.as_deref());
    serve(work, &model, &raw, &options, peer).await
}
