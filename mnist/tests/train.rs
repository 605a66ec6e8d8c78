//! The CNN trains, learns, and repeats itself exactly under the same seed on the CPU.

use std::collections::HashMap;

use mnist::checkpoint::Folder;
use mnist::infer::Predictor;
use mnist::lake::Split;
use mnist::model::{Net, images_tensor};
use mnist::train::{Checkpoints, EpochStats, Observer, TrainOptions, Trained, evaluate, train};

/// Trains without checkpoints: the net and its history.
fn fit(train_split: &Split, test: &Split, options: &TrainOptions) -> (Net, Vec<EpochStats>) {
    let Trained { net, history, .. } = train(
        train_split,
        test,
        options,
        &mut Quiet,
        Checkpoints::default(),
    )
    .expect("train");
    (net, history)
}

struct Quiet;

impl Observer for Quiet {
    fn batch(&mut self, _: usize, _: usize, _: usize, _: f64) {}
    fn epoch(&mut self, _: &EpochStats) {}
}

/// Two easy classes: a bright top half (label 0) or a bright bottom half (label 1).
fn halves(n: usize) -> Split {
    let mut split = Split::default();
    for i in 0..n {
        let label = (i % 2) as u8;
        split
            .images
            .extend((0..784).map(|p| if (p < 392) == (label == 0) { 0.9 } else { 0.0 }));
        split.labels.push(label);
    }
    split
}

#[test]
fn the_same_seed_trains_the_same_model() {
    let options = TrainOptions {
        epochs: 1,
        batch_size: 16,
        ..Default::default()
    };
    let (first, history_a) = fit(&halves(64), &halves(16), &options);
    let (second, history_b) = fit(&halves(64), &halves(16), &options);
    assert_eq!(history_a[0].train_loss, history_b[0].train_loss);
    assert_eq!(history_a[0].loss, history_b[0].loss);
    assert_eq!(
        first.to_safetensors().expect("bytes"),
        second.to_safetensors().expect("bytes")
    );
    let other = TrainOptions { seed: 1, ..options };
    let (_, history_c) = fit(&halves(64), &halves(16), &other);
    assert_ne!(
        history_a[0].train_loss, history_c[0].train_loss,
        "another seed, another run"
    );
}

#[test]
fn training_learns_a_separable_task_and_the_weights_round_trip() {
    let options = TrainOptions {
        epochs: 2,
        batch_size: 8,
        ..Default::default()
    };
    let test = halves(20);
    let (net, history) = fit(&halves(96), &test, &options);
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].accuracy, 1.0, "{history:?}");
    let bytes = net.to_safetensors().expect("bytes");
    let loaded = Net::from_safetensors(&bytes, &candle_core::Device::Cpu).expect("load");
    let (loss, correct) = evaluate(&loaded, &test, &candle_core::Device::Cpu).expect("evaluate");
    assert_eq!(correct, 20);
    assert!((loss - history[1].loss).abs() < 1e-6);
    let probabilities = loaded
        .probabilities(
            &images_tensor(&test.images[..784], &candle_core::Device::Cpu).expect("tensor"),
        )
        .expect("forward")
        .to_vec2::<f32>()
        .expect("vec");
    assert!((probabilities[0].iter().sum::<f32>() - 1.0).abs() < 1e-4);
}

#[test]
fn bad_options_are_refused() {
    let data = halves(4);
    // An unknown optimizer or device is refused as the params are read (`train::tests`).
    for options in [
        TrainOptions {
            lr_decay: 0.0,
            ..Default::default()
        },
        TrainOptions {
            batch_size: 0,
            ..Default::default()
        },
        TrainOptions {
            shift: 5,
            ..Default::default()
        },
    ] {
        assert!(
            train(&data, &data, &options, &mut Quiet, Checkpoints::default()).is_err(),
            "{options:?}"
        );
    }
    assert!(
        train(
            &data,
            &Split::default(),
            &TrainOptions::default(),
            &mut Quiet,
            Checkpoints::default()
        )
        .is_err(),
        "no test rows"
    );
}

#[test]
fn a_run_resumed_from_its_checkpoint_ends_with_the_weights_of_a_run_never_stopped() {
    let options = TrainOptions {
        epochs: 3,
        batch_size: 16,
        ..Default::default()
    };
    let (whole, whole_history) = fit(&halves(64), &halves(16), &options);
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = Folder::Local(dir.path().to_path_buf());
    resumes_with_the_same_weights(&folder, &options, &whole, &whole_history);
    let in_memory = Folder::Remote {
        store: std::sync::Arc::new(object_store::memory::InMemory::new()),
        prefix: "tenants/acme/checkpoints/tasks/t1".into(),
    };
    // Object storage goes through the same calls as S3 (object_store's in-memory store),
    // from a multi-threaded runtime, as mnist-train runs.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::task::block_in_place(|| {
            resumes_with_the_same_weights(&in_memory, &options, &whole, &whole_history)
        })
    });
}

/// Checkpoints on an S3 lake: a bucket of the local AWS stack `tests/run` starts, opened
/// by URL and storage options as `mnist-train` opens `LANCER_CHECKPOINT_DIR`.
#[test]
fn a_run_resumed_from_its_checkpoint_on_s3_ends_with_the_weights_of_a_run_never_stopped() {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL is not set: `eval \"$(localstack/up)\"` starts the local AWS stack (tests/run does)");
    let options = TrainOptions {
        epochs: 3,
        batch_size: 16,
        ..Default::default()
    };
    let (whole, whole_history) = fit(&halves(64), &halves(16), &options);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    let bucket = format!("checkpoints-{}-{nanos}", std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let made = reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .expect("create the bucket");
        assert!(made.status().is_success(), "{made:?}");
        let storage = HashMap::from([
            ("aws_endpoint".to_owned(), endpoint.clone()),
            ("allow_http".to_owned(), "true".to_owned()),
        ]);
        let location = format!("s3://{bucket}/tenants/acme/checkpoints/tasks/t1");
        let folder = Folder::open(&location, &storage).expect("an S3 folder");
        tokio::task::block_in_place(|| {
            resumes_with_the_same_weights(&folder, &options, &whole, &whole_history)
        });
        let listed = reqwest::Client::new()
            .get(format!("{endpoint}/{bucket}?list-type=2"))
            .send()
            .await
            .expect("list")
            .text()
            .await
            .expect("text");
        assert!(
            listed.contains("tenants/acme/checkpoints/tasks/t1/checkpoint.json"),
            "the checkpoint is in the bucket: {listed}"
        );
    });
}

fn resumes_with_the_same_weights(
    folder: &Folder,
    options: &TrainOptions,
    whole: &Net,
    whole_history: &[EpochStats],
) {
    let options = options.clone();
    let checkpoints = || Checkpoints {
        folder: Some(folder),
    };
    let first = TrainOptions {
        epochs: 1,
        ..options.clone()
    };
    let stopped =
        train(&halves(64), &halves(16), &first, &mut Quiet, checkpoints()).expect("train");
    assert_eq!(stopped.resumed_after, 0);
    let resumed = train(
        &halves(64),
        &halves(16),
        &options,
        &mut Quiet,
        checkpoints(),
    )
    .expect("train");
    assert_eq!(resumed.resumed_after, 1, "it went on after the saved epoch");
    let figures = |history: &[EpochStats]| -> Vec<(usize, f64, f64, usize)> {
        history
            .iter()
            .map(|e| (e.epoch, e.train_loss, e.loss, e.correct))
            .collect()
    };
    assert_eq!(
        figures(&resumed.history),
        figures(whole_history),
        "the history spans every epoch, with the same losses"
    );
    assert_eq!(
        resumed.net.to_safetensors().expect("bytes"),
        whole.to_safetensors().expect("bytes"),
        "the same weights to the byte"
    );
    let other = TrainOptions { seed: 7, ..options };
    let fresh = train(&halves(64), &halves(16), &other, &mut Quiet, checkpoints()).expect("train");
    assert_eq!(
        fresh.resumed_after, 0,
        "a checkpoint of other options is not resumed"
    );
}

#[test]
fn the_serving_engine_gives_the_probabilities_of_the_net_it_came_from() {
    let device = candle_core::Device::Cpu;
    let (net, _) = Net::init(3, &device).expect("net");
    let mut predictor = Predictor::new(&net, &device).expect("predictor");
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert!(matches!(predictor, Predictor::Cpu(_)), "the engine serves");
    }
    // One digit, a few on one thread, and 70: shared out, in groups of 32 and a partial one.
    for images in [1, 7, 70] {
        let pixels: Vec<f32> = (0..images * 784)
            .map(|i| ((i * 31 + i / 784 * 17) % 256) as f32 / 255.0)
            .collect();
        let expected = net
            .probabilities(&images_tensor(&pixels, &device).expect("tensor"))
            .and_then(|p| Ok(p.flatten_all()?.to_vec1::<f32>()?))
            .expect("forward");
        let mut ours = vec![0f32; images * 10];
        predictor
            .probabilities(&pixels, &mut ours)
            .expect("probabilities");
        let difference = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(difference < 1e-5, "{images} images differ by {difference}");
    }
    let mut wrong = vec![0f32; 20];
    assert!(predictor.probabilities(&[0.0; 784], &mut wrong).is_err());
}
