//! Coordinators are added and removed live with `kiln cluster join|leave`, and the cluster
//! keeps running pipelines across the changes.

use std::time::Duration;

use kiln_e2e::{Cluster, Options};

fn voters(cluster: &Cluster) -> Vec<u64> {
    let status = cluster.kiln_json(&["cluster", "status"]);
    let mut v: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn coordinators_join_and_leave_live() {
    let mut cluster = Cluster::start(Options {
        agents: 1,
        ..Default::default()
    });
    let file = cluster.write(
        "p.yaml",
        "name: p\nstages:\n  - name: a\n    command: echo ok\n",
    );
    assert_eq!(voters(&cluster), vec![1, 2, 3]);

    let out = cluster.kiln(&["cluster", "leave", "--id", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(voters(&cluster), vec![1, 2]);
    assert!(cluster.kiln(&["run", &file, "--follow"]).status.success());

    cluster.add_empty_coordinator(4);
    let addr = cluster.coordinators[3].grpc.clone();
    let out = cluster.kiln(&["cluster", "join", "--id", "4", "--member-addr", &addr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(voters(&cluster), vec![1, 2, 4]);

    // The new member has the whole history: ask it directly.
    cluster.wait_for("coordinator 4 to catch up", Duration::from_secs(20), |c| {
        let out = c.kiln(&["status", "--json", "--addr", &addr, "--wait", "1"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|runs| {
            runs.as_array()
                .is_some_and(|r| r.len() == 1 && r[0]["status"] == "succeeded")
        })
    });
    assert!(cluster.kiln(&["run", &file, "--follow"]).status.success());

    // Removing a coordinator that is not a member is "not found" (exit 4); nothing changes.
    let out = cluster.kiln(&["cluster", "leave", "--id", "9"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(voters(&cluster), vec![1, 2, 4]);
}
