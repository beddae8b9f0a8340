//! Regression tests for defects found by review, each named after the defect: an idle watch
//! that spun on the blocking pool, list and history pages unbounded in bytes, secret files
//! readable by everyone, connections without header-read or idle timeouts or a cap.

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

/// openraft takes the leader from the persisted vote: a former leader restarted alone is
/// restored as leader and stays one without a quorum, and a follower restarted alone keeps
/// naming its old leader; both reported a leader and readiness for as long as they ran (and
/// their clients waited out request timeouts). A leader now names itself only within a quorum
/// lease, a follower its leader only while it hears from it, and both do again once the
/// others are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_restarted_without_a_quorum_do_not_report_a_leader() -> Result<()> {
    let all = [1, 2, 3];
    let mut c = Cluster::start(Path::new(BIN), 3, &[]).await?;
    let leader = c.wait_leader(&all, &all).await?;
    let follower = all.into_iter().find(|id| *id != leader).ok_or("no follower")?;
    c.create_namespace(leader, "vote").await?;
    for id in all {
        c.kill(id)?;
    }
    c.spawn(leader)?;
    // Sampled from its first answer for two election timeouts (the harness runs 400–800 ms):
    // it holds the leader role all along (openraft restored it) without naming itself.
    let ready_url = format!("{}/health/ready", c.url(leader)?);
    let mut watched_since = None;
    while watched_since.is_none_or(|t: std::time::Instant| t.elapsed() < Duration::from_millis(1600)) {
        if let Ok(info) = c.cluster_info(leader).await {
            watched_since.get_or_insert_with(std::time::Instant::now);
            assert_eq!(info["role"], "leader", "{info}");
            assert_eq!(info["leaderId"], serde_json::Value::Null, "{info}");
            let ready = reqwest::get(&ready_url).await?.status();
            assert_ne!(ready, StatusCode::OK, "ready without a quorum: {info}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A follower alone stops naming the old leader once it has not heard from it.
    c.kill(leader)?;
    c.spawn(follower)?;
    wait_for_no_leader(&c, follower).await?;
    for id in all.into_iter().filter(|id| *id != follower) {
        c.spawn(id)?;
    }
    c.wait_leader(&all, &all).await?;
    c.wait_all_ready(&all).await?;
    Ok(())
}

/// Waits (bounded) until node `id` names no leader and is not ready.
async fn wait_for_no_leader(c: &Cluster, id: u64) -> Result<()> {
    let ready_url = format!("{}/health/ready", c.url(id)?);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(info) = c.cluster_info(id).await
            && info["leaderId"].is_null()
            && reqwest::get(&ready_url).await?.status() == StatusCode::SERVICE_UNAVAILABLE
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("node {id} kept naming a leader: {}", c.cluster_info(id).await?).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A leader whose followers stop answering (paused here) stayed leader and ready for as long
/// as they were gone. It now stops naming itself once its quorum lease runs out, and names
/// itself again when they answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_followers_stops_reporting_itself_leader() -> Result<()> {
    let all = [1, 2, 3];
    let c = Cluster::start(Path::new(BIN), 3, &[]).await?;
    let leader = c.wait_leader(&all, &all).await?;
    let followers: Vec<u64> = all.into_iter().filter(|id| *id != leader).collect();
    let signal = |id: u64, sig: &str| -> Result<()> {
        let pid = c.pid(id).ok_or("not running")?;
        let st = std::process::Command::new("kill").args([sig, &pid.to_string()]).status()?;
        if st.success() { Ok(()) } else { Err(format!("kill {sig} {pid}").into()) }
    };
    for id in &followers {
        signal(*id, "-STOP")?;
    }
    let cut_off = wait_for_no_leader(&c, leader).await;
    let role = c.cluster_info(leader).await?["role"].clone();
    for id in &followers {
        signal(*id, "-CONT")?;
    }
    cut_off?;
    assert_eq!(role, "leader", "openraft keeps the role; only the report changes");
    c.wait_leader(&all, &all).await?;
    c.wait_all_ready(&all).await?;
    Ok(())
}

/// Polls a `/metrics` figure of node `id` until it equals `want` (bounded).
async fn wait_for_figure(c: &Cluster, id: u64, name: &str, want: u64) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = counter(c, id, name).await?;
        if now == want {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{name} stayed at {now}, expected {want}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a raw response's status line (bounded).
async fn status_line(stream: &mut tokio::net::TcpStream) -> Result<String> {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await??;
        if n == 0 {
            return Err("connection closed before the status line".into());
        }
        data.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&data);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Eight clients writing 4 MiB values had all eight bodies (and their copies on the way to the
/// log and the followers) in the leader's memory at once: memory followed the client count.
/// A write now reserves its body's size in a byte budget (`write-budget-bytes`) before the body
/// is read: a write that does not fit waits unread and gets 503 when no room comes in time,
/// and a body that stops arriving gets 408 and gives its room back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_write_budget_wait_unread_and_a_stalled_body_gives_its_room_back() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    const BUDGET: u64 = 1 << 20;
    const IN_USE: &str = "confman_write_budget_in_use_bytes";
    let c =
        Cluster::start(Path::new(BIN), 1, &["--write-budget-bytes", "1048576", "--request-timeout-ms", "2000"]).await?;
    c.create_namespace(1, "wb").await?;
    let addr = c.nodes.get(&1).ok_or("node 1")?.addr.clone();
    let head = |key: &str| {
        format!(
            "PUT /api/v1/namespaces/wb/config/{key} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {BUDGET}\r\n\r\n",
            c.keys.editor
        )
    };
    let mut big = tokio::net::TcpStream::connect(&addr).await?;
    big.write_all(head("big").as_bytes()).await?;
    big.write_all(&[1u8; 1000]).await?;
    wait_for_figure(&c, 1, IN_USE, BUDGET).await?;

    // The big body keeps arriving, slowly, while a small write asks for room.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let trickle = tokio::spawn(async move {
        let mut sent = 1000u64;
        loop {
            tokio::select! {
                _ = &mut stop_rx => return Ok::<_, std::io::Error>((big, sent)),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    big.write_all(&[1u8; 10]).await?;
                    sent += 10;
                }
            }
        }
    });
    let resp = c
        .request(1, Method::PUT, "/api/v1/namespaces/wb/config/small")?
        .bearer_auth(&c.keys.editor)
        .header("content-type", "application/octet-stream")
        // A large body, refused unread: the client still gets the 503 (not a reset).
        .body(vec![b'x'; 16 * 1024 * 1024])
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    let problem: serde_json::Value = resp.json().await?;
    assert_eq!(problem["type"].as_str().map(|t| t.ends_with("/write-budget-exhausted")), Some(true), "{problem}");
    assert_eq!(c.get(1, "wb", "small", false).await?, None, "a refused write changed nothing");

    // The big body completes and its write succeeds.
    let _ = stop_tx.send(());
    let (mut big, sent) = trickle.await??;
    big.write_all(&vec![2u8; (BUDGET - sent) as usize]).await?;
    let line = status_line(&mut big).await?;
    assert!(line.starts_with("HTTP/1.1 201"), "{line}");
    wait_for_figure(&c, 1, IN_USE, 0).await?;

    // A body that stops arriving is given up with 408 and frees its room.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await?;
    stalled.write_all(head("stalled").as_bytes()).await?;
    stalled.write_all(&[3u8; 1000]).await?;
    let line = status_line(&mut stalled).await?;
    assert!(line.starts_with("HTTP/1.1 408"), "{line}");
    wait_for_figure(&c, 1, IN_USE, 0).await?;
    let (st, body) = c.put_text(1, "wb", "small", "v").await?;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    assert_eq!(c.get(1, "wb", "stalled", false).await?, None);
    Ok(())
}

/// Connection limits with the other timeouts long enough that only the one under test acts.
const LONG_MS: &str = "600000";

/// Waits (bounded) until the server closes `stream`: end of file or a reset. Anything it sends
/// first is skipped.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await? {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `GET path` on a raw connection and reads the whole response; returns the status line
/// and the lower-cased header block.
async fn raw_get(stream: &mut tokio::net::TcpStream, path: &str) -> Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes()).await?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await??;
        if n == 0 {
            return Err("connection closed before the response header".into());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("a response with Content-Length")?;
    while data.len() < head_end + length {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await??;
        if n == 0 {
            return Err("connection closed inside the response body".into());
        }
        data.extend_from_slice(&buf[..n]);
    }
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, head))
}

/// Plain HTTP had no header-read timeout: a connection that sent part of a request header (or
/// nothing) and then stopped was held open forever, a slot of every slowloris. The header must
/// now be complete within `header-read-timeout-ms` of the accept, or of the first byte of a
/// later request on a kept-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_inside_a_request_header_is_closed_after_the_header_read_timeout() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let c =
        Cluster::start(Path::new(BIN), 1, &["--header-read-timeout-ms", "300", "--idle-timeout-ms", LONG_MS]).await?;
    let addr = c.nodes.get(&1).ok_or("node 1")?.addr.clone();
    let partial = b"GET /health HTTP/1.1\r\nHost: node\r\nX-Slow: ";
    let mut silent = tokio::net::TcpStream::connect(&addr).await?;
    let mut slow = tokio::net::TcpStream::connect(&addr).await?;
    slow.write_all(partial).await?;
    // A kept-alive connection (idle timeout far away) whose second request stops half-way.
    let mut kept = tokio::net::TcpStream::connect(&addr).await?;
    let (status, head) = raw_get(&mut kept, "/health").await?;
    assert!(status.contains(" 200 "), "{status}");
    assert!(!head.contains("connection: close"), "{head}");
    kept.write_all(partial).await?;
    let (a, b, k) =
        tokio::join!(closed_by_server(&mut silent), closed_by_server(&mut slow), closed_by_server(&mut kept));
    a.map_err(|e| format!("a connection that sent nothing: {e}"))?;
    b.map_err(|e| format!("a connection that stopped inside its first header: {e}"))?;
    k.map_err(|e| format!("a kept-alive connection that stopped inside its second header: {e}"))?;
    Ok(())
}

/// An idle keep-alive connection was never closed. It now is after `idle-timeout-ms` without a
/// request — but a request in progress (an open watch) is never idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> Result<()> {
    let c =
        Cluster::start(Path::new(BIN), 1, &["--idle-timeout-ms", "500", "--header-read-timeout-ms", LONG_MS]).await?;
    c.create_namespace(1, "idle").await?;
    let resp = c.request(1, Method::GET, "/api/v1/namespaces/idle/watch")?.bearer_auth(&c.keys.viewer).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut watch = resp.bytes_stream().boxed();
    let addr = c.nodes.get(&1).ok_or("node 1")?.addr.clone();
    let mut kept = tokio::net::TcpStream::connect(&addr).await?;
    let (status, head) = raw_get(&mut kept, "/health").await?;
    assert!(status.contains(" 200 "), "{status}");
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    closed_by_server(&mut kept).await?;
    // The watch, open longer than that idle connection lived, still delivers.
    let (st, body) = c.put_text(1, "idle", "after", "v").await?;
    assert!(st.is_success(), "{st} {body}");
    wait_for_event(&mut watch, "after").await?;
    Ok(())
}

/// A client without connection pooling, so each request opens a connection of its own.
fn fresh_client(c: &Cluster) -> confman_tests::cluster::Result<reqwest::Client> {
    let mut b = confman_client::http_builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(30));
    if let Some(certs) = &c.tls {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(certs.ca_pem.as_bytes())?);
    }
    Ok(b.build()?)
}

/// Opens `n` connections to `addr` that send nothing: idle HTTP clients, or (on a TLS port)
/// handshakes that never finish. The first is retried until the node listens.
async fn hold_connections(addr: &str, n: usize) -> Result<Vec<tokio::net::TcpStream>> {
    let mut held = Vec::new();
    for _ in 0..600 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            held.push(s);
            break;
        }
        // Waiting for a starting process to listen: there is no event to await.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if held.is_empty() {
        return Err(format!("{addr} never listened").into());
    }
    while held.len() < n {
        held.push(tokio::net::TcpStream::connect(addr).await?);
    }
    Ok(held)
}

/// `appliedIndex` from a node's `/health/ready` (a probe, served even when the node's client
/// connections are all taken).
async fn applied_index(c: &Cluster, id: u64) -> confman_tests::cluster::Result<u64> {
    let resp = fresh_client(c)?.get(format!("{}/health/ready", c.url(id)?)).send().await?;
    let status: serde_json::Value = resp.json().await?;
    Ok(status["appliedIndex"].as_u64().unwrap_or(0))
}

const CAP: usize = 8;

/// Shared by the plain and TLS variants: a follower whose client connections are all held by
/// clients that send nothing must still be reached by its peers (every one of their
/// connections to it is new: it restarts behind the others), catch up and follow new writes;
/// a new client meanwhile gets a quick 503, and is served once the idle ones are gone.
async fn peers_get_through_a_full_client_pool(mut c: Cluster) -> Result<()> {
    let all = [1, 2, 3];
    let leader = c.wait_leader(&all, &all).await?;
    let lagging = all.into_iter().find(|id| *id != leader).ok_or("no follower")?;
    let others: Vec<u64> = all.into_iter().filter(|id| *id != lagging).collect();
    c.create_namespace(leader, "cap").await?;
    // The follower misses a write, so it cannot lead after the restart: the others must come
    // to it through its full connection pool.
    c.kill(lagging)?;
    let (st, body) = c.put_text(leader, "cap", "missed", "v").await?;
    assert!(st.is_success(), "{st} {body}");
    for id in &others {
        c.kill(*id)?;
    }
    c.spawn(lagging)?;
    let addr = c.nodes.get(&lagging).ok_or("no node")?.addr.clone();
    let held = hold_connections(&addr, CAP).await?;

    // A new client is refused at once, with the reason.
    let resp =
        fresh_client(&c)?.get(format!("{}/api/v1/cluster", c.url(lagging)?)).bearer_auth(&c.keys.viewer).send().await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem: serde_json::Value = resp.json().await?;
    assert_eq!(problem["type"].as_str().map(|t| t.ends_with("/too-many-connections")), Some(true), "{problem}");

    for id in &others {
        c.spawn(*id)?;
    }
    let leader = c.wait_leader(&others, &others).await?;
    // The restarted pair may still hold an election after agreeing on a leader (the restored
    // leader's heartbeats can miss a peer that was down when it started).
    c.open_failover_window("a full restart behind a full client pool");
    let (st, body) = c.put_text(leader, "cap", "after", "v").await?;
    c.close_failover_window();
    assert!(st.is_success(), "{st} {body}");
    let target = c.cluster_info(leader).await?["appliedIndex"].as_u64().ok_or("no appliedIndex")?;
    c.poll("the follower behind a full client pool to catch up", Duration::from_secs(60), || async {
        Ok(applied_index(&c, lagging).await? >= target)
    })
    .await?;
    // It got there with every idle client still connected (nothing was evicted).
    for (i, s) in held.iter().enumerate() {
        let mut b = [0u8; 1];
        match s.try_read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => return Err(format!("held connection {i} is no longer open: {other:?}").into()),
        }
    }
    // Once they go, clients are served again.
    drop(held);
    let url = format!("{}/api/v1/namespaces/cap/config/after?consistency=stale", c.url(lagging)?);
    c.poll("a client to be served after the idle connections closed", Duration::from_secs(60), || async {
        let resp = fresh_client(&c)?.get(&url).bearer_auth(&c.keys.viewer).send().await?;
        Ok(resp.status() == StatusCode::OK)
    })
    .await?;
    Ok(())
}

/// Args of the cap tests: a small client cap, nothing evicted by a timeout during the test.
const CAPPED: &[&str] = &[
    "--max-client-connections",
    "8",
    "--header-read-timeout-ms",
    LONG_MS,
    "--idle-timeout-ms",
    LONG_MS,
    "--tls-handshake-timeout-ms",
    LONG_MS,
];

/// Plain HTTP had no connection cap, and a cap alone would let idle clients lock Raft peers out
/// of the shared port. Clients are now capped (`max-client-connections`) and peers have
/// connection slots of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_at_the_cap_do_not_starve_raft_peers() -> Result<()> {
    peers_get_through_a_full_client_pool(Cluster::start(Path::new(BIN), 3, CAPPED).await?).await
}

/// On TLS, 256 pending handshakes stopped the accept loop shared with Raft peers. Handshakes
/// now run beside the accept loop, each holding a connection slot, and peers have slots of
/// their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_at_the_cap_do_not_starve_raft_peers() -> Result<()> {
    peers_get_through_a_full_client_pool(Cluster::start_tls(Path::new(BIN), 3, CAPPED).await?).await
}

/// A TLS handshake that never finishes is closed after `tls-handshake-timeout-ms` (it was a
/// fixed 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_finishes_is_closed_after_the_handshake_timeout() -> Result<()> {
    let c = Cluster::start_tls(
        Path::new(BIN),
        1,
        &["--tls-handshake-timeout-ms", "300", "--header-read-timeout-ms", LONG_MS, "--idle-timeout-ms", LONG_MS],
    )
    .await?;
    let addr = c.nodes.get(&1).ok_or("node 1")?.addr.clone();
    let mut stalled = tokio::net::TcpStream::connect(&addr).await?;
    closed_by_server(&mut stalled).await?;
    Ok(())
}
