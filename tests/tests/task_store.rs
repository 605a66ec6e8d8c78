//! The TaskStore conformance suite on every embedded adapter.

mod memory {
    use std::sync::Arc;

    use lancer::store::memory::MemoryTaskStore;
    use lancer_tests::task_store::Fixture;

    async fn make() -> Fixture {
        Fixture {
            store: Arc::new(MemoryTaskStore::new()),
            keep: Box::new(()),
        }
    }

    lancer_tests::task_store_conformance!(make);
}

mod sqlite {
    use std::sync::Arc;

    use lancer::store::sqlite::SqliteTaskStore;
    use lancer_tests::task_store::Fixture;

    async fn make() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteTaskStore::open(dir.path().join("tasks.db")).expect("open sqlite");
        Fixture {
            store: Arc::new(store),
            keep: Box::new(dir),
        }
    }

    lancer_tests::task_store_conformance!(make);
}
