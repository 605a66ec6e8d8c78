//! The MNIST reference workload as platform tasks, through a real `lancer serve` whose
//! scripts folder is this repository: fetch -> clean -> features -> train -> serve -> browser.

use std::path::Path;
use std::time::Duration;

use lancer_tests::mnist::{
    MNIST_FILES, check_pipeline_run, fetch_data, pipeline_when_done, quick_mnist_pipeline,
};
use lancer_tests::server::{Server, bin_dir, browse, repo_root};
use mnist::idx::{ImageReader, PIXELS, read_labels};
use serde_json::{Value, json};

/// The first `n` held-out digits and their labels, straight from the IDX files.
fn test_digits(lake: &Path, n: usize) -> (Vec<Vec<f32>>, Vec<u8>) {
    let raw = lake.join("raw/mnist");
    let mut reader = ImageReader::open(&raw.join("t10k-images-idx3-ubyte.gz")).expect("images");
    let mut bytes = Vec::new();
    reader.read_chunk(n, &mut bytes).expect("read");
    let images = bytes
        .chunks(PIXELS)
        .map(|image| image.iter().map(|&p| f32::from(p) / 255.0).collect())
        .collect();
    let labels = read_labels(&raw.join("t10k-labels-idx1-ubyte.gz")).expect("labels");
    (images, labels[..n].to_vec())
}

#[tokio::test]
async fn the_mnist_jobs_clean_enrich_train_and_serve_as_platform_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bins = bin_dir();
    let script_env = json!({ "LANCER_MNIST_BIN": bins }).to_string();
    let server = Server::start_in(dir, &repo_root(), &[("LANCER_SCRIPT_ENV", &script_env)]).await;
    fetch_data(&server.lake());

    let clean = server
        .run_to_completion(
            &json!({"name": "mnist-clean", "script": "mnist/bin/mnist-clean", "input": "raw/mnist/",
                    "output": "mnist_clean", "params": {"normalize": true, "flatten": true}}),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(
        clean["result"],
        json!({"total_records": 10000, "train": 8600, "test": 1400, "dropped": 0})
    );
    let dataset = server.get_json("/datasets/mnist_clean").await;
    assert_eq!(dataset["num_rows"], 10000);
    assert_eq!(
        dataset["fields"]
            .as_array()
            .map(|f| f.iter().map(|f| f["name"].clone()).collect::<Vec<_>>()),
        Some(vec![
            json!("index"),
            json!("image"),
            json!("label"),
            json!("split")
        ])
    );
    assert!(
        dataset["schema"]["image"]
            .as_str()
            .is_some_and(|t| t.contains("784") && t.contains("Float32")),
        "{dataset}"
    );
    let version_before = dataset["version"].as_u64().expect("version");

    let features = server
        .run_to_completion(
            &json!({"name": "mnist-features", "script": "mnist/python/mnist_features.py", "input": "mnist_clean"}),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(features["result"]["rows"], 10000);
    let enriched = server.get_json("/datasets/mnist_clean").await;
    for column in [
        "ink_mass",
        "bbox_top",
        "bbox_left",
        "bbox_bottom",
        "bbox_right",
    ] {
        assert!(
            enriched["schema"][column].is_string(),
            "{column} added: {enriched}"
        );
    }
    assert_eq!(enriched["num_rows"], 10000);
    assert!(
        enriched["version"].as_u64().expect("version") > version_before,
        "a new version, same rows"
    );

    let train = server
        .run_to_completion(
            &json!({"name": "mnist-train", "script": "mnist/bin/mnist-train", "input": "mnist_clean",
                    "output": "models/mnist_cnn", "params": {"epochs": 1, "seed": 7}}),
            Duration::from_secs(600),
        )
        .await;
    let accuracy = train["result"]["accuracy"].as_f64().expect("accuracy");
    assert!(
        accuracy > 0.9,
        "one epoch already reads most digits: {accuracy}"
    );
    assert_eq!(train["progress"]["metrics"]["epoch"], 1);
    let model = server.get_json("/models/mnist_cnn").await;
    assert_eq!(
        model["model"]["metrics"]["accuracy"].as_f64(),
        Some(accuracy)
    );
    assert_eq!(model["model"]["params"]["seed"], 7);
    assert_eq!(
        model["model"]["metrics"]["history"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    let serve = server
        .submit(&json!({"name": "mnist-serve", "script": "mnist/bin/mnist-serve", "input": "mnist_cnn", "params": {"port": 0}}))
        .await;
    let serve_id = serve["id"].as_str().expect("id").to_owned();
    let serving = server
        .wait_until(&serve_id, Duration::from_secs(60), |t| {
            t["endpoint"].is_string()
        })
        .await;
    let endpoint = serving["endpoint"].as_str().expect("endpoint").to_owned();
    let http = reqwest::Client::new();

    let (images, labels) = test_digits(&server.lake(), 200);
    let single = predict(&http, &endpoint, json!({"image": images[0]})).await;
    assert_eq!(single["probabilities"].as_array().map(Vec::len), Some(10));
    assert!(
        single["confidence"]
            .as_f64()
            .is_some_and(|c| c > 0.0 && c <= 1.0)
    );
    let batch = predict(&http, &endpoint, json!({"images": images})).await;
    let answers = batch.as_array().expect("one answer per image");
    assert_eq!(answers.len(), 200);
    assert_eq!(answers[0]["prediction"], single["prediction"]);
    let correct = answers
        .iter()
        .zip(&labels)
        .filter(|(a, l)| a["prediction"] == u64::from(**l))
        .count();
    assert!(
        correct >= 180,
        "the served model reads held-out digits: {correct}/200"
    );
    let bad = http
        .post(format!("{endpoint}/predict"))
        .json(&json!({"image": [0.5, 0.5]}))
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 400);
    let page = http
        .get(format!("{endpoint}/"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(page.contains("<canvas id=\"pad\""));

    // The drawing page, and its /predict, through the API's endpoint proxy.
    let proxied = server.api(&format!("/tasks/{serve_id}/endpoint"));
    draw_in_a_real_browser(&http, &proxied, &endpoint).await;
    let seen = console_sees(&server.url, "mnist_clean", "mnist_cnn", &serve_id);
    assert_eq!(seen["pictures"], 20, "a page of digits: {seen}");
    assert_eq!(seen["inked"], 20, "every digit drawn with ink: {seen}");
    assert_eq!(seen["savedVersions"], 1, "{seen}");
    assert_eq!(seen["accuracyShown"], 1, "{seen}");
    assert_eq!(
        seen["endpointHref"],
        format!("/api/v1/tasks/{serve_id}/endpoint/"),
        "{seen}"
    );

    assert_eq!(
        server
            .post(&format!("/tasks/{serve_id}/cancel"))
            .await
            .status(),
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while http.get(format!("{endpoint}/healthz")).send().await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "mnist-serve outlived its cancel"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

/// Headless Chromium draws a 7 on the page. The page must send the 7 it was drawn (ink on
/// black, MNIST's 20-pixel box centred by mass, the bar on top and the stroke ending at the
/// bottom left), show the server's answer, and that answer must be 7, as an independent
/// `/predict` of the same values says too.
async fn draw_in_a_real_browser(http: &reqwest::Client, proxied: &str, endpoint: &str) {
    let screenshot = std::env::temp_dir().join("lancer-mnist-page.png");
    let page = format!("{proxied}/");
    let shown = browse("draw-digit.mjs", &[page.as_ref(), screenshot.as_ref()]);
    let image: Vec<f64> = serde_json::from_value(shown["image"].clone()).expect("784 values");
    assert_a_drawn_seven(&image);
    let independent = predict(http, endpoint, json!({"image": image})).await;
    assert_eq!(
        independent["prediction"], shown["prediction"],
        "{independent}"
    );
    assert_eq!(
        shown["prediction"], 7,
        "the drawn 7 is read as 7: {independent}"
    );
}

/// What the console shows of the MNIST lake and the serving task (`console.mjs mnist`),
/// with screenshots in `<target>/tmp/console-screenshots`.
fn console_sees(url: &str, dataset: &str, model: &str, serve_task: &str) -> Value {
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let args: [&std::ffi::OsStr; 6] = [
        "mnist".as_ref(),
        url.as_ref(),
        shots.as_ref(),
        dataset.as_ref(),
        model.as_ref(),
        serve_task.as_ref(),
    ];
    browse("console.mjs", &args)
}

/// `/predict`'s answer to a body it accepts.
async fn predict(http: &reqwest::Client, endpoint: &str, body: Value) -> Value {
    http.post(format!("{endpoint}/predict"))
        .json(&body)
        .send()
        .await
        .expect("predict")
        .json()
        .await
        .expect("json")
}

/// The 28x28 image a drawn 7 must become.
fn assert_a_drawn_seven(image: &[f64]) {
    assert_eq!(image.len(), 784);
    let ink = |x: usize, y: usize| image[y * 28 + x] > 0.3;
    let inked: Vec<(usize, usize)> = (0..28)
        .flat_map(|y| (0..28).map(move |x| (x, y)))
        .filter(|&(x, y)| ink(x, y))
        .collect();
    let shown = || {
        (0..28)
            .map(|y| {
                (0..28)
                    .map(|x| if ink(x, y) { '#' } else { '.' })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        (40..=300).contains(&inked.len()),
        "strokes, not a blank or inverted image:\n{}",
        shown()
    );
    let (xs, ys): (Vec<usize>, Vec<usize>) = inked.iter().copied().unzip();
    let (left, right) = (
        *xs.iter().min().unwrap_or(&0),
        *xs.iter().max().unwrap_or(&0),
    );
    let (top, bottom) = (
        *ys.iter().min().unwrap_or(&0),
        *ys.iter().max().unwrap_or(&0),
    );
    assert!(
        (18..=22).contains(&(bottom - top + 1)),
        "the taller side is scaled to 20 px:\n{}",
        shown()
    );
    let centre = |values: &[usize]| values.iter().sum::<usize>() as f64 / values.len() as f64;
    assert!(
        (centre(&xs) - 13.5).abs() < 3.0 && (centre(&ys) - 13.5).abs() < 3.0,
        "centred by mass:\n{}",
        shown()
    );
    let width = right - left + 1;
    let bar = (left..=right)
        .filter(|&x| ink(x, top) || ink(x, top + 1))
        .count();
    assert!(bar * 3 >= width * 2, "a bar along the top:\n{}", shown());
    let foot = (left..=right)
        .filter(|&x| ink(x, bottom))
        .collect::<Vec<_>>();
    assert!(
        centre(&foot) < (left + right) as f64 / 2.0,
        "the stroke ends at the bottom left:\n{}",
        shown()
    );
}

#[tokio::test]
async fn uploading_the_mnist_files_runs_the_pipeline_to_an_endpoint_and_the_model_names_its_data() {
    let rules = json!([{"name": "mnist", "prefix": "raw/mnist/", "require": MNIST_FILES,
                        "pipeline": quick_mnist_pipeline()}]);
    let script_env = json!({ "LANCER_MNIST_BIN": bin_dir() }).to_string();
    let env = [
        ("LANCER_SCRIPT_ENV", script_env.as_str()),
        ("LANCER_INGEST_RULES", &rules.to_string()),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_in(dir, &repo_root(), &env).await;
    let source = tempfile::tempdir().expect("tempdir");
    fetch_data(source.path());
    let http = reqwest::Client::new();
    let mut answer = Value::Null;
    for file in MNIST_FILES {
        let body = std::fs::read(source.path().join("raw/mnist").join(file)).expect("read");
        let put = http
            .put(server.api(&format!("/uploads/mnist/{file}")))
            .body(body);
        answer = put
            .send()
            .await
            .expect("upload")
            .json()
            .await
            .expect("json");
    }
    let id = answer["pipeline"]["id"]
        .as_str()
        .expect("the last file started the pipeline")
        .to_owned();
    let pipeline = check_pipeline_run(&server, &id).await;
    let step = |name: &str| {
        pipeline["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .expect("step")
    };
    let mut cached = quick_mnist_pipeline();
    cached["cache"] = json!(true);
    let started = std::time::Instant::now();
    let again: Value = http
        .post(server.api("/pipelines"))
        .json(&cached)
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let again = pipeline_when_done(&server, again["id"].as_str().expect("id")).await;
    assert_eq!(again["status"], "completed", "{again:#}");
    let again_step = |name: &str| {
        again["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .expect("step")
    };
    for name in ["mnist-clean", "mnist-train", "mnist-features"] {
        assert_eq!(
            again_step(name)["cached_from"],
            step(name)["task_id"],
            "{name} came from the cache"
        );
    }
    let serve = again_step("mnist-serve");
    assert!(
        serve["cached_from"].is_null() && serve["task_id"] != step("mnist-serve")["task_id"],
        "a service is started again, never taken from the cache: {serve:#}"
    );
    eprintln!(
        "the cached MNIST pipeline was serving after {:?}",
        started.elapsed()
    );
    for id in [&id, again["id"].as_str().expect("id")] {
        server.post(&format!("/pipelines/{id}/cancel")).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_training_runner_killed_mid_run_resumes_after_its_last_epoch_with_the_same_weights() {
    use lancer_tests::server::{kill_9, runner_pid};
    let script_env = json!({ "LANCER_MNIST_BIN": bin_dir() }).to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_in(dir, &repo_root(), &[("LANCER_SCRIPT_ENV", &script_env)]).await;
    fetch_data(&server.lake());
    let within = Duration::from_secs(300);
    let clean = json!({"name": "clean", "script": "mnist/bin/mnist-clean", "input": "raw/mnist/",
                       "output": "mnist_clean", "params": {"normalize": true, "flatten": true}});
    server.run_to_completion(&clean, within).await;
    let fit = |output: &str, attempts: u32| {
        json!({"name": "fit", "script": "mnist/bin/mnist-train", "input": "mnist_clean",
               "output": output, "params": {"epochs": 2}, "max_attempts": attempts})
    };
    let whole = server
        .run_to_completion(&fit("models/whole", 1), within)
        .await;
    assert_eq!(whole["result"]["epochs_run"], 2);

    let id = server.submit_for_id(&fit("models/killed", 2)).await;
    let in_epoch_two = |task: &Value| {
        task["progress"]["message"]
            .as_str()
            .is_some_and(|message| message.starts_with("epoch 2/2 batch"))
    };
    server.wait_until(&id, within, in_epoch_two).await;
    kill_9(runner_pid(&id).await.expect("a runner trains"));
    let done = server.wait_finished(&id, within).await;
    assert_eq!(
        (&done["status"], &done["attempt"]),
        (&json!("completed"), &json!(2)),
        "{done:#}"
    );
    assert_eq!(
        done["result"]["resumed_after_epoch"], 1,
        "the retry resumed after epoch 1"
    );
    assert_eq!(
        done["result"]["epochs_run"], 1,
        "so it ran one epoch, not two"
    );
    let weights = |name: &str| {
        let uri = server.lake().join(format!("models/{name}.lance"));
        async move {
            let storage = std::collections::HashMap::new();
            let (row, _) = mnist::lake::load_model(&uri.to_string_lossy(), None, &storage)
                .await
                .expect("a model");
            row.weights
        }
    };
    assert!(
        weights("killed").await == weights("whole").await,
        "the resumed run's weights equal the uninterrupted run's, byte for byte"
    );
    server.stop().await;
}
