//! Container services on a real Docker daemon: a service whose replicas are containers of
//! an image (busybox's httpd answering a CGI "model"), its port published on the node,
//! served through a real gateway under constant load, rolled to a new revision, and kept
//! running across a restart of its agent.

use std::time::{Duration, Instant};

use kiln_e2e::docker::{self, containers_with, docker_or_skip, inspect};
use kiln_e2e::http::{Load, request};
use kiln_e2e::services::{
    self, assert_all_after, assert_no_failures, busybox_service, deploy, version,
};
use kiln_e2e::{Cluster, Options};
use serde_json::Value;

fn history(cluster: &Cluster) -> Value {
    services::history(cluster, "web", None)
}

fn wait_settled(cluster: &mut Cluster, revision: u64, what: &str) {
    services::wait_settled(cluster, "web", None, revision, what);
}

fn service(version: &str) -> String {
    busybox_service("web", version)
}

/// The ids of the service's replica containers.
fn replica_containers() -> Vec<String> {
    let mut ids: Vec<String> = (0..16)
        .flat_map(|slot| containers_with("kiln.task", &format!("svc/web/{slot}")))
        .collect();
    ids.sort();
    ids
}

#[test]
fn an_image_service_serves_through_the_gateway_rolls_without_a_failed_request_and_survives_its_agent()
 {
    if !docker_or_skip("an_image_service_serves_through_the_gateway") {
        return;
    }
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        heartbeat_ms: 200,
        ..Default::default()
    });
    let gateway = cluster.start_gateway();
    deploy(&cluster, "v1.yaml", &service("v1"));
    wait_settled(&mut cluster, 1, "revision 1 to serve");

    // Published on the node, labelled with its task, pinned to what the revision records.
    let ids = replica_containers();
    assert_eq!(ids.len(), 2, "one container per replica");
    let s = history(&cluster);
    let recorded = s["revisions"][0]["image_digest"]
        .as_str()
        .expect("the revision records its image")
        .to_string();
    for id in &ids {
        let c = inspect(id);
        assert_eq!(c["Image"], recorded, "runs the recorded image");
        let binding = &c["HostConfig"]["PortBindings"]["8080/tcp"][0];
        assert_eq!(binding["HostIp"], "127.0.0.1", "{binding}");
        let endpoint = format!("127.0.0.1:{}", binding["HostPort"].as_str().unwrap());
        assert!(
            s["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["endpoint"] == endpoint.as_str()),
            "the leader routes to the published port {endpoint}: {s}"
        );
    }
    let direct = request(&gateway, "POST", "/web/cgi-bin/predict", "{}");
    assert_eq!(
        (direct.status, version(&direct)),
        (200, "v1".into()),
        "{direct:?}"
    );

    // A rolling update under load: no failed request, and only v2 once it is done.
    let load = Load::start(&gateway, "/web/cgi-bin/predict", "{}", 4);
    deploy(&cluster, "v2.yaml", &service("v2"));
    wait_settled(&mut cluster, 2, "revision 2 to replace revision 1");
    let done = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let answers = load.stop();
    assert_no_failures(&answers);
    assert_all_after(&answers, done, "v2");
    let old: Vec<String> = ids
        .iter()
        .filter(|id| replica_containers().contains(id))
        .cloned()
        .collect();
    assert!(
        old.is_empty(),
        "revision 1's containers were removed: {old:?}"
    );

    // The agent dies and comes back: its replica containers are adopted, not restarted.
    let before = replica_containers();
    let attempts = |c: &Cluster| -> Vec<Value> {
        history(c)["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["attempt"].clone())
            .collect()
    };
    let attempts_before = attempts(&cluster);
    let instance = docker::agent_instance(&cluster.agent_dir("agent-1")).expect("instance");
    cluster.agents[0].kill();
    cluster.agents[0].start();
    cluster.wait_for("the agent to be back", Duration::from_secs(30), |c| {
        c.ready_nodes().contains(&"agent-1".to_string())
    });
    let load = Load::start(&gateway, "/web/cgi-bin/predict", "{}", 2);
    std::thread::sleep(Duration::from_millis(1500));
    let answers = load.stop();
    assert!(
        answers
            .iter()
            .all(|a| a.status == 200 && version(a) == "v2")
    );
    assert_eq!(replica_containers(), before, "the same containers serve");
    assert_eq!(attempts(&cluster), attempts_before, "no replica restarted");
    assert_eq!(
        containers_with("kiln.agent", &instance).len(),
        2,
        "nothing else of this agent's is left"
    );
}

#[test]
fn an_image_that_is_not_in_its_registry_is_refused_and_nothing_changes() {
    if !docker_or_skip("an_image_that_is_not_in_its_registry_is_refused") {
        return;
    }
    let registry = docker::Registry::start();
    let cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        ..Default::default()
    });
    let image = format!("{}/e2e/nothing-here:v9", registry.addr);
    let file = cluster.write(
        "ghost.yaml",
        &format!("name: ghost\nimage: {image}\nport: 8080\nreplicas: 1\n"),
    );
    let out = cluster.kiln(&["deploy", &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ghost.yaml: image:") && err.contains("is not in the registry"),
        "{err}"
    );
    let services = cluster.kiln_json(&["services"]);
    assert_eq!(services, serde_json::json!([]), "nothing deployed");
}
