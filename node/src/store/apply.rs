//! Turns one replicated command into one RocksDB `WriteBatch`: data, history and audit change
//! together (the caller adds the last-applied log id to the same batch), so a crash never leaves
//! half a change and replaying a command after a crash is impossible (last-applied moves with it).

use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::codec::{decode, encode};
use super::keys;
use super::state::EntryMeta;
use super::{CF_STATE, RocksDb, StoreError, cf};
use crate::command::{Command, CommandOutcome, Current, Operation, Precondition};
use crate::model::{AuditAction, AuditEvent, EntryRecord, Namespace};

/// Superseded versions kept per key until a `SetHistoryDepth` command says otherwise.
pub const DEFAULT_HISTORY_DEPTH: u64 = 10;

const HISTORY_DEPTH: &str = "history-depth";

/// The cluster's history depth as applied so far; `None` before any `SetHistoryDepth`.
pub fn stored_history_depth(db: &RocksDb) -> Result<Option<u64>, StoreError> {
    let cf = cf(db, CF_STATE)?;
    db.get_cf(&cf, keys::setting(HISTORY_DEPTH))?.map(|b| decode(&b)).transpose()
}

/// The history depth every replica applies writes with.
pub fn history_depth(db: &RocksDb) -> Result<u64, StoreError> {
    Ok(stored_history_depth(db)?.unwrap_or(DEFAULT_HISTORY_DEPTH))
}

const HISTORY_DEPTH_WIDEST: &str = "history-depth-widest";

/// The largest depth any key may still have history for: after the depth is lowered, a key's
/// older versions are removed on its next write, without reading anything.
fn history_depth_widest(db: &RocksDb, depth: u64) -> Result<u64, StoreError> {
    let cf = cf(db, CF_STATE)?;
    let widest: Option<u64> = db.get_cf(&cf, keys::setting(HISTORY_DEPTH_WIDEST))?.map(|b| decode(&b)).transpose()?;
    Ok(widest.unwrap_or(depth).max(depth))
}

/// Records a history depth (unless `if_unset` and one is set); returns the depth in force.
fn set_history_depth(db: &RocksDb, batch: &mut WriteBatch, depth: u64, if_unset: bool) -> Result<u64, StoreError> {
    let cf = cf(db, CF_STATE)?;
    let current = stored_history_depth(db)?;
    if if_unset && let Some(d) = current {
        return Ok(d);
    }
    // Keys written under a larger depth keep that much history until their next write.
    let widest = match current {
        Some(c) => history_depth_widest(db, c)?.max(depth),
        None => depth,
    };
    batch.put_cf(&cf, keys::setting(HISTORY_DEPTH), encode(&depth)?);
    batch.put_cf(&cf, keys::setting(HISTORY_DEPTH_WIDEST), encode(&widest)?);
    Ok(depth)
}

/// Applies `cmd` at log index `revision` by adding its writes to `batch`. Reads see the state
/// before this command (every command gets its own batch); everything it depends on, the
/// history depth included, is replicated state, so every replica computes the same batch.
pub fn apply_command(
    db: &RocksDb,
    batch: &mut WriteBatch,
    revision: u64,
    cmd: &Command,
) -> Result<CommandOutcome, StoreError> {
    let mut audit = AuditWriter { revision, seq: 0, at_ms: cmd.at_ms, actor: &cmd.actor };
    let outcome = match &cmd.op {
        Operation::Keyed { idempotency_key, op } => {
            let fingerprint = super::idempotency::fingerprint(&cmd.actor, op)?;
            match super::idempotency::lookup(db, idempotency_key, revision)? {
                Some(rec) if rec.fingerprint == fingerprint => {
                    return Ok(CommandOutcome::Replayed(Box::new(rec.outcome)));
                }
                Some(_) => return Ok(CommandOutcome::IdempotencyKeyReused),
                None => {}
            }
            let outcome = apply_op(db, batch, revision, cmd, op, &mut audit)?;
            super::idempotency::record(db, batch, idempotency_key, revision, fingerprint, &outcome)?;
            outcome
        }
        op => apply_op(db, batch, revision, cmd, op, &mut audit)?,
    };
    // Every operation that audits touches one namespace: its log is bounded in the same batch.
    if audit.seq > 0
        && let Some(ns) = cmd.op.namespace()
    {
        super::audit_retention::trim(db, batch, ns, u64::from(audit.seq))?;
    }
    Ok(outcome)
}

fn apply_op(
    db: &RocksDb,
    batch: &mut WriteBatch,
    revision: u64,
    cmd: &Command,
    op: &Operation,
    audit: &mut AuditWriter<'_>,
) -> Result<CommandOutcome, StoreError> {
    match op {
        Operation::PutNamespace { name, description, owner } => {
            let cf = cf(db, CF_STATE)?;
            let key = keys::namespace(name);
            let existing: Option<Namespace> = db.get_cf(&cf, &key)?.map(|b| decode(&b)).transpose()?;
            let created = existing.is_none();
            let ns = Namespace {
                name: name.clone(),
                description: description.clone(),
                owner: owner.clone(),
                created_at_ms: existing.as_ref().map_or(cmd.at_ms, |e| e.created_at_ms),
                created_by: existing.as_ref().map_or_else(|| cmd.actor.clone(), |e| e.created_by.clone()),
                updated_at_ms: cmd.at_ms,
                updated_by: cmd.actor.clone(),
                revision,
            };
            batch.put_cf(&cf, key, encode(&ns)?);
            let action = if created { AuditAction::NamespaceCreated } else { AuditAction::NamespaceUpdated };
            audit.record(db, batch, action, name, None, None, None)?;
            Ok(CommandOutcome::NamespaceWritten { created, namespace: ns })
        }
        Operation::DeleteNamespace { name } => {
            let cf = cf(db, CF_STATE)?;
            let key = keys::namespace(name);
            if db.get_cf(&cf, &key)?.is_none() {
                return Ok(CommandOutcome::NamespaceNotFound);
            }
            let prefix = keys::entry_meta_prefix(name, "");
            let mut entries_deleted = 0;
            for item in db.iterator_cf(&cf, IteratorMode::From(&prefix, Direction::Forward)) {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let meta: EntryMeta = decode(&v)?;
                let entry_key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                audit.record(
                    db,
                    batch,
                    AuditAction::ConfigDeleted,
                    name,
                    Some(&entry_key),
                    Some(meta.version),
                    None,
                )?;
                entries_deleted += 1;
            }
            for p in [prefix, keys::entry_value_prefix(name), keys::history_namespace_prefix(name)] {
                let end = keys::prefix_end(&p);
                batch.delete_range_cf(&cf, p, end);
            }
            batch.delete_cf(&cf, key);
            audit.record(db, batch, AuditAction::NamespaceDeleted, name, None, None, None)?;
            Ok(CommandOutcome::NamespaceDeleted { entries_deleted })
        }
        Operation::PutEntry { namespace, key, content_type, value, precondition } => {
            let cf = cf(db, CF_STATE)?;
            if db.get_cf(&cf, keys::namespace(namespace))?.is_none() {
                return Ok(CommandOutcome::NamespaceNotFound);
            }
            let meta_key = keys::entry_meta(namespace, key);
            let current: Option<EntryMeta> = db.get_cf(&cf, &meta_key)?.map(|b| decode(&b)).transpose()?;
            let current_version = current.as_ref().map(|m| m.version);
            if !precondition.holds(current.as_ref().map(|m| Current { version: m.version, revision: m.revision })) {
                return Ok(CommandOutcome::PreconditionFailed {
                    current_version,
                    current_revision: current.as_ref().map(|m| m.revision),
                });
            }
            if let Some(old) = &current {
                // Move the superseded version into history and drop the one that falls out.
                let old_value = db.get_cf(&cf, keys::entry_value(namespace, key))?.unwrap_or_default();
                let record = EntryRecord {
                    version: old.version,
                    revision: old.revision,
                    content_type: old.content_type.clone(),
                    updated_at_ms: old.updated_at_ms,
                    updated_by: old.updated_by.clone(),
                    value: old_value,
                };
                let depth = history_depth(db)?;
                if depth > 0 {
                    batch.put_cf(&cf, keys::history(namespace, key, old.version), encode(&record)?);
                }
                // Versions above `old.version - widest` may exist; those at or below
                // `old.version - depth` fall out. One point delete while the depth never went
                // down, a few after it was lowered; nothing is read.
                if old.version >= depth {
                    let widest = history_depth_widest(db, depth)?;
                    let lowest = old.version.saturating_sub(widest).max(1);
                    for v in lowest..=old.version - depth {
                        batch.delete_cf(&cf, keys::history(namespace, key, v));
                    }
                }
            }
            let version = current_version.map_or(1, |v| v + 1);
            let meta = EntryMeta {
                version,
                revision,
                content_type: content_type.clone(),
                updated_at_ms: cmd.at_ms,
                updated_by: cmd.actor.clone(),
                size: value.len() as u64,
            };
            batch.put_cf(&cf, meta_key, encode(&meta)?);
            batch.put_cf(&cf, keys::entry_value(namespace, key), value);
            let action = if current.is_some() { AuditAction::ConfigUpdated } else { AuditAction::ConfigCreated };
            audit.record(db, batch, action, namespace, Some(key), current_version, Some(version))?;
            Ok(CommandOutcome::EntryWritten { created: current.is_none(), version, revision })
        }
        Operation::SetHistoryDepth { depth, if_unset } => {
            let history_depth = set_history_depth(db, batch, *depth, *if_unset)?;
            Ok(CommandOutcome::SettingApplied { history_depth })
        }
        Operation::SetSettings { history_depth: depth, audit_retention } => {
            if let Some(events) = audit_retention {
                super::audit_retention::set_audit_retention(db, batch, *events)?;
            }
            let history_depth = match depth {
                Some(d) => set_history_depth(db, batch, *d, false)?,
                None => history_depth(db)?,
            };
            Ok(CommandOutcome::SettingApplied { history_depth })
        }
        // Keys are handled by `apply_command`; a nested one is never proposed.
        Operation::Keyed { op, .. } => apply_op(db, batch, revision, cmd, op, audit),
        Operation::DeleteEntry { namespace, key, precondition } => {
            let cf = cf(db, CF_STATE)?;
            if db.get_cf(&cf, keys::namespace(namespace))?.is_none() {
                return Ok(CommandOutcome::NamespaceNotFound);
            }
            let meta_key = keys::entry_meta(namespace, key);
            let current: Option<EntryMeta> = db.get_cf(&cf, &meta_key)?.map(|b| decode(&b)).transpose()?;
            let Some(current) = current else {
                return Ok(if *precondition == Precondition::None || *precondition == Precondition::Exists {
                    CommandOutcome::EntryNotFound
                } else {
                    CommandOutcome::PreconditionFailed { current_version: None, current_revision: None }
                });
            };
            if !precondition.holds(Some(Current { version: current.version, revision: current.revision })) {
                return Ok(CommandOutcome::PreconditionFailed {
                    current_version: Some(current.version),
                    current_revision: Some(current.revision),
                });
            }
            batch.delete_cf(&cf, meta_key);
            batch.delete_cf(&cf, keys::entry_value(namespace, key));
            let hp = keys::history_prefix(namespace, key);
            let end = keys::prefix_end(&hp);
            batch.delete_range_cf(&cf, hp, end);
            audit.record(db, batch, AuditAction::ConfigDeleted, namespace, Some(key), Some(current.version), None)?;
            Ok(CommandOutcome::EntryDeleted { version: current.version, revision })
        }
    }
}

/// Writes the audit events of one command, numbered within its revision.
struct AuditWriter<'a> {
    revision: u64,
    seq: u32,
    at_ms: u64,
    actor: &'a str,
}

impl AuditWriter<'_> {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        db: &RocksDb,
        batch: &mut WriteBatch,
        action: AuditAction,
        namespace: &str,
        key: Option<&str>,
        old_version: Option<u64>,
        new_version: Option<u64>,
    ) -> Result<(), StoreError> {
        let cf = cf(db, CF_STATE)?;
        let event = AuditEvent {
            action,
            actor: self.actor.to_string(),
            namespace: namespace.to_string(),
            key: key.map(str::to_string),
            old_version,
            new_version,
            revision: self.revision,
            at_ms: self.at_ms,
        };
        batch.put_cf(&cf, keys::audit(namespace, self.revision, self.seq), encode(&event)?);
        self.seq += 1;
        Ok(())
    }
}
