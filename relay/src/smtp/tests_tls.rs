//! Through `serve` over real sockets: implicit TLS, the STARTTLS upgrade, TLS versions, the
//! connection limit and shutdown.

use super::tests::{relay, relay_with, PASS, RCPT, USER};
use super::*;
use base64::Engine;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

async fn listen(relay: &Arc<Relay>, kind: Kind) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (addr, tokio::spawn(serve(relay.clone(), l, kind)))
}

fn connector(relay: &Relay, tls12_only: bool) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(relay.tls.chain[0].clone()).unwrap();
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
}

struct Line<S>(BufReader<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> Line<S> {
    async fn reply(&mut self) -> Option<String> {
        let mut all = Vec::new();
        loop {
            let mut l = String::new();
            if self.0.read_line(&mut l).await.ok()? == 0 {
                return None;
            }
            let l = l.trim_end().to_string();
            let last = l.as_bytes().get(3) != Some(&b'-');
            all.push(l);
            if last {
                return Some(all.join("\n"));
            }
        }
    }

    async fn cmd(&mut self, c: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{c}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await.unwrap_or_default()
    }

    /// Logs in and sends one message to `RCPT`; returns the final reply.
    async fn login_and_send(&mut self) -> String {
        let ehlo = self.cmd("EHLO client").await;
        assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASS}"));
        assert_eq!(
            self.cmd(&format!("AUTH PLAIN {plain}")).await,
            "235 2.7.0 Authentication successful"
        );
        self.send_to_rcpt(USER).await
    }

    async fn send_to_rcpt(&mut self, from: &str) -> String {
        assert_eq!(
            self.cmd(&format!("MAIL FROM:<{from}>")).await,
            "250 2.1.0 Ok"
        );
        assert_eq!(self.cmd(&format!("RCPT TO:<{RCPT}>")).await, "250 2.1.5 Ok");
        assert!(self.cmd("DATA").await.starts_with("354"));
        let body = format!("{}.", super::tests::message(from, "hi\r\n"));
        self.cmd(&body).await
    }
}

#[tokio::test]
async fn implicit_tls_on_465_is_tls13_only() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let (addr, _server) = listen(&r, Kind::Submissions).await;

    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector(&r, false)
        .connect(server_name(), tcp)
        .await
        .unwrap();
    let mut c = Line(BufReader::new(tls));
    assert_eq!(c.reply().await.unwrap(), "220 [127.0.0.1] ESMTP relaybox");
    assert_eq!(c.login_and_send().await, "250 2.0.0 OK");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");

    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(connector(&r, true)
        .connect(server_name(), tcp)
        .await
        .is_err());
}

#[tokio::test]
async fn starttls_on_587_then_auth() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let (addr, _server) = listen(&r, Kind::Submission).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut c = Line(BufReader::new(tcp));
    c.reply().await.unwrap();
    assert!(c.cmd("EHLO client").await.contains("STARTTLS"));
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let tcp = c.0.into_inner();
    let tls = connector(&r, false)
        .connect(server_name(), tcp)
        .await
        .unwrap();
    let mut c = Line(BufReader::new(tls));
    // No new greeting after STARTTLS; the client starts with EHLO.
    assert_eq!(
        c.cmd("MAIL FROM:<x@y.org>").await,
        "503 5.5.1 Error: send HELO/EHLO first"
    );
    assert_eq!(c.login_and_send().await, "250 2.0.0 OK");
    assert_eq!(
        c.cmd("STARTTLS").await,
        "503 5.5.1 Error: TLS already active"
    );
}

#[tokio::test]
async fn starttls_on_587_refuses_tls12() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let (addr, _server) = listen(&r, Kind::Submission).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut c = Line(BufReader::new(tcp));
    c.reply().await.unwrap();
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let tcp = c.0.into_inner();
    assert!(connector(&r, true)
        .connect(server_name(), tcp)
        .await
        .is_err());
}

/// A connection to `addr` from the loopback address `src`.
async fn connect_from(src: [u8; 4], addr: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((src, 0))).unwrap();
    s.connect(addr).await.unwrap()
}

/// Port 25 after EHLO, STARTTLS (TLS 1.2) and EHLO again, from the loopback address `src`.
async fn mx_client(
    r: &Relay,
    addr: SocketAddr,
    src: [u8; 4],
) -> Line<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut c = Line(BufReader::new(connect_from(src, addr).await));
    c.reply().await.unwrap();
    assert!(c.cmd("EHLO mx.example.org").await.contains("STARTTLS"));
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let tcp = c.0.into_inner();
    let tls = connector(r, true)
        .connect(server_name(), tcp)
        .await
        .unwrap();
    let mut c = Line(BufReader::new(tls));
    assert!(c.cmd("EHLO mx.example.org").await.starts_with("250"));
    c
}

/// Issue 14 item 1: on port 25 an address-literal From was taken without looking at who sent
/// it, so anyone could write as a local user of an IP-literal relay (`user@[relay ip]`) or as
/// any other IP-literal relay. Now the literal must be the client's address, and our own
/// domain is refused however the client connects.
#[tokio::test]
async fn mx_refuses_literal_senders_that_are_not_the_client_and_our_own_domain() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let (addr, _server) = listen(&r, Kind::Mx).await;
    let mut c = mx_client(&r, addr, [127, 0, 0, 9]).await;
    assert_eq!(
        c.send_to_rcpt("someone@[10.6.6.6]").await,
        "554 5.7.1 From domain [10.6.6.6] is not the address this message came from"
    );
    // A local user of this relay ([127.0.0.1]), even from 127.0.0.1 itself.
    let mut c = mx_client(&r, addr, [127, 0, 0, 1]).await;
    assert_eq!(
        c.send_to_rcpt(USER).await,
        "554 5.7.1 Mail from [127.0.0.1] is only accepted from authenticated users of this relay"
    );
    assert!(super::tests::inbox(&r, RCPT).await.is_empty());
    // The client's own literal passes.
    let mut c = mx_client(&r, addr, [127, 0, 0, 9]).await;
    assert_eq!(c.send_to_rcpt("someone@[127.0.0.9]").await, "250 2.0.0 OK");
}

#[tokio::test]
async fn mx_on_25_accepts_tls12_after_starttls() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let (addr, _server) = listen(&r, Kind::Mx).await;
    let tcp = connect_from([127, 0, 0, 9], addr).await;
    let mut c = Line(BufReader::new(tcp));
    c.reply().await.unwrap();
    assert!(c.cmd("EHLO mx.example.org").await.contains("STARTTLS"));
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let tcp = c.0.into_inner();
    let tls = connector(&r, true)
        .connect(server_name(), tcp)
        .await
        .unwrap();
    let mut c = Line(BufReader::new(tls));
    let ehlo = c.cmd("EHLO mx.example.org").await;
    assert!(
        !ehlo.contains("AUTH") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    // An IP-literal sender: no DKIM signature needed (reference §3.5 step 7).
    assert_eq!(c.send_to_rcpt("someone@[127.0.0.9]").await, "250 2.0.0 OK");
}

#[tokio::test]
async fn connections_over_the_limit_get_421() {
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |c| c.max_smtp_connections = 1);
    let (addr, _server) = listen(&r, Kind::Mx).await;
    let mut first = Line(BufReader::new(TcpStream::connect(addr).await.unwrap()));
    assert!(first.reply().await.unwrap().starts_with("220 "));
    let mut second = Line(BufReader::new(TcpStream::connect(addr).await.unwrap()));
    assert_eq!(
        second.reply().await.unwrap(),
        "421 4.7.0 [127.0.0.1] Too many connections, try again later"
    );
    assert_eq!(second.reply().await, None);
    assert_eq!(first.cmd("QUIT").await, "221 2.0.0 Bye");
    assert_eq!(first.reply().await, None);
    // The permit comes back when the session ends (just after it closed the socket).
    for _ in 0..50 {
        let mut third = Line(BufReader::new(TcpStream::connect(addr).await.unwrap()));
        if third.reply().await.unwrap().starts_with("220 ") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the permit never came back");
}

#[tokio::test]
async fn shutdown_stops_the_listener_and_ends_idle_sessions() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let (addr, server) = listen(&r, Kind::Submission).await;
    let mut c = Line(BufReader::new(TcpStream::connect(addr).await.unwrap()));
    c.reply().await.unwrap();
    r.shutdown.trigger();
    assert_eq!(
        c.reply().await.unwrap(),
        "421 4.3.2 Service shutting down, closing transmission channel"
    );
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
}

#[tokio::test]
async fn maintenance_gets_421_until_it_is_turned_off_and_survives_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |_| {});
    let (addr, _server) = listen(&r, Kind::Mx).await;
    r.admin.set_maintenance(true).unwrap();
    let mut c = Line(BufReader::new(TcpStream::connect(addr).await.unwrap()));
    assert_eq!(
        c.reply().await.unwrap(),
        "421 4.3.2 [127.0.0.1] In maintenance, try again later"
    );
    assert_eq!(c.reply().await, None);
    // The switch is a file in the data directory: a relay started on it is in maintenance too.
    let (again, _) = crate::admin::Admin::open(&r.cfg).unwrap();
    assert!(again.maintenance());
    r.admin.set_maintenance(false).unwrap();
    let mut c = Line(BufReader::new(TcpStream::connect(addr).await.unwrap()));
    assert!(c.reply().await.unwrap().starts_with("220 "));
}
