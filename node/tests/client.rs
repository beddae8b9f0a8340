//! confman-client against 3 real nodes: entries with compare-and-set, listing, failover when
//! the first endpoint is down, and cluster administration with the cluster token. The client's
//! retry counters show that a steady cluster needed no repeated attempt, and that a failover
//! repeated exactly the attempt the dead endpoint failed.

use std::path::Path;
use std::time::Duration;

use confman_client::{Client, Error, RetryStats};
use confman_tests::cluster::Cluster;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_writes_fails_over_and_administers() -> Result<()> {
    let mut c = Cluster::start(Path::new(BIN), 3, &[]).await?;
    let all = [1, 2, 3];
    let leader = c.wait_leader(&all, &all).await?;
    // The first endpoint is a follower we will kill later.
    let first = all.iter().copied().find(|id| *id != leader).unwrap_or(2);
    let mut endpoints = vec![c.url(first)?];
    for id in all.iter().filter(|id| **id != first) {
        endpoints.push(c.url(*id)?);
    }
    let client = Client::builder(endpoints.clone(), &c.keys.admin).retry_for(Duration::from_secs(20)).build()?;

    client.put_namespace("app", "client test", "tests").await?;
    // A watch from the start, connected to the first endpoint (which is killed below).
    let mut watch = client.watch("app", Some(0)).await?;
    let w1 = client.put("app", "db/url", b"postgres://a".to_vec(), Some(0)).await?;
    assert_eq!(w1.version, 1);
    let again = client.put("app", "db/url", b"postgres://b".to_vec(), Some(0)).await;
    assert_eq!(again.as_ref().err().and_then(Error::status), Some(412), "create-only on an existing key: {again:?}");
    let w2 = client.put("app", "db/url", b"postgres://b".to_vec(), Some(w1.revision)).await?;
    assert_eq!(w2.version, 2);
    let stale = client.put("app", "db/url", b"postgres://c".to_vec(), Some(w1.revision)).await;
    assert_eq!(stale.as_ref().err().and_then(Error::status), Some(412), "{stale:?}");
    let e = client.get("app", "db/url").await?.ok_or("entry missing")?;
    assert_eq!((&e.value[..], e.version, e.mod_revision), (&b"postgres://b"[..], 2, w2.revision));
    assert_eq!(client.get("app", "nope").await?, None);
    client.put("app", "db/pool", b"10".to_vec(), None).await?;
    let page = client.list("app", "db/", None).await?;
    assert_eq!(page.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), vec!["db/pool", "db/url"]);
    assert!(client.delete("app", "db/pool").await?);
    assert!(!client.delete("app", "db/pool").await?);

    // The watch saw every change so far once, in order, on its first connection.
    let mut seen = Vec::new();
    while seen.last().map(|(a, k, _): &(String, Option<String>, u64)| (a.as_str(), k.as_deref()))
        != Some(("config.deleted", Some("db/pool")))
    {
        let e = tokio::time::timeout(Duration::from_secs(30), watch.next()).await??;
        seen.push((e.action, e.key, e.revision));
    }
    assert_eq!(watch.reconnects(), 0, "the watch's stream dropped while every node was up");
    assert_eq!(watch.retries(), RetryStats::default(), "the watch repeated a connect attempt in a steady cluster");
    // All of the above ran against a steady cluster: not one attempt was repeated.
    let steady = client.retries();
    assert_eq!(steady.total(), 0, "retries in a steady cluster: {steady:?}");

    // The first endpoint goes down: calls move on to the next one. The only repeated attempt is
    // the one the dead endpoint failed (it is a follower, so no 503: the leader stays).
    c.kill(first)?;
    let w3 = client.put("app", "after-kill", b"x".to_vec(), None).await?;
    assert_eq!(w3.version, 1);
    let failover = client.retries();
    assert_eq!(failover.unavailable, 0, "a follower's loss made the cluster unavailable: {failover:?}");
    // The call had to leave the dead endpoint: it either never connected, or (when it went out
    // on a kept-alive connection the node's death had not yet closed) got no answer.
    assert_eq!(failover.unreachable + failover.unanswered, 1, "one attempt on the dead endpoint: {failover:?}");
    // Later calls go to the live endpoint straight away.
    assert!(client.get("app", "after-kill").await?.is_some());
    assert_eq!(client.retries(), failover, "retries after the failover");

    // The watch resumed on another endpoint after the loss of the node it was reading, without
    // repeating or skipping a change.
    while seen.last().map(|(_, k, _): &(String, Option<String>, u64)| k.as_deref()) != Some(Some("after-kill")) {
        let e = tokio::time::timeout(Duration::from_secs(30), watch.next()).await??;
        seen.push((e.action, e.key, e.revision));
    }
    assert_eq!(watch.reconnects(), 1, "the watch resumed once, when its node was killed");
    // It resumed on the next endpoint, a live member of a cluster that kept its leader: the
    // first connect attempt succeeded, none was repeated.
    assert_eq!(watch.retries(), RetryStats::default(), "the watch's resume repeated connect attempts");
    let actions: Vec<(&str, Option<&str>)> = seen.iter().map(|(a, k, _)| (a.as_str(), k.as_deref())).collect();
    assert_eq!(
        actions,
        [
            ("namespace.created", None),
            ("config.created", Some("db/url")),
            ("config.updated", Some("db/url")),
            ("config.created", Some("db/pool")),
            ("config.deleted", Some("db/pool")),
            ("config.created", Some("after-kill")),
        ]
    );
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2), "no repeats: {seen:?}");

    // A new watch whose first endpoint is the dead node: its first connect attempt cannot
    // connect and is the only one repeated; the next endpoint serves the same history.
    let late = Client::builder(endpoints.clone(), &c.keys.admin).retry_for(Duration::from_secs(20)).build()?;
    let mut watch2 = late.watch("app", Some(0)).await?;
    assert_eq!(
        watch2.retries(),
        RetryStats { unreachable: 1, ..RetryStats::default() },
        "the dead endpoint was tried once and never connected"
    );
    let mut replay = Vec::new();
    while replay.len() < seen.len() {
        let e = tokio::time::timeout(Duration::from_secs(30), watch2.next()).await??;
        replay.push((e.action, e.key, e.revision));
    }
    assert_eq!(replay, seen, "the second watch's history");
    assert_eq!((watch2.reconnects(), watch2.retries().total()), (0, 1), "the second watch after its connect");
    assert_eq!(late.retries().total(), 0, "opening a watch from a revision makes no client call");

    // Administration with the cluster token: remove the dead member, cluster shrinks to 2. A
    // new client has no connections yet: its first attempt, on the dead endpoint, cannot
    // connect, and is the only one repeated.
    let admin = Client::builder(endpoints, &c.keys.token).build()?;
    let status = admin.remove(first).await?;
    assert!(!status.is_member(first), "{:?}", status.members);
    let status = admin.cluster().await?;
    assert_eq!(status.members.len(), 2);
    assert!(status.leader_id.is_some());
    let admin_retries = admin.retries();
    assert_eq!(
        (admin_retries.unreachable, admin_retries.unavailable, admin_retries.unanswered),
        (1, 0, 0),
        "the dead endpoint was tried once and never connected: {admin_retries:?}"
    );
    Ok(())
}
