//! Clients that record a history of reads, writes and compare-and-sets on a few keys, each
//! operation to a random member, classifying every answer: done (with its output), certainly
//! not applied, or unknown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use tokio::sync::Mutex;

use crate::cluster::{HarnessError, Result};
use crate::linearizability::{Operation, RegisterInput, RegisterOutput};

/// One key's operations.
pub type KeyHistory = Vec<Operation<RegisterInput, RegisterOutput>>;

/// The namespace the workload writes in.
pub const NAMESPACE: &str = "faults";

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Concurrent clients.
    pub clients: usize,
    /// Keys they share (each a register).
    pub keys: usize,
    /// Names of the keys: the prefix and a number (a long run uses fresh keys per window, so
    /// each window's histories are judged on their own).
    pub key_prefix: String,
    /// How long they run.
    pub duration: Duration,
    /// Per-request timeout: a request without an answer by then has an unknown outcome.
    pub request_timeout: Duration,
    /// Size of written values (ids are padded to it).
    pub value_bytes: usize,
    /// Share of writes (percent) that carry a large value instead, of a size drawn from
    /// `large_value_bytes`, so snapshots and their transfers happen under the faults.
    pub large_percent: u8,
    /// Sizes of the large values.
    pub large_value_bytes: std::ops::Range<usize>,
}

impl Workload {
    /// `clients` clients on `keys` keys for `duration`, small values only.
    pub fn small(clients: usize, keys: usize, duration: Duration) -> Workload {
        Workload {
            clients,
            keys,
            key_prefix: "k".into(),
            duration,
            request_timeout: Duration::from_secs(3),
            value_bytes: 64,
            large_percent: 0,
            large_value_bytes: 0..0,
        }
    }

    fn value_size(&self) -> usize {
        if self.large_percent > 0
            && !self.large_value_bytes.is_empty()
            && rand::rng().random_range(0..100u8) < self.large_percent
        {
            rand::rng().random_range(self.large_value_bytes.clone())
        } else {
            self.value_bytes
        }
    }
}

/// Clock shared by every client (one monotonic origin, microseconds).
#[derive(Clone)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// A value carries its unique id in its first 20 bytes (decimal, space padded).
fn encode_value(id: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{id:<20}").into_bytes();
    v.resize(size.max(20), b'.');
    v
}

/// The id of a value, if the whole value is exactly what that id's write sent (a torn or
/// truncated value is not).
fn decode_value(bytes: &[u8]) -> Option<u64> {
    let id: u64 = std::str::from_utf8(bytes.get(..20)?).ok()?.trim().parse().ok()?;
    (encode_value(id, bytes.len()) == bytes).then_some(id)
}

/// What the workload recorded, per key, and what it counted.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The history of each key.
    pub keys: BTreeMap<String, KeyHistory>,
    /// Answers by kind: `ok`, `failed: <why>` (certainly without effect), `unknown: <why>`,
    /// `anomaly`.
    pub outcomes: BTreeMap<String, u64>,
    /// Answers no correct node gives (a torn value, a 500), one line each.
    pub anomalies: Vec<String>,
}

/// Shared state of the clients.
struct Shared {
    urls: Vec<String>,
    key: String,
    clock: Clock,
    next_value: AtomicU64,
    /// What each key was last seen holding, with its ETag (for compare-and-set).
    last_seen: Mutex<BTreeMap<String, (u64, String)>>,
    recorded: Mutex<Recorded>,
}

/// Runs the workload against `urls` with the editor key; returns the history when the clients
/// stop.
pub async fn run_workload(urls: Vec<String>, editor_key: String, w: Workload) -> Result<Recorded> {
    let http = reqwest::Client::builder()
        .timeout(w.request_timeout)
        .pool_idle_timeout(Duration::from_secs(5))
        // A proxy's own 503 would pass for the node's.
        .no_proxy()
        .build()
        .map_err(HarnessError::Http)?;
    let shared = Arc::new(Shared {
        urls,
        key: editor_key,
        clock: Clock(Instant::now()),
        next_value: AtomicU64::new(1),
        last_seen: Mutex::new(BTreeMap::new()),
        recorded: Mutex::new(Recorded::default()),
    });
    let deadline = Instant::now() + w.duration;
    let mut tasks = Vec::new();
    for client in 0..w.clients {
        let (shared, http, w) = (shared.clone(), http.clone(), w.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let key = format!("{}{}", w.key_prefix, rand::rng().random_range(0..w.keys));
                one_operation(&shared, &http, client, &key, w.value_size()).await;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| HarnessError::Unexpected(format!("a client task failed: {e}")))?;
    }
    let recorded = std::mem::take(&mut *shared.recorded.lock().await);
    Ok(recorded)
}

/// Reads every key of `recorded` once through each of `urls` (after the faults healed),
/// adding the reads to it, so the final state of every key is judged too.
pub async fn final_reads(urls: &[String], editor_key: &str, recorded: &mut Recorded) -> Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(HarnessError::Http)?;
    let clock = Clock(Instant::now());
    // Continue the history's clock: every final read comes after every recorded operation.
    let offset = recorded.keys.values().flatten().filter_map(|o| o.ret.or(Some(o.call))).max().unwrap_or(0) + 1;
    let keys: Vec<String> = recorded.keys.keys().cloned().collect();
    for key in keys {
        for url in urls {
            // Retried for a while (a read has no effect): only the attempt that answered counts.
            let deadline = Instant::now() + Duration::from_secs(10);
            let (call, ret, output) = loop {
                let call = offset + clock.now();
                let (out, _) = read(&http, url, editor_key, &key).await;
                let ret = offset + clock.now();
                match out {
                    Ok(output) => break (call, ret, output),
                    Err(e) if e.starts_with("anomaly") || Instant::now() > deadline => {
                        return Err(HarnessError::Unexpected(format!("final read of {key} on {url}: {e}")));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            recorded.keys.entry(key.clone()).or_default().push(Operation {
                client: usize::MAX,
                input: RegisterInput::Read,
                call,
                ret: Some(ret),
                output: Some(output),
            });
        }
    }
    Ok(())
}

/// The outcome of one request: an answer, or why there is none.
type Answer = std::result::Result<RegisterOutput, String>;

async fn read(http: &reqwest::Client, url: &str, key_token: &str, key: &str) -> (Answer, Option<String>) {
    let resp = http
        .get(format!("{url}/api/v1/namespaces/{NAMESPACE}/config/{key}"))
        .bearer_auth(key_token)
        .header("accept", "application/octet-stream")
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return (Err(e.to_string()), None),
    };
    match resp.status() {
        StatusCode::NOT_FOUND => {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            if body["type"].as_str().is_some_and(|t| t.ends_with("/key-not-found")) {
                (Ok(RegisterOutput::Read(None)), None)
            } else {
                (Err(format!("anomaly: 404 that is not key-not-found: {body}")), None)
            }
        }
        StatusCode::OK => {
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let (version, etag) = (header("x-confman-version").and_then(|v| v.parse::<u64>().ok()), header("etag"));
            match (resp.bytes().await, version) {
                (Ok(body), Some(version)) => match decode_value(&body) {
                    Some(id) => (Ok(RegisterOutput::Read(Some((id, version)))), etag),
                    None => (Err(format!("anomaly: a value no write sent ({} bytes)", body.len())), None),
                },
                (Err(e), _) => (Err(e.to_string()), None),
                (Ok(_), None) => (Err("anomaly: 200 without a version header".into()), None),
            }
        }
        other => (Err(format!("status {other}")), None),
    }
}

/// Sends one random operation on `key` to a random member and records it.
async fn one_operation(s: &Shared, http: &reqwest::Client, client: usize, key: &str, value_bytes: usize) {
    let url = &s.urls[rand::rng().random_range(0..s.urls.len())];
    let roll = rand::rng().random_range(0..10u8);
    let cas_target = if roll >= 7 { s.last_seen.lock().await.get(key).cloned() } else { None };
    let call = s.clock.now();
    let (input, answer) = if roll < 4 {
        let (answer, etag) = read(http, url, &s.key, key).await;
        if let (Ok(RegisterOutput::Read(Some((id, _)))), Some(etag)) = (&answer, etag) {
            s.last_seen.lock().await.insert(key.to_string(), (*id, etag));
        }
        let answer = match answer {
            Ok(out) => WriteAnswer::Done(out),
            Err(e) if e.starts_with("anomaly") => WriteAnswer::Anomaly(e),
            // A read that got no answer observed nothing: it is left out.
            Err(_) => WriteAnswer::Refused("read without an answer".into()),
        };
        (RegisterInput::Read, answer)
    } else {
        let value = s.next_value.fetch_add(1, Ordering::Relaxed);
        let mut req = http
            .put(format!("{url}/api/v1/namespaces/{NAMESPACE}/config/{key}"))
            .bearer_auth(&s.key)
            .header("content-type", "application/octet-stream")
            .body(encode_value(value, value_bytes));
        let input = match cas_target {
            Some((expected, etag)) => {
                req = req.header("if-match", etag);
                RegisterInput::CompareAndSet { expected, value }
            }
            None => RegisterInput::Write(value),
        };
        (input, write_answer(req.send().await).await)
    };
    let ret = s.clock.now();
    let mut rec = s.recorded.lock().await;
    let (output, ret, kind) = match answer {
        WriteAnswer::Done(out) => (Some(out), Some(ret), "ok".to_string()),
        WriteAnswer::Refused(why) => {
            *rec.outcomes.entry(format!("failed: {why}")).or_default() += 1;
            drop(rec);
            // A client backs off a little instead of spinning on a member that is down.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
        WriteAnswer::Unknown(why) => (None, None, format!("unknown: {why}")),
        WriteAnswer::Anomaly(what) => {
            *rec.outcomes.entry("anomaly".into()).or_default() += 1;
            rec.anomalies.push(format!("client {client}, key {key}: {what}"));
            return;
        }
    };
    *rec.outcomes.entry(kind).or_default() += 1;
    rec.keys.entry(key.to_string()).or_default().push(Operation { client, input, call, ret, output });
}

/// A write's answer: its version, a failed precondition, a definite refusal, or no definite
/// answer.
async fn write_answer(resp: reqwest::Result<reqwest::Response>) -> WriteAnswer {
    match resp {
        Err(e) if e.is_connect() => WriteAnswer::Refused("not sent".into()),
        Err(e) if e.is_timeout() => WriteAnswer::Unknown("client timeout".into()),
        Err(_) => WriteAnswer::Unknown("no answer".into()),
        Ok(resp) => {
            let status = resp.status();
            if status.is_client_error() && status != StatusCode::PRECONDITION_FAILED {
                return WriteAnswer::Refused(format!("status {status}"));
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                // These 503s say the write was not proposed; the checker holds the node to it (a
                // write that took effect anyway shows up in a read). Any other may have been.
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                let kind = body["type"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
                return if NOT_PROPOSED.contains(&kind.as_str()) {
                    WriteAnswer::Refused(format!("503 {kind}"))
                } else {
                    WriteAnswer::Unknown(format!("503 {kind}"))
                };
            }
            if status == StatusCode::INSUFFICIENT_STORAGE {
                // Refused before it was proposed (the node is below its disk reserve).
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                return if body["type"].as_str().is_some_and(|t| t.ends_with("/insufficient-storage")) {
                    WriteAnswer::Refused("507 insufficient-storage".into())
                } else {
                    WriteAnswer::Anomaly(format!("507 that is not insufficient-storage: {body}"))
                };
            }
            if status.is_server_error() {
                return WriteAnswer::Anomaly(format!("status {status}"));
            }
            match definite_write(resp).await {
                Ok(out) => WriteAnswer::Done(out),
                Err(_) => WriteAnswer::Unknown("unreadable answer".into()),
            }
        }
    }
}

/// The 503 problem types that mean "not proposed".
const NOT_PROPOSED: [&str; 3] = ["unavailable", "write-budget-exhausted", "too-many-connections"];

/// The answer to a write.
enum WriteAnswer {
    /// It took effect with this output (or was refused by its precondition).
    Done(RegisterOutput),
    /// It certainly did not take effect.
    Refused(String),
    /// It may or may not have.
    Unknown(String),
    /// An answer no correct node gives.
    Anomaly(String),
}

async fn definite_write(resp: reqwest::Response) -> Answer {
    match resp.status() {
        StatusCode::PRECONDITION_FAILED => Ok(RegisterOutput::PreconditionFailed),
        st if st.is_success() => {
            let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
            body["version"].as_u64().map(RegisterOutput::Written).ok_or_else(|| format!("no version in {body}"))
        }
        other => Err(format!("status {other}")),
    }
}
