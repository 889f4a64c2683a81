//! kill -9 the leader while 200 submissions are in flight from 8 concurrent clients: after
//! recovery every acknowledged submission exists exactly once and runs to completion. Prints
//! the failover time (kill → next committed placement).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use kiln_e2e::{Cluster, Options, now_ms};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 25;
const KILL_AFTER: usize = 60;

#[test]
fn acknowledged_submissions_survive_a_leader_kill_exactly_once() {
    let mut cluster = Cluster::start(Options::default());
    let file = cluster.write(
        "one.yaml",
        "name: one\nstages:\n  - name: only\n    command: \"true\"\n",
    );
    let cluster_ref = &cluster;
    let acked = AtomicUsize::new(0);
    let start = Arc::new(Barrier::new(CLIENTS + 1));

    let (results, kill_ms) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (file, acked, start) = (&file, &acked, start.clone());
                scope.spawn(move || {
                    start.wait();
                    let mut mine = Vec::new();
                    for n in 0..PER_CLIENT {
                        let request = format!("client{client}-sub{n}");
                        // Retry with the same request id until the cluster acknowledges it.
                        let run_id = (0..20)
                            .find_map(|_| {
                                let out = cluster_ref.kiln(&[
                                    "run",
                                    file,
                                    "--request-id",
                                    &request,
                                    "--wait",
                                    "20",
                                ]);
                                out.status.success().then(|| {
                                    String::from_utf8_lossy(&out.stdout).trim().to_string()
                                })
                            })
                            .unwrap_or_else(|| panic!("{request} was never acknowledged"));
                        acked.fetch_add(1, Ordering::SeqCst);
                        mine.push((request, run_id));
                    }
                    mine
                })
            })
            .collect();
        start.wait();
        // Kill the leader once the submissions are well under way.
        while acked.load(Ordering::SeqCst) < KILL_AFTER {
            std::thread::yield_now();
        }
        let leader = cluster_ref.leader().expect("a leader");
        let kill_ms = now_ms();
        // SAFETY of the cast: the pid fits; the process is ours.
        let pid = cluster_ref.coordinators[leader].proc_pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9 the leader");
        let results: Vec<(String, String)> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect();
        (results, kill_ms)
    });
    assert_eq!(results.len(), CLIENTS * PER_CLIENT);
    // Reap the killed leader so the harness does not report it as crashed.
    for c in &mut cluster.coordinators {
        c.reap_if_exited();
    }

    cluster.wait_for("every run to finish", Duration::from_secs(120), |c| {
        let runs = c.kiln_json(&["status", "--limit", "0"]);
        let runs = runs.as_array().unwrap();
        runs.len() >= CLIENTS * PER_CLIENT
            && runs
                .iter()
                .all(|r| r["finished_ms"].as_i64().unwrap_or(0) > 0)
    });
    let runs = cluster.kiln_json(&["status", "--limit", "0"]);
    let runs = runs.as_array().unwrap();

    let mut by_request: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in runs {
        by_request
            .entry(r["request_id"].as_str().unwrap())
            .or_default()
            .push(r["id"].as_str().unwrap());
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    for (request, run_id) in &results {
        assert_eq!(
            by_request.get(request.as_str()),
            Some(&vec![run_id.as_str()]),
            "{request} must map to exactly its acknowledged run"
        );
    }
    assert_eq!(
        runs.len(),
        CLIENTS * PER_CLIENT,
        "no run exists that was not acknowledged"
    );
    let distinct: BTreeSet<&str> = results.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(distinct.len(), results.len());

    let first_placement_after_kill = runs
        .iter()
        .flat_map(|r| r["stages"].as_array().unwrap().iter())
        .flat_map(|s| s["attempts"].as_array().unwrap().iter())
        .filter_map(|a| a["placed_ms"].as_i64())
        .filter(|&t| t > kill_ms)
        .min()
        .expect("placements after the kill");
    println!(
        "failover: kill -9 leader → next committed placement in {} ms",
        first_placement_after_kill - kill_ms
    );
}
