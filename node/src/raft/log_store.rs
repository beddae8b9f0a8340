//! The Raft log in RocksDB (`RaftLogStorage`). Entries are readable as soon as `append` returns
//! and durable once their `IOFlushed` callback fires. Durability comes from one syncer thread:
//! it takes every callback queued since its last fsync and covers them with a single
//! `flush_wal(true)`: a lone writer waits for exactly one fsync, concurrent writers share one,
//! and there is no timer, which would make a lone writer wait for its tick.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use futures::{Stream, TryStreamExt, stream};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};
use tokio::sync::Notify;

use super::types::{Entry, LogId, TypeConfig, Vote};
use crate::store::codec::{be_u64, decode, encode, read_be_u64};
use crate::store::{CF_LOG, CF_RAFT_META, RocksDb, StoreError, blocking, cf};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Decides when to compact the log (`docs/large-values.md`, lessons 4 and 7). A snapshot
/// rewrites the whole state, so the trigger is: the log since the last snapshot holds at least
/// `entries` entries or `bytes` bytes, **and** at least half as many bytes as the last
/// snapshot. The log stays bounded by bytes (never more than max(`bytes`, state / 2) plus one
/// batch), while the cost of snapshots stays proportional to what is written rather than to the
/// state size times the number of triggers. `compaction::trigger_snapshots` waits on
/// `wait_due` and asks openraft for a snapshot.
#[derive(Debug)]
pub struct LogBytes {
    since_snapshot: AtomicU64,
    entries_since_snapshot: AtomicU64,
    last_snapshot_bytes: AtomicU64,
    threshold: u64,
    entry_threshold: u64,
    due: Notify,
}

impl LogBytes {
    /// A trigger at `threshold` bytes or `entry_threshold` entries.
    pub fn new(threshold: u64, entry_threshold: u64) -> Self {
        Self {
            since_snapshot: AtomicU64::new(0),
            entries_since_snapshot: AtomicU64::new(0),
            last_snapshot_bytes: AtomicU64::new(0),
            threshold,
            entry_threshold,
            due: Notify::new(),
        }
    }

    /// Whether a snapshot is due for this much log.
    pub fn is_due(&self, bytes: u64, entries: u64) -> bool {
        let proportional = bytes.saturating_mul(2) >= self.last_snapshot_bytes.load(Ordering::Relaxed);
        (bytes >= self.threshold || entries >= self.entry_threshold) && proportional
    }

    fn add(&self, bytes: u64, entries: u64) {
        let b = self.since_snapshot.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let e = self.entries_since_snapshot.fetch_add(entries, Ordering::Relaxed) + entries;
        if self.is_due(b, e) {
            self.due.notify_one();
        }
    }

    /// Called when a snapshot of `snapshot_bytes` covering the log has been built or installed.
    pub fn reset(&self, snapshot_bytes: u64) {
        self.since_snapshot.store(0, Ordering::Relaxed);
        self.entries_since_snapshot.store(0, Ordering::Relaxed);
        self.last_snapshot_bytes.store(snapshot_bytes, Ordering::Relaxed);
    }

    /// Size of the last snapshot built or installed.
    pub fn last_snapshot_bytes(&self) -> u64 {
        self.last_snapshot_bytes.load(Ordering::Relaxed)
    }

    /// Bytes appended since the last snapshot.
    pub fn current(&self) -> u64 {
        self.since_snapshot.load(Ordering::Relaxed)
    }

    /// Waits until a snapshot is due.
    pub async fn wait_due(&self) {
        self.due.notified().await
    }
}

/// The log store handed to openraft.
pub struct LogStore {
    db: Arc<RocksDb>,
    reader: LogReader,
    syncer: mpsc::Sender<IOFlushed<TypeConfig>>,
    log_bytes: Arc<LogBytes>,
}

/// A reader of the log, cloned for each replication stream.
#[derive(Clone)]
pub struct LogReader {
    db: Arc<RocksDb>,
    /// Byte budget of one `limited_get_log_entries` call (AppendEntries payload cap).
    max_batch_bytes: u64,
    /// Entry cap of one `limited_get_log_entries` call.
    max_batch_entries: u64,
}

/// Joins the syncer thread, after openraft dropped the log store (the thread exits when the
/// store's sender is gone). Dropping the handle joins too, so the database is closed by the
/// time the handle is gone (RocksDB must not be torn down by process exit).
pub struct SyncerHandle(Option<JoinHandle<()>>);

impl SyncerHandle {
    /// Waits for the syncer to finish its last fsync and exit.
    pub fn join(mut self) {
        self.join_inner();
    }

    fn join_inner(&mut self) {
        if let Some(h) = self.0.take()
            && h.join().is_err()
        {
            tracing::error!("log syncer thread panicked");
        }
    }
}

impl Drop for SyncerHandle {
    fn drop(&mut self) {
        self.join_inner();
    }
}

impl LogStore {
    /// Creates the store and starts its syncer thread.
    pub fn new(
        db: Arc<RocksDb>,
        max_batch_bytes: u64,
        max_batch_entries: u64,
        log_bytes: Arc<LogBytes>,
    ) -> Result<(Self, SyncerHandle), StoreError> {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        let sync_db = db.clone();
        let slow = std::env::var_os(FSYNC_DELAY_FILE_ENV).map(std::path::PathBuf::from);
        if let Some(path) = &slow {
            tracing::warn!(file = %path.display(), "fault injection: log fsyncs are delayed as that file says");
        }
        let handle = std::thread::Builder::new()
            .name("confman-log-sync".into())
            .spawn(move || sync_loop(&sync_db, &rx, slow.as_deref()))?;
        let reader = LogReader { db: db.clone(), max_batch_bytes, max_batch_entries };
        Ok((Self { db, reader, syncer: tx, log_bytes }, SyncerHandle(Some(handle))))
    }
}

/// Fault injection for the fault suite's slow-disk nemesis, never set in production: the path
/// of a file saying how long each log fsync takes extra, in ms (`250`, or a range `50-500`
/// drawn from per fsync); a missing or empty file means no delay.
pub const FSYNC_DELAY_FILE_ENV: &str = "CONFMAN_FAULT_FSYNC_DELAY_FILE";

/// The delay range a fault-injection file asks for (see [`FSYNC_DELAY_FILE_ENV`]).
fn parse_fsync_delay(text: &str) -> Option<(u64, u64)> {
    let text = text.trim();
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let (lo, hi) = (lo.trim().parse::<u64>().ok()?, hi.trim().parse::<u64>().ok()?);
    (lo <= hi).then_some((lo, hi))
}

fn injected_fsync_delay(path: &std::path::Path) -> std::time::Duration {
    use rand::Rng;
    let range = std::fs::read_to_string(path).ok().and_then(|t| parse_fsync_delay(&t));
    let ms = range.map_or(0, |(lo, hi)| rand::rng().random_range(lo..=hi));
    std::time::Duration::from_millis(ms)
}

/// Group commit: block for the first waiting callback, take every other one already queued,
/// fsync the WAL once, complete them all. `slow`: see [`FSYNC_DELAY_FILE_ENV`].
fn sync_loop(db: &RocksDb, rx: &mpsc::Receiver<IOFlushed<TypeConfig>>, slow: Option<&std::path::Path>) {
    while let Ok(first) = rx.recv() {
        if let Some(path) = slow {
            std::thread::sleep(injected_fsync_delay(path));
        }
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = db.flush_wal(true);
        for cb in waiting {
            cb.io_completed(result.clone().map_err(|e| io::Error::other(format!("fsync of the WAL failed: {e}"))));
        }
    }
    tracing::debug!("log syncer stopped");
}

fn range_start_end<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(e.saturating_add(1)),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl LogReader {
    fn read_range(
        &self,
        start: u64,
        end: Option<u64>,
        max_bytes: u64,
        max_entries: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        read_log_range(&self.db, start, end, max_bytes, max_entries)
    }
}

/// Reads entries in `[start, end)`, stopping after `max_bytes` (always at least one entry)
/// and `max_entries`.
pub fn read_log_range(
    db: &RocksDb,
    start: u64,
    end: Option<u64>,
    max_bytes: u64,
    max_entries: u64,
) -> Result<Vec<Entry>, StoreError> {
    let cf = cf(db, CF_LOG)?;
    let mut opts = ReadOptions::default();
    if let Some(end) = end {
        opts.set_iterate_upper_bound(be_u64(end).to_vec());
    }
    // A raw iterator: each value is decoded straight from RocksDB's buffer (the plain iterator
    // copied every value into a Box first, and copied the entry after the last one it kept
    // only to see its size).
    let mut it = db.raw_iterator_cf_opt(&cf, opts);
    it.seek(be_u64(start));
    let mut out = Vec::new();
    let mut bytes = 0u64;
    while it.valid() && (out.is_empty() || (bytes < max_bytes && (out.len() as u64) < max_entries)) {
        let Some(v) = it.value() else { break };
        if !out.is_empty() && bytes + v.len() as u64 > max_bytes {
            break;
        }
        bytes += v.len() as u64;
        out.push(decode::<Entry>(v)?);
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// Checks that `chunk` holds consecutive indexes starting at `first` (when given): the log has
/// no holes, so one means corruption — never a range to skip silently.
pub fn check_contiguous(chunk: &[Entry], first: Option<u64>) -> Result<(), StoreError> {
    let mut expected = first.or_else(|| chunk.first().map(|e| e.log_id.index));
    for e in chunk {
        if Some(e.log_id.index) != expected {
            return Err(StoreError::Corrupt(format!(
                "log hole: expected index {}, found {}",
                expected.unwrap_or_default(),
                e.log_id.index
            )));
        }
        expected = Some(e.log_id.index + 1);
    }
    Ok(())
}

/// The committed log id openraft last saved (`save_committed`).
pub fn read_committed_id(db: &RocksDb) -> Result<Option<LogId>, StoreError> {
    read_meta(db, KEY_COMMITTED)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_start_end(&range);
        let this = self.clone();
        Ok(blocking(move || this.read_range(start, end, u64::MAX, u64::MAX)).await?)
    }

    /// The apply path's reader: yields the range in chunks read one at a time, each bounded
    /// like a replication batch, so applying a long committed range (a follower catching up,
    /// a restart re-applying its tail) never loads it whole.
    async fn entries_stream<RB>(&mut self, range: RB) -> impl Stream<Item = Result<Entry, io::Error>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let (start, end) = range_start_end(&range);
        let reader = self.clone();
        // State: the next index to read, and whether a chunk was read already (the first one may
        // begin after `start` — a purged prefix — every later one must begin where the last ended).
        let chunks = stream::try_unfold((start, false), move |(next, continued)| {
            let reader = reader.clone();
            async move {
                if end.is_some_and(|end| next >= end) {
                    return Ok(None);
                }
                let (bytes, entries) = (reader.max_batch_bytes, reader.max_batch_entries);
                let chunk = blocking(move || {
                    let chunk = reader.read_range(next, end, bytes, entries)?;
                    check_contiguous(&chunk, continued.then_some(next))?;
                    Ok(chunk)
                })
                .await?;
                // An empty chunk is the end of the log (entries not appended yet), which the
                // reader contract allows at the end of a range.
                Ok::<_, io::Error>(chunk.last().map(|last| last.log_id.index + 1).map(|after| (chunk, (after, true))))
            }
        });
        chunks.map_ok(|chunk| stream::iter(chunk.into_iter().map(Ok))).try_flatten()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        let db = self.db.clone();
        Ok(blocking(move || read_meta(&db, KEY_VOTE)).await?)
    }

    /// Replication reads: bounded by bytes as well as entries so no AppendEntries request
    /// carries more than the budget plus one entry.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        let this = self.clone();
        let (bytes, entries) = (self.max_batch_bytes, self.max_batch_entries);
        Ok(blocking(move || this.read_range(start, Some(end), bytes, entries)).await?)
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(db: &RocksDb, key: &[u8]) -> Result<Option<T>, StoreError> {
    let cf = cf(db, CF_RAFT_META)?;
    db.get_cf(&cf, key)?.map(|b| decode(&b)).transpose()
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let db = self.db.clone();
        Ok(blocking(move || {
            let last_purged: Option<LogId> = read_meta(&db, KEY_LAST_PURGED)?;
            let cf = cf(&db, CF_LOG)?;
            let last = match db.iterator_cf(&cf, IteratorMode::End).next() {
                Some(item) => {
                    let (_, v) = item?;
                    Some(decode::<Entry>(&v)?.log_id)
                }
                None => None,
            };
            let last_log_id = last.or(last_purged);
            Ok(LogState { last_purged_log_id: last_purged, last_log_id })
        })
        .await?)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    /// Durable before returning: the vote is written and the WAL fsynced.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let db = self.db.clone();
        let bytes = encode(vote)?;
        Ok(blocking(move || {
            let cf = cf(&db, CF_RAFT_META)?;
            db.put_cf(&cf, KEY_VOTE, bytes)?;
            db.flush_wal(true)?;
            Ok(())
        })
        .await?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let db = self.db.clone();
        Ok(blocking(move || {
            let cf = cf(&db, CF_RAFT_META)?;
            match committed {
                Some(c) => db.put_cf(&cf, KEY_COMMITTED, encode(&c)?)?,
                None => db.delete_cf(&cf, KEY_COMMITTED)?,
            }
            Ok(())
        })
        .await?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let db = self.db.clone();
        Ok(blocking(move || read_meta(&db, KEY_COMMITTED)).await?)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.db.clone();
        let written = blocking(move || {
            let cf = cf(&db, CF_LOG)?;
            let mut batch = WriteBatch::default();
            let mut bytes = 0u64;
            let count = entries.len() as u64;
            for e in &entries {
                let v = encode(e)?;
                bytes += v.len() as u64;
                batch.put_cf(&cf, be_u64(e.log_id.index), v);
            }
            let mut opts = WriteOptions::default();
            opts.set_sync(false);
            db.write_opt(batch, &opts)?;
            Ok((bytes, count))
        })
        .await?;
        self.log_bytes.add(written.0, written.1);
        self.syncer.send(callback).map_err(|_| io::Error::other("log syncer thread has stopped"))?;
        Ok(())
    }

    /// Durable before returning: openraft truncates a conflicting tail just before it hands a
    /// received snapshot to the state machine, which publishes the snapshot's directory (an
    /// fsynced rename) before its first synced RocksDB write. An unsynced truncation could be
    /// lost by a power cut in between, leaving the older-term tail above the adopted snapshot.
    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let db = self.db.clone();
        Ok(blocking(move || {
            let cf = cf(&db, CF_LOG)?;
            db.delete_range_cf(&cf, be_u64(from), be_u64(u64::MAX))?;
            db.flush_wal(true)?;
            Ok(())
        })
        .await?)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let log = cf(&db, CF_LOG)?;
            let meta = cf(&db, CF_RAFT_META)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(&meta, KEY_LAST_PURGED, encode(&log_id)?);
            batch.delete_range_cf(&log, be_u64(0), be_u64(log_id.index + 1));
            db.write(batch)?;
            Ok(())
        })
        .await?;
        // Reclaim the purged entries (and the blob files holding their values) now rather than
        // whenever compaction reaches them; in the background, so purge never waits for it.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(log) = cf(&db, CF_LOG) {
                // Not exclusive: automatic compactions (and so writes) never wait for it.
                let mut opts = rocksdb::CompactOptions::default();
                opts.set_exclusive_manual_compaction(false);
                db.compact_range_cf_opt(&log, None::<&[u8]>, Some(be_u64(log_id.index + 1).as_slice()), &opts);
            }
        });
        Ok(())
    }
}

/// Where to purge the log after a snapshot at `snapshot_index` so that the tail kept for
/// lagging followers holds at most `max_entries` entries **and** `max_bytes` bytes: the index
/// of the newest entry to drop, or `None` when the whole log up to the snapshot fits. A tail
/// bounded only by count holds `count × value size` (200 entries of 1 MiB = 200 MiB): a wiped
/// follower would then be fed the whole history through the log instead of one snapshot.
///
/// It reads the values to size them (at most `max_bytes` plus one entry, once per snapshot):
/// the log keeps no per-entry size index, and this keeps it so.
pub fn tail_purge_point(
    db: &RocksDb,
    snapshot_index: u64,
    max_entries: u64,
    max_bytes: u64,
) -> Result<Option<u64>, StoreError> {
    let log = cf(db, CF_LOG)?;
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(be_u64(snapshot_index.saturating_add(1)).to_vec());
    let (mut kept, mut bytes) = (0u64, 0u64);
    for item in db.iterator_cf_opt(&log, opts, IteratorMode::End) {
        let (k, v) = item?;
        let size = v.len() as u64;
        if kept + 1 > max_entries || bytes + size > max_bytes {
            return Ok(Some(read_be_u64(&k)?));
        }
        kept += 1;
        bytes += size;
    }
    Ok(None)
}

/// Makes the log agree with `snapshot`, the newest state this node holds (its applied id or
/// its adopted snapshot, whichever is greater), before Raft reads its initial state. This is
/// etcd's rule for a snapshot install: entries the snapshot covers are discarded, and if the
/// log conflicts with the snapshot (the entry at the snapshot's index is another one, or
/// entries lie above the snapshot's index without it), the whole log is discarded.
///
/// Why at start-up: a power cut between openraft truncating a conflicting tail and the
/// snapshot's first synced write could leave a tail from an older term above the snapshot;
/// openraft then refuses to start ("inverted log order"). Repairing here makes every crash
/// point restart, including data directories written before the truncation was synced.
/// Start-up is the one moment nothing appends concurrently, so a read-then-delete is safe.
///
/// The deletion and the new last-purged id go in one synced batch. Returns whether the log
/// was discarded.
pub fn discard_log_conflicting_with(db: &RocksDb, snapshot: &LogId) -> Result<bool, StoreError> {
    let log = cf(db, CF_LOG)?;
    let meta = cf(db, CF_RAFT_META)?;
    let last_purged: Option<LogId> = read_meta(db, KEY_LAST_PURGED)?;
    if last_purged.as_ref().is_some_and(|p| p.index >= snapshot.index) {
        // The slot is purged: nothing local to compare with, and openraft's own checks apply.
        return Ok(false);
    }
    let at_index = db.get_cf(&log, be_u64(snapshot.index))?.map(|v| decode::<Entry>(&v)).transpose()?;
    let conflict = match at_index {
        Some(e) => e.log_id != *snapshot,
        None => match db.iterator_cf(&log, IteratorMode::From(&be_u64(snapshot.index), Direction::Forward)).next() {
            Some(item) => {
                item?;
                true
            }
            None => false,
        },
    };
    if !conflict {
        // Entries at or below the snapshot are purged by openraft once it starts.
        return Ok(false);
    }
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(&log, be_u64(0), be_u64(u64::MAX));
    batch.put_cf(&meta, KEY_LAST_PURGED, encode(snapshot)?);
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync)?;
    tracing::warn!(%snapshot, "discarded a log that conflicts with the snapshot (interrupted snapshot install)");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use openraft::RaftLogReader;
    use openraft::testing::blank_ent;

    use super::*;

    #[test]
    fn the_fault_injection_file_gives_a_delay_or_a_range_and_nothing_else() {
        assert_eq!(parse_fsync_delay("250\n"), Some((250, 250)));
        assert_eq!(parse_fsync_delay(" 50 - 500 "), Some((50, 500)));
        assert_eq!(parse_fsync_delay(""), None);
        assert_eq!(parse_fsync_delay("500-50"), None);
        assert_eq!(parse_fsync_delay("slow"), None);
        assert_eq!(injected_fsync_delay(std::path::Path::new("/nonexistent/confman-delay")), std::time::Duration::ZERO);
    }

    /// Writes raw values of `size` bytes at `indexes` (the purge point only looks at sizes).
    fn put_sized(db: &RocksDb, indexes: std::ops::RangeInclusive<u64>, size: usize) -> Result<(), StoreError> {
        let log = cf(db, CF_LOG)?;
        for i in indexes {
            db.put_cf(&log, be_u64(i), vec![0u8; size])?;
        }
        Ok(())
    }

    /// A tail bounded only by count kept `logs_to_keep × value size` (200 MiB of 1 MiB values),
    /// so a wiped follower was fed the whole history through the log instead of a snapshot.
    #[test]
    fn kept_log_tail_is_bounded_in_bytes_as_well_as_entries() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let db = crate::store::open(dir.path())?;
        put_sized(&db, 1..=10, 1_000)?;
        put_sized(&db, 11..=15, 50_000)?; // above the snapshot: not part of the kept tail
        assert_eq!(tail_purge_point(&db, 10, 200, 3_500)?, Some(7), "bytes bind: 8..=10 kept");
        assert_eq!(tail_purge_point(&db, 10, 2, 1 << 20)?, Some(8), "entries bind: 9..=10 kept");
        assert_eq!(tail_purge_point(&db, 10, 200, 10_000)?, None, "the whole log fits");
        assert_eq!(tail_purge_point(&db, 10, 200, 999)?, Some(10), "not even one entry fits");
        Ok(())
    }

    /// The apply path read the whole committed range into memory before applying any of it
    /// (openraft's default `entries_stream`). It must read chunk by chunk, on demand: a tail
    /// truncated after the first chunk was consumed is never seen (the stream ends where the log
    /// ends, as the reader contract allows at the end of a range).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apply_reads_the_committed_range_in_bounded_chunks_on_demand() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let db = crate::store::open(dir.path())?;
        let log = cf(&db, CF_LOG)?;
        for i in 1..=10 {
            db.put_cf(&log, be_u64(i), encode(&blank_ent::<TypeConfig>(1, 1, i))?)?;
        }
        // One entry per chunk (the byte budget always admits one).
        let mut reader = LogReader { db: db.clone(), max_batch_bytes: 1, max_batch_entries: 64 };
        let indexes = |v: Vec<Result<Entry, io::Error>>| -> Result<Vec<u64>, io::Error> {
            v.into_iter().map(|e| e.map(|e| e.log_id.index)).collect()
        };
        let all = reader.entries_stream(1..=10).await.collect::<Vec<_>>().await;
        assert_eq!(indexes(all)?, (1..=10).collect::<Vec<_>>(), "every entry, in order, across chunks");
        let middle = reader.entries_stream(3..7).await.collect::<Vec<_>>().await;
        assert_eq!(indexes(middle)?, vec![3, 4, 5, 6]);

        let mut lazy = Box::pin(reader.entries_stream(1..=10).await);
        let first = lazy.next().await.transpose()?.map(|e| e.log_id.index);
        assert_eq!(first, Some(1));
        db.delete_range_cf(&log, be_u64(2), be_u64(11))?;
        let rest = lazy.collect::<Vec<_>>().await;
        assert_eq!(indexes(rest)?, Vec::<u64>::new(), "the rest was read only when asked for");
        Ok(())
    }

    /// A hole inside the range is corruption: the stream fails instead of ending early (openraft
    /// would otherwise record the range as applied with entries skipped).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hole_in_the_applied_range_is_an_error_not_an_early_end() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let db = crate::store::open(dir.path())?;
        let log = cf(&db, CF_LOG)?;
        for i in (1..=10).filter(|i| *i != 5) {
            db.put_cf(&log, be_u64(i), encode(&blank_ent::<TypeConfig>(1, 1, i))?)?;
        }
        for chunk_bytes in [1, 1 << 20] {
            let mut reader = LogReader { db: db.clone(), max_batch_bytes: chunk_bytes, max_batch_entries: 64 };
            let got = reader.entries_stream(1..=10).await.collect::<Vec<_>>().await;
            let read: Vec<u64> = got.iter().filter_map(|e| e.as_ref().ok().map(|e| e.log_id.index)).collect();
            assert!([1, 2, 3, 4].starts_with(&read), "chunk budget {chunk_bytes}: nothing past the hole: {read:?}");
            let err = got.iter().find_map(|e| e.as_ref().err()).map(ToString::to_string).unwrap_or_default();
            assert!(err.contains("log hole: expected index 5, found 6"), "chunk budget {chunk_bytes}: {err:?}");
        }
        Ok(())
    }

    #[test]
    fn trigger_needs_a_threshold_and_half_the_last_snapshot() {
        let t = LogBytes::new(100, 10);
        assert!(!t.is_due(99, 9));
        assert!(t.is_due(100, 1), "byte threshold");
        assert!(t.is_due(1, 10), "entry threshold");
        t.reset(1_000);
        assert!(!t.is_due(100, 10), "a big state is not rewritten for a little log");
        assert!(t.is_due(500, 1), "half the last snapshot in bytes");
        assert!(!t.is_due(499, 1_000_000));
    }
}
