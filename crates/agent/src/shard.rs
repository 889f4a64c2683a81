//! The test loop of a `tests:` stage's shard: ask the leader for a batch of test ids, run
//! them with the suite's `run:` command, read the JUnit reports it wrote, report one result
//! per id, and ask again — until the answer is empty.
//!
//! ```text
//!   NextTests(batch n) ──► need_list? ──► run `list:` (stdout = ids) ──► NextTests(n, list)
//!        │ ids                                                                 │
//!        ▼                                                                     ▼
//!   write $KILN_TESTS_FILE, remove old reports, run `run:`, read reports, ReportTests(n)
//!        │
//!        └─► n + 1, until the batch is empty: the shard succeeded
//! ```
//!
//! `run:` exiting non-zero is how runners say a test failed, so its exit code is not the
//! shard's: the report is. An id the report says nothing about is errored (the leader
//! retries it like a failure). What fails the shard instead is what no retry of a test
//! would mend: `list:` failing or printing nothing, a report that is not JUnit XML, the
//! stage's timeout, a kill.
//!
//! Calls to the leader go through the agent's [`LeaderClient`], so they follow leader
//! changes; a lost connection is tried again (the calls are idempotent per batch) until the
//! stage's deadline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_api::leader::{CallError, LeaderClient};
use kiln_api::pb;
use kiln_sharding::{ids, junit};
use tokio::sync::oneshot;

use crate::process::{self, Outcome};

/// Runs a shard's test loop to its end.
pub async fn run(
    a: &pb::Assignment,
    spec: &pb::TestsSpec,
    work: &Path,
    log_path: &Path,
    kill: &mut oneshot::Receiver<String>,
    leader: &LeaderClient,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_millis(a.timeout_ms.max(1));
    // Every writer appends: the loop's own lines, `list:`'s errors, `run:`'s output.
    let opened = std::fs::File::create(log_path)
        .and_then(|_| std::fs::OpenOptions::new().append(true).open(log_path));
    let mut log = match opened {
        Ok(f) => f,
        Err(e) => return failed(format!("creating {}: {e}", log_path.display())),
    };
    let shard = Shard {
        a,
        spec,
        work,
        log_path,
        deadline,
    };
    // A shard's calls share the agent's connection to the leader, each bounded on its own:
    // a leader that vanishes mid-call must not hold the shard past its deadline.
    let mut queue = Queue {
        leader: leader.fork().call_timeout(CALL_TIMEOUT),
    };
    match shard.run(&mut queue, &mut log, kill).await {
        Ok(summary) => {
            let _ = writeln!(log, "kiln: {summary}");
            Outcome {
                succeeded: true,
                exit_code: Some(0),
                message: summary,
            }
        }
        Err(outcome) => {
            let _ = writeln!(log, "kiln: {}", outcome.message);
            outcome
        }
    }
}

/// A leader call, abandoned if the task is killed meanwhile.
async fn guard<T>(
    kill: &mut oneshot::Receiver<String>,
    call: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, Outcome> {
    tokio::select! {
        r = call => r.map_err(failed),
        reason = kill => Err(failed(reason.unwrap_or_else(|_| "killed".into()))),
    }
}

fn failed(message: String) -> Outcome {
    Outcome {
        succeeded: false,
        exit_code: None,
        message,
    }
}

struct Shard<'a> {
    a: &'a pb::Assignment,
    spec: &'a pb::TestsSpec,
    work: &'a Path,
    log_path: &'a Path,
    deadline: Instant,
}

impl Shard<'_> {
    async fn run(
        &self,
        queue: &mut Queue,
        log: &mut std::fs::File,
        kill: &mut oneshot::Receiver<String>,
    ) -> Result<String, Outcome> {
        let (mut batch, mut ran, mut failed_runs) = (1u32, 0usize, 0usize);
        let mut list = Vec::new();
        loop {
            let next = guard(kill, queue.next(self.a, batch, &list, self.deadline)).await?;
            if next.need_list {
                if !list.is_empty() {
                    return Err(failed("the leader asked for the list twice".into()));
                }
                list = self.list(log, kill).await?;
                let _ = writeln!(log, "kiln: tests.list printed {} test ids", list.len());
                continue;
            }
            list.clear();
            if next.ids.is_empty() {
                return Ok(format!(
                    "ran {ran} tests in {} batches, {failed_runs} did not pass",
                    batch - 1
                ));
            }
            let _ = writeln!(log, "kiln: batch {batch}: {} tests", next.ids.len());
            let started = Instant::now();
            let results = self.run_batch(batch, &next.ids, kill).await?;
            let tests_ms = results
                .iter()
                .fold(0u64, |sum, r| sum.saturating_add(r.time_ms));
            let overhead_ms = (started.elapsed().as_millis() as u64).saturating_sub(tests_ms);
            ran += results.len();
            failed_runs += results
                .iter()
                .filter(|r| r.outcome != "passed" && r.outcome != "skipped")
                .count();
            guard(
                kill,
                queue.report(self.a, batch, &results, overhead_ms, self.deadline),
            )
            .await?;
            batch += 1;
        }
    }

    /// Records the process group now running for this shard (or that none is), so that a
    /// restarted agent stops what this one left running (`orphans.rs`).
    fn recorded(&self, pid: Option<u32>) {
        if let Some(dir) = self.log_path.parent() {
            match pid {
                Some(pid) => crate::orphans::record(dir, pid),
                None => crate::orphans::forget(dir),
            }
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Runs `list:`; its standard output is the suite.
    async fn list(
        &self,
        log: &mut std::fs::File,
        kill: &mut oneshot::Receiver<String>,
    ) -> Result<Vec<String>, Outcome> {
        let out_path = self.work.join(".kiln-tests.list");
        let file = |p: &Path| {
            std::fs::File::create(p).map_err(|e| failed(format!("{}: {e}", p.display())))
        };
        let stdout = file(&out_path)?;
        let stderr = log
            .try_clone()
            .map_err(|e| failed(format!("log file: {e}")))?;
        let (stderr, copier) = process::output_into(stderr, &self.a.secrets).map_err(failed)?;
        let env = self.a.env.iter().chain(&self.a.secrets);
        let child = process::spawn_shell(&self.spec.list, env, self.work, stdout, stderr)
            .map_err(|e| failed(format!("tests.list: {e}")))?;
        self.recorded(child.id());
        let outcome = process::wait(child, self.remaining(), kill).await;
        process::Spawned::flushed(copier).await;
        self.recorded(None);
        if !outcome.succeeded {
            return Err(Outcome {
                message: format!("tests.list `{}` {}", self.spec.list, outcome.message),
                ..outcome
            });
        }
        let text = std::fs::read_to_string(&out_path)
            .map_err(|e| failed(format!("reading what tests.list printed: {e}")))?;
        let list = ids::parse_list(&text);
        if list.is_empty() {
            return Err(failed(format!(
                "tests.list `{}` printed no test ids",
                self.spec.list
            )));
        }
        Ok(list)
    }

    /// Runs one batch with `run:` and reads its results from the reports.
    async fn run_batch(
        &self,
        batch: u32,
        batch_ids: &[String],
        kill: &mut oneshot::Receiver<String>,
    ) -> Result<Vec<pb::TestOutcome>, Outcome> {
        let list_path = self.work.join(format!(".kiln-tests-{batch}.txt"));
        std::fs::write(&list_path, batch_ids.join("\n") + "\n")
            .map_err(|e| failed(format!("{}: {e}", list_path.display())))?;
        for old in reports(self.work, &self.spec.report) {
            let _ = std::fs::remove_file(old);
        }
        let open_log = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(self.log_path)
                .map_err(|e| failed(format!("log file: {e}")))
        };
        let mut env = self.a.env.clone();
        env.extend(self.a.secrets.clone());
        env.insert("KILN_TESTS_FILE".into(), list_path.display().to_string());
        env.insert("KILN_TESTS_BATCH".into(), batch.to_string());
        let (out, copier) = process::output_into(open_log()?, &self.a.secrets).map_err(failed)?;
        let err = out
            .try_clone()
            .map_err(|e| failed(format!("log file: {e}")))?;
        let child = process::spawn_shell(&self.spec.run, &env, self.work, out, err)
            .map_err(|e| failed(format!("tests.run: {e}")))?;
        self.recorded(child.id());
        let outcome = process::wait(child, self.remaining(), kill).await;
        process::Spawned::flushed(copier).await;
        self.recorded(None);
        if outcome.exit_code.is_none() {
            // Stopped (timeout, kill) or killed by a signal: nothing to believe in a report.
            return Err(Outcome {
                message: format!("tests.run {}", outcome.message),
                ..outcome
            });
        }
        let mut cases = Vec::new();
        let files = reports(self.work, &self.spec.report);
        for path in &files {
            let shown = path.strip_prefix(self.work).unwrap_or(path).display();
            let text = std::fs::read_to_string(path)
                .map_err(|e| failed(format!("tests.report: {shown}: {e}")))?;
            let parsed = junit::parse(&text)
                .map_err(|e| failed(format!("tests.report: {shown}: malformed JUnit XML: {e}")))?;
            cases.extend(parsed);
        }
        let matched = ids::match_cases(batch_ids, &cases);
        let missing = if files.is_empty() {
            format!(
                "tests.run {} and wrote no report matching {:?}",
                if outcome.succeeded {
                    "succeeded".to_string()
                } else {
                    outcome.message.clone()
                },
                self.spec.report
            )
        } else {
            ids::NO_RESULT.to_string()
        };
        Ok(matched
            .results
            .into_iter()
            .map(|r| pb::TestOutcome {
                message: if r.cases == 0 {
                    missing.clone()
                } else {
                    r.message
                },
                id: r.id,
                outcome: r.outcome.as_str().into(),
                time_ms: r.time_ms,
            })
            .collect())
    }
}

/// The files under `work` that the report glob matches, walking only below the glob's
/// literal leading directories.
fn reports(work: &Path, glob: &str) -> Vec<PathBuf> {
    let literal: Vec<&str> = glob
        .split('/')
        .take_while(|p| !p.contains(['*', '?', '[']))
        .collect();
    let literal = &literal[..literal.len().min(glob.split('/').count() - 1)];
    let base = literal
        .iter()
        .fold(work.to_path_buf(), |p, part| p.join(part));
    let mut found = Vec::new();
    let mut dirs = vec![(base, 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < 16 {
                dirs.push((path, depth + 1));
            } else if kind.is_file()
                && let Ok(rel) = path.strip_prefix(work)
                && kiln_api::spec::glob_match(glob, &rel.to_string_lossy())
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The longest one queue call may take before it is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's test queue, followed across leader changes.
struct Queue {
    leader: LeaderClient,
}

impl Queue {
    async fn next(
        &mut self,
        a: &pb::Assignment,
        batch: u32,
        list: &[String],
        deadline: Instant,
    ) -> Result<pb::NextTestsResponse, String> {
        let req = pb::NextTestsRequest {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            batch,
            list: list.to_vec(),
        };
        self.retry(deadline, |mut c| {
            let req = req.clone();
            async move { c.next_tests(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    async fn report(
        &mut self,
        a: &pb::Assignment,
        batch: u32,
        results: &[pb::TestOutcome],
        overhead_ms: u64,
        deadline: Instant,
    ) -> Result<(), String> {
        let req = pb::ReportTestsRequest {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            batch,
            results: results.to_vec(),
            overhead_ms,
        };
        self.retry(deadline, |mut c| {
            let req = req.clone();
            async move { c.report_tests(req).await.map(|_| ()) }
        })
        .await
    }

    /// Calls the leader until it answers, following hints; gives up on an answer that no
    /// retry changes (the attempt is stale, the task unknown) or at the deadline.
    async fn retry<T, F, Fut>(&mut self, deadline: Instant, call: F) -> Result<T, String>
    where
        F: Fn(pb::test_queue_client::TestQueueClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let answer = self
            .leader
            .call(deadline, |channel| {
                call(pb::test_queue_client::TestQueueClient::new(channel))
            })
            .await;
        answer.map_err(|e| match e {
            CallError::Refused(status) => {
                format!("the test queue refused: {}", status.message())
            }
            CallError::Unreachable(last) => {
                format!("the test queue did not answer before the deadline: {last}")
            }
        })
    }
}
