//! `mnist-train`: the pipeline's training step. Trains PyTorch's MNIST example CNN on the
//! dataset's train split, evaluates on its test split, and appends a version to the model.
//!
//! Params: `epochs` (8), `optimizer` (adadelta|adam|adamw|sgd, default adadelta as in
//! PyTorch's example), `learning_rate` (the optimizer's default: adadelta 1.0, adam 0.001,
//! sgd 0.01), `lr_decay` (0.7: multiplies the rate after each epoch, PyTorch's StepLR gamma),
//! `batch_size` (64), `seed` (42), `device` (cpu|cuda), `shift` (2: each training image is
//! moved by up to this many pixels, drawn per image from the seed; 0 as PyTorch's example).
//! Any other param is refused, naming it.
//! Result: `{accuracy, loss, model_version, resumed_after_epoch, epochs_run}`.
//!
//! With `LANCER_CHECKPOINT_DIR` (a folder on a local lake, or an `s3://` prefix), it saves a checkpoint after each
//! epoch and, started again with the same params (a retry after a crash), resumes after the
//! last saved epoch: the final weights are those of a run never stopped.

use anyhow::{Result, bail};
use mnist::checkpoint::Folder;
use mnist::contract::{Invocation, Progress, init_logging, input_version, storage_options};
use mnist::lake::{ModelRow, Split, append_model, read_splits};
use mnist::model::ARCHITECTURE;
use mnist::train::{Checkpoints, EpochStats, Observer, TrainOptions, Trained, train};
use serde_json::json;

struct Report {
    progress: Progress,
    epochs: usize,
    last_sent: std::time::Instant,
}

impl Observer for Report {
    fn batch(&mut self, epoch: usize, done: usize, total: usize, loss: f64) {
        // Enough to move a progress bar, not a line per step.
        if self.last_sent.elapsed().as_millis() < 500 && done != total {
            return;
        }
        self.last_sent = std::time::Instant::now();
        let fraction = ((epoch - 1) as f64 + done as f64 / total as f64) / self.epochs as f64;
        self.progress.report(json!({
            "fraction": fraction,
            "message": format!("epoch {epoch}/{} batch {done}/{total}", self.epochs),
            "metrics": {"epoch": epoch, "batch_loss": loss},
        }));
    }

    fn epoch(&mut self, stats: &EpochStats) {
        tracing::info!(
            epoch = stats.epoch,
            loss = stats.loss,
            accuracy = stats.accuracy,
            seconds = stats.seconds,
            "epoch done"
        );
        self.progress.report(json!({
            "fraction": stats.epoch as f64 / self.epochs as f64,
            "message": format!("epoch {}/{}: accuracy {:.4}", stats.epoch, self.epochs, stats.accuracy),
            "metrics": {"epoch": stats.epoch, "loss": stats.loss, "accuracy": stats.accuracy, "seconds": stats.seconds},
        }));
    }
}

fn main() -> Result<()> {
    mnist::set_thread_count();
    mnist::keep_freed_memory();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<()> {
    init_logging();
    let task = Invocation::from_args()?;
    if task.input.is_empty() || task.output.is_empty() {
        bail!("mnist-train needs an input dataset and an output model");
    }
    let options: TrainOptions = task.params()?;
    // The model row records the rate it really started from.
    let options = TrainOptions {
        learning_rate: Some(
            options
                .learning_rate
                .unwrap_or_else(|| options.optimizer.default_learning_rate()),
        ),
        ..options
    };
    let storage = storage_options();
    let (train_split, test_split, version) =
        read_splits(&task.input, input_version(), &storage).await?;
    tracing::info!(
        train = train_split.len(),
        test = test_split.len(),
        version,
        "dataset loaded"
    );
    let mut report = Report {
        progress: Progress::from_env(),
        epochs: options.epochs,
        last_sent: std::time::Instant::now(),
    };
    let folder = match std::env::var("LANCER_CHECKPOINT_DIR") {
        Ok(location) => Some(Folder::open(&location, &storage)?),
        Err(_) => None,
    };
    let checkpoints = Checkpoints {
        folder: folder.as_ref(),
    };
    let trained = train(
        &train_split,
        &test_split,
        &options,
        &mut report,
        checkpoints,
    )?;
    let resumed_after = trained.resumed_after;
    let splits = (&train_split, &test_split);
    let (row, last) = model_row(&task, &options, trained, splits, version)?;
    let model_version = append_model(&task.output, &row, &storage).await?;
    task.finish(&json!({
        "accuracy": last.accuracy,
        "loss": last.loss,
        "model_version": model_version,
        "resumed_after_epoch": resumed_after,
        "epochs_run": options.epochs - resumed_after,
    }))
}

/// The row a trained net appends to the model (its weights, architecture, metrics,
/// params and dataset), and its last epoch's figures.
fn model_row(
    task: &Invocation,
    options: &TrainOptions,
    trained: Trained,
    (train_split, test_split): (&Split, &Split),
    version: u64,
) -> Result<(ModelRow, EpochStats)> {
    let Trained { net, history, .. } = trained;
    let last = history
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no epoch ran"))?;
    let metrics = json!({
        "accuracy": last.accuracy,
        "loss": last.loss,
        "correct": last.correct,
        "test_rows": test_split.len(),
        "train_rows": train_split.len(),
        "history": history,
    });
    let row = ModelRow {
        weights: net.to_safetensors()?,
        architecture: ARCHITECTURE.into(),
        metrics,
        params: serde_json::to_value(options)?,
        dataset: json!({"input": task.input, "version": version}),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    Ok((row, last))
}
