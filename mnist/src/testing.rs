//! Checks shared by the unit tests, and their allocator.

use candle_core::{Result, Tensor, Var};

/// Asserts that `ours` equals `reference` within 1e-3, and that the gradients of the sum
/// of its squares reach every one of `vars` within 1e-4 (relative) of the reference's.
pub(crate) fn assert_same_values_and_gradients(
    vars: &[&Var],
    ours: &Tensor,
    reference: &Tensor,
) -> Result<()> {
    let difference = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(difference < 1e-3, "forward differs by {difference}");
    let ours_grads = ours.sqr()?.sum_all()?.backward()?;
    let reference_grads = reference.sqr()?.sum_all()?.backward()?;
    for var in vars {
        let a = ours_grads.get(var).expect("gradient");
        let b = reference_grads.get(var).expect("gradient");
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        let difference = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
        assert!(
            difference < 1e-4,
            "gradient differs by {difference} (relative)"
        );
    }
    Ok(())
}

/// The unit tests' allocator: mimalloc, counting the allocations made on the threads that
/// asked to be counted, for the tests that promise none.
pub(crate) struct Counting;

std::thread_local! {
    static COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

static ALLOCATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts every allocation this thread makes from now on.
pub(crate) fn count_allocations_here() {
    COUNTED.set(true);
}

/// Allocations made so far on counted threads.
pub(crate) fn allocations() -> usize {
    ALLOCATIONS.load(std::sync::atomic::Ordering::SeqCst)
}

fn count() {
    // `try_with`: a thread being torn down still frees and may allocate.
    if COUNTED.try_with(std::cell::Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

// SAFETY: every method passes its caller's arguments straight to mimalloc's, which
// upholds `GlobalAlloc`'s contract; counting touches only an atomic and a thread-local.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: our caller upholds `alloc`'s contract (a non-zero size), passed on as is.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: our caller upholds `alloc_zeroed`'s contract, passed on as is.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: our caller upholds `realloc`'s contract, and `ptr` came from this
        // allocator, that is from mimalloc.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: our caller upholds `dealloc`'s contract, and `ptr` came from this
        // allocator, that is from mimalloc.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}
