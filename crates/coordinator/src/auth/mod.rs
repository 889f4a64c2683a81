//! Who is calling, and may they: the one gate every gRPC call passes.
//!
//! A coordinator serves TLS only, with the cluster CA as the only root ([`tls`]). A caller
//! shows a certificate, a token, or both:
//!
//! - A **certificate** names a principal in a SAN URI (`spiffe://kiln/agent/gpu-box-1`, see
//!   [`kiln_api::auth`]). The TLS handshake checks that the caller holds the certificate's
//!   key; whether the CA issued it and whether it is still valid is checked by [`layer`] for
//!   every call, so that a foreign or expired certificate is refused with a gRPC status
//!   (`UNAUTHENTICATED`) and an audit entry that names what it claimed, rather than a
//!   handshake failure nobody can read.
//! - A **token** (`authorization: Bearer kiln_<id>_<secret>`) names a person or a robot and
//!   carries one role; the state keeps its hash ([`crate::state::access`]).
//!
//! [`policy`] then says, from the method path alone, which callers the call admits: Raft
//! and relays only coordinators, the agent stream only agents (and `api/agent.rs` checks that
//! the node an agent registers is the one its certificate names), client calls a least role.
//! A call nobody wrote a rule for is refused.
//!
//! [`audit`] records every mutating call and every refusal in the replicated audit log.
//!
//! `--insecure` (plaintext, loopback addresses only) turns all of this off: for a test on
//! one machine, never for a cluster.

pub mod audit;
pub mod layer;
pub mod policy;
pub mod tls;
pub mod tokens;

use std::sync::{Arc, Mutex};

pub use layer::{AuthLayer, Authenticator, HttpPeer};
pub use policy::Who;

/// The authenticated caller of one request, in its extensions for the handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    pub who: Who,
    /// `client/alice`, `token/ci`, `agent/gpu-1`, `coordinator/2`.
    pub principal: String,
    pub peer: String,
    /// What the call named, for its audit entry (set by the handler).
    target: Arc<Mutex<String>>,
}

impl Caller {
    pub fn new(who: Who, principal: String, peer: String) -> Caller {
        Caller {
            who,
            principal,
            peer,
            target: Arc::default(),
        }
    }

    /// The caller of a request, where the coordinator authenticates (not with `--insecure`).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Caller> {
        request.extensions().get::<Caller>()
    }

    pub fn target(&self) -> String {
        self.target.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Names what the call acts on, for its audit entry.
    pub fn set_target(&self, what: impl Into<String>) {
        if let Ok(mut t) = self.target.lock() {
            *t = what.into();
        }
    }
}

/// Names what a request acts on (`run 12`, `service web in production`) in its audit entry.
pub fn target<T>(request: &tonic::Request<T>, what: impl Into<String>) {
    if let Some(caller) = Caller::of(request) {
        caller.set_target(what);
    }
}

/// The principal who sent a request; `None` where nobody is authenticated (`--insecure`).
pub fn principal_of<T>(request: &tonic::Request<T>) -> Option<String> {
    Caller::of(request).map(|c| c.principal.clone())
}
