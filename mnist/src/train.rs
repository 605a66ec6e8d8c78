//! The training loop of `mnist-train`.

use anyhow::{Result, bail};
use candle_core::{D, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, SGD};
use serde::{Deserialize, Serialize};

use crate::adadelta::{Adadelta, ParamsAdadelta};
use crate::idx::{PIXELS, SIDE};
use crate::lake::Split;
use crate::model::{DeviceKind, Net, images_tensor};
use crate::rng::Rng;

/// `mnist-train`'s params, with their defaults; the model row records them, and a
/// checkpoint resumes only a run of the same ones (but `epochs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Passes over the training split (8).
    pub epochs: usize,
    /// `None`: the optimizer's own default (adadelta 1.0, adam and adamw 0.001, sgd 0.01).
    pub learning_rate: Option<f64>,
    /// Images per optimizer step (64).
    pub batch_size: usize,
    /// Seeds the initial weights, the shuffles, the shifts and dropout (42): the same seed
    /// on the CPU trains the same model, bit for bit.
    pub seed: u64,
    /// Where to train (cpu).
    pub device: DeviceKind,
    /// The update rule (adadelta, as PyTorch's example).
    pub optimizer: OptimizerKind,
    /// The learning rate is multiplied by this after every epoch (PyTorch's StepLR gamma).
    pub lr_decay: f64,
    /// Each training image is moved by up to this many pixels across and down, drawn per
    /// image from the run's generator; 0 trains on the images as they are.
    pub shift: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 8,
            learning_rate: None,
            batch_size: 64,
            seed: 42,
            device: DeviceKind::Cpu,
            optimizer: OptimizerKind::Adadelta,
            lr_decay: 0.7,
            shift: 2,
        }
    }
}

/// The `optimizer` param.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// PyTorch's Adadelta, as its MNIST example trains.
    Adadelta,
    /// Adam: candle's AdamW without weight decay.
    Adam,
    /// candle's AdamW, with its default weight decay.
    Adamw,
    /// Plain stochastic gradient descent.
    Sgd,
}

impl OptimizerKind {
    /// The rate it starts from unless `learning_rate` is given.
    pub fn default_learning_rate(self) -> f64 {
        match self {
            Self::Adadelta => 1.0,
            Self::Sgd => 0.01,
            Self::Adam | Self::Adamw => 0.001,
        }
    }
}

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// Its number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Mean cross-entropy on the test split after the epoch.
    pub loss: f64,
    /// The share of the test split predicted right after the epoch.
    pub accuracy: f64,
    /// The test images predicted right.
    pub correct: usize,
    /// Wall-clock seconds of training and evaluation.
    pub seconds: f64,
}

/// What the loop tells its caller as it goes.
pub trait Observer {
    /// After each batch: `done` of `total` batches of `epoch`, and the batch's loss.
    fn batch(&mut self, epoch: usize, done: usize, total: usize, loss: f64);
    /// After each epoch, evaluated.
    fn epoch(&mut self, stats: &EpochStats);
}

enum Opt {
    Adadelta(Adadelta),
    Adam(AdamW),
    Sgd(SGD),
}

impl Opt {
    fn new(options: &TrainOptions, vars: Vec<candle_core::Var>) -> Result<Self> {
        let lr = options
            .learning_rate
            .unwrap_or_else(|| options.optimizer.default_learning_rate());
        let adam = |weight_decay: f64| -> Result<Opt> {
            Ok(Opt::Adam(AdamW::new(
                vars.clone(),
                ParamsAdamW {
                    lr,
                    weight_decay,
                    ..Default::default()
                },
            )?))
        };
        Ok(match options.optimizer {
            OptimizerKind::Adadelta => Opt::Adadelta(Adadelta::new(
                vars,
                ParamsAdadelta {
                    lr,
                    ..Default::default()
                },
            )?),
            OptimizerKind::Adam => adam(0.0)?,
            OptimizerKind::Adamw => adam(ParamsAdamW::default().weight_decay)?,
            OptimizerKind::Sgd => Opt::Sgd(SGD::new(vars, lr)?),
        })
    }

    fn learning_rate(&self) -> f64 {
        match self {
            Opt::Adadelta(opt) => opt.learning_rate(),
            Opt::Adam(opt) => opt.learning_rate(),
            Opt::Sgd(opt) => opt.learning_rate(),
        }
    }

    fn set_learning_rate(&mut self, lr: f64) {
        match self {
            Opt::Adadelta(opt) => opt.set_learning_rate(lr),
            Opt::Adam(opt) => opt.set_learning_rate(lr),
            Opt::Sgd(opt) => opt.set_learning_rate(lr),
        }
    }

    fn step(&mut self, loss: &Tensor) -> Result<()> {
        match self {
            Opt::Adadelta(opt) => opt.backward_step(loss)?,
            Opt::Adam(opt) => opt.backward_step(loss)?,
            Opt::Sgd(opt) => opt.backward_step(loss)?,
        }
        Ok(())
    }
}

/// Where a run keeps its checkpoints.
#[derive(Default)]
pub struct Checkpoints<'a> {
    /// A folder to save a checkpoint in after every epoch and resume from; `None`: none.
    pub folder: Option<&'a crate::checkpoint::Folder>,
}

/// What a training run ends with.
pub struct Trained {
    /// The trained net.
    pub net: Net,
    /// Every epoch's figures, those before a resume included.
    pub history: Vec<EpochStats>,
    /// The epoch it resumed after (0: it started afresh).
    pub resumed_after: usize,
}

/// Trains the net on `train` as `options` say, evaluating on `test` after each epoch, and
/// with a checkpoint folder, saves after each epoch and resumes a run of the same options.
pub fn train(
    train: &Split,
    test: &Split,
    options: &TrainOptions,
    observer: &mut dyn Observer,
    checkpoints: Checkpoints<'_>,
) -> Result<Trained> {
    check(train, test, options)?;
    let device = options.device.device()?;
    let mut run = Run::start(options, train.len(), &device)?;
    // Adam's running averages live inside candle's optimizer, out of a checkpoint's reach.
    let dir = checkpoints
        .folder
        .filter(|_| matches!(run.optimizer, Opt::Adadelta(_) | Opt::Sgd(_)));
    let resumed_after = match dir {
        Some(dir) => run.resume(dir, options, &device)?,
        None => 0,
    };
    for epoch in resumed_after + 1..=options.epochs {
        let stats = run.epoch(epoch, train, test, options, observer, &device)?;
        observer.epoch(&stats);
        run.history.push(stats);
        if let Some(dir) = dir {
            crate::checkpoint::save(dir, options, &run.checkpoint(epoch)?)?;
        }
    }
    Ok(Trained {
        net: run.net,
        history: run.history,
        resumed_after,
    })
}

fn check(train: &Split, test: &Split, options: &TrainOptions) -> Result<()> {
    if train.is_empty() || test.is_empty() {
        bail!(
            "the dataset needs train and test rows (train {}, test {})",
            train.len(),
            test.len()
        );
    }
    if options.batch_size == 0 || options.epochs == 0 {
        bail!("epochs and batch_size must be at least 1");
    }
    if !(options.lr_decay > 0.0 && options.lr_decay <= 1.0) {
        bail!("lr_decay must be in (0, 1], not {}", options.lr_decay);
    }
    if options.shift > MAX_SHIFT {
        bail!(
            "shift must be at most {MAX_SHIFT} pixels, not {}",
            options.shift
        );
    }
    Ok(())
}

/// Everything a training run carries from one epoch to the next.
struct Run {
    net: Net,
    vars: Vec<candle_core::Var>,
    optimizer: Opt,
    base_lr: f64,
    rng: Rng,
    order: Vec<usize>,
    history: Vec<EpochStats>,
    pixels: Vec<f32>,
}

impl Run {
    fn start(options: &TrainOptions, rows: usize, device: &Device) -> Result<Self> {
        let (net, vars) = Net::init(options.seed, device)?;
        let optimizer = Opt::new(options, vars.clone())?;
        Ok(Self {
            net,
            vars,
            base_lr: optimizer.learning_rate(),
            optimizer,
            rng: Rng::new(options.seed.wrapping_add(1)),
            order: (0..rows).collect(),
            history: Vec::new(),
            pixels: Vec::with_capacity(options.batch_size * PIXELS),
        })
    }

    /// Continues from the checkpoint in `dir`, if it holds one of this run; the epochs done.
    fn resume(
        &mut self,
        dir: &crate::checkpoint::Folder,
        options: &TrainOptions,
        device: &Device,
    ) -> Result<usize> {
        let Some(mut saved) = crate::checkpoint::load(dir, options, device)? else {
            return Ok(0);
        };
        let mut take = |name: String| {
            saved
                .tensors
                .remove(&name)
                .ok_or_else(|| anyhow::anyhow!("the checkpoint lacks {name}"))
        };
        let mut averages = Vec::new();
        for (index, var) in self.vars.iter().enumerate() {
            var.set(&take(format!("weight.{index}"))?)?;
            if matches!(self.optimizer, Opt::Adadelta(_)) {
                averages.push((
                    take(format!("square_avg.{index}"))?,
                    take(format!("acc_delta.{index}"))?,
                ));
            }
        }
        if let Opt::Adadelta(optimizer) = &self.optimizer {
            optimizer.restore(&averages)?;
        }
        self.rng = Rng::new(saved.rng_state);
        self.order = saved.order;
        self.history = saved.history;
        tracing::info!(epoch = saved.epoch, "resumed from a checkpoint");
        Ok(saved.epoch)
    }

    fn checkpoint(&self, epoch: usize) -> Result<crate::checkpoint::Checkpoint> {
        let mut tensors = std::collections::HashMap::new();
        for (index, var) in self.vars.iter().enumerate() {
            tensors.insert(format!("weight.{index}"), var.as_tensor().clone());
        }
        if let Opt::Adadelta(optimizer) = &self.optimizer {
            for (index, (square_avg, acc_delta)) in optimizer.averages()?.into_iter().enumerate() {
                tensors.insert(format!("square_avg.{index}"), square_avg);
                tensors.insert(format!("acc_delta.{index}"), acc_delta);
            }
        }
        Ok(crate::checkpoint::Checkpoint {
            epoch,
            rng_state: self.rng.state(),
            order: self.order.clone(),
            history: self.history.clone(),
            tensors,
        })
    }

    fn epoch(
        &mut self,
        epoch: usize,
        train: &Split,
        test: &Split,
        options: &TrainOptions,
        observer: &mut dyn Observer,
        device: &Device,
    ) -> Result<EpochStats> {
        let lr = self.base_lr * options.lr_decay.powi(epoch as i32 - 1);
        self.optimizer.set_learning_rate(lr);
        let started = std::time::Instant::now();
        self.rng.shuffle(&mut self.order);
        let batches = train.len().div_ceil(options.batch_size);
        let mut loss_sum = 0.0;
        for (batch, rows) in self.order.chunks(options.batch_size).enumerate() {
            self.pixels.clear();
            for &row in rows {
                let image = &train.images[row * PIXELS..(row + 1) * PIXELS];
                let (dx, dy) = (
                    self.rng.offset(options.shift),
                    self.rng.offset(options.shift),
                );
                shifted(image, dx, dy, &mut self.pixels);
            }
            let labels: Vec<u32> = rows
                .iter()
                .map(|&row| u32::from(train.labels[row]))
                .collect();
            let x = images_tensor(&self.pixels, device)?;
            let y = Tensor::from_vec(labels, rows.len(), device)?;
            let logits = self.net.forward(&x, Some(&mut self.rng))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            self.optimizer.step(&loss)?;
            let loss = f64::from(loss.to_scalar::<f32>()?);
            loss_sum += loss;
            observer.batch(epoch, batch + 1, batches, loss);
        }
        let (loss, correct) = evaluate(&self.net, test, device)?;
        Ok(EpochStats {
            epoch,
            train_loss: loss_sum / batches as f64,
            loss,
            accuracy: correct as f64 / test.len() as f64,
            correct,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// The largest `shift`: a digit sits in MNIST's 20x20 centre, so 4 pixels keep it whole.
const MAX_SHIFT: usize = 4;

/// Appends `image` (28x28) moved `dx` pixels right and `dy` down, background filling
/// what moves in. Only 8,600 digits train the net: seeing each at a few offsets per run
/// is the cheapest way to make it generalise, at the cost of one copy it makes anyway.
fn shifted(image: &[f32], dx: isize, dy: isize, out: &mut Vec<f32>) {
    let side = SIDE as isize;
    let columns = (dx.max(0) as usize)..((side + dx.min(0)) as usize);
    for y in 0..side {
        let from = y - dy;
        let start = out.len();
        out.resize(start + SIDE, 0.0);
        if (0..side).contains(&from) {
            let source = &image[from as usize * SIDE..][..SIDE];
            let target = &mut out[start..start + SIDE];
            for x in columns.clone() {
                target[x] = source[(x as isize - dx) as usize];
            }
        }
    }
}

/// Mean cross-entropy and the number of correct predictions on a split.
pub fn evaluate(net: &Net, split: &Split, device: &Device) -> Result<(f64, usize)> {
    // Weights still tied to autograd would make every chunk's forward pass keep its graph.
    let net = net.detached();
    let mut loss_sum = 0.0;
    let mut correct = 0;
    for (chunk, labels) in split
        .images
        .chunks(1000 * PIXELS)
        .zip(split.labels.chunks(1000))
    {
        let x = images_tensor(chunk, device)?;
        let y = Tensor::from_vec(
            labels.iter().map(|&l| u32::from(l)).collect::<Vec<_>>(),
            labels.len(),
            device,
        )?;
        let logits = net.forward(&x, None)?;
        loss_sum += f64::from(candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()?)
            * labels.len() as f64;
        let predicted = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        correct += predicted
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == u32::from(**l))
            .count();
    }
    Ok((loss_sum / split.len() as f64, correct))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{OptimizerKind, SIDE, TrainOptions, shifted};
    use crate::contract::parse_params;
    use crate::idx::PIXELS;
    use crate::model::DeviceKind;

    fn parse(params: serde_json::Value) -> anyhow::Result<TrainOptions> {
        parse_params(params.as_object().expect("an object"))
    }

    #[test]
    fn the_params_default_as_documented_and_serialise_as_before() {
        let defaults = TrainOptions {
            epochs: 8,
            learning_rate: None,
            batch_size: 64,
            seed: 42,
            device: DeviceKind::Cpu,
            optimizer: OptimizerKind::Adadelta,
            lr_decay: 0.7,
            shift: 2,
        };
        assert_eq!(parse(json!({})).expect("no params"), defaults);
        assert_eq!(TrainOptions::default(), defaults);
        // The model rows and checkpoints keep them as JSON: the same strings as ever.
        let saved = serde_json::to_value(&defaults).expect("serialises");
        assert_eq!(saved["device"], "cpu");
        assert_eq!(saved["optimizer"], "adadelta");
        assert_eq!(parse(saved.clone()).expect("reads its own JSON"), defaults);
    }

    #[test]
    fn every_param_given_anywhere_is_accepted() {
        // pipeline.json, the READMEs, mnist/run-pipeline, the bench and the tests.
        for params in [
            json!({"epochs": 1}),
            json!({"epochs": 1, "seed": 7}),
            json!({"device": "cuda"}),
            json!({"epochs": 3, "batch_size": 32, "learning_rate": 0.5, "lr_decay": 1,
                   "shift": 0, "optimizer": "sgd", "device": "cpu", "seed": null}),
        ] {
            parse(params.clone()).unwrap_or_else(|err| panic!("{params}: {err:#}"));
        }
        for (name, kind) in [
            ("adadelta", OptimizerKind::Adadelta),
            ("adam", OptimizerKind::Adam),
            ("adamw", OptimizerKind::Adamw),
            ("sgd", OptimizerKind::Sgd),
        ] {
            let options = parse(json!({ "optimizer": name })).expect("an optimizer");
            assert_eq!(options.optimizer, kind);
        }
    }

    #[test]
    fn an_unknown_param_or_value_is_refused_by_name() {
        let err = parse(json!({"epoch": 3}))
            .expect_err("not a param")
            .to_string();
        assert!(
            err.contains("unknown field `epoch`, expected one of"),
            "{err}"
        );
        let err = parse(json!({"optimizer": "lbfgs"})).expect_err("no such optimizer");
        let err = err.to_string();
        assert!(
            err.starts_with("param optimizer: unknown variant `lbfgs`"),
            "{err}"
        );
        assert!(err.contains("`adadelta`, `adam`, `adamw`, `sgd`"), "{err}");
        let err = parse(json!({"device": "tpu"}))
            .expect_err("no such device")
            .to_string();
        assert!(
            err.starts_with("param device: unknown variant `tpu`"),
            "{err}"
        );
        let err = parse(json!({"epochs": -1}))
            .expect_err("negative")
            .to_string();
        assert!(err.starts_with("param epochs:"), "{err}");
    }

    #[test]
    fn a_shifted_image_moves_every_pixel_and_fills_the_edge_it_leaves_with_background() {
        let image: Vec<f32> = (0..PIXELS).map(|i| i as f32 + 1.0).collect();
        let mut out = Vec::new();
        shifted(&image, 0, 0, &mut out);
        assert_eq!(out, image);
        for (dx, dy) in [(2, 0), (-2, 1), (1, -3), (-4, -4)] {
            out.clear();
            shifted(&image, dx, dy, &mut out);
            assert_eq!(out.len(), PIXELS);
            for y in 0..SIDE as isize {
                for x in 0..SIDE as isize {
                    let (sx, sy) = (x - dx, y - dy);
                    let inside =
                        (0..SIDE as isize).contains(&sx) && (0..SIDE as isize).contains(&sy);
                    let expected = if inside {
                        image[(sy * SIDE as isize + sx) as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        out[(y * SIDE as isize + x) as usize],
                        expected,
                        "({dx}, {dy}) at ({x}, {y})"
                    );
                }
            }
        }
    }
}
