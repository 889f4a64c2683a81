//! The rollout controller's plans, driven through the real state machine: each step applies
//! the plan, then plays the agents (placements, running, health) and the clock.

use crate::state::{Response, ServiceChanged};
use std::collections::BTreeSet;

use kiln_api::validate::parse_service;
use proptest::prelude::*;

use super::*;
use crate::state::services::Deploy;
use crate::state::{ClusterState, NodeRegistration, Placement, TaskEvent, TaskRef};

const SPEC: &str = "name: m\ncommand: ./serve\nreplicas: 3\nhealth: { http: /ready }\nupdate: { max_surge: 1, max_unavailable: 0, min_healthy_time: 1s, healthy_deadline: 60s, auto_revert: true }\n";

struct World {
    s: ClusterState,
    now: i64,
    /// Revisions whose replicas never pass a check.
    broken: BTreeSet<u32>,
}

impl World {
    fn new() -> World {
        let mut s = ClusterState::default();
        for n in ["n1", "n2", "n3"] {
            s.apply(&Command::RegisterNode {
                node: NodeRegistration {
                    id: n.into(),
                    labels: Default::default(),
                    drivers: vec!["process".into()],
                    capacity: kiln_api::spec::Resources {
                        cpu_millis: 64_000,
                        memory_bytes: 1 << 40,
                    },
                    gpus: vec![],
                },
                now_ms: 0,
            });
        }
        World {
            s,
            now: 1_000,
            broken: BTreeSet::new(),
        }
    }

    fn deploy(&mut self, yaml: &str) {
        let spec = parse_service("svc.yaml", yaml).expect("valid");
        let d = Deploy::new(spec, "default");
        self.s.apply(&Command::Deploy {
            deploy: Box::new(d),
            request_id: String::new(),
            now_ms: self.now,
        });
    }

    fn service(&self) -> &Service {
        self.s.services.values().next().expect("a service")
    }

    /// One controller step, then the agents: place what is pending, start what is placed,
    /// report health, and end what was killed (every gateway drained at once).
    fn step(&mut self) {
        let number = self.service().number;
        let drained = self.service().replicas.keys().copied().collect();
        let actions = plan(self.service(), self.now, &drained);
        if !actions.is_empty() {
            let r = self.s.apply(&Command::ServiceActions {
                service: number,
                actions,
                now_ms: self.now,
            });
            if let Response::ServiceChanged(ServiceChanged { kills, .. }) = r {
                for k in kills {
                    self.event(k.task, &k.node, TaskStatus::Failed, None);
                }
            }
        }
        let pending: Vec<TaskRef> = self.s.pending.iter().copied().collect();
        let ready: Vec<String> = self
            .s
            .nodes
            .values()
            .filter(|n| n.status == crate::state::NodeStatus::Ready)
            .map(|n| n.id.clone())
            .collect();
        for (i, task) in pending.into_iter().enumerate() {
            let attempt = self.s.task(task).unwrap().attempt;
            let node = ready[i % ready.len()].clone();
            self.s.apply(&Command::PlaceBatch {
                pass: self.now as u64,
                placements: vec![Placement {
                    task,
                    attempt,
                    node: node.clone(),
                    gpus: vec![],
                }],
                now_ms: self.now,
            });
            self.event(task, &node, TaskStatus::Running, None);
        }
        let running: Vec<(u32, u32, String, bool)> = self
            .service()
            .replicas
            .iter()
            .filter(|(_, r)| r.task.status == TaskStatus::Running && r.healthy_since.is_none())
            .map(|(&slot, r)| {
                (
                    slot,
                    r.revision,
                    r.task.current().unwrap().node.clone(),
                    false,
                )
            })
            .collect();
        for (slot, revision, node, _) in running {
            if !self.broken.contains(&revision) {
                self.event(
                    TaskRef::replica(number, slot),
                    &node,
                    TaskStatus::Running,
                    Some(true),
                );
            }
        }
        self.now += 250;
    }

    fn event(&mut self, task: TaskRef, node: &str, status: TaskStatus, health: Option<bool>) {
        let attempt = self.s.task(task).map_or(0, |t| t.attempt);
        self.s.apply(&Command::TaskEvents {
            node: node.into(),
            events: vec![TaskEvent {
                task,
                attempt,
                status,
                exit_code: None,
                message: String::new(),
                at_ms: self.now,
                image: None,
                endpoint: Some(format!("{node}:8080")),
                health,
                metrics_endpoint: None,
                artifacts: Default::default(),
            }],
            now_ms: self.now,
        });
    }

    fn serving(&self) -> usize {
        self.service()
            .replicas
            .values()
            .filter(|r| r.serving())
            .count()
    }

    fn live(&self) -> usize {
        self.service()
            .replicas
            .values()
            .filter(|r| r.live())
            .count()
    }

    fn revisions_serving(&self) -> BTreeSet<u32> {
        self.service()
            .replicas
            .values()
            .filter(|r| r.serving())
            .map(|r| r.revision)
            .collect()
    }

    /// Steps until `done`, checking the rolling-update bounds at every step.
    fn run_until(&mut self, max_steps: usize, done: impl Fn(&World) -> bool) {
        for _ in 0..max_steps {
            if done(self) {
                return;
            }
            self.step();
            let desired = self.service().desired as usize;
            assert!(
                self.live() <= desired + 1,
                "max_surge 1: {} live",
                self.live()
            );
        }
        panic!(
            "not done after {max_steps} steps: {:#?}",
            self.service().events
        );
    }
}

#[test]
fn a_first_deploy_starts_every_replica_and_becomes_stable() {
    let mut w = World::new();
    w.deploy(SPEC);
    w.run_until(20, |w| w.service().rollout.is_none());
    assert_eq!(w.serving(), 3);
    assert_eq!(w.service().stable, Some(1));
    let nodes: BTreeSet<String> = w
        .service()
        .replicas
        .values()
        .map(|r| r.task.current().unwrap().node.clone())
        .collect();
    assert_eq!(nodes.len(), 3);
}

#[test]
fn a_rolling_update_never_drops_below_desired_and_ends_on_the_new_revision() {
    let mut w = World::new();
    w.deploy(SPEC);
    w.run_until(20, |w| w.service().rollout.is_none());
    w.deploy(&SPEC.replace("./serve", "./serve --v2"));
    let mut steps = 0;
    while w.service().rollout.is_some() {
        w.step();
        assert!(
            w.serving() >= 3,
            "max_unavailable 0: {} serving",
            w.serving()
        );
        steps += 1;
        assert!(steps < 60, "{:#?}", w.service().events);
    }
    assert_eq!(w.revisions_serving(), BTreeSet::from([2]));
    assert_eq!(w.service().stable, Some(2));
    w.run_until(10, |w| w.service().replicas.len() == 3);
}

#[test]
fn a_revision_that_never_gets_healthy_is_reverted_with_every_old_replica_serving() {
    let mut w = World::new();
    w.deploy(SPEC);
    w.run_until(20, |w| w.service().rollout.is_none());
    w.broken.insert(2);
    w.deploy(&SPEC.replace("./serve", "./broken").replace("60s", "5s"));
    w.run_until(60, |w| {
        w.service().rollout.is_none() && w.service().replicas.values().all(|r| r.revision == 1)
    });
    assert_eq!(w.serving(), 3, "the old replicas served all along");
    assert_eq!(w.service().target, 1);
    let r2 = w.service().revision(2).unwrap();
    assert!(
        r2.failed
            .as_ref()
            .unwrap()
            .contains("0 of 3 replicas healthy"),
        "{r2:?}"
    );
    assert!(
        w.service()
            .events
            .iter()
            .any(|(_, e)| e == "reverted to revision 1")
    );
}

#[test]
fn canaries_wait_for_promotion_then_roll_on() {
    let mut w = World::new();
    w.deploy(SPEC);
    w.run_until(20, |w| w.service().rollout.is_none());
    w.deploy(
        &SPEC
            .replace("./serve", "./serve --v2")
            .replace("auto_revert: true", "canary: 1"),
    );
    for _ in 0..20 {
        w.step();
    }
    let by_rev = |w: &World, rev: u32| {
        w.service()
            .replicas
            .values()
            .filter(|r| r.serving() && r.revision == rev)
            .count()
    };
    assert_eq!(
        (by_rev(&w, 1), by_rev(&w, 2)),
        (3, 1),
        "one canary beside all old replicas"
    );
    let number = w.service().number;
    w.s.apply(&Command::ServiceActions {
        service: number,
        actions: vec![ServiceAction::Promote],
        now_ms: w.now,
    });
    w.run_until(60, |w| w.service().rollout.is_none());
    assert_eq!(w.revisions_serving(), BTreeSet::from([2]));
}

#[test]
fn a_rollback_starts_everything_at_once_and_a_lost_replica_is_replaced() {
    let mut w = World::new();
    w.deploy(SPEC);
    w.run_until(20, |w| w.service().rollout.is_none());
    w.deploy(&SPEC.replace("./serve", "./serve --v2"));
    w.run_until(60, |w| w.service().rollout.is_none());
    let number = w.service().number;
    w.s.apply(&Command::Rollback {
        service: number,
        to: Some(1),
        reason: None,
        now_ms: w.now,
    });
    w.step();
    let new = w
        .service()
        .replicas
        .values()
        .filter(|r| r.revision == 1)
        .count();
    assert_eq!(new, 3, "a rollback surges to the full count at once");
    w.run_until(10, |w| w.service().rollout.is_none());
    assert_eq!(w.revisions_serving(), BTreeSet::from([1]));

    // n1 goes away: its replica is lost, placed again, and serves.
    w.s.apply(&Command::MarkNodeDown {
        node: "n1".into(),
        now_ms: w.now,
    });
    assert!(w.serving() < 3);
    w.run_until(10, |w| w.serving() == 3);
    let on_n1 = w
        .service()
        .replicas
        .values()
        .filter(|r| r.task.current().is_some_and(|a| a.node == "n1"))
        .count();
    assert_eq!(on_n1, 0);
}

proptest! {
    /// Whatever the replica count, surge and availability settings, and whichever new
    /// replicas come up healthy, a rolling update never runs more than desired + max_surge
    /// live replicas nor serves fewer than desired - max_unavailable, and it ends: on the
    /// new revision, or back on the old one.
    #[test]
    fn rolling_updates_keep_their_bounds(
        replicas in 1u32..6, surge in 0u32..3, unavailable in 0u32..3, broken in any::<bool>(),
    ) {
        prop_assume!(surge + unavailable > 0);
        let spec = format!(
            "name: m\ncommand: ./serve\nreplicas: {replicas}\nupdate: {{ max_surge: {surge}, max_unavailable: {unavailable}, min_healthy_time: 500ms, healthy_deadline: 10s, auto_revert: true }}\n"
        );
        let mut w = World::new();
        w.deploy(&spec);
        w.run_until(30, |w| w.service().rollout.is_none());
        if broken {
            w.broken.insert(2);
        }
        w.deploy(&spec.replace("./serve", "./serve --v2"));
        let (n, floor) = (replicas as usize, replicas.saturating_sub(unavailable) as usize);
        for _ in 0..200 {
            if w.service().rollout.is_none() && w.live() == n {
                break;
            }
            w.step();
            prop_assert!(w.live() <= n + surge as usize, "{} live", w.live());
            prop_assert!(w.serving() >= floor, "{} serving, floor {floor}", w.serving());
        }
        prop_assert!(w.service().rollout.is_none(), "{:#?}", w.service().events);
        let want = if broken { 1 } else { 2 };
        prop_assert_eq!(w.revisions_serving(), BTreeSet::from([want]));
        prop_assert_eq!(w.serving(), n);
    }
}

#[test]
fn a_stopped_replica_is_marked_so_a_lost_kill_is_sent_again() {
    let mut w = World::new();
    w.deploy(SPEC);
    w.run_until(20, |w| w.service().rollout.is_none());
    let number = w.service().number;
    let slot = *w.service().replicas.keys().next().unwrap();
    w.s.apply(&Command::ServiceActions {
        service: number,
        actions: vec![ServiceAction::Drain { slot }],
        now_ms: w.now,
    });
    let r = w.s.apply(&Command::ServiceActions {
        service: number,
        actions: vec![ServiceAction::Stop { slot }],
        now_ms: w.now,
    });
    let Response::ServiceChanged(ServiceChanged { kills, .. }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(kills.len(), 1);
    let replica = &w.service().replicas[&slot];
    assert!(
        replica.stopping && replica.task.cancel_requested,
        "reconciliation kills it again"
    );
    // A stale promotion in the same batch as a real decision does not undo the decision.
    let r = w.s.apply(&Command::ServiceActions {
        service: number,
        actions: vec![ServiceAction::Start { revision: 1 }, ServiceAction::Promote],
        now_ms: w.now,
    });
    assert!(
        matches!(r, Response::ServiceChanged(ServiceChanged { .. })),
        "{r:?}"
    );
}

#[test]
fn the_autoscalers_scale_is_skipped_once_a_rollout_has_started() {
    let mut w = World::new();
    w.deploy(SPEC);
    w.run_until(20, |w| w.service().rollout.is_none());
    w.deploy(&SPEC.replace("./serve", "./serve --v2"));
    let number = w.service().number;
    let scale = |unless_rolling| ServiceAction::Scale {
        replicas: 7,
        reason: "test".into(),
        unless_rolling,
    };
    w.s.apply(&Command::ServiceActions {
        service: number,
        actions: vec![scale(true)],
        now_ms: w.now,
    });
    assert_eq!(
        w.service().desired,
        3,
        "the autoscaler waits for the rollout"
    );
    w.s.apply(&Command::ServiceActions {
        service: number,
        actions: vec![scale(false)],
        now_ms: w.now,
    });
    assert_eq!(w.service().desired, 7, "kiln scale does not");
}
