//! A leader change does not stop running work: the task keeps running on its agent, the
//! agent reconnects to the new leader, and the attempt's result is recorded once, with no
//! second attempt. Also: `kiln logs -f` follows a running stage to its end.

use std::time::Duration;

use kiln_e2e::{Cluster, Options, stage};

#[test]
fn running_work_survives_a_leader_change_and_logs_follow_it() {
    let mut cluster = Cluster::start(Options {
        agents: 1,
        ..Default::default()
    });
    let release = cluster.dir.path().join("release");
    let file = cluster.write(
        "long.yaml",
        &format!(
            "name: long\nstages:\n  - name: work\n    command: echo started; while [ ! -f {} ]; do sleep 0.02; done; echo finished\n",
            release.display()
        ),
    );
    let out = cluster.kiln(&["run", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    cluster.wait_for("the stage to run", Duration::from_secs(20), |c| {
        stage(&c.run_status(&run_id), "work")["status"] == "running"
    });

    // Follow the stage's log from another process while the leader dies under it.
    let follower = cluster
        .kiln_command()
        .args(["logs", &run_id, "work", "-f", "--wait", "30"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kiln logs -f");

    let leader = cluster.leader().expect("a leader");
    cluster.coordinators[leader].proc.kill();
    cluster.wait_for("a new leader", Duration::from_secs(20), |c| {
        c.leader().is_some_and(|l| l != leader)
    });
    // The agent finds the new leader; its task was never touched.
    cluster.wait_for(
        "the agent on the new leader",
        Duration::from_secs(20),
        |c| c.ready_nodes().len() == 1,
    );
    let work = stage(&cluster.run_status(&run_id), "work").clone();
    assert_eq!(work["status"], "running");
    assert_eq!(work["attempt"], 1);

    std::fs::write(&release, "").unwrap();
    cluster.wait_for("the run to finish", Duration::from_secs(20), |c| {
        c.run_status(&run_id)["status"] == "succeeded"
    });
    let work = stage(&cluster.run_status(&run_id), "work").clone();
    assert_eq!(
        work["attempts"].as_array().unwrap().len(),
        1,
        "one attempt, no re-run: {work}"
    );

    // The follower was cut off with the old leader or carried on; either way a fresh
    // follow of the finished stage returns the whole output and ends by itself.
    let _ = follower.wait_with_output();
    let out = cluster.kiln(&["logs", &run_id, "work", "-f"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\nfinished\n");
}
