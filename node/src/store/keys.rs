//! Key layout of the state column family. Names and keys never contain NUL (validated by
//! `model`), so NUL separates the parts and prefix scans are exact.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `n` | `n\0{ns}` | `Namespace` |
//! | `e` | `e\0{ns}\0{key}` | `EntryMeta` (no value: listing never touches values) |
//! | `v` | `v\0{ns}\0{key}` | the raw value bytes (BlobDB when large) |
//! | `h` | `h\0{ns}\0{key}\0{version BE}` | `EntryRecord` of a superseded version |
//! | `a` | `a\0{ns}\0{revision BE}{seq BE}` | `AuditEvent` |
//! | `s` | `s\0{name}` | a cluster setting (e.g. `history-depth`: u64), replicated like data |
//! | `c` | `c\0{ns}` | `AuditMeta` of the namespace's audit log (events kept, trimmed up to) |
//! | `i` | `i\0{idempotency key}` | `IdempotencyRecord` of a keyed write (outcome, fingerprint) |
//! | `j` | `j\0{revision BE}` | the idempotency key recorded at that revision (eviction order) |

fn join(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 2 + parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.push(tag);
    k.push(0);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

/// Key of a namespace's audit bookkeeping.
pub fn audit_meta(ns: &str) -> Vec<u8> {
    join(b'c', &[ns.as_bytes()])
}

/// Key of the idempotency record of a client's write key.
pub fn idempotency(key: &str) -> Vec<u8> {
    join(b'i', &[key.as_bytes()])
}

/// Key of the eviction index entry of the idempotency record made at `revision`.
pub fn idempotency_expiry(revision: u64) -> Vec<u8> {
    let mut k = idempotency_expiry_prefix();
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

/// Prefix of the idempotency eviction index (oldest first).
pub fn idempotency_expiry_prefix() -> Vec<u8> {
    vec![b'j', 0]
}

/// Key of a cluster-wide setting.
pub fn setting(name: &str) -> Vec<u8> {
    join(b's', &[name.as_bytes()])
}

/// Key of a namespace record.
pub fn namespace(ns: &str) -> Vec<u8> {
    join(b'n', &[ns.as_bytes()])
}

/// Prefix of all namespace records.
pub fn namespace_prefix() -> Vec<u8> {
    vec![b'n', 0]
}

/// Key of an entry's metadata.
pub fn entry_meta(ns: &str, key: &str) -> Vec<u8> {
    join(b'e', &[ns.as_bytes(), key.as_bytes()])
}

/// Prefix of all entry metadata of a namespace, optionally narrowed by a key prefix.
pub fn entry_meta_prefix(ns: &str, key_prefix: &str) -> Vec<u8> {
    join(b'e', &[ns.as_bytes(), key_prefix.as_bytes()])
}

/// Key of an entry's value.
pub fn entry_value(ns: &str, key: &str) -> Vec<u8> {
    join(b'v', &[ns.as_bytes(), key.as_bytes()])
}

/// Prefix of all values of a namespace.
pub fn entry_value_prefix(ns: &str) -> Vec<u8> {
    join(b'v', &[ns.as_bytes(), b""])
}

/// Key of one superseded version of an entry.
pub fn history(ns: &str, key: &str, version: u64) -> Vec<u8> {
    let mut k = history_prefix(ns, key);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Prefix of all superseded versions of an entry.
pub fn history_prefix(ns: &str, key: &str) -> Vec<u8> {
    join(b'h', &[ns.as_bytes(), key.as_bytes(), b""])
}

/// Prefix of all history of a namespace.
pub fn history_namespace_prefix(ns: &str) -> Vec<u8> {
    join(b'h', &[ns.as_bytes(), b""])
}

/// Key of an audit event: ordered by revision, then by its position within the revision.
pub fn audit(ns: &str, revision: u64, seq: u32) -> Vec<u8> {
    let mut k = audit_prefix(ns);
    k.extend_from_slice(&revision.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Prefix of all audit events of a namespace.
pub fn audit_prefix(ns: &str) -> Vec<u8> {
    join(b'a', &[ns.as_bytes(), b""])
}

/// The smallest key greater than every key starting with `prefix` (exclusive range end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_prefix_does_not_match_longer_namespace() {
        let p = entry_meta_prefix("app", "");
        assert!(entry_meta("app", "x").starts_with(&p));
        assert!(!entry_meta("app.prod", "x").starts_with(&p));
    }

    #[test]
    fn history_versions_sort_numerically() {
        assert!(history("n", "k", 2) < history("n", "k", 10));
        assert!(history("n", "k", 255) < history("n", "k", 256));
        assert!(!history("n", "k2", 1).starts_with(&history_prefix("n", "k")));
    }

    #[test]
    fn prefix_end_bounds_prefix() {
        let p = audit_prefix("ns");
        let end = prefix_end(&p);
        assert!(audit("ns", u64::MAX, u32::MAX) < end);
        assert!(audit_prefix("nt") >= end);
        assert_eq!(prefix_end(&[1, 255]), vec![2]);
    }
}
