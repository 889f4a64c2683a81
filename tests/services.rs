//! Services on real clusters: the example model server (`examples/model-server`, a real
//! Axum binary) deployed as revisions, served through a real `kiln gateway` process under
//! constant load, rolled forward, reverted, rolled back, and re-placed when its node is
//! lost. Every request's answer is kept: a rollout passes only with zero failed requests.

use std::time::{Duration, Instant};

use kiln_e2e::http::{Answer, Load};
use kiln_e2e::services::{self, assert_no_failures, deploy, version};
use kiln_e2e::{Cluster, Options, bin};
use serde_json::Value;

const PREDICT: &str = r#"{"features":[3,10,2]}"#;

/// The model server as a service; `weights` picks the model version (`v1`, `v2`, or a
/// file that does not exist, which makes every replica exit at once).
fn service(weights: &str, extra: &str) -> String {
    let model = format!(
        "{}/examples/model-server/model/weights-{weights}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    format!(
        "name: model
command: ADDR=127.0.0.1:$PORT exec {bin}
env: {{ MODEL_WEIGHTS: {model} }}
replicas: 2
resources: {{ cpu: 100m, memory: 64Mi }}
health:
  http: /ready
  interval: 100ms
update:
  max_surge: 1
  max_unavailable: 0
  min_healthy_time: 300ms
  healthy_deadline: 4s
  auto_revert: true
{extra}",
        bin = bin("model-server").display()
    )
}

fn start() -> (Cluster, String) {
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        node_grace_ms: 1_500,
        heartbeat_ms: 200,
        ..Default::default()
    });
    let gateway = cluster.start_gateway();
    (cluster, gateway)
}

fn get(cluster: &Cluster) -> Value {
    cluster.kiln_json(&["history", "model"])
}

fn wait_settled(cluster: &mut Cluster, revision: u64, what: &str) {
    services::wait_settled(cluster, "model", None, revision, what);
}

#[test]
fn a_rolling_update_under_load_drops_no_request_and_ends_on_revision_2() {
    let (mut cluster, gateway) = start();
    deploy(&cluster, "v1.yaml", &service("v1", ""));
    wait_settled(&mut cluster, 1, "revision 1 to serve");
    let nodes: std::collections::BTreeSet<String> = get(&cluster)["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nodes.len(), 2, "replicas spread over both nodes");

    let load = Load::start(&gateway, "/model/predict", PREDICT, 4);
    deploy(&cluster, "v2.yaml", &service("v2", ""));
    wait_settled(&mut cluster, 2, "revision 2 to replace revision 1");
    let done = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let answers = load.stop();
    assert_no_failures(&answers);
    assert!(
        answers.iter().any(|a| version(a) == "v1"),
        "v1 served before"
    );
    let after: Vec<&Answer> = answers.iter().filter(|a| a.at > done).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|a| version(a) == "v2"),
        "only v2 once the rollout ended"
    );

    let s = get(&cluster);
    assert_eq!(s["stable"], 2);
    let revisions = s["revisions"].as_array().unwrap();
    assert!(
        revisions
            .iter()
            .all(|r| r["healthy_ms"].as_i64().unwrap() > 0)
    );
    // The diff between the revisions names what changed.
    let out = cluster.kiln(&["history", "model", "--diff", "1", "2"]);
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        diff.contains("-")
            && diff.contains("weights-v1")
            && diff.contains("+")
            && diff.contains("weights-v2"),
        "{diff}"
    );
}

#[test]
fn a_revision_that_fails_its_checks_is_reverted_without_a_failed_request() {
    let (mut cluster, gateway) = start();
    deploy(&cluster, "v1.yaml", &service("v1", ""));
    wait_settled(&mut cluster, 1, "revision 1 to serve");
    let load = Load::start(&gateway, "/model/predict", PREDICT, 4);
    deploy(&cluster, "broken.yaml", &service("missing", ""));
    cluster.wait_for("the revert", Duration::from_secs(40), |c| {
        let s = get(c);
        s["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["text"] == "reverted to revision 1"))
    });
    wait_settled(&mut cluster, 1, "revision 1 to serve alone again");
    let answers = load.stop();
    assert_no_failures(&answers);
    assert!(
        answers.iter().all(|a| version(a) == "v1"),
        "revision 2 never served"
    );
    let s = get(&cluster);
    let failed = s["revisions"][1]["failed"].as_str().unwrap();
    assert!(failed.contains("of 2 replicas healthy"), "{failed}");
    let out = cluster.kiln(&["history", "model"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("failed:"), "{text}");
}

#[test]
fn a_rollback_under_load_drops_no_request() {
    let (mut cluster, gateway) = start();
    deploy(&cluster, "v1.yaml", &service("v1", ""));
    wait_settled(&mut cluster, 1, "revision 1 to serve");
    deploy(&cluster, "v2.yaml", &service("v2", ""));
    wait_settled(&mut cluster, 2, "revision 2 to serve");

    let load = Load::start(&gateway, "/model/predict", PREDICT, 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = cluster.kiln(&["rollback", "model", "--to", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_settled(&mut cluster, 1, "revision 1 to be back");
    let done = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let answers = load.stop();
    assert_no_failures(&answers);
    let after: Vec<&Answer> = answers.iter().filter(|a| a.at > done).collect();
    assert!(
        after.iter().all(|a| version(a) == "v1"),
        "only v1 after the rollback"
    );
    // A rollback is no new revision: revision 1 is current again.
    let s = get(&cluster);
    assert_eq!(s["revisions"].as_array().unwrap().len(), 2);
    assert!(
        s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["text"] == "rolled back to revision 1")
    );
}

#[test]
fn replicas_on_a_lost_node_are_replaced_elsewhere() {
    let (mut cluster, gateway) = start();
    deploy(&cluster, "v1.yaml", &service("v1", ""));
    wait_settled(&mut cluster, 1, "revision 1 to serve");
    let s = get(&cluster);
    let victim = s["replicas"][0]["node"].as_str().unwrap().to_string();
    let index = cluster
        .agents
        .iter()
        .position(|a| a.name == victim)
        .unwrap();
    cluster.agents[index].kill();
    cluster.wait_for("the replica to be replaced", Duration::from_secs(40), |c| {
        let s = get(c);
        let replicas = s["replicas"].as_array().cloned().unwrap_or_default();
        s["serving"] == 2
            && replicas.len() == 2
            && replicas.iter().all(|r| r["node"] != victim.as_str())
    });
    // Traffic flows to the replacements.
    let a = kiln_e2e::http::request(&gateway, "POST", "/model/predict", PREDICT);
    assert_eq!(a.status, 200, "{a:?}");
}

#[test]
fn bad_service_input_is_refused_and_changes_nothing() {
    let (mut cluster, _gateway) = start();
    deploy(&cluster, "v1.yaml", &service("v1", ""));
    wait_settled(&mut cluster, 1, "revision 1 to serve");
    let rows = [
        (
            "replicas above max",
            service(
                "v2",
                "autoscale: { min: 1, max: 1, metric: rps, target: 50 }\n",
            ),
            "replicas: 2 is above autoscale.max (1)",
        ),
        (
            "unknown metric",
            service(
                "v2",
                "autoscale: { min: 1, max: 4, metric: latency, target: 50 }\n",
            )
            .replace("replicas: 2\n", ""),
            "autoscale.metric: \"latency\" is not one of concurrency, rps, cpu, gpu",
        ),
        (
            "health path without a slash",
            service("v2", "").replace("http: /ready", "http: ready"),
            "health.http: \"ready\" must start with '/'",
        ),
    ];
    for (what, yaml, want) in rows {
        let file = cluster.write("bad.yaml", &yaml);
        let out = cluster.kiln(&["deploy", &file]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains("bad.yaml:") && err.contains(want),
            "{what}: {err}"
        );
    }
    let out = cluster.kiln(&["rollback", "model", "--to", "9"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("model has no revision 9 (revisions 1 to 1)")
    );
    let out = cluster.kiln(&["rollback", "nosuch"]);
    assert_eq!(out.status.code(), Some(4));
    let out = cluster.kiln(&["scale", "model", "5000"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = get(&cluster);
    assert_eq!(
        s["revisions"].as_array().unwrap().len(),
        1,
        "no revision was made"
    );
    assert_eq!(
        (s["revision"].clone(), s["desired"].clone()),
        (1.into(), 2.into())
    );
}

#[test]
fn the_autoscaler_follows_load_scales_to_zero_and_wakes_on_a_request() {
    let (mut cluster, gateway) = start();
    let yaml = service(
        "v1",
        "autoscale: { min: 0, max: 4, metric: concurrency, target: 2, window: 3s }\n",
    )
    .replace("replicas: 2", "replicas: 1")
    .replace(
        "env: { MODEL_WEIGHTS:",
        "env: { INFERENCE_MS: \"40\", MODEL_WEIGHTS:",
    );
    deploy(&cluster, "auto.yaml", &yaml);
    wait_settled(&mut cluster, 1, "one replica to serve");

    // 8 clients, 40 ms a prediction: about 8 in flight, 2 per replica wanted.
    let load = Load::start(&gateway, "/model/predict", PREDICT, 8);
    let step = Instant::now();
    cluster.wait_for(
        "the autoscaler to add replicas",
        Duration::from_secs(20),
        |c| {
            let s = get(c);
            s["desired"].as_u64().unwrap_or(0) >= 3 && s["serving"].as_u64().unwrap_or(0) >= 3
        },
    );
    let reaction = step.elapsed();
    let answers = load.stop();
    assert!(
        !answers.is_empty() && answers.iter().all(|a| a.status == 200),
        "{:?}",
        answers.iter().find(|a| a.status != 200)
    );
    let s = get(&cluster);
    assert!(s["autoscale"]["value"].as_f64().is_some(), "{s}");
    assert!(reaction < Duration::from_secs(15), "{reaction:?}");

    // No load: after the 3 s window, down to zero.
    let quiet = Instant::now();
    cluster.wait_for(
        "the service to scale to zero",
        Duration::from_secs(30),
        |c| {
            let s = get(c);
            s["desired"] == 0 && s["replicas"].as_array().is_some_and(|r| r.is_empty())
        },
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(2_500),
        "not before the window"
    );

    // A request wakes it: the gateway holds it until a replica serves.
    let a = kiln_e2e::http::request(&gateway, "POST", "/model/predict", PREDICT);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(version(&a), "v1");
    let s = get(&cluster);
    assert!(s["desired"].as_u64().unwrap() >= 1);
    let out = cluster.kiln(&["services"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("concurrency"), "{text}");
}

#[test]
fn the_autoscaler_reads_a_gauge_from_the_replicas_own_metrics() {
    let (mut cluster, gateway) = start();
    // model_requests_in_flight: the model server's own gauge of requests being answered.
    let yaml = service(
        "v1",
        "autoscale: { min: 1, max: 3, metric: \"prometheus:model_requests_in_flight\", target: 2, window: 30s }\n",
    )
    .replace("replicas: 2", "replicas: 1")
    .replace("env: { MODEL_WEIGHTS:", "env: { INFERENCE_MS: \"40\", MODEL_WEIGHTS:");
    deploy(&cluster, "gauge.yaml", &yaml);
    wait_settled(&mut cluster, 1, "one replica to serve");
    let load = Load::start(&gateway, "/model/predict", PREDICT, 8);
    cluster.wait_for("the gauge to add replicas", Duration::from_secs(20), |c| {
        get(c)["desired"].as_u64().unwrap_or(0) >= 2
    });
    let answers = load.stop();
    assert!(answers.iter().all(|a| a.status == 200));
    let s = get(&cluster);
    assert_eq!(
        s["autoscale"]["metric"],
        "prometheus:model_requests_in_flight"
    );
    let events = s["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["text"].as_str().unwrap().contains("autoscaler")),
        "{events:?}"
    );
}

#[test]
fn a_canary_serves_beside_the_old_revision_until_promoted() {
    let (mut cluster, gateway) = start();
    deploy(&cluster, "v1.yaml", &service("v1", ""));
    wait_settled(&mut cluster, 1, "revision 1 to serve");
    let load = Load::start(&gateway, "/model/predict", PREDICT, 4);
    deploy(
        &cluster,
        "v2.yaml",
        &service("v2", "").replace("auto_revert: true", "auto_revert: true\n  canary: 1"),
    );
    cluster.wait_for("the canary to serve", Duration::from_secs(30), |c| {
        let s = get(c);
        let serving = |rev: u64| {
            s["replicas"].as_array().map_or(0, |r| {
                r.iter()
                    .filter(|r| {
                        r["revision"] == rev && r["healthy"] == true && r["draining"] == false
                    })
                    .count()
            })
        };
        s["rollout"] == "canary" && serving(1) == 2 && serving(2) == 1
    });
    // The canary waits for a person: nothing old stops meanwhile.
    std::thread::sleep(Duration::from_millis(600));
    let s = get(&cluster);
    assert_eq!(s["rollout"], "canary", "{s}");
    let out = cluster.kiln(&["promote", "model"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_settled(&mut cluster, 2, "revision 2 to replace revision 1");
    let answers = load.stop();
    assert_no_failures(&answers);
    let versions: std::collections::BTreeSet<String> = answers.iter().map(version).collect();
    assert!(
        versions.contains("v1") && versions.contains("v2"),
        "{versions:?}"
    );
    let out = cluster.kiln(&["promote", "model"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "nothing to promote is a conflict"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no canaries waiting"));
}
