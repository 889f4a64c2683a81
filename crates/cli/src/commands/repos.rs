//! `kiln repo add|list|show|remove` and `kiln run --repo NAME --ref REF`: git as the source
//! of runs.

use std::fmt::Write;

use kiln_api::pb;
use kiln_api::units::parse_duration_ms;

use super::read::print_json;
use crate::client::Client;
use crate::error::CliError;

/// What `kiln repo add` asks for.
pub struct NewRepository {
    pub name: String,
    pub url: String,
    pub pipeline: Option<String>,
    /// `GLOB=ENVIRONMENT` each.
    pub branches: Vec<String>,
    /// `60s`, `5m`, or `off`.
    pub poll: Option<String>,
    pub secret_file: Option<std::path::PathBuf>,
    pub credentials: Option<String>,
}

pub async fn add(client: &mut Client, r: NewRepository, json: bool) -> Result<(), CliError> {
    let (poll_ms, no_poll) = match r.poll.as_deref() {
        None => (0, false),
        Some("off") => (0, true),
        Some(p) => (
            parse_duration_ms(p).map_err(|e| CliError::Invalid(format!("--poll {p:?}: {e}")))?,
            false,
        ),
    };
    let secret = match &r.secret_file {
        None => String::new(),
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Invalid(format!("--secret-file {}: {e}", path.display())))?
            .trim()
            .to_string(),
    };
    let req = pb::AddRepositoryRequest {
        name: r.name,
        url: r.url,
        pipeline: r.pipeline.unwrap_or_default(),
        branches: r.branches,
        poll_ms,
        secret,
        credentials: r.credentials.unwrap_or_default(),
        no_poll,
    };
    let view = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.add_repository(req).await }
        })
        .await?;
    if json {
        print_json(&view);
        return Ok(());
    }
    println!(
        "repository {} added: {} at {} heads, pipeline {}",
        view.name,
        view.url,
        view.heads.len(),
        view.pipeline
    );
    println!("webhook: POST http://<coordinator-http>{}", view.hook_path);
    if r.secret_file.is_none() {
        println!(
            "secret:  {}   (shown once; give it to the forge)",
            view.secret
        );
    }
    Ok(())
}

pub async fn list(client: &mut Client, name: Option<String>, json: bool) -> Result<(), CliError> {
    let req = pb::ListRepositoriesRequest {
        name: name.clone().unwrap_or_default(),
    };
    let list = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.list_repositories(req).await }
        })
        .await?;
    match (name, json) {
        (Some(_), true) => print_json(&list.repositories.first()),
        (None, true) => print_json(&list.repositories),
        (Some(_), false) => {
            if let Some(r) = list.repositories.first() {
                print!("{}", show(r));
            }
        }
        (None, false) => {
            println!("{:<20} {:<8} {:<40} URL", "NAME", "POLL", "PIPELINE");
            for r in &list.repositories {
                let poll = match r.poll_ms {
                    0 => "off".to_string(),
                    ms => format!("{}s", ms / 1000),
                };
                println!("{:<20} {:<8} {:<40} {}", r.name, poll, r.pipeline, r.url);
            }
        }
    }
    Ok(())
}

fn show(r: &pb::RepositoryView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}  {}", r.name, r.url);
    let _ = writeln!(out, "  pipeline  {}", r.pipeline);
    let _ = writeln!(out, "  webhook   POST {}", r.hook_path);
    let poll = match r.poll_ms {
        0 => "off".to_string(),
        ms => format!("every {} s", ms / 1000),
    };
    let _ = writeln!(out, "  poll      {poll}");
    if !r.poll_error.is_empty() {
        let _ = writeln!(out, "  poll error: {}", r.poll_error);
    }
    for b in &r.branches {
        let _ = writeln!(out, "  branch    {b}");
    }
    let mut heads: Vec<_> = r.heads.iter().collect();
    heads.sort();
    for (git_ref, commit) in heads {
        let _ = writeln!(out, "  head      {git_ref} {}", short(commit));
    }
    if !r.pushes.is_empty() {
        let _ = writeln!(
            out,
            "  PUSH  SOURCE   REF                        COMMIT   STATUS    RUN / NOTE"
        );
    }
    for p in &r.pushes {
        let note = if p.run_id.is_empty() {
            p.reason.clone()
        } else {
            p.run_id.clone()
        };
        let _ = writeln!(
            out,
            "  {:<5} {:<8} {:<26} {:<8} {:<9} {note}",
            p.id,
            p.source,
            p.r#ref,
            short(&p.after),
            p.status
        );
    }
    out
}

fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

pub async fn remove(client: &mut Client, name: String, json: bool) -> Result<(), CliError> {
    let req = pb::RemoveRepositoryRequest { name: name.clone() };
    client
        .call(|mut c| {
            let req = req.clone();
            async move { c.remove_repository(req).await }
        })
        .await?;
    if json {
        print_json(&serde_json::json!({ "removed": name }));
    } else {
        println!("repository {name} removed");
    }
    Ok(())
}

/// `kiln run --repo NAME --ref REF`: the repository's pipeline at that ref; answers the run
/// id (to follow), or `None` when the push started nothing.
pub async fn trigger(
    client: &mut Client,
    repository: String,
    git_ref: String,
    request_id: String,
    json: bool,
) -> Result<Option<String>, CliError> {
    let req = pb::TriggerRepositoryRequest {
        repository,
        r#ref: git_ref,
        request_id,
    };
    let answer = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.trigger_repository(req).await }
        })
        .await?;
    if answer.run_id.is_empty() {
        if json {
            print_json(&serde_json::json!({ "run_id": null, "reason": answer.reason }));
        } else {
            println!("nothing started: {}", answer.reason);
        }
        return Ok(None);
    }
    Ok(Some(answer.run_id))
}
