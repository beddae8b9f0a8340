//! Bounds each namespace's audit log: at most the cluster's `auditRetention` events (default
//! 10,000), oldest whole revisions dropped first, in the same batch as the change that went
//! over. What was dropped is remembered (`trimmed_upto`), so a watch asking to resume before it
//! is told the history is gone (like etcd's "required revision has been compacted") instead of
//! silently skipping events. Cluster state, like the history depth: every replica trims alike.

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::keys;
use super::{CF_STATE, RocksDb, StoreError, cf};

/// Audit events kept per namespace until an admin sets another value.
pub const DEFAULT_AUDIT_RETENTION: u64 = 10_000;

/// The smallest retention an admin may set: one command (a namespace delete) writes an event
/// per entry, and trimming never splits a revision.
pub const MIN_AUDIT_RETENTION: u64 = 100;

const AUDIT_RETENTION: &str = "audit-retention";

/// Per-namespace bookkeeping of the audit log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditMeta {
    /// Events currently kept; the oldest revisions are dropped once it exceeds the retention.
    pub count: u64,
    /// Every event at or below this revision has been dropped (0: none).
    pub trimmed_upto: u64,
}

/// The cluster's audit retention (events per namespace).
pub fn audit_retention(db: &RocksDb) -> Result<u64, StoreError> {
    let cf = cf(db, CF_STATE)?;
    Ok(db
        .get_cf(&cf, keys::setting(AUDIT_RETENTION))?
        .map(|b| decode(&b))
        .transpose()?
        .unwrap_or(DEFAULT_AUDIT_RETENTION))
}

/// Records a new retention in `batch`.
pub fn set_audit_retention(db: &RocksDb, batch: &mut WriteBatch, events: u64) -> Result<(), StoreError> {
    let cf = cf(db, CF_STATE)?;
    batch.put_cf(&cf, keys::setting(AUDIT_RETENTION), encode(&events)?);
    Ok(())
}

/// The audit bookkeeping of `ns`. Namespaces written before it existed are counted once here.
pub fn audit_meta(db: &RocksDb, ns: &str) -> Result<AuditMeta, StoreError> {
    let cf = cf(db, CF_STATE)?;
    if let Some(b) = db.get_cf(&cf, keys::audit_meta(ns))? {
        return decode(&b);
    }
    let prefix = keys::audit_prefix(ns);
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(prefix.clone());
    opts.set_iterate_upper_bound(keys::prefix_end(&prefix));
    let mut count = 0u64;
    for item in db.iterator_cf_opt(&cf, opts, IteratorMode::Start) {
        item?;
        count += 1;
    }
    Ok(AuditMeta { count, trimmed_upto: 0 })
}

/// What was trimmed from `ns`'s audit log (0: nothing), without counting anything.
pub fn trimmed_upto(db: &RocksDb, ns: &str) -> Result<u64, StoreError> {
    let cf = cf(db, CF_STATE)?;
    Ok(db
        .get_cf(&cf, keys::audit_meta(ns))?
        .map(|b| decode::<AuditMeta>(&b))
        .transpose()?
        .map_or(0, |m| m.trimmed_upto))
}

/// At most this many events are dropped by one command, so the first trim of a large log
/// (or a retention lowered a lot) is spread over the next writes instead of one huge batch.
const MAX_DROPPED_PER_COMMAND: u64 = 10_000;

/// Accounts for `added` events of `ns` written into `batch` by the current command and drops
/// the oldest whole revisions while more than the retention are kept. Reads see the state
/// before the command, so only older events are ever dropped.
pub fn trim(db: &RocksDb, batch: &mut WriteBatch, ns: &str, added: u64) -> Result<(), StoreError> {
    let cf = cf(db, CF_STATE)?;
    let retention = audit_retention(db)?;
    let mut meta = audit_meta(db, ns)?;
    meta.count += added;
    if meta.count > retention {
        let prefix = keys::audit_prefix(ns);
        let mut opts = ReadOptions::default();
        // Start after what was dropped already: no stepping over its tombstones.
        opts.set_iterate_lower_bound(keys::audit(ns, meta.trimmed_upto.saturating_add(1), 0));
        opts.set_iterate_upper_bound(keys::prefix_end(&prefix));
        let mut iter = db.raw_iterator_cf_opt(&cf, opts);
        iter.seek_to_first();
        let mut dropped = 0u64;
        while let Some(k) = iter.key() {
            // The revision is in the key (prefix, revision BE, seq BE): no value is read.
            let revision = k
                .get(prefix.len()..prefix.len() + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt(format!("audit key of {ns:?} without a revision")))?;
            // Whole revisions only: keep going until the revision of the last dropped event ends.
            if (meta.count <= retention || dropped >= MAX_DROPPED_PER_COMMAND) && revision > meta.trimmed_upto {
                break;
            }
            batch.delete_cf(&cf, k);
            meta.count -= 1;
            dropped += 1;
            meta.trimmed_upto = meta.trimmed_upto.max(revision);
            iter.next();
        }
        iter.status()?;
    }
    batch.put_cf(&cf, keys::audit_meta(ns), encode(&meta)?);
    Ok(())
}
