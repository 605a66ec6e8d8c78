//! The AWS level end to end: the real `lancer-api`, `lancer-ingest` and `lancer-sweeper`
//! binaries run as Lambda functions against a Runtime API emulator, with a DynamoDB task
//! table and a Lance lake on S3 in the local AWS stack (`eval "$(localstack/up)"`), and S3's
//! own event notifications delivered through SQS.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lancer::domain::path::LakePath;
use lancer::domain::task::{Change, FailureCode, Task, TaskId, TaskSpec};
use lancer::domain::tenant::Tenant;
use lancer::lake::lance::LanceLake;
use lancer::ports::{Lake, Stored, TaskStore};
use lancer::store::dynamodb::DynamoTaskStore;
use lancer_tests::aws::{
    create_bucket, drain_queue, dynamodb_client, notify_queue_of_uploads, put_object, sqs_event,
    unique_name,
};
use lancer_tests::lambda::LambdaFunction;
use lancer_tests::server::{bin_dir, python, repo_root};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

/// A fresh table and bucket, and the environment every function of this deployment shares.
async fn deployment() -> (DynamoTaskStore, String, Vec<(&'static str, String)>) {
    let client = dynamodb_client().await;
    let table = unique_name("tasks");
    DynamoTaskStore::create_table(&client, &table)
        .await
        .expect("create table");
    let bucket = unique_name("lake");
    create_bucket(&bucket).await;
    let runner = bin_dir().join("lancer-runner");
    let env = vec![
        ("LANCER_TASK_TABLE", table.clone()),
        ("LANCER_LAKE", format!("s3://{bucket}")),
        ("LANCER_SCRIPTS", repo_root().to_string_lossy().into_owned()),
        ("LANCER_RUNNER", runner.to_string_lossy().into_owned()),
        ("LANCER_PYTHON", python()),
        (
            "LANCER_SCRIPT_ENV",
            json!({"LANCER_MNIST_BIN": bin_dir()}).to_string(),
        ),
        ("LANCER_LEASE_SECS", "5".into()),
    ];
    (DynamoTaskStore::new(client, table), bucket, env)
}

async fn wait_for_task(api: &LambdaFunction, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, task) = api.http("GET", &format!("/api/v1/tasks/{id}"), None).await;
        assert_eq!(status, 200, "{task}");
        if task["finished_at"].is_string() {
            return task;
        }
        assert!(Instant::now() < deadline, "task never finished: {task:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn the_api_function_answers_api_gateway_events_from_dynamodb() {
    let (_store, _bucket, env) = deployment().await;
    let api = LambdaFunction::start(&bin_dir().join("lancer-api"), "api", &env).await;
    let spec = json!({"name": "noop", "script": "tests/bench/noop.py"});
    let (status, created) = api.http("POST", "/api/v1/tasks", Some(&spec)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id");
    let (status, listed) = api.http("GET", "/api/v1/tasks?limit=10", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["tasks"][0]["id"], id);
    let (status, missing) = api.http("GET", "/api/v1/tasks/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "TASK_NOT_FOUND");
    let (status, bad) = api
        .http("POST", "/api/v1/tasks", Some(&json!({"name": "x"})))
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["code"], "INVALID_REQUEST");
    // The task was dispatched by the function and ran: DynamoDB shows the runner's outcome.
    let done = wait_for_task(&api, id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    api.stop().await;
}

/// A task started as attempt 1 whose runner never heartbeats.
async fn silent_task(store: &DynamoTaskStore, id: &str, spec: Value) -> Task {
    let spec: TaskSpec = serde_json::from_value(spec).expect("spec");
    let id = TaskId::parse(id).expect("an id");
    let task = Task::new(&id, &Tenant::single(), spec, None, None, chrono::Utc::now());
    store.create(task.clone()).await.expect("create");
    let start = Change::Start {
        backend: "local".into(),
    };
    store
        .transition(&task.id, task.guard(), start)
        .await
        .expect("start")
}

#[tokio::test]
async fn the_scheduled_sweeper_fails_a_silent_runners_task_or_requeues_it_while_attempts_remain() {
    let (store, _bucket, env) = deployment().await;
    let lost = silent_task(
        &store,
        "01900000-0000-7000-8000-000000000001",
        json!({"name": "lost", "script": "tests/bench/noop.py"}),
    )
    .await;
    let retried = silent_task(
        &store,
        "01900000-0000-7000-8000-000000000002",
        json!({"name": "retried", "script": "tests/bench/noop.py", "max_attempts": 2}),
    )
    .await;
    // Their runners never heartbeat; after the 5 s lease the next scheduled run sees them.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sweeper = LambdaFunction::start(&bin_dir().join("lancer-sweeper"), "sweeper", &env).await;
    let scheduled = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    let round = sweeper.invoke(scheduled).await.expect("the round's report");
    assert_eq!(
        round,
        json!({"requeued": 1, "failed": 1, "pending": 1, "running": 0, "pipelines": 0, "errors": 0}),
        "one lease ended the task, one requeued it, and the requeued task was handed over"
    );
    let swept = store.get(&lost.id).await.expect("get").expect("exists");
    assert_eq!(swept.status.as_str(), "failed");
    assert_eq!(swept.error.expect("error").code, FailureCode::LeaseExpired);
    // The other went back to pending in DynamoDB, and the sweeper started its attempt 2.
    let deadline = Instant::now() + Duration::from_secs(60);
    let again = loop {
        let task = store.get(&retried.id).await.expect("get").expect("exists");
        if task.status.is_terminal() {
            break task;
        }
        assert!(Instant::now() < deadline, "never retried: {task:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        (again.status.as_str(), again.attempt),
        ("completed", 2),
        "{again:?}"
    );
    sweeper.stop().await;
}

/// Sleeps past the next whole minute: a `* * * * *` schedule's next tick.
async fn past_the_next_minute() {
    let into = chrono::Utc::now().timestamp() % 60;
    tokio::time::sleep(Duration::from_secs((61 - into) as u64)).await;
}

#[tokio::test]
async fn the_scheduled_sweeper_fires_a_schedules_tick_once_when_two_sweepers_run_the_round_together()
 {
    let (_store, _bucket, env) = deployment().await;
    let api = LambdaFunction::start(&bin_dir().join("lancer-api"), "api", &env).await;
    let spec = json!({"name": "every-minute", "schedule": "* * * * *", "steps": [
        {"name": "one", "script": "tests/bench/noop.py"}]});
    let (status, created) = api.http("POST", "/api/v1/pipelines", Some(&spec)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["status"], "scheduled");
    past_the_next_minute().await;

    // Two sweepers' rounds at once, as two overlapping scheduled invocations would run.
    let sweepers = [
        LambdaFunction::start(&bin_dir().join("lancer-sweeper"), "sweeper", &env).await,
        LambdaFunction::start(&bin_dir().join("lancer-sweeper"), "sweeper-2", &env).await,
    ];
    let scheduled = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    let (one, two) = tokio::join!(
        sweepers[0].invoke(scheduled.clone()),
        sweepers[1].invoke(scheduled.clone())
    );
    for round in [one.expect("a report"), two.expect("a report")] {
        assert_eq!(round["errors"], 0, "{round}");
        assert!(round["pipelines"].as_u64() >= Some(1), "it looked: {round}");
    }
    let (_, schedule) = api
        .http("GET", &format!("/api/v1/pipelines/{id}"), None)
        .await;
    let tick: chrono::DateTime<chrono::Utc> = schedule["fired"]["tick"]
        .as_str()
        .and_then(|tick| tick.parse().ok())
        .unwrap_or_else(|| panic!("no tick recorded: {schedule:#}"));
    assert_eq!(tick.timestamp() % 60, 0, "a whole minute: {schedule:#}");
    let runs = schedule["fired"]["runs"].as_array().expect("runs").clone();
    assert_eq!(runs.len(), 1, "one run for the tick: {schedule:#}");
    let (_, listed) = api.http("GET", "/api/v1/pipelines", None).await;
    let of_schedule: Vec<&Value> = listed["pipelines"]
        .as_array()
        .expect("pipelines")
        .iter()
        .filter(|p| p["scheduled_by"] == json!(id))
        .collect();
    assert_eq!(of_schedule.len(), 1, "{listed:#}");

    // Later rounds run the run's step and finish it.
    let run = runs[0].as_str().expect("a run id");
    let deadline = Instant::now() + Duration::from_secs(90);
    let finished = loop {
        sweepers[0]
            .invoke(scheduled.clone())
            .await
            .expect("a report");
        let (_, pipeline) = api
            .http("GET", &format!("/api/v1/pipelines/{run}"), None)
            .await;
        if pipeline["finished_at"].is_string() {
            break pipeline;
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished: {pipeline:#}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(finished["status"], "completed", "{finished:#}");
    let (_, schedule) = api
        .http("GET", &format!("/api/v1/pipelines/{id}"), None)
        .await;
    assert_eq!(
        schedule["status"], "scheduled",
        "the schedule goes on: {schedule:#}"
    );
    for sweeper in sweepers {
        sweeper.stop().await;
    }
    api.stop().await;
}

#[tokio::test]
async fn uploading_mnist_to_the_bucket_ingests_it_once_and_the_api_lists_the_dataset() {
    let (store, bucket, mut env) = deployment().await;
    env.push((
        "LANCER_INGEST_RULES",
        json!([{
            "name": "mnist", "prefix": "raw/mnist/", "script": "mnist/bin/mnist-clean",
            "output": "mnist_clean", "params": {"normalize": true, "flatten": true},
            "require": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
        }])
        .to_string(),
    ));
    let (queue, queue_arn) = notify_queue_of_uploads(&bucket, "raw/").await;
    let ingest = LambdaFunction::start(&bin_dir().join("lancer-ingest"), "ingest", &env).await;
    let api = LambdaFunction::start(&bin_dir().join("lancer-api"), "api", &env).await;

    // The real digits, as fetch-data writes them, uploaded to the bucket one by one.
    let raw = tempfile::tempdir().expect("tempdir");
    let fetched = std::process::Command::new(repo_root().join("mnist/fetch-data"))
        .arg("--lake")
        .arg(raw.path())
        .status()
        .expect("run fetch-data");
    assert!(fetched.success());
    for entry in std::fs::read_dir(raw.path().join("raw/mnist")).expect("raw files") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        put_object(
            &bucket,
            &format!("raw/mnist/{name}"),
            std::fs::read(&path).expect("read"),
        )
        .await;
    }

    // S3 notified the queue; each message reaches the function as SQS would deliver it,
    // every one twice, as S3's at-least-once delivery allows.
    let messages = drain_queue(&queue, Duration::from_secs(3)).await;
    assert!(
        messages.len() >= 4,
        "one notification per upload: {messages:#?}"
    );
    let mut created = Vec::new();
    for message in messages.iter().chain(messages.iter()) {
        let answer = ingest
            .invoke(sqs_event(&queue_arn, std::slice::from_ref(message)))
            .await
            .expect("ingest handles the event");
        for id in answer["created"].as_array().expect("created") {
            created.push(id.as_str().expect("id").to_owned());
        }
    }
    assert_eq!(created.len(), 1, "exactly one ingestion task: {created:?}");
    let listed = store
        .list(&lancer::ports::ListQuery {
            tenant: Some(lancer::domain::tenant::TenantName::parse("default").expect("name")),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.tasks.len(), 1, "nothing else was created");

    let done = wait_for_task(&api, &created[0], Duration::from_secs(180)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["result"]["total_records"], 10_000);
    let (status, datasets) = api.http("GET", "/api/v1/datasets", None).await;
    assert_eq!(status, 200);
    assert_eq!(datasets[0]["id"], "mnist_clean", "{datasets:#}");
    assert_eq!(datasets[0]["num_rows"], 10_000);
    assert!(
        datasets[0]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with(&format!("s3://{bucket}/datasets/"))),
        "{datasets:#}"
    );
    ingest.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn deployed_as_on_aws_a_keyed_task_the_api_function_froze_on_is_submitted_to_ray_by_the_sweeper()
 {
    let (store, _bucket, mut env) = deployment().await;
    env.extend([
        ("LANCER_BACKEND", "ray".to_owned()),
        ("LANCER_API_KEYS", "lambda-key-for-acme=acme".to_owned()),
    ]);
    // The api function's background submit goes to a head that never answers, so no job
    // can come from it: the job Ray ends up with is the sweeper's.
    let (silent_head, heard) = silent_head().await;
    let mut api_env = env.clone();
    api_env.push(("RAY_ADDRESS", silent_head));
    env.push(("RAY_ADDRESS", lancer_tests::ray::ray_address()));
    let api = LambdaFunction::start(&bin_dir().join("lancer-api"), "api", &api_env).await;
    let spec =
        json!({"name": "on-ray", "script": "tests/bench/noop.py", "resources": {"cpus": 0.5}});
    let (status, _) = api.http("POST", "/api/v1/tasks", Some(&spec)).await;
    assert_eq!(status, 401, "keys are required");
    let key = Some("lambda-key-for-acme");
    let (status, created) = api.http_as(key, "POST", "/api/v1/tasks", Some(&spec)).await;
    assert_eq!(status, 201, "{created}");
    let id = TaskId::parse(created["id"].as_str().expect("id")).expect("a task id");
    wait_until_heard(&heard, "POST /api/jobs/", Duration::from_secs(10)).await;
    // Lambda may freeze or recycle the function as soon as it has answered: nothing it
    // started in the background is to be relied on. The scheduled sweeper reconciles.
    api.stop().await;
    assert_eq!(lancer_tests::ray::jobs_of_task(id.as_str()).await.len(), 0);
    let sweeper = LambdaFunction::start(&bin_dir().join("lancer-sweeper"), "sweeper", &env).await;
    let scheduled = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    let round = sweeper.invoke(scheduled).await.expect("the round's report");
    assert_eq!(
        (&round["errors"], &round["pending"], &round["running"]),
        (&json!(0), &json!(1), &json!(0)),
        "the round handed Ray the one pending task: {round}"
    );
    sweeper.stop().await;

    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let task = store.get(&id).await.expect("get").expect("exists");
        if task.status.is_terminal() {
            break task;
        }
        assert!(Instant::now() < deadline, "never ran on Ray: {task:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(done.status.as_str(), "completed", "{done:?}");
    assert_eq!(done.backend.as_deref(), Some("ray"));
    assert_eq!(done.tenant.to_string(), "acme");
    let jobs = lancer_tests::ray::jobs_of_task(id.as_str()).await;
    assert_eq!(jobs.len(), 1, "the sweeper's job and no other: {jobs:#?}");
    assert_eq!(jobs[0]["metadata"]["lancer_tenant"], "acme");
}

/// The address of a "Ray head" that takes connections and never answers, and what it was
/// sent so far.
async fn silent_head() -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let heard = Arc::new(Mutex::new(Vec::new()));
    let kept = heard.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let heard = kept.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while let Ok(read @ 1..) = socket.read(&mut buffer).await {
                    heard
                        .lock()
                        .expect("lock")
                        .extend_from_slice(&buffer[..read]);
                }
            });
        }
    });
    (address, heard)
}

async fn wait_until_heard(heard: &Mutex<Vec<u8>>, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let so_far = String::from_utf8_lossy(&heard.lock().expect("lock")).into_owned();
        if so_far.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "never sent {text:?}: {so_far:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hands every message to the ingest function as SQS would, then each message's S3 event
/// as a direct S3 trigger would; the ids of the tasks it created.
async fn ingest_each_way(
    ingest: &LambdaFunction,
    queue_arn: &str,
    messages: &[Value],
) -> Vec<String> {
    let mut events = vec![sqs_event(queue_arn, messages)];
    for message in messages {
        let body: Value =
            serde_json::from_str(message["Body"].as_str().expect("a body")).expect("S3 event json");
        // S3's test event goes to a queue when notifications are set up; a direct trigger
        // never sees it.
        if body["Records"].is_array() {
            events.push(body);
        }
    }
    let mut created = Vec::new();
    for event in events {
        let answer = ingest
            .invoke(event)
            .await
            .expect("ingest handles the event");
        for id in answer["created"].as_array().expect("created") {
            created.push(id.as_str().expect("id").to_owned());
        }
    }
    created
}

#[tokio::test]
async fn without_require_each_object_is_an_upload_whether_put_whole_or_in_parts_or_sent_directly() {
    let (store, bucket, mut env) = deployment().await;
    let rules = json!([{"name": "csv", "prefix": "raw/csv/", "script": "tests/bench/noop.py",
                        "output": "rows"}]);
    env.push(("LANCER_INGEST_RULES", rules.to_string()));
    let (queue, queue_arn) = notify_queue_of_uploads(&bucket, "raw/").await;
    let ingest = LambdaFunction::start(&bin_dir().join("lancer-ingest"), "ingest", &env).await;

    // Written as any S3 client would (signed, with the environment's credentials): one
    // object whole, one in two parts through S3's multipart API.
    let lake = LanceLake::open(&format!("s3://{bucket}"), Default::default()).expect("lake");
    let small = LakePath::parse("key", "raw/csv/small.csv").expect("path");
    lake.put(&small, b"a,b\n1,2\n".to_vec()).await.expect("put");
    let large = LakePath::parse("key", "raw/csv/large.csv").expect("path");
    let parts = [vec![b'x'; 5 << 20], b"the last part\n".to_vec()];
    let body = futures::stream::iter(parts.map(|part| Ok(bytes::Bytes::from(part))));
    let stored = lake.put_stream(&large, Box::pin(body), 1 << 30).await;
    assert_eq!(
        stored.expect("multipart upload"),
        Stored::Whole((5 << 20) + 14)
    );
    let messages = drain_queue(&queue, Duration::from_secs(3)).await;
    let created = ingest_each_way(&ingest, &queue_arn, &messages).await;
    assert_eq!(
        created.len(),
        2,
        "one task per object, however often it was told: {created:?}"
    );
    for id in &created {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let task = store
                .get(&TaskId::parse(id).expect("a task id"))
                .await
                .expect("get")
                .expect("exists");
            if task.status.is_terminal() {
                assert_eq!(task.status.as_str(), "completed", "{task:?}");
                break;
            }
            assert!(Instant::now() < deadline, "never ran: {task:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    lake.put(&small, b"a,b\n3,4\n".to_vec()).await.expect("put");
    let messages = drain_queue(&queue, Duration::from_secs(3)).await;
    let again = ingest_each_way(&ingest, &queue_arn, &messages).await;
    assert_eq!(again.len(), 1, "new data is a new upload: {again:?}");
    assert!(!created.contains(&again[0]));
    ingest.stop().await;
}
