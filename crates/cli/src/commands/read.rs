//! `kiln status`, `kiln nodes`, `kiln logs`, `kiln cancel`.

use std::io::Write;

use kiln_api::pb;

use crate::client::Client;
use crate::error::CliError;
use crate::render;

pub fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub async fn status(
    client: &mut Client,
    run: Option<String>,
    filter: pb::ListRunsRequest,
    json: bool,
) -> Result<(), CliError> {
    match run {
        Some(run_id) => {
            let req = pb::GetRunRequest { run_id };
            let run = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.get_run(req).await }
                })
                .await?;
            if json {
                print_json(&run)
            } else {
                print!("{}", render::run(&run))
            }
        }
        None => {
            let reply = client
                .call(|mut c| {
                    let filter = filter.clone();
                    async move { c.list_runs(filter).await }
                })
                .await?;
            if json {
                print_json(&reply.runs)
            } else {
                print!("{}", render::runs(&reply.runs));
                if !reply.next.is_empty() {
                    println!("older runs: kiln status --before {}", reply.next);
                }
            }
        }
    }
    Ok(())
}

pub async fn nodes(client: &mut Client, json: bool) -> Result<(), CliError> {
    let reply = client
        .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
        .await?;
    if json {
        print_json(&reply.nodes)
    } else {
        print!("{}", render::nodes(&reply.nodes))
    }
    Ok(())
}

pub async fn cancel(client: &mut Client, run_id: String, json: bool) -> Result<(), CliError> {
    let req = pb::CancelRunRequest {
        run_id: run_id.clone(),
    };
    let reply = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.cancel_run(req).await }
        })
        .await?;
    if json {
        print_json(&reply)
    } else {
        println!("{run_id} {}", reply.status)
    }
    Ok(())
}

pub async fn logs(
    client: &mut Client,
    run_id: String,
    stage: String,
    shard: u32,
    attempt: u32,
    follow: bool,
) -> Result<(), CliError> {
    let req = pb::StreamLogsRequest {
        run_id,
        stage,
        attempt,
        follow,
        shard,
    };
    let mut stream = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.stream_logs(req).await }
        })
        .await?;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.message().await.map_err(CliError::from_status)? {
        out.write_all(&chunk.data)
            .map_err(|e| CliError::Other(format!("stdout: {e}")))?;
    }
    out.flush()
        .map_err(|e| CliError::Other(format!("stdout: {e}")))?;
    Ok(())
}
