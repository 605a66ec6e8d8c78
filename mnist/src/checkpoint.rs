//! Checkpoints of a training run. After each epoch the trainer saves everything the next
//! epoch depends on: the weights, the optimizer's running averages, the generator's state,
//! the shuffled order and the history. A run resumed from one ends with the same weights as
//! a run never stopped.
//!
//! Two files in the checkpoint folder: `epoch-<n>.safetensors` (the tensors) and
//! `checkpoint.json` (the rest, naming that file). The tensors are written first and the
//! JSON replaced whole (a rename on disk, a single PUT on object storage), so a run killed
//! at any moment leaves the previous checkpoint or the new one, never half of one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::train::{EpochStats, TrainOptions};

const META: &str = "checkpoint.json";

/// Where checkpoints go: `LANCER_CHECKPOINT_DIR`, a folder on a local lake or a prefix in
/// an object store (`s3://…`, opened with the lake's storage options).
pub enum Folder {
    /// A folder on this machine.
    Local(PathBuf),
    /// A prefix in an object store.
    Remote {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// The prefix the checkpoint's files go under.
        prefix: object_store::path::Path,
    },
}

impl Folder {
    /// The folder `location` names: a path (created if missing) or an `s3://` URL.
    pub fn open(location: &str, storage_options: &HashMap<String, String>) -> Result<Self> {
        if !location.contains("://") {
            std::fs::create_dir_all(location)?;
            return Ok(Self::Local(PathBuf::from(location)));
        }
        let url = url::Url::parse(location).context("LANCER_CHECKPOINT_DIR is no URL")?;
        anyhow::ensure!(
            url.scheme() == "s3",
            "checkpoints go to s3:// or a local folder"
        );
        let mut builder = AmazonS3Builder::from_env().with_url(location);
        for (key, value) in storage_options {
            if let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, value);
            }
        }
        let prefix = object_store::path::Path::parse(url.path())?;
        Ok(Self::Remote {
            store: Arc::new(builder.build()?),
            prefix,
        })
    }

    /// Runs object-store I/O from the synchronous training loop (on a multi-threaded
    /// runtime's worker, as the jobs' `main` is).
    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Local(dir) => match std::fs::read(dir.join(name)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(err) => Err(err.into()),
            },
            Self::Remote { store, prefix } => Self::block_on(async {
                match store.get(&prefix.clone().join(name)).await {
                    Ok(found) => Ok(Some(found.bytes().await?.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(err) => Err(err.into()),
                }
            }),
        }
    }

    /// Replaces `name` whole: a reader sees the old bytes or the new ones.
    fn write(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Self::Local(dir) => {
                let staged = dir.join(format!("{name}.tmp"));
                std::fs::write(&staged, bytes)?;
                Ok(std::fs::rename(&staged, dir.join(name))?)
            }
            Self::Remote { store, prefix } => Self::block_on(async {
                store.put(&prefix.clone().join(name), bytes.into()).await?;
                Ok(())
            }),
        }
    }

    /// Removes the tensors of epochs other than `keep`.
    fn prune(&self, keep: &str) -> Result<()> {
        match self {
            Self::Local(dir) => {
                for entry in std::fs::read_dir(dir)? {
                    let name = entry?.file_name().to_string_lossy().into_owned();
                    if name.starts_with("epoch-") && name != keep {
                        let _ = std::fs::remove_file(dir.join(name));
                    }
                }
                Ok(())
            }
            Self::Remote { store, prefix } => Self::block_on(async {
                let listed: Vec<_> = store.list(Some(prefix)).try_collect().await?;
                for meta in listed {
                    let name = meta.location.filename().unwrap_or_default();
                    if name.starts_with("epoch-") && name != keep {
                        let _ = store.delete(&meta.location).await;
                    }
                }
                Ok(())
            }),
        }
    }
}

/// The state after `epoch` epochs.
pub struct Checkpoint {
    /// The epochs done.
    pub epoch: usize,
    /// The generator's state ([`crate::rng::Rng::state`]).
    pub rng_state: u64,
    /// The training rows in their last shuffled order.
    pub order: Vec<usize>,
    /// Every epoch's figures so far.
    pub history: Vec<EpochStats>,
    /// The weights (`weight.{i}`, in [`crate::model::Params::iter`]'s order) and
    /// Adadelta's running averages (`square_avg.{i}`, `acc_delta.{i}`).
    pub tensors: HashMap<String, Tensor>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    epoch: usize,
    rng_state: u64,
    order: Vec<usize>,
    history: Vec<SavedEpoch>,
    /// The options it was trained with, but the number of epochs: a checkpoint from other
    /// options is not this run's.
    options: Value,
    tensors: String,
}

/// An epoch's figures with each float as its bits: serde_json's default float parser can
/// read a number back one ulp off, and a resumed run's history must equal an uninterrupted
/// run's exactly.
#[derive(Serialize, Deserialize)]
struct SavedEpoch {
    epoch: usize,
    train_loss: u64,
    loss: u64,
    accuracy: u64,
    correct: usize,
    seconds: u64,
}

impl From<&EpochStats> for SavedEpoch {
    fn from(e: &EpochStats) -> Self {
        Self {
            epoch: e.epoch,
            train_loss: e.train_loss.to_bits(),
            loss: e.loss.to_bits(),
            accuracy: e.accuracy.to_bits(),
            correct: e.correct,
            seconds: e.seconds.to_bits(),
        }
    }
}

impl From<SavedEpoch> for EpochStats {
    fn from(e: SavedEpoch) -> Self {
        Self {
            epoch: e.epoch,
            train_loss: f64::from_bits(e.train_loss),
            loss: f64::from_bits(e.loss),
            accuracy: f64::from_bits(e.accuracy),
            correct: e.correct,
            seconds: f64::from_bits(e.seconds),
        }
    }
}

fn options_key(options: &TrainOptions) -> Result<Value> {
    let mut value = serde_json::to_value(options)?;
    if let Some(object) = value.as_object_mut() {
        object.remove("epochs");
    }
    Ok(value)
}

/// Saves `checkpoint` of a run with `options` into `folder`, replacing the one before.
pub fn save(folder: &Folder, options: &TrainOptions, checkpoint: &Checkpoint) -> Result<()> {
    let tensors = format!("epoch-{}.safetensors", checkpoint.epoch);
    // candle writes safetensors to files only.
    let staging = tempfile::tempdir()?;
    let file = staging.path().join(&tensors);
    candle_core::safetensors::save(&checkpoint.tensors, &file)?;
    folder.write(&tensors, std::fs::read(&file)?)?;
    let meta = Meta {
        epoch: checkpoint.epoch,
        rng_state: checkpoint.rng_state,
        order: checkpoint.order.clone(),
        history: checkpoint.history.iter().map(SavedEpoch::from).collect(),
        options: options_key(options)?,
        tensors: tensors.clone(),
    };
    folder.write(META, serde_json::to_vec(&meta)?)?;
    // Older epochs are no longer named by the JSON.
    folder.prune(&tensors)
}

/// The newest checkpoint in `folder` of a run with these options; `None` if there is none.
pub fn load(
    folder: &Folder,
    options: &TrainOptions,
    device: &Device,
) -> Result<Option<Checkpoint>> {
    let Some(bytes) = folder.read(META)? else {
        return Ok(None);
    };
    let meta: Meta = serde_json::from_slice(&bytes).context("reading checkpoint.json")?;
    if meta.options != options_key(options)? || meta.epoch >= options.epochs {
        tracing::info!(
            epoch = meta.epoch,
            "a checkpoint of other options is not resumed"
        );
        return Ok(None);
    }
    let tensors = folder
        .read(&meta.tensors)?
        .with_context(|| format!("the checkpoint lacks {}", meta.tensors))?;
    let tensors = candle_core::safetensors::load_buffer(&tensors, device)?;
    Ok(Some(Checkpoint {
        epoch: meta.epoch,
        rng_state: meta.rng_state,
        order: meta.order,
        history: meta.history.into_iter().map(EpochStats::from).collect(),
        tensors,
    }))
}
