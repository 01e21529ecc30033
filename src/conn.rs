//! What every listener applies to a connection before a request is read (`[limits]`): at most
//! `max_connections` at once (past it a new one waits up to `head_timeout` for a slot, then is
//! closed), at most `per_client_connections` from one TCP peer (trusted proxies excepted), and a
//! response the client stops reading for `idle_timeout` ends the connection. The request head
//! itself is bounded by hyper's header read timeout (`head_timeout`, which also ends a kept-alive
//! connection that sends nothing), so trickling sockets cannot hold the gate.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{IpNet, Limits};
use crate::metrics::Metrics;

/// The caps one listener enforces.
pub struct ConnLimits {
    slots: Arc<Semaphore>,
    per_client: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    trusted: Vec<IpNet>,
    head_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl ConnLimits {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: limits.per_client_connections,
            open: Mutex::default(),
            trusted: limits.trusted_proxies.clone(),
            head_timeout: limits.head_timeout,
            idle_timeout: limits.idle_timeout,
            metrics,
        })
    }

    fn refuse(&self, why: &str) -> io::Error {
        self.metrics.connections_refused.fetch_add(1, Relaxed);
        io::Error::other(why.to_string())
    }

    /// Counts a connection of `peer`, unless it already has `per_client` open.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> io::Result<ClientSlot> {
        if self.trusted.iter().any(|n| n.contains(peer)) {
            return Ok(ClientSlot {
                limits: self.clone(),
                peer: None,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(peer).or_insert(0);
        if *n >= self.per_client {
            drop(open);
            return Err(self.refuse("per_client_connections reached"));
        }
        *n += 1;
        Ok(ClientSlot {
            limits: self.clone(),
            peer: Some(peer),
        })
    }
}

/// One counted connection of a peer; uncounted when dropped.
struct ClientSlot {
    limits: Arc<ConnLimits>,
    peer: Option<IpAddr>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some(peer) = self.peer else { return };
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&peer);
            }
        }
    }
}

/// The acceptor every listener runs first (before TLS, so a handshake is a counted connection).
#[derive(Clone)]
pub struct GuardAcceptor {
    limits: Arc<ConnLimits>,
}

impl GuardAcceptor {
    pub fn new(limits: Arc<ConnLimits>) -> GuardAcceptor {
        GuardAcceptor { limits }
    }
}

type Accepting<S> = Pin<Box<dyn Future<Output = io::Result<(Guarded, S)>> + Send>>;

impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for GuardAcceptor {
    type Stream = Guarded;
    type Service = S;
    type Future = Accepting<S>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let limits = self.limits.clone();
        Box::pin(async move {
            let peer = stream.peer_addr()?.ip();
            let client = limits.admit(peer)?;
            let slot = match limits.slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    match tokio::time::timeout(
                        limits.head_timeout,
                        limits.slots.clone().acquire_owned(),
                    )
                    .await
                    {
                        Ok(Ok(p)) => p,
                        _ => return Err(limits.refuse("max_connections reached")),
                    }
                }
            };
            limits.metrics.connections_open.fetch_add(1, Relaxed);
            let _ = stream.set_nodelay(true);
            Ok((
                Guarded {
                    inner: stream,
                    idle: limits.idle_timeout,
                    write_stall: None,
                    _slot: slot,
                    _client: client,
                    limits: limits.clone(),
                },
                service,
            ))
        })
    }
}

/// A client connection holding its slots, ending when a write makes no progress for
/// `idle_timeout` (a client that stopped reading).
pub struct Guarded {
    inner: TcpStream,
    idle: Duration,
    write_stall: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: OwnedSemaphorePermit,
    _client: ClientSlot,
    limits: Arc<ConnLimits>,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.limits.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

impl Guarded {
    /// A write that made no progress: has it been stalled for `idle`?
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = self.idle;
        let timer = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if timer.as_mut().poll(cx).is_ready() {
            self.limits
                .metrics
                .connections_timed_out
                .fetch_add(1, Relaxed);
            return true;
        }
        false
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => {
                if self.stalled(cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )));
                }
                Poll::Pending
            }
            done => {
                self.write_stall = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => {
                if self.stalled(cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )));
                }
                Poll::Pending
            }
            done => {
                self.write_stall = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP/2 connection preface's first line (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Serves HTTP/1.1 only, on a plain or TLS listener: a connection that opens with the HTTP/2
/// preface is closed. (hyper's auto server, which axum-server runs with upgrades, would detect
/// the preface and speak HTTP/2 whatever it was told; an HTTP/2 connection idles with no head
/// to time, and carries many streams past the per-connection limits.) The first bytes read to
/// tell are replayed to the server.
#[derive(Clone)]
pub struct Http1Only<A> {
    inner: A,
    head_timeout: Duration,
}

impl<A> Http1Only<A> {
    pub fn new(inner: A, head_timeout: Duration) -> Http1Only<A> {
        Http1Only {
            inner,
            head_timeout,
        }
    }
}

impl<I, S, A> axum_server::accept::Accept<I, S> for Http1Only<A>
where
    A: axum_server::accept::Accept<I, S>,
    A::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
    A::Future: Send + 'static,
{
    type Stream = Rewind<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Rewind<A::Stream>, A::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        let timeout = self.head_timeout;
        Box::pin(async move {
            use tokio::io::AsyncReadExt as _;
            let (mut st, svc) = accepted.await?;
            let mut prefix = Vec::new();
            let sniff = async {
                let mut b = [0u8; 16];
                // Read while what came could still be the preface: one or two bytes tell an
                // HTTP/1 method apart.
                while prefix.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&prefix) {
                    let n = st.read(&mut b[..H2_PREFACE.len() - prefix.len()]).await?;
                    if n == 0 {
                        break;
                    }
                    prefix.extend_from_slice(&b[..n]);
                }
                Ok::<(), io::Error>(())
            };
            match tokio::time::timeout(timeout, sniff).await {
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within head_timeout",
                    ))
                }
                Ok(r) => r?,
            }
            if prefix.starts_with(H2_PREFACE) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "HTTP/2 is not served (HTTP/1.1 only)",
                ));
            }
            Ok((
                Rewind {
                    prefix,
                    pos: 0,
                    inner: st,
                },
                svc,
            ))
        })
    }
}

/// A stream with bytes already read put back in front.
pub struct Rewind<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let (start, end) = (self.pos, self.pos + n);
            buf.put_slice(&self.prefix[start..end]);
            self.pos = end;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client address the edge middleware settled on for a request (see [`client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// Who asked, as audit records and throttles name it: the TCP peer, or the forwarded client
/// when the peer is a trusted proxy (see [`client_ip`]). The one client extractor of every
/// listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client(pub String);

impl Client {
    pub fn of<B>(req: &axum::http::Request<B>) -> Client {
        Client(client_in(req.extensions()))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Client(client_in(&parts.extensions)))
    }
}

/// Whether the TCP peer itself is on this machine (credentials in clear are accepted only
/// from there).
pub fn peer_is_loopback(ext: &axum::http::Extensions) -> bool {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback())
}

/// The client of a request, as audit records and throttles name it.
pub fn client_in(ext: &axum::http::Extensions) -> String {
    if let Some(c) = ext.get::<ClientIp>() {
        return c.0.to_string();
    }
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The client a request comes from: the TCP peer, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not itself a trusted proxy (what a client
/// writes there itself is never believed).
pub fn client_ip(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !trusted.iter().any(|n| n.contains(peer)) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|a| !trusted.iter().any(|n| n.contains(*a)))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let other: IpAddr = "192.0.2.9".parse().unwrap();
        let trusted = vec![IpNet::parse("10.0.0.0/24").unwrap()];
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "203.0.113.1, 198.51.100.7".parse().unwrap(),
        );
        // From the load balancer: the nearest untrusted hop.
        assert_eq!(
            client_ip(lb, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the peer, whatever the header says.
        assert_eq!(client_ip(other, &h, &trusted), other);
        // A chain of trusted proxies is skipped.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "203.0.113.1, 10.0.0.7".parse().unwrap());
        assert_eq!(
            client_ip(lb, &h, &trusted),
            "203.0.113.1".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(lb, &HeaderMap::new(), &trusted), lb);
        // IPv4-mapped peers are the same peer.
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert!(trusted[0].contains(mapped));
    }
}
