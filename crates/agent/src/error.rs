//! The agent's one error type: what stops the agent from starting, and what stops a task
//! from starting (reported to the leader as that attempt's end, through
//! [`Error::task_state`] and [`Error::exit_code`]).

use kiln_api::pb;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid task id {0:?}")]
    TaskId(String),
    /// The attempt's log exists: it started under an earlier agent process, which did not
    /// live to see it end. Running it again would run it twice.
    #[error("the agent restarted while this attempt ran")]
    Restarted,
    #[error("no free port for the replica: {0}")]
    NoPort(std::io::Error),
    /// The command could not be started (not found, not executable, ...).
    #[error("{0}")]
    Spawn(String),
    #[error("the docker driver is not available on this node")]
    NoDocker,
    /// The replica's model artifact could not be had.
    #[error("{0}")]
    Model(String),
    /// The checkout of a git-triggered run's commit could not be made.
    #[error("checkout of {0}")]
    Checkout(String),
}

impl Error {
    /// How a task that could not start is reported: lost when the agent cannot know how
    /// it went, failed otherwise.
    pub fn task_state(&self) -> pb::TaskState {
        match self {
            Error::Restarted => pb::TaskState::Lost,
            _ => pb::TaskState::Failed,
        }
    }

    /// The exit code a shell gives a command it cannot run.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Error::Spawn(_) => Some(127),
            _ => None,
        }
    }
}
