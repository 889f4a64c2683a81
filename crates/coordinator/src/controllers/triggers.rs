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
//! run supersedes an older one's and never the other way round. A push that still cannot
//! start after [`GIVE_UP`] (its commit gone from the remote, its credentials revoked) is
//! started as a failed run with the reason, so that it does not hold the ones behind it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_api::git::{GitRef, ZERO_COMMIT, filter, skip_requested};
use kiln_api::gitcmd::Caches;
use kiln_api::pb;
use kiln_api::spec::DeployStage;
use kiln_api::validate::parse_pipeline;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, now_ms};

/// How many agents are asked to fetch a push's commit while the leader reads it.
const MAX_PREFETCH_NODES: usize = 32;

/// The most a pipeline or service file read from a commit may hold.
const MAX_PIPELINE_BYTES: u64 = 1 << 20;
use crate::state::{
    Command, GitInfo, Push, PushOutcome, PushSource, PushStarted, PushStatus, Repository,
    RepositoryChanged,
};

/// The first retry of a push that could not start; doubled each time, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a push keeps being retried before it is failed.
const GIVE_UP: Duration = Duration::from_secs(600);

/// A push that failed to start: when it may be tried again, the wait before that, and when
/// it first failed.
#[derive(Clone, Copy)]
struct Retry {
    at: Instant,
    wait: Duration,
    since: Instant,
}

type Backoff = Arc<Mutex<HashMap<u64, Retry>>>;

/// Marks a repository busy while its pushes are being started, and free again however that
/// ends (a panic included).
struct Busy {
    set: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl Busy {
    fn claim(set: &Arc<Mutex<HashSet<String>>>, name: &str) -> Option<Busy> {
        lock(set).insert(name.to_string()).then(|| Busy {
            set: set.clone(),
            name: name.to_string(),
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.name);
    }
}

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
        let received = received(&core);
        {
            // Forget the retries of pushes started (or forgotten) meanwhile.
            let waiting: HashSet<u64> = received
                .iter()
                .flat_map(|(_, ps)| ps)
                .map(|p| p.id)
                .collect();
            lock(&backoff).retain(|id, _| waiting.contains(id));
        }
        for (repo, pushes) in received {
            let Some(claim) = Busy::claim(&busy, &repo.name) else {
                continue;
            };
            let (core, caches, backoff) = (core.clone(), caches.clone(), backoff.clone());
            tokio::spawn(async move {
                let _claim = claim;
                for push in pushes {
                    let retry = lock(&backoff).get(&push.id).copied();
                    if retry.is_some_and(|r| r.at > Instant::now()) {
                        // Its turn has not come: younger pushes wait behind it.
                        break;
                    }
                    if !start_one(&core, &caches, &repo, &push, retry, &backoff).await {
                        break;
                    }
                }
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
    retry: Option<Retry>,
    backoff: &Backoff,
) -> bool {
    let outcome = match outcome(core, caches, repo, push).await {
        Ok(o) => o,
        Err(error) if retry.is_some_and(|r| r.since.elapsed() >= GIVE_UP) => {
            let reason = format!("not started within {} s: {error}", GIVE_UP.as_secs());
            PushOutcome::Fail {
                pipeline: repo.name.clone(),
                reason,
                git: git_info(repo, push, String::new(), String::new()),
            }
        }
        Err(error) => {
            tracing::warn!(push = push.id, repository = %repo.name, %error, "push not started yet");
            let now = Instant::now();
            let next = match retry {
                Some(r) => Retry {
                    wait: (r.wait * 2).min(MAX_RETRY),
                    at: now + (r.wait * 2).min(MAX_RETRY),
                    since: r.since,
                },
                None => Retry {
                    at: now + FIRST_RETRY,
                    wait: FIRST_RETRY,
                    since: now,
                },
            };
            lock(backoff).insert(push.id, next);
            // Shown on the push; written only when it says something new.
            if push.error.as_deref() != Some(error.as_str()) {
                let command = Command::PushFailed {
                    push: push.id,
                    error,
                };
                let _ = core.write::<RepositoryChanged>(command).await;
            }
            return false;
        }
    };
    let command = Command::StartPush {
        push: push.id,
        outcome,
        now_ms: now_ms(),
    };
    match core.write::<PushStarted>(command).await {
        Ok(started) => {
            lock(backoff).remove(&push.id);
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

fn git_info(repo: &Repository, push: &Push, author: String, message: String) -> GitInfo {
    GitInfo {
        repository: repo.name.clone(),
        url: repo.url.clone(),
        git_ref: push.git_ref.clone(),
        commit: push.after.clone(),
        author,
        title: message.lines().next().unwrap_or_default().to_string(),
    }
}

/// What a push starts. `Err` only for what may pass (the remote or the disk failing).
async fn outcome(
    core: &Core,
    caches: &Caches,
    repo: &Repository,
    push: &Push,
) -> Result<PushOutcome, String> {
    let step = |what: &'static str| move |e: kiln_api::gitcmd::GitError| format!("{what}: {e}");
    let cache = caches
        .reader(&repo.name, &repo.url, repo.credentials.as_deref())
        .await
        .map_err(step("opening the cached clone"))?;
    let commit = push.after.as_str();
    // The agents fetch it too, meanwhile: their stages' checkouts find it there.
    core.sessions.prefetch(
        &pb::Checkout {
            repository: repo.name.clone(),
            url: repo.url.clone(),
            commit: commit.to_string(),
            credentials: repo.credentials.clone().unwrap_or_default(),
        },
        MAX_PREFETCH_NODES,
    );
    cache
        .fetch(&repo.url, commit)
        .await
        .map_err(|e| format!("fetching {commit} from {}: {e}", repo.url))?;
    let (author, message) = cache
        .commit_info(commit)
        .await
        .map_err(step("reading the commit"))?;
    let git = git_info(repo, push, author, message.clone());
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
    let read = cache.show(commit, file, MAX_PIPELINE_BYTES).await;
    let Some(bytes) = read.map_err(step("reading the pipeline file"))? else {
        return Ok(fail(format!("{file}: not found at commit {commit}")));
    };
    let Ok(yaml) = String::from_utf8(bytes) else {
        return Ok(fail(format!("{file}: not UTF-8 text at commit {commit}")));
    };
    let name = file.to_string();
    let parsed = tokio::task::spawn_blocking(move || parse_pipeline(&name, &yaml))
        .await
        .map_err(|e| format!("checking the pipeline: {e}"))?;
    let mut pipeline = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(fail(format!("{e} (at commit {commit})"))),
    };
    if !manual {
        // Unknown (a new ref, or a `before` the remote no longer has): no path filter.
        let changed = match push.before.as_str() {
            ZERO_COMMIT => None,
            before => cache.changed(before, commit).await.ok(),
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
            let read = cache.show(commit, path, MAX_PIPELINE_BYTES).await;
            match read.map_err(step("reading a service file"))? {
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
    if let Err(e) = crate::api::client::complete(core, &mut pipeline, file, files) {
        return Ok(fail(e.to_string()));
    }
    Ok(PushOutcome::Run {
        pipeline: Box::new(pipeline),
        git,
    })
}
