//! Ray's placement by CPUs, in a test binary of its own: cargo runs test binaries one after
//! another, so no other test's job shares the head while this one counts what runs at once.

use std::time::Duration;

use lancer_tests::ray::{head_cpus, ray_address, ray_server, wait_for_an_idle_head};
use serde_json::json;

/// Records when it ran, so overlapping tasks can be counted.
const WINDOW_PY: &str = r#"
import time

def run(input_path, output_path, params):
    start = time.time()
    time.sleep(params["seconds"])
    return {"start": start, "end": time.time()}
"#;

/// The most windows open at any one moment.
fn most_at_once(windows: &[(f64, f64)]) -> usize {
    windows
        .iter()
        .map(|(start, _)| {
            windows
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn tasks_of_one_cpu_each_run_as_many_at_once_as_the_head_has_cpus_and_no_more() {
    wait_for_an_idle_head().await;
    let server = ray_server(&[("window.py", WINDOW_PY, false)], &ray_address()).await;
    let cpus = head_cpus().await;
    let mut ids = Vec::new();
    for n in 0..cpus + 2 {
        let spec = json!({"name": format!("window-{n}"), "script": "window.py",
                          "params": {"seconds": 6}, "resources": {"cpus": 1}});
        ids.push(server.submit_for_id(&spec).await);
    }
    let mut windows = Vec::new();
    for id in &ids {
        let done = server.wait_finished(id, Duration::from_secs(240)).await;
        assert_eq!(done["status"], "completed", "{done:#}");
        let result = &done["result"];
        windows.push((
            result["start"].as_f64().expect("start"),
            result["end"].as_f64().expect("end"),
        ));
    }
    assert_eq!(
        most_at_once(&windows),
        cpus,
        "on {cpus} CPUs, with the head to themselves: {windows:?}"
    );
    server.stop().await;
}
