//! Bad input gets a non-zero exit and a one-line reason naming the field (and line), through
//! the CLI and through a plain gRPC client, and changes nothing in the cluster.

use kiln_api::pb::{SubmitRunRequest, kiln_client::KilnClient};
use kiln_e2e::{Cluster, Options};

const CASES: &[(&str, &str, &str)] = &[
    (
        "malformed",
        "name: x\nstages:\n  - name: a\n    command: [unclosed\n",
        "malformed.yaml:",
    ),
    (
        "unknown-field",
        "name: x\nstages:\n  - name: a\n    comand: make\n",
        "unknown-field.yaml:4: stages[0]: unknown field `comand`",
    ),
    (
        "cycle",
        "name: x\nstages:\n  - name: a\n    needs: [b]\n    command: x\n  - name: b\n    needs: [a]\n    command: x\n",
        "cycle.yaml:4: stages.a.needs: cycle: a -> b -> a",
    ),
    (
        "unknown-needs",
        "name: x\nstages:\n  - name: a\n    needs: [nope]\n    command: x\n",
        "unknown-needs.yaml:4: stages.a.needs: unknown stage \"nope\"",
    ),
    (
        "empty-command",
        "name: x\nstages:\n  - name: a\n    command: \"\"\n",
        "empty-command.yaml:4: stages.a.command: empty command",
    ),
    (
        "zero-cpu",
        "name: x\nstages:\n  - name: a\n    command: x\n    resources: { cpu: 0 }\n",
        "zero-cpu.yaml:5: stages.a.resources.cpu: 0 must be greater than zero",
    ),
    (
        "negative-memory",
        "name: x\nstages:\n  - name: a\n    command: x\n    resources: { memory: -1Gi }\n",
        "negative-memory.yaml:5: stages.a.resources.memory",
    ),
    (
        "absurd-cpu",
        "name: x\nstages:\n  - name: a\n    command: x\n    resources: { cpu: 5000 }\n",
        "more than the limit of 1024 cores",
    ),
    (
        "duplicate",
        "name: x\nstages:\n  - name: a\n    command: x\n  - name: a\n    command: y\n",
        "duplicate.yaml:5: stages.a: duplicate stage name",
    ),
];

#[test]
fn bad_input_is_refused_with_a_reason_and_changes_nothing() {
    let cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        ..Default::default()
    });
    let state_before = (
        cluster.kiln_json(&["status"]),
        cluster.kiln_json(&["nodes"]),
    );

    for (name, yaml, expected) in CASES {
        let file = cluster.write(&format!("{name}.yaml"), yaml);
        let out = cluster.kiln(&["run", &file, "--follow"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{name}: one line expected, got {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in {stderr:?}"
        );
    }
    let missing = cluster.kiln(&["run", "/no/such/file.yaml"]);
    assert_eq!(missing.status.code(), Some(2));

    // The coordinator checks again for clients that did not: a generated gRPC client.
    let addr = cluster.coordinators[0].grpc.clone();
    let tls = cluster
        .tls_files("client", "admin")
        .client_config()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (name, yaml, expected) in CASES {
        let status = rt.block_on(async {
            let channel = kiln_api::pki::endpoint(&addr, Some(&tls))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = KilnClient::new(channel);
            let req = SubmitRunRequest {
                pipeline_yaml: yaml.to_string(),
                file_name: format!("{name}.yaml"),
                ..Default::default()
            };
            client.submit_run(req).await.expect_err("must be refused")
        });
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}");
        assert!(
            status.message().contains(expected),
            "{name}: {}",
            status.message()
        );
    }

    // Unknown runs are "not found" (exit 4).
    assert_eq!(cluster.kiln(&["status", "run-99"]).status.code(), Some(4));
    assert_eq!(cluster.kiln(&["cancel", "run-99"]).status.code(), Some(4));
    assert_eq!(
        cluster.kiln(&["logs", "run-99", "a"]).status.code(),
        Some(4)
    );

    let state_after = (
        cluster.kiln_json(&["status"]),
        cluster.kiln_json(&["nodes"]),
    );
    assert_eq!(state_before.0, state_after.0, "no run was created");
    assert_eq!(
        state_before.1.as_array().unwrap().len(),
        state_after.1.as_array().unwrap().len()
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_cli_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 0,
        ..Default::default()
    });
    let file = cluster.write(
        "p.yaml",
        "name: p\nstages:\n  - name: a\n    command: \"true\"\n",
    );
    for _ in 0..3 {
        assert!(cluster.kiln(&["run", &file]).status.success());
    }
    for args in [vec!["status", "--json"], vec!["status"], vec!["nodes"]] {
        let mut child = cluster
            .kiln_command()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kiln");
        // The reader is gone before kiln writes a byte.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("kiln");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "kiln {args:?}: {stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(13),
            "kiln {args:?} ended by {:?}: {stderr}",
            out.status
        );
    }
}
