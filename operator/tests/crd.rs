//! The generated CRD: committed copy up to date, schema structural, CEL rules enforced.

use confman_operator::crd::{ConfmanClusterSpec, crd, crd_yaml};
use serde_json::{Value, json};

const COMMITTED: &str = include_str!("../../crds/confmancluster.yaml");

#[test]
fn committed_crd_matches_the_generated_one() -> Result<(), Box<dyn std::error::Error>> {
    let generated = crd_yaml()?;
    assert!(
        generated == COMMITTED,
        "crds/confmancluster.yaml is stale: run `cargo run -p confman-operator -- crd > crds/confmancluster.yaml`"
    );
    Ok(())
}

/// Every schema node says what it is (a structural schema, as the apiserver requires).
fn check_structural(path: &str, v: &Value, problems: &mut Vec<String>) {
    let Some(m) = v.as_object() else { return };
    let typed = m.contains_key("type")
        || m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !typed {
        problems.push(format!("{path}: no type"));
    }
    for bad in ["$ref", "anyOf", "oneOf", "allOf", "definitions", "$defs"] {
        if m.contains_key(bad) && !(bad == "anyOf" && m.get("x-kubernetes-int-or-string").is_some()) {
            problems.push(format!("{path}: uses {bad}"));
        }
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            check_structural(&format!("{path}.{k}"), p, problems);
        }
    }
    if let Some(items) = m.get("items") {
        check_structural(&format!("{path}[]"), items, problems);
    }
    if let Some(ap) = m.get("additionalProperties").filter(|a| a.is_object()) {
        check_structural(&format!("{path}{{}}"), ap, problems);
    }
}

#[test]
fn schema_is_structural_and_small() -> Result<(), Box<dyn std::error::Error>> {
    let v = serde_json::to_value(crd()?)?;
    let schema = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut problems = Vec::new();
    check_structural("", schema, &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    let size = serde_json::to_string(schema)?.len();
    assert!(size < 200_000, "schema is {size} bytes");
    assert_eq!(v["spec"]["names"]["shortNames"], json!(["cmc"]));
    assert!(v["spec"]["versions"][0]["subresources"]["scale"].is_object());
    assert!(v["spec"]["versions"][0]["subresources"]["status"].is_object());
    Ok(())
}

#[test]
fn status_conventions_conditions_are_a_map_list_and_scale_names_the_selector() -> Result<(), Box<dyn std::error::Error>>
{
    let v = serde_json::to_value(crd()?)?;
    let version = &v["spec"]["versions"][0];
    let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    let conditions = &status["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], json!("map"), "{conditions}");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    // A map key must be required in every item.
    let required = conditions["items"]["required"].as_array().cloned().unwrap_or_default();
    assert!(required.contains(&json!("type")), "{required:?}");
    assert!(conditions["description"].as_str().is_some_and(|d| d.contains("Ready")));
    assert_eq!(status["selector"]["type"], json!("string"));
    let scale = &version["subresources"]["scale"];
    assert_eq!(scale["labelSelectorPath"], json!(".status.selector"));
    assert_eq!(scale["specReplicasPath"], json!(".spec.replicas"));
    Ok(())
}

#[test]
fn pod_spec_gaps_are_documented_spec_fields() -> Result<(), Box<dyn std::error::Error>> {
    let v = serde_json::to_value(crd()?)?;
    let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let pod = &spec["pod"]["properties"];
    for field in ["serviceAccountName", "imagePullSecrets", "labels", "annotations", "fsGroup"] {
        assert!(pod[field]["description"].as_str().is_some_and(|d| d.len() > 20), "spec.pod.{field}: {}", pod[field]);
    }
    assert_eq!(pod["fsGroup"]["minimum"].as_f64(), Some(1.0), "{}", pod["fsGroup"]);
    assert!(spec["resources"]["description"].as_str().is_some_and(|d| d.contains("BestEffort")));
    Ok(())
}

fn spec(replicas: i64) -> Value {
    json!({ "replicas": replicas, "image": "confman:1", "storage": { "size": "1Gi" } })
}

#[test]
fn cel_rules_reject_even_or_out_of_range_replicas() {
    for ok in [1, 3, 5, 9] {
        assert!(ConfmanClusterSpec::validate_cel(&spec(ok), None).is_ok(), "{ok}");
    }
    for bad in [0, 2, 4, 11, -1] {
        assert!(ConfmanClusterSpec::validate_cel(&spec(bad), None).is_err(), "{bad} must be refused");
    }
    let mut empty_image = spec(3);
    empty_image["image"] = json!("");
    assert!(ConfmanClusterSpec::validate_cel(&empty_image, None).is_err());
}

#[test]
fn tls_is_set_at_creation_only() {
    let plain = spec(3);
    let mut tls = spec(3);
    tls["tls"] = json!({ "clientSecret": "config-tls" });
    assert!(ConfmanClusterSpec::validate_cel(&tls, None).is_ok(), "a new cluster may have TLS");
    assert!(ConfmanClusterSpec::validate_cel(&tls, Some(&tls)).is_ok(), "unchanged TLS");
    let mut rotated = tls.clone();
    rotated["tls"]["clientSecret"] = json!("config-tls-2");
    assert!(ConfmanClusterSpec::validate_cel(&rotated, Some(&tls)).is_ok(), "another Secret is fine");
    let added = ConfmanClusterSpec::validate_cel(&tls, Some(&plain));
    assert!(added.as_ref().is_err_and(|e| e.to_string().contains("tls cannot be added")), "{added:?}");
    assert!(ConfmanClusterSpec::validate_cel(&plain, Some(&tls)).is_err(), "removing TLS is refused");
}

#[test]
fn cel_rules_check_tuning_override_ranges() {
    let tuning = |t: Value| {
        let mut s = spec(3);
        s["tuning"] = t;
        ConfmanClusterSpec::validate_cel(&s, None)
    };
    assert!(tuning(json!({ "electionMinMs": 500, "electionMaxMs": 1000 })).is_ok());
    assert!(tuning(json!({ "electionMinMs": 1000, "electionMaxMs": 500 })).is_err());
    assert!(tuning(json!({ "heartbeatMs": 5 })).is_err());
}

#[test]
fn the_chart_ships_the_same_crd() {
    let chart = include_str!("../../charts/confman-operator/crds/confmancluster.yaml");
    assert!(
        chart == COMMITTED,
        "charts/confman-operator/crds/confmancluster.yaml differs from crds/: copy crds/confmancluster.yaml over it"
    );
}

/// The installed schema (from the committed CRD) and a CEL validator over it.
fn installed_schema() -> Result<Value, Box<dyn std::error::Error>> {
    let crd: Value = serde_yaml_ng::from_str(COMMITTED)?;
    Ok(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone())
}

fn manifests(dir: &str) -> Result<Vec<(String, Value)>, Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            out.push((path.display().to_string(), serde_yaml_ng::from_str(&std::fs::read_to_string(&path)?)?));
        }
    }
    assert!(!out.is_empty(), "no manifests in {}", dir.display());
    Ok(out)
}

#[test]
fn examples_pass_and_invalid_samples_fail_the_installed_cel_rules() -> Result<(), Box<dyn std::error::Error>> {
    let schema = installed_schema()?;
    let validator = kube::core::cel::Validator::new();
    for (path, obj) in manifests("../examples/kubernetes")? {
        let result = validator.validate(&schema, &obj, None);
        assert!(result.is_ok(), "{path}: {result:?}");
    }
    for (path, obj) in manifests("tests/samples/invalid-cel")? {
        assert!(validator.validate(&schema, &obj, None).is_err(), "{path} must be refused by a CEL rule");
    }
    Ok(())
}
