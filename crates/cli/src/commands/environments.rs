//! `kiln env [create]`, `kiln promote SVC --from A --to B` and `kiln approve`: the delivery
//! path between environments.

use std::fmt::Write;

use kiln_api::pb;

use super::read::print_json;
use super::services::print_deployed;
use crate::client::Client;
use crate::error::CliError;

pub async fn create(
    client: &mut Client,
    name: String,
    approval: bool,
    default: bool,
    json: bool,
) -> Result<(), CliError> {
    let req = pb::CreateEnvironmentRequest {
        name,
        approval,
        default,
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
        println!("environment {}{approval}{default}", env.name);
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
