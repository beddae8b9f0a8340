//! Which namespaces changed, for watchers: the state machine publishes, after each applied
//! batch, the revision at which every namespace it touched changed; a watch waits on its own
//! namespace only. An idle watch therefore costs nothing when other namespaces change (with
//! one channel for the whole node, every write woke every watcher for a storage read). A
//! snapshot install may change any namespace and wakes all.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Per-namespace change notifications (revision of the last change seen by the feed).
#[derive(Debug)]
pub struct ChangeFeed {
    namespaces: Mutex<HashMap<String, watch::Sender<u64>>>,
    all: watch::Sender<u64>,
}

/// What a watcher waits on: its namespace's changes and whole-state replacements.
#[derive(Debug)]
pub struct Subscription {
    /// Revision of the namespace's last published change.
    pub namespace: watch::Receiver<u64>,
    /// Revision of the last whole-state change (snapshot install).
    pub all: watch::Receiver<u64>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self { namespaces: Mutex::new(HashMap::new()), all: watch::channel(0).0 }
    }
}

impl ChangeFeed {
    /// Subscribes to changes of `ns` (and of everything).
    pub fn subscribe(&self, ns: &str) -> Subscription {
        let mut map = self.namespaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let namespace = map.entry(ns.to_string()).or_insert_with(|| watch::channel(0).0).subscribe();
        Subscription { namespace, all: self.all.subscribe() }
    }

    /// Publishes that each of `touched` changed at or before `revision`. Namespaces nobody
    /// watches any more are forgotten here, so the map holds only watched namespaces.
    pub fn publish<'a>(&self, touched: impl IntoIterator<Item = &'a str>, revision: u64) {
        let mut map = self.namespaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ns in touched {
            if let Some(tx) = map.get(ns) {
                tx.send_replace(revision);
            }
        }
        map.retain(|_, tx| tx.receiver_count() > 0);
    }

    /// Publishes that any namespace may have changed (the state was replaced).
    pub fn publish_all(&self, revision: u64) {
        self.all.send_replace(revision);
    }

    /// Namespaces with a subscriber right now.
    pub fn watched(&self) -> usize {
        self.namespaces.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_touched_namespace_wakes() {
        let feed = ChangeFeed::default();
        let a = feed.subscribe("a");
        let mut b = feed.subscribe("b");
        feed.publish(["b"], 7);
        assert!(!a.namespace.has_changed().unwrap_or(true), "a was not touched");
        assert!(b.namespace.has_changed().unwrap_or(false));
        assert_eq!(*b.namespace.borrow_and_update(), 7);
        feed.publish_all(9);
        assert!(a.all.has_changed().unwrap_or(false), "a snapshot install wakes everyone");
    }

    #[test]
    fn unwatched_namespaces_are_forgotten() {
        let feed = ChangeFeed::default();
        let sub = feed.subscribe("a");
        assert_eq!(feed.watched(), 1);
        drop(sub);
        feed.publish(["x"], 1);
        assert_eq!(feed.watched(), 0);
    }
}
