//! What the client does when a request was sent but never answered: reads and entry writes
//! (which carry an idempotency key, so the cluster applies them once and answers a repeat with
//! the first answer) move on to the next endpoint; membership changes report that their
//! outcome is unknown instead of repeating themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use confman_client::{Client, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// What a fake endpoint does with each request it receives.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Reads the request, then closes the connection without answering (a node killed
    /// mid-request).
    HangUp,
    /// Answers 200 with a write result.
    Answer,
    /// Answers 503 `data-lost` (a member whose volume was lost).
    DataLost,
}

/// A one-purpose HTTP/1.1 endpoint on loopback; returns its URL and a count of requests seen.
async fn endpoint(behaviour: Behaviour) -> Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read until the end of the headers and the (small) body that follows them.
                while let Ok(n) = sock.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = match behaviour {
                    Behaviour::HangUp => None,
                    Behaviour::Answer => Some(("200 OK", "application/json", r#"{"version":1,"revision":7}"#)),
                    Behaviour::DataLost => Some((
                        "503 Service Unavailable",
                        "application/problem+json",
                        r#"{"type":"https://confman.dev/problems/data-lost","status":503,"detail":"lost","nodeId":1}"#,
                    )),
                };
                if let Some((status, content_type, body)) = answer {
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                }
                // Dropping the socket closes the connection (without an answer for HangUp).
            });
        }
    });
    Ok((url, seen))
}

fn client(endpoints: Vec<String>) -> Result<Client> {
    Ok(Client::builder(endpoints, "key").retry_for(Duration::from_secs(10)).build()?)
}

#[tokio::test]
async fn an_unanswered_unconditional_put_moves_on_to_the_next_endpoint() -> Result<()> {
    let (dead, dead_seen) = endpoint(Behaviour::HangUp).await?;
    let (live, live_seen) = endpoint(Behaviour::Answer).await?;
    let w = client(vec![dead, live])?.put("app", "k", b"v".to_vec(), None).await?;
    assert_eq!((w.version, w.revision), (1, 7));
    assert_eq!((dead_seen.load(Ordering::SeqCst), live_seen.load(Ordering::SeqCst)), (1, 1));
    Ok(())
}

#[tokio::test]
async fn an_unanswered_conditional_put_is_repeated_under_its_idempotency_key() -> Result<()> {
    // The key makes the repeat safe: the cluster answers it from the first attempt's record if
    // that attempt was applied (see `a_write_repeated_after_an_unknown_outcome_sends_the_same_
    // idempotency_key` in the crate's unit tests for the key itself).
    for if_version in [Some(0), Some(3)] {
        let (dead, dead_seen) = endpoint(Behaviour::HangUp).await?;
        let (live, live_seen) = endpoint(Behaviour::Answer).await?;
        let w = client(vec![dead, live])?.put("app", "k", b"v".to_vec(), if_version).await?;
        assert_eq!((w.version, w.revision), (1, 7), "{if_version:?}");
        assert_eq!((dead_seen.load(Ordering::SeqCst), live_seen.load(Ordering::SeqCst)), (1, 1));
    }
    Ok(())
}

#[tokio::test]
async fn an_unanswered_membership_change_reports_an_unknown_outcome() -> Result<()> {
    let (dead, dead_seen) = endpoint(Behaviour::HangUp).await?;
    let (live, live_seen) = endpoint(Behaviour::Answer).await?;
    let r = client(vec![dead, live])?.remove(4).await;
    assert!(matches!(r, Err(Error::OutcomeUnknown(_))), "{r:?}");
    assert_eq!((dead_seen.load(Ordering::SeqCst), live_seen.load(Ordering::SeqCst)), (1, 0));
    Ok(())
}

#[tokio::test]
async fn an_unreachable_endpoint_is_skipped_even_for_conditional_writes() -> Result<()> {
    // A port with nothing listening: the request never left, so repeating it is safe.
    let closed = TcpListener::bind("127.0.0.1:0").await?;
    let closed_url = format!("http://{}", closed.local_addr()?);
    drop(closed);
    let (live, live_seen) = endpoint(Behaviour::Answer).await?;
    let w = client(vec![closed_url, live])?.put("app", "k", b"v".to_vec(), Some(0)).await?;
    assert_eq!(w.version, 1);
    assert_eq!(live_seen.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_member_answering_503_is_skipped_for_the_next_one() -> Result<()> {
    // E.g. ordinal 0 lost its volume: every call must not keep going to it.
    let (lost, lost_seen) = endpoint(Behaviour::DataLost).await?;
    let (live, live_seen) = endpoint(Behaviour::Answer).await?;
    let w = client(vec![lost, live])?.put("app", "k", b"v".to_vec(), Some(3)).await?;
    assert_eq!(w.version, 1);
    assert_eq!((lost_seen.load(Ordering::SeqCst), live_seen.load(Ordering::SeqCst)), (1, 1));
    Ok(())
}
