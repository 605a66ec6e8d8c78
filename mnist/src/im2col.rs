//! 3x3 valid convolutions as im2col + GEMM over NHWC tensors, with a col2im backward.
//! candle's own CPU convolution differentiates through a direct `conv_transpose2d` loop;
//! here the forward pass and both gradients are matrix products on gemm.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// NHWC `[n, h, w, c]` -> patches `[n, oh * ow, k * k * c]`, patch order (ky, kx, c).
pub struct Im2Col {
    pub k: usize,
}

/// The adjoint of `Im2Col`: scatters patch gradients back onto the image.
struct Col2Im {
    k: usize,
    h: usize,
    w: usize,
    c: usize,
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("im2col needs a contiguous tensor")
    };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = layout.shape().dims4()?;
        let k = self.k;
        let (oh, ow) = (h - k + 1, w - k + 1);
        let input = contiguous_f32(storage, layout)?;
        let patch = k * k * c;
        let mut out = vec![0f32; n * oh * ow * patch];
        out.par_chunks_mut(oh * ow * patch)
            .enumerate()
            .for_each(|(b, image_cols)| {
                let image = &input[b * h * w * c..(b + 1) * h * w * c];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let col = &mut image_cols[(oy * ow + ox) * patch..][..patch];
                        for ky in 0..k {
                            // In NHWC the k pixels of one patch row, all channels, are contiguous.
                            let from = ((oy + ky) * w + ox) * c;
                            col[ky * k * c..(ky + 1) * k * c]
                                .copy_from_slice(&image[from..from + k * c]);
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, oh * ow, patch))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, h, w, c) = arg.dims4()?;
        let grad = grad_res
            .contiguous()?
            .apply_op1_no_bwd(&Col2Im { k: self.k, h, w, c })?;
        Ok(Some(grad))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, positions, patch) = layout.shape().dims3()?;
        let (k, h, w, c) = (self.k, self.h, self.w, self.c);
        let (oh, ow) = (h - k + 1, w - k + 1);
        if positions != oh * ow || patch != k * k * c {
            bail!("col2im got patches {positions}x{patch} for a {h}x{w}x{c} image");
        }
        let cols = contiguous_f32(storage, layout)?;
        let mut out = vec![0f32; n * h * w * c];
        out.par_chunks_mut(h * w * c)
            .enumerate()
            .for_each(|(b, image)| {
                let image_cols = &cols[b * positions * patch..(b + 1) * positions * patch];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let col = &image_cols[(oy * ow + ox) * patch..][..patch];
                        for ky in 0..k {
                            let to = ((oy + ky) * w + ox) * c;
                            let source = &col[ky * k * c..(ky + 1) * k * c];
                            for (acc, g) in image[to..to + k * c].iter_mut().zip(source) {
                                *acc += g;
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, c))))
    }
}

/// A valid 3x3 (k x k) convolution of NHWC `x` with PyTorch-layout `weight [o, c, k, k]`.
pub fn conv_nhwc(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (o, wc, k, _) = weight.dims4()?;
    if wc != c {
        bail!("conv expects {wc} channels, got {c}");
    }
    let (oh, ow) = (h - k + 1, w - k + 1);
    let out = if x.device().is_cpu() {
        let cols = x
            .contiguous()?
            .apply_op1(Im2Col { k })?
            .reshape((n * oh * ow, k * k * c))?;
        let kernel = weight.permute((0, 2, 3, 1))?.reshape((o, k * k * c))?;
        cols.matmul(&kernel.t()?)?.reshape((n, oh, ow, o))?
    } else {
        // GPUs have their own convolution kernels.
        x.permute((0, 3, 1, 2))?
            .contiguous()?
            .conv2d(weight, 0, 1, 1, 1)?
            .permute((0, 2, 3, 1))?
    };
    out.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::conv_nhwc;

    #[test]
    fn im2col_convolution_matches_candles_convolution_and_its_gradients() -> candle_core::Result<()>
    {
        let device = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 7, 6, 3), &device)?)?;
        let weight = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &device)?)?;
        let bias = Tensor::randn(0f32, 1.0, 4, &device)?;
        let ours = conv_nhwc(&x, &weight, &bias)?;
        let reference = x
            .permute((0, 3, 1, 2))?
            .conv2d(&weight, 0, 1, 1, 1)?
            .permute((0, 2, 3, 1))?
            .broadcast_add(&bias)?;
        let difference = (&ours - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(difference < 1e-4, "forward differs by {difference}");
        let ours_grads = ours.sqr()?.sum_all()?.backward()?;
        let reference_grads = reference.sqr()?.sum_all()?.backward()?;
        for var in [&x, &weight] {
            let a = ours_grads.get(var).expect("gradient");
            let b = reference_grads.get(var).expect("gradient");
            let difference = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(difference < 1e-3, "gradient differs by {difference}");
        }
        Ok(())
    }
}
