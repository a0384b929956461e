//! Shared plumbing for listeners: the shutdown signal, the accept loop and the TLS handshake
//! every listener uses, connection ids, and a stream type that is either plain TCP (before
//! STARTTLS) or TLS.

use crate::tls::lean::LeanTls;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

/// One signal that every task listens to; set once, never cleared.
#[derive(Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            tx: watch::channel(false).0,
        }
    }
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }
    /// Completes once shutdown has been triggered.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// A listener on the IPv6 address `addr` that takes IPv6 only (IPV6_V6ONLY), so that an IPv4
/// listener can have the same port.
pub fn bind_v6only(addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
    use nix::sys::socket::{setsockopt, sockopt};
    let s = tokio::net::TcpSocket::new_v6()?;
    setsockopt(&s, sockopt::Ipv6V6Only, &true).map_err(io::Error::from)?;
    // as TcpListener::bind does: a restart must not wait for old connections' TIME_WAIT
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

/// Whether this host has IPv6 at all (a kernel booted with `ipv6.disable=1` has not).
pub fn ipv6_available() -> bool {
    std::net::UdpSocket::bind((std::net::Ipv6Addr::LOCALHOST, 0)).is_ok()
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A process-unique connection id for log spans.
pub fn next_conn_id() -> u64 {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// The next connection from `accept` (a listener's `accept`, TCP or Unix), or `None` on
/// shutdown. Accept errors never end a listener: running out of descriptors (EMFILE/ENFILE) or
/// memory backs off, up to a second, until connections end and free some; a connection that
/// died in the backlog is skipped. Connection limits are the caller's (`limits`).
pub async fn accept<T, F>(shutdown: &Shutdown, mut accept: impl FnMut() -> F) -> Option<T>
where
    F: std::future::Future<Output = io::Result<T>>,
{
    let mut backoff = Duration::from_millis(10);
    loop {
        let r = tokio::select! {
            r = accept() => r,
            _ = shutdown.wait() => return None,
        };
        match r {
            Ok(x) => return Some(x),
            Err(e) if is_resource_error(&e) => {
                tracing::warn!("accept failed: {e}; retrying in {} ms", backoff.as_millis());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::debug!("accept failed: {e}");
                tokio::task::yield_now().await;
            }
        }
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The errno values we back off on (from nix, to avoid a direct libc dependency).
mod libc_errno {
    use nix::errno::Errno;
    pub const EMFILE: i32 = Errno::EMFILE as i32;
    pub const ENFILE: i32 = Errno::ENFILE as i32;
    pub const ENOBUFS: i32 = Errno::ENOBUFS as i32;
    pub const ENOMEM: i32 = Errno::ENOMEM as i32;
}

/// Why a server-side TLS handshake gave no stream; shown after "TLS handshake ".
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("failed: {0}")]
    Failed(io::Error),
    #[error("timed out")]
    TimedOut,
}

/// A TLS handshake (`handshake`, e.g. `TlsAcceptor::accept`), abandoned after `timeout` so a
/// client that stalls in it does not hold its connection slot.
pub async fn handshake<T>(
    timeout: Duration,
    handshake: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, HandshakeError> {
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Err(_) => Err(HandshakeError::TimedOut),
    }
}

/// The server side of TLS on `tcp` with `acceptor`, within `timeout`.
pub async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<Conn, HandshakeError> {
    // Boxed: the handshake state (a whole rustls connection) would otherwise stay inline, as
    // dead weight, in the future of every connection for its whole life.
    handshake(timeout, Box::pin(acceptor.accept(tcp)))
        .await
        .map(|s| Conn::Tls(Box::new(s)))
}

/// The server side of TLS on `tcp` with `config`, within `timeout`, as a [`LeanTls`] stream: for
/// the connections that wait for days (IMAP), since it frees its buffers whenever they are empty.
pub async fn accept_lean_tls(
    config: &std::sync::Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<Conn, HandshakeError> {
    // Boxed for the same reason as in `accept_tls`.
    let accept = Box::pin(LeanTls::accept(config.clone(), tcp, Vec::new()));
    handshake(timeout, accept)
        .await
        .map(|s| Conn::Lean(Box::new(s)))
}

/// A client connection: plain until STARTTLS, then TLS. Boxed TLS keeps the enum small, which
/// matters with thousands of idle IMAP connections.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Lean(Box<LeanTls>),
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Conn::Plain(_))
    }

    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
            Conn::Lean(s) => s.tcp(),
        }
    }

    /// The client's address; IPv4 clients of a dual-stack listener as IPv4.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.tcp().peer_addr().ok().map(|a| a.ip().to_canonical())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Lean(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Lean(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Lean(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Lean(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Is `ip` a destination outbound delivery may connect to on its own (issue 14: mail to
/// `x@[127.0.0.56]` made the relay connect to its own loopback)? Never loopback, link-local,
/// unspecified, multicast, broadcast or "this network" addresses; and for a relay with a domain
/// name, whose peers are on the internet, not the private, shared (CGNAT) or unique-local ranges
/// either. An IP-literal relay may talk to private addresses: on a LAN its peers are there.
pub fn public_destination(ip: std::net::IpAddr, literal_relay: bool) -> bool {
    use std::net::IpAddr;
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let never = v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || o[0] >= 240;
            let private = v4.is_private() || crate::dns::reach::is_cgnat(&v4);
            !never && (literal_relay || !private)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let never = v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xffc0) == 0xfe80;
            let private = (s[0] & 0xfe00) == 0xfc00;
            !never && (literal_relay || !private)
        }
    }
}

#[cfg(test)]
mod destination_tests {
    use super::public_destination;

    #[test]
    fn loopback_link_local_and_friends_are_never_destinations() {
        for ip in [
            "127.0.0.56",
            "127.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            let ip = ip.parse().unwrap();
            assert!(!public_destination(ip, true), "{ip}");
            assert!(!public_destination(ip, false), "{ip}");
        }
    }

    #[test]
    fn private_ranges_only_for_ip_literal_relays() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.20",
            "100.64.0.1",
            "fd00::1",
        ] {
            let ip = ip.parse().unwrap();
            assert!(public_destination(ip, true), "{ip}");
            assert!(!public_destination(ip, false), "{ip}");
        }
        for ip in ["192.0.2.1", "8.8.8.8", "2001:db8::1", "172.32.0.1"] {
            let ip = ip.parse().unwrap();
            assert!(public_destination(ip, true), "{ip}");
            assert!(public_destination(ip, false), "{ip}");
        }
    }
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn out_of_descriptors_backs_off_then_accepts_and_shutdown_ends_the_loop() {
        let shutdown = Shutdown::new();
        let mut calls = 0;
        let start = tokio::time::Instant::now();
        let got = accept(&shutdown, || {
            calls += 1;
            let n = calls;
            async move {
                match n {
                    1..=3 => Err(io::Error::from_raw_os_error(libc_errno::EMFILE)),
                    4 => Err(io::Error::from(io::ErrorKind::ConnectionAborted)),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(got, Some(5));
        // 10 + 20 + 40 ms of backoff for the three EMFILEs, none for the aborted connection.
        assert_eq!(start.elapsed(), Duration::from_millis(70));

        shutdown.trigger();
        let got = accept(&shutdown, std::future::pending::<io::Result<()>>).await;
        assert_eq!(got, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_handshake_times_out() {
        let stalled = std::future::pending::<io::Result<()>>();
        let r = handshake(Duration::from_secs(30), stalled).await;
        assert!(matches!(r, Err(HandshakeError::TimedOut)));
        let failed = async { Err::<(), _>(io::Error::other("bad hello")) };
        let e = handshake(Duration::from_secs(30), failed)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "failed: bad hello");
    }
}
