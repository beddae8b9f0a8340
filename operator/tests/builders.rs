//! Golden checks of the objects built for the two example clusters (`examples/kubernetes/small-3.yaml`,
//! `examples/kubernetes/large-5.yaml`): every field that matters for safety and operation. The same
//! objects pass `kubernetes-validate --strict` in `scripts/validate-manifests`.

use std::path::Path;

use confman_operator::crd::PayloadClass;
use confman_operator::render::render;
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn rendered(example: &str) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes").join(example);
    let yaml = render(&std::fs::read_to_string(path)?)?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
        docs.push(serde_yaml_ng::with::singleton_map_recursive::deserialize::<Value, _>(doc)?);
    }
    Ok(docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value, String> {
    docs.iter()
        .find(|d| d["kind"] == json!(kind) && d["metadata"]["name"] == json!(name))
        .ok_or_else(|| format!("no {kind} {name}"))
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"].as_array().and_then(|e| e.iter().find(|v| v["name"] == json!(name))).unwrap_or(&Value::Null)
}

#[test]
fn small_three_member_cluster() -> TestResult {
    let docs = rendered("small-3.yaml")?;
    assert_eq!(docs.len(), 8, "the generated admin key Secret too");
    let sts = find(&docs, "StatefulSet", "config")?;
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], json!(3));
    assert_eq!(spec["serviceName"], json!("config-peers"));
    assert_eq!(spec["podManagementPolicy"], json!("Parallel"));
    assert_eq!(spec["persistentVolumeClaimRetentionPolicy"], json!({"whenDeleted": "Delete", "whenScaled": "Delete"}));
    let claim = &spec["volumeClaimTemplates"][0]["spec"];
    assert_eq!(claim["resources"]["requests"]["storage"], json!("10Gi"));
    assert_eq!(claim["accessModes"], json!(["ReadWriteOnce"]));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], json!(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], json!(true));
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], json!("RuntimeDefault"));
    // No fixed user (OpenShift assigns one); the volume is chowned only when its root differs.
    assert_eq!(pod["securityContext"]["runAsUser"], Value::Null);
    assert_eq!(pod["securityContext"]["fsGroupChangePolicy"], json!("OnRootMismatch"));
    let spread: Vec<&Value> =
        pod["topologySpreadConstraints"].as_array().into_iter().flatten().map(|s| &s["topologyKey"]).collect();
    assert_eq!(spread, [&json!("topology.kubernetes.io/zone"), &json!("kubernetes.io/hostname")]);
    // Grace outlasts a client request plus a snapshot transfer, with 30 s to spare.
    let t = PayloadClass::Small.tuning();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().ok_or("no grace period")?;
    assert_eq!(grace, (t.request_timeout_ms + t.snapshot_timeout_ms) / 1000 + 30);
    let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["podAffinityTerm"]["topologyKey"], json!("kubernetes.io/hostname"));
    let c = &pod["containers"][0];
    assert_eq!(c["image"], json!("confman-node:0.1.0"));
    // No resources in the example: the small class's requests, never BestEffort, no limits.
    assert_eq!(c["resources"], json!({"requests": {"cpu": "100m", "memory": "256Mi"}}));
    assert_eq!(c["args"], json!(["--config", "/etc/confman/config/node.toml"]));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], json!("/health/ready"));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], json!("/health"));
    assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], json!("HTTP"));
    assert!(env_value(c, "CONFMAN_ADVERTISE")["value"].as_str().is_some_and(|a| a.starts_with("http://")));
    assert!(!pod["volumes"].as_array().into_iter().flatten().any(|v| v["name"] == json!("tls")), "no TLS volume");
    assert_eq!(c["startupProbe"]["httpGet"]["path"], json!("/health"));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], json!(true));
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], json!(false));
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(env_value(c, "CONFMAN_POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], json!("metadata.name"));
    assert_eq!(
        env_value(c, "CONFMAN_ADVERTISE")["value"],
        json!("http://$(CONFMAN_POD_NAME).config-peers.platform.svc:8080")
    );
    let mounts: Vec<&str> =
        c["volumeMounts"].as_array().into_iter().flatten().filter_map(|m| m["mountPath"].as_str()).collect();
    assert_eq!(
        mounts,
        vec![
            "/var/lib/confman",
            "/etc/confman/config",
            "/etc/confman/members",
            "/etc/confman/token",
            "/etc/confman/keys",
            "/tmp"
        ],
        "the generated admin keys file is mounted where node.toml points"
    );
    let hash = &spec["template"]["metadata"]["annotations"]["confman.io/config-hash"];
    assert_eq!(hash.as_str().map(str::len), Some(32));

    let pdb = find(&docs, "PodDisruptionBudget", "config")?;
    assert_eq!(pdb["spec"]["minAvailable"], json!(2));
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], json!("AlwaysAllow"));
    let peers = find(&docs, "Service", "config-peers")?;
    assert_eq!(
        (&peers["spec"]["clusterIP"], &peers["spec"]["publishNotReadyAddresses"]),
        (&json!("None"), &json!(true))
    );
    let client = find(&docs, "Service", "config")?;
    assert_eq!(client["spec"]["type"], json!("ClusterIP"));
    let members = find(&docs, "ConfigMap", "config-members")?;
    let toml = members["data"]["members.toml"].as_str().unwrap_or_default();
    assert!(toml.contains("bootstrap_peers = \"1=http://config-0.config-peers.platform.svc:8080,2=http://config-1.config-peers.platform.svc:8080,3=http://config-2.config-peers.platform.svc:8080\""), "{toml}");
    let token = find(&docs, "Secret", "config-token")?;
    assert!(token["data"]["token"].as_str().is_some_and(|t| t.len() > 40));
    Ok(())
}

#[test]
fn large_five_member_cluster() -> TestResult {
    let docs = rendered("large-5.yaml")?;
    let sts = find(&docs, "StatefulSet", "blobs")?;
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], json!(5));
    assert_eq!(spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"], json!("Retain"));
    assert_eq!(spec["volumeClaimTemplates"][0]["spec"]["storageClassName"], json!("fast-ssd"));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["priorityClassName"], json!("system-cluster-critical"));
    assert_eq!(pod["tolerations"][0]["key"], json!("dedicated"));
    let c = &pod["containers"][0];
    assert_eq!(c["resources"]["limits"]["memory"], json!("2Gi"));
    assert_eq!(c["resources"]["requests"], json!({"cpu": "1", "memory": "1Gi"}), "the user's requests are kept");
    let mounts: Vec<&str> =
        c["volumeMounts"].as_array().into_iter().flatten().filter_map(|m| m["mountPath"].as_str()).collect();
    assert!(mounts.contains(&"/etc/confman/keys"), "{mounts:?}");
    let keys = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == json!("keys")))
        .ok_or("no keys volume")?;
    assert_eq!(keys["secret"]["secretName"], json!("blobs-api-keys"));
    // TLS: the Secret's certificate, key and CA mounted read-only; probes and URLs in https.
    assert!(mounts.contains(&"/etc/confman/tls"), "{mounts:?}");
    let tls =
        pod["volumes"].as_array().and_then(|v| v.iter().find(|v| v["name"] == json!("tls"))).ok_or("no tls volume")?;
    assert_eq!(tls["secret"]["secretName"], json!("blobs-tls"));
    let items: Vec<&str> =
        tls["secret"]["items"].as_array().into_iter().flatten().filter_map(|i| i["key"].as_str()).collect();
    assert_eq!(items, ["tls.crt", "tls.key", "ca.crt"]);
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"], json!("HTTPS"), "{probe}");
    }
    assert_eq!(
        env_value(c, "CONFMAN_ADVERTISE")["value"],
        json!("https://$(CONFMAN_POD_NAME).blobs-peers.platform.svc:8080")
    );
    let t = PayloadClass::Large.tuning();
    let grace = pod["terminationGracePeriodSeconds"].as_i64().ok_or("no grace period")?;
    assert_eq!(u64::try_from(grace)?, (t.request_timeout_ms + t.snapshot_timeout_ms) / 1000 + 30);
    let startup = &c["startupProbe"];
    let budget = startup["periodSeconds"].as_i64().unwrap_or(0) * startup["failureThreshold"].as_i64().unwrap_or(0);
    assert!(budget >= grace, "startup budget {budget}s must cover a snapshot install ({grace}s)");

    assert_eq!(find(&docs, "PodDisruptionBudget", "blobs")?["spec"]["minAvailable"], json!(3));
    let client = find(&docs, "Service", "blobs")?;
    assert_eq!((&client["spec"]["type"], &client["spec"]["ports"][0]["port"]), (&json!("LoadBalancer"), &json!(80)));
    let config = find(&docs, "ConfigMap", "blobs-config")?;
    let toml = config["data"]["node.toml"].as_str().unwrap_or_default();
    assert!(toml.contains("heartbeat_ms = 200\n"), "override applied: {toml}");
    assert!(toml.contains("max_value_bytes = 4194304\n"), "{toml}");
    assert!(toml.contains("api_keys_file = \"/etc/confman/keys/keys.yaml\"\n"), "{toml}");
    for line in [
        "tls_cert_file = \"/etc/confman/tls/tls.crt\"\n",
        "tls_key_file = \"/etc/confman/tls/tls.key\"\n",
        "tls_ca_file = \"/etc/confman/tls/ca.crt\"\n",
    ] {
        assert!(toml.contains(line), "{line} missing: {toml}");
    }
    let ledger = find(&docs, "ConfigMap", "blobs-members")?;
    let members = ledger["data"]["members.toml"].as_str().unwrap_or_default();
    assert!(members.contains("1=https://blobs-0.blobs-peers.platform.svc:8080"), "{members}");
    Ok(())
}

#[test]
fn render_refuses_an_invalid_spec() {
    let yaml = "apiVersion: confman.io/v1alpha1\nkind: ConfmanCluster\nmetadata: {name: x}\nspec: {replicas: 4, image: i, storage: {size: 1Gi}}\n";
    let err = render(yaml).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("InvalidReplicas") && err.contains("spec.replicas is 4"), "{err}");
}
