//! kill -9 an agent while its task runs: after the grace period the task is marked lost and
//! runs again on the other agent, with both attempts counted.

use std::time::Duration;

use kiln_e2e::{Cluster, Options, stage};

#[test]
fn a_task_on_a_lost_node_is_lost_then_runs_on_another_node() {
    let mut cluster = Cluster::start(Options {
        node_grace_ms: 1_500,
        heartbeat_ms: 200,
        ..Default::default()
    });
    let file = cluster.write(
        "slow.yaml",
        "name: slow\nstages:\n  - name: work\n    command: sleep 2; echo done\n",
    );
    let out = cluster.kiln(&["run", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_id = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let mut node = String::new();
    cluster.wait_for("the stage to run", Duration::from_secs(20), |c| {
        let s = stage(&c.run_status(&run_id), "work").clone();
        node = s["node"].as_str().unwrap_or_default().to_string();
        s["status"] == "running"
    });
    let victim = cluster
        .agents
        .iter()
        .position(|a| a.name == node)
        .expect("the agent running the stage");
    cluster.agents[victim].kill();

    cluster.wait_for(
        "the run to finish elsewhere",
        Duration::from_secs(30),
        |c| c.run_status(&run_id)["finished_ms"].as_i64().unwrap_or(0) > 0,
    );
    let run = cluster.run_status(&run_id);
    assert_eq!(run["status"], "succeeded", "{run}");
    let work = stage(&run, "work");
    assert_eq!(work["attempt"], 2);
    let attempts = work["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["status"], "lost");
    assert_eq!(attempts[0]["node"], node.as_str());
    assert_eq!(attempts[1]["status"], "succeeded");
    assert_ne!(attempts[1]["node"], node.as_str());
    let nodes = cluster.kiln_json(&["nodes"]);
    let lost = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node.as_str())
        .unwrap();
    assert_eq!(lost["status"], "down");
}
