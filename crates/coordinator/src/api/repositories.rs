//! The repository half of the client API: add, remove, list, and run a ref by hand.
//!
//! Adding a repository reaches its remote first (`git ls-remote`): a URL that does not
//! answer is refused with git's own words, and the heads it answers become the baseline —
//! pushes after it start runs, the history before it does not (as a CI system that is
//! connected to an existing repository does). The webhook secret is made here when the
//! user gives none, and shown once, in the answer; reads never show it.

use kiln_api::git::{GitRef, check_glob};
use kiln_api::gitcmd::Git;
use kiln_api::pb;

use crate::core::{Core, now_ms};
use crate::error::{Error, Result};
use crate::state::{
    ClusterState, Command, PushRecorded, PushSource, PushStatus, Repository, RepositoryChanged,
};

/// Where a repository's pipeline file is, unless told.
pub const DEFAULT_PIPELINE: &str = ".kiln/pipeline.yaml";
/// How often a repository is polled, unless told.
pub const DEFAULT_POLL_MS: u64 = 60_000;
/// The shortest poll interval taken (a remote is not hammered).
pub const MIN_POLL_MS: u64 = 1_000;
/// How many pushes `ListRepositories` shows per repository, newest first.
const SHOWN_PUSHES: usize = 50;

pub async fn add(core: &Core, req: pb::AddRepositoryRequest) -> Result<pb::RepositoryView> {
    core.ensure_leader()?;
    let repository = check(&req, core.tuning.local_repositories)?;
    if core.state.read().repositories.contains_key(&req.name) {
        return Err(Error::Conflict(format!(
            "repository {:?} already exists (remove it first)",
            req.name
        )));
    }
    let heads = Git::new(repository.credentials.as_deref())
        .ls_remote(&repository.url)
        .await
        .map_err(|e| Error::InvalidInput(format!("url: {:?} cannot be read: {e}", req.url)))?;
    let repository = Repository {
        heads,
        created_ms: now_ms(),
        ..repository
    };
    let secret = repository.secret.clone();
    let command = Command::AddRepository {
        repository: Box::new(repository.clone()),
    };
    let RepositoryChanged = core.write(command).await?;
    tracing::info!(repository = %repository.name, url = %repository.url, "repository added");
    let mut view = view(&core.state.read(), &repository);
    view.secret = secret;
    Ok(view)
}

/// The request, checked, as the repository it adds (without its heads).
fn check(req: &pb::AddRepositoryRequest, local: bool) -> Result<Repository> {
    let bad = |field: &str, why: String| Err(Error::InvalidInput(format!("{field}: {why}")));
    if !valid_name(&req.name) {
        return bad(
            "name",
            format!(
                "{:?} must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit",
                req.name
            ),
        );
    }
    if let Err(why) = check_url(&req.url, local) {
        return bad("url", format!("{:?} {why}", req.url));
    }
    let pipeline = match req.pipeline.trim_start_matches("./") {
        "" => DEFAULT_PIPELINE.to_string(),
        p if p.starts_with('/') || p.split('/').any(|c| c == "..") => {
            return bad(
                "pipeline",
                format!("{p:?} must be a path inside the repository"),
            );
        }
        p => p.to_string(),
    };
    let mut branches = Vec::new();
    for (i, b) in req.branches.iter().enumerate() {
        let Some((glob, env)) = b.split_once('=') else {
            return bad(
                &format!("branches[{i}]"),
                format!("{b:?} is not GLOB=ENVIRONMENT"),
            );
        };
        if let Err(why) = check_glob(glob) {
            return bad(&format!("branches[{i}]"), format!("{glob:?}: {why}"));
        }
        if env.is_empty() {
            return bad(
                &format!("branches[{i}]"),
                format!("{b:?} names no environment"),
            );
        }
        branches.push((glob.to_string(), env.to_string()));
    }
    let poll_ms = match (req.no_poll, req.poll_ms) {
        (true, _) => 0,
        (false, 0) => DEFAULT_POLL_MS,
        (false, ms) if ms < MIN_POLL_MS => {
            return bad(
                "poll",
                format!("{ms} ms is shorter than the least, {MIN_POLL_MS} ms"),
            );
        }
        (false, ms) => ms,
    };
    let secret = if req.secret.is_empty() {
        let bytes: [u8; 24] = rand::random();
        hex::encode(bytes)
    } else if req.secret.len() < 16 {
        return bad("secret", "must be at least 16 characters".into());
    } else {
        req.secret.clone()
    };
    // Git runs its credential helper through a shell: the path is kept to plain characters.
    let plain = |c: &str| {
        c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '/' | '.' | '_' | '-'))
    };
    let credentials = match req.credentials.as_str() {
        "" => None,
        c if c.starts_with('/') && plain(c) => Some(c.to_string()),
        c => {
            return bad(
                "credentials",
                format!("{c:?} is not an absolute path of letters, digits, '/', '.', '_' and '-'"),
            );
        }
    };
    Ok(Repository {
        name: req.name.clone(),
        url: req.url.clone(),
        pipeline,
        branches,
        poll_ms,
        secret,
        credentials,
        created_ms: 0,
        heads: Default::default(),
        poll_error: None,
        polled_ms: None,
    })
}

/// A remote kiln may read: `https://`, `http://`, `ssh://`, `git://` or scp-like
/// `user@host:path`, without a password in it (that goes in `--credentials`); a path on
/// the coordinator (or `file://`) only where `local` allows it, as `kiln dev` does (it would
/// let any caller read any repository there).
fn check_url(url: &str, local: bool) -> Result<(), String> {
    if url.is_empty()
        || url.starts_with('-')
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("is not a git URL".into());
    }
    let path = url.starts_with('/') || url.starts_with("file://");
    if local && path {
        return Ok(());
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if !matches!(scheme, "https" | "http" | "ssh" | "git") {
            return Err(format!(
                "has the scheme {scheme:?}: kiln reads https, http, ssh and git remotes"
            ));
        }
        let authority = rest.split('/').next().unwrap_or("");
        if authority
            .split_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
        {
            return Err("holds a password: give it in a --credentials file".into());
        }
        return Ok(());
    }
    // scp-like: [user@]host:path, with no '/' before the ':'.
    match url.split_once(':') {
        Some((host, _)) if !host.is_empty() && !host.contains('/') => Ok(()),
        _ => Err(
            "is a local path: kiln reads remotes only (https, http, ssh, git), unless its coordinator runs with --allow-local-repositories (as kiln dev does)"
                .into(),
        ),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub async fn remove(core: &Core, req: pb::RemoveRepositoryRequest) -> Result<()> {
    if !core.state.read().repositories.contains_key(&req.name) {
        return Err(Error::NotFound(format!(
            "repository {:?} not found",
            req.name
        )));
    }
    let RepositoryChanged = core
        .write(Command::RemoveRepository { name: req.name })
        .await?;
    Ok(())
}

pub fn list(
    core: &Core,
    req: &pb::ListRepositoriesRequest,
) -> Result<pb::ListRepositoriesResponse> {
    let state = core.state.read();
    if !req.name.is_empty() && !state.repositories.contains_key(&req.name) {
        return Err(Error::NotFound(format!(
            "repository {:?} not found",
            req.name
        )));
    }
    let repositories = state
        .repositories
        .values()
        .filter(|r| req.name.is_empty() || r.name == req.name)
        .map(|r| view(&state, r))
        .collect();
    Ok(pb::ListRepositoriesResponse { repositories })
}

fn view(state: &ClusterState, r: &Repository) -> pb::RepositoryView {
    let mut pushes: Vec<pb::PushView> = state
        .pushes
        .values()
        .rev()
        .filter(|p| p.repository == r.name)
        .take(SHOWN_PUSHES)
        .map(|p| {
            let (status, run_id, reason) = match &p.status {
                PushStatus::Received => ("received", String::new(), p.error.clone()),
                PushStatus::Started { run } => ("started", crate::state::run_id(*run), None),
                PushStatus::Skipped { reason } => ("skipped", String::new(), Some(reason.clone())),
            };
            let delivery = match &p.source {
                PushSource::Webhook { delivery, .. } => delivery.clone().unwrap_or_default(),
                _ => String::new(),
            };
            pb::PushView {
                id: p.id,
                r#ref: p.git_ref.clone(),
                before: p.before.clone(),
                after: p.after.clone(),
                source: p.source.trigger().into(),
                delivery,
                received_ms: p.received_ms,
                status: status.into(),
                run_id,
                reason: reason.unwrap_or_default(),
            }
        })
        .collect();
    pushes.reverse();
    pb::RepositoryView {
        name: r.name.clone(),
        url: r.url.clone(),
        pipeline: r.pipeline.clone(),
        branches: r.branches.iter().map(|(g, e)| format!("{g}={e}")).collect(),
        poll_ms: r.poll_ms,
        secret: String::new(),
        hook_path: format!("/hooks/{}", r.name),
        heads: r.heads.clone().into_iter().collect(),
        poll_error: r.poll_error.clone().unwrap_or_default(),
        pushes,
        created_ms: r.created_ms,
        credentials: r.credentials.clone().unwrap_or_default(),
    }
}

/// `kiln run --repo NAME --ref REF`: resolves the ref on the remote (a branch, a tag, a
/// full ref, or a commit id as it is), records a manual push, and waits for the trigger
/// loop to start it.
pub async fn trigger(
    core: &Core,
    req: pb::TriggerRepositoryRequest,
) -> Result<pb::TriggerRepositoryResponse> {
    core.ensure_leader()?;
    let repo = core
        .state
        .read()
        .repositories
        .get(&req.repository)
        .cloned()
        .ok_or_else(|| Error::NotFound(format!("repository {:?} not found", req.repository)))?;
    if req.request_id.is_empty() {
        return Err(Error::InvalidInput("request_id: must be set".into()));
    }
    let (git_ref, commit) = resolve(&repo, &req.r#ref).await?;
    let command = Command::RecordPush {
        repository: repo.name.clone(),
        git_ref: git_ref.clone(),
        before: kiln_api::git::ZERO_COMMIT.into(),
        after: commit,
        source: PushSource::Manual {
            request_id: format!("manual {}", req.request_id),
        },
        now_ms: now_ms(),
    };
    let recorded: PushRecorded = core.write(command).await?;
    let push = recorded
        .push
        .ok_or_else(|| Error::Internal("a manual push was not recorded".into()))?;
    // The trigger loop starts it (reading the pipeline at that commit); wait for that.
    let mut applied = core.state.subscribe();
    let deadline = tokio::time::Instant::now() + kiln_api::gitcmd::REMOTE_TIMEOUT;
    loop {
        let status = core
            .state
            .read()
            .pushes
            .get(&push)
            .map(|p| p.status.clone());
        match status {
            Some(PushStatus::Started { run }) => {
                return Ok(pb::TriggerRepositoryResponse {
                    run_id: crate::state::run_id(run),
                    reason: String::new(),
                });
            }
            Some(PushStatus::Skipped { reason }) => {
                return Ok(pb::TriggerRepositoryResponse {
                    run_id: String::new(),
                    reason,
                });
            }
            _ => {}
        }
        if tokio::time::timeout_at(deadline, applied.changed())
            .await
            .is_err()
        {
            let error = core
                .state
                .read()
                .pushes
                .get(&push)
                .and_then(|p| p.error.clone());
            return Err(Error::Unavailable(format!(
                "push {push} of {} recorded but not started yet{}",
                req.r#ref,
                error.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
    }
}

/// A ref as the user typed it → (full ref, commit).
async fn resolve(repo: &Repository, want: &str) -> Result<(String, String)> {
    if want.len() == 40 && want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok((want.to_ascii_lowercase(), want.to_ascii_lowercase()));
    }
    let heads = Git::new(repo.credentials.as_deref())
        .ls_remote(&repo.url)
        .await
        .map_err(|e| Error::Unavailable(format!("{}: {e}", repo.url)))?;
    let candidates = match want {
        "" => vec![
            "refs/heads/main".to_string(),
            "refs/heads/master".to_string(),
        ],
        w if w.starts_with("refs/") => vec![w.to_string()],
        w => vec![format!("refs/heads/{w}"), format!("refs/tags/{w}")],
    };
    candidates
        .into_iter()
        .find_map(|r| heads.get(&r).map(|c| (r.clone(), c.clone())))
        .ok_or_else(|| {
            let kind = match GitRef::parse(want) {
                GitRef::Tag(_) => "tag",
                _ => "ref",
            };
            Error::NotFound(format!(
                "ref: {kind} {want:?} not found on {} (branches and tags are looked up; a commit is given as its full 40-hex id)",
                repo.url
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn remotes_are_read_and_local_paths_and_passwords_are_not() {
        for ok in [
            "https://github.com/team/app.git",
            "git://127.0.0.1:9418/repo.git",
            "ssh://git@host/app.git",
            "git@github.com:team/app.git",
            "https://token@host/app.git",
        ] {
            assert_eq!(check_url(ok, false), Ok(()), "{ok}");
        }
        for bad in [
            "/srv/git/app.git",
            "./app",
            "file:///etc",
            "https://user:secret@host/app.git",
            "--upload-pack=touch /tmp/x",
            "https://host/a b",
            "",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert_eq!(
            check_url("/srv/git/app.git", true),
            Ok(()),
            "kiln dev reads paths"
        );
        assert_eq!(check_url("file:///srv/git/app.git", true), Ok(()));
        assert!(check_url("https://user:secret@host/a.git", true).is_err());
    }
}
