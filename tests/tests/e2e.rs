//! End to end through a real `lancer serve`: runner subprocesses, SQLite, Lance on disk.

use std::time::Duration;

use lancer_tests::scripts::{
    CONTRACT_SH, FAIL_PY, FIRST_ATTEMPT_HANGS_PY, INGEST_PY, SERVE_PY, SLOW_PY, STUBBORN_PY,
};
use lancer_tests::server::{
    Server, bin_dir, is_alive, kill_9, runner_pid, script_pid, wait_until_gone,
};
use serde_json::json;

#[tokio::test]
async fn a_python_run_script_completes_with_its_result_and_its_lance_dataset_is_listed() {
    let server = Server::start(&[("ingest.py", INGEST_PY, false)], &[]).await;
    let task = server
        .submit(&json!({"name": "ingest", "script": "ingest.py", "output": "numbers", "params": {"rows": 25}}))
        .await;
    let id = task["id"].as_str().expect("id");
    let done = server
        .wait_until(id, Duration::from_secs(90), |t| {
            t["status"] != "pending" && t["status"] != "running"
        })
        .await;
    assert_eq!(
        done["status"],
        "completed",
        "{done:#}\nlogs:\n{}",
        server.logs(id).await
    );
    assert_eq!(done["result"], json!({"total_records": 25, "task": id}));
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["backend"], "local");
    assert!(server.logs(id).await.contains("wrote 25 rows"));
    let datasets = server.get_json("/datasets").await;
    assert_eq!(datasets[0]["id"], "numbers");
    assert_eq!(datasets[0]["num_rows"], 25);
    assert_eq!(datasets[0]["schema"]["label"], "Int64");
    server.stop().await;
}

#[tokio::test]
async fn a_datasets_rows_are_paged_by_offset_and_column_through_the_api() {
    let server = Server::start(&[("ingest.py", INGEST_PY, false)], &[]).await;
    server
        .run_to_completion(
            &json!({"name": "ingest", "script": "ingest.py", "output": "numbers", "params": {"rows": 25}}),
            Duration::from_secs(90),
        )
        .await;
    let page = server
        .get_json("/datasets/numbers/rows?offset=20&limit=3")
        .await;
    assert_eq!(page["total_rows"], 25);
    assert_eq!(page["next_offset"], 23);
    assert_eq!(
        page["rows"],
        json!([{"index": 20, "label": 0}, {"index": 21, "label": 1}, {"index": 22, "label": 2}])
    );
    let last = server
        .get_json("/datasets/numbers/rows?offset=23&columns=label")
        .await;
    assert_eq!(last["rows"], json!([{"label": 3}, {"label": 4}]));
    assert_eq!(last["fields"][0]["name"], "label");
    assert!(
        last.get("next_offset").is_none(),
        "the last page says so: {last}"
    );
    for (query, code) in [
        ("limit=101", "INVALID_REQUEST"),
        ("columns=label,nope", "INVALID_REQUEST"),
        ("version=99", "INVALID_REQUEST"),
    ] {
        let refused = server
            .get_json(&format!("/datasets/numbers/rows?{query}"))
            .await;
        assert_eq!(refused["error"]["code"], code, "{query}: {refused}");
    }
    let absent = server.get_json("/datasets/absent/rows").await;
    assert_eq!(absent["error"]["code"], "DATASET_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn every_progress_report_is_kept_with_its_time_and_outlives_the_runner() {
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &[]).await;
    let done = server
        .run_to_completion(
            &json!({"name": "slow", "script": "slow.py", "params": {"steps": 12}}),
            Duration::from_secs(60),
        )
        .await;
    let id = done["id"].as_str().expect("id");
    let history = server.get_json(&format!("/tasks/{id}/progress")).await;
    assert_eq!(
        (history["attempt"].clone(), history["status"].clone()),
        (json!(1), json!("completed"))
    );
    assert_eq!(
        (history["reported"].clone(), history["dropped"].clone()),
        (json!(12), json!(0))
    );
    let points = history["points"].as_array().expect("points");
    let steps: Vec<u64> = points
        .iter()
        .map(|p| p["metrics"]["step"].as_u64().expect("a step"))
        .collect();
    assert_eq!(steps, (0..12).collect::<Vec<_>>(), "every report, in order");
    let times: Vec<chrono::DateTime<chrono::Utc>> = points
        .iter()
        .map(|p| p["at"].as_str().expect("at").parse().expect("a time"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        times[11] > times[0],
        "reports a second apart have different times"
    );
    assert_eq!(points[3]["message"], "step 3");
    let refused = server
        .get_json(&format!("/tasks/{id}/progress?attempt=2"))
        .await;
    assert_eq!(refused["error"]["code"], "INVALID_REQUEST");
    server.stop().await;
}

/// The value of one series in a Prometheus text page; `None` if it is not there.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a number"))
}

#[tokio::test]
async fn metrics_count_the_tasks_that_ran_by_tenant_and_status_behind_the_api_keys() {
    let keys = [("LANCER_API_KEYS", "key-for-ada=ada,key-for-bob=bob")];
    let scripts = [("slow.py", SLOW_PY, false), ("fail.py", FAIL_PY, false)];
    let server = Server::start(&scripts, &keys)
        .await
        .with_api_key("key-for-ada");
    let quick = json!({"name": "quick", "script": "slow.py", "params": {"steps": 1}});
    for _ in 0..2 {
        server
            .run_to_completion(&quick, Duration::from_secs(60))
            .await;
    }
    let failing = server
        .submit_for_id(&json!({"name": "fails", "script": "fail.py"}))
        .await;
    server
        .wait_finished(&failing, Duration::from_secs(60))
        .await;
    let server = server.with_api_key("key-for-bob");
    server
        .run_to_completion(&quick, Duration::from_secs(60))
        .await;
    let http = reqwest::Client::new();
    let scrape = |key: Option<&'static str>| {
        let request = http.get(format!("{}/metrics", server.url));
        let request = match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        async move { request.send().await.expect("scrape") }
    };
    assert_eq!(scrape(None).await.status(), 401, "metrics need a key");
    let text = scrape(Some("key-for-ada"))
        .await
        .text()
        .await
        .expect("text");
    let ada = |labels: &str| {
        series(
            &text,
            &format!("lancer_tasks{{tenant=\"ada\",status=\"{labels}\"}}"),
        )
    };
    assert_eq!(
        (
            ada("completed"),
            ada("failed"),
            ada("running"),
            ada("pending")
        ),
        (Some(2.0), Some(1.0), Some(0.0), Some(0.0)),
        "{text}"
    );
    assert!(
        !text.contains("tenant=\"bob\""),
        "ada sees none of bob's tasks:\n{text}"
    );
    let waits = series(
        &text,
        "lancer_task_queue_wait_seconds_count{tenant=\"ada\"}",
    );
    assert_eq!(waits, Some(3.0), "every task of ada's started once");
    let runs = series(
        &text,
        "lancer_task_run_seconds_count{tenant=\"ada\",status=\"completed\"}",
    );
    assert_eq!(runs, Some(2.0));
    assert!(
        !text.contains("lancer_http_request_duration_seconds")
            && !text.contains("lancer_uploads_total")
            && !text.contains("lancer_dispatch_duration_seconds"),
        "the process's own series count every tenant's traffic: not for one tenant's key\n{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn open_metrics_cover_every_tenant_without_a_key() {
    let env = [
        ("LANCER_API_KEYS", "key-for-ada=ada,key-for-bob=bob"),
        ("LANCER_METRICS_OPEN", "true"),
    ];
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &env)
        .await
        .with_api_key("key-for-bob");
    let quick = json!({"name": "quick", "script": "slow.py", "params": {"steps": 1}});
    server
        .run_to_completion(&quick, Duration::from_secs(60))
        .await;
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let bob = series(&text, "lancer_tasks{tenant=\"bob\",status=\"completed\"}");
    assert_eq!(bob, Some(1.0), "{text}");
    // The run time's buckets count up to +Inf, and the one run lands in the first bucket
    // whose bound is at least its time.
    let prefix = "lancer_task_run_seconds_bucket{tenant=\"bob\",status=\"completed\",le=\"";
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|line| {
            let (le, value) = line.strip_prefix(prefix)?.split_once("\"} ")?;
            Some((le.to_owned(), value.parse().expect("a number")))
        })
        .collect();
    assert_eq!(buckets.last(), Some(&("+Inf".to_owned(), 1.0)), "{text}");
    let seconds = series(
        &text,
        "lancer_task_run_seconds_sum{tenant=\"bob\",status=\"completed\"}",
    )
    .expect("a sum");
    for (le, count) in &buckets[..buckets.len() - 1] {
        let bound: f64 = le.parse().expect("a bound");
        let expected = if seconds <= bound { 1.0 } else { 0.0 };
        assert_eq!(*count, expected, "le {le} of a {seconds} s run:\n{text}");
    }
    let submits = series(
        &text,
        "lancer_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/tasks\",status=\"2xx\"}",
    );
    assert_eq!(
        submits,
        Some(1.0),
        "the process's own series, for the operator"
    );
    let dispatched = series(
        &text,
        "lancer_dispatch_duration_seconds_count{backend=\"local\",outcome=\"ok\"}",
    );
    assert_eq!(dispatched, Some(1.0));
    server.stop().await;
}

/// The `(event, data, id)` of each event in a server-sent event stream.
fn sse_events(body: &str) -> Vec<(String, String, Option<String>)> {
    body.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(|v| v.trim_start().to_owned())
            };
            Some((
                field("event")?,
                field("data").unwrap_or_default(),
                field("id"),
            ))
        })
        .collect()
}

#[tokio::test]
async fn a_tasks_event_stream_sends_its_changes_and_log_lines_until_it_ends_and_resumes_from_an_id()
{
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "slow", "script": "slow.py", "params": {"steps": 40}}))
        .await;
    let stream = |last_id: Option<String>| {
        let mut request = reqwest::Client::new().get(server.api(&format!("/tasks/{id}/events")));
        if let Some(last_id) = last_id {
            request = request.header("last-event-id", last_id);
        }
        async move {
            let response = request.send().await.expect("events");
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            let body = tokio::time::timeout(Duration::from_secs(60), response.text())
                .await
                .expect("the stream ends with the task")
                .expect("body");
            sse_events(&body)
        }
    };
    let events = stream(None).await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _, _)| kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"task"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"end"), "{kinds:?}");
    let statuses: Vec<String> = events
        .iter()
        .filter(|(kind, _, _)| kind == "task")
        .map(|(_, data, _)| {
            serde_json::from_str::<serde_json::Value>(data).expect("a task")["status"]
                .as_str()
                .expect("status")
                .to_owned()
        })
        .collect();
    assert!(
        statuses.contains(&"running".to_owned())
            && statuses.last().map(String::as_str) == Some("completed"),
        "{statuses:?}"
    );
    let logs: Vec<(serde_json::Value, Option<String>)> = events
        .iter()
        .filter(|(kind, _, _)| kind == "log")
        .map(|(_, data, id)| (serde_json::from_str(data).expect("a log event"), id.clone()))
        .collect();
    let text: String = logs
        .iter()
        .map(|(l, _)| l["text"].as_str().expect("text"))
        .collect();
    let expected: String = (0..40).map(|step| format!("step {step}\n")).collect();
    assert_eq!(text, expected, "every line once, in order");
    assert!(
        logs.len() > 1,
        "lines arrive as the script prints them: {logs:?}"
    );
    let (first, first_id) = &logs[0];
    let resumed = stream(first_id.clone()).await;
    let rest: String = resumed
        .iter()
        .filter(|(kind, _, _)| kind == "log")
        .map(|(_, data, _)| {
            serde_json::from_str::<serde_json::Value>(data).expect("log")["text"]
                .as_str()
                .expect("text")
                .to_owned()
        })
        .collect();
    let skipped = first["text"].as_str().expect("text");
    assert_eq!(
        format!("{skipped}{rest}"),
        expected,
        "resumed after the first log event"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_executable_following_the_contract_completes_with_its_result() {
    let server = Server::start(&[("contract.sh", CONTRACT_SH, true)], &[]).await;
    let task = server
        .submit(&json!({"name": "exec", "script": "contract.sh", "input": "raw/uploads/", "output": "out", "params": {"k": [1, 2]}}))
        .await;
    let id = task["id"].as_str().expect("id");
    let done = server.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(
        done["status"],
        "completed",
        "{done:#}\nlogs:\n{}",
        server.logs(id).await
    );
    assert_eq!(done["result"]["echo"], json!({"k": [1, 2]}));
    let lake = std::fs::canonicalize(server.lake()).expect("lake path");
    assert_eq!(
        done["result"]["output"],
        format!("{}/datasets/out.lance", lake.display())
    );
    assert_eq!(
        done["result"]["input"],
        format!("{}/raw/uploads", lake.display())
    );
    assert!(server.logs(id).await.contains("executable got params"));
    server.stop().await;
}

/// Prints what the contract gave it; exits with `params.exit`, leaving no result file.
const EDGES_SH: &str = r#"#!/usr/bin/env bash
set -uo pipefail
while [ $# -gt 0 ]; do
  case "$1" in
    --input) input=$2 ;; --output) output=$2 ;;
    --params-file) params=$2 ;; --result-file) result=$2 ;;
  esac
  shift 2
done
echo "input=[$input] output=[$output]"
echo "cwd $(pwd)"
echo "lake $LANCER_LAKE"
if grep -q '"exit": *3' "$params"; then
  echo "an earlier complaint" >&2
  echo "the last line says why" >&2
  exit 3
fi
"#;

#[tokio::test]
async fn the_run_contract_holds_at_its_edges() {
    let server = Server::start(&[("edges.sh", EDGES_SH, true)], &[]).await;
    let mut cwds = Vec::new();
    for _ in 0..2 {
        let done = server
            .run_to_completion(
                &json!({"name": "edges", "script": "edges.sh", "params": {"exit": 0}}),
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(done["result"], json!({}), "no result file means {{}}");
        let log = server.logs(done["id"].as_str().expect("id")).await;
        assert!(
            log.contains("input=[] output=[]"),
            "empty paths are passed as \"\": {log}"
        );
        let lake = std::fs::canonicalize(server.lake()).expect("lake");
        assert!(log.contains(&format!("lake {}\n", lake.display())), "{log}");
        let cwd = log
            .lines()
            .find_map(|line| line.strip_prefix("cwd "))
            .expect("the script said its cwd")
            .to_owned();
        assert!(
            !std::path::Path::new(&cwd).exists(),
            "the task's temp folder is removed after it: {cwd}"
        );
        cwds.push(cwd);
    }
    assert_ne!(cwds[0], cwds[1], "each task gets a fresh folder");
    let failed = server
        .submit_for_id(&json!({"name": "edges", "script": "edges.sh", "params": {"exit": 3}}))
        .await;
    let done = server.wait_finished(&failed, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    let message = done["error"]["message"].as_str().expect("message");
    assert!(message.contains("the last line says why"), "{message}");
    assert!(!message.contains("an earlier complaint"), "{message}");
    server.stop().await;
}

#[tokio::test]
async fn serve_flags_override_the_environment() {
    // The test server passes --host 127.0.0.1 --port 0 --db and --lake in its temp folder.
    let server = Server::start(
        &[("contract.sh", CONTRACT_SH, true)],
        &[
            ("LANCER_HOST", "not-an-address"),
            ("LANCER_PORT", "1"),
            ("LANCER_DB", "/proc/no-such-dir/lancer.db"),
            ("LANCER_LAKE", "/proc/no-such-dir/lake"),
        ],
    )
    .await;
    assert!(!server.url.ends_with(":1"), "--port 0 won: {}", server.url);
    let done = server
        .run_to_completion(
            &json!({"name": "flags", "script": "contract.sh", "output": "out"}),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert!(server.dir.path().join("lancer.db").exists(), "--db won");
    let lake = std::fs::canonicalize(server.lake()).expect("--lake won");
    assert!(
        done["result"]["output"]
            .as_str()
            .is_some_and(|out| out.starts_with(&lake.display().to_string())),
        "{done:#}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_script_failure_is_not_retried_even_with_attempts_left() {
    let server = Server::start(&[("fail.py", FAIL_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "fails", "script": "fail.py", "max_attempts": 3}))
        .await;
    let done = server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(
        (done["status"].as_str(), done["attempt"].as_u64()),
        (Some("failed"), Some(1))
    );
    // Once reconcile has looked at the whole table since, it is still the one attempt.
    server
        .wait_for_reconcile_rounds(2, Duration::from_secs(30))
        .await;
    let later = server.task(&id).await;
    assert_eq!(
        (later["status"].as_str(), later["attempt"].as_u64()),
        (Some("failed"), Some(1))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_failing_script_ends_failed_with_its_error() {
    let server = Server::start(&[("fail.py", FAIL_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "fails", "script": "fail.py", "params": {"x": 1}}))
        .await;
    let done = server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "SCRIPT_FAILED");
    let message = done["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("status 1") && message.contains("ValueError: bad params"),
        "{message}"
    );
    assert!(server.logs(&id).await.contains("about to fail"));
    server.stop().await;
}

#[tokio::test]
async fn progress_and_logs_show_while_running_and_cancel_stops_the_script() {
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "slow", "script": "slow.py"}))
        .await;
    let running = server
        .wait_until(&id, Duration::from_secs(60), |t| {
            t["status"] == "running" && t["progress"]["fraction"].as_f64().is_some_and(|f| f > 0.0)
        })
        .await;
    assert!(
        running["progress"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("step "))
    );
    assert!(running["progress"]["metrics"]["step"].as_u64().is_some());
    server
        .wait_for_log(&id, "step 1\n", Duration::from_secs(10))
        .await;
    assert!(runner_pid(&id).await.is_some(), "a runner works on it");
    let cancelled = server.post(&format!("/tasks/{id}/cancel")).await;
    assert_eq!(cancelled.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while runner_pid(&id).await.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the runner outlived the cancel"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let task = server.task(&id).await;
    assert_eq!(
        task["status"], "cancelled",
        "the script's exit never overwrites cancelled"
    );
    assert!(server.logs(&id).await.contains("[lancer] task stopped"));
    let again = server.post(&format!("/tasks/{id}/cancel")).await;
    assert_eq!(again.status(), 409);
    server.stop().await;
}

#[tokio::test]
async fn a_script_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let server = Server::start(&[("stubborn.py", STUBBORN_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "stubborn", "script": "stubborn.py"}))
        .await;
    let script = script_pid(&server, &id).await;
    let cancelled = server.post(&format!("/tasks/{id}/cancel")).await;
    assert_eq!(cancelled.status(), 200);
    // The test server's grace is 2 s: SIGTERM is ignored, so only SIGKILL ends it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(is_alive(script), "SIGTERM alone must not have stopped it");
    wait_until_gone(script, Duration::from_secs(15)).await;
    assert_eq!(server.task(&id).await["status"], "cancelled");
    // The runner itself escalated (as it must on Ray, where no local dispatcher stands
    // behind it) and closed the attempt's log; the dispatcher's backstop, killing the
    // whole group a little later, would have left no such line.
    server
        .wait_for_log(&id, "task stopped: ", Duration::from_secs(10))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_runner_killed_with_sigkill_takes_its_script_and_leaves_its_task_failed() {
    let server = Server::start(&[("stubborn.py", STUBBORN_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "doomed", "script": "stubborn.py"}))
        .await;
    let script = script_pid(&server, &id).await;
    let pid = runner_pid(&id).await.expect("runner pid");
    kill_9(pid);
    wait_until_gone(script, Duration::from_secs(10)).await;
    let done = server
        .wait_until(&id, Duration::from_secs(30), |t| t["status"] != "running")
        .await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], "LEASE_EXPIRED");
    let text = server.metrics().await;
    let missed = series(&text, "lancer_heartbeats_missed_total{outcome=\"failed\"}");
    assert_eq!(missed, Some(1.0), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn a_lost_runner_is_retried_while_attempts_remain() {
    let server = Server::start(&[("retry.py", FIRST_ATTEMPT_HANGS_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "retry", "script": "retry.py", "max_attempts": 2}))
        .await;
    server.wait_for_status(&id, "running").await;
    server
        .wait_for_log(&id, "attempt 1 starting", Duration::from_secs(30))
        .await;
    let pid = runner_pid(&id).await.expect("runner pid");
    kill_9(pid);
    let done = server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["result"], json!({"attempt": 2}));
    let text = server.metrics().await;
    let missed = series(
        &text,
        "lancer_heartbeats_missed_total{outcome=\"requeued\"}",
    );
    assert_eq!(missed, Some(1.0), "{text}");
    // Each attempt keeps its own log: the retry neither erased nor mixed with the first.
    let (latest, said) = server.attempt_logs(&id, 0).await;
    assert!(
        latest.contains("attempt 2 starting") && !latest.contains("attempt 1"),
        "{latest}"
    );
    assert_eq!(said, 2, "X-Attempt names the latest attempt");
    let (first, said) = server.attempt_logs(&id, 1).await;
    assert_eq!(said, 1, "X-Attempt names the attempt asked for");
    assert!(
        first.contains("attempt 1 starting") && !first.contains("attempt 2"),
        "{first}"
    );
    server.stop().await;
}

/// A service for the proxy's tests: `/echo` answers the size and Adler-32 of a body it
/// reads as it comes, `/first-part` says whether the first MiB of the body being echoed has
/// arrived, `/stream` sends one MiB and the other seven once `/release` is posted,
/// `/headers` shows what reached it and answers with hop-by-hop headers of its own, and
/// `/close` closes its socket while the task runs on.
const STREAM_PY: &str = r#"
import http.server, json, os, threading, time, zlib

MIB = 1 << 20
first_part = threading.Event()
release = threading.Event()

class Stream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, body, headers=()):
        self.send_response(200)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def pieces(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                yield self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            left = int(self.headers.get("content-length", 0))
            while left:
                piece = self.rfile.read(min(left, 65536))
                left -= len(piece)
                yield piece

    def do_POST(self):
        if self.path == "/echo":
            size, adler = 0, 1
            for piece in self.pieces():
                size, adler = size + len(piece), zlib.adler32(piece, adler)
                if size >= MIB:
                    first_part.set()
            self.reply(json.dumps({"bytes": size, "adler32": adler}).encode())
        elif self.path == "/release":
            release.set()
            self.reply(b"released")
        elif self.path == "/close":
            self.reply(b"closing")
            threading.Thread(target=server.shutdown).start()

    def do_GET(self):
        if self.path == "/first-part":
            self.reply(json.dumps(first_part.wait(30)).encode())
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("content-length", str(8 * MIB))
            self.end_headers()
            self.wfile.write(b"a" * MIB)
            if release.wait(30):
                for _ in range(7):
                    self.wfile.write(b"b" * MIB)
        elif self.path == "/headers":
            seen = {name.lower(): value for name, value in self.headers.items()}
            self.reply(json.dumps(seen).encode(), [("keep-alive", "timeout=5"),
                       ("proxy-connection", "keep-alive"), ("x-reply", "kept")])

def run(input_path, output_path, params):
    global server
    host = os.environ["LANCER_SERVE_HOST"]
    server = http.server.ThreadingHTTPServer((host, 0), Stream)
    url = f"http://{host}:{server.server_address[1]}"
    with open(os.environ["LANCER_PROGRESS_FILE"], "a") as progress:
        progress.write(json.dumps({"endpoint": url, "message": "serving"}) + "\n")
    server.serve_forever()
    server.server_close()
    while True:
        time.sleep(1)
"#;

const MIB: usize = 1 << 20;

/// zlib's Adler-32, as the service computes it.
fn adler32(parts: &[Vec<u8>]) -> u64 {
    let (mut a, mut b) = (1u64, 0u64);
    for byte in parts.iter().flatten() {
        a = (a + u64::from(*byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[tokio::test]
async fn the_endpoint_proxy_streams_bodies_both_ways_drops_hop_by_hop_headers_and_answers_502_once_the_service_is_down()
 {
    use futures::SinkExt;
    let server = Server::start(&[("stream.py", STREAM_PY, false)], &[]).await;
    let id = server
        .submit_for_id(&json!({"name": "streamer", "script": "stream.py"}))
        .await;
    server
        .wait_until(&id, Duration::from_secs(60), |t| t["endpoint"].is_string())
        .await;
    let base = server.api(&format!("/tasks/{id}/endpoint"));
    let http = reqwest::Client::new();

    // Upstream: the service holds the first MiB while the client has not sent the rest.
    let parts: Vec<Vec<u8>> = (0..8)
        .map(|n| (0..MIB).map(|i| ((i * 31 + n) % 251) as u8).collect())
        .collect();
    let (mut body, unsent) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let echo = tokio::spawn(
        http.post(format!("{base}/echo"))
            .body(reqwest::Body::wrap_stream(unsent))
            .send(),
    );
    body.send(Ok(parts[0].clone())).await.expect("send");
    let arrived = http
        .get(format!("{base}/first-part"))
        .send()
        .await
        .expect("ask");
    assert_eq!(
        arrived.text().await.expect("text"),
        "true",
        "the first MiB was passed on alone"
    );
    for part in &parts[1..] {
        body.send(Ok(part.clone())).await.expect("send");
    }
    drop(body);
    let echoed: serde_json::Value = echo
        .await
        .expect("join")
        .expect("echo")
        .json()
        .await
        .expect("json");
    assert_eq!(
        echoed,
        json!({"bytes": 8 * MIB, "adler32": adler32(&parts)})
    );

    // Downstream: the first MiB reaches the client while the service holds back the rest.
    let mut received = 0;
    let first_mib = tokio::time::timeout(Duration::from_secs(20), async {
        let mut stream = http
            .get(format!("{base}/stream"))
            .send()
            .await
            .expect("get");
        while received < MIB {
            received += stream.chunk().await.expect("chunk").expect("more").len();
        }
        stream
    });
    let mut stream = first_mib
        .await
        .expect("the first MiB came through while the service held back the rest");
    http.post(format!("{base}/release"))
        .send()
        .await
        .expect("release");
    while let Some(chunk) = stream.chunk().await.expect("chunk") {
        received += chunk.len();
    }
    assert_eq!(received, 8 * MIB);

    let answer = http
        .get(format!("{base}/headers"))
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("x-custom", "kept")
        .send()
        .await
        .expect("get");
    let replied = answer.headers().clone();
    let seen: serde_json::Value = answer.json().await.expect("json");
    for hop in ["keep-alive", "proxy-connection", "te", "trailer"] {
        assert!(seen.get(hop).is_none(), "{hop} went upstream: {seen}");
    }
    assert_eq!(seen["x-custom"], "kept");
    for hop in ["keep-alive", "proxy-connection"] {
        assert!(!replied.contains_key(hop), "{hop} came back: {replied:?}");
    }
    assert_eq!(replied["x-reply"], "kept");

    http.post(format!("{base}/close"))
        .send()
        .await
        .expect("close");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let down = loop {
        let answer = http
            .get(format!("{base}/headers"))
            .send()
            .await
            .expect("get");
        if answer.status() != 200 {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the socket never closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(down.status(), 502);
    let error: serde_json::Value = down.json().await.expect("json");
    assert_eq!(error["error"]["code"], "ENDPOINT_UNREACHABLE", "{error}");
    assert_eq!(
        server.task(&id).await["status"],
        "running",
        "the task runs on"
    );
    // A service outlives lancer serve's stop: end it here.
    server.post(&format!("/tasks/{id}/cancel")).await;
    server.stop().await;
}

#[tokio::test]
async fn a_serving_tasks_endpoint_listens_on_loopback_and_is_reached_through_the_api_with_its_tenants_key()
 {
    let keys = [("LANCER_API_KEYS", "key-for-ada=ada,key-for-bob=bob")];
    let server = Server::start(&[("serve.py", SERVE_PY, false)], &keys)
        .await
        .with_api_key("key-for-ada");
    let id = server
        .submit_for_id(&json!({"name": "hello-svc", "script": "serve.py"}))
        .await;
    let serving = server
        .wait_until(&id, Duration::from_secs(60), |t| t["endpoint"].is_string())
        .await;
    let endpoint = url::Url::parse(serving["endpoint"].as_str().expect("endpoint")).expect("a URL");
    assert_eq!(
        endpoint.host_str(),
        Some("127.0.0.1"),
        "loopback on the embedded level"
    );
    let base = server.api(&format!("/tasks/{id}/endpoint"));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let echoed: serde_json::Value = http
        .post(format!("{base}/echo/path?x=1"))
        .bearer_auth("key-for-ada")
        .body("ping")
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (&echoed["method"], &echoed["path"], &echoed["body"]),
        (&json!("POST"), &json!("/echo/path?x=1"), &json!("ping")),
        "{echoed}"
    );
    assert_eq!(
        echoed["authorization"],
        json!(null),
        "the key stays with lancer"
    );
    let by_cookie = http
        .get(format!("{base}/"))
        .header("cookie", "lancer_key=key-for-ada")
        .send()
        .await
        .expect("get");
    assert_eq!(by_cookie.status(), 200, "the console's cookie opens it too");
    let by_cookie: serde_json::Value = by_cookie.json().await.expect("json");
    assert_eq!(
        (&by_cookie["path"], &by_cookie["cookie"]),
        (&json!("/"), &json!(null))
    );
    let anonymous = http.get(format!("{base}/")).send().await.expect("get");
    assert_eq!(anonymous.status(), 401);
    let foreign = http
        .get(format!("{base}/"))
        .bearer_auth("key-for-bob")
        .send()
        .await
        .expect("get");
    assert_eq!(
        foreign.status(),
        404,
        "another tenant's endpoint does not exist for bob"
    );
    let bare = http
        .get(&base)
        .bearer_auth("key-for-ada")
        .send()
        .await
        .expect("get");
    assert_eq!(bare.status(), 308);
    assert!(
        bare.headers()["location"]
            .to_str()
            .is_ok_and(|l| l.ends_with("/endpoint/"))
    );
    assert_eq!(
        server.post(&format!("/tasks/{id}/cancel")).await.status(),
        200
    );
    let gone = http
        .get(format!("{base}/"))
        .bearer_auth("key-for-ada")
        .send()
        .await
        .expect("get");
    assert_eq!(gone.status(), 409, "a cancelled task serves nothing");
    server.stop().await;
}

#[tokio::test]
async fn a_serving_task_reports_its_endpoint_and_leaves_the_batch_slot_free() {
    let server = Server::start(
        &[("serve.py", SERVE_PY, false), ("slow.py", SLOW_PY, false)],
        &[],
    )
    .await;
    let service = server
        .submit_for_id(&json!({"name": "hello-svc", "script": "serve.py"}))
        .await;
    let serving = server
        .wait_until(&service, Duration::from_secs(60), |t| {
            t["endpoint"].is_string()
        })
        .await;
    let endpoint = serving["endpoint"].as_str().expect("endpoint");
    let hello: serde_json::Value = reqwest::get(endpoint)
        .await
        .expect("reach the service")
        .json()
        .await
        .expect("json");
    assert_eq!(hello["hello"], "lancer");
    // Concurrency is 1: this batch task runs only because the service gave its slot back.
    let batch = server
        .submit_for_id(&json!({"name": "beside", "script": "slow.py", "params": {"steps": 3}}))
        .await;
    let done = server.wait_finished(&batch, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(server.task(&service).await["status"], "running");
    assert_eq!(
        server
            .post(&format!("/tasks/{service}/cancel"))
            .await
            .status(),
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while reqwest::get(endpoint).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the service outlived its cancel"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ended = server.task(&service).await;
    assert_eq!(ended["status"], "cancelled");
    assert_eq!(
        ended["endpoint"],
        serde_json::Value::Null,
        "a stopped service has no endpoint"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_cli_submits_waits_lists_and_reads_logs() {
    let server = Server::start(&[("ingest.py", INGEST_PY, false)], &[]).await;
    let lancer = |args: &[&str]| server.cli(None, args);
    let (ok, stdout, stderr) = lancer(&[
        "tasks",
        "submit",
        "--name",
        "cli-ingest",
        "--script",
        "ingest.py",
        "--output",
        "cli_numbers",
        "--param",
        "rows=7",
        "--wait",
    ]);
    assert!(ok, "submit --wait failed: {stdout}\n{stderr}");
    assert!(stdout.contains("\"total_records\": 7"), "{stdout}");
    let (ok, stdout, _) = lancer(&["datasets", "list"]);
    assert!(
        ok && stdout.contains("cli_numbers") && stdout.contains(" 7 "),
        "{stdout}"
    );
    let (ok, stdout, _) = lancer(&["tasks", "list", "--status", "completed"]);
    assert!(
        ok && stdout.contains("cli-ingest") && stdout.contains("completed"),
        "{stdout}"
    );
    let id = stdout
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().next())
        .expect("a task row")
        .to_owned();
    let (ok, stdout, _) = lancer(&["tasks", "logs", &id]);
    assert!(ok && stdout.contains("wrote 7 rows"), "{stdout}");
    let (ok, _, stderr) = lancer(&["tasks", "get", "no-such-task"]);
    assert!(!ok && stderr.contains("TASK_NOT_FOUND"), "{stderr}");
    let (ok, _, stderr) = lancer(&["tasks", "submit", "--name", "x", "--script", "../escape.py"]);
    assert!(!ok && stderr.contains("INVALID_REQUEST"), "{stderr}");
    server.stop().await;
}

const CHATTY_PY: &str = r#"
def run(input_path, output_path, params):
    for n in range(params["lines"]):
        print(f"line {n:06d} " + "." * 500)
    return {}
"#;

#[tokio::test]
async fn a_log_of_megabytes_is_served_in_chunks_and_read_back_whole_by_the_cli() {
    let server = Server::start(&[("chatty.py", CHATTY_PY, false)], &[]).await;
    let done = server
        .run_to_completion(
            &json!({"name": "chatty", "script": "chatty.py", "params": {"lines": 5000}}),
            Duration::from_secs(90),
        )
        .await;
    let id = done["id"].as_str().expect("id");
    let first = server.logs(id).await;
    // Lines are 508 bytes: the default chunk is the whole lines that fit in 1 MiB.
    assert!(
        first.len() <= 1 << 20 && first.len() > (1 << 20) - 508 && first.ends_with('\n'),
        "one call answers the whole lines within 1 MiB, not {} bytes",
        first.len()
    );
    let (ok, stdout, stderr) = server.cli(None, &["tasks", "logs", id]);
    assert!(ok, "{stderr}");
    let dots = ".".repeat(500);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5000);
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("line {n:06} {dots}"));
    }
    server.stop().await;
}

/// How many of `ids` are running, and how many pending.
async fn running_and_pending(server: &Server, ids: &[String]) -> (usize, usize) {
    let mut counts = (0, 0);
    for id in ids {
        match server.task(id).await["status"].as_str() {
            Some("running") => counts.0 += 1,
            Some("pending") => counts.1 += 1,
            _ => {}
        }
    }
    counts
}

#[tokio::test]
async fn lancer_concurrency_runs_that_many_batch_tasks_and_the_next_one_waits() {
    for slots in [1, 2] {
        let server = Server::start(
            &[("slow.py", SLOW_PY, false)],
            &[("LANCER_CONCURRENCY", &slots.to_string())],
        )
        .await;
        let mut ids = Vec::new();
        for _ in 0..=slots {
            let spec = json!({"name": "slot", "script": "slow.py", "params": {"steps": 600}});
            ids.push(server.submit_for_id(&spec).await);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (running, _) = running_and_pending(&server, &ids).await;
            assert!(running <= slots, "{running} ran with {slots} slots");
            if running == slots {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{slots} never ran");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for _ in 0..10 {
            assert_eq!(
                running_and_pending(&server, &ids).await,
                (slots, 1),
                "with {slots} slots, {slots} run and the next waits"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for id in &ids {
            server.post(&format!("/tasks/{id}/cancel")).await;
            server.wait_finished(id, Duration::from_secs(30)).await;
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn pending_and_running_tasks_are_picked_up_after_the_server_crashes() {
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &[]).await;
    let running = server
        .submit_for_id(&json!({"name": "first", "script": "slow.py", "params": {"steps": 40}}))
        .await;
    let waiting = server
        .submit_for_id(&json!({"name": "second", "script": "slow.py", "params": {"steps": 5}}))
        .await;
    server.wait_for_status(&running, "running").await;
    assert_eq!(server.task(&waiting).await["status"], "pending");
    let runner = runner_pid(&running).await.expect("a runner works on it");

    let server = server.crash_and_restart().await;
    assert!(is_alive(runner), "the runner outlives the server");
    for (id, steps) in [(&running, 40), (&waiting, 5)] {
        let done = server.wait_finished(id, Duration::from_secs(90)).await;
        assert_eq!(done["status"], "completed", "{done:#}");
        assert_eq!(done["result"], json!({"steps": steps}));
        assert_eq!(done["attempt"], 1, "the running task was not run again");
    }
    server.stop().await;
}

/// Saves a one-row model version the way the MNIST trainer does: metrics and params as JSON.
const MODEL_PY: &str = r#"
import json, os
import lance
import pyarrow as pa

def run(input_path, output_path, params):
    table = pa.table({
        "weights": [b"\x00\x01"],
        "metrics": [json.dumps({"accuracy": params["accuracy"]})],
        "params": [json.dumps(params)],
        "created_at": ["2026-12-01T00:00:00Z"],
    })
    options = json.loads(os.environ["LANCER_STORAGE_OPTIONS"]) or None
    lance.write_dataset(table, output_path, mode="append", storage_options=options)
    return {}
"#;

/// Polls `lancer tasks get` until the task's status is `status`.
async fn cli_wait_for(lancer: impl Fn(&[&str]) -> (bool, String, String), id: &str, status: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, stdout, _) = lancer(&["tasks", "get", id]);
        let task: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
        if task["status"] == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {status}: {stdout}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The id of the task a `tasks submit` printed.
fn submitted_id(stdout: &str) -> String {
    let task: serde_json::Value = serde_json::from_str(stdout).expect("submit prints the task");
    task["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn the_cli_with_an_api_key_follows_a_log_cancels_a_task_and_gets_a_model() {
    let server = Server::start(
        &[("slow.py", SLOW_PY, false), ("model.py", MODEL_PY, false)],
        &[("LANCER_API_KEYS", "cli-key-for-acme=acme")],
    )
    .await;
    let lancer = |args: &[&str]| server.cli(Some("cli-key-for-acme"), args);
    let (ok, _, stderr) = server.cli(Some("a-wrong-key"), &["tasks", "list"]);
    assert!(!ok && stderr.contains("UNAUTHORIZED"), "{stderr}");

    let (ok, stdout, stderr) = lancer(&[
        "tasks", "submit", "--name", "f", "--script", "slow.py", "--param", "steps=12",
    ]);
    assert!(ok, "{stderr}");
    let followed = submitted_id(&stdout);
    let (ok, stdout, stderr) = lancer(&["tasks", "logs", "-f", &followed]);
    assert!(ok, "{stderr}");
    let steps: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    let expected: Vec<String> = (0..12).map(|n| format!("step {n}")).collect();
    assert_eq!(
        steps, expected,
        "-f prints the whole log, once, until the end"
    );
    let (_, stdout, _) = lancer(&["tasks", "get", &followed]);
    assert!(
        stdout.contains("\"completed\""),
        "-f returns once the task ended: {stdout}"
    );

    let (ok, stdout, _) = lancer(&["tasks", "submit", "--name", "c", "--script", "slow.py"]);
    assert!(ok);
    let cancelled = submitted_id(&stdout);
    cli_wait_for(lancer, &cancelled, "running").await;
    let (ok, stdout, stderr) = lancer(&["tasks", "cancel", &cancelled]);
    assert!(ok && stdout.contains(&cancelled), "{stdout}{stderr}");
    cli_wait_for(lancer, &cancelled, "cancelled").await;

    for accuracy in ["0.91", "0.97"] {
        let param = format!("accuracy={accuracy}");
        let (ok, _, stderr) = lancer(&[
            "tasks",
            "submit",
            "--name",
            "m",
            "--script",
            "model.py",
            "--output",
            "models/digits",
            "--param",
            &param,
            "--wait",
        ]);
        assert!(ok, "{stderr}");
    }
    let (ok, stdout, stderr) = lancer(&["models", "get", "digits"]);
    assert!(ok, "{stderr}");
    let model: serde_json::Value = serde_json::from_str(&stdout).expect("models get prints json");
    assert_eq!(model["id"], "digits");
    assert_eq!(
        model["model"]["metrics"],
        json!({"accuracy": 0.97}),
        "{model:#}"
    );
    assert_eq!(model["versions"].as_array().map(Vec::len), Some(2));
    let (ok, stdout, _) = lancer(&["models", "list"]);
    assert!(ok && stdout.contains("digits"), "{stdout}");
    server.stop().await;
}

#[tokio::test]
async fn keys_are_read_from_lancer_api_keys_file_and_tasks_run_through_lancer_runner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("api-keys");
    std::fs::write(&keys, "file-key-for-acme=acme\nfile-key-for-beta=beta\n").expect("keys");
    let calls = dir.path().join("runner-calls");
    let runner = dir.path().join("wrapped-runner");
    let wrapper = format!(
        "#!/bin/sh\necho \"$1\" >> '{}'\nexec '{}' \"$@\"\n",
        calls.display(),
        bin_dir().join("lancer-runner").display()
    );
    std::fs::write(&runner, wrapper).expect("runner");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let env = [
        ("LANCER_API_KEYS_FILE", keys.to_str().expect("utf-8")),
        ("LANCER_RUNNER", runner.to_str().expect("utf-8")),
    ];
    let server = Server::start(&[("contract.sh", CONTRACT_SH, true)], &env).await;
    let unkeyed = reqwest::get(server.api("/tasks")).await.expect("get");
    assert_eq!(unkeyed.status(), 401, "the file's keys are required");

    let server = server.with_api_key("file-key-for-beta");
    let done = server
        .run_to_completion(
            &json!({"name": "wrapped", "script": "contract.sh", "params": {"k": 1}}),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(done["tenant"], "beta", "the key's tenant from the file");
    let called = std::fs::read_to_string(&calls).expect("LANCER_RUNNER was started");
    assert_eq!(called.trim(), done["id"].as_str().expect("id"));
    server.stop().await;
}

/// Reads back the upload it was given: a folder of files, or one file.
const LIST_PY: &str = r#"
import os

def run(input_path, output_path, params):
    if os.path.isdir(input_path):
        paths = [os.path.join(input_path, name) for name in os.listdir(input_path)]
    else:
        paths = [input_path]
    return {"files": {os.path.basename(p): open(p).read() for p in paths}}
"#;

#[tokio::test]
async fn an_upload_through_lancer_serve_becomes_a_task_that_runs() {
    let rules = json!([
        {"name": "pair", "prefix": "raw/pair/", "script": "list.py", "output": "pairs",
         "require": ["left.csv", "right.csv"]},
        {"name": "any", "prefix": "raw/any/", "script": "list.py", "output": "anything"}
    ]);
    let server = Server::start(
        &[("list.py", LIST_PY, false)],
        &[("LANCER_INGEST_RULES", &rules.to_string())],
    )
    .await;
    let http = reqwest::Client::new();
    let upload = |key: &str, body: &'static str| {
        let request = http.put(server.api(&format!("/uploads/{key}"))).body(body);
        async move {
            let answer = request.send().await.expect("upload");
            assert_eq!(answer.status(), 201, "upload");
            answer.json::<serde_json::Value>().await.expect("json")
        }
    };
    let first = upload("pair/left.csv", "a\n1\n").await;
    assert!(
        first["task"].is_null(),
        "half an upload starts nothing: {first}"
    );
    let second = upload("pair/right.csv", "b\n2\n").await;
    let id = second["task"]["id"]
        .as_str()
        .expect("the upload's task")
        .to_owned();
    let done = server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(
        done["result"]["files"],
        json!({"left.csv": "a\n1\n", "right.csv": "b\n2\n"})
    );

    let alone = upload("any/one.csv", "c\n3\n").await;
    let id = alone["task"]["id"]
        .as_str()
        .expect("a task without require");
    let done = server.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["result"]["files"], json!({"one.csv": "c\n3\n"}));
    let text = server.metrics().await;
    let counted = [
        "lancer_uploads_total",
        "lancer_upload_bytes_total",
        "lancer_ingestions_total{started=\"task\"}",
    ]
    .map(|name| series(&text, name));
    assert_eq!(
        counted,
        [Some(3.0), Some(12.0), Some(2.0)],
        "three uploads of 4 bytes; the half upload started nothing:\n{text}"
    );
    server.stop().await;
}

/// When the task record says it started or finished.
fn time_of(task: &serde_json::Value, field: &str) -> chrono::DateTime<chrono::Utc> {
    task[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}: {task:#}"))
        .parse()
        .expect("an RFC 3339 time")
}

#[tokio::test]
async fn a_tenant_runs_no_more_tasks_at_once_than_its_share_while_another_tenant_runs_beside() {
    let env = [
        ("LANCER_API_KEYS", "key-for-ada=ada,key-for-bob=bob"),
        ("LANCER_CONCURRENCY", "3"),
        ("LANCER_TENANT_CONCURRENCY", "1"),
    ];
    let server = Server::start(&[("slow.py", SLOW_PY, false)], &env)
        .await
        .with_api_key("key-for-ada");
    let slow = json!({"name": "slow", "script": "slow.py", "params": {"steps": 20}});
    let first = server.submit_for_id(&slow).await;
    let second = server.submit_for_id(&slow).await;
    let bob = reqwest::Client::new();
    let theirs: serde_json::Value = bob
        .post(server.api("/tasks"))
        .bearer_auth("key-for-bob")
        .json(&slow)
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let within = Duration::from_secs(60);
    let first = server.wait_finished(&first, within).await;
    let second = server.wait_finished(&second, within).await;
    let deadline = std::time::Instant::now() + within;
    let theirs = loop {
        let task: serde_json::Value = bob
            .get(server.api(&format!("/tasks/{}", theirs["id"].as_str().expect("id"))))
            .bearer_auth("key-for-bob")
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if task["status"] == "completed" {
            break task;
        }
        assert!(std::time::Instant::now() < deadline, "{task:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        time_of(&second, "started_at") >= time_of(&first, "finished_at"),
        "ada's second task waited for her first, though slots were free:\n{first:#}\n{second:#}"
    );
    assert!(
        time_of(&theirs, "started_at") < time_of(&first, "finished_at"),
        "bob's task ran beside ada's:\n{first:#}\n{theirs:#}"
    );
    server.stop().await;
}

#[tokio::test]
async fn services_past_a_tenants_share_keep_their_batch_slot_and_those_within_it_give_it_back() {
    let env = [("LANCER_CONCURRENCY", "1"), ("LANCER_TENANT_SERVICES", "1")];
    let scripts = [("serve.py", SERVE_PY, false), ("slow.py", SLOW_PY, false)];
    let server = Server::start(&scripts, &env).await;
    let within = Duration::from_secs(60);
    let service = json!({"name": "svc", "script": "serve.py"});
    let quick = json!({"name": "quick", "script": "slow.py", "params": {"steps": 1}});
    let first = server.submit_for_id(&service).await;
    server
        .wait_until(&first, within, |t| t["endpoint"].is_string())
        .await;
    server.run_to_completion(&quick, within).await;
    let second = server.submit_for_id(&service).await;
    server
        .wait_until(&second, within, |t| t["endpoint"].is_string())
        .await;
    let waiting = server.submit_for_id(&quick).await;
    // Two rounds of reconcile hand a pending task to the dispatcher again: it still waits.
    server
        .wait_for_reconcile_rounds(2, Duration::from_secs(30))
        .await;
    assert_eq!(server.task(&waiting).await["status"], "pending");
    let cancelled = server.post(&format!("/tasks/{second}/cancel")).await;
    assert_eq!(cancelled.status(), 200);
    let ran = server.wait_finished(&waiting, within).await;
    assert_eq!(ran["status"], "completed", "{ran:#}");
    let second = server.wait_finished(&second, within).await;
    assert!(time_of(&ran, "started_at") >= time_of(&second, "finished_at"));
    server.post(&format!("/tasks/{first}/cancel")).await;
    server.stop().await;
}
