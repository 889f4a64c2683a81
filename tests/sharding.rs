//! Sharded test stages on real clusters: real agents run a real (shell) test runner that
//! reads `$KILN_TESTS_FILE`, writes a JUnit report, and logs every test it starts in a
//! ledger file, so each test's runs can be counted from outside kiln as well as from
//! `kiln tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kiln_e2e::{Cluster, Options, stage};
use serde_json::Value;

/// The suite: prints `count` ids, `slow-*` first.
fn list_script(count: usize, slow: usize) -> String {
    let mut ids: Vec<String> = (0..slow).map(|i| format!("slow-{i:02}")).collect();
    ids.extend((slow..count).map(|i| format!("t{i:02}")));
    format!("printf '%s\\n' {}\n", ids.join(" "))
}

/// The runner. Each id: logged in the ledger, slept (0.4 s for `slow-*`, `$FAST` else),
/// then failed if `always-fail-ID` exists beside the pipeline, or once if `fail-once-ID`
/// does (the file is removed). Writes one JUnit report for the batch.
const RUNNER: &str = r#"#!/bin/sh
dir="$KILN_PIPELINE_DIR"
mkdir -p reports
out=reports/junit.xml
echo '<?xml version="1.0"?><testsuites><testsuite name="e2e">' > "$out"
while read -r id; do
  echo "$KILN_RUN_ID $KILN_NODE $id" >> "$dir/ledger"
  case "$id" in slow-*) sleep 0.4 ;; *) sleep "${FAST:-0.05}" ;; esac
  if [ -e "$dir/always-fail-$id" ]; then
    echo "<testcase classname=\"e2e\" name=\"$id\" time=\"0.05\"><failure message=\"$id is broken\"/></testcase>" >> "$out"
  elif [ -e "$dir/fail-once-$id" ]; then
    rm -f "$dir/fail-once-$id"
    echo "<testcase classname=\"e2e\" name=\"$id\" time=\"0.05\"><failure message=\"$id flaked\"/></testcase>" >> "$out"
  else
    echo "<testcase classname=\"e2e\" name=\"$id\" time=\"0.05\"/>" >> "$out"
  fi
done < "$KILN_TESTS_FILE"
echo '</testsuite></testsuites>' >> "$out"
exit 0
"#;

fn suite_pipeline(name: &str, shards: u32, retries: u32, extra: &str) -> String {
    format!(
        "name: {name}
stages:
  - name: unit
    shards: {shards}
    retries: {retries}
    timeout: 2m
{extra}    tests:
      list: sh \"$KILN_PIPELINE_DIR/list.sh\"
      run: sh \"$KILN_PIPELINE_DIR/run-tests.sh\"
      report: reports/*.xml
"
    )
}

fn setup(cluster: &Cluster, count: usize, slow: usize) {
    cluster.write("list.sh", &list_script(count, slow));
    cluster.write("run-tests.sh", RUNNER);
}

/// How many times each id was started in `run`, from the ledger.
fn ledger(cluster: &Cluster, run: &str) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(cluster.dir.path().join("ledger")).unwrap_or_default();
    let mut seen = BTreeMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        if parts.len() == 3 && parts[0] == run {
            *seen.entry(parts[2].to_string()).or_default() += 1;
        }
    }
    seen
}

fn submit(cluster: &Cluster, file: &str) -> String {
    let out = cluster.kiln(&["run", file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_done(cluster: &mut Cluster, run: &str, secs: u64) -> Value {
    cluster.wait_for("the run to end", Duration::from_secs(secs), |c| {
        c.run_status(run)["finished_ms"].as_i64().unwrap_or(0) > 0
    });
    cluster.run_status(run)
}

fn suite(report: &Value) -> &Value {
    &report["suites"][0]
}

fn test<'a>(report: &'a Value, id: &str) -> &'a Value {
    suite(report)["tests"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == id))
        .unwrap_or_else(|| panic!("no test {id} in {report}"))
}

#[test]
fn a_dynamic_suite_runs_every_test_once_over_real_shards() {
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        ..Default::default()
    });
    setup(&cluster, 24, 4);
    cluster.write("fail-once-t05", "");
    let file = cluster.write("suite.yaml", &suite_pipeline("suite", 3, 1, ""));
    let run = submit(&cluster, &file);
    let status = wait_done(&mut cluster, &run, 60);
    assert_eq!(status["status"], "succeeded", "{status}");
    let unit = stage(&status, "unit");
    assert_eq!(unit["shards"].as_array().unwrap().len(), 3);
    assert_eq!(unit["message"], "24 tests passed, 1 flaky", "{unit}");

    let report = cluster.kiln_json(&["tests", &run]);
    let s = suite(&report);
    assert_eq!(s["split"], "dynamic");
    assert_eq!(s["counts"]["passed"], 23, "{s}");
    assert_eq!(s["counts"]["flaky"], 1, "{s}");
    let tests = s["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 24);
    for t in tests {
        let want = if t["id"] == "t05" { 2 } else { 1 };
        assert_eq!(t["runs"].as_array().unwrap().len(), want, "{t}");
    }
    let flaky = test(&report, "t05");
    assert_eq!(flaky["verdict"], "flaky");
    assert_eq!(flaky["runs"][0]["outcome"], "failed");
    assert_eq!(flaky["runs"][1]["outcome"], "passed");
    // Longest first: the slow tests lead the report, and every shard's runs add up.
    assert!(test(&report, "slow-00")["time_ms"].as_u64().unwrap() >= 50);
    let shard_runs: u64 = s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["tests"].as_u64().unwrap())
        .sum();
    assert_eq!(shard_runs, 25, "24 tests + 1 retry");
    assert!(s["imbalance"].as_f64().unwrap() >= 1.0, "{s}");

    // The ledger agrees: each test started once, the flaky one twice.
    let seen = ledger(&cluster, &run);
    assert_eq!(seen.len(), 24, "{seen:?}");
    for (id, n) in &seen {
        assert_eq!(*n, if id == "t05" { 2 } else { 1 }, "{id}");
    }

    // The table for people names the flaky test.
    let out = cluster.kiln(&["tests", &run]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("flaky:") && text.contains("t05"), "{text}");
    assert!(text.contains("imbalance"), "{text}");

    // One shard listed the suite; the others waited for its list.
    let listed = (0..3)
        .filter(|k| {
            let out = cluster.kiln(&["logs", &run, "unit", "--shard", &k.to_string()]);
            String::from_utf8_lossy(&out.stdout).contains("tests.list printed")
        })
        .count();
    assert_eq!(listed, 1, "shards that ran list:");
}

#[test]
fn failed_tests_fail_the_stage_and_rerun_alone() {
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        ..Default::default()
    });
    setup(&cluster, 12, 0);
    cluster.write("always-fail-t03", "");
    let file = cluster.write("suite.yaml", &suite_pipeline("suite", 2, 1, ""));
    let run = submit(&cluster, &file);
    let status = wait_done(&mut cluster, &run, 60);
    assert_eq!(status["status"], "failed", "{status}");
    let unit = stage(&status, "unit");
    assert_eq!(unit["status"], "failed");
    assert_eq!(unit["message"], "1 of 12 tests did not pass", "{unit}");
    for k in unit["shards"].as_array().unwrap() {
        assert_eq!(k["status"], "succeeded", "the shards ran to the end: {k}");
    }
    let report = cluster.kiln_json(&["tests", &run]);
    let broken = test(&report, "t03");
    assert_eq!(broken["verdict"], "failed");
    assert_eq!(broken["runs"].as_array().unwrap().len(), 2, "retried once");
    assert_eq!(broken["message"], "t03 is broken");

    // `kiln rerun --failed` runs t03 alone (and it still fails).
    let out = cluster.kiln(&["rerun", &run, "--failed", "--follow", "--json"]);
    assert!(!out.status.success(), "the rerun fails as t03 still does");
    let rerun: Value = serde_json::from_slice(&out.stdout).expect("run JSON");
    let rerun_id = rerun["id"].as_str().unwrap();
    assert_ne!(rerun_id, run);
    let seen = ledger(&cluster, rerun_id);
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec!["t03"], "{seen:?}");
    let report = cluster.kiln_json(&["tests", rerun_id]);
    assert_eq!(suite(&report)["tests"].as_array().unwrap().len(), 1);

    // Once t03 is mended, rerunning the failures of the first run succeeds.
    std::fs::remove_file(cluster.dir.path().join("always-fail-t03")).unwrap();
    let out = cluster.kiln(&["rerun", &run, "--failed", "--follow", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster.kiln(&["rerun", rerun_id, "--failed"]);
    assert!(out.status.success(), "a failed rerun can be rerun");
    let none = cluster.kiln(&["rerun", "run-999", "--failed"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("run-999 not found"));
}

#[test]
fn killing_a_shards_agent_requeues_its_tests_and_every_test_reports_once() {
    let mut cluster = Cluster::start(Options {
        node_grace_ms: 1_500,
        heartbeat_ms: 200,
        ..Default::default()
    });
    setup(&cluster, 16, 0);
    let file = cluster.write(
        "suite.yaml",
        // 3 of each agent's 4 CPUs: one shard per node.
        &suite_pipeline(
            "suite",
            2,
            0,
            "    env: { FAST: \"0.4\" }\n    resources: { cpu: 3 }\n",
        ),
    );
    let run = submit(&cluster, &file);
    // Wait until both agents have started tests, then kill one of them mid-batch.
    let mut nodes = BTreeSet::new();
    cluster.wait_for("both shards to run tests", Duration::from_secs(30), |c| {
        let text = std::fs::read_to_string(c.dir.path().join("ledger")).unwrap_or_default();
        nodes = text
            .lines()
            .filter_map(|l| l.split(' ').nth(1).map(String::from))
            .collect();
        nodes.len() == 2
    });
    let victim_name = nodes.iter().next().unwrap().clone();
    let victim = cluster
        .agents
        .iter()
        .position(|a| a.name == victim_name)
        .unwrap();
    cluster.agents[victim].kill();

    let status = wait_done(&mut cluster, &run, 60);
    assert_eq!(status["status"], "succeeded", "{status}");
    let unit = stage(&status, "unit");
    let lost: Vec<&Value> = unit["shards"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|k| k["attempts"].as_array().unwrap())
        .filter(|a| a["status"] == "lost")
        .collect();
    assert_eq!(lost.len(), 1, "the victim's shard lost one attempt: {unit}");
    assert_eq!(lost[0]["node"], victim_name.as_str());

    let report = cluster.kiln_json(&["tests", &run]);
    let tests = suite(&report)["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 16);
    for t in tests {
        assert_eq!(t["verdict"], "passed", "{t}");
        assert_eq!(t["runs"].as_array().unwrap().len(), 1, "reported once: {t}");
        assert_ne!(t["runs"][0]["attempt"], Value::Null);
    }
    // The tests the victim held were started again elsewhere.
    let seen = ledger(&cluster, &run);
    assert_eq!(seen.len(), 16);
    assert!(
        seen.values().any(|&n| n >= 2),
        "some test ran again after the loss: {seen:?}"
    );
}

/// A runner that knows only Bazel's variables: it takes every TEST_TOTAL_SHARDS-th test
/// from TEST_SHARD_INDEX and touches TEST_SHARD_STATUS_FILE.
const BAZEL_RUNNER: &str = r#"#!/bin/sh
[ -n "$TEST_SHARD_STATUS_FILE" ] && touch "$TEST_SHARD_STATUS_FILE"
i=0
for id in a b c d e f g h i j; do
  if [ $((i % TEST_TOTAL_SHARDS)) -eq "$TEST_SHARD_INDEX" ]; then
    echo "$KILN_RUN_ID $TEST_SHARD_INDEX $CI_NODE_INDEX/$CI_NODE_TOTAL $KILN_SHARD_INDEX/$KILN_SHARD_COUNT $id" >> "$KILN_PIPELINE_DIR/bazel-ledger"
  fi
  i=$((i + 1))
done
"#;

#[test]
fn a_runner_that_speaks_only_bazel_gets_a_correct_partition() {
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        ..Default::default()
    });
    cluster.write("bazel.sh", BAZEL_RUNNER);
    let file = cluster.write(
        "bazel.yaml",
        "name: bazel
stages:
  - name: test
    shards: 3
    command: sh \"$KILN_PIPELINE_DIR/bazel.sh\"
  - name: unaware
    shards: 2
    command: echo I run everything
",
    );
    let run = submit(&cluster, &file);
    let status = wait_done(&mut cluster, &run, 60);
    assert_eq!(status["status"], "succeeded", "{status}");

    let text = std::fs::read_to_string(cluster.dir.path().join("bazel-ledger")).unwrap();
    let mut by_shard: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&format!("{run} "))) {
        let p: Vec<&str> = line.split(' ').collect();
        let index: u32 = p[1].parse().unwrap();
        assert_eq!(
            p[2],
            format!("{}/3", index + 1),
            "CI_NODE_INDEX is 1-based: {line}"
        );
        assert_eq!(p[3], format!("{index}/3"), "{line}");
        assert!(
            by_shard.entry(p[1].into()).or_default().insert(p[4].into()),
            "{line}"
        );
    }
    assert_eq!(by_shard.len(), 3);
    let all: Vec<String> = by_shard.values().flatten().cloned().collect();
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 10, "each test once: {by_shard:?}");
    assert_eq!(unique.len(), 10);

    // The runner touched the status file; the unaware one did not, and is told so.
    for k in stage(&status, "test")["shards"].as_array().unwrap() {
        assert_eq!(k["attempts"][0]["message"], "", "{k}");
    }
    for k in stage(&status, "unaware")["shards"].as_array().unwrap() {
        let message = k["attempts"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("did not touch TEST_SHARD_STATUS_FILE"),
            "{k}"
        );
    }
}

#[test]
fn bad_suites_fail_their_stage_with_a_clear_error_and_disturb_nothing_else() {
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        agent_cpu: "8".into(),
        ..Default::default()
    });
    // shards: 0 is refused before anything runs.
    let zero = cluster.write(
        "zero.yaml",
        "name: z\nstages:\n  - name: t\n    shards: 0\n    command: 'true'\n",
    );
    let out = cluster.kiln(&["run", &zero]);
    assert_eq!(out.status.code(), Some(2), "invalid input exits 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("zero.yaml:4: stages.t.shards: 0 is out of range (1 to 256)"),
        "{err}"
    );
    assert_eq!(
        cluster.kiln_json(&["status"]),
        serde_json::json!([]),
        "nothing was submitted"
    );

    cluster.write("run-tests.sh", RUNNER);
    let file = cluster.write(
        "bad.yaml",
        "name: bad
stages:
  - name: list-fails
    tests:
      list: echo no such suite >&2; exit 3
      run: 'true'
      report: '*.xml'
  - name: list-empty
    tests:
      list: 'true'
      run: 'true'
      report: '*.xml'
  - name: bad-report
    tests:
      list: echo t1
      run: mkdir -p reports && printf '<testsuites>\\n<testcase name=\"t1\">\\n</testsuites>\\n' > reports/junit.xml
      report: reports/*.xml
  - name: fine
    command: echo fine
",
    );
    let run = submit(&cluster, &file);
    let status = wait_done(&mut cluster, &run, 60);
    assert_eq!(status["status"], "failed");
    assert_eq!(
        stage(&status, "fine")["status"],
        "succeeded",
        "nothing else disturbed"
    );
    let message = |name: &str| -> String {
        let s = stage(&status, name);
        assert_eq!(s["status"], "failed", "{s}");
        s["shards"][0]["attempts"][0]["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let m = message("list-fails");
    assert!(
        m.contains("tests.list `echo no such suite >&2; exit 3` exited with code 3"),
        "{m}"
    );
    let m = message("list-empty");
    assert!(m.contains("tests.list `true` printed no test ids"), "{m}");
    let m = message("bad-report");
    assert!(
        m.starts_with("tests.report: reports/junit.xml: malformed JUnit XML: line 3"),
        "{m}"
    );
    // The stage's log says it too.
    let out = cluster.kiln(&["logs", &run, "list-fails"]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("no such suite"), "{log}");
}
