//! One accepted connection: its transport (TCP or TLS) wrapped so that the server's reads fail
//! once the connection has waited too long for a request header or sat idle between requests.
//!
//! hyper's own header-read timeout is not reachable through `axum::serve`, so the clock lives
//! in the I/O object hyper reads from. The request gate (`admission`) tells it when a request
//! starts (its header has been parsed) and when its response has been sent; in between nothing
//! times out (a watch stream may be silent for minutes, a write waits for a commit). Outside a
//! request, hyper is always waiting in a read, and that read fails when the deadline passes:
//! hyper then drops the connection and the socket closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

use super::admission::Slot;

/// How long a connection refused with 503 has to flush that answer before it is closed
/// (HTTP/1.1 closes at once through `Connection: close`; HTTP/2 has no such header).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The HTTP/2 client preface; a connection starting with it is HTTP/2 (prior knowledge).
const H2_PREFACE_START: &[u8; 4] = b"PRI ";

/// The timeouts a connection is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// From accept (or from the first byte after an idle period) to a complete request header.
    pub header_read: Duration,
    /// From the end of a response to the first byte of the next request.
    pub idle: Duration,
}

/// The transport under HTTP.
pub(crate) enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why a connection was closed by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The request header did not arrive in time.
    Header,
    /// Nothing was asked for in time after the last response.
    Idle,
    /// The connection was refused (503) and its answer had time to go out.
    Refused,
}

impl Expiry {
    fn reason(self) -> &'static str {
        match self {
            Expiry::Header => "no complete request header within header-read-timeout-ms",
            Expiry::Idle => "idle for idle-timeout-ms",
            Expiry::Refused => "refused: too many connections",
        }
    }
}

/// Which HTTP version the connection speaks, learnt from its first bytes (or from ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// Fewer than four bytes seen so far.
    Sniffing {
        seen: [u8; 4],
        len: usize,
    },
    Http1,
    Http2,
}

/// The request/idle state a connection's deadline is computed from. Pure (no clock reads), so
/// the rules are unit-tested directly.
#[derive(Debug)]
pub(crate) struct Timing {
    /// When the connection became ready for HTTP (after the TLS handshake).
    accepted: Instant,
    /// When the last request finished (or `accepted`), moved on by HTTP/1.1 response bytes
    /// still being flushed after it.
    idle_since: Instant,
    /// Requests in progress (HTTP/2 multiplexes).
    active: usize,
    /// Requests started so far.
    served: u64,
    /// First byte read since the connection went idle: a request header is on its way.
    header_started: Option<Instant>,
    proto: Proto,
    /// Close once the current requests are done (the connection was refused).
    close_when_idle: bool,
    /// The task reading the connection, woken when the last request ends so the idle deadline
    /// gets armed.
    reader: Option<Waker>,
}

impl Timing {
    pub(crate) fn new(now: Instant) -> Timing {
        Timing {
            accepted: now,
            idle_since: now,
            active: 0,
            served: 0,
            header_started: None,
            proto: Proto::Sniffing { seen: [0; 4], len: 0 },
            close_when_idle: false,
            reader: None,
        }
    }

    /// Restarts the clocks: the connection is ready for HTTP now (its TLS handshake is done).
    fn ready_at(&mut self, now: Instant, http2: bool) {
        self.accepted = now;
        self.idle_since = now;
        if http2 {
            self.proto = Proto::Http2;
        }
    }

    fn sniff(&mut self, bytes: &[u8]) {
        if let Proto::Sniffing { mut seen, mut len } = self.proto {
            for b in bytes.iter().take(seen.len() - len) {
                seen[len] = *b;
                len += 1;
            }
            self.proto = if seen[..len] != H2_PREFACE_START[..len] {
                Proto::Http1
            } else if len == seen.len() {
                Proto::Http2
            } else {
                Proto::Sniffing { seen, len }
            };
        }
    }

    /// Bytes arrived from the client.
    pub(crate) fn on_read(&mut self, bytes: &[u8], now: Instant) {
        self.sniff(bytes);
        // HTTP/2 sends control frames (PING, WINDOW_UPDATE, SETTINGS) between requests: they
        // neither start a header nor count as activity (as Go's http2 server treats PING).
        if self.active == 0 && self.proto != Proto::Http2 && self.header_started.is_none() {
            self.header_started = Some(now);
        }
    }

    /// Bytes went to the client.
    pub(crate) fn on_write(&mut self, now: Instant) {
        // The tail of an HTTP/1.1 response still going out to a slow reader is not idleness.
        if self.active == 0 && self.proto == Proto::Http1 {
            self.idle_since = now;
        }
    }

    /// A request header was parsed and the request handed to the router.
    pub(crate) fn request_started(&mut self) {
        self.active += 1;
        self.served += 1;
        self.header_started = None;
    }

    /// A response was sent (or abandoned); returns the reader to wake when the connection is
    /// now idle.
    pub(crate) fn request_finished(&mut self, now: Instant) -> Option<Waker> {
        self.active = self.active.saturating_sub(1);
        if self.active > 0 {
            return None;
        }
        self.idle_since = now;
        self.header_started = None;
        self.reader.take()
    }

    /// When the connection is closed unless something happens first, and why; `None` while a
    /// request is in progress.
    pub(crate) fn deadline(&self, t: &Timeouts) -> Option<(Instant, Expiry)> {
        if self.active > 0 {
            return None;
        }
        if self.close_when_idle {
            return Some((self.idle_since + CLOSE_GRACE, Expiry::Refused));
        }
        // The first request header must be complete within the header timeout of the accept,
        // however slowly its bytes trickle in (slowloris), and a connection that never sends
        // anything is gone just as soon.
        if self.served == 0 {
            return Some((self.accepted + t.header_read, Expiry::Header));
        }
        if let Some(started) = self.header_started {
            return Some((started + t.header_read, Expiry::Header));
        }
        Some((self.idle_since + t.idle, Expiry::Idle))
    }
}

/// What the listener, the connection and the request gate share about one connection.
pub(crate) struct ConnState {
    pub(crate) remote: SocketAddr,
    timeouts: Timeouts,
    timing: Mutex<Timing>,
    /// The connection's place in the connection pools (released when the state is dropped,
    /// i.e. when the connection is closed).
    pub(crate) slot: Mutex<Slot>,
}

impl ConnState {
    pub(crate) fn new(remote: SocketAddr, timeouts: Timeouts, slot: Slot) -> ConnState {
        ConnState { remote, timeouts, timing: Mutex::new(Timing::new(Instant::now())), slot: Mutex::new(slot) }
    }

    fn timing(&self) -> std::sync::MutexGuard<'_, Timing> {
        self.timing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the start of a request; the returned guard marks its end when dropped.
    pub(crate) fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.timing().request_started();
        RequestGuard { state: self.clone() }
    }

    /// Closes the connection once its current requests are answered.
    pub(crate) fn close_when_idle(&self) {
        self.timing().close_when_idle = true;
    }
}

/// A request in progress on a connection; dropping it (response sent or abandoned) may start the
/// connection's idle clock.
pub(crate) struct RequestGuard {
    state: Arc<ConnState>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let reader = self.state.timing().request_finished(Instant::now());
        if let Some(w) = reader {
            w.wake();
        }
    }
}

/// A handle on a connection's shared state, given to every request on it (as axum
/// `ConnectInfo`).
#[derive(Clone)]
pub struct ConnHandle(pub(crate) Arc<ConnState>);

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConnHandle").field(&self.0.remote).finish()
    }
}

/// The I/O object hyper serves: the transport plus the connection's deadline.
pub struct Conn {
    io: Transport,
    state: Arc<ConnState>,
    /// Created on first use (inside the runtime) and re-armed when the deadline moves.
    timer: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
}

impl Conn {
    /// Wraps a transport that is ready for HTTP; the header clock starts now.
    pub(crate) fn new(io: Transport, state: Arc<ConnState>) -> Conn {
        let http2 = match &io {
            Transport::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
            Transport::Plain(_) => false,
        };
        state.timing().ready_at(Instant::now(), http2);
        Conn { io, state, timer: None, armed: None }
    }

    /// The shared state, for the request gate.
    pub(crate) fn handle(&self) -> ConnHandle {
        ConnHandle(self.state.clone())
    }

    /// After a read found nothing to return: arms the deadline and reports whether it passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = {
            let mut t = self.state.timing();
            if !t.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                t.reader = Some(cx.waker().clone());
            }
            t.deadline(&self.state.timeouts)
        };
        let Some((at, why)) = deadline else { return Poll::Pending };
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if self.armed != Some(at) {
            timer.as_mut().reset(at);
            self.armed = Some(at);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.expire(why)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The error that makes hyper drop the connection.
    fn expire(&self, why: Expiry) -> io::Error {
        tracing::debug!(remote = %self.state.remote, "closing connection: {}", why.reason());
        io::Error::new(io::ErrorKind::TimedOut, why.reason())
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if read.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let now = Instant::now();
                let expired = {
                    let mut t = this.state.timing();
                    t.on_read(read, now);
                    t.deadline(&this.state.timeouts).filter(|(at, _)| *at <= now)
                };
                // A client that never lets the read wait (bytes trickling in back to back) is
                // held to the same deadline.
                match expired {
                    Some((_, why)) => Poll::Ready(Err(this.expire(why))),
                    None => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.state.timing().on_write(Instant::now());
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.state.timing().on_write(Instant::now());
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts { header_read: Duration::from_secs(10), idle: Duration::from_secs(90) };

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_fresh_connection_has_the_header_timeout_from_accept_however_slowly_bytes_come() {
        let t0 = Instant::now();
        let mut t = Timing::new(t0);
        assert_eq!(t.deadline(&T), Some((at(t0, 10), Expiry::Header)));
        t.on_read(b"GE", at(t0, 5));
        t.on_read(b"T /", at(t0, 9));
        assert_eq!(t.deadline(&T), Some((at(t0, 10), Expiry::Header)), "trickling bytes do not extend it");
        t.request_started();
        assert_eq!(t.deadline(&T), None, "nothing times out while a request is served");
    }

    #[test]
    fn between_requests_the_idle_timeout_applies_until_a_byte_starts_a_header() {
        let t0 = Instant::now();
        let mut t = Timing::new(t0);
        t.on_read(b"GET / HTTP/1.1\r\n\r\n", t0);
        t.request_started();
        t.on_write(at(t0, 1));
        assert!(t.request_finished(at(t0, 2)).is_none(), "no reader registered");
        assert_eq!(t.deadline(&T), Some((at(t0, 92), Expiry::Idle)));
        t.on_write(at(t0, 3));
        assert_eq!(t.deadline(&T), Some((at(t0, 93), Expiry::Idle)), "a response tail still flushing");
        t.on_read(b"G", at(t0, 50));
        assert_eq!(t.deadline(&T), Some((at(t0, 60), Expiry::Header)));
        t.on_read(b"ET", at(t0, 55));
        assert_eq!(t.deadline(&T), Some((at(t0, 60), Expiry::Header)));
    }

    #[test]
    fn http2_control_frames_neither_start_a_header_nor_keep_the_connection_alive() {
        let t0 = Instant::now();
        let mut t = Timing::new(t0);
        t.on_read(b"PR", t0);
        t.on_read(b"I * HTTP/2.0\r\n\r\nSM\r\n\r\n", t0);
        assert_eq!(t.proto, Proto::Http2);
        t.request_started();
        t.request_started();
        t.request_finished(at(t0, 1));
        assert_eq!(t.deadline(&T), None, "one stream still open");
        t.request_finished(at(t0, 2));
        t.on_read(b"\0\0\x08\x06", at(t0, 30)); // a PING
        assert_eq!(t.deadline(&T), Some((at(t0, 92), Expiry::Idle)));
        t.on_write(at(t0, 30));
        assert_eq!(t.deadline(&T), Some((at(t0, 92), Expiry::Idle)), "a PING ack is no activity");
    }

    #[test]
    fn a_method_starting_with_p_is_http1() {
        let t0 = Instant::now();
        let mut t = Timing::new(t0);
        t.on_read(b"P", t0);
        assert!(matches!(t.proto, Proto::Sniffing { len: 1, .. }));
        t.on_read(b"UT /x HTTP/1.1\r\n", t0);
        assert_eq!(t.proto, Proto::Http1);
    }

    #[test]
    fn a_refused_connection_closes_soon_after_its_answer() {
        let t0 = Instant::now();
        let mut t = Timing::new(t0);
        t.request_started();
        t.close_when_idle = true;
        assert_eq!(t.deadline(&T), None, "the 503 is still being sent");
        t.request_finished(at(t0, 1));
        assert_eq!(t.deadline(&T), Some((at(t0, 1) + CLOSE_GRACE, Expiry::Refused)));
    }
}
