//! `relu(x + bias)` over a channels-last tensor as one pass each way.
//!
//! candle's `broadcast_add` then `relu` walked conv1's 5.5 MB output (a batch of 64)
//! twice forward and about eight times backward (the ReLU's mask is built from a
//! comparison, a cast and a product, and each node's gradient starts as zeros), on a
//! thread pool that spins between passes: perf put a quarter of an epoch there. Here the
//! forward writes each output once, and the backward reads the output and its gradient
//! once, writing the input's gradient and summing the bias's in the same pass.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::{contiguous, with_slices};

/// About this many elements per rayon task (a whole number of rows): big enough to
/// amortise the task, small enough to share out a batch.
const CHUNK: usize = 1 << 15;

/// `x [.., c] + bias [c]`, then ReLU.
struct BiasRelu;

impl CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "bias-relu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let channels = x_layout.shape().dims().last().copied().unwrap_or(0);
        if bias_layout.shape().dims() != [channels] {
            bail!(
                "bias-relu of {:?} with a bias of {:?}",
                x_layout.shape(),
                bias_layout.shape()
            );
        }
        let (x, bias) = (contiguous(x, x_layout)?, contiguous(bias, bias_layout)?);
        let c = chunk(channels);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .for_each(|(out, x)| {
                for ((o, x), b) in out.iter_mut().zip(x).zip(bias.iter().cycle()) {
                    *o = (x + b).max(0.0);
                }
            });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let channels = bias.elem_count();
        let (res, grad) = (res.contiguous()?, grad.contiguous()?);
        let (grad_x, grad_bias) =
            with_slices(&res, &grad, |res, grad| gradients(res, grad, channels))?;
        Ok((
            Some(Tensor::from_vec(grad_x, x.shape(), x.device())?),
            Some(Tensor::from_vec(grad_bias, bias.shape(), bias.device())?),
        ))
    }
}

/// The elements per task for rows of `channels`.
fn chunk(channels: usize) -> usize {
    channels * (CHUNK / channels).max(1)
}

/// The input's gradient (the output's where the output is positive, as PyTorch's ReLU
/// passes it) and the bias's, summed per chunk and then over the chunks in order, so the
/// same inputs always give the same bits.
fn gradients(res: &[f32], grad: &[f32], channels: usize) -> (Vec<f32>, Vec<f32>) {
    let chunk = chunk(channels);
    let mut grad_x = vec![0f32; res.len()];
    let partial: Vec<Vec<f32>> = grad_x
        .par_chunks_mut(chunk)
        .zip(res.par_chunks(chunk).zip(grad.par_chunks(chunk)))
        .map(|(out, (res, grad))| {
            let mut sum = vec![0f32; channels];
            for (out, (res, grad)) in out
                .chunks_exact_mut(channels)
                .zip(res.chunks_exact(channels).zip(grad.chunks_exact(channels)))
            {
                for (((o, r), g), s) in out.iter_mut().zip(res).zip(grad).zip(&mut sum) {
                    *o = if *r > 0.0 { *g } else { 0.0 };
                    *s += *o;
                }
            }
            sum
        })
        .collect();
    let mut grad_bias = vec![0f32; channels];
    for sum in partial {
        grad_bias.iter_mut().zip(sum).for_each(|(a, b)| *a += b);
    }
    (grad_x, grad_bias)
}

/// `relu(x + bias)` with `bias` broadcast over the last dimension of `x`.
pub fn bias_relu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op2(&bias.contiguous()?, BiasRelu)
    } else {
        x.broadcast_add(bias)?.relu()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::bias_relu;

    #[test]
    fn bias_relu_matches_candles_add_and_relu_and_their_gradients() -> candle_core::Result<()> {
        let device = Device::Cpu;
        // Three and a half chunks, so the last task is partial.
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 16, 32, 32), &device)?)?;
        let bias = Var::from_tensor(&Tensor::randn(0f32, 1.0, 32, &device)?)?;
        let ours = bias_relu(&x, &bias)?;
        let reference = x.broadcast_add(&bias)?.relu()?;
        assert_eq!(
            ours.flatten_all()?.to_vec1::<f32>()?,
            reference.flatten_all()?.to_vec1::<f32>()?
        );
        let weights = Tensor::randn(0f32, 1.0, x.shape(), &device)?;
        let ours_grads = (&ours * &weights)?.sum_all()?.backward()?;
        let reference_grads = (&reference * &weights)?.sum_all()?.backward()?;
        for var in [&x, &bias] {
            let a = ours_grads.get(var).expect("gradient");
            let b = reference_grads.get(var).expect("gradient");
            let difference = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(difference < 1e-3, "gradient differs by {difference}");
        }
        Ok(())
    }

    #[test]
    fn a_bias_that_does_not_fit_the_channels_is_refused() -> candle_core::Result<()> {
        let device = Device::Cpu;
        let x = Tensor::zeros((2, 3, 3, 6), candle_core::DType::F32, &device)?;
        for channels in [3, 5, 18] {
            let bias = Tensor::zeros(channels, candle_core::DType::F32, &device)?;
            assert!(bias_relu(&x, &bias).is_err(), "{channels} channels");
        }
        Ok(())
    }
}
