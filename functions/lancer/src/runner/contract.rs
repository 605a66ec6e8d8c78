//! The run contract on the script's side: how a script is started (the Python shim or
//! the flag form), and the environment it gets, an allow-list and nothing else.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::RunnerContext;
use crate::domain::path::LakePath;
use crate::domain::task::Task;
use crate::error::Result;
use crate::sandbox::{self, Policy, SandboxMode};
use crate::scripts::{Script, ScriptKind};

/// Imports the user's file and calls `run(input_path, output_path, params)`. Its messages
/// name no path: a task's error is shown to its tenant.
const PYTHON_SHIM: &str = r#"
import importlib.util, json, os, sys
script, input_path, output_path, params_file, result_file = sys.argv[1:6]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
spec = importlib.util.spec_from_file_location("lancer_task", script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
if not callable(getattr(module, "run", None)):
    sys.exit("the script defines no run(input_path, output_path, params) function")
with open(params_file) as f:
    params = json.load(f)
result = module.run(input_path, output_path, params)
if result is None:
    result = {}
if not isinstance(result, dict):
    sys.exit(f"run() returned {type(result).__name__}; it must return a dict")
with open(result_file, "w") as f:
    json.dump(result, f, default=str)
"#;

/// Variables of the runner's own environment that a script inherits: where programs are,
/// the locale, the accelerator a scheduler assigned, and thread counts. Nothing else
/// crosses: not the API keys, not the task table, not the server's configuration.
const INHERITED: &[&str] = &[
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "RUST_LOG",
    "CUDA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS",
];

/// What an object-store lake additionally needs: the credentials and endpoint the lake
/// itself is opened with, so the script's Lance reads the same URIs.
const LAKE_CREDENTIALS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ALLOW_HTTP",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
];

/// The files of one attempt, in its fresh working directory.
pub struct Files {
    pub workdir: PathBuf,
    pub params: PathBuf,
    pub result: PathBuf,
    pub progress: PathBuf,
}

impl Files {
    /// Writes the params and an empty progress file into `workdir`.
    pub fn create(workdir: &Path, task: &Task) -> Result<Self> {
        let files = Self {
            workdir: workdir.to_path_buf(),
            params: workdir.join("params.json"),
            result: workdir.join("result.json"),
            progress: workdir.join("progress.jsonl"),
        };
        std::fs::write(&files.params, serde_json::to_vec(&task.spec.params)?)?;
        std::fs::write(&files.progress, b"")?;
        Ok(files)
    }
}

/// The script's command line, environment and pipes, confined by the sandbox unless it
/// is off; not started yet.
pub fn command(
    ctx: &RunnerContext,
    task: &Task,
    script: &Script,
    files: &Files,
) -> Result<Command> {
    let program = program(ctx, task, script, files);
    // On a local lake the folder must exist for the script to write into it; on object
    // storage there are no folders to make.
    let checkpoints = ctx.lake.uri_of(&task.checkpoint_dir());
    if checkpoints.starts_with('/') {
        std::fs::create_dir_all(&checkpoints)?;
    }
    let line = match ctx.sandbox {
        SandboxMode::Off => program,
        mode => {
            let runner = std::env::current_exe()?;
            sandbox::wrap(&runner, mode, &policy(ctx, task, script, files)?, &program)
        }
    };
    let mut command = Command::new(&line[0]);
    command
        .args(&line[1..])
        .current_dir(&files.workdir)
        .env_clear()
        .envs(script_env(ctx, task, files, |name| {
            std::env::var(name).ok()
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command)
}

/// The script's own command line under the run contract.
fn program(ctx: &RunnerContext, task: &Task, script: &Script, files: &Files) -> Vec<OsString> {
    let input = path_or_empty(ctx, task.input_path.as_ref());
    let output = path_or_empty(ctx, task.output_path.as_ref());
    let [params, result] = [&files.params, &files.result].map(|p| p.as_os_str().to_owned());
    let path = script.path.as_os_str().to_owned();
    match script.kind {
        ScriptKind::Python => vec![
            OsString::from(&ctx.python),
            "-u".into(),
            "-c".into(),
            PYTHON_SHIM.into(),
            path,
            input.into(),
            output.into(),
            params,
            result,
        ],
        ScriptKind::Executable => vec![
            path,
            "--input".into(),
            input.into(),
            "--output".into(),
            output.into(),
            "--params-file".into(),
            params,
            "--result-file".into(),
            result,
        ],
    }
}

/// The folder of lancer's own binaries, the runner's: task programs installed beside it
/// (the MNIST jobs, in the build's target folder or the runner image's `/usr/local/bin`)
/// run from there, and scripts find it as `LANCER_BIN_DIR`.
pub fn own_folder() -> Option<PathBuf> {
    let exe = std::fs::canonicalize(std::env::current_exe().ok()?).ok()?;
    exe.parent().map(Path::to_path_buf)
}

/// What the script may read and write besides the system: the scripts folder, lancer's
/// own binaries, its interpreter, the paths the operator hands it in `LANCER_SCRIPT_ENV`;
/// its own folder and, on a local lake, its tenant's lake folder.
fn policy(ctx: &RunnerContext, task: &Task, script: &Script, files: &Files) -> Result<Policy> {
    let mut read = vec![std::fs::canonicalize(&ctx.scripts)?];
    read.extend(own_folder());
    if script.kind == ScriptKind::Python {
        read.extend(interpreter_folders(&ctx.python));
    }
    read.extend(
        ctx.script_env
            .values()
            .map(PathBuf::from)
            .filter(|path| path.is_absolute() && path.exists()),
    );
    let write = vec![files.workdir.clone()];
    let mut lake = Vec::new();
    let tenant_lake = PathBuf::from(ctx.lake.uri_of(&task.tenant_root));
    if tenant_lake.is_absolute() {
        std::fs::create_dir_all(&tenant_lake)?;
        lake.push(tenant_lake);
    }
    Ok(Policy { read, write, lake })
}

/// The folders an interpreter runs from: a virtual environment's own (`.venv/bin/python`
/// -> `.venv`) and the installation it links to (`/usr/local/lib/python3.11` and friends
/// under its prefix).
fn interpreter_folders(python: &str) -> Vec<PathBuf> {
    let found = if python.contains('/') {
        Some(PathBuf::from(python))
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(python))
                .find(|candidate| candidate.is_file())
        })
    };
    let Some(found) = found else {
        return Vec::new();
    };
    let prefix = |path: &Path| path.parent().and_then(Path::parent).map(Path::to_path_buf);
    let canonical = std::fs::canonicalize(&found).ok();
    [prefix(&found), canonical.as_deref().and_then(prefix)]
        .into_iter()
        .flatten()
        .collect()
}

fn path_or_empty(ctx: &RunnerContext, path: Option<&LakePath>) -> String {
    path.map(|path| ctx.lake.uri_of(path)).unwrap_or_default()
}

/// The address serving scripts bind (`LANCER_SERVE_HOST`).
pub const SERVE_HOST: &str = "LANCER_SERVE_HOST";

/// The whole environment of a script: the inherited allow-list, the operator's
/// `LANCER_SCRIPT_ENV`, then the contract's own variables, which nothing overrides.
/// `runner_var` reads the runner's own environment, where the inherited ones come from.
pub fn script_env(
    ctx: &RunnerContext,
    task: &Task,
    files: &Files,
    runner_var: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let remote_lake = !ctx.lake.uri_of(&LakePath::root()).starts_with('/');
    let inherited = INHERITED.iter().chain(
        remote_lake
            .then_some(LAKE_CREDENTIALS)
            .into_iter()
            .flatten(),
    );
    let mut env: BTreeMap<String, String> = inherited
        .filter_map(|name| runner_var(name).map(|value| (name.to_string(), value)))
        .collect();
    // Where serving scripts listen: loopback, so an endpoint is reached only through the
    // API's proxy, unless the operator opens it (a KubeRay serving pod).
    let serve_host = runner_var(SERVE_HOST).unwrap_or_else(|| "127.0.0.1".to_owned());
    env.insert(SERVE_HOST.to_owned(), serve_host);
    env.extend(ctx.script_env.clone());
    let workdir = files.workdir.to_string_lossy().into_owned();
    let storage_options = serde_json::to_string(&ctx.lake.storage_options()).unwrap_or_default();
    env.extend(
        [
            ("LANCER_TASK_ID", task.id.to_string()),
            ("LANCER_ATTEMPT", task.attempt.to_string()),
            ("LANCER_LAKE", ctx.lake.uri_of(&task.tenant_root)),
            ("LANCER_STORAGE_OPTIONS", storage_options),
            (
                "LANCER_PROGRESS_FILE",
                files.progress.to_string_lossy().into_owned(),
            ),
            (
                "LANCER_BIN_DIR",
                own_folder()
                    .map(|dir| dir.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            ("HOME", workdir.clone()),
            ("TMPDIR", workdir),
            ("PYTHONUNBUFFERED", "1".to_owned()),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    if let Some(version) = task.lineage.input_version {
        env.insert("LANCER_INPUT_VERSION".into(), version.to_string());
    }
    env.insert(
        "LANCER_CHECKPOINT_DIR".into(),
        ctx.lake.uri_of(&task.checkpoint_dir()),
    );
    env
}
