//! Watch (server-sent events) on real nodes: every change after a revision, in order, from a
//! follower; resuming with Last-Event-ID misses and repeats nothing; new-only by default; bad
//! input refused; an open watch does not hold up a SIGTERM shutdown.

use std::path::Path;
use std::time::Duration;

use confman_tests::cluster::Cluster;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One parsed server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    data: Value,
    id: Option<String>,
}

/// Reads `n` events from an open SSE response (comments skipped), bounded by a timeout.
struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> Self {
        SseReader { stream: resp.bytes_stream().boxed(), buf: String::new() }
    }

    async fn next(&mut self) -> Result<Option<Sse>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut data, mut id) = (String::new(), String::new(), None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // keep-alive comment
                }
                return Ok(Some(Sse { event, data: serde_json::from_str(&data)?, id }));
            }
            match tokio::time::timeout(Duration::from_secs(20), self.stream.next()).await? {
                Some(chunk) => self.buf.push_str(std::str::from_utf8(&chunk?)?),
                None => return Ok(None),
            }
        }
    }

    async fn take(&mut self, n: usize) -> Result<Vec<Sse>> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(self.next().await?.ok_or("stream ended early")?);
        }
        Ok(out)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_every_change_in_order_and_resumes() -> Result<()> {
    let mut c = Cluster::start(Path::new(BIN), 3, &[]).await?;
    let all = [1, 2, 3];
    let leader = c.wait_leader(&all, &all).await?;
    let follower = all.iter().copied().find(|id| *id != leader).unwrap_or(2);
    c.create_namespace(leader, "app").await?;

    // A watch from revision 0 on a follower sees the namespace creation and every write.
    let resp = c
        .request(follower, Method::GET, "/api/v1/namespaces/app/watch?fromRevision=0")?
        .bearer_auth(&c.keys.viewer)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    let mut w = SseReader::new(resp);
    assert!(c.put_text(leader, "app", "a", "1").await?.0.is_success());
    assert!(c.put_text(leader, "app", "a", "2").await?.0.is_success());
    assert!(c.put_text(leader, "app", "b", "x").await?.0.is_success());
    let (st, _) = c.call(leader, Method::DELETE, "/api/v1/namespaces/app/config/a", &c.keys.editor, None).await?;
    assert_eq!(st, StatusCode::OK);
    let events = w.take(5).await?;
    let actions: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(actions, ["namespace.created", "config.created", "config.updated", "config.created", "config.deleted"]);
    // Every event carries its revision; they strictly increase and are exactly the revisions
    // the audit log records for these changes (oldest first).
    let revisions = events
        .iter()
        .map(|e| e.data["revision"].as_u64().ok_or_else(|| format!("event without a revision: {e:?}")))
        .collect::<std::result::Result<Vec<u64>, String>>()?;
    assert_eq!(revisions.len(), 5, "{revisions:?}");
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "revisions increase: {revisions:?}");
    let (st, audit) = c.call(leader, Method::GET, "/api/v1/namespaces/app/audit", &c.keys.viewer, None).await?;
    assert_eq!(st, StatusCode::OK, "{audit}");
    let mut audited: Vec<Option<u64>> =
        audit["items"].as_array().map(|a| a.iter().map(|e| e["revision"].as_u64()).collect()).unwrap_or_default();
    audited.reverse();
    assert_eq!(audited, revisions.iter().copied().map(Some).collect::<Vec<_>>(), "watch and audit agree");
    assert_eq!(events[2].data["newVersion"], 2);
    assert_eq!(events[4].data["key"], "a");
    for e in &events {
        assert_eq!(e.id.as_deref(), Some(e.data["revision"].to_string().as_str()), "id = revision");
    }

    // Reconnecting with Last-Event-ID of the 2nd event delivers exactly the 3rd onwards.
    let resume = events[1].id.clone().ok_or("no id")?;
    let resp = c
        .request(follower, Method::GET, "/api/v1/namespaces/app/watch")?
        .bearer_auth(&c.keys.viewer)
        .header("last-event-id", &resume)
        .send()
        .await?;
    let mut w2 = SseReader::new(resp);
    let again = w2.take(3).await?;
    assert_eq!(
        again.iter().map(|e| e.data["revision"].as_u64()).collect::<Vec<_>>(),
        events[2..].iter().map(|e| e.data["revision"].as_u64()).collect::<Vec<_>>()
    );

    // Without fromRevision a watch starts now: the next event is the next change.
    let resp =
        c.request(leader, Method::GET, "/api/v1/namespaces/app/watch")?.bearer_auth(&c.keys.viewer).send().await?;
    let mut w3 = SseReader::new(resp);
    assert!(c.put_text(leader, "app", "c", "new").await?.0.is_success());
    let next = w3.take(1).await?;
    assert_eq!((next[0].event.as_str(), &next[0].data["key"]), ("config.created", &Value::from("c")));

    // Bad input: a clear problem, nothing streamed.
    for (path, key, status) in [
        ("/api/v1/namespaces/app/watch?fromRevision=abc", c.keys.viewer.as_str(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/app/watch?from=1", c.keys.viewer.as_str(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/Bad_Name/watch", c.keys.viewer.as_str(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/app/watch", c.keys.scoped_editor.as_str(), StatusCode::FORBIDDEN),
        ("/api/v1/namespaces/app/watch", "not-a-key", StatusCode::UNAUTHORIZED),
    ] {
        let r = c.request(follower, Method::GET, path)?.bearer_auth(key).send().await?;
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(
            r.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{path}"
        );
    }

    // An open watch does not hold up shutdown: SIGTERM ends the stream and the node exits 0.
    let st = c.terminate(follower, Duration::from_secs(20)).await?;
    assert!(st.success(), "{st:?}");
    let mut rest = Vec::new();
    while let Some(e) = w.next().await? {
        rest.push(e.data["key"].clone());
    }
    assert_eq!(rest, vec![Value::from("c")], "the first watch got the later write, then its stream ended");
    Ok(())
}
