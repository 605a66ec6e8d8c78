//! The PipelineStore conformance suite on every adapter: in memory, SQLite, and DynamoDB
//! on the local AWS stack.

mod memory {
    use std::sync::Arc;

    use lancer::store::memory::MemoryTaskStore;
    use lancer_tests::pipeline_store::Fixture;

    async fn make() -> Fixture {
        Fixture {
            store: Arc::new(MemoryTaskStore::new()),
            keep: Box::new(()),
        }
    }

    lancer_tests::pipeline_store_conformance!(make);
}

mod sqlite {
    use std::sync::Arc;

    use lancer::store::sqlite::SqliteTaskStore;
    use lancer_tests::pipeline_store::Fixture;

    async fn make() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteTaskStore::open(dir.path().join("tasks.db")).expect("open sqlite");
        Fixture {
            store: Arc::new(store),
            keep: Box::new(dir),
        }
    }

    lancer_tests::pipeline_store_conformance!(make);
}

mod dynamodb {
    use std::sync::Arc;

    use lancer::store::dynamodb::DynamoTaskStore;
    use lancer_tests::aws::{dynamodb_client, unique_name};
    use lancer_tests::pipeline_store::Fixture;

    /// A fresh table per test, so the running pipelines across tenants are this test's.
    async fn make() -> Fixture {
        let client = dynamodb_client().await;
        let table = unique_name("tasks");
        DynamoTaskStore::create_table(&client, &table)
            .await
            .expect("create table");
        Fixture {
            store: Arc::new(DynamoTaskStore::new(client, table)),
            keep: Box::new(()),
        }
    }

    lancer_tests::pipeline_store_conformance!(make);
}
