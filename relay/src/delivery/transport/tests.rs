//! The transport against our own relay over loopback sockets: `/mxdeliv`, the SMTP fallback,
//! refusals, unreachable hosts, a fake SMTP server without STARTTLS, and (with dnsmasq) a named
//! domain with strict verification against a private CA. Plus the pure parsers.

use super::https::{classify, host_header, Outcome};
use super::smtp::{dot_stuff, parse_reply, parse_reply_text, SmtpReply};
use super::Transport;
use crate::config::Config;
use crate::dns::Dns;
use crate::policy::{testmsg, Reply};
use crate::sync::LockExt;
use crate::Relay;
use hyper::StatusCode;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

// ---- pure parts ----

#[test]
fn single_and_multiline_replies_parse() {
    let (r, n) = parse_reply(b"220 mx.example.org ESMTP\r\nrest")
        .unwrap()
        .unwrap();
    assert_eq!(r.code, 220);
    assert_eq!(r.lines, vec!["mx.example.org ESMTP"]);
    assert_eq!(n, 26);

    let ehlo = b"250-mx.example.org\r\n250-SIZE 1000\r\n250-starttls\r\n250 8BITMIME\r\n";
    let (r, n) = parse_reply(ehlo).unwrap().unwrap();
    assert_eq!(n, ehlo.len());
    assert_eq!(r.code, 250);
    assert_eq!(r.lines.len(), 4);
    assert!(r.has_capability("STARTTLS"));
    assert!(r.has_capability("SIZE"));
    assert!(!r.has_capability("PIPELINING"));
    // The greeting line is not a capability.
    let r = SmtpReply {
        code: 250,
        lines: vec!["STARTTLS".into()],
    };
    assert!(!r.has_capability("STARTTLS"));

    // A bare code, a bare LF.
    let (r, _) = parse_reply(b"354\n").unwrap().unwrap();
    assert_eq!((r.code, r.lines.clone()), (354, vec![String::new()]));
    assert_eq!(
        parse_reply(b"550-5.1.1 no\r\n550 5.1.1 such user\r\n")
            .unwrap()
            .unwrap()
            .0
            .to_reply(),
        Reply::new(550, "5.1.1 no 5.1.1 such user")
    );
}

#[test]
fn incomplete_replies_ask_for_more() {
    assert_eq!(parse_reply(b"").unwrap(), None);
    assert_eq!(parse_reply(b"250 OK").unwrap(), None);
    assert_eq!(parse_reply(b"250-first\r\n250 sec").unwrap(), None);
}

#[test]
fn malformed_replies_are_errors() {
    for bad in [
        &b"hello\r\n"[..],
        b"25 short\r\n",
        b"2500 x\r\n",
        b"099 low\r\n",
        b"700 high\r\n",
        b"250-a\r\n251 b\r\n",
        b"250_x\r\n",
    ] {
        assert!(
            parse_reply(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(parse_reply(&vec![b'2'; 5000]).is_err());
    let many: Vec<u8> = b"250-x\r\n".repeat(200);
    assert!(parse_reply(&many).is_err());
}

#[test]
fn reply_text_from_http_bodies() {
    assert_eq!(
        parse_reply_text("554 5.7.1 No DKIM signature found"),
        Some(Reply::new(554, "5.7.1 No DKIM signature found"))
    );
    assert_eq!(
        parse_reply_text("451 4.3.0 later\r\n"),
        Some(Reply::new(451, "4.3.0 later"))
    );
    assert_eq!(parse_reply_text("<html>Not Found</html>"), None);
    assert_eq!(parse_reply_text(""), None);
}

#[test]
fn mxdeliv_answers_are_classified() {
    assert!(matches!(
        classify(StatusCode::OK, "250 2.0.0 OK"),
        Outcome::Delivered
    ));
    assert!(matches!(
        classify(StatusCode::BAD_REQUEST, "550 5.1.1 Recipient address rejected: no such user"),
        Outcome::Refused(r) if r.code == 550
    ));
    // A 400 without a 5xx reply is not a final refusal.
    assert!(matches!(
        classify(StatusCode::BAD_REQUEST, "bad request"),
        Outcome::Failed { temp: None, .. }
    ));
    for s in [404, 405, 501] {
        assert!(matches!(
            classify(StatusCode::from_u16(s).unwrap(), "nope"),
            Outcome::Unsupported(x) if x == s
        ));
    }
    assert!(matches!(
        classify(StatusCode::INTERNAL_SERVER_ERROR, "451 4.3.0 Temporary lookup failure"),
        Outcome::Failed { temp: Some(r), .. } if r.code == 451
    ));
    assert!(matches!(
        classify(
            StatusCode::PAYLOAD_TOO_LARGE,
            "552 Message exceeds maximum size"
        ),
        Outcome::Failed { temp: None, .. }
    ));
}

#[test]
fn host_headers() {
    assert_eq!(host_header("mx.b.test", 443), "mx.b.test");
    assert_eq!(host_header("mx.b.test", 8443), "mx.b.test:8443");
    assert_eq!(host_header("[127.0.0.2]", 443), "127.0.0.2");
    assert_eq!(host_header("[IPv6:::1]", 10443), "[::1]:10443");
}

#[test]
fn dot_stuffing_and_line_ends() {
    assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
    assert_eq!(dot_stuff(b".\nx\ny"), b"..\r\nx\r\ny\r\n.\r\n");
    assert_eq!(dot_stuff(b"a\rb\r\n\r\n"), b"a\r\nb\r\n\r\n.\r\n");
    assert_eq!(dot_stuff(b""), b".\r\n");
    assert_eq!(dot_stuff(b"x.y\r\n..z"), b"x.y\r\n...z\r\n.\r\n");
}

#[test]
fn verification_only_for_names() {
    assert!(Transport::verified("b.test", "mx.b.test"));
    assert!(!Transport::verified("[127.0.0.2]", "[127.0.0.2]"));
    assert!(!Transport::verified("_b.test", "_b.test"));
    assert!(!Transport::verified("b.test", "_mx.b.test"));
}

// ---- over sockets ----

const SENDER: &str = "alice@[127.0.0.1]";

/// A receiving relay listening on `ip`; each service on its own port (0 = off).
struct Receiver {
    relay: Arc<Relay>,
    https: u16,
    smtp: u16,
    _dir: tempfile::TempDir,
}

async fn receiver(
    ip: [u8; 4],
    domain: &str,
    https: bool,
    smtp: bool,
    tls: Option<(PathBuf, PathBuf)>,
) -> Receiver {
    let dir = tempfile::tempdir().unwrap();
    let domain = domain.to_string();
    let relay = crate::testkit::test_relay(dir.path(), move |cfg| {
        cfg.mail_domain = domain;
        if let Some((c, k)) = tls {
            cfg.tls_cert = Some(c);
            cfg.tls_key = Some(k);
        }
    })
    .unwrap();
    let mut ports = [free_port(ip), free_port(ip)];
    if https {
        let l = TcpListener::bind((IpAddr::from(ip), 0)).await.unwrap();
        ports[0] = l.local_addr().unwrap().port();
        tokio::spawn(crate::alpn::serve(relay.clone(), l, true));
    }
    if smtp {
        let l = TcpListener::bind((IpAddr::from(ip), 0)).await.unwrap();
        ports[1] = l.local_addr().unwrap().port();
        tokio::spawn(crate::smtp::serve(relay.clone(), l, crate::smtp::Kind::Mx));
    }
    Receiver {
        relay,
        https: ports[0],
        smtp: ports[1],
        _dir: dir,
    }
}

/// A port on `ip` where nobody listens.
fn free_port(ip: [u8; 4]) -> u16 {
    crate::testkit::free_port(IpAddr::from(ip))
}

fn sender_cfg(dir: &Path, https: u16, smtp: u16) -> Config {
    let mut cfg = crate::testkit::test_config(dir).unwrap();
    cfg.outbound_https_port = https;
    cfg.outbound_smtp_port = smtp;
    cfg.allowed_destination_networks = vec![loopback_net()];
    cfg
}

/// The receivers of these tests listen on 127.0.0.x, which a relay only delivers to when told.
fn loopback_net() -> crate::config::IpNet {
    crate::config::IpNet::parse("127.0.0.0/8").unwrap()
}

fn transport(cfg: Config) -> Transport {
    let dns = Dns::new(&cfg).unwrap();
    Transport::new(Arc::new(cfg), dns).unwrap()
}

async fn add_user(r: &Relay, addr: &str) {
    r.accounts.login(addr, "password1").await.unwrap();
}

async fn inbox_len(r: &Relay, addr: &str) -> usize {
    crate::testkit::inbox(r, addr).await.len()
}

fn msg(to: &str) -> bytes::Bytes {
    testmsg::encrypted(SENDER, to).into()
}

fn codes(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.code).collect()
}

#[tokio::test]
async fn https_delivery_lands_in_the_inbox_and_reuses_the_connection() {
    let rx = receiver([127, 0, 0, 2], "[127.0.0.2]", true, true, None).await;
    let (a, b) = ("rcptuser1@[127.0.0.2]", "rcptuser2@[127.0.0.2]");
    add_user(&rx.relay, a).await;
    add_user(&rx.relay, b).await;
    let d = tempfile::tempdir().unwrap();
    let t = transport(sender_cfg(d.path(), rx.https, rx.smtp));
    let rcpts = vec![a.to_string(), b.to_string()];
    let replies = t.deliver("[127.0.0.2]", SENDER, &rcpts, msg(a)).await;
    assert_eq!(replies, vec![Reply::new(250, "OK (HTTPS)"); 2]);
    assert_eq!(inbox_len(&rx.relay, a).await, 1);
    assert_eq!(inbox_len(&rx.relay, b).await, 1);
    assert_eq!(t.pool.idle_count(), 1);
    // The second delivery goes over the pooled connection; the null sender works too.
    let replies = t.deliver("[127.0.0.2]", "", &rcpts[..1], msg(a)).await;
    assert_eq!(replies, vec![Reply::new(250, "OK (HTTPS)")]);
    assert_eq!(inbox_len(&rx.relay, a).await, 2);
    assert!(!t.is_https_unsupported("[127.0.0.2]"));
}

/// A TCP relay on `ip` in front of `target` that counts the connections it accepts.
async fn counting_proxy(
    ip: [u8; 4],
    target: SocketAddr,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind((IpAddr::from(ip), 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
    (port, count)
}

#[tokio::test]
async fn consecutive_https_deliveries_share_one_connection() {
    let ip = [127, 0, 0, 10];
    let rx = receiver(ip, "[127.0.0.10]", true, false, None).await;
    let a = "rcptuser1@[127.0.0.10]";
    add_user(&rx.relay, a).await;
    let (port, count) = counting_proxy(ip, SocketAddr::from((ip, rx.https))).await;
    let d = tempfile::tempdir().unwrap();
    let t = transport(sender_cfg(d.path(), port, rx.smtp));
    for _ in 0..3 {
        let replies = t
            .deliver("[127.0.0.10]", SENDER, &[a.to_string()], msg(a))
            .await;
        assert_eq!(replies, vec![Reply::new(250, "OK (HTTPS)")]);
    }
    assert_eq!(inbox_len(&rx.relay, a).await, 3);
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unknown_and_mixed_recipients_get_their_own_answers_over_https() {
    let rx = receiver([127, 0, 0, 2], "[127.0.0.2]", true, true, None).await;
    let a = "rcptuser1@[127.0.0.2]";
    add_user(&rx.relay, a).await;
    let d = tempfile::tempdir().unwrap();
    let t = transport(sender_cfg(d.path(), rx.https, rx.smtp));
    let unknown = "nosuchusr@[127.0.0.2]".to_string();
    let replies = t
        .deliver(
            "[127.0.0.2]",
            SENDER,
            std::slice::from_ref(&unknown),
            msg(a),
        )
        .await;
    assert_eq!(codes(&replies), vec![550]);
    let rcpts = vec![
        unknown.clone(),
        a.to_string(),
        "nosuchus2@[127.0.0.2]".into(),
    ];
    let replies = t.deliver("[127.0.0.2]", SENDER, &rcpts, msg(a)).await;
    assert_eq!(codes(&replies), vec![550, 250, 550], "{replies:?}");
    assert_eq!(replies[1], Reply::new(250, "OK (HTTPS)"));
    assert_eq!(inbox_len(&rx.relay, a).await, 1);
    // Refused at the gate: plain text is a final 523 for the one recipient.
    let plain: bytes::Bytes = testmsg::plain(SENDER, a).into();
    let replies = t.deliver("[127.0.0.2]", SENDER, &rcpts[1..2], plain).await;
    assert_eq!(codes(&replies), vec![523], "{replies:?}");
    // None of this made the host look like one without /mxdeliv.
    assert!(!t.is_https_unsupported("[127.0.0.2]"));
}

#[tokio::test]
async fn without_https_smtp_delivers_and_the_host_is_remembered() {
    let rx = receiver([127, 0, 0, 3], "[127.0.0.3]", false, true, None).await;
    let a = "rcptuser1@[127.0.0.3]";
    add_user(&rx.relay, a).await;
    let d = tempfile::tempdir().unwrap();
    let t = transport(sender_cfg(d.path(), rx.https, rx.smtp));
    let rcpts = vec![a.to_string(), "nosuchusr@[127.0.0.3]".to_string()];
    let replies = t.deliver("[127.0.0.3]", SENDER, &rcpts, msg(a)).await;
    assert_eq!(replies[0], Reply::new(250, "OK (SMTP)"));
    assert_eq!(replies[1].code, 550, "{replies:?}");
    assert_eq!(inbox_len(&rx.relay, a).await, 1);
    assert!(t.is_https_unsupported("[127.0.0.3]"));
    // Next time straight to SMTP; a refusal at DATA (plain text) is the remote's reply as is.
    let plain: bytes::Bytes = testmsg::plain(SENDER, a).into();
    let replies = t.deliver("[127.0.0.3]", "", &rcpts[..1], plain).await;
    assert_eq!(codes(&replies), vec![523], "{replies:?}");
    // Only unknown recipients: no DATA at all.
    let replies = t.deliver("[127.0.0.3]", SENDER, &rcpts[1..], msg(a)).await;
    assert_eq!(codes(&replies), vec![550]);
    assert_eq!(inbox_len(&rx.relay, a).await, 1);
}

/// A fake HTTPS server with the receiver's certificate that answers every request with
/// `status` and `body`, then closes the connection.
async fn fake_https(rx: &Receiver, ip: [u8; 4], status: &'static str, body: &'static str) -> u16 {
    let l = TcpListener::bind((IpAddr::from(ip), 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let acceptor = rx.relay.tls.https.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_host_without_mxdeliv_is_remembered_and_smtp_used() {
    let ip = [127, 0, 0, 8];
    let rx = receiver(ip, "[127.0.0.8]", false, true, None).await;
    let a = "rcptuser1@[127.0.0.8]";
    add_user(&rx.relay, a).await;
    let https = fake_https(&rx, ip, "404 Not Found", "Not Found").await;
    let d = tempfile::tempdir().unwrap();
    let t = transport(sender_cfg(d.path(), https, rx.smtp));
    let replies = t
        .deliver("[127.0.0.8]", SENDER, &[a.to_string()], msg(a))
        .await;
    assert_eq!(replies, vec![Reply::new(250, "OK (SMTP)")]);
    assert!(t.is_https_unsupported("[127.0.0.8]"));
    assert_eq!(inbox_len(&rx.relay, a).await, 1);
}

#[tokio::test]
async fn a_temporary_https_refusal_is_reported_when_smtp_is_unreachable() {
    let ip = [127, 0, 0, 9];
    let rx = receiver(ip, "[127.0.0.9]", false, false, None).await;
    let https = fake_https(
        &rx,
        ip,
        "500 Internal Server Error",
        "451 4.3.0 Temporary lookup failure",
    )
    .await;
    let d = tempfile::tempdir().unwrap();
    let t = transport(sender_cfg(d.path(), https, rx.smtp));
    let replies = t
        .deliver("[127.0.0.9]", SENDER, &["x@[127.0.0.9]".into()], msg("x@x"))
        .await;
    assert_eq!(
        replies,
        vec![Reply::new(451, "4.3.0 Temporary lookup failure")]
    );
    assert!(!t.is_https_unsupported("[127.0.0.9]"));
}

#[tokio::test]
async fn nobody_listening_is_a_temporary_failure() {
    let ip = [127, 0, 0, 4];
    let d = tempfile::tempdir().unwrap();
    let t = transport(sender_cfg(d.path(), free_port(ip), free_port(ip)));
    let rcpts = vec!["x@[127.0.0.4]".to_string(), "y@[127.0.0.4]".to_string()];
    let replies = t.deliver("[127.0.0.4]", SENDER, &rcpts, msg("x@x")).await;
    assert_eq!(codes(&replies), vec![421, 421]);
    assert!(
        replies[0]
            .text
            .contains("Failed to connect to any mail server; last attempt to [127.0.0.4]"),
        "{replies:?}"
    );
    assert!(!t.is_https_unsupported("[127.0.0.4]"));
}

/// A fake MTA that never offers STARTTLS; it answers EHLO and QUIT and records what it got.
async fn fake_smtp_without_starttls(ip: [u8; 4]) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    let l = TcpListener::bind((IpAddr::from(ip), 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
        let mut got = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                break;
            }
            let line = line.trim_end().to_string();
            let answer: &[u8] = if line.starts_with("EHLO") {
                b"250-fake\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"
            } else if line == "QUIT" {
                b"221 bye\r\n"
            } else {
                b"502 no\r\n"
            };
            got.push(line);
            w.write_all(answer).await.unwrap();
        }
        got
    });
    (port, task)
}

#[tokio::test]
async fn smtp_without_starttls_is_a_temporary_failure() {
    let ip = [127, 0, 0, 5];
    let (port, server) = fake_smtp_without_starttls(ip).await;
    let d = tempfile::tempdir().unwrap();
    let t = transport(sender_cfg(d.path(), free_port(ip), port));
    let rcpts = vec!["x@[127.0.0.5]".to_string()];
    let replies = t.deliver("[127.0.0.5]", SENDER, &rcpts, msg("x@x")).await;
    assert_eq!(replies[0].code, 421, "{replies:?}");
    assert!(
        replies[0]
            .text
            .contains("STARTTLS not offered by [127.0.0.5]"),
        "{replies:?}"
    );
    // Nothing but EHLO and QUIT went over the clear-text connection.
    let got = server.await.unwrap();
    assert_eq!(
        got,
        vec!["EHLO [127.0.0.1]".to_string(), "QUIT".to_string()]
    );
}

#[tokio::test]
async fn bad_addresses_are_refused_without_connecting() {
    let ip = [127, 0, 0, 4];
    let d = tempfile::tempdir().unwrap();
    let t = transport(sender_cfg(d.path(), free_port(ip), free_port(ip)));
    let rcpts = vec!["x@[127.0.0.4]\r\nDATA".to_string()];
    let replies = t.deliver("[127.0.0.4]", SENDER, &rcpts, msg("x@x")).await;
    assert_eq!(codes(&replies), vec![553]);
    let replies = t.deliver("[127.0.0.4]", "a>b@c", &rcpts, msg("x@x")).await;
    assert_eq!(codes(&replies), vec![553]);
}

// ---- a named domain through a real DNS server and a private CA ----

struct Dnsmasq {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq(records: &[&str]) -> Option<Dnsmasq> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(bin) = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("dnsmasq"))
        .find(|p| p.is_file())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "dnsmasq not found under CI (the setup stage installs dnsmasq-base)"
        );
        eprintln!("SKIPPED: dnsmasq not found (install the Debian package dnsmasq-base)");
        return None;
    };
    let listen = "127.0.0.54";
    let port = loop {
        let udp = std::net::UdpSocket::bind((listen, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((listen, port)).is_ok() {
            break port;
        }
    };
    let child = std::process::Command::new(bin)
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--local=/test/",
            &format!("--listen-address={listen}"),
            &format!("--port={port}"),
        ])
        .args(records)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = SocketAddr::new(listen.parse().unwrap(), port);
    let server = Dnsmasq { child, addr };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "dnsmasq did not start on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

/// A private CA and a leaf for `names` signed by it, as PEM files in `dir`: (ca, cert, key).
fn private_ca(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "relaybox test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut leaf = rcgen::CertificateParams::new(names).unwrap();
    leaf.is_ca = rcgen::IsCa::ExplicitNoCa;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&leaf_key, &*ca).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn named_domain_over_dns_with_strict_verification_against_a_private_ca() {
    // b.test: first MX 127.0.0.7 where nobody listens, then mx.b.test = 127.0.0.6.
    let Some(dns) = dnsmasq(&[
        "--mx-host=b.test,dead.b.test,5",
        "--mx-host=b.test,mx.b.test,10",
        "--host-record=dead.b.test,127.0.0.7",
        "--host-record=mx.b.test,127.0.0.6",
        "--mx-host=nullmx.test,.,0",
    ]) else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(certs.path(), &["b.test", "mx.b.test"]);
    let rx = receiver([127, 0, 0, 6], "b.test", true, true, Some((cert, key))).await;
    let a = "rcptuser1@b.test";
    add_user(&rx.relay, a).await;
    let rcpts = vec![a.to_string()];

    // Trusting the private CA: delivered over HTTPS to the second MX.
    let d = tempfile::tempdir().unwrap();
    let mut cfg = sender_cfg(d.path(), rx.https, rx.smtp);
    cfg.dns_servers = vec![dns.addr];
    cfg.outbound_ca_file = Some(ca.clone());
    let t = transport(cfg.clone());
    let replies = t.deliver("b.test", SENDER, &rcpts, msg(a)).await;
    assert_eq!(replies, vec![Reply::new(250, "OK (HTTPS)")]);
    assert_eq!(inbox_len(&rx.relay, a).await, 1);
    // Null MX and a domain that does not exist are permanent.
    let r = t
        .deliver("nullmx.test", SENDER, &["x@nullmx.test".into()], msg(a))
        .await;
    assert_eq!(
        r,
        vec![Reply::new(
            556,
            "5.1.10 Permanent failure: Recipient address has null MX"
        )]
    );
    let r = t
        .deliver("nothere.test", SENDER, &["x@nothere.test".into()], msg(a))
        .await;
    assert_eq!(r[0].code, 512, "{r:?}");
    assert!(r[0].text.contains("Domain nothere.test does not exist"));

    // SMTP with the same strict verification works as well.
    t.mark_https_unsupported("mx.b.test", true);
    let replies = t.deliver("b.test", SENDER, &rcpts, msg(a)).await;
    assert_eq!(replies, vec![Reply::new(250, "OK (SMTP)")]);
    assert_eq!(inbox_len(&rx.relay, a).await, 2);

    // Without the CA the certificate is not trusted: neither HTTPS nor SMTP, a temporary failure.
    let d2 = tempfile::tempdir().unwrap();
    let mut cfg = sender_cfg(d2.path(), rx.https, rx.smtp);
    cfg.dns_servers = vec![dns.addr];
    let t = transport(cfg);
    let replies = t.deliver("b.test", SENDER, &rcpts, msg(a)).await;
    assert_eq!(replies[0].code, 421, "{replies:?}");
    assert!(
        replies[0].text.contains("last attempt to mx.b.test"),
        "{replies:?}"
    );
    assert!(replies[0].text.contains("TLS"), "{replies:?}");
    assert_eq!(inbox_len(&rx.relay, a).await, 2);
}

#[tokio::test]
async fn at_most_four_deliveries_run_at_once_per_domain() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ip = [127, 0, 0, 11];
    let l = TcpListener::bind((IpAddr::from(ip), 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n2, m2) = (now.clone(), max.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (now, max) = (n2.clone(), m2.clone());
            tokio::spawn(async move {
                let cur = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(cur, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                // Refuse service: the reply is final for the attempt, no STARTTLS needed.
                let _ = s.write_all(b"554 go away\r\n").await;
            });
        }
    });
    let d = tempfile::tempdir().unwrap();
    let t = transport(sender_cfg(d.path(), free_port(ip), port));
    let rcpts = vec!["x@[127.0.0.11]".to_string()];
    let runs = (0..10).map(|_| t.deliver("[127.0.0.11]", SENDER, &rcpts, msg("x@x")));
    let all = futures::future::join_all(runs).await;
    assert!(all.iter().all(|r| r[0].code == 554), "{all:?}");
    assert_eq!(max.load(Ordering::SeqCst), super::MAX_PER_DOMAIN);
    // The domain's limiter is dropped once nobody uses it.
    assert!(t.per_domain.lock_or_recover().is_empty());
}

mod props {
    use super::super::smtp::{dot_stuff, parse_reply, parse_reply_text};
    use proptest::prelude::*;

    proptest! {
        /// Whatever a remote server sends, the parser answers (reply, need more, or error) and
        /// never claims more bytes than it was given.
        #[test]
        fn reply_parser_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Some((r, n))) = parse_reply(&buf) {
                prop_assert!(n <= buf.len());
                prop_assert!((200..600).contains(&r.code));
            }
            let _ = parse_reply_text(&String::from_utf8_lossy(&buf));
        }

        /// A well-formed multiline reply parses back to its code and lines.
        #[test]
        fn replies_round_trip(code in 200u16..600, lines in proptest::collection::vec("[ -~]{0,40}", 1..5)) {
            let mut wire = String::new();
            for (i, l) in lines.iter().enumerate() {
                let sep = if i + 1 == lines.len() { ' ' } else { '-' };
                wire.push_str(&format!("{code}{sep}{l}\r\n"));
            }
            let (r, n) = parse_reply(wire.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(n, wire.len());
            prop_assert_eq!(r.code, code);
            prop_assert_eq!(r.lines, lines);
        }

        /// DATA never contains a lone "." line before the end, and un-stuffing gives the message
        /// back with CRLF line ends.
        #[test]
        fn dot_stuffing_is_reversible(msg in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a')], 0..200)) {
            let out = dot_stuff(&msg);
            let text = String::from_utf8(out).unwrap();
            prop_assert!(text.ends_with(".\r\n"));
            let body = &text[..text.len() - 3];
            prop_assert!(body.is_empty() || body.ends_with("\r\n"));
            let mut back = String::new();
            for line in body.split_terminator("\r\n") {
                prop_assert!(line != ".", "a lone dot inside the data");
                prop_assert!(!line.contains('\r') && !line.contains('\n'));
                back.push_str(line.strip_prefix('.').unwrap_or(line));
                back.push_str("\r\n");
            }
            let normalized = String::from_utf8(msg.clone()).unwrap().replace("\r\n", "\n").replace('\r', "\n").replace('\n', "\r\n");
            let normalized = if normalized.is_empty() || normalized.ends_with("\r\n") { normalized } else { normalized + "\r\n" };
            prop_assert_eq!(back, normalized);
        }

        /// Stuffed piece by piece (as a large message is sent), split anywhere, even between
        /// a CR and its LF, the data is the same as stuffed whole.
        #[test]
        fn dot_stuffing_in_pieces_is_the_same(msg in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a')], 0..200), cuts in proptest::collection::vec(0usize..200, 0..4)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(msg.len())).collect();
            cuts.sort_unstable();
            let mut stuffer = super::super::smtp::DotStuffer::default();
            let mut out = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([msg.len()]) {
                stuffer.push(&msg[from..c], &mut out);
                from = c;
            }
            stuffer.finish(&mut out);
            prop_assert_eq!(out, dot_stuff(&msg));
        }
    }
}

/// Issue 14 item 8, behind the RCPT check: the transport itself never connects to a loopback
/// address unless the config allows it, whatever put the destination in the queue.
#[tokio::test]
async fn loopback_destinations_are_never_connected_to_without_the_allowance() {
    let ip = [127, 0, 0, 12];
    let rx = receiver(ip, "[127.0.0.12]", true, true, None).await;
    add_user(&rx.relay, "rcptuser1@[127.0.0.12]").await;
    let d = tempfile::tempdir().unwrap();
    let mut cfg = sender_cfg(d.path(), rx.https, rx.smtp);
    cfg.allowed_destination_networks.clear();
    let t = transport(cfg);
    let replies = t
        .deliver(
            "[127.0.0.12]",
            SENDER,
            &["rcptuser1@[127.0.0.12]".into()],
            msg("rcptuser1@[127.0.0.12]"),
        )
        .await;
    assert_eq!(
        replies,
        vec![Reply::new(
            550,
            "5.7.1 Refusing to deliver to [127.0.0.12]: 127.0.0.12 is not a public address"
        )]
    );
    assert_eq!(inbox_len(&rx.relay, "rcptuser1@[127.0.0.12]").await, 0);
}

/// Outbound connections prefer IPv4 when a host has both kinds of address, whatever order the
/// addresses came in, and use IPv6 when IPv4 refuses.
#[tokio::test]
async fn ipv4_is_preferred_and_ipv6_used_when_ipv4_refuses() {
    if !crate::net::ipv6_available() {
        eprintln!("SKIPPED: this host has no IPv6");
        return;
    }
    let v6 = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
    let port = v6.local_addr().unwrap().port();
    let v4 = tokio::net::TcpListener::bind(("127.0.0.1", port)).await;
    let v6_ip: IpAddr = "::1".parse().unwrap();
    let v4_ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut ips = vec![v6_ip, v4_ip];
    super::prefer_ipv4(&mut ips);
    assert_eq!(ips, vec![v4_ip, v6_ip]);
    if v4.is_ok() {
        let s = super::connect_tcp(&ips, port, None).await.unwrap();
        assert!(s.peer_addr().unwrap().is_ipv4());
    }
    drop(v4);
    let s = super::connect_tcp(&ips, port, None).await.unwrap();
    assert_eq!(s.peer_addr().unwrap().ip(), v6_ip);
}
