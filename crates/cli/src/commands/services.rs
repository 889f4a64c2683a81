//! `kiln deploy`, `kiln services`, `kiln history`, `kiln rollback`, `kiln scale`,
//! `kiln promote` (of canaries), and `kiln gateway` (the service gateway as its own
//! process). Environments, promotion between them and approval: `environments.rs`.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use kiln_api::pb;
use kiln_api::spec::{Container, ImageRef};
use kiln_api::validate::parse_service;

use super::read::print_json;
use crate::client::Client;
use crate::error::CliError;
use crate::render::duration_ms;

/// Where a deploy goes, and whether to deploy again what was rolled back from.
pub struct Target {
    pub env: Option<String>,
    pub force: bool,
}

/// Checks the file locally, records the model artifact's digest and the git commit, and
/// deploys: a new revision.
pub async fn deploy(
    client: &mut Client,
    file: &Path,
    commit: Option<String>,
    target: Target,
    json: bool,
) -> Result<(), CliError> {
    let name = file.display().to_string();
    let yaml =
        std::fs::read_to_string(file).map_err(|e| CliError::Invalid(format!("{name}: {e}")))?;
    let spec = parse_service(&name, &yaml).map_err(|e| CliError::Invalid(e.to_string()))?;
    if let Some(Container::Image(ImageRef::Named(image))) = &spec.replica.container {
        super::registry::check_image(&name, image)?;
    }
    let dir = super::run::pipeline_dir(file)?;
    let model_archive = match &spec.model {
        Some(model) => {
            let path = dir.join(model);
            super::context::pack_model(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::FileTooLarge => CliError::Invalid(format!(
                    "{name}: model: {} packs to more than the limit of {} MiB",
                    path.display(),
                    kiln_api::spec::limits::MAX_CONTEXT_BYTES >> 20
                )),
                _ => CliError::Invalid(format!("{name}: model: {}: {e}", path.display())),
            })?
        }
        None => Vec::new(),
    };
    let model_digest = if model_archive.is_empty() {
        String::new()
    } else {
        digest(&model_archive)
    };
    let commit = commit.or_else(|| git_head(&dir)).unwrap_or_default();
    let req = pb::DeployRequest {
        service_yaml: yaml,
        file_name: name,
        model_digest,
        commit,
        source_dir: dir.display().to_string(),
        environment: target.env.unwrap_or_default(),
        force: target.force,
        model_archive,
        // One per invocation, the same on every retry: a deploy is never made twice.
        request_id: super::run::new_request_id(),
    };
    let reply = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.deploy(req).await }
        })
        .await?;
    print_deployed(&reply, json);
    Ok(())
}

/// What a deploy, a promotion or an approval made.
pub fn print_deployed(reply: &pb::DeployResponse, json: bool) {
    if json {
        print_json(reply);
    } else if reply.awaiting_approval {
        println!(
            "{} in {}: awaiting approval (kiln approve {} --env {})",
            reply.service, reply.environment, reply.service, reply.environment
        );
    } else {
        println!(
            "{} in {}: revision {}",
            reply.service, reply.environment, reply.revision
        );
    }
}

/// `sha256:<hex>` of a packed model artifact (the blob store's digest of it).
fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The commit checked out where the file lives, if it is a git checkout.
fn git_head(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub async fn list(client: &mut Client, json: bool) -> Result<(), CliError> {
    let reply = client
        .call(|mut c| async move { c.list_services(pb::ListServicesRequest {}).await })
        .await?;
    if json {
        print_json(&reply.services);
        return Ok(());
    }
    let mut out = format!(
        "{:<20} {:<12} {:>8} {:>7} {:>9} {:<9} {}\n",
        "SERVICE", "ENVIRONMENT", "REVISION", "STABLE", "SERVING", "ROLLOUT", "AUTOSCALE"
    );
    for s in &reply.services {
        let autoscale = s
            .autoscale
            .as_ref()
            .map(|a| {
                format!(
                    "{} {:.1}/{:.1} → {}{}",
                    a.metric,
                    a.value,
                    a.target,
                    a.recommended,
                    if a.panic { " (panic)" } else { "" }
                )
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<20} {:<12} {:>8} {:>7} {:>9} {:<9} {}",
            s.name,
            s.environment,
            s.revision,
            if s.stable == 0 {
                "-".into()
            } else {
                s.stable.to_string()
            },
            format!("{}/{}", s.serving, s.desired),
            s.rollout,
            autoscale
        );
    }
    print!("{out}");
    Ok(())
}

async fn get(
    client: &mut Client,
    name: &str,
    env: Option<String>,
) -> Result<pb::ServiceView, CliError> {
    let req = pb::GetServiceRequest {
        name: name.into(),
        environment: env.unwrap_or_default(),
    };
    client
        .call(|mut c| {
            let req = req.clone();
            async move { c.get_service(req).await }
        })
        .await
}

/// Revisions, which became healthy, the service's events; or a diff of two revisions.
pub async fn history(
    client: &mut Client,
    name: &str,
    env: Option<String>,
    diff: Option<Vec<u32>>,
    json: bool,
) -> Result<(), CliError> {
    let s = get(client, name, env).await?;
    if let Some(pair) = diff {
        let spec = |n: u32| {
            s.revisions
                .iter()
                .find(|r| r.number == n)
                .map(|r| r.spec_json.clone())
                .ok_or_else(|| CliError::NotFound(format!("{name} has no revision {n}")))
        };
        let (a, b) = (spec(pair[0])?, spec(pair[1])?);
        print!("{}", line_diff(&a, &b, pair[0], pair[1]));
        return Ok(());
    }
    if json {
        print_json(&s);
        return Ok(());
    }
    let mut out = format!(
        "{} in {}\n{:>8}  {:<9} {:<8} {:<20} {:<20} {:<12} {}\n",
        s.name,
        s.environment,
        "REVISION",
        "STATE",
        "HEALTHY",
        "IMAGE",
        "MODEL",
        "COMMIT",
        "CREATED"
    );
    let short = |digest: &str| -> String {
        match digest {
            "" => "-".to_string(),
            d => d.rsplit('@').next().unwrap_or(d).chars().take(19).collect(),
        }
    };
    for r in &s.revisions {
        let state = if r.number == s.revision {
            "current"
        } else if !r.bad.is_empty() {
            "bad"
        } else if !r.failed.is_empty() {
            "failed"
        } else {
            "old"
        };
        let healthy = if r.healthy_ms > 0 { "yes" } else { "no" };
        let commit: String = r.commit.chars().take(12).collect();
        let _ = writeln!(
            out,
            "{:>8}  {:<9} {:<8} {:<20} {:<20} {:<12} {}",
            r.number,
            state,
            healthy,
            short(&r.image_digest),
            short(&r.model_digest),
            if commit.is_empty() { "-" } else { &commit },
            crate::render::clock_ms(r.created_ms),
        );
        let source = r.git.as_ref().map(crate::render::git).unwrap_or_default();
        let notes = [
            ("source", &source),
            ("promoted from", &r.promoted_from),
            ("deployed by", &r.run),
            ("failed", &r.failed),
            ("rolled back from", &r.bad),
        ];
        for (what, text) in notes.iter().filter(|(_, t)| !t.is_empty()) {
            let _ = writeln!(out, "          {what}: {text}");
        }
    }
    let _ = writeln!(out, "events:");
    let first = s.events.first().map_or(0, |e| e.at_ms);
    for e in &s.events {
        let _ = writeln!(out, "  +{:>8}  {}", duration_ms(e.at_ms - first), e.text);
    }
    print!("{out}");
    Ok(())
}

/// A line diff of two specs (longest common subsequence), `-` for the first, `+` for the
/// second.
fn line_diff(a: &str, b: &str, from: u32, to: u32) -> String {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut lcs = vec![vec![0usize; y.len() + 1]; x.len() + 1];
    for i in (0..x.len()).rev() {
        for j in (0..y.len()).rev() {
            lcs[i][j] = if x[i] == y[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!("--- revision {from}\n+++ revision {to}\n");
    let (mut i, mut j) = (0, 0);
    while i < x.len() || j < y.len() {
        if i < x.len() && j < y.len() && x[i] == y[j] {
            i += 1;
            j += 1;
        } else if i < x.len() && (j == y.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "-{}", x[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+{}", y[j]);
            j += 1;
        }
    }
    out
}

fn show(s: &pb::ServiceView, json: bool) {
    if json {
        print_json(s);
    } else {
        println!(
            "{} in {}: revision {} ({} of {} serving, rollout {})",
            s.name, s.environment, s.revision, s.serving, s.desired, s.rollout
        );
    }
}

pub async fn rollback(
    client: &mut Client,
    service: String,
    env: Option<String>,
    to: Option<u32>,
    reason: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let req = pb::RollbackRequest {
        service,
        to: to.unwrap_or(0),
        environment: env.unwrap_or_default(),
        reason: reason.unwrap_or_default(),
    };
    let s = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.rollback(req).await }
        })
        .await?;
    show(&s, json);
    Ok(())
}

pub async fn scale(
    client: &mut Client,
    service: String,
    env: Option<String>,
    replicas: u32,
    json: bool,
) -> Result<(), CliError> {
    let req = pb::ScaleRequest {
        service,
        replicas,
        environment: env.unwrap_or_default(),
    };
    let s = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.scale(req).await }
        })
        .await?;
    show(&s, json);
    Ok(())
}

/// Promotes a rollout's canaries.
pub async fn promote(
    client: &mut Client,
    service: String,
    env: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let req = pb::PromoteRequest {
        service,
        environment: env.unwrap_or_default(),
    };
    let s = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.promote(req).await }
        })
        .await?;
    show(&s, json);
    Ok(())
}

/// `kiln gateway`: the service gateway, until Ctrl-C or SIGTERM.
pub async fn gateway(
    coordinators: Vec<String>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    listen: &str,
    hold: Duration,
) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Invalid(format!("--listen {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Other(e.to_string()))?;
    let config = kiln_gateway::Config {
        coordinators,
        // Unique per process: two gateways on different hosts may bind the same address.
        id: format!("gateway-{addr}-{:08x}", rand::random::<u32>()),
        hold,
        tls,
    };
    println!("kiln gateway listening on {addr}");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        stop.cancel();
    });
    kiln_gateway::run(listener, config, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn diffs_show_what_changed() {
        let d = super::line_diff("a\nb\nc\n", "a\nB\nc\nd\n", 1, 2);
        assert_eq!(d, "--- revision 1\n+++ revision 2\n-b\n+B\n+d\n");
    }
}
