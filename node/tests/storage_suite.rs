//! openraft's storage conformance suite against the RocksDB log store and state machine.

use std::sync::Arc;

use confman_node::raft::log_store::{LogBytes, LogStore, SyncerHandle};
use confman_node::raft::snapshot::SnapshotStore;
use confman_node::raft::state_machine::StateMachine;
use confman_node::raft::types::TypeConfig;
use confman_node::store;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};

struct RocksBuilder;

fn storage_err(e: impl Into<std::io::Error>) -> StorageError<TypeConfig> {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Read, e.into())
}

/// Kept by the suite until a test ends: joins the syncer (closing the database) before the
/// directory goes.
type Guard = (SyncerHandle, tempfile::TempDir);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for RocksBuilder {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(storage_err)?;
        let db = store::open(dir.path()).map_err(storage_err)?;
        let snapshots = SnapshotStore::open(dir.path()).map_err(storage_err)?;
        let log_bytes = Arc::new(LogBytes::new(64 << 20, 10_000));
        let (log, syncer) = LogStore::new(db.clone(), 8 << 20, 256, log_bytes.clone()).map_err(storage_err)?;
        let (applied_tx, _rx) = tokio::sync::watch::channel(0);
        let sm = StateMachine::new(db, snapshots, log_bytes, Arc::new(applied_tx), Default::default())
            .map_err(storage_err)?;
        Ok(((syncer, dir), log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder).await
}
