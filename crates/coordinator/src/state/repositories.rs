//! Repositories and the pushes seen on them: git as the source of runs.
//!
//! A push reaches kiln in one of three ways — a forge's webhook, the poll of the remote's
//! branch heads, or `kiln run --repo NAME --ref REF` — and each becomes one [`Push`] through
//! [`Command::RecordPush`](super::Command::RecordPush) before anything else happens, so an
//! acknowledged webhook survives the leader that took it. Webhooks and polls are
//! deduplicated here, by (repository, ref, commit): a webhook racing a poll, a redelivered
//! webhook, or two coordinators polling at once record one push, and so start one run.
//! A manual trigger is never a duplicate of a push (running a commit again by hand is the
//! point); its client request id makes its retries land on the first one.
//!
//! Recording is not starting: the trigger controller reads each received push's pipeline
//! file at its commit, works out what changed, applies the pipeline's `on:` filters and
//! `[skip ci]`, and proposes [`Command::StartPush`](super::Command::StartPush) with the
//! outcome — a run, a reason to start nothing, or a failure (no pipeline file at that
//! commit) that is itself recorded as a failed run. Starting is idempotent: a push starts
//! at most once, whichever leader proposes it and however often.
//!
//! A started run carries its [`GitInfo`]; with `concurrency: { cancel_in_progress: true }`
//! it supersedes the older unfinished runs of its group, whose stages marked
//! `interruptible: false` are let finish.

use std::collections::BTreeMap;

use kiln_api::git::{GitContext, ZERO_COMMIT, expand_group};
use kiln_api::spec::Pipeline;
use serde::{Deserialize, Serialize};

use super::ClusterState;
use super::command::{Kill, PushRecorded, PushStarted, RepositoryChanged, Response};
use super::model::{Run, RunStatus, run_id};

/// How many pushes a repository keeps once started or skipped; older ones are forgotten
/// (the runs they started are not).
pub const MAX_PUSHES_PER_REPOSITORY: usize = 1000;

/// A git remote kiln watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    pub name: String,
    pub url: String,
    /// The pipeline file's path in the repository.
    pub pipeline: String,
    /// Branch glob → environment, in order: the first match decides where a `deploy:` stage
    /// without an environment deploys.
    pub branches: Vec<(String, String)>,
    /// How often the leader polls the remote's heads; 0 never.
    pub poll_ms: u64,
    /// The webhook secret (GitHub / Gitea HMAC key, GitLab token).
    pub secret: String,
    /// A git credential-store file on each node, for a private remote.
    #[serde(default)]
    pub credentials: Option<String>,
    pub created_ms: i64,
    /// Each ref's commit as last seen, by webhook or poll.
    pub heads: BTreeMap<String, String>,
    /// The last poll's failure, until a poll succeeds.
    #[serde(default)]
    pub poll_error: Option<String>,
    #[serde(default)]
    pub polled_ms: Option<i64>,
}

/// Where a push came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushSource {
    Webhook {
        forge: String,
        delivery: Option<String>,
    },
    Poll,
    Manual {
        request_id: String,
    },
}

impl PushSource {
    /// `webhook`, `poll` or `manual`: the trigger of the runs it starts.
    pub fn trigger(&self) -> &'static str {
        match self {
            PushSource::Webhook { .. } => "webhook",
            PushSource::Poll => "poll",
            PushSource::Manual { .. } => "manual",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushStatus {
    /// Recorded; the trigger controller has not started it yet.
    Received,
    Started {
        run: u64,
    },
    /// Started nothing, and why (a filter, `[skip ci]`, the repository removed).
    Skipped {
        reason: String,
    },
}

/// One push of one ref to one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    pub id: u64,
    pub repository: String,
    pub git_ref: String,
    /// The ref's commit before the push (forty zeros when unknown or new).
    pub before: String,
    pub after: String,
    pub source: PushSource,
    pub received_ms: i64,
    pub status: PushStatus,
    /// The last failure to start it (the remote unreachable); it is tried again.
    #[serde(default)]
    pub error: Option<String>,
}

/// What a git-triggered run (and a revision it deployed) was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitInfo {
    pub repository: String,
    /// The remote, as it was when the run started (stages check it out even if the
    /// repository is removed meanwhile).
    #[serde(default)]
    pub url: String,
    pub git_ref: String,
    pub commit: String,
    pub author: String,
    /// The first line of the commit message.
    pub title: String,
}

impl GitInfo {
    /// The branch, for a branch push.
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/")
    }

    pub fn short_commit(&self) -> &str {
        self.commit.get(..7).unwrap_or(&self.commit)
    }
}

/// What the trigger controller made of a received push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PushOutcome {
    Run {
        pipeline: Box<Pipeline>,
        git: GitInfo,
    },
    Skip {
        reason: String,
    },
    /// A run that fails at once, with the reason (no pipeline file at the commit, a pipeline
    /// that does not parse).
    Fail {
        pipeline: String,
        reason: String,
        git: GitInfo,
    },
}

/// The keys a push is known by: `repository ref commit` for a webhook or a poll (and
/// `repository forge delivery` for a webhook that names its delivery); a manual trigger
/// only by its request id, so that it is never a duplicate of a push.
fn dedup_keys(repository: &str, git_ref: &str, after: &str, source: &PushSource) -> Vec<String> {
    match source {
        PushSource::Manual { request_id } => vec![format!("{repository} {request_id}")],
        PushSource::Webhook {
            forge,
            delivery: Some(d),
        } => vec![
            format!("{repository} {git_ref} {after}"),
            format!("{repository} {forge} {d}"),
        ],
        _ => vec![format!("{repository} {git_ref} {after}")],
    }
}

impl ClusterState {
    pub(super) fn add_repository(&mut self, repository: &Repository) -> Response {
        if self.repositories.contains_key(&repository.name) {
            return Response::rejected(format!(
                "repository {:?} already exists (remove it first)",
                repository.name
            ));
        }
        self.repositories
            .insert(repository.name.clone(), repository.clone());
        RepositoryChanged.into()
    }

    /// The repository goes, with its pushes (received ones start nothing) and what they
    /// were known by, so that one added again under the name starts afresh; its runs stay.
    pub(super) fn remove_repository(&mut self, name: &str) -> Response {
        if self.repositories.remove(name).is_none() {
            return Response::rejected(format!("repository {name:?} not found"));
        }
        self.pushes.retain(|_, p| p.repository != name);
        let pushes = &self.pushes;
        self.push_keys.retain(|_, id| pushes.contains_key(id));
        RepositoryChanged.into()
    }

    /// A poll's outcome: the error shown until a poll succeeds.
    pub(super) fn repository_polled(
        &mut self,
        name: &str,
        error: Option<&str>,
        now_ms: i64,
    ) -> Response {
        let Some(repo) = self.repositories.get_mut(name) else {
            return Response::rejected(format!("repository {name:?} not found"));
        };
        repo.poll_error = error.map(str::to_string);
        repo.polled_ms = Some(now_ms);
        RepositoryChanged.into()
    }

    pub(super) fn record_push(
        &mut self,
        repository: &str,
        git_ref: &str,
        before: &str,
        after: &str,
        source: &PushSource,
        now_ms: i64,
    ) -> Response {
        let Some(repo) = self.repositories.get_mut(repository) else {
            return Response::rejected(format!("repository {repository:?} not found"));
        };
        // A poll read the heads before a webhook (or another poll) moved this ref: what it
        // saw is stale, and recording it would make an older commit the newest push.
        let head = repo.heads.get(git_ref).map_or(ZERO_COMMIT, String::as_str);
        if *source == PushSource::Poll && head != before {
            return PushRecorded {
                push: None,
                created: false,
            }
            .into();
        }
        if after == ZERO_COMMIT {
            repo.heads.remove(git_ref);
            return PushRecorded {
                push: None,
                created: false,
            }
            .into();
        }
        // Any key already known makes it the push seen before.
        let keys = dedup_keys(repository, git_ref, after, source);
        if let Some(&push) = keys.iter().find_map(|k| self.push_keys.get(k)) {
            // Seen before (a redelivery, a poll after the webhook, a ref reset to an old
            // commit): nothing starts, but it is the ref's head now.
            if !matches!(source, PushSource::Manual { .. }) {
                repo.heads.insert(git_ref.to_string(), after.to_string());
            }
            return PushRecorded {
                push: Some(push),
                created: false,
            }
            .into();
        }
        if !matches!(source, PushSource::Manual { .. }) {
            repo.heads.insert(git_ref.to_string(), after.to_string());
        }
        let id = self.next_push.max(1);
        self.next_push = id + 1;
        for key in keys {
            self.push_keys.insert(key, id);
        }
        self.pushes.insert(
            id,
            Push {
                id,
                repository: repository.to_string(),
                git_ref: git_ref.to_string(),
                before: before.to_string(),
                after: after.to_string(),
                source: source.clone(),
                received_ms: now_ms,
                status: PushStatus::Received,
                error: None,
            },
        );
        self.forget_old_pushes(repository);
        PushRecorded {
            push: Some(id),
            created: true,
        }
        .into()
    }

    /// A push could not be started yet (its remote did not answer): the reason shows on it.
    pub(super) fn push_failed(&mut self, push: u64, error: &str) -> Response {
        match self.pushes.get_mut(&push) {
            Some(p) if p.status == PushStatus::Received => {
                p.error = Some(error.to_string());
                RepositoryChanged.into()
            }
            _ => Response::rejected(format!("push {push} is not waiting to start")),
        }
    }

    /// Starts a received push: its run, or nothing with a reason. Once only: a push already
    /// started or skipped answers what it became.
    pub(super) fn start_push(&mut self, push: u64, outcome: &PushOutcome, now_ms: i64) -> Response {
        let Some(p) = self.pushes.get(&push) else {
            return Response::rejected(format!("push {push} not found"));
        };
        match &p.status {
            PushStatus::Started { run } => {
                return PushStarted {
                    run: Some(*run),
                    created: false,
                    kills: Vec::new(),
                }
                .into();
            }
            PushStatus::Skipped { .. } => {
                return PushStarted {
                    run: None,
                    created: false,
                    kills: Vec::new(),
                }
                .into();
            }
            PushStatus::Received => {}
        }
        let trigger = p.source.trigger();
        let (status, run, kills) = match outcome {
            PushOutcome::Skip { reason } => (
                PushStatus::Skipped {
                    reason: reason.clone(),
                },
                None,
                Vec::new(),
            ),
            PushOutcome::Run { pipeline, git } => {
                let run = self.new_run("", trigger, pipeline, &BTreeMap::new(), now_ms);
                let kills = self.join_concurrency_group(run, git, now_ms);
                if let Some(r) = self.runs.get_mut(&run) {
                    r.git = Some(git.clone());
                }
                (PushStatus::Started { run }, Some(run), kills)
            }
            PushOutcome::Fail {
                pipeline,
                reason,
                git,
            } => {
                let run = self.failed_run(pipeline, trigger, git, reason, now_ms);
                (PushStatus::Started { run }, Some(run), Vec::new())
            }
        };
        if let Some(p) = self.pushes.get_mut(&push) {
            p.status = status;
            p.error = None;
        }
        PushStarted {
            run,
            created: true,
            kills,
        }
        .into()
    }

    /// A run that never started, failed with `reason`.
    fn failed_run(
        &mut self,
        name: &str,
        trigger: &str,
        git: &GitInfo,
        reason: &str,
        now_ms: i64,
    ) -> u64 {
        let number = self.next_run.max(1);
        self.next_run = number + 1;
        let pipeline = Pipeline {
            name: name.to_string(),
            stages: Vec::new(),
            ..Default::default()
        };
        self.runs.insert(
            number,
            Run {
                number,
                pipeline,
                status: RunStatus::Failed,
                trigger: trigger.to_string(),
                request_id: String::new(),
                created_ms: now_ms,
                finished_ms: Some(now_ms),
                stages: Vec::new(),
                git: Some(git.clone()),
                message: Some(reason.to_string()),
                concurrency_group: None,
            },
        );
        number
    }

    /// Puts the new run in its pipeline's concurrency group; with `cancel_in_progress`, the
    /// group's older unfinished runs are superseded by it.
    fn join_concurrency_group(&mut self, number: u64, git: &GitInfo, now_ms: i64) -> Vec<Kill> {
        let Some(run) = self.runs.get(&number) else {
            return Vec::new();
        };
        let Some(c) = run.pipeline.concurrency.clone() else {
            return Vec::new();
        };
        let branch = git.branch().unwrap_or("").to_string();
        let group = format!(
            "{} {}",
            git.repository,
            expand_group(
                &c.group,
                &GitContext {
                    repository: &git.repository,
                    git_ref: &git.git_ref,
                    branch: &branch,
                    commit: &git.commit,
                },
            )
        );
        if let Some(r) = self.runs.get_mut(&number) {
            r.concurrency_group = Some(group.clone());
        }
        if !c.cancel_in_progress {
            return Vec::new();
        }
        let older: Vec<u64> = self
            .runs
            .values()
            .filter(|r| {
                r.number < number
                    && !r.status.is_terminal()
                    && r.concurrency_group.as_deref() == Some(group.as_str())
            })
            .map(|r| r.number)
            .collect();
        let reason = format!("superseded by {} ({})", run_id(number), git.short_commit());
        let mut kills = Vec::new();
        for n in older {
            kills.extend(self.stop_run(n, &reason, true, now_ms));
        }
        kills
    }

    /// Forgets a repository's oldest pushes that have ended, past
    /// [`MAX_PUSHES_PER_REPOSITORY`], and their dedup keys.
    fn forget_old_pushes(&mut self, repository: &str) {
        let ended: Vec<u64> = self
            .pushes
            .values()
            .filter(|p| p.repository == repository && p.status != PushStatus::Received)
            .map(|p| p.id)
            .collect();
        if ended.len() <= MAX_PUSHES_PER_REPOSITORY {
            return;
        }
        let drop = &ended[..ended.len() - MAX_PUSHES_PER_REPOSITORY];
        for id in drop {
            self.pushes.remove(id);
        }
        self.push_keys.retain(|_, id| !drop.contains(id));
    }

    /// The environment a deploy stage of run `number` without one deploys to: the run's
    /// repository's branch map for its branch, when one matches.
    pub fn branch_environment(&self, number: u64) -> Option<String> {
        let git = self.runs.get(&number)?.git.as_ref()?;
        let repo = self.repositories.get(&git.repository)?;
        kiln_api::git::environment_for(&repo.branches, git.branch()?)
    }
}
