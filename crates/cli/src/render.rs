//! Tables and lines for people; `--json` bypasses all of this.

use std::fmt::Write;

use kiln_api::pb;

pub fn duration_ms(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn stage_duration(s: &pb::Stage) -> String {
    span(s.started_ms, s.finished_ms)
}

fn span(started_ms: i64, finished_ms: i64) -> String {
    match (started_ms, finished_ms) {
        (0, _) => "-".into(),
        (start, 0) => format!("{} so far", duration_ms(now_ms() - start)),
        (start, end) => duration_ms(end - start),
    }
}

pub fn stage_progress(s: &pb::Stage) -> String {
    let mut line = s.status.clone();
    if s.attempt > 1 {
        let _ = write!(line, " (attempt {})", s.attempt);
    }
    if !s.node.is_empty() {
        let _ = write!(line, " on {}", s.node);
    }
    if let Some(code) = s.exit_code.filter(|c| *c != 0) {
        let _ = write!(line, " exit {code}");
    }
    if !s.waiting_reason.is_empty() && s.status == "pending" {
        let _ = write!(line, " — {}", s.waiting_reason);
    }
    if !s.shards.is_empty() && s.status == "running" {
        let running = s.shards.iter().filter(|k| k.status == "running").count();
        let _ = write!(line, " ({running}/{} shards running)", s.shards.len());
    }
    if !s.message.is_empty() {
        let _ = write!(line, " — {}", s.message);
    }
    line
}

pub fn run(r: &pb::Run) -> String {
    let mut out = String::new();
    let took = if r.finished_ms > 0 {
        duration_ms(r.finished_ms - r.created_ms)
    } else {
        "-".into()
    };
    let _ = writeln!(out, "{}  {}  {}  ({})", r.id, r.pipeline, r.status, took);
    if let Some(g) = &r.git {
        let _ = writeln!(out, "  {}", git(g));
    }
    if !r.message.is_empty() {
        let _ = writeln!(out, "  {}", r.message);
    }
    let _ = writeln!(
        out,
        "  {:<20} {:<10} {:>7} {:<16} {:>5} {:>10}  NOTE",
        "STAGE", "STATUS", "ATTEMPT", "NODE", "EXIT", "TIME"
    );
    for s in &r.stages {
        let exit = s
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        let note = if !s.waiting_reason.is_empty() && s.status == "pending" {
            s.waiting_reason.clone()
        } else {
            // The reason it ended, else the image it ran or pushed.
            s.attempts
                .last()
                .map(|a| a.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| s.image.clone())
        };
        let note = if s.message.is_empty() {
            note
        } else {
            s.message.clone()
        };
        let _ = writeln!(
            out,
            "  {:<20} {:<10} {:>7} {:<16} {:>5} {:>10}  {}",
            s.name,
            s.status,
            s.attempt,
            if s.node.is_empty() { "-" } else { &s.node },
            exit,
            stage_duration(s),
            note
        );
        for k in &s.shards {
            let _ = writeln!(
                out,
                "    {:<18} {:<10} {:>7} {:<16} {:>5} {:>10}  {}",
                format!("shard {}", k.index),
                k.status,
                k.attempt,
                if k.node.is_empty() { "-" } else { &k.node },
                k.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                span(k.started_ms, k.finished_ms),
                shard_note(k)
            );
        }
    }
    out
}

fn shard_note(k: &pb::Shard) -> String {
    if !k.waiting_reason.is_empty() && k.status == "pending" {
        return k.waiting_reason.clone();
    }
    k.attempts
        .last()
        .map(|a| a.message.clone())
        .unwrap_or_default()
}

/// `repo main 3f2a91c "Fix the tokenizer" (Ada Lovelace)`: what a run or revision was
/// made from.
pub fn git(g: &pb::GitSource) -> String {
    let name = g
        .r#ref
        .strip_prefix("refs/heads/")
        .or_else(|| g.r#ref.strip_prefix("refs/tags/"))
        .unwrap_or(&g.r#ref);
    let commit = g.commit.get(..7).unwrap_or(&g.commit);
    format!(
        "{} {name} {commit} {:?} ({})",
        g.repository, g.title, g.author
    )
}

pub fn runs(runs: &[pb::Run]) -> String {
    let mut out = format!(
        "{:<10} {:<24} {:<10} {:>7} {:>10}  SOURCE\n",
        "RUN", "PIPELINE", "STATUS", "STAGES", "TIME"
    );
    for r in runs {
        let done = r.stages.iter().filter(|s| s.status == "succeeded").count();
        let took = if r.finished_ms > 0 {
            duration_ms(r.finished_ms - r.created_ms)
        } else {
            "-".into()
        };
        let source = match &r.git {
            Some(g) => git(g),
            None => r.trigger.clone(),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<24} {:<10} {:>7} {:>10}  {source}",
            r.id,
            r.pipeline,
            r.status,
            format!("{done}/{}", r.stages.len()),
            took
        );
    }
    out
}

fn bytes(b: u64) -> String {
    const GI: f64 = (1u64 << 30) as f64;
    const MI: f64 = (1u64 << 20) as f64;
    if b as f64 >= GI {
        format!("{:.1}Gi", b as f64 / GI)
    } else {
        format!("{:.0}Mi", b as f64 / MI)
    }
}

pub fn nodes(nodes: &[pb::Node]) -> String {
    let mut out = format!(
        "{:<16} {:<6} {:>15} {:>17} {:>6} {:>6} {:>9}  {}\n",
        "NODE", "STATUS", "CPU RESERVED", "MEMORY RESERVED", "TASKS", "CPU%", "MEM USED", "LABELS"
    );
    for n in nodes {
        let mut labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let _ = writeln!(
            out,
            "{:<16} {:<6} {:>15} {:>17} {:>6} {:>6.1} {:>9}  {}",
            n.id,
            n.status,
            format!("{}/{}m", n.reserved_cpu_millis, n.cpu_millis),
            format!(
                "{}/{}",
                bytes(n.reserved_memory_bytes),
                bytes(n.memory_bytes)
            ),
            n.allocations,
            n.cpu_percent,
            bytes(n.memory_used_bytes),
            labels.join(",")
        );
        for g in &n.gpus {
            let reserved = if g.whole_reserved {
                "reserved whole".to_string()
            } else if g.shares > 0 {
                format!(
                    "{} share{} {}",
                    g.shares,
                    if g.shares == 1 { "" } else { "s" },
                    bytes(g.shared_memory_reserved_bytes)
                )
            } else {
                "free".to_string()
            };
            let links = if g.nvlink_peers.is_empty() {
                String::new()
            } else {
                format!(
                    "  nvlink {}",
                    g.nvlink_peers
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            };
            let _ = writeln!(
                out,
                "  gpu{:<2} {:<34} util {:>3.0}%  mem {:>7}/{:<7} {:>3.0}°C {:>4.0}W  {}{}{}",
                g.index,
                g.model,
                g.utilization_percent,
                bytes(g.memory_used_bytes),
                bytes(g.memory_bytes),
                g.temperature_celsius,
                g.power_watts,
                reserved,
                links,
                if g.simulated && !g.model.contains("simulated") {
                    "  (simulated)"
                } else {
                    ""
                }
            );
        }
    }
    out
}

/// A time in ms since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC); `-` for none.
pub fn clock_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let (year, month, day, h, m, sec) = kiln_api::units::utc(ms / 1000);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{sec:02}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod clock_tests {
    #[test]
    fn clock() {
        assert_eq!(super::clock_ms(0), "-");
        assert_eq!(super::clock_ms(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::clock_ms(1_796_178_645_000), "2026-12-02 02:30:45");
    }
}
