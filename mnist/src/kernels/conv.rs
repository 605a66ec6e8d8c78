//! Valid k x k convolutions over NHWC tensors as one fused candle op: im2col into a small
//! per-task buffer, then a GEMM, a few images at a time, on rayon.
//!
//! The unfused form (im2col of the whole batch, then one matmul) wrote a 42 MB patch
//! matrix per batch for conv2, read it back, and allocated as much again for its gradient
//! and col2im: perf put more of an epoch in page faults, memset and copies than in the
//! GEMMs. Here the patches of a few images (2.6 MB for conv2) are built, multiplied and
//! dropped while still in cache, and the weight gradient sums per task, not over one
//! GEMM with a 36,864-long inner dimension that one core ran alone.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::matmul::{Mat, matmul};
use super::winograd::{Scratch, Winograd};
use super::{contiguous, with_slices};

/// Images per rayon task: enough rows for the GEMM to run at speed, few enough that the
/// patches stay in the last-level cache.
const IMAGES_PER_TASK: usize = 4;

/// `x [n, h, w, c]` (*) `kernel [o, k * k * c]` (patch order ky, kx, c) -> `[n, oh, ow, o]`.
struct Conv {
    k: usize,
}

/// The sizes of one convolution.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    k: usize,
    h: usize,
    w: usize,
    c: usize,
    o: usize,
}

impl Dims {
    /// A k x k convolution of `h x w x c` images to `o` channels.
    pub(crate) const fn new(k: usize, h: usize, w: usize, c: usize, o: usize) -> Self {
        Self { k, h, w, c, o }
    }
    fn out(&self) -> (usize, usize) {
        (self.h - self.k + 1, self.w - self.k + 1)
    }
    fn positions(&self) -> usize {
        let (oh, ow) = self.out();
        oh * ow
    }
    fn patch(&self) -> usize {
        self.k * self.k * self.c
    }
    fn image(&self) -> usize {
        self.h * self.w * self.c
    }
}

/// Patches of `images` (whole images) into `cols`, `[images * positions, patch]`.
pub(crate) fn im2col(d: Dims, images: &[f32], cols: &mut Vec<f32>) {
    let (oh, ow) = d.out();
    let (patch, row) = (d.patch(), d.k * d.c);
    cols.clear();
    cols.reserve(images.len() / d.image() * d.positions() * patch);
    for image in images.chunks_exact(d.image()) {
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..d.k {
                    // In NHWC the k pixels of one patch row, all channels, are contiguous.
                    let from = ((oy + ky) * d.w + ox) * d.c;
                    cols.extend_from_slice(&image[from..from + row]);
                }
            }
        }
    }
}

/// Adds patch gradients `cols` back onto the (zeroed) gradients of whole `images`.
fn col2im(d: Dims, cols: &[f32], images: &mut [f32]) {
    let (oh, ow) = d.out();
    let (patch, row) = (d.patch(), d.k * d.c);
    for (image, cols) in images
        .chunks_exact_mut(d.image())
        .zip(cols.chunks_exact(d.positions() * patch))
    {
        for oy in 0..oh {
            for ox in 0..ow {
                let col = &cols[(oy * ow + ox) * patch..][..patch];
                for ky in 0..d.k {
                    let to = ((oy + ky) * d.w + ox) * d.c;
                    for (acc, g) in image[to..to + row].iter_mut().zip(&col[ky * row..][..row]) {
                        *acc += g;
                    }
                }
            }
        }
    }
}

/// `matrix [rows, columns]` transposed, row-major.
fn transpose(matrix: &[f32], rows: usize, columns: usize) -> Vec<f32> {
    let mut out = vec![0f32; matrix.len()];
    for (r, row) in matrix.chunks_exact(columns).enumerate() {
        for (c, &value) in row.iter().enumerate() {
            out[c * rows + r] = value;
        }
    }
    out
}

impl Conv {
    /// The batch size and sizes of a convolution of `x [n, h, w, c]` by `kernel [o, _]`.
    fn dims(&self, x: &Shape, kernel: &Shape) -> Result<(usize, Dims)> {
        let (n, h, w, c) = x.dims4()?;
        let (o, _) = kernel.dims2()?;
        Ok((
            n,
            Dims {
                k: self.k,
                h,
                w,
                c,
                o,
            },
        ))
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv-nhwc"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        kernel: &CpuStorage,
        kernel_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, d) = self.dims(x_layout.shape(), kernel_layout.shape())?;
        let (h, w, c, o, patch) = (d.h, d.w, d.c, d.o, kernel_layout.shape().dims2()?.1);
        if patch != d.patch() || h < d.k || w < d.k {
            bail!("conv of a {h}x{w}x{c} image with a {o}x{patch} kernel");
        }
        let (x, kernel) = (contiguous(x, x_layout)?, contiguous(kernel, kernel_layout)?);
        let (oh, ow) = d.out();
        let mut out = vec![0f32; n * d.positions() * o];
        if let Some(winograd) = winograd(d, kernel) {
            out.par_chunks_mut(d.positions() * o)
                .zip(x.par_chunks(d.image()))
                .for_each_init(Scratch::default, |s, (out, image)| {
                    winograd.convolve_into(image, (h, w), s, out)
                });
            return Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, o))));
        }
        let per_task = IMAGES_PER_TASK * d.positions() * o;
        out.par_chunks_mut(per_task)
            .zip(x.par_chunks(IMAGES_PER_TASK * d.image()))
            .for_each_init(Vec::new, |cols, (out, images)| {
                im2col(d, images, cols);
                let rows = cols.len() / patch;
                // The kernel read as `[patch, o]`: the GEMM packs it that way anyway.
                let kernel_t = Mat::new(kernel, o, patch).t();
                matmul(out, Mat::new(cols, rows, patch), kernel_t, false);
            });
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, d) = self.dims(x.shape(), kernel.shape())?;
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let grad_kernel = with_slices(&x, &grad, |x, grad| kernel_gradient(d, x, grad))?;
        let grad_kernel = Tensor::from_vec(grad_kernel, kernel.shape(), kernel.device())?;
        // The images themselves (conv1's input) need no gradient.
        let grad_x = if x.track_op() {
            let kernel = kernel.contiguous()?;
            let data = with_slices(&kernel, &grad, |k, grad| input_gradient(d, n, k, grad))?;
            Some(Tensor::from_vec(data, x.shape(), x.device())?)
        } else {
            None
        };
        Ok((grad_x, Some(grad_kernel)))
    }
}

/// Winograd's algorithm for the convolutions it suits (3x3 with an even output, such as
/// conv2's): less than half the multiply-adds of the GEMM over patches.
fn winograd(d: Dims, kernel: &[f32]) -> Option<Winograd> {
    let (oh, ow) = d.out();
    let suits = d.k == 3 && oh.is_multiple_of(2) && ow.is_multiple_of(2);
    suits.then(|| Winograd::new(kernel, d.o, d.c)).flatten()
}

/// `sum over images of grad_img^T [o, positions] x cols_img [positions, patch]`.
fn kernel_gradient(d: Dims, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let (o, patch) = (d.o, d.patch());
    let per_task = IMAGES_PER_TASK * d.positions() * o;
    // Summed as its transpose, `cols^T [patch, positions] x grad [positions, o]`: that
    // form's right-hand rows are contiguous, which the GEMM wants.
    // Summed per task and then over the tasks in order: rayon's fold would group the
    // sums by how work was stolen, and the same seed must give the same bits.
    let partial: Vec<Vec<f32>> = x
        .par_chunks(IMAGES_PER_TASK * d.image())
        .zip(grad.par_chunks(per_task))
        .map_init(Vec::new, |cols, (images, grad)| {
            let mut sum = vec![0f32; patch * o];
            im2col(d, images, cols);
            let rows = cols.len() / patch;
            let cols_t = Mat::new(cols, rows, patch).t();
            matmul(&mut sum, cols_t, Mat::new(grad, rows, o), true);
            sum
        })
        .collect();
    let mut sum_t = vec![0f32; patch * o];
    for sum in partial {
        sum_t.iter_mut().zip(&sum).for_each(|(a, b)| *a += b);
    }
    transpose(&sum_t, patch, o)
}

/// `col2im(grad_img [positions, o] x kernel [o, patch])` for every image.
fn input_gradient(d: Dims, n: usize, kernel: &[f32], grad: &[f32]) -> Vec<f32> {
    let (o, patch) = (d.o, d.patch());
    let mut out = vec![0f32; n * d.image()];
    if let Some(winograd) = flipped_winograd(d, kernel) {
        winograd_input_gradient(d, &winograd, grad, &mut out);
        return out;
    }
    out.par_chunks_mut(IMAGES_PER_TASK * d.image())
        .zip(grad.par_chunks(IMAGES_PER_TASK * d.positions() * o))
        .for_each_init(Vec::new, |cols: &mut Vec<f32>, (images, grad)| {
            let rows = grad.len() / o;
            cols.resize(rows * patch, 0.0);
            let kernel = Mat::new(kernel, o, patch);
            matmul(cols, Mat::new(grad, rows, o), kernel, false);
            col2im(d, cols, images);
        });
    out
}

/// The input gradient as a convolution by Winograd's algorithm, where it suits (3x3, an
/// even image, 8-lane channels): the gradient padded by 2 and convolved with the kernel
/// flipped and turned `[in, 3, 3, out]`. It writes each image's gradient whole, with no
/// patches to add back, in about half conv2's multiply-adds.
fn flipped_winograd(d: Dims, kernel: &[f32]) -> Option<Winograd> {
    if d.k != 3 || !d.h.is_multiple_of(2) || !d.w.is_multiple_of(2) {
        return None;
    }
    let (c, o) = (d.c, d.o);
    let mut flipped = vec![0f32; kernel.len()];
    for (i, value) in flipped.iter_mut().enumerate() {
        let (ch, ky, kx, out) = (i / (9 * o), i / (3 * o) % 3, i / o % 3, i % o);
        *value = kernel[((out * 3 + 2 - ky) * 3 + 2 - kx) * c + ch];
    }
    Winograd::new(&flipped, c, o)
}

fn winograd_input_gradient(d: Dims, winograd: &Winograd, grad: &[f32], out: &mut [f32]) {
    let ((oh, ow), o) = (d.out(), d.o);
    let (ph, pw) = (oh + 4, ow + 4);
    out.par_chunks_mut(d.image())
        .zip(grad.par_chunks(d.positions() * o))
        .for_each_init(
            || (Scratch::default(), vec![0f32; ph * pw * o]),
            |(s, padded), (image, grad)| {
                // The border stays zero; each task overwrites the same interior.
                for (y, row) in grad.chunks_exact(ow * o).enumerate() {
                    padded[((y + 2) * pw + 2) * o..][..ow * o].copy_from_slice(row);
                }
                winograd.convolve_into(padded, (ph, pw), s, image);
            },
        );
}

/// A valid k x k convolution of NHWC `x` with PyTorch-layout `weight [o, c, k, k]`,
/// without bias (the caller adds it, after pooling where it can).
pub fn conv_nhwc(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (_, _, _, c) = x.dims4()?;
    let (_, wc, _, _) = weight.dims4()?;
    if wc != c {
        bail!("conv expects {wc} channels, got {c}");
    }
    if x.device().is_cpu() {
        conv_with_kernel(x, &cpu_kernel(weight)?)
    } else {
        // GPUs have their own convolution kernels.
        x.permute((0, 3, 1, 2))?
            .contiguous()?
            .conv2d(weight, 0, 1, 1, 1)?
            .permute((0, 2, 3, 1))
    }
}

/// `weight [o, c, k, k]` as the CPU op's kernel `[o, k * k * c]` (patch order ky, kx, c): a
/// strided copy, which the serving engine makes once instead of per batch.
pub fn cpu_kernel(weight: &Tensor) -> Result<Tensor> {
    let (o, c, k, _) = weight.dims4()?;
    weight.permute((0, 2, 3, 1))?.reshape((o, k * k * c))
}

/// A valid square convolution of NHWC `x` on the CPU with a kernel from [`cpu_kernel`].
fn conv_with_kernel(x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
    let (_, _, _, c) = x.dims4()?;
    let (_, patch) = kernel.dims2()?;
    let k = (1..=patch).find(|k| k * k * c >= patch).unwrap_or(0);
    if k * k * c != patch {
        bail!("a kernel of {patch} values per output is not square over {c} channels");
    }
    x.contiguous()?.apply_op2(&kernel.contiguous()?, Conv { k })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::conv_nhwc;

    #[test]
    fn fused_convolution_matches_candles_convolution_and_its_gradients() -> candle_core::Result<()>
    {
        // 9 images: two full tasks of four and a partial one. 3 channels in, 4 out runs
        // on the gemm crate; 16 in and 16 out on the AVX2 kernel, except the last task,
        // whose 9 rows are not a multiple of its 6-row tiles. An even output (4x6) with
        // 8 channels in and 16 out runs forward by Winograd's algorithm; 16 in and 8 out
        // runs its input gradient so.
        for (x_shape, w_shape) in [
            ((9, 7, 6, 3), (4, 3, 3, 3)),
            ((9, 5, 5, 16), (16, 16, 3, 3)),
            ((3, 6, 8, 8), (16, 8, 3, 3)),
            ((3, 6, 8, 16), (8, 16, 3, 3)),
        ] {
            compare_with_candle(x_shape, w_shape)?;
        }
        Ok(())
    }

    fn compare_with_candle(
        x_shape: (usize, usize, usize, usize),
        w_shape: (usize, usize, usize, usize),
    ) -> candle_core::Result<()> {
        let device = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, x_shape, &device)?)?;
        let weight = Var::from_tensor(&Tensor::randn(0f32, 1.0, w_shape, &device)?)?;
        let ours = conv_nhwc(&x, &weight)?;
        let reference = x
            .permute((0, 3, 1, 2))?
            .conv2d(&weight, 0, 1, 1, 1)?
            .permute((0, 2, 3, 1))?;
        crate::testing::assert_same_values_and_gradients(&[&x, &weight], &ours, &reference)
    }

    #[test]
    fn images_that_need_no_gradient_get_none() -> candle_core::Result<()> {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 5, 1), &device)?;
        let weight = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 1, 3, 3), &device)?)?;
        let grads = conv_nhwc(&x, &weight)?.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&weight).is_some());
        Ok(())
    }
}
