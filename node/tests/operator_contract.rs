//! Contract between operator and node: the config file and the member ledger the operator
//! renders are accepted by the node's config loader and yield exactly the derived tuning, the
//! allocated node id and the bootstrap/join role.

use confman_node::config::{Overrides, Settings};
use confman_node::tuning::PayloadClass;
use confman_operator::builders::{node_config, pod_url};
use confman_operator::crd::{ConfmanCluster, ConfmanClusterSpec};
use confman_operator::members::Ledger;

#[test]
fn node_accepts_the_operator_config_for_every_class() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    for class in PayloadClass::ALL {
        let tuning = class.tuning();
        let path = dir.path().join(format!("{}.toml", class.as_str()));
        std::fs::write(&path, node_config(&tuning, Some("/etc/confman/keys/keys.yaml")))?;
        let members = dir.path().join("members.toml");
        std::fs::write(&members, "bootstrap_peers = \"1=http://127.0.0.1:8080\"\n[ids]\nc-0 = 1\n")?;
        let cli = Overrides {
            config: Some(path),
            members_file: Some(members),
            pod_name: Some("c-0".into()),
            advertise: Some("http://127.0.0.1:8080".into()),
            ..Overrides::default()
        };
        let settings = Settings::resolve(cli)?;
        assert_eq!(settings.tuning, tuning, "{class:?}");
        assert_eq!(settings.listen.port(), 8080);
        assert!(settings.api_keys_file.is_some());
    }
    Ok(())
}

fn cluster() -> ConfmanCluster {
    let mut c = ConfmanCluster::new("conf", ConfmanClusterSpec::minimal(3, "confman:1", "1Gi"));
    c.metadata.namespace = Some("ns".into());
    c
}

#[test]
fn node_reads_the_operator_ledger() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let c = cluster();
    let mut ledger = Ledger::bootstrap(&c, 3);
    ledger.allocate(&c, 5);
    let members = dir.path().join("members.toml");
    std::fs::write(&members, ledger.members_toml())?;
    let token = dir.path().join("token");
    std::fs::write(&token, "t")?;
    for (pod, id, bootstraps) in [("conf-0", 1, true), ("conf-2", 3, true), ("conf-4", 5, false)] {
        let cli = Overrides {
            members_file: Some(members.clone()),
            pod_name: Some(pod.into()),
            advertise: Some(pod_url(&c, pod)),
            cluster_token_file: Some(token.clone()),
            ..Overrides::default()
        };
        let s = Settings::resolve(cli)?;
        assert_eq!(s.node_id, id, "{pod}");
        assert_eq!((s.peers.len(), s.join), if bootstraps { (3, false) } else { (0, true) }, "{pod}");
    }
    Ok(())
}
