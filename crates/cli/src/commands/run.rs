//! `kiln run FILE [--follow]`: validate locally (so bad input never reaches the network),
//! submit with an idempotency key, and optionally follow the run to its end.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kiln_api::pb;
use kiln_api::validate::parse_pipeline;

use crate::client::Client;
use crate::error::CliError;
use crate::render;

/// Submits the pipeline; with `follow`, waits for the run to end. Returns the run id.
pub async fn run(
    client: &mut Client,
    file: &Path,
    follow: bool,
    request_id: Option<String>,
    json: bool,
) -> Result<String, CliError> {
    let name = file.display().to_string();
    let yaml =
        std::fs::read_to_string(file).map_err(|e| CliError::Invalid(format!("{name}: {e}")))?;
    let pipeline = parse_pipeline(&name, &yaml).map_err(|e| CliError::Invalid(e.to_string()))?;
    let dir = pipeline_dir(file)?;
    let build_contexts = super::context::pack_all(&name, &dir, &pipeline)?;
    let service_files = super::context::service_files(&name, &dir, &pipeline)?;
    let request_id = request_id.unwrap_or_else(new_request_id);
    let req = pb::SubmitRunRequest {
        pipeline_yaml: yaml,
        file_name: name,
        request_id,
        trigger: "manual".into(),
        source_dir: dir.display().to_string(),
        build_contexts,
        service_files,
    };
    let reply = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.submit_run(req).await }
        })
        .await?;
    let run_id = reply.run_id;
    if !follow {
        if json {
            println!(
                "{}",
                serde_json::json!({ "run_id": run_id, "created": reply.created })
            );
        } else {
            println!("{run_id}");
        }
        return Ok(run_id);
    }
    if !json {
        eprintln!("{run_id} submitted");
    }
    follow_to_end(client, run_id, json).await
}

/// Follows a submitted run to its end, prints it, and answers with its status.
pub async fn follow_to_end(
    client: &mut Client,
    run_id: String,
    json: bool,
) -> Result<String, CliError> {
    let run = follow_run(client, &run_id, json).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
    } else {
        print!("{}", render::run(&run));
    }
    match run.status.as_str() {
        "succeeded" => Ok(run_id),
        other => Err(CliError::RunFailed(format!("{run_id} {other}"))),
    }
}

/// Polls the run until it ends, drawing per-stage progress on a terminal and printing one
/// line per stage change otherwise.
pub async fn follow_run(
    client: &mut Client,
    run_id: &str,
    quiet: bool,
) -> Result<pb::Run, CliError> {
    let tty = std::io::stderr().is_terminal() && !quiet;
    let bars = MultiProgress::new();
    let mut stage_bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut last: HashMap<String, String> = HashMap::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:<20} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    loop {
        let req = pb::GetRunRequest {
            run_id: run_id.to_string(),
        };
        let run = client
            .call(|mut c| {
                let req = req.clone();
                async move { c.get_run(req).await }
            })
            .await?;
        for s in &run.stages {
            let line = render::stage_progress(s);
            if last.get(&s.name) == Some(&line) {
                continue;
            }
            last.insert(s.name.clone(), line.clone());
            if tty {
                let bar = stage_bars.entry(s.name.clone()).or_insert_with(|| {
                    let b = bars.add(ProgressBar::new_spinner());
                    b.set_style(style.clone());
                    b.set_prefix(s.name.clone());
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                });
                bar.set_message(line);
                if matches!(
                    s.status.as_str(),
                    "succeeded" | "failed" | "skipped" | "cancelled" | "lost"
                ) {
                    bar.finish();
                }
            } else if !quiet {
                eprintln!("{:<20} {line}", s.name);
            }
        }
        if matches!(run.status.as_str(), "succeeded" | "failed" | "cancelled")
            && run.finished_ms > 0
        {
            for b in stage_bars.values() {
                b.finish();
            }
            return Ok(run);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pipeline file's directory, absolute and with symlinks resolved.
pub fn pipeline_dir(file: &Path) -> Result<std::path::PathBuf, CliError> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    parent
        .canonicalize()
        .map_err(|e| CliError::Invalid(format!("{}: {e}", parent.display())))
}

/// A random 128-bit id; collisions are not a practical concern.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
