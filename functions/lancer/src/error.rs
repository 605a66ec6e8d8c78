//! lancer's one error type. `http::error` maps it to a status and the design's error codes.

/// What a request or an operation can fail with. Messages are shown to clients, so they
/// never carry internal details; `Internal` keeps its detail for the log only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{kind} '{id}' does not exist")]
    NotFound { kind: Resource, id: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The kinds of thing a client can ask for by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Dataset,
    Model,
    Task,
    Route,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::Dataset => "Dataset",
            Resource::Model => "Model",
            Resource::Task => "Task",
            Resource::Route => "Route",
        })
    }
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest(message.into())
    }

    pub fn not_found(kind: Resource, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }

    /// The design document's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "INVALID_REQUEST",
            Error::NotFound {
                kind: Resource::Dataset,
                ..
            } => "DATASET_NOT_FOUND",
            Error::NotFound {
                kind: Resource::Model,
                ..
            } => "MODEL_NOT_FOUND",
            Error::NotFound {
                kind: Resource::Task,
                ..
            } => "TASK_NOT_FOUND",
            Error::NotFound {
                kind: Resource::Route,
                ..
            } => "NOT_FOUND",
            Error::Unauthorized(_) => "UNAUTHORIZED",
            Error::Conflict(_) => "CONFLICT",
            Error::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            Error::Timeout(_) => "REQUEST_TIMEOUT",
            Error::Internal(_) => "INTERNAL_ERROR",
        }
    }
}

impl From<crate::domain::task::IllegalTransition> for Error {
    fn from(err: crate::domain::task::IllegalTransition) -> Self {
        Error::Conflict(err.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::internal(err)
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::internal(err)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
