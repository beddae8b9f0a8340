//! `service-accounts.toml`: which Kubernetes ServiceAccounts may call a node, as what. The
//! operator writes it from `spec.auth.serviceAccounts` into the node ConfigMap; the node reads
//! it with `--service-accounts-file` and then accepts ServiceAccount tokens (validated by the
//! API server's TokenReview) beside its API keys.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// API roles, ordered by power: admin ⊃ editor ⊃ viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read anything in its namespaces.
    Viewer,
    /// Also write config entries.
    Editor,
    /// Also manage namespaces (and, over every namespace, the cluster).
    Admin,
}

/// One mapping from ServiceAccounts to what they may do. (Unknown fields are not refused
/// here: a CRD schema may not say `additionalProperties: false`; the API server prunes them.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRule {
    /// Kubernetes namespace of the ServiceAccount.
    pub namespace: String,
    /// ServiceAccount name, or `*` for every ServiceAccount of the namespace.
    pub name: String,
    /// Roles granted (the strongest applies).
    pub roles: Vec<Role>,
    /// Confman namespaces the roles apply to: globs with `*` and `?` (`["*"]` for all).
    pub namespaces: Vec<String>,
}

impl ServiceAccountRule {
    /// Whether this rule names the ServiceAccount `namespace`/`name`.
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.namespace == namespace && (self.name == "*" || self.name == name)
    }
}

/// The file the node reads (snake_case keys, like `node.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountsFile {
    /// Token audiences this node accepts (a token must carry one of them).
    pub audiences: Vec<String>,
    /// How long a TokenReview's answer is reused, seconds (a deleted ServiceAccount's token
    /// keeps working this long, plus the API server's own token cache). [default: 10]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_seconds: Option<u64>,
    /// The mappings.
    pub rules: Vec<ServiceAccountRule>,
    /// API server base URL. [default: from KUBERNETES_SERVICE_HOST/PORT, as in a pod]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<String>,
    /// The node's own token for calling TokenReview. [default: the pod's ServiceAccount token]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// CA bundle of the API server. [default: the pod's ServiceAccount ca.crt]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Why a rule list cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("serviceAccounts[{index}]: {reason}")]
pub struct RuleError {
    /// Position of the rule.
    pub index: usize,
    /// The broken rule.
    pub reason: &'static str,
}

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks what the schema cannot: every rule names a namespace, a name, a role and a namespace
/// pattern.
pub fn check_rules(rules: &[ServiceAccountRule]) -> Result<(), RuleError> {
    for (index, r) in rules.iter().enumerate() {
        let reason = if !is_dns_label(&r.namespace) {
            "namespace must be a Kubernetes namespace name (lowercase letters, digits and '-', at most 63; no patterns)"
        } else if r.name.is_empty() {
            "name must not be empty (use \"*\" for every ServiceAccount of the namespace)"
        } else if r.roles.is_empty() {
            "at least one role is required"
        } else if r.namespaces.is_empty() || r.namespaces.iter().any(String::is_empty) {
            "namespaces needs at least one non-empty pattern (\"*\" for all)"
        } else {
            continue;
        };
        return Err(RuleError { index, reason });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(namespace: &str, name: &str) -> ServiceAccountRule {
        ServiceAccountRule {
            namespace: namespace.into(),
            name: name.into(),
            roles: vec![Role::Viewer],
            namespaces: vec!["*".into()],
        }
    }

    #[test]
    fn a_rule_names_one_account_or_every_account_of_a_namespace() {
        assert!(rule("apps", "web").matches("apps", "web"));
        assert!(!rule("apps", "web").matches("apps", "worker"));
        assert!(!rule("apps", "web").matches("other", "web"));
        assert!(rule("apps", "*").matches("apps", "worker"));
        assert!(!rule("apps", "*").matches("other", "worker"));
    }

    #[test]
    fn incomplete_rules_are_refused_naming_the_rule() {
        let mut no_role = rule("apps", "web");
        no_role.roles.clear();
        let mut no_pattern = rule("apps", "web");
        no_pattern.namespaces = vec![String::new()];
        for (bad, needle) in [
            (rule("", "web"), "namespace"),
            (rule("*", "web"), "no patterns"),
            (rule("apps", ""), "name"),
            (no_role, "role"),
            (no_pattern, "pattern"),
        ] {
            let err = check_rules(&[rule("a", "b"), bad]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("serviceAccounts[1]") && err.contains(needle), "{err}");
        }
        assert_eq!(check_rules(&[rule("a", "b")]), Ok(()));
    }

    #[test]
    fn the_file_reads_back_what_the_operator_writes() -> Result<(), Box<dyn std::error::Error>> {
        let file = ServiceAccountsFile {
            audiences: vec!["confman".into(), "demo".into()],
            cache_seconds: Some(10),
            rules: vec![rule("apps", "*")],
            ..ServiceAccountsFile::default()
        };
        let text = toml::to_string(&file)?;
        assert_eq!(toml::from_str::<ServiceAccountsFile>(&text)?, file);
        Ok(())
    }
}
