//! Who may make each call: one table, from gRPC method path to the callers it admits.
//!
//! A call not in the table is refused: a new RPC is closed until someone writes its line
//! here (and a test in `tests/security.rs` shows a caller without the role refused).

use kiln_api::auth::Role;

/// Who is calling, once authenticated (see `layer.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Coordinator(u64),
    Agent(String),
    Gateway(String),
    /// An operator's certificate, a token, or (plaintext loopback only) anyone: a role.
    Person {
        name: String,
        role: Role,
    },
}

/// The callers a call admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub coordinator: bool,
    pub agent: bool,
    pub gateway: bool,
    /// The least role a person needs; `None` admits no person.
    pub role: Option<Role>,
    /// Anyone, authenticated or not (health checks, reflection).
    pub public: bool,
}

const NOBODY: Need = Need {
    coordinator: false,
    agent: false,
    gateway: false,
    role: None,
    public: false,
};

const fn person(role: Role) -> Need {
    Need {
        role: Some(role),
        ..NOBODY
    }
}

/// One call's rule: who may make it, and whether it changes anything (and so is audited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub need: Need,
    pub mutates: bool,
}

const fn read(role: Role) -> Rule {
    Rule {
        need: person(role),
        mutates: false,
    }
}

const fn write(role: Role) -> Rule {
    Rule {
        need: person(role),
        mutates: true,
    }
}

/// The rule for a gRPC method path (`/kiln.v1.Kiln/Deploy`) or an HTTP route, or `None`:
/// refused.
pub fn rule(path: &str) -> Option<Rule> {
    // The HTTP port: probes, metrics, and webhooks (which prove themselves with the forge's
    // signature or token, checked by `api/webhooks`).
    if path == "/healthz" || path.starts_with("/hooks/") {
        return Some(Rule {
            need: Need {
                public: true,
                ..NOBODY
            },
            mutates: false,
        });
    }
    if path == "/metrics" {
        return Some(read(Role::Read));
    }
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    use Role::*;
    let rule = match (service, method) {
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => Rule {
            need: Need {
                public: true,
                ..NOBODY
            },
            mutates: false,
        },
        ("kiln.v1.Raft", _) => Rule {
            need: Need {
                coordinator: true,
                ..NOBODY
            },
            mutates: false,
        },
        // Audited: a node joins (or is refused, when it is not the one the certificate
        // names).
        ("kiln.v1.AgentService", "Session") => Rule {
            need: Need {
                agent: true,
                ..NOBODY
            },
            mutates: true,
        },
        ("kiln.v1.Gateway", _) => Rule {
            need: Need {
                gateway: true,
                ..person(Admin)
            },
            mutates: false,
        },
        ("kiln.v1.Blobs", "FetchBlob") => Rule {
            need: Need {
                coordinator: true,
                agent: true,
                ..person(Read)
            },
            mutates: false,
        },
        ("kiln.v1.Blobs", "PutBlob") => Rule {
            need: Need {
                coordinator: true,
                agent: true,
                ..person(Deploy)
            },
            mutates: false,
        },
        ("kiln.v1.TestQueue", "NextTests" | "ReportTests") => Rule {
            need: Need {
                agent: true,
                ..person(Submit)
            },
            mutates: false,
        },
        ("kiln.v1.Kiln", method) => match method {
            "GetRun" | "ListRuns" | "ListNodes" | "StreamLogs" | "ClusterStatus"
            | "GetTestReport" | "ListServices" | "GetService" | "ListEnvironments"
            | "ListRepositories" | "ListSecrets" => read(Read),
            "SubmitRun" | "CancelRun" | "RerunRun" | "TriggerRepository" => write(Submit),
            "Deploy" | "Rollback" | "Scale" | "Promote" | "PromoteRevision" => write(Deploy),
            "Approve" => write(Approve),
            "LeaveCluster" | "CreateEnvironment" | "AddRepository" | "RemoveRepository"
            | "CreateToken" | "RevokeToken" | "SetSecret" | "RemoveSecret" => write(Admin),
            "ListTokens" | "ListAudit" | "SaveSnapshot" => read(Admin),
            // A new coordinator asks to join with its own certificate.
            "JoinCluster" => Rule {
                need: Need {
                    coordinator: true,
                    ..person(Admin)
                },
                mutates: true,
            },
            // Between coordinators only: a follower relays a webhook delivery, or the
            // audit entries of calls it answered, to the leader.
            "DeliverWebhook" | "RecordAudit" => Rule {
                need: Need {
                    coordinator: true,
                    ..NOBODY
                },
                mutates: false,
            },
            _ => return None,
        },
        _ => return None,
    };
    Some(rule)
}

impl Need {
    pub fn admits(&self, who: &Who) -> bool {
        match who {
            Who::Coordinator(_) => self.coordinator,
            Who::Agent(_) => self.agent,
            Who::Gateway(_) => self.gateway,
            Who::Person { role, .. } => self.role.is_some_and(|need| role.allows(need)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who_all() -> Vec<Who> {
        let mut all = vec![
            Who::Coordinator(1),
            Who::Agent("a".into()),
            Who::Gateway("g".into()),
        ];
        all.extend(Role::ALL.map(|role| Who::Person {
            name: "p".into(),
            role,
        }));
        all
    }

    fn admitted(path: &str) -> Vec<Who> {
        let rule = rule(path).unwrap_or_else(|| panic!("no rule for {path}"));
        who_all()
            .into_iter()
            .filter(|w| rule.need.admits(w))
            .collect()
    }

    #[test]
    fn raft_and_relays_admit_coordinators_only() {
        for path in [
            "/kiln.v1.Raft/AppendEntries",
            "/kiln.v1.Raft/Vote",
            "/kiln.v1.Raft/InstallSnapshot",
            "/kiln.v1.Kiln/DeliverWebhook",
            "/kiln.v1.Kiln/RecordAudit",
        ] {
            assert_eq!(admitted(path), vec![Who::Coordinator(1)], "{path}");
        }
    }

    #[test]
    fn membership_needs_admin_and_agents_never_get_client_calls() {
        let leave = admitted("/kiln.v1.Kiln/LeaveCluster");
        assert_eq!(leave.len(), 1);
        assert!(matches!(
            leave[0],
            Who::Person {
                role: Role::Admin,
                ..
            }
        ));
        for path in [
            "/kiln.v1.Kiln/SubmitRun",
            "/kiln.v1.Kiln/Deploy",
            "/kiln.v1.Kiln/ListRuns",
        ] {
            assert!(!admitted(path).contains(&Who::Agent("a".into())), "{path}");
        }
    }

    #[test]
    fn roles_climb_from_read_to_admin() {
        let least = |path: &str| {
            rule(path)
                .and_then(|r| r.need.role)
                .unwrap_or_else(|| panic!("{path}"))
        };
        assert_eq!(least("/kiln.v1.Kiln/ListRuns"), Role::Read);
        assert_eq!(least("/kiln.v1.Kiln/SubmitRun"), Role::Submit);
        assert_eq!(least("/kiln.v1.Kiln/Deploy"), Role::Deploy);
        assert_eq!(least("/kiln.v1.Kiln/Approve"), Role::Approve);
        assert_eq!(least("/kiln.v1.Kiln/CreateToken"), Role::Admin);
        assert!(rule("/kiln.v1.Kiln/Deploy").is_some_and(|r| r.mutates));
        assert!(rule("/kiln.v1.Kiln/ListRuns").is_some_and(|r| !r.mutates));
    }

    #[test]
    fn metrics_need_read_while_probes_and_webhooks_are_open() {
        assert_eq!(rule("/metrics").and_then(|r| r.need.role), Some(Role::Read));
        assert!(rule("/healthz").is_some_and(|r| r.need.public));
        assert!(rule("/hooks/app").is_some_and(|r| r.need.public));
        assert_eq!(rule("/hooks"), None);
    }

    #[test]
    fn unknown_calls_are_closed() {
        for path in ["/kiln.v1.Kiln/Nope", "/other.Svc/Call", "", "/", "nonsense"] {
            assert_eq!(rule(path), None, "{path}");
        }
    }
}
