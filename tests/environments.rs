//! Environments on a real cluster with real containers and a real gateway: a service goes
//! to staging, is promoted to production (which requires approval), serves the same image
//! there, is promoted again under load and rolled back under load to its last known good
//! revision with no failed request; the revision rolled back from cannot come back without
//! --force; bad input is refused and changes nothing.

use std::time::{Duration, Instant};

use kiln_e2e::docker::{containers_with, docker_or_skip, inspect};
use kiln_e2e::http::{Answer, Load, request_to_host};
use kiln_e2e::services::{
    assert_all_after, assert_no_failures, busybox_service, history, version, wait_settled,
};
use kiln_e2e::{Cluster, Options};
use serde_json::Value;

fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.kiln(args);
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kiln approve` by `client/release-manager`, not the `client/admin` who promoted.
fn approve_as_release_manager(cluster: &Cluster, service: &str, env: &str) {
    let (ca, cert, key) = cluster.tls("client", "release-manager");
    let out = cluster.kiln_with(
        &["approve", service, "--env", env],
        &[
            ("KILN_CA", ca.display().to_string()),
            ("KILN_CERT", cert.display().to_string()),
            ("KILN_KEY", key.display().to_string()),
        ],
    );
    assert!(
        out.status.success(),
        "kiln approve as release-manager: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a kiln command that must fail with `code`, saying `words`; returns its stderr.
fn refused(cluster: &Cluster, args: &[&str], code: i32, words: &str) -> String {
    let out = cluster.kiln(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "kiln {args:?}: {err}");
    assert!(err.contains(words), "kiln {args:?} says why: {err}");
    err
}

fn environments(cluster: &Cluster) -> Value {
    cluster.kiln_json(&["env"])
}

fn awaiting(cluster: &Cluster, env: &str) -> Vec<Value> {
    environments(cluster)
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == env)
        .and_then(|e| e["awaiting"].as_array().cloned())
        .unwrap_or_default()
}

fn answers_from(gateway: &str, path: &str, host: Option<&str>) -> Answer {
    request_to_host(gateway, host.unwrap_or(gateway), "POST", path, "{}")
}

#[test]
fn a_service_moves_from_staging_to_production_and_back_without_a_failed_request() {
    if !docker_or_skip("a_service_moves_from_staging_to_production") {
        return;
    }
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        agent_cpu: "8".into(),
        heartbeat_ms: 200,
        ..Default::default()
    });
    let gateway = cluster.start_gateway();
    ok(
        &cluster,
        &["env", "create", "staging", "--env", "TIER=staging"],
    );
    ok(
        &cluster,
        &[
            "env",
            "create",
            "production",
            "--approval",
            "required",
            "--default",
            "--env",
            "TIER=production",
        ],
    );
    let v1 = cluster.write("v1.yaml", &busybox_service("web", "v1"));
    let v2 = cluster.write("v2.yaml", &busybox_service("web", "v2"));

    // Staging first.
    ok(&cluster, &["deploy", &v1, "--env", "staging"]);
    wait_settled(&mut cluster, "web", Some("staging"), 1, "v1 in staging");

    // Promotion into production waits for its approval, and changes nothing before.
    let said = ok(
        &cluster,
        &["promote", "web", "--from", "staging", "--to", "production"],
    );
    assert!(said.contains("awaiting approval"), "{said}");
    let held = awaiting(&cluster, "production");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["promoted_from"], "staging revision 1");
    refused(
        &cluster,
        &["history", "web", "--env", "production"],
        4,
        "not found in production",
    );
    // Whoever asked for it may not approve it: another principal does.
    refused(
        &cluster,
        &["approve", "web", "--env", "production"],
        6,
        "another principal must approve it",
    );
    approve_as_release_manager(&cluster, "web", "production");
    wait_settled(
        &mut cluster,
        "web",
        Some("production"),
        1,
        "v1 in production",
    );

    // The same image, by digest, in production as in staging.
    let staging = history(&cluster, "web", Some("staging"));
    let production = history(&cluster, "web", Some("production"));
    let digest = staging["revisions"][0]["image_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!digest.is_empty());
    assert_eq!(production["revisions"][0]["image_digest"], digest.as_str());
    assert_eq!(
        production["revisions"][0]["promoted_from"],
        "staging revision 1"
    );
    for slot in production["replicas"].as_array().unwrap() {
        let task = format!("svc/production/web/{}", slot["slot"]);
        for id in containers_with("kiln.task", &task) {
            let c = inspect(&id);
            assert_eq!(c["Image"], digest.as_str(), "{task} runs it");
            // The same revision, with production's own overrides.
            let env: Vec<&str> = c["Config"]["Env"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            assert!(env.contains(&"TIER=production"), "{env:?}");
            assert!(env.contains(&"KILN_ENVIRONMENT=production"), "{env:?}");
        }
    }

    // Routes: production is the default environment; staging by its name.
    let bare = answers_from(&gateway, "/web/cgi-bin/predict", None);
    assert_eq!(
        (bare.status, version(&bare)),
        (200, "v1".into()),
        "{bare:?}"
    );
    let by_path = answers_from(&gateway, "/staging/web/cgi-bin/predict", None);
    assert_eq!(version(&by_path), "v1", "{by_path:?}");
    let by_host = answers_from(&gateway, "/cgi-bin/predict", Some("web.staging"));
    assert_eq!(version(&by_host), "v1", "{by_host:?}");

    // v2 through staging into production, under load on production.
    ok(&cluster, &["deploy", &v2, "--env", "staging"]);
    wait_settled(&mut cluster, "web", Some("staging"), 2, "v2 in staging");
    let load = Load::start(&gateway, "/production/web/cgi-bin/predict", "{}", 4);
    let promoted = Instant::now();
    ok(
        &cluster,
        &["promote", "web", "--from", "staging", "--to", "production"],
    );
    approve_as_release_manager(&cluster, "web", "production");
    wait_settled(
        &mut cluster,
        "web",
        Some("production"),
        2,
        "v2 in production",
    );
    let done = Instant::now();
    eprintln!("promote + approve → all on v2: {:?}", done - promoted);
    std::thread::sleep(Duration::from_millis(300));
    let answers = load.stop();
    assert_no_failures(&answers);
    assert_all_after(&answers, done, "v2");

    // Back to the last known good revision, under load.
    let load = Load::start(&gateway, "/production/web/cgi-bin/predict", "{}", 4);
    std::thread::sleep(Duration::from_millis(300));
    ok(
        &cluster,
        &[
            "rollback",
            "web",
            "--env",
            "production",
            "--reason",
            "answers drifted",
        ],
    );
    wait_settled(
        &mut cluster,
        "web",
        Some("production"),
        1,
        "v1 back in production",
    );
    let done = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let answers = load.stop();
    assert_no_failures(&answers);
    assert_all_after(&answers, done, "v1");
    let production = history(&cluster, "web", Some("production"));
    assert_eq!(production["revisions"][1]["bad"], "answers drifted");
    assert_eq!(
        production["revisions"].as_array().unwrap().len(),
        2,
        "a rollback makes no revision"
    );

    // What was rolled back from stays out unless forced; staging still runs it.
    refused(
        &cluster,
        &["promote", "web", "--from", "staging", "--to", "production"],
        5,
        "was rolled back (answers drifted)",
    );
    assert!(awaiting(&cluster, "production").is_empty(), "nothing held");
    let said = ok(
        &cluster,
        &[
            "promote",
            "web",
            "--from",
            "staging",
            "--to",
            "production",
            "--force",
        ],
    );
    assert!(said.contains("awaiting approval"), "{said}");
}

#[test]
fn bad_environment_input_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        ..Default::default()
    });
    ok(&cluster, &["env", "create", "staging"]);
    let mut before = environments(&cluster);
    let file = cluster.write(
        "svc.yaml",
        "name: m\ncommand: sleep 1000\nreplicas: 1\nhealth: { exec: \"true\" }\n",
    );
    refused(
        &cluster,
        &["deploy", &file, "--env", "nope"],
        4,
        "environment \"nope\" does not exist",
    );
    refused(
        &cluster,
        &["promote", "m", "--from", "staging", "--to", "default"],
        4,
        "service m not found in staging",
    );
    refused(
        &cluster,
        &["promote", "m", "--from", "staging", "--to", "nope"],
        4,
        "environment \"nope\" does not exist",
    );
    refused(
        &cluster,
        &["approve", "m", "--env", "staging"],
        5,
        "nothing awaits approval",
    );
    refused(&cluster, &["env", "create", "staging"], 5, "exists already");
    refused(&cluster, &["env", "create", "a.b"], 2, "may not hold '.'");
    refused(
        &cluster,
        &["env", "create", "qa", "--env", "1BAD=x"],
        2,
        "env: \"1BAD\" is not a valid environment variable name",
    );
    refused(
        &cluster,
        &["env", "create", "qa", "--env", "NOEQUALS"],
        2,
        "write KEY=VALUE",
    );
    refused(&cluster, &["promote", "m", "--to", "staging"], 2, "--from");
    assert_eq!(environments(&cluster), before, "nothing changed");

    // A service that is not healthy in staging has nothing to promote.
    let broken = cluster.write(
        "broken.yaml",
        "name: m\ncommand: exit 1\nreplicas: 1\nhealth: { exec: \"true\" }\n",
    );
    ok(&cluster, &["deploy", &broken, "--env", "staging"]);
    before = environments(&cluster);
    refused(
        &cluster,
        &["promote", "m", "--from", "staging", "--to", "default"],
        5,
        "is not healthy in staging",
    );
    assert_eq!(environments(&cluster), before, "nothing changed");
}
