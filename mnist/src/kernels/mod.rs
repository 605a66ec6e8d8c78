//! The net's CPU kernels, in one place: the GEMM and its microkernels ([`sgemm`]),
//! products of whole matrices on it or on the gemm crate ([`matmul`]), Winograd's 3x3
//! convolution (`winograd`), and the fused candle ops training runs on them: the
//! convolution ([`conv`]), fc1's product ([`linear`]), bias + ReLU ([`bias_relu`]) and
//! 2x2 max-pooling ([`pool`]). Each op falls back to candle's own on other devices.
//!
//! # Unsafe code
//!
//! The workspace denies `unsafe_code`. In this crate it is allowed only item by item
//! (`#[allow(unsafe_code)]` on the item), for two reasons, both on the hot path:
//!
//! - SIMD intrinsics: [`sgemm`]'s microkernels are `unsafe fn`s compiled for AVX2 and FMA
//!   or AVX-512F, reading and writing through raw pointers. Each has a `# Safety` section
//!   saying which CPU features and which offsets the caller must guarantee. Their one
//!   caller, `Product::tile`, holds an [`sgemm::Isa`], which only detecting constructors
//!   build, and asserts the tile's bounds against a `Product` that only its checking
//!   constructor builds, right before the call.
//! - The gemm crate's entry point, which takes raw pointers and strides
//!   ([`matmul::gemm_crate`], the fallback for shapes off the 16-column grid): its
//!   operands are [`matmul::Mat`] views, whose constructor checks each slice's length,
//!   and the call asserts the shapes agree first.
//!
//! Every `unsafe` block has a `// SAFETY:` comment right before it naming the check that
//! makes it sound; a function that relies on its caller's check is an `unsafe fn` with a
//! `# Safety` section, or takes a view type that only the checking constructor builds.
//! Outside this module, `unsafe` appears only in `lib.rs`'s two calls at process start
//! (setting an environment variable, mimalloc's option setter) and in the unit tests'
//! counting allocator, each with its own `SAFETY` comment.

pub mod bias_relu;
pub mod conv;
pub mod linear;
pub mod matmul;
pub mod pool;
pub mod sgemm;
pub(crate) mod winograd;

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, bail};

/// The f32 values of a contiguous CPU tensor, for the custom ops.
fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => bail!("the MNIST ops need contiguous tensors"),
    }
}

/// Runs `f` on the values of two contiguous CPU tensors, in place.
fn with_slices<R>(a: &Tensor, b: &Tensor, f: impl FnOnce(&[f32], &[f32]) -> R) -> Result<R> {
    let ((a, a_layout), (b, b_layout)) = (a.storage_and_layout(), b.storage_and_layout());
    match (&*a, &*b) {
        (Storage::Cpu(a), Storage::Cpu(b)) => {
            Ok(f(contiguous(a, a_layout)?, contiguous(b, b_layout)?))
        }
        _ => bail!("the fused ops run on the CPU"),
    }
}
