//! RocksDB storage shared by the Raft log and the state machine: one database per node with a
//! column family per concern (`docs/storage.md`). This module opens the database; `keys` and
//! `codec` define the on-disk layout, `state` reads it and `apply` turns a command into one
//! write batch.

pub mod apply;
pub mod audit_retention;
pub mod codec;
pub mod idempotency;
pub mod keys;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::OnceLock;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options};

/// The RocksDB handle type used everywhere (multi-threaded column-family handles).
pub type RocksDb = rocksdb::DBWithThreadMode<rocksdb::MultiThreaded>;

/// Raft log entries, keyed by big-endian index.
pub const CF_LOG: &str = "log";
/// Raft metadata: vote, committed log id, last purged log id.
pub const CF_RAFT_META: &str = "raft_meta";
/// State-machine metadata: last applied log id and last membership, written with every apply.
pub const CF_SM_META: &str = "sm_meta";
/// State data: namespaces, entries, values, history and audit.
pub const CF_STATE: &str = "state";

/// Values at least this large go to BlobDB files so compaction never rewrites them.
pub const MIN_BLOB_SIZE: u64 = 64 * 1024;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored record could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(#[from] postcard::Error),
    /// A file operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The database lacks a column family it must have.
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    /// Stored data is not what this version expects.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A blocking storage task panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(e) => e,
            other => std::io::Error::other(other),
        }
    }
}

/// Returns a column family handle or a typed error (never panics on a missing family).
pub fn cf<'a>(db: &'a RocksDb, name: &'static str) -> Result<Arc<rocksdb::BoundColumnFamily<'a>>, StoreError> {
    db.cf_handle(name).ok_or(StoreError::MissingColumnFamily(name))
}

/// Runs blocking storage work on tokio's blocking pool so async workers (and heartbeats) never
/// wait for disk.
pub async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Task(e.to_string()))?
}

/// Blocking reads made for client requests that may run at once. Raft's own storage work
/// (log appends, applies, snapshots) shares tokio's blocking pool with them; capping the
/// requests' share keeps threads free for Raft however many requests arrive, and requests
/// beyond the cap wait their turn instead of each holding a thread.
pub const REQUEST_READS_AT_ONCE: usize = 64;

static REQUEST_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(REQUEST_READS_AT_ONCE);

/// Like [`blocking`], for work a client request asks for: at most
/// [`REQUEST_READS_AT_ONCE`] run at a time.
pub async fn request_blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    let permit = REQUEST_READS.acquire().await.map_err(|e| StoreError::Task(e.to_string()))?;
    // The permit lives in the blocking closure: a cancelled request (the client hung up) does
    // not free it while its read still occupies a thread.
    blocking(move || {
        let _permit = permit;
        f()
    })
    .await
}

/// Opens (or creates) the node database under `dir/rocksdb`.
pub fn open(dir: &Path) -> Result<Arc<RocksDb>, StoreError> {
    let path: PathBuf = dir.join("rocksdb");
    std::fs::create_dir_all(&path)?;

    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(2);
    db_opts.set_bytes_per_sync(1 << 20);
    db_opts.set_keep_log_file_num(4);
    // Memtables hold whole values until flush (blobs are separated at flush time), and every
    // value passes through two of them (log, then state): cap their total so memory stays
    // bounded with MB-sized values. They are the largest single share of a node's heap with
    // 4 MiB values, but a smaller cap costs write throughput (see MEMTABLE_BUDGET).
    db_opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
    // The metadata families see tiny writes and would rarely flush, pinning every WAL file
    // (each holding MBs of values) on disk; cap the WAL so they get flushed too.
    db_opts.set_max_total_wal_size(256 << 20);
    // The WAL is fsynced explicitly (group commit in the log store): no sync per write.
    db_opts.set_manual_wal_flush(false);

    let families = vec![
        ColumnFamilyDescriptor::new(CF_LOG, log_options()),
        ColumnFamilyDescriptor::new(CF_RAFT_META, small_options()),
        ColumnFamilyDescriptor::new(CF_SM_META, small_options()),
        ColumnFamilyDescriptor::new(CF_STATE, state_options()),
    ];
    let db = RocksDb::open_cf_descriptors(&db_opts, &path, families)?;
    Ok(Arc::new(db))
}

/// Total of all memtables (RocksDB flushes the largest when it is reached). Measured with
/// 500 × 4 MiB writes (`stress-large`, one run each on a quiet machine): 48 MiB took the
/// leader's peak RSS from 285 to 217 MiB but cut writes from 7.7/s to 5.4/s (far more, smaller
/// flushes, each with its own blob file and sync); 64 MiB gave 7.5/s and 304 MiB.
const MEMTABLE_BUDGET: usize = 96 << 20;
/// One memtable of the log or state family (two per family at most).
const MEMTABLE_BYTES: usize = 32 << 20;

/// One block cache shared by every column family (RocksDB would otherwise give each family
/// its own 32 MiB cache), so memory stays bounded.
fn block_cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Cache::new_lru_cache(32 << 20))
}

fn table_options(bloom: bool) -> BlockBasedOptions {
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(block_cache());
    if bloom {
        t.set_bloom_filter(10.0, false);
    }
    t
}

/// Options of the state column family: BlobDB for large values, lz4 for the rest.
pub fn state_options() -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_enable_blob_files(true);
    o.set_min_blob_size(MIN_BLOB_SIZE);
    o.set_blob_compression_type(DBCompressionType::None);
    o.set_enable_blob_gc(true);
    o.set_blob_gc_age_cutoff(0.25);
    o.set_write_buffer_size(MEMTABLE_BYTES);
    o.set_max_write_buffer_number(2);
    o.set_block_based_table_factory(&table_options(true));
    o
}

/// Options of the log column family: entries are short-lived, so no compression; large
/// entries go to blob files so purging does not rewrite them.
fn log_options() -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::None);
    o.set_enable_blob_files(true);
    o.set_min_blob_size(MIN_BLOB_SIZE);
    o.set_enable_blob_gc(true);
    o.set_write_buffer_size(MEMTABLE_BYTES);
    o.set_max_write_buffer_number(2);
    o.set_block_based_table_factory(&table_options(false));
    o
}

fn small_options() -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::None);
    o.set_block_based_table_factory(&table_options(false));
    o
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The permit tests count the one process-wide semaphore: they run one at a time.
    static PERMITS_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// However many requests read at once, at most `REQUEST_READS_AT_ONCE` hold a blocking
    /// thread; the rest of the pool stays free for Raft's storage work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_reads_never_take_more_than_their_share_of_blocking_threads() -> Result<(), StoreError> {
        let _alone = PERMITS_TESTS.lock().await;
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let total = REQUEST_READS_AT_ONCE * 3;
        let mut tasks = Vec::new();
        for _ in 0..total {
            let (now, peak, rx) = (now.clone(), peak.clone(), release_rx.clone());
            tasks.push(tokio::spawn(request_blocking(move || {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                // Each read holds its thread until the test releases one.
                let _ = rx.lock().map(|r| r.recv());
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })));
        }
        // Every permit is taken by a read that holds its thread; the others wait for permits.
        for _ in 0..10_000 {
            if now.load(Ordering::SeqCst) >= REQUEST_READS_AT_ONCE {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(now.load(Ordering::SeqCst), REQUEST_READS_AT_ONCE, "reads holding threads");
        for _ in 0..total {
            let _ = release_tx.send(());
        }
        for t in tasks {
            t.await.map_err(|e| StoreError::Task(e.to_string()))??;
        }
        assert_eq!(peak.load(Ordering::SeqCst), REQUEST_READS_AT_ONCE, "never more at once");
        Ok(())
    }

    /// A request that is cancelled while its read runs keeps its permit until the read ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_request_keeps_its_permit_until_its_read_ends() -> Result<(), StoreError> {
        let _alone = PERMITS_TESTS.lock().await;
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let before = REQUEST_READS.available_permits();
        let read = tokio::spawn(request_blocking(move || {
            let _ = started_tx.send(());
            let _ = release_rx.recv();
            Ok(())
        }));
        started_rx.await.map_err(|e| StoreError::Task(e.to_string()))?;
        read.abort();
        let _ = read.await;
        assert_eq!(REQUEST_READS.available_permits(), before - 1, "the running read still holds its permit");
        let _ = release_tx.send(());
        for _ in 0..10_000 {
            if REQUEST_READS.available_permits() == before {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Err(StoreError::Task("the permit never came back after the read ended".into()))
    }
}
