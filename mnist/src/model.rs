//! PyTorch's MNIST example network in candle: conv 32 3x3, conv 64 3x3, max-pool,
//! dropout, fc 128, fc 10. Initialisation and dropout draw from one seeded generator,
//! so the same seed on the CPU trains the same model.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{D, Device, Tensor, Var};

use crate::idx::{PIXELS, SIDE};
use crate::kernels::{self, conv::conv_nhwc, pool::max_pool2};
use crate::rng::Rng;

/// The flatten before fc1 runs over (h, w, c): fc1's 9216 inputs are in NHWC order.
pub const ARCHITECTURE: &str = "pytorch-mnist-example(nhwc): conv(1->32,3x3) relu conv(32->64,3x3) relu maxpool2 dropout0.25 fc(9216->128) relu dropout0.5 fc(128->10)";

/// MNIST's pixel mean and standard deviation, as PyTorch's example normalises.
pub(crate) const MEAN: f64 = 0.1307;
pub(crate) const STD: f64 = 0.3081;

/// (name, shape, fan_in) of every parameter.
const PARAMETERS: [(&str, &[usize], usize); 8] = [
    ("conv1.weight", &[32, 1, 3, 3], 9),
    ("conv1.bias", &[32], 9),
    ("conv2.weight", &[64, 32, 3, 3], 288),
    ("conv2.bias", &[64], 288),
    ("fc1.weight", &[128, 9216], 9216),
    ("fc1.bias", &[128], 9216),
    ("fc2.weight", &[10, 128], 128),
    ("fc2.bias", &[10], 128),
];

pub struct Net {
    tensors: HashMap<String, Tensor>,
}

impl Net {
    /// Fresh weights, uniform in ±1/sqrt(fan_in) as PyTorch's layers start.
    pub fn init(seed: u64, device: &Device) -> Result<(Self, Vec<Var>)> {
        let mut rng = Rng::new(seed);
        let mut tensors = HashMap::new();
        let mut vars = Vec::new();
        for (name, shape, fan_in) in PARAMETERS {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let count: usize = shape.iter().product();
            let values: Vec<f32> = (0..count).map(|_| rng.uniform(-bound, bound)).collect();
            let var = Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?;
            tensors.insert(name.to_owned(), var.as_tensor().clone());
            vars.push(var);
        }
        Ok((Self { tensors }, vars))
    }

    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, device)?;
        for (name, shape, _) in PARAMETERS {
            let tensor = tensors
                .get(name)
                .with_context(|| format!("weights lack {name}"))?;
            anyhow::ensure!(
                tensor.dims() == shape,
                "{name} has shape {:?}, expected {shape:?}",
                tensor.dims()
            );
        }
        Ok(Self { tensors })
    }

    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        // candle serialises safetensors to files only.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("weights.safetensors");
        candle_core::safetensors::save(&self.tensors, &path)?;
        Ok(std::fs::read(&path)?)
    }

    /// The same weights, cut off from autograd: evaluating with them builds no graph.
    pub fn detached(&self) -> Self {
        let tensors = self
            .tensors
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor.detach()))
            .collect();
        Self { tensors }
    }

    pub(crate) fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("missing parameter {name}"))
    }

    /// Logits for a batch of images `[n, 784]` in [0, 1]. With `dropout`, a training pass.
    pub fn forward(&self, images: &Tensor, dropout: Option<&mut Rng>) -> Result<Tensor> {
        let n = images.dim(0)?;
        // NHWC throughout: convolutions are fused im2col + GEMM on the CPU (see `conv`).
        let x = ((images.reshape((n, SIDE, SIDE, 1))? - MEAN)? / STD)?;
        let x = bias_relu(
            &conv_nhwc(&x, self.get("conv1.weight")?)?,
            self.get("conv1.bias")?,
        )?;
        // Pooling first, then bias and ReLU: the same values, since adding a channel's bias
        // and ReLU both keep the order max-pooling picks by, on a quarter of the elements.
        let x = bias_relu(
            &max_pool2(&conv_nhwc(&x, self.get("conv2.weight")?)?)?,
            self.get("conv2.bias")?,
        )?;
        let mut rng = dropout;
        let x = drop(&x, 0.25, rng.as_deref_mut())?.flatten_from(1)?;
        let fc1 = kernels::linear::linear(&x, self.get("fc1.weight")?)?;
        let x = bias_relu(&fc1, self.get("fc1.bias")?)?;
        let x = drop(&x, 0.5, rng)?;
        linear(&x, self.get("fc2.weight")?, self.get("fc2.bias")?)
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

/// Inverted dropout with a mask from the seeded generator; identity when not training.
fn drop(x: &Tensor, p: f32, rng: Option<&mut Rng>) -> Result<Tensor> {
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

pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::new_cuda(0)?),
        #[cfg(not(feature = "cuda"))]
        "cuda" => anyhow::bail!("this build has no CUDA support: build mnist with --features cuda"),
        other => anyhow::bail!("device must be cpu or cuda, not {other}"),
    }
}
