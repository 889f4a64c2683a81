//! A model server kiln did not write: Seldon MLServer with its scikit-learn runtime, from
//! PyPI (installed by `tests/support/mlserver/setup.sh` into a venv kept under target/, with
//! a small model it trains), run as a process service through a real gateway: healthy on
//! its own endpoint (`/v2/health/ready`), answering the V2 inference protocol, and scaled
//! by the autoscaler on its own Prometheus gauge, served on a metrics port of its own.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kiln_e2e::http::{Load, request};
use kiln_e2e::services::{history, wait_settled};
use kiln_e2e::{Cluster, Options};

const INFER: &str = r#"{"inputs":[{"name":"predict","shape":[2,4],"datatype":"FP64","data":[5.0,3.4,1.5,0.2,6.5,3.0,5.5,2.0]}]}"#;

/// The venv and the model, made once and kept between runs (the install takes a minute).
fn mlserver() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cache = root.join("target/kiln-e2e-cache/mlserver");
    let (venv, model) = (cache.join("venv"), cache.join("model"));
    let out = Command::new("bash")
        .arg(root.join("tests/support/mlserver/setup.sh"))
        .args([&venv, &model])
        .output()
        .expect("running setup.sh");
    assert!(
        out.status.success(),
        "installing MLServer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (venv, model)
}

#[test]
fn mlserver_serves_through_the_gateway_and_scales_on_its_own_metric() {
    let (venv, model) = mlserver();
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        agent_cpu: "8".into(),
        heartbeat_ms: 200,
        ..Default::default()
    });
    let gateway = cluster.start_gateway();
    let file = cluster.write(
        "iris.yaml",
        &format!(
            r#"name: iris
command: |
  GRPC=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export MLSERVER_HOST=127.0.0.1 MLSERVER_HTTP_PORT=$PORT MLSERVER_GRPC_PORT=$GRPC
  export MLSERVER_METRICS_PORT=$METRICS_PORT MLSERVER_PARALLEL_WORKERS=0
  exec {venv}/bin/mlserver start {model}
resources: {{ cpu: 500m, memory: 512Mi }}
health: {{ http: /v2/health/ready, interval: 200ms, startup: 90s }}
autoscale:
  min: 1
  max: 3
  metric: prometheus:rest_server_requests_in_progress
  target: 0.5
  window: 30s
  metrics: {{ port: $METRICS_PORT, path: /metrics }}
"#,
            venv = venv.display(),
            model = model.display()
        ),
    );
    let out = cluster.kiln(&["deploy", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_settled(
        &mut cluster,
        "iris",
        None,
        1,
        "MLServer healthy on its own endpoint",
    );

    // The V2 inference protocol, through the gateway.
    let answer = request(&gateway, "POST", "/iris/v2/models/iris-like/infer", INFER);
    assert_eq!(answer.status, 200, "{answer:?}");
    let v: serde_json::Value = serde_json::from_str(answer.body.trim()).unwrap_or_else(|e| {
        panic!("{e}: {}", answer.body);
    });
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([0, 2]), "{v}");

    // Its in-flight gauge, scraped from its metrics port, scales it up under load.
    let load = Load::start(&gateway, "/iris/v2/models/iris-like/infer", INFER, 8);
    cluster.wait_for(
        "a scale-up on MLServer's gauge",
        Duration::from_secs(60),
        |c| history(c, "iris", None)["desired"].as_u64().unwrap_or(0) >= 2,
    );
    let answers = load.stop();
    let failed = answers.iter().filter(|a| a.status != 200).count();
    assert_eq!(failed, 0, "{failed} of {} requests failed", answers.len());
    let s = history(&cluster, "iris", None);
    assert_eq!(
        s["autoscale"]["metric"],
        "prometheus:rest_server_requests_in_progress"
    );
    assert!(
        s["events"].as_array().unwrap().iter().any(|e| e["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("scaled 1 →"))),
        "{s}"
    );
}
