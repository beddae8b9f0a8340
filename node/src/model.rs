//! The data model of a Confman node: namespaces, config entries, history and audit events,
//! plus the validation rules for names and keys. Pure types, no I/O.

use serde::{Deserialize, Serialize};

/// Longest namespace name accepted (a DNS name, dots allowed for hierarchy).
pub const MAX_NAMESPACE_LEN: usize = 253;
/// Longest config key accepted.
pub const MAX_KEY_LEN: usize = 256;

/// Why a namespace name or key was refused; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The namespace name breaks the DNS-label rules.
    #[error("invalid namespace name {name:?}: {reason}")]
    Namespace {
        /// The offending name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The key breaks the key rules.
    #[error("invalid key {key:?}: {reason}")]
    Key {
        /// The offending key.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

/// Checks a namespace name: lowercase DNS labels (`[a-z0-9-]`, not starting or ending with `-`,
/// 1–63 chars each) joined by dots, at most 253 chars in all.
pub fn validate_namespace(name: &str) -> Result<(), NameError> {
    let fail = |reason| Err(NameError::Namespace { name: name.to_string(), reason });
    if name.is_empty() {
        return fail("must not be empty");
    }
    if name.len() > MAX_NAMESPACE_LEN {
        return fail("must be at most 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return fail("each dot-separated label must be 1-63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return fail("only lowercase letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail("a label must not start or end with '-'");
        }
    }
    Ok(())
}

/// Checks a config key: 1–256 chars of `[A-Za-z0-9._/-]`.
pub fn validate_key(key: &str) -> Result<(), NameError> {
    let fail = |reason| Err(NameError::Key { key: key.to_string(), reason });
    if key.is_empty() {
        return fail("must not be empty");
    }
    if key.len() > MAX_KEY_LEN {
        return fail("must be at most 256 characters");
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-')) {
        return fail("only letters, digits and '.', '_', '/', '-' are allowed");
    }
    Ok(())
}

/// A namespace as stored in the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// The namespace name.
    pub name: String,
    /// Free text describing it.
    pub description: String,
    /// Who owns it (free text: a team, a person).
    pub owner: String,
    /// Creation time, milliseconds since the Unix epoch (leader clock at proposal).
    pub created_at_ms: u64,
    /// API key name that created it.
    pub created_by: String,
    /// Last update time, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
    /// API key name that last updated it.
    pub updated_by: String,
    /// Raft log index of the last change.
    pub revision: u64,
}

/// One version of a config entry as stored (the current one, or one in history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    /// Per-key version, 1 for the first write after creation.
    pub version: u64,
    /// Raft log index of the write that produced this version.
    pub revision: u64,
    /// MIME type the writer declared.
    pub content_type: String,
    /// Write time, milliseconds since the Unix epoch (leader clock at proposal).
    pub updated_at_ms: u64,
    /// API key name of the writer.
    pub updated_by: String,
    /// The value bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// What an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAction {
    /// A key was written for the first time.
    ConfigCreated,
    /// An existing key got a new version.
    ConfigUpdated,
    /// A key was deleted (directly or by a namespace delete).
    ConfigDeleted,
    /// A namespace was created.
    NamespaceCreated,
    /// A namespace's description or owner changed.
    NamespaceUpdated,
    /// A namespace was deleted with all its entries.
    NamespaceDeleted,
}

impl AuditAction {
    /// The stable dotted name used in the API (`config.created`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::ConfigCreated => "config.created",
            AuditAction::ConfigUpdated => "config.updated",
            AuditAction::ConfigDeleted => "config.deleted",
            AuditAction::NamespaceCreated => "namespace.created",
            AuditAction::NamespaceUpdated => "namespace.updated",
            AuditAction::NamespaceDeleted => "namespace.deleted",
        }
    }
}

/// An audit event, written in the same batch as the change it records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The kind of change (created, updated, deleted; of a namespace or an entry).
    pub action: AuditAction,
    /// API key name that caused it.
    pub actor: String,
    /// Namespace the change happened in (the audit log is per namespace).
    pub namespace: String,
    /// Key concerned, for config actions.
    pub key: Option<String>,
    /// Version before the change, if the key existed.
    pub old_version: Option<u64>,
    /// Version after the change, if the key still exists.
    pub new_version: Option<u64>,
    /// Raft log index of the change.
    pub revision: u64,
    /// Time of the change, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn format_time_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The current wall-clock time in milliseconds since the epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules() {
        for ok in ["payments", "payments.prod", "a", "a-b.c-d", "x1.y2"] {
            assert!(validate_namespace(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Payments", "a..b", "-a", "a-", "a_b", ".a", "a.", "a/b", &"x".repeat(64)] {
            assert!(validate_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_rules() {
        for ok in ["a", "db/url", "A.b_c-d/e", &"k".repeat(256)] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a\0b", "ü", &"k".repeat(257), "a?b"] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_format_is_rfc3339() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time_ms(1_500), "1970-01-01T00:00:01.500Z");
    }
}
