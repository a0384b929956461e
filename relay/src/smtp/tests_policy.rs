//! The policy as a submitting client meets it: what is refused is never stored.

use super::tests::{inbox, message, relay, relay_with, started, PASS, RCPT, USER};
use super::Kind;
use crate::store::CrashPoint;

fn plain(from: &str) -> String {
    format!("From: <{from}>\r\nTo: <{RCPT}>\r\nSubject: hi\r\n\r\nplain text\r\n")
}

#[tokio::test]
async fn unencrypted_mail_gets_523_and_is_not_stored() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    assert_eq!(
        c.mail(USER, RCPT, &plain(USER)).await,
        "523 Encryption Needed: Invalid Unencrypted Mail"
    );
    assert!(inbox(&r, RCPT).await.is_empty());
}

#[tokio::test]
async fn outgoing_headers_are_cleaned_before_storing() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    let m = message(USER, "")
        .replacen("Subject: [...]", "Subject: secret plans", 1)
        .replacen(
            "From:",
            "Received: from [192.0.2.7] by laptop\r\nX-Mailer: Mutt\r\nUser-Agent: Foo\r\nX-Originating-IP: [192.0.2.7]\r\nFrom:",
            1,
        );
    assert_eq!(c.mail(USER, RCPT, &m).await, "250 2.0.0 OK");
    let got = String::from_utf8(inbox(&r, RCPT).await.remove(0)).unwrap();
    let head = got.split("\r\n\r\n").next().unwrap();
    assert!(head.contains("Subject: [...]"), "{head}");
    for gone in ["secret", "Received", "X-Mailer", "User-Agent", "192.0.2.7"] {
        assert!(!head.contains(gone), "{gone} left in {head}");
    }
}

#[tokio::test]
async fn the_eleventh_message_in_a_burst_gets_450() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    for i in 0..10 {
        assert_eq!(
            c.mail(USER, RCPT, &message(USER, "")).await,
            "250 2.0.0 OK",
            "message {i}"
        );
    }
    // As Postfix with smtpd_delay_reject: MAIL is accepted, every RCPT gets the 450.
    assert_eq!(c.cmd(&format!("MAIL FROM:<{USER}>")).await, "250 2.1.0 Ok");
    for _ in 0..2 {
        let reply = c.cmd(&format!("RCPT TO:<{RCPT}>")).await;
        assert!(
            reply.starts_with(&format!("450 4.7.1: Too much mail from {USER}")),
            "{reply}"
        );
    }
    assert_eq!(c.cmd("DATA").await, "554 5.5.1 Error: no valid recipients");
    assert_eq!(inbox(&r, RCPT).await.len(), 10);
}

#[tokio::test]
async fn a_mail_command_without_recipients_takes_nothing_from_the_send_rate() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    for _ in 0..30 {
        assert_eq!(c.cmd(&format!("MAIL FROM:<{USER}>")).await, "250 2.1.0 Ok");
        assert_eq!(c.cmd("RSET").await, "250 2.0.0 Ok");
    }
    // One message with many recipients is one message.
    c.cmd(&format!("MAIL FROM:<{USER}>")).await;
    for _ in 0..15 {
        assert_eq!(c.cmd(&format!("RCPT TO:<{RCPT}>")).await, "250 2.1.5 Ok");
    }
    c.cmd("RSET").await;
    for i in 0..9 {
        assert_eq!(
            c.mail(USER, RCPT, &message(USER, "")).await,
            "250 2.0.0 OK",
            "message {i}"
        );
    }
}

#[tokio::test]
async fn full_mailbox_refuses_with_the_quota_error() {
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |c| {
        c.max_mailbox_size = crate::config::ByteSize(3000);
    });
    r.accounts.login(USER, PASS).await.unwrap();
    r.accounts.login(RCPT, "password2").await.unwrap();
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    let m = message(USER, &"x".repeat(1200));
    assert!(m.len() > 1500 && m.len() < 3000, "{}", m.len());
    assert_eq!(c.mail(USER, RCPT, &m).await, "250 2.0.0 OK");
    // The next one does not fit, and the one stored is younger than a day, so the quota cleanup
    // may not remove it.
    let reply = c.mail(USER, RCPT, &m).await;
    assert_eq!(
        reply,
        format!("552 5.2.2 <{RCPT}>: Quota exceeded (mailbox for user is full)")
    );
    assert_eq!(inbox(&r, RCPT).await.len(), 1);
}

#[tokio::test]
async fn disk_full_is_a_temporary_error_and_the_session_goes_on() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    r.store.crash_at(Some(CrashPoint::DiskFull));
    let reply = c.mail(USER, RCPT, &message(USER, "")).await;
    assert!(reply.starts_with("451 "), "{reply}");
    r.store.crash_at(None);
    assert!(inbox(&r, RCPT).await.is_empty());
    assert_eq!(c.mail(USER, RCPT, &message(USER, "")).await, "250 2.0.0 OK");
    assert_eq!(inbox(&r, RCPT).await.len(), 1);
}
