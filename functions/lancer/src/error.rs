//! The error of the application and the adapters. The domain has its own (`Invalid`,
//! `InvalidPath`, `IllegalTransition`), converted here; `http::error` is the one place an
//! error becomes a status and a code.

use crate::domain::error::Invalid;
use crate::domain::path::InvalidPath;
use crate::domain::task::IllegalTransition;

/// An error from a library lancer uses, kept whole for the log.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// What a request or an operation can fail with. Messages are shown to clients, so they
/// never carry internal details; `Internal` keeps its source for the log only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (a field, a path, a script name, a page token): a 400
    /// whose message says what to fix.
    #[error("{0}")]
    InvalidRequest(String),
    /// No `kind` with `id` exists, or none the caller may see (another tenant's is not
    /// found either): a 404.
    #[error("{kind} '{id}' does not exist")]
    NotFound {
        /// What kind of thing was asked for.
        kind: Resource,
        /// The id it was asked for by.
        id: String,
    },
    /// The request carries no API key, or one the server does not know: a 401.
    #[error("{0}")]
    Unauthorized(String),
    /// The client asked for something the resource's state does not allow: a reused
    /// idempotency key, cancelling a finished task.
    #[error("{0}")]
    Conflict(String),
    /// A store's compare-and-set found the record moved on: another writer won the race.
    /// Code matches on this to re-read or step aside; a client that meets it sees a 409.
    #[error("{0}")]
    Stale(String),
    /// A body or upload is over its size limit, or over the tenant's upload quota: a 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request ran past the server's time limit and was stopped: a 408.
    #[error("{0}")]
    Timeout(String),
    /// A request the server will not take from where it came: another site, another host.
    #[error("{0}")]
    Forbidden(String),
    /// The caller holds as many of a bounded resource as it may (event streams): 429.
    #[error("{0}")]
    TooManyRequests(String),
    /// A serving task's endpoint did not answer the request passed on to it.
    #[error("{0}")]
    BadGateway(String),
    /// Nothing can answer yet (no replica of an alias started in time): a 503 with
    /// `Retry-After`.
    #[error("{message}")]
    Unavailable {
        /// What is not ready.
        message: String,
        /// Seconds after which a retry may find it ready.
        retry_after_s: u32,
    },
    /// Something in the platform failed (a store, the lake, a library under them): a 500
    /// whose message says only that, its source kept for the log.
    #[error("internal error: {0}")]
    Internal(#[source] Source),
}

/// The kinds of thing a client can ask for by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A dataset in a tenant's lake, by name.
    Dataset,
    /// A model in a tenant's lake, by name.
    Model,
    /// A task, by id.
    Task,
    /// A pipeline, by id.
    Pipeline,
    /// A model's alias, by `model@alias`.
    Alias,
    /// A model's serving declaration, by model name.
    Serving,
    /// A URL path the API does not serve.
    Route,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::Dataset => "Dataset",
            Resource::Model => "Model",
            Resource::Task => "Task",
            Resource::Pipeline => "Pipeline",
            Resource::Alias => "Alias",
            Resource::Serving => "Serving of model",
            Resource::Route => "Route",
        })
    }
}

impl Error {
    /// An `InvalidRequest`; `message` is shown to the client as it is.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest(message.into())
    }

    /// A `NotFound` for the `kind` of thing with `id`.
    pub fn not_found(kind: Resource, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// An internal error from a source error or a message, kept for the log.
    pub fn internal(source: impl Into<Source>) -> Self {
        Self::Internal(source.into())
    }
}

impl From<IllegalTransition> for Error {
    fn from(err: IllegalTransition) -> Self {
        Error::Conflict(err.to_string())
    }
}

impl From<InvalidPath> for Error {
    fn from(err: InvalidPath) -> Self {
        Error::InvalidRequest(err.to_string())
    }
}

impl From<Invalid> for Error {
    fn from(err: Invalid) -> Self {
        match err {
            Invalid::TooLarge(message) => Error::PayloadTooLarge(message),
            other => Error::InvalidRequest(other.to_string()),
        }
    }
}

/// Failures of the libraries under the adapters are internal: their source goes to the log.
macro_rules! internal_from {
    ($($source:ty),* $(,)?) => {
        $(impl From<$source> for Error {
            fn from(err: $source) -> Self {
                Error::Internal(Box::new(err))
            }
        })*
    };
}

internal_from!(
    std::io::Error,
    serde_json::Error,
    rusqlite::Error,
    lance::Error,
    object_store::Error,
    arrow_schema::ArrowError,
    reqwest::Error,
    tokio::task::JoinError,
    chrono::OutOfRangeError,
    aws_sdk_dynamodb::error::BuildError,
);

/// Lancer's result: `Error` unless another error type is named.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources, outermost first: where a library says what really failed
/// ("connection refused").
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(source) = next {
        text.push_str(": ");
        text.push_str(&source.to_string());
        next = source.source();
    }
    text
}
