//! The fault suite's moving parts: clients that record a history of reads, writes and
//! compare-and-sets on a few keys (each operation to a random member), and nemeses that
//! crash or pause a member while they run. `linearizability` judges the histories.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use tokio::sync::Mutex;

use crate::cluster::{Cluster, HarnessError, Result};
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
    /// Size of every written value (ids are padded to it), for runs with large values.
    pub value_bytes: usize,
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

fn decode_value(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes.get(..20)?).ok()?.trim().parse().ok()
}

/// What the workload recorded, per key, and what it counted.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The history of each key.
    pub keys: BTreeMap<String, KeyHistory>,
    /// Answers by kind: `ok`, `failed: <why>` (certainly without effect), `unknown: <why>`.
    pub outcomes: BTreeMap<String, u64>,
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
/// stop. `stop_early` ends it sooner when it fires.
pub async fn run_workload(urls: Vec<String>, editor_key: String, w: Workload) -> Result<Recorded> {
    let http = reqwest::Client::builder()
        .timeout(w.request_timeout)
        .pool_idle_timeout(Duration::from_secs(5))
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
                one_operation(&shared, &http, client, &key, w.value_bytes).await;
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
            let call = offset + clock.now();
            let (out, _) = read(&http, url, editor_key, &key).await;
            let ret = offset + clock.now();
            let output = out.map_err(|e| HarnessError::Unexpected(format!("final read of {key} on {url}: {e}")))?;
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
        StatusCode::NOT_FOUND => (Ok(RegisterOutput::Read(None)), None),
        StatusCode::OK => {
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let (version, etag) = (header("x-confman-version").and_then(|v| v.parse::<u64>().ok()), header("etag"));
            match (resp.bytes().await, version) {
                (Ok(body), Some(version)) => match decode_value(&body) {
                    Some(id) => (Ok(RegisterOutput::Read(Some((id, version)))), etag),
                    None => (Err("a value without an id".into()), None),
                },
                (Err(e), _) => (Err(e.to_string()), None),
                (Ok(_), None) => (Err("no version header".into()), None),
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
                // Every 503 but `timeout` says the write was not proposed; the checker holds the
                // node to that (a write that took effect anyway shows up in a read).
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                let kind = body["type"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
                return if kind == "timeout" {
                    WriteAnswer::Unknown(format!("503 {kind}"))
                } else {
                    WriteAnswer::Refused(format!("503 {kind}"))
                };
            }
            match definite_write(resp).await {
                Ok(out) => WriteAnswer::Done(out),
                Err(_) => WriteAnswer::Unknown("unreadable answer".into()),
            }
        }
    }
}

/// The answer to a write.
enum WriteAnswer {
    /// It took effect with this output (or was refused by its precondition).
    Done(RegisterOutput),
    /// It certainly did not take effect.
    Refused(String),
    /// It may or may not have.
    Unknown(String),
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

/// A fault the suite injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nemesis {
    /// `kill -9` of the current leader; restarted after a random delay.
    KillLeader,
    /// `kill -9` of a follower; restarted after a random delay.
    KillFollower,
    /// `SIGSTOP` of the current leader; `SIGCONT` after a random delay.
    PauseLeader,
    /// `SIGSTOP` of a follower; `SIGCONT` after a random delay.
    PauseFollower,
    /// The leader cut off from both followers; healed after a random delay. Needs a cluster
    /// from `Cluster::start_isolated`.
    PartitionLeader,
    /// One follower cut off from the other two.
    PartitionFollower,
    /// The two followers cut off from each other, the leader still linked to both: each
    /// follower sees a different majority.
    PartitionBridge,
}

impl Nemesis {
    /// Whether it needs each node in a namespace of its own.
    pub fn needs_isolation(self) -> bool {
        matches!(self, Nemesis::PartitionLeader | Nemesis::PartitionFollower | Nemesis::PartitionBridge)
    }
}

/// What a nemesis did.
#[derive(Debug, Default, Clone)]
pub struct FaultLog {
    /// Faults injected (each healed before the next).
    pub faults: u64,
    /// One line per fault: when, what, on which node.
    pub events: Vec<String>,
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = std::process::Command::new("kill").args([sig, &pid.to_string()]).status()?;
    if st.success() { Ok(()) } else { Err(HarnessError::Unexpected(format!("kill {sig} {pid} failed"))) }
}

/// The member every running node names as leader, if they agree.
async fn current_leader(c: &Cluster, ids: &[u64]) -> Option<u64> {
    for id in ids {
        if let Ok(info) = c.cluster_info(*id).await
            && let Some(l) = info["leaderId"].as_u64()
        {
            return Some(l);
        }
    }
    None
}

/// Injects `nemesis` over and over until `until`: a fault, a random 0.5–2 s with it, the heal,
/// then a random 0.5–1.5 s of calm. Every fault is healed before this returns.
pub async fn run_nemesis(c: &mut Cluster, nemesis: Nemesis, until: Instant) -> Result<FaultLog> {
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    let mut log = FaultLog::default();
    let started = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(500..1500))).await;
        let Some(leader) = current_leader(c, &ids).await else { continue };
        let followers: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
        let target = match nemesis {
            Nemesis::KillLeader | Nemesis::PauseLeader | Nemesis::PartitionLeader | Nemesis::PartitionBridge => leader,
            Nemesis::KillFollower | Nemesis::PauseFollower | Nemesis::PartitionFollower => {
                followers[rand::rng().random_range(0..followers.len())]
            }
        };
        let hold = Duration::from_millis(rand::rng().random_range(500..2000));
        log.faults += 1;
        log.events.push(format!(
            "{:.1}s {nemesis:?} node {target} for {} ms",
            started.elapsed().as_secs_f64(),
            hold.as_millis()
        ));
        match nemesis {
            Nemesis::KillLeader | Nemesis::KillFollower => {
                c.kill(target)?;
                tokio::time::sleep(hold).await;
                c.spawn(target)?;
            }
            Nemesis::PauseLeader | Nemesis::PauseFollower => {
                let pid =
                    c.pid(target).ok_or_else(|| HarnessError::Unexpected(format!("node {target} is not running")))?;
                signal(pid, "-STOP")?;
                tokio::time::sleep(hold).await;
                signal(pid, "-CONT")?;
            }
            Nemesis::PartitionLeader | Nemesis::PartitionFollower | Nemesis::PartitionBridge => {
                let net = c.network.as_ref().ok_or_else(|| {
                    HarnessError::Unexpected(format!("{nemesis:?} needs a cluster from Cluster::start_isolated"))
                })?;
                let cuts: Vec<(u64, u64)> = match nemesis {
                    Nemesis::PartitionBridge => vec![(followers[0], followers[1])],
                    _ => ids.iter().filter(|id| **id != target).map(|id| (target, *id)).collect(),
                };
                let cut = cuts.iter().try_for_each(|(a, b)| net.cut(*a, *b));
                if cut.is_ok() {
                    tokio::time::sleep(hold).await;
                }
                // Healed on every path, a failed cut included.
                net.heal()?;
                cut?;
            }
        }
    }
    Ok(log)
}
