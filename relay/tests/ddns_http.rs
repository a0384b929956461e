//! Dynamic DNS by a provider's update URL (DuckDNS, deSEC, dyndns2 style) against a local HTTP
//! server that records what it was asked and answers as a provider would.

use relaybox::config::DdnsConfig;
use relaybox::ddns::{self, Addresses};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A provider on 127.0.0.1 answering every request with `status` and `body`; the request heads
/// it got.
async fn provider(status: &'static str, body: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    (port, seen)
}

fn tls() -> tokio_rustls::TlsConnector {
    relaybox::tls::client::Connectors::new(None)
        .unwrap()
        .https_verified
}

const V4: Ipv4Addr = Ipv4Addr::new(81, 2, 69, 160);
const V6: Ipv6Addr = Ipv6Addr::new(0x2a01, 0x4f8, 0, 0, 0, 0, 0, 7);
const BOTH: Addresses = Addresses {
    ipv4: Some(V4),
    ipv6: Some(V6),
};

#[tokio::test]
async fn ip_template_is_fetched_once_per_changed_address_with_basic_auth() {
    let (port, seen) = provider("200 OK", "good 81.2.69.160").await;
    let cfg = DdnsConfig {
        update_url: Some(format!(
            "http://chat.example.org:s3cret@127.0.0.1:{port}/update?hostname={{domain}}&myip={{ip}}"
        )),
        ..Default::default()
    };
    let (ok, result) = ddns::update(&cfg, "chat.example.org", BOTH, BOTH, &tls(), 0).await;
    assert!(ok, "{result}");
    assert!(result.contains("good 81.2.69.160"), "{result}");
    assert!(
        !result.contains("s3cret"),
        "the token stays out of the status: {result}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].starts_with("GET /update?hostname=chat.example.org&myip=81.2.69.160 HTTP/1.1\r\n"),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].starts_with("GET /update?hostname=chat.example.org&myip=2a01:4f8::7 HTTP/1.1\r\n"),
        "{}",
        seen[1]
    );
    // base64("chat.example.org:s3cret")
    assert!(
        seen[0].contains("authorization: Basic Y2hhdC5leGFtcGxlLm9yZzpzM2NyZXQ=\r\n"),
        "{}",
        seen[0]
    );

    // Only the IPv6 changed: one request.
    let only_v6 = Addresses {
        ipv4: None,
        ipv6: Some(V6),
    };
    let (port, seen) = provider("200 OK", "OK").await;
    let cfg = DdnsConfig {
        update_url: Some(format!(
            "http://127.0.0.1:{port}/update?domains={{domain}}&token=t&ipv6={{ip}}"
        )),
        ..Default::default()
    };
    let (ok, result) = ddns::update(&cfg, "chat.example.org", BOTH, only_v6, &tls(), 0).await;
    assert!(ok, "{result}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("ipv6=2a01:4f8::7 "), "{}", seen[0]);
}

#[tokio::test]
async fn ipv4_and_ipv6_placeholders_make_one_request() {
    let (port, seen) = provider("200 OK", "good").await;
    let cfg = DdnsConfig {
        update_url: Some(format!(
            "http://127.0.0.1:{port}/?hostname={{domain}}&myipv4={{ipv4}}&myipv6={{ipv6}}"
        )),
        ..Default::default()
    };
    let v4_only = Addresses {
        ipv4: Some(V4),
        ipv6: None,
    };
    let (ok, result) = ddns::update(&cfg, "chat.example.org", v4_only, v4_only, &tls(), 0).await;
    assert!(ok, "{result}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].starts_with("GET /?hostname=chat.example.org&myipv4=81.2.69.160&myipv6= "),
        "{}",
        seen[0]
    );
}

#[tokio::test]
async fn provider_refusals_are_failures_with_the_providers_words() {
    for (status, body, expect) in [
        ("200 OK", "badauth", "badauth"),
        ("200 OK", "KO", "KO"),
        ("401 Unauthorized", "Invalid token.", "401"),
        ("500 Internal Server Error", "", "500"),
    ] {
        let (port, _) = provider(status, body).await;
        let cfg = DdnsConfig {
            update_url: Some(format!("http://127.0.0.1:{port}/?h={{domain}}&ip={{ip}}")),
            ..Default::default()
        };
        let (ok, result) = ddns::update(&cfg, "chat.example.org", BOTH, BOTH, &tls(), 0).await;
        assert!(!ok, "{status} {body}: {result}");
        assert!(result.contains(expect), "{status} {body}: {result}");
    }
    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = DdnsConfig {
        update_url: Some(format!("http://127.0.0.1:{closed}/?ip={{ip}}")),
        ..Default::default()
    };
    let (ok, result) = ddns::update(&cfg, "chat.example.org", BOTH, BOTH, &tls(), 0).await;
    assert!(!ok && result.contains("cannot connect"), "{result}");
}

#[test]
fn config_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |ddns: &str| {
        relaybox::config::Config::from_toml(
            &format!(
                "mail_domain = \"chat.example.org\"\ndata_dir = {:?}\n[ddns]\n{ddns}\n",
                dir.path().display().to_string()
            ),
            std::path::Path::new("test.toml"),
        )
    };
    let c = parse("").unwrap();
    assert!(!c.ddns.enabled());
    assert_eq!((c.ddns.ttl, c.ddns.interval.0), (60, 300));
    let c = parse(
        "server = \"127.0.0.1:53\"\ntsig_key_name = \"k\"\ntsig_secret = \"c2VjcmV0\"\nipv4 = \"81.2.69.160\"",
    )
    .unwrap();
    assert!(c.ddns.enabled());
    for (bad, key) in [
        ("update_url = \"ftp://x/\"", "ddns.update_url"),
        ("tsig_algorithm = \"hmac-md5\"", "ddns.tsig_algorithm"),
        ("tsig_key_name = \"k\"", "ddns.tsig_secret"),
        (
            "tsig_key_name = \"k\"\ntsig_secret = \"not base64!\"",
            "ddns.tsig_secret",
        ),
        ("interval = \"5s\"", "ddns.interval"),
        ("nonsense = 1", "nonsense"),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
}
