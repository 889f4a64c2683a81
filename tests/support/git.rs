//! A git remote and forge webhooks for the trigger tests.
//!
//! [`GitRemote`] is a bare repository in a temp dir, served by a real `git daemon` on
//! 127.0.0.1 and a free port, with receive-pack enabled, and a working repository beside it
//! where a test commits, branches, tags and pushes. kiln is given [`GitRemote::url`] like
//! any remote: its pollers run `git ls-remote` against it, its agents `git fetch` from it.
//! Why a daemon rather than a `file://` path: a path is always there, while a URL can stop
//! answering. [`GitRemote::stop_daemon`] makes the remote unreachable (connections refused,
//! connections in flight cut) and [`GitRemote::start_daemon`] brings it back on the same port,
//! so kiln's retries are tested against a real outage.
//!
//! Every git command runs with no system or user config (`GIT_CONFIG_NOSYSTEM`, `HOME` in
//! the temp dir), no prompts, and Ada Lovelace as author and committer, and panics with the
//! command, its exit status and its stderr when it fails. The daemon is started once ready:
//! [`GitRemote::start`] and [`GitRemote::start_daemon`] poll `git ls-remote` against a
//! deadline while checking that the daemon is alive, so a daemon that cannot bind fails at
//! once with its log.
//!
//! Nothing outlives the fixture. `git daemon` is a wrapper that forks the real daemon, so
//! the daemon binary (`$(git --exec-path)/git-daemon`) is started directly: killing the
//! wrapper would leave the daemon listening. The daemon serves each connection in a child
//! (`git-daemon --serve`, then upload-pack or receive-pack) that outlives a killed daemon,
//! so stopping also kills every process working in the temp dir. On drop the daemon is
//! stopped and the temp dir removed (kept, and its path printed, when the test panicked).
//!
//! The payload builders make the deliveries GitHub, GitLab and Gitea send for a push, in
//! their documented shapes, signed as each forge signs them. They see a [`Push`] and a
//! commit message, not the repository: `commits` holds at most the head commit, its file
//! lists (`added`, `removed`, `modified`) are empty and GitHub's `tree_id` is forty zeros.
//! kiln must read what a push changed from git itself (a forge truncates these lists anyway).
//! The repository they name is a fixed `ada/engine` on the forge, not the fixture's URL.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};

/// The commit of a ref that does not exist (a new ref's `before`, a deleted ref's `after`).
pub const ZERO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// The author and committer of every commit the fixture makes.
pub const AUTHOR_NAME: &str = "Ada Lovelace";
pub const AUTHOR_EMAIL: &str = "ada@example.com";

/// How long a starting daemon has to answer.
const DAEMON_READY: Duration = Duration::from_secs(15);

/// Variables that would point git at another repository or config than the fixture's.
const FOREIGN_GIT_VARS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_CONFIG",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "XDG_CONFIG_HOME",
];

/// One push of one ref, as the remote saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The full ref: `refs/heads/main`, `refs/tags/v1`.
    pub git_ref: String,
    /// The ref's commit on the remote before the push; [`ZERO_COMMIT`] when it is new.
    pub before: String,
    /// The ref's commit on the remote after the push; [`ZERO_COMMIT`] when it was deleted.
    pub after: String,
}

/// A bare repository served by `git daemon` on 127.0.0.1, and a working repository that
/// pushes to it. See the module notes.
pub struct GitRemote {
    /// `srv/repo.git` (the bare repository the daemon serves), `work/` (where commits are
    /// made), `home/` (git's `HOME`: no config) and `daemon.log`.
    dir: tempfile::TempDir,
    /// The daemon's port, kept across [`GitRemote::stop_daemon`] and
    /// [`GitRemote::start_daemon`].
    port: u16,
    /// `$(git --exec-path)/git-daemon`: the daemon itself, not the `git` wrapper.
    daemon_program: PathBuf,
    daemon: Option<Child>,
}

impl GitRemote {
    /// An empty bare repository (`HEAD` on `main`) served on a free port, and an empty
    /// working repository on `main`; returns once the daemon answers.
    pub fn start() -> GitRemote {
        let dir = tempfile::Builder::new()
            .prefix("kiln-git-")
            .tempdir()
            .expect("temp dir");
        for d in ["home", "srv"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("git fixture dir");
        }
        let mut remote = GitRemote {
            dir,
            port: 0,
            daemon_program: PathBuf::new(),
            daemon: None,
        };
        let exec_path = remote.git(&remote.home(), &["--exec-path"]);
        remote.daemon_program = Path::new(exec_path.trim()).join("git-daemon");
        assert!(
            remote.daemon_program.is_file(),
            "{} is missing: this git has no daemon",
            remote.daemon_program.display()
        );
        remote.git(
            &remote.dir.path().join("srv"),
            &["init", "-q", "--bare", "-b", "main", "repo.git"],
        );
        remote.git(remote.dir.path(), &["init", "-q", "-b", "main", "work"]);
        // The port comes free from `free_port` and is bound again by the daemon: another
        // process can take it in between. Then the daemon exits at once; try another.
        let mut failures = Vec::new();
        for _ in 0..3 {
            remote.port = crate::free_port();
            match remote.spawn_daemon() {
                Ok(()) => return remote,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "git daemon did not start on three free ports:\n{}",
            failures.join("\n")
        );
    }

    /// The bare repository's path, for a coordinator that reads local repositories.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("srv").join("repo.git")
    }

    /// The remote's URL, as kiln is given it.
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/repo.git", self.port)
    }

    /// The daemon's log (it runs with `--verbose`: one line per connection and request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Writes `files` (path in the repository, contents; parent dirs made as needed) into the
    /// working repository, stages every change (with what [`GitRemote::remove`] staged) and
    /// commits it on the current branch; returns the new commit's id. With no files and
    /// nothing staged it makes an empty commit.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        let work = self.work();
        for (path, contents) in files {
            let file = work.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
            }
            std::fs::write(&file, contents)
                .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        }
        self.git(&work, &["add", "-A"]);
        self.git(
            &work,
            &[
                "commit",
                "-q",
                "--allow-empty",
                "--allow-empty-message",
                "--no-verify",
                "-m",
                message,
            ],
        );
        self.git(&work, &["rev-parse", "HEAD"]).trim().to_string()
    }

    /// Removes a file or directory from the working repository and stages the removal; the
    /// next [`GitRemote::commit`] records it.
    pub fn remove(&self, path: &str) {
        self.git(&self.work(), &["rm", "-q", "-r", "--", path]);
    }

    /// Switches the working repository to `branch`, made at the current commit if it does
    /// not exist yet. An existing branch keeps its commits (unlike `checkout -B`, which
    /// would reset it here), so a test can go back to `main` after working on a branch.
    pub fn checkout(&self, branch: &str) {
        let work = self.work();
        let git_ref = format!("refs/heads/{branch}");
        let exists = self
            .command("git")
            .args(["show-ref", "--verify", "--quiet", git_ref.as_str()])
            .current_dir(&work)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if exists {
            self.git(&work, &["switch", "-q", branch]);
        } else {
            self.git(&work, &["switch", "-q", "-c", branch]);
        }
    }

    /// Pushes the working repository's `branch` to the remote (forced, so a rewritten
    /// branch is pushed too) and returns what the remote's ref was and is.
    pub fn push(&self, branch: &str) -> Push {
        self.push_ref(&format!("refs/heads/{branch}"))
    }

    /// Tags the current commit with a lightweight `tag` (moving it if it exists) and pushes
    /// the tag; `after` is the tagged commit.
    pub fn push_tag(&self, tag: &str) -> Push {
        self.git(&self.work(), &["tag", "-f", tag]);
        self.push_ref(&format!("refs/tags/{tag}"))
    }

    /// Deletes `branch` on the remote (the working repository keeps it); `after` is
    /// [`ZERO_COMMIT`].
    pub fn delete_branch(&self, branch: &str) -> Push {
        let git_ref = format!("refs/heads/{branch}");
        let before = self
            .remote_ref(&git_ref)
            .unwrap_or_else(|| panic!("{git_ref} is not on the remote: nothing to delete"));
        self.git(
            &self.work(),
            &["push", "-q", &self.url(), &format!(":{git_ref}")],
        );
        assert_eq!(
            self.remote_ref(&git_ref),
            None,
            "{git_ref} is still on the remote after deleting it"
        );
        Push {
            git_ref,
            before,
            after: ZERO_COMMIT.to_string(),
        }
    }

    /// The remote's commit of `refs/heads/BRANCH`, if it has that branch.
    pub fn head(&self, branch: &str) -> Option<String> {
        self.remote_ref(&format!("refs/heads/{branch}"))
    }

    /// Kills the daemon and every connection it is serving: the remote refuses connections
    /// until [`GitRemote::start_daemon`]. Does nothing when it is stopped already.
    pub fn stop_daemon(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // The children serving connections work in this dir (the daemon's, then the
        // repository's). Twice: one can fork while the first sweep kills its parent.
        crate::kill_processes_in(self.dir.path());
        crate::kill_processes_in(self.dir.path());
    }

    /// Starts the daemon again on the same port and waits until it answers. Does nothing
    /// when it is running.
    pub fn start_daemon(&mut self) {
        if self.daemon.is_some() {
            return;
        }
        if let Err(e) = self.spawn_daemon() {
            panic!("restarting git daemon on port {}: {e}", self.port);
        }
    }

    /// Starts the daemon on `self.port` and polls `git ls-remote` until it answers. An error
    /// (with the daemon's log) when the daemon exits first, as it does when the port is
    /// taken; a panic when it is alive but silent past the deadline.
    fn spawn_daemon(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("daemon log");
        let child = self
            .command(&self.daemon_program)
            .args([
                "--verbose",
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                "--enable=receive-pack",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={}", self.port))
            .arg(format!(
                "--base-path={}",
                self.dir.path().join("srv").display()
            ))
            // Its connection children start here: stopping finds them by this dir.
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("daemon log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.daemon_program.display()));
        self.daemon = Some(child);
        let deadline = Instant::now() + DAEMON_READY;
        loop {
            if let Some(daemon) = self.daemon.as_mut()
                && let Ok(Some(status)) = daemon.try_wait()
            {
                self.daemon = None;
                return Err(format!(
                    "git daemon on port {} exited with {status}; its log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            if self.ls_remote().status.success() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "git daemon did not answer on {} within {DAEMON_READY:?}; its log:\n{}",
                self.url(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pushes `git_ref` from the working repository to the same ref on the remote, forced.
    fn push_ref(&self, git_ref: &str) -> Push {
        let before = self
            .remote_ref(git_ref)
            .unwrap_or_else(|| ZERO_COMMIT.to_string());
        self.git(
            &self.work(),
            &[
                "push",
                "-q",
                "--force",
                &self.url(),
                &format!("{git_ref}:{git_ref}"),
            ],
        );
        let after = self
            .remote_ref(git_ref)
            .unwrap_or_else(|| panic!("{git_ref} is not on the remote after pushing it"));
        Push {
            git_ref: git_ref.to_string(),
            before,
            after,
        }
    }

    /// The remote's value of exactly `git_ref` (ls-remote's patterns also match longer refs
    /// that end the same way).
    fn remote_ref(&self, git_ref: &str) -> Option<String> {
        let out = self.git(&self.home(), &["ls-remote", &self.url(), git_ref]);
        out.lines().find_map(|line| {
            let (commit, name) = line.split_once('\t')?;
            (name == git_ref).then(|| commit.to_string())
        })
    }

    /// `git ls-remote URL`, whatever its outcome: the readiness probe.
    fn ls_remote(&self) -> Output {
        let url = self.url();
        self.command("git")
            .args(["ls-remote", url.as_str()])
            .current_dir(self.home())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running git ls-remote: {e}"))
    }

    /// Runs git in `cwd`; returns its stdout, and panics with the command, its exit status
    /// and its stderr when it fails.
    fn git(&self, cwd: &Path, args: &[&str]) -> String {
        let out = self
            .command("git")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running git {}: {e}", args.join(" ")));
        assert!(
            out.status.success(),
            "git {} (in {}) failed with {}: {}",
            args.join(" "),
            cwd.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A git program with the fixture's environment: no system or user config, no prompt,
    /// Ada as author and committer.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for var in FOREIGN_GIT_VARS {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.home())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", AUTHOR_NAME)
            .env("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL)
            .env("GIT_COMMITTER_NAME", AUTHOR_NAME)
            .env("GIT_COMMITTER_EMAIL", AUTHOR_EMAIL);
        cmd
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }
}

/// `git http-backend` behind HTTP basic auth: the WSGI app [`GitRemote::serve_http`] runs.
const HTTP_BACKEND: &str = r#"
import base64, os, subprocess, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler

root, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start):
    if environ.get("HTTP_AUTHORIZATION") != want:
        start("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
        return [b"credentials required\n"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    env = {
        "GIT_PROJECT_ROOT": root, "GIT_HTTP_EXPORT_ALL": "1", "PATH": os.environ["PATH"],
        "PATH_INFO": environ["PATH_INFO"], "QUERY_STRING": environ.get("QUERY_STRING", ""),
        "REQUEST_METHOD": environ["REQUEST_METHOD"], "REMOTE_USER": user,
        "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""), "CONTENT_LENGTH": str(len(body)),
        "HTTP_CONTENT_ENCODING": environ.get("HTTP_CONTENT_ENCODING", ""),
        "GIT_PROTOCOL": environ.get("HTTP_GIT_PROTOCOL", ""),
    }
    out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
    head, sep, rest = out.partition(b"\r\n\r\n")
    if not sep:
        head, sep, rest = out.partition(b"\n\n")
    status, headers = "200 OK", []
    for line in head.decode().splitlines():
        key, _, value = line.partition(":")
        if key.lower() == "status":
            status = value.strip()
        else:
            headers.append((key.strip(), value.strip()))
    start(status, headers)
    return [rest]

make_server("127.0.0.1", port, app, handler_class=Quiet).serve_forever()
"#;

/// The remote served over HTTP too, only to `user:password`: a private remote. Stops on
/// drop.
pub struct HttpRemote {
    pub url: String,
    child: Child,
}

impl Drop for HttpRemote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GitRemote {
    /// Serves the bare repository with `git http-backend` (Python's wsgiref in front, which
    /// demands HTTP basic auth as `user:password`); returns once it answers.
    pub fn serve_http(&self, user: &str, password: &str) -> HttpRemote {
        let port = crate::free_port();
        let script = self.dir.path().join("http_backend.py");
        std::fs::write(&script, HTTP_BACKEND).expect("http backend script");
        let srv = self.dir.path().join("srv");
        // Python's own environment (pyenv finds itself through HOME); the backend's is
        // set in the script.
        let child = Command::new("python3")
            .arg(&script)
            .arg(&srv)
            .arg(port.to_string())
            .args([user, password])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting python3 for git http-backend: {e}"));
        let mut remote = HttpRemote {
            url: format!("http://127.0.0.1:{port}/repo.git"),
            child,
        };
        let deadline = Instant::now() + DAEMON_READY;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = remote.child.try_wait() {
                panic!("the git http-backend server exited with {status}");
            }
            assert!(Instant::now() < deadline, "git http-backend did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        remote
    }
}

impl Drop for GitRemote {
    fn drop(&mut self) {
        self.stop_daemon();
        if std::thread::panicking() {
            let kept =
                std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
            eprintln!(
                "kiln e2e: git remote and daemon log kept in {}",
                kept.display()
            );
        }
    }
}

// ---- Forge webhooks ----

/// The repository every payload names (the forge's, not the fixture's URL).
const OWNER: &str = "ada";
const REPO: &str = "engine";
const REPO_ID: u64 = 186_853_002;
const USER_ID: u64 = 21_031_067;
const HOOK_ID: u64 = 4242;
const GITLAB: &str = "https://gitlab.example.com";

/// Lowercase hex HMAC-SHA256 of `body` keyed by `secret`: the signature of GitHub's
/// `X-Hub-Signature-256` (after `sha256=`) and Gitea's `X-Gitea-Signature`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A fresh random-looking UUID (version 4 layout), for delivery ids.
pub fn delivery_id() -> String {
    use sha2::Digest;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let h = hex::encode(sha2::Sha256::digest(seed.as_bytes()));
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// POSTs a delivery to kiln's webhook endpoint for repository `repo`: `/hooks/REPO`.
pub fn post_hook(
    http_addr: &str,
    repo: &str,
    headers: &[(String, String)],
    body: &str,
) -> crate::http::Answer {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    crate::http::request_with_headers(
        http_addr,
        "POST",
        &format!("/hooks/{repo}"),
        &headers,
        body.as_bytes(),
    )
}

/// GitHub's `push` event. Headers as GitHub sends them; `X-Hub-Signature-256` only with a
/// secret (GitHub signs nothing without one). Its SHA-1 `X-Hub-Signature` is left out.
pub fn github_push(
    push: &Push,
    message: &str,
    secret: &str,
    delivery: &str,
) -> (Vec<(String, String)>, String) {
    let html = format!("https://github.com/{OWNER}/{REPO}");
    let deleted = push.after == ZERO_COMMIT;
    let head = (!deleted).then(|| {
        json!({
            "id": push.after,
            "tree_id": ZERO_COMMIT,
            "distinct": true,
            "message": message,
            "timestamp": rfc3339(now_secs()),
            "url": format!("{html}/commit/{}", push.after),
            "author": github_person(),
            "committer": github_person(),
            "added": [],
            "removed": [],
            "modified": [],
        })
    });
    let body = json!({
        "ref": push.git_ref,
        "before": push.before,
        "after": push.after,
        "repository": github_repository(),
        "pusher": { "name": OWNER, "email": AUTHOR_EMAIL },
        "sender": github_sender(),
        "created": push.before == ZERO_COMMIT,
        "deleted": deleted,
        "forced": false,
        "base_ref": null,
        "compare": format!("{html}/compare/{}...{}", short(&push.before), short(&push.after)),
        "commits": head.iter().collect::<Vec<_>>(),
        "head_commit": head,
    })
    .to_string();
    (github_headers("push", secret, delivery, &body), body)
}

/// GitHub's `ping` event, sent once when a webhook is made.
pub fn github_ping(secret: &str, delivery: &str) -> (Vec<(String, String)>, String) {
    let api = format!("https://api.github.com/repos/{OWNER}/{REPO}/hooks/{HOOK_ID}");
    let body = json!({
        "zen": "Keep it logically awesome.",
        "hook_id": HOOK_ID,
        "hook": {
            "type": "Repository",
            "id": HOOK_ID,
            "name": "web",
            "active": true,
            "events": ["push"],
            "config": {
                "content_type": "json",
                "insecure_ssl": "0",
                "url": format!("https://kiln.example.com/hooks/{REPO}"),
            },
            "updated_at": rfc3339(now_secs()),
            "created_at": rfc3339(now_secs()),
            "url": api,
            "test_url": format!("{api}/test"),
            "ping_url": format!("{api}/pings"),
            "deliveries_url": format!("{api}/deliveries"),
            "last_response": { "code": null, "status": "unused", "message": null },
        },
        "repository": github_repository(),
        "sender": github_sender(),
    })
    .to_string();
    (github_headers("ping", secret, delivery, &body), body)
}

/// GitLab's `Push Hook`, or `Tag Push Hook` for a tag. `X-Gitlab-Token` only with a token
/// (GitLab sends none without one); a fresh `X-Gitlab-Event-UUID` each call.
pub fn gitlab_push(push: &Push, message: &str, token: &str) -> (Vec<(String, String)>, String) {
    let web = format!("{GITLAB}/{OWNER}/{REPO}");
    let ssh = format!("git@gitlab.example.com:{OWNER}/{REPO}.git");
    let tag = push.git_ref.starts_with("refs/tags/");
    let deleted = push.after == ZERO_COMMIT;
    // A tag push lists no commits; a deletion has none to list.
    let commits: Vec<Value> = if tag || deleted {
        Vec::new()
    } else {
        vec![json!({
            "id": push.after,
            "message": message,
            "title": message.lines().next().unwrap_or(""),
            "timestamp": rfc3339(now_secs()),
            "url": format!("{web}/-/commit/{}", push.after),
            "author": { "name": AUTHOR_NAME, "email": AUTHOR_EMAIL },
            "added": [],
            "modified": [],
            "removed": [],
        })]
    };
    // Built apart: `json!` expands one entry at a time, recursively, and one object this big
    // passes rustc's recursion limit.
    let project = json!({
        "id": REPO_ID,
        "name": REPO,
        "description": "",
        "web_url": web,
        "avatar_url": null,
        "git_ssh_url": ssh,
        "git_http_url": format!("{web}.git"),
        "namespace": OWNER,
        "visibility_level": 20,
        "path_with_namespace": format!("{OWNER}/{REPO}"),
        "default_branch": "main",
        "ci_config_path": null,
        "homepage": web,
        "url": ssh,
        "ssh_url": ssh,
        "http_url": format!("{web}.git"),
    });
    let repository = json!({
        "name": REPO,
        "url": ssh,
        "description": "",
        "homepage": web,
        "git_http_url": format!("{web}.git"),
        "git_ssh_url": ssh,
        "visibility_level": 20,
    });
    let kind = if tag { "tag_push" } else { "push" };
    let body = json!({
        "object_kind": kind,
        "event_name": kind,
        "before": push.before,
        "after": push.after,
        "ref": push.git_ref,
        "ref_protected": !tag,
        "checkout_sha": (!deleted).then_some(&push.after),
        "message": null,
        "user_id": USER_ID,
        "user_name": AUTHOR_NAME,
        "user_username": OWNER,
        "user_email": AUTHOR_EMAIL,
        "user_avatar": format!("{GITLAB}/uploads/user/avatar/{USER_ID}/avatar.png"),
        "project_id": REPO_ID,
        "project": project,
        "total_commits_count": commits.len(),
        "commits": commits,
        "push_options": {},
        "repository": repository,
    })
    .to_string();
    let event = if tag { "Tag Push Hook" } else { "Push Hook" };
    let mut headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("User-Agent", "GitLab/17.0.0".to_string()),
        ("X-Gitlab-Event", event.to_string()),
        ("X-Gitlab-Instance", GITLAB.to_string()),
        (
            "X-Gitlab-Webhook-UUID",
            "5b9d2e9c-7a3e-4f1b-9c6d-2b1e8f0a4c7d".to_string(),
        ),
        ("X-Gitlab-Event-UUID", delivery_id()),
    ];
    if !token.is_empty() {
        headers.push(("X-Gitlab-Token", token.to_string()));
    }
    (owned(headers), body)
}

/// Gitea's `push` event (also sent for tags). Gitea sends its headers under three names:
/// `X-Gitea-*`, `X-Gogs-*` and GitHub's `X-GitHub-*` / `X-Hub-Signature-256`, with the same
/// HMAC; without a secret the signature headers are there and empty. Its SHA-1
/// `X-Hub-Signature` is left out.
pub fn gitea_push(
    push: &Push,
    message: &str,
    secret: &str,
    delivery: &str,
) -> (Vec<(String, String)>, String) {
    let html = format!("https://gitea.example.com/{OWNER}/{REPO}");
    let now = rfc3339(now_secs());
    let user = json!({
        "id": 1,
        "login": OWNER,
        "login_name": "",
        "full_name": AUTHOR_NAME,
        "email": AUTHOR_EMAIL,
        "avatar_url": format!("https://gitea.example.com/avatars/{OWNER}"),
        "username": OWNER,
    });
    let person = json!({ "name": AUTHOR_NAME, "email": AUTHOR_EMAIL, "username": OWNER });
    let repository = json!({
        "id": 1,
        "owner": user,
        "name": REPO,
        "full_name": format!("{OWNER}/{REPO}"),
        "description": "",
        "empty": false,
        "private": false,
        "fork": false,
        "template": false,
        "parent": null,
        "mirror": false,
        "size": 24,
        "html_url": html,
        "url": format!("https://gitea.example.com/api/v1/repos/{OWNER}/{REPO}"),
        "ssh_url": format!("git@gitea.example.com:{OWNER}/{REPO}.git"),
        "clone_url": format!("{html}.git"),
        "original_url": "",
        "website": "",
        "stars_count": 0,
        "forks_count": 0,
        "watchers_count": 1,
        "open_issues_count": 0,
        "default_branch": "main",
        "archived": false,
        "created_at": now,
        "updated_at": now,
    });
    let head = (push.after != ZERO_COMMIT).then(|| {
        json!({
            "id": push.after,
            "message": message,
            "url": format!("{html}/commit/{}", push.after),
            "author": person,
            "committer": person,
            "verification": null,
            "timestamp": now,
            "added": [],
            "removed": [],
            "modified": [],
        })
    });
    let body = json!({
        "ref": push.git_ref,
        "before": push.before,
        "after": push.after,
        "compare_url": format!("{html}/compare/{}...{}", push.before, push.after),
        "commits": head.iter().collect::<Vec<_>>(),
        "total_commits": usize::from(head.is_some()),
        "head_commit": head,
        "repository": repository,
        "pusher": user,
        "sender": user,
    })
    .to_string();
    let signature = if secret.is_empty() {
        String::new()
    } else {
        sign(secret, body.as_bytes())
    };
    let headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("User-Agent", "Go-http-client/1.1".to_string()),
        ("X-Gitea-Delivery", delivery.to_string()),
        ("X-Gitea-Event", "push".to_string()),
        ("X-Gitea-Event-Type", "push".to_string()),
        ("X-Gitea-Signature", signature.clone()),
        ("X-Gogs-Delivery", delivery.to_string()),
        ("X-Gogs-Event", "push".to_string()),
        ("X-Gogs-Event-Type", "push".to_string()),
        ("X-Gogs-Signature", signature.clone()),
        ("X-Hub-Signature-256", format!("sha256={signature}")),
        ("X-GitHub-Delivery", delivery.to_string()),
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Event-Type", "push".to_string()),
    ];
    (owned(headers), body)
}

fn github_headers(event: &str, secret: &str, delivery: &str, body: &str) -> Vec<(String, String)> {
    let mut headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("User-Agent", "GitHub-Hookshot/abc".to_string()),
        ("X-GitHub-Event", event.to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        ("X-GitHub-Hook-ID", HOOK_ID.to_string()),
        ("X-GitHub-Hook-Installation-Target-ID", REPO_ID.to_string()),
        (
            "X-GitHub-Hook-Installation-Target-Type",
            "repository".to_string(),
        ),
    ];
    if !secret.is_empty() {
        headers.push((
            "X-Hub-Signature-256",
            format!("sha256={}", sign(secret, body.as_bytes())),
        ));
    }
    owned(headers)
}

fn github_person() -> Value {
    json!({ "name": AUTHOR_NAME, "email": AUTHOR_EMAIL, "username": OWNER })
}

fn github_sender() -> Value {
    json!({
        "login": OWNER,
        "id": USER_ID,
        "node_id": "MDQ6VXNlcjIxMDMxMDY3",
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{USER_ID}?v=4"),
        "url": format!("https://api.github.com/users/{OWNER}"),
        "html_url": format!("https://github.com/{OWNER}"),
        "type": "User",
        "site_admin": false,
    })
}

/// A push event's repository. In push events GitHub gives `created_at` and `pushed_at` as
/// Unix seconds, and `updated_at` as a date.
fn github_repository() -> Value {
    let html = format!("https://github.com/{OWNER}/{REPO}");
    let now = now_secs();
    json!({
        "id": REPO_ID,
        "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=",
        "name": REPO,
        "full_name": format!("{OWNER}/{REPO}"),
        "private": false,
        "owner": {
            "name": OWNER,
            "email": AUTHOR_EMAIL,
            "login": OWNER,
            "id": USER_ID,
            "html_url": format!("https://github.com/{OWNER}"),
            "type": "User",
            "site_admin": false,
        },
        "html_url": html,
        "description": null,
        "fork": false,
        "url": html,
        "created_at": 1_557_933_565,
        "updated_at": rfc3339(now),
        "pushed_at": now,
        "git_url": format!("git://github.com/{OWNER}/{REPO}.git"),
        "ssh_url": format!("git@github.com:{OWNER}/{REPO}.git"),
        "clone_url": format!("{html}.git"),
        "svn_url": html,
        "homepage": null,
        "size": 0,
        "visibility": "public",
        "archived": false,
        "disabled": false,
        "default_branch": "main",
        "master_branch": "main",
    })
}

fn owned(headers: Vec<(&str, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The first twelve characters of a commit id, as GitHub's compare links show them.
fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix seconds as an RFC 3339 UTC time, `2024-02-29T12:00:00+00:00`.
fn rfc3339(secs: i64) -> String {
    let (year, month, day, h, m, s) = kiln_api::units::utc(secs);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}+00:00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_matches_githubs_documented_example() {
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20+00:00");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59+00:00");
    }

    #[test]
    fn delivery_ids_are_fresh_uuids() {
        let (a, b) = (delivery_id(), delivery_id());
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
    }
}
