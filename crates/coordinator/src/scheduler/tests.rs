//! Named rows for each rule, and passes over whole states.

use super::*;
use crate::state::command::{Placed, Submitted};
use crate::state::{Command, GpuDevice, NodeRegistration, NodeStatus, Response};
use kiln_api::spec::{Command as Cmd, GpuRequest, Pipeline, Stage};

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
        gpus: Vec::new(),
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
        gpu: None,
        group: None,
    }
}

const GIB: u64 = 1 << 30;

/// `n` GPUs of `model` with `gib` GiB each, NVLinked in the given pairs.
fn gpus(n: u32, model: &str, gib: u64, links: &[(u32, u32)]) -> Vec<GpuDevice> {
    (0..n)
        .map(|i| GpuDevice {
            index: i,
            uuid: format!("GPU-{i}"),
            model: model.into(),
            memory_bytes: gib * GIB,
            nvlink_peers: links
                .iter()
                .filter_map(|&(a, b)| {
                    if a == i {
                        Some(b)
                    } else if b == i {
                        Some(a)
                    } else {
                        None
                    }
                })
                .collect(),
            simulated: true,
        })
        .collect()
}

fn whole(count: u32) -> GpuRequest {
    GpuRequest {
        count,
        ..Default::default()
    }
}

fn share(gib: u64) -> GpuRequest {
    GpuRequest {
        share_bytes: gib * GIB,
        ..Default::default()
    }
}

struct Cluster {
    state: ClusterState,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            state: ClusterState::default(),
        }
    }

    fn node(mut self, id: &str, cpu: u64, devices: Vec<GpuDevice>) -> Cluster {
        let reg = NodeRegistration {
            id: id.to_string(),
            labels: Default::default(),
            drivers: vec!["process".into()],
            capacity: Resources {
                cpu_millis: cpu,
                memory_bytes: 64 * GIB,
            },
            gpus: devices,
        };
        self.state.apply(&Command::RegisterNode {
            node: reg,
            now_ms: 0,
        });
        self
    }

    /// Submits one run whose stages have these (cpu, gpu) asks and no needs.
    fn submit(&mut self, stages: &[(u64, Option<GpuRequest>)]) {
        let stages = stages
            .iter()
            .enumerate()
            .map(|(i, (cpu, gpu))| Stage {
                interruptible: true,
                secrets: Vec::new(),
                name: format!("s{i}"),
                needs: vec![],
                command: Cmd::Shell("true".into()),
                env: Default::default(),
                resources: Resources {
                    cpu_millis: *cpu,
                    memory_bytes: 1 << 20,
                },
                gpu: gpu.clone(),
                container: None,
                shards: None,
                tests: None,
                deploy: None,
                artifacts: Vec::new(),
                inputs: Default::default(),
                retries: 0,
                timeout_ms: 1000,
                constraints: Default::default(),
            })
            .collect();
        let pipeline = Pipeline {
            on: None,
            concurrency: None,
            name: "p".into(),
            stages,
        };
        let r = self.state.apply(&Command::SubmitRun {
            request_id: String::new(),
            trigger: String::new(),
            pipeline,
            only_tests: Default::default(),
            now_ms: 0,
        });
        assert!(matches!(r, Response::Submitted(Submitted { .. })));
    }

    /// Schedules and applies one pass; returns it.
    fn pass(&mut self, number: u64) -> Pass {
        let pass = schedule(
            &self.state,
            number,
            &SchedulerConfig {
                sample: None,
                ..Default::default()
            },
        );
        let r = self.state.apply(&Command::PlaceBatch {
            pass: number,
            placements: pass.placements.clone(),
            now_ms: 1,
        });
        let Response::Placed(Placed { rejected, .. }) = r else {
            panic!("{r:?}")
        };
        assert!(
            rejected.is_empty(),
            "the state machine rejected {rejected:?}"
        );
        pass
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
        (
            "gpu asked, none there",
            node("a", 1000, 0, &[], &["process"]),
            Ask {
                gpu: Some(whole(1)),
                ..ask(100, &[])
            },
            Err("no gpus"),
        ),
    ];
    let checks = default_checks();
    for (name, n, a, want) in rows {
        let got = checks
            .iter()
            .try_for_each(|c| c.check(&n, &Planned::default(), &a));
        assert_eq!(got, want, "row {name:?}");
    }
}

#[test]
fn gpu_feasibility_rules() {
    let h100 = gpus(4, "NVIDIA H100 80GB HBM3", 80, &[]);
    let a100 = gpus(2, "NVIDIA A100-SXM4-40GB", 40, &[]);
    type Row<'a> = (&'a str, Vec<GpuDevice>, GpuRequest, Result<(), &'a str>);
    let rows: Vec<Row> = vec![
        ("whole gpus fit", h100.clone(), whole(4), Ok(())),
        (
            "too many whole gpus",
            h100.clone(),
            whole(5),
            Err("gpus exhausted"),
        ),
        (
            "model glob matches",
            h100.clone(),
            GpuRequest {
                model: Some("*H100*".into()),
                ..whole(1)
            },
            Ok(()),
        ),
        (
            "model glob misses",
            a100.clone(),
            GpuRequest {
                model: Some("*H100*".into()),
                ..whole(1)
            },
            Err("no gpu matches the model or memory asked"),
        ),
        (
            "min memory met",
            h100.clone(),
            GpuRequest {
                min_memory_bytes: 80 * GIB,
                ..whole(1)
            },
            Ok(()),
        ),
        (
            "min memory missed",
            a100.clone(),
            GpuRequest {
                min_memory_bytes: 80 * GIB,
                ..whole(1)
            },
            Err("no gpu matches the model or memory asked"),
        ),
        ("share fits", a100.clone(), share(20), Ok(())),
        (
            "share larger than the gpu",
            a100,
            share(48),
            Err("no gpu matches the model or memory asked"),
        ),
    ];
    let checks = default_checks();
    for (name, devices, request, want) in rows {
        let c = Cluster::new().node("n", 8000, devices);
        let n = &c.state.nodes["n"];
        let a = Ask {
            gpu: Some(request),
            ..ask(100, &[])
        };
        let got = checks
            .iter()
            .try_for_each(|c| c.check(n, &Planned::default(), &a));
        assert_eq!(got, want, "row {name:?}");
    }
}

#[test]
fn binpack_prefers_the_fuller_node_and_spread_the_emptier() {
    let a = ask(100, &[]);
    let empty = node("empty", 1000, 0, &[], &["process"]);
    let half = node("half", 1000, 500, &[], &["process"]);
    let p = Planned::default();
    assert!(BinPack.score(&half, &p, &a) > BinPack.score(&empty, &p, &a));
    assert!(Spread.score(&empty, &p, &a) > Spread.score(&half, &p, &a));
}

#[test]
fn two_20gib_shares_land_on_one_80gb_gpu() {
    let mut c = Cluster::new().node("n", 8000, gpus(2, "NVIDIA H100 80GB HBM3", 80, &[]));
    c.submit(&[(100, Some(share(20))), (100, Some(share(20)))]);
    let pass = c.pass(1);
    let indices: Vec<u32> = pass.placements.iter().map(|p| p.gpus[0].index).collect();
    assert_eq!(
        indices,
        vec![0, 0],
        "the second share goes on the already shared GPU"
    );
    let gpu1 = &c.state.nodes["n"].gpus[1];
    assert!(gpu1.is_free(), "GPU 1 stays whole");
}

#[test]
fn shares_prefer_a_node_whose_gpu_is_already_shared() {
    let mut c = Cluster::new()
        .node("fresh", 8000, gpus(1, "H100", 80, &[]))
        .node("shared", 8000, gpus(1, "H100", 80, &[]));
    c.submit(&[(100, Some(share(10)))]);
    // Put the first share on "shared" by hand, then see where the next one goes.
    let first = c.state.pending.iter().next().copied().unwrap();
    let grant = GpuGrant {
        index: 0,
        whole: false,
        memory_bytes: 10 * GIB,
    };
    let p = Placement {
        task: first,
        attempt: 1,
        node: "shared".into(),
        gpus: vec![grant],
    };
    c.state.apply(&Command::PlaceBatch {
        pass: 0,
        placements: vec![p],
        now_ms: 0,
    });
    c.submit(&[(100, Some(share(10)))]);
    let pass = c.pass(2);
    assert_eq!(
        pass.placements[0].node, "shared",
        "fragmentation: keep the fresh node's GPU whole"
    );
}

#[test]
fn multi_gpu_asks_take_nvlink_connected_sets() {
    // 0-1 and 2-3 are NVLinked pairs; 0-2 is not.
    let mut c = Cluster::new().node("n", 8000, gpus(4, "H100", 80, &[(0, 1), (2, 3)]));
    c.submit(&[(100, Some(whole(1))), (100, Some(whole(2)))]);
    let pass = c.pass(1);
    let single: Vec<u32> = pass.placements[0].gpus.iter().map(|g| g.index).collect();
    let pair: Vec<u32> = pass.placements[1].gpus.iter().map(|g| g.index).collect();
    let connected = |set: &[u32]| set == [0, 1] || set == [2, 3];
    assert!(
        connected(&pair),
        "the pair {pair:?} must be NVLinked (single took {single:?})"
    );
    assert!(!pair.contains(&single[0]));
}

#[test]
fn a_single_gpu_goes_where_it_breaks_no_nvlink_pair() {
    // 0-1 linked, 2 alone: one GPU should take 2 and leave the pair whole.
    let mut c = Cluster::new().node("n", 8000, gpus(3, "H100", 80, &[(0, 1)]));
    c.submit(&[(100, Some(whole(1)))]);
    let pass = c.pass(1);
    assert_eq!(pass.placements[0].gpus[0].index, 2);
}

#[test]
fn cpu_work_avoids_gpu_nodes_while_cpu_nodes_fit() {
    let mut c = Cluster::new()
        .node("gpu", 8000, gpus(1, "H100", 80, &[]))
        .node("cpu", 1000, vec![]);
    c.submit(&[(600, None), (600, None)]);
    let pass = c.pass(1);
    assert_eq!(pass.placements[0].node, "cpu");
    assert_eq!(
        pass.placements[1].node, "gpu",
        "once the CPU node is full, the GPU node takes CPU work"
    );
}

#[test]
fn a_gpu_ask_that_cannot_fit_waits_with_its_reason_and_is_placed_once_room_frees() {
    let mut c = Cluster::new().node("n", 8000, gpus(1, "H100", 80, &[]));
    c.submit(&[(100, Some(whole(1))), (100, Some(whole(1)))]);
    let pass = c.pass(1);
    assert_eq!(pass.placements.len(), 1);
    assert_eq!(
        pass.waiting.values().next().unwrap(),
        "no node fits: gpus exhausted on 1 node"
    );
    // The first finishes; the second is placed on the freed GPU.
    let done = pass.placements[0].task;
    let e = crate::state::TaskEvent {
        task: done,
        attempt: 1,
        status: crate::state::TaskStatus::Succeeded,
        exit_code: Some(0),
        message: String::new(),
        at_ms: 2,
        image: None,
        endpoint: None,
        health: None,
        metrics_endpoint: None,
        artifacts: Default::default(),
    };
    c.state.apply(&Command::TaskEvents {
        node: "n".into(),
        events: vec![e],
        now_ms: 2,
    });
    let pass = c.pass(2);
    assert_eq!(pass.placements.len(), 1);
    assert_eq!(pass.placements[0].gpus[0].index, 0);
}

#[test]
fn the_state_machine_rejects_grants_that_collide() {
    let mut c = Cluster::new().node("n", 8000, gpus(1, "H100", 80, &[]));
    c.submit(&[(100, Some(whole(1))), (100, Some(share(10)))]);
    let tasks: Vec<TaskRef> = c.state.pending.iter().copied().collect();
    let g = |whole, gib| {
        vec![GpuGrant {
            index: 0,
            whole,
            memory_bytes: gib * GIB,
        }]
    };
    let batch = vec![
        Placement {
            task: tasks[0],
            attempt: 1,
            node: "n".into(),
            gpus: g(true, 80),
        },
        Placement {
            task: tasks[1],
            attempt: 1,
            node: "n".into(),
            gpus: g(false, 10),
        },
    ];
    let r = c.state.apply(&Command::PlaceBatch {
        pass: 1,
        placements: batch,
        now_ms: 1,
    });
    let Response::Placed(Placed { accepted, rejected }) = r else {
        panic!()
    };
    assert_eq!(accepted.len(), 1);
    assert_eq!(rejected[0].1, "gpu memory exhausted");
}

#[test]
fn a_pass_never_plans_more_than_fits_and_says_why_the_rest_wait() {
    let mut c = Cluster::new()
        .node("n1", 1000, vec![])
        .node("n2", 1000, vec![]);
    c.submit(&[(600, None), (600, None), (600, None)]);
    let pass = schedule(&c.state, 7, &SchedulerConfig::default());
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
    let mut c = Cluster::new();
    for i in 0..50 {
        c = c.node(&format!("n{i}"), 4000, vec![]);
    }
    c.submit(&vec![(100, None); 40]);
    let a = schedule(&c.state, 42, &SchedulerConfig::default());
    let b = schedule(&c.state, 42, &SchedulerConfig::default());
    assert_eq!(a, b);
    assert_eq!(a.placements.len(), 40);
}

#[test]
fn exact_scoring_packs_onto_the_fullest_node() {
    let mut c = Cluster::new()
        .node("big", 8000, vec![])
        .node("small", 1000, vec![]);
    c.state.nodes.get_mut("big").unwrap().reserved.cpu_millis = 7000;
    c.submit(&[(500, None)]);
    let pass = schedule(
        &c.state,
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
    let mut c = Cluster::new()
        .node("n1", 1000, vec![])
        .node("n2", 1000, vec![]);
    c.submit(&[(300, None), (300, None), (300, None), (300, None)]);
    c.pass(3);
    assert!(c.state.pending.is_empty());
}

#[test]
fn a_container_stage_asks_for_docker_and_says_when_no_node_offers_it() {
    use kiln_api::spec::{Container, ImageRef};
    let mut c = Cluster::new()
        .node("n1", 1000, vec![])
        .node("n2", 1000, vec![]);
    c.submit(&[(100, None)]);
    let run = c.state.runs.values_mut().next().unwrap();
    run.pipeline.stages[0].container = Some(Container::Image(ImageRef::Named("busybox".into())));
    assert_eq!(Ask::of(&run.pipeline.stages[0]).driver, "docker");

    let pass = schedule(&c.state, 1, &SchedulerConfig::default());
    assert!(pass.placements.is_empty());
    assert_eq!(
        pass.waiting.values().next().unwrap(),
        "no node offers driver docker: 2 ready nodes offer process"
    );

    // Once a node offers it, the stage goes there and nowhere else.
    c.state
        .nodes
        .get_mut("n2")
        .unwrap()
        .drivers
        .push("docker".into());
    let pass = schedule(&c.state, 2, &SchedulerConfig::default());
    assert_eq!(pass.placements.len(), 1);
    assert_eq!(pass.placements[0].node, "n2");
}

#[test]
fn replicas_of_a_service_spread_over_nodes_while_pipeline_work_packs() {
    let mut c = Cluster::new()
        .node("a", 8000, vec![])
        .node("b", 8000, vec![])
        .node("c", 8000, vec![]);
    let spec = kiln_api::validate::parse_service(
        "svc.yaml",
        "name: m\ncommand: ./serve\nreplicas: 3\nresources: { cpu: 100m }\n",
    )
    .unwrap();
    let deploy = crate::state::services::Deploy::new(spec, "default");
    c.state.apply(&Command::Deploy {
        deploy: Box::new(deploy),
        request_id: String::new(),
        now_ms: 0,
    });
    let actions = vec![crate::state::ServiceAction::Start { revision: 1 }; 3];
    c.state.apply(&Command::ServiceActions {
        service: 1,
        actions,
        now_ms: 0,
    });
    c.submit(&[(100, None), (100, None), (100, None)]);
    let pass = c.pass(1);
    let nodes_of = |replica: bool| {
        pass.placements
            .iter()
            .filter(|p| matches!(p.task, TaskRef::Replica(_)) == replica)
            .map(|p| p.node.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(nodes_of(true).len(), 3, "one replica per node");
    assert_eq!(nodes_of(false).len(), 1, "pipeline stages bin-pack");
}

#[test]
fn the_shards_of_a_stage_spread_over_nodes_while_they_fit() {
    let mut c = Cluster::new()
        .node("a", 8000, vec![])
        .node("b", 8000, vec![]);
    let pipeline = kiln_api::validate::parse_pipeline(
        "p.yaml",
        "name: p\nstages:\n  - name: t\n    command: ./test\n    shards: 4\n    resources: { cpu: 1 }\n",
    )
    .unwrap();
    c.state.apply(&Command::SubmitRun {
        request_id: String::new(),
        trigger: String::new(),
        pipeline,
        only_tests: Default::default(),
        now_ms: 0,
    });
    let pass = c.pass(1);
    let on = |node: &str| pass.placements.iter().filter(|p| p.node == node).count();
    assert_eq!((on("a"), on("b")), (2, 2), "{:?}", pass.placements);
}
