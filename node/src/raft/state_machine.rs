//! The state machine (`RaftStateMachine`): applies committed commands to RocksDB, one
//! `WriteBatch` per entry carrying data, history, audit, last-applied and membership together,
//! so a crash or restart never applies a command twice. All RocksDB work runs on blocking
//! threads. Snapshots are delegated to `snapshot::SnapshotStore`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot};
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::watch;

use super::log_store::{LogBytes, check_contiguous, discard_log_conflicting_with, read_committed_id, read_log_range};
use super::snapshot::{KEY_LAST_APPLIED, KEY_MEMBERSHIP, SnapshotFile, SnapshotStore};
use super::types::{Entry, FileSnapshot, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::changes::ChangeFeed;
use crate::command::CommandOutcome;
use crate::store::apply::apply_command;
use crate::store::codec::{decode, encode};
use crate::store::{CF_SM_META, RocksDb, StoreError, blocking, cf};

/// Confman's state machine over the node database.
pub struct StateMachine {
    db: Arc<RocksDb>,
    snapshots: Arc<SnapshotStore>,
    building: Arc<AtomicBool>,
    log_bytes: Arc<LogBytes>,
    /// Last applied revision, published after each apply (readers wait on it).
    applied_tx: Arc<watch::Sender<u64>>,
    /// Namespaces changed by each apply (watchers wait on theirs).
    changes: Arc<ChangeFeed>,
}

impl StateMachine {
    /// Opens the state machine, finishing an interrupted snapshot install first.
    pub fn new(
        db: Arc<RocksDb>,
        snapshots: Arc<SnapshotStore>,
        log_bytes: Arc<LogBytes>,
        applied_tx: Arc<watch::Sender<u64>>,
        changes: Arc<ChangeFeed>,
    ) -> Result<Self, StoreError> {
        snapshots.resume_install(&db)?;
        // The newest state this node holds: what it applied, or a snapshot it adopted but had
        // not installed yet (openraft installs that one before reading the log).
        let applied = read_applied(&db)?.0;
        let adopted = snapshots.current()?.and_then(|f| f.manifest.meta.last_log_id);
        if let Some(newest) = applied.max(adopted) {
            discard_log_conflicting_with(&db, &newest)?;
        }
        reapply_committed_tail(&db, APPLY_BATCH_BYTES as u64)?;
        let last = read_applied(&db)?.0.map_or(0, |l| l.index);
        applied_tx.send_replace(last);
        Ok(Self { db, snapshots, building: Arc::new(AtomicBool::new(false)), log_bytes, applied_tx, changes })
    }
}

impl StateMachine {
    /// Applies `batch` on a blocking thread, then publishes the new applied index, wakes the
    /// watchers of the touched namespaces and answers the waiting clients.
    async fn apply_batch(&mut self, batch: Vec<EntryResponder<TypeConfig>>) -> Result<(), io::Error> {
        let db = self.db.clone();
        let (entries, responders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let applied = blocking(move || apply_entries(&db, &entries)).await?;
        if applied.last > 0 {
            self.applied_tx.send_replace(applied.last);
            self.changes.publish(applied.touched.iter().map(String::as_str), applied.last);
        }
        for (responder, outcome) in responders.into_iter().zip(applied.outcomes) {
            if let Some(r) = responder {
                r.send(outcome);
            }
        }
        Ok(())
    }
}

/// What applying a batch produced.
struct AppliedBatch {
    /// One per entry, in order.
    outcomes: Vec<CommandOutcome>,
    /// Index of the last entry (0 for an empty batch).
    last: u64,
    /// Namespaces the batch changed, for the change feed (only their watchers are woken).
    touched: Vec<String>,
}

/// Applies `entries` in order, one `WriteBatch` per entry (data, history, audit, last-applied
/// and membership together).
fn apply_entries(db: &RocksDb, entries: &[Entry]) -> Result<AppliedBatch, StoreError> {
    let sm_cf = cf(db, CF_SM_META)?;
    let mut outcomes = Vec::with_capacity(entries.len());
    let mut touched: Vec<String> = Vec::new();
    let mut last = 0;
    let opts = WriteOptions::default();
    for entry in entries {
        // Sized for the entry: a default batch grows by doubling, so a 4 MiB value was copied
        // into an 8 MiB buffer.
        let mut wb = WriteBatch::with_capacity_bytes(entry_size(entry) + 4096);
        let index = entry.log_id.index;
        let outcome = match &entry.payload {
            EntryPayload::Blank => CommandOutcome::Nothing,
            EntryPayload::Normal(cmd) => {
                if let Some(ns) = cmd.op.namespace()
                    && !touched.iter().any(|t| t == ns)
                {
                    touched.push(ns.to_string());
                }
                apply_command(db, &mut wb, index, cmd)?
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                wb.put_cf(&sm_cf, KEY_MEMBERSHIP, encode(&stored)?);
                CommandOutcome::Nothing
            }
        };
        wb.put_cf(&sm_cf, KEY_LAST_APPLIED, encode(&entry.log_id)?);
        // Unsynced: the log is the durable record; a lost apply is re-applied on restart
        // because last-applied is lost with it.
        db.write_opt(wb, &opts)?;
        outcomes.push(outcome);
        last = index;
    }
    Ok(AppliedBatch { outcomes, last, touched })
}

/// Re-applies the committed entries above last-applied (applies are unsynced, so a crash can
/// lose many) in byte-bounded chunks, before openraft starts: openraft's own re-apply reads
/// 64 entries at a time whatever their size (256 MiB of 4 MiB values), and finds nothing left.
/// Returns the number of chunks it applied.
fn reapply_committed_tail(db: &RocksDb, chunk_bytes: u64) -> Result<u64, StoreError> {
    let Some(committed) = read_committed_id(db)? else { return Ok(0) };
    let applied = read_applied(db)?.0;
    let mut next = applied.map_or(0, |l| l.index + 1);
    // Nothing applied yet: the log starts wherever it starts (openraft's first entry is 0).
    let mut expect_next = applied.is_some();
    let (mut reapplied, mut chunks) = (0u64, 0u64);
    while next <= committed.index {
        let chunk = read_log_range(db, next, Some(committed.index + 1), chunk_bytes, u64::MAX)?;
        if chunk.is_empty() {
            // Purged (a snapshot covers it) or never written: openraft's checks take over.
            break;
        }
        check_contiguous(&chunk, expect_next.then_some(next))?;
        expect_next = true;
        let applied = apply_entries(db, &chunk)?;
        reapplied += chunk.len() as u64;
        chunks += 1;
        next = applied.last + 1;
    }
    if reapplied > 0 {
        tracing::info!(entries = reapplied, up_to = next - 1, "re-applied the committed log tail");
    }
    Ok(chunks)
}

/// Bytes of entries one apply sub-batch collects before writing them (always at least one
/// entry). Bounds what a catching-up follower holds while applying, whatever the range.
const APPLY_BATCH_BYTES: usize = 8 << 20;

fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(cmd) => cmd.approx_size(),
        EntryPayload::Blank | EntryPayload::Membership(_) => 64,
    }
}

fn read_applied(db: &RocksDb) -> Result<(Option<LogId>, StoredMembership), StoreError> {
    let cf = cf(db, CF_SM_META)?;
    let last: Option<LogId> = db.get_cf(&cf, KEY_LAST_APPLIED)?.map(|b| decode(&b)).transpose()?;
    let membership: StoredMembership =
        db.get_cf(&cf, KEY_MEMBERSHIP)?.map(|b| decode(&b)).transpose()?.unwrap_or_default();
    Ok((last, membership))
}

/// Builds one snapshot on a blocking thread; at most one runs at a time.
pub struct SnapshotBuilder {
    db: Arc<RocksDb>,
    snapshots: Arc<SnapshotStore>,
    building: Arc<AtomicBool>,
    log_bytes: Arc<LogBytes>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<FileSnapshot, io::Error> {
        let (db, store) = (self.db.clone(), self.snapshots.clone());
        let result = blocking(move || store.build(&db)).await;
        self.building.store(false, Ordering::Release);
        let file = result?;
        self.log_bytes.reset(file.manifest.data_size);
        Ok(Snapshot { meta: file.manifest.meta.clone(), snapshot: file })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let db = self.db.clone();
        Ok(blocking(move || read_applied(&db)).await?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Applied in sub-batches bounded in bytes: a follower catching up through the log (after
        // a restart, or fed by replication) must not hold the whole committed range in memory.
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while let Some(item) = entries.next().await {
            let item = item?;
            bytes += entry_size(&item.0);
            batch.push(item);
            if bytes >= APPLY_BATCH_BYTES {
                self.apply_batch(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.apply_batch(batch).await?;
        }
        Ok(())
    }

    /// O(1): hands out a builder unless one is already running.
    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<SnapshotBuilder> {
        if self.building.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
            building: self.building.clone(),
            log_bytes: self.log_bytes.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), io::Error> {
        let (db, store) = (self.db.clone(), self.snapshots.clone());
        let index = meta.last_log_id.as_ref().map_or(0, |l| l.index);
        let meta_size = snapshot.manifest.data_size;
        // The received snapshot becomes this node's current snapshot: adopt, then install.
        blocking(move || {
            let adopted = store.adopt(&snapshot)?;
            store.install(&db, &adopted)
        })
        .await?;
        self.log_bytes.reset(meta_size);
        self.applied_tx.send_replace(index);
        self.changes.publish_all(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<FileSnapshot>, io::Error> {
        let store = self.snapshots.clone();
        let current = blocking(move || store.current()).await?;
        Ok(current.map(|f| Snapshot { meta: f.manifest.meta.clone(), snapshot: f }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use openraft::StorageHelper;
    use openraft::storage::RaftLogStorage;
    use openraft::testing::{blank_ent, log_id};
    use rocksdb::WriteBatch;

    use super::*;
    use crate::raft::log_store::LogStore;
    use crate::raft::snapshot::KEY_INSTALLING;
    use crate::store::codec::be_u64;
    use crate::store::{CF_LOG, CF_RAFT_META, CF_STATE};

    /// Applying a long committed range gathered every entry before writing any (337 MiB peak
    /// on a restored follower fed 200 × 1 MiB by the log). Entries are applied in byte-bounded
    /// sub-batches: by the time the stream is asked for the entry after 8 MiB, the earlier ones
    /// are in RocksDB and their memory can go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apply_writes_byte_bounded_batches_before_taking_more_entries() -> Result<(), StoreError> {
        use crate::command::{Command, Operation, Precondition};
        let dir = tempfile::tempdir()?;
        let db = crate::store::open(&dir.path().join("node"))?;
        let store = SnapshotStore::open(&dir.path().join("data"))?;
        let log_bytes = Arc::new(LogBytes::new(u64::MAX, u64::MAX));
        let mut sm =
            StateMachine::new(db.clone(), store, log_bytes, Arc::new(watch::channel(0u64).0), Default::default())?;
        let value_bytes = 3 << 20;
        let entry = |index: u64| {
            let cmd = Command {
                actor: "test".into(),
                at_ms: 0,
                op: Operation::PutEntry {
                    namespace: "ns".into(),
                    key: format!("k{index}"),
                    content_type: "application/octet-stream".into(),
                    value: vec![0u8; value_bytes],
                    precondition: Precondition::None,
                },
            };
            Entry { log_id: log_id::<TypeConfig>(1, 1, index), payload: EntryPayload::Normal(cmd) }
        };
        // Records, as each entry is handed out, the index RocksDB says is applied.
        let applied_when_pulled = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = applied_when_pulled.clone();
        let reader_db = db.clone();
        let entries = futures::stream::iter(1..=6u64).map(move |i| {
            let applied = read_applied(&reader_db).map(|(l, _)| l.map_or(0, |l| l.index)).unwrap_or(u64::MAX);
            if let Ok(mut seen) = seen.lock() {
                seen.push(applied);
            }
            Ok((entry(i), None))
        });
        sm.apply(entries).await?;
        let seen = applied_when_pulled.lock().map(|s| s.clone()).unwrap_or_default();
        // 3 MiB entries against an 8 MiB budget: entries 1–3 are written before entry 4 is taken.
        assert_eq!(seen, vec![0, 0, 0, 3, 3, 3], "applied index seen as each entry was pulled");
        assert_eq!(read_applied(&db)?.0.map(|l| l.index), Some(6));
        Ok(())
    }

    /// Applies are unsynced, so a crash can leave a long committed tail unapplied; openraft's
    /// own re-apply at start-up reads it 64 entries at a time whatever their size. It is
    /// re-applied before openraft starts, in byte-bounded chunks, exactly up to the committed
    /// index (the uncommitted rest stays for Raft to decide).
    #[test]
    fn restart_reapplies_the_committed_tail_in_byte_bounded_chunks() -> Result<(), StoreError> {
        use crate::command::{Command, Operation};
        let dir = tempfile::tempdir()?;
        let db = crate::store::open(&dir.path().join("node"))?;
        let (log, raft_meta) = (cf(&db, CF_LOG)?, cf(&db, CF_RAFT_META)?);
        for index in 1..=12u64 {
            let op = Operation::PutNamespace {
                name: format!("ns{index}"),
                description: "x".repeat(4000),
                owner: "o".into(),
            };
            let entry = Entry {
                log_id: log_id::<TypeConfig>(1, 1, index),
                payload: EntryPayload::Normal(Command { actor: "test".into(), at_ms: 0, op }),
            };
            db.put_cf(&log, be_u64(index), encode(&entry)?)?;
        }
        db.put_cf(&raft_meta, b"committed", encode(&log_id::<TypeConfig>(1, 1, 10))?)?;
        drop((log, raft_meta));

        // Entries of ~4 KiB against a 10 KiB budget: two or three per chunk.
        let chunks = reapply_committed_tail(&db, 10_000)?;
        assert_eq!(read_applied(&db)?.0.map(|l| l.index), Some(10), "applied exactly up to the committed index");
        assert!(chunks >= 4, "10 entries of 4 KiB in chunks of at most 10 KiB + one entry: {chunks} chunks");
        let state = cf(&db, CF_STATE)?;
        assert!(db.iterator_cf(&state, rocksdb::IteratorMode::Start).count() >= 10, "the namespaces exist");
        assert_eq!(reapply_committed_tail(&db, 10_000)?, 0, "nothing left to re-apply");
        Ok(())
    }

    /// Where a power cut can stop the adoption of a received snapshot.
    #[derive(Debug, Clone, Copy)]
    enum CrashPoint {
        /// The snapshot's directory is published; no RocksDB write of the install yet.
        Adopted,
        /// The synced `installing` marker is written; the state is not replaced yet.
        MarkerWritten,
        /// The state is replaced and last-applied flipped; openraft has not purged yet.
        Flipped,
    }

    /// A node at term 1 with log entries 1..=120 (applied and committed up to 50) receives a
    /// snapshot at (term 2, index 100): entries 51..=120 are an uncommitted tail of an older
    /// term, which openraft truncated before the install, but the truncation was lost.
    fn build_crash_state(dir: &Path, point: CrashPoint) -> Result<(Arc<RocksDb>, Arc<SnapshotStore>), StoreError> {
        let snap_id = log_id::<TypeConfig>(2, 2, 100);
        // The leader's state and snapshot.
        let leader_db = crate::store::open(&dir.join("leader"))?;
        let leader_state = cf(&leader_db, CF_STATE)?;
        for i in 0..3u8 {
            leader_db.put_cf(&leader_state, [b'n', 0, b'k', i], b"leader")?;
        }
        let leader_meta = cf(&leader_db, CF_SM_META)?;
        leader_db.put_cf(&leader_meta, KEY_LAST_APPLIED, encode(&snap_id)?)?;
        let leader_store = SnapshotStore::open(&dir.join("leader-data"))?;
        let built = leader_store.build(&leader_db)?;

        // The follower.
        let db = crate::store::open(&dir.join("node"))?;
        let (log, sm_meta, raft_meta) = (cf(&db, CF_LOG)?, cf(&db, CF_SM_META)?, cf(&db, CF_RAFT_META)?);
        let mut batch = WriteBatch::default();
        for i in 1..=120 {
            batch.put_cf(&log, be_u64(i), encode(&blank_ent::<TypeConfig>(1, 1, i))?);
        }
        let applied = log_id::<TypeConfig>(1, 1, 50);
        batch.put_cf(&sm_meta, KEY_LAST_APPLIED, encode(&applied)?);
        batch.put_cf(&raft_meta, b"committed", encode(&applied)?);
        db.write(batch)?;
        let store = SnapshotStore::open(&dir.join("node-data"))?;
        let adopted = store.adopt(&built)?;
        match point {
            CrashPoint::Adopted => {}
            CrashPoint::MarkerWritten => {
                let name = adopted.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                db.put_cf(&sm_meta, KEY_INSTALLING, name.as_bytes())?;
            }
            CrashPoint::Flipped => store.install(&db, &adopted)?,
        }
        drop((log, sm_meta, raft_meta));
        Ok((db, store))
    }

    /// Power loss between adopting a received snapshot and its synced writes left a log tail
    /// from an older term above the snapshot, and the node refused to start ("inverted log
    /// order"). Each crash point's on-disk state is built directly, then opened as the node
    /// opens it: the start must succeed at the snapshot with the conflicting log discarded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn power_loss_mid_snapshot_adoption_with_an_older_term_tail_still_starts() -> Result<(), StoreError> {
        let mut refused = Vec::new();
        for point in [CrashPoint::Adopted, CrashPoint::MarkerWritten, CrashPoint::Flipped] {
            let dir = tempfile::tempdir()?;
            let (db, store) = build_crash_state(dir.path(), point)?;
            let log_bytes = Arc::new(LogBytes::new(u64::MAX, u64::MAX));
            let mut sm = StateMachine::new(
                db.clone(),
                store,
                log_bytes.clone(),
                Arc::new(watch::channel(0u64).0),
                Arc::new(ChangeFeed::default()),
            )?;
            let (mut log_store, syncer) = LogStore::new(db.clone(), 1 << 20, 64, log_bytes)?;
            let started = StorageHelper::new(&mut log_store, &mut sm).with_id(1).get_initial_state().await;
            let log_state = log_store.get_log_state().await;
            drop(log_store);
            syncer.join();
            if let Err(e) = started {
                refused.push(format!("{point:?}: the node refused to start: {e}"));
                continue;
            }
            let snap_id = log_id::<TypeConfig>(2, 2, 100);
            assert_eq!(log_state?.last_log_id, Some(snap_id), "{point:?}: the log resumes at the snapshot");
            assert_eq!(read_applied(&db)?.0, Some(snap_id), "{point:?}: the snapshot is applied");
            let log = cf(&db, CF_LOG)?;
            assert_eq!(db.iterator_cf(&log, rocksdb::IteratorMode::Start).count(), 0, "{point:?}: no older-term tail");
            let state_cf = cf(&db, CF_STATE)?;
            assert_eq!(
                db.iterator_cf(&state_cf, rocksdb::IteratorMode::Start).count(),
                3,
                "{point:?}: the snapshot's state"
            );
        }
        assert!(refused.is_empty(), "{refused:#?}");
        Ok(())
    }
}
