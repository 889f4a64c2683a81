//! No process task outlives its agent's knowledge of it.
//!
//! A process task runs in a process group of its own, so it survives its agent being killed
//! (`kill -9`, a crash, an OOM kill). The agent writes each one's process group and start
//! time in its attempt directory (`process`) when it starts it, and deletes that file when
//! the task ends. An agent that starts and finds such a file finds a task its previous life
//! left running: it kills that process group (after checking, by its start time, that the
//! id was not reused), before it registers. It also kills any process still working in one
//! of its task directories, for a task killed between its start and its record. The coordinator then hears that the attempt was
//! lost (its log exists, so it is not run a second time here) and runs it again, so an
//! orphan never runs while its task runs elsewhere.
//!
//! Adopting them instead (keeping their output and exit code) would need a supervisor that
//! outlives the agent; containers get that from Docker and are adopted.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

const FILE: &str = "process";

/// The start time of `pid` in clock ticks after boot (`/proc/PID/stat`, field 22).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Records that the process group `pid` runs the task of `attempt_dir`.
pub fn record(attempt_dir: &Path, pid: u32) {
    let pid = pid as i32;
    if let Some(start) = start_time(pid) {
        let _ = std::fs::write(attempt_dir.join(FILE), format!("{pid} {start}\n"));
    }
}

/// The task of `attempt_dir` ended: nothing to kill there any more.
pub fn forget(attempt_dir: &Path) {
    let _ = std::fs::remove_file(attempt_dir.join(FILE));
}

/// Kills every process group a previous agent recorded under `tasks` that still runs, and
/// every process still working in one of its work directories (one killed between its start
/// and its record); answers how many.
pub fn sweep(tasks: &Path) -> usize {
    let mut killed = working_in(tasks);
    for record in find(tasks, 6) {
        let Some((pid, start)) = std::fs::read_to_string(&record).ok().and_then(|t| {
            let mut it = t.split_whitespace();
            Some((
                it.next()?.parse::<i32>().ok()?,
                it.next()?.parse::<u64>().ok()?,
            ))
        }) else {
            continue;
        };
        if start_time(pid) == Some(start) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            tracing::warn!(pid, record = %record.display(), "killed a process task the previous agent left running");
            killed += 1;
        }
        let _ = std::fs::remove_file(&record);
    }
    killed
}

/// Kills the process group of every process whose working directory is under `tasks`.
fn working_in(tasks: &Path) -> usize {
    let Ok(tasks) = tasks.canonicalize() else {
        return 0;
    };
    let me = std::process::id() as i32;
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let in_tasks =
            std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&tasks));
        if in_tasks {
            let group =
                nix::unistd::getpgid(Some(Pid::from_raw(pid))).unwrap_or(Pid::from_raw(pid));
            let _ = killpg(group, Signal::SIGKILL);
            tracing::warn!(
                pid,
                "killed a process the previous agent left working in a task's directory"
            );
            killed += 1;
        }
    }
    killed
}

fn find(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        // An attempt's `work/` (beside its `output.log`) is the task's own: not looked in.
        let work_dir =
            path.file_name().is_some_and(|n| n == "work") && dir.join("output.log").exists();
        if is_dir && depth > 0 && !work_dir {
            found.extend(find(&path, depth - 1));
        } else if !is_dir && path.file_name().is_some_and(|n| n == FILE) {
            found.push(path);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_group_that_still_runs_is_killed_and_a_reused_id_is_not() {
        let tasks = tempfile::tempdir().unwrap();
        let attempt = tasks.path().join("run-1/a/1");
        std::fs::create_dir_all(&attempt).unwrap();
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        record(&attempt, child.id());
        // A record whose start time does not match is a reused id: left alone.
        let other = tasks.path().join("run-2/b/1");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join(FILE), format!("{} 1\n", std::process::id())).unwrap();
        assert_eq!(sweep(tasks.path()), 1);
        let status = child.wait().unwrap();
        // And one that was never recorded, but works in a task's directory.
        let work = tasks.path().join("run-3/c/1/work");
        std::fs::create_dir_all(&work).unwrap();
        let mut unrecorded = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&work)
            .process_group(0)
            .spawn()
            .unwrap();
        assert_eq!(sweep(tasks.path()), 1);
        assert_eq!(unrecorded.wait().unwrap().signal(), Some(9));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        assert!(!attempt.join(FILE).exists() && !other.join(FILE).exists());
        assert_eq!(sweep(tasks.path()), 0);
    }
}
