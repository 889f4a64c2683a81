//! Image builds through a real registry (Debian's docker-registry, distribution 2.8): one
//! agent builds a context the CLI sent and pushes it; another agent pulls it from the
//! registry and runs it; the digest on the run is the registry's. Bad input — an image that
//! does not exist, a context outside the pipeline's directory, a Dockerfile that fails — is
//! a clear error on the stage (or at submission), and nothing else is disturbed.

use std::time::Duration;

use kiln_e2e::docker::{Registry, base_image, docker_or_skip};
use kiln_e2e::{Cluster, Options, stage};

fn cluster_with(registry: &Registry, agents: &[(&str, &str)]) -> Cluster {
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 0,
        agent_args: vec!["--registry".into(), registry.addr.clone()],
        ..Default::default()
    });
    for (name, label) in agents {
        cluster.add_agent_with(name, "4", &["--label", label], &[]);
    }
    let want = agents.len();
    cluster.wait_for("the agents", Duration::from_secs(30), |c| {
        c.ready_nodes().len() == want
    });
    cluster
}

fn write(cluster: &Cluster, path: &str, contents: &str) -> String {
    let full = cluster.dir.path().join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(&full, contents).unwrap();
    full.display().to_string()
}

#[test]
fn an_image_built_and_pushed_by_one_agent_is_pulled_and_run_by_another() {
    if !docker_or_skip("an_image_built_and_pushed_by_one_agent_is_pulled_and_run_by_another") {
        return;
    }
    let base = base_image();
    let registry = Registry::start();
    let cluster = cluster_with(
        &registry,
        &[("builder", "role=build"), ("runner", "role=run")],
    );
    // A message no earlier run built, so the image (and its digest) is new to this daemon.
    let nonce = format!("{:x}", kiln_e2e::now_ms());
    write(&cluster, "p/app/message", &format!("built {nonce}\n"));
    write(
        &cluster,
        "p/app/Dockerfile",
        &format!("FROM {base}\nCOPY message /message\nCMD [\"cat\", \"/message\"]\n"),
    );
    let file = write(
        &cluster,
        "p/pipeline.yaml",
        "name: ship
stages:
  - name: image
    build: { context: app, name: e2e/app }
    constraints: { role: build }
  - name: run-it
    needs: [image]
    image: ${{ stages.image.image }}
    constraints: { role: run }
",
    );
    let out = cluster.kiln(&["run", &file, "--follow", "--json"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_id = run["id"].as_str().unwrap();
    let (built, ran) = (stage(&run, "image"), stage(&run, "run-it"));
    assert_eq!(
        (built["node"].as_str(), ran["node"].as_str()),
        (Some("builder"), Some("runner"))
    );

    let digest = registry
        .manifest_digest("e2e/app", run_id)
        .expect("the registry holds the pushed tag");
    let pinned = format!("{}/e2e/app@{digest}", registry.addr);
    assert_eq!(
        built["image"],
        pinned.as_str(),
        "the digest on the run is the registry's"
    );
    assert_eq!(ran["image"], pinned.as_str());

    let logs =
        String::from_utf8_lossy(&cluster.kiln(&["logs", run_id, "run-it"]).stdout).into_owned();
    assert_eq!(
        logs,
        format!("kiln: pulling {pinned}\nbuilt {nonce}\n"),
        "pulled from the registry, then ran"
    );
    assert!(
        registry
            .log()
            .contains(&format!("/v2/e2e/app/manifests/{digest}")),
        "the registry served the pull"
    );
    // The image the runner pulled is this test's alone.
    let _ = std::process::Command::new("docker")
        .args(["rmi", &pinned])
        .output();
}

#[test]
fn bad_images_contexts_and_dockerfiles_fail_clearly_and_disturb_nothing_else() {
    if !docker_or_skip("bad_images_contexts_and_dockerfiles_fail_clearly_and_disturb_nothing_else")
    {
        return;
    }
    let base = base_image();
    let registry = Registry::start();
    let cluster = cluster_with(&registry, &[("agent-1", "role=any")]);

    // Refused before anything is sent: contexts outside the pipeline's directory, on paper
    // and through a symlink.
    let outside = write(
        &cluster,
        "q/outside.yaml",
        "name: outside\nstages:\n  - name: b\n    build: { context: .., name: app }\n",
    );
    std::os::unix::fs::symlink("/tmp", cluster.dir.path().join("q/link")).unwrap();
    let linked = write(
        &cluster,
        "q/linked.yaml",
        "name: linked\nstages:\n  - name: b\n    build: { context: link, name: app }\n",
    );
    for (file, want) in [
        (
            &outside,
            "outside.yaml:4: stages.b.build.context: \"..\" is outside the pipeline's directory",
        ),
        (
            &linked,
            "stages.b.build.context: \"link\" is outside the pipeline's directory (through a symlink)",
        ),
    ] {
        let out = cluster.kiln(&["run", file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(want), "expected {want:?} in {stderr:?}");
    }
    assert_eq!(
        cluster.kiln_json(&["status"]),
        serde_json::json!([]),
        "no run was created"
    );

    // Fail on their stage: a missing image, a Dockerfile that fails. The plain stage beside
    // them still succeeds.
    write(
        &cluster,
        "p/broken/Dockerfile",
        &format!("FROM {base}\nCOPY does-not-exist /x\n"),
    );
    let file = write(
        &cluster,
        "p/pipeline.yaml",
        "name: bad
stages:
  - name: missing
    image: kiln-test-no-such-image:nope
  - name: broken
    build: { context: broken, name: e2e/broken }
  - name: fine
    command: echo fine
",
    );
    let out = cluster.kiln(&["run", &file, "--follow", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let missing = stage(&run, "missing");
    assert_eq!(missing["status"], "failed");
    let message = missing["attempts"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("cannot pull image \"kiln-test-no-such-image:nope\""),
        "{message}"
    );
    let broken = stage(&run, "broken");
    assert_eq!(broken["status"], "failed");
    let message = broken["attempts"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("docker build failed: COPY failed"),
        "{message}"
    );
    assert!(message.contains("does-not-exist"), "{message}");
    assert_eq!(stage(&run, "fine")["status"], "succeeded");
    assert_eq!(
        registry.manifest_digest("e2e/broken", "run-1"),
        None,
        "nothing was pushed"
    );
    let nodes = cluster.kiln_json(&["nodes"]);
    assert_eq!(nodes[0]["status"], "ready");
    assert_eq!(nodes[0]["allocations"], 0);
}

#[test]
fn a_build_context_survives_the_loss_of_the_coordinator_that_took_it() {
    if !docker_or_skip("a_build_context_survives_the_loss_of_the_coordinator_that_took_it") {
        return;
    }
    let base = base_image();
    let registry = Registry::start();
    let mut cluster = Cluster::start(Options {
        coordinators: 3,
        agents: 1,
        agent_args: vec!["--registry".into(), registry.addr.clone()],
        ..Default::default()
    });
    write(
        &cluster,
        "p/app/Dockerfile",
        &format!("FROM {base}\nCMD [\"true\"]\n"),
    );
    let file = write(
        &cluster,
        "p/pipeline.yaml",
        "name: durable
stages:
  - name: gate
    command: while [ ! -e release ]; do sleep 0.1; done
  - name: image
    needs: [gate]
    build: { context: app, name: e2e/durable }
",
    );
    let out = cluster.kiln(&["run", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // Acknowledged means a majority holds the context; with all three up, all three do.
    let blob_dirs: Vec<_> = (1..=3)
        .map(|i| cluster.dir.path().join(format!("c{i}/blobs/sha256")))
        .collect();
    let held = |dir: &std::path::PathBuf| {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
    };
    assert!(
        blob_dirs.iter().all(|d| held(d) == 1),
        "every coordinator holds the context"
    );

    cluster.wait_for("the gate to run", Duration::from_secs(30), |c| {
        stage(&c.run_status(&run), "gate")["status"] == "running"
    });
    let leader = cluster.leader().expect("a leader");
    cluster.coordinators[leader].proc.kill();
    cluster.wait_for("a new leader", Duration::from_secs(30), |c| {
        c.leader().is_some_and(|l| l != leader)
    });
    std::fs::write(
        cluster
            .agent_dir("agent-1")
            .join(format!("tasks/{run}/gate/1/work/release")),
        "",
    )
    .unwrap();
    cluster.wait_for("the build", Duration::from_secs(60), |c| {
        c.run_status(&run)["finished_ms"].as_i64().unwrap_or(0) > 0
    });
    let r = cluster.run_status(&run);
    assert_eq!(r["status"], "succeeded", "{r}");
    let digest = registry
        .manifest_digest("e2e/durable", &run)
        .expect("pushed");
    assert_eq!(
        stage(&r, "image")["image"],
        format!("{}/e2e/durable@{digest}", registry.addr).as_str()
    );
}
