//! The README's examples, run as a new user types them.

use std::time::Duration;

use lancer_tests::server::{Server, bin_dir, python, repo_root};
use serde_json::Value;
use tokio::process::Command;

const README: &str = include_str!("../../README.md");

/// The lines of the shell block under `## Using lancer`.
fn using_lancer_block() -> Vec<&'static str> {
    let section = README
        .split("\n## Using lancer\n")
        .nth(1)
        .expect("the README has a 'Using lancer' section");
    section
        .split("```sh\n")
        .nth(1)
        .and_then(|block| block.split("\n```").next())
        .expect("the section opens with a shell block")
        .lines()
        .collect()
}

/// `lancer serve` as the block starts it, with no setting of its own: default lake, task
/// table and scripts folder (the repository), nothing handed to scripts. Only the port is
/// free instead of 8000, and the data folder is the test's.
async fn serve_with_defaults(data: tempfile::TempDir) -> Server {
    let mut command = Command::new(bin_dir().join("lancer"));
    command
        .args(["serve", "--port", "0"])
        .current_dir(repo_root())
        .env("XDG_DATA_HOME", data.path())
        .env("LANCER_PYTHON", python());
    for set_by_other_tests in [
        "LANCER_LAKE",
        "LANCER_DB",
        "LANCER_SCRIPTS",
        "LANCER_SCRIPT_ENV",
        "LANCER_API_KEYS",
        "LANCER_BACKEND",
    ] {
        command.env_remove(set_by_other_tests);
    }
    Server::spawn(command, data, &repo_root(), &[]).await
}

#[tokio::test]
async fn the_using_lancer_example_works_as_written_on_a_server_with_no_settings() {
    let lines = using_lancer_block();
    // The tests run the binaries the first line builds; the second puts them on PATH.
    assert!(
        lines[0].starts_with("source scripts/env.sh && cargo build"),
        "{lines:#?}"
    );
    assert_eq!(lines[1], r#"export PATH="$CARGO_TARGET_DIR/debug:$PATH""#);
    assert!(lines[2].starts_with("lancer serve &"), "{lines:#?}");
    let data = tempfile::tempdir().expect("tempdir");
    let data_home = data.path().to_owned();
    let server = serve_with_defaults(data).await;
    let address = server.url.trim_start_matches("http://");
    let rest = lines[3..].join("\n").replace("localhost:8000", address);
    let target = bin_dir().parent().expect("the target folder").to_owned();
    let ran = Command::new("bash")
        .args(["-euo", "pipefail", "-c"])
        .arg(format!("{}\n{rest}", lines[1]))
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", &target)
        .env("XDG_DATA_HOME", &data_home)
        .env("LANCER_URL", &server.url)
        .env_remove("LANCER_API_KEY")
        .output()
        .await
        .expect("bash runs the block");
    let out = String::from_utf8_lossy(&ran.stdout);
    let err = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "the block failed:\n{out}\n{err}");
    assert!(
        out.contains("\"numbers\""),
        "datasets list shows numbers:\n{out}"
    );

    let ingest: Value = server.get_json("/tasks?name=ingest").await;
    let id = ingest["tasks"][0]["id"]
        .as_str()
        .expect("the curl created a task");
    let done = server.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["result"]["total_records"], 10000, "{done:#}");
    let numbers = server.get_json("/datasets/numbers").await;
    assert_eq!(numbers["num_rows"], 10, "{numbers:#}");
    assert!(
        data_home
            .join("lancer/lance_storage/datasets/mnist_clean.lance")
            .is_dir(),
        "the default lake is where the README says"
    );
    server.stop().await;
}

/// The `(method, path)` pairs the README's REST table names: `GET/DELETE /x` is two, a
/// query is left off, and "any method on" a path is `*` on it.
fn rest_table() -> std::collections::BTreeSet<(String, String)> {
    let section = README
        .split("\n## REST API\n")
        .nth(1)
        .expect("the README has a 'REST API' section");
    let table = section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2);
    let mut routes = std::collections::BTreeSet::new();
    for row in table {
        let cell = row.split(" | ").next().unwrap_or_default();
        for route in cell.split('`').skip(1).step_by(2) {
            let route = route.split('?').next().unwrap_or_default();
            match route.split_once(' ') {
                Some((methods, path)) => routes.extend(
                    methods
                        .split('/')
                        .map(|method| (method.to_owned(), path.to_owned())),
                ),
                None => {
                    routes.insert(("*".to_owned(), route.to_owned()));
                }
            }
        }
    }
    routes
}

#[tokio::test]
async fn the_readmes_rest_table_names_every_operation_of_the_openapi_document_and_no_other() {
    let app = lancer_tests::app::TestApp::new(None);
    let document = app.get("/api/v1/openapi.json", &[]).await.json();
    let mut documented = std::collections::BTreeSet::new();
    for (path, operations) in document["paths"].as_object().expect("paths") {
        for method in operations.as_object().expect("operations").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let table = rest_table();
    let any_method: Vec<&String> = table
        .iter()
        .filter(|(method, _)| method == "*")
        .map(|(_, path)| path)
        .collect();
    let missing: Vec<_> = documented
        .iter()
        .filter(|(method, path)| {
            !table.contains(&(method.clone(), path.clone())) && !any_method.contains(&path)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the README's REST table lacks {missing:?}"
    );
    let undocumented: Vec<_> = table
        .iter()
        .filter(|route| route.0 != "*" && !documented.contains(route))
        .filter(|(_, path)| path.starts_with("/api/"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "the README names routes the API does not document: {undocumented:?}"
    );
}
