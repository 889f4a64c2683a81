//! Finished runs past retention leave the coordinators' memory for the archive on disk, and
//! stay readable by id on every coordinator and listable, newest first, page by page.

use std::time::Duration;

use kiln_e2e::{Cluster, Options, stage};
use serde_json::Value;

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_str().map(String::from))
        .collect()
}

#[test]
fn archived_runs_are_readable_and_listable_with_paging() {
    let mut cluster = Cluster::start(Options {
        coordinators: 3,
        agents: 1,
        coordinator_args: vec![
            "--keep-runs".into(),
            "2".into(),
            "--keep-runs-for".into(),
            "0s".into(),
            "--archive-every".into(),
            "200ms".into(),
        ],
        ..Default::default()
    });
    let p = cluster.write(
        "p.yaml",
        "name: p\nstages:\n  - name: a\n    command: echo hello\n",
    );
    let q = cluster.write(
        "q.yaml",
        "name: q\nstages:\n  - name: b\n    command: \"true\"\n",
    );
    let mut runs = Vec::new();
    for file in [&p, &p, &p, &q, &p, &p] {
        let out = cluster.kiln(&["run", file]);
        assert!(out.status.success(), "{out:?}");
        let run = String::from_utf8_lossy(&out.stdout).trim().to_string();
        cluster.wait_for("the run to end", Duration::from_secs(30), |c| {
            c.run_status(&run)["status"] == "succeeded"
        });
        runs.push(run);
    }
    // In memory: p's newest two and q's one; the rest went to the archive.
    cluster.wait_for(
        "runs past retention to be archived",
        Duration::from_secs(30),
        |c| {
            ids(&c.kiln_json(&["status", "--limit", "0"]))
                == vec![runs[3].clone(), runs[4].clone(), runs[5].clone()]
        },
    );
    // Readable by id, whole, on every coordinator.
    for c in &cluster.coordinators {
        let out = cluster
            .kiln_command()
            .args(["status", &runs[0], "--json", "--addr", &c.grpc])
            .output()
            .expect("kiln");
        let run: Value = serde_json::from_slice(&out.stdout).expect("the archived run");
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(stage(&run, "a")["attempts"][0]["status"], "succeeded");
    }
    // Its log is where it was, on the agent.
    let log = cluster.kiln(&["logs", &runs[0], "a"]);
    assert_eq!(String::from_utf8_lossy(&log.stdout), "hello\n");

    // Pages, newest first, across memory and archive.
    let newest: Vec<String> = runs.iter().rev().cloned().collect();
    assert_eq!(
        ids(&cluster.kiln_json(&["status", "--limit", "2"])),
        newest[..2]
    );
    let page = cluster.kiln_json(&["status", "--limit", "2", "--before", &newest[1]]);
    assert_eq!(ids(&page), newest[2..4]);
    let last = cluster.kiln_json(&["status", "--limit", "10", "--before", &newest[3]]);
    assert_eq!(ids(&last), newest[4..]);
    let text =
        String::from_utf8_lossy(&cluster.kiln(&["status", "--limit", "2"]).stdout).into_owned();
    assert!(
        text.contains(&format!("kiln status --before {}", newest[1])),
        "{text}"
    );
    // Filters.
    assert_eq!(
        ids(&cluster.kiln_json(&["status", "--pipeline", "q"])),
        vec![runs[3].clone()]
    );
    assert_eq!(
        ids(&cluster.kiln_json(&["status", "--status", "failed"])),
        Vec::<String>::new()
    );
    let bad = cluster.kiln(&["status", "--before", "nonsense"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}
