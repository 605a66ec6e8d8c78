//! mnist-clean's reading and cleaning, on IDX files written here.

use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type};
use arrow_array::{Array, RecordBatchReader};
use mnist::clean::{CleanBatches, CleanOptions, CleanReport, find_parts};
use mnist::idx::{IMAGE_MAGIC, LABEL_MAGIC, write_idx};

/// Writes `labels.len()` images whose pixels all equal their label * 20.
fn write_part(dir: &Path, prefix: &str, labels: &[u8], gzip: bool) {
    let images: Vec<u8> = labels
        .iter()
        .flat_map(|&l| std::iter::repeat_n(l.saturating_mul(20), 784))
        .collect();
    let images_path = dir.join(format!("{prefix}-images-idx3-ubyte"));
    let labels_path = dir.join(format!("{prefix}-labels-idx1-ubyte"));
    write_idx(
        &images_path,
        IMAGE_MAGIC,
        &[labels.len() as u32, 28, 28],
        &images,
    )
    .expect("write");
    write_idx(&labels_path, LABEL_MAGIC, &[labels.len() as u32], labels).expect("write");
    if gzip {
        for path in [images_path, labels_path] {
            let status = std::process::Command::new("gzip")
                .arg("-f")
                .arg(&path)
                .status()
                .expect("gzip");
            assert!(status.success());
        }
    }
}

fn clean(
    dir: &Path,
    options: CleanOptions,
) -> anyhow::Result<(Vec<arrow_array::RecordBatch>, CleanReport)> {
    let batches = CleanBatches::new(find_parts(dir)?, options)?;
    let report = batches.report.clone();
    let collected = batches.collect::<Result<Vec<_>, _>>()?;
    let report = report.lock().expect("report").clone();
    Ok((collected, report))
}

#[test]
fn train_and_t10k_files_become_rows_with_their_own_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_part(dir.path(), "train", &[1, 2, 3, 4, 5], true);
    write_part(dir.path(), "t10k", &[6, 7], false);
    let (batches, report) = clean(
        dir.path(),
        CleanOptions {
            batch_rows: 2,
            ..Default::default()
        },
    )
    .expect("clean");
    assert_eq!(
        report,
        CleanReport {
            total_records: 7,
            train: 5,
            test: 2,
            dropped: 0
        }
    );
    assert!(batches.iter().all(|b| b.num_rows() <= 2), "bounded batches");
    let labels: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(2).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(labels, [1, 2, 3, 4, 5, 6, 7]);
    let splits: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            b.column(3)
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        splits,
        ["train", "train", "train", "train", "train", "test", "test"]
    );
    let first = batches[0].column(1).as_fixed_size_list().value(0);
    let pixels = first.as_primitive::<Float32Type>();
    assert_eq!(pixels.len(), 784);
    assert!(
        (pixels.value(0) - 20.0 / 255.0).abs() < 1e-6,
        "normalised to [0, 1]"
    );
}

#[test]
fn labels_outside_zero_to_nine_are_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_part(dir.path(), "train", &[1, 12, 3, 255], false);
    let (batches, report) = clean(dir.path(), CleanOptions::default()).expect("clean");
    assert_eq!(
        report,
        CleanReport {
            total_records: 2,
            train: 2,
            test: 0,
            dropped: 2
        }
    );
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
}

#[test]
fn without_normalize_and_flatten_images_are_28_by_28_in_0_to_255() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_part(dir.path(), "train", &[9], false);
    let options = CleanOptions {
        normalize: false,
        flatten: false,
        ..Default::default()
    };
    let (batches, _) = clean(dir.path(), options).expect("clean");
    let image = batches[0].column(1).as_fixed_size_list().value(0);
    let rows = image.as_fixed_size_list();
    assert_eq!(rows.len(), 28);
    let row = rows.value(0);
    assert_eq!(row.len(), 28);
    assert_eq!(row.as_primitive::<Float32Type>().value(0), 180.0);
}

#[test]
fn a_test_ratio_splits_deterministically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let labels: Vec<u8> = (0..1000).map(|i| (i % 10) as u8).collect();
    write_part(dir.path(), "train", &labels, false);
    let options = CleanOptions {
        test_ratio: Some(0.2),
        ..Default::default()
    };
    let (_, first) = clean(dir.path(), options.clone()).expect("clean");
    let (_, second) = clean(dir.path(), options).expect("clean");
    assert_eq!(first, second, "the same split every run");
    assert!(
        (150..250).contains(&first.test),
        "about 20% test: {}",
        first.test
    );
    assert!(
        clean(
            dir.path(),
            CleanOptions {
                test_ratio: Some(1.5),
                ..Default::default()
            }
        )
        .is_err()
    );
}

#[test]
fn truncated_and_foreign_files_get_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_part(dir.path(), "train", &[1, 2, 3], false);
    let images = dir.path().join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&images).expect("read");
    std::fs::write(&images, &bytes[..bytes.len() - 100]).expect("truncate");
    let err = clean(dir.path(), CleanOptions::default()).expect_err("truncated");
    assert!(format!("{err:#}").contains("truncated"), "{err:#}");

    std::fs::write(&images, b"PK\x03\x04 this is a zip file, not IDX").expect("write");
    let err = clean(dir.path(), CleanOptions::default()).expect_err("foreign");
    assert!(
        format!("{err:#}").contains("not an IDX image file"),
        "{err:#}"
    );

    write_part(dir.path(), "train", &[1, 2, 3], false);
    write_idx(
        &dir.path().join("train-labels-idx1-ubyte"),
        LABEL_MAGIC,
        &[2],
        &[1, 2],
    )
    .expect("write");
    let err = clean(dir.path(), CleanOptions::default()).expect_err("count mismatch");
    assert!(format!("{err:#}").contains("3 images but"), "{err:#}");

    let empty = tempfile::tempdir().expect("tempdir");
    let err = clean(empty.path(), CleanOptions::default()).expect_err("no files");
    assert!(format!("{err:#}").contains("no MNIST IDX files"), "{err:#}");
}

#[test]
fn the_batches_carry_the_schema_they_promise() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_part(dir.path(), "train", &[1], false);
    let batches = CleanBatches::new(
        find_parts(dir.path()).expect("parts"),
        CleanOptions::default(),
    )
    .expect("new");
    let schema = batches.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["index", "image", "label", "split"]);
}

#[test]
fn cleaning_in_the_background_yields_the_same_batches_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_part(dir.path(), "train", &[1, 2, 3, 4, 5, 11], true);
    write_part(dir.path(), "t10k", &[6, 7, 8], false);
    let options = CleanOptions {
        batch_rows: 2,
        ..Default::default()
    };
    let (inline, inline_report) = clean(dir.path(), options.clone()).expect("clean");
    let batches = CleanBatches::new(find_parts(dir.path()).expect("parts"), options).expect("new");
    let report = batches.report.clone();
    let background = batches.in_background().expect("thread");
    assert_eq!(background.schema(), inline[0].schema());
    let collected = background.collect::<Result<Vec<_>, _>>().expect("batches");
    assert_eq!(collected, inline);
    assert_eq!(*report.lock().expect("report"), inline_report);
}

#[test]
fn an_error_while_cleaning_in_the_background_reaches_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_part(dir.path(), "train", &[1, 2, 3, 4], false);
    let images = dir.path().join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&images).expect("read");
    std::fs::write(&images, &bytes[..bytes.len() - 100]).expect("truncate");
    let options = CleanOptions {
        batch_rows: 3,
        ..Default::default()
    };
    let batches = CleanBatches::new(find_parts(dir.path()).expect("parts"), options).expect("new");
    let results: Vec<_> = batches.in_background().expect("thread").collect();
    // The first three images are whole; the fourth is cut short.
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0].as_ref().expect("first batch").num_rows(), 3);
    let err = results[1].as_ref().expect_err("the truncated image");
    assert!(err.to_string().contains("truncated"), "{err}");
}

/// Debian's `dataset-fashion-mnist`: the 70,000 images of full MNIST's size, as standard
/// IDX gz files (`tests/run` installs it).
const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

#[test]
fn all_70000_fashion_mnist_images_stream_through_in_bounded_batches() {
    let dir = Path::new(FASHION_MNIST);
    assert!(
        dir.exists(),
        "{FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist (tests/run does)"
    );
    let batches = CleanBatches::new(find_parts(dir).expect("parts"), CleanOptions::default())
        .expect("batches");
    let report = batches.report.clone();
    let batch_rows = CleanOptions::default().batch_rows;
    let (mut rows, mut label_sum, mut largest) = (0usize, 0i64, 0usize);
    for batch in batches {
        // One batch at a time: nothing is collected, so memory stays at one batch.
        let batch = batch.expect("batch");
        largest = largest.max(batch.num_rows());
        rows += batch.num_rows();
        let labels = batch
            .column_by_name("label")
            .expect("label")
            .as_primitive::<Int64Type>();
        label_sum += labels.values().iter().sum::<i64>();
    }
    let report = report.lock().expect("report").clone();
    assert_eq!(
        (report.train, report.test, report.dropped),
        (60_000, 10_000, 0)
    );
    assert_eq!(rows, 70_000);
    assert_eq!(largest, batch_rows);
    // Fashion-MNIST is balanced: 7,000 of each of the ten classes.
    assert_eq!(label_sum, 7_000 * (0..10).sum::<i64>());
}
