//! `mnist-bench --only kernels`: our GEMM against the gemm crate on conv2's products, one
//! core each, in GFLOP/s, with the machine and the date, so the figures in
//! `mnist/README.md` can be measured again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mnist::kernels::matmul::{Mat, gemm_crate};
use mnist::kernels::sgemm::{Isa, Lhs, Packed, Rhs, gemm_on};

/// One product conv2 runs: `[m, k] x [k, n]`.
struct Shape {
    what: &'static str,
    m: usize,
    n: usize,
    k: usize,
    /// The left-hand side read transposed (the weight gradient's patches).
    lhs_t: bool,
    /// Added onto the output, as the weight gradient sums its tasks.
    accumulate: bool,
    /// The right-hand side packed once, as Winograd's kernels are.
    packed: bool,
}

/// conv2 (32 -> 64 channels over 26x26) on a task of four images, as training runs it,
/// then its forward pass and input gradient by im2col, the op's other path.
const SHAPES: [Shape; 5] = [
    Shape {
        what: "Winograd forward, a band of tiles",
        m: 24,
        n: 64,
        k: 32,
        lhs_t: false,
        accumulate: false,
        packed: true,
    },
    Shape {
        what: "Winograd input gradient, a band",
        m: 26,
        n: 32,
        k: 64,
        lhs_t: false,
        accumulate: false,
        packed: true,
    },
    Shape {
        what: "weight gradient (patches^T x grad)",
        m: 288,
        n: 64,
        k: 2304,
        lhs_t: true,
        accumulate: true,
        packed: false,
    },
    Shape {
        what: "im2col forward (patches x kernel)",
        m: 2304,
        n: 64,
        k: 288,
        lhs_t: false,
        accumulate: false,
        packed: false,
    },
    Shape {
        what: "im2col input gradient (grad x kernel)",
        m: 2304,
        n: 288,
        k: 64,
        lhs_t: false,
        accumulate: false,
        packed: false,
    },
];

/// Rounds per measurement, and the time each GEMM runs for in each round at least. The
/// two alternate round by round, so both meet the same load from the machine's other
/// work, and each one's best round counts, the one least disturbed.
const ROUNDS: usize = 10;
const ROUND: Duration = Duration::from_millis(100);

/// Prints the machine, the date, and for each shape both GEMMs' GFLOP/s and their ratio.
pub fn run() -> Result<()> {
    let isa = Isa::best().context("our GEMM needs AVX2 and FMA, which this CPU lacks")?;
    println!(
        "kernels: {}, {}, one core each, our {isa} GEMM against the gemm crate 0.19",
        cpu_model(),
        chrono::Local::now().format("%Y-%m-%d")
    );
    println!(
        "{:<40} {:>16}  {:>8}  {:>10}  {:>6}",
        "conv2 product", "m x n x k", "ours", "gemm crate", "ratio"
    );
    for shape in &SHAPES {
        let (ours, theirs) = measure(shape, isa);
        println!(
            "{:<40} {:>16}  {ours:>8.1}  {theirs:>10.1}  {:>5.2}x",
            shape.what,
            format!("{} x {} x {}", shape.m, shape.n, shape.k),
            ours / theirs
        );
    }
    println!("(GFLOP/s: 2mnk per product, the best of {ROUNDS} alternating rounds of {ROUND:?})");
    Ok(())
}

/// GFLOP/s of our kernels and of the gemm crate on `shape`.
fn measure(shape: &Shape, isa: Isa) -> (f64, f64) {
    let (m, n, k) = (shape.m, shape.n, shape.k);
    let (a, b) = (values(m * k, 1), values(k * n, 2));
    let (mut ours_dst, mut their_dst) = (vec![0f32; m * n], vec![0f32; m * n]);
    let lhs = if shape.lhs_t {
        Lhs::new(&a, 1, m)
    } else {
        Lhs::rows(&a, k)
    };
    let rhs = Rhs::rows(&b, n);
    let packed = shape.packed.then(|| Packed::new(rhs, k, n).expect("packs"));
    let mut ours = || match &packed {
        Some(packed) => assert!(packed.product(&mut ours_dst, lhs)),
        None => assert!(gemm_on(
            isa,
            &mut ours_dst,
            n,
            lhs,
            rhs,
            k,
            shape.accumulate
        )),
    };
    let their_lhs = if shape.lhs_t {
        Mat::new(&a, k, m).t()
    } else {
        Mat::new(&a, m, k)
    };
    let mut theirs = || {
        gemm_crate(
            &mut their_dst,
            their_lhs,
            Mat::new(&b, k, n),
            shape.accumulate,
        )
    };
    ours();
    theirs();
    let flop = 2.0 * (m * n * k) as f64;
    let (mut best_ours, mut best_theirs) = (0f64, 0f64);
    for _ in 0..ROUNDS {
        best_ours = best_ours.max(flop * calls_per_second(&mut ours) / 1e9);
        best_theirs = best_theirs.max(flop * calls_per_second(&mut theirs) / 1e9);
    }
    (best_ours, best_theirs)
}

/// Calls of `product` per second over one round.
fn calls_per_second(product: &mut impl FnMut()) -> f64 {
    let (started, mut calls) = (Instant::now(), 0u32);
    while started.elapsed() < ROUND {
        product();
        calls += 1;
    }
    f64::from(calls) / started.elapsed().as_secs_f64()
}

/// Values in [-1, 1), the same on every run.
fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// The CPU's model name from `/proc/cpuinfo`, where there is one.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "an unknown CPU".into())
}
