//! The runner's errors: [`RunnerError`] for starting the service, [`StartError`] for a refused
//! run (each maps to one problem+json answer).

use kickstand_service::{DbError, Problem};

/// The runner could not start or reach its store.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The settings are unusable.
    #[error("{0}")]
    Config(String),
    /// The ops database failed.
    #[error("the runner's store: {0}")]
    Db(#[from] DbError),
    /// A file or directory of the runner could not be used.
    #[error("{0}")]
    Io(String),
}

/// Why a run was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No script of that name is registered.
    #[error("no script named {0:?} is registered")]
    UnknownScript(String),
    /// The script's manifest is invalid, so it cannot run until it is fixed.
    #[error("the manifest of script {0:?} is invalid: {1}")]
    InvalidScript(String, String),
    /// The caller lacks the scope the manifest requires.
    #[error("running {script:?} needs the {scope:?} scope")]
    Forbidden { script: String, scope: String },
    /// An argument is missing, unknown or out of its schema; `.0` is `args.<name>`.
    #[error("{0}: {1}")]
    InvalidArg(String, String),
    /// The idempotency key was used for a different script or other arguments.
    #[error("the Idempotency-Key was used for {0}")]
    KeyReused(String),
    /// The idempotency key is malformed.
    #[error("{0}")]
    BadKey(String),
    /// The script's or the runner's concurrency limit is reached.
    #[error("{0}")]
    Busy(String),
    /// The runner is shutting down.
    #[error("the runner is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<StartError> for Problem {
    fn from(e: StartError) -> Problem {
        use axum::http::StatusCode;
        let detail = e.to_string();
        match e {
            StartError::UnknownScript(_) => Problem::not_found(detail),
            StartError::InvalidScript(..) => Problem::conflict(detail),
            StartError::Forbidden { .. } => Problem::forbidden(detail),
            StartError::InvalidArg(field, reason) => Problem::invalid(field, reason),
            StartError::KeyReused(_) => {
                let mut p = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Idempotency key reused",
                    detail,
                );
                p.field = Some("Idempotency-Key".into());
                p
            }
            StartError::BadKey(reason) => Problem::invalid("Idempotency-Key", reason),
            StartError::Busy(_) => Problem::too_many(detail, 5),
            StartError::ShuttingDown => Problem::unavailable(detail, 5),
            StartError::Db(e) => e.into(),
        }
    }
}
