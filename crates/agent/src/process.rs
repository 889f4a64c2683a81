//! The process driver: runs a task as a child process in its own process group, with its
//! output in the task's log file, and stops the whole group on timeout or cancel.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kiln_api::pb;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::oneshot;

/// How long a cancelled task gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub succeeded: bool,
    pub exit_code: Option<i32>,
    pub message: String,
}

/// A started task process, and (for a task with secrets) the thread that copies its output
/// into the log with every secret value masked.
pub struct Spawned {
    pub child: tokio::process::Child,
    copier: Option<std::thread::JoinHandle<()>>,
}

impl Spawned {
    /// Waits (briefly) until the output the process wrote is in the log.
    pub async fn flushed(copier: Option<std::thread::JoinHandle<()>>) {
        if let Some(h) = copier {
            let joined = tokio::task::spawn_blocking(move || {
                let _ = h.join();
            });
            let _ = tokio::time::timeout(Duration::from_secs(2), joined).await;
        }
    }

    pub fn into_parts(self) -> (tokio::process::Child, Option<std::thread::JoinHandle<()>>) {
        (self.child, self.copier)
    }
}

/// Starts the task's process. Returns the child, or the reason it could not start.
///
/// Its output goes straight into the log file, except for a task with secrets: then through
/// a pipe and a thread that masks each value (`redact.rs`) before it is written.
pub fn spawn(a: &pb::Assignment, work_dir: &Path, log: &Path) -> Result<Spawned, String> {
    let file =
        std::fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let (out, copier) = output_into(file, &a.secrets)?;
    let child = spawn_with_output(a, work_dir, out)?;
    Ok(Spawned { child, copier })
}

/// What a task's output is written to: `file` itself, or (for a task with secrets) a pipe
/// whose far end a thread copies into `file` with every value masked. Join the thread
/// ([`Spawned::flushed`]) once the process is gone to have all of its output.
pub fn output_into(
    file: std::fs::File,
    secrets: &std::collections::HashMap<String, String>,
) -> Result<(std::os::fd::OwnedFd, Option<std::thread::JoinHandle<()>>), String> {
    if secrets.is_empty() {
        return Ok((std::os::fd::OwnedFd::from(file), None));
    }
    let (reader, writer) = std::io::pipe().map_err(|e| format!("a pipe for the output: {e}"))?;
    let redactor = crate::redact::Redactor::new(secrets.values());
    let copier = std::thread::spawn(move || copy_redacted(reader, file, redactor));
    Ok((std::os::fd::OwnedFd::from(writer), Some(copier)))
}

fn copy_redacted(
    mut reader: std::io::PipeReader,
    mut file: std::fs::File,
    mut redactor: crate::redact::Redactor,
) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let _ = file.write_all(&redactor.push(&buf[..n]));
            }
        }
    }
    let _ = file.write_all(&redactor.finish());
}

/// Runs the command with stdout and stderr both on `out` (the log file, or the pipe).
fn spawn_with_output(
    a: &pb::Assignment,
    work_dir: &Path,
    out: std::os::fd::OwnedFd,
) -> Result<tokio::process::Child, String> {
    let err = out.try_clone().map_err(|e| format!("log output: {e}"))?;
    let mut cmd = if !a.shell.is_empty() {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(&a.shell);
        c
    } else {
        let (program, args) = a.argv.split_first().ok_or("empty command")?;
        let mut c = Command::new(program);
        c.args(args);
        c
    };
    cmd.current_dir(work_dir)
        .envs(&a.env)
        .envs(&a.secrets)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    start(
        cmd,
        if a.shell.is_empty() {
            &a.argv[0]
        } else {
            "/bin/sh"
        },
    )
}

/// Starts `sh -c script` in `work_dir` with `env`, its output going where it is told (the
/// test loop runs a suite's `list:` and `run:` commands this way).
pub fn spawn_shell<'a>(
    script: &str,
    env: impl IntoIterator<Item = (&'a String, &'a String)>,
    work_dir: &Path,
    stdout: impl Into<Stdio>,
    stderr: impl Into<Stdio>,
) -> Result<tokio::process::Child, String> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir(work_dir)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    start(cmd, "/bin/sh")
}

/// Spawns in a process group of its own, so that the whole group can be stopped.
fn start(mut cmd: Command, program: &str) -> Result<tokio::process::Child, String> {
    cmd.process_group(0).kill_on_drop(false);
    cmd.spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))
}

/// Waits for the child, enforcing the timeout and honouring a kill request. The whole process
/// group is killed once the main process is gone, so no stray children outlive the task.
pub async fn wait(
    mut child: tokio::process::Child,
    timeout: Duration,
    kill: &mut oneshot::Receiver<String>,
) -> Outcome {
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let signal_group = |sig: Signal| {
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, sig);
        }
    };
    let mut stop_reason: Option<String> = None;
    let status = tokio::select! {
        s = child.wait() => s,
        _ = tokio::time::sleep(timeout) => {
            stop_reason = Some(format!("timed out after {}", humanize(timeout)));
            signal_group(Signal::SIGKILL);
            child.wait().await
        }
        reason = kill => {
            stop_reason = Some(reason.unwrap_or_else(|_| "killed".into()));
            signal_group(Signal::SIGTERM);
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    signal_group(Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    signal_group(Signal::SIGKILL);
    match (status, stop_reason) {
        (_, Some(reason)) => Outcome {
            succeeded: false,
            exit_code: None,
            message: reason,
        },
        (Ok(s), None) => match s.code() {
            Some(0) => Outcome {
                succeeded: true,
                exit_code: Some(0),
                message: String::new(),
            },
            Some(code) => Outcome {
                succeeded: false,
                exit_code: Some(code),
                message: format!("exited with code {code}"),
            },
            None => {
                use std::os::unix::process::ExitStatusExt;
                let sig = s.signal().unwrap_or(0);
                Outcome {
                    succeeded: false,
                    exit_code: None,
                    message: format!("killed by signal {sig}"),
                }
            }
        },
        (Err(e), None) => Outcome {
            succeeded: false,
            exit_code: None,
            message: format!("wait failed: {e}"),
        },
    }
}

fn humanize(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(shell: &str) -> pb::Assignment {
        pb::Assignment {
            task_id: "run-1/a".into(),
            attempt: 1,
            shell: shell.into(),
            ..Default::default()
        }
    }

    async fn run(shell: &str, timeout: Duration) -> (Outcome, String) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let child = spawn(&assignment(shell), dir.path(), &log).unwrap().child;
        let (_tx, mut rx) = oneshot::channel();
        let outcome = wait(child, timeout, &mut rx).await;
        (outcome, std::fs::read_to_string(log).unwrap())
    }

    #[tokio::test]
    async fn exit_codes_and_output_are_captured() {
        let (ok, out) = run("echo hello; echo oops >&2", Duration::from_secs(10)).await;
        assert!(ok.succeeded);
        assert_eq!(out, "hello\noops\n");
        let (failed, _) = run("exit 3", Duration::from_secs(10)).await;
        assert_eq!((failed.succeeded, failed.exit_code), (false, Some(3)));
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let (outcome, _) = run(&script, Duration::from_millis(300)).await;
        assert_eq!(outcome.message, "timed out after 300ms");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was in the group: SIGKILL reaches it (delivery is asynchronous, so
        // wait against a deadline for it to be gone, or a zombie waiting for init).
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive() && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert!(!alive(), "background child {pid} survived the timeout");
    }

    #[tokio::test]
    async fn a_kill_request_stops_the_task_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let child = spawn(&assignment("sleep 30"), dir.path(), &log)
            .unwrap()
            .child;
        let (tx, mut rx) = oneshot::channel();
        tx.send("run cancelled".to_string()).unwrap();
        let outcome = wait(child, Duration::from_secs(60), &mut rx).await;
        assert_eq!(
            outcome,
            Outcome {
                succeeded: false,
                exit_code: None,
                message: "run cancelled".into()
            }
        );
    }

    #[tokio::test]
    async fn a_task_with_secrets_gets_them_and_its_log_masks_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let mut a = assignment("echo \"token=$API_TOKEN\"; printf %s \"$API_TOKEN\" | wc -c");
        a.secrets.insert("API_TOKEN".into(), "s3cr3t-value".into());
        let (child, copier) = spawn(&a, dir.path(), &log).unwrap().into_parts();
        let (_tx, mut rx) = oneshot::channel();
        let outcome = wait(child, Duration::from_secs(10), &mut rx).await;
        Spawned::flushed(copier).await;
        assert!(outcome.succeeded);
        let out = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            out.trim_end(),
            "token=***\n12",
            "the task saw all 12 bytes: {out}"
        );
    }

    #[tokio::test]
    async fn argv_commands_run_without_a_shell_and_bad_programs_fail_to_spawn() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let a = pb::Assignment {
            argv: vec!["/definitely/not/here".into()],
            ..Default::default()
        };
        let err = spawn(&a, dir.path(), &log).err().unwrap();
        assert!(err.contains("cannot start /definitely/not/here"), "{err}");
    }
}
