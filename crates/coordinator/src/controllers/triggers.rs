//! The trigger loop: received pushes become runs.
//!
//! A push is recorded through Raft the moment a webhook or a poll sees it
//! (`state::repositories`); this loop, on the leader, starts each one: it fetches the commit
//! into the coordinator's cached clone of the repository, reads the pipeline file at that
//! commit, works out the changed paths, applies `[skip ci]` and the pipeline's `on:`
//! filters, reads the service files its deploy stages name, and proposes
//! [`Command::StartPush`] with the outcome. A remote that does not answer leaves the push
//! received, its error shown on it, and it is tried again with a growing delay; a new
//! leader finds it received and starts it, once (the state makes starting idempotent).
//!
//! The pushes of one repository are started one at a time, oldest first, so a newer push's
//! run supersedes an older one's and never the other way round.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_api::git::{GitRef, ZERO_COMMIT, filter, skip_requested};
use kiln_api::gitcmd::Caches;
use kiln_api::spec::DeployStage;
use kiln_api::validate::parse_pipeline;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, now_ms};
use crate::state::{
    Command, GitInfo, Push, PushOutcome, PushSource, PushStarted, PushStatus, Repository,
    RepositoryChanged,
};

/// The first retry of a push that could not start; doubled each time, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// When each push that failed to start may be tried again, and after how long a wait.
type Backoff = Arc<Mutex<HashMap<u64, (Instant, Duration)>>>;

pub async fn run(core: Arc<Core>, dir: PathBuf, shutdown: CancellationToken) {
    let caches = Arc::new(Caches::new(dir));
    let backoff: Backoff = Arc::default();
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut applied = core.state.subscribe();
    let mut tick = tokio::time::interval(FIRST_RETRY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        if !core.is_leader() {
            continue;
        }
        for (repo, pushes) in received(&core) {
            if !lock(&busy).insert(repo.name.clone()) {
                continue;
            }
            let (core, caches, backoff, busy) =
                (core.clone(), caches.clone(), backoff.clone(), busy.clone());
            tokio::spawn(async move {
                for push in pushes {
                    let due = lock(&backoff).get(&push.id).map(|(at, _)| *at);
                    if due.is_some_and(|at| at > Instant::now()) {
                        // Its turn has not come: younger pushes wait behind it.
                        break;
                    }
                    if !start_one(&core, &caches, &repo, &push, &backoff).await {
                        break;
                    }
                }
                lock(&busy).remove(&repo.name);
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every repository's received pushes, oldest first.
fn received(core: &Core) -> Vec<(Repository, Vec<Push>)> {
    let state = core.state.read();
    let mut by_repo: BTreeMap<String, Vec<Push>> = BTreeMap::new();
    for p in state.pushes.values() {
        if p.status == PushStatus::Received {
            by_repo
                .entry(p.repository.clone())
                .or_default()
                .push(p.clone());
        }
    }
    by_repo
        .into_iter()
        .filter_map(|(name, pushes)| Some((state.repositories.get(&name)?.clone(), pushes)))
        .collect()
}

/// Starts one push; `false` when it could not be (it waits for its retry).
async fn start_one(
    core: &Core,
    caches: &Caches,
    repo: &Repository,
    push: &Push,
    backoff: &Backoff,
) -> bool {
    let outcome = match outcome(core, caches, repo, push).await {
        Ok(o) => o,
        Err(error) => {
            tracing::warn!(push = push.id, repository = %repo.name, %error, "push not started yet");
            {
                let mut b = lock(backoff);
                let wait = b
                    .get(&push.id)
                    .map_or(FIRST_RETRY, |(_, w)| (*w * 2).min(MAX_RETRY));
                b.insert(push.id, (Instant::now() + wait, wait));
            }
            let command = Command::PushFailed {
                push: push.id,
                error,
            };
            let _ = core.write::<RepositoryChanged>(command).await;
            return false;
        }
    };
    lock(backoff).remove(&push.id);
    let command = Command::StartPush {
        push: push.id,
        outcome,
        now_ms: now_ms(),
    };
    match core.write::<PushStarted>(command).await {
        Ok(started) => {
            tracing::info!(push = push.id, repository = %repo.name, run = ?started.run, "push started");
            if !started.kills.is_empty() {
                let state = core.state.read();
                core.sessions.kill(&state, &started.kills);
            }
            true
        }
        Err(e) => {
            tracing::debug!(push = push.id, error = %e, "push start not committed");
            false
        }
    }
}

/// What a push starts. `Err` only for what may pass (the remote or the disk failing).
async fn outcome(
    core: &Core,
    caches: &Caches,
    repo: &Repository,
    push: &Push,
) -> Result<PushOutcome, String> {
    let cache = caches
        .get(&repo.name, repo.credentials.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let commit = push.after.as_str();
    cache
        .fetch(&repo.url, commit)
        .await
        .map_err(|e| format!("fetching {commit} from {}: {e}", repo.url))?;
    let (author, message) = cache.commit_info(commit).await.map_err(|e| e.to_string())?;
    let git = GitInfo {
        repository: repo.name.clone(),
        git_ref: push.git_ref.clone(),
        commit: commit.to_string(),
        author,
        title: message.lines().next().unwrap_or_default().to_string(),
    };
    let manual = matches!(push.source, PushSource::Manual { .. });
    if !manual && let Some(reason) = skip_requested(&message) {
        return Ok(PushOutcome::Skip { reason });
    }
    let file = repo.pipeline.as_str();
    let fail = |reason: String| PushOutcome::Fail {
        pipeline: repo.name.clone(),
        reason,
        git: git.clone(),
    };
    let Some(bytes) = cache.show(commit, file).await.map_err(|e| e.to_string())? else {
        return Ok(fail(format!("{file}: not found at commit {commit}")));
    };
    let Ok(yaml) = String::from_utf8(bytes) else {
        return Ok(fail(format!("{file}: not UTF-8 text at commit {commit}")));
    };
    let name = file.to_string();
    let parsed = tokio::task::spawn_blocking(move || parse_pipeline(&name, &yaml))
        .await
        .map_err(|e| e.to_string())?;
    let mut pipeline = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(fail(format!("{e} (at commit {commit})"))),
    };
    if !manual {
        let changed = match push.before.as_str() {
            ZERO_COMMIT => None,
            before if cache.has(before).await => Some(
                cache
                    .changed(before, commit)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        let git_ref = GitRef::parse(&push.git_ref);
        if let Some(reason) = filter(pipeline.on.as_ref(), &git_ref, changed.as_deref()) {
            return Ok(PushOutcome::Skip { reason });
        }
    }
    // The service files its deploy stages name, from the same commit (paths from the root).
    let mut files = HashMap::new();
    for stage in &pipeline.stages {
        if let Some(DeployStage::Service { file: path, .. }) = &stage.deploy {
            match cache.show(commit, path).await.map_err(|e| e.to_string())? {
                Some(text) => {
                    files.insert(path.clone(), String::from_utf8_lossy(&text).into_owned());
                }
                None => {
                    let field = format!("{file}: stages.{}.deploy.service", stage.name);
                    return Ok(fail(format!(
                        "{field}: {path:?} not found at commit {commit}"
                    )));
                }
            }
        }
    }
    let checked = crate::api::service_files::attach(&mut pipeline, file, files)
        .and_then(|()| crate::api::client::check_gpu_shares(core, &pipeline, file));
    if let Err(e) = checked {
        return Ok(fail(e.to_string()));
    }
    Ok(PushOutcome::Run {
        pipeline: Box::new(pipeline),
        git,
    })
}
