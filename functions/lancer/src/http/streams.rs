//! How many event streams may be open at once: each holds a connection for up to 15
//! minutes, so without a bound one tenant's streams could take every connection the
//! server has. Each tenant gets `per_tenant`, everyone together `total`; past either the
//! answer is 429 with `Retry-After`, and other tenants' requests are never kept waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::StreamLimits;
use crate::error::{Error, Result};

/// How many seconds a refused client is asked to wait before it tries again.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The open streams, by tenant.
#[derive(Debug, Default)]
pub struct OpenStreams {
    limits: StreamLimits,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_tenant: HashMap<String, usize>,
}

impl OpenStreams {
    /// No stream open yet, within `limits`.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            open: Mutex::default(),
        }
    }

    /// A place for one more of `tenant`'s streams, held until the slot is dropped.
    pub fn admit(self: &Arc<Self>, tenant: &str) -> Result<StreamSlot> {
        let mut open = self.lock();
        let mine = open.by_tenant.get(tenant).copied().unwrap_or(0);
        if mine >= self.limits.per_tenant {
            return Err(Error::TooManyRequests(format!(
                "this tenant has {mine} event streams open, the most it may; close one or retry later"
            )));
        }
        if open.total >= self.limits.total {
            return Err(Error::TooManyRequests(
                "the server has as many event streams open as it serves; retry later".into(),
            ));
        }
        open.total += 1;
        *open.by_tenant.entry(tenant.to_owned()).or_default() += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            tenant: tenant.to_owned(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One open stream's place; dropped with the stream.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<OpenStreams>,
    tenant: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.by_tenant.get_mut(&self.tenant) {
            *mine -= 1;
            if *mine == 0 {
                open.by_tenant.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_share_and_all_together_the_total() {
        let streams = Arc::new(OpenStreams::new(StreamLimits {
            total: 3,
            per_tenant: 2,
        }));
        let a1 = streams.admit("a").expect("a's first");
        let _a2 = streams.admit("a").expect("a's second");
        assert!(matches!(streams.admit("a"), Err(Error::TooManyRequests(_))));
        let _b1 = streams.admit("b").expect("b's first, beside a's");
        assert!(streams.admit("c").is_err(), "the total is reached");
        drop(a1);
        streams.admit("c").expect("a closed one");
    }
}
