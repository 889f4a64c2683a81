//! A `build:` task: fetch the packed context from the coordinator by its digest, optionally
//! run the stage's command in it first (on the node, like a process task: e.g. compile the
//! static binary the Dockerfile copies), build it with the Engine's build API, tag it
//! `<registry>/<name>:<run>`, push it, and report the pushed image pinned by digest.
//!
//! After the push the local tag is removed: the registry is where images live, and every
//! node (this one included) pulls them from there.

use std::path::Path;
use std::time::Duration;

use kiln_api::spec::limits::MAX_CONTEXT_BYTES;

use bollard::query_parameters::{BuildImageOptions, PushImageOptions, RemoveImageOptions};
use futures::StreamExt;
use kiln_api::leader::LeaderClient;
use kiln_api::pb;
use tokio::sync::{oneshot, watch};

use super::{DockerDriver, Log, message};
use crate::process::{self, Outcome};

/// Builds and pushes; returns the outcome and, on success, `<registry>/<name>@sha256:…`.
pub async fn run(
    d: &DockerDriver,
    a: &pb::Assignment,
    spec: &pb::BuildSpec,
    work: &Path,
    log_path: &Path,
    kill: oneshot::Receiver<String>,
    leader: &LeaderClient,
) -> (Outcome, Option<String>) {
    let mut log = match Log::create(log_path) {
        Ok(l) => l,
        Err(e) => return (failed(e), None),
    };
    // One kill request may have to stop several steps in turn.
    let (kill_tx, killed) = watch::channel(None::<String>);
    tokio::spawn(async move {
        if let Ok(reason) = kill.await {
            let _ = kill_tx.send(Some(reason));
        }
    });
    let timeout = Duration::from_millis(a.timeout_ms.max(1));
    let steps = steps(d, a, spec, work, log_path, &mut log, killed.clone(), leader);
    let mut killed = killed;
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, steps) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {}ms", timeout.as_millis())),
        },
        r = killed.wait_for(|k| k.is_some()) => {
            Err(r.ok().and_then(|k| k.clone()).unwrap_or_else(|| "killed".into()))
        }
    };
    match result {
        Ok(image) => {
            log.line(&format!("kiln: pushed {image}"));
            (
                Outcome {
                    succeeded: true,
                    exit_code: Some(0),
                    message: String::new(),
                },
                Some(image),
            )
        }
        Err(e) => {
            log.line(&format!("kiln: {e}"));
            (failed(e), None)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn steps(
    d: &DockerDriver,
    a: &pb::Assignment,
    spec: &pb::BuildSpec,
    work: &Path,
    log_path: &Path,
    log: &mut Log,
    killed: watch::Receiver<Option<String>>,
    leader: &LeaderClient,
) -> Result<String, String> {
    let registry = d
        .registry
        .clone()
        .ok_or("this node has no registry to push to: start its agent with --registry HOST:PORT")?;
    let command = !(a.shell.is_empty() && a.argv.is_empty());
    let context = if spec.context_digest.is_empty() && a.checkout.is_some() {
        // A git-triggered run: the context is a directory of the checkout in `work`.
        let dir = checkout_context(work, &a.stage, &spec.context_dir)?;
        log.line(&format!(
            "kiln: build context {} of the checkout",
            spec.context_dir
        ));
        if command {
            run_before(a, &dir, log_path, killed).await?;
        }
        pack(&dir)?
    } else {
        let context = crate::blobs::fetch(leader, &spec.context_digest)
            .await
            .map_err(|e| format!("fetching the build context {}: {e}", spec.context_digest))?;
        log.line(&format!(
            "kiln: build context {} ({} KiB)",
            spec.context_digest,
            context.len() / 1024
        ));
        if command {
            tar::Archive::new(context.as_slice())
                .unpack(work)
                .map_err(|e| format!("unpacking the build context: {e}"))?;
            run_before(a, work, log_path, killed).await?;
            pack(work)?
        } else {
            context
        }
    };

    let repo = format!("{registry}/{}", spec.name);
    let tagged = format!("{repo}:{}", a.run_id);
    let mut build = d.client.build_image(
        BuildImageOptions {
            dockerfile: spec.dockerfile.clone(),
            t: Some(tagged.clone()),
            rm: true,
            forcerm: true,
            ..Default::default()
        },
        None,
        Some(bollard::body_full(context.into())),
    );
    while let Some(item) = build.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream {
                    log.write(text.as_bytes());
                }
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(format!("docker build failed: {}", e.trim()));
                }
            }
            Err(e) => return Err(format!("docker build failed: {}", message(&e))),
        }
    }

    log.line(&format!("kiln: pushing {tagged}"));
    let mut push = d.client.push_image(
        &repo,
        Some(PushImageOptions {
            tag: Some(a.run_id.clone()),
            ..Default::default()
        }),
        None,
    );
    while let Some(item) = push.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(format!("pushing {tagged}: {e}"));
                }
                if let Some(status) = info.status.filter(|s| s.contains("digest")) {
                    log.line(&status);
                }
            }
            Err(e) => return Err(format!("pushing {tagged}: {}", message(&e))),
        }
    }
    let pinned = d
        .client
        .inspect_image(&tagged)
        .await
        .map_err(|e| format!("inspecting {tagged}: {}", message(&e)))?
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.starts_with(&format!("{repo}@")))
        .ok_or_else(|| format!("the push of {tagged} reported no digest"))?;
    // Nodes pull from the registry, this one too.
    let _ = d
        .client
        .remove_image(&tagged, None::<RemoveImageOptions>, None)
        .await;
    Ok(pinned)
}

/// The context directory `rel` of the checkout in `work`, which it may not leave (a
/// symlink in the repository could point anywhere on the node).
fn checkout_context(work: &Path, stage: &str, rel: &str) -> Result<std::path::PathBuf, String> {
    let field = format!("stages.{stage}.build.context");
    let dir = work
        .join(rel)
        .canonicalize()
        .map_err(|e| format!("{field}: {rel:?} in the checkout: {e}"))?;
    let root = work.canonicalize().map_err(|e| e.to_string())?;
    if !dir.starts_with(&root) || !dir.is_dir() {
        return Err(format!(
            "{field}: {rel:?} is not a directory of the checkout"
        ));
    }
    Ok(dir)
}

/// Runs the stage's command in `dir` (on the node) before the build; its output goes into
/// the task's log.
async fn run_before(
    a: &pb::Assignment,
    dir: &Path,
    log_path: &Path,
    mut killed: watch::Receiver<Option<String>>,
) -> Result<(), String> {
    let prep_log = log_path.with_file_name("prepare.log");
    let (child, copier) = process::spawn(a, dir, &prep_log)?.into_parts();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        if let Ok(k) = killed.wait_for(|k| k.is_some()).await {
            let _ = tx.send(k.clone().unwrap_or_default());
        }
    });
    let mut rx = rx;
    let outcome = process::wait(child, Duration::from_millis(a.timeout_ms.max(1)), &mut rx).await;
    process::Spawned::flushed(copier).await;
    // The command's output belongs in the task's log, before the build's.
    if let Ok(out) = std::fs::read(&prep_log) {
        Log::append(log_path).write(&out);
        let _ = std::fs::remove_file(&prep_log);
    }
    if !outcome.succeeded {
        return Err(format!(
            "the command before the build failed: {}",
            outcome.message
        ));
    }
    Ok(())
}

/// The build context in `dir`, packed as the CLI packs one (at most [`MAX_CONTEXT_BYTES`]).
fn pack(dir: &Path) -> Result<Vec<u8>, String> {
    kiln_api::artifact::pack_context(dir, MAX_CONTEXT_BYTES).map_err(|e| match e.kind() {
        std::io::ErrorKind::FileTooLarge => format!(
            "the build context packs to more than the limit of {} MiB",
            MAX_CONTEXT_BYTES >> 20
        ),
        _ => format!("packing the build context: {e}"),
    })
}

fn failed(message: String) -> Outcome {
    Outcome {
        succeeded: false,
        exit_code: None,
        message,
    }
}
