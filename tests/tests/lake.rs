//! The Lake conformance suite on the in-memory fake and on real Lance datasets, on local
//! disk and on S3 (the local AWS stack).

mod memory {
    use std::sync::Arc;

    use lancer::lake::memory::MemoryLake;
    use lancer_tests::lake::{LakeFixture, MemorySeeder};

    async fn make() -> LakeFixture {
        let lake = Arc::new(MemoryLake::new());
        LakeFixture {
            lake: lake.clone(),
            seed: Box::new(MemorySeeder { lake }),
            keep: Box::new(()),
        }
    }

    lancer_tests::lake_conformance!(make);
}

mod lance_on_local_disk {
    use std::sync::Arc;

    use lancer::domain::path::{LakePath, Name};
    use lancer::domain::validate::ArtifactKind;
    use lancer::lake::lance::LanceLake;
    use lancer::ports::Lake;
    use lancer_tests::lake::{LakeFixture, LanceSeeder};

    async fn make() -> LakeFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("lake");
        let lake: Arc<dyn Lake> =
            Arc::new(LanceLake::open(&root.to_string_lossy(), Default::default()).expect("open"));
        LakeFixture {
            lake: lake.clone(),
            seed: Box::new(LanceSeeder { lake }),
            keep: Box::new(dir),
        }
    }

    lancer_tests::lake_conformance!(make);

    #[tokio::test]
    async fn a_folder_that_is_not_a_lance_dataset_is_not_listed() {
        let fixture = make().await;
        let lake_root = fixture.lake.uri_of(&LakePath::root());
        std::fs::create_dir_all(format!("{lake_root}/datasets/junk.lance")).expect("mkdir");
        std::fs::write(format!("{lake_root}/datasets/junk.lance/readme.txt"), "x").expect("write");
        std::fs::create_dir_all(format!("{lake_root}/datasets/Not A Name.lance")).expect("mkdir");
        fixture.seed.dataset("", "real", 3).await;
        let listed = fixture
            .lake
            .list(&LakePath::root(), ArtifactKind::Dataset)
            .await
            .expect("list");
        assert_eq!(
            listed.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["real"]
        );
    }

    #[tokio::test]
    async fn appending_to_a_dataset_adds_a_version_with_its_timestamp() {
        let fixture = make().await;
        fixture.seed.dataset("", "grows", 3).await;
        let before = chrono::Utc::now();
        fixture.seed.dataset("", "grows", 4).await;
        let detail = fixture
            .lake
            .describe(
                &LakePath::root(),
                ArtifactKind::Dataset,
                &Name::parse("n", "grows").expect("name"),
            )
            .await
            .expect("d")
            .expect("exists");
        assert_eq!(detail.summary.num_rows, 7);
        assert_eq!(
            detail
                .versions
                .iter()
                .map(|v| v.version)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(detail.versions[1].timestamp >= before - chrono::Duration::seconds(1));
    }
}

mod lance_on_s3 {
    use std::sync::Arc;

    use lancer::lake::lance::LanceLake;
    use lancer::ports::Lake;
    use lancer_tests::aws::{create_bucket, unique_name};
    use lancer_tests::lake::{LakeFixture, LanceSeeder};

    /// A fresh bucket per test; credentials, region, endpoint and plain HTTP come from the
    /// environment `localstack/up` prints, as they would from a user's AWS set-up.
    async fn make() -> LakeFixture {
        let bucket = unique_name("lake");
        create_bucket(&bucket).await;
        let lake: Arc<dyn Lake> = Arc::new(
            LanceLake::open(&format!("s3://{bucket}/lake"), Default::default()).expect("open"),
        );
        LakeFixture {
            lake: lake.clone(),
            seed: Box::new(LanceSeeder { lake }),
            keep: Box::new(()),
        }
    }

    lancer_tests::lake_conformance!(make);
}
