//! The web side: ALPN multiplexing on 443 over real sockets, and the routes called directly.

use crate::Relay;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

fn relay(dir: &std::path::Path) -> Arc<Relay> {
    crate::testkit::test_relay(dir, |_| {}).unwrap()
}

async fn listen(relay: &Arc<Relay>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(crate::alpn::serve(relay.clone(), l, true));
    addr
}

fn client(
    roots_from: &[rustls::pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(roots_from[0].clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn localhost() -> ServerName<'static> {
    ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
}

async fn connect(
    relay: &Relay,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    client(&relay.tls.chain, alpn)
        .connect(localhost(), tcp)
        .await
        .unwrap()
}

async fn first_line<S: tokio::io::AsyncRead + Unpin>(r: &mut BufReader<S>) -> String {
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut l))
        .await
        .expect("an answer in time")
        .unwrap();
    l.trim_end().to_string()
}

async fn http_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    path: &str,
) -> String {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn alpn_imap_on_443_is_an_imap_session() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let addr = listen(&relay).await;
    let tls = connect(&relay, addr, &[b"imap"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"imap"[..]));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3),
        "mail on 443 is TLS 1.3 like 993"
    );
    let mut r = BufReader::new(tls);
    let greeting = first_line(&mut r).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    assert!(!greeting.contains("STARTTLS"), "implicit TLS: {greeting}");
    r.get_mut()
        .write_all(b"a LOGIN abcdefghi@[127.0.0.1] password123\r\n")
        .await
        .unwrap();
    loop {
        let l = first_line(&mut r).await;
        if l.starts_with("a ") {
            assert!(l.starts_with("a OK"), "{l}");
            break;
        }
    }
}

#[tokio::test]
async fn alpn_smtp_on_443_is_a_submissions_session() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let addr = listen(&relay).await;
    let tls = connect(&relay, addr, &[b"smtp"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"smtp"[..]));
    let mut r = BufReader::new(tls);
    let greeting = first_line(&mut r).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    r.get_mut().write_all(b"EHLO test\r\n").await.unwrap();
    let mut ehlo = Vec::new();
    loop {
        let l = first_line(&mut r).await;
        let last = l.starts_with("250 ");
        ehlo.push(l);
        if last {
            break;
        }
    }
    assert!(
        ehlo.iter().any(|l| l.contains("AUTH")),
        "AUTH after implicit TLS: {ehlo:?}"
    );
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
}

#[tokio::test]
async fn no_alpn_or_http11_on_443_is_https() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let addr = listen(&relay).await;
    for alpn in [
        &[][..],
        &[&b"http/1.1"[..]][..],
        &[&b"h2"[..], &b"http/1.1"[..]][..],
    ] {
        let tls = connect(&relay, addr, alpn).await;
        let resp = http_get(tls, "/").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{alpn:?}: {resp}");
        assert!(resp.contains("[127.0.0.1]"), "{resp}");
    }
    // Mail ALPN and HTTP on one listener, and mail preferred when both are offered.
    let tls = connect(&relay, addr, &[b"http/1.1", b"imap"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"imap"[..]));
}

async fn call(
    relay: &Arc<Relay>,
    https: bool,
    method: &str,
    uri: &str,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .extension(super::ClientAddr("192.0.2.7:5555".parse().unwrap()))
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = crate::testkit::route(relay, https, req).await.unwrap();
    (StatusCode::from_u16(status).unwrap(), headers, body)
}

#[tokio::test]
async fn new_hands_out_reference_shaped_credentials_and_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let app = crate::alpn::app(relay.clone(), true);
    let mut statuses = Vec::new();
    for i in 0..8 {
        let method = if i % 2 == 0 { "POST" } else { "GET" };
        let req = Request::builder()
            .method(method)
            .uri("/new")
            .extension(super::ClientAddr("192.0.2.9:1000".parse().unwrap()))
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        statuses.push(resp.status());
        if resp.status() != StatusCode::OK {
            continue;
        }
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let email = v["email"].as_str().unwrap();
        let password = v["password"].as_str().unwrap();
        let (local, domain) = email.split_once('@').unwrap();
        assert_eq!(local.len(), relay.cfg.username_max_length);
        assert_eq!(domain, "[127.0.0.1]");
        assert_eq!(password.len(), relay.cfg.password_min_length + 3);
        crate::accounts::creation_rule(&relay.cfg, email, password).unwrap();
        let url = v["dclogin_url"].as_str().unwrap();
        assert!(url.starts_with(&format!("dclogin:{email}?p=")), "{url}");
        assert!(url.contains("&v=1&ih=127.0.0.1&"), "{url}");
        assert!(url.ends_with("&ic=3"), "{url}");
        // Nothing is created by /new.
        assert!(relay.store.account(email).unwrap().is_none());
    }
    assert!(
        statuses[..5].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // Another client is not affected.
    let (status, _, _) = call(&relay, true, "POST", "/new").await;
    assert_eq!(status, StatusCode::OK);
}

/// A relay with an operator certificate (ACME/external mode) for `chat.example.org`.
fn acme_relay(dir: &std::path::Path) -> Arc<Relay> {
    let mut cfg = crate::testkit::test_config(dir).unwrap();
    cfg.mail_domain = "chat.example.org".into();
    let (cert, key) = crate::tls::make_self_signed(&cfg).unwrap();
    std::fs::write(dir.join("c.pem"), cert).unwrap();
    std::fs::write(dir.join("k.pem"), key).unwrap();
    cfg.tls_cert = Some(dir.join("c.pem"));
    cfg.tls_key = Some(dir.join("k.pem"));
    crate::server::build(cfg).unwrap()
}

#[tokio::test]
async fn acme_mode_new_get_redirects_to_the_app_and_post_has_no_dclogin() {
    let dir = tempfile::tempdir().unwrap();
    let relay = acme_relay(dir.path());
    let (status, headers, _) = call(&relay, true, "GET", "/new").await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        headers["location"],
        "dcaccount:https://chat.example.org/new"
    );
    let (status, _, body) = call(&relay, true, "POST", "/new").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["email"].as_str().unwrap().ends_with("@chat.example.org"));
    assert!(v.get("dclogin_url").is_none(), "{v}");
    // The invite is DCACCOUNT.
    let (_, _, page) = call(&relay, true, "GET", "/").await;
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("href=\"DCACCOUNT:https://chat.example.org/new\""),
        "{page}"
    );
    // MTA-STS as in the reference.
    let (status, _, body) = call(&relay, true, "GET", "/.well-known/mta-sts.txt").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "version: STSv1\nmode: enforce\nmx: chat.example.org\nmax_age: 2419200\n"
    );
}

#[tokio::test]
async fn invite_qr_as_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (status, headers, body) = call(&relay, true, "GET", "/qr-chatmail-invite.svg").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/svg+xml");
    assert!(String::from_utf8(body).unwrap().contains("<svg"));
    let (status, headers, body) = call(&relay, true, "GET", "/qr-chatmail-invite.png").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(&body[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&body[12..16], b"IHDR");
    let w = u32::from_be_bytes(body[16..20].try_into().unwrap());
    assert!(w >= 200 && w % 8 == 0, "{w}");
    // The IDAT data inflates to one filter byte plus w/8 bytes per row.
    let idat_len = u32::from_be_bytes(body[33..37].try_into().unwrap()) as usize;
    assert_eq!(&body[37..41], b"IDAT");
    let mut raw = Vec::new();
    use std::io::Read;
    flate2::read::ZlibDecoder::new(&body[41..41 + idat_len])
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(raw.len(), (w as usize / 8 + 1) * w as usize);
    let (status, _, alias) = call(&relay, true, "GET", "/qr-chatmail-invite-[127.0.0.1].png").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&alias[..8], b"\x89PNG\r\n\x1a\n");
    let (status, _, _) = call(&relay, true, "GET", "/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = call(&relay, true, "POST", "/cgi-bin/newemail.py").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8(body).unwrap().contains("\"email\""));
    // The corner is white (quiet zone), the finder pattern dark.
    assert_eq!(raw[1] & 0x80, 0x80);
    let row = 4 * 8 + 1; // first row of the code
    let stride = w as usize / 8 + 1;
    assert_eq!(
        raw[row * stride + 1 + 4] & 0x80,
        0,
        "finder pattern is dark"
    );
}

#[tokio::test]
async fn autoconfig_advertises_443_for_imap_and_smtp() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (status, _, body) = call(
        &relay,
        true,
        "GET",
        "/.well-known/autoconfig/mail/config-v1.1.xml",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let xml = String::from_utf8(body).unwrap();
    assert!(xml.contains("<emailProvider id=\"[127.0.0.1]\">"), "{xml}");
    assert!(
        xml.contains("<displayName>[127.0.0.1] chatmail</displayName>"),
        "{xml}"
    );
    for (kind, port, sock) in [
        ("imap", 993, "SSL"),
        ("imap", 143, "STARTTLS"),
        ("imap", 443, "SSL"),
        ("smtp", 465, "SSL"),
        ("smtp", 587, "STARTTLS"),
        ("smtp", 443, "SSL"),
    ] {
        let dir = if kind == "imap" {
            "incomingServer"
        } else {
            "outgoingServer"
        };
        let want = format!(
            "<{dir} type=\"{kind}\">\n      <hostname>127.0.0.1</hostname>\n      <port>{port}</port>\n      <socketType>{sock}</socketType>"
        );
        assert!(xml.contains(&want), "missing {want}\n{xml}");
    }
    assert_eq!(
        xml.matches("<username>%EMAILADDRESS%</username>").count(),
        6
    );
    // An IP relay has no MX, so no MTA-STS policy.
    let (status, _, _) = call(&relay, true, "GET", "/.well-known/mta-sts.txt").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, robots) = call(&relay, true, "GET", "/robots.txt").await;
    assert_eq!(robots, b"User-agent: *\nDisallow: /\n");
}

#[tokio::test]
async fn pages_show_the_configuration_and_can_be_overridden() {
    let dir = tempfile::tempdir().unwrap();
    let relay = crate::testkit::test_relay(dir.path(), |c| {
        c.max_user_send_per_minute = 42;
        c.max_mailbox_size = crate::config::ByteSize(250 << 20);
        c.max_message_size = 20 << 20;
        c.delete_mails_after = 13;
        c.delete_inactive_users_after = 77;
        c.privacy_mail = "privacy@<example>.org".into();
    })
    .unwrap();
    let (_, _, index) = call(&relay, true, "GET", "/").await;
    let index = String::from_utf8(index).unwrap();
    for want in [
        "<b id=\"send-rate\">42</b>",
        "250 MB",
        "20 MB",
        ">13</b>",
        ">77</b>",
        "<svg",
        "href=\"dclogin:",
    ] {
        assert!(index.contains(want), "{want} missing:\n{index}");
    }
    assert!(!index.contains("{{"), "{index}");
    let (_, _, privacy) = call(&relay, true, "GET", "/privacy.html").await;
    let privacy = String::from_utf8(privacy).unwrap();
    assert!(
        privacy.contains("privacy@&lt;example&gt;.org"),
        "escaped: {privacy}"
    );
    let (status, _, info) = call(&relay, true, "GET", "/info.html").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8(info)
        .unwrap()
        .contains("Unencrypted mail"));
    let (status, headers, _) = call(&relay, true, "GET", "/main.css").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));

    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    std::fs::write(
        dir.path().join("www/info.html"),
        "<p>ours: {{domain}} {{unknown}}</p>",
    )
    .unwrap();
    let (_, _, info) = call(&relay, true, "GET", "/info.html").await;
    assert_eq!(
        String::from_utf8(info).unwrap(),
        "<p>ours: [127.0.0.1] {{unknown}}</p>"
    );
    // An override may show the invite too.
    std::fs::write(dir.path().join("www/info.html"), "<p>{{ qr_svg }}</p>").unwrap();
    let (_, _, info) = call(&relay, true, "GET", "/info.html").await;
    assert!(String::from_utf8(info).unwrap().starts_with("<p><svg"));
}

/// A page that shows no invite does not make one: in self-signed mode that is a fresh account's
/// credentials and a QR code, the dearest part of a page (the wizard is loaded on every step).
#[tokio::test]
async fn only_a_page_that_shows_the_invite_makes_one() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let keys = |t: &str| -> Vec<&'static str> {
        super::pages::values(&relay.cfg, t)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    for page in [
        include_str!("../../../firmware-ui/setup.html"),
        include_str!("../../../firmware-ui/info.html"),
        include_str!("../../../firmware-ui/privacy.html"),
        "{{domain}} {{qr_svg",
    ] {
        let keys = keys(page);
        assert!(keys.contains(&"domain"));
        assert!(!keys.contains(&"qr_svg") && !keys.contains(&"invite_url"));
    }
    for page in [
        include_str!("../../../firmware-ui/index.html"),
        include_str!("../../../firmware-ui/admin.html"),
        "{{ invite_tag }}",
    ] {
        let keys = keys(page);
        for k in [
            "invite_url",
            "invite_addr",
            "invite_tag",
            "invite_note",
            "qr_svg",
        ] {
            assert!(keys.contains(&k), "{k}");
        }
    }
}

#[tokio::test]
async fn http_redirects_to_https_except_acme_challenges_and_mxdeliv_is_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (status, headers, _) = call(&relay, false, "GET", "/info.html?x=1").await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "https://127.0.0.1/info.html?x=1");
    let (status, _, _) = call(&relay, false, "GET", "/.well-known/acme-challenge/abc").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // While an order runs, port 80 answers its HTTP-01 token with the key authorization.
    relay.acme.set_challenge("abc", "abc.thumbprint");
    let (status, headers, body) =
        call(&relay, false, "GET", "/.well-known/acme-challenge/abc").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(body, b"abc.thumbprint");
    let (status, _, _) = call(&relay, false, "GET", "/.well-known/acme-challenge/abd").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(&relay, false, "POST", "/mxdeliv").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no delivery over plain HTTP");
    let (status, _, _) = call(&relay, true, "GET", "/mxdeliv").await;
    assert_eq!(
        status,
        StatusCode::METHOD_NOT_ALLOWED,
        "mxdeliv stays on the HTTPS router"
    );
}

#[tokio::test]
async fn renewed_certificate_is_used_without_restart_on_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::testkit::test_config(dir.path()).unwrap();
    let write = |cfg: &crate::config::Config| {
        let (cert, key) = crate::tls::make_self_signed(cfg).unwrap();
        std::fs::write(dir.path().join("c.pem.tmp"), &cert).unwrap();
        std::fs::write(dir.path().join("k.pem"), key).unwrap();
        std::fs::rename(dir.path().join("c.pem.tmp"), dir.path().join("c.pem")).unwrap();
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        der.into_owned()
    };
    let first = write(&cfg);
    cfg.tls_cert = Some(dir.path().join("c.pem"));
    cfg.tls_key = Some(dir.path().join("k.pem"));
    let store = Arc::new(
        crate::tls::CertStore::watch(
            cfg.tls_cert.as_ref().unwrap(),
            cfg.tls_key.as_ref().unwrap(),
            Duration::ZERO,
        )
        .unwrap(),
    );
    let tls = crate::tls::TlsConfigs::from_store(store.clone()).unwrap();
    assert_eq!(tls.chain[0], first);
    // Make sure the modification time differs even on coarse-grained file systems.
    std::thread::sleep(Duration::from_millis(1100));
    let second = write(&cfg);
    assert_ne!(first, second);
    for acceptor in [&tls.client, &tls.mx, &tls.https] {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn({
            let acceptor = acceptor.clone();
            async move { acceptor.accept(s).await.map(|_| ()) }
        });
        let conn = client(std::slice::from_ref(&second), &[])
            .connect(localhost(), c)
            .await
            .expect("the client that trusts only the new certificate connects");
        let seen = conn.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(seen, second);
        server.await.unwrap().unwrap();
    }
    assert_eq!(store.chain()[0], second);
    // A broken renewal keeps the certificate that works.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(dir.path().join("c.pem"), "garbage").unwrap();
    assert_eq!(store.chain()[0], second);
}

/// Inline script or style in a page: what the Content-Security-Policy forbids.
fn inline_code(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("<script") {
        let tag_end = rest[i..].find('>').map_or(rest.len(), |e| i + e);
        if !rest[i..tag_end].contains(" src=") {
            found.push(rest[i..tag_end + 1].to_string());
        }
        rest = &rest[tag_end..];
    }
    for bad in ["<style", " style=", "javascript:"] {
        if lower.contains(bad) {
            found.push(bad.to_string());
        }
    }
    // Event handler attributes: ` on<letters>=`.
    for (i, _) in lower.match_indices(" on") {
        let name: String = lower[i + 3..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        if !name.is_empty() && lower[i + 3 + name.len()..].starts_with('=') {
            found.push(format!("on{name}="));
        }
    }
    found
}

#[tokio::test]
async fn pages_carry_security_headers_and_satisfy_their_csp() {
    let dir = tempfile::tempdir().unwrap();
    // The wizard is on (set-up pending), so `/` and `/setup` are the wizard on both ports.
    let wizard = crate::testkit::test_relay(dir.path(), |c| c.admin_ui = true).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let plain = relay(dir2.path());
    for (relay, https, path) in [
        (&wizard, true, "/"),
        (&wizard, true, "/setup"),
        (&wizard, true, "/admin"),
        (&wizard, true, "/api/admin/state"),
        (&wizard, false, "/"),
        (&wizard, false, "/setup"),
        (&plain, true, "/"),
        (&plain, true, "/info.html"),
        (&plain, true, "/privacy.html"),
    ] {
        let (status, h, body) = call(relay, https, "GET", path).await;
        let what = format!("{} {path}", if https { "https" } else { "http" });
        assert!(status.as_u16() < 500, "{what}: {status}");
        assert_eq!(h["x-frame-options"], "DENY", "{what}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
        let csp = h["content-security-policy"].to_str().unwrap();
        for want in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(want), "{what}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
        assert_eq!(
            h.contains_key("strict-transport-security"),
            https,
            "{what}: HSTS on HTTPS only"
        );
        if status == StatusCode::OK && h["content-type"].to_str().unwrap().starts_with("text/html")
        {
            let html = String::from_utf8(body).unwrap();
            assert_eq!(inline_code(&html), Vec::<String>::new(), "{what}");
        }
    }
}

#[test]
fn built_in_pages_have_no_inline_script_or_style() {
    for (name, html) in [
        (
            "index.html",
            include_str!("../../../firmware-ui/index.html"),
        ),
        ("info.html", include_str!("../../../firmware-ui/info.html")),
        (
            "privacy.html",
            include_str!("../../../firmware-ui/privacy.html"),
        ),
        (
            "setup.html",
            include_str!("../../../firmware-ui/setup.html"),
        ),
        (
            "admin.html",
            include_str!("../../../firmware-ui/admin.html"),
        ),
    ] {
        assert_eq!(inline_code(html), Vec::<String>::new(), "{name}");
    }
    assert_eq!(
        inline_code("<a onclick=\"x()\"><script>1</script><script src=\"/a.js\"></script>"),
        vec!["<script>".to_string(), "onclick=".to_string()]
    );
}

/// Issue 16: in self-signed (LAN) mode an invite QR code is one account, so the pages follow
/// each code they show: `/invite/used` says when its account exists, and `/invite.json` gives
/// the next person a code of their own.
#[tokio::test]
async fn a_self_signed_invite_is_one_person_and_the_page_can_tell_when_it_was_used() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let get = |path: String| {
        let relay = relay.clone();
        async move {
            let (status, body) = crate::testkit::https_request(&relay, "GET", &path, &[], vec![])
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
            )
        }
    };
    let (status, a) = get("/invite.json".into()).await;
    assert_eq!(status, 200, "{a}");
    let (_, b) = get("/invite.json".into()).await;
    let addr = a["addr"].as_str().unwrap().to_string();
    assert_ne!(
        addr,
        b["addr"].as_str().unwrap(),
        "every invite is a new address"
    );
    let url = a["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("dclogin:{addr}?p=")), "{url}");
    assert!(a["svg"].as_str().unwrap().starts_with("<svg"), "{a}");
    let used = |addr: String, tag: String| {
        let q = format!(
            "/invite/used?addr={}&tag={}",
            percent_encoding::utf8_percent_encode(&addr, percent_encoding::NON_ALPHANUMERIC),
            tag
        );
        get(q)
    };
    let tag = a["tag"].as_str().unwrap().to_string();
    let (status, v) = used(addr.clone(), tag.clone()).await;
    assert_eq!((status, v["used"].clone()), (200, false.into()), "{v}");
    // Only the page that shows a code may ask about it: another address with this tag is refused.
    let other = b["addr"].as_str().unwrap().to_string();
    let (status, _) = used(other, tag.clone()).await;
    assert_eq!(status, 400);
    // The phone scans it and logs in: the account exists, the code is used.
    let pw = url.split("?p=").nth(1).unwrap().split('&').next().unwrap();
    let pw = percent_encoding::percent_decode_str(pw)
        .decode_utf8()
        .unwrap();
    relay.accounts.login(&addr, &pw).await.unwrap();
    let (status, v) = used(addr, tag).await;
    assert_eq!((status, v["used"].clone()), (200, true.into()), "{v}");
    // The public page names its code's address and tag for its script.
    let (status, page) = crate::testkit::https_request(&relay, "GET", "/", &[], vec![])
        .await
        .unwrap();
    let page = String::from_utf8(page).unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("One QR code is one person"), "{page}");
    assert!(page.contains("<script src=\"/invite.js\">"), "{page}");
    let shown = page
        .split("data-addr=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    assert!(shown.ends_with("@[127.0.0.1]"), "{shown}");
}

#[tokio::test]
async fn favicon_and_invite_script_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    for (path, ty) in [
        ("/favicon.svg", "image/svg+xml"),
        ("/favicon.ico", "image/svg+xml"),
        ("/invite.js", "text/javascript; charset=utf-8"),
    ] {
        let (status, headers, _) =
            crate::testkit::router_request(&relay, true, "GET", path, &[], vec![])
                .await
                .unwrap();
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers[axum::http::header::CONTENT_TYPE], ty, "{path}");
    }
}
