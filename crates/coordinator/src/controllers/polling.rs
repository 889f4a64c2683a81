//! Polling as reconciliation: no push is missed because its webhook was.
//!
//! Forges do not redeliver a webhook that failed, so the leader also asks every repository's
//! remote for its heads (`git ls-remote`) at the repository's interval, and records a push
//! for each head that differs from the one last seen — a webhook that did arrive recorded
//! its head already, so a poll after it finds nothing new, and a webhook after the poll is
//! a duplicate (both are deduplicated in the state by repository, ref and commit). A head
//! that disappeared is recorded as a deletion, which starts nothing.
//!
//! A poll that fails is shown on the repository (`kiln repo show`) until one succeeds;
//! only changes of that error go through Raft.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_api::git::ZERO_COMMIT;
use kiln_api::gitcmd::Git;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, now_ms};
use crate::state::{Command, PushRecorded, PushSource, Repository, RepositoryChanged};

/// How often the loop looks for repositories due a poll.
const TICK: Duration = Duration::from_millis(250);

pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    // Repositories whose poll is still out: one at a time each (a remote that hangs does
    // not pile up `ls-remote`s).
    let polling: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while super::leader_tick(&core, &mut tick, &shutdown).await {
        let due: Vec<Repository> = {
            let state = core.state.read();
            state
                .repositories
                .values()
                .filter(|r| r.poll_ms > 0)
                .filter(|r| {
                    last.get(&r.name)
                        .is_none_or(|at| at.elapsed() >= Duration::from_millis(r.poll_ms))
                })
                .cloned()
                .collect()
        };
        last.retain(|name, _| core.state.read().repositories.contains_key(name));
        for repo in due {
            if !lock(&polling).insert(repo.name.clone()) {
                continue;
            }
            last.insert(repo.name.clone(), Instant::now());
            let (core, polling) = (core.clone(), polling.clone());
            // One slow remote does not hold up the others.
            tokio::spawn(async move {
                poll(&core, &repo).await;
                lock(&polling).remove(&repo.name);
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls one repository and records what changed.
pub async fn poll(core: &Core, repo: &Repository) {
    let heads = Git::new(repo.credentials.as_deref())
        .ls_remote(&repo.url)
        .await;
    let error = heads.as_ref().err().map(|e| e.to_string());
    if error != repo.poll_error {
        if let Some(e) = &error {
            tracing::warn!(repository = %repo.name, error = %e, "poll failed");
        }
        let command = Command::RepositoryPolled {
            name: repo.name.clone(),
            error,
            now_ms: now_ms(),
        };
        let _ = core.write::<RepositoryChanged>(command).await;
    }
    let Ok(heads) = heads else {
        return;
    };
    let mut changes: Vec<(String, String, String)> = heads
        .iter()
        .filter(|(r, c)| repo.heads.get(*r) != Some(*c))
        .map(|(r, c)| {
            let before = repo.heads.get(r).cloned();
            (
                r.clone(),
                before.unwrap_or_else(|| ZERO_COMMIT.into()),
                c.clone(),
            )
        })
        .collect();
    changes.extend(
        repo.heads
            .iter()
            .filter(|(r, _)| !heads.contains_key(*r))
            .map(|(r, c)| (r.clone(), c.clone(), ZERO_COMMIT.to_string())),
    );
    for (git_ref, before, after) in changes {
        let command = Command::RecordPush {
            repository: repo.name.clone(),
            git_ref: git_ref.clone(),
            before,
            after: after.clone(),
            source: PushSource::Poll,
            now_ms: now_ms(),
        };
        match core.write::<PushRecorded>(command).await {
            Ok(r) if r.created => {
                tracing::info!(repository = %repo.name, %git_ref, %after, push = ?r.push, "push found by polling");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(repository = %repo.name, error = %e, "polled push not recorded")
            }
        }
    }
}
