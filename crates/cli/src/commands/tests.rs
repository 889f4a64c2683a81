//! `kiln tests RUN` (a run's test results) and `kiln rerun RUN [--failed]`.

use std::fmt::Write;

use kiln_api::pb;

use super::read::print_json;
use crate::client::Client;
use crate::error::CliError;
use crate::render::duration_ms;

pub async fn report(
    client: &mut Client,
    run_id: String,
    slowest: usize,
    json: bool,
) -> Result<(), CliError> {
    let req = pb::GetTestReportRequest { run_id };
    let report = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.get_test_report(req).await }
        })
        .await?;
    if json {
        print_json(&report);
    } else {
        print!("{}", render(&report, slowest));
    }
    Ok(())
}

pub async fn rerun(
    client: &mut Client,
    run_id: String,
    failed_only: bool,
    follow: bool,
    json: bool,
) -> Result<(), CliError> {
    let req = pb::RerunRunRequest {
        run_id,
        failed_only,
        request_id: super::run::new_request_id(),
    };
    let reply = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.rerun_run(req).await }
        })
        .await?;
    if follow {
        if !json {
            eprintln!("{} submitted", reply.run_id);
        }
        return super::run::follow_to_end(client, reply.run_id, json)
            .await
            .map(|_| ());
    }
    if json {
        print_json(&reply);
    } else {
        println!("{}", reply.run_id);
    }
    Ok(())
}

/// The report for a terminal: per suite, its shards, then the slowest, failed and flaky
/// tests.
pub fn render(r: &pb::TestReport, slowest: usize) -> String {
    let mut out = String::new();
    if r.suites.is_empty() {
        let _ = writeln!(out, "{}: no stage with tests:", r.run_id);
    }
    for s in &r.suites {
        let counts: Vec<String> = ["passed", "flaky", "failed", "errored", "skipped", "not_run"]
            .iter()
            .filter_map(|k| s.counts.get(*k).map(|n| format!("{n} {k}")))
            .collect();
        let _ = writeln!(
            out,
            "{} / {}  split {}  {}  imbalance {:.2}",
            r.run_id,
            s.stage,
            s.split,
            if s.listed {
                counts.join(", ")
            } else {
                "not listed yet".into()
            },
            s.imbalance
        );
        let _ = writeln!(
            out,
            "  {:<7} {:<10} {:<16} {:>9} {:>6} {:>8}",
            "SHARD", "STATUS", "NODE", "WALL", "TESTS", "ATTEMPTS"
        );
        for k in &s.shards {
            let _ = writeln!(
                out,
                "  {:<7} {:<10} {:<16} {:>9} {:>6} {:>8}",
                k.index,
                k.status,
                if k.node.is_empty() { "-" } else { &k.node },
                duration_ms(k.wall_ms),
                k.tests,
                k.attempts
            );
        }
        let top: Vec<&pb::TestCaseReport> = s
            .tests
            .iter()
            .filter(|t| !t.runs.is_empty())
            .take(slowest)
            .collect();
        if !top.is_empty() {
            let _ = writeln!(out, "  slowest:");
            for t in top {
                let _ = writeln!(out, "    {:>9}  {}", duration_ms(t.time_ms as i64), t.id);
            }
        }
        for (title, verdicts) in [
            ("failed", &["failed", "errored", "not_run"][..]),
            ("flaky", &["flaky"][..]),
        ] {
            let tests: Vec<&pb::TestCaseReport> = s
                .tests
                .iter()
                .filter(|t| verdicts.contains(&t.verdict.as_str()))
                .collect();
            if tests.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  {title}:");
            for t in tests {
                let runs = t
                    .runs
                    .iter()
                    .map(|r| r.outcome.as_str())
                    .collect::<Vec<_>>()
                    .join(" → ");
                let _ = writeln!(out, "    {}  [{}]  {}", t.id, t.verdict, runs);
                if !t.message.is_empty() {
                    let _ = writeln!(out, "        {}", t.message);
                }
            }
        }
    }
    out
}
