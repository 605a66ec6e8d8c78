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
    use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
    use lancer::domain::task::Change;
    use lancer::ports::{Created, TaskStore};
    use lancer::store::dynamodb::{DynamoTaskStore, TTL_ATTRIBUTE};
    use lancer_tests::aws::{dynamodb_client, unique_name};
    use lancer_tests::server::repo_root;
    use lancer_tests::task_store::{new_task, spec};

    /// The expiry DynamoDB's TTL reads from `id`'s item, if it has one.
    async fn expires_at(client: &aws_sdk_dynamodb::Client, table: &str, id: &str) -> Option<i64> {
        let item = client
            .get_item()
            .table_name(table)
            .key("id", AttributeValue::S(id.to_owned()))
            .send()
            .await
            .expect("get item")
            .item
            .expect("the item");
        let value = item.get(TTL_ATTRIBUTE)?.as_n().expect("a number");
        Some(value.parse().expect("epoch seconds"))
    }

    #[tokio::test]
    async fn a_finished_task_expires_ninety_days_after_it_finished_by_the_attribute_the_table_and_the_template_name()
     {
        let client = dynamodb_client().await;
        let table = unique_name("tasks");
        DynamoTaskStore::create_table(&client, &table)
            .await
            .expect("create table");
        let store = DynamoTaskStore::new(client.clone(), table.clone());
        let Created::New(task) = store
            .create(new_task("acme", spec("a")))
            .await
            .expect("create")
        else {
            panic!("a fresh task")
        };
        let id = task.id.to_string();
        assert_eq!(
            expires_at(&client, &table, &id).await,
            None,
            "a pending task stays"
        );
        let start = Change::Start {
            backend: "test".into(),
        };
        let running = store
            .transition(&task.id, task.guard(), start)
            .await
            .expect("start");
        let complete = Change::Complete {
            result: serde_json::json!({}),
        };
        let done = store
            .transition(&task.id, running.guard(), complete)
            .await
            .expect("complete");
        let finished = done.finished_at.expect("finished").timestamp();
        assert_eq!(
            expires_at(&client, &table, &id).await,
            Some(finished + 90 * 86_400)
        );
        let ttl = client
            .describe_time_to_live()
            .table_name(&table)
            .send()
            .await
            .expect("describe TTL")
            .time_to_live_description
            .expect("a TTL description");
        assert_eq!(ttl.attribute_name.as_deref(), Some(TTL_ATTRIBUTE));
        assert_eq!(ttl.time_to_live_status, Some(TimeToLiveStatus::Enabled));
        // The deployed table is the template's, not create_table's: it must expire by the
        // same attribute.
        let template =
            std::fs::read_to_string(repo_root().join("infra/template.yaml")).expect("template");
        let spec = template
            .split("TimeToLiveSpecification:")
            .nth(1)
            .expect("the table has a TTL");
        let lines: Vec<&str> = spec.lines().skip(1).take(2).map(str::trim).collect();
        assert_eq!(
            lines,
            [
                format!("AttributeName: {TTL_ATTRIBUTE}"),
                "Enabled: true".into()
            ]
        );
    }

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
