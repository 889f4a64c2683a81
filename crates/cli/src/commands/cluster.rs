//! `kiln cluster status|join|leave`.

use kiln_api::pb;

use crate::client::Client;
use crate::error::CliError;

fn members(members: &[pb::Member]) -> String {
    let mut out = format!("{:<4} {:<22} {}\n", "ID", "ADDRESS", "ROLE");
    for m in members {
        out.push_str(&format!(
            "{:<4} {:<22} {}\n",
            m.id,
            m.addr,
            if m.voter { "voter" } else { "learner" }
        ));
    }
    out
}

pub async fn status(client: &mut Client, state_hash: bool, json: bool) -> Result<(), CliError> {
    let s = client
        .call(|mut c| async move {
            c.cluster_status(pb::ClusterStatusRequest { state_hash })
                .await
        })
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    println!("answered by {} ({})", s.id, s.role);
    if s.leader_id == 0 {
        println!("leader:  none elected");
    } else {
        println!("leader:  {} at {}", s.leader_id, s.leader_addr);
    }
    println!(
        "term:    {}\nlog:     {} (applied {})\n",
        s.term, s.last_log_index, s.last_applied
    );
    print!("{}", members(&s.members));
    if state_hash {
        println!(
            "state:   sha256 {} at index {}",
            s.state_sha256, s.state_index
        );
    }
    Ok(())
}

/// Prints the reply to a membership change: as JSON, or the members as a table.
fn print_change<T: serde::Serialize>(reply: &T, members_after: &[pb::Member], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(reply).unwrap_or_default()
        );
    } else {
        print!("{}", members(members_after));
    }
}

pub async fn join(client: &mut Client, id: u64, addr: String, json: bool) -> Result<(), CliError> {
    let req = pb::JoinClusterRequest { id, addr };
    let reply = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.join_cluster(req).await }
        })
        .await?;
    print_change(&reply, &reply.members, json);
    Ok(())
}

pub async fn leave(client: &mut Client, id: u64, json: bool) -> Result<(), CliError> {
    let req = pb::LeaveClusterRequest { id };
    let reply = client
        .call(|mut c| async move { c.leave_cluster(req).await })
        .await?;
    print_change(&reply, &reply.members, json);
    Ok(())
}
