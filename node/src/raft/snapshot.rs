//! Snapshots as immutable files, never buffered in memory (`docs/large-values.md`, lessons
//! 1, 2, 6, 7; the format is in `docs/storage.md`). A build reads a RocksDB
//! point-in-time view on a blocking thread and streams it into an SST file (`SstFileWriter`),
//! so memory stays O(one record) and apply and heartbeats continue. Install ingests the SST
//! (`ingest_external_file`) instead of loading anything into memory.
//!
//! Layout under `<data>/snapshots/`:
//! - `snap-<index>-<nonce>/{data.sst, manifest.json}`: complete snapshots, immutable;
//! - `tmp-<nonce>/`: a build or a receive in progress, wiped at startup.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rocksdb::{IngestExternalFileOptions, IteratorMode, ReadOptions, SstFileWriter, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use super::types::{LogId, SnapshotMeta, StoredMembership};
use crate::store::codec::{decode, encode};
use crate::store::{CF_SM_META, CF_STATE, RocksDb, StoreError, cf, state_options};

/// Key of the last applied log id in the state-machine metadata family.
pub const KEY_LAST_APPLIED: &[u8] = b"last_applied";
/// Key of the last membership in the state-machine metadata family.
pub const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Marker naming a snapshot whose install has started but not finished.
pub const KEY_INSTALLING: &[u8] = b"installing";

const DATA_FILE: &str = "data.sst";
const MANIFEST_FILE: &str = "manifest.json";
const COPY_CHUNK: usize = 1 << 20;

/// What a snapshot holds, with sizes and checksums to verify a transfer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// openraft metadata (last log id, membership).
    pub meta: SnapshotMeta,
    /// Size of `data.sst` in bytes (0 when the state was empty and there is no file).
    pub data_size: u64,
    /// CRC32 of `data.sst`.
    pub data_crc32: u32,
    /// Number of records in the SST.
    pub records: u64,
    /// The SST carries a range tombstone over the whole state, so ingesting it replaces the
    /// state in one step (false in snapshots built by older nodes).
    #[serde(default)]
    pub replaces_state: bool,
}

/// A complete snapshot on disk: openraft's `SnapshotData`, a path handle rather than bytes.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// `snap-<index>-<nonce>` for a published snapshot, `tmp-<nonce>` for a staged receive.
    pub dir: PathBuf,
    /// What the directory holds, read from its `manifest.json`.
    pub manifest: Manifest,
}

impl SnapshotFile {
    /// Path of the SST holding the state (absent when `manifest.data_size == 0`).
    pub fn data_path(&self) -> PathBuf {
        self.dir.join(DATA_FILE)
    }
}

/// Counters and last durations of snapshot work, for `/metrics` and `/api/v1/cluster`.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    builds: AtomicU64,
    last_build_ms: AtomicU64,
    last_build_bytes: AtomicU64,
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    last_send_ms: AtomicU64,
    received: AtomicU64,
    received_bytes: AtomicU64,
    last_receive_ms: AtomicU64,
    rejected: AtomicU64,
    checksum_mismatches: AtomicU64,
    installs: AtomicU64,
    resumed_installs: AtomicU64,
    last_install_ms: AtomicU64,
    last_install_bytes: AtomicU64,
}

/// A point-in-time copy of `SnapshotStats`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatsView {
    /// Snapshots built.
    pub builds: u64,
    /// Duration of the last build, ms.
    pub last_build_ms: u64,
    /// Size of the last built snapshot, bytes.
    pub last_build_bytes: u64,
    /// Snapshots sent to followers.
    pub sent: u64,
    /// Bytes sent in snapshots.
    pub sent_bytes: u64,
    /// Duration of the last send (stream + remote install), ms.
    pub last_send_ms: u64,
    /// Snapshots received and verified.
    pub received: u64,
    /// Bytes received in snapshots.
    pub received_bytes: u64,
    /// Duration of the last receive (stream to staging), ms.
    pub last_receive_ms: u64,
    /// Snapshots refused (checksum, size, stale or inconsistent).
    pub rejected: u64,
    /// Of those, refused because the received bytes did not match the manifest's size and CRC.
    pub checksum_mismatches: u64,
    /// Snapshots installed.
    pub installs: u64,
    /// Installs interrupted by a crash and finished at the next start.
    pub resumed_installs: u64,
    /// Duration of the last install, ms.
    pub last_install_ms: u64,
    /// Size of the last installed snapshot, bytes.
    pub last_install_bytes: u64,
}

fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

impl SnapshotStats {
    /// Records a finished send.
    pub fn record_send(&self, bytes: u64, started: Instant) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_send_ms.store(ms_since(started), Ordering::Relaxed);
    }

    /// Records a verified receive.
    pub fn record_receive(&self, bytes: u64, started: Instant) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.received_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_receive_ms.store(ms_since(started), Ordering::Relaxed);
    }

    /// Records a refused snapshot.
    pub fn record_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a received snapshot whose bytes did not match its manifest (it is also counted
    /// as rejected).
    pub fn record_checksum_mismatch(&self) {
        self.checksum_mismatches.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn view(&self) -> SnapshotStatsView {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SnapshotStatsView {
            builds: g(&self.builds),
            last_build_ms: g(&self.last_build_ms),
            last_build_bytes: g(&self.last_build_bytes),
            sent: g(&self.sent),
            sent_bytes: g(&self.sent_bytes),
            last_send_ms: g(&self.last_send_ms),
            received: g(&self.received),
            received_bytes: g(&self.received_bytes),
            last_receive_ms: g(&self.last_receive_ms),
            rejected: g(&self.rejected),
            checksum_mismatches: g(&self.checksum_mismatches),
            installs: g(&self.installs),
            resumed_installs: g(&self.resumed_installs),
            last_install_ms: g(&self.last_install_ms),
            last_install_bytes: g(&self.last_install_bytes),
        }
    }
}

/// The snapshot directory of a node.
#[derive(Debug)]
pub struct SnapshotStore {
    root: PathBuf,
    stats: Arc<SnapshotStats>,
    /// Serialises publishing and garbage collection: a build and a received snapshot may be
    /// published at the same time, and both would delete the same older directory.
    publishing: std::sync::Mutex<()>,
}

/// Values read by one snapshot-build iterator before it is replaced (see `SnapshotStore::build`).
const ITERATOR_REFRESH_BYTES: usize = 16 << 20;

impl SnapshotStore {
    /// Opens `<data>/snapshots`, removing leftovers of interrupted builds and receives.
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, StoreError> {
        let root = data_dir.join("snapshots");
        fs::create_dir_all(&root)?;
        for e in fs::read_dir(&root)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("tmp-") {
                fs::remove_dir_all(e.path())?;
            }
        }
        Ok(Arc::new(Self { root, stats: Arc::new(SnapshotStats::default()), publishing: std::sync::Mutex::new(()) }))
    }

    /// Snapshot counters shared with the network halves.
    pub fn stats(&self) -> Arc<SnapshotStats> {
        self.stats.clone()
    }

    /// A fresh staging directory for a build or an inbound transfer.
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self.root.join(format!("tmp-{:016x}", rand::random::<u64>()));
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Path where the SST of a staged transfer is written.
    pub fn staged_data_path(staging: &Path) -> PathBuf {
        staging.join(DATA_FILE)
    }

    /// The newest complete snapshot, if any.
    pub fn current(&self) -> Result<Option<SnapshotFile>, StoreError> {
        let Some(dir) = self.complete_dirs()?.pop() else {
            return Ok(None);
        };
        let manifest = read_manifest(&dir)?;
        Ok(Some(SnapshotFile { dir, manifest }))
    }

    /// Complete snapshot directories, oldest first.
    fn complete_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&self.root)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("snap-"))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Builds a snapshot of the current state (blocking; run on a blocking thread).
    pub fn build(&self, db: &RocksDb) -> Result<SnapshotFile, StoreError> {
        let started = Instant::now();
        // The iterator below pins the memtables that exist when it is created for as long as
        // the build runs (seconds for GBs of state), while applies keep filling new ones: with
        // MB-sized values that doubles the memtables' memory. Flushing first leaves it nothing
        // large to pin.
        db.flush_cf(&cf(db, CF_STATE)?)?;
        let snap = db.snapshot();
        let meta_cf = cf(db, CF_SM_META)?;
        let last_applied: Option<LogId> = snap.get_cf(&meta_cf, KEY_LAST_APPLIED)?.map(|b| decode(&b)).transpose()?;
        let membership: StoredMembership =
            snap.get_cf(&meta_cf, KEY_MEMBERSHIP)?.map(|b| decode(&b)).transpose()?.unwrap_or_default();
        let staging = self.staging_dir()?;
        let data_path = staging.join(DATA_FILE);

        let state_cf = cf(db, CF_STATE)?;
        let read_options = || {
            let mut opts = ReadOptions::default();
            opts.fill_cache(false);
            opts.set_readahead_size(4 << 20);
            opts
        };
        let sst_opts = state_options();
        let mut writer = SstFileWriter::create(&sst_opts);
        writer.open(&data_path)?;
        // The file replaces the whole state when ingested: a tombstone over every state key
        // (it hides the older keys, not the file's own), so an install is one atomic step.
        writer.delete_range(STATE_START, STATE_END)?;
        let mut records = 0u64;
        // An iterator pins the memtables that exist when it is made until it is dropped, and
        // applies go on filling the active one during a build of seconds: one iterator held
        // up to a whole memtable (32 MiB) for the build. Every `ITERATOR_REFRESH_BYTES` a new
        // iterator over the same DB snapshot (the same point in time) continues after the
        // last key, and the old one lets go of what has been flushed since.
        let mut it = snap.raw_iterator_cf_opt(&state_cf, read_options());
        it.seek_to_first();
        let mut since_refresh = 0usize;
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
            writer.put(k, v)?;
            records += 1;
            since_refresh += k.len() + v.len();
            if since_refresh >= ITERATOR_REFRESH_BYTES {
                let last = k.to_vec();
                it.status()?;
                it = snap.raw_iterator_cf_opt(&state_cf, read_options());
                it.seek(&last);
                if it.valid() && it.key() == Some(last.as_slice()) {
                    it.next();
                }
                since_refresh = 0;
            } else {
                it.next();
            }
        }
        it.status()?;
        writer.finish()?;
        File::open(&data_path)?.sync_all()?;
        let (data_size, data_crc32) = crc_of_file(&data_path)?;
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership };
        let manifest = Manifest { meta, data_size, data_crc32, records, replaces_state: true };
        let index = last_applied.map_or(0, |l| l.index);
        let dir = self.publish(&staging, &manifest, index)?;
        self.stats.builds.fetch_add(1, Ordering::Relaxed);
        self.stats.last_build_ms.store(ms_since(started), Ordering::Relaxed);
        self.stats.last_build_bytes.store(data_size, Ordering::Relaxed);
        tracing::info!(
            index,
            records,
            bytes = data_size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok(SnapshotFile { dir, manifest })
    }

    /// Writes the manifest into `staging`, fsyncs, and renames it into place as a complete
    /// snapshot; then deletes the older snapshots.
    pub fn publish(&self, staging: &Path, manifest: &Manifest, index: u64) -> Result<PathBuf, StoreError> {
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mpath = staging.join(MANIFEST_FILE);
        let mut f = File::create(&mpath)?;
        f.write_all(&json)?;
        f.sync_all()?;
        File::open(staging)?.sync_all()?;
        let dir = self.root.join(format!("snap-{index:020}-{:016x}", rand::random::<u64>()));
        // A poisoned lock only means another publish panicked; the directory is still sound.
        let _publishing = self.publishing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        fs::rename(staging, &dir)?;
        File::open(&self.root)?.sync_all()?;
        self.collect_garbage()?;
        Ok(dir)
    }

    /// Keeps only the newest snapshot. A transfer still reading an older one keeps its open
    /// file descriptor, so deleting the directory never breaks it.
    fn collect_garbage(&self) -> Result<(), StoreError> {
        let dirs = self.complete_dirs()?;
        let n = dirs.len().saturating_sub(1);
        for old in &dirs[..n] {
            match fs::remove_dir_all(old) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes `file` one of this store's complete snapshots: a staged receive is published in
    /// place; a snapshot from elsewhere (another store) is copied in first.
    pub fn adopt(&self, file: &SnapshotFile) -> Result<SnapshotFile, StoreError> {
        let index = file.manifest.meta.last_log_id.as_ref().map_or(0, |l| l.index);
        let in_root = file.dir.parent() == Some(self.root.as_path());
        let name = file.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = if in_root && name.starts_with("snap-") {
            file.dir.clone()
        } else if in_root && name.starts_with("tmp-") {
            self.publish(&file.dir, &file.manifest, index)?
        } else {
            let staging = self.staging_dir()?;
            if file.manifest.data_size > 0 {
                fs::copy(file.data_path(), staging.join(DATA_FILE))?;
                File::open(staging.join(DATA_FILE))?.sync_all()?;
            }
            self.publish(&staging, &file.manifest, index)?
        };
        Ok(SnapshotFile { dir, manifest: file.manifest.clone() })
    }

    /// Replaces the state with the snapshot's (blocking). Crash-safe: an `installing` marker
    /// naming the snapshot is written (synced) before the state is touched and removed in the
    /// same synced batch that records the new last-applied id; `resume_install` finishes an
    /// interrupted install at startup.
    pub fn install(&self, db: &RocksDb, snapshot: &SnapshotFile) -> Result<(), StoreError> {
        let meta_cf = cf(db, CF_SM_META)?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        // The snapshot's directory name, resolved against this store's root on resume: the
        // marker stays valid if the data directory is reached by another path later.
        let name = snapshot.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        db.put_cf_opt(&meta_cf, KEY_INSTALLING, name.as_bytes(), &sync)?;
        self.install_state(db, snapshot)
    }

    fn install_state(&self, db: &RocksDb, snapshot: &SnapshotFile) -> Result<(), StoreError> {
        let started = Instant::now();
        let state_cf = cf(db, CF_STATE)?;
        let meta_cf = cf(db, CF_SM_META)?;
        // A snapshot file that carries its own covering tombstone replaces the state in the
        // one ingestion: readers see the old state or the new one, never an empty one. Files
        // from older nodes do not: the state is cleared first, then ingested (their keys get a
        // sequence number above the range tombstone).
        if !snapshot.manifest.replaces_state {
            db.delete_range_cf(&state_cf, STATE_START, STATE_END)?;
            install_step("install-after-clear", db);
        }
        if snapshot.manifest.data_size > 0 {
            // Ingest a hard link so the snapshot keeps its own file for sending to others.
            let link = snapshot.dir.join(format!("ingest-{:016x}.sst", rand::random::<u64>()));
            fs::hard_link(snapshot.data_path(), &link)?;
            let mut opts = IngestExternalFileOptions::default();
            opts.set_move_files(true);
            db.ingest_external_file_cf_opts(&state_cf, &opts, vec![link.clone()])?;
            if link.exists() {
                fs::remove_file(&link)?;
            }
        }
        install_step("install-before-flip", db);
        let mut batch = WriteBatch::default();
        match &snapshot.manifest.meta.last_log_id {
            Some(l) => batch.put_cf(&meta_cf, KEY_LAST_APPLIED, encode(l)?),
            None => batch.delete_cf(&meta_cf, KEY_LAST_APPLIED),
        }
        batch.put_cf(&meta_cf, KEY_MEMBERSHIP, encode(&snapshot.manifest.meta.last_membership)?);
        batch.delete_cf(&meta_cf, KEY_INSTALLING);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.write_opt(batch, &sync)?;
        self.stats.installs.fetch_add(1, Ordering::Relaxed);
        self.stats.last_install_ms.store(ms_since(started), Ordering::Relaxed);
        self.stats.last_install_bytes.store(snapshot.manifest.data_size, Ordering::Relaxed);
        tracing::info!(
            records = snapshot.manifest.records,
            bytes = snapshot.manifest.data_size,
            elapsed_ms = ms_since(started),
            "snapshot installed"
        );
        Ok(())
    }

    /// Finishes an install interrupted by a crash (called at startup, before Raft starts).
    pub fn resume_install(&self, db: &RocksDb) -> Result<(), StoreError> {
        let meta_cf = cf(db, CF_SM_META)?;
        let Some(name) = db.get_cf(&meta_cf, KEY_INSTALLING)? else {
            return Ok(());
        };
        // A name (current format) or a full path (older nodes): `join` keeps an absolute path.
        let dir = self.root.join(String::from_utf8_lossy(&name).into_owned());
        tracing::warn!(dir = %dir.display(), "resuming an interrupted snapshot install");
        let manifest = read_manifest(&dir)?;
        self.install_state(db, &SnapshotFile { dir, manifest })?;
        self.stats.resumed_installs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The whole state key space (every state key starts with a tag letter below 0xff).
const STATE_START: &[u8] = &[0u8];
const STATE_END: &[u8] = &[0xffu8, 0xff];

/// A named point between the steps of an install: where crash tests abort the process, and
/// where unit tests look at what a reader would see.
fn install_step(name: &str, db: &RocksDb) {
    #[cfg(test)]
    tests::observe_step(name, db);
    #[cfg(not(test))]
    let _ = db;
    crash_point(name);
}

/// Fault injection for crash tests: when `CONFMAN_FAULT_CRASH_AT` names this point, the
/// process aborts here, as a power cut would. Never set in production.
fn crash_point(name: &str) {
    if std::env::var("CONFMAN_FAULT_CRASH_AT").is_ok_and(|v| v == name) {
        tracing::warn!(point = name, "fault injection: aborting the process");
        std::process::abort();
    }
}

/// Digest of the whole state (and the applied log id) read from one RocksDB snapshot, so two
/// nodes at the same applied index can be compared byte for byte.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateDigest {
    /// Applied index the digest reflects.
    pub applied_index: u64,
    /// SHA-256 over every key and value of the state, in key order.
    pub sha256: String,
    /// Number of state records the digest covers.
    pub records: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// Computes the state digest (blocking; streams, memory O(one record)).
pub fn state_digest(db: &RocksDb) -> Result<StateDigest, StoreError> {
    use sha2::Digest;
    let snap = db.snapshot();
    let meta_cf = cf(db, CF_SM_META)?;
    let applied: Option<LogId> = snap.get_cf(&meta_cf, KEY_LAST_APPLIED)?.map(|b| decode(&b)).transpose()?;
    let state_cf = cf(db, CF_STATE)?;
    let mut opts = ReadOptions::default();
    opts.fill_cache(false);
    let mut h = sha2::Sha256::new();
    let (mut records, mut bytes) = (0u64, 0u64);
    for item in snap.iterator_cf_opt(&state_cf, opts, IteratorMode::Start) {
        let (k, v) = item?;
        h.update((k.len() as u64).to_be_bytes());
        h.update(&k);
        h.update((v.len() as u64).to_be_bytes());
        h.update(&v);
        records += 1;
        bytes += (k.len() + v.len()) as u64;
    }
    Ok(StateDigest { applied_index: applied.map_or(0, |l| l.index), sha256: hex::encode(h.finalize()), records, bytes })
}

fn read_manifest(dir: &Path) -> Result<Manifest, StoreError> {
    let bytes = fs::read(dir.join(MANIFEST_FILE))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("{}: {e}", dir.display())))
}

/// Size and CRC32 of a file, read in 1 MiB chunks.
pub fn crc_of_file(path: &Path) -> Result<(u64, u32), StoreError> {
    let mut f = File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, h.finalize()))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    thread_local! {
        /// When set, each install step records how many state keys a reader would see.
        static OBSERVED: RefCell<Option<Vec<(String, usize)>>> = const { RefCell::new(None) };
        /// When set, the `installing` marker as the first install step finds it.
        static MARKER: RefCell<Option<Option<Vec<u8>>>> = const { RefCell::new(None) };
    }

    pub(super) fn observe_step(name: &str, db: &RocksDb) {
        OBSERVED.with(|o| {
            if let Some(steps) = o.borrow_mut().as_mut() {
                let n = cf(db, CF_STATE).map(|c| db.iterator_cf(&c, IteratorMode::Start).count()).unwrap_or(0);
                steps.push((name.to_string(), n));
            }
        });
        MARKER.with(|m| {
            let mut m = m.borrow_mut();
            if m.as_ref().is_some_and(Option::is_none) {
                *m = Some(cf(db, CF_SM_META).ok().and_then(|c| db.get_cf(&c, KEY_INSTALLING).ok().flatten()));
            }
        });
    }

    /// The `installing` marker held the snapshot's full path, so a data directory reached by
    /// another path after a crash (a volume mounted elsewhere, a moved directory) could not
    /// finish the install. It holds the directory's name now, resolved against the store's
    /// root: an install interrupted before its flip resumes from the moved directory.
    #[test]
    fn an_interrupted_install_resumes_after_the_data_directory_moved() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let (db_a, db_b) = (crate::store::open(&dir.path().join("a"))?, crate::store::open(&dir.path().join("b"))?);
        let (cf_a, cf_b) = (cf(&db_a, CF_STATE)?, cf(&db_b, CF_STATE)?);
        db_a.put_cf(&cf_a, b"n\0old", b"x")?;
        for k in [&b"n\0new1"[..], b"n\0new2"] {
            db_b.put_cf(&cf_b, k, b"y")?;
        }
        let built = SnapshotStore::open(&dir.path().join("b-data"))?.build(&db_b)?;
        let store_a = SnapshotStore::open(&dir.path().join("a-data"))?;
        let adopted = store_a.adopt(&built)?;
        MARKER.with(|m| *m.borrow_mut() = Some(None));
        store_a.install(&db_a, &adopted)?;
        let marker = MARKER.with(|m| m.borrow_mut().take()).flatten().unwrap_or_default();
        let name = adopted.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&marker), name, "the marker names the snapshot, not its path");

        // A power cut before the flip: the old state, the marker set. Then the data directory
        // is found under another path.
        let meta = cf(&db_a, CF_SM_META)?;
        db_a.delete_range_cf(&cf_a, STATE_START, STATE_END)?;
        db_a.put_cf(&cf_a, b"n\0old", b"x")?;
        db_a.put_cf(&meta, KEY_INSTALLING, &marker)?;
        drop(store_a);
        fs::rename(dir.path().join("a-data"), dir.path().join("moved-data"))?;
        let moved = SnapshotStore::open(&dir.path().join("moved-data"))?;
        moved.resume_install(&db_a)?;
        let keys: Vec<Box<[u8]>> =
            db_a.iterator_cf(&cf_a, IteratorMode::Start).map(|kv| kv.map(|(k, _)| k)).collect::<Result<_, _>>()?;
        assert_eq!(keys, [&b"n\0new1"[..], b"n\0new2"].map(Box::from), "the snapshot's state, only");
        assert_eq!(db_a.get_cf(&meta, KEY_INSTALLING)?, None, "the install finished");
        Ok(())
    }

    /// Installs a snapshot of a 3-key state into a node holding 2 other keys, recording what a
    /// reader sees between the steps.
    fn install_observed(replaces_state: bool) -> Result<Vec<(String, usize)>, StoreError> {
        let dir = tempfile::tempdir()?;
        let (db_a, db_b) = (crate::store::open(&dir.path().join("a"))?, crate::store::open(&dir.path().join("b"))?);
        let (cf_a, cf_b) = (cf(&db_a, CF_STATE)?, cf(&db_b, CF_STATE)?);
        for k in [&b"n\0old1"[..], b"n\0old2"] {
            db_a.put_cf(&cf_a, k, b"x")?;
        }
        for k in [&b"n\0new1"[..], b"n\0new2", b"n\0new3"] {
            db_b.put_cf(&cf_b, k, b"y")?;
        }
        let store_b = SnapshotStore::open(&dir.path().join("b-data"))?;
        let mut built = store_b.build(&db_b)?;
        assert!(built.manifest.replaces_state, "new snapshots replace the state in one step");
        built.manifest.replaces_state = replaces_state;
        let store_a = SnapshotStore::open(&dir.path().join("a-data"))?;
        let adopted = store_a.adopt(&built)?;
        OBSERVED.with(|o| *o.borrow_mut() = Some(Vec::new()));
        store_a.install(&db_a, &adopted)?;
        let steps = OBSERVED.with(|o| o.borrow_mut().take()).unwrap_or_default();
        assert_eq!(db_a.iterator_cf(&cf_a, IteratorMode::Start).count(), 3, "the snapshot's state, only");
        assert_eq!(db_a.get_cf(&cf_a, b"n\0old1")?, None);
        Ok(steps)
    }

    /// Reads during an install saw an empty state: the old keys were range-deleted in one
    /// step and the snapshot ingested in the next. The snapshot file now carries the deletion.
    #[test]
    fn a_reader_never_sees_an_empty_state_during_an_install() -> Result<(), StoreError> {
        let steps = install_observed(true)?;
        assert!(!steps.is_empty(), "the install passed its steps");
        assert!(steps.iter().all(|(_, n)| *n > 0), "a reader saw an empty state: {steps:?}");
        // Snapshots from older nodes still install correctly, through the two-step path that
        // had the window (which is what this test would see without the fix).
        let legacy = install_observed(false)?;
        assert!(legacy.iter().any(|(step, n)| step == "install-after-clear" && *n == 0), "{legacy:?}");
        Ok(())
    }

    /// The build replaces its iterator every `ITERATOR_REFRESH_BYTES`: each key must still be
    /// copied exactly once, with its value, across the refreshes.
    #[test]
    fn a_build_across_iterator_refreshes_copies_every_key_once() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let (src, dst) = (crate::store::open(&dir.path().join("src"))?, crate::store::open(&dir.path().join("dst"))?);
        let value_len = 1 << 20;
        let n = 3 * ITERATOR_REFRESH_BYTES / value_len + 1;
        let (src_cf, dst_cf) = (cf(&src, CF_STATE)?, cf(&dst, CF_STATE)?);
        for i in 0..n {
            src.put_cf(&src_cf, format!("n\0k{i:04}"), vec![(i % 251) as u8; value_len])?;
        }
        let built = SnapshotStore::open(&dir.path().join("src-data"))?.build(&src)?;
        assert_eq!(built.manifest.records, n as u64);
        let store = SnapshotStore::open(&dir.path().join("dst-data"))?;
        let adopted = store.adopt(&built)?;
        store.install(&dst, &adopted)?;
        type Pair = (Box<[u8]>, Box<[u8]>);
        let copied: Vec<Pair> = dst.iterator_cf(&dst_cf, IteratorMode::Start).collect::<Result<_, _>>()?;
        assert_eq!(copied.len(), n);
        for (i, (k, v)) in copied.iter().enumerate() {
            assert_eq!(&k[..], format!("n\0k{i:04}").as_bytes());
            assert_eq!((v.len(), v[0]), (value_len, (i % 251) as u8));
        }
        Ok(())
    }

    fn empty_manifest() -> Manifest {
        let meta = SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default() };
        Manifest { meta, data_size: 0, data_crc32: 0, records: 0, replaces_state: false }
    }

    /// A build and a received snapshot published at the same time both collect the older
    /// directories; neither may fail because the other deleted one first.
    #[test]
    fn concurrent_publishes_all_succeed_and_leave_one_snapshot() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let store = SnapshotStore::open(dir.path())?;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || -> Result<(), StoreError> {
                    for i in 0..40 {
                        let staging = store.staging_dir()?;
                        store.publish(&staging, &empty_manifest(), t * 1000 + i)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().map_err(|_| StoreError::Corrupt("publisher panicked".into()))??;
        }
        assert_eq!(store.complete_dirs()?.len(), 1, "only the newest snapshot is kept");
        assert!(store.current()?.is_some());
        Ok(())
    }

    /// A received snapshot that was never installed (a crash, or openraft declining it) leaves
    /// a full-size staging directory; the next start removes it and keeps the published one.
    #[test]
    fn staging_directories_left_behind_are_removed_at_the_next_open() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let store = SnapshotStore::open(dir.path())?;
        let published = store.staging_dir()?;
        store.publish(&published, &empty_manifest(), 7)?;
        let left = store.staging_dir()?;
        fs::write(SnapshotStore::staged_data_path(&left), vec![0u8; 1 << 20])?;
        drop(store);
        let reopened = SnapshotStore::open(dir.path())?;
        assert!(!left.exists(), "the staging directory survived a restart");
        assert!(reopened.current()?.is_some(), "the published snapshot was kept");
        let names: Vec<String> = fs::read_dir(dir.path().join("snapshots"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        assert!(names.iter().all(|n| !n.starts_with("tmp-")), "{names:?}");
        Ok(())
    }
}
