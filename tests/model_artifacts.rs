//! Model artifacts through the blob store: `kiln deploy` packs a service's `model:`
//! directory, the coordinators keep it by digest, and each agent fetches it once and gives
//! it to the replicas read-only at $KILN_MODEL_DIR — a process replica (the example model
//! server, reading its weights there) and a container replica (a read-only mount). A new
//! model rolls out under load, and a rollback puts the old model's exact bytes back.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use kiln_e2e::docker::{base_image, docker_or_skip};
use kiln_e2e::http::{Load, request};
use kiln_e2e::services::{
    assert_all_after, assert_no_failures, deploy_file, history, version, wait_settled,
};
use kiln_e2e::{Cluster, Options, bin};

const PREDICT: &str = r#"{"features":[3,10,2]}"#;

fn weights(version: &str) -> String {
    let path = format!(
        "{}/examples/model-server/model/weights-{version}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path).expect("the example's weights")
}

/// The example model server, reading its weights from the model kiln gives it.
fn service(model: &str) -> String {
    format!(
        "name: model
command: ADDR=127.0.0.1:$PORT MODEL_WEIGHTS=$KILN_MODEL_DIR/weights.json exec {bin}
replicas: 2
resources: {{ cpu: 100m, memory: 64Mi }}
health: {{ http: /ready, interval: 100ms }}
update: {{ max_surge: 1, max_unavailable: 0, min_healthy_time: 300ms, healthy_deadline: 20s }}
model: {model}
",
        bin = bin("model-server").display()
    )
}

#[test]
fn a_model_goes_to_replicas_read_only_and_a_rollback_puts_its_bytes_back() {
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        heartbeat_ms: 200,
        ..Default::default()
    });
    let gateway = cluster.start_gateway();
    for (dir, v) in [("m1", "v1"), ("m2", "v2")] {
        let path = cluster.dir.path().join(dir);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("weights.json"), weights(v)).unwrap();
    }
    let v1 = cluster.write("v1.yaml", &service("m1"));
    let v2 = cluster.write("v2.yaml", &service("m2"));

    deploy_file(&cluster, &v1);
    wait_settled(&mut cluster, "model", None, 1, "revision 1");
    let s = history(&cluster, "model", None);
    let digest = s["revisions"][0]["model_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    // On each node that runs a replica: fetched once, unpacked, read-only.
    let node = s["replicas"][0]["node"].as_str().unwrap().to_string();
    let kept = cluster
        .agent_dir(&node)
        .join("models")
        .join(digest.trim_start_matches("sha256:"))
        .join("weights.json");
    let mode = std::fs::metadata(&kept)
        .expect("the model on the node")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444, "{}", kept.display());
    let answer = request(&gateway, "POST", "/model/predict", PREDICT);
    assert_eq!(version(&answer), "v1", "{answer:?}");

    // A new model under load, then back to the old one's bytes.
    let load = Load::start(&gateway, "/model/predict", PREDICT, 4);
    deploy_file(&cluster, &v2);
    wait_settled(&mut cluster, "model", None, 2, "revision 2");
    let on_v2 = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let out = cluster.kiln(&["rollback", "model"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_settled(&mut cluster, "model", None, 1, "revision 1 again");
    let back = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let answers = load.stop();
    assert_no_failures(&answers);
    let between: Vec<String> = answers
        .iter()
        .filter(|a| a.at > on_v2 && a.at < back)
        .map(version)
        .collect();
    assert!(between.iter().any(|v| v == "v2"), "the new model served");
    assert_all_after(&answers, back, "v1");
    let s = history(&cluster, "model", None);
    assert_ne!(s["revisions"][1]["model_digest"], digest.as_str());

    // A model that is not there is refused before anything changes.
    let missing = cluster.write("missing.yaml", &service("nope"));
    let out = cluster.kiln(&["deploy", &missing]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("missing.yaml: model:") && err.contains("nope"),
        "{err}"
    );
    assert_eq!(
        history(&cluster, "model", None)["revisions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_container_replica_reads_its_model_from_a_read_only_mount() {
    if !docker_or_skip("a_container_replica_reads_its_model_from_a_read_only_mount") {
        return;
    }
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        heartbeat_ms: 200,
        ..Default::default()
    });
    let gateway = cluster.start_gateway();
    let model = cluster.dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("answer"),
        "{\"model_version\":\"from-the-model\"}\n",
    )
    .unwrap();
    let image = base_image();
    // Healthy only when the model is there and cannot be written to.
    let file = cluster.write(
        "svc.yaml",
        &format!(
            r#"name: web
image: {image}
port: 8080
command: |
  if touch "$KILN_MODEL_DIR/x" 2>/dev/null; then echo "the model is writable"; exit 1; fi
  mkdir -p /www/cgi-bin
  printf '#!/bin/sh\necho Content-Type: application/json\necho\ncat /kiln/model/answer\n' > /www/cgi-bin/predict
  chmod +x /www/cgi-bin/predict
  echo ok > /www/ready
  exec httpd -f -p 8080 -h /www
replicas: 1
health: {{ http: /ready, interval: 100ms }}
model: model
"#
        ),
    );
    deploy_file(&cluster, &file);
    wait_settled(&mut cluster, "web", None, 1, "the container replica");
    let answer = request(&gateway, "POST", "/web/cgi-bin/predict", "{}");
    assert_eq!(version(&answer), "from-the-model", "{answer:?}");
}
