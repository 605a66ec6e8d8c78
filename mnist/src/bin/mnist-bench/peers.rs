//! The Python peers, run by the same benchmark in the same run: PyTorch's MNIST example
//! for training, a FastAPI server with PyTorch for `/predict`, and numpy, pyarrow
//! and pylance for cleaning. Their scripts are in `mnist/peers/`; `mnist/bench --peers`
//! makes the venv they run in.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{Finished, Job, job_dir};

pub struct Peers {
    /// The venv's python.
    pub python: PathBuf,
    /// The folder of the peer scripts.
    pub scripts: PathBuf,
}

impl Peers {
    fn spawn(&self, work: &Path, name: &str, args: &[&std::ffi::OsStr]) -> Result<Job> {
        let mut command = vec![self.scripts.join(name).into_os_string()];
        command.extend(args.iter().map(|a| a.to_os_string()));
        Job::start(job_dir(work, name)?, &self.python, &command)
    }

    /// pylance writes the same table mnist-clean writes; the rows it reports.
    pub async fn clean(&self, work: &Path, raw: &Path, label: &str) -> Result<(u64, Finished)> {
        let output = work.join(format!("peer-datasets/{label}.lance"));
        let job = self.spawn(
            work,
            "pylance_clean.py",
            &[
                "--raw".as_ref(),
                raw.as_os_str(),
                "--output".as_ref(),
                output.as_os_str(),
            ],
        )?;
        let done = job.finish().await?;
        let rows = done
            .stdout_json()
            .last()
            .and_then(|line| line["total_records"].as_u64())
            .context("the pylance peer reported no row count")?;
        std::fs::remove_dir_all(&output).ok();
        Ok((rows, done))
    }

    /// PyTorch's example for `epochs` epochs; its per-epoch lines, and the saved weights.
    pub async fn train(
        &self,
        work: &Path,
        raw: &Path,
        epochs: usize,
    ) -> Result<(Finished, PathBuf)> {
        let weights = work.join("pytorch-mnist.pt");
        let epochs = epochs.to_string();
        let job = self.spawn(
            work,
            "pytorch_train.py",
            &[
                "--raw".as_ref(),
                raw.as_os_str(),
                "--epochs".as_ref(),
                epochs.as_ref(),
                "--threads".as_ref(),
                threads().as_ref(),
                "--save".as_ref(),
                weights.as_os_str(),
            ],
        )?;
        Ok((job.finish().await?, weights))
    }

    /// The FastAPI server on `port`, serving the PyTorch peer's weights.
    pub fn serve(&self, work: &Path, weights: &Path, port: u16) -> Result<Job> {
        let port = port.to_string();
        self.spawn(
            work,
            "fastapi_serve.py",
            &[
                "--weights".as_ref(),
                weights.as_os_str(),
                "--port".as_ref(),
                port.as_ref(),
                "--threads".as_ref(),
                threads().as_ref(),
            ],
        )
    }
}

/// The cores this machine has: PyTorch's threads, as candle's.
fn threads() -> String {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .to_string()
}

/// The per-epoch seconds a training run reported, ours (progress lines) or PyTorch's
/// (stdout lines).
pub fn epoch_seconds(lines: &[Value]) -> Vec<(u64, f64, f64)> {
    lines
        .iter()
        .map(|line| line.get("metrics").unwrap_or(line))
        .filter_map(|m| {
            Some((
                m["epoch"].as_u64()?,
                m["seconds"].as_f64()?,
                m["accuracy"].as_f64()?,
            ))
        })
        .collect()
}
