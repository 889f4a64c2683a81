//! A secret set with `kiln secret set` reaches the stage that asks for it, as an environment
//! variable, and nothing else: not the task's log (stored or streamed), not any API answer
//! or CLI output, and no file the cluster wrote (sled's Raft log and state, coordinator and
//! agent logs, work directories), which are all searched for its bytes.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kiln_e2e::{Cluster, Options, stage};
use sha2::{Digest, Sha256};

const VALUE: &str = "pw-7Hq2-unguessable-Zx91";

/// A `tests:` stage that prints the secret while listing and while running its batch.
const SUITE: &str = r#"  - name: suite
    secrets: [DB_PASSWORD]
    tests:
      list: echo "listing with $DB_PASSWORD" >&2; echo t1
      run: echo "running with $DB_PASSWORD"; mkdir -p reports && printf '<testsuites><testsuite name="s"><testcase name="t1"/></testsuite></testsuites>' > reports/junit.xml
      report: reports/*.xml
"#;

fn set_secret(cluster: &Cluster, name: &str, value: &str) -> std::process::Output {
    let mut child = cluster
        .kiln_command()
        .args(["secret", "set", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln secret set");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{value}\n").as_bytes())
        .expect("write the value");
    child.wait_with_output().expect("kiln secret set")
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn a_secret_reaches_its_stage_and_appears_nowhere_else() {
    let mut cluster = Cluster::start(Options {
        coordinators: 3,
        agents: 1,
        ..Default::default()
    });
    let out = set_secret(&cluster, "DB_PASSWORD", VALUE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused: a reader setting one, a stage asking for one nobody set, an empty name.
    let reader = String::from_utf8_lossy(
        &cluster
            .kiln(&["token", "create", "reader", "--role", "read"])
            .stdout,
    )
    .trim()
    .to_string();
    let denied = cluster.kiln_token(&reader, &["secret", "remove", "DB_PASSWORD"]);
    assert_eq!(denied.status.code(), Some(6), "{denied:?}");
    let missing = cluster.write(
        "missing.yaml",
        "name: m\nstages:\n  - name: a\n    command: \"true\"\n    secrets: [NOPE]\n",
    );
    let refused = cluster.kiln(&["run", &missing]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stages.a.secrets: NOPE is not set"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A container stage too, where Docker is (its output is copied through the mask).
    let container = if kiln_e2e::docker::docker_or_skip("secrets: the container stage") {
        format!(
            "  - name: boxed\n    image: {}\n    secrets: [DB_PASSWORD]\n    command: 'echo \"in a box: $DB_PASSWORD!\"'\n",
            kiln_e2e::docker::base_image()
        )
    } else {
        String::new()
    };
    let pipeline = cluster.write(
        "p.yaml",
        &format!("name: p\nstages:\n  - name: use\n    secrets: [DB_PASSWORD]\n    command: |\n      echo \"password is $DB_PASSWORD.\"\n      printf %s \"$DB_PASSWORD\" | sha256sum | cut -c1-64\n  - name: without\n    command: test -z \"$DB_PASSWORD\" && echo absent\n{SUITE}{container}"),
    );
    let submitted = cluster.kiln(&["run", &pipeline]);
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let run = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .to_string();
    cluster.wait_for("the run to end", Duration::from_secs(30), |c| {
        c.run_status(&run)["status"] == "succeeded"
    });

    // The stage saw the value (its hash is the value's), and its log says `***`.
    let log = cluster.kiln(&["logs", &run, "use"]);
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    let hash = hex::encode(Sha256::digest(VALUE.as_bytes()));
    assert!(log.contains(&hash), "the stage read the whole value: {log}");
    assert!(log.contains("password is ***."), "{log}");
    assert!(!log.contains(VALUE), "{log}");
    let suite = cluster.kiln(&["logs", &run, "suite"]);
    let suite = String::from_utf8_lossy(&suite.stdout);
    assert!(suite.contains("listing with ***"), "{suite}");
    assert!(suite.contains("running with ***"), "{suite}");
    let without = cluster.kiln(&["logs", &run, "without"]);
    assert_eq!(String::from_utf8_lossy(&without.stdout), "absent\n");
    if !container.is_empty() {
        let boxed = cluster.kiln(&["logs", &run, "boxed"]);
        let boxed = String::from_utf8_lossy(&boxed.stdout);
        assert!(boxed.contains("in a box: ***!"), "{boxed}");
    }

    // No answer holds it.
    let mut answers = Vec::new();
    for args in [
        vec!["status", &run],
        vec!["status"],
        vec!["secret", "list"],
        vec!["audit"],
        vec!["nodes"],
    ] {
        let v = cluster.kiln_json(&args);
        answers.push(v.to_string());
    }
    let listed = &answers[2];
    assert!(listed.contains("DB_PASSWORD"), "{listed}");
    for a in &answers {
        assert!(!a.contains(VALUE), "an answer holds the value: {a}");
    }
    assert!(
        answers[3].contains("secret DB_PASSWORD"),
        "audited: {}",
        answers[3]
    );
    assert!(stage(&cluster.run_status(&run), "use")["status"] == "succeeded");

    // No file: sled (Raft log, state), every process's log, the work directories.
    for c in &mut cluster.coordinators {
        c.proc.stop();
    }
    for a in &mut cluster.agents {
        a.stop();
    }
    let found = files_holding(cluster.dir.path(), VALUE.as_bytes());
    assert!(found.is_empty(), "the value is in {found:?}");
    // The search can find what is there: the stage's hash is in its stored log.
    assert!(!files_holding(cluster.dir.path(), hash.as_bytes()).is_empty());
}
