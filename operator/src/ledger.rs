//! The member ledger: which Raft node id each pod runs as, kept in the `<name>-members`
//! ConfigMap that the pods mount. Ids are allocated here and never reused (`next-node-id` only
//! grows); the first allocation also records the bootstrap members, so exactly the initial pods
//! form the group and any later pod waits to be added. Pure: parse, allocate, render. The file
//! the pods read is the contract's `MembersFile`; the ledger adds the id high-water mark.

use std::collections::{BTreeMap, BTreeSet};

use confman_contract::MembersFile;
use k8s_openapi::api::core::v1::ConfigMap;

use crate::builders::{BuildError, MEMBERS_FILE, members_name, meta, pod_name, pod_url};
use crate::crd::ConfmanCluster;
use crate::membership_step::RaftView;

/// StatefulSet annotation keeping the ledger's `next-node-id` high-water mark, so a lost ledger
/// is rebuilt without handing out the ids of members removed before the loss.
pub const NEXT_ID_ANNOTATION: &str = "confman.io/next-node-id";

/// ConfigMap key holding the next id to allocate.
pub const NEXT_ID_KEY: &str = "next-node-id";

/// Why a stored ledger could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LedgerError {
    /// A key is missing or malformed (someone edited the ConfigMap by hand).
    #[error("member ledger ConfigMap key {key}: {reason}")]
    Malformed {
        /// Key at fault.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// Node ids by pod, the bootstrap members and the admitted ids (what the nodes read), and the
/// next free id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    /// The members file: node id of each pod, `ID=URL,...` of the members the group was
    /// initialised with, and the ids whose node reported itself a member (such an id never
    /// starts again on an empty volume: the node refuses, the operator replaces it).
    pub file: MembersFile,
    /// Next id to hand out (greater than every id ever used).
    pub next_id: u64,
}

impl Ledger {
    /// The ledger of a new cluster: ordinals `0..replicas` get ids `1..=replicas` and are the
    /// bootstrap members.
    pub fn bootstrap(c: &ConfmanCluster, replicas: u32) -> Ledger {
        let ids: BTreeMap<String, u64> = (0..replicas).map(|o| (pod_name(c, o), u64::from(o) + 1)).collect();
        let bootstrap_peers =
            ids.iter().map(|(pod, id)| format!("{id}={}", pod_url(c, pod))).collect::<Vec<_>>().join(",");
        Ledger {
            file: MembersFile { bootstrap_peers, admitted: BTreeSet::new(), ids },
            next_id: u64::from(replicas) + 1,
        }
    }

    /// Rebuilds a lost ledger (the ConfigMap was deleted while the StatefulSet runs) from the
    /// group as its leader reports it: each member's advertised URL names its pod, so the
    /// members of ordinals `0..replicas` get their ids back and are admitted. Ordinals with no
    /// member (a pod not added yet) get fresh ids later, like any new ordinal. Nothing is
    /// guessed: without a leader, or with a member whose address is no pod of this cluster, the
    /// reason is returned. Handing out ids 1..n again would make live voters look stray (and be
    /// removed) and give learners wrong ids.
    ///
    /// `next_id` is above every member id and at least `next_floor` — the high-water mark the
    /// operator also keeps on the StatefulSet, so ids of members removed before the loss are
    /// not handed out again.
    pub fn rebuild(
        c: &ConfmanCluster,
        replicas: u32,
        group: Option<&RaftView>,
        next_floor: Option<u64>,
    ) -> Result<Ledger, String> {
        let group = group.ok_or("no Raft leader answers, so the group's members are unknown")?;
        let (members, addresses) = (&group.members, &group.addresses);
        let pods: BTreeMap<String, String> =
            (0..replicas).map(|o| pod_name(c, o)).map(|pod| (pod_url(c, &pod), pod)).collect();
        let mut ids = BTreeMap::new();
        for id in members.keys() {
            let address = addresses.get(id).map(String::as_str).unwrap_or_default();
            let pod = pods.get(address).ok_or_else(|| {
                format!("member node {id} advertises {address:?}, which is no pod of ordinals 0..{replicas}")
            })?;
            if let Some(other) = ids.insert(pod.clone(), *id) {
                return Err(format!("{pod} is the address of both node {other} and node {id}"));
            }
        }
        let bootstrap_peers =
            ids.iter().map(|(pod, id)| format!("{id}={}", pod_url(c, pod))).collect::<Vec<_>>().join(",");
        let next_id = members.keys().max().map_or(1, |m| m + 1).max(next_floor.unwrap_or(1));
        let admitted = ids.values().copied().collect();
        Ok(Ledger { file: MembersFile { bootstrap_peers, admitted, ids }, next_id })
    }

    /// Reads a stored ledger.
    pub fn parse(cm: &ConfigMap) -> Result<Ledger, LedgerError> {
        let data = cm.data.as_ref();
        let get = |key: &'static str| {
            data.and_then(|d| d.get(key)).ok_or(LedgerError::Malformed { key, reason: "missing".into() })
        };
        let file: MembersFile = toml::from_str(get(MEMBERS_FILE)?)
            .map_err(|e| LedgerError::Malformed { key: MEMBERS_FILE, reason: e.to_string() })?;
        let next_id: u64 = get(NEXT_ID_KEY)?
            .trim()
            .parse()
            .map_err(|e| LedgerError::Malformed { key: NEXT_ID_KEY, reason: format!("{e}") })?;
        if let Some(max) = file.ids.values().max().filter(|m| **m >= next_id) {
            return Err(LedgerError::Malformed {
                key: NEXT_ID_KEY,
                reason: format!("{next_id} is not above the largest allocated id {max}"),
            });
        }
        Ok(Ledger { file, next_id })
    }

    /// Whether the group was created serving TLS: the scheme of the bootstrap members' URLs,
    /// which are in the Raft log (so TLS cannot be switched later). None when they do not agree
    /// or there are none.
    pub fn tls(&self) -> Option<bool> {
        let mut schemes = self.file.bootstrap_peers.split(',').filter_map(|p| {
            let url = p.split_once('=')?.1.trim();
            if url.starts_with("https://") {
                Some(true)
            } else if url.starts_with("http://") {
                Some(false)
            } else {
                None
            }
        });
        let first = schemes.next()?;
        schemes.all(|s| s == first).then_some(first)
    }

    /// Gives every ordinal below `replicas` an id, allocating fresh ones; returns the pods that
    /// got a new id.
    pub fn allocate(&mut self, c: &ConfmanCluster, replicas: u32) -> Vec<String> {
        let mut added = Vec::new();
        for o in 0..replicas {
            let pod = pod_name(c, o);
            if !self.file.ids.contains_key(&pod) {
                self.file.ids.insert(pod.clone(), self.next_id);
                self.next_id += 1;
                added.push(pod);
            }
        }
        added
    }

    /// Forgets `pod`'s id (scale-down, or a lost volume): the ordinal gets a fresh id if it
    /// comes back.
    pub fn forget(&mut self, pod: &str) {
        if let Some(id) = self.file.ids.remove(pod) {
            self.file.admitted.remove(&id);
        }
    }

    /// Records that the nodes `(pod, id)` reported themselves members; returns the ids newly
    /// admitted. Reports that do not match the ledger (a pod still running an old id) are
    /// ignored.
    pub fn admit(&mut self, reports: impl IntoIterator<Item = (String, u64)>) -> Vec<u64> {
        let mut new = Vec::new();
        for (pod, id) in reports {
            if self.file.ids.get(&pod) == Some(&id) && self.file.admitted.insert(id) {
                new.push(id);
            }
        }
        new
    }

    /// The file the nodes read (`confman-node --members-file`).
    pub fn members_toml(&self) -> Result<String, BuildError> {
        Ok(format!("# Written by confman-operator: node ids are never reused.\n{}", toml::to_string(&self.file)?))
    }

    /// The ledger ConfigMap.
    pub fn config_map(&self, c: &ConfmanCluster) -> Result<ConfigMap, BuildError> {
        Ok(ConfigMap {
            metadata: meta(c, members_name(c))?,
            data: Some(BTreeMap::from([
                (MEMBERS_FILE.to_string(), self.members_toml()?),
                (NEXT_ID_KEY.to_string(), self.next_id.to_string()),
            ])),
            ..ConfigMap::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PayloadClass;
    use crate::fixtures::cluster;

    #[test]
    fn bootstrap_allocates_one_id_per_ordinal() {
        let c = cluster(3, PayloadClass::Small);
        let l = Ledger::bootstrap(&c, 3);
        assert_eq!(l.file.ids.get("config-0"), Some(&1));
        assert_eq!(l.file.ids.get("config-2"), Some(&3));
        assert_eq!(l.next_id, 4);
        assert!(l.file.bootstrap_peers.starts_with("1=http://config-0.config-peers.platform.svc:8080,2="));
    }

    #[test]
    fn the_ledger_round_trips_and_ids_are_never_reused() -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(3, PayloadClass::Small);
        let mut l = Ledger::bootstrap(&c, 3);
        assert_eq!(l.admit([("config-0".into(), 1), ("config-2".into(), 3), ("config-1".into(), 9)]), vec![1, 3]);
        assert!(l.admit([("config-0".into(), 1)]).is_empty(), "admitted once");
        l.forget("config-2"); // removed by a scale-down
        assert_eq!(l.file.admitted, BTreeSet::from([1]));
        let mut back = Ledger::parse(&l.config_map(&c)?)?;
        assert_eq!(back, l);
        assert_eq!(back.allocate(&c, 5), vec!["config-2", "config-3", "config-4"]);
        assert_eq!(back.file.ids.get("config-2"), Some(&4), "a returning ordinal gets a fresh id");
        assert_eq!(back.next_id, 7);
        assert!(back.allocate(&c, 5).is_empty());
        Ok(())
    }

    /// The ledger ConfigMap deleted while the StatefulSet runs: `bootstrap` handed out ids 1..n
    /// again. It is rebuilt from the leader's view of the group (member addresses name the
    /// pods), with the high-water mark kept on the StatefulSet; never guessed.
    #[test]
    fn a_lost_member_ledger_is_rebuilt_from_the_group_never_guessed() -> Result<(), String> {
        let c = cluster(3, PayloadClass::Small);
        let url = |o: u32| pod_url(&c, &pod_name(&c, o));
        // After a lost volume and a scale-up, ordinals run ids 1, 4 and 5; config-2 (id 5) is
        // still a learner; id 6 was used by a member removed since.
        let members = BTreeMap::from([(1, true), (4, true), (5, false)]);
        let addresses = BTreeMap::from([(1, url(0)), (4, url(1)), (5, url(2))]);
        let view = |members: &BTreeMap<u64, bool>, addresses: &BTreeMap<u64, String>| RaftView {
            leader: Some(1),
            members: members.clone(),
            commit_index: 10,
            addresses: addresses.clone(),
        };
        let l = Ledger::rebuild(&c, 3, Some(&view(&members, &addresses)), Some(7))?;
        assert_eq!(l.file.ids.get("config-1"), Some(&4));
        assert_eq!(l.file.ids.get("config-2"), Some(&5));
        assert_eq!(l.next_id, 7, "the high-water mark: id 6 is never handed out again");
        assert_eq!(l.file.admitted, BTreeSet::from([1, 4, 5]));
        assert_eq!(l.tls(), Some(false));
        assert_eq!(Ledger::rebuild(&c, 3, Some(&view(&members, &addresses)), None)?.next_id, 6);

        // A pod not added yet has no id: it gets a fresh one like any new ordinal.
        let two = BTreeMap::from([(1, true), (4, true)]);
        let mut partial = Ledger::rebuild(&c, 3, Some(&view(&two, &addresses)), Some(7))?;
        assert_eq!(partial.allocate(&c, 3), vec!["config-2"]);
        assert_eq!(partial.file.ids.get("config-2"), Some(&7));

        let e = Ledger::rebuild(&c, 3, None, None).err().unwrap_or_default();
        assert!(e.contains("no Raft leader"), "{e}");
        let foreign = BTreeMap::from([(1, url(0)), (4, "http://elsewhere:8080".to_string()), (5, url(2))]);
        let e = Ledger::rebuild(&c, 3, Some(&view(&members, &foreign)), None).err().unwrap_or_default();
        assert!(e.contains("member node 4 advertises"), "{e}");
        let twice = BTreeMap::from([(1, url(0)), (4, url(0)), (5, url(2))]);
        assert!(Ledger::rebuild(&c, 3, Some(&view(&members, &twice)), None).is_err());
        Ok(())
    }

    #[test]
    fn a_hand_edited_ledger_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(3, PayloadClass::Small);
        let mut cm = Ledger::bootstrap(&c, 3).config_map(&c)?;
        cm.data.get_or_insert_default().insert(NEXT_ID_KEY.into(), "2".into());
        assert!(matches!(Ledger::parse(&cm), Err(LedgerError::Malformed { key: NEXT_ID_KEY, .. })));
        cm.data.get_or_insert_default().remove(MEMBERS_FILE);
        assert!(matches!(Ledger::parse(&cm), Err(LedgerError::Malformed { key: MEMBERS_FILE, .. })));
        Ok(())
    }

    #[test]
    fn the_ledger_remembers_whether_the_group_was_created_with_tls() {
        let mut c = cluster(3, PayloadClass::Small);
        assert_eq!(Ledger::bootstrap(&c, 3).tls(), Some(false));
        c.spec.tls = Some(crate::crd::TlsSpec { client_secret: "tls".into(), peer_secret: None });
        let l = Ledger::bootstrap(&c, 3);
        assert_eq!(l.tls(), Some(true));
        let with_peers = |bootstrap_peers: String| Ledger {
            file: MembersFile { bootstrap_peers, ..l.file.clone() },
            next_id: l.next_id,
        };
        assert_eq!(with_peers(format!("{},9=http://x:8080", l.file.bootstrap_peers)).tls(), None);
        assert_eq!(with_peers(String::new()).tls(), None);
    }
}
