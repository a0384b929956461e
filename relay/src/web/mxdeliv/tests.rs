//! `/mxdeliv` over a real TLS socket on 127.0.0.1, spoken to as raw HTTP/1.1.

use crate::config::Config;
use crate::dkim::Dkim;
use crate::policy::testmsg;
use crate::Relay;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const RCPT: &str = "rcptuser1@[127.0.0.1]";
const RCPT2: &str = "rcptuser2@[127.0.0.1]";
/// Small, so the size tests stay fast.
const MAX: u64 = 64 * 1024;
const PKCS1: &str = include_str!("../../../tests/data/dkim-pkcs1.pem");

async fn relay(dir: &Path) -> Arc<Relay> {
    let relay = crate::testkit::test_relay(dir, |cfg| cfg.max_message_size = MAX).unwrap();
    relay.accounts.login(RCPT, "password1").await.unwrap();
    relay.accounts.login(RCPT2, "password2").await.unwrap();
    relay
}

async fn listen(relay: &Arc<Relay>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(crate::alpn::serve(relay.clone(), l, true));
    addr
}

fn connector(relay: &Relay) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(relay.tls.chain[0].clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

/// Sends `head` (request line and headers, without the blank line) and `body` as they are, then
/// reads the response to the end (every request says `Connection: close`): status and body.
async fn send(relay: &Relay, addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    send_from([127, 0, 0, 9], relay, addr, head, body).await
}

/// [`send`] from the loopback address `src` (the sending relay's address).
async fn send_from(
    src: [u8; 4],
    relay: &Relay,
    addr: SocketAddr,
    head: &str,
    body: &[u8],
) -> (u16, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((src, 0))).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let mut tls = connector(relay).connect(name, tcp).await.unwrap();
    let mut req = format!("{head}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes();
    req.extend_from_slice(body);
    tls.write_all(&req).await.unwrap();
    tls.flush().await.unwrap();
    let mut resp = Vec::new();
    // The server may close without close_notify after an early answer; what was read counts.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (status_head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = status_head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

async fn post(relay: &Relay, addr: SocketAddr, headers: &[&str], body: &[u8]) -> (u16, String) {
    let mut head = String::from("POST /mxdeliv HTTP/1.1");
    for h in headers {
        head.push_str("\r\n");
        head.push_str(h);
    }
    head.push_str(&format!("\r\nContent-Length: {}", body.len()));
    send(relay, addr, &head, body).await
}

use crate::testkit::inbox;

#[tokio::test]
async fn encrypted_mail_to_a_local_user_lands_in_the_inbox() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let addr = listen(&r).await;
    let msg = testmsg::encrypted("alice@[127.0.0.9]", RCPT);
    let to = format!("X-MAIL-TO: {RCPT}");
    let (status, body) = post(&r, addr, &["X-MAIL-FROM: alice@[127.0.0.9]", &to], &msg).await;
    assert_eq!((status, body.as_str()), (200, "250 2.0.0 OK"));
    assert_eq!(inbox(&r, RCPT).await.len(), 1);
}

#[tokio::test]
async fn madmail_style_headers_and_missing_sender_are_accepted() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let addr = listen(&r).await;
    let msg = testmsg::encrypted("alice@[127.0.0.9]", RCPT);
    // Lower-case names, two recipients in one header, no X-MAIL-FROM at all.
    let to = format!("x-mail-to: {RCPT}, <{RCPT2}>");
    let (status, body) = post(
        &r,
        addr,
        &[&to, "Content-Type: application/octet-stream"],
        &msg,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "250 2.0.0 OK"));
    assert_eq!(inbox(&r, RCPT).await.len(), 1);
    assert_eq!(inbox(&r, RCPT2).await.len(), 1);
    // An empty X-MAIL-FROM (the null sender) is fine too.
    let to = format!("X-Mail-To: {RCPT}");
    let (status, _) = post(&r, addr, &["X-Mail-From:", &to], &msg).await;
    assert_eq!(status, 200);
    assert_eq!(inbox(&r, RCPT).await.len(), 2);
}

#[tokio::test]
async fn dkim_signed_mail_from_a_named_domain_is_accepted() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let addr = listen(&r).await;
    let kd = tempfile::tempdir().unwrap();
    let kcfg = Config::with_domain("a.test", kd.path()).unwrap();
    let path = Dkim::key_path(&kcfg);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, PKCS1).unwrap();
    let dkim = Dkim::load(&kcfg).unwrap();
    r.dns
        .pin_dkim_key(&dkim.record_name(), &dkim.txt_record().unwrap())
        .unwrap();
    let to = format!("X-MAIL-TO: {RCPT}");
    let from = "X-MAIL-FROM: alice@a.test";

    let unsigned = testmsg::encrypted("alice@a.test", RCPT);
    let (status, body) = post(&r, addr, &[from, &to], &unsigned).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "554 5.7.1 No DKIM signature found")
    );
    assert!(inbox(&r, RCPT).await.is_empty());

    let signed = dkim.sign(&unsigned).unwrap();
    let (status, body) = post(&r, addr, &[from, &to], &signed).await;
    assert_eq!((status, body.as_str()), (200, "250 2.0.0 OK"));
    assert_eq!(inbox(&r, RCPT).await.len(), 1);
}

#[tokio::test]
async fn refusals_are_400_with_the_smtp_reply_and_store_nothing() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let addr = listen(&r).await;
    let enc = testmsg::encrypted("alice@[127.0.0.9]", RCPT);
    let from = "X-MAIL-FROM: alice@[127.0.0.9]";
    let to = format!("X-MAIL-TO: {RCPT}");

    let plain = testmsg::plain("alice@[127.0.0.9]", RCPT);
    assert_eq!(
        post(&r, addr, &[from, &to], &plain).await,
        (
            400,
            "523 Encryption Needed: Invalid Unencrypted Mail".to_string()
        )
    );
    assert_eq!(
        post(&r, addr, &[from, "X-MAIL-TO: bob@example.net"], &enc).await,
        (400, "554 5.7.1 Relay access denied".to_string())
    );
    // One foreign recipient among local ones refuses the whole request.
    let mixed = format!("X-MAIL-TO: {RCPT}, bob@example.net");
    assert_eq!(post(&r, addr, &[from, &mixed], &enc).await.0, 400);
    let (status, body) = post(&r, addr, &[from, "X-MAIL-TO: nosuchusr@[127.0.0.1]"], &enc).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("550 "), "{body}");
    let (status, body) = post(&r, addr, &[from], &enc).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("554 "), "{body}");
    let (status, body) = post(&r, addr, &[from, "X-MAIL-TO: not-an-address"], &enc).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("501 "), "{body}");

    assert!(inbox(&r, RCPT).await.is_empty());
    assert!(inbox(&r, RCPT2).await.is_empty());
}

async fn post_from(
    src: [u8; 4],
    relay: &Relay,
    addr: SocketAddr,
    from: &str,
    body: &[u8],
) -> (u16, String) {
    let head = format!(
        "POST /mxdeliv HTTP/1.1\r\nX-MAIL-FROM: {from}\r\nX-MAIL-TO: {RCPT}\r\nContent-Length: {}",
        body.len()
    );
    send_from(src, relay, addr, &head, body).await
}

/// Issue 14 item 1: an address-literal From passed `/mxdeliv` whoever sent it; now it must be
/// the TLS client's address, and our own domain ([127.0.0.1] here) never comes in this way.
#[tokio::test]
async fn literal_senders_must_be_the_tls_client_and_never_our_own_domain() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let addr = listen(&r).await;
    let spoof = testmsg::encrypted("alice@[192.0.2.1]", RCPT);
    assert_eq!(
        post_from([127, 0, 0, 9], &r, addr, "alice@[192.0.2.1]", &spoof).await,
        (
            400,
            "554 5.7.1 From domain [192.0.2.1] is not the address this message came from".into()
        )
    );
    let own = testmsg::encrypted(RCPT2, RCPT);
    for src in [[127, 0, 0, 9], [127, 0, 0, 1]] {
        let (status, body) = post_from(src, &r, addr, RCPT2, &own).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body.starts_with("554 5.7.1 Mail from [127.0.0.1] is only"),
            "{body}"
        );
    }
    assert!(inbox(&r, RCPT).await.is_empty());
}

/// A delivery status notification as MTAs send it, unencrypted, from `from`; `extra` is one
/// more part (empty for none).
fn dsn(from: &str, extra: &str) -> Vec<u8> {
    format!(
        "From: Mail Delivery System <{from}>\r\nTo: <{RCPT}>\r\nSubject: Undelivered Mail\r\n\
         Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
         {extra}\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n\
         Final-Recipient: rfc822; nobody@x\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
         --b1\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <a@b>\r\n\r\n--b1--\r\n"
    )
    .into_bytes()
}

/// Issue 14 item 1: the mailer-daemon exception let a plaintext `multipart/report` with HTML
/// through, also from our own literal. Only a real DSN shape passes, and only from another
/// relay.
#[tokio::test]
async fn only_a_real_dsn_from_another_relay_passes_unencrypted() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let addr = listen(&r).await;
    let daemon = "MAILER-DAEMON@[127.0.0.9]";
    let html = "--b1\r\nContent-Type: text/html\r\n\r\n<a href=\"https://x\">click</a>\r\n";
    let refused = "523 Encryption Needed: Invalid Unencrypted Mail";
    assert_eq!(
        post_from([127, 0, 0, 9], &r, addr, daemon, &dsn(daemon, html)).await,
        (400, refused.into())
    );
    // multipart/report without report-type=delivery-status (a read receipt, or anything).
    let mdn = String::from_utf8(dsn(daemon, "")).unwrap().replace(
        "report-type=delivery-status",
        "report-type=disposition-notification",
    );
    assert_eq!(
        post_from([127, 0, 0, 9], &r, addr, daemon, mdn.as_bytes()).await,
        (400, refused.into())
    );
    // Without the message/delivery-status part.
    let no_status = String::from_utf8(dsn(daemon, ""))
        .unwrap()
        .replace("message/delivery-status", "text/plain");
    assert_eq!(
        post_from([127, 0, 0, 9], &r, addr, daemon, no_status.as_bytes()).await,
        (400, refused.into())
    );
    // Our own mailer daemon does not send through /mxdeliv.
    let ours = "MAILER-DAEMON@[127.0.0.1]";
    let (status, body) = post_from([127, 0, 0, 1], &r, addr, ours, &dsn(ours, "")).await;
    assert_eq!(status, 400, "{body}");
    assert!(inbox(&r, RCPT).await.is_empty());
    // The real thing from the relay at 127.0.0.9.
    assert_eq!(
        post_from([127, 0, 0, 9], &r, addr, daemon, &dsn(daemon, "")).await,
        (200, "250 2.0.0 OK".into())
    );
    assert_eq!(inbox(&r, RCPT).await.len(), 1);
}

#[tokio::test]
async fn only_post_is_allowed() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let addr = listen(&r).await;
    let (status, body) = send(&r, addr, "GET /mxdeliv HTTP/1.1", b"").await;
    assert_eq!((status, body.as_str()), (405, "Method Not Allowed"));
}

#[tokio::test]
async fn oversized_bodies_get_413_without_being_read_to_the_end() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let addr = listen(&r).await;
    let to = format!("X-MAIL-TO: {RCPT}");

    // A declared length over the limit is refused up front: no body is ever sent here, so a
    // server that waited for it would time out instead of answering.
    let head = format!("POST /mxdeliv HTTP/1.1\r\n{to}\r\nContent-Length: 10000000");
    assert_eq!(
        send(&r, addr, &head, b"").await,
        (413, "552 Message exceeds maximum size".to_string())
    );

    // Chunked, no length: the limit is passed by a few bytes and the body never ends (no final
    // chunk), so only a server that counts while streaming can answer.
    let head = format!("POST /mxdeliv HTTP/1.1\r\n{to}\r\nTransfer-Encoding: chunked");
    let mut body = Vec::new();
    let piece = vec![b'x'; 8 * 1024];
    let mut sent = 0u64;
    while sent <= MAX {
        body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        body.extend_from_slice(&piece);
        body.extend_from_slice(b"\r\n");
        sent += piece.len() as u64;
    }
    assert_eq!(
        send(&r, addr, &head, &body).await,
        (413, "552 Message exceeds maximum size".to_string())
    );

    // Exactly at the limit is fine as far as size goes (the gate then refuses the junk).
    let (status, reply) = post(&r, addr, &[&to], &vec![b'x'; MAX as usize]).await;
    assert_eq!(status, 400, "{reply}");
    assert!(!reply.starts_with("552"), "{reply}");

    assert!(inbox(&r, RCPT).await.is_empty());
}

#[tokio::test]
async fn plain_http_has_no_mxdeliv() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(crate::alpn::serve(r.clone(), l, false));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /mxdeliv HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-MAIL-TO: {RCPT}\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

#[tokio::test]
async fn a_body_past_the_in_flight_budget_is_a_temporary_refusal() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let addr = listen(&r).await;
    // The sender's literal is the client's own address, so only the budget can refuse it.
    let from = "alice@[127.0.0.9]";
    let msg = testmsg::encrypted(from, RCPT);
    // Other transfers hold all of the budget (128M by default).
    let mut others = r.inflight.hold();
    assert!(others.grow(128 << 20, 128 << 20));
    let (status, body) = post_from([127, 0, 0, 9], &r, addr, from, &msg).await;
    assert_eq!(
        (status, body.as_str()),
        (
            500,
            "451 4.3.1 Insufficient system resources, try again later"
        )
    );
    assert_eq!(inbox(&r, RCPT).await.len(), 0);
    drop(others);
    let (status, body) = post_from([127, 0, 0, 9], &r, addr, from, &msg).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(r.inflight.used(), 0);
}

/// Issue 14 item 5: a large body goes to disk as it arrives; the stored copy is that file, in
/// the local form (the DKIM-Signature the check needed is gone from it), and tmp/ is empty after.
#[tokio::test]
async fn a_large_signed_body_is_spooled_and_stored_without_its_signature() {
    let d = tempfile::tempdir().unwrap();
    let r = crate::testkit::test_relay(d.path(), |cfg| cfg.max_message_size = 4 << 20).unwrap();
    r.accounts.login(RCPT, "password1").await.unwrap();
    let addr = listen(&r).await;
    let kd = tempfile::tempdir().unwrap();
    let kcfg = Config::with_domain("a.test", kd.path()).unwrap();
    let path = Dkim::key_path(&kcfg);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, PKCS1).unwrap();
    let dkim = Dkim::load(&kcfg).unwrap();
    r.dns
        .pin_dkim_key(&dkim.record_name(), &dkim.txt_record().unwrap())
        .unwrap();
    let enc = testmsg::encrypted("alice@a.test", RCPT);
    let split = enc.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let filler = format!("{}\r\n", "x".repeat(78)).repeat(600_000 / 80);
    let big = [&enc[..split], filler.as_bytes(), &enc[split..]].concat();
    let signed = dkim.sign(&big).unwrap();
    let before = crate::store::Store::spooled_bytes();
    let to = format!("X-MAIL-TO: {RCPT}");
    let (status, body) = post(&r, addr, &["X-MAIL-FROM: alice@a.test", &to], &signed).await;
    assert_eq!((status, body.as_str()), (200, "250 2.0.0 OK"));
    assert!(crate::store::Store::spooled_bytes() - before >= big.len() as u64);
    assert_eq!(
        inbox(&r, RCPT).await,
        vec![crate::policy::prepare_local_delivery(&signed)]
    );
    assert_eq!(
        std::fs::read_dir(r.store.dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}
