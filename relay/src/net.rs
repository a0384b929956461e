//! Shared plumbing for listeners: the shutdown signal, connection ids, and a stream type that is
//! either plain TCP (before STARTTLS) or TLS.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
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

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A process-unique connection id for log spans.
pub fn next_conn_id() -> u64 {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// A client connection: plain until STARTTLS, then TLS. Boxed TLS keeps the enum small, which
/// matters with thousands of idle IMAP connections.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// The client's address; IPv4 clients of a dual-stack listener as IPv4.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        let tcp = match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        };
        tcp.peer_addr().ok().map(|a| a.ip().to_canonical())
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
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
            let private = v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1]));
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
