//! The served net's conv2 (3x3, 32 -> 64 channels over 26x26) by Winograd's F(2x2, 3x3),
//! with the 2x2 max-pool, bias and ReLU on each output tile.
//!
//! conv2 is 89% of a digit's arithmetic. Winograd computes each 2x2 block of outputs
//! from a 4x4 block of inputs with 16 products per channel pair instead of 36: the
//! blocks' transforms become 16 GEMMs of `[tiles, 32] x [32, 64]`, 9.4 MFLOP a digit
//! instead of 21.2. The 2x2 output block is the pool's window, so each tile's transform
//! back ends in one pooled value per channel. The transforms are F(2x2, 3x3)'s usual
//! ones (Lavin and Gray, 2015): their coefficients are 0, ±1 and ½, so the results
//! differ from the direct convolution by rounding only.

use crate::sgemm::{Lhs, Packed, Rhs};

const IN: usize = 32;
const OUT: usize = 64;
/// The input's side, and the tiles per side of the 24x24 output.
const SIDE: usize = 26;
const TILES: usize = 12;
/// Tiles per band: two rows of tiles, whose transforms (48 KB in, 96 KB out) stay in L2.
const BAND: usize = 2 * TILES;

/// conv2's weight transformed and packed: one `[32, 64]` right-hand side per position of
/// the 4x4 transformed tile.
pub(crate) struct Winograd {
    kernels: Vec<Packed>,
}

/// One worker's transformed tiles, allocated once.
pub(crate) struct Scratch {
    /// `[16][BAND][32]`: each input tile transformed, position by position.
    inputs: Vec<f32>,
    /// `[16][BAND][64]`: their products with the kernels.
    products: Vec<f32>,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Self {
            inputs: vec![0.0; 16 * BAND * IN],
            products: vec![0.0; 16 * BAND * OUT],
        }
    }
}

impl Winograd {
    /// From PyTorch's `[64, 32, 3, 3]` weight; `None` where the GEMM cannot run.
    pub(crate) fn new(weight: &[f32]) -> Option<Self> {
        if weight.len() != OUT * IN * 9 {
            return None;
        }
        // u = G g Gᵀ for every (out, in) pair, stored `[16][32][64]`.
        let mut u = vec![0f32; 16 * IN * OUT];
        for (pair, g) in weight.chunks_exact(9).enumerate() {
            let (o, c) = (pair / IN, pair % IN);
            // G g: each column of g (kx) transformed down its rows.
            let columns: [[f32; 4]; 3] =
                std::array::from_fn(|kx| kernel_transform([g[kx], g[3 + kx], g[6 + kx]]));
            // (G g) Gᵀ: each of those 4 rows transformed across.
            for y in 0..4 {
                let t = kernel_transform([columns[0][y], columns[1][y], columns[2][y]]);
                for (x, value) in t.into_iter().enumerate() {
                    u[((y * 4 + x) * IN + c) * OUT + o] = value;
                }
            }
        }
        let kernels = u
            .chunks_exact(IN * OUT)
            .map(|u| {
                let rhs = Rhs {
                    data: u,
                    row_stride: OUT,
                    col_stride: 1,
                };
                Packed::new(rhs, IN, OUT)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { kernels })
    }

    /// `input` (26x26x32, NHWC) convolved, max-pooled, biased and rectified into
    /// `features` (12x12x64), two rows of tiles at a time.
    pub(crate) fn pooled(&self, input: &[f32], bias: &[f32], s: &mut Scratch, out: &mut [f32]) {
        for band in 0..TILES / 2 {
            for tile in 0..BAND {
                let (ty, tx) = (2 * band + tile / TILES, tile % TILES);
                transform_input(input, 2 * ty, 2 * tx, &mut s.inputs, tile);
            }
            for ((kernel, v), m) in self
                .kernels
                .iter()
                .zip(s.inputs.chunks_exact(BAND * IN))
                .zip(s.products.chunks_exact_mut(BAND * OUT))
            {
                let lhs = Lhs {
                    data: v,
                    row_stride: IN,
                    k_stride: 1,
                };
                let done = kernel.product(m, lhs);
                assert!(done, "the tiles are sized for the kernels");
            }
            let features = &mut out[band * BAND * OUT..][..BAND * OUT];
            for (tile, to) in features.chunks_exact_mut(OUT).enumerate() {
                transform_output(&s.products, tile, bias, to);
            }
        }
    }
}

/// G g for one column `g` of a kernel: G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]].
fn kernel_transform([g0, g1, g2]: [f32; 3]) -> [f32; 4] {
    [g0, (g0 + g1 + g2) * 0.5, (g0 - g1 + g2) * 0.5, g2]
}

/// Bᵀ d B of the 4x4 block at (y, x) of `input`, every channel at once, into position
/// (i, j) of `tile` in `inputs` `[16][BAND][32]`. Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0],
/// [0, -1, 1, 0], [0, 1, 0, -1]].
// The loops index the 4x4 blocks as the transforms' matrices are written.
#[allow(clippy::needless_range_loop)]
fn transform_input(input: &[f32], y: usize, x: usize, inputs: &mut [f32], tile: usize) {
    let d = |i: usize, j: usize| -> &[f32; IN] {
        input[((y + i) * SIDE + x + j) * IN..][..IN]
            .try_into()
            .expect("a pixel's channels")
    };
    // t = Bᵀ d, column by column.
    let mut t = [[[0f32; IN]; 4]; 4];
    for j in 0..4 {
        let (d0, d1, d2, d3) = (d(0, j), d(1, j), d(2, j), d(3, j));
        for c in 0..IN {
            t[0][j][c] = d0[c] - d2[c];
            t[1][j][c] = d1[c] + d2[c];
            t[2][j][c] = d2[c] - d1[c];
            t[3][j][c] = d1[c] - d3[c];
        }
    }
    // t B, row by row.
    let at = |i: usize, j: usize| ((i * 4 + j) * BAND + tile) * IN;
    for (i, t) in t.iter().enumerate() {
        let [v0, v1, v2, v3] = [0, 1, 2, 3].map(|j| at(i, j));
        for c in 0..IN {
            let (a0, a1, a2, a3) = (t[0][c], t[1][c], t[2][c], t[3][c]);
            inputs[v0 + c] = a0 - a2;
            inputs[v1 + c] = a1 + a2;
            inputs[v2 + c] = a2 - a1;
            inputs[v3 + c] = a1 - a3;
        }
    }
}

/// Aᵀ m A of `tile`'s products (the 2x2 outputs), then their max, the bias and ReLU.
/// Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]].
#[allow(clippy::needless_range_loop)]
fn transform_output(products: &[f32], tile: usize, bias: &[f32], out: &mut [f32]) {
    let m = |i: usize, j: usize| -> &[f32; OUT] {
        products[((i * 4 + j) * BAND + tile) * OUT..][..OUT]
            .try_into()
            .expect("a tile's channels")
    };
    // s = Aᵀ m, column by column.
    let mut s = [[[0f32; OUT]; 4]; 2];
    for j in 0..4 {
        let (m0, m1, m2, m3) = (m(0, j), m(1, j), m(2, j), m(3, j));
        for o in 0..OUT {
            s[0][j][o] = m0[o] + m1[o] + m2[o];
            s[1][j][o] = m1[o] - m2[o] - m3[o];
        }
    }
    for o in 0..OUT {
        let mut max = f32::NEG_INFINITY;
        for s in &s {
            max = max
                .max(s[0][o] + s[1][o] + s[2][o])
                .max(s[1][o] - s[2][o] - s[3][o]);
        }
        out[o] = (max + bias[o]).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// conv2 by its definition, in f64, then the pool, bias and ReLU.
    fn direct(input: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
        let conv = |y: usize, x: usize, o: usize| -> f64 {
            let mut sum = 0f64;
            for c in 0..IN {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let w = weight[((o * IN + c) * 3 + ky) * 3 + kx];
                        let v = input[((y + ky) * SIDE + x + kx) * IN + c];
                        sum += f64::from(w) * f64::from(v);
                    }
                }
            }
            sum
        };
        let mut out = vec![0f32; TILES * TILES * OUT];
        for ty in 0..TILES {
            for tx in 0..TILES {
                for o in 0..OUT {
                    let max = [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .map(|(dy, dx)| conv(2 * ty + dy, 2 * tx + dx, o))
                        .into_iter()
                        .fold(f64::NEG_INFINITY, f64::max);
                    out[(ty * TILES + tx) * OUT + o] = ((max + f64::from(bias[o])) as f32).max(0.0);
                }
            }
        }
        out
    }

    #[test]
    fn winograd_conv_pool_bias_relu_matches_the_definition() {
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let (input, weight, bias) = (
            values(SIDE * SIDE * IN, 1),
            values(OUT * IN * 9, 2),
            values(OUT, 3),
        );
        let Some(winograd) = Winograd::new(&weight) else {
            assert!(
                !crate::sgemm::available(),
                "Winograd runs where the GEMM runs"
            );
            return;
        };
        let mut out = vec![0f32; TILES * TILES * OUT];
        winograd.pooled(&input, &bias, &mut Scratch::new(), &mut out);
        let expected = direct(&input, &weight, &bias);
        assert!(expected.contains(&0.0) && expected.iter().any(|&v| v > 1.0));
        for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
            assert!((a - b).abs() < 1e-4, "output {i}: {a} != {b}");
        }
        assert!(Winograd::new(&weight[1..]).is_none());
    }
}
