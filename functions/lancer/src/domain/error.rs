//! What the domain refuses. The layers above decide what a refusal becomes (a 400, a 413,
//! a configuration error); the domain only says what rule was broken.

use super::path::InvalidPath;

/// A value that breaks one of the domain's rules. Messages name the field and the rule,
/// and echo user input only through `path::printable`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    /// Any other broken rule; the message names the field and the rule.
    #[error("{0}")]
    Rule(String),
    /// A name or lake path that is not well formed; it names the field and why.
    #[error(transparent)]
    Path(#[from] InvalidPath),
    /// Over a size limit.
    #[error("{0}")]
    TooLarge(String),
}

impl Invalid {
    /// A broken rule, described by `message`.
    pub fn rule(message: impl Into<String>) -> Self {
        Self::Rule(message.into())
    }
}
