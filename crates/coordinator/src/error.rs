//! The coordinator's one error type, split by cause, and its mapping to gRPC status codes
//! (done here and nowhere else).

use kiln_api::LEADER_METADATA_KEY;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// This coordinator is not the leader; `leader` is the leader's gRPC address if known.
    #[error("not the leader{}", .leader.as_deref().map(|l| format!("; the leader is {l}")).unwrap_or_else(|| "; no leader is elected yet".into()))]
    NotLeader { leader: Option<String> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let message = e.to_string();
        match e {
            Error::InvalidInput(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::Conflict(_) => tonic::Status::failed_precondition(message),
            Error::NotLeader { leader: Some(addr) } => {
                let mut status = tonic::Status::failed_precondition(message);
                if let Ok(value) = addr.parse() {
                    status.metadata_mut().insert(LEADER_METADATA_KEY, value);
                }
                status
            }
            Error::NotLeader { leader: None } | Error::Unavailable(_) => {
                tonic::Status::unavailable(message)
            }
            Error::Storage(_) | Error::Internal(_) => tonic::Status::internal(message),
        }
    }
}
