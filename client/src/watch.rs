//! A resuming watch: server-sent events of a namespace's changes, reconnecting (to the next
//! endpoint when one is gone) after the last revision it delivered, so a caller sees every
//! change once and in order across node restarts and failovers.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Deserialize;

use crate::{Error, Problem, RetryStats};

/// One change in a watched namespace (the audit event of it).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    /// `config.created`, `config.updated`, `config.deleted`, `namespace.created|updated|deleted`.
    pub action: String,
    /// Who made the change.
    pub actor: String,
    /// Namespace of the change (a watch covers one namespace).
    pub namespace: String,
    /// Key, for config changes.
    pub key: Option<String>,
    /// Version before the change.
    pub old_version: Option<u64>,
    /// Version after the change (None when deleted).
    pub new_version: Option<u64>,
    /// Revision of the change.
    pub revision: u64,
    /// Time of the change (RFC 3339).
    pub timestamp: String,
}

/// The watch; call [`Watch::next`] in a loop.
pub struct Watch {
    pub(crate) http: reqwest::Client,
    pub(crate) endpoints: Vec<String>,
    pub(crate) credential: crate::credential::Credential,
    pub(crate) ns: String,
    pub(crate) next_endpoint: usize,
    /// Resume point: the last complete revision delivered.
    pub(crate) after: Option<u64>,
    pub(crate) retry_for: Duration,
    pub(crate) body: Option<BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    pub(crate) buf: String,
    /// Events already delivered of a revision not yet complete (revision, count): after a
    /// reconnect the node resends that whole revision, and these are skipped.
    pub(crate) partial: Option<(u64, usize)>,
    /// How many events of `partial`'s revision to skip on the current connection.
    pub(crate) skip: usize,
    pub(crate) reconnects: u64,
    /// Connect attempts repeated after a failed one, by reason.
    pub(crate) retries: RetryStats,
}

impl Watch {
    /// The revision after which the watch resumes if the connection drops.
    pub fn resume_point(&self) -> Option<u64> {
        self.after
    }

    /// How often the stream dropped and the watch resumed (on the same or another endpoint).
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Connect attempts this watch repeated so far, by reason: an attempt answered `503`
    /// (`unavailable`), one that never connected (`unreachable`) or one sent but unanswered
    /// (`unanswered`), each then repeated on the next endpoint. A stream that dropped and was
    /// resumed at the first attempt counts in [`Watch::reconnects`] only.
    pub fn retries(&self) -> RetryStats {
        self.retries
    }

    pub(crate) async fn connect(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + self.retry_for;
        let mut delay = Duration::from_millis(50);
        loop {
            let base = &self.endpoints[self.next_endpoint % self.endpoints.len()];
            let mut req = self
                .http
                .get(format!("{base}/api/v1/namespaces/{}/watch", crate::encode_segment(&self.ns)))
                .bearer_auth(&*self.credential.current()?)
                .header("accept", "text/event-stream");
            if let Some(after) = self.after {
                req = req.header("last-event-id", after.to_string());
            }
            let err = match req.send().await {
                Ok(r) if r.status().is_success() => {
                    self.body = Some(r.bytes_stream().boxed());
                    self.buf.clear();
                    self.skip = self.partial.map_or(0, |(_, n)| n);
                    return Ok(());
                }
                Ok(r) if r.status().as_u16() == 503 => Error::Unavailable(Problem::read(r).await),
                Ok(r) => return Err(Error::Api(Problem::read(r).await)),
                Err(e) => Error::Transport(e),
            };
            self.next_endpoint += 1;
            if Instant::now() + delay > deadline {
                return Err(err);
            }
            match &err {
                Error::Unavailable(_) => self.retries.unavailable += 1,
                Error::Transport(e) if e.is_connect() => self.retries.unreachable += 1,
                _ => self.retries.unanswered += 1,
            }
            tracing::debug!(endpoint = %base, error = %err, "watch connect failed, trying the next endpoint");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// The next change; reconnects transparently when the connection drops.
    pub async fn next(&mut self) -> Result<WatchEvent, Error> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut data, mut id, mut kind) = (String::new(), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse::<u64>().ok();
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                // The node ends a stream with an `error` event carrying a problem (e.g. 410
                // compacted: the watch fell behind the audit retention).
                if kind == "error" {
                    let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                    self.body = None;
                    return Err(Error::Api(Problem {
                        status: v["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(500),
                        kind: v["type"].as_str().and_then(|t| t.rsplit('/').next()).unwrap_or("error").to_string(),
                        detail: v["detail"].as_str().unwrap_or(&data).to_string(),
                        node_id: None,
                    }));
                }
                let event: WatchEvent = serde_json::from_str(&data).map_err(|e| {
                    Error::Api(Problem {
                        status: 200,
                        kind: "bad-event".into(),
                        detail: format!("{e}: {data}"),
                        node_id: None,
                    })
                })?;
                if self.after.is_some_and(|a| event.revision <= a) {
                    continue;
                }
                // After a reconnect in the middle of a revision, skip what was delivered of it.
                if self.skip > 0 && self.partial.is_some_and(|(r, _)| r == event.revision) {
                    self.skip -= 1;
                    continue;
                }
                match id {
                    Some(id) => {
                        self.after = Some(id);
                        self.partial = None;
                    }
                    None => {
                        let n = match self.partial {
                            Some((r, n)) if r == event.revision => n + 1,
                            _ => 1,
                        };
                        self.partial = Some((event.revision, n));
                    }
                }
                return Ok(event);
            }
            let chunk = match self.body.as_mut() {
                Some(body) => body.next().await,
                None => None,
            };
            match chunk {
                Some(Ok(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Some(Err(_)) | None => {
                    // The node went away or ended the stream: resume elsewhere.
                    self.body = None;
                    self.next_endpoint += 1;
                    self.reconnects += 1;
                    self.connect().await?;
                }
            }
        }
    }
}
