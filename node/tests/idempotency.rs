//! Idempotency keys (issue 10, item 7): a write repeated with the same `Idempotency-Key` after
//! an unknown outcome applies once and gets the first answer back, so a repeat never overwrites
//! what another writer wrote in between.

use std::path::Path;
use std::time::Duration;

use confman_tests::cluster::{Cluster, Result};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

/// Sends a write through node `id` (editor key), with `Idempotency-Key: idem` when given.
async fn write(
    c: &Cluster,
    id: u64,
    method: Method,
    path: &str,
    idem: Option<&str>,
    value: Option<&str>,
) -> Result<(StatusCode, HeaderMap, Value)> {
    let mut req = c.request(id, method, path)?.bearer_auth(&c.keys.editor);
    if let Some(k) = idem {
        req = req.header("idempotency-key", k);
    }
    if let Some(v) = value {
        req = req.header("content-type", "text/plain").body(v.to_string());
    }
    let resp = req.send().await?;
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.bytes().await?;
    Ok((status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

fn replayed(h: &HeaderMap) -> bool {
    h.get("idempotent-replayed").and_then(|v| v.to_str().ok()) == Some("true")
}

async fn history_len(c: &Cluster, path: &str) -> Result<usize> {
    let (_, v) = c.call(1, Method::GET, &format!("{path}/history"), &c.keys.viewer, None).await?;
    Ok(v["items"].as_array().map_or(0, Vec::len))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_unconditional_put_with_the_same_key_applies_once() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    c.create_namespace(1, "idem").await?;
    let path = "/api/v1/namespaces/idem/config/k";
    let key = "0f8e2a4c9b7d41e3a5c6d8e9f0a1b2c3";

    let (st, h1, b1) = write(&c, 1, Method::PUT, path, Some(key), Some("v1")).await?;
    assert_eq!(st, StatusCode::CREATED, "{b1}");
    assert!(!replayed(&h1), "a first application is not a replay");
    // Another writer, in between.
    let (st, _) = c.put_text(1, "idem", "k", "v2").await?;
    assert_eq!(st, StatusCode::OK);
    // The repeat (as after an unknown outcome) gets the first answer and changes nothing.
    let (st, h2, b2) = write(&c, 1, Method::PUT, path, Some(key), Some("v1")).await?;
    assert_eq!(st, StatusCode::CREATED, "the original status: {b2}");
    assert!(replayed(&h2), "Idempotent-Replayed: true");
    assert_eq!(b2, b1, "the original body");
    assert_eq!(h2.get("etag"), h1.get("etag"), "the original ETag");
    assert_eq!(c.get(1, "idem", "k", false).await?.map(|v| v["value"].clone()), Some(json!("v2")));
    // Two versions: v1 (in history) and v2 (current); the repeat made none.
    assert_eq!(history_len(&c, path).await?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_delete_with_the_same_key_applies_once() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    c.create_namespace(1, "idem").await?;
    let path = "/api/v1/namespaces/idem/config/k";
    let key = "delete-5b1e7f0c2d3a4b5c";

    c.put_text(1, "idem", "k", "v1").await?;
    let (st, h1, b1) = write(&c, 1, Method::DELETE, path, Some(key), None).await?;
    assert_eq!(st, StatusCode::OK, "{b1}");
    assert!(!replayed(&h1));
    // Another writer creates the key again; the repeated delete must not remove it.
    let (st, _) = c.put_text(1, "idem", "k", "v2").await?;
    assert_eq!(st, StatusCode::CREATED);
    let (st, h2, b2) = write(&c, 1, Method::DELETE, path, Some(key), None).await?;
    assert_eq!(st, StatusCode::OK, "{b2}");
    assert!(replayed(&h2));
    assert_eq!(b2, b1);
    assert_eq!(c.get(1, "idem", "k", false).await?.map(|v| v["value"].clone()), Some(json!("v2")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_idempotency_key_for_a_different_write_is_refused() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    c.create_namespace(1, "idem").await?;
    let path = "/api/v1/namespaces/idem/config/k";
    let key = "reused-1";

    let (st, _, _) = write(&c, 1, Method::PUT, path, Some(key), Some("v1")).await?;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _, b) = write(&c, 1, Method::PUT, path, Some(key), Some("other")).await?;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(b["type"].as_str().is_some_and(|t| t.ends_with("idempotency-key-reused")), "{b}");
    let other = "/api/v1/namespaces/idem/config/other";
    let (st, _, b) = write(&c, 1, Method::PUT, other, Some(key), Some("v1")).await?;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "another target: {b}");
    assert_eq!(c.get(1, "idem", "k", false).await?.map(|v| v["value"].clone()), Some(json!("v1")));
    assert_eq!(c.get(1, "idem", "other", false).await?, None);

    // Malformed keys are refused before anything is proposed.
    for bad in ["", "has space", &"x".repeat(129)] {
        let (st, _, b) = write(&c, 1, Method::PUT, path, Some(bad), Some("v3")).await?;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad:?}: {b}");
        assert!(b["detail"].as_str().is_some_and(|d| d.contains("Idempotency-Key")), "{b}");
    }
    assert_eq!(c.get(1, "idem", "k", false).await?.map(|v| v["value"].clone()), Some(json!("v1")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_record_survives_a_leader_crash() -> Result<()> {
    let mut c = Cluster::start(Path::new(BIN), 3, &[]).await?;
    let leader = c.wait_leader(&[1, 2, 3], &[1, 2, 3]).await?;
    c.create_namespace(leader, "idem").await?;
    let path = "/api/v1/namespaces/idem/config/k";
    let key = "crash-7d2c9e41";

    let (st, h1, b1) = write(&c, leader, Method::PUT, path, Some(key), Some("v1")).await?;
    assert_eq!(st, StatusCode::CREATED, "{b1}");
    c.put_text(leader, "idem", "k", "v2").await?;
    c.wait_converged(&[1, 2, 3], Duration::from_secs(10)).await?;

    c.open_failover_window("leader killed");
    c.kill(leader)?;
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let new_leader = c.wait_leader(&rest, &rest).await?;
    // Repeated through the follower that remains: forwarded to the new leader, which has the
    // record from replication.
    let via = rest.iter().copied().find(|&i| i != new_leader).unwrap_or(new_leader);
    let mut answer = write(&c, via, Method::PUT, path, Some(key), Some("v1")).await?;
    for _ in 0..100 {
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = write(&c, via, Method::PUT, path, Some(key), Some("v1")).await?;
    }
    c.close_failover_window();
    let (st, h2, b2) = answer;
    assert_eq!(st, StatusCode::CREATED, "{b2}");
    assert!(replayed(&h2));
    assert_eq!(b2, b1);
    assert_eq!(h2.get("etag"), h1.get("etag"));
    assert_eq!(c.get(via, "idem", "k", false).await?.map(|v| v["value"].clone()), Some(json!("v2")));
    Ok(())
}
