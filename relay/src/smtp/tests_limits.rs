//! The limits a client cannot talk its way around: the login deadline on submission, the
//! overall DATA deadline, the in-flight memory budget, and the per-IP connection cap.

use super::tests::{inbox, message, relay, relay_with, start, started, PASS, RCPT, USER};
use super::*;
use crate::config::ByteSize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

#[tokio::test]
async fn submission_without_login_is_closed_at_the_login_deadline() {
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |_| {});
    tokio::time::pause();
    let start = Instant::now();
    let mut c = started(&r, Kind::Submissions, true).await;
    assert!(c.cmd("EHLO client").await.starts_with("250"));
    // A NOOP every 5 s keeps every per-command timeout from firing, for 200 s.
    for _ in 0..40 {
        if let Ok(reply) = tokio::time::timeout(Duration::from_secs(5), c.reply()).await {
            assert_eq!(
                reply.as_deref(),
                Some("421 4.7.0 Login timeout, closing transmission channel")
            );
            let waited = start.elapsed();
            assert!(
                waited >= Duration::from_secs(60) && waited < Duration::from_secs(70),
                "{waited:?}"
            );
            return;
        }
        assert!(c.cmd("NOOP").await.starts_with("250 "));
    }
    panic!("a client that never logged in kept its connection for 200 s");
}

#[tokio::test]
async fn data_trickled_past_the_transfer_deadline_is_cut_off() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    tokio::time::pause();
    let mut c = started(&r, Kind::Mx, true).await;
    assert!(c.cmd("EHLO mx.example.org").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").await.starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{RCPT}>")).await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let start = Instant::now();
    // One line every 5 s (within the read timeout), for up to 1000 s.
    for _ in 0..200 {
        c.send(b"x\r\n").await;
        if let Ok(reply) = tokio::time::timeout(Duration::from_secs(5), c.reply()).await {
            assert_eq!(
                reply.as_deref(),
                Some("421 4.4.2 Message transfer took too long, closing transmission channel")
            );
            let waited = start.elapsed();
            assert!(
                waited >= Duration::from_secs(600) && waited < Duration::from_secs(610),
                "{waited:?}"
            );
            return;
        }
    }
    panic!("a DATA section trickling in was kept open for 1000 s");
}

/// Text lines for the MIME preamble, about `n` bytes in all.
fn filler(n: usize) -> String {
    format!("{}\r\n", "x".repeat(78)).repeat(n / 80)
}

#[tokio::test]
async fn data_past_the_in_flight_budget_gets_451_before_the_transfer_and_the_budget_comes_back() {
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |c| {
        c.max_message_size = 100_000;
        c.max_inflight_message_memory = ByteSize(100_000);
    });
    r.accounts.login(USER, PASS).await.unwrap();
    r.accounts.login(RCPT, "password2").await.unwrap();
    let mut a = started(&r, Kind::Submissions, true).await;
    a.login().await;
    let mut b = started(&r, Kind::Submissions, true).await;
    b.login().await;

    // A is in the middle of a 90 KB message it declared.
    let big = message(USER, &filler(90_000));
    let mail = format!("MAIL FROM:<{USER}> SIZE={}", big.len());
    assert_eq!(a.cmd(&mail).await, "250 2.1.0 Ok");
    assert_eq!(a.cmd(&format!("RCPT TO:<{RCPT}>")).await, "250 2.1.5 Ok");
    assert!(a.cmd("DATA").await.starts_with("354 "));
    a.send(&big.as_bytes()[..50_000]).await;
    assert!(r.inflight.used() >= 88_000, "{}", r.inflight.used());

    // B's messages do not fit beside it: refused before a byte of them is sent, at MAIL for
    // a declared size, at DATA (no 354) otherwise; the session goes on.
    let busy = "451 4.3.1 Insufficient system resources, try again later";
    assert_eq!(b.cmd(&format!("MAIL FROM:<{USER}> SIZE=20000")).await, busy);
    assert_eq!(b.cmd(&format!("MAIL FROM:<{USER}>")).await, "250 2.1.0 Ok");
    assert_eq!(b.cmd(&format!("RCPT TO:<{RCPT}>")).await, "250 2.1.5 Ok");
    assert_eq!(b.cmd("DATA").await, busy);
    assert_eq!(b.cmd("RSET").await, "250 2.0.0 Ok");

    a.send(&big.as_bytes()[50_000..]).await;
    assert!(a.cmd(".").await.starts_with("250 "));
    assert_eq!(r.inflight.used(), 0);
    let small = message(USER, &filler(20_000));
    assert!(b.mail(USER, RCPT, &small).await.starts_with("250 "));
    assert_eq!(r.inflight.used(), 0);
    // A share taken at DATA comes back when the client goes away mid-transfer too.
    assert!(a.cmd(&mail).await.starts_with("250 "));
    assert!(a
        .cmd(&format!("RCPT TO:<{RCPT}>"))
        .await
        .starts_with("250 "));
    assert!(a.cmd("DATA").await.starts_with("354 "));
    assert!(r.inflight.used() >= 88_000, "{}", r.inflight.used());
    a.send(&big.as_bytes()[..10_000]).await;
    drop(a);
    for _ in 0..100 {
        if r.inflight.used() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(r.inflight.used(), 0);
}

/// Incoming mail past `SPILL` is checked from its spool file (mapped, not read back into
/// memory), so it needs no budget for the whole message at the end of the transfer: with less
/// budget left than the message's size, it is still taken, and a declared size asks only for
/// what will be in memory.
#[tokio::test]
async fn large_incoming_mail_needs_no_budget_for_the_whole_message() {
    const SPILL: u64 = 256 * 1024;
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |c| {
        c.max_message_size = 2_000_000;
        c.max_inflight_message_memory = ByteSize(2_000_000);
    });
    r.accounts.login(RCPT, "password2").await.unwrap();
    // Others hold all but 600 KB.
    let mut others = r.inflight.hold();
    assert!(others.grow(1_400_000, 1_400_000));
    let from = "someone@[192.0.2.1]";
    let big = message(from, &filler(1_000_000));
    let mut c = started(&r, Kind::Mx, true).await;
    assert!(c.cmd("EHLO mx.example.org").await.starts_with("250"));
    let mail = format!("MAIL FROM:<{from}> SIZE={}", big.len());
    assert_eq!(c.cmd(&mail).await, "250 2.1.0 Ok");
    assert!(c.cmd(&format!("RCPT TO:<{RCPT}>")).await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(big.as_bytes()).await;
    let reply = c.cmd(".").await;
    assert!(reply.starts_with("250 "), "{reply}");
    assert_eq!(inbox(&r, RCPT).await.len(), 1);
    assert_eq!(r.inflight.used(), 1_400_000);
    // With less than `SPILL` left, a declared incoming message is refused at MAIL.
    let mut more = r.inflight.hold();
    assert!(more.grow(2_000_000 - 1_400_000 - SPILL + 1, u64::MAX));
    assert_eq!(
        c.cmd(&mail).await,
        "451 4.3.1 Insufficient system resources, try again later"
    );
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_get_421() {
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |c| {
        c.conn_limits_exempt_loopback = false;
        c.max_smtp_connections_per_ip = 2;
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _server = tokio::spawn(serve(r.clone(), l, Kind::Mx));
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let mut greeting = String::new();
        c.read_line(&mut greeting).await.unwrap();
        assert!(greeting.starts_with("220 "), "{greeting}");
        open.push(c);
    }
    let mut third = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let mut reply = String::new();
    third.read_line(&mut reply).await.unwrap();
    assert_eq!(
        reply,
        "421 4.7.0 [127.0.0.1] Too many connections, try again later\r\n"
    );
    // A slot comes back when a connection ends.
    let mut first = open.remove(0);
    first.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    let mut bye = String::new();
    first.read_line(&mut bye).await.unwrap();
    drop(first);
    for _ in 0..50 {
        let mut c = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let mut greeting = String::new();
        c.read_line(&mut greeting).await.unwrap();
        if greeting.starts_with("220 ") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the slot never came back");
}

/// Issue 14 item 5: a large DATA body goes to a file in the store's `tmp/` as it arrives, so
/// parallel senders hold little memory each however big their messages; the accepted message
/// is that file itself, renamed into place (same inode), not a second copy.
#[tokio::test]
async fn large_data_is_spooled_to_disk_as_it_arrives_and_adopted() {
    use std::os::unix::fs::MetadataExt;
    const N: usize = 4;
    const SIZE: usize = 3_000_000;
    // `delivery::spooler::SPILL`, spelled out so that the test also runs on the code before.
    const SPILL: usize = 256 * 1024;
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let from = "someone@[192.0.2.1]";
    let big = message(from, &filler(SIZE));
    let cut = big.len() - 100;
    let mut clients = Vec::new();
    for _ in 0..N {
        let mut c = started(&r, Kind::Mx, true).await;
        assert!(c.cmd("EHLO mx.example.org").await.starts_with("250"));
        assert!(c
            .cmd(&format!("MAIL FROM:<{from}>"))
            .await
            .starts_with("250"));
        assert!(c.cmd(&format!("RCPT TO:<{RCPT}>")).await.starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
        c.send(&big.as_bytes()[..cut]).await;
        clients.push(c);
    }
    let tmp = r.store.dir().join("tmp");
    let spooled = || -> Vec<(u64, u64)> {
        std::fs::read_dir(&tmp)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| (m.ino(), m.len()))
            .collect()
    };
    // The sessions have read all but the duplex pipe's 1 MiB; wait until it is on disk.
    let on_disk = (N * (cut - (1 << 20) - SPILL)) as u64;
    for _ in 0..150 {
        if spooled().iter().map(|s| s.1).sum::<u64>() >= on_disk {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let files = spooled();
    let held = r.inflight.used();
    assert!(
        held <= (N * 4 * SPILL) as u64,
        "{N} senders of {SIZE} bytes hold {held} bytes of memory"
    );
    assert_eq!(files.len(), N, "one spool file per message: {files:?}");
    assert!(
        files.iter().map(|s| s.1).sum::<u64>() >= on_disk,
        "{files:?}"
    );

    for c in &mut clients {
        c.send(&big.as_bytes()[cut..]).await;
        assert!(c.cmd(".").await.starts_with("250 "));
    }
    assert_eq!(r.inflight.used(), 0);
    assert!(spooled().is_empty(), "tmp/ not empty after delivery");
    let bodies = inbox(&r, RCPT).await;
    assert_eq!(bodies.len(), N);
    assert!(bodies.iter().all(|b| b == big.as_bytes()));
    let acc = r.store.account(RCPT).unwrap().unwrap();
    let mbox = r.store.mailbox(acc.id, "INBOX").unwrap().unwrap();
    let mut stored: Vec<u64> = Vec::new();
    for m in r.store.messages(mbox.id).unwrap() {
        let p = r
            .store
            .dir()
            .join("mail")
            .join(format!("{:02x}", m.body_id & 0xff))
            .join(format!("{:016x}", m.body_id));
        stored.push(std::fs::metadata(p).unwrap().ino());
    }
    let mut spooled_inodes: Vec<u64> = files.iter().map(|f| f.0).collect();
    stored.sort_unstable();
    spooled_inodes.sort_unstable();
    assert_eq!(
        stored, spooled_inodes,
        "the stored files are the spooled ones"
    );
}

/// A large submission is spooled in the form the local copy is stored in (after the outgoing
/// cleanup) and adopted; what lands in the INBOX is what it was before spooling.
#[tokio::test]
async fn large_submission_is_spooled_and_stored_as_cleaned() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    let msg = message(USER, &filler(600_000));
    let msg = msg.replacen("\r\n", "\r\nX-Mailer: leaky 1.0\r\nReceived: from x\r\n", 1);
    let before = crate::store::Store::spooled_bytes();
    assert!(c.mail(USER, RCPT, &msg).await.starts_with("250 "));
    assert!(crate::store::Store::spooled_bytes() - before >= 590_000);
    let expect = crate::policy::prepare_local_delivery(&crate::policy::headers::clean_outgoing(
        msg.as_bytes(),
    ));
    assert_eq!(inbox(&r, RCPT).await, vec![expect.clone()]);
    assert!(!String::from_utf8_lossy(&expect).contains("X-Mailer"));
}

/// Outgoing mail past `SPILL` is cleaned and signed from its spool (only the header is
/// rewritten; the signed copy for remote recipients is the new header, then the spooled body
/// copied file to file), so, like incoming mail, it needs about `SPILL` of the budget (the
/// share grows in doubling steps, to 2 × `SPILL` at most): three parallel submissions whose
/// sizes add up to far more than the budget are all taken.
#[tokio::test]
async fn large_outgoing_mail_needs_no_budget_for_the_whole_message() {
    const N: usize = 3;
    const SPILL: u64 = 256 * 1024;
    const REMOTE: &str = "bob@example.org";
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |c| {
        // The budget is never less than the size limit.
        c.max_message_size = 1_800_000;
        c.max_inflight_message_memory = ByteSize(1_800_000);
    });
    r.accounts.login(USER, PASS).await.unwrap();
    r.accounts.login(RCPT, "password2").await.unwrap();
    let msg = message(USER, &filler(1_700_000));
    let msg = msg.replacen("\r\n", "\r\nX-Mailer: leaky 1.0\r\n", 1);
    let cut = msg.len() - 100;
    let mut clients = Vec::new();
    for _ in 0..N {
        let mut c = started(&r, Kind::Submissions, true).await;
        c.login().await;
        let mail = format!("MAIL FROM:<{USER}> SIZE={}", msg.len());
        assert_eq!(c.cmd(&mail).await, "250 2.1.0 Ok");
        assert_eq!(c.cmd(&format!("RCPT TO:<{RCPT}>")).await, "250 2.1.5 Ok");
        assert_eq!(c.cmd(&format!("RCPT TO:<{REMOTE}>")).await, "250 2.1.5 Ok");
        assert!(c.cmd("DATA").await.starts_with("354 "));
        c.send(&msg.as_bytes()[..cut]).await;
        clients.push(c);
    }
    let used = r.inflight.used();
    assert!(
        used <= N as u64 * 2 * SPILL,
        "{N} submissions hold {used} bytes"
    );
    for c in &mut clients {
        c.send(&msg.as_bytes()[cut..]).await;
        let reply = c.cmd(".").await;
        assert!(reply.starts_with("250 2.0.0 OK queued as "), "{reply}");
    }
    assert_eq!(r.inflight.used(), 0);
    let cleaned = crate::policy::headers::clean_outgoing(msg.as_bytes());
    let local = crate::policy::prepare_local_delivery(&cleaned);
    assert_eq!(inbox(&r, RCPT).await, vec![local; N]);
    // An IP-literal relay does not sign: the remote copy is the cleaned message.
    let queued = r.store.queued().unwrap();
    assert_eq!(queued.len(), N);
    for q in queued {
        assert_eq!(r.store.read_body(q.body_id).await.unwrap(), cleaned);
        assert_eq!(q.size, cleaned.len() as u64);
    }
    assert_eq!(
        std::fs::read_dir(r.store.dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

/// The signed copy of a large submission (made from the spool: new header, DKIM signature
/// over it and the mapped body, then the body copied file to file) verifies at the receiver,
/// and it is taken with less in-flight budget left than its size.
#[tokio::test]
async fn large_outgoing_mail_is_signed_from_its_spool_and_verifies() {
    use base64::Engine;
    const FROM: &str = "abcdefghi@a.test";
    const LOCAL: &str = "rcptuser1@a.test";
    let d = tempfile::tempdir().unwrap();
    let mut cfg = crate::testkit::test_config(d.path()).unwrap();
    cfg.mail_domain = "a.test".into();
    cfg.max_message_size = 2_000_000;
    cfg.max_inflight_message_memory = ByteSize(2_000_000);
    let key = crate::dkim::Dkim::key_path(&cfg);
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(&key, include_str!("../../tests/data/dkim-pkcs1.pem")).unwrap();
    let r = crate::server::build(cfg).unwrap();
    r.accounts.login(FROM, PASS).await.unwrap();
    r.accounts.login(LOCAL, "password2").await.unwrap();
    // Others hold half of the budget: less than the message, more than it needs.
    let mut others = r.inflight.hold();
    assert!(others.grow(1_000_000, 1_000_000));
    let (mut c, _task) = start(&r, Kind::Submissions, true);
    assert!(c.reply().await.unwrap().starts_with("220 "));
    assert!(c.cmd("EHLO client").await.starts_with("250"));
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("\0{FROM}\0{PASS}"));
    assert!(c
        .cmd(&format!("AUTH PLAIN {auth}"))
        .await
        .starts_with("235 "));
    let msg = message(FROM, &filler(1_500_000));
    let msg = msg.replacen(
        "\r\n",
        "\r\nReceived: from [192.0.2.7]\r\nX-Mailer: m\r\n",
        1,
    );
    assert_eq!(c.cmd(&format!("MAIL FROM:<{FROM}>")).await, "250 2.1.0 Ok");
    assert_eq!(c.cmd(&format!("RCPT TO:<{LOCAL}>")).await, "250 2.1.5 Ok");
    assert_eq!(c.cmd("RCPT TO:<bob@b.test>").await, "250 2.1.5 Ok");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(msg.as_bytes()).await;
    let reply = c.cmd(".").await;
    assert!(reply.starts_with("250 2.0.0 OK queued as "), "{reply}");

    let cleaned = crate::policy::headers::clean_outgoing(msg.as_bytes());
    let queued = r.store.queued().unwrap();
    assert_eq!(queued.len(), 1);
    let signed = r.store.read_body(queued[0].body_id).await.unwrap();
    assert!(signed.starts_with(b"DKIM-Signature: "));
    assert!(
        signed.ends_with(&cleaned),
        "the signature, then the cleaned message"
    );
    assert!(signed.len() > 1_500_000);
    // The receiver's origin check, with the published key.
    let rd = tempfile::tempdir().unwrap();
    let mut rcfg = crate::config::Config::with_domain("rcv.test", rd.path()).unwrap();
    rcfg.dns_servers = vec![crate::testkit::servfail_server()];
    let dns = crate::dns::Dns::new(&rcfg).unwrap();
    let dkim = crate::dkim::Dkim::load(&r.cfg).unwrap();
    dns.pin_dkim_key(&dkim.record_name(), &dkim.txt_record().unwrap())
        .unwrap();
    let peer = Some(std::net::IpAddr::from([192, 0, 2, 1]));
    let verified = crate::dkim::verify_origin(&dns, &rcfg, peer, &signed).await;
    assert_eq!(verified, Ok(()));
    // A changed body byte fails it: the signature covers the spooled body.
    let mut tampered = signed.clone();
    let at = tampered.len() - 2_000;
    tampered[at] ^= 1;
    assert!(crate::dkim::verify_origin(&dns, &rcfg, peer, &tampered)
        .await
        .is_err());
    assert_eq!(
        inbox(&r, LOCAL).await,
        vec![crate::policy::prepare_local_delivery(&cleaned)]
    );
}
