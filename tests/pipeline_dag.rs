//! A DAG pipeline on a real 3-coordinator, 2-agent cluster, driven by the real CLI: it
//! succeeds, no stage starts before all its needs succeeded, and independent stages overlap.

use kiln_e2e::{Cluster, Options, stage};

const DAG: &str = "\
name: dag
stages:
  - name: build
    command: echo built; sleep 0.2
  - name: test-a
    needs: [build]
    command: echo a-start; sleep 1; echo a-done
  - name: test-b
    needs: [build]
    command: [sh, -c, 'echo b-start; sleep 1; echo b-done']
  - name: ship
    needs: [test-a, test-b]
    command: echo \"shipping $KILN_RUN_ID from $KILN_NODE\"
";

#[test]
fn a_dag_runs_in_order_with_independent_stages_overlapping() {
    let cluster = Cluster::start(Options::default());
    let file = cluster.write("dag.yaml", DAG);
    let out = cluster.kiln(&["run", &file, "--follow", "--json"]);
    assert!(
        out.status.success(),
        "run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run JSON");
    assert_eq!(run["status"], "succeeded");

    for s in run["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "succeeded", "{s}");
        assert_eq!(s["exit_code"], 0);
        assert!(s["node"].as_str().unwrap().starts_with("agent-"));
        for need in s["needs"].as_array().unwrap() {
            let need = stage(&run, need.as_str().unwrap());
            assert!(
                s["started_ms"].as_i64().unwrap() >= need["finished_ms"].as_i64().unwrap(),
                "{} started before its need {} finished",
                s["name"],
                need["name"]
            );
        }
    }
    let (a, b) = (stage(&run, "test-a"), stage(&run, "test-b"));
    let overlap = a["started_ms"].as_i64() < b["finished_ms"].as_i64()
        && b["started_ms"].as_i64() < a["finished_ms"].as_i64();
    assert!(overlap, "independent stages did not overlap: {a} {b}");

    // The output of a stage comes back from the node that ran it.
    let run_id = run["id"].as_str().unwrap();
    let logs = cluster.kiln(&["logs", run_id, "ship"]);
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.starts_with(&format!("shipping {run_id} from agent-")),
        "{text}"
    );

    // Every transition of every attempt is recorded.
    let transitions: Vec<&str> = stage(&run, "build")["attempts"][0]["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(transitions, ["placed", "running", "succeeded"]);
}
