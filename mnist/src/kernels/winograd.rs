//! 3x3 convolutions by Winograd's F(2x2, 3x3), for conv2 (32 -> 64 channels over 26x26).
//!
//! conv2 is 89% of a digit's arithmetic. Winograd computes each 2x2 block of outputs
//! from a 4x4 block of inputs with 16 products per channel pair instead of 36: the
//! blocks' transforms become 16 GEMMs of `[tiles, 32] x [32, 64]`, 9.4 MFLOP a digit
//! instead of 21.2. The 2x2 output block is also the pool's window, so serving pools
//! each block as it comes. The transforms are F(2x2, 3x3)'s usual ones (Lavin and Gray,
//! 2015): their coefficients are 0, ±1 and ½, so the results differ from the direct
//! convolution by rounding only.

use super::sgemm::{Lhs, Packed, Rhs};

/// Channels per pass of the transforms: fixed-size rows of this many lanes vectorise.
const LANES: usize = 8;
/// Rows of tiles per band: two rows' transforms (48 KB in and 96 KB out for conv2) stay
/// in L2 while the GEMMs run over them.
const BAND_ROWS: usize = 2;

/// A 3x3 kernel transformed and packed: one `[in, out]` right-hand side per position of
/// the 4x4 transformed tile.
pub(crate) struct Winograd {
    inputs: usize,
    outputs: usize,
    kernels: Vec<Packed>,
}

/// One worker's transformed tiles, grown to the largest image it has seen.
#[derive(Default)]
pub(crate) struct Scratch {
    /// `[16][tiles][in]`: each input tile transformed, position by position.
    inputs: Vec<f32>,
    /// `[16][tiles][out]`: their products with the kernels.
    products: Vec<f32>,
    /// One tile's 2x2 outputs, `[4][out]` in the order (0, 0), (0, 1), (1, 0), (1, 1).
    tile: Vec<f32>,
}

impl Winograd {
    /// From a kernel `[out, 3, 3, in]` (the conv op's patch order); `None` where the
    /// GEMM cannot run, or the channels are off the transforms' 8-lane grid.
    pub(crate) fn new(kernel: &[f32], outputs: usize, inputs: usize) -> Option<Self> {
        if inputs == 0 || !inputs.is_multiple_of(LANES) || kernel.len() != outputs * 9 * inputs {
            return None;
        }
        // u = G g Gᵀ for every (out, in) pair, stored `[16][in][out]`.
        let mut u = vec![0f32; 16 * inputs * outputs];
        for o in 0..outputs {
            for c in 0..inputs {
                let g = |ky: usize, kx: usize| kernel[((o * 3 + ky) * 3 + kx) * inputs + c];
                // G g: each column of g transformed down its rows; then each of those 4
                // rows transformed across.
                let columns: [[f32; 4]; 3] =
                    std::array::from_fn(|kx| kernel_transform([g(0, kx), g(1, kx), g(2, kx)]));
                for y in 0..4 {
                    let t = kernel_transform([columns[0][y], columns[1][y], columns[2][y]]);
                    for (x, value) in t.into_iter().enumerate() {
                        u[((y * 4 + x) * inputs + c) * outputs + o] = value;
                    }
                }
            }
        }
        let kernels = u
            .chunks_exact(inputs * outputs)
            .map(|u| Packed::new(Rhs::rows(u, outputs), inputs, outputs))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            inputs,
            outputs,
            kernels,
        })
    }

    /// The valid convolution of one image `input` (`h x w x in`, NHWC; `h - 2` and
    /// `w - 2` even): `emit(ty, tx, outputs)` gets each 2x2 block of outputs, `[4][out]`.
    pub(crate) fn convolve(
        &self,
        input: &[f32],
        (h, w): (usize, usize),
        s: &mut Scratch,
        mut emit: impl FnMut(usize, usize, &[f32]),
    ) {
        let (tiles_y, tiles_x) = ((h - 2) / 2, (w - 2) / 2);
        let band = BAND_ROWS * tiles_x;
        s.inputs.resize(16 * band * self.inputs, 0.0);
        s.products.resize(16 * band * self.outputs, 0.0);
        s.tile.resize(4 * self.outputs, 0.0);
        for ty0 in (0..tiles_y).step_by(BAND_ROWS) {
            let tiles = BAND_ROWS.min(tiles_y - ty0) * tiles_x;
            for tile in 0..tiles {
                let (y, x) = (2 * (ty0 + tile / tiles_x), 2 * (tile % tiles_x));
                let at = |i: usize, j: usize| &input[((y + i) * w + x + j) * self.inputs..];
                self.transform_input(at, &mut s.inputs, band, tile);
            }
            for ((kernel, v), m) in self
                .kernels
                .iter()
                .zip(s.inputs.chunks_exact(band * self.inputs))
                .zip(s.products.chunks_exact_mut(band * self.outputs))
            {
                let lhs = Lhs::rows(&v[..tiles * self.inputs], self.inputs);
                let done = kernel.product(&mut m[..tiles * self.outputs], lhs);
                assert!(done, "the tiles are sized for the kernels");
            }
            for tile in 0..tiles {
                self.transform_output(&s.products, band, tile, &mut s.tile);
                emit(ty0 + tile / tiles_x, tile % tiles_x, &s.tile);
            }
        }
    }

    /// The valid convolution of one image, as [`convolve`](Self::convolve), written
    /// whole into `out` (`(h - 2) x (w - 2) x out`, NHWC).
    pub(crate) fn convolve_into(
        &self,
        input: &[f32],
        (h, w): (usize, usize),
        s: &mut Scratch,
        out: &mut [f32],
    ) {
        let (o, ow) = (self.outputs, w - 2);
        self.convolve(input, (h, w), s, |ty, tx, block| {
            for (at, values) in block.chunks_exact(o).enumerate() {
                let (y, x) = (2 * ty + at / 2, 2 * tx + at % 2);
                out[(y * ow + x) * o..][..o].copy_from_slice(values);
            }
        });
    }

    /// Bᵀ d B of the 4x4 block whose pixel (i, j) starts at `d(i, j)`, every channel, into
    /// `tile`'s rows of `inputs` `[16][band][in]`. Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0],
    /// [0, -1, 1, 0], [0, 1, 0, -1]].
    // The loops index the 4x4 blocks as the transforms' matrices are written.
    #[allow(clippy::needless_range_loop)]
    fn transform_input<'a>(
        &self,
        d: impl Fn(usize, usize) -> &'a [f32],
        inputs: &mut [f32],
        band: usize,
        tile: usize,
    ) {
        let to = |i: usize, j: usize| ((i * 4 + j) * band + tile) * self.inputs;
        for c0 in (0..self.inputs).step_by(LANES) {
            let d = |i: usize, j: usize| -> &[f32; LANES] {
                d(i, j)[c0..c0 + LANES].try_into().expect("8 lanes")
            };
            // t = Bᵀ d, column by column.
            let mut t = [[[0f32; LANES]; 4]; 4];
            for j in 0..4 {
                let (d0, d1, d2, d3) = (d(0, j), d(1, j), d(2, j), d(3, j));
                for c in 0..LANES {
                    t[0][j][c] = d0[c] - d2[c];
                    t[1][j][c] = d1[c] + d2[c];
                    t[2][j][c] = d2[c] - d1[c];
                    t[3][j][c] = d1[c] - d3[c];
                }
            }
            // t B, row by row.
            for (i, t) in t.iter().enumerate() {
                let [v0, v1, v2, v3] = [0, 1, 2, 3].map(|j| to(i, j) + c0);
                for c in 0..LANES {
                    let (a0, a1, a2, a3) = (t[0][c], t[1][c], t[2][c], t[3][c]);
                    inputs[v0 + c] = a0 - a2;
                    inputs[v1 + c] = a1 + a2;
                    inputs[v2 + c] = a2 - a1;
                    inputs[v3 + c] = a1 - a3;
                }
            }
        }
    }

    /// Aᵀ m A of `tile`'s products: its 2x2 outputs, `[4][out]`, into `out`.
    /// Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]].
    #[allow(clippy::needless_range_loop)]
    fn transform_output(&self, products: &[f32], band: usize, tile: usize, out: &mut [f32]) {
        let o = self.outputs;
        for o0 in (0..o).step_by(LANES) {
            let m = |i: usize, j: usize| -> &[f32; LANES] {
                products[((i * 4 + j) * band + tile) * o + o0..][..LANES]
                    .try_into()
                    .expect("8 lanes")
            };
            // s = Aᵀ m, column by column.
            let mut s = [[[0f32; LANES]; 4]; 2];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (m(0, j), m(1, j), m(2, j), m(3, j));
                for l in 0..LANES {
                    s[0][j][l] = m0[l] + m1[l] + m2[l];
                    s[1][j][l] = m1[l] - m2[l] - m3[l];
                }
            }
            // s A, row by row.
            for (r, s) in s.iter().enumerate() {
                for l in 0..LANES {
                    out[(2 * r) * o + o0 + l] = s[0][l] + s[1][l] + s[2][l];
                    out[(2 * r + 1) * o + o0 + l] = s[1][l] - s[2][l] - s[3][l];
                }
            }
        }
    }
}

/// G g for one column `g` of a kernel: G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]].
fn kernel_transform([g0, g1, g2]: [f32; 3]) -> [f32; 4] {
    [g0, (g0 + g1 + g2) * 0.5, (g0 - g1 + g2) * 0.5, g2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::sgemm::Isa;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn winograd_convolution_matches_the_definition() {
        // conv2's shape, and a small one whose last band has a single row of tiles.
        for (h, w, c, o) in [(26, 26, 32, 64), (8, 6, 8, 16)] {
            let (input, kernel) = (values(h * w * c, 1), values(o * 9 * c, 2));
            let Some(winograd) = Winograd::new(&kernel, o, c) else {
                assert!(Isa::best().is_none(), "Winograd runs where the GEMM runs");
                eprintln!("winograd_convolution_matches_the_definition: skipped, no AVX2 and FMA");
                return;
            };
            let mut seen = 0;
            winograd.convolve(&input, (h, w), &mut Scratch::default(), |ty, tx, tile| {
                for (at, outputs) in tile.chunks_exact(o).enumerate() {
                    let (y, x) = (2 * ty + at / 2, 2 * tx + at % 2);
                    for (k, &value) in outputs.iter().enumerate() {
                        let mut sum = 0f64;
                        for (ky, kx, ch) in (0..9 * c).map(|i| (i / (3 * c), i / c % 3, i % c)) {
                            let g = kernel[((k * 3 + ky) * 3 + kx) * c + ch];
                            let d = input[((y + ky) * w + x + kx) * c + ch];
                            sum += f64::from(g) * f64::from(d);
                        }
                        assert!((f64::from(value) - sum).abs() < 1e-4, "({y}, {x}, {k})");
                    }
                }
                seen += 1;
            });
            assert_eq!(seen, (h - 2) / 2 * ((w - 2) / 2), "every tile, once");
        }
    }

    #[test]
    fn kernels_off_the_lanes_or_the_wrong_size_are_declined() {
        assert!(Winograd::new(&values(16 * 9 * 4, 1), 16, 4).is_none());
        assert!(Winograd::new(&values(16 * 9 * 8 - 1, 1), 16, 8).is_none());
    }
}
