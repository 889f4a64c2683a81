//! `--log-format json`: every event a coordinator or an agent logs is one JSON object on one
//! line, with its time, level, target, message and the span it happened in.

use std::time::Duration;

use kiln_e2e::{Cluster, Options};
use serde_json::Value;

#[test]
fn json_logs_are_one_event_a_line() {
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        coordinator_args: vec!["--log-format".into(), "json".into()],
        agent_args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    });
    let file = cluster.write(
        "p.yaml",
        "name: p\nstages:\n  - name: a\n    command: \"true\"\n",
    );
    let run = String::from_utf8_lossy(&cluster.kiln(&["run", &file]).stdout)
        .trim()
        .to_string();
    cluster.wait_for("the run", Duration::from_secs(20), |c| {
        c.run_status(&run)["status"] == "succeeded"
    });
    cluster.coordinators[0].proc.stop();
    cluster.agents[0].stop();
    for name in ["coordinator-1", "agent-1"] {
        let text =
            std::fs::read_to_string(cluster.dir.path().join(format!("{name}.log"))).expect("log");
        let mut events = Vec::new();
        for line in text.lines() {
            // The one line a binary prints on stdout when it is ready is not a log event.
            if line.starts_with("kiln-coordinator ready") || line.starts_with("kiln-agent ready") {
                continue;
            }
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not one JSON event ({e}): {line}"));
            for key in ["timestamp", "level", "target"] {
                assert!(event[key].is_string(), "{name}: no {key}: {line}");
            }
            assert!(event["fields"]["message"].is_string(), "{name}: {line}");
            events.push(event);
        }
        assert!(events.len() >= 3, "{name}: {events:?}");
        if name == "coordinator-1" {
            assert!(
                events
                    .iter()
                    .any(|e| e["spans"][0]["method"] == "/kiln.v1.Kiln/SubmitRun"
                        && e["fields"]["message"] == "run submitted"),
                "an RPC's events carry its span"
            );
        }
    }
}
