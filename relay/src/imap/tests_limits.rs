//! The limits a client cannot talk its way around: the login deadline, the overall APPEND
//! deadline, the in-flight memory budget, and the cap on unauthenticated connections per IP.

use super::test_util::*;
use crate::config::ByteSize;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

#[tokio::test]
async fn a_client_that_never_logs_in_is_sent_away_however_busy() {
    let env = env();
    tokio::time::pause();
    let start = Instant::now();
    let (mut c, greeting) = Client::connect(&env.relay, true).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    // A NOOP every 25 s keeps the per-command timeout (60 s) from firing, for 250 s.
    for _ in 0..10 {
        if let Some(l) = c.line_within(Duration::from_secs(25)).await {
            assert_eq!(l, "* BYE Login timeout");
            let waited = start.elapsed();
            assert!(
                waited >= Duration::from_secs(60) && waited < Duration::from_secs(70),
                "{waited:?}"
            );
            return;
        }
        let r = c.cmd("NOOP").await;
        assert!(r.last().unwrap().contains("OK"), "{r:?}");
    }
    panic!("a client that never logged in kept its connection for 250 s");
}

#[tokio::test]
async fn an_append_trickled_past_the_transfer_deadline_is_cut_off() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    tokio::time::pause();
    c.send(b"a1 APPEND INBOX {100000}\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    let start = Instant::now();
    // Ten bytes every 20 s: each read is quick, the whole would take 55 hours.
    for _ in 0..100 {
        c.send(b"xxxxxxxxxx").await;
        if let Some(l) = c.line_within(Duration::from_secs(20)).await {
            assert_eq!(l, "* BYE Message transfer took too long");
            let waited = start.elapsed();
            assert!(
                waited >= Duration::from_secs(600) && waited < Duration::from_secs(630),
                "{waited:?}"
            );
            return;
        }
    }
    panic!("an APPEND trickling in was kept open for 2000 s");
}

#[tokio::test]
async fn append_past_the_in_flight_budget_gets_no_and_the_budget_comes_back() {
    let env = env_with(|c| {
        c.max_message_size = 100_000;
        c.max_inflight_message_memory = ByteSize(100_000);
    });
    let mut a = Client::login(&env.relay).await;
    let mut b = Client::login(&env.relay).await;
    a.send(b"a1 APPEND INBOX {90000}\r\n").await;
    assert!(a.line().await.starts_with("+ "));
    a.send(&vec![b'x'; 50_000]).await;

    // B's literal does not fit beside A's: refused before the client sends it.
    b.send(b"b1 APPEND INBOX {20000}\r\n").await;
    assert_eq!(
        b.line().await,
        "b1 NO [TRYLATER] Server busy, try again later"
    );

    a.send(&vec![b'x'; 40_000]).await;
    a.send(b"\r\n").await;
    let r = a.until_tagged("a1").await;
    assert!(r.last().unwrap().starts_with("a1 OK"), "{r:?}");
    // The share goes back once the stored APPEND's reply is out.
    let r = a.cmd("NOOP").await;
    assert!(r.last().unwrap().contains("OK"), "{r:?}");
    assert_eq!(env.relay.inflight.used(), 0);
    b.send(b"b2 APPEND INBOX {5}\r\n").await;
    assert!(b.line().await.starts_with("+ "));
    b.send(b"hello\r\n").await;
    let r = b.until_tagged("b2").await;
    assert!(r.last().unwrap().starts_with("b2 OK"), "{r:?}");
}

fn connector(env: &Env) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(env.relay.tls.chain[0].clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Connects to 993 and reads the greeting; None if the connection was turned away.
async fn connect_993(
    env: &Env,
    addr: std::net::SocketAddr,
) -> Option<BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let tls = connector(env).connect(name, tcp).await.ok()?;
    let mut r = BufReader::new(tls);
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut l))
        .await
        .ok()?
        .ok()?;
    l.starts_with("* OK").then_some(r)
}

#[tokio::test]
async fn unauthenticated_connections_per_ip_are_capped_until_login() {
    let env = env_with(|c| {
        c.conn_limits_exempt_loopback = false;
        c.max_unauthenticated_per_ip = 1;
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(super::serve(env.relay.clone(), listener, true));
    let mut first = connect_993(&env, addr).await.expect("first connection");
    assert!(
        connect_993(&env, addr).await.is_none(),
        "a second connection without login was let in"
    );
    first
        .get_mut()
        .write_all(format!("a LOGIN {USER} {PASS}\r\n").as_bytes())
        .await
        .unwrap();
    let mut l = String::new();
    while !l.starts_with("a ") {
        l.clear();
        first.read_line(&mut l).await.unwrap();
    }
    assert!(l.starts_with("a OK"), "{l}");
    // Logged in, the first no longer counts against the unauthenticated cap.
    assert!(connect_993(&env, addr).await.is_some());
}

/// Issue 14 item 5: a large APPEND message goes to disk as it arrives, outside the memory
/// budget, and the stored message is that file (same inode); flags and date still apply.
#[tokio::test]
async fn a_large_append_is_spooled_to_disk_and_adopted() {
    use std::os::unix::fs::MetadataExt;
    let env = env();
    let relay = &env.relay;
    let mut c = Client::login(relay).await;
    let msg = simple("big") + &format!("{}\r\n", "z".repeat(78)).repeat(25_000);
    let (first, rest) = msg.as_bytes().split_at(msg.len() - 1000);
    c.send(
        format!(
            "a1 APPEND INBOX (\\Seen) \"17-Jul-1996 02:44:25 -0700\" {{{}+}}\r\n",
            msg.len()
        )
        .as_bytes(),
    )
    .await;
    c.send(first).await;
    let tmp = relay.store.dir().join("tmp");
    let spooled = || -> Vec<(u64, u64)> {
        std::fs::read_dir(&tmp)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| (m.ino(), m.len()))
            .collect()
    };
    for _ in 0..150 {
        if spooled().iter().any(|s| s.1 >= (msg.len() / 2) as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = relay.inflight.used();
    assert!(
        held < 1 << 20,
        "a {} byte APPEND holds {held} bytes",
        msg.len()
    );
    let files = spooled();
    assert_eq!(files.len(), 1, "{files:?}");
    c.send(rest).await;
    c.send(b"\r\n").await;
    let r = c.until_tagged("a1").await;
    assert!(r.last().unwrap().contains("OK [APPENDUID"), "{r:?}");
    assert!(spooled().is_empty());
    let mb = relay
        .store
        .mailbox(account_id(relay), "INBOX")
        .unwrap()
        .unwrap();
    let m = &relay.store.messages(mb.id).unwrap()[0];
    assert!(m.flags.has(crate::store::SEEN));
    assert_eq!(m.internal_date, 837596665);
    assert_eq!(m.size, msg.len() as u64);
    assert_eq!(
        relay.store.read_body(m.body_id).await.unwrap(),
        msg.as_bytes()
    );
    let p = relay
        .store
        .dir()
        .join("mail")
        .join(format!("{:02x}", m.body_id & 0xff))
        .join(format!("{:016x}", m.body_id));
    assert_eq!(std::fs::metadata(p).unwrap().ino(), files[0].0);
}
