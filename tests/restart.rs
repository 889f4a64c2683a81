//! Stop all three coordinators and start them again: every run and its history are back
//! from sled, and the cluster goes on working.

use std::time::Duration;

use kiln_e2e::{Cluster, Options};

#[test]
fn every_run_and_its_history_survive_a_full_restart() {
    let mut cluster = Cluster::start(Options {
        agents: 1,
        ..Default::default()
    });
    let ok = cluster.write("ok.yaml", "name: ok\nstages:\n  - name: a\n    command: echo a\n  - name: b\n    needs: [a]\n    command: echo b\n");
    // Fails on its first attempt only (the marker lives outside the per-attempt work dir).
    let marker = cluster.dir.path().join("marker").display().to_string();
    let retried = cluster.write(
        "retried.yaml",
        &format!("name: retried\nstages:\n  - name: flaky\n    retries: 1\n    command: test -f {marker} || {{ touch {marker}; exit 7; }}\n"),
    );
    let bad = cluster.write("bad.yaml", "name: bad\nstages:\n  - name: a\n    command: exit 3\n  - name: b\n    needs: [a]\n    command: echo never\n");
    for (file, code) in [(&ok, 0), (&retried, 0), (&bad, 1)] {
        let out = cluster.kiln(&["run", file, "--follow"]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let before = cluster.kiln_json(&["status"]);
    let flaky = &before[1]["stages"][0];
    assert_eq!(flaky["attempt"], 2);
    assert_eq!(flaky["attempts"][0]["exit_code"], 7);

    // Abruptly: kill -9 every coordinator, then start them again on the same data.
    for c in &mut cluster.coordinators {
        c.proc.kill();
    }
    for c in &mut cluster.coordinators {
        c.proc.start();
    }
    cluster.wait_for("a leader after the restart", Duration::from_secs(30), |c| {
        c.leader().is_some()
    });
    // A restarted coordinator re-applies its log once the new leader commits; reads are
    // served from applied state, so wait for it to catch up (a lost entry never would).
    cluster.wait_for("the history to be back", Duration::from_secs(30), |c| {
        let after = c.kiln(&["status", "--json", "--wait", "1"]);
        serde_json::from_slice::<serde_json::Value>(&after.stdout).is_ok_and(|a| a == before)
    });
    // And every coordinator holds it, not only the one that answered.
    for c in &cluster.coordinators {
        let out = cluster
            .kiln_command()
            .args(["status", "--json", "--addr", &c.grpc])
            .output()
            .unwrap();
        let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            runs.as_array().map(|r| r.len()),
            Some(3),
            "coordinator {} lost runs",
            c.id
        );
    }

    // The agent reconnects on its own and new work runs.
    cluster.wait_for("the agent to reconnect", Duration::from_secs(30), |c| {
        c.ready_nodes().len() == 1
    });
    let out = cluster.kiln(&["run", &ok, "--follow", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["id"], "run-4", "run numbers continue after the restart");
}
