//! The served net's forward pass: no autograd, and no allocation once it is built.
//!
//! Through candle, one digit cost a dozen tensors (each layer's output, each op's
//! storage and layout) and a rayon hop per op. Here the weights are packed for the GEMM
//! once, and every intermediate lives in buffers each worker owns, sized for the largest
//! group it runs. conv2, with the pool, bias and ReLU after it, runs by Winograd's
//! algorithm (`winograd`), in less than half the multiply-adds.
//!
//! Other devices and CPUs without AVX2 and FMA infer through the candle net.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::idx::{PIXELS, SIDE};
use crate::kernels::conv::{self, Dims};
use crate::kernels::sgemm::{Lhs, Packed, Rhs};
use crate::kernels::winograd::{self, Winograd};
use crate::model::{
    CLASSES, CONV1_OUT, CONV2_OUT, FEATURES, HIDDEN, MEAN, Net, POOLED, Params, STD, images_tensor,
};

/// conv1's output side (26), and its patch: 3x3 of one channel.
const SIDE1: usize = SIDE - 2;
const PATCH1: usize = 9;
/// conv1 as the training op's im2col sees it.
const CONV1: Dims = Dims::new(3, SIDE, SIDE, 1, CONV1_OUT);
/// Images whose features go through fc1 together: enough rows for the GEMM's six-row
/// strips, few enough that the features (1.2 MB) stay near the core.
const GROUP: usize = 32;
/// Fewer images than this run on the calling thread, rather than waking another core
/// for a fraction of a millisecond's work.
const SHARED_FROM: usize = 8;

/// The served model: an allocation-free engine on CPUs that run the AVX2 GEMM, else the
/// candle net on its device.
pub enum Predictor {
    /// The engine, on this CPU's kernels.
    Cpu(Box<Engine>),
    /// The candle net, detached from autograd, on its device.
    Candle(Net, Device),
}

impl Predictor {
    /// The engine where it runs, else the net, detached from autograd.
    pub fn new(net: &Net, device: &Device) -> Result<Self> {
        if device.is_cpu()
            && let Some(engine) = Engine::new(net, rayon::current_num_threads())?
        {
            return Ok(Self::Cpu(Box::new(engine)));
        }
        Ok(Self::Candle(net.detached(), device.clone()))
    }

    /// The softmax probabilities of `pixels` (n images of 784) into `out` (n x 10).
    pub fn probabilities(&mut self, pixels: &[f32], out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(
            pixels.len().is_multiple_of(PIXELS) && out.len() == pixels.len() / PIXELS * CLASSES,
            "{} pixels and {} probabilities do not make whole images",
            pixels.len(),
            out.len()
        );
        match self {
            Self::Cpu(engine) => engine.probabilities(pixels, out),
            Self::Candle(net, device) => {
                let p = net.probabilities(&images_tensor(pixels, device)?)?;
                out.copy_from_slice(&p.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(())
    }
}

/// The weights, packed once, and one set of buffers per worker.
pub struct Engine {
    weights: Weights,
    workers: Vec<Scratch>,
}

/// The net's [`Params`] as the engine runs them: the convolutions' and fc1's weights
/// packed for the GEMM once, the rest as they are.
struct Weights {
    conv1: Packed,
    conv1_bias: Vec<f32>,
    /// conv2 with the pool, bias and ReLU after it, by Winograd's algorithm.
    conv2: Winograd,
    conv2_bias: Vec<f32>,
    fc1: Packed,
    fc1_bias: Vec<f32>,
    /// `[10, 128]` as PyTorch stores it: ten dot products need no packing.
    fc2: Vec<f32>,
    fc2_bias: Vec<f32>,
}

/// One worker's intermediates, allocated once.
struct Scratch {
    image: Vec<f32>,
    cols1: Vec<f32>,
    conv1: Vec<f32>,
    winograd: winograd::Scratch,
    features: Vec<f32>,
    hidden: Vec<f32>,
}

impl Scratch {
    fn new() -> Self {
        Self {
            image: vec![0.0; PIXELS],
            cols1: Vec::with_capacity(SIDE1 * SIDE1 * PATCH1),
            conv1: vec![0.0; SIDE1 * SIDE1 * CONV1_OUT],
            winograd: winograd::Scratch::default(),
            features: vec![0.0; GROUP * FEATURES],
            hidden: vec![0.0; GROUP * HIDDEN],
        }
    }
}

impl Engine {
    /// `None` on a CPU without AVX2 and FMA. `workers` is how many threads share a batch.
    pub fn new(net: &Net, workers: usize) -> Result<Option<Self>> {
        let Some(weights) = Weights::new(net.params())? else {
            return Ok(None);
        };
        let workers = (0..workers.max(1)).map(|_| Scratch::new()).collect();
        Ok(Some(Self { weights, workers }))
    }

    /// `pixels` (n images) -> `out` (n x 10). A batch of a few images runs on the calling
    /// thread; a larger one is shared out, a contiguous run of images per worker.
    fn probabilities(&mut self, pixels: &[f32], out: &mut [f32]) {
        let images = pixels.len() / PIXELS;
        let weights = &self.weights;
        if images < SHARED_FROM || self.workers.len() == 1 {
            return weights.run(&mut self.workers[0], pixels, out);
        }
        let per = images.div_ceil(self.workers.len());
        self.workers
            .par_iter_mut()
            .zip(pixels.par_chunks(per * PIXELS))
            .zip(out.par_chunks_mut(per * CLASSES))
            .for_each(|((scratch, pixels), out)| weights.run(scratch, pixels, out));
    }
}

impl Weights {
    /// `None` on a CPU without AVX2 and FMA.
    fn new(p: &Params<Tensor>) -> Result<Option<Self>> {
        let values = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        // PyTorch's `[out, in, ky, kx]` conv weight as the patch order `(ky, kx, in)`.
        let kernel = |t: &Tensor| values(&conv::cpu_kernel(t)?);
        // Each weight `[out, in]` is read transposed, as the right-hand side `[in, out]`.
        let packed = |w: &[f32], inputs: usize, outputs: usize| {
            Packed::new(Rhs::transposed(w, inputs), inputs, outputs)
        };
        let (conv1, fc1) = (kernel(&p.conv1_weight)?, values(&p.fc1_weight)?);
        let (Some(conv1), Some(conv2), Some(fc1)) = (
            packed(&conv1, PATCH1, CONV1_OUT),
            Winograd::new(&kernel(&p.conv2_weight)?, CONV2_OUT, CONV1_OUT),
            packed(&fc1, FEATURES, HIDDEN),
        ) else {
            return Ok(None);
        };
        Ok(Some(Self {
            conv1,
            conv1_bias: values(&p.conv1_bias)?,
            conv2,
            conv2_bias: values(&p.conv2_bias)?,
            fc1,
            fc1_bias: values(&p.fc1_bias)?,
            fc2: values(&p.fc2_weight)?,
            fc2_bias: values(&p.fc2_bias)?,
        }))
    }

    /// Every image of `pixels` through the net on one thread, `GROUP` images at a time.
    fn run(&self, s: &mut Scratch, pixels: &[f32], out: &mut [f32]) {
        for (pixels, out) in pixels
            .chunks(GROUP * PIXELS)
            .zip(out.chunks_mut(GROUP * CLASSES))
        {
            let n = pixels.len() / PIXELS;
            for (image, features) in pixels
                .chunks_exact(PIXELS)
                .zip(s.features.chunks_exact_mut(FEATURES))
            {
                self.conv1(s.image.as_mut_slice(), &mut s.cols1, &mut s.conv1, image);
                self.conv2_pooled(&s.conv1, &mut s.winograd, features);
            }
            self.classify(
                &s.features[..n * FEATURES],
                &mut s.hidden[..n * HIDDEN],
                out,
            );
        }
    }

    /// One image, normalised as in training, through conv1, bias and ReLU into `conv1`
    /// (26 x 26 x 32).
    fn conv1(&self, image: &mut [f32], cols: &mut Vec<f32>, conv1: &mut [f32], pixels: &[f32]) {
        // The same two roundings as candle's `(x - MEAN) / STD` in `Net::forward`.
        let (shift, scale) = (MEAN as f32, (1.0 / STD) as f32);
        for (to, &p) in image.iter_mut().zip(pixels) {
            *to = (p - shift) * scale;
        }
        conv::im2col(CONV1, image, cols);
        let done = self.conv1.product(conv1, Lhs::rows(cols, PATCH1));
        assert!(done, "conv1's buffers are sized for its weight");
        bias_relu(conv1, &self.conv1_bias);
    }

    /// conv2 over `conv1`, then the 2x2 max-pool, bias and ReLU (in that order, as
    /// `Net::forward` runs them) of each block of outputs, into `features` (12x12x64).
    fn conv2_pooled(&self, conv1: &[f32], s: &mut winograd::Scratch, features: &mut [f32]) {
        let bias = &self.conv2_bias;
        self.conv2
            .convolve(conv1, (SIDE1, SIDE1), s, |ty, tx, block| {
                let to = &mut features[(ty * POOLED + tx) * CONV2_OUT..][..CONV2_OUT];
                let [a, b, c, d] = [0, 1, 2, 3].map(|i| &block[i * CONV2_OUT..][..CONV2_OUT]);
                for (ch, o) in to.iter_mut().enumerate() {
                    let max = a[ch].max(b[ch]).max(c[ch].max(d[ch]));
                    *o = (max + bias[ch]).max(0.0);
                }
            });
    }

    /// fc1, bias and ReLU, fc2 and the softmax, for the images whose `features` these are.
    fn classify(&self, features: &[f32], hidden: &mut [f32], out: &mut [f32]) {
        let done = self.fc1.product(hidden, Lhs::rows(features, FEATURES));
        assert!(done, "fc1's buffers are sized for its weight");
        bias_relu(hidden, &self.fc1_bias);
        for (h, out) in hidden
            .chunks_exact(HIDDEN)
            .zip(out.chunks_exact_mut(CLASSES))
        {
            for ((o, w), b) in out
                .iter_mut()
                .zip(self.fc2.chunks_exact(HIDDEN))
                .zip(&self.fc2_bias)
            {
                *o = h.iter().zip(w).map(|(h, w)| h * w).sum::<f32>() + b;
            }
            softmax(out);
        }
    }
}

/// `relu(x + bias)` in place over rows of `bias.len()` channels.
fn bias_relu(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = (*v + b).max(0.0);
        }
    }
}

/// Logits to probabilities in place, less the largest first so `exp` cannot overflow.
fn softmax(logits: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in logits.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in logits.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::sgemm::Isa;
    use crate::testing::{allocations, count_allocations_here};

    #[test]
    fn a_built_engine_infers_without_allocating() -> Result<()> {
        let (net, _) = Net::init(5, &Device::Cpu)?;
        let Some(mut engine) = Engine::new(&net, 2)? else {
            assert!(Isa::best().is_none(), "the engine runs where the GEMM runs");
            eprintln!("a_built_engine_infers_without_allocating: skipped, no AVX2 and FMA");
            return Ok(());
        };
        // Only the pool's threads count: the engine runs there, the test thread does not.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .start_handler(|_| count_allocations_here())
            .build()?;
        let pixels: Vec<f32> = (0..70 * PIXELS).map(|i| (i % 251) as f32 / 251.0).collect();
        let mut out = vec![0f32; 70 * CLASSES];
        // One image alone, a few on one thread, and a batch shared out in groups.
        let mut run = |engine: &mut Engine| {
            for images in [1, 7, 70] {
                engine.probabilities(&pixels[..images * PIXELS], &mut out[..images * CLASSES]);
            }
        };
        pool.install(|| run(&mut engine));
        let before = allocations();
        pool.install(|| run(&mut engine));
        assert_eq!(allocations() - before, 0, "allocations while inferring");
        for p in out.chunks_exact(CLASSES) {
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{p:?}");
        }
        Ok(())
    }
}
