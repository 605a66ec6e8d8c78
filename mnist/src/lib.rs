//! lancer's reference workload. These are user code: they reach the platform only through
//! the run contract (flags, params, result file, progress file, environment).

#![warn(missing_docs)]

pub mod adadelta;
pub mod checkpoint;
pub mod clean;
pub mod contract;
pub mod idx;
pub mod infer;
pub mod kernels;
pub mod lake;
pub mod model;
pub mod rng;
pub mod serve;
#[cfg(test)]
mod testing;
pub mod train;

/// Sets `RAYON_NUM_THREADS` to this machine's parallelism, which rayon would use anyway,
/// unless the operator set it. Without it candle counts physical cores by parsing
/// `/proc/cpuinfo` before every matmul: perf put that at 5% of serving one digit at a
/// time, and an A/B of the same server with and without it gained about 15% req/s.
/// Call it first in `main`: once another thread runs, it leaves the environment alone.
pub fn set_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() || !single_threaded() {
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: `set_var` is sound while no other thread reads or writes the environment,
    // and `single_threaded` just found this thread the process's only one: no other can
    // start but from this one, which is here.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string())
    };
}

/// Whether this thread is the process's only one: Linux lists one task in
/// `/proc/self/task`. False where that cannot be told.
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

/// Has mimalloc keep the memory this process frees for its next allocations, where by
/// default it returns it to the kernel 10 ms later. Training frees and allocates the same
/// tensors every batch (about 50 ms apart): perf put 15% of an epoch in the kernel,
/// zeroing the huge pages faulted back in. Two-epoch A/B runs, alternated, with
/// `MIMALLOC_PURGE_DELAY=-1`: 7.2 and 8.4 s/epoch, against 9.4 and 9.2 without, for about
/// 40 MB more peak RSS. That variable must be set before the process starts; this call
/// matched it (7.75 and 7.59 s/epoch, against 7.51 and 7.90 with the variable too).
pub fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc.h's `mi_option_t` (the same in mimalloc 2 and
    // 3); libmimalloc-sys declares only some of the options, and its setter behind a
    // feature that adds a crate.
    const PURGE_DELAY: std::ffi::c_int = 15;
    #[allow(unsafe_code)]
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: `mi_option_set` is declared above as mimalloc.h declares it (an enum value
    // and a long), and libmimalloc-sys links it in; it only stores the option, and -1 is
    // the documented "never purge".
    #[allow(unsafe_code)]
    unsafe {
        mi_option_set(PURGE_DELAY, -1)
    };
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
