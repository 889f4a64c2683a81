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
