//! Checkpoints of a training run. After each epoch the trainer saves everything the next
//! epoch depends on: the weights, the optimizer's running averages, the generator's state,
//! the shuffled order and the history. A run resumed from one ends with the same weights as
//! a run never stopped.
//!
//! Two files in the checkpoint folder: `epoch-<n>.safetensors` (the tensors) and
//! `checkpoint.json` (the rest, naming that file). The tensors are written first and the
//! JSON replaced by rename, so a run killed at any moment leaves the previous checkpoint
//! or the new one, never half of one.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::train::{EpochStats, TrainOptions};

const META: &str = "checkpoint.json";

/// The state after `epoch` epochs.
pub struct Checkpoint {
    pub epoch: usize,
    pub rng_state: u64,
    pub order: Vec<usize>,
    pub history: Vec<EpochStats>,
    pub tensors: HashMap<String, Tensor>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    epoch: usize,
    rng_state: u64,
    order: Vec<usize>,
    history: Vec<EpochStats>,
    /// The options it was trained with, but the number of epochs: a checkpoint from other
    /// options is not this run's.
    options: Value,
    tensors: String,
}

fn options_key(options: &TrainOptions) -> Result<Value> {
    let mut value = serde_json::to_value(options)?;
    if let Some(object) = value.as_object_mut() {
        object.remove("epochs");
    }
    Ok(value)
}

pub fn save(dir: &Path, options: &TrainOptions, checkpoint: &Checkpoint) -> Result<()> {
    let tensors = format!("epoch-{}.safetensors", checkpoint.epoch);
    candle_core::safetensors::save(&checkpoint.tensors, dir.join(&tensors))?;
    let meta = Meta {
        epoch: checkpoint.epoch,
        rng_state: checkpoint.rng_state,
        order: checkpoint.order.clone(),
        history: checkpoint.history.clone(),
        options: options_key(options)?,
        tensors: tensors.clone(),
    };
    let staged = dir.join(format!("{META}.tmp"));
    std::fs::write(&staged, serde_json::to_vec(&meta)?)?;
    std::fs::rename(&staged, dir.join(META))?;
    // Older epochs are no longer named by the JSON.
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("epoch-") && name != tensors {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    Ok(())
}

/// The newest checkpoint in `dir` of a run with these options; `None` if there is none.
pub fn load(dir: &Path, options: &TrainOptions, device: &Device) -> Result<Option<Checkpoint>> {
    let Ok(bytes) = std::fs::read(dir.join(META)) else {
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
    let tensors = candle_core::safetensors::load(dir.join(&meta.tensors), device)
        .with_context(|| format!("reading {}", meta.tensors))?;
    Ok(Some(Checkpoint {
        epoch: meta.epoch,
        rng_state: meta.rng_state,
        order: meta.order,
        history: meta.history,
        tensors,
    }))
}
