//! Who is calling: the principals a certificate names, and the roles a person's token gives.
//!
//! Machines prove who they are with a certificate from the cluster's CA (see [`crate::pki`]).
//! The certificate names its holder in one SAN URI, `spiffe://kiln/<kind>/<name>`:
//!
//! - `coordinator/<id>`: a member of the Raft cluster; the only certificates with the DNS name
//!   [`COORDINATOR_NAME`], so the only ones a client accepts from a server, and the only ones
//!   the Raft and membership calls accept from a caller.
//! - `agent/<node>`: the agent of one node, which may speak for that node and no other.
//! - `gateway/<name>`: a service gateway: it reads endpoints and reports traffic.
//! - `client/<name>`: an operator's certificate; it carries the `admin` role.
//!
//! People and automation usually hold a token instead (`kiln token create`), which carries one
//! [`Role`]. Roles are ordered: each includes the ones before it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The trust domain of every kiln SPIFFE id.
pub const TRUST_DOMAIN: &str = "kiln";

/// The DNS name every coordinator certificate holds and every client checks, whatever
/// address it dialled (as Nomad checks `server.<region>.nomad`): an agent or client
/// certificate cannot pose as a coordinator.
pub const COORDINATOR_NAME: &str = "coordinator.kiln";

/// What a token (or a client certificate) may do. Each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// See runs, logs, nodes, services, environments, repositories.
    Read,
    /// Start, cancel and rerun runs; trigger repositories.
    Submit,
    /// Deploy, scale, promote and roll back services.
    Deploy,
    /// Approve a deploy waiting for approval (not one's own).
    Approve,
    /// Everything: membership, repositories, environments, tokens, the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Read,
        Role::Submit,
        Role::Deploy,
        Role::Approve,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Deploy => "deploy",
            Role::Approve => "approve",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}: one of read, submit, deploy, approve, admin")
            })
    }

    /// Whether holding `self` is enough for a call that needs `need`.
    pub fn allows(self, need: Role) -> bool {
        self >= need
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A machine or operator a certificate names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Principal {
    Coordinator(u64),
    Agent(String),
    Gateway(String),
    Client(String),
}

impl Principal {
    /// Parses a role and a name as `kiln tls issue ROLE NAME` takes them.
    pub fn new(kind: &str, name: &str) -> Result<Principal, String> {
        check_name(name)?;
        match kind {
            "coordinator" => name
                .parse::<u64>()
                .ok()
                .filter(|id| *id != 0)
                .map(Principal::Coordinator)
                .ok_or_else(|| {
                    format!("a coordinator's name is its Raft id (non-zero), not {name:?}")
                }),
            "agent" => Ok(Principal::Agent(name.into())),
            "gateway" => Ok(Principal::Gateway(name.into())),
            "client" => Ok(Principal::Client(name.into())),
            other => Err(format!(
                "unknown certificate role {other:?}: one of coordinator, agent, gateway, client"
            )),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Principal::Coordinator(_) => "coordinator",
            Principal::Agent(_) => "agent",
            Principal::Gateway(_) => "gateway",
            Principal::Client(_) => "client",
        }
    }

    pub fn name(&self) -> String {
        match self {
            Principal::Coordinator(id) => id.to_string(),
            Principal::Agent(n) | Principal::Gateway(n) | Principal::Client(n) => n.clone(),
        }
    }

    /// The SAN URI that names this principal in its certificate.
    pub fn uri(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{}/{}", self.kind(), self.name())
    }

    /// The principal a SAN URI names, if it is a kiln SPIFFE id.
    pub fn from_uri(uri: &str) -> Option<Principal> {
        let rest = uri.strip_prefix("spiffe://")?.strip_prefix(TRUST_DOMAIN)?;
        let rest = rest.strip_prefix('/')?;
        let (kind, name) = rest.split_once('/')?;
        Principal::new(kind, name).ok()
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind(), self.name())
    }
}

/// A name in a certificate or token: 1 to 63 of `A-Z a-z 0-9 . _ -`, so it is one URI path
/// segment and one file name.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?}: 1 to 63 of A-Z a-z 0-9 . _ -, not starting with a dot"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_before_them() {
        assert!(Role::Admin.allows(Role::Approve));
        assert!(Role::Approve.allows(Role::Deploy));
        assert!(Role::Deploy.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Deploy));
        assert!(!Role::Deploy.allows(Role::Approve));
        assert_eq!(Role::parse("deploy"), Ok(Role::Deploy));
        assert!(Role::parse("root").unwrap_err().contains("one of read"));
    }

    #[test]
    fn spiffe_ids_round_trip_and_strangers_are_refused() {
        for p in [
            Principal::Coordinator(2),
            Principal::Agent("gpu-box-1".into()),
            Principal::Gateway("edge".into()),
            Principal::Client("alice".into()),
        ] {
            assert_eq!(Principal::from_uri(&p.uri()), Some(p));
        }
        assert_eq!(
            Principal::Agent("gpu-box-1".into()).uri(),
            "spiffe://kiln/agent/gpu-box-1"
        );
        for bad in [
            "spiffe://other/agent/a",
            "spiffe://kiln/root/a",
            "spiffe://kiln/agent/a/b",
            "spiffe://kiln/coordinator/0",
            "spiffe://kiln/coordinator/x",
            "https://kiln/agent/a",
            "spiffe://kilnx/agent/a",
        ] {
            assert_eq!(Principal::from_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_are_one_path_segment() {
        assert!(check_name("gpu-box_1.a").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
