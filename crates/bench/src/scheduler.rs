//! `kiln-bench scheduler`: placement throughput and latency against a cluster of simulated
//! nodes. The coordinators are the real release binaries; each simulated node is a real gRPC
//! agent session opened by this process (register, heartbeats, task events), whose tasks
//! "run" for a set time without spawning anything — what is measured is the coordinators.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_api::pb::{self, agent_message::Msg as Out, coordinator_message::Msg as In};
use kiln_e2e::{Cluster, Options, now_ms};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

pub struct Params {
    pub nodes: usize,
    pub tasks: usize,
    pub task_ms: u64,
}

/// Stage shapes, cycled: mostly CPU work, some GPU shares, some whole GPUs.
fn stage_yaml(i: usize) -> String {
    let resources = match i % 20 {
        0 => "{ cpu: 1, memory: 2Gi, gpus: 1 }",
        1 => "{ cpu: 1, memory: 2Gi, gpus: 2 }",
        2 | 3 => "{ cpu: 500m, memory: 1Gi, gpu_memory: 10GiB }",
        4..=7 => "{ cpu: 2, memory: 4Gi }",
        _ => "{ cpu: 250m, memory: 512Mi }",
    };
    format!("  - name: s{i}\n    command: [\"true\"]\n    resources: {resources}\n")
}

pub fn run(params: Params) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "kiln-bench scheduler: 3 coordinators (release), {} simulated nodes over real gRPC, {} tasks of {} ms",
        params.nodes, params.tasks, params.task_ms
    );
    let opts = Options {
        agents: 0,
        heartbeat_ms: 5_000,
        node_grace_ms: 120_000,
        // Elections after 1-1.5 s of silence rather than the default 0.3-0.4 s: with every
        // process of the cluster and the load generator on 2 cores, a busy leader must not be
        // mistaken for a dead one while throughput is measured.
        coordinator_args: vec!["--election-timeout-ms".into(), "500".into()],
        // Plaintext: its own gRPC clients (and simulated agents) hold no certificates.
        insecure: true,
        ..Default::default()
    };
    let cluster = Cluster::start(opts);
    let addrs: Vec<String> = cluster
        .coordinators
        .iter()
        .map(|c| c.grpc.clone())
        .collect();
    let http: Vec<String> = cluster
        .coordinators
        .iter()
        .map(|c| c.http.clone())
        .collect();
    rt.block_on(async {
        let leader = crate::leader_addr(&addrs).await;
        let started = Instant::now();
        let placed = Arc::new(AtomicU64::new(0));
        start_nodes(&leader, params.nodes, params.task_ms, placed.clone()).await;
        loop {
            let nodes = crate::leader_metrics(&http).map(|m| crate::metric(&m, "kiln_nodes{status=\"ready\"}")).unwrap_or(0.0);
            if nodes as usize >= params.nodes {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("  {} nodes registered in {:.1} s", params.nodes, started.elapsed().as_secs_f64());

        let before: Vec<(String, f64, u64)> = crate::usage(&cluster);
        let per_run = 1000.min(params.tasks);
        let runs = params.tasks.div_ceil(per_run);
        let t0 = now_ms();
        let started = Instant::now();
        let mut submits = Vec::new();
        for r in 0..runs {
            let n = per_run.min(params.tasks - r * per_run);
            let yaml = format!("name: sched-{r}\nstages:\n{}", (0..n).map(stage_yaml).collect::<String>());
            let addrs = addrs.clone();
            submits.push(tokio::spawn(async move {
                let conn = crate::submitter(&addrs);
                crate::submit_yaml(&conn, format!("sched-{r}"), yaml).await
            }));
        }
        for s in submits {
            s.await.expect("submit");
        }
        // Wait on the simulated nodes' own count of assignments: polling the coordinator
        // would load it while it is being measured.
        let deadline = Instant::now() + Duration::from_secs(120);
        while (placed.load(Ordering::Relaxed) as usize) < params.tasks {
            if Instant::now() > deadline {
                println!("  gave up waiting: {} of {} assignments arrived", placed.load(Ordering::Relaxed), params.tasks);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let placed_in = started.elapsed();
        let after: Vec<(String, f64, u64)> = crate::usage(&cluster);

        let runs = crate::list_runs(&addrs).await;
        let mut latency: Vec<i64> = runs
            .iter()
            .flat_map(|r| r.stages.iter().filter_map(move |s| s.attempts.first().map(|a| a.placed_ms - r.created_ms)))
            .collect();
        latency.sort_unstable();
        let last_placed = runs.iter().flat_map(|r| r.stages.iter().filter_map(|s| s.attempts.first().map(|a| a.placed_ms))).max().unwrap_or(t0);
        let pct = |p: f64| latency[((latency.len() as f64 - 1.0) * p).round() as usize];
        let secs = (last_placed - t0) as f64 / 1000.0;
        println!("  placements committed: {} in {:.2} s (first submit → last placement) => {:.0} placements/s", latency.len(), secs, latency.len() as f64 / secs);
        println!("  (every assignment received by its node after {:.2} s)", placed_in.as_secs_f64());
        println!("  submit → placement latency: p50 {} ms, p99 {} ms, max {} ms", pct(0.5), pct(0.99), latency[latency.len() - 1]);
        println!("  assignments received by the simulated nodes: {}", placed.load(Ordering::Relaxed));
        println!("  coordinator CPU seconds during placement, and resident memory after:");
        for ((name, c0, _), (_, c1, rss)) in before.iter().zip(&after) {
            println!("    {name:<16} {:>6.2} s  {:>7.1} MiB", c1 - c0, *rss as f64 / (1 << 20) as f64);
        }
    });
    drop(cluster);
}

/// Opens one agent session per simulated node, spread over a pool of HTTP/2 connections.
async fn start_nodes(leader: &str, nodes: usize, task_ms: u64, placed: Arc<AtomicU64>) {
    const PER_CONNECTION: usize = 100;
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..nodes.div_ceil(PER_CONNECTION) {
        let ch = Endpoint::from_shared(format!("http://{leader}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect to the leader");
        channels.push(ch);
    }
    for i in 0..nodes {
        let channel = channels[i / PER_CONNECTION].clone();
        let placed = placed.clone();
        tokio::spawn(simulated_node(channel, i, task_ms, placed));
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
}

async fn simulated_node(channel: Channel, i: usize, task_ms: u64, placed: Arc<AtomicU64>) {
    let (tx, rx) = mpsc::unbounded_channel();
    // A quarter of the nodes carry 8 simulated H100s in NVLinked pairs.
    let gpus = if i.is_multiple_of(4) {
        (0..8u32)
            .map(|g| pb::GpuDevice {
                index: g,
                uuid: format!("GPU-SIM-{i}-{g}"),
                model: "NVIDIA H100 80GB (simulated)".into(),
                memory_bytes: 80 << 30,
                nvlink_peers: vec![g ^ 1],
                driver_version: "simulated".into(),
                simulated: true,
            })
            .collect()
    } else {
        Vec::new()
    };
    let register = pb::Register {
        node_id: format!("sim-{i:05}"),
        labels: Default::default(),
        drivers: vec!["process".into()],
        cpu_millis: 32_000,
        memory_bytes: 256 << 30,
        known: vec![],
        version: "bench".into(),
        gpus,
    };
    let _ = tx.send(pb::AgentMessage {
        msg: Some(Out::Register(register)),
    });
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let Ok(response) = client
        .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
    else {
        eprintln!("sim-{i}: session refused");
        return;
    };
    let mut inbound = response.into_inner();
    let seq = Arc::new(AtomicU64::new(0));
    let event =
        |task_id: String, attempt: u32, state: pb::TaskState, seq: &AtomicU64| pb::AgentMessage {
            msg: Some(Out::TaskEvent(pb::TaskEvent {
                seq: seq.fetch_add(1, Ordering::Relaxed) + 1,
                task_id,
                attempt,
                state: state.into(),
                exit_code: (state == pb::TaskState::Succeeded).then_some(0),
                message: String::new(),
                at_ms: now_ms(),
                ..Default::default()
            })),
        };
    while let Ok(Some(msg)) = inbound.message().await {
        match msg.msg {
            Some(In::Registered(r)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(r.heartbeat_ms));
                    loop {
                        tick.tick().await;
                        let hb = pb::Heartbeat {
                            cpu_percent: 10.0,
                            memory_used_bytes: 1 << 30,
                            gpus: vec![],
                        };
                        if tx
                            .send(pb::AgentMessage {
                                msg: Some(Out::Heartbeat(hb)),
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
            Some(In::Assign(a)) => {
                placed.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(event(
                    a.task_id.clone(),
                    a.attempt,
                    pb::TaskState::Running,
                    &seq,
                ));
                let (tx, seq) = (tx.clone(), seq.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(task_ms)).await;
                    let _ = tx.send(event(a.task_id, a.attempt, pb::TaskState::Succeeded, &seq));
                });
            }
            _ => {}
        }
    }
}
