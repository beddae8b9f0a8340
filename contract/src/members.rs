//! `members.toml`, the member ledger as the pods read it: the operator allocates node ids
//! (never reused) and records the bootstrap members and the admitted ids; each node looks
//! itself up by pod name.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The membership file the operator writes into a ConfigMap and a node reads with
/// `--members-file`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersFile {
    /// `ID=URL,...` of the members the group was initialised with (as `--peers`): a pod among
    /// them bootstraps with them, any other waits to be added.
    pub bootstrap_peers: String,
    /// Ids that have held a place in the group with persisted state (the operator saw the node
    /// report itself a member). Such an id never starts again on an empty data directory: it
    /// would forget its vote and log.
    #[serde(default)]
    pub admitted: BTreeSet<u64>,
    /// Node id of each pod, by pod name (a table, so it is written last).
    #[serde(default)]
    pub ids: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_is_read_strictly() -> Result<(), Box<dyn std::error::Error>> {
        let file = MembersFile {
            bootstrap_peers: "1=http://a-0:8080".into(),
            admitted: BTreeSet::from([1]),
            ids: BTreeMap::from([("a-0".into(), 1), ("a-1".into(), 4)]),
        };
        let text = toml::to_string(&file)?;
        assert_eq!(toml::from_str::<MembersFile>(&text)?, file);
        let minimal: MembersFile = toml::from_str("bootstrap_peers = \"1=http://a:1\"\n[ids]\na-0 = 1\n")?;
        assert_eq!((minimal.ids.get("a-0"), minimal.admitted.len()), (Some(&1), 0));
        assert!(toml::from_str::<MembersFile>("bootstrap = \"x\"\n").is_err());
        Ok(())
    }
}
