//! 2x2 max-pooling over NHWC tensors as one pass each way. candle's reshape + `max` pair
//! walks the tensor twice forward and differentiates through broadcast comparisons; this
//! reads each input once and sends each gradient to the one input that won.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::contiguous;

/// `[n, h, w, c]` -> `[n, h/2, w/2, c]`, the largest of each 2x2 window.
pub struct MaxPool2;

/// The gradient of `MaxPool2`: (input, output, output gradient) -> input gradient.
struct MaxPool2Grad;

/// The four inputs of output (y, x) in one image, in the order PyTorch breaks ties.
fn window(y: usize, x: usize, w: usize, c: usize) -> [usize; 4] {
    let at = |yy: usize, xx: usize| (yy * w + xx) * c;
    [
        at(2 * y, 2 * x),
        at(2 * y, 2 * x + 1),
        at(2 * y + 1, 2 * x),
        at(2 * y + 1, 2 * x + 1),
    ]
}

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = layout.shape().dims4()?;
        if h % 2 != 0 || w % 2 != 0 {
            bail!("max-pool needs an even height and width, not {h}x{w}");
        }
        let input = contiguous(storage, layout)?;
        let (oh, ow) = (h / 2, w / 2);
        let mut out = vec![0f32; n * oh * ow * c];
        out.par_chunks_mut(oh * ow * c)
            .zip(input.par_chunks(h * w * c))
            .for_each(|(out, image)| {
                for y in 0..oh {
                    for x in 0..ow {
                        let [a, b, d, e] = window(y, x, w, c);
                        let to = &mut out[(y * ow + x) * c..][..c];
                        for (ch, o) in to.iter_mut().enumerate() {
                            *o = image[a + ch]
                                .max(image[b + ch])
                                .max(image[d + ch].max(image[e + ch]));
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, c))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.apply_op3_no_bwd(res, &grad_res.contiguous()?, &MaxPool2Grad)?;
        Ok(Some(grad))
    }
}

impl CustomOp3 for MaxPool2Grad {
    fn name(&self) -> &'static str {
        "max-pool-2x2-grad"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_layout: &Layout,
        output: &CpuStorage,
        output_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = input_layout.shape().dims4()?;
        let (input, output, grad) = (
            contiguous(input, input_layout)?,
            contiguous(output, output_layout)?,
            contiguous(grad, grad_layout)?,
        );
        let (oh, ow) = (h / 2, w / 2);
        let mut out = vec![0f32; n * h * w * c];
        out.par_chunks_mut(h * w * c)
            .enumerate()
            .for_each(|(b, into)| {
                let image = &input[b * h * w * c..][..h * w * c];
                for y in 0..oh {
                    for x in 0..ow {
                        let at = ((b * oh + y) * ow + x) * c;
                        for ch in 0..c {
                            let winner = window(y, x, w, c)
                                .into_iter()
                                .find(|&i| image[i + ch] == output[at + ch]);
                            if let Some(i) = winner {
                                into[i + ch] = grad[at + ch];
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, c))))
    }
}

/// 2x2 max-pooling of an NHWC tensor, on any device.
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op1(MaxPool2);
    }
    let (n, h, w, c) = x.dims4()?;
    x.reshape((n, h / 2, 2, w / 2, 2, c))?.max(4)?.max(2)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    #[test]
    fn max_pool_matches_candles_reductions_and_their_gradient() -> candle_core::Result<()> {
        let device = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 6, 4, 5), &device)?)?;
        let ours = super::max_pool2(&x)?;
        let reference = x.reshape((3, 3, 2, 2, 2, 5))?.max(4)?.max(2)?;
        let difference = (&ours - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(difference, 0.0);
        let weights = Tensor::randn(0f32, 1.0, ours.shape(), &device)?;
        let a = (&ours * &weights)?.sum_all()?.backward()?;
        let b = (&reference * &weights)?.sum_all()?.backward()?;
        let (a, b) = (a.get(&x).expect("grad"), b.get(&x).expect("grad"));
        let difference = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(difference < 1e-6, "gradients differ by {difference}");
        Ok(())
    }
}
