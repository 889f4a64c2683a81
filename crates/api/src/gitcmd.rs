//! The `git` program, the one way coordinators and agents talk to remotes and read commits.
//!
//! kiln runs the real `git` rather than linking gitoxide: every node that builds code has it,
//! it speaks every transport and credential helper a team already uses (ssh agents, https
//! tokens, `git daemon`), and it is what users debug with, so an error kiln shows is the one
//! they would see typing the same command. The cost is a process per call (a few ms), paid
//! once per push on the coordinator and once per task on an agent.
//!
//! Every call runs with no prompt (`GIT_TERMINAL_PROMPT=0`), without the system config,
//! under a deadline, and is killed if its caller goes away. A private remote's credentials
//! come from a git credential-store file named by the repository (`https://user:token@host`
//! lines), never from the command line.
//!
//! A [`Cache`] is one bare clone per repository on a node: fetches into it are serialised,
//! and what a task or the trigger controller needs is read from it (`show`, `diff`) or
//! checked out of it ([`Cache::checkout`]: a worktree, which copies no objects). On the
//! path from a push to its first stage every process counts (a git call costs 3–10 ms
//! here): a file is read with one `cat-file --batch`, a fetch asks for the commit alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The deadline of one git call that talks to a remote.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(120);
/// The deadline of one git call that reads local objects.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a failed call's stderr an error carries.
const MAX_STDERR: usize = 2000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GitError {
    #[error("git {command}: {reason}")]
    Failed { command: String, reason: String },
    #[error("git {command}: no answer within {seconds} s")]
    TimedOut { command: String, seconds: u64 },
    #[error("running git: {0}")]
    Spawn(String),
}

/// How to run git: the credentials file of the repository, if it has one.
#[derive(Debug, Clone, Default)]
pub struct Git {
    pub credentials: Option<PathBuf>,
}

impl Git {
    pub fn new(credentials: Option<&str>) -> Git {
        Git {
            credentials: credentials.filter(|c| !c.is_empty()).map(PathBuf::from),
        }
    }

    /// `git ARGS` as kiln runs it: no prompt, no system config, in its own process group
    /// (its helpers — git-remote-https, ssh, a credential helper — go with it), killed with
    /// its caller.
    fn command(&self, dir: Option<&Path>, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        if let Some(file) = &self.credentials {
            cmd.arg("-c")
                .arg(format!("credential.helper=store --file={}", file.display()));
        }
        cmd.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_ASKPASS", "true")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Runs `git ARGS` (in `dir`, when given) and answers its standard output.
    pub async fn run(
        &self,
        dir: Option<&Path>,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Vec<u8>, GitError> {
        let mut cmd = self.command(dir, args);
        let command = args.first().copied().unwrap_or_default().to_string();
        let child = cmd.spawn().map_err(|e| GitError::Spawn(e.to_string()))?;
        // Past its deadline, or with its caller gone, the whole group goes.
        let mut group = KillGroup(child.id());
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(out) => {
                // Reaped: its group id may be anyone's now.
                group.0 = None;
                out.map_err(|e| GitError::Spawn(e.to_string()))?
            }
            Err(_) => {
                return Err(GitError::TimedOut {
                    command,
                    seconds: timeout.as_secs(),
                });
            }
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut reason = stderr.trim().replace('\n', "; ");
        if reason.len() > MAX_STDERR {
            let cut = (0..=MAX_STDERR)
                .rev()
                .find(|i| reason.is_char_boundary(*i))
                .unwrap_or(0);
            reason.truncate(cut);
        }
        if reason.is_empty() {
            reason = out.status.to_string();
        }
        Err(GitError::Failed { command, reason })
    }

    /// The remote's branch and tag heads (`refs/heads/*`, `refs/tags/*`), an annotated tag
    /// by the commit it points to.
    pub async fn ls_remote(&self, url: &str) -> Result<BTreeMap<String, String>, GitError> {
        let out = self
            .run(
                None,
                &["ls-remote", "--heads", "--tags", "--", url],
                REMOTE_TIMEOUT,
            )
            .await?;
        Ok(parse_ls_remote(&String::from_utf8_lossy(&out)))
    }
}

/// Kills a process group when dropped, unless told it is gone (`None`).
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `COMMIT\tREF` lines; a peeled tag (`refs/tags/v1^{}`) replaces its tag object.
pub fn parse_ls_remote(out: &str) -> BTreeMap<String, String> {
    let mut heads = BTreeMap::new();
    for line in out.lines() {
        let Some((commit, name)) = line.split_once('\t') else {
            continue;
        };
        match name.strip_suffix("^{}") {
            Some(tag) => {
                heads.insert(tag.to_string(), commit.to_string());
            }
            None => {
                heads
                    .entry(name.to_string())
                    .or_insert_with(|| commit.to_string());
            }
        }
    }
    heads
}

/// One bare clone of one repository on this node.
pub struct Cache {
    git: Git,
    dir: PathBuf,
    /// Fetches into one clone go one at a time (git's ref locks would fail the second).
    fetching: tokio::sync::Mutex<()>,
    /// Worktrees are added and pruned one at a time.
    checking_out: tokio::sync::Mutex<()>,
    /// The URL `origin` names in the cache (and so in every checkout), once set.
    origin: tokio::sync::Mutex<Option<String>>,
}

impl Cache {
    /// The cache at `dir`, made (empty) if it is not there yet.
    pub async fn open(git: Git, dir: PathBuf) -> Result<Cache, GitError> {
        if !dir.join("HEAD").exists() {
            std::fs::create_dir_all(&dir).map_err(|e| GitError::Spawn(e.to_string()))?;
            git.run(Some(&dir), &["init", "--bare", "--quiet"], LOCAL_TIMEOUT)
                .await?;
        }
        Ok(Cache {
            git,
            dir,
            fetching: tokio::sync::Mutex::new(()),
            checking_out: tokio::sync::Mutex::new(()),
            origin: tokio::sync::Mutex::new(None),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the cache holds `commit`.
    pub async fn has(&self, commit: &str) -> bool {
        let object = format!("{commit}^{{commit}}");
        self.git
            .run(Some(&self.dir), &["cat-file", "-e", &object], LOCAL_TIMEOUT)
            .await
            .is_ok()
    }

    /// Makes sure the cache holds `commit`: fetches the commit itself, or, where the remote
    /// does not serve commits by id, its branches and tags.
    pub async fn fetch(&self, url: &str, commit: &str) -> Result<(), GitError> {
        // Most checkouts find their commit here, without waiting for another's fetch.
        if self.has(commit).await {
            return Ok(());
        }
        let _one = self.fetching.lock().await;
        if self.has(commit).await {
            return Ok(());
        }
        // The commit alone, with what it needs (a server speaking protocol v2 serves any
        // reachable commit: GitHub, GitLab, git daemon); else the branches and tags.
        let by_id = ["fetch", "--quiet", "--no-tags", "--", url, commit];
        if self
            .git
            .run(Some(&self.dir), &by_id, REMOTE_TIMEOUT)
            .await
            .is_ok()
            && self.has(commit).await
        {
            return Ok(());
        }
        let args = [
            "fetch",
            "--quiet",
            "--force",
            "--prune",
            "--no-tags",
            "--",
            url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ];
        self.git.run(Some(&self.dir), &args, REMOTE_TIMEOUT).await?;
        if self.has(commit).await {
            return Ok(());
        }
        Err(GitError::Failed {
            command: "fetch".into(),
            reason: format!("{url} has no commit {commit} on any branch or tag"),
        })
    }

    /// The file at `path` in `commit`, or `None` when there is none; a file larger than
    /// `limit` bytes is an error (it is not read). One `git cat-file --batch`: its header
    /// gives the size before the content.
    pub async fn show(
        &self,
        commit: &str,
        path: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, GitError> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let object = format!("{commit}:{}\n", path.trim_start_matches("./"));
        let failed = |reason: String| GitError::Failed {
            command: "cat-file".into(),
            reason,
        };
        let read = async {
            let mut cmd = self.git.command(Some(&self.dir), &["cat-file", "--batch"]);
            cmd.stdin(Stdio::piped());
            let mut child = cmd.spawn().map_err(|e| GitError::Spawn(e.to_string()))?;
            let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(GitError::Spawn("git cat-file: no pipes".into()));
            };
            stdin
                .write_all(object.as_bytes())
                .await
                .map_err(|e| failed(e.to_string()))?;
            drop(stdin);
            let mut out = BufReader::new(stdout);
            let mut header = String::new();
            out.read_line(&mut header)
                .await
                .map_err(|e| failed(e.to_string()))?;
            // `<oid> blob <size>`, or `<object> missing` (or `ambiguous`).
            let mut words = header.split_whitespace();
            let (Some(_), Some(kind), Some(size)) = (words.next(), words.next(), words.next())
            else {
                return Ok(None);
            };
            let size: u64 = size
                .parse()
                .map_err(|_| failed(format!("header {header:?}")))?;
            if kind != "blob" {
                return Ok(None);
            }
            if size > limit {
                return Err(failed(format!(
                    "{path} is {size} bytes, more than the limit of {limit}"
                )));
            }
            let mut content = vec![0; size as usize];
            out.read_exact(&mut content)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let _ = child.wait().await;
            Ok(Some(content))
        };
        match tokio::time::timeout(LOCAL_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => Err(GitError::TimedOut {
                command: "cat-file".into(),
                seconds: LOCAL_TIMEOUT.as_secs(),
            }),
        }
    }

    /// The paths that differ between two commits (renames as both paths).
    pub async fn changed(&self, before: &str, after: &str) -> Result<Vec<String>, GitError> {
        let out = self
            .git
            .run(
                Some(&self.dir),
                &[
                    "diff",
                    "--name-only",
                    "--no-renames",
                    "-z",
                    before,
                    after,
                    "--",
                ],
                LOCAL_TIMEOUT,
            )
            .await?;
        Ok(out
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect())
    }

    /// A commit's author name and full message.
    pub async fn commit_info(&self, commit: &str) -> Result<(String, String), GitError> {
        let out = self
            .git
            .run(
                Some(&self.dir),
                &["show", "-s", "--format=%an%x00%B", commit, "--"],
                LOCAL_TIMEOUT,
            )
            .await?;
        let text = String::from_utf8_lossy(&out);
        let (author, message) = text.split_once('\0').unwrap_or(("", &text));
        Ok((author.to_string(), message.trim_end().to_string()))
    }

    /// A clean checkout of `commit` at `dest` (which must not exist or be empty): a
    /// worktree of the cache, which copies no objects; `origin` is the repository's URL.
    /// [`Cache::release`] removes it.
    pub async fn checkout(&self, url: &str, commit: &str, dest: &Path) -> Result<(), GitError> {
        // Worktrees are registered in the cache: one added at a time.
        let _one = self.checking_out.lock().await;
        {
            let mut origin = self.origin.lock().await;
            if origin.as_deref() != Some(url) {
                let set = ["config", "remote.origin.url", url];
                self.git.run(Some(&self.dir), &set, LOCAL_TIMEOUT).await?;
                *origin = Some(url.to_string());
            }
        }
        let target = dest.display().to_string();
        let add = ["worktree", "add", "--quiet", "--detach", &target, commit];
        self.git.run(Some(&self.dir), &add, LOCAL_TIMEOUT).await?;
        Ok(())
    }

    /// Removes a checkout made by [`Cache::checkout`], and forgets it in the cache.
    pub async fn release(&self, dest: &Path) {
        let _ = std::fs::remove_dir_all(dest);
        let _one = self.checking_out.lock().await;
        let _ = self
            .git
            .run(Some(&self.dir), &["worktree", "prune"], LOCAL_TIMEOUT)
            .await;
    }
}

/// The path of a repository on this machine (`/srv/app` or `file:///srv/app`), if it is one.
pub fn local_path(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// A clean checkout of `commit` at `dest` from a repository on this machine, sharing its
/// objects (`clone --shared`: nothing is copied, and nothing is registered in it).
pub async fn checkout_shared(
    git: &Git,
    source: &Path,
    commit: &str,
    dest: &Path,
) -> Result<(), GitError> {
    let (source, target) = (source.display().to_string(), dest.display().to_string());
    let clone = [
        "clone",
        "--quiet",
        "--shared",
        "--no-checkout",
        &source,
        &target,
    ];
    git.run(None, &clone, LOCAL_TIMEOUT).await?;
    let checkout = ["checkout", "--quiet", "--detach", commit];
    git.run(Some(dest), &checkout, LOCAL_TIMEOUT).await?;
    Ok(())
}

/// The cached clones of a node, one per repository under one directory.
pub struct Caches {
    dir: PathBuf,
    open: tokio::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Cache>>>,
}

impl Caches {
    pub fn new(dir: PathBuf) -> Caches {
        Caches {
            dir,
            open: tokio::sync::Mutex::new(Default::default()),
        }
    }

    /// The cache of `repository` (a checked name: it is a directory name), opened once.
    pub async fn get(
        &self,
        repository: &str,
        credentials: Option<&str>,
    ) -> Result<std::sync::Arc<Cache>, GitError> {
        let mut open = self.open.lock().await;
        if let Some(c) = open.get(repository) {
            return Ok(c.clone());
        }
        let dir = self.dir.join(format!("{repository}.git"));
        let cache = std::sync::Arc::new(Cache::open(Git::new(credentials), dir).await?);
        open.insert(repository.to_string(), cache.clone());
        Ok(cache)
    }

    /// For reading commits only: a repository that is a path on this machine is read where
    /// it is (no copy, no fetch); any other, through its cache ([`Caches::get`]). Never for
    /// checkouts, which would register worktrees in the user's repository.
    pub async fn reader(
        &self,
        repository: &str,
        url: &str,
        credentials: Option<&str>,
    ) -> Result<std::sync::Arc<Cache>, GitError> {
        let Some(path) = local_path(url) else {
            return self.get(repository, credentials).await;
        };
        let key = format!("{repository} {}", path.display());
        let mut open = self.open.lock().await;
        if let Some(c) = open.get(&key) {
            return Ok(c.clone());
        }
        let cache = std::sync::Arc::new(Cache {
            git: Git::new(credentials),
            dir: path,
            fetching: tokio::sync::Mutex::new(()),
            checking_out: tokio::sync::Mutex::new(()),
            origin: tokio::sync::Mutex::new(None),
        });
        open.insert(key, cache.clone());
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_remote_output_is_read_with_tags_peeled() {
        let out =
            "a1\trefs/heads/main\nb2\trefs/tags/v1\nc3\trefs/tags/v1^{}\nd4\trefs/tags/light\n";
        let heads = parse_ls_remote(out);
        assert_eq!(heads["refs/heads/main"], "a1");
        assert_eq!(
            heads["refs/tags/v1"], "c3",
            "an annotated tag is its commit"
        );
        assert_eq!(heads["refs/tags/light"], "d4");
        assert_eq!(heads.len(), 3);
    }
}
