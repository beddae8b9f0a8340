//! Durability across restarts: a crash and restart replays nothing twice (audit and history
//! equal before and after), and SIGTERM under load exits 0 with nothing acknowledged lost.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use confman_tests::cluster::{Cluster, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::time::timeout;

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

/// Audit log and the history of every key, each read with a 200 (a failed read would compare
/// equal to another failed read).
async fn audit_and_history(c: &Cluster) -> Result<(Value, Vec<Value>)> {
    let (st, audit) = c.call(1, Method::GET, "/api/v1/namespaces/dur/audit?limit=1000", &c.keys.viewer, None).await?;
    assert_eq!(st, StatusCode::OK, "audit: {audit}");
    let mut hist = Vec::new();
    for k in 0..5 {
        let path = format!("/api/v1/namespaces/dur/config/key{k}/history");
        let (st, h) = c.call(1, Method::GET, &path, &c.keys.viewer, None).await?;
        assert_eq!(st, StatusCode::OK, "history of key{k}: {h}");
        assert_eq!(h["items"].as_array().map(Vec::len), Some(4), "key{k}: the current and 3 superseded versions: {h}");
        hist.push(h);
    }
    Ok((audit, hist))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_replays_nothing_twice() -> Result<()> {
    let mut c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    c.create_namespace(1, "dur").await?;
    for round in 0..4 {
        for k in 0..5 {
            let (st, _) = c.put_text(1, "dur", &format!("key{k}"), &format!("r{round}")).await?;
            assert!(st.is_success());
        }
    }
    let before = audit_and_history(&c).await?;
    assert_eq!(before.0["items"].as_array().map(Vec::len), Some(21), "1 namespace + 20 config events");

    // SIGKILL: applies are unsynced, so restart re-applies from the log what was lost.
    c.kill(1)?;
    c.spawn(1)?;
    c.wait_all_ready(&[1]).await?;
    let after = audit_and_history(&c).await?;
    assert_eq!(before, after, "audit and history identical after crash + restart");

    // And once more with a clean stop.
    let st = c.terminate(1, Duration::from_secs(30)).await?;
    assert!(st.success(), "clean exit: {st:?}");
    c.spawn(1)?;
    c.wait_all_ready(&[1]).await?;
    assert_eq!(before, audit_and_history(&c).await?);
    Ok(())
}

/// Every wait below is bounded: a stuck writer or a node that never exits fails the test.
const BOUND: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_and_loses_no_acknowledged_write() -> Result<()> {
    let mut c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    c.create_namespace(1, "load").await?;
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (http, url, editor) = (c.http.clone(), c.url(1)?, c.keys.editor.clone());
    let mut writers = Vec::new();
    let terminating = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for w in 0..8 {
        let (http, url, editor, acked, acked_tx, terminating) =
            (http.clone(), url.clone(), editor.clone(), acked.clone(), acked_tx.clone(), terminating.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let key = format!("w{w}-{i}");
                let r = http
                    .put(format!("{url}/api/v1/namespaces/load/config/{key}"))
                    .bearer_auth(&editor)
                    .header("content-type", "text/plain")
                    .body(key.clone())
                    .send()
                    .await
                    .map(|r| r.status());
                match r {
                    Ok(status) if status.is_success() => {
                        if let Ok(mut a) = acked.lock() {
                            a.push((key.clone(), key));
                        }
                        let _ = acked_tx.send(());
                    }
                    // Refused or connection closed by the shutdown: not acknowledged. Before the
                    // SIGTERM a failure is a defect of its own: it is reported.
                    other => {
                        if !terminating.load(std::sync::atomic::Ordering::SeqCst) {
                            return Err(format!("write {key} failed before SIGTERM: {other:?}"));
                        }
                        break;
                    }
                }
            }
            Ok::<(), String>(())
        }));
    }
    // Only the writers hold senders now: if they all stop early, `recv` returns None.
    drop(acked_tx);
    // Writes are flowing: wait for 50 acknowledgements, then SIGTERM.
    for n in 0..50 {
        let got = timeout(BOUND, acked_rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "writers stopped or stalled after {n} acknowledgements");
    }
    terminating.store(true, std::sync::atomic::Ordering::SeqCst);
    let status = c.terminate(1, Duration::from_secs(60)).await?;
    for w in writers {
        let joined = timeout(BOUND, w).await;
        assert!(matches!(joined, Ok(Ok(Ok(())))), "writer failed, or did not end after the node exited: {joined:?}");
    }
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let records = c.log_records(1)?;
    assert!(
        records.iter().any(|r| r["fields"]["message"] == "SIGTERM received"),
        "the node log is JSON lines and records the signal: {records:#?}"
    );
    let errors = c.log_records_at(1, "ERROR")?;
    assert!(errors.is_empty(), "errors (or unstructured lines) logged during shutdown: {errors:#?}");

    c.spawn(1)?;
    c.wait_all_ready(&[1]).await?;
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(acked.len() >= 50);
    for (k, v) in &acked {
        let got = c.get(1, "load", k, false).await?;
        assert_eq!(got.as_ref().and_then(|e| e["value"].as_str()), Some(v.as_str()), "acknowledged write {k} lost");
    }
    Ok(())
}
