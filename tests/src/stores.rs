//! The task table's adapters, each opened fresh for one conformance test: one maker per
//! backend, shared by the TaskStore, PipelineStore and ModelStore suites (every adapter is
//! all three).

use std::any::Any;
use std::sync::Arc;

use lancer::store::dynamodb::DynamoTaskStore;
use lancer::store::memory::MemoryTaskStore;
use lancer::store::sqlite::SqliteTaskStore;

use crate::aws::{dynamodb_client, unique_name};

/// A store and whatever keeps it alive (a temp dir).
pub struct Opened<S> {
    pub store: Arc<S>,
    pub keep: Box<dyn Any + Send>,
}

pub fn memory() -> Opened<MemoryTaskStore> {
    Opened {
        store: Arc::new(MemoryTaskStore::new()),
        keep: Box::new(()),
    }
}

/// A database file in a temp dir of its own.
pub fn sqlite() -> Opened<SqliteTaskStore> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteTaskStore::open(dir.path().join("tasks.db")).expect("open sqlite");
    Opened {
        store: Arc::new(store),
        keep: Box::new(dir),
    }
}

/// A fresh table on the local AWS stack, so listings across tenants see only this test's
/// records.
pub async fn dynamodb() -> Opened<DynamoTaskStore> {
    let client = dynamodb_client().await;
    let table = unique_name("tasks");
    DynamoTaskStore::create_table(&client, &table)
        .await
        .expect("create table");
    Opened {
        store: Arc::new(DynamoTaskStore::new(client, table)),
        keep: Box::new(()),
    }
}
