//! Stories about the state machine, and the over-commit property.

use super::*;
use crate::state::command::{Cancelled, EventsApplied, NodeDown, Placed, Submitted};
use kiln_api::spec::{Command as Cmd, Pipeline, Resources, Stage};
use proptest::prelude::*;

fn stage(name: &str, needs: &[&str], cpu: u64, retries: u32) -> Stage {
    Stage {
        interruptible: true,
        secrets: Vec::new(),
        name: name.into(),
        needs: needs.iter().map(|s| s.to_string()).collect(),
        command: Cmd::Shell("true".into()),
        env: Default::default(),
        resources: Resources {
            cpu_millis: cpu,
            memory_bytes: 1 << 20,
        },
        retries,
        timeout_ms: 60_000,
        constraints: Default::default(),
        gpu: None,
        container: None,
        shards: None,
        tests: None,
        deploy: None,
        artifacts: Vec::new(),
        inputs: Default::default(),
    }
}

fn pipeline(stages: Vec<Stage>) -> Pipeline {
    Pipeline {
        on: None,
        concurrency: None,
        name: "p".into(),
        stages,
    }
}

pub(super) fn register(s: &mut ClusterState, id: &str, cpu: u64) {
    let node = NodeRegistration {
        id: id.into(),
        labels: Default::default(),
        drivers: vec!["process".into()],
        capacity: Resources {
            cpu_millis: cpu,
            memory_bytes: 1 << 30,
        },
        gpus: vec![],
    };
    s.apply(&Command::RegisterNode { node, now_ms: 0 });
}

fn submit(s: &mut ClusterState, p: Pipeline, request: &str) -> u64 {
    match s.apply(&Command::SubmitRun {
        request_id: request.into(),
        trigger: "manual".into(),
        pipeline: p,
        only_tests: Default::default(),
        now_ms: 1,
    }) {
        Response::Submitted(Submitted { run, .. }) => run,
        other => panic!("{other:?}"),
    }
}

pub(super) fn place(s: &mut ClusterState, run: u64, stage: u32, node: &str) -> Response {
    let attempt = s.task(TaskRef::stage(run, stage)).unwrap().attempt;
    let p = Placement {
        task: TaskRef::stage(run, stage),
        attempt,
        node: node.into(),
        gpus: vec![],
    };
    s.apply(&Command::PlaceBatch {
        pass: 1,
        placements: vec![p],
        now_ms: 2,
    })
}

pub(super) fn event(
    s: &mut ClusterState,
    run: u64,
    stage: u32,
    node: &str,
    status: TaskStatus,
) -> Response {
    let attempt = s.task(TaskRef::stage(run, stage)).unwrap().attempt;
    let e = TaskEvent {
        task: TaskRef::stage(run, stage),
        attempt,
        status,
        exit_code: Some(0),
        message: String::new(),
        at_ms: 3,
        image: None,
        endpoint: None,
        health: None,
        metrics_endpoint: None,
        artifacts: Default::default(),
    };
    s.apply(&Command::TaskEvents {
        node: node.into(),
        events: vec![e],
        now_ms: 3,
    })
}

#[test]
fn a_dag_moves_forward_as_needs_succeed() {
    let mut s = ClusterState::default();
    register(&mut s, "n1", 4000);
    let run = submit(
        &mut s,
        pipeline(vec![
            stage("a", &[], 100, 0),
            stage("b", &["a"], 100, 0),
            stage("c", &[], 100, 0),
        ]),
        "",
    );
    assert_eq!(s.pending.len(), 2, "a and c are pending, b waits");
    assert_eq!(
        s.task(TaskRef::stage(run, 1)).unwrap().status,
        TaskStatus::Waiting
    );

    place(&mut s, run, 0, "n1");
    event(&mut s, run, 0, "n1", TaskStatus::Running);
    event(&mut s, run, 0, "n1", TaskStatus::Succeeded);
    assert!(
        s.pending.contains(&TaskRef::stage(run, 1)),
        "b is unblocked"
    );
    for stage in [1, 2] {
        place(&mut s, run, stage, "n1");
        event(&mut s, run, stage, "n1", TaskStatus::Succeeded);
    }
    assert_eq!(s.runs[&run].status, RunStatus::Succeeded);
    assert_eq!(s.nodes["n1"].reserved, Resources::default());
}

#[test]
fn replayed_events_change_nothing() {
    let mut s = ClusterState::default();
    register(&mut s, "n1", 1000);
    let run = submit(&mut s, pipeline(vec![stage("a", &[], 100, 0)]), "");
    place(&mut s, run, 0, "n1");
    event(&mut s, run, 0, "n1", TaskStatus::Succeeded);
    let before = s.clone();
    let e = TaskEvent {
        task: TaskRef::stage(run, 0),
        attempt: 1,
        status: TaskStatus::Succeeded,
        exit_code: Some(0),
        message: String::new(),
        at_ms: 3,
        image: None,
        endpoint: None,
        health: None,
        metrics_endpoint: None,
        artifacts: Default::default(),
    };
    let r = s.apply(&Command::TaskEvents {
        node: "n1".into(),
        events: vec![e.clone(), e],
        now_ms: 9,
    });
    assert_eq!(
        r,
        Response::EventsApplied(EventsApplied {
            applied: 0,
            ignored: 2,
            kills: vec![]
        })
    );
    assert_eq!(s, before);
}

#[test]
fn a_request_id_is_stored_once() {
    let mut s = ClusterState::default();
    let a = submit(&mut s, pipeline(vec![stage("a", &[], 100, 0)]), "req-1");
    let r = s.apply(&Command::SubmitRun {
        request_id: "req-1".into(),
        trigger: String::new(),
        pipeline: pipeline(vec![stage("a", &[], 100, 0)]),
        only_tests: Default::default(),
        now_ms: 5,
    });
    assert_eq!(
        r,
        Response::Submitted(Submitted {
            run: a,
            created: false
        })
    );
    assert_eq!(s.runs.len(), 1);
}

#[test]
fn a_failure_is_retried_then_skips_dependents() {
    let mut s = ClusterState::default();
    register(&mut s, "n1", 1000);
    let run = submit(
        &mut s,
        pipeline(vec![stage("a", &[], 100, 1), stage("b", &["a"], 100, 0)]),
        "",
    );
    place(&mut s, run, 0, "n1");
    event(&mut s, run, 0, "n1", TaskStatus::Failed);
    let a = s.task(TaskRef::stage(run, 0)).unwrap();
    assert_eq!(
        (a.status, a.attempt),
        (TaskStatus::Pending, 2),
        "one retry left"
    );
    place(&mut s, run, 0, "n1");
    event(&mut s, run, 0, "n1", TaskStatus::Failed);
    assert_eq!(
        s.task(TaskRef::stage(run, 0)).unwrap().status,
        TaskStatus::Failed
    );
    assert_eq!(
        s.task(TaskRef::stage(run, 1)).unwrap().status,
        TaskStatus::Skipped
    );
    assert_eq!(s.runs[&run].status, RunStatus::Failed);
}

#[test]
fn a_lost_node_puts_its_tasks_back_with_a_new_attempt() {
    let mut s = ClusterState::default();
    register(&mut s, "n1", 1000);
    register(&mut s, "n2", 1000);
    let run = submit(&mut s, pipeline(vec![stage("a", &[], 500, 0)]), "");
    place(&mut s, run, 0, "n1");
    event(&mut s, run, 0, "n1", TaskStatus::Running);
    let r = s.apply(&Command::MarkNodeDown {
        node: "n1".into(),
        now_ms: 10,
    });
    assert_eq!(
        r,
        Response::NodeDown(NodeDown {
            lost: vec![TaskRef::stage(run, 0)]
        })
    );
    let t = s.task(TaskRef::stage(run, 0)).unwrap();
    assert_eq!(
        (t.status, t.attempt, t.attempts[0].status),
        (TaskStatus::Pending, 2, TaskStatus::Lost)
    );
    assert_eq!(s.nodes["n1"].reserved, Resources::default());
    // A late event from the lost attempt is ignored.
    let e = TaskEvent {
        task: TaskRef::stage(run, 0),
        attempt: 1,
        status: TaskStatus::Succeeded,
        exit_code: Some(0),
        message: String::new(),
        at_ms: 11,
        image: None,
        endpoint: None,
        health: None,
        metrics_endpoint: None,
        artifacts: Default::default(),
    };
    s.apply(&Command::TaskEvents {
        node: "n1".into(),
        events: vec![e],
        now_ms: 11,
    });
    assert_eq!(
        s.task(TaskRef::stage(run, 0)).unwrap().status,
        TaskStatus::Pending
    );
    place(&mut s, run, 0, "n2");
    event(&mut s, run, 0, "n2", TaskStatus::Succeeded);
    assert_eq!(s.runs[&run].status, RunStatus::Succeeded);
}

#[test]
fn placements_that_no_longer_fit_are_rejected() {
    let mut s = ClusterState::default();
    register(&mut s, "n1", 1000);
    let run = submit(
        &mut s,
        pipeline(vec![stage("a", &[], 800, 0), stage("b", &[], 800, 0)]),
        "",
    );
    let batch = vec![
        Placement {
            task: TaskRef::stage(run, 0),
            attempt: 1,
            node: "n1".into(),
            gpus: vec![],
        },
        Placement {
            task: TaskRef::stage(run, 1),
            attempt: 1,
            node: "n1".into(),
            gpus: vec![],
        },
    ];
    match s.apply(&Command::PlaceBatch {
        pass: 1,
        placements: batch,
        now_ms: 1,
    }) {
        Response::Placed(Placed { accepted, rejected }) => {
            assert_eq!(accepted.len(), 1);
            assert_eq!(
                rejected,
                vec![(TaskRef::stage(run, 1), "cpu exhausted".to_string())]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.nodes["n1"].reserved.cpu_millis, 800);
}

#[test]
fn cancel_stops_pending_work_and_asks_for_kills() {
    let mut s = ClusterState::default();
    register(&mut s, "n1", 1000);
    let run = submit(
        &mut s,
        pipeline(vec![stage("a", &[], 100, 0), stage("b", &["a"], 100, 0)]),
        "",
    );
    place(&mut s, run, 0, "n1");
    let r = s.apply(&Command::CancelRun { run, now_ms: 5 });
    let Response::Cancelled(Cancelled { kills }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(kills.len(), 1);
    assert_eq!(s.runs[&run].status, RunStatus::Cancelled);
    assert!(s.runs[&run].finished_ms.is_none(), "a still holds its node");
    event(&mut s, run, 0, "n1", TaskStatus::Failed);
    assert_eq!(
        s.task(TaskRef::stage(run, 0)).unwrap().status,
        TaskStatus::Cancelled
    );
    assert!(s.runs[&run].finished_ms.is_some());
    assert!(matches!(
        s.apply(&Command::CancelRun { run, now_ms: 6 }),
        Response::Rejected { .. }
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Submit(u64),
    Place(usize, usize),
    Finish(usize, bool),
    Lose(usize),
    Register(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (100u64..1500).prop_map(Op::Submit),
        (0usize..64, 0usize..3).prop_map(|(t, n)| Op::Place(t, n)),
        (0usize..64, any::<bool>()).prop_map(|(t, ok)| Op::Finish(t, ok)),
        (0usize..3).prop_map(Op::Lose),
        (0usize..3).prop_map(Op::Register),
    ]
}

proptest! {
    /// No sequence of submissions, placements (even ones the scheduler would never make),
    /// completions and node losses over-commits a node, and `reserved` always equals the sum
    /// of the node's allocations.
    #[test]
    fn no_node_is_ever_over_committed(ops in proptest::collection::vec(op(), 1..200)) {
        let mut s = ClusterState::default();
        let nodes = ["n0", "n1", "n2"];
        for n in nodes { register(&mut s, n, 2000); }
        let mut now = 0;
        for op in ops {
            now += 1;
            let tasks: Vec<TaskRef> = s.runs.values().flat_map(|r| r.tasks().map(|(at, _)| TaskRef::from(at))).collect();
            let command = match op {
                Op::Submit(cpu) => Command::SubmitRun { request_id: String::new(), trigger: String::new(), pipeline: pipeline(vec![stage("a", &[], cpu, 1), stage("b", &["a"], cpu, 0)]), only_tests: Default::default(), now_ms: now },
                Op::Place(t, n) if !tasks.is_empty() => {
                    let task = tasks[t % tasks.len()];
                    let attempt = s.task(task).unwrap().attempt;
                    Command::PlaceBatch { pass: now as u64, placements: vec![Placement { task, attempt, node: nodes[n].into(), gpus: vec![] }], now_ms: now }
                }
                Op::Finish(t, ok) if !tasks.is_empty() => {
                    let task = tasks[t % tasks.len()];
                    let tk = s.task(task).unwrap();
                    let node = tk.current().map(|a| a.node.clone()).unwrap_or_default();
                    let status = if ok { TaskStatus::Succeeded } else { TaskStatus::Failed };
                    Command::TaskEvents { node, events: vec![TaskEvent { task, attempt: tk.attempt, status, exit_code: None, message: String::new(), at_ms: now, image: None, endpoint: None, health: None, metrics_endpoint: None, artifacts: Default::default() }], now_ms: now }
                }
                Op::Lose(n) => Command::MarkNodeDown { node: nodes[n].into(), now_ms: now },
                Op::Register(n) => Command::RegisterNode { node: NodeRegistration { id: nodes[n].into(), labels: Default::default(), drivers: vec!["process".into()], capacity: Resources { cpu_millis: 2000, memory_bytes: 1 << 30 }, gpus: vec![] }, now_ms: now },
                _ => continue,
            };
            s.apply(&command);
            for node in s.nodes.values() {
                let sum = node.allocations.iter().fold(Resources::default(), |acc, t| acc.saturating_add(s.ask(*t)));
                prop_assert_eq!(node.reserved, sum);
                prop_assert!(node.reserved.cpu_millis <= node.capacity.cpu_millis);
                prop_assert!(node.reserved.memory_bytes <= node.capacity.memory_bytes);
                for t in &node.allocations {
                    prop_assert!(s.task(*t).unwrap().status.is_allocated());
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum GpuOp {
    /// A one-stage run asking `count` whole GPUs (0: a share of `gib`).
    Submit(u32, u64),
    /// Place task `t` on node `n` with arbitrary grants (index, whole, GiB): the state
    /// machine must refuse every set that does not fit.
    Place(usize, usize, Vec<(u32, bool, u64)>),
    Finish(usize),
    Lose(usize),
}

fn gpu_op() -> impl Strategy<Value = GpuOp> {
    prop_oneof![
        (0u32..3, 1u64..90).prop_map(|(c, g)| GpuOp::Submit(c, g)),
        (
            0usize..64,
            0usize..2,
            proptest::collection::vec((0u32..3, any::<bool>(), 1u64..90), 0..3)
        )
            .prop_map(|(t, n, g)| GpuOp::Place(t, n, g)),
        (0usize..64).prop_map(GpuOp::Finish),
        (0usize..2).prop_map(GpuOp::Lose),
    ]
}

proptest! {
    /// Under random GPU requests, placements with arbitrary grants, completions and node
    /// losses: no GPU is both whole and shared, shares never exceed its memory, a whole GPU
    /// belongs to exactly one running task, and every reservation belongs to a live task.
    #[test]
    fn no_gpu_is_ever_over_committed(ops in proptest::collection::vec(gpu_op(), 1..150)) {
        const GIB: u64 = 1 << 30;
        let mut s = ClusterState::default();
        let nodes = ["g0", "g1"];
        for n in nodes {
            let devices = (0..2).map(|i| GpuDevice { index: i, uuid: format!("{n}-{i}"), model: "H100".into(), memory_bytes: 80 * GIB, nvlink_peers: vec![], simulated: true }).collect();
            let reg = NodeRegistration { id: n.into(), labels: Default::default(), drivers: vec!["process".into()], capacity: Resources { cpu_millis: 64_000, memory_bytes: 1 << 40 }, gpus: devices };
            s.apply(&Command::RegisterNode { node: reg, now_ms: 0 });
        }
        let mut now = 0;
        for op in ops {
            now += 1;
            let tasks: Vec<TaskRef> = s.runs.keys().map(|&run| TaskRef::stage(run, 0)).collect();
            let command = match op {
                GpuOp::Submit(count, gib) => {
                    let mut st = stage("a", &[], 100, 0);
                    st.gpu = Some(kiln_api::spec::GpuRequest { count, share_bytes: if count == 0 { gib * GIB } else { 0 }, ..Default::default() });
                    Command::SubmitRun { request_id: String::new(), trigger: String::new(), pipeline: pipeline(vec![st]), only_tests: Default::default(), now_ms: now }
                }
                GpuOp::Place(t, n, grants) if !tasks.is_empty() => {
                    let task = tasks[t % tasks.len()];
                    let attempt = s.task(task).unwrap().attempt;
                    let gpus = grants.into_iter().map(|(index, whole, gib)| GpuGrant { index, whole, memory_bytes: if whole { 80 * GIB } else { gib * GIB } }).collect();
                    Command::PlaceBatch { pass: now as u64, placements: vec![Placement { task, attempt, node: nodes[n].into(), gpus }], now_ms: now }
                }
                GpuOp::Finish(t) if !tasks.is_empty() => {
                    let task = tasks[t % tasks.len()];
                    let tk = s.task(task).unwrap();
                    let node = tk.current().map(|a| a.node.clone()).unwrap_or_default();
                    Command::TaskEvents { node, events: vec![TaskEvent { task, attempt: tk.attempt, status: TaskStatus::Succeeded, exit_code: Some(0), message: String::new(), at_ms: now, image: None, endpoint: None, health: None, metrics_endpoint: None, artifacts: Default::default() }], now_ms: now }
                }
                GpuOp::Lose(n) => Command::MarkNodeDown { node: nodes[n].into(), now_ms: now },
                _ => continue,
            };
            s.apply(&command);
            for node in s.nodes.values() {
                for gpu in &node.gpus {
                    prop_assert!(gpu.whole.is_none() || gpu.shares.is_empty(), "GPU {} of {} is whole and shared", gpu.index, node.id);
                    prop_assert!(gpu.shared_bytes() <= gpu.memory_bytes);
                    let holders = gpu.whole.iter().chain(gpu.shares.keys());
                    for t in holders {
                        let task = s.task(*t).unwrap();
                        prop_assert!(task.status.is_allocated());
                        prop_assert!(node.allocations.contains(t));
                        prop_assert!(task.current().unwrap().gpus.iter().any(|g| g.index == gpu.index));
                    }
                }
            }
        }
        // Whatever the state holds, it survives the snapshot encoding unchanged.
        let bytes = serde_json::to_vec(&s).expect("the state encodes");
        let back: ClusterState = serde_json::from_slice(&bytes).expect("the state decodes");
        prop_assert_eq!(back, s);
    }
}
