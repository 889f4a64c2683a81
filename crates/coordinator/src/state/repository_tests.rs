//! Stories about pushes: recorded once however they arrive, started once whoever proposes
//! it, superseding older runs of their group, deploying where their branch goes.

use super::tests::{event, place, register};
use super::*;
use kiln_api::validate::parse_pipeline;

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccccccccccccccccccccccccccc";
const MAIN: &str = "refs/heads/main";

fn with_repository() -> ClusterState {
    let mut s = ClusterState::default();
    let repository = Repository {
        name: "app".into(),
        url: "git://example/app.git".into(),
        pipeline: ".kiln/pipeline.yaml".into(),
        branches: vec![
            ("main".into(), "production".into()),
            ("*".into(), "staging".into()),
        ],
        poll_ms: 60_000,
        secret: "s".repeat(16),
        credentials: None,
        created_ms: 0,
        heads: [(MAIN.to_string(), A.to_string())].into(),
        poll_error: None,
        polled_ms: None,
    };
    let r = s.apply(&Command::AddRepository {
        repository: Box::new(repository),
    });
    assert_eq!(r, RepositoryChanged.into());
    s
}

fn record(s: &mut ClusterState, git_ref: &str, after: &str, source: PushSource) -> PushRecorded {
    let before = s.repositories["app"].heads.get(git_ref).cloned();
    match s.apply(&Command::RecordPush {
        repository: "app".into(),
        git_ref: git_ref.into(),
        before: before.unwrap_or_else(|| kiln_api::git::ZERO_COMMIT.into()),
        after: after.into(),
        source,
        now_ms: 10,
    }) {
        Response::PushRecorded(r) => r,
        other => panic!("{other:?}"),
    }
}

fn webhook(delivery: &str) -> PushSource {
    PushSource::Webhook {
        forge: "github".into(),
        delivery: Some(delivery.into()),
    }
}

fn git(commit: &str) -> GitInfo {
    GitInfo {
        repository: "app".into(),
        url: "git://example/app.git".into(),
        git_ref: MAIN.into(),
        commit: commit.into(),
        author: "Ada".into(),
        title: "a change".into(),
    }
}

fn run_of(yaml: &str, commit: &str) -> PushOutcome {
    run_on(yaml, MAIN, commit)
}

fn run_on(yaml: &str, git_ref: &str, commit: &str) -> PushOutcome {
    PushOutcome::Run {
        pipeline: Box::new(parse_pipeline("p.yaml", yaml).unwrap()),
        git: GitInfo {
            git_ref: git_ref.into(),
            ..git(commit)
        },
    }
}

fn start(s: &mut ClusterState, push: u64, outcome: PushOutcome) -> PushStarted {
    match s.apply(&Command::StartPush {
        push,
        outcome,
        now_ms: 20,
    }) {
        Response::PushStarted(r) => r,
        other => panic!("{other:?}"),
    }
}

const ONE: &str = "name: p\nstages:\n  - name: a\n    command: \"true\"\n";

#[test]
fn a_push_is_recorded_once_however_it_arrives() {
    let mut s = with_repository();
    let first = record(&mut s, MAIN, B, webhook("d1"));
    assert!(first.created);
    for again in [webhook("d1"), webhook("d2"), PushSource::Poll] {
        let r = record(&mut s, MAIN, B, again.clone());
        assert_eq!(r.push, first.push, "{again:?}");
        assert!(!r.created, "{again:?}");
    }
    // The same commit on another ref is another push.
    assert!(record(&mut s, "refs/heads/dev", B, PushSource::Poll).created);
    assert_eq!(s.pushes.len(), 2);
    assert_eq!(s.repositories["app"].heads[MAIN], B);
}

#[test]
fn a_manual_trigger_is_never_a_duplicate_but_its_retry_is() {
    let mut s = with_repository();
    let hook = record(&mut s, MAIN, B, webhook("d1"));
    let manual = || PushSource::Manual {
        request_id: "manual r1".into(),
    };
    let by_hand = record(&mut s, MAIN, B, manual());
    assert!(by_hand.created && by_hand.push != hook.push);
    let retried = record(&mut s, MAIN, B, manual());
    assert_eq!((retried.push, retried.created), (by_hand.push, false));
}

#[test]
fn a_deletion_forgets_the_head_and_records_nothing() {
    let mut s = with_repository();
    let r = record(&mut s, MAIN, kiln_api::git::ZERO_COMMIT, webhook("del"));
    assert_eq!((r.push, r.created), (None, false));
    assert!(s.repositories["app"].heads.is_empty());
    assert!(s.pushes.is_empty());
}

#[test]
fn a_push_starts_once_whoever_proposes_it() {
    let mut s = with_repository();
    let push = record(&mut s, MAIN, B, webhook("d1")).push.unwrap();
    let first = start(&mut s, push, run_of(ONE, B));
    assert!(first.created);
    let run = first.run.unwrap();
    assert_eq!(s.runs[&run].git.as_ref().unwrap().commit, B);
    assert_eq!(s.runs[&run].trigger, "webhook");
    // A second leader proposing it again, with whatever it made of it.
    let again = start(&mut s, push, PushOutcome::Skip { reason: "x".into() });
    assert_eq!((again.run, again.created), (Some(run), false));
    assert_eq!(s.runs.len(), 1);
}

#[test]
fn a_skipped_push_starts_nothing_and_says_why() {
    let mut s = with_repository();
    let push = record(&mut s, MAIN, B, webhook("d1")).push.unwrap();
    let reason = "the head commit asks to skip CI (\"[skip ci]\")".to_string();
    let r = start(
        &mut s,
        push,
        PushOutcome::Skip {
            reason: reason.clone(),
        },
    );
    assert_eq!(r.run, None);
    assert_eq!(s.pushes[&push].status, PushStatus::Skipped { reason });
    assert!(s.runs.is_empty());
}

#[test]
fn a_push_without_a_pipeline_is_a_failed_run_that_says_why() {
    let mut s = with_repository();
    let push = record(&mut s, MAIN, B, webhook("d1")).push.unwrap();
    let reason = format!(".kiln/pipeline.yaml: not found at commit {B}");
    let outcome = PushOutcome::Fail {
        pipeline: "app".into(),
        reason: reason.clone(),
        git: git(B),
    };
    let run = start(&mut s, push, outcome).run.unwrap();
    assert_eq!(s.runs[&run].status, RunStatus::Failed);
    assert_eq!(s.runs[&run].message.as_deref(), Some(reason.as_str()));
    assert!(s.pending.is_empty());
}

#[test]
fn a_newer_push_supersedes_the_older_run_but_spares_its_running_uninterruptible_stage() {
    let yaml = "name: p
concurrency: { group: \"${{ git.branch }}\", cancel_in_progress: true }
stages:
  - name: work
    command: sleep 60
  - name: deploy
    command: ./deploy
    interruptible: false
  - name: after
    needs: [deploy]
    command: \"true\"
";
    let mut s = with_repository();
    register(&mut s, "n1", 4000);
    let p1 = record(&mut s, MAIN, B, webhook("d1")).push.unwrap();
    let old = start(&mut s, p1, run_of(yaml, B)).run.unwrap();
    for stage in [0, 1] {
        place(&mut s, old, stage, "n1");
        event(&mut s, old, stage, "n1", TaskStatus::Running);
    }
    let p2 = record(&mut s, MAIN, C, webhook("d2")).push.unwrap();
    let started = start(&mut s, p2, run_of(yaml, C));
    let new = started.run.unwrap();

    let run = &s.runs[&old];
    assert_eq!(run.status, RunStatus::Cancelled);
    let want = format!("cancelled: superseded by {} (ccccccc)", run_id(new));
    assert_eq!(run.message.as_deref(), Some(want.as_str()));
    assert_eq!(
        started.kills.len(),
        1,
        "only the interruptible stage is killed"
    );
    assert_eq!(started.kills[0].task, TaskRef::stage(old, 0));
    assert_eq!(
        s.task(TaskRef::stage(old, 1)).unwrap().status,
        TaskStatus::Running
    );
    assert_eq!(
        s.task(TaskRef::stage(old, 2)).unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(run.finished_ms, None, "the spared stage still runs");
    // It finishes; nothing after it starts, and the run ends cancelled.
    event(&mut s, old, 1, "n1", TaskStatus::Succeeded);
    event(&mut s, old, 0, "n1", TaskStatus::Failed);
    let run = &s.runs[&old];
    assert_eq!(
        s.task(TaskRef::stage(old, 1)).unwrap().status,
        TaskStatus::Succeeded
    );
    assert_eq!(
        (run.status, run.finished_ms.is_some()),
        (RunStatus::Cancelled, true)
    );
    assert!(!s.runs[&new].status.is_terminal());
}

#[test]
fn other_groups_and_other_branches_are_not_superseded() {
    let yaml = "name: p
concurrency: { group: \"${{ git.branch }}\", cancel_in_progress: true }
stages:
  - name: a
    command: \"true\"
";
    let mut s = with_repository();
    let p1 = record(&mut s, "refs/heads/dev", B, webhook("d1"))
        .push
        .unwrap();
    let dev = start(&mut s, p1, run_on(yaml, "refs/heads/dev", B))
        .run
        .unwrap();
    let p2 = record(&mut s, MAIN, C, webhook("d2")).push.unwrap();
    start(&mut s, p2, run_of(yaml, C));
    assert_eq!(
        s.runs[&dev].status,
        RunStatus::Pending,
        "another branch's group"
    );
}

#[test]
fn the_branch_map_decides_where_an_unnamed_deploy_goes() {
    let mut s = with_repository();
    let push = record(&mut s, MAIN, B, webhook("d1")).push.unwrap();
    let run = start(&mut s, push, run_of(ONE, B)).run.unwrap();
    assert_eq!(s.branch_environment(run).as_deref(), Some("production"));
    let push = record(&mut s, "refs/heads/feature/x", C, webhook("d2"))
        .push
        .unwrap();
    let outcome = run_on(ONE, "refs/heads/feature/x", C);
    let run = start(&mut s, push, outcome).run.unwrap();
    assert_eq!(
        s.branch_environment(run),
        None,
        "`*` stays within one segment: feature/x matches no glob"
    );
}

#[test]
fn removing_a_repository_drops_its_received_pushes_and_refuses_new_ones() {
    let mut s = with_repository();
    record(&mut s, MAIN, B, webhook("d1")).push.unwrap();
    s.apply(&Command::RemoveRepository { name: "app".into() });
    assert!(s.pushes.is_empty(), "nothing is left to start");
    let r = s.apply(&Command::RecordPush {
        repository: "app".into(),
        git_ref: MAIN.into(),
        before: B.into(),
        after: C.into(),
        source: PushSource::Poll,
        now_ms: 30,
    });
    assert!(matches!(r, Response::Rejected { .. }), "{r:?}");
}

#[test]
fn a_repository_keeps_a_bounded_number_of_ended_pushes() {
    let mut s = with_repository();
    let total = repositories::MAX_PUSHES_PER_REPOSITORY + 5;
    for n in 1..=total {
        let commit = format!("{n:040x}");
        let push = record(&mut s, MAIN, &commit, PushSource::Poll)
            .push
            .unwrap();
        start(&mut s, push, PushOutcome::Skip { reason: "x".into() });
    }
    let kept = s.pushes.len();
    assert!(
        kept <= repositories::MAX_PUSHES_PER_REPOSITORY + 1,
        "{kept}"
    );
    assert_eq!(s.push_keys.len(), kept);
}

#[test]
fn a_poll_that_read_the_heads_before_a_webhook_moved_them_records_nothing() {
    let mut s = with_repository();
    // The poll read main at A, then a webhook recorded C, then the poll proposes B.
    assert!(record(&mut s, MAIN, C, webhook("d1")).created);
    let r = s.apply(&Command::RecordPush {
        repository: "app".into(),
        git_ref: MAIN.into(),
        before: A.into(),
        after: B.into(),
        source: PushSource::Poll,
        now_ms: 11,
    });
    assert_eq!(
        r,
        PushRecorded {
            push: None,
            created: false
        }
        .into()
    );
    assert_eq!(
        s.repositories["app"].heads[MAIN], C,
        "the head stays the newer commit"
    );
    assert_eq!(s.pushes.len(), 1);
}

#[test]
fn a_repository_added_again_starts_afresh() {
    let mut s = with_repository();
    let push = record(&mut s, MAIN, B, webhook("d1")).push.unwrap();
    start(&mut s, push, PushOutcome::Skip { reason: "x".into() });
    s.apply(&Command::RemoveRepository { name: "app".into() });
    assert!(s.pushes.is_empty() && s.push_keys.is_empty());
    let mut again = with_repository();
    std::mem::swap(&mut again.repositories, &mut s.repositories);
    assert!(record(&mut s, MAIN, B, webhook("d1")).created);
}
