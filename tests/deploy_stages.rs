//! Deploy stages on a real cluster: a pipeline builds an image through a real registry and
//! deploys it to staging as a container service, succeeding once the rollout is healthy; a
//! deploy whose rollout fails fails its run with the reason and the environment goes back
//! to its last healthy revision; cancelling a run during its rollout reverts it.

use std::time::Duration;

use kiln_e2e::docker::{Registry, base_image, docker_or_skip};
use kiln_e2e::http::request;
use kiln_e2e::services::{busybox_service, history, version};
use kiln_e2e::{Cluster, Options, stage};
use serde_json::Value;

fn write(cluster: &Cluster, path: &str, contents: &str) -> String {
    let full = cluster.dir.path().join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(&full, contents).unwrap();
    full.display().to_string()
}

/// A pipeline in `p/NAME/`: build an image (distinct per pipeline), deploy `service` with it
/// into staging.
fn pipeline(cluster: &Cluster, name: &str, service: &str) -> String {
    let base = base_image();
    let nonce = format!("{name} {:x}", kiln_e2e::now_ms());
    write(cluster, &format!("p/{name}/app/nonce"), &nonce);
    write(
        cluster,
        &format!("p/{name}/app/Dockerfile"),
        &format!("FROM {base}\nCOPY nonce /nonce\n"),
    );
    write(cluster, &format!("p/{name}/service.yaml"), service);
    write(
        cluster,
        &format!("p/{name}/pipeline.yaml"),
        "name: ship
stages:
  - name: image
    build: { context: app, name: e2e/web }
  - name: staging
    needs: [image]
    deploy:
      service: service.yaml
      environment: staging
      image: ${{ stages.image.image }}
",
    )
}

fn run(cluster: &Cluster, file: &str) -> Value {
    let out = cluster.kiln(&["run", file, "--follow", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_pipeline_builds_deploys_and_its_failed_or_cancelled_deploys_go_back() {
    if !docker_or_skip("a_pipeline_builds_deploys_and_its_failed_or_cancelled_deploys_go_back") {
        return;
    }
    let registry = Registry::start();
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        agent_cpu: "8".into(),
        heartbeat_ms: 200,
        agent_args: vec!["--registry".into(), registry.addr.clone()],
        ..Default::default()
    });
    let gateway = cluster.start_gateway();
    let out = cluster.kiln(&["env", "create", "staging"]);
    assert!(out.status.success());

    // Build → deploy: the stage succeeds once the revision is healthy.
    let good = pipeline(&cluster, "good", &busybox_service("web", "v1"));
    let r = run(&cluster, &good);
    assert_eq!(r["status"], "succeeded", "{r}");
    let built = stage(&r, "image")["image"].as_str().unwrap().to_string();
    assert!(built.contains("@sha256:"), "{built}");
    let deployed = stage(&r, "staging");
    assert_eq!(deployed["node"], "(coordinator)", "{deployed}");
    let s = history(&cluster, "web", Some("staging"));
    assert_eq!(s["revisions"][0]["run"], r["id"]);
    assert_eq!(s["revisions"][0]["image_digest"], built.as_str());
    assert_eq!(s["serving"], 2, "{s}");
    let answer = request(&gateway, "POST", "/staging/web/cgi-bin/predict", "{}");
    assert_eq!(version(&answer), "v1", "{answer:?}");

    // A rollout that fails fails the run, with the reason; staging is back on revision 1.
    let broken = busybox_service("web", "v2")
        .replace("exec httpd", "exit 3; exec httpd")
        .replace(
            "healthy_deadline: 20s",
            "healthy_deadline: 3s\n  auto_revert: true",
        );
    let bad = pipeline(&cluster, "bad", &broken);
    let r = run(&cluster, &bad);
    assert_eq!(r["status"], "failed", "{r}");
    let attempts = stage(&r, "staging")["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let why = attempts
        .last()
        .and_then(|a| a["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("revision 2 failed") && why.contains("reverted to revision 1"),
        "{why}"
    );
    cluster.wait_for("revision 1 back", Duration::from_secs(30), |c| {
        let s = history(c, "web", Some("staging"));
        s["revision"] == 1 && s["rollout"] == "none" && s["serving"] == 2
    });

    // Cancelled during its rollout: the rollout goes back to where it started.
    let slow = busybox_service("web", "v3")
        .replace("echo ok > /www/ready", "true")
        .replace("healthy_deadline: 20s", "healthy_deadline: 5m");
    let cancel = pipeline(&cluster, "cancel", &slow);
    let out = cluster.kiln(&["run", &cancel]);
    assert!(out.status.success());
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    cluster.wait_for("the rollout to start", Duration::from_secs(60), |c| {
        history(c, "web", Some("staging"))["revision"] == 3
    });
    let out = cluster.kiln(&["cancel", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = cluster.run_status(&id);
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(stage(&r, "staging")["status"], "cancelled", "{r}");
    cluster.wait_for("revision 1 back again", Duration::from_secs(30), |c| {
        let s = history(c, "web", Some("staging"));
        s["revision"] == 1 && s["rollout"] == "none" && s["serving"] == 2
    });
    let s = history(&cluster, "web", Some("staging"));
    assert!(
        s["revisions"][2]["bad"]
            .as_str()
            .is_some_and(|b| b.contains("cancelled")),
        "{s}"
    );
}
