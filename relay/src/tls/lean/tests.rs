//! `LeanTls` against tokio-rustls' client over loopback TCP.

use super::LeanTls;
use crate::config::Config;
use crate::tls::{CertStore, TlsConfigs};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, ServerConfig};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

struct Pki {
    configs: TlsConfigs,
    _dir: tempfile::TempDir,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::with_domain("[127.0.0.1]", dir.path()).unwrap();
    let (cert, key) = crate::tls::make_self_signed(&cfg).unwrap();
    let chain = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let store = Arc::new(CertStore::fixed(chain, key).unwrap());
    Pki {
        configs: TlsConfigs::from_store(store).unwrap(),
        _dir: dir,
    }
}

fn connector(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.configs.chain[0].clone()).unwrap();
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

fn tls13() -> Vec<&'static rustls::SupportedProtocolVersion> {
    vec![&rustls::version::TLS13]
}

fn name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
}

/// A connected pair of TCP sockets: (client, server).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

/// Runs the server's handshake beside the client's.
async fn handshake<C: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ServerConfig>,
    connector: &TlsConnector,
    client: C,
    server: TcpStream,
) -> (tokio_rustls::client::TlsStream<C>, LeanTls) {
    let (c, s) = tokio::join!(
        connector.connect(name(), client),
        LeanTls::accept(config, server, Vec::new())
    );
    (c.unwrap(), s.unwrap())
}

const WAIT: Duration = Duration::from_secs(10);

/// TCP that writes at most a few bytes per call, so that every record (handshake included)
/// reaches the server in pieces.
struct Trickle(TcpStream);

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // A pause per piece so the server sees them apart.
        std::thread::sleep(Duration::from_micros(200));
        let n = buf.len().min(3);
        Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn tls13_with_alpn_then_data_both_ways() {
    let pki = pki();
    let (c, s) = pair().await;
    let conn = connector(&pki, &tls13(), &[b"imap"]);
    let (mut c, mut s) = handshake(pki.configs.client_config.clone(), &conn, c, s).await;
    assert_eq!(s.alpn_protocol(), Some(&b"imap"[..]));
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    s.write_all(b"* OK hello\r\n").await.unwrap();
    s.flush().await.unwrap();
    let mut got = [0u8; 12];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"* OK hello\r\n");
    c.write_all(b"a NOOP\r\n").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 8];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"a NOOP\r\n");
}

#[tokio::test]
async fn tls12_works_where_the_config_allows_it() {
    let pki = pki();
    let (c, s) = pair().await;
    let conn = connector(&pki, &[&rustls::version::TLS12], &[]);
    let (mut c, mut s) = handshake(pki.configs.https_config.clone(), &conn, c, s).await;
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    c.write_all(b"ping").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    s.write_all(b"pong").await.unwrap();
    s.flush().await.unwrap();
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pong");
    // The client config of 993 is TLS 1.3 only.
    let (c, s) = pair().await;
    let (c, s) = tokio::join!(
        conn.connect(name(), c),
        LeanTls::accept(pki.configs.client_config.clone(), s, Vec::new())
    );
    assert!(c.is_err() && s.is_err());
}

#[tokio::test]
async fn a_reconnecting_client_resumes_its_session() {
    let pki = pki();
    let conn = connector(&pki, &tls13(), &[b"imap"]);
    for expect in [HandshakeKind::Full, HandshakeKind::Resumed] {
        let (c, s) = pair().await;
        let (mut c, mut s) = handshake(pki.configs.client_config.clone(), &conn, c, s).await;
        // The ticket arrives after the handshake; the client reads it with the first data.
        s.write_all(b"x").await.unwrap();
        s.flush().await.unwrap();
        let mut got = [0u8; 1];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(c.get_ref().1.handshake_kind(), Some(expect));
    }
}

#[tokio::test]
async fn records_that_arrive_in_pieces() {
    let pki = pki();
    let (c, s) = pair().await;
    let conn = connector(&pki, &tls13(), &[b"imap"]);
    let (mut c, mut s) = handshake(pki.configs.client_config.clone(), &conn, Trickle(c), s).await;
    let msg: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let send = async {
        c.write_all(&msg).await.unwrap();
        c.flush().await.unwrap();
        c
    };
    let recv = async {
        let mut got = vec![0u8; msg.len()];
        // Small reads: a record's rest waits in the stream for the next one.
        for piece in got.chunks_mut(7) {
            s.read_exact(piece).await.unwrap();
        }
        got
    };
    let (_c, got) = tokio::time::timeout(WAIT, async { tokio::join!(send, recv) })
        .await
        .unwrap();
    assert!(got == msg);
}

#[tokio::test]
async fn large_writes_and_reads_go_through_whole() {
    let pki = pki();
    let (c, s) = pair().await;
    let conn = connector(&pki, &tls13(), &[b"imap"]);
    let (c, s) = handshake(pki.configs.client_config.clone(), &conn, c, s).await;
    let (mut cr, mut cw) = tokio::io::split(c);
    let (mut sr, mut sw) = tokio::io::split(s);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let down = async {
        sw.write_all(&big).await.unwrap();
        sw.flush().await.unwrap();
    };
    let down_recv = async {
        let mut got = vec![0u8; big.len()];
        cr.read_exact(&mut got).await.unwrap();
        got
    };
    let up = async {
        cw.write_all(&big).await.unwrap();
        cw.flush().await.unwrap();
    };
    let up_recv = async {
        let mut got = vec![0u8; big.len()];
        sr.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), a, (), b) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(down, down_recv, up, up_recv)
    })
    .await
    .unwrap();
    assert!(a == big && b == big);
}

#[tokio::test]
async fn close_notify_both_ways() {
    let pki = pki();
    let (c, s) = pair().await;
    let conn = connector(&pki, &tls13(), &[b"imap"]);
    let (mut c, mut s) = handshake(pki.configs.client_config.clone(), &conn, c, s).await;
    // The client's close_notify is a clean end of input for the server.
    c.write_all(b"bye").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    // Ours reaches the client, which then sees a clean end too (rustls reports an end without
    // close_notify as an error).
    s.write_all(b"* BYE").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"* BYE");
}

#[tokio::test]
async fn garbage_instead_of_a_client_hello_is_a_clean_error() {
    let pki = pki();
    let (mut c, s) = pair().await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = LeanTls::accept(pki.configs.client_config.clone(), s, Vec::new()).await;
    let e = r.err().expect("no TLS");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    // A hello cut short is an end, not a hang.
    let (mut c, s) = pair().await;
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    drop(c);
    let r = LeanTls::accept(pki.configs.client_config.clone(), s, Vec::new()).await;
    assert_eq!(r.err().unwrap().kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn garbage_after_the_handshake_is_a_clean_error() {
    let pki = pki();
    let (c, s) = pair().await;
    let conn = connector(&pki, &tls13(), &[b"imap"]);
    let (mut c, mut s) = handshake(pki.configs.client_config.clone(), &conn, c, s).await;
    // A well-formed record header over bytes that do not decrypt, then more junk.
    let mut junk = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    junk.extend(std::iter::repeat_n(0xA5, 0x40 + 100));
    c.get_mut().0.write_all(&junk).await.unwrap();
    let mut buf = [0u8; 64];
    let e = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    // The error stays; writing fails too.
    assert!(s.read(&mut buf).await.is_err());
    assert!(s.write_all(b"x").await.is_err());
    // The client got an alert, or at least the connection is unusable.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, c.read_to_end(&mut rest)).await;
    assert!(matches!(r, Ok(Err(_)) | Ok(Ok(0))), "{r:?}");
}

/// What issue 18 is about: between commands (IDLE) the stream holds no buffer at all, after
/// reads, writes, partial records and a large response.
#[tokio::test]
async fn waiting_for_input_holds_no_buffers() {
    let pki = pki();
    let (c, s) = pair().await;
    let conn = connector(&pki, &tls13(), &[b"imap"]);
    let (mut c, mut s) = handshake(pki.configs.client_config.clone(), &conn, c, s).await;
    assert_eq!(s.buffered_capacity(), (0, 0, 0));
    c.write_all(b"a IDLE\r\n").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 8];
    s.read_exact(&mut got).await.unwrap();
    s.write_all(&vec![b'x'; 100_000]).await.unwrap();
    s.write_all(b"+ idling\r\n").await.unwrap();
    s.flush().await.unwrap();
    let mut got = vec![0u8; 100_010];
    c.read_exact(&mut got).await.unwrap();
    // A command split over two records, the second one late.
    c.write_all(b"DO").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 2];
    s.read_exact(&mut got).await.unwrap();
    let mut more = [0u8; 4];
    let wait = tokio::time::timeout(Duration::from_millis(50), s.read_exact(&mut more)).await;
    assert!(wait.is_err(), "no input yet");
    assert_eq!(s.buffered_capacity(), (0, 0, 0));
    c.write_all(b"NE\r\n").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"NE\r\n");
    assert_eq!(s.buffered_capacity(), (0, 0, 0));
}
