//! The coordinator's one error type, split by cause, and its mapping to gRPC status codes
//! (done here and nowhere else). "Not the leader" is `UNAVAILABLE` with the leader's
//! address in metadata ([`kiln_api::leader::not_leader`]), so that clients retry it; a
//! conflict is `FAILED_PRECONDITION`, final. The HTTP routes map it with
//! [`Error::http_status`].

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller is who they say, but may not do this.
    #[error("{0}")]
    Forbidden(String),
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

impl Error {
    /// The HTTP status of this error, for the HTTP routes (webhooks).
    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotLeader { .. } | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Storage(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let message = e.to_string();
        match e {
            Error::InvalidInput(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::Conflict(_) => tonic::Status::failed_precondition(message),
            Error::Forbidden(_) => tonic::Status::permission_denied(message),
            // Distinct from a conflict: clients retry it, at the leader it names.
            Error::NotLeader { leader } => kiln_api::leader::not_leader(message, leader.as_deref()),
            Error::Unavailable(_) => tonic::Status::unavailable(message),
            Error::Storage(_) | Error::Internal(_) => tonic::Status::internal(message),
        }
    }
}
