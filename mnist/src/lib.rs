//! lancer's reference workload. These are user code: they reach the platform only through
//! the run contract (flags, params, result file, progress file, environment).

pub mod adadelta;
pub mod bias_relu;
pub mod checkpoint;
pub mod clean;
pub mod contract;
pub mod conv;
pub mod idx;
pub mod infer;
pub mod lake;
pub mod linear;
pub mod model;
pub mod pool;
pub mod rng;
pub mod serve;
mod sgemm;
#[cfg(test)]
mod testing;
pub mod train;
mod winograd;

/// Sets `RAYON_NUM_THREADS` to this machine's parallelism, which rayon would use anyway,
/// unless the operator set it. Without it candle counts physical cores by parsing
/// `/proc/cpuinfo` before every matmul: perf put that at 5% of serving one digit at a
/// time, and an A/B of the same server with and without it gained about 15% req/s.
/// Call it first in `main`, before any thread exists.
pub fn set_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: called at the start of `main`, before any other thread exists that
        // could read the environment at the same time.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string())
        };
    }
}

// The jobs allocate and free large tensors batch after batch; mimalloc reuses that memory
// where the system allocator hands it back to the kernel and faults it in again. Declared
// once here, it serves every binary that links this crate.
#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The unit tests' mimalloc also counts allocations, for the tests that promise none.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: testing::Counting = testing::Counting;
