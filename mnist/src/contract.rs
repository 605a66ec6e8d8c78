//! The task side of lancer's run contract for executables:
//! `--input X --output Y --params-file P --result-file R`, progress lines to
//! `LANCER_PROGRESS_FILE`, storage options in `LANCER_STORAGE_OPTIONS`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One run of a job, as the runner started it.
pub struct Invocation {
    /// `--input`: the dataset, model or folder the job reads; empty if not given.
    pub input: String,
    /// `--output`: what the job writes; empty if not given.
    pub output: String,
    /// The params file's object, as given; [`Invocation::params`] reads it as the job's
    /// own type.
    pub params: Map<String, Value>,
    result_file: Option<PathBuf>,
}

impl Invocation {
    /// Reads the contract's flags from the command line.
    pub fn from_args() -> Result<Self> {
        Self::parse(std::env::args().skip(1))
    }

    /// Reads the contract's flags from `args` (the command line less the program) and
    /// the params file they name.
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

    /// The params as the job's own type `T`; see [`parse_params`].
    pub fn params<T: DeserializeOwned>(&self) -> Result<T> {
        parse_params(&self.params)
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

/// `params` as `T`, a struct with `#[serde(default, deny_unknown_fields)]`: a name it
/// lacks is refused (`{"epoch": 3}` is not `epochs`, and would otherwise train the default
/// 8), a null is the field's default, and an error names the param it is about.
pub fn parse_params<T: DeserializeOwned>(params: &Map<String, Value>) -> Result<T> {
    let given: Map<String, Value> = params
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    // Each param alone first, the others at their defaults: serde's message names an
    // unknown field, but not the field whose value has the wrong type.
    for (name, value) in &given {
        let alone = Map::from_iter([(name.clone(), value.clone())]);
        if let Err(err) = serde_json::from_value::<T>(Value::Object(alone)) {
            bail!("param {name}: {err}");
        }
    }
    serde_json::from_value(Value::Object(given)).context("params")
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
    /// Appends to `LANCER_PROGRESS_FILE`, or nowhere where it is unset or cannot be opened.
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

    /// Appends `line`, best effort: progress is not worth failing a task over.
    pub fn report(&mut self, line: Value) {
        if let Some(file) = &mut self.file {
            // Progress is best effort: a failed write must not fail the task.
            let _ = writeln!(file, "{line}").and_then(|_| file.flush());
        }
    }
}

/// Logs to stderr, at `RUST_LOG`'s levels (info by default), where the runner keeps it.
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

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::parse_params;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Job {
        epochs: usize,
        name: Option<String>,
    }

    fn parse(params: serde_json::Value) -> anyhow::Result<Job> {
        parse_params(params.as_object().expect("an object"))
    }

    #[test]
    fn params_are_read_as_the_jobs_type_with_nulls_as_defaults() {
        let job = parse(json!({"epochs": 3, "name": null})).expect("parses");
        assert_eq!(
            job,
            Job {
                epochs: 3,
                name: None
            }
        );
        assert_eq!(parse(json!({})).expect("parses"), Job::default());
    }

    #[test]
    fn an_unknown_or_mistyped_param_is_refused_by_name() {
        let err = parse(json!({"epoch": 3})).expect_err("unknown").to_string();
        assert!(err.contains("unknown field `epoch`"), "{err}");
        assert!(err.contains("expected `epochs` or `name`"), "{err}");
        let err = parse(json!({"epochs": "three"}))
            .expect_err("mistyped")
            .to_string();
        assert!(err.starts_with("param epochs: invalid type"), "{err}");
    }
}
