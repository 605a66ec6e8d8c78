//! Names and lake paths as types that hold their invariants, the way object_store's `Path`
//! does: every name or path a tenant gives is parsed once at the edge, and lake keys and
//! URIs are only ever built from these.
//!
//! A segment is a name: `^[a-z0-9][a-z0-9_.-]{0,127}$`. That one grammar rules out `.`
//! and `..`, empty segments, `%` (so no percent-encoded form can decode into `..` further
//! down, as `url` parsing under Lance does on S3), `\`, `:`, control characters and
//! unicode look-alikes, and it needs no escaping anywhere: in a URI, an object key or a
//! file name.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most bytes of a name.
pub const MAX_NAME_BYTES: usize = 128;
/// The most bytes of one segment of a lake path.
const MAX_SEGMENT_BYTES: usize = 255;
/// The most bytes of a lake path a request may give.
pub const MAX_PATH_BYTES: usize = 1024;

/// Why a name or path was refused; its `Display` is the client-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} '{shown}' {why}")]
pub struct InvalidPath {
    what: String,
    /// The refused input, shortened and with control characters replaced.
    shown: String,
    why: &'static str,
}

impl InvalidPath {
    fn new(what: &str, text: &str, why: &'static str) -> Self {
        Self {
            what: what.to_owned(),
            shown: printable(text),
            why,
        }
    }
}

const NAME_RULE: &str =
    "is not a valid name: use 1-128 of a-z, 0-9, '_', '.', '-', starting with a letter or digit";
const SEGMENT_RULE: &str = "is not a valid lake path: every '/'-separated part must be 1-255 of a-z, 0-9, '_', '.', '-', starting with a letter or digit";

/// Shortens and de-controls user input before it is echoed back in an error message.
pub fn printable(text: &str) -> String {
    text.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// True if `text` is a name.
fn is_name(text: &str) -> bool {
    text.len() <= MAX_NAME_BYTES && is_segment(text)
}

/// True if `text` is one segment of a lake path: the name grammar, up to 255 bytes (a
/// name plus a suffix such as `.lance` or `.log`).
fn is_segment(text: &str) -> bool {
    let bytes = text.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_SEGMENT_BYTES
                && matches!(first, b'a'..=b'z' | b'0'..=b'9')
                && rest
                    .iter()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
        }
        None => false,
    }
}

/// A dataset, model, task or tenant name: `^[a-z0-9][a-z0-9_.-]{0,127}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Parses `text` as a name; `what` names the field in the error.
    pub fn parse(what: &str, text: &str) -> Result<Self, InvalidPath> {
        if is_name(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidPath::new(what, text, NAME_RULE))
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `Name` with a meaning of its own (a task id, a tenant), so one cannot be passed for
/// the other: parsed with the name rule, read as `&str` only when asked (`as_str`), written
/// as a plain string.
macro_rules! name_type {
    ($(#[$doc:meta])* $type:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $type($crate::domain::path::Name);

        impl $type {
            /// Parses `text` with the name rule; the error names what this type is.
            pub fn parse(text: &str) -> Result<Self, $crate::domain::path::InvalidPath> {
                $crate::domain::path::Name::parse($what, text).map(Self)
            }

            /// The name as written.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The plain `Name` underneath, e.g. to build a lake path from it.
            pub fn as_name(&self) -> &$crate::domain::path::Name {
                &self.0
            }
        }

        impl AsRef<str> for $type {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $type {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $type {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $type {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }

        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use name_type;

/// A path inside the lake, relative to its root: name segments joined by `/`, or the
/// root itself (no segment). It can only be built by parsing or by joining two of its
/// kind, so it never holds `..`, `%`, an empty segment or a character that needs escaping,
/// and `a.join(b)` always lies under `a`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LakePath(String);

impl LakePath {
    /// The lake's root (single-tenant mode's tenant folder).
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Parses a relative path of name segments; one trailing `/` (a folder) is allowed and
    /// dropped. `what` names the field in the error.
    pub fn parse(what: &str, text: &str) -> Result<Self, InvalidPath> {
        let refuse = |why| Err(InvalidPath::new(what, text, why));
        if text.is_empty() {
            return refuse("is empty");
        }
        if text.len() > MAX_PATH_BYTES {
            return refuse("is longer than 1024 bytes");
        }
        if text.starts_with('/') {
            return refuse("must be relative, not absolute");
        }
        let trimmed = text.strip_suffix('/').unwrap_or(text);
        if trimmed.split('/').all(is_segment) {
            Ok(Self(trimmed.to_owned()))
        } else {
            refuse(SEGMENT_RULE)
        }
    }

    /// The path of one name under this one.
    pub fn child(&self, name: &Name) -> Self {
        self.join(&Self(name.0.clone()))
    }

    /// The path of `<name><suffix>` under this one, e.g. `datasets/mnist.lance`.
    pub fn child_with_suffix(&self, name: &Name, suffix: &'static str) -> Self {
        let file = format!("{name}{suffix}");
        debug_assert!(is_segment(&file), "{file} is a segment");
        self.join(&Self(file))
    }

    /// `other` under this path. Both hold the invariants, so the result does too.
    pub fn join(&self, other: &LakePath) -> Self {
        match (self.is_root(), other.is_root()) {
            (true, _) => other.clone(),
            (false, true) => self.clone(),
            (false, false) => Self(format!("{}/{}", self.0, other.0)),
        }
    }

    /// The rest of this path under `prefix`, segment by segment; `None` if it is not under it.
    pub fn strip_prefix(&self, prefix: &LakePath) -> Option<LakePath> {
        if prefix.is_root() {
            return Some(self.clone());
        }
        if self.0 == prefix.0 {
            return Some(Self::root());
        }
        self.0
            .strip_prefix(&prefix.0)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(|rest| Self(rest.to_owned()))
    }

    /// True if this path is `prefix` or lies under it, segment by segment.
    pub fn starts_with(&self, prefix: &LakePath) -> bool {
        self.strip_prefix(prefix).is_some()
    }

    /// True for the lake's root, the path with no segment.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path's segments in order; none for the root.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|segment| !segment.is_empty())
    }

    /// The last segment; `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.segments().last()
    }

    /// The path as `a/b/c`; empty for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LakePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for LakePath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LakePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Ok(Self::root());
        }
        Self::parse("lake path", &text).map_err(serde::de::Error::custom)
    }
}

/// Serde for an optional path written as a string, `""` meaning none (the task record's
/// wire format for `input_path` and `output_path`).
pub mod optional {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::LakePath;

    /// Writes the path, or `""` for none.
    pub fn serialize<S: Serializer>(path: &Option<LakePath>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(path.as_ref().map_or("", LakePath::as_str))
    }

    /// Reads a path, `""` (or null) as none; a path that breaks the rules is an error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LakePath>, D::Error> {
        let path = Option::<LakePath>::deserialize(d)?;
        Ok(path.filter(|path| !path.is_root()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn path(text: &str) -> LakePath {
        LakePath::parse("p", text).expect(text)
    }

    #[test]
    fn names_follow_the_documented_pattern() {
        for good in ["mnist_clean", "a", "0", "v1.2-rc_3", &"a".repeat(128)] {
            assert!(Name::parse("n", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Mnist",
            "_x",
            ".hidden",
            "a/b",
            "..",
            "a b",
            &"a".repeat(129),
            "\u{e4}",
        ] {
            assert!(Name::parse("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn traversal_in_every_spelling_is_refused() {
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "datasets/%2e%2e/%2e%2e/acme/datasets/secret.lance",
            "datasets/%252e%252e/acme",
            "datasets/%2E%2E/acme",
            "datasets/..%2facme",
            "datasets/\u{ff0e}\u{ff0e}/acme",
            "datasets/\u{2024}\u{2024}/acme",
            "datasets/a\u{2215}..",
            "/etc/passwd",
            "s3://bucket/x",
            "file:///etc",
            "a//b",
            "./a",
            "a/./b",
            "a\\..\\b",
            "a\nb",
            "a/b\u{0}",
            "",
            "/",
            "//",
        ] {
            assert!(LakePath::parse("p", bad).is_err(), "{bad:?}");
        }
        for good in ["a", "raw/mnist/", "mnist/train.py", "a.b/c-d_e", "a..b"] {
            assert!(LakePath::parse("p", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_refusal_names_the_field_and_shows_the_input_safely() {
        let err = LakePath::parse("input", "datasets/%2e%2e\n").expect_err("refused");
        let message = err.to_string();
        assert!(message.starts_with("input 'datasets/%2e%2e?'"), "{message}");
    }

    #[test]
    fn joining_and_stripping_work_segment_by_segment() {
        let tenant = path("tenants/acme");
        let joined = tenant.join(&path("raw/mnist/"));
        assert_eq!(joined.as_str(), "tenants/acme/raw/mnist");
        assert_eq!(joined.strip_prefix(&tenant), Some(path("raw/mnist")));
        assert_eq!(path("tenants/acmex/raw").strip_prefix(&tenant), None);
        assert_eq!(LakePath::root().join(&path("a")), path("a"));
        assert_eq!(path("a").join(&LakePath::root()), path("a"));
        assert_eq!(joined.file_name(), Some("mnist"));
    }

    #[test]
    fn records_read_back_an_empty_path_as_none() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Record {
            #[serde(with = "optional")]
            input: Option<LakePath>,
        }
        let none: Record = serde_json::from_str(r#"{"input": ""}"#).expect("empty");
        assert_eq!(none.input, None);
        assert_eq!(
            serde_json::to_string(&none).expect("ser"),
            r#"{"input":""}"#
        );
        let some: Record = serde_json::from_str(r#"{"input": "raw/mnist/"}"#).expect("path");
        assert_eq!(some.input, Some(path("raw/mnist")));
        assert!(serde_json::from_str::<Record>(r#"{"input": "raw/%2e%2e"}"#).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever a tenant sends, an accepted path joined under its folder stays there:
        /// no segment of the result above the folder changes, and no segment is `..`,
        /// empty or percent-encoded.
        #[test]
        fn no_accepted_path_leaves_the_tenant_folder(
            text in prop_oneof![
                any::<String>(),
                "[a-z0-9%./\\\\_-]{0,40}",
                prop::collection::vec(
                    prop_oneof![
                        Just("..".to_owned()), Just(".".to_owned()), Just("%2e%2e".to_owned()),
                        Just("%252e".to_owned()), Just("".to_owned()), Just("\u{ff0e}".to_owned()),
                        "[a-z0-9_.-]{1,8}",
                    ],
                    0..6,
                ).prop_map(|parts| parts.join("/")),
            ],
        ) {
            let tenant = LakePath::parse("t", "tenants/acme").expect("tenant folder");
            if let Ok(accepted) = LakePath::parse("p", &text) {
                let joined = tenant.join(&accepted);
                prop_assert!(joined.starts_with(&tenant));
                prop_assert_eq!(joined.strip_prefix(&tenant), Some(accepted.clone()));
                for segment in joined.segments() {
                    prop_assert!(segment != ".." && segment != "." && !segment.is_empty());
                    prop_assert!(!segment.contains('%') && !segment.contains('\\'));
                    prop_assert!(segment.is_ascii());
                }
                // What a URL parser sees is what we wrote: nothing left to decode.
                let url = url::Url::parse(&format!("s3://bucket/{joined}")).expect("url");
                prop_assert_eq!(url.path(), format!("/{joined}"));
            }
        }
    }
}
