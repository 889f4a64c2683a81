//! `kiln snapshot save|inspect|restore`: backups of a cluster's state and blobs.

use std::path::Path;

use kiln_api::backup::{self, Backup};
use kiln_api::pb;
use tokio_stream::StreamExt;

use super::read::print_json;
use crate::client::Client;
use crate::error::CliError;
use crate::render::clock_ms;

fn read_file(file: &Path) -> Result<Backup, CliError> {
    let bytes =
        std::fs::read(file).map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
    backup::read(&bytes).map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))
}

/// What a backup holds, for people: counts from its state and its manifest.
fn summary(b: &Backup) -> serde_json::Value {
    let state: serde_json::Value = serde_json::from_slice(&b.state_json).unwrap_or_default();
    let count = |key: &str| state[key].as_object().map_or(0, |m| m.len());
    serde_json::json!({
        "format": b.manifest.format,
        "created_ms": b.manifest.created_ms,
        "applied_index": b.manifest.applied_index,
        "runs": count("runs"),
        "services": count("services"),
        "repositories": count("repositories"),
        "tokens": count("tokens"),
        "secrets": count("secrets"),
        "blobs": b.manifest.blobs.len(),
        "blob_bytes": b.manifest.blobs.values().sum::<u64>(),
        "missing_blobs": b.manifest.missing,
        "state_sha256": b.manifest.state_sha256,
    })
}

fn print_summary(what: &str, file: &Path, s: &serde_json::Value, json: bool) {
    if json {
        print_json(s);
        return;
    }
    println!(
        "{what} {}: taken {} at Raft index {}; {} runs, {} services, {} repositories, {} tokens, {} secrets; {} blobs ({} bytes), every file checked against its SHA-256",
        file.display(),
        clock_ms(s["created_ms"].as_i64().unwrap_or(0)),
        s["applied_index"],
        s["runs"],
        s["services"],
        s["repositories"],
        s["tokens"],
        s["secrets"],
        s["blobs"],
        s["blob_bytes"],
    );
    if let Some(missing) = s["missing_blobs"].as_array().filter(|m| !m.is_empty()) {
        println!("missing (on no coordinator when it was taken): {missing:?}");
    }
}

pub async fn save(client: &mut Client, file: &Path, json: bool) -> Result<(), CliError> {
    let mut stream = client
        .call(|mut c| async move { c.save_snapshot(pb::SaveSnapshotRequest {}).await })
        .await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(CliError::from_status)?;
        bytes.extend_from_slice(&chunk.data);
    }
    // Checked before it is kept: a backup that does not read back is no backup.
    let checked = backup::read(&bytes).map_err(|e| CliError::Other(format!("the backup: {e}")))?;
    let tmp = file.with_extension("partial");
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
    print_summary("saved", file, &summary(&checked), json);
    Ok(())
}

pub fn inspect(file: &Path, json: bool) -> Result<(), CliError> {
    let b = read_file(file)?;
    print_summary("backup", file, &summary(&b), json);
    Ok(())
}

/// Makes `data_dir` the data dir of a new cluster's first member: its blobs in place, and
/// the state for it to propose once it leads (start it with `--bootstrap`).
pub fn restore(file: &Path, data_dir: &Path, json: bool) -> Result<(), CliError> {
    let b = read_file(file)?;
    backup::unpack_into(&b, data_dir).map_err(|e| CliError::Invalid(format!("--data-dir {e}")))?;
    print_summary("restored", file, &summary(&b), json);
    if !json {
        println!(
            "start the new cluster's first coordinator with --data-dir {} --bootstrap (and the same secrets key, for its secrets); it puts this state in place as its first command",
            data_dir.display()
        );
    }
    Ok(())
}
