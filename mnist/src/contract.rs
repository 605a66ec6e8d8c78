//! The task side of lancer's run contract for executables:
//! `--input X --output Y --params-file P --result-file R`, progress lines to
//! `LANCER_PROGRESS_FILE`, storage options in `LANCER_STORAGE_OPTIONS`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

pub struct Invocation {
    pub input: String,
    pub output: String,
    pub params: Map<String, Value>,
    result_file: Option<PathBuf>,
}

impl Invocation {
    /// Reads the contract's flags from the command line.
    pub fn from_args() -> Result<Self> {
        Self::parse(std::env::args().skip(1))
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self> {
        let mut flags = HashMap::new();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--input" | "--output" | "--params-file" | "--result-file" => {
                    flags.insert(flag, value);
                }
                other => bail!(
                    "unknown flag {other}: expected --input, --output, --params-file, --result-file"
                ),
            }
        }
        let params = match flags.get("--params-file") {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
                match serde_json::from_str(&text).context("params file is not JSON")? {
                    Value::Object(map) => map,
                    _ => bail!("params must be a JSON object"),
                }
            }
            None => Map::new(),
        };
        Ok(Self {
            input: flags.remove("--input").unwrap_or_default(),
            output: flags.remove("--output").unwrap_or_default(),
            params,
            result_file: flags.remove("--result-file").map(PathBuf::from),
        })
    }

    pub fn bool_param(&self, name: &str, default: bool) -> Result<bool> {
        match self.params.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => bail!("param {name} must be true or false, not {other}"),
        }
    }

    pub fn f64_param(&self, name: &str) -> Result<Option<f64>> {
        match self.params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .with_context(|| format!("param {name} must be a number")),
        }
    }

    pub fn u64_param(&self, name: &str) -> Result<Option<u64>> {
        match self.params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .map(Some)
                .with_context(|| format!("param {name} must be a whole number ≥ 0")),
        }
    }

    pub fn str_param(&self, name: &str) -> Result<Option<String>> {
        match self.params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => bail!("param {name} must be a string, not {other}"),
        }
    }

    /// Writes the task's result where the runner reads it.
    pub fn finish(&self, result: &Value) -> Result<()> {
        match &self.result_file {
            Some(path) => {
                std::fs::write(path, serde_json::to_vec(result)?).context("writing the result file")
            }
            None => {
                println!("{result}");
                Ok(())
            }
        }
    }
}

/// The version of its input the platform settled on (`LANCER_INPUT_VERSION`): the one it
/// records as read, so the job reads exactly that one.
pub fn input_version() -> Option<u64> {
    std::env::var("LANCER_INPUT_VERSION").ok()?.parse().ok()
}

/// Object-store options for Lance, as the platform hands them over.
pub fn storage_options() -> HashMap<String, String> {
    std::env::var("LANCER_STORAGE_OPTIONS")
        .ok()
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default()
}

/// Appends JSON lines to `LANCER_PROGRESS_FILE` (nothing when run by hand).
pub struct Progress {
    file: Option<std::fs::File>,
}

impl Progress {
    pub fn from_env() -> Self {
        let file = std::env::var_os("LANCER_PROGRESS_FILE").and_then(|path| {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .ok()
        });
        Self { file }
    }

    pub fn report(&mut self, line: Value) {
        if let Some(file) = &mut self.file {
            // Progress is best effort: a failed write must not fail the task.
            let _ = writeln!(file, "{line}").and_then(|_| file.flush());
        }
    }
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}
