//! Recipients: the limit, what delivery answers per address, and port 25.

use super::tests::{inbox, message, relay, started, RCPT, USER};
use super::Kind;

#[tokio::test]
async fn recipient_limit_refuses_the_1001st() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    c.cmd(&format!("MAIL FROM:<{USER}>")).await;
    // Pipelined, like a client that read PIPELINING.
    c.send(format!("RCPT TO:<{RCPT}>\r\n").repeat(1001).as_bytes())
        .await;
    for i in 0..1000 {
        assert_eq!(c.reply().await.unwrap(), "250 2.1.5 Ok", "rcpt {i}");
    }
    assert_eq!(c.reply().await.unwrap(), "452 4.5.3 Too many recipients");
    c.cmd("DATA").await;
    c.send(message(USER, "many\r\n").as_bytes()).await;
    assert_eq!(c.cmd(".").await, "250 2.0.0 OK");
    assert_eq!(inbox(&r, RCPT).await.len(), 1);
}

#[tokio::test]
async fn recipients_are_checked_by_delivery() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    c.cmd(&format!("MAIL FROM:<{USER}>")).await;
    assert_eq!(
        c.cmd("RCPT TO:<nosuchusr@[127.0.0.1]>").await,
        "550 5.1.1 Recipient address rejected: no such user"
    );
    // Internationalized domains would need IDNA to be looked up; refused with a clear reason.
    assert_eq!(
        c.cmd("RCPT TO:<用户@例子.广告>").await.get(..4),
        Some("501 ")
    );
    assert_eq!(
        c.cmd("RCPT TO:<someone@-bad-.example>").await.get(..4),
        Some("501 ")
    );
    assert_eq!(c.cmd("DATA").await, "554 5.5.1 Error: no valid recipients");
    // Other domains are taken from our own users (they go to the outbound queue).
    c.cmd("RSET").await;
    c.cmd(&format!("MAIL FROM:<{USER}>")).await;
    assert_eq!(c.cmd("RCPT TO:<someone@example.org>").await, "250 2.1.5 Ok");
    assert_eq!(c.cmd("RCPT TO:<someone@[192.0.2.1]>").await, "250 2.1.5 Ok");
}

#[tokio::test]
async fn mx_requires_starttls_and_takes_mail_for_local_users_only() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Mx, false).await;
    let ehlo = c.cmd("EHLO mx.example.org").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<someone@example.org>").await,
        "530 5.7.0 Must issue a STARTTLS command first"
    );

    let mut c = started(&r, Kind::Mx, true).await;
    let ehlo = c.cmd("EHLO mx.example.org").await;
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN =").await,
        "503 5.5.1 Error: authentication not enabled"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<someone@example.org>").await,
        "250 2.1.0 Ok"
    );
    assert_eq!(
        c.cmd("RCPT TO:<other@example.net>").await,
        "554 5.7.1 Relay access denied"
    );
    assert_eq!(
        c.cmd("RCPT TO:<nosuchusr@[127.0.0.1]>").await,
        "550 5.1.1 Recipient address rejected: no such user"
    );
    assert_eq!(c.cmd(&format!("RCPT TO:<{RCPT}>")).await, "250 2.1.5 Ok");
    c.cmd("DATA").await;
    // From an IP-literal relay: trusted on encryption alone, no DKIM (reference §3.5 step 7).
    // The envelope sender differs from From, which incoming mail may do (forwarding, SRS).
    let body = super::tests::message("someone@[192.0.2.1]", "hi\r\n");
    c.send(body.as_bytes()).await;
    assert_eq!(c.cmd(".").await, "250 2.0.0 OK");
    assert_eq!(inbox(&r, RCPT).await, vec![body.as_bytes().to_vec()]);
    // From a named domain the message must carry an aligned DKIM signature; this one has none.
    assert_eq!(
        c.cmd("MAIL FROM:<someone@example.org>").await,
        "250 2.1.0 Ok"
    );
    assert_eq!(c.cmd(&format!("RCPT TO:<{RCPT}>")).await, "250 2.1.5 Ok");
    c.cmd("DATA").await;
    let unsigned = super::tests::message("someone@example.org", "hi\r\n");
    c.send(unsigned.as_bytes()).await;
    assert_eq!(c.cmd(".").await, "554 5.7.1 No DKIM signature found");
    assert_eq!(inbox(&r, RCPT).await, vec![body.as_bytes().to_vec()]);
    // The null sender is fine on port 25.
    assert_eq!(c.cmd("MAIL FROM:<>").await, "250 2.1.0 Ok");
}

/// Issue 14 item 9: 5 000 `550`s came back in 0.02 s, so port 25 told anyone which accounts
/// exist. Refused recipients now cost time after a few, and the connection is dropped at 20.
#[tokio::test]
async fn guessing_recipients_on_25_is_slowed_down_and_then_cut_off() {
    use super::session::{Limits, Session};
    use super::stream::SmtpStream;
    use std::time::{Duration, Instant};
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let (client, server) = tokio::io::duplex(1 << 16);
    let limits = Limits {
        auth_fail_delay: Duration::ZERO,
        bad_rcpt_delay: Duration::from_millis(50),
    };
    let mut session = Session::new(r.clone(), Kind::Mx, true, limits);
    tokio::spawn(async move {
        let mut io = SmtpStream::new(server, Duration::from_secs(10));
        session.greet(&mut io);
        let _ = session.run(&mut io).await;
        io.shutdown().await;
    });
    let mut c = super::tests::Client {
        io: tokio::io::BufReader::new(client),
    };
    c.reply().await.unwrap();
    c.cmd("EHLO mx.example.org").await;
    assert_eq!(c.cmd("MAIL FROM:<x@example.org>").await, "250 2.1.0 Ok");
    let start = Instant::now();
    let guesses: String = (0..30)
        .map(|i| format!("RCPT TO:<guess{i:04}@[127.0.0.1]>\r\n"))
        .collect();
    c.send(guesses.as_bytes()).await;
    for i in 0..19 {
        assert_eq!(
            c.reply().await.unwrap(),
            "550 5.1.1 Recipient address rejected: no such user",
            "rcpt {i}"
        );
    }
    assert_eq!(
        c.reply().await.unwrap(),
        "421 4.7.0 Too many invalid recipients, closing transmission channel"
    );
    assert_eq!(c.reply().await, None, "the connection stays open");
    // Refusals 6 to 19 waited.
    assert!(
        start.elapsed() >= Duration::from_millis(14 * 50),
        "{:?}",
        start.elapsed()
    );
}
