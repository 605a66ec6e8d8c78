//! A single-precision GEMM for the net's shapes, on one core: AVX2 and FMA microkernels,
//! and an AVX-512 one where the CPU has it.
//!
//! Only the right-hand side is packed, once per K-block, into contiguous 16-column
//! panels; the left-hand side is read in place in strips of six rows, each reused across
//! every panel while it is in cache. Rows past the last whole strip go through a kernel
//! compiled for one to five rows, so any row count runs here (a serving batch, conv1's
//! 9-row weight gradient). Where the CPU has AVX-512, a 32-column kernel takes two panels
//! at once. Each output is the same chain of fused multiply-adds on every kernel, so the
//! bits do not depend on the CPU (`the_avx2_and_avx512_kernels_give_the_same_bits`).
//!
//! `mnist-bench --only kernels` times it against the gemm crate on conv2's products.

use std::fmt;

/// A matrix `[rows, k]` read at `data[row * row_stride + p * k_stride]`.
#[derive(Clone, Copy)]
pub struct Lhs<'a> {
    data: &'a [f32],
    row_stride: usize,
    k_stride: usize,
}

impl<'a> Lhs<'a> {
    /// Any strides: row-major `[rows, k]` is `(k, 1)`, its transpose `(1, rows)`.
    pub fn new(data: &'a [f32], row_stride: usize, k_stride: usize) -> Self {
        Self {
            data,
            row_stride,
            k_stride,
        }
    }

    /// Row-major `[_, width]`.
    pub fn rows(data: &'a [f32], width: usize) -> Self {
        Self::new(data, width, 1)
    }

    /// Whether `data` holds every element of an `m x k` matrix at these strides.
    fn covers(&self, m: usize, k: usize) -> bool {
        last_index(m, self.row_stride, k, self.k_stride).is_some_and(|last| last < self.data.len())
    }
}

/// A matrix `[k, n]` read at `data[p * row_stride + j * col_stride]`; packing makes
/// any strides cost the same to the kernel, and contiguous rows are copied fastest.
#[derive(Clone, Copy)]
pub struct Rhs<'a> {
    data: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Rhs<'a> {
    /// Any strides: row-major `[k, n]` is `(n, 1)`, its transpose `(1, k)`.
    pub fn new(data: &'a [f32], row_stride: usize, col_stride: usize) -> Self {
        Self {
            data,
            row_stride,
            col_stride,
        }
    }

    /// Row-major `[_, width]`.
    pub fn rows(data: &'a [f32], width: usize) -> Self {
        Self::new(data, width, 1)
    }

    /// A weight `[out, in]`, row-major, read as `[in, out]`: its row j is column j.
    pub fn transposed(weight: &'a [f32], inputs: usize) -> Self {
        Self::new(weight, 1, inputs)
    }

    /// Whether `data` holds every element of a `k x n` matrix at these strides.
    fn covers(&self, k: usize, n: usize) -> bool {
        last_index(k, self.row_stride, n, self.col_stride)
            .is_some_and(|last| last < self.data.len())
    }
}

/// The index of the last element of a `rows x columns` matrix at these strides: `None`
/// for an empty matrix, or one whose last index overflows.
fn last_index(
    rows: usize,
    row_stride: usize,
    columns: usize,
    column_stride: usize,
) -> Option<usize> {
    let row = rows.checked_sub(1)?.checked_mul(row_stride)?;
    row.checked_add(columns.checked_sub(1)?.checked_mul(column_stride)?)
}

/// The instruction set the microkernels run on. Only [`Isa::avx2`], [`Isa::avx512`] and
/// [`Isa::best`] build one, each after detecting the features on this CPU, so holding one
/// proves that the kernels it selects can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa {
    /// AVX-512F as well: the kernel that takes two 16-column panels at once.
    wide: bool,
}

impl Isa {
    /// AVX2 and FMA, where the CPU has them: the 6x16 kernel and its one- to five-row forms.
    pub fn avx2() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Self { wide: false });
        }
        None
    }

    /// AVX2, FMA and AVX-512F, where the CPU has them: the 6x32 kernel as well, which does
    /// twice the multiply-adds per cycle of AVX2's on Zen 5's full-width units (on Zen 4's
    /// double-pumped ones, the same). A lone last panel still takes the AVX2 kernel.
    pub fn avx512() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if Self::avx2().is_some() && std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Self { wide: true });
        }
        None
    }

    /// What the net runs on: AVX-512 where the CPU has it, else AVX2; `None` without AVX2
    /// and FMA.
    pub fn best() -> Option<Self> {
        Self::avx512().or_else(Self::avx2)
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.wide { "AVX-512" } else { "AVX2" })
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

/// `dst [m, n] (+)= lhs [m, k] x rhs [k, n]` with `dst` row-major, on [`Isa::best`].
/// Returns false, leaving `dst` untouched, when the shape or the CPU does not suit the
/// kernels (n not a multiple of 16, a slice too short for its strides, no AVX2 and FMA);
/// the caller then uses a general GEMM.
pub fn gemm(
    dst: &mut [f32],
    n: usize,
    lhs: Lhs<'_>,
    rhs: Rhs<'_>,
    k: usize,
    accumulate: bool,
) -> bool {
    Isa::best().is_some_and(|isa| gemm_on(isa, dst, n, lhs, rhs, k, accumulate))
}

/// [`gemm`] on the kernels of `isa`, which the tests and the kernel benchmark choose.
///
/// Each K-block of `rhs` is first packed into contiguous 16-column panels: read in place,
/// conv2's panels (rows 256 or 1,152 bytes apart) fell on a few L1 sets and were evicted
/// between uses, and perf showed the multiply-adds waiting on those loads. Rows go in
/// blocks of 96, whose strips stay in L2 while every panel passes over them.
pub fn gemm_on(
    isa: Isa,
    dst: &mut [f32],
    n: usize,
    lhs: Lhs<'_>,
    rhs: Rhs<'_>,
    k: usize,
    accumulate: bool,
) -> bool {
    if !rhs.covers(k, n) {
        return false;
    }
    let Some(mut product) = Product::new(isa, dst, n, lhs, k) else {
        return false;
    };
    let mut packed = vec![0f32; KC.min(k) * n];
    for p0 in (0..k).step_by(KC) {
        let packed = &mut packed[..KC.min(k - p0) * n];
        pack(packed, rhs, p0, n);
        product.block(p0, packed, accumulate || p0 > 0);
    }
    true
}

/// A right-hand side `[k, n]` packed once, for products by the same matrix again and
/// again (a served model's fc1, Winograd's transformed kernels): each K-block's panels,
/// one block after another.
pub struct Packed {
    k: usize,
    n: usize,
    data: Vec<f32>,
    isa: Isa,
}

impl Packed {
    /// For [`Isa::best`]'s kernels; `None` where they cannot run: n off the 16-column
    /// grid, `rhs` too short for its strides, or a CPU without AVX2 and FMA.
    pub fn new(rhs: Rhs<'_>, k: usize, n: usize) -> Option<Self> {
        let isa = Isa::best()?;
        if !(n > 0 && n.is_multiple_of(NR) && rhs.covers(k, n)) {
            return None;
        }
        let mut data = vec![0f32; k * n];
        for p0 in (0..k).step_by(KC) {
            pack(&mut data[p0 * n..(p0 + KC.min(k - p0)) * n], rhs, p0, n);
        }
        Some(Self { k, n, data, isa })
    }

    /// `dst [m, n] = lhs [m, k] x self`; false, leaving `dst` untouched, if the shapes
    /// disagree.
    pub fn product(&self, dst: &mut [f32], lhs: Lhs<'_>) -> bool {
        let (k, n) = (self.k, self.n);
        let Some(mut product) = Product::new(self.isa, dst, n, lhs, k) else {
            return false;
        };
        for p0 in (0..k).step_by(KC) {
            product.block(p0, &self.data[p0 * n..(p0 + KC.min(k - p0)) * n], p0 > 0);
        }
        true
    }
}

/// Rows `p0..p0 + kc` of `rhs` as `n / 16` panels of `kc` rows of 16, one after another,
/// into `packed` (`kc * n` values).
fn pack(packed: &mut [f32], rhs: Rhs<'_>, p0: usize, n: usize) {
    let kc = packed.len() / n;
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

/// One product's output and left-hand side, checked: only [`Product::new`] builds one,
/// after checking that `dst` is whole rows of `n`, a multiple of 16, and that `lhs`
/// holds every element of `[dst.len() / n, k]` at its strides. `isa` proves the CPU's
/// features. The microkernels' raw reads and writes rest on these three facts.
struct Product<'d, 'a> {
    dst: &'d mut [f32],
    n: usize,
    lhs: Lhs<'a>,
    k: usize,
    isa: Isa,
}

/// One K-block: depths `p0..p0 + kc` of the product, with that block of the right-hand
/// side packed by [`pack`], added onto `dst` (`add`) or written over it.
struct Block<'p> {
    p0: usize,
    kc: usize,
    packed: &'p [f32],
    add: bool,
}

impl<'d, 'a> Product<'d, 'a> {
    fn new(isa: Isa, dst: &'d mut [f32], n: usize, lhs: Lhs<'a>, k: usize) -> Option<Self> {
        let whole_rows = n > 0 && n.is_multiple_of(NR) && dst.len().is_multiple_of(n);
        (whole_rows && lhs.covers(dst.len() / n, k)).then_some(Self {
            dst,
            n,
            lhs,
            k,
            isa,
        })
    }

    fn rows(&self) -> usize {
        self.dst.len() / self.n
    }

    /// Every tile of the K-block at `p0` whose right-hand side `packed` holds (`kc * n`
    /// values): strips of six rows, then the rows left over by a kernel compiled for that
    /// many, so a served digit's fc1 is one row, not six with five of zeros.
    fn block(&mut self, p0: usize, packed: &[f32], add: bool) {
        assert!(packed.len().is_multiple_of(self.n), "whole packed rows");
        let b = Block {
            p0,
            kc: packed.len() / self.n,
            packed,
            add,
        };
        let (m, panels) = (self.rows(), self.n / NR);
        let whole = m - m % MR;
        for i0 in (0..whole).step_by(MC) {
            for group in groups(panels, self.isa.wide) {
                for i in (i0..whole.min(i0 + MC)).step_by(MR) {
                    self.tile(&b, i, MR, group);
                }
            }
        }
        if whole < m {
            for group in groups(panels, self.isa.wide) {
                self.tile(&b, whole, m - whole, group);
            }
        }
    }

    /// Rows `i..i + rows` of `dst` (+)= those rows of `lhs` at the block's depths, times
    /// panel `q` of the block (and panel `q + 1` with `two`).
    fn tile(&mut self, b: &Block<'_>, i: usize, rows: usize, (q, two): (usize, bool)) {
        let (n, lhs) = (self.n, self.lhs);
        let panels = if two { 2 } else { 1 };
        assert!(
            (1..=MR).contains(&rows)
                && i + rows <= self.rows()
                && (q + panels) * NR <= n
                && b.p0 + b.kc <= self.k,
            "a tile inside the product"
        );
        let a = &lhs.data[i * lhs.row_stride + b.p0 * lhs.k_stride..];
        let panel = &b.packed[q * b.kc * NR..][..panels * b.kc * NR];
        let c = &mut self.dst[i * n + q * NR..];
        let kernel = kernel(rows, two);
        // SAFETY: `self.isa` was built by a constructor that detected AVX2 and FMA, and
        // AVX-512F too where `two` holds (`groups` pairs panels only for a wide `Isa`):
        // the features `kernel` is compiled for. It reads `a` at `r * row_stride + p *
        // k_stride` for r < rows, p < kc, at most `(i + rows - 1) * row_stride + (p0 + kc
        // - 1) * k_stride` from the start of `lhs`, inside it by `Product::new`'s check
        // that `lhs` covers m x k and the assert (i + rows <= m, p0 + kc <= k). It reads
        // `panels * kc * 16` values from `panel`, its length. It reads and writes `c` at
        // `r * n + j` for r < rows, j < 16 * panels: inside `dst`, m rows of n, by the
        // assert (i + rows <= m, (q + panels) * 16 <= n).
        #[allow(unsafe_code)]
        unsafe {
            kernel(
                b.kc,
                a.as_ptr(),
                lhs.row_stride,
                lhs.k_stride,
                panel.as_ptr(),
                NR,
                c.as_mut_ptr(),
                n,
                b.add,
            )
        }
    }
}

/// The panels `0..panels` in the groups the kernels take: pairs where AVX-512 runs, then
/// any panel left alone. Yields (first panel, whether a pair).
fn groups(panels: usize, wide: bool) -> impl Iterator<Item = (usize, bool)> {
    let step = if wide { 2 } else { 1 };
    (0..panels)
        .step_by(step)
        .map(move |q| (q, wide && q + 1 < panels))
}

/// A microkernel: `R` rows of `c` (+)= `a` times one 16-column panel at `b`, or, for
/// the AVX-512 kernel, two panels side by side (the second `k` rows after the first).
/// Arguments: k, a, a's row and depth strides, b, b's row stride, c, c's row stride, add.
type Kernel = unsafe fn(usize, *const f32, usize, usize, *const f32, usize, *mut f32, usize, bool);

/// The kernel for `rows` rows (one to six), over one panel or, with `two`, two.
#[cfg(target_arch = "x86_64")]
fn kernel(rows: usize, two: bool) -> Kernel {
    fn pick<const R: usize>(two: bool) -> Kernel {
        if two { wide_tile::<R> } else { tile::<R> }
    }
    match rows {
        1 => pick::<1>(two),
        2 => pick::<2>(two),
        3 => pick::<3>(two),
        4 => pick::<4>(two),
        5 => pick::<5>(two),
        6 => pick::<6>(two),
        _ => unreachable!("a tile has one to six rows"),
    }
}

/// No [`Isa`] is built off x86-64, so no product reaches a kernel.
#[cfg(not(target_arch = "x86_64"))]
fn kernel(_: usize, _: bool) -> Kernel {
    unreachable!("the kernels run on x86-64 only")
}

/// One `R`x16 tile of `c` over depth `k` (`R` at most 6).
///
/// # Safety
///
/// The CPU has AVX2 and FMA. For r < R and p < k, `a.add(r * a_row + p * a_k)` is
/// readable; for p < k, the 16 values at `b.add(p * b_row)`; and for r < R the 16
/// values at `c.add(r * c_row)` are readable and writable, and alias neither input.
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
    // SAFETY: every pointer below is one of the offsets the caller guarantees readable
    // (a, b) or readable and writable (c) in this function's `# Safety` section.
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
///
/// # Safety
///
/// The CPU has AVX-512F. For r < R and p < k, `a.add(r * a_row + p * a_k)` is readable;
/// for p < 2k, the 16 values at `b.add(p * b_row)`; and for r < R the 32 values at
/// `c.add(r * c_row)` are readable and writable, and alias neither input.
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
    // SAFETY: every pointer below is one of the offsets the caller guarantees readable
    // (a, b) or readable and writable (c) in this function's `# Safety` section.
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
    use super::{Isa, Lhs, Rhs, gemm, gemm_on};

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The kernels this CPU runs, each named; prints the ones the test cannot run.
    fn isas(test: &str) -> Vec<Isa> {
        let found: Vec<Isa> = [Isa::avx2(), Isa::avx512()].into_iter().flatten().collect();
        if Isa::avx2().is_none() {
            eprintln!("{test}: skipped the AVX2 kernels: this CPU lacks AVX2 or FMA");
        }
        if Isa::avx512().is_none() {
            eprintln!("{test}: skipped the AVX-512 kernel: this CPU lacks AVX-512F");
        }
        found
    }

    /// A product's shape: (m, n, k, lhs transposed, rhs transposed).
    type Shape = (usize, usize, usize, bool, bool);

    /// The operands of `shape`, with views reading them as it says.
    fn operands(shape: Shape) -> (Vec<f32>, Vec<f32>) {
        let (m, n, k, _, _) = shape;
        (values(m * k, 7), values(k * n, 11))
    }

    fn views<'a>(shape: Shape, a: &'a [f32], b: &'a [f32]) -> (Lhs<'a>, Rhs<'a>) {
        let (m, n, k, lhs_t, rhs_t) = shape;
        let lhs = if lhs_t {
            Lhs::new(a, 1, m)
        } else {
            Lhs::rows(a, k)
        };
        let rhs = if rhs_t {
            Rhs::transposed(b, k)
        } else {
            Rhs::rows(b, n)
        };
        (lhs, rhs)
    }

    /// conv2's forward pass, input gradient and weight gradient's transpose by im2col (4
    /// images); Winograd's products for conv2's forward pass and input gradient (a band of
    /// tiles); the weight gradient with a depth over two K-blocks; conv1's weight gradient
    /// (9 rows: one strip and a partial one); fc1's forward on a batch of 13 and on one to
    /// five digits (its weight read transposed), and its weight gradient (128 rows, a
    /// partial strip); and three panels, where the AVX-512 kernel leaves one alone.
    const SHAPES: [Shape; 14] = [
        (2304, 64, 288, false, false),
        (2304, 288, 64, false, false),
        (288, 64, 2304, true, false),
        (24, 64, 32, false, false),
        (26, 32, 64, false, false),
        (288, 64, 900, true, false),
        (9, 32, 500, true, false),
        (13, 128, 800, false, true),
        (1, 128, 900, false, true),
        (2, 128, 900, false, true),
        (3, 128, 900, false, true),
        (4, 128, 900, false, true),
        (5, 128, 900, false, true),
        (128, 48, 13, true, false),
    ];

    /// The product by the definition, in f64.
    fn reference(shape: Shape, a: &[f32], b: &[f32]) -> Vec<f32> {
        let (m, n, k, lhs_t, rhs_t) = shape;
        let at_a = |i: usize, p: usize| if lhs_t { a[p * m + i] } else { a[i * k + p] };
        let at_b = |p: usize, j: usize| if rhs_t { b[j * k + p] } else { b[p * n + j] };
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k)
                    .map(|p| f64::from(at_a(i, p)) * f64::from(at_b(p, j)))
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
        for isa in isas("the_nets_products_equal_the_definition") {
            for shape in SHAPES {
                let (m, n, k, _, _) = shape;
                let (a, b) = operands(shape);
                let (lhs, rhs) = views(shape, &a, &b);
                let expected = reference(shape, &a, &b);
                let mut out = vec![f32::NAN; m * n];
                assert!(gemm_on(isa, &mut out, n, lhs, rhs, k, false));
                assert_close(&out, &expected);
                // Accumulating adds the product once more.
                assert!(gemm_on(isa, &mut out, n, lhs, rhs, k, true));
                let twice: Vec<f32> = expected.iter().map(|v| v * 2.0).collect();
                assert_close(&out, &twice);
            }
        }
    }

    #[test]
    fn the_avx2_and_avx512_kernels_give_the_same_bits() {
        let (Some(avx2), Some(avx512)) = (Isa::avx2(), Isa::avx512()) else {
            eprintln!(
                "the_avx2_and_avx512_kernels_give_the_same_bits: skipped, it needs a CPU with \
                 both; this one has AVX2 and FMA: {}, AVX-512F: {}",
                Isa::avx2().is_some(),
                Isa::avx512().is_some()
            );
            return;
        };
        for shape in SHAPES {
            let (m, n, k, _, _) = shape;
            let (a, b) = operands(shape);
            let (lhs, rhs) = views(shape, &a, &b);
            for accumulate in [false, true] {
                let start = values(m * n, 13);
                let (mut narrow, mut wide) = (start.clone(), start);
                assert!(gemm_on(avx2, &mut narrow, n, lhs, rhs, k, accumulate));
                assert!(gemm_on(avx512, &mut wide, n, lhs, rhs, k, accumulate));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(
                    bits(&narrow) == bits(&wide),
                    "{shape:?}, accumulate {accumulate}: the kernels' bits differ"
                );
            }
        }
    }

    #[test]
    fn a_matrix_packed_once_gives_the_same_products_as_packing_per_call() {
        if Isa::best().is_none() {
            eprintln!("a_matrix_packed_once_...: skipped, this CPU lacks AVX2 or FMA");
            return;
        }
        // fc1's shape: the weight read transposed, over two K-blocks and a partial one.
        let (n, k) = (32, 900);
        let b = values(k * n, 3);
        let rhs = Rhs::transposed(&b, k);
        let packed = super::Packed::new(rhs, k, n).expect("packs");
        for m in [1, 7, 32] {
            let a = values(m * k, 5);
            let lhs = Lhs::rows(&a, k);
            let (mut once, mut per_call) = (vec![f32::NAN; m * n], vec![0f32; m * n]);
            assert!(packed.product(&mut once, lhs));
            assert!(gemm(&mut per_call, n, lhs, rhs, k, false));
            assert_eq!(once, per_call, "{m} rows");
        }
        assert!(!packed.product(&mut [0f32; 31], Lhs::rows(&b, k)));
    }

    #[test]
    fn shapes_the_kernel_cannot_run_are_declined_and_left_untouched() {
        let (a, b) = (values(64, 1), values(64, 2));
        let lhs = Lhs::rows(&a, 4);
        let short = Lhs::rows(&a[..20], 4);
        let long_rows = Rhs::new(&b, 16, 2);
        let huge = Lhs::new(&a, usize::MAX / 2, 1);
        // (rows, columns, lhs, rhs, why it is declined)
        let cases = [
            (
                6,
                8,
                lhs,
                Rhs::rows(&b, 8),
                "8 columns are not a multiple of 16",
            ),
            (
                6,
                16,
                short,
                Rhs::rows(&b, 16),
                "lhs is too short for 6 rows",
            ),
            (
                3,
                16,
                lhs,
                long_rows,
                "rhs is too short for 4 rows of 16 every 2",
            ),
            (3, 16, huge, Rhs::rows(&b, 16), "lhs's last index overflows"),
        ];
        for (m, n, lhs, rhs, why) in cases {
            let mut out = vec![5f32; m * n];
            assert!(!gemm(&mut out, n, lhs, rhs, 4, false), "{why}");
            assert!(out.iter().all(|&v| v == 5.0), "{why}: dst was written");
        }
    }
}
