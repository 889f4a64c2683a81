//! The Docker driver: stages with `image:` run in a container, stages with `build:` build an
//! image and push it to the cluster registry. It talks to the local Docker Engine through
//! bollard.
//!
//! - [`container`]: one task's container, from image to removal: pull (or use the local
//!   image), create with the task's CPU quota, memory limit, env, work directory and GPUs,
//!   start, stream its output into the task's log, wait, stop with a grace period on cancel
//!   or kill at once on timeout, report the exit code or the OOM kill, remove.
//! - [`build`]: fetch the build context by digest from the coordinator, optionally run the
//!   stage's command in it first, build through the Engine's build API, tag
//!   `<registry>/<name>:<run>`, push, and report the pushed digest.
//!
//! # Ownership and restarts
//!
//! Every container carries labels: [`LABEL_AGENT`] (this agent's instance id, kept in its
//! data dir, so two agents on one Docker daemon never touch each other's containers),
//! [`LABEL_TASK`], [`LABEL_ATTEMPT`] and [`LABEL_DEADLINE`]. An agent that starts while
//! containers of its own still exist adopts them ([`DockerDriver::owned`]): it watches them
//! again and reports their result. The leader's reconcile then kills (and so removes) any
//! whose task no longer exists or runs elsewhere.
//!
//! # What it does not do
//!
//! No registry credentials (the cluster registry is trusted, as loopback registries are by
//! Docker's default), no BuildKit (the classic builder is what every Engine has), no
//! networks or ports beyond Docker's default bridge.

pub mod build;
pub mod container;

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{CreateImageOptions, ListContainersOptions};
use futures::StreamExt;

/// This agent's instance id (see the module notes).
pub const LABEL_AGENT: &str = "kiln.agent";
pub const LABEL_TASK: &str = "kiln.task";
pub const LABEL_ATTEMPT: &str = "kiln.attempt";
/// The task's deadline, in ms since the Unix epoch, so an adopted container still times out.
pub const LABEL_DEADLINE: &str = "kiln.deadline-ms";
/// A service replica's `host:port`, where its container port is published.
pub const LABEL_ENDPOINT: &str = "kiln.endpoint";
/// A service replica's `pb::ReplicaSpec` (protobuf, hex), so an adopted replica's health is
/// checked again.
pub const LABEL_REPLICA: &str = "kiln.replica";
/// On a container given secrets: an agent that adopts it cannot mask them (it never stores
/// the values), so it does not copy that container's output again.
pub const LABEL_SECRETS: &str = "kiln.secrets";

/// How long a stopped container gets between SIGTERM and SIGKILL, as for processes.
pub const STOP_GRACE: Duration = crate::process::STOP_GRACE;

/// A connected Docker Engine, for one agent.
#[derive(Clone)]
pub struct DockerDriver {
    pub client: Docker,
    /// The agent's instance id, put on every container it creates.
    pub instance: String,
    /// `host:port` of the cluster registry that builds push to.
    pub registry: Option<String>,
}

/// A container this agent created, found again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub id: String,
    pub task_id: String,
    pub attempt: u32,
    pub deadline_ms: Option<i64>,
    /// For a service replica: where it serves, and its spec.
    pub endpoint: Option<String>,
    pub replica: Option<kiln_api::pb::ReplicaSpec>,
    /// It was given secrets (`LABEL_SECRETS`).
    pub secrets: bool,
}

impl DockerDriver {
    /// Connects to the local Engine (`DOCKER_HOST` or the default socket) and checks that it
    /// answers. Fails at once when there is no daemon.
    pub async fn connect(instance: &str, registry: Option<String>) -> Result<DockerDriver, String> {
        let client = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
        // Speak the daemon's API version when it is older than bollard's default.
        let client = tokio::time::timeout(Duration::from_secs(5), client.negotiate_version())
            .await
            .map_err(|_| "the Docker daemon did not answer within 5s".to_string())?
            .map_err(|e| e.to_string())?;
        client.ping().await.map_err(|e| e.to_string())?;
        Ok(DockerDriver {
            client,
            instance: instance.to_string(),
            registry,
        })
    }

    /// Every container (running or not) that carries this agent's instance label.
    pub async fn owned(&self) -> Result<Vec<Owned>, String> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_AGENT}={}", self.instance)],
        )]);
        let list = self
            .client
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| message(&e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(Owned {
                    id: c.id?,
                    task_id: labels.get(LABEL_TASK).cloned().unwrap_or_default(),
                    attempt: labels
                        .get(LABEL_ATTEMPT)
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0),
                    deadline_ms: labels.get(LABEL_DEADLINE).and_then(|d| d.parse().ok()),
                    endpoint: labels.get(LABEL_ENDPOINT).cloned(),
                    replica: labels
                        .get(LABEL_REPLICA)
                        .and_then(|h| container::decode_replica(h)),
                    secrets: labels.contains_key(LABEL_SECRETS),
                })
            })
            .collect())
    }

    /// Makes `image` available locally: a local image is used as it is, anything else is
    /// pulled (from the cluster registry when the reference names it). Progress goes to
    /// `log`.
    /// Makes sure the image is here (pulling it if not) and answers it pinned: a reference by
    /// digest as the registry knows it, or for a local image its id (`sha256:…`).
    pub async fn ensure_image(&self, image: &str, log: &mut Log) -> Result<String, String> {
        if let Ok(info) = self.client.inspect_image(image).await {
            return Ok(pinned(image, &info));
        }
        log.line(&format!("kiln: pulling {image}"));
        let (name, tag) = split_reference(image);
        let mut pull = self.client.create_image(
            Some(CreateImageOptions {
                from_image: Some(name.to_string()),
                tag: Some(tag.to_string()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(item) = pull.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(format!("cannot pull image {image:?}: {e}"));
                    }
                }
                Err(e) => return Err(format!("cannot pull image {image:?}: {}", message(&e))),
            }
        }
        self.client
            .inspect_image(image)
            .await
            .map(|info| pinned(image, &info))
            .map_err(|e| format!("image {image:?} is missing after its pull: {}", message(&e)))
    }
}

/// `image` pinned by digest: as given when it names one; else the registry digest of its
/// repository, if the image came from (or went to) a registry; else its local id.
fn pinned(image: &str, info: &bollard::models::ImageInspect) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let (repo, _) = split_reference(image);
    let from_registry = info
        .repo_digests
        .iter()
        .flatten()
        .find(|d| d.split_once('@').is_some_and(|(r, _)| r == repo));
    match from_registry {
        Some(d) => d.clone(),
        None => info.id.clone().unwrap_or_else(|| image.to_string()),
    }
}

/// `repo:tag` → (`repo`, `tag`); `repo@sha256:…` → (`repo`, `sha256:…`); no tag → `latest`
/// (an empty tag would make the Engine pull every tag of the repository).
pub fn split_reference(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => (
            &image[..last_slash + colon],
            &image[last_slash + colon + 1..],
        ),
        None => (image, "latest"),
    }
}

/// The useful part of a bollard error: the daemon's own message where there is one.
pub fn message(e: &bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError { message, .. } => message.trim().to_string(),
        E::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

/// The task's log file, appended to by the driver (kiln's own lines start with `kiln:`).
pub struct Log {
    file: Option<std::fs::File>,
    /// Masks the task's secret values, where it has any.
    redactor: Option<crate::redact::Redactor>,
}

impl Log {
    pub fn create(path: &std::path::Path) -> Result<Log, String> {
        std::fs::File::create(path)
            .map(|f| Log {
                file: Some(f),
                redactor: None,
            })
            .map_err(|e| format!("creating {}: {e}", path.display()))
    }

    pub fn append(path: &std::path::Path) -> Log {
        Log {
            file: std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok(),
            redactor: None,
        }
    }

    /// Masks these values in everything written from now on.
    pub fn redacting<'a>(mut self, secrets: impl IntoIterator<Item = &'a String>) -> Log {
        let r = crate::redact::Redactor::new(secrets);
        self.redactor = Some(r);
        self
    }

    pub fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let masked;
        let bytes = match self.redactor.as_mut() {
            Some(r) => {
                masked = r.push(bytes);
                &masked[..]
            }
            None => bytes,
        };
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(bytes);
        }
    }

    /// Writes what the redactor held back (the end of the output).
    pub fn finish(&mut self) {
        use std::io::Write;
        if let (Some(r), Some(f)) = (self.redactor.as_mut(), self.file.as_mut()) {
            let _ = f.write_all(&r.finish());
        }
    }

    pub fn line(&mut self, text: &str) {
        self.write(format!("{text}\n").as_bytes());
    }
}

/// Reads this agent's instance id from its data dir, creating it on first start.
pub fn instance_id(data_dir: &std::path::Path) -> Result<String, crate::Error> {
    let path = data_dir.join("agent-instance");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&path, &id))
        .map_err(|source| crate::Error::Io {
            path: path.display().to_string(),
            source,
        })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references_split_into_name_and_tag_or_digest() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(
            split_reference("127.0.0.1:5000/team/app"),
            ("127.0.0.1:5000/team/app", "latest")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/app:run-3"),
            ("127.0.0.1:5000/app", "run-3")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/app@sha256:abc"),
            ("127.0.0.1:5000/app", "sha256:abc")
        );
    }
}
