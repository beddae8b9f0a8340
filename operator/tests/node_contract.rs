//! Contract between operator and node: the config file and the member ledger the operator
//! renders are accepted by the node's config loader and yield exactly the derived tuning, the
//! allocated node id and the bootstrap/join role.

use confman_contract::PayloadClass;
use confman_node::config::{Flags, NodeConfig, Settings};
use confman_operator::builders::{node_config, pod_url};
use confman_operator::crd::ConfmanCluster;
use confman_operator::fixtures;
use confman_operator::ledger::Ledger;

#[test]
fn node_accepts_the_operator_config_for_every_class() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    for (class, tls) in PayloadClass::ALL.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let tuning = class.tuning();
        let path = dir.path().join(format!("{}-{tls}.toml", class.as_str()));
        std::fs::write(&path, node_config(&tuning, Some("/etc/confman/keys/keys.yaml"), tls, false)?)?;
        let scheme = if tls { "https" } else { "http" };
        let members = dir.path().join("members.toml");
        std::fs::write(&members, format!("bootstrap_peers = \"1={scheme}://127.0.0.1:8080\"\n[ids]\nc-0 = 1\n"))?;
        let cli = Flags {
            config: Some(path),
            settings: NodeConfig {
                members_file: Some(members),
                pod_name: Some("c-0".into()),
                advertise: Some(format!("{scheme}://127.0.0.1:8080")),
                ..NodeConfig::default()
            },
        };
        let settings = Settings::resolve(cli)?;
        assert_eq!(settings.tuning, tuning, "{class:?}");
        assert_eq!(settings.listen.port(), 8080);
        assert!(settings.api_keys_file.is_some());
        // The TLS files are the mounted Secret's keys.
        let tls_files = settings.tls.as_ref().map(|t| (t.cert.display().to_string(), t.key.display().to_string()));
        let expected = tls.then(|| ("/etc/confman/tls/tls.crt".to_string(), "/etc/confman/tls/tls.key".to_string()));
        assert_eq!(tls_files, expected, "{class:?} tls={tls}");
        assert_eq!(settings.tls_ca_file.is_some(), tls);
    }
    Ok(())
}

fn cluster() -> ConfmanCluster {
    fixtures::cluster(3, PayloadClass::Small)
}

#[test]
fn node_reads_the_operator_ledger() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let c = cluster();
    let mut ledger = Ledger::bootstrap(&c, 3);
    ledger.allocate(&c, 5);
    let members = dir.path().join("members.toml");
    std::fs::write(&members, ledger.members_toml()?)?;
    let token = dir.path().join("token");
    std::fs::write(&token, "t")?;
    // What a pod's environment gives the node besides the mounted files.
    let pod_cli = |pod: &str| Flags {
        config: None,
        settings: NodeConfig {
            members_file: Some(members.clone()),
            pod_name: Some(pod.into()),
            advertise: Some(pod_url(&c, pod)),
            cluster_token_file: Some(token.clone()),
            ..NodeConfig::default()
        },
    };
    for (pod, id, bootstraps) in [("config-0", 1, true), ("config-2", 3, true), ("config-4", 5, false)] {
        let s = Settings::resolve(pod_cli(pod))?;
        assert_eq!(s.node_id, id, "{pod}");
        assert_eq!((s.peers.len(), s.join), if bootstraps { (3, false) } else { (0, true) }, "{pod}");
        assert!(!s.was_member, "{pod}: nothing admitted yet");
    }
    // Ids the operator admitted are known to their nodes (which then refuse an empty volume).
    ledger.admit([("config-2".to_string(), 3)]);
    std::fs::write(&members, ledger.members_toml()?)?;
    for (pod, was_member) in [("config-0", false), ("config-2", true)] {
        assert_eq!(Settings::resolve(pod_cli(pod))?.was_member, was_member, "{pod}");
    }
    Ok(())
}

/// A cluster without `spec.auth` gets one generated admin key Secret that every member mounts:
/// the node reads its keys file and accepts the plain key beside it as an unscoped admin.
#[test]
fn node_accepts_the_generated_admin_key() -> Result<(), Box<dyn std::error::Error>> {
    use confman_node::auth::{KeyRing, Role};
    use confman_operator::builders::{ADMIN_KEY, KEYS_FILE, admin_keys_secret, generate_token};

    let key = generate_token();
    let secret = admin_keys_secret(&cluster(), &key)?;
    assert_eq!(secret.metadata.name.as_deref(), Some("config-admin"));
    let data = secret.data.unwrap_or_default();
    let plain = data.get(ADMIN_KEY).ok_or("no plain admin key")?;
    let file = data.get(KEYS_FILE).ok_or("no keys file")?;
    let ring = KeyRing::parse(std::str::from_utf8(&file.0)?, "config-admin/keys.yaml")?;
    let admin = ring.authenticate(Some(std::str::from_utf8(&plain.0)?))?;
    assert_eq!(admin.role(), Some(Role::Admin));
    assert!(admin.is_unscoped(), "{admin:?}");
    assert!(ring.authenticate(Some(&generate_token())).is_err(), "another key is not accepted");
    Ok(())
}
