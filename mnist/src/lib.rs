//! lancer's reference workload. These are user code: they reach the platform only through
//! the run contract (flags, params, result file, progress file, environment).

pub mod adadelta;
pub mod clean;
pub mod contract;
pub mod idx;
pub mod im2col;
pub mod lake;
pub mod model;
pub mod rng;
pub mod train;
