//! Lake adapters: Lance on any object store (local disk, S3), and an in-memory fake.

pub mod lance;
pub mod memory;

/// The lake folder of a tenant: the root itself in single-tenant mode.
pub fn tenant_prefix(tenant: &str, multi_tenant: bool) -> String {
    if multi_tenant {
        format!("tenants/{tenant}/")
    } else {
        String::new()
    }
}

/// The lake-relative path of a task's log.
pub fn log_path(prefix: &str, task_id: &str) -> String {
    format!("{prefix}logs/{task_id}.log")
}
