//! `x [n, in] x weight [out, in]^T` on the CPU's AVX2 GEMM, for fc1.
//!
//! candle's matmul ran fc1 (in = 9,216) through the gemm crate, which packed the 4.7 MB
//! weight on every call: in serving, its packing and copies took about a fifth of the
//! time of a batch. Here the weight is read transposed straight into the kernel's
//! panels, a K-block at a time. The gradients stay candle matmuls, which have the
//! shapes the gemm crate runs well.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::contiguous;
use super::sgemm::{self, Isa, Lhs, Rhs};

/// Rows of `x` per rayon task: a training batch splits over two cores.
const ROWS_PER_TASK: usize = 32;
/// Fewer rows go to candle's matmul: packing the weight costs about as much as the
/// product of 30 rows, and the gemm crate runs a few rows (a serving batch) without it.
const MIN_ROWS: usize = 32;

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((n, inputs), (outputs, weight_inputs)) =
            (x_layout.shape().dims2()?, weight_layout.shape().dims2()?);
        if inputs != weight_inputs {
            bail!("linear of {inputs} inputs with a weight of {weight_inputs}");
        }
        let (x, weight) = (contiguous(x, x_layout)?, contiguous(weight, weight_layout)?);
        let mut out = vec![0f32; n * outputs];
        let declined = out
            .par_chunks_mut(ROWS_PER_TASK * outputs)
            .zip(x.par_chunks(ROWS_PER_TASK * inputs))
            .any(|(out, x)| {
                let (lhs, rhs) = (Lhs::rows(x, inputs), Rhs::transposed(weight, inputs));
                !sgemm::gemm(out, outputs, lhs, rhs, inputs, false)
            });
        if declined {
            bail!("the AVX2 GEMM declined a linear of {inputs} -> {outputs}");
        }
        Ok((CpuStorage::F32(out), Shape::from((n, outputs))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_x = grad.matmul(weight)?;
        let grad_weight = grad.t()?.matmul(x)?;
        Ok((Some(grad_x), Some(grad_weight)))
    }
}

/// `x [n, in]` times `weight [out, in]` transposed; candle's matmul for a few rows, and
/// where the AVX2 kernel cannot run (other devices, other CPUs, an output width off its
/// 16-column grid).
pub fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let ((rows, _), (outputs, _)) = (x.dims2()?, weight.dims2()?);
    if x.device().is_cpu()
        && rows >= MIN_ROWS
        && outputs.is_multiple_of(16)
        && Isa::best().is_some()
    {
        x.contiguous()?.apply_op2(&weight.contiguous()?, Linear)
    } else {
        x.matmul(&weight.t()?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::linear;

    #[test]
    fn linear_matches_candles_matmul_and_its_gradients() -> candle_core::Result<()> {
        let device = Device::Cpu;
        // 45 rows: a whole task and a partial one whose last strip is partial too.
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (45, 500), &device)?)?;
        let weight = Var::from_tensor(&Tensor::randn(0f32, 1.0, (32, 500), &device)?)?;
        let ours = linear(&x, &weight)?;
        let reference = x.matmul(&weight.t()?)?;
        crate::testing::assert_same_values_and_gradients(&[&x, &weight], &ours, &reference)
    }
}
