//! Reads of the state column family: namespaces, entries, history and audit. Each function is
//! blocking (call it through `store::blocking`) and reads one consistent RocksDB snapshot.

use rocksdb::{Direction, IteratorMode, ReadOptions};
use serde::{Deserialize, Serialize};

use super::codec::decode;
use super::keys;
use super::{CF_STATE, RocksDb, StoreError, cf};
use crate::model::{AuditEvent, EntryRecord, Namespace};

/// Metadata of the current version of an entry, stored apart from the value so listing and
/// precondition checks never read values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Per-key version.
    pub version: u64,
    /// Log index of the write.
    pub revision: u64,
    /// Declared content type.
    pub content_type: String,
    /// Write time, ms since the epoch.
    pub updated_at_ms: u64,
    /// Writer's API key name.
    pub updated_by: String,
    /// Value size in bytes.
    pub size: u64,
}

/// One page of a key listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPage {
    /// Keys in order with metadata, and values when asked for.
    pub items: Vec<(String, EntryMeta, Option<Vec<u8>>)>,
    /// The last key of this page when more keys follow.
    pub next_after: Option<String>,
}

/// Reads a namespace.
pub fn get_namespace(db: &RocksDb, name: &str) -> Result<Option<Namespace>, StoreError> {
    let cf = cf(db, CF_STATE)?;
    db.get_cf(&cf, keys::namespace(name))?.map(|b| decode(&b)).transpose()
}

/// Lists every namespace in name order.
pub fn list_namespaces(db: &RocksDb) -> Result<Vec<Namespace>, StoreError> {
    let cf = cf(db, CF_STATE)?;
    let prefix = keys::namespace_prefix();
    let mut out = Vec::new();
    for item in db.iterator_cf(&cf, IteratorMode::From(&prefix, Direction::Forward)) {
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        out.push(decode(&v)?);
    }
    Ok(out)
}

/// Reads the current version of an entry (metadata and value from one snapshot).
pub fn get_entry(db: &RocksDb, ns: &str, key: &str) -> Result<Option<(EntryMeta, Vec<u8>)>, StoreError> {
    let cf = cf(db, CF_STATE)?;
    let snap = db.snapshot();
    let Some(meta) = snap.get_cf(&cf, keys::entry_meta(ns, key))? else {
        return Ok(None);
    };
    let meta: EntryMeta = decode(&meta)?;
    let value = snap
        .get_cf(&cf, keys::entry_value(ns, key))?
        .ok_or_else(|| StoreError::Corrupt(format!("value of {ns}/{key} missing beside its metadata")))?;
    Ok(Some((meta, value)))
}

/// Lists entries of a namespace whose key starts with `prefix`, after key `after`: at most
/// `limit` of them and, with values, at most `max_value_bytes` of values (at least one entry,
/// so a page always makes progress). A page cut short says where to continue.
pub fn list_entries(
    db: &RocksDb,
    ns: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    include_values: bool,
    max_value_bytes: u64,
) -> Result<EntryPage, StoreError> {
    let cf = cf(db, CF_STATE)?;
    let snap = db.snapshot();
    let scan_prefix = keys::entry_meta_prefix(ns, prefix);
    let key_start = keys::entry_meta_prefix(ns, "").len();
    let start = match after {
        Some(a) => {
            let mut k = keys::entry_meta(ns, a);
            k.push(0); // strictly after `a`
            std::cmp::max(k, scan_prefix.clone())
        }
        None => scan_prefix.clone(),
    };
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(keys::prefix_end(&scan_prefix));
    let mut items = Vec::new();
    let mut more = false;
    let mut value_bytes = 0u64;
    for item in snap.iterator_cf_opt(&cf, opts, IteratorMode::From(&start, Direction::Forward)) {
        let (k, v) = item?;
        let meta: EntryMeta = decode(&v)?;
        // The metadata knows the value's size: a page stops before a value that would exceed
        // the budget, without reading it.
        if items.len() == limit || (include_values && !items.is_empty() && value_bytes + meta.size > max_value_bytes) {
            more = true;
            break;
        }
        let key = String::from_utf8_lossy(&k[key_start..]).into_owned();
        let value = if include_values { snap.get_cf(&cf, keys::entry_value(ns, &key))? } else { None };
        value_bytes += meta.size;
        items.push((key, meta, value));
    }
    let next_after = if more { items.last().map(|(k, _, _)| k.clone()) } else { None };
    Ok(EntryPage { items, next_after })
}

/// One page of an entry's history, newest first.
#[derive(Debug)]
pub struct HistoryPage {
    /// The versions on this page.
    pub items: Vec<EntryRecord>,
    /// Where the next page starts, when there is more: the last version returned and its
    /// revision (versions below it follow; the revision ties them to this incarnation).
    pub next_below: Option<HistoryCursor>,
    /// The key was deleted (and maybe created again) since the page the cursor came from.
    pub replaced: bool,
}

/// A position in an entry's history: a version and the revision that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor {
    /// Versions below this one come next.
    pub version: u64,
    /// The revision of that version, so a re-created key (versions restart) is noticed.
    pub revision: u64,
}

/// Returns the current version (unless `below` is given) and superseded versions below
/// `below`, newest first: at most `limit` versions and at most `max_value_bytes` of values (at
/// least one version, so a page always makes progress).
pub fn history(
    db: &RocksDb,
    ns: &str,
    key: &str,
    limit: usize,
    below: Option<HistoryCursor>,
    max_value_bytes: u64,
) -> Result<HistoryPage, StoreError> {
    let cf = cf(db, CF_STATE)?;
    let snap = db.snapshot();
    let mut items: Vec<EntryRecord> = Vec::new();
    let mut bytes = 0u64;
    if let Some(c) = below {
        // The version the cursor names must still be the one written at its revision: either
        // current, or in history; if it fell out of history (trimmed) the current version is
        // newer. A deleted or re-created key ends the listing instead of mixing incarnations.
        let current: Option<EntryMeta> =
            snap.get_cf(&cf, keys::entry_meta(ns, key))?.map(|b| decode(&b)).transpose()?;
        let kept: Option<EntryRecord> =
            snap.get_cf(&cf, keys::history(ns, key, c.version))?.map(|b| decode(&b)).transpose()?;
        let same = match (&current, &kept) {
            (Some(m), _) if m.version == c.version => m.revision == c.revision,
            (Some(m), Some(r)) => m.version > c.version && r.revision == c.revision,
            (Some(m), None) => m.version > c.version && m.revision > c.revision,
            (None, _) => false,
        };
        if !same {
            return Ok(HistoryPage { items, next_below: None, replaced: true });
        }
    }
    if below.is_none()
        && let Some(meta) = snap.get_cf(&cf, keys::entry_meta(ns, key))?
    {
        let meta: EntryMeta = decode(&meta)?;
        let value = snap.get_cf(&cf, keys::entry_value(ns, key))?.unwrap_or_default();
        bytes += value.len() as u64;
        items.push(EntryRecord {
            version: meta.version,
            revision: meta.revision,
            content_type: meta.content_type,
            updated_at_ms: meta.updated_at_ms,
            updated_by: meta.updated_by,
            value,
        });
    }
    let prefix = keys::history_prefix(ns, key);
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(prefix.clone());
    opts.set_iterate_upper_bound(match below {
        Some(c) => keys::history(ns, key, c.version),
        None => keys::prefix_end(&prefix),
    });
    let mut more = false;
    for item in snap.iterator_cf_opt(&cf, opts, IteratorMode::End) {
        let (_, v) = item?;
        if items.len() >= limit {
            more = true;
            break;
        }
        let record: EntryRecord = decode(&v)?;
        if !items.is_empty() && bytes + record.value.len() as u64 > max_value_bytes {
            more = true;
            break;
        }
        bytes += record.value.len() as u64;
        items.push(record);
    }
    let next_below =
        if more { items.last().map(|r| HistoryCursor { version: r.version, revision: r.revision }) } else { None };
    Ok(HistoryPage { items, next_below, replaced: false })
}

/// Audit events of a namespace with revision above `after`, oldest first: up to `limit`, but
/// always whole revisions (a revision is never split across pages, so a watcher resuming after
/// a revision misses nothing; one revision may exceed `limit`, e.g. a cascading delete).
///
/// `Err(AuditTrimmed)` when events after `after` were already dropped by the audit retention:
/// reading on would skip them silently.
pub fn audit_after(
    db: &RocksDb,
    ns: &str,
    after: u64,
    limit: usize,
) -> Result<Result<Vec<AuditEvent>, AuditTrimmed>, StoreError> {
    let cf = cf(db, CF_STATE)?;
    let snap = db.snapshot();
    let trimmed_upto = match snap.get_cf(&cf, keys::audit_meta(ns))? {
        Some(b) => decode::<super::audit_retention::AuditMeta>(&b)?.trimmed_upto,
        None => 0,
    };
    if after < trimmed_upto {
        return Ok(Err(AuditTrimmed { trimmed_upto }));
    }
    let prefix = keys::audit_prefix(ns);
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(keys::audit(ns, after.saturating_add(1), 0));
    opts.set_iterate_upper_bound(keys::prefix_end(&prefix));
    let mut out: Vec<AuditEvent> = Vec::new();
    for item in snap.iterator_cf_opt(&cf, opts, IteratorMode::Start) {
        let (_, v) = item?;
        let event: AuditEvent = decode(&v)?;
        if out.len() >= limit && out.last().is_some_and(|l| l.revision != event.revision) {
            break;
        }
        out.push(event);
    }
    Ok(Ok(out))
}

/// The audit events a reader asked for were dropped by the retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditTrimmed {
    /// Every event at or below this revision is gone.
    pub trimmed_upto: u64,
}

/// Returns up to `limit` audit events of a namespace, newest first.
pub fn audit(db: &RocksDb, ns: &str, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
    let cf = cf(db, CF_STATE)?;
    let prefix = keys::audit_prefix(ns);
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(prefix.clone());
    opts.set_iterate_upper_bound(keys::prefix_end(&prefix));
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(&cf, opts, IteratorMode::End) {
        if out.len() >= limit {
            break;
        }
        let (_, v) = item?;
        out.push(decode(&v)?);
    }
    Ok(out)
}
