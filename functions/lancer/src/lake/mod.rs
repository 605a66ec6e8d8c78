//! Lake adapters: Lance on any object store (local disk, S3), and an in-memory fake.

pub mod lance;
pub mod memory;
