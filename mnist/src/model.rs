//! PyTorch's MNIST example network in candle: conv 32 3x3, conv 64 3x3, max-pool,
//! dropout, fc 128, fc 10. Initialisation and dropout draw from one seeded generator,
//! so the same seed on the CPU trains the same model.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{D, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::idx::{PIXELS, SIDE};
use crate::kernels::{self, conv::conv_nhwc, pool::max_pool2};
use crate::rng::Rng;

/// The flatten before fc1 runs over (h, w, c): fc1's 9216 inputs are in NHWC order.
pub const ARCHITECTURE: &str = "pytorch-mnist-example(nhwc): conv(1->32,3x3) relu conv(32->64,3x3) relu maxpool2 dropout0.25 fc(9216->128) relu dropout0.5 fc(128->10)";

/// MNIST's pixel mean and standard deviation, as PyTorch's example normalises.
pub(crate) const MEAN: f64 = 0.1307;
pub(crate) const STD: f64 = 0.3081;

/// conv1's and conv2's output channels.
pub(crate) const CONV1_OUT: usize = 32;
pub(crate) const CONV2_OUT: usize = 64;
/// The side of conv2's output (24) once pooled: each 3x3 convolution takes 2 off.
pub(crate) const POOLED: usize = (SIDE - 4) / 2;
/// fc1's inputs (9,216, conv2's pooled output flattened), its outputs, and the classes.
pub(crate) const FEATURES: usize = POOLED * POOLED * CONV2_OUT;
pub(crate) const HIDDEN: usize = 128;
pub(crate) const CLASSES: usize = 10;

/// The net's eight parameters, by layer, in PyTorch's layouts (`[out, in, ky, kx]` for a
/// convolution, `[out, in]` for a linear layer): one definition for training (tensors and
/// their variables), the weights file, checkpoints and the serving engine.
#[derive(Clone, Debug)]
pub struct Params<T> {
    /// conv1's kernel, `[32, 1, 3, 3]`.
    pub conv1_weight: T,
    /// conv1's bias, `[32]`.
    pub conv1_bias: T,
    /// conv2's kernel, `[64, 32, 3, 3]`.
    pub conv2_weight: T,
    /// conv2's bias, `[64]`.
    pub conv2_bias: T,
    /// fc1's weight, `[128, 9216]`, over conv2's pooled output in NHWC order.
    pub fc1_weight: T,
    /// fc1's bias, `[128]`.
    pub fc1_bias: T,
    /// fc2's weight, `[10, 128]`.
    pub fc2_weight: T,
    /// fc2's bias, `[10]`.
    pub fc2_bias: T,
}

/// What defines one parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Its name in the weights file: PyTorch's (`conv1.weight`), which the model rows of
    /// the lake keep.
    pub name: &'static str,
    /// Its shape.
    pub shape: &'static [usize],
    /// Its layer's inputs per output, which bound its initial values.
    pub fan_in: usize,
}

/// Every parameter's name, shape and fan-in.
pub const SPECS: Params<Spec> = {
    const fn spec(name: &'static str, shape: &'static [usize], fan_in: usize) -> Spec {
        Spec {
            name,
            shape,
            fan_in,
        }
    }
    Params {
        conv1_weight: spec("conv1.weight", &[CONV1_OUT, 1, 3, 3], 9),
        conv1_bias: spec("conv1.bias", &[CONV1_OUT], 9),
        conv2_weight: spec("conv2.weight", &[CONV2_OUT, CONV1_OUT, 3, 3], 9 * CONV1_OUT),
        conv2_bias: spec("conv2.bias", &[CONV2_OUT], 9 * CONV1_OUT),
        fc1_weight: spec("fc1.weight", &[HIDDEN, FEATURES], FEATURES),
        fc1_bias: spec("fc1.bias", &[HIDDEN], FEATURES),
        fc2_weight: spec("fc2.weight", &[CLASSES, HIDDEN], HIDDEN),
        fc2_bias: spec("fc2.bias", &[CLASSES], HIDDEN),
    }
};

impl<T> Params<T> {
    /// One value per parameter, made by `f` from its spec in the net's order ([`iter`]'s).
    ///
    /// [`iter`]: Params::iter
    pub fn try_build<E>(mut f: impl FnMut(&Spec) -> Result<T, E>) -> Result<Self, E> {
        let s = &SPECS;
        // A struct expression evaluates its fields in the order written.
        Ok(Self {
            conv1_weight: f(&s.conv1_weight)?,
            conv1_bias: f(&s.conv1_bias)?,
            conv2_weight: f(&s.conv2_weight)?,
            conv2_bias: f(&s.conv2_bias)?,
            fc1_weight: f(&s.fc1_weight)?,
            fc1_bias: f(&s.fc1_bias)?,
            fc2_weight: f(&s.fc2_weight)?,
            fc2_bias: f(&s.fc2_bias)?,
        })
    }

    /// The parameters in the net's order, layer by layer, weight before bias: the order
    /// of the optimizer's variables and of a checkpoint's `weight.{i}` tensors.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        [
            &self.conv1_weight,
            &self.conv1_bias,
            &self.conv2_weight,
            &self.conv2_bias,
            &self.fc1_weight,
            &self.fc1_bias,
            &self.fc2_weight,
            &self.fc2_bias,
        ]
        .into_iter()
    }

    /// `f` of every parameter.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Params<U> {
        let mut values = self.iter().map(&mut f);
        let mut next = || values.next().expect("eight parameters");
        Params {
            conv1_weight: next(),
            conv1_bias: next(),
            conv2_weight: next(),
            conv2_bias: next(),
            fc1_weight: next(),
            fc1_bias: next(),
            fc2_weight: next(),
            fc2_bias: next(),
        }
    }
}

/// The network: its parameters as tensors, on one device.
pub struct Net {
    params: Params<Tensor>,
}

impl Net {
    /// Fresh weights, uniform in ±1/sqrt(fan_in) as PyTorch's layers start, drawn from
    /// `seed`; with the variables that train them, in [`Params::iter`]'s order.
    pub fn init(seed: u64, device: &Device) -> Result<(Self, Vec<Var>)> {
        let mut rng = Rng::new(seed);
        let vars = Params::try_build(|spec| -> Result<Var> {
            let bound = 1.0 / (spec.fan_in as f32).sqrt();
            let count: usize = spec.shape.iter().product();
            let values: Vec<f32> = (0..count).map(|_| rng.uniform(-bound, bound)).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(
                values, spec.shape, device,
            )?)?)
        })?;
        let params = vars.map(|var| var.as_tensor().clone());
        Ok((Self { params }, vars.iter().cloned().collect()))
    }

    /// The weights of a model row (safetensors keyed by [`Spec::name`]), checked against
    /// the net's shapes.
    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<Self> {
        let mut tensors = candle_core::safetensors::load_buffer(bytes, device)?;
        let params = Params::try_build(|spec| -> Result<Tensor> {
            let name = spec.name;
            let tensor = tensors
                .remove(name)
                .with_context(|| format!("weights lack {name}"))?;
            anyhow::ensure!(
                tensor.dims() == spec.shape,
                "{name} has shape {:?}, expected {:?}",
                tensor.dims(),
                spec.shape
            );
            Ok(tensor)
        })?;
        Ok(Self { params })
    }

    /// The weights as safetensors keyed by [`Spec::name`], as a model row keeps them.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let tensors: HashMap<&str, Tensor> = SPECS
            .iter()
            .zip(self.params.iter())
            .map(|(spec, tensor)| (spec.name, tensor.clone()))
            .collect();
        // candle serialises safetensors to files only.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("weights.safetensors");
        candle_core::safetensors::save(&tensors, &path)?;
        Ok(std::fs::read(&path)?)
    }

    /// The same weights, cut off from autograd: evaluating with them builds no graph.
    pub fn detached(&self) -> Self {
        Self {
            params: self.params.map(Tensor::detach),
        }
    }

    /// The parameters, by layer.
    pub fn params(&self) -> &Params<Tensor> {
        &self.params
    }

    /// Logits for a batch of images `[n, 784]` in [0, 1]. With `training`'s generator, a
    /// training pass: dropout drawn from it.
    pub fn forward(&self, images: &Tensor, training: Option<&mut Rng>) -> Result<Tensor> {
        let (p, n) = (&self.params, images.dim(0)?);
        // NHWC throughout: convolutions are fused im2col + GEMM on the CPU (see `kernels`).
        let x = ((images.reshape((n, SIDE, SIDE, 1))? - MEAN)? / STD)?;
        let x = bias_relu(&conv_nhwc(&x, &p.conv1_weight)?, &p.conv1_bias)?;
        // Pooling first, then bias and ReLU: the same values, since adding a channel's bias
        // and ReLU both keep the order max-pooling picks by, on a quarter of the elements.
        let conv2 = max_pool2(&conv_nhwc(&x, &p.conv2_weight)?)?;
        let x = bias_relu(&conv2, &p.conv2_bias)?;
        let mut rng = training;
        let x = dropout(&x, 0.25, rng.as_deref_mut())?.flatten_from(1)?;
        let x = bias_relu(&kernels::linear::linear(&x, &p.fc1_weight)?, &p.fc1_bias)?;
        let x = dropout(&x, 0.5, rng)?;
        linear(&x, &p.fc2_weight, &p.fc2_bias)
    }

    /// Softmax probabilities for a batch of images.
    pub fn probabilities(&self, images: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(
            &self.forward(images, None)?,
            D::Minus1,
        )?)
    }
}

fn bias_relu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(kernels::bias_relu::bias_relu(x, bias)?)
}

/// fc2: the same product as fc1's (which takes candle's matmul for its 10 outputs), then
/// the bias.
fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(kernels::linear::linear(x, weight)?.broadcast_add(bias)?)
}

/// Inverted dropout: `x` with each element zeroed with probability `p` by the seeded
/// generator, and the rest scaled by 1 / (1 - p); `x` itself when not training.
fn dropout(x: &Tensor, p: f32, rng: Option<&mut Rng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.next_f32() < p { 0.0 } else { keep })
        .collect();
    Ok(x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)?)
}

/// Images `[n, 784]` as a tensor.
pub fn images_tensor(pixels: &[f32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(
        pixels,
        (pixels.len() / PIXELS, PIXELS),
        device,
    )?)
}

/// Where the net trains or serves: the `device` param.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// This machine's CPU, on the crate's kernels.
    #[default]
    Cpu,
    /// The first NVIDIA GPU; needs a build with `--features cuda`.
    Cuda,
}

impl DeviceKind {
    /// The candle device; an error for CUDA in a build without it.
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(Device::new_cuda(0)?),
            #[cfg(not(feature = "cuda"))]
            Self::Cuda => {
                anyhow::bail!("this build has no CUDA support: build mnist with --features cuda")
            }
        }
    }
}
