//! The ModelStore conformance suite on every adapter: in memory, SQLite, and DynamoDB on the
//! local AWS stack (`lancer_tests::stores` opens each).

mod memory {
    use lancer_tests::model_store::Fixture;

    async fn make() -> Fixture {
        lancer_tests::stores::memory().into()
    }

    lancer_tests::model_store_conformance!(make);
}

mod sqlite {
    use lancer_tests::model_store::Fixture;

    async fn make() -> Fixture {
        lancer_tests::stores::sqlite().into()
    }

    lancer_tests::model_store_conformance!(make);
}

mod dynamodb {
    use lancer_tests::model_store::Fixture;

    async fn make() -> Fixture {
        lancer_tests::stores::dynamodb().await.into()
    }

    lancer_tests::model_store_conformance!(make);
}
