//! Payload classes: the declared size of the values a cluster stores, which selects its tuning.

use serde::{Deserialize, Serialize};

/// The declared size of the values a cluster stores. Larger values need longer timeouts (a
/// batch must move and be fsynced well inside them), byte-bounded batches of fewer entries,
/// larger compaction triggers in bytes and a shorter log tail in entries; the class picks a
/// consistent set of all of them (see [`crate::tuning`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayloadClass {
    /// 1–10 KB values: fast elections, small batches.
    Small,
    /// 10–100 KB values.
    Medium,
    /// 100 KB – 1 MB values.
    Large,
    /// Values over 1 MB.
    Huge,
}

impl PayloadClass {
    /// Every class, smallest first (the order of the columns of the tuning table).
    pub const ALL: [PayloadClass; 4] =
        [PayloadClass::Small, PayloadClass::Medium, PayloadClass::Large, PayloadClass::Huge];

    /// The lowercase name used in specs and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadClass::Small => "small",
            PayloadClass::Medium => "medium",
            PayloadClass::Large => "large",
            PayloadClass::Huge => "huge",
        }
    }

    /// Parses a class name as written in `--payload-class`.
    pub fn parse(s: &str) -> Option<PayloadClass> {
        PayloadClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}
