//! Model aliases through the API: a name for a model version or a weighted split, with
//! its history, rollback, and the rules on what it may name.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use lancer::domain::model::{AliasName, AliasRequest, ModelName};
use lancer::domain::tenant::Tenant;
use lancer::store::sqlite::SqliteTaskStore;
use lancer_tests::app::{Answer, TestApp};
use lancer_tests::lake::{dataset_batch, write_lance};
use serde_json::{Value, json};

const KEYS: &str = "acme-key-001=acme,other-key-001=other";
const ACME: [(&str, &str); 1] = [("Authorization", "Bearer acme-key-001")];
const OTHER: [(&str, &str); 1] = [("Authorization", "Bearer other-key-001")];

/// Writes `versions` versions of `tenant`'s model `name` into the app's lake.
async fn model_with_versions(app: &TestApp, tenant: &str, name: &str, versions: usize) {
    let uri = app
        .dir
        .path()
        .join(format!("lake/tenants/{tenant}/models/{name}.lance"));
    for _ in 0..versions {
        write_lance(
            &uri.to_string_lossy(),
            dataset_batch(2),
            &Default::default(),
        )
        .await;
    }
}

async fn put(app: &TestApp, path: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    let body = serde_json::to_vec(&body).expect("json");
    app.call(Method::PUT, path, Some(body), headers).await
}

async fn delete(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Answer {
    app.call(Method::DELETE, path, None, headers).await
}

const PRODUCTION: &str = "/api/v1/models/digits/aliases/production";

#[tokio::test]
async fn an_alias_names_a_version_moves_to_another_and_keeps_each_change_in_its_history() {
    let app = TestApp::new(Some(KEYS));
    model_with_versions(&app, "acme", "digits", 3).await;
    let set = put(&app, PRODUCTION, json!({"version": 1}), &ACME).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    let alias = set.json();
    assert_eq!(
        (&alias["model"], &alias["alias"], &alias["version"]),
        (&json!("digits"), &json!("production"), &json!(1))
    );
    assert_eq!(alias["versions"], json!({"1": 100}));
    assert_eq!(alias["updated_by"], "acme");
    let again = put(&app, PRODUCTION, json!({"version": 1}), &ACME).await;
    assert_eq!(again.json(), alias, "the same value again changes nothing");

    let moved = put(&app, PRODUCTION, json!({"version": 3}), &ACME).await;
    assert_eq!(moved.json()["version"], 3);
    assert_eq!(app.get(PRODUCTION, &ACME).await.json()["version"], 3);
    let listed = app.get("/api/v1/models/digits/aliases", &ACME).await.json();
    assert_eq!(
        listed["aliases"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(listed["aliases"][0]["version"], 3);

    let history = app
        .get(&format!("{PRODUCTION}/history"), &ACME)
        .await
        .json();
    let changes = history["changes"].as_array().expect("changes");
    assert_eq!(
        changes.len(),
        2,
        "set twice, the repeat not recorded: {history:#}"
    );
    assert_eq!(changes[0]["action"], "set");
    assert_eq!(changes[0]["previous"], json!({"1": 100}), "newest first");
    assert_eq!(changes[0]["value"], json!({"3": 100}));
    assert_eq!(changes[0]["tenant"], "acme");
    assert_eq!(
        changes[1]["previous"],
        Value::Null,
        "it did not exist before"
    );
    assert!(changes[0]["at"].as_str() >= changes[1]["at"].as_str());
}

#[tokio::test]
async fn a_canary_splits_by_weight_and_a_rollback_undoes_the_last_change() {
    let app = TestApp::new(Some(KEYS));
    model_with_versions(&app, "acme", "digits", 2).await;
    put(&app, PRODUCTION, json!({"version": 1}), &ACME).await;
    let canary = put(
        &app,
        PRODUCTION,
        json!({"versions": {"1": 90, "2": 10}}),
        &ACME,
    )
    .await;
    assert_eq!(canary.status, StatusCode::OK, "{}", canary.text());
    assert_eq!(canary.json()["versions"], json!({"1": 90, "2": 10}));
    assert_eq!(
        canary.json()["version"],
        Value::Null,
        "a split names no one version"
    );

    let rollback = format!("{PRODUCTION}/rollback");
    let back = app.post(&rollback, &json!(null), &ACME).await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.text());
    assert_eq!(back.json()["versions"], json!({"1": 100}));
    let forward = app.post(&rollback, &json!(null), &ACME).await;
    assert_eq!(
        forward.json()["versions"],
        json!({"1": 90, "2": 10}),
        "a second rollback undoes the first"
    );
    let history = app
        .get(&format!("{PRODUCTION}/history"), &ACME)
        .await
        .json();
    let actions: Vec<&str> = history["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["action"].as_str())
        .collect();
    assert_eq!(actions, ["rollback", "rollback", "set", "set"]);
}

#[tokio::test]
async fn a_new_alias_has_nothing_to_roll_back_to() {
    let app = TestApp::new(Some(KEYS));
    model_with_versions(&app, "acme", "digits", 1).await;
    put(&app, PRODUCTION, json!({"version": 1}), &ACME).await;
    let refused = app
        .post(&format!("{PRODUCTION}/rollback"), &json!(null), &ACME)
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text());
    assert!(
        refused.text().contains("no earlier value"),
        "{}",
        refused.text()
    );
}

#[tokio::test]
async fn bad_alias_requests_are_400s_that_name_the_field_and_change_nothing() {
    let app = TestApp::new(Some(KEYS));
    model_with_versions(&app, "acme", "digits", 2).await;
    put(&app, PRODUCTION, json!({"version": 1}), &ACME).await;
    let nine: serde_json::Map<String, Value> = (1..=9).map(|v| (v.to_string(), json!(1))).collect();
    let cases = [
        (
            json!({"version": 9}),
            "version: model digits has no version 9 (it has versions 1 to 2)",
        ),
        (
            json!({"versions": {"1": 50, "9": 50}}),
            "versions.9: model digits has no version 9",
        ),
        (json!({"versions": {"1": 0, "2": 0}}), "sum to more than 0"),
        (json!({"versions": {"1": -5}}), "versions.1"),
        (json!({"versions": nine}), "1 to 8 versions"),
        (json!({"version": 0}), "version must be a model version"),
        (
            json!({"version": 1, "versions": {"2": 1}}),
            "either version",
        ),
        (json!({"version": 1, "weight": 3}), "unknown field"),
        (json!({"version": "1"}), "invalid JSON body"),
    ];
    for (body, says) in cases {
        let answer = put(&app, PRODUCTION, body.clone(), &ACME).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.text()
        );
        assert_eq!(answer.code(), "INVALID_REQUEST");
        assert!(answer.text().contains(says), "{body}: {}", answer.text());
    }
    let bad_name = put(
        &app,
        "/api/v1/models/digits/aliases/Prod%20One",
        json!({"version": 1}),
        &ACME,
    )
    .await;
    assert_eq!(
        bad_name.status,
        StatusCode::BAD_REQUEST,
        "{}",
        bad_name.text()
    );
    assert!(bad_name.text().contains("alias"), "{}", bad_name.text());
    let history = app
        .get(&format!("{PRODUCTION}/history"), &ACME)
        .await
        .json();
    assert_eq!(
        history["changes"].as_array().map(Vec::len),
        Some(1),
        "{history:#}"
    );
    assert_eq!(app.get(PRODUCTION, &ACME).await.json()["version"], 1);
}

#[tokio::test]
async fn an_alias_of_a_model_or_name_that_does_not_exist_is_not_found() {
    let app = TestApp::new(Some(KEYS));
    model_with_versions(&app, "acme", "digits", 1).await;
    let no_model = put(
        &app,
        "/api/v1/models/faces/aliases/production",
        json!({"version": 1}),
        &ACME,
    )
    .await;
    assert_eq!(no_model.status, StatusCode::NOT_FOUND);
    assert_eq!(no_model.code(), "MODEL_NOT_FOUND");
    let listed = app.get("/api/v1/models/faces/aliases", &ACME).await;
    assert_eq!(listed.code(), "MODEL_NOT_FOUND");
    for path in [PRODUCTION.to_owned(), format!("{PRODUCTION}/history")] {
        let missing = app.get(&path, &ACME).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(missing.code(), "ALIAS_NOT_FOUND");
    }
    assert_eq!(
        delete(&app, PRODUCTION, &ACME).await.code(),
        "ALIAS_NOT_FOUND"
    );
    let rollback = app
        .post(&format!("{PRODUCTION}/rollback"), &json!(null), &ACME)
        .await;
    assert_eq!(rollback.code(), "ALIAS_NOT_FOUND");
}

#[tokio::test]
async fn a_model_an_alias_names_is_not_deleted_until_the_alias_is() {
    let app = TestApp::new(Some(KEYS));
    model_with_versions(&app, "acme", "digits", 1).await;
    put(&app, PRODUCTION, json!({"version": 1}), &ACME).await;
    let refused = delete(&app, "/api/v1/models/digits", &ACME).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text());
    assert!(refused.text().contains("production"), "{}", refused.text());
    assert_eq!(
        app.get("/api/v1/models/digits", &ACME).await.status,
        StatusCode::OK
    );

    assert_eq!(
        delete(&app, PRODUCTION, &ACME).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(PRODUCTION, &ACME).await.code(), "ALIAS_NOT_FOUND");
    let history = app
        .get(&format!("{PRODUCTION}/history"), &ACME)
        .await
        .json();
    assert_eq!(history["changes"][0]["action"], "delete", "{history:#}");
    assert_eq!(history["changes"][0]["value"], Value::Null);
    let listed = app.get("/api/v1/models/digits/aliases", &ACME).await.json();
    assert_eq!(listed["aliases"], json!([]));

    assert_eq!(
        delete(&app, "/api/v1/models/digits", &ACME).await.status,
        StatusCode::NO_CONTENT
    );
    // A model made again under the name starts with no alias and no history.
    model_with_versions(&app, "acme", "digits", 1).await;
    assert_eq!(
        app.get(&format!("{PRODUCTION}/history"), &ACME)
            .await
            .code(),
        "ALIAS_NOT_FOUND"
    );
}

#[tokio::test]
async fn another_tenants_alias_of_a_model_by_the_same_name_is_its_own() {
    let app = TestApp::new(Some(KEYS));
    model_with_versions(&app, "acme", "digits", 2).await;
    model_with_versions(&app, "other", "digits", 1).await;
    put(&app, PRODUCTION, json!({"version": 2}), &ACME).await;
    assert_eq!(app.get(PRODUCTION, &OTHER).await.code(), "ALIAS_NOT_FOUND");
    let theirs = put(&app, PRODUCTION, json!({"version": 2}), &OTHER).await;
    assert_eq!(
        theirs.status,
        StatusCode::BAD_REQUEST,
        "other's model has one version"
    );
    put(&app, PRODUCTION, json!({"version": 1}), &OTHER).await;
    assert_eq!(app.get(PRODUCTION, &ACME).await.json()["version"], 2);
    assert_eq!(app.get(PRODUCTION, &OTHER).await.json()["version"], 1);
    let unauthenticated = app.get(PRODUCTION, &[]).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
}

/// Two API processes over one SQLite file move one alias at once, 16 times: each move
/// lands (compare-and-set, re-read, again), and the history chains every value to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moves_of_one_alias_from_two_processes_at_once_all_land_in_one_chained_history() {
    let app = TestApp::new(Some(KEYS));
    model_with_versions(&app, "acme", "digits", 8).await;
    let db = app.dir.path().join("models.db");
    let processes: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::new(SqliteTaskStore::open(&db).expect("open"));
            Arc::new(lancer::application::Service {
                models: store,
                ..app.service(Some(KEYS))
            })
        })
        .collect();
    let tenant = Tenant::keyed(lancer::domain::tenant::TenantName::parse("acme").expect("name"));
    let (model, alias) = (
        ModelName::parse("digits").expect("name"),
        AliasName::parse("production").expect("name"),
    );
    let moves = (0..16u64).map(|n| {
        let (service, tenant, model, alias) = (
            processes[n as usize % 2].clone(),
            tenant.clone(),
            model.clone(),
            alias.clone(),
        );
        tokio::spawn(async move {
            // Every move names a value no other move does, so none is a repeat.
            let request = AliasRequest {
                versions: Some([("1".to_owned(), 1), ("2".to_owned(), n as i64 + 1)].into()),
                ..Default::default()
            };
            service
                .set_model_alias(&tenant, &model, &alias, &request)
                .await
        })
    });
    for outcome in futures::future::join_all(moves).await {
        outcome.expect("joined").expect("every move lands");
    }
    let history = processes[0]
        .model_alias_history(&tenant, &model, &alias)
        .await
        .expect("history");
    let changes = history.changes;
    assert_eq!(changes.len(), 16, "no move was lost: {changes:#?}");
    for pair in changes.windows(2) {
        assert_eq!(
            pair[0].previous, pair[1].value,
            "each change starts where the one before ended"
        );
    }
}

/// Appends a model version: one row of weights and metrics.
const SAVE_PY: &str = r#"
import json, os
import lance
import pyarrow as pa

def run(input_path, output_path, params):
    row = pa.table({"weights": pa.array([b"\x00" * 64], pa.binary()),
                    "metrics": [json.dumps({"accuracy": params["accuracy"]})]})
    options = json.loads(os.environ["LANCER_STORAGE_OPTIONS"]) or None
    mode = "append" if os.path.exists(output_path) else "create"
    lance.write_dataset(row, output_path, mode=mode, storage_options=options)
    return {}
"#;

/// The README's alias commands, as a user types them, against a real `lancer serve`.
#[tokio::test]
async fn the_readmes_alias_commands_set_a_canary_roll_it_back_and_show_the_history() {
    use lancer_tests::server::Server;
    let server = Server::start(&[("save.py", SAVE_PY, false)], &[]).await;
    for accuracy in [0.9, 0.95] {
        let spec = json!({"name": "save", "script": "save.py", "output": "models/mnist_cnn",
                          "params": {"accuracy": accuracy}});
        server
            .run_to_completion(&spec, std::time::Duration::from_secs(60))
            .await;
    }
    let readme = std::fs::read_to_string(lancer_tests::server::repo_root().join("README.md"))
        .expect("README");
    let commands: Vec<&str> = readme
        .lines()
        .filter(|line| line.starts_with("lancer models alias "))
        .map(|line| line.split('#').next().unwrap_or(line).trim())
        .collect();
    assert_eq!(commands.len(), 4, "{commands:?}");
    let mut outputs = Vec::new();
    for command in &commands {
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        let (ok, stdout, stderr) = server.cli(None, &args);
        assert!(ok, "{command}: {stderr}");
        outputs.push(stdout);
    }
    let parse = |text: &str| serde_json::from_str::<Value>(text).expect("JSON");
    assert_eq!(parse(&outputs[0])["version"], 1);
    assert_eq!(parse(&outputs[1])["versions"], json!({"1": 90, "2": 10}));
    assert_eq!(parse(&outputs[2])["versions"], json!({"1": 100}));
    let rows: Vec<&str> = outputs[3].lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{}", outputs[3]);
    assert!(
        rows[0].contains("rollback") && rows[0].ends_with("1:100"),
        "{}",
        outputs[3]
    );
    assert!(
        rows[1].contains("set") && rows[1].ends_with("1:90 2:10"),
        "{}",
        outputs[3]
    );
    let (ok, _, stderr) = server.cli(
        None,
        &["models", "alias", "set", "mnist_cnn", "production", "7"],
    );
    assert!(!ok && stderr.contains("no version 7"), "{stderr}");
    let (ok, _, stderr) = server.cli(None, &["models", "delete", "mnist_cnn"]);
    assert!(!ok && stderr.contains("409"), "{stderr}");
    server.stop().await;
}
