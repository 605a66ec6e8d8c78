//! A real `lancer serve` on port 0 in a temp folder, and the HTTP calls tests make to it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where cargo put the workspace's binaries: next to this test's `deps/` folder.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    for bin in ["lancer", "lancer-runner"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: run `cargo build --workspace --bins` before the tests",
            dir.join(bin).display()
        );
    }
    dir
}

/// This repository, whose `mnist/` and `tests/bench/` the end-to-end tests use as scripts.
///
/// Read at run time: cargo sets `CARGO_MANIFEST_DIR` for the tests it runs, and a test
/// binary reused from a shared target dir may have been built in another checkout, so
/// the path compiled into it can name a folder that no longer exists.
pub fn repo_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .join("..")
        .canonicalize()
        .unwrap_or_else(|e| panic!("repo root {}: {e}", manifest_dir.display()))
}

/// Runs `tests/browser/<script>` (a playwright-core script driving headless Chromium)
/// with `args`, and parses the one JSON line it prints of what the page showed. Panics
/// with its output unless it succeeded.
pub fn browse(script: &str, args: &[&std::ffi::OsStr]) -> Value {
    let browser_dir = repo_root().join("tests/browser");
    let output = std::process::Command::new("node")
        .arg(browser_dir.join(script))
        .args(args)
        .current_dir(&browser_dir)
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "browser test {script} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(output.stdout.trim_ascii()).expect("what the page showed")
}

/// The Python interpreter for script tasks: `LANCER_PYTHON`, else the repo's `.venv`.
pub fn python() -> String {
    if let Ok(python) = std::env::var("LANCER_PYTHON") {
        return python;
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        venv.to_string_lossy().into_owned()
    } else {
        "python3".into()
    }
}

pub struct Server {
    /// First, so it is dropped first: while the server still lives and lists its runners
    /// (`child`, dropped after it, kills the server).
    _reaper: Reaper,
    pub url: String,
    pub dir: tempfile::TempDir,
    scripts_dir: PathBuf,
    env: Vec<(String, String)>,
    child: Child,
    http: reqwest::Client,
}

/// The tests' HTTP client. The server closes a connection that sends no request for 10 s
/// (its slow-client defence); a pooled connection idle that long could be reused just as
/// the server closes it, which reqwest reports as an incomplete message. Dropping idle
/// connections after 5 s avoids that race.
fn client(builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("an http client")
}

impl Server {
    /// Runs the `lancer` CLI against this server, with `LANCER_API_KEY` set to `key` or
    /// unset: (succeeded, stdout, stderr).
    pub fn cli(&self, key: Option<&str>, args: &[&str]) -> (bool, String, String) {
        let mut command = std::process::Command::new(bin_dir().join("lancer"));
        command.args(args).env("LANCER_URL", &self.url);
        match key {
            Some(key) => command.env("LANCER_API_KEY", key),
            None => command.env_remove("LANCER_API_KEY"),
        };
        let out = command.output().expect("run lancer");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts a server whose scripts folder holds and registers `scripts` (name, body,
    /// executable?).
    pub async fn start(scripts: &[(&str, &str, bool)], extra_env: &[(&str, &str)]) -> Server {
        Self::start_under(&[], scripts, extra_env).await
    }

    /// Starts a server as [`Server::start`] does, its command run through `wrapper` (a
    /// program and its first arguments, which runs the command line it is given after them).
    pub async fn start_under(
        wrapper: &[&std::ffi::OsStr],
        scripts: &[(&str, &str, bool)],
        extra_env: &[(&str, &str)],
    ) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let scripts_dir = dir.path().join("scripts");
        std::fs::create_dir_all(&scripts_dir).expect("mkdir");
        let names: Vec<&str> = scripts.iter().map(|(name, _, _)| *name).collect();
        std::fs::write(
            scripts_dir.join(lancer::scripts::REGISTRY_FILE),
            serde_json::json!({ "scripts": names }).to_string(),
        )
        .expect("write the registry");
        for (name, body, executable) in scripts {
            let path = scripts_dir.join(name);
            std::fs::write(&path, body).expect("write script");
            if *executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            }
        }
        let command = Self::serve_command(wrapper, &dir, &scripts_dir, extra_env);
        Self::spawn(command, dir, &scripts_dir, extra_env).await
    }

    /// Starts a server in `dir` whose scripts folder is `scripts_dir`.
    pub async fn start_in(
        dir: tempfile::TempDir,
        scripts_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> Server {
        let command = Self::serve_command(&[], &dir, scripts_dir, extra_env);
        Self::spawn(command, dir, scripts_dir, extra_env).await
    }

    /// `lancer serve` on port 0 with its lake and table in `dir`, run through `wrapper`.
    fn serve_command(
        wrapper: &[&std::ffi::OsStr],
        dir: &tempfile::TempDir,
        scripts_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> Command {
        let lancer = bin_dir().join("lancer");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(lancer);
                command
            }
            None => Command::new(lancer),
        };
        command
            .args(["serve", "--port", "0", "--host", "127.0.0.1"])
            .arg("--lake")
            .arg(dir.path().join("lake"))
            .arg("--db")
            .arg(dir.path().join("lancer.db"))
            .arg("--scripts")
            .arg(scripts_dir)
            .env("LANCER_PYTHON", python())
            .env("LANCER_LEASE_SECS", "5")
            .env("LANCER_CANCEL_GRACE_SECS", "2")
            .env_remove("LANCER_API_KEYS")
            .envs(extra_env.iter().copied());
        command
    }

    /// Starts `command`, a `lancer serve` on port 0, and waits until it listens.
    pub async fn spawn(
        mut command: Command,
        dir: tempfile::TempDir,
        scripts_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> Server {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start lancer serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.strip_prefix("lancer listening on ") {
                    return url.to_owned();
                }
            }
            panic!("lancer serve exited before listening");
        })
        .await
        .expect("lancer serve listens within a minute");
        Server {
            url,
            dir,
            scripts_dir: scripts_dir.to_owned(),
            env: extra_env
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            _reaper: Reaper(child.id()),
            child,
            http: client(reqwest::Client::builder()),
        }
    }

    /// The same server, its requests carrying `key` as a bearer API key.
    pub fn with_api_key(mut self, key: &str) -> Server {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {key}").parse().expect("a header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
        self.http = client(reqwest::Client::builder().default_headers(headers));
        self
    }

    /// Kills the server with SIGKILL, as a crash would, leaving its runners, task table and
    /// lake; then starts a new one on them (on a new port).
    pub async fn crash_and_restart(mut self) -> Server {
        self.child.kill().await.expect("kill lancer serve");
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        Self::start_in(self.dir, &self.scripts_dir, &env).await
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    pub async fn submit(&self, spec: &Value) -> Value {
        let response = self
            .http
            .post(self.api("/tasks"))
            .json(spec)
            .send()
            .await
            .expect("submit");
        assert_eq!(response.status(), 201, "submit {spec}");
        response.json().await.expect("task json")
    }

    /// Submits a task; its id.
    pub async fn submit_for_id(&self, spec: &Value) -> String {
        let task = self.submit(spec).await;
        task["id"].as_str().expect("task id").to_owned()
    }

    pub async fn task(&self, id: &str) -> Value {
        self.get_json(&format!("/tasks/{id}")).await
    }

    /// The task once it has ended, whichever way.
    pub async fn wait_finished(&self, id: &str, within: Duration) -> Value {
        self.wait_until(id, within, |task| task["finished_at"].is_string())
            .await
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.http.post(self.api(path)).send().await.expect("post")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.api(path))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    /// `/metrics` scraped without a key: everything on a server without keys or with
    /// `LANCER_METRICS_OPEN`.
    pub async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text")
    }

    /// Reconcile rounds this server has finished, as a scrape of its `/metrics` without a
    /// key shows them: a server without keys, or one with `LANCER_METRICS_OPEN` (a tenant's
    /// key would narrow the scrape to that tenant's tasks).
    pub async fn reconcile_rounds(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .filter(|line| line.starts_with("lancer_reconcile_rounds_total{"))
            .map(|line| {
                let value = line.rsplit(' ').next().expect("a value");
                value.parse::<f64>().expect("a number") as u64
            })
            .sum()
    }

    /// Waits until the server has finished `more` reconcile rounds after this call: two
    /// rounds later, one round has looked at the whole table since the call began.
    pub async fn wait_for_reconcile_rounds(&self, more: u64, within: Duration) {
        let target = self.reconcile_rounds().await + more;
        let deadline = Instant::now() + within;
        loop {
            let rounds = self.reconcile_rounds().await;
            if rounds >= target {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server finished {rounds} reconcile rounds, not {target}, in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn logs(&self, id: &str) -> String {
        self.logs_at(&format!("/tasks/{id}/logs")).await
    }

    /// The latest attempt's log once it holds `text`; panics with the log after `within`.
    pub async fn wait_for_log(&self, id: &str, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.logs(id).await;
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the log never showed {text:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One attempt's log (`attempt` 0 for the latest), with the attempt its `X-Attempt`
    /// header says it is.
    pub async fn attempt_logs(&self, id: &str, attempt: u32) -> (String, u32) {
        let query = if attempt == 0 {
            String::new()
        } else {
            format!("?attempt={attempt}")
        };
        let response = self
            .http
            .get(self.api(&format!("/tasks/{id}/logs{query}")))
            .send()
            .await
            .expect("logs");
        let header = response.headers()["x-attempt"].to_str().expect("ascii");
        let said = header.parse().expect("X-Attempt is a number");
        (response.text().await.expect("text"), said)
    }

    async fn logs_at(&self, path: &str) -> String {
        self.http
            .get(self.api(path))
            .send()
            .await
            .expect("logs")
            .text()
            .await
            .expect("text")
    }

    /// Submits a task and waits for it to end; panics with its logs unless it completed.
    pub async fn run_to_completion(&self, spec: &Value, within: Duration) -> Value {
        let task = self.submit(spec).await;
        let id = task["id"].as_str().expect("id").to_owned();
        let done = self
            .wait_until(&id, within, |t| t["finished_at"].is_string())
            .await;
        assert_eq!(
            done["status"],
            "completed",
            "{done:#}\nlogs:\n{}",
            self.logs(&id).await
        );
        done
    }

    /// Polls the task until `done` holds for it, or panics after `within`.
    pub async fn wait_until(
        &self,
        id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let task = self.task(id).await;
            if done(&task) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task never reached the expected state: {task:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        self.wait_until(id, Duration::from_secs(90), |task| task["status"] == status)
            .await
    }

    /// Stops the server the way a user's Ctrl-C would.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Kills the server's runners when a test fails (see its `Drop`).
struct Reaper(Option<u32>);

impl Drop for Reaper {
    /// A failed test must not leave its runners behind: a serving task's runner lives on,
    /// holding the test's output pipe (and a CI run that waits on it) open. Killing a
    /// runner with -9 takes its script with it. A test that passed has ended its tasks,
    /// and the crash tests kill the server on purpose, leaving its runners: both untouched.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Some(pid) = self.0 {
            for runner in children_of(pid) {
                // No assertion here: a panic while unwinding would abort the test binary.
                let _ = std::process::Command::new("kill")
                    .args(["-9", &runner.to_string()])
                    .status();
            }
        }
    }
}

/// The processes a process started (from every thread of it).
fn children_of(pid: u32) -> Vec<u32> {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    threads
        .flatten()
        .filter_map(|thread| std::fs::read_to_string(thread.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The pid of the runner working on a task.
pub async fn runner_pid(task_id: &str) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("lancer-runner {task_id}")])
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The pid, on this machine, of the script (`scripts::STUBBORN_PY`) that printed
/// `script pid N` in its task's log. A sandboxed script has a PID namespace of its own, so
/// N is its pid there: the process is the one of that task whose innermost pid is N.
pub async fn script_pid(server: &Server, task_id: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = server.logs(task_id).await;
        if let Some(pid) = log
            .lines()
            .find_map(|line| line.strip_prefix("script pid "))
            .and_then(|pid| pid.trim().parse().ok())
            .and_then(|inner| host_pid_of(task_id, inner))
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the script never said its pid: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The process of task `task_id`'s script (its environment names the task) whose pid in
/// its innermost PID namespace is `inner`.
fn host_pid_of(task_id: &str, inner: u32) -> Option<u32> {
    let marker = format!("LANCER_TASK_ID={task_id}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let innermost = status
                .lines()
                .find_map(|line| line.strip_prefix("NSpid:"))?
                .split_whitespace()
                .last()?
                .parse::<u32>()
                .ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let ours = environ
                .split(|&b| b == 0)
                .any(|var| var == marker.as_bytes());
            (innermost == inner && ours).then_some(pid)
        })
}

/// Whether a process runs: it exists and is not a zombie waiting to be reaped.
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Waits for a process to end; fails the test if it outlives `limit`.
pub async fn wait_until_gone(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while is_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} outlived {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills a process with SIGKILL, as a crash or the OOM killer would.
pub fn kill_9(pid: u32) {
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -9 {pid}");
}
