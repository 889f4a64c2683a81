//! `kiln-bench`: starts real clusters of the release binaries on this machine and prints
//! figures. Not a test: nothing here asserts a speed. Run with
//!
//! ```text
//! cargo build --release --workspace --bins && target/release/kiln-bench pipeline
//! ```
//!
//! `pipeline` measures, with 3 coordinators and 2 agents:
//! - throughput: N single-stage runs of `true`, submitted by 32 concurrent gRPC clients;
//!   first submit → last task finished (the agents' own exit timestamps);
//! - latency: sequential submissions on a warm agent, submit → process started (the agent's
//!   spawn timestamp), p50 and p99;
//! - failover: K leader kills (kill -9) under a steady trickle of submissions, kill → the
//!   first placement committed by the new leader, median and max.
//!
//! `services` measures the gateway (against a direct call and nginx), rollback time and the
//! autoscaler's reaction, on a real cluster with the example model server.
//!
//! `delivery` times promote, deploy and rollback of a container service under load through
//! the gateway, with the failed requests, against the targets (needs Docker).
//!
//! `git` times a signed webhook → the stage's process started over sequential pushes, and
//! how soon the poll records a push whose webhook never came.
//!
//! `shards` compares count, static (LPT) and dynamic test splitting on real JUnit suites
//! and a heavy-tailed synthetic one (no cluster: the splitters' own code, replayed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod delivery;
mod git;
mod scheduler;
mod services;
mod shards;

use clap::{Parser, Subcommand};
use kiln_api::leader::{self, LeaderClient};
use kiln_api::pb::{self, kiln_client::KilnClient};
use kiln_e2e::{Cluster, Options, now_ms};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "kiln benchmarks on real processes")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Placements per second and submit→placement latency against simulated nodes.
    Scheduler {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 20_000)]
        tasks: usize,
        /// How long each simulated task "runs".
        #[arg(long, default_value_t = 2_000)]
        task_ms: u64,
    },
    /// Test splitting: makespan over the lower bound for count, static and dynamic splits
    /// of real JUnit suites and a heavy-tailed synthetic one, with ±30 % noise.
    Shards {
        /// JUnit XML reports, one suite each (default: the checked-in fixtures).
        #[arg(long = "report")]
        reports: Vec<String>,
        #[arg(long, default_value_t = 200)]
        trials: usize,
        /// Per-batch overheads to show, in ms (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "0,200")]
        overhead_ms: Vec<u64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Delivery under load: promote (staging → production), deploy and rollback of a
    /// container service, call → all traffic on the new revision, with failed requests.
    Delivery {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Git triggers: signed webhook → the stage's process started (p50, p99), and a push
    /// with no webhook → recorded by the poll.
    Git {
        #[arg(long, default_value_t = 100)]
        pushes: usize,
        #[arg(long, default_value_t = 5)]
        polls: usize,
        #[arg(long, default_value_t = 2)]
        poll_secs: u64,
    },
    /// Services: gateway overhead against a direct call and nginx, rollback time under
    /// load, autoscaler reaction to a load step.
    Services {
        #[arg(long, default_value_t = 6)]
        rollbacks: usize,
        #[arg(long, default_value_t = 3)]
        scale_steps: usize,
        /// How long each wrk measurement runs.
        #[arg(long, default_value_t = 10)]
        wrk_secs: u64,
    },
    /// Throughput, submit→start latency and failover of pipeline tasks.
    Pipeline {
        #[arg(long, default_value_t = 5000)]
        tasks: usize,
        /// Concurrent gRPC clients submitting runs.
        #[arg(long, default_value_t = 32)]
        submitters: usize,
        #[arg(long, default_value_t = 200)]
        latency_samples: usize,
        #[arg(long, default_value_t = 10)]
        kills: usize,
    },
}

const TRUE: &str = "name: trivial\nstages:\n  - name: t\n    command: [\"true\"]\n";

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match args.bench {
        Bench::Scheduler {
            nodes,
            tasks,
            task_ms,
        } => scheduler::run(scheduler::Params {
            nodes,
            tasks,
            task_ms,
        }),
        Bench::Shards {
            reports,
            trials,
            overhead_ms,
            seed,
        } => shards::run(shards::Params {
            reports: if reports.is_empty() {
                shards::DEFAULT_REPORTS
                    .iter()
                    .map(|r| {
                        format!(
                            "{}/../sharding/tests/fixtures/{r}",
                            env!("CARGO_MANIFEST_DIR")
                        )
                    })
                    .collect()
            } else {
                reports
            },
            trials,
            overheads_ms: overhead_ms,
            seed,
        }),
        Bench::Delivery { rounds } => delivery::run(&rt, delivery::Params { rounds }),
        Bench::Git {
            pushes,
            polls,
            poll_secs,
        } => git::run(git::Params {
            pushes,
            polls,
            poll_secs,
        }),
        Bench::Services {
            rollbacks,
            scale_steps,
            wrk_secs,
        } => services::run(
            &rt,
            services::Params {
                rollbacks,
                scale_steps,
                wrk_secs,
            },
        ),
        Bench::Pipeline {
            tasks,
            submitters,
            latency_samples,
            kills,
        } => {
            println!(
                "kiln-bench pipeline: 3 coordinators, 2 agents (64 CPUs each), release binaries"
            );
            let opts = Options {
                agent_cpu: "64".into(),
                heartbeat_ms: 500,
                // Plaintext: its own gRPC clients (and simulated agents) hold no certificates.
                insecure: true,
                ..Default::default()
            };
            let mut cluster = Cluster::start(opts);
            let addrs: Vec<String> = cluster
                .coordinators
                .iter()
                .map(|c| c.grpc.clone())
                .collect();
            let before = usage(&cluster);
            let http: Vec<String> = cluster
                .coordinators
                .iter()
                .map(|c| c.http.clone())
                .collect();
            rt.block_on(throughput(&addrs, &http, tasks, submitters));
            let after = usage(&cluster);
            println!("  CPU seconds used during it, and resident memory after:");
            for ((name, cpu0, _), (_, cpu1, rss)) in before.iter().zip(&after) {
                println!(
                    "    {name:<16} {:>6.2} s  {:>6.1} MiB",
                    cpu1 - cpu0,
                    *rss as f64 / (1 << 20) as f64
                );
            }
            rt.block_on(latency(&addrs, latency_samples));
            failover(&rt, &mut cluster, kills);
        }
    }
}

/// (name, CPU seconds, RSS bytes) of every process in the cluster.
fn usage(cluster: &Cluster) -> Vec<(String, f64, u64)> {
    let coordinators = cluster.coordinators.iter().map(|c| &c.proc);
    coordinators
        .chain(cluster.agents.iter())
        .map(|p| {
            let (cpu, rss) = p.usage().unwrap_or_default();
            (p.name.clone(), cpu, rss)
        })
        .collect()
}

async fn connect(addr: &str) -> Option<KilnClient<Channel>> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?;
    let ch = ep
        .connect_timeout(Duration::from_millis(200))
        .tcp_nodelay(true)
        .connect()
        .await
        .ok()?;
    Some(KilnClient::new(ch).max_decoding_message_size(1 << 30))
}

/// A submitter's way to the leader, kept while it works.
fn submitter(addrs: &[String]) -> LeaderClient {
    LeaderClient::new(addrs.to_vec())
        .connect_timeout(Duration::from_millis(200))
        .retry_pause(Duration::from_millis(5))
}

/// A kiln client on a channel, reading answers of any size.
fn kiln(channel: Channel) -> KilnClient<Channel> {
    KilnClient::new(channel).max_decoding_message_size(1 << 30)
}

/// Submits one run through `conn`, retrying until it is acknowledged. Returns the run id.
async fn submit_on(conn: &LeaderClient, request_id: String) -> String {
    submit_yaml(conn, request_id, TRUE.to_string()).await
}

/// Submits `yaml` through `conn` (see [`submit_on`]).
async fn submit_yaml(conn: &LeaderClient, request_id: String, yaml: String) -> String {
    loop {
        let answer = conn
            .call(leader::forever(), |channel| {
                let req = pb::SubmitRunRequest {
                    pipeline_yaml: yaml.clone(),
                    file_name: "bench.yaml".into(),
                    request_id: request_id.clone(),
                    trigger: "bench".into(),
                    ..Default::default()
                };
                async move { kiln(channel).submit_run(req).await }
            })
            .await;
        match answer {
            Ok(r) => return r.into_inner().run_id,
            Err(e) => eprintln!("submit {request_id} refused ({e}); trying again"),
        }
    }
}

/// The leader's gRPC address.
async fn leader_addr(addrs: &[String]) -> String {
    loop {
        for a in addrs {
            if let Some(mut c) = connect(a).await
                && let Ok(s) = c.cluster_status(pb::ClusterStatusRequest::default()).await
                && s.get_ref().leader_id != 0
            {
                return s.into_inner().leader_addr;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn list_runs(addrs: &[String]) -> Vec<pb::Run> {
    let answer = submitter(addrs)
        .call(leader::forever(), |channel| async move {
            kiln(channel)
                .list_runs(pb::ListRunsRequest::default())
                .await
        })
        .await;
    answer.expect("list runs").into_inner().runs
}

/// The leader's `/metrics` text.
fn leader_metrics(http: &[String]) -> Option<String> {
    use std::io::{Read, Write};
    for addr in http {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            continue;
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        if body.contains("kiln_raft_is_leader 1") {
            return Some(body);
        }
    }
    None
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

/// The number of succeeded tasks according to the leader's `/metrics` (cheap to poll,
/// unlike listing every run).
fn succeeded_tasks(http: &[String]) -> Option<u64> {
    leader_metrics(http).map(|m| metric(&m, "kiln_tasks{status=\"succeeded\"}") as u64)
}

async fn throughput(addrs: &[String], http: &[String], tasks: usize, submitters: usize) {
    let before = succeeded_tasks(http).unwrap_or(0);
    let start_ms = now_ms();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..submitters {
        let (addrs, next) = (addrs.to_vec(), next.clone());
        clients.push(tokio::spawn(async move {
            let conn = submitter(&addrs);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= tasks {
                    return;
                }
                submit_on(&conn, format!("tput-{n}")).await;
            }
        }));
    }
    for c in clients {
        c.await.expect("submitter");
    }
    let submitted_in = started.elapsed();
    while succeeded_tasks(http).is_none_or(|n| n < before + tasks as u64) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = list_runs(addrs).await;
    if let Some(m) = leader_metrics(http) {
        let (sum, count) = (
            metric(&m, "kiln_scheduling_seconds_sum"),
            metric(&m, "kiln_scheduling_seconds_count"),
        );
        println!(
            "  scheduling passes: {count:.0}, mean wake → committed {:.1} ms; placements {:.0}, task events {:.0}",
            sum / count.max(1.0) * 1000.0,
            metric(&m, "kiln_placements_total"),
            metric(&m, "kiln_task_events_total")
        );
    }
    let mine: Vec<&pb::Run> = runs
        .iter()
        .filter(|r| r.request_id.starts_with("tput-"))
        .collect();
    let last_finish = mine
        .iter()
        .flat_map(|r| r.stages.iter())
        .map(|s| s.finished_ms)
        .max()
        .unwrap_or(0);
    let failed = mine.iter().filter(|r| r.status != "succeeded").count();
    let secs = (last_finish - start_ms) as f64 / 1000.0;
    println!();
    println!(
        "throughput: {} tasks of `true`, {submitters} concurrent submitters",
        mine.len()
    );
    println!(
        "  all submitted in      {:>8.2} s  ({:.0} submissions/s)",
        submitted_in.as_secs_f64(),
        tasks as f64 / submitted_in.as_secs_f64()
    );
    println!(
        "  first submit → all finished {:>8.2} s  => {:.0} tasks/s  (failed: {failed})",
        secs,
        mine.len() as f64 / secs
    );
}

async fn latency(addrs: &[String], samples: usize) {
    if samples == 0 {
        return;
    }
    let mut lat = Vec::new();
    let conn = submitter(addrs);
    for n in 0..samples {
        let t0 = now_ms();
        let run_id = submit_on(&conn, format!("lat-{n}")).await;
        // Wait for this run to finish before the next, so the agent is warm but idle.
        let run = loop {
            let answer = conn
                .call(leader::forever(), |channel| {
                    let run_id = run_id.clone();
                    async move { kiln(channel).get_run(pb::GetRunRequest { run_id }).await }
                })
                .await;
            match answer {
                Ok(r) if r.get_ref().finished_ms > 0 => break r.into_inner(),
                Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(e) => panic!("reading {run_id}: {e}"),
            }
        };
        lat.push(run.stages[0].started_ms - t0);
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!();
    println!(
        "latency: submit → process started, {} sequential runs on a warm agent (ms resolution)",
        lat.len()
    );
    println!(
        "  p50 {} ms   p99 {} ms   max {} ms",
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
}

fn failover(rt: &tokio::runtime::Runtime, cluster: &mut Cluster, kills: usize) {
    if kills == 0 {
        return;
    }
    let addrs: Vec<String> = cluster
        .coordinators
        .iter()
        .map(|c| c.grpc.clone())
        .collect();
    let mut times = Vec::new();
    for round in 0..kills {
        let leader = loop {
            if let Some(l) = cluster.leader() {
                break l;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // A steady trickle of submissions, so the new leader has something to place at once.
        let stop = Arc::new(AtomicBool::new(false));
        let trickle = {
            let (addrs, stop) = (addrs.clone(), stop.clone());
            rt.spawn(async move {
                let mut n = 0;
                let conn = submitter(&addrs);
                while !stop.load(Ordering::Relaxed) {
                    submit_on(&conn, format!("fo-{round}-{n}")).await;
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let kill_ms = now_ms();
        let pid = cluster.coordinators[leader].proc_pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        cluster.coordinators[leader].reap_if_exited();
        // Wait for a placement after the kill.
        let first = rt.block_on(async {
            loop {
                let runs = list_runs(&addrs).await;
                let first = runs
                    .iter()
                    .flat_map(|r| r.stages.iter().flat_map(|s| s.attempts.iter()))
                    .map(|a| a.placed_ms)
                    .filter(|&t| t > kill_ms)
                    .min();
                if let Some(t) = first {
                    return t;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        stop.store(true, Ordering::Relaxed);
        let _ = rt.block_on(trickle);
        times.push(first - kill_ms);
        println!(
            "  kill {}: leader {} → placement after {} ms",
            round + 1,
            cluster.coordinators[leader].id,
            first - kill_ms
        );
        cluster.coordinators[leader].proc.start();
        let want = cluster.coordinators.len();
        cluster.wait_for("the cluster to heal", Duration::from_secs(60), |c| {
            c.cluster_status()
                .is_some_and(|s| s["leader_id"].as_u64().unwrap_or(0) != 0)
                && c.coordinators.iter().all(|co| {
                    let out = c
                        .kiln_command()
                        .args([
                            "cluster", "status", "--json", "--wait", "1", "--addr", &co.grpc,
                        ])
                        .output();
                    out.ok()
                        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                        .is_some_and(|s| {
                            s["leader_id"].as_u64().unwrap_or(0) != 0
                                && s["members"].as_array().is_some_and(|m| m.len() == want)
                        })
                })
        });
    }
    times.sort_unstable();
    println!();
    println!(
        "failover: {} leader kills (kill -9 → first placement committed by the new leader)",
        times.len()
    );
    println!(
        "  median {} ms   max {} ms   all {:?}",
        times[times.len() / 2],
        times[times.len() - 1],
        times
    );
}
