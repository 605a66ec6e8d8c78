//! A Dispatcher fake that only records what it was asked to do.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::task::Task;
use crate::error::{Error, Result};
use crate::ports::Dispatcher;

#[derive(Default)]
pub struct RecordingDispatcher {
    submitted: Mutex<Vec<String>>,
    cancelled: Mutex<Vec<String>>,
}

impl RecordingDispatcher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn submitted(&self) -> Vec<String> {
        self.submitted
            .lock()
            .map(|ids| ids.clone())
            .unwrap_or_default()
    }

    pub fn cancelled(&self) -> Vec<String> {
        self.cancelled
            .lock()
            .map(|ids| ids.clone())
            .unwrap_or_default()
    }
}

#[async_trait]
impl Dispatcher for RecordingDispatcher {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn submit(&self, task: &Task) -> Result<()> {
        let mut ids = self
            .submitted
            .lock()
            .map_err(|_| Error::internal("lock poisoned"))?;
        ids.push(task.id.clone());
        Ok(())
    }

    async fn cancel(&self, task: &Task) -> Result<()> {
        let mut ids = self
            .cancelled
            .lock()
            .map_err(|_| Error::internal("lock poisoned"))?;
        ids.push(task.id.clone());
        Ok(())
    }

    async fn reconcile(&self) -> Result<()> {
        Ok(())
    }
}
