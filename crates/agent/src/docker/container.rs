//! One task's container: create it from the assignment, start it, stream its output into the
//! task's log, wait for it, stop it on cancel (SIGTERM, SIGKILL after [`super::STOP_GRACE`])
//! or kill it on timeout, report its exit code or its OOM kill, and remove it.
//!
//! [`config`] is a pure function of the assignment, so what a container is given (limits,
//! env, mounts, GPUs, labels) can be checked by inspecting a created container.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, KillContainerOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use kiln_api::pb;
use prost::Message;
use tokio::sync::oneshot;

use super::{
    DockerDriver, LABEL_AGENT, LABEL_ATTEMPT, LABEL_DEADLINE, LABEL_ENDPOINT, LABEL_REPLICA,
    LABEL_SECRETS, LABEL_TASK, Log, STOP_GRACE, message,
};
use crate::process::Outcome;

/// Where the task's work directory appears inside the container.
pub const WORK_MOUNT: &str = "/kiln/work";
/// Where a replica's model artifact appears inside the container, read-only.
pub const MODEL_MOUNT: &str = "/kiln/model";
/// The CFS period the CPU quota is a share of (Docker's default).
const CPU_PERIOD_US: i64 = 100_000;

/// Where a service replica's container port is published on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub container_port: u16,
    /// The node address it is bound to (the agent's advertised address, or every address
    /// when that is a name).
    pub host_ip: String,
    pub host_port: u16,
    /// `host:port`, as the gateways reach it.
    pub endpoint: String,
    /// A second port, for metrics: (container port, node port).
    pub metrics: Option<(u16, u16)>,
}

/// The container an assignment asks for. `deadline_ms` goes into a label so that an agent
/// that adopts the container after a restart still enforces the timeout; a replica's
/// endpoint and spec likewise, so its health is checked again.
pub fn config(
    d: &DockerDriver,
    a: &pb::Assignment,
    work: &Path,
    deadline_ms: i64,
    publish: Option<&Publish>,
) -> ContainerCreateBody {
    let (entrypoint, cmd, working_dir) = if !a.shell.is_empty() {
        let sh = vec!["/bin/sh".to_string(), "-c".to_string()];
        (
            Some(sh),
            Some(vec![a.shell.clone()]),
            Some(WORK_MOUNT.into()),
        )
    } else if !a.argv.is_empty() {
        // The stage's command replaces the image's entrypoint and command (as Kubernetes'
        // `command` does): what the stage says is exactly what runs.
        (
            Some(a.argv.clone()),
            Some(Vec::new()),
            Some(WORK_MOUNT.into()),
        )
    } else {
        (None, None, None)
    };
    // A model the agent fetched (a host path in KILN_MODEL_DIR) is mounted read-only.
    let model = a.env.get("KILN_MODEL_DIR");
    let mut env: Vec<String> = a
        .env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "KILN_MODEL_DIR" => format!("{k}={MODEL_MOUNT}"),
            _ => format!("{k}={v}"),
        })
        .collect();
    let mut binds = vec![format!("{}:{WORK_MOUNT}", work.display())];
    binds.extend(model.map(|m| format!("{m}:{MODEL_MOUNT}:ro")));
    env.push(format!("KILN_WORK_DIR={WORK_MOUNT}"));
    env.extend(a.secrets.iter().map(|(k, v)| format!("{k}={v}")));
    let device_requests = if a.gpu_indices.is_empty() {
        // Images built on NVIDIA's bases default to every GPU: a task without GPUs sees none.
        env.push("NVIDIA_VISIBLE_DEVICES=void".into());
        None
    } else {
        let ids: Vec<String> = a.gpu_indices.iter().map(u32::to_string).collect();
        env.push(format!("NVIDIA_VISIBLE_DEVICES={}", ids.join(",")));
        Some(vec![DeviceRequest {
            driver: Some("nvidia".into()),
            device_ids: Some(ids),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }])
    };
    env.sort();
    let mut labels = HashMap::from([
        (LABEL_AGENT.to_string(), d.instance.clone()),
        (LABEL_TASK.to_string(), a.task_id.clone()),
        (LABEL_ATTEMPT.to_string(), a.attempt.to_string()),
        (LABEL_DEADLINE.to_string(), deadline_ms.to_string()),
    ]);
    if !a.secrets.is_empty() {
        labels.insert(LABEL_SECRETS.to_string(), a.secrets.len().to_string());
    }
    if let Some(p) = publish {
        labels.insert(LABEL_ENDPOINT.to_string(), p.endpoint.clone());
    }
    if let Some(r) = &a.replica {
        labels.insert(LABEL_REPLICA.to_string(), encode_replica(r));
    }
    let ports: Vec<(u16, u16)> = publish
        .map(|p| {
            std::iter::once((p.container_port, p.host_port))
                .chain(p.metrics)
                .collect()
        })
        .unwrap_or_default();
    let port_bindings = publish.map(|p| {
        ports
            .iter()
            .map(|(inside, outside)| {
                let binding = PortBinding {
                    host_ip: Some(p.host_ip.clone()),
                    host_port: Some(outside.to_string()),
                };
                (format!("{inside}/tcp"), Some(vec![binding]))
            })
            .collect::<HashMap<_, _>>()
    });
    let exposed: Vec<String> = ports
        .iter()
        .map(|(inside, _)| format!("{inside}/tcp"))
        .collect();
    let memory = (a.memory_bytes > 0).then_some(a.memory_bytes as i64);
    ContainerCreateBody {
        image: Some(a.image.clone()),
        entrypoint,
        cmd,
        working_dir,
        env: Some(env),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            port_bindings,
            memory,
            // No swap beyond the limit, so the limit is the limit.
            memory_swap: memory,
            cpu_period: (a.cpu_millis > 0).then_some(CPU_PERIOD_US),
            cpu_quota: (a.cpu_millis > 0).then_some(a.cpu_millis as i64 * CPU_PERIOD_US / 1000),
            binds: Some(binds),
            device_requests,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container name that says whose it is: `kiln-<instance>-run-7-build-1`.
pub fn name(d: &DockerDriver, a: &pb::Assignment) -> String {
    let task: String = a
        .task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("kiln-{}-{task}-{}", d.instance, a.attempt)
}

/// Creates the task's container without starting it; returns its id.
pub async fn create(
    d: &DockerDriver,
    a: &pb::Assignment,
    work: &Path,
    deadline_ms: i64,
    publish: Option<&Publish>,
) -> Result<String, String> {
    let name = name(d, a);
    // A container left by an earlier try of this very attempt (the agent died between
    // create and start) is in the way: it never ran, so it goes.
    let _ = d
        .client
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    d.client
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            }),
            config(d, a, work, deadline_ms, publish),
        )
        .await
        .map(|r| r.id)
        .map_err(|e| format!("cannot create the container: {}", message(&e)))
}

/// Runs an `image:` task to its end: image, create, start, then [`supervise`]. `started` is
/// called once the container runs, with the image pinned by digest.
pub async fn run(
    d: &DockerDriver,
    a: &pb::Assignment,
    work: &Path,
    log_path: &Path,
    publish: Option<&Publish>,
    mut kill: oneshot::Receiver<String>,
    started: impl FnOnce(&str),
) -> Outcome {
    let mut log = match Log::create(log_path) {
        Ok(l) => l,
        Err(e) => return failed(None, e),
    };
    if a.image.is_empty() {
        return failed(
            None,
            "no image to run: the stage it names pushed none".into(),
        );
    }
    let ready = tokio::select! {
        r = d.ensure_image(&a.image, &mut log) => r,
        reason = &mut kill => return failed(None, reason.unwrap_or_else(|_| "killed".into())),
    };
    let pinned = match ready {
        Ok(pinned) => pinned,
        Err(e) => {
            log.line(&format!("kiln: {e}"));
            return failed(None, e);
        }
    };
    let deadline_ms = crate::now_ms().saturating_add(a.timeout_ms as i64);
    let id = match create(d, a, work, deadline_ms, publish).await {
        Ok(id) => id,
        Err(e) => return failed(None, e),
    };
    if let Err(e) = d.client.start_container(&id, None).await {
        remove(d, &id).await;
        return failed(None, format!("cannot start the container: {}", message(&e)));
    }
    started(&pinned);
    let logs = Logs::Follow(a.secrets.values().cloned().collect());
    supervise(d, &id, log_path, logs, Some(deadline_ms), kill).await
}

/// How a supervised container's output reaches the task's log.
pub enum Logs {
    /// Appended as it comes, with these secret values masked.
    Follow(Vec<String>),
    /// Written again from the container's first line (an adopted container).
    Rewrite,
    /// Not copied: an adopted container that holds secrets this agent cannot mask.
    Skip,
}

/// Waits for a started (or adopted) container to end, enforcing the deadline and honouring a
/// kill, with its output copied into the log as `logs` says; then reports and removes it.
pub async fn supervise(
    d: &DockerDriver,
    id: &str,
    log_path: &Path,
    logs: Logs,
    deadline_ms: Option<i64>,
    kill: oneshot::Receiver<String>,
) -> Outcome {
    let log = match &logs {
        Logs::Follow(secrets) => Log::append(log_path).redacting(secrets),
        Logs::Rewrite => Log::create(log_path).unwrap_or_else(|_| Log::append(log_path)),
        Logs::Skip => {
            let mut log = Log::append(log_path);
            log.line(
                "kiln: the agent restarted; the output of a task with secrets is not copied again",
            );
            log
        }
    };
    let pump = match logs {
        Logs::Skip => tokio::spawn(async {}),
        _ => tokio::spawn(pump_logs(d.client.clone(), id.to_string(), log)),
    };
    let oom = watch_oom(d, id);
    let left = deadline_ms
        .map(|ms| Duration::from_millis(ms.saturating_sub(crate::now_ms()).max(0) as u64));
    let mut stop_reason = None;
    tokio::select! {
        _ = wait(d, id) => {}
        _ = async { match left { Some(t) => tokio::time::sleep(t).await, None => std::future::pending().await } } => {
            stop_reason = Some("timed out".to_string());
            let _ = d.client.kill_container(id, Some(KillContainerOptions { signal: "SIGKILL".into() })).await;
            wait(d, id).await;
        }
        reason = kill => {
            stop_reason = Some(reason.unwrap_or_else(|_| "killed".into()));
            let _ = d.client.stop_container(id, Some(StopContainerOptions {
                t: Some(STOP_GRACE.as_secs() as i32),
                ..Default::default()
            })).await;
            wait(d, id).await;
        }
    }
    // The log stream ends with the container; do not wait on it forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
    let outcome = match (stop_reason, inspect_after_exit(d, id, &oom).await) {
        (Some(reason), _) => failed(None, reason),
        (None, Ok(info)) => {
            let state = info.state.unwrap_or_default();
            let code = state.exit_code.unwrap_or(-1) as i32;
            let limit = info.host_config.and_then(|h| h.memory).unwrap_or(0);
            if state.oom_killed == Some(true) {
                failed(
                    Some(code),
                    format!(
                        "out of memory: OOM-killed at its memory limit of {}",
                        bytes(limit)
                    ),
                )
            } else if code == 0 {
                Outcome {
                    succeeded: true,
                    exit_code: Some(0),
                    message: String::new(),
                }
            } else {
                failed(Some(code), format!("exited with code {code}"))
            }
        }
        (None, Err(e)) => failed(None, format!("container vanished: {}", message(&e))),
    };
    remove(d, id).await;
    outcome
}

/// The container as it ended. The daemon learns of an OOM kill from an event that can be
/// handled after the container's exit, and then `OOMKilled` is not set yet: a SIGKILLed
/// container under a memory limit counts as OOM-killed when the daemon's event stream has
/// an `oom` for it (`oom`, watched from before the exit), waited for up to a second.
async fn inspect_after_exit(
    d: &DockerDriver,
    id: &str,
    oom: &tokio::sync::watch::Receiver<bool>,
) -> Result<bollard::models::ContainerInspectResponse, bollard::errors::Error> {
    let mut info = d.client.inspect_container(id, None).await?;
    let state = info.state.clone().unwrap_or_default();
    let limited = info
        .host_config
        .as_ref()
        .and_then(|h| h.memory)
        .unwrap_or(0)
        > 0;
    if state.exit_code == Some(137) && state.oom_killed != Some(true) && limited {
        let mut oom = oom.clone();
        let seen = tokio::time::timeout(Duration::from_secs(1), oom.wait_for(|seen| *seen)).await;
        if matches!(seen, Ok(Ok(_)))
            && let Some(s) = info.state.as_mut()
        {
            s.oom_killed = Some(true);
        }
    }
    Ok(info)
}

/// Turns true once the daemon reports an `oom` event for the container (from a minute
/// before now on, so one that came before the watch started counts).
fn watch_oom(d: &DockerDriver, id: &str) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let since = (crate::now_ms() / 1000 - 60).to_string();
    let filters = HashMap::from([
        ("container".to_string(), vec![id.to_string()]),
        ("event".to_string(), vec!["oom".to_string()]),
    ]);
    let mut events = d.client.events(Some(EventsOptions {
        since: Some(since),
        until: None,
        filters: Some(filters),
    }));
    tokio::spawn(async move {
        tokio::select! {
            _ = tx.closed() => {}
            event = events.next() => {
                if matches!(event, Some(Ok(_))) {
                    let _ = tx.send(true);
                    tx.closed().await;
                }
            }
        }
    });
    rx
}

/// Waits until the container is not running. A wait that ends while the container still
/// runs (the daemon's connection broke) is waited again, a second later.
async fn wait(d: &DockerDriver, id: &str) {
    loop {
        let mut s = d.client.wait_container(id, None);
        let _ = s.next().await;
        match d.client.inspect_container(id, None).await {
            Ok(info) if info.state.as_ref().and_then(|s| s.running) == Some(true) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => return,
        }
    }
}

async fn pump_logs(client: bollard::Docker, id: String, mut log: Log) {
    let mut stream = client.logs(
        &id,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    );
    while let Some(Ok(chunk)) = stream.next().await {
        log.write(&chunk.into_bytes());
    }
    log.finish();
}

pub async fn remove(d: &DockerDriver, id: &str) {
    if let Err(e) = d
        .client
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
    {
        // Already gone (removed by whoever stopped the agent) is what was wanted.
        let gone = matches!(
            e,
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            }
        );
        if !gone {
            tracing::warn!(container = id, error = %message(&e), "container not removed");
        }
    }
}

/// A replica spec as a label value: its protobuf encoding, in hex.
fn encode_replica(r: &pb::ReplicaSpec) -> String {
    r.encode_to_vec()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The replica spec a label holds, if it holds one.
pub fn decode_replica(hex: &str) -> Option<pb::ReplicaSpec> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    pb::ReplicaSpec::decode(bytes?.as_slice()).ok()
}

fn failed(exit_code: Option<i32>, message: String) -> Outcome {
    Outcome {
        succeeded: false,
        exit_code,
        message,
    }
}

fn bytes(b: i64) -> String {
    if b >= 1 << 30 && b % (1 << 30) == 0 {
        format!("{}Gi", b >> 30)
    } else if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{}Mi", b >> 20)
    } else {
        format!("{b} bytes")
    }
}
