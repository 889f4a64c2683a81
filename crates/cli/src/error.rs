//! The CLI's errors and their exit codes (documented in the README):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success (for `run --follow` and `dev --run`: the run succeeded) |
//! | 1 | the run failed or was cancelled, or an unexpected error |
//! | 2 | invalid input: a bad spec, flag or argument; nothing was changed |
//! | 3 | the cluster could not be reached, or has no leader; or `kiln dev` lacks what the pipeline needs (Docker, a registry) |
//! | 4 | not found (a run, stage or attempt) |
//! | 5 | refused: the request conflicts with the current state |
//! | 6 | refused: no valid certificate or token, or not the role the call needs |
//!
//! A reader that closes kiln's output early ends it by SIGPIPE, as it ends any Unix filter.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// Something the command needs on this machine is missing (Docker, a registry).
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    RunFailed(String),
    /// Not authenticated, or not allowed.
    #[error("refused: {0}")]
    Denied(String),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::RunFailed(_) | CliError::Other(_) => 1,
            CliError::Invalid(_) => 2,
            CliError::Unavailable(_) | CliError::Missing(_) => 3,
            CliError::NotFound(_) => 4,
            CliError::Conflict(_) => 5,
            CliError::Denied(_) => 6,
        }
    }

    pub fn from_status(s: Status) -> CliError {
        let m = s.message().to_string();
        match s.code() {
            Code::InvalidArgument => CliError::Invalid(m),
            Code::NotFound => CliError::NotFound(m),
            Code::FailedPrecondition | Code::AlreadyExists => CliError::Conflict(m),
            Code::Unavailable => CliError::Unavailable(m),
            Code::Unauthenticated | Code::PermissionDenied => CliError::Denied(m),
            _ => CliError::Other(format!("{}: {m}", s.code())),
        }
    }
}
