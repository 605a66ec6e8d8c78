//! The TaskStore conformance suite on every adapter: in memory, SQLite, and DynamoDB on the
//! local AWS stack (`lancer_tests::stores` opens each).

mod memory {
    use lancer_tests::task_store::Fixture;

    async fn make() -> Fixture {
        lancer_tests::stores::memory().into()
    }

    lancer_tests::task_store_conformance!(make);
}

mod sqlite {
    use lancer_tests::task_store::Fixture;

    async fn make() -> Fixture {
        lancer_tests::stores::sqlite().into()
    }

    lancer_tests::task_store_conformance!(make);
}

mod dynamodb {
    use lancer_tests::task_store::Fixture;

    async fn make() -> Fixture {
        lancer_tests::stores::dynamodb().await.into()
    }

    lancer_tests::task_store_conformance!(make);
}

mod dynamodb_expiry {
    use lancer::ports::{Created, TaskStore};
    use lancer::store::dynamodb::DynamoTaskStore;
    use lancer_tests::aws::{dynamodb_client, unique_name};
    use lancer_tests::task_store::{new_task, spec};

    /// DynamoDB's TTL deletes a finished task after 90 days, but not the item that reserves
    /// its idempotency key: reusing the key then must create a task, not fail forever.
    #[tokio::test]
    async fn a_key_whose_task_expired_is_free_again() {
        let client = dynamodb_client().await;
        let table = unique_name("tasks");
        DynamoTaskStore::create_table(&client, &table)
            .await
            .expect("create table");
        let store = DynamoTaskStore::new(client.clone(), table.clone());
        let keyed = |name: &str| {
            let mut task = new_task("acme", spec(name));
            task.spec.idempotency_key = Some("nightly-1".into());
            task
        };
        let first = match store.create(keyed("a")).await.expect("create") {
            Created::New(task) => task,
            Created::Existing(_) => panic!("the key was free"),
        };
        client
            .delete_item()
            .table_name(&table)
            .key(
                "id",
                aws_sdk_dynamodb::types::AttributeValue::S(first.id.to_string()),
            )
            .send()
            .await
            .expect("expire the task as the TTL would");
        let second = match store.create(keyed("a")).await.expect("reuse the key") {
            Created::New(task) => task,
            Created::Existing(task) => panic!("answered with the expired task {}", task.id),
        };
        assert_ne!(second.id, first.id);
        match store.create(keyed("a")).await.expect("repeat") {
            Created::Existing(task) => assert_eq!(task.id, second.id),
            Created::New(_) => panic!("the key now names the new task"),
        }
    }
}
