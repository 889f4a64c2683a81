//! A backup taken from a live cluster restores into a new 3-coordinator cluster with every
//! run, token and blob, on every member; a damaged backup is refused, and so is a restore
//! into a data dir that is not empty.

use std::time::Duration;

use kiln_e2e::{Cluster, Options, stage};
use serde_json::Value;

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a run list says that a restore must bring back: id, pipeline, status, stages.
fn runs(v: &Value) -> Vec<(String, String, String)> {
    let mut all: Vec<_> = v
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_string(),
                r["status"].as_str().unwrap_or_default().to_string(),
                r["stages"].to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn a_backup_restores_a_new_cluster_with_every_run_token_and_blob() {
    let mut first = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        ..Default::default()
    });
    let pipeline = first.write(
        "p.yaml",
        "name: p\nstages:\n  - name: train\n    command: mkdir -p out && echo weights > out/model\n    artifacts: [out/model]\n  - name: after\n    needs: [train]\n    command: echo done\n",
    );
    let run = ok(first.kiln(&["run", &pipeline])).trim().to_string();
    first.wait_for("the run to succeed", Duration::from_secs(30), |c| {
        c.run_status(&run)["status"] == "succeeded"
    });
    let digest = stage(&first.run_status(&run), "train")["attempts"][0]["artifacts"]["model"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{}", first.run_status(&run));
    let token = ok(first.kiln(&["token", "create", "ci", "--role", "read"]))
        .trim()
        .to_string();
    let before = runs(&first.kiln_json(&["status"]));
    // A backup holds everything: only an admin takes one.
    let denied = first.dir.path().join("denied.kiln-backup");
    let out = first.kiln_token(&token, &["snapshot", "save", denied.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!denied.exists());

    // Outside the first cluster's directory, which goes with it.
    let keep = tempfile::tempdir().expect("temp dir");
    let file = keep.path().join("cluster.kiln-backup");
    let file_arg = file.display().to_string();
    let saved: Value =
        serde_json::from_str(&ok(first.kiln(&["snapshot", "save", &file_arg, "--json"])))
            .expect("JSON");
    assert_eq!(
        (saved["runs"].as_u64(), saved["tokens"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(saved["blobs"], 1, "{saved}");
    let inspected: Value = serde_json::from_str(&ok(
        first.kiln(&["snapshot", "inspect", &file_arg, "--json"])
    ))
    .expect("JSON");
    assert_eq!(inspected, saved);

    // Damaged: refused, naming what is wrong.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"weights\n")
        .expect("the blob");
    bytes[at] ^= 1;
    let damaged = first.dir.path().join("damaged.kiln-backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let out = first.kiln(&["snapshot", "inspect", damaged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match its digest"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Into a data dir in use: refused, and it is left alone.
    let used = first.dir.path().join("c1");
    let out = first.kiln(&[
        "snapshot",
        "restore",
        &file_arg,
        "--data-dir",
        used.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!used.join("restore.json").exists());
    drop(first);

    // A new cluster of three, made from the backup: every member holds what the first had.
    let second = Cluster::start(Options {
        coordinators: 3,
        agents: 1,
        restore_from: Some(file.clone()),
        ..Default::default()
    });
    let mut second = second;
    second.wait_for("the restored runs", Duration::from_secs(30), |c| {
        runs(&c.kiln_json(&["status"])) == before
    });
    for c in &second.coordinators {
        let out = second
            .kiln_command()
            .args(["status", "--json", "--addr", &c.grpc])
            .output()
            .expect("kiln");
        let theirs: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(runs(&theirs), before, "coordinator {}", c.id);
    }
    // The token made on the first cluster opens the second (only its hash travelled).
    assert!(second.kiln_token(&token, &["status"]).status.success());
    // And the model blob is there to back up again, byte for byte.
    let again = second.dir.path().join("again.kiln-backup");
    let resaved: Value = serde_json::from_str(&ok(second.kiln(&[
        "snapshot",
        "save",
        again.to_str().unwrap(),
        "--json",
    ])))
    .expect("JSON");
    assert_eq!(resaved["blobs"], 1, "{resaved}");
    assert_eq!(resaved["missing_blobs"], serde_json::json!([]));
    let bytes = std::fs::read(&again).unwrap();
    assert!(bytes.windows(8).any(|w| w == b"weights\n"));
    assert!(
        second
            .dir
            .path()
            .join("c1")
            .join("restore.applied.json")
            .exists()
    );
}

#[test]
fn scheduled_backups_are_verified_before_they_are_kept_and_only_the_newest_stay() {
    let backups = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 0,
        coordinator_args: vec![
            "--snapshot-dir".into(),
            backups.path().display().to_string(),
            "--snapshot-every".into(),
            "1s".into(),
            "--keep".into(),
            "2".into(),
        ],
        ..Default::default()
    });
    let reader = ok(cluster.kiln(&["token", "create", "scraper", "--role", "read"]))
        .trim()
        .to_string();
    let bearer = format!("Bearer {reader}");
    let http = cluster.coordinators[0].http.clone();
    let verified = || {
        let m = kiln_e2e::http::request_with_headers(
            &http,
            "GET",
            "/metrics",
            &[("Authorization", bearer.as_str())],
            b"",
        );
        m.body
            .lines()
            .find(|l| l.starts_with("kiln_snapshots_total{result=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    cluster.wait_for("three verified backups", Duration::from_secs(30), |_| {
        verified() >= 3
    });
    cluster.coordinators[0].proc.stop();
    let names: Vec<String> = std::fs::read_dir(backups.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let kept: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(".kiln-backup"))
        .collect();
    assert!(
        (1..=2).contains(&kept.len()),
        "the newest two at most: {names:?}"
    );
    for name in kept {
        let path = backups.path().join(name);
        let summary: Value = serde_json::from_str(&ok(cluster.kiln(&[
            "snapshot",
            "inspect",
            path.to_str().unwrap(),
            "--json",
        ])))
        .expect("JSON");
        assert_eq!(summary["tokens"], 1, "{summary}");
    }
}
