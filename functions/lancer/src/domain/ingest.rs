//! Ingestion on upload: rules map a folder under a lake's `raw/` to the task that ingests
//! it. Pure decisions only; `http::uploads` and the `ingest` function do the I/O.
//!
//! An upload is often several objects (MNIST is four files) and S3 may deliver an event
//! twice (a multipart upload emits two): a rule names the files it `requires`, a task is
//! created only once all of them are present, and its idempotency key is derived from
//! their versions, so every event of one upload names the same task.

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::Invalid;
use super::path::LakePath;
use super::pipeline::PipelineSpec;
use super::task::TaskSpec;

/// One rule of `LANCER_INGEST_RULES` (a JSON array).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestRule {
    /// Names the rule in task names and idempotency keys.
    pub name: String,
    /// A folder under `raw/` (lake-relative, tenant folder excluded), e.g. `raw/mnist/`.
    pub prefix: LakePath,
    /// File names under `prefix` that make a complete upload; empty: any one object is.
    #[serde(default)]
    pub require: Vec<String>,
    /// The task to run: a registered script, its output and params...
    #[serde(default)]
    pub script: String,
    /// What the task writes, as a task spec's `output`: a dataset name, or a `datasets/..`
    /// or `models/..` path.
    #[serde(default)]
    pub output: String,
    /// The params the task gets, as a task spec's `params`.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// ... or a pipeline to start, whose steps name their own inputs.
    #[serde(default)]
    pub pipeline: Option<RulePipeline>,
}

/// The pipeline a rule starts: a JSON file in the scripts folder (`mnist/pipeline.json`),
/// or the spec itself.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RulePipeline {
    /// A pipeline spec file, relative to the scripts folder (`mnist/pipeline.json`).
    File(String),
    /// The pipeline spec, written in the rule itself.
    Inline(Box<PipelineSpec>),
}

/// The rules of `LANCER_INGEST_RULES`, checked; empty when it is unset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestRules(Vec<IngestRule>);

impl IngestRules {
    /// Parses and checks `LANCER_INGEST_RULES`: each rule names a script or a pipeline file
    /// (not both), a prefix under `raw/`, and bare file names in `require`.
    pub fn parse(json: &str) -> Result<Self, Invalid> {
        let rules: Vec<IngestRule> = serde_json::from_str(json)
            .map_err(|err| Invalid::rule(format!("LANCER_INGEST_RULES: {err}")))?;
        for rule in &rules {
            if rule.script.is_empty() == rule.pipeline.is_none() {
                return Err(Invalid::rule(format!(
                    "ingest rule {}: name a script (with its output) or a pipeline file, not both",
                    rule.name
                )));
            }
            let file = match &rule.pipeline {
                Some(RulePipeline::File(file)) => file.as_str(),
                _ => "inline.json",
            };
            if !file.ends_with(".json") || LakePath::parse("pipeline", file).is_err() {
                return Err(Invalid::rule(format!(
                    "ingest rule {}: pipeline must be a relative .json path in the scripts folder",
                    rule.name
                )));
            }
            if rule.prefix.segments().next() != Some("raw") {
                return Err(Invalid::rule(format!(
                    "ingest rule {}: prefix must be a folder under raw/, like raw/mnist/",
                    rule.name
                )));
            }
            for file in &rule.require {
                let single = LakePath::parse("require", file).map(|p| p.segments().count() == 1);
                if single != Ok(true) {
                    return Err(Invalid::rule(format!(
                        "ingest rule {}: require lists file names inside the prefix",
                        rule.name
                    )));
                }
            }
        }
        Ok(Self(rules))
    }

    /// Whether there are no rules, so that no upload starts a task.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The rule whose prefix holds `key` (lake-relative, tenant prefix excluded); the
    /// longest prefix wins.
    pub fn rule_for(&self, key: &LakePath) -> Option<&IngestRule> {
        self.0
            .iter()
            .filter(|rule| {
                key.strip_prefix(&rule.prefix)
                    .is_some_and(|rest| !rest.is_root())
            })
            .max_by_key(|rule| rule.prefix.segments().count())
    }
}

impl IngestRule {
    /// The objects that must exist before the task is created: the required files, or
    /// the uploaded object alone.
    pub fn required_keys(&self, uploaded: &LakePath) -> Vec<LakePath> {
        if self.require.is_empty() {
            vec![uploaded.clone()]
        } else {
            self.require
                .iter()
                .filter_map(|file| LakePath::parse("require", file).ok())
                .map(|file| self.prefix.join(&file))
                .collect()
        }
    }

    /// The idempotency key of what a complete upload starts: every event of one upload
    /// gives the same. `present` holds each required key with its version (ETag or
    /// version id).
    pub fn idempotency_key(&self, present: &[(LakePath, String)]) -> String {
        let mut parts: Vec<String> = present
            .iter()
            .map(|(key, version)| format!("{key}@{version}"))
            .collect();
        parts.sort();
        let fingerprint = Sha256::digest(parts.join("\n").as_bytes());
        let fingerprint: String = fingerprint[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        // SHA-256 (its first 128 bits) is stable across builds, as a stored key must be.
        format!("ingest:{}:{fingerprint}", self.name)
    }

    /// The task for a complete upload of a rule that names a script.
    pub fn task_for(&self, uploaded: &LakePath, present: &[(LakePath, String)]) -> TaskSpec {
        let input = if self.require.is_empty() {
            uploaded.to_string()
        } else {
            self.prefix.to_string()
        };
        TaskSpec {
            name: format!("ingest-{}", self.name),
            script: self.script.clone(),
            input,
            output: self.output.clone(),
            params: self.params.clone(),
            resources: Default::default(),
            max_attempts: 1,
            idempotency_key: Some(self.idempotency_key(present)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> LakePath {
        LakePath::parse("p", text).expect(text)
    }

    fn rules() -> IngestRules {
        IngestRules::parse(
            r#"[
              {"name": "mnist", "prefix": "raw/mnist/", "script": "mnist/bin/mnist-clean",
               "output": "mnist_clean", "params": {"normalize": true},
               "require": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]},
              {"name": "any", "prefix": "raw/", "script": "ingest.py", "output": "things"}
            ]"#,
        )
        .expect("valid rules")
    }

    #[test]
    fn the_longest_matching_prefix_picks_the_rule() {
        let rules = rules();
        assert_eq!(
            rules
                .rule_for(&p("raw/mnist/train-images-idx3-ubyte.gz"))
                .map(|r| r.name.as_str()),
            Some("mnist")
        );
        assert_eq!(
            rules.rule_for(&p("raw/other.csv")).map(|r| r.name.as_str()),
            Some("any")
        );
        assert_eq!(rules.rule_for(&p("datasets/x.lance/data")), None);
        assert_eq!(
            rules.rule_for(&p("raw/mnist/")).map(|r| r.name.as_str()),
            Some("any")
        );
    }

    #[test]
    fn every_event_of_one_upload_names_the_same_task_and_a_new_upload_another() {
        let rules = rules();
        let rule = rules.rule_for(&p("raw/mnist/x")).expect("rule");
        let present = vec![
            (
                p("raw/mnist/train-images-idx3-ubyte.gz"),
                "etag-1".to_owned(),
            ),
            (
                p("raw/mnist/train-labels-idx1-ubyte.gz"),
                "etag-2".to_owned(),
            ),
        ];
        let reversed: Vec<_> = present.iter().rev().cloned().collect();
        let first = rule.task_for(&p("raw/mnist/train-images-idx3-ubyte.gz"), &present);
        let second = rule.task_for(&p("raw/mnist/train-labels-idx1-ubyte.gz"), &reversed);
        assert_eq!(first.idempotency_key, second.idempotency_key);
        assert_eq!(first.input, "raw/mnist");
        assert_eq!(first.output, "mnist_clean");
        assert_eq!(first.params["normalize"], true);
        let mut reuploaded = present.clone();
        reuploaded[0].1 = "etag-3".into();
        assert_ne!(
            rule.task_for(&p("raw/mnist/x"), &reuploaded)
                .idempotency_key,
            first.idempotency_key
        );
        let key = first.idempotency_key.expect("key");
        assert!(key.len() <= 255 && key.starts_with("ingest:mnist:"));
    }

    #[test]
    fn a_rule_without_requirements_ingests_each_object() {
        let rules = rules();
        let rule = rules.rule_for(&p("raw/a.csv")).expect("rule");
        assert_eq!(rule.required_keys(&p("raw/a.csv")), [p("raw/a.csv")]);
        assert_eq!(rule.task_for(&p("raw/a.csv"), &[]).input, "raw/a.csv");
    }

    #[test]
    fn a_rule_starts_a_pipeline_from_a_file_or_written_inline() {
        let rules = IngestRules::parse(
            r#"[
              {"name": "file", "prefix": "raw/a/", "pipeline": "mnist/pipeline.json"},
              {"name": "inline", "prefix": "raw/b/", "pipeline":
                {"name": "p", "steps": [{"name": "s", "script": "s.py"}]}}
            ]"#,
        )
        .expect("valid rules");
        let file = rules
            .rule_for(&p("raw/a/x"))
            .and_then(|r| r.pipeline.clone());
        assert_eq!(file, Some(RulePipeline::File("mnist/pipeline.json".into())));
        let inline = rules
            .rule_for(&p("raw/b/x"))
            .and_then(|r| r.pipeline.clone());
        assert!(matches!(inline, Some(RulePipeline::Inline(spec)) if spec.steps.len() == 1));
        let present = [(p("raw/a/x"), "etag-1".to_owned())];
        let rule = rules.rule_for(&p("raw/a/x")).expect("rule");
        assert_eq!(
            rule.idempotency_key(&present),
            rule.idempotency_key(&present)
        );
        assert!(rule.idempotency_key(&present).starts_with("ingest:file:"));
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (json, why) in [
            (
                r#"[{"name":"x","prefix":"datasets/","script":"s","output":"o"}]"#,
                "under raw/",
            ),
            (
                r#"[{"name":"x","prefix":"raw%2f..","script":"s","output":"o"}]"#,
                "LANCER_INGEST_RULES",
            ),
            (
                r#"[{"name":"x","prefix":"raw/a/","script":"s","output":"o","require":["b/c"]}]"#,
                "file names",
            ),
            (
                r#"[{"name":"x","prefix":"raw/../","script":"s","output":"o"}]"#,
                "LANCER_INGEST_RULES",
            ),
            (r#"{"name":"x"}"#, "LANCER_INGEST_RULES"),
            (r#"[{"name":"x","prefix":"raw/a/"}]"#, "script"),
            (
                r#"[{"name":"x","prefix":"raw/a/","script":"s","pipeline":"p.json"}]"#,
                "not both",
            ),
            (
                r#"[{"name":"x","prefix":"raw/a/","pipeline":"../p.json"}]"#,
                "relative .json",
            ),
        ] {
            let err = IngestRules::parse(json).expect_err(json);
            assert!(err.to_string().contains(why), "{json}: {err}");
        }
    }
}
