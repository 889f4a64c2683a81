//! The examples run through `kiln dev` as the README says, in a temp data dir: the model
//! server's pipeline (unit tests, a static FROM-scratch image built and pushed to the
//! registry kiln dev starts, a smoke test that pulls it and runs the model, a deploy to
//! staging, a smoke test through the gateway, a promotion to production) and hello. And
//! `kiln dev --run` says clearly what is missing when Docker or a registry is.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_e2e::docker::{apt_install, docker_or_skip};
use kiln_e2e::{bin, stage};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kiln_dev(pipeline: &str, data: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(bin("kiln"))
        .args([
            "--json",
            "dev",
            "--run",
            pipeline,
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .current_dir(repo())
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .env_remove("KILN_REGISTRY")
        .stdin(Stdio::null())
        .output()
        .expect("running kiln dev")
}

fn run_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kiln dev failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("run JSON")
}

#[test]
fn the_model_server_pipeline_runs_green_through_kiln_dev() {
    if !docker_or_skip("the_model_server_pipeline_runs_green_through_kiln_dev") {
        return;
    }
    apt_install("docker-registry", Path::new("/usr/bin/docker-registry"));
    let data = tempfile::tempdir().unwrap();

    // Without a registry to push to, the build is refused before anything starts.
    let out = kiln_dev(
        "examples/model-server/pipeline.yaml",
        data.path(),
        &[("PATH", "/nonexistent")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("stages image build images, which needs a registry: install Debian's docker-registry package"),
        "{stderr}"
    );

    let run = run_json(&kiln_dev(
        "examples/model-server/pipeline.yaml",
        data.path(),
        &[],
    ));
    assert_eq!(run["status"], "succeeded", "{run}");
    let image = stage(&run, "image")["image"].as_str().unwrap().to_string();
    assert!(
        image.contains("/kiln-examples/model-server@sha256:"),
        "{image}"
    );
    assert_eq!(stage(&run, "smoke")["image"], image.as_str());
    let log =
        std::fs::read_to_string(data.path().join("agent/tasks/run-1/smoke/1/output.log")).unwrap();
    assert!(
        log.ends_with("model v1 loaded from /model/weights.json; p(0) = 0.6225\n"),
        "{log}"
    );
    // Deployed to staging as a container service, answered through the gateway there, and
    // promoted to production.
    for deploy in ["staging", "production"] {
        let s = stage(&run, deploy);
        assert_eq!(
            (s["status"].as_str(), s["node"].as_str()),
            (Some("succeeded"), Some("(coordinator)")),
            "{s}"
        );
    }
    let answer = std::fs::read_to_string(
        data.path()
            .join("agent/tasks/run-1/staging-smoke/1/output.log"),
    )
    .unwrap();
    assert!(answer.contains("\"model_version\":\"v1\""), "{answer}");
    // kiln dev removed the containers it started when it stopped.
    let instance = kiln_e2e::docker::agent_instance(&data.path().join("agent")).unwrap();
    assert!(
        kiln_e2e::docker::containers_with("kiln.agent", &instance).is_empty(),
        "no container of kiln dev's outlives it"
    );
    let _ = Command::new("docker").args(["rmi", &image]).output();
}

#[test]
fn the_hello_pipeline_runs_green_through_kiln_dev() {
    let data = tempfile::tempdir().unwrap();
    let run = run_json(&kiln_dev("examples/hello/pipeline.yaml", data.path(), &[]));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stages"].as_array().unwrap().len(), 4);
}

#[test]
fn kiln_dev_says_when_docker_is_missing() {
    let data = tempfile::tempdir().unwrap();
    let out = kiln_dev(
        "examples/model-server/pipeline.yaml",
        data.path(),
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.starts_with("kiln: stages image, smoke run on Docker, but no Docker daemon answers"),
        "{stderr}"
    );
    assert!(
        !data.path().join("coordinator").exists(),
        "nothing was started"
    );
}

#[test]
fn the_sharded_tests_example_splits_a_real_nextest_suite() {
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output();
    if !nextest.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "\n*** SKIPPED the_sharded_tests_example_splits_a_real_nextest_suite: cargo-nextest is not installed (scripts/test then runs cargo test) ***\n"
        );
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let run = run_json(&kiln_dev(
        "examples/sharded-tests/pipeline.yaml",
        data.path(),
        &[],
    ));
    assert_eq!(run["status"], "succeeded", "{run}");
    let unit = stage(&run, "unit");
    let shards = unit["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3);
    let listed: usize = String::from_utf8(
        Command::new("cargo")
            .args([
                "nextest",
                "list",
                "-p",
                "kiln-sharding",
                "--message-format",
                "oneline",
            ])
            .current_dir(repo())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .lines()
    .count();
    assert!(listed > 20, "{listed}");
    assert_eq!(unit["message"], format!("{listed} tests passed"), "{unit}");
    // Each shard's note says how many tests it ran: together, every test once; and the
    // work was shared (a shard that started late may find the queue empty).
    let ran: Vec<usize> = shards
        .iter()
        .map(|k| {
            let note = k["attempts"][0]["message"].as_str().unwrap();
            note.split(' ')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{k}"))
        })
        .collect();
    assert_eq!(ran.iter().sum::<usize>(), listed, "{ran:?}");
    assert!(ran.iter().filter(|&&n| n > 0).count() >= 2, "{ran:?}");
}
