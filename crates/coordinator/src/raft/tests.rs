//! openraft's own storage test suite, run against the sled store.

use openraft::testing::{StoreBuilder, Suite};

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::{StorageError, TypeConfig};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = super::open_db(dir.path()).expect("open sled");
        let log = LogStore::open(&db).expect("log store");
        let sm = StateMachineStore::open(&db)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_sled() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}

#[tokio::test]
async fn a_reopened_store_has_its_log_and_vote() {
    use openraft::storage::RaftLogStorage;
    let dir = tempfile::tempdir().unwrap();
    {
        let db = super::open_db(dir.path()).unwrap();
        let mut log = LogStore::open(&db).unwrap();
        log.save_vote(&openraft::Vote::new(3, 1)).await.unwrap();
    }
    let db = super::open_db(dir.path()).unwrap();
    let mut log = LogStore::open(&db).unwrap();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(openraft::Vote::new(3, 1))
    );
}

#[tokio::test]
async fn archived_runs_travel_in_snapshots_to_a_member_that_installs_one() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, RaftSnapshotBuilder};

    use crate::state::{Command, Response};

    let entry = |index: u64, command: Command| Entry::<TypeConfig> {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    };
    let dir = tempfile::tempdir().unwrap();
    let db = super::open_db(dir.path()).unwrap();
    let mut sm = StateMachineStore::open(&db).unwrap();
    let pipeline = kiln_api::validate::parse_pipeline(
        "p.yaml",
        "name: p\nstages:\n  - name: a\n    command: x\n",
    )
    .unwrap();
    let submitted = sm
        .apply([entry(
            1,
            Command::SubmitRun {
                request_id: "r".into(),
                trigger: "manual".into(),
                pipeline,
                only_tests: Default::default(),
                now_ms: 0,
            },
        )])
        .await
        .unwrap();
    let Response::Submitted(s) = &submitted[0] else {
        panic!("{submitted:?}")
    };
    let run = s.run;
    sm.apply([entry(2, Command::CancelRun { run, now_ms: 5 })])
        .await
        .unwrap();
    sm.apply([entry(3, Command::ArchiveRuns { runs: vec![run] })])
        .await
        .unwrap();
    let shared = sm.shared();
    assert!(shared.read().runs.is_empty(), "out of memory");
    assert_eq!(
        shared.archived(run).map(|r| r.number),
        Some(run),
        "into the archive"
    );

    // Another member, empty, installs the snapshot: it has the archived run too.
    let mut builder = sm.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other_db = super::open_db(other_dir.path()).unwrap();
    let mut other = StateMachineStore::open(&other_db).unwrap();
    other
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    let theirs = other.shared();
    assert!(theirs.read().runs.is_empty());
    assert_eq!(theirs.archived(run).map(|r| r.number), Some(run));
}
