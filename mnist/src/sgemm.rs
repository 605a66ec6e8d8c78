//! A single-precision GEMM for the net's shapes, on one core with AVX2 and FMA.
//!
//! The gemm crate ran conv2's three products (K = 288 forward, K = 64 for the input
//! gradient, K = 2,304 for the weight gradient) at 15-30 GFLOP/s on one core, against a
//! measured 117 GFLOP/s FMA peak, and its packing showed in perf. Here only the
//! right-hand side is packed, once per K-block; the left-hand side is read in place in
//! strips of six rows, each reused across every 16-column panel while it is in cache.
//! Rows past the last whole strip go through a kernel compiled for one to five rows, so
//! any row count runs here (a serving batch, conv1's 9-row weight gradient). Where the
//! CPU has AVX-512, a 32-column kernel takes two panels at once.

/// A matrix `[rows, k]` read at `data[row * row_stride + p * k_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Lhs<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub k_stride: usize,
}

impl<'a> Lhs<'a> {
    /// Row-major `[_, width]`.
    pub(crate) fn rows(data: &'a [f32], width: usize) -> Self {
        Self {
            data,
            row_stride: width,
            k_stride: 1,
        }
    }

    /// Whether `data` holds all of an `m x k` matrix with these strides.
    fn covers(&self, m: usize, k: usize) -> bool {
        (m - 1) * self.row_stride + (k - 1) * self.k_stride < self.data.len()
    }
}

/// A matrix `[k, n]` read at `data[p * row_stride + j * col_stride]`; packing makes
/// any strides cost the same to the kernel, and contiguous rows are copied fastest.
#[derive(Clone, Copy)]
pub(crate) struct Rhs<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Rhs<'a> {
    /// A weight `[out, in]`, row-major, read as `[in, out]`: its row j is column j.
    pub(crate) fn transposed(weight: &'a [f32], inputs: usize) -> Self {
        Self {
            data: weight,
            row_stride: 1,
            col_stride: inputs,
        }
    }

    /// Whether `data` holds all of a `k x n` matrix with these strides.
    fn covers(&self, k: usize, n: usize) -> bool {
        (k - 1) * self.row_stride + (n - 1) * self.col_stride < self.data.len()
    }
}

/// Rows and columns of one microkernel tile: 12 accumulators of 8 lanes, the two rows of
/// the right-hand panel and one broadcast fill 15 of AVX2's 16 registers.
const MR: usize = 6;
const NR: usize = 16;
/// Depth per pass: a K-block of the left-hand side (up to 442 KB for the weight
/// gradient) stays in L2, and conv2's forward (K = 288) runs in one pass.
const KC: usize = 384;
/// Rows per block: 96 rows of conv2's forward (K = 288) are 110 KB, which stay in L2.
const MC: usize = 96;

/// `dst [m, n] (+)= lhs [m, k] x rhs [k, n]` with `dst` row-major. Returns false, leaving
/// `dst` untouched, when the shape or the CPU does not suit the kernel (n not a multiple
/// of 16, no AVX2 and FMA); the caller then uses a general GEMM.
pub(crate) fn gemm(
    dst: &mut [f32],
    n: usize,
    lhs: Lhs<'_>,
    rhs: Rhs<'_>,
    k: usize,
    accumulate: bool,
) -> bool {
    if n == 0 || k == 0 || !dst.len().is_multiple_of(n) {
        return false;
    }
    let m = dst.len() / n;
    if m == 0 || !n.is_multiple_of(NR) {
        return false;
    }
    if !lhs.covers(m, k) || !rhs.covers(k, n) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if available() {
        tiles(dst, n, lhs, rhs, k, accumulate);
        return true;
    }
    false
}

/// Whether this CPU runs the kernel (AVX2 and FMA).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Every tile of `dst`, a K-block at a time. Each K-block of `rhs` is first packed into
/// contiguous 16-column panels: read in place, conv2's panels (rows 256 or 1,152 bytes
/// apart) fell on a few L1 sets and were evicted between uses, and perf showed the
/// multiply-adds waiting on those loads. Rows go in blocks of `MC`, whose strips stay in
/// L2 while every panel passes over them. The caller has checked the shapes and the CPU.
#[cfg(target_arch = "x86_64")]
fn tiles(dst: &mut [f32], n: usize, lhs: Lhs<'_>, rhs: Rhs<'_>, k: usize, accumulate: bool) {
    let mut packed = vec![0f32; KC.min(k) * n];
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        pack(&mut packed[..kc * n], rhs, p0, kc, n);
        block(dst, n, lhs, p0, kc, &packed[..kc * n], accumulate || p0 > 0);
    }
}

/// Depths `p0..p0 + kc` of the product, with that K-block of `rhs` packed in `packed`.
#[cfg(target_arch = "x86_64")]
fn block(dst: &mut [f32], n: usize, lhs: Lhs<'_>, p0: usize, kc: usize, packed: &[f32], add: bool) {
    let m = dst.len() / n;
    let whole = m - m % MR;
    let wide = wide_available();
    for i0 in (0..whole).step_by(MC) {
        for (q, two) in groups(n / NR, wide) {
            let kernel = kernel::<MR>(two);
            for i in (i0..whole.min(i0 + MC)).step_by(MR) {
                // SAFETY: `gemm` detected AVX2 and FMA (and `wide_available` AVX-512 for
                // two panels), and checked that rows i..i+6 and depths p0..p0+kc of lhs,
                // and rows i..i+6 of the m x n dst, lie within their slices; `packed`
                // holds panel q (and q + 1 for two), kc rows of 16 each.
                #[allow(unsafe_code)]
                unsafe {
                    kernel(
                        kc,
                        lhs.data
                            .as_ptr()
                            .add(i * lhs.row_stride + p0 * lhs.k_stride),
                        lhs.row_stride,
                        lhs.k_stride,
                        packed[q * kc * NR..].as_ptr(),
                        NR,
                        dst.as_mut_ptr().add(i * n + q * NR),
                        n,
                        add,
                    )
                }
            }
        }
    }
    if whole < m {
        last_rows(&mut dst[whole * n..], n, lhs, whole, p0, kc, packed, add);
    }
}

/// A microkernel: `R` rows of `c` (+)= `a` times one 16-column panel at `b`, or, for
/// the AVX-512 kernel, two panels side by side (the second `k` rows after the first).
#[cfg(target_arch = "x86_64")]
type Kernel = unsafe fn(usize, *const f32, usize, usize, *const f32, usize, *mut f32, usize, bool);

/// The `R`-row kernel over one panel, or over two with AVX-512.
#[cfg(target_arch = "x86_64")]
fn kernel<const R: usize>(two: bool) -> Kernel {
    if two { wide_tile::<R> } else { tile::<R> }
}

/// The panels `0..panels` in the groups the kernels take: pairs where AVX-512 runs, then
/// any panel left alone. Yields (first panel, whether a pair).
#[cfg(target_arch = "x86_64")]
fn groups(panels: usize, wide: bool) -> impl Iterator<Item = (usize, bool)> {
    let step = if wide { 2 } else { 1 };
    (0..panels)
        .step_by(step)
        .map(move |q| (q, wide && q + 1 < panels))
}

/// Whether this CPU runs the 32-column AVX-512 kernel. On Zen 5's full-width AVX-512 it
/// does twice the multiply-adds per cycle of AVX2's; on Zen 4's double-pumped units, the
/// same. Each output is the same chain of fused multiply-adds either way, so the two
/// kernels give the same bits.
#[cfg(target_arch = "x86_64")]
fn wide_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// A right-hand side `[k, n]` packed once, for products by the same matrix again and
/// again (a served model's fc1): each K-block's panels, one block after another.
pub(crate) struct Packed {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl Packed {
    /// `None` where the kernel cannot run: n off its 16-column grid, `rhs` too short,
    /// or a CPU without AVX2 and FMA.
    pub(crate) fn new(rhs: Rhs<'_>, k: usize, n: usize) -> Option<Self> {
        let fits = k > 0 && n > 0 && n.is_multiple_of(NR) && rhs.covers(k, n);
        if !fits || !available() {
            return None;
        }
        let mut data = vec![0f32; k * n];
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            pack(&mut data[p0 * n..(p0 + kc) * n], rhs, p0, kc, n);
        }
        Some(Self { k, n, data })
    }

    /// `dst [m, n] = lhs [m, k] x self`; false, leaving `dst` untouched, if the shapes
    /// disagree.
    pub(crate) fn product(&self, dst: &mut [f32], lhs: Lhs<'_>) -> bool {
        let (k, n) = (self.k, self.n);
        if dst.is_empty() || !dst.len().is_multiple_of(n) {
            return false;
        }
        let m = dst.len() / n;
        if !lhs.covers(m, k) {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                block(
                    dst,
                    n,
                    lhs,
                    p0,
                    kc,
                    &self.data[p0 * n..(p0 + kc) * n],
                    p0 > 0,
                );
            }
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// The rows of `dst` from `first` on, fewer than a strip, read in place by a kernel
/// compiled for that many rows: a served digit's fc1 is one row, which a zero-padded
/// six-row tile would multiply six times over.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn last_rows(
    dst: &mut [f32],
    n: usize,
    lhs: Lhs<'_>,
    first: usize,
    p0: usize,
    kc: usize,
    packed: &[f32],
    add: bool,
) {
    let pick: fn(bool) -> Kernel = match dst.len() / n {
        1 => kernel::<1>,
        2 => kernel::<2>,
        3 => kernel::<3>,
        4 => kernel::<4>,
        5 => kernel::<5>,
        _ => unreachable!("fewer rows than a strip"),
    };
    let a = lhs.data[first * lhs.row_stride + p0 * lhs.k_stride..].as_ptr();
    for (q, two) in groups(n / NR, wide_available()) {
        // SAFETY: `gemm` detected AVX2 and FMA (and `wide_available` AVX-512 for two
        // panels) and checked that these rows and depths of lhs lie within its slice;
        // `packed` holds panel q (and q + 1 for two), kc rows of 16 each, and `dst` these
        // rows of n.
        #[allow(unsafe_code)]
        unsafe {
            pick(two)(
                kc,
                a,
                lhs.row_stride,
                lhs.k_stride,
                packed[q * kc * NR..].as_ptr(),
                NR,
                dst.as_mut_ptr().add(q * NR),
                n,
                add,
            )
        };
    }
}

/// Rows `p0..p0 + kc` of `rhs` as `n / 16` panels of `kc` rows of 16, one after another.
fn pack(packed: &mut [f32], rhs: Rhs<'_>, p0: usize, kc: usize, n: usize) {
    for (panel, j) in packed.chunks_exact_mut(kc * NR).zip((0..n).step_by(NR)) {
        for (row, p) in panel.chunks_exact_mut(NR).zip(p0..p0 + kc) {
            let from = p * rhs.row_stride + j * rhs.col_stride;
            if rhs.col_stride == 1 {
                row.copy_from_slice(&rhs.data[from..from + NR]);
            } else {
                for (q, value) in row.iter_mut().enumerate() {
                    *value = rhs.data[from + q * rhs.col_stride];
                }
            }
        }
    }
}

/// One `R`x16 tile of `c` over depth `k` (`R` at most 6).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(
    k: usize,
    a: *const f32,
    a_row: usize,
    a_k: usize,
    b: *const f32,
    b_row: usize,
    c: *mut f32,
    c_row: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller guarantees the R x k reads of a, the k x 16 reads
    // of b and the R x 16 reads and writes of c are in bounds.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..k {
            let b0 = _mm256_loadu_ps(b.add(p * b_row));
            let b1 = _mm256_loadu_ps(b.add(p * b_row + 8));
            let a = a.add(p * a_k);
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(i * a_row));
                acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let row = c.add(i * c_row);
            for (half, &sum) in acc.iter().enumerate() {
                let at = row.add(half * 8);
                let sum = if add {
                    _mm256_add_ps(_mm256_loadu_ps(at), sum)
                } else {
                    sum
                };
                _mm256_storeu_ps(at, sum);
            }
        }
    }
}

/// One `R`x32 tile of `c` over depth `k`: the panel at `b` and the one after it, `k`
/// rows of 16 further on, each row of both in one 512-bit register.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn wide_tile<const R: usize>(
    k: usize,
    a: *const f32,
    a_row: usize,
    a_k: usize,
    b: *const f32,
    b_row: usize,
    c: *mut f32,
    c_row: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller guarantees the R x k reads of a, the k x 16 reads
    // of both panels and the R x 32 reads and writes of c are in bounds.
    unsafe {
        let second = b.add(k * b_row);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..k {
            let b0 = _mm512_loadu_ps(b.add(p * b_row));
            let b1 = _mm512_loadu_ps(second.add(p * b_row));
            let a = a.add(p * a_k);
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(i * a_row));
                acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let row = c.add(i * c_row);
            for (half, &sum) in acc.iter().enumerate() {
                let at = row.add(half * 16);
                let sum = if add {
                    _mm512_add_ps(_mm512_loadu_ps(at), sum)
                } else {
                    sum
                };
                _mm512_storeu_ps(at, sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Lhs, Rhs, gemm};

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The product by the definition, in f64.
    fn reference(m: usize, n: usize, k: usize, lhs: Lhs<'_>, rhs: Rhs<'_>) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k)
                    .map(|p| {
                        f64::from(lhs.data[i * lhs.row_stride + p * lhs.k_stride])
                            * f64::from(rhs.data[p * rhs.row_stride + j * rhs.col_stride])
                    })
                    .sum();
                out[i * n + j] = sum as f32;
            }
        }
        out
    }

    fn assert_close(ours: &[f32], expected: &[f32]) {
        for (a, b) in ours.iter().zip(expected) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} != {b}");
        }
    }

    #[test]
    fn the_nets_products_equal_the_definition() {
        if !super::available() {
            return;
        }
        // (m, n, k, lhs transposed, rhs transposed): conv2's forward pass, input gradient,
        // and weight gradient's transpose with a depth over two K-blocks; conv1's weight
        // gradient (9 rows: one strip and a partial one); fc1's forward on a batch of 13
        // (its weight read transposed) and its weight gradient (128 rows, a partial strip).
        for (m, n, k, lhs_t, rhs_t) in [
            (36, 64, 288, false, false),
            (12, 288, 64, false, false),
            (288, 64, 900, true, false),
            (9, 32, 500, true, false),
            (13, 128, 800, false, true),
            (128, 48, 13, true, false),
        ] {
            let a = values(m * k, 7);
            let b = values(k * n, 11);
            let lhs = if lhs_t {
                Lhs {
                    data: &a,
                    row_stride: 1,
                    k_stride: m,
                }
            } else {
                Lhs {
                    data: &a,
                    row_stride: k,
                    k_stride: 1,
                }
            };
            let (row_stride, col_stride) = if rhs_t { (1, k) } else { (n, 1) };
            let rhs = Rhs {
                data: &b,
                row_stride,
                col_stride,
            };
            let expected = reference(m, n, k, lhs, rhs);
            let mut out = vec![f32::NAN; m * n];
            assert!(gemm(&mut out, n, lhs, rhs, k, false));
            assert_close(&out, &expected);
            // Accumulating adds the product once more.
            assert!(gemm(&mut out, n, lhs, rhs, k, true));
            let twice: Vec<f32> = expected.iter().map(|v| v * 2.0).collect();
            assert_close(&out, &twice);
        }
    }

    #[test]
    fn a_matrix_packed_once_gives_the_same_products_as_packing_per_call() {
        if !super::available() {
            return;
        }
        // fc1's shape: the weight read transposed, over two K-blocks and a partial one.
        let (n, k) = (32, 900);
        let b = values(k * n, 3);
        let rhs = Rhs {
            data: &b,
            row_stride: 1,
            col_stride: k,
        };
        let packed = super::Packed::new(rhs, k, n).expect("packs");
        for m in [1, 7, 32] {
            let a = values(m * k, 5);
            let lhs = Lhs {
                data: &a,
                row_stride: k,
                k_stride: 1,
            };
            let (mut once, mut per_call) = (vec![f32::NAN; m * n], vec![0f32; m * n]);
            assert!(packed.product(&mut once, lhs));
            assert!(gemm(&mut per_call, n, lhs, rhs, k, false));
            assert_eq!(once, per_call, "{m} rows");
        }
        assert!(!packed.product(
            &mut [0f32; 31],
            Lhs {
                data: &b,
                row_stride: k,
                k_stride: 1
            }
        ));
    }

    #[test]
    fn shapes_the_kernel_cannot_run_are_declined_and_left_untouched() {
        let (a, b) = (values(64, 1), values(64, 2));
        let lhs = Lhs {
            data: &a,
            row_stride: 4,
            k_stride: 1,
        };
        let short = Lhs {
            data: &a[..20],
            ..lhs
        };
        let rhs = |n| Rhs {
            data: &b,
            row_stride: n,
            col_stride: 1,
        };
        let long_rows = Rhs {
            col_stride: 2,
            ..rhs(16)
        };
        // (rows, columns, lhs, rhs, why it is declined)
        let cases = [
            (6, 8, lhs, rhs(8), "8 columns are not a multiple of 16"),
            (6, 16, short, rhs(16), "lhs is too short for 6 rows"),
            (
                3,
                16,
                lhs,
                long_rows,
                "rhs is too short for 4 rows of 16 every 2",
            ),
        ];
        for (m, n, lhs, rhs, why) in cases {
            let mut out = vec![5f32; m * n];
            assert!(!gemm(&mut out, n, lhs, rhs, 4, false), "{why}");
            assert!(out.iter().all(|&v| v == 5.0), "{why}: dst was written");
        }
    }
}
