//! Crash safety of the coordinators' sled storage: rounds of `kill -9` of one coordinator
//! (the leader every third round) while clients keep submitting. Every restart comes back,
//! no acknowledged submission is lost or made twice, and once the load stops every member
//! holds the same state (the SHA-256 of its canonical JSON, at the same applied index).
//!
//! The suite runs a few rounds; `KILN_CRASH_ROUNDS=100 cargo nextest run --workspace -E
//! 'binary(crash_rounds)'` runs the long version (BENCHMARKS.md records what it printed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_e2e::{Cluster, Options};
use serde_json::Value;

#[test]
fn kill_9_rounds_lose_no_acknowledged_write_and_leave_every_member_identical() {
    let rounds: usize = std::env::var("KILN_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let mut cluster = Cluster::start(Options {
        coordinators: 3,
        agents: 0,
        ..Default::default()
    });
    let file = cluster.write(
        "p.yaml",
        "name: p\nstages:\n  - name: a\n    command: \"true\"\n",
    );

    // Two clients submitting back to back, each submission with its own request id,
    // retried by the CLI across elections; what answered is acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let attempted = Arc::new(Mutex::new(0usize));
    let clients: Vec<_> = (0..2)
        .map(|client| {
            let (stop, acked, attempted) = (stop.clone(), acked.clone(), attempted.clone());
            let mut command = cluster.kiln_command();
            command.args(["run", &file, "--wait", "30", "--request-id"]);
            let program = command.get_program().to_owned();
            let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
            let envs: Vec<_> = command
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
                .collect();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("c{client}-{n}");
                    *attempted.lock().unwrap() += 1;
                    let out = std::process::Command::new(&program)
                        .args(&args)
                        .arg(&id)
                        .envs(envs.iter().map(|(k, v)| (k, v)))
                        .stdin(std::process::Stdio::null())
                        .output()
                        .expect("kiln run");
                    if out.status.success() {
                        let run = String::from_utf8_lossy(&out.stdout).trim().to_string();
                        acked.lock().unwrap().insert(id, run);
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    for round in 0..rounds {
        let victim = if round % 3 == 2 {
            cluster.leader().unwrap_or(round % 3)
        } else {
            round % 3
        };
        let before = acked.lock().unwrap().len();
        cluster.coordinators[victim].proc.kill();
        cluster.coordinators[victim].proc.start();
        // Back, a voter again, and the load went on through it.
        cluster.wait_for(
            &format!("round {round}: coordinator {} back", victim + 1),
            Duration::from_secs(60),
            |c| {
                let out = c
                    .kiln_command()
                    .args(["cluster", "status", "--json", "--wait", "1"])
                    .args(["--addr", &c.coordinators[victim].grpc])
                    .output();
                out.ok()
                    .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
                    .is_some_and(|s| s["leader_id"].as_u64().unwrap_or(0) != 0)
                    && acked.lock().unwrap().len() > before
            },
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = *attempted.lock().unwrap();
    eprintln!(
        "crash rounds: {rounds} kill -9 rounds in {:.1}s, {} submissions acknowledged of {attempted}",
        started.elapsed().as_secs_f64(),
        acked.len()
    );

    // Every acknowledged run is there, once: request ids are unique, so as many runs as
    // submissions at most, and each acknowledged id named its own run.
    let runs = cluster.kiln_json(&["status", "--limit", "0"]);
    let ids: Vec<&str> = runs
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    for (request, run) in &acked {
        assert!(ids.contains(&run.as_str()), "{request} → {run} was lost");
    }
    let distinct: std::collections::BTreeSet<&String> = acked.values().collect();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "two requests answered with one run"
    );
    assert!(
        ids.len() <= attempted,
        "{} runs from {attempted} submissions",
        ids.len()
    );

    // Every member: the same state at the same index.
    cluster.wait_for(
        "every member to hold the same state",
        Duration::from_secs(30),
        |c| {
            let hashes: Vec<(String, u64)> = c
                .coordinators
                .iter()
                .filter_map(|co| {
                    let out = c
                        .kiln_command()
                        .args(["cluster", "status", "--json", "--state-hash"])
                        .args(["--addr", &co.grpc])
                        .output()
                        .ok()?;
                    let s: Value = serde_json::from_slice(&out.stdout).ok()?;
                    Some((
                        s["state_sha256"].as_str()?.to_string(),
                        s["state_index"].as_u64()?,
                    ))
                })
                .collect();
            hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0]) && !hashes[0].0.is_empty()
        },
    );
}
