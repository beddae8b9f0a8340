//! The bytes of client write bodies a node holds at once (`write-budget-bytes`).
//!
//! A write's body stays in memory from the moment it is read until Raft has applied it, and on
//! the leader it is copied on the way (the command, the log record, one AppendEntries body per
//! follower). Eight clients writing 4 MiB values kept eight of them in flight and the leader's
//! memory followed the number of clients, not a setting. A write now reserves its body's size
//! before the body is read — a body that does not fit waits in the client's socket, which is
//! the backpressure — and holds the reservation until its answer is ready. etcd bounds the same
//! thing by refusing proposals once too many are pending.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::problem::Problem;

/// Default budget: two 4 MiB values, or thousands of small ones. Measured with 8 clients
/// writing 4 MiB values (bench-results/stress-large-budget.md): 16 MiB left the leader above
/// 256 MiB, 8 MiB kept every node below it.
pub const DEFAULT_WRITE_BUDGET_BYTES: u64 = 8 * 1024 * 1024;
/// Smallest accepted budget (below it even ordinary values would queue behind each other).
pub const MIN_WRITE_BUDGET_BYTES: u64 = 1024 * 1024;
/// Largest accepted budget (a semaphore counts in `u32`).
pub const MAX_WRITE_BUDGET_BYTES: u64 = 1 << 30;

/// How many body idle times a whole body may take to arrive.
pub const BODY_TOTAL_IDLE_PERIODS: u32 = 3;

/// Shared by every request of a node.
#[derive(Debug, Clone)]
pub struct WriteBudget {
    bytes: Arc<Semaphore>,
    capacity: u32,
    /// How long a write may wait for room before it gets 503.
    wait: Duration,
    /// How long a body may send nothing before it gets 408.
    body_idle: Duration,
}

/// Room reserved for one write's body; given back when dropped.
#[derive(Debug)]
#[must_use = "the reservation ends when this is dropped"]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
    waited: Duration,
}

impl Reservation {
    /// How long the write waited for room: the rest of the request timeout is its own.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl WriteBudget {
    /// A budget of `capacity` bytes (clamped to the accepted range) where a write waits at
    /// most `wait` for room and a body may pause for at most `body_idle`; a whole body must
    /// arrive within [`BODY_TOTAL_IDLE_PERIODS`] × `body_idle`, so a client dripping bytes
    /// cannot hold its reservation for ever.
    pub fn new(capacity: u64, wait: Duration, body_idle: Duration) -> Self {
        let capacity = capacity.clamp(MIN_WRITE_BUDGET_BYTES, MAX_WRITE_BUDGET_BYTES) as u32;
        Self { bytes: Arc::new(Semaphore::new(capacity as usize)), capacity, wait, body_idle }
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> u64 {
        self.bytes.available_permits() as u64
    }

    /// The whole budget.
    pub fn capacity(&self) -> u64 {
        u64::from(self.capacity)
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> u64 {
        self.capacity().saturating_sub(self.available())
    }

    /// Reserves `bytes` (a body larger than the whole budget reserves all of it, so it runs
    /// alone instead of never). Waits in arrival order; `None` when no room came in time.
    async fn reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let want = bytes.min(u64::from(self.capacity)).max(1) as u32;
        match tokio::time::timeout(self.wait, self.bytes.clone().acquire_many_owned(want)).await {
            Ok(Ok(permit)) => Some(permit),
            // The semaphore is never closed; treat it like a full budget all the same.
            Ok(Err(_)) | Err(_) => None,
        }
    }

    fn exhausted(&self) -> Problem {
        Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "write-budget-exhausted",
            "Too many writes in flight",
            format!(
                "no room came free within {} ms in this node's budget of {} bytes for client writes in \
                 flight (write-budget-bytes); retry shortly",
                self.wait.as_millis(),
                self.capacity
            ),
        )
        .retry_after(1)
    }

    /// Reads a body of at most `limit` bytes inside the budget. The room is reserved before a
    /// byte is read: the declared length, or for a body without one the most it may need
    /// (`limit`, at most the whole budget), cut back to its size once read. Reserving as
    /// chunks arrived let two chunked writes each hold part of the budget and wait for the
    /// other's. A body that sends nothing for the body idle time gets 408. `too_large` is the
    /// error for a body over `limit`.
    pub async fn read(
        &self,
        body: Body,
        declared: Option<u64>,
        limit: u64,
        too_large: impl Fn() -> Problem,
    ) -> Result<(Bytes, Reservation), Problem> {
        let asked = std::time::Instant::now();
        let Some(mut permit) = self.reserve(declared.unwrap_or(limit).min(limit)).await else {
            return Err(self.exhausted());
        };
        let waited = asked.elapsed();
        let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
        let mut chunks = body.into_data_stream();
        let deadline = tokio::time::Instant::now() + self.body_idle * BODY_TOTAL_IDLE_PERIODS;
        loop {
            let until = deadline.min(tokio::time::Instant::now() + self.body_idle);
            let next = tokio::time::timeout_at(until, chunks.next()).await.map_err(|_| self.body_timeout())?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| Problem::bad_request("malformed-body", format!("reading the body: {e}")))?;
            if buf.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        let held = permit.num_permits();
        if buf.len().max(1) < held {
            // Room a body without a declared length did not use goes back at once.
            drop(permit.split(held - buf.len().max(1)));
        }
        Ok((Bytes::from(buf), Reservation { _permit: Some(permit), waited }))
    }

    fn body_timeout(&self) -> Problem {
        Problem::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body timed out",
            format!(
                "the request body stalled for {} ms or took longer than {} ms in all",
                self.body_idle.as_millis(),
                (self.body_idle * BODY_TOTAL_IDLE_PERIODS).as_millis()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(capacity: u64) -> WriteBudget {
        WriteBudget::new(capacity, Duration::from_millis(200), Duration::from_millis(200))
    }

    fn too_large() -> Problem {
        Problem::too_large("request body", 0)
    }

    #[tokio::test]
    async fn a_declared_body_is_reserved_until_the_reservation_drops() -> Result<(), Problem> {
        let b = budget(MIN_WRITE_BUDGET_BYTES);
        let (bytes, held) = b.read(Body::from(vec![7u8; 1000]), Some(1000), 10_000, too_large).await?;
        assert_eq!(bytes.len(), 1000);
        assert_eq!(b.available(), MIN_WRITE_BUDGET_BYTES - 1000);
        drop(held);
        assert_eq!(b.available(), MIN_WRITE_BUDGET_BYTES);
        Ok(())
    }

    #[tokio::test]
    async fn a_body_larger_than_the_budget_takes_all_of_it_and_others_wait_then_get_503() -> Result<(), Problem> {
        let b = budget(MIN_WRITE_BUDGET_BYTES);
        let big = 3 * MIN_WRITE_BUDGET_BYTES;
        let (bytes, held) = b.read(Body::from(vec![0u8; big as usize]), Some(big), big, too_large).await?;
        assert_eq!(bytes.len() as u64, big);
        assert_eq!(b.available(), 0);
        let refused = b.read(Body::from(vec![1u8; 10]), Some(10), 100, too_large).await;
        let problem = refused.err().ok_or_else(|| Problem::internal("a write was admitted past a full budget"))?;
        assert_eq!(problem.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        let (small, _held) = b.read(Body::from(vec![1u8; 10]), Some(10), 100, too_large).await?;
        assert_eq!(small.len(), 10);
        Ok(())
    }

    #[tokio::test]
    async fn a_chunked_body_keeps_only_the_room_it_used() -> Result<(), Problem> {
        let b = budget(MIN_WRITE_BUDGET_BYTES);
        let chunks = futures::stream::iter((0..4).map(|i| Ok::<_, std::io::Error>(Bytes::from(vec![i as u8; 300]))));
        let (bytes, held) = b.read(Body::from_stream(chunks), None, 10_000, too_large).await?;
        assert_eq!(bytes.len(), 1200);
        assert_eq!(&bytes[900..903], &[3, 3, 3]);
        assert_eq!(b.available(), MIN_WRITE_BUDGET_BYTES - 1200);
        drop(held);
        assert_eq!(b.available(), MIN_WRITE_BUDGET_BYTES);
        Ok(())
    }

    #[tokio::test]
    async fn a_chunked_body_larger_than_the_budget_runs_alone() -> Result<(), Problem> {
        let b = budget(MIN_WRITE_BUDGET_BYTES);
        let size = 3 * MIN_WRITE_BUDGET_BYTES as usize;
        let chunks =
            futures::stream::iter((0..3).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![5u8; size / 3]))));
        let (bytes, held) = b.read(Body::from_stream(chunks), None, 4 * MIN_WRITE_BUDGET_BYTES, too_large).await?;
        assert_eq!(bytes.len(), size);
        assert_eq!(b.available(), 0);
        drop(held);
        assert_eq!(b.available(), MIN_WRITE_BUDGET_BYTES);
        Ok(())
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_gets_408_and_gives_its_room_back() -> Result<(), Problem> {
        let b = budget(MIN_WRITE_BUDGET_BYTES);
        let first = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 300]))]);
        let stalled = first.chain(futures::stream::pending());
        let refused = b.read(Body::from_stream(stalled), Some(1000), 10_000, too_large).await;
        assert_eq!(refused.err().map(|p| p.status()), Some(axum::http::StatusCode::REQUEST_TIMEOUT));
        assert_eq!(b.available(), MIN_WRITE_BUDGET_BYTES);
        Ok(())
    }

    #[tokio::test]
    async fn a_body_dripping_bytes_faster_than_the_idle_time_still_gets_408_and_gives_its_room_back()
    -> Result<(), Problem> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let b = budget(MIN_WRITE_BUDGET_BYTES);
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        // One byte every half idle time, for ever: each pause is within the idle time.
        let drip = futures::stream::unfold((), move |()| {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                counter.fetch_add(1, Ordering::Relaxed);
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
            }
        });
        let refused = b.read(Body::from_stream(drip), Some(1000), 10_000, too_large).await;
        assert_eq!(refused.err().map(|p| p.status()), Some(axum::http::StatusCode::REQUEST_TIMEOUT));
        assert!(sent.load(Ordering::Relaxed) >= 3, "ended by the total deadline, not by one idle pause");
        assert_eq!(b.available(), MIN_WRITE_BUDGET_BYTES);
        Ok(())
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_limit_is_refused_and_leaves_the_budget_whole() -> Result<(), Problem> {
        let b = budget(MIN_WRITE_BUDGET_BYTES);
        let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 300]))));
        let refused = b.read(Body::from_stream(chunks), None, 1000, too_large).await;
        assert_eq!(refused.err().map(|p| p.status()), Some(axum::http::StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(b.available(), MIN_WRITE_BUDGET_BYTES);
        Ok(())
    }
}
