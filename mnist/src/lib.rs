//! lancer's reference workload. These are user code: they reach the platform only through
//! the run contract (flags, params, result file, progress file, environment).

pub mod adadelta;
pub mod bias_relu;
pub mod checkpoint;
pub mod clean;
pub mod contract;
pub mod conv;
pub mod idx;
pub mod lake;
pub mod linear;
pub mod model;
pub mod pool;
pub mod rng;
pub mod serve;
mod sgemm;
pub mod train;

// The jobs allocate and free large tensors batch after batch; mimalloc reuses that memory
// where the system allocator hands it back to the kernel and faults it in again. Declared
// once here, it serves every binary that links this crate.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
