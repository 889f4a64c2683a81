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

#[test]
fn a_restarted_agent_stops_the_process_its_previous_life_left_running() {
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        heartbeat_ms: 200,
        ..Default::default()
    });
    let pids = cluster.dir.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let file = cluster.write(
        "long.yaml",
        &format!(
            "name: long\nstages:\n  - name: work\n    command: echo $$ > {}/$KILN_ATTEMPT; exec sleep 1000\n",
            pids.display()
        ),
    );
    let run = String::from_utf8_lossy(&cluster.kiln(&["run", &file]).stdout)
        .trim()
        .to_string();
    let first = pids.join("1");
    cluster.wait_for("the first attempt to run", Duration::from_secs(20), |_| {
        std::fs::read_to_string(&first).is_ok_and(|p| !p.trim().is_empty())
    });
    let pid: i32 = std::fs::read_to_string(&first)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
            .unwrap_or(false)
    };
    assert!(alive(pid));

    // kill -9 the agent: its task's process lives on, in its own group ...
    cluster.agents[0].kill();
    assert!(alive(pid), "the task outlives a killed agent");
    // ... until the agent starts again, which stops it before anything else.
    cluster.agents[0].start();
    cluster.wait_for("the orphan to be stopped", Duration::from_secs(20), |_| {
        !alive(pid)
    });
    // The attempt it ran is lost, and the stage runs again.
    cluster.wait_for("a second attempt", Duration::from_secs(30), |c| {
        let s = stage(&c.run_status(&run), "work").clone();
        s["attempt"] == 2 && s["status"] == "running"
    });
    let work = stage(&cluster.run_status(&run), "work").clone();
    assert_eq!(work["attempts"][0]["status"], "lost", "{work}");
    assert!(cluster.kiln(&["cancel", &run]).status.success());
}
