//! Field managers, reduced to what conflict detection needs: which manager last set each leaf
//! field (a JSON path; arrays count as one leaf) of an object. Server-side apply by manager M
//! conflicts when it would change the value of a field another manager owns; update operations
//! (merge patches) take ownership of what they set, and setting a field to null drops it. Pure.

use std::collections::BTreeMap;

use serde_json::Value;

/// Owner (field manager) of each leaf path.
pub type Owners = BTreeMap<String, String>;

/// Leaf fields of an object body outside `apiVersion`, `kind` and `metadata`, with values.
pub fn leaves(body: &Value) -> Vec<(String, Value)> {
    fn walk(v: &Value, path: String, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    walk(child, format!("{path}.{k}"), out);
                }
            }
            other => out.push((path, other.clone())),
        }
    }
    let mut out = Vec::new();
    if let Value::Object(m) = body {
        for (k, v) in m.iter().filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")) {
            walk(v, k.clone(), &mut out);
        }
    }
    out
}

fn value_at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(obj, |v, k| v.get(k))
}

/// Paths `manager`'s apply of `body` would change although another manager owns them.
pub fn conflicts(current: &Value, body: &Value, owners: &Owners, manager: &str) -> Vec<String> {
    leaves(body)
        .into_iter()
        .filter(|(path, value)| {
            let owned_by_other = owners.get(path).is_some_and(|o| o != manager);
            let changes = value_at(current, path).is_some_and(|cur| cur != value);
            owned_by_other && changes
        })
        .map(|(path, _)| path)
        .collect()
}

/// Ownership after `manager` set the fields of `body` (null values drop ownership).
pub fn take(mut owners: Owners, body: &Value, manager: &str) -> Owners {
    for (path, value) in leaves(body) {
        if value.is_null() {
            owners.remove(&path);
        } else {
            owners.insert(path, manager.to_string());
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn another_managers_field_conflicts_until_released() {
        let lease_a = json!({"kind": "Lease", "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}});
        let owners = take(Owners::new(), &lease_a, "a");
        let by_b = json!({"kind": "Lease", "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15}});
        assert_eq!(conflicts(&lease_a, &by_b, &owners, "b"), vec!["spec.holderIdentity"]);
        assert!(conflicts(&lease_a, &by_b, &owners, "a").is_empty(), "a manager may change its own fields");
        // A release (update setting nulls) drops ownership: b may apply.
        let owners = take(owners, &json!({"spec": {"holderIdentity": null}}), "a");
        let released = json!({"kind": "Lease", "spec": {"leaseDurationSeconds": 15}});
        assert!(conflicts(&released, &by_b, &owners, "b").is_empty());
    }
}
