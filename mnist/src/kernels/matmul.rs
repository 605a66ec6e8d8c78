//! Products of whole row-major matrices, maybe read transposed: on [`sgemm`] where it runs
//! (16-column multiples), else on the gemm crate, on one core either way.

use super::sgemm::{self, Lhs, Rhs};

/// A row-major matrix, maybe read transposed. Only [`Mat::new`] builds one, after
/// checking that its slice holds exactly its rows and columns, so its strides stay inside
/// the slice.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    columns: usize,
    transposed: bool,
}

impl<'a> Mat<'a> {
    /// `data` as a row-major `[rows, columns]` matrix; panics if it holds another count.
    pub fn new(data: &'a [f32], rows: usize, columns: usize) -> Self {
        let count = rows.checked_mul(columns);
        assert_eq!(count, Some(data.len()), "a {rows}x{columns} matrix");
        Self {
            data,
            rows,
            columns,
            transposed: false,
        }
    }

    /// The same values read as `[columns, rows]`.
    pub fn t(self) -> Self {
        Self {
            transposed: !self.transposed,
            ..self
        }
    }

    /// (row stride, column stride) of the matrix as used, after any transpose.
    fn strides(&self) -> (usize, usize) {
        if self.transposed {
            (1, self.columns)
        } else {
            (self.columns, 1)
        }
    }

    /// (rows, columns) of the matrix as used, after any transpose.
    pub fn shape(&self) -> (usize, usize) {
        if self.transposed {
            (self.columns, self.rows)
        } else {
            (self.rows, self.columns)
        }
    }
}

/// The shapes of `dst [m, n] = lhs [m, k] x rhs [k, n]`: (m, n, k). Panics if they
/// disagree.
fn shapes(dst: &[f32], lhs: &Mat<'_>, rhs: &Mat<'_>) -> (usize, usize, usize) {
    let ((m, k), (k2, n)) = (lhs.shape(), rhs.shape());
    assert!(k == k2 && dst.len() == m * n, "matmul shapes disagree");
    (m, n, k)
}

/// `dst [m, n] (+)= lhs [m, k] x rhs [k, n]`, row-major `dst`, on one core (the callers
/// run one per rayon task): on [`sgemm`] where it runs, else on [`gemm_crate`].
pub(crate) fn matmul(dst: &mut [f32], lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool) {
    let (_, n, k) = shapes(dst, &lhs, &rhs);
    let ((lrs, lcs), (rrs, rcs)) = (lhs.strides(), rhs.strides());
    let (lhs_view, rhs_view) = (Lhs::new(lhs.data, lrs, lcs), Rhs::new(rhs.data, rrs, rcs));
    if !sgemm::gemm(dst, n, lhs_view, rhs_view, k, accumulate) {
        gemm_crate(dst, lhs, rhs, accumulate);
    }
}

/// `dst [m, n] (+)= lhs [m, k] x rhs [k, n]` on the gemm crate, on one core: any shape.
/// Panics if the shapes disagree.
pub fn gemm_crate(dst: &mut [f32], lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool) {
    let (m, n, k) = shapes(dst, &lhs, &rhs);
    let ((lrs, lcs), (rrs, rcs)) = (lhs.strides(), rhs.strides());
    let stride = |s: usize| s as isize;
    // SAFETY: `Mat::new` checked that each operand's slice holds exactly its rows x
    // columns, and `strides` reads those values as `[m, k]` and `[k, n]` (or their
    // transposes); `shapes` checked that the inner dimensions agree and that `dst` holds
    // m x n, written at row stride n. `dst` is borrowed mutably, so it aliases neither
    // operand.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            stride(n),
            accumulate,
            lhs.data.as_ptr(),
            stride(lcs),
            stride(lrs),
            rhs.data.as_ptr(),
            stride(rcs),
            stride(rrs),
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
