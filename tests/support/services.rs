//! Services in the end-to-end tests: a container service any Docker host can run (busybox's
//! httpd answering a CGI "model" with its version), and waiting for a service to settle.

use std::time::Duration;

use serde_json::Value;

use crate::Cluster;
use crate::http::Answer;

/// A service `name` of two busybox containers whose `POST /cgi-bin/predict` answers
/// `{"model_version": VERSION}`, healthy on `GET /ready`.
pub fn busybox_service(name: &str, version: &str) -> String {
    let image = crate::docker::base_image();
    format!(
        r#"name: {name}
image: {image}
port: 8080
command: |
  mkdir -p /www/cgi-bin
  echo '{{"model_version":"{version}"}}' > /www/answer
  printf '#!/bin/sh\necho Content-Type: application/json\necho\ncat /www/answer\n' > /www/cgi-bin/predict
  chmod +x /www/cgi-bin/predict
  echo ok > /www/ready
  exec httpd -f -p 8080 -h /www
replicas: 2
resources: {{ cpu: 100m, memory: 64Mi }}
health:
  http: /ready
  interval: 100ms
update:
  max_surge: 1
  max_unavailable: 0
  min_healthy_time: 300ms
  healthy_deadline: 20s
"#
    )
}

/// Writes `yaml` into the cluster's directory as `name` and `kiln deploy`s it; panics with
/// the CLI's words if it is refused.
pub fn deploy(cluster: &Cluster, name: &str, yaml: &str) {
    let file = cluster.write(name, yaml);
    deploy_file(cluster, &file);
}

/// `kiln deploy FILE`, which must succeed.
pub fn deploy_file(cluster: &Cluster, file: &str) {
    let out = cluster.kiln(&["deploy", file]);
    assert!(
        out.status.success(),
        "kiln deploy {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kiln history SERVICE [--env ENV] --json`.
pub fn history(cluster: &Cluster, service: &str, env: Option<&str>) -> Value {
    let mut args = vec!["history", service];
    if let Some(env) = env {
        args.extend(["--env", env]);
    }
    cluster.kiln_json(&args)
}

/// Waits until the service has no rollout going, runs `revision`, and has every replica
/// serving and nothing else left.
pub fn wait_settled(
    cluster: &mut Cluster,
    service: &str,
    env: Option<&str>,
    revision: u64,
    what: &str,
) {
    cluster.wait_for(what, Duration::from_secs(60), |c| {
        let s = history(c, service, env);
        let replicas = s["replicas"].as_array().cloned().unwrap_or_default();
        s["rollout"] == "none"
            && s["revision"] == revision
            && s["serving"] == s["desired"]
            && replicas.len() as u64 == s["desired"].as_u64().unwrap_or(0)
            && replicas.iter().all(|r| r["revision"] == revision)
    });
}

/// The answer's `model_version` (a gateway may stream an answer in chunks).
pub fn version(a: &Answer) -> String {
    let json = match (a.body.find('{'), a.body.rfind('}')) {
        (Some(i), Some(j)) if i < j => &a.body[i..=j],
        _ => "",
    };
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| v["model_version"].as_str().map(String::from))
        .unwrap_or_default()
}

/// Every answer sent after `since` came from `want`.
pub fn assert_all_after(answers: &[Answer], since: std::time::Instant, want: &str) {
    let stray: Vec<String> = answers
        .iter()
        .filter(|a| a.at > since)
        .map(version)
        .filter(|v| v != want)
        .collect();
    assert!(
        stray.is_empty(),
        "answers after the switch not from {want}: {stray:?}"
    );
}

/// No request failed, and there was load enough to tell.
pub fn assert_no_failures(answers: &[Answer]) {
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    assert!(answers.len() > 50, "too little load: {}", answers.len());
}
