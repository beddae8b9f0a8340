//! Contract between operator and node: the config file the operator renders for every payload
//! class is accepted by the node's config loader and yields exactly the derived tuning.

use confman_node::config::{Overrides, Settings};
use confman_node::tuning::PayloadClass;
use confman_operator::builders::node_config;

#[test]
fn node_accepts_the_operator_config_for_every_class() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    for class in PayloadClass::ALL {
        let tuning = class.tuning();
        let path = dir.path().join(format!("{}.toml", class.as_str()));
        std::fs::write(&path, node_config(&tuning, Some("/etc/confman/keys/keys.yaml")))?;
        let cli = Overrides { config: Some(path), ..Overrides::default() };
        let settings = Settings::resolve(cli)?;
        assert_eq!(settings.tuning, tuning, "{class:?}");
        assert_eq!(settings.listen.port(), 8080);
        assert!(settings.api_keys_file.is_some());
    }
    Ok(())
}
