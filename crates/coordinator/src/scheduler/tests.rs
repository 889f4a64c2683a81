//! Named rows for each rule, and passes over whole states.

use super::*;
use crate::state::{Command, NodeRegistration, NodeStatus, Response};
use kiln_api::spec::{Command as Cmd, Pipeline, Stage};

fn node(id: &str, cpu: u64, reserved: u64, labels: &[(&str, &str)], drivers: &[&str]) -> Node {
    Node {
        id: id.into(),
        status: NodeStatus::Ready,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        drivers: drivers.iter().map(|d| d.to_string()).collect(),
        capacity: Resources {
            cpu_millis: cpu,
            memory_bytes: 1 << 30,
        },
        reserved: Resources {
            cpu_millis: reserved,
            memory_bytes: 0,
        },
        allocations: Default::default(),
        status_changed_ms: 0,
    }
}

fn ask(cpu: u64, constraints: &[(&str, &str)]) -> Ask {
    Ask {
        resources: Resources {
            cpu_millis: cpu,
            memory_bytes: 1 << 20,
        },
        driver: "process",
        constraints: constraints
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn feasibility_rules() {
    let down = Node {
        status: NodeStatus::Down,
        ..node("d", 1000, 0, &[], &["process"])
    };
    let rows: Vec<(&str, Node, Ask, Result<(), &str>)> = vec![
        (
            "fits",
            node("a", 1000, 0, &[], &["process"]),
            ask(500, &[]),
            Ok(()),
        ),
        ("node down", down, ask(500, &[]), Err("node down")),
        (
            "driver missing",
            node("a", 1000, 0, &[], &["docker"]),
            ask(500, &[]),
            Err("driver not offered"),
        ),
        (
            "constraint met",
            node("a", 1000, 0, &[("gpu", "no")], &["process"]),
            ask(500, &[("gpu", "no")]),
            Ok(()),
        ),
        (
            "constraint value differs",
            node("a", 1000, 0, &[("gpu", "yes")], &["process"]),
            ask(500, &[("gpu", "no")]),
            Err("constraint not met"),
        ),
        (
            "constraint label absent",
            node("a", 1000, 0, &[], &["process"]),
            ask(500, &[("gpu", "no")]),
            Err("constraint not met"),
        ),
        (
            "cpu exactly full",
            node("a", 1000, 500, &[], &["process"]),
            ask(500, &[]),
            Ok(()),
        ),
        (
            "cpu over",
            node("a", 1000, 600, &[], &["process"]),
            ask(500, &[]),
            Err("cpu exhausted"),
        ),
    ];
    let checks = default_checks();
    for (name, n, a, want) in rows {
        let got = checks
            .iter()
            .try_for_each(|c| c.check(&n, Resources::default(), &a));
        assert_eq!(got, want, "row {name:?}");
    }
}

#[test]
fn binpack_prefers_the_fuller_node() {
    let a = ask(100, &[]);
    let empty = node("empty", 1000, 0, &[], &["process"]);
    let half = node("half", 1000, 500, &[], &["process"]);
    assert!(
        BinPack.score(&half, Resources::default(), &a)
            > BinPack.score(&empty, Resources::default(), &a)
    );
}

fn state_with(nodes: &[(&str, u64)], stages: Vec<(u64, &[(&str, &str)])>) -> ClusterState {
    let mut s = ClusterState::default();
    for (id, cpu) in nodes {
        let reg = NodeRegistration {
            id: id.to_string(),
            labels: Default::default(),
            drivers: vec!["process".into()],
            capacity: Resources {
                cpu_millis: *cpu,
                memory_bytes: 1 << 30,
            },
        };
        s.apply(&Command::RegisterNode {
            node: reg,
            now_ms: 0,
        });
    }
    let stages = stages
        .into_iter()
        .enumerate()
        .map(|(i, (cpu, c))| Stage {
            name: format!("s{i}"),
            needs: vec![],
            command: Cmd::Shell("true".into()),
            env: Default::default(),
            resources: Resources {
                cpu_millis: cpu,
                memory_bytes: 1 << 20,
            },
            retries: 0,
            timeout_ms: 1000,
            constraints: c
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            container: None,
        })
        .collect();
    let r = s.apply(&Command::SubmitRun {
        request_id: String::new(),
        trigger: String::new(),
        pipeline: Pipeline {
            name: "p".into(),
            stages,
        },
        now_ms: 0,
    });
    assert!(matches!(r, Response::Submitted { .. }));
    s
}

#[test]
fn a_pass_never_plans_more_than_fits_and_says_why_the_rest_wait() {
    let s = state_with(
        &[("n1", 1000), ("n2", 1000)],
        vec![(600, &[]), (600, &[]), (600, &[])],
    );
    let pass = schedule(&s, 7, &SchedulerConfig::default());
    assert_eq!(pass.placements.len(), 2);
    let nodes: std::collections::BTreeSet<_> =
        pass.placements.iter().map(|p| p.node.clone()).collect();
    assert_eq!(nodes.len(), 2, "one 600m task per 1000m node");
    assert_eq!(
        pass.waiting.values().next().unwrap(),
        "no node fits: cpu exhausted on 2 nodes"
    );
}

#[test]
fn a_pass_is_replayable_from_its_number() {
    let nodes: Vec<(String, u64)> = (0..50).map(|i| (format!("n{i}"), 4000)).collect();
    let refs: Vec<(&str, u64)> = nodes.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let s = state_with(&refs, (0..40).map(|_| (100u64, &[][..])).collect());
    let a = schedule(&s, 42, &SchedulerConfig::default());
    let b = schedule(&s, 42, &SchedulerConfig::default());
    assert_eq!(a, b);
    assert_eq!(a.placements.len(), 40);
}

#[test]
fn exact_scoring_packs_onto_the_fullest_node() {
    let mut s = state_with(&[("big", 8000), ("small", 1000)], vec![(500, &[])]);
    s.nodes.get_mut("big").unwrap().reserved.cpu_millis = 7000;
    let pass = schedule(
        &s,
        1,
        &SchedulerConfig {
            sample: None,
            ..Default::default()
        },
    );
    assert_eq!(pass.placements[0].node, "big", "7.5/8 is fuller than 0.5/1");
}

#[test]
fn applying_a_pass_accepts_all_of_it() {
    let mut s = state_with(
        &[("n1", 1000), ("n2", 1000)],
        vec![(300, &[]), (300, &[]), (300, &[]), (300, &[])],
    );
    let pass = schedule(&s, 3, &SchedulerConfig::default());
    let r = s.apply(&Command::PlaceBatch {
        pass: 3,
        placements: pass.placements.clone(),
        now_ms: 1,
    });
    let Response::Placed { accepted, rejected } = r else {
        panic!()
    };
    assert_eq!((accepted.len(), rejected.len()), (4, 0));
    assert!(s.pending.is_empty());
}

#[test]
fn a_container_stage_asks_for_docker_and_says_when_no_node_offers_it() {
    use kiln_api::spec::{Container, ImageRef};
    let mut s = state_with(&[("n1", 1000), ("n2", 1000)], vec![(100, &[])]);
    let run = s.runs.values_mut().next().unwrap();
    run.pipeline.stages[0].container = Some(Container::Image(ImageRef::Named("busybox".into())));
    let stage = &run.pipeline.stages[0];
    assert_eq!(Ask::of(stage).driver, "docker");

    let pass = schedule(&s, 1, &SchedulerConfig::default());
    assert!(pass.placements.is_empty());
    assert_eq!(
        pass.waiting.values().next().unwrap(),
        "no node offers driver docker: 2 ready nodes offer process"
    );

    // Once a node offers it, the stage goes there and nowhere else.
    s.nodes.get_mut("n2").unwrap().drivers.push("docker".into());
    let pass = schedule(&s, 2, &SchedulerConfig::default());
    assert_eq!(pass.placements.len(), 1);
    assert_eq!(pass.placements[0].node, "n2");
}
