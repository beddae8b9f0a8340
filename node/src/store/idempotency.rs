//! Idempotency records: a keyed write (`Operation::Keyed`, the client's `Idempotency-Key`)
//! applies once; a repeat of it within the window gets the first application's outcome back
//! instead of applying again, and a different write under a used key is refused.
//!
//! Records live in the state column family (so snapshots carry them) and are written in the
//! write's own batch. The window is counted in log indexes, never by a clock: a record made at
//! revision `r` is forgotten once the applied index reaches `r + IDEMPOTENCY_WINDOW`, and
//! evicting it happens during apply, so every replica keeps exactly the same records.

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::codec::{decode, encode, read_be_u64};
use super::keys;
use super::{CF_STATE, RocksDb, StoreError, cf};
use crate::command::{CommandOutcome, Operation};

/// How many log indexes a record is remembered for (a client's retries last seconds; this is
/// far more than the writes of any retry deadline).
pub const IDEMPOTENCY_WINDOW: u64 = 100_000;

/// Records evicted per keyed write at most (each write adds one, so the backlog cannot grow).
const EVICT_PER_APPLY: usize = 64;

/// What is remembered about a keyed write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// Revision (log index) of the first application.
    pub revision: u64,
    /// SHA-256 of the actor and the write: a repeat must be the same request.
    pub fingerprint: [u8; 32],
    /// The first application's outcome, answered again on a repeat.
    pub outcome: CommandOutcome,
}

/// SHA-256 of who asked for which write.
pub fn fingerprint(actor: &str, op: &Operation) -> Result<[u8; 32], StoreError> {
    let mut h = Sha256::new();
    h.update(encode(actor)?);
    h.update(encode(op)?);
    Ok(h.finalize().into())
}

/// The record of `key` still in the window at `revision`.
pub fn lookup(db: &RocksDb, key: &str, revision: u64) -> Result<Option<IdempotencyRecord>, StoreError> {
    let cf = cf(db, CF_STATE)?;
    let rec: Option<IdempotencyRecord> = db.get_cf(&cf, keys::idempotency(key))?.map(|b| decode(&b)).transpose()?;
    Ok(rec.filter(|r| r.revision.saturating_add(IDEMPOTENCY_WINDOW) > revision))
}

/// Records `key`'s outcome at `revision` in `batch` and evicts records that left the window.
pub fn record(
    db: &RocksDb,
    batch: &mut WriteBatch,
    key: &str,
    revision: u64,
    fingerprint: [u8; 32],
    outcome: &CommandOutcome,
) -> Result<(), StoreError> {
    let cf = cf(db, CF_STATE)?;
    let prefix = keys::idempotency_expiry_prefix();
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(prefix.clone());
    opts.set_iterate_upper_bound(keys::prefix_end(&prefix));
    for item in db.iterator_cf_opt(&cf, opts, IteratorMode::Start).take(EVICT_PER_APPLY) {
        let (k, v) = item?;
        let at = read_be_u64(&k[prefix.len()..])?;
        if at.saturating_add(IDEMPOTENCY_WINDOW) > revision {
            break;
        }
        batch.delete_cf(&cf, &k);
        // The record may have been made again since (same key, later revision): keep that one.
        let old_key = String::from_utf8_lossy(&v).into_owned();
        let current: Option<IdempotencyRecord> =
            db.get_cf(&cf, keys::idempotency(&old_key))?.map(|b| decode(&b)).transpose()?;
        if current.is_some_and(|c| c.revision == at) {
            batch.delete_cf(&cf, keys::idempotency(&old_key));
        }
    }
    let rec = IdempotencyRecord { revision, fingerprint, outcome: outcome.clone() };
    batch.put_cf(&cf, keys::idempotency(key), encode(&rec)?);
    batch.put_cf(&cf, keys::idempotency_expiry(revision), key.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Precondition};
    use crate::store::apply::apply_command;

    fn apply(db: &RocksDb, revision: u64, actor: &str, op: Operation) -> Result<CommandOutcome, StoreError> {
        let mut batch = WriteBatch::default();
        let outcome = apply_command(db, &mut batch, revision, &Command { actor: actor.into(), at_ms: 1, op })?;
        db.write(batch)?;
        Ok(outcome)
    }

    fn keyed(key: &str, value: &str) -> Operation {
        Operation::Keyed {
            idempotency_key: key.into(),
            op: Box::new(Operation::PutEntry {
                namespace: "n".into(),
                key: "k".into(),
                content_type: "text/plain".into(),
                value: value.as_bytes().to_vec(),
                precondition: Precondition::None,
            }),
        }
    }

    /// A keyed write applies once, a repeat gets the first outcome, another write under the
    /// key is refused, and the record leaves the window by log index (the same on every
    /// replica), after which the key is new again.
    #[test]
    fn a_keyed_write_applies_once_within_the_window() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let db = crate::store::open(dir.path())?;
        let ns = Operation::PutNamespace { name: "n".into(), description: String::new(), owner: String::new() };
        apply(&db, 1, "a", ns)?;
        let first = apply(&db, 2, "a", keyed("K", "v1"))?;
        assert_eq!(first, CommandOutcome::EntryWritten { created: true, version: 1, revision: 2 });
        assert_eq!(apply(&db, 3, "a", keyed("K", "v1"))?, CommandOutcome::Replayed(Box::new(first.clone())));
        assert_eq!(apply(&db, 4, "a", keyed("K", "v2"))?, CommandOutcome::IdempotencyKeyReused);
        assert_eq!(apply(&db, 5, "b", keyed("K", "v1"))?, CommandOutcome::IdempotencyKeyReused, "another actor");
        assert_eq!(crate::store::state::get_entry(&db, "n", "k")?.map(|(m, _)| m.version), Some(1));

        // Still remembered at the last index of the window; forgotten (and evicted) after it.
        assert!(lookup(&db, "K", 2 + IDEMPOTENCY_WINDOW - 1)?.is_some());
        let late = apply(&db, 2 + IDEMPOTENCY_WINDOW, "a", keyed("L", "v3"))?;
        assert!(matches!(late, CommandOutcome::EntryWritten { version: 2, .. }), "{late:?}");
        let cf = cf(&db, CF_STATE)?;
        assert!(db.get_cf(&cf, keys::idempotency("K"))?.is_none(), "evicted during apply");
        assert!(db.get_cf(&cf, keys::idempotency_expiry(2))?.is_none());
        assert!(db.get_cf(&cf, keys::idempotency("L"))?.is_some());
        Ok(())
    }
}
