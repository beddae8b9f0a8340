//! Durability across restarts: a crash and restart replays nothing twice (audit and history
//! equal before and after), and SIGTERM under load exits 0 with nothing acknowledged lost.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use confman_tests::cluster::{Cluster, Result, VIEWER_KEY};
use reqwest::Method;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

async fn audit_and_history(c: &Cluster) -> Result<(Value, Vec<Value>)> {
    let (_, audit) = c.call(1, Method::GET, "/api/v1/namespaces/dur/audit?limit=1000", VIEWER_KEY, None).await?;
    let mut hist = Vec::new();
    for k in 0..5 {
        let (_, h) =
            c.call(1, Method::GET, &format!("/api/v1/namespaces/dur/config/key{k}/history"), VIEWER_KEY, None).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_and_loses_no_acknowledged_write() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    c.create_namespace(1, "load").await?;
    let c = Arc::new(tokio::sync::Mutex::new(c));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(8);
    let mut writers = Vec::new();
    let (http, url) = {
        let g = c.lock().await;
        (g.http.clone(), g.url(1)?)
    };
    for w in 0..8 {
        let (http, url, acked, first_tx) = (http.clone(), url.clone(), acked.clone(), first_tx.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let key = format!("w{w}-{i}");
                let r = http
                    .put(format!("{url}/api/v1/namespaces/load/config/{key}"))
                    .bearer_auth(confman_tests::cluster::EDITOR_KEY)
                    .header("content-type", "text/plain")
                    .body(key.clone())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {
                        if let Ok(mut a) = acked.lock() {
                            a.push((key.clone(), key));
                        }
                        let _ = first_tx.try_send(());
                    }
                    // Refused or connection closed by the shutdown: not acknowledged.
                    _ => break,
                }
            }
        }));
    }
    // Writes are flowing: wait for 50 acknowledgements, then SIGTERM.
    for _ in 0..50 {
        first_rx.recv().await;
    }
    let status = c.lock().await.terminate(1, Duration::from_secs(60)).await?;
    for w in writers {
        let _ = w.await;
    }
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let log = c.lock().await.log(1)?;
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "errors logged during shutdown: {errors:#?}");

    let mut c = Arc::try_unwrap(c)
        .map_err(|_| confman_tests::cluster::HarnessError::Unexpected("cluster still shared".into()))?
        .into_inner();
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
