//! The Dispatcher conformance suite on every backend: the in-memory fake, the local
//! dispatcher's runner processes, and Ray jobs on the real head `tests/run` starts.

use std::sync::Arc;
use std::time::Duration;

use lancer::config::{Backend, Config};
use lancer::ports::Dispatcher;
use lancer::store::sqlite::SqliteTaskStore;
use lancer_tests::dispatcher::{Fixture, spec};
use lancer_tests::scripts::SLOW_PY;
use lancer_tests::server::{bin_dir, python};
use serde_json::json;

const QUICK_PY: &str = "def run(input_path, output_path, params):\n    return {\"ok\": True}\n";

/// A temp folder with a registered quick and slow script, a SQLite task table, and the
/// runner configuration that points at them.
struct Setup {
    dir: tempfile::TempDir,
    store: Arc<SqliteTaskStore>,
    config: Config,
}

fn setup(lease: Duration, extra: &[(&str, String)]) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).expect("mkdir");
    std::fs::write(scripts.join("quick.py"), QUICK_PY).expect("write");
    std::fs::write(scripts.join("slow.py"), SLOW_PY).expect("write");
    std::fs::write(
        scripts.join(lancer::scripts::REGISTRY_FILE),
        json!({"scripts": ["quick.py", "slow.py"]}).to_string(),
    )
    .expect("write the registry");
    let db = dir.path().join("tasks.db");
    let vars = [
        ("LANCER_DB", db.to_string_lossy().into_owned()),
        (
            "LANCER_LAKE",
            dir.path().join("lake").to_string_lossy().into_owned(),
        ),
        ("LANCER_SCRIPTS", scripts.to_string_lossy().into_owned()),
        ("LANCER_PYTHON", python()),
        ("LANCER_LEASE_SECS", lease.as_secs().to_string()),
        ("LANCER_CANCEL_GRACE_SECS", "1".into()),
    ];
    let config = Config::from_lookup(|name| {
        vars.iter()
            .chain(extra)
            .find(|(var, _)| *var == name)
            .map(|(_, value)| value.clone())
    })
    .expect("a valid configuration");
    let store = Arc::new(SqliteTaskStore::open(&db).expect("open sqlite"));
    Setup { dir, store, config }
}

impl Setup {
    /// The fixture of a dispatcher that runs this setup's scripts with real runners.
    fn fixture(self, dispatcher: Arc<dyn Dispatcher>, patience: Duration) -> Fixture {
        Fixture {
            dispatcher,
            store: self.store,
            lease: self.config.dispatch.lease,
            quick: spec("quick.py", json!({})),
            slow: spec("slow.py", json!({"steps": 6000})),
            patience,
            runner_processes: true,
            keep: Box::new(self.dir),
        }
    }
}

mod memory {
    use super::*;
    use lancer::dispatch::memory::{HOLD, RecordingDispatcher};
    use lancer::store::memory::MemoryTaskStore;

    async fn make() -> Fixture {
        let store = Arc::new(MemoryTaskStore::new());
        let dispatcher = RecordingDispatcher::running_tasks(store.clone());
        Fixture {
            dispatcher: Arc::new(dispatcher),
            store,
            lease: Duration::from_secs(1),
            quick: spec("any", json!({})),
            slow: spec("any", json!({HOLD: true})),
            patience: Duration::from_secs(5),
            runner_processes: false,
            keep: Box::new(()),
        }
    }

    lancer_tests::dispatcher_conformance!(make);
}

mod local {
    use super::*;
    use lancer::dispatch::local::{LocalDispatcher, RunnerCommand};
    use lancer::domain::fair::FairLimits;

    async fn make() -> Fixture {
        let setup = setup(Duration::from_secs(2), &[]);
        let config = &setup.config;
        let runner = RunnerCommand {
            program: bin_dir().join("lancer-runner"),
            env: config.runner_env(),
        };
        let limits = FairLimits {
            slots: 2,
            per_tenant: 2,
            services_per_tenant: 1,
        };
        let dispatch = &config.dispatch;
        let dispatcher =
            LocalDispatcher::new(setup.store.clone(), runner, limits, dispatch.cancel_grace);
        setup.fixture(Arc::new(dispatcher), Duration::from_secs(30))
    }

    lancer_tests::dispatcher_conformance!(make);
}

mod ray {
    use super::*;
    use lancer::dispatch::ray::RayDispatcher;

    async fn make() -> Fixture {
        let address = lancer_tests::ray::ray_address();
        let backend = [
            ("LANCER_BACKEND", "ray".to_owned()),
            ("RAY_ADDRESS", address.clone()),
            ("LANCER_RAY_TOKEN", lancer_tests::ray::ray_token()),
        ];
        let setup = setup(Duration::from_secs(3), &backend);
        let config = &setup.config;
        let Backend::Ray(ray) = &config.dispatch.backend else {
            panic!("the configuration names Ray")
        };
        let env = config.ray_runner_env(ray);
        let runner = bin_dir()
            .join("lancer-runner")
            .to_string_lossy()
            .into_owned();
        let token = ray.token.as_deref();
        let dispatcher = RayDispatcher::new(setup.store.clone(), address, runner, env, token)
            .expect("a Ray dispatcher");
        setup.fixture(Arc::new(dispatcher), Duration::from_secs(90))
    }

    lancer_tests::dispatcher_conformance!(make);
}
