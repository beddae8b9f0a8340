//! Regression tests for defects found by review, each named after the defect: an idle watch
//! that spun on the blocking pool, list and history pages unbounded in bytes, secret files
//! readable by everyone.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use confman_tests::cluster::Cluster;
use futures::StreamExt;
use reqwest::{Method, StatusCode};

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Reads one counter from the node's `/metrics`.
async fn counter(c: &Cluster, id: u64, name: &str) -> Result<u64> {
    let text = c.request(id, Method::GET, "/metrics")?.send().await?.text().await?;
    let v = text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok());
    Ok(v.ok_or_else(|| format!("no {name} in /metrics"))?)
}

/// Waits (bounded) until the SSE stream delivered an event mentioning `needle`.
async fn wait_for_event(
    stream: &mut futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    needle: &str,
) -> Result<()> {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next()).await?.ok_or("stream ended")??;
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    Ok(())
}

/// The watch loop re-read storage without waiting whenever the applied index had moved past
/// its cursor without an event for its namespace (a write elsewhere): one core spinning for as
/// long as the watch stayed open. A watch now waits for changes of its own namespace only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_does_not_spin_when_another_namespace_changes() -> Result<()> {
    let mut c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    c.create_namespace(1, "a").await?;
    c.create_namespace(1, "b").await?;
    let resp = c.request(1, Method::GET, "/api/v1/namespaces/a/watch")?.bearer_auth(&c.keys.viewer).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream().boxed();
    let reads_before = counter(&c, 1, "confman_watch_storage_reads_total").await?;
    const WRITES: u64 = 200;
    for i in 0..WRITES {
        let (st, body) = c.put_text(1, "b", &format!("k{i}"), "v").await?;
        assert!(st.is_success(), "{st} {body}");
    }
    // A change in `a` reaches the watch: it is awake and caught up, and every write to `b` was
    // applied before it.
    let (st, body) = c.put_text(1, "a", "marker", "here").await?;
    assert!(st.is_success(), "{st} {body}");
    wait_for_event(&mut stream, "marker").await?;
    let reads = counter(&c, 1, "confman_watch_storage_reads_total").await? - reads_before;
    // Writes to `b` do not concern a watch of `a`: one read to start, then only for the marker
    // (twice at most, if it landed while the first read ran).
    assert!(reads <= 3, "{reads} storage reads for {WRITES} changes in another namespace");

    // Shutdown ends the idle watch at once instead of waiting out the drain timeout.
    let status = c.terminate(1, Duration::from_secs(60)).await?;
    assert!(status.success(), "{status:?}");
    let records = c.log_records(1)?;
    assert!(
        !records.iter().any(|r| r["fields"]["message"].as_str().is_some_and(|m| m.contains("did not finish within"))),
        "the open watch held up the drain"
    );
    drop(stream);
    Ok(())
}

const BIG_VALUES: &[&str] = &["--max-value-bytes", "16777216", "--body-limit-bytes", "20971520"];

/// A list with values held `limit` (up to 1000) values of up to the maximum value size in
/// memory at once. Pages now stop at 8 MiB of values (at least one entry) and say where to
/// continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_with_values_is_paged_by_bytes_not_only_by_count() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, BIG_VALUES).await?;
    c.create_namespace(1, "big").await?;
    for i in 0..3 {
        let st = c.put_bytes(1, "big", &format!("v{i}"), vec![b'x'; 6 << 20]).await?;
        assert!(st.is_success(), "{st}");
    }
    let mut keys = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10 {
        let cont = next.as_ref().map(|t| format!("&continue={t}")).unwrap_or_default();
        let path = format!("/api/v1/namespaces/big/config?includeValues=true&limit=1000{cont}");
        let (st, page) = c.call(1, Method::GET, &path, &c.keys.viewer, None).await?;
        assert_eq!(st, StatusCode::OK, "{page}");
        let items = page["items"].as_array().ok_or("no items")?;
        assert_eq!(items.len(), 1, "one 6 MiB value per 8 MiB page");
        keys.extend(items.iter().filter_map(|i| i["key"].as_str().map(str::to_string)));
        next = page["continue"].as_str().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    assert_eq!(keys, ["v0", "v1", "v2"], "every entry once, in order");
    // Without values the count limit alone applies.
    let (_, page) = c.call(1, Method::GET, "/api/v1/namespaces/big/config?limit=1000", &c.keys.viewer, None).await?;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(3), "{page}");
    assert!(page["continue"].is_null());
    Ok(())
}

/// History returned every kept version with its value in one response. It is now paged by
/// bytes like a list, newest first, with a continue token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_paged_by_bytes() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, BIG_VALUES).await?;
    c.create_namespace(1, "big").await?;
    for i in 0..4u8 {
        let st = c.put_bytes(1, "big", "k", vec![b'a' + i; 5 << 20]).await?;
        assert!(st.is_success(), "{st}");
    }
    let mut versions = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10 {
        let cont = next.as_ref().map(|t| format!("?continue={t}")).unwrap_or_default();
        let (st, page) = c
            .call(1, Method::GET, &format!("/api/v1/namespaces/big/config/k/history{cont}"), &c.keys.viewer, None)
            .await?;
        assert_eq!(st, StatusCode::OK, "{page}");
        let items = page["items"].as_array().ok_or("no items")?;
        assert_eq!(items.len(), 1, "one 5 MiB version per 8 MiB page");
        versions.extend(items.iter().filter_map(|i| i["version"].as_u64()));
        next = page["continue"].as_str().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    assert_eq!(versions, [4, 3, 2, 1], "newest first, each version once");

    // A continue token does not carry over into another incarnation of the key.
    let (_, first) = c.call(1, Method::GET, "/api/v1/namespaces/big/config/k/history", &c.keys.viewer, None).await?;
    let token = first["continue"].as_str().ok_or("a second page exists")?.to_string();
    let resp =
        c.request(1, Method::DELETE, "/api/v1/namespaces/big/config/k")?.bearer_auth(&c.keys.editor).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    for i in 0..3u8 {
        assert!(c.put_bytes(1, "big", "k", vec![b'x' + i; 16]).await?.is_success());
    }
    let (st, problem) = c
        .call(
            1,
            Method::GET,
            &format!("/api/v1/namespaces/big/config/k/history?continue={token}"),
            &c.keys.viewer,
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::GONE, "{problem}");
    let (st, problem) =
        c.call(1, Method::GET, "/api/v1/namespaces/big/config/k/history?continue=x", &c.keys.viewer, None).await?;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["type"].as_str().map(|t| t.ends_with("invalid-continue")), Some(true), "{problem}");
    Ok(())
}

/// `dev-admin.key` and `cluster.token`, generated when no files are given, were written with
/// the default mode (world-readable). They are 0600 now, and an old world-readable one is
/// tightened at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_secrets_are_readable_by_the_owner_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("cluster.token"), "an-old-token")?;
    std::fs::set_permissions(data.join("cluster.token"), std::fs::Permissions::from_mode(0o644))?;
    let ip = confman_tests::cluster::private_loopback();
    let port = confman_tests::cluster::free_ports(ip, 1)?[0];
    let mut child = std::process::Command::new(BIN)
        .args(["--listen", &format!("{ip}:{port}"), "--log-format", "json", "--data-dir"])
        .arg(&data)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let http = confman_client::http_builder().build()?;
    let mut ready = false;
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("http://{ip}:{port}/health/ready")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        if child.try_wait()?.is_some() {
            break;
        }
        // Polling a starting process: there is no event to await.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "the node started");
    for name in ["dev-admin.key", "cluster.token", "node-id"] {
        let mode = std::fs::metadata(data.join(name))?.permissions().mode() & 0o777;
        let want = if name == "node-id" { 0o644 } else { 0o600 };
        assert_eq!(mode, want, "{name}: {mode:o}");
    }
    assert_eq!(std::fs::read_to_string(data.join("cluster.token"))?, "an-old-token", "kept, only tightened");
    Ok(())
}

/// Each node applied writes with its own `--history-depth`, so replicas with different flags
/// kept different histories and their state digests differed at the same index. The depth is
/// now cluster state set through the log: the first leader's flag, then admin changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_identical_history_whatever_their_history_depth_flags() -> Result<()> {
    let all = [1, 2, 3];
    let mut c = Cluster::start(Path::new(BIN), 3, &["--history-depth", "2"]).await?;
    let leader = c.wait_leader(&all, &all).await?;
    // One follower restarts with a different flag; it must not change what it keeps.
    let odd = all.into_iter().find(|id| *id != leader).ok_or("no follower")?;
    c.kill(odd)?;
    c.spawn_with(odd, &["--history-depth", "7"], &[])?;
    c.wait_all_ready(&[odd]).await?;
    c.create_namespace(leader, "h").await?;
    for i in 0..10 {
        let (st, body) = c.put_text(leader, "h", "k", &format!("v{i}")).await?;
        assert!(st.is_success(), "{st} {body}");
    }
    let digest = c.wait_converged(&all, Duration::from_secs(60)).await?;
    for id in all {
        let (st, h) = c
            .call(id, Method::GET, "/api/v1/namespaces/h/config/k/history?consistency=stale", &c.keys.viewer, None)
            .await?;
        assert_eq!(st, StatusCode::OK, "{h}");
        assert_eq!(h["items"].as_array().map(Vec::len), Some(3), "node {id}: current + 2 superseded: {h}");
        let info = c.cluster_info(id).await?;
        assert_eq!(info["historyDepth"].as_u64(), Some(2), "node {id} reports the cluster's depth");
    }

    // An admin changes it for the whole cluster: a lower depth trims on the next write.
    let (st, body) = c
        .call(odd, Method::PUT, "/api/v1/cluster/settings", &c.keys.admin, Some(serde_json::json!({"historyDepth": 1})))
        .await?;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["historyDepth"].as_u64(), Some(1));
    let (st, body) = c.put_text(leader, "h", "k", "last").await?;
    assert!(st.is_success(), "{st} {body}");
    let after = c.wait_converged(&all, Duration::from_secs(60)).await?;
    assert_ne!(after["sha256"], digest["sha256"]);
    for id in all {
        let (_, h) = c
            .call(id, Method::GET, "/api/v1/namespaces/h/config/k/history?consistency=stale", &c.keys.viewer, None)
            .await?;
        let versions: Vec<u64> =
            h["items"].as_array().into_iter().flatten().filter_map(|i| i["version"].as_u64()).collect();
        assert_eq!(versions, [11, 10], "node {id}: current + 1 superseded");
    }

    // Bad input changes nothing.
    for (body, key) in [
        (serde_json::json!({"historyDepth": 1001}), c.keys.admin.clone()),
        (serde_json::json!({"historyDepht": 3}), c.keys.admin.clone()),
        (serde_json::json!({"historyDepth": 3}), c.keys.editor.clone()),
        (serde_json::json!({"historyDepth": 3}), c.keys.scoped_admin.clone()),
    ] {
        let (st, problem) = c.call(leader, Method::PUT, "/api/v1/cluster/settings", &key, Some(body.clone())).await?;
        assert!(st.is_client_error(), "{body}: {st} {problem}");
        assert!(problem["detail"].is_string(), "a problem with the reason: {problem}");
    }
    let (_, settings) = c.call(leader, Method::GET, "/api/v1/cluster/settings", &c.keys.viewer, None).await?;
    assert_eq!(settings["historyDepth"].as_u64(), Some(1), "{settings}");
    Ok(())
}

/// Any extension method (`XYZ123 /health`) became a new label value of the request metrics,
/// so unauthenticated clients could grow memory and `/metrics` without bound. Methods outside
/// the standard set are now counted as "other".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_http_methods_do_not_create_metric_labels() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    for i in 0..50 {
        let method = Method::from_bytes(format!("XYZ{i}").as_bytes())?;
        let resp = c.request(1, method, "/health")?.send().await?;
        assert!(resp.status().is_client_error(), "an unknown method is refused: {}", resp.status());
    }
    let text = c.request(1, Method::GET, "/metrics")?.send().await?.text().await?;
    assert!(!text.contains("XYZ"), "client-chosen methods appear as labels");
    let other: u64 = text
        .lines()
        .filter(|l| l.starts_with("confman_http_requests_total{") && l.contains("method=\"other\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(other, 50, "each request counted once, as method other:\n{text}");
    Ok(())
}

/// The audit log of a namespace grew forever. It keeps the cluster's `auditRetention` events
/// (oldest whole revisions dropped first, identically on every replica), and a watch asking to
/// resume before what was dropped gets 410 instead of silently missing events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_bounded_and_a_watch_behind_it_gets_410() -> Result<()> {
    let all = [1, 2, 3];
    let c = Cluster::start(Path::new(BIN), 3, &[]).await?;
    let leader = c.wait_leader(&all, &all).await?;
    c.create_namespace(leader, "aud").await?;
    let (st, body) = c
        .call(
            leader,
            Method::PUT,
            "/api/v1/cluster/settings",
            &c.keys.admin,
            Some(serde_json::json!({"auditRetention": 100})),
        )
        .await?;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["auditRetention"].as_u64(), Some(100));
    let mut last = 0;
    for i in 0..150 {
        let (st, body) = c.put_text(leader, "aud", &format!("k{i}"), "v").await?;
        assert!(st.is_success(), "{st} {body}");
        last = body["revision"].as_u64().ok_or("no revision")?;
    }
    c.wait_converged(&all, Duration::from_secs(60)).await?;
    for id in all {
        let (st, audit) = c
            .call(id, Method::GET, "/api/v1/namespaces/aud/audit?limit=1000&consistency=stale", &c.keys.viewer, None)
            .await?;
        assert_eq!(st, StatusCode::OK, "{audit}");
        let items = audit["items"].as_array().ok_or("no items")?;
        assert_eq!(items.len(), 100, "node {id} keeps the retention");
        assert_eq!(items[0]["revision"].as_u64(), Some(last), "newest kept");
    }
    let resp = c
        .request(leader, Method::GET, "/api/v1/namespaces/aud/watch?fromRevision=0")?
        .bearer_auth(&c.keys.viewer)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::GONE);
    let problem: serde_json::Value = resp.json().await?;
    let compacted = problem["compactedRevision"].as_u64().ok_or("no compactedRevision")?;
    assert!(compacted > 0 && compacted < last, "{problem}");
    // From the compacted revision on, nothing is missing: the watch is served.
    let resp = c
        .request(leader, Method::GET, &format!("/api/v1/namespaces/aud/watch?fromRevision={compacted}"))?
        .bearer_auth(&c.keys.viewer)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    // Out-of-range retention is refused and changes nothing.
    let (st, problem) = c
        .call(
            leader,
            Method::PUT,
            "/api/v1/cluster/settings",
            &c.keys.admin,
            Some(serde_json::json!({"auditRetention": 5})),
        )
        .await?;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{problem}");
    let (_, settings) = c.call(leader, Method::GET, "/api/v1/cluster/settings", &c.keys.viewer, None).await?;
    assert_eq!(settings["auditRetention"].as_u64(), Some(100), "{settings}");
    Ok(())
}

/// A leader shutting down handed leadership to the first other voter by id, even one that was
/// down (a pod being replaced): the hand-over timed out and the cluster waited for an
/// election. It now picks the most caught-up voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_shutting_down_hands_over_to_a_live_voter() -> Result<()> {
    let all = [1, 2, 3];
    let mut c = Cluster::start(Path::new(BIN), 3, &[]).await?;
    let leader = c.wait_leader(&all, &all).await?;
    if leader != 1 {
        let (st, body) = c
            .call(leader, Method::POST, "/api/v1/cluster/leader", &c.keys.admin, Some(serde_json::json!({"to": 1})))
            .await?;
        assert_eq!(st, StatusCode::OK, "{body}");
        c.wait_leader(&all, &[1]).await?;
    }
    c.create_namespace(1, "ho").await?;
    // Node 2, the first other voter by id, is down, and the leader has noticed (no heartbeat
    // acknowledged for longer than the minimum election timeout, 400 ms here).
    c.kill(2)?;
    c.poll("the leader to miss node 2's heartbeat acks", Duration::from_secs(30), || async {
        let info = c.cluster_info(1).await?;
        let age = info["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["id"] == 2))
            .map(|m| m["lastHeartbeatAckMs"].as_u64());
        Ok(matches!(age, Some(Some(ms)) if ms > 400))
    })
    .await?;
    let status = c.terminate(1, Duration::from_secs(60)).await?;
    assert!(status.success(), "{status:?}");
    let handed: Vec<_> = c
        .log_records(1)?
        .into_iter()
        .filter(|r| r["fields"]["message"] == "leadership handed over before shutdown")
        .collect();
    assert_eq!(handed.len(), 1, "exactly one hand-over: {handed:?}");
    assert_eq!(handed[0]["fields"]["to"].as_u64(), Some(3), "handed to the live voter: {handed:?}");
    Ok(())
}
