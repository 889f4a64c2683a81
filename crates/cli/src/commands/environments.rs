//! `kiln env [create]`, `kiln promote SVC --from A --to B` and `kiln approve`: the delivery
//! path between environments.

use std::fmt::Write;

use kiln_api::pb;

use super::read::print_json;
use super::services::print_deployed;
use crate::client::Client;
use crate::error::CliError;

/// What `kiln env create` makes: its name, approval, default, and variables.
pub struct NewEnvironment {
    pub name: String,
    pub approval: bool,
    pub default: bool,
    /// `KEY=VALUE` each.
    pub env: Vec<String>,
}

pub async fn create(client: &mut Client, e: NewEnvironment, json: bool) -> Result<(), CliError> {
    let mut env = std::collections::HashMap::new();
    for pair in e.env {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Invalid(format!("--env {pair:?}: write KEY=VALUE")))?;
        env.insert(k.to_string(), v.to_string());
    }
    let req = pb::CreateEnvironmentRequest {
        name: e.name,
        approval: e.approval,
        default: e.default,
        env,
    };
    let env = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.create_environment(req).await }
        })
        .await?;
    if json {
        print_json(&env);
    } else {
        let approval = if env.approval {
            ", approval required"
        } else {
            ""
        };
        let default = if env.default { ", default" } else { "" };
        let mut vars: Vec<String> = env.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        vars.sort();
        let vars = if vars.is_empty() {
            String::new()
        } else {
            format!(", replicas get {}", vars.join(" "))
        };
        println!("environment {}{approval}{default}{vars}", env.name);
    }
    Ok(())
}

pub async fn list(client: &mut Client, json: bool) -> Result<(), CliError> {
    let reply = client
        .call(|mut c| async move { c.list_environments(pb::ListEnvironmentsRequest {}).await })
        .await?;
    if json {
        print_json(&reply.environments);
        return Ok(());
    }
    let mut out = format!(
        "{:<14} {:<9} {:<8} {:<30} {}\n",
        "ENVIRONMENT", "APPROVAL", "DEFAULT", "SERVICES", "AWAITING APPROVAL"
    );
    for e in &reply.environments {
        let awaiting: Vec<String> = e
            .awaiting
            .iter()
            .map(|a| match a.promoted_from.as_str() {
                "" => a.service.clone(),
                from => format!("{} (from {from})", a.service),
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<14} {:<9} {:<8} {:<30} {}",
            e.name,
            if e.approval { "required" } else { "-" },
            if e.default { "yes" } else { "" },
            if e.services.is_empty() {
                "-".to_string()
            } else {
                e.services.join(",")
            },
            if awaiting.is_empty() {
                "-".to_string()
            } else {
                awaiting.join(", ")
            }
        );
    }
    print!("{out}");
    Ok(())
}

/// Deploys into `to` the revision of `service` healthy in `from`.
pub async fn promote(
    client: &mut Client,
    service: String,
    from: String,
    to: String,
    force: bool,
    json: bool,
) -> Result<(), CliError> {
    let req = pb::PromoteRevisionRequest {
        service,
        from,
        to,
        force,
        request_id: super::run::new_request_id(),
    };
    let reply = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.promote_revision(req).await }
        })
        .await?;
    print_deployed(&reply, json);
    Ok(())
}

pub async fn approve(
    client: &mut Client,
    service: String,
    environment: String,
    json: bool,
) -> Result<(), CliError> {
    let req = pb::ApproveRequest {
        service,
        environment,
        request_id: super::run::new_request_id(),
    };
    let reply = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.approve(req).await }
        })
        .await?;
    print_deployed(&reply, json);
    Ok(())
}
