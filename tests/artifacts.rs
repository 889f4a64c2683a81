//! Artifacts a stage publishes: a training stage writes a model directory and publishes it
//! (`artifacts: [out/model]`); the coordinators keep it by digest on a majority; a deploy
//! stage later in the run deploys a service with that model
//! (`model: ${{ stages.train.artifacts.model }}`), and the model server answers from it
//! through the gateway; another later stage takes it as an input (`VAR: ${{ ... }}`). A
//! stage whose artifact is missing fails, saying which.

use std::time::Duration;

use kiln_e2e::http::request;
use kiln_e2e::services::{history, version};
use kiln_e2e::{Cluster, Options, bin, stage};

#[test]
fn a_stage_publishes_a_model_that_a_later_deploy_stage_serves() {
    let mut cluster = Cluster::start(Options {
        coordinators: 3,
        agents: 1,
        heartbeat_ms: 200,
        ..Default::default()
    });
    let gateway = cluster.start_gateway();
    let weights = format!(
        "{}/examples/model-server/model/weights-v2.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let dir = cluster.dir.path().join("p");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("service.yaml"),
        format!(
            "name: model
command: ADDR=127.0.0.1:$PORT MODEL_WEIGHTS=$KILN_MODEL_DIR/weights.json exec {}
replicas: 1
health: {{ http: /ready, interval: 100ms }}
",
            bin("model-server").display()
        ),
    )
    .unwrap();
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: train-and-ship
stages:
  - name: train
    command: mkdir -p out/model && cp {weights} out/model/weights.json
    artifacts: [out/model]
  - name: ship
    needs: [train]
    deploy:
      service: service.yaml
      model: ${{{{ stages.train.artifacts.model }}}}
  - name: check
    needs: [train]
    env: {{ WEIGHTS: \"${{{{ stages.train.artifacts.model }}}}\" }}
    command: >-
      grep -q '\"version\": \"v2\"' \"$WEIGHTS/weights.json\"
  - name: lost
    command: \"true\"
    artifacts: [out/missing]
"
        ),
    )
    .unwrap();
    let out = cluster.kiln(&["run", pipeline.to_str().unwrap(), "--follow", "--json"]);
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    let train = stage(&run, "train");
    let digest = train["attempts"][0]["artifacts"]["model"]
        .as_str()
        .unwrap_or_else(|| panic!("train published its model: {train}"))
        .to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(stage(&run, "ship")["status"], "succeeded", "{run}");
    assert_eq!(
        stage(&run, "check")["status"],
        "succeeded",
        "a later stage takes it: {run}"
    );
    let lost = stage(&run, "lost");
    assert_eq!(lost["status"], "failed");
    assert_eq!(
        lost["attempts"][0]["message"],
        "artifacts: out/missing: not found in the work directory"
    );

    let s = history(&cluster, "model", None);
    assert_eq!(s["revisions"][0]["model_digest"], digest.as_str());
    assert_eq!(s["revisions"][0]["run"], run["id"]);
    cluster.wait_for("the model server to serve", Duration::from_secs(20), |_| {
        let a = request(
            &gateway,
            "POST",
            "/model/predict",
            r#"{"features":[3,10,2]}"#,
        );
        a.status == 200 && version(&a) == "v2"
    });
}
