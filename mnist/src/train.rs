//! The training loop of `mnist-train`.

use anyhow::{Result, bail};
use candle_core::{D, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, SGD};

use crate::adadelta::{Adadelta, ParamsAdadelta};
use serde::Serialize;

use crate::idx::PIXELS;
use crate::lake::Split;
use crate::model::{Net, images_tensor};
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainOptions {
    pub epochs: usize,
    /// `None`: the optimizer's own default (adadelta 1.0, adam and adamw 0.001, sgd 0.01).
    pub learning_rate: Option<f64>,
    pub batch_size: usize,
    pub seed: u64,
    pub device: String,
    pub optimizer: String,
    /// The learning rate is multiplied by this after every epoch (PyTorch's StepLR gamma).
    pub lr_decay: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 8,
            learning_rate: None,
            batch_size: 64,
            seed: 42,
            device: "cpu".into(),
            optimizer: "adadelta".into(),
            lr_decay: 0.7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochStats {
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Loss and accuracy on the test split after the epoch.
    pub loss: f64,
    pub accuracy: f64,
    pub correct: usize,
    pub seconds: f64,
}

/// What the loop tells its caller as it goes.
pub trait Observer {
    fn batch(&mut self, epoch: usize, done: usize, total: usize, loss: f64);
    fn epoch(&mut self, stats: &EpochStats);
}

/// The rate each optimizer starts from unless `learning_rate` is given.
pub fn default_learning_rate(optimizer: &str) -> f64 {
    match optimizer {
        "adadelta" => 1.0,
        "sgd" => 0.01,
        _ => 0.001,
    }
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
            .unwrap_or_else(|| default_learning_rate(&options.optimizer));
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
        Ok(match options.optimizer.as_str() {
            "adadelta" => Opt::Adadelta(Adadelta::new(
                vars,
                ParamsAdadelta {
                    lr,
                    ..Default::default()
                },
            )?),
            "adam" => adam(0.0)?,
            "adamw" => adam(ParamsAdamW::default().weight_decay)?,
            "sgd" => Opt::Sgd(SGD::new(vars, lr)?),
            other => bail!("optimizer must be adadelta, adam, adamw or sgd, not {other}"),
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

pub fn train(
    train: &Split,
    test: &Split,
    options: &TrainOptions,
    observer: &mut dyn Observer,
) -> Result<(Net, Vec<EpochStats>)> {
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
    let device = crate::model::device(&options.device)?;
    let (net, vars) = Net::init(options.seed, &device)?;
    let mut optimizer = Opt::new(options, vars)?;
    let base_lr = optimizer.learning_rate();
    let mut rng = Rng::new(options.seed.wrapping_add(1));
    let mut order: Vec<usize> = (0..train.len()).collect();
    let batches = train.len().div_ceil(options.batch_size);
    let mut history = Vec::new();
    let mut pixels = Vec::with_capacity(options.batch_size * PIXELS);
    for epoch in 1..=options.epochs {
        optimizer.set_learning_rate(base_lr * options.lr_decay.powi(epoch as i32 - 1));
        let started = std::time::Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for (batch, rows) in order.chunks(options.batch_size).enumerate() {
            pixels.clear();
            for &row in rows {
                pixels.extend_from_slice(&train.images[row * PIXELS..(row + 1) * PIXELS]);
            }
            let labels: Vec<u32> = rows
                .iter()
                .map(|&row| u32::from(train.labels[row]))
                .collect();
            let x = images_tensor(&pixels, &device)?;
            let y = Tensor::from_vec(labels, rows.len(), &device)?;
            let logits = net.forward(&x, Some(&mut rng))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            optimizer.step(&loss)?;
            let loss = f64::from(loss.to_scalar::<f32>()?);
            loss_sum += loss;
            observer.batch(epoch, batch + 1, batches, loss);
        }
        let (loss, correct) = evaluate(&net, test, &device)?;
        let stats = EpochStats {
            epoch,
            train_loss: loss_sum / batches as f64,
            loss,
            accuracy: correct as f64 / test.len() as f64,
            correct,
            seconds: started.elapsed().as_secs_f64(),
        };
        observer.epoch(&stats);
        history.push(stats);
    }
    Ok((net, history))
}

/// Mean cross-entropy and the number of correct predictions on a split.
pub fn evaluate(net: &Net, split: &Split, device: &Device) -> Result<(f64, usize)> {
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
