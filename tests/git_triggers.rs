//! Git as the source of runs, on real binaries and a real remote (`git daemon` on
//! loopback): signed webhooks from GitHub, GitLab and Gitea start runs on the pushed commit
//! whose stages see the committed files; deliveries are deduplicated, forged ones refused;
//! polling starts the pushes no webhook told of, once; filters and `[skip ci]` start
//! nothing; a newer push supersedes an older run but lets its uninterruptible stages
//! finish; the branch map picks a deploy's environment; a leader killed after accepting a
//! webhook loses nothing; bad input gets clear errors.

use std::time::Duration;

use kiln_e2e::git::{GitRemote, Push, gitea_push, github_push, gitlab_push, post_hook};
use kiln_e2e::{Cluster, Options, bin, stage};
use serde_json::Value;

const SECRET: &str = "it-is-a-secret-to-everybody";

fn cluster(coordinators: usize) -> Cluster {
    Cluster::start(Options {
        coordinators,
        agents: 1,
        ..Options::default()
    })
}

/// `kiln repo add NAME URL --secret-file ... EXTRA...`, which must succeed.
fn add_repo(cluster: &Cluster, name: &str, url: &str, extra: &[&str]) {
    let secret = cluster.write("secret", SECRET);
    let mut args = vec!["repo", "add", name, url, "--secret-file", &secret];
    args.extend_from_slice(extra);
    let out = cluster.kiln(&args);
    assert!(
        out.status.success(),
        "kiln repo add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A remote whose `main` holds the checking pipeline and `hello.txt`, watched by `cluster`
/// as `app` (polled every `poll`).
fn watched(cluster: Cluster, poll: &str) -> (GitRemote, Cluster) {
    let remote = GitRemote::start();
    remote.commit(
        &[
            (".kiln/pipeline.yaml", CHECK_PIPELINE),
            ("hello.txt", "v0\n"),
        ],
        "init",
    );
    remote.push("main");
    add_repo(&cluster, "app", &remote.url(), &["--poll", poll]);
    (remote, cluster)
}

fn repo(cluster: &Cluster, name: &str) -> Value {
    cluster.kiln_json(&["repo", "show", name])
}

fn runs(cluster: &Cluster) -> Vec<Value> {
    cluster
        .kiln_json(&["status"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The runs started for `commit`.
fn runs_of(cluster: &Cluster, commit: &str) -> Vec<Value> {
    runs(cluster)
        .into_iter()
        .filter(|r| r["git"]["commit"] == commit)
        .collect()
}

/// The push of `commit` as `kiln repo show` lists it.
fn push_of(cluster: &Cluster, name: &str, commit: &str) -> Option<Value> {
    repo(cluster, name)["pushes"]
        .as_array()?
        .iter()
        .find(|p| p["after"] == commit)
        .cloned()
}

/// Every file called `name` below `dir`.
fn files_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if entry.file_name() == name {
                found.push(path);
            }
        }
    }
    found
}

fn leader_http(cluster: &Cluster) -> String {
    let i = cluster.leader().expect("a leader");
    cluster.coordinators[i].http.clone()
}

/// The run of `commit` once a push started it, and once it ended: its id and its status.
fn finished_run_of(cluster: &mut Cluster, commit: &str) -> (String, Value) {
    cluster.wait_for("the push's run", Duration::from_secs(60), |c| {
        !runs_of(c, commit).is_empty()
    });
    let run = runs_of(cluster, commit)[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let done = wait_run_ended(cluster, &run);
    (run, done)
}

fn wait_run_ended(cluster: &mut Cluster, run: &str) -> Value {
    // Every stage ended (a superseded run is cancelled while its uninterruptible stages
    // still run).
    cluster.wait_for(&format!("{run} to end"), Duration::from_secs(60), |c| {
        c.run_status(run)["finished_ms"].as_i64().unwrap_or(0) > 0
    });
    cluster.run_status(run)
}

const CHECK_PIPELINE: &str = r#"name: app
stages:
  - name: check
    command: cat hello.txt && echo "repo=$KILN_REPO branch=$KILN_BRANCH commit=$KILN_COMMIT"
    timeout: 1m
"#;

#[test]
fn a_signed_github_push_starts_one_run_on_its_commit_and_forged_deliveries_change_nothing() {
    let (remote, mut cluster) = watched(cluster(1), "off");

    let after = remote.commit(&[("hello.txt", "hello from v1\n")], "Say hello");
    let push = remote.push("main");
    assert_eq!(push.after, after);
    let (headers, body) = github_push(&push, "Say hello", SECRET, "delivery-1");
    let http = leader_http(&cluster);

    // Forged: the wrong secret, and a GitLab token that is not the repository's.
    let (forged, _) = github_push(&push, "Say hello", "not-the-secret-at-all", "delivery-x");
    let a = post_hook(&http, "app", &forged, &body);
    assert_eq!(a.status, 401, "{}", a.body);
    let (gitlab, gitlab_body) = gitlab_push(&push, "Say hello", "a-wrong-token-of-some-length");
    let a = post_hook(&http, "app", &gitlab, &gitlab_body);
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        push_of(&cluster, "app", &after).is_none(),
        "a refused delivery recorded a push"
    );
    assert!(runs_of(&cluster, &after).is_empty());

    let a = post_hook(&http, "app", &headers, &body);
    assert_eq!(a.status, 202, "{}", a.body);
    assert!(a.body.contains("\"created\":true"), "{}", a.body);
    // The same delivery again: recorded once.
    let again = post_hook(&http, "app", &headers, &body);
    assert_eq!(again.status, 202, "{}", again.body);
    assert!(again.body.contains("\"created\":false"), "{}", again.body);

    let (run, done) = finished_run_of(&mut cluster, &after);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["trigger"], "webhook");
    assert_eq!(done["git"]["ref"], "refs/heads/main");
    assert_eq!(done["git"]["title"], "Say hello");
    assert_eq!(done["git"]["author"], "Ada Lovelace");
    let logs = cluster.kiln(&["logs", &run, "check"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("hello from v1"),
        "the stage saw another tree: {logs}"
    );
    assert!(
        logs.contains(&format!("repo=app branch=main commit={after}")),
        "{logs}"
    );
    assert_eq!(runs_of(&cluster, &after).len(), 1, "one delivery, one run");
    // Nothing of the checkout outlives its task: no working tree is left on the agent.
    let agent = cluster.agent_dir("agent-1");
    assert!(
        !files_named(&agent, "output.log").is_empty(),
        "not the agent's data dir"
    );
    cluster.wait_for(
        "the checkout to be removed",
        Duration::from_secs(10),
        |_| files_named(&agent, "hello.txt").is_empty(),
    );

    // A Gitea push of a new commit starts its own run.
    let next = remote.commit(&[("hello.txt", "v2\n")], "Next");
    let push = remote.push("main");
    let (headers, body) = gitea_push(&push, "Next", SECRET, "gitea-1");
    let a = post_hook(&http, "app", &headers, &body);
    assert_eq!(a.status, 202, "{}", a.body);
    cluster.wait_for("the Gitea push's run", Duration::from_secs(30), |c| {
        runs_of(c, &next).len() == 1
    });
}

#[test]
fn polling_starts_a_push_no_webhook_told_of_once_and_a_late_webhook_starts_nothing_more() {
    let (remote, mut cluster) = watched(cluster(1), "1s");
    // The baseline starts nothing.
    let base = remote.head("main").unwrap();
    assert!(runs_of(&cluster, &base).is_empty());

    let after = remote.commit(&[("hello.txt", "polled\n")], "Missed webhook");
    let push = remote.push("main");
    cluster.wait_for("the poll to start the push", Duration::from_secs(20), |c| {
        !runs_of(c, &after).is_empty()
    });
    let run = runs_of(&cluster, &after)[0].clone();
    assert_eq!(run["trigger"], "poll");
    let (headers, body) = github_push(&push, "Missed webhook", SECRET, "late-1");
    let a = post_hook(&leader_http(&cluster), "app", &headers, &body);
    assert_eq!(a.status, 202, "{}", a.body);
    assert!(a.body.contains("\"created\":false"), "{}", a.body);
    let id = run["id"].as_str().unwrap().to_string();
    let done = wait_run_ended(&mut cluster, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(runs_of(&cluster, &after).len(), 1, "one push, one run");
}

#[test]
fn skip_ci_a_path_filter_and_a_branch_filter_each_start_nothing() {
    let pipeline = r#"name: app
on:
  branches: [main]
  paths_ignore: ["docs/**"]
stages:
  - name: check
    command: "true"
"#;
    let remote = GitRemote::start();
    remote.commit(
        &[(".kiln/pipeline.yaml", pipeline), ("src/a.txt", "a\n")],
        "init",
    );
    remote.push("main");
    let mut cluster = cluster(1);
    add_repo(&cluster, "app", &remote.url(), &["--poll", "off"]);
    let http = leader_http(&cluster);
    let deliver = |message: &str, push: &Push, id: &str| {
        let (h, b) = github_push(push, message, SECRET, id);
        let a = post_hook(&http, "app", &h, &b);
        assert_eq!(a.status, 202, "{}", a.body);
    };

    let skip = remote.commit(&[("src/a.txt", "b\n")], "Tweak [skip ci]");
    deliver("Tweak [skip ci]", &remote.push("main"), "d1");
    let docs = remote.commit(&[("docs/guide.md", "words\n")], "Docs only");
    deliver("Docs only", &remote.push("main"), "d2");
    remote.checkout("feature");
    let feature = remote.commit(&[("src/a.txt", "c\n")], "On a branch");
    deliver("On a branch", &remote.push("feature"), "d3");
    // A push that passes every filter, to know the others were looked at before it.
    remote.checkout("main");
    let code = remote.commit(&[("src/a.txt", "d\n")], "Code");
    deliver("Code", &remote.push("main"), "d4");
    cluster.wait_for("the code push's run", Duration::from_secs(30), |c| {
        runs_of(c, &code).len() == 1
    });
    for (commit, why) in [
        (&skip, "skip ci"),
        (&docs, "paths_ignore"),
        (&feature, "on.branches"),
    ] {
        let p = push_of(&cluster, "app", commit).expect("the push is recorded");
        assert_eq!(p["status"], "skipped", "{p:#}");
        assert!(
            p["reason"].as_str().unwrap_or("").contains(why),
            "{why}: {p:#}"
        );
        assert!(runs_of(&cluster, commit).is_empty());
    }
}

#[test]
fn a_newer_push_supersedes_the_older_run_but_lets_its_uninterruptible_deploy_finish() {
    let service = format!(
        "name: web
command: sleep 2 && ADDR=127.0.0.1:$PORT exec {}
env: {{ MODEL_WEIGHTS: {}/examples/model-server/model/weights-v1.json }}
replicas: 1
resources: {{ cpu: 100m, memory: 64Mi }}
health:
  http: /ready
  interval: 100ms
  startup: 20s
",
        bin("model-server").display(),
        env!("CARGO_MANIFEST_DIR")
    );
    // `prep` waits as long as the commit says: the newer run deploys only after the older
    // run's deploy is done (a newer deploy of the same service would supersede it).
    let pipeline = r#"name: app
concurrency: { group: "${{ git.branch }}", cancel_in_progress: true }
stages:
  - name: wait
    command: sleep 60
  - name: prep
    command: sleep "$(cat delay.txt)"
  - name: ship
    needs: [prep]
    deploy: { service: deploy/web.yaml }
    interruptible: false
"#;
    let remote = GitRemote::start();
    remote.commit(
        &[
            (".kiln/pipeline.yaml", pipeline),
            ("deploy/web.yaml", &service),
        ],
        "init",
    );
    remote.push("main");
    let mut cluster = cluster(1);
    assert!(cluster.kiln(&["env", "create", "staging"]).status.success());
    add_repo(
        &cluster,
        "app",
        &remote.url(),
        &["--poll", "off", "--branch", "main=staging"],
    );
    let http = leader_http(&cluster);

    let first = remote.commit(&[("delay.txt", "0\n")], "First");
    let (h, b) = github_push(&remote.push("main"), "First", SECRET, "p1");
    assert_eq!(post_hook(&http, "app", &h, &b).status, 202);
    cluster.wait_for(
        "the first run's stages to run",
        Duration::from_secs(30),
        |c| {
            runs_of(c, &first).first().is_some_and(|r| {
                stage(r, "wait")["status"] == "running" && stage(r, "ship")["status"] == "running"
            })
        },
    );
    let old = runs_of(&cluster, &first)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let second = remote.commit(&[("delay.txt", "30\n")], "Second");
    let (h, b) = github_push(&remote.push("main"), "Second", SECRET, "p2");
    assert_eq!(post_hook(&http, "app", &h, &b).status, 202);
    cluster.wait_for("the second run", Duration::from_secs(30), |c| {
        runs_of(c, &second).len() == 1
    });
    let new = runs_of(&cluster, &second)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let done = wait_run_ended(&mut cluster, &old);
    assert_eq!(done["status"], "cancelled", "{done:#}");
    let want = format!("cancelled: superseded by {new} ({})", &second[..7]);
    assert_eq!(done["message"], want.as_str(), "{done:#}");
    assert_eq!(stage(&done, "wait")["status"], "cancelled", "{done:#}");
    assert_eq!(
        stage(&done, "ship")["status"],
        "succeeded",
        "the uninterruptible deploy was cut short: {done:#}"
    );
    // The branch map chose the environment; the revision records its source.
    let h = kiln_e2e::services::history(&cluster, "web", Some("staging"));
    let rev = &h["revisions"][0];
    assert_eq!(rev["git"]["commit"], first.as_str(), "{h:#}");
    assert_eq!(rev["git"]["title"], "First", "{h:#}");
    let _ = cluster.kiln(&["cancel", &new]);
}

#[test]
fn a_leader_killed_after_accepting_a_webhook_loses_nothing_and_the_run_starts_once() {
    let (mut remote, mut cluster) = watched(cluster(3), "off");

    let after = remote.commit(&[("hello.txt", "survived\n")], "Survive");
    let push = remote.push("main");
    // The remote stops answering: the leader takes the webhook but cannot start it.
    remote.stop_daemon();
    let (h, b) = github_push(&push, "Survive", SECRET, "failover-1");
    let leader = cluster.leader().expect("a leader");
    let a = post_hook(&cluster.coordinators[leader].http, "app", &h, &b);
    assert_eq!(a.status, 202, "{}", a.body);
    cluster.wait_for("the start to fail once", Duration::from_secs(30), |c| {
        push_of(c, "app", &after).is_some_and(|p| !p["reason"].as_str().unwrap_or("").is_empty())
    });
    assert!(runs_of(&cluster, &after).is_empty());

    cluster.coordinators[leader].proc.kill();
    remote.start_daemon();
    cluster.wait_for("a new leader", Duration::from_secs(30), |c| {
        c.leader().is_some_and(|l| l != leader)
    });
    let (_, done) = finished_run_of(&mut cluster, &after);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(runs_of(&cluster, &after).len(), 1);
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let mut remote = GitRemote::start();
    remote.commit(&[("README", "no pipeline here\n")], "init");
    remote.push("main");
    let mut cluster = cluster(1);

    // A remote that cannot be reached: refused, with the URL named.
    let dead = format!("git://127.0.0.1:{}/nothing.git", kiln_e2e::free_port());
    let out = cluster.kiln(&["repo", "add", "dead", &dead]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("url") && err.contains(&dead), "{err}");
    assert!(
        cluster
            .kiln_json(&["repo", "list"])
            .as_array()
            .is_some_and(|a| a.is_empty()),
        "a refused repository was added"
    );

    add_repo(&cluster, "app", &remote.url(), &["--poll", "1s"]);
    let http = leader_http(&cluster);
    // Signed, but not a push payload.
    let body = "this is not json";
    let headers = vec![
        ("X-GitHub-Event".to_string(), "push".to_string()),
        (
            "X-Hub-Signature-256".to_string(),
            format!("sha256={}", kiln_e2e::git::sign(SECRET, body.as_bytes())),
        ),
    ];
    let a = post_hook(&http, "app", &headers, body);
    assert_eq!(a.status, 400, "{}", a.body);
    // Larger than the limit.
    let big = "x".repeat(6 << 20);
    let a = post_hook(&http, "app", &headers, &big);
    assert_eq!(a.status, 413, "{}", a.body);
    // An unknown repository.
    let a = post_hook(&http, "nope", &headers, body);
    assert_eq!(a.status, 404, "{}", a.body);

    // A commit without the pipeline file: its run fails, naming the path and the commit.
    let after = remote.commit(&[("README", "still none\n")], "No pipeline");
    let (h, b) = github_push(&remote.push("main"), "No pipeline", SECRET, "bad-1");
    assert_eq!(post_hook(&http, "app", &h, &b).status, 202);
    cluster.wait_for("the failed run", Duration::from_secs(30), |c| {
        !runs_of(c, &after).is_empty()
    });
    let run = runs_of(&cluster, &after)[0].clone();
    assert_eq!(run["status"], "failed", "{run:#}");
    let message = run["message"].as_str().unwrap_or("");
    assert!(
        message.contains(".kiln/pipeline.yaml") && message.contains(&after),
        "{run:#}"
    );

    // The remote goes away: the poll error shows on the repository.
    remote.stop_daemon();
    cluster.wait_for("the poll error", Duration::from_secs(20), |c| {
        !repo(c, "app")["poll_error"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    });
    remote.start_daemon();
    cluster.wait_for("the poll error to clear", Duration::from_secs(20), |c| {
        repo(c, "app")["poll_error"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    });
}

#[test]
fn kiln_run_runs_a_repositorys_pipeline_at_a_ref_by_hand() {
    let remote = GitRemote::start();
    remote.commit(
        &[
            (".kiln/pipeline.yaml", CHECK_PIPELINE),
            ("hello.txt", "tagged\n"),
        ],
        "init",
    );
    let head = remote.commit(&[("hello.txt", "by hand\n")], "Second");
    remote.push("main");
    let cluster = cluster(1);
    add_repo(&cluster, "app", &remote.url(), &["--poll", "off"]);
    let out = cluster.kiln(&[
        "run", "--repo", "app", "--ref", "main", "--follow", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["git"]["commit"], head.as_str());
    let id = run["id"].as_str().unwrap();
    let logs = cluster.kiln(&["logs", id, "check"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("by hand"));
    // Again by hand: a second run of the same commit (a manual run is never a duplicate).
    let out = cluster.kiln(&["run", "--repo", "app", "--ref", "main"]);
    assert!(out.status.success());
    assert_eq!(runs_of(&cluster, &head).len(), 2);
    // A ref that is not there.
    let out = cluster.kiln(&["run", "--repo", "app", "--ref", "no-such-branch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-branch"));
}

#[test]
fn a_git_triggered_build_takes_its_context_from_the_checkout_and_its_command_runs_there() {
    if !kiln_e2e::docker::docker_or_skip(
        "a_git_triggered_build_takes_its_context_from_the_checkout_and_its_command_runs_there",
    ) {
        return;
    }
    let base = kiln_e2e::docker::base_image();
    let registry = kiln_e2e::docker::Registry::start();
    // A message no earlier run built, so the image is new to this daemon.
    let nonce = format!("{:x}", kiln_e2e::now_ms());
    let pipeline = r#"name: ship
stages:
  - name: image
    build: { context: app, name: e2e/from-git }
    command: echo "prepared at $KILN_COMMIT" > prepared
  - name: smoke
    needs: [image]
    image: ${{ stages.image.image }}
    command: ["sh", "-c", "cat /message /prepared"]
"#;
    let dockerfile = format!("FROM {base}\nCOPY message prepared /\n");
    let remote = GitRemote::start();
    remote.commit(&[(".kiln/pipeline.yaml", pipeline)], "init");
    remote.push("main");
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        agent_args: vec!["--registry".into(), registry.addr.clone()],
        ..Options::default()
    });
    add_repo(&cluster, "app", &remote.url(), &["--poll", "off"]);
    let message = format!("built from git {nonce}\n");
    let after = remote.commit(
        &[("app/Dockerfile", &dockerfile), ("app/message", &message)],
        "An image",
    );
    let (h, b) = github_push(&remote.push("main"), "An image", SECRET, "img-1");
    assert_eq!(post_hook(&leader_http(&cluster), "app", &h, &b).status, 202);
    let (run, done) = finished_run_of(&mut cluster, &after);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let logs = cluster.kiln(&["logs", &run, "smoke"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains(&message.trim().to_string()), "{logs}");
    assert!(logs.contains(&format!("prepared at {after}")), "{logs}");
}

#[test]
fn a_private_remote_is_read_with_the_credentials_file_it_names() {
    let remote = GitRemote::start();
    remote.commit(
        &[
            (".kiln/pipeline.yaml", CHECK_PIPELINE),
            ("hello.txt", "v0\n"),
        ],
        "init",
    );
    remote.push("main");
    let private = remote.serve_http("kiln", "s3cret-token");
    let mut cluster = cluster(1);

    // Without credentials the remote refuses kiln, and so does `repo add`.
    let out = cluster.kiln(&["repo", "add", "app", &private.url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&private.url), "{err}");

    let port = private
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    let creds = cluster.write(
        "git-credentials",
        &format!("http://kiln:s3cret-token@{port}\n"),
    );
    add_repo(
        &cluster,
        "app",
        &private.url,
        &["--poll", "off", "--credentials", &creds],
    );
    let after = remote.commit(&[("hello.txt", "private hello\n")], "Private");
    let (h, b) = github_push(&remote.push("main"), "Private", SECRET, "private-1");
    assert_eq!(post_hook(&leader_http(&cluster), "app", &h, &b).status, 202);
    let (run, done) = finished_run_of(&mut cluster, &after);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let logs = cluster.kiln(&["logs", &run, "check"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("private hello"));
}

#[test]
fn a_local_repository_is_read_only_where_the_coordinator_allows_it() {
    let remote = GitRemote::start();
    remote.commit(
        &[
            (".kiln/pipeline.yaml", CHECK_PIPELINE),
            ("hello.txt", "local\n"),
        ],
        "init",
    );
    let head = remote.push("main").after;
    let path = remote.path().display().to_string();

    // A shared cluster: a path on the coordinator is refused, naming the way to allow it.
    let shared = cluster(1);
    let out = shared.kiln(&["repo", "add", "app", &path]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-local-repositories"), "{err}");
    drop(shared);

    // One user's machine (as kiln dev runs): it is read like a remote.
    let cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 1,
        coordinator_args: vec!["--allow-local-repositories".into()],
        ..Options::default()
    });
    add_repo(&cluster, "app", &path, &["--poll", "off"]);
    let out = cluster.kiln(&["run", "--repo", "app", "--follow", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["git"]["commit"], head.as_str());
}
