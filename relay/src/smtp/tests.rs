//! Session tests over `tokio::io::duplex` (the "already TLS" mode stands in for 465 and for 587
//! after STARTTLS), plus a few over real sockets and TLS through `serve`.

use super::session::{Limits, Outcome, Session};
use super::stream::SmtpStream;
use super::*;
use crate::config::Config;
use base64::Engine;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

pub(super) const USER: &str = "abcdefghi@[127.0.0.1]";
pub(super) const PASS: &str = "password1";
pub(super) const RCPT: &str = "rcptuser1@[127.0.0.1]";

pub(super) fn relay_with(dir: &Path, tune: impl FnOnce(&mut Config)) -> Arc<Relay> {
    crate::testkit::test_relay(dir, tune).unwrap()
}

/// A relay with the sender and one recipient account.
pub(super) async fn relay(dir: &Path) -> Arc<Relay> {
    let r = relay_with(dir, |_| {});
    r.accounts.login(USER, PASS).await.unwrap();
    r.accounts.login(RCPT, "password2").await.unwrap();
    r
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The client end of a session.
pub(super) struct Client<S> {
    pub(super) io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub(super) async fn send(&mut self, raw: &[u8]) {
        self.io.get_mut().write_all(raw).await.unwrap();
    }

    /// One reply, multi-line replies joined with `\n`; `None` at end of stream.
    pub(super) async fn reply(&mut self) -> Option<String> {
        let mut all = Vec::new();
        loop {
            let mut line = String::new();
            if self.io.read_line(&mut line).await.unwrap() == 0 {
                return None;
            }
            assert!(line.ends_with("\r\n"), "reply without CRLF: {line:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            all.push(line);
            if last {
                return Some(all.join("\n"));
            }
        }
    }

    pub(super) async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await.unwrap_or_default()
    }

    pub(super) async fn login(&mut self) {
        assert!(self.cmd("EHLO client").await.starts_with("250"));
        let r = self
            .cmd(&format!("AUTH PLAIN {}", b64(&format!("\0{USER}\0{PASS}"))))
            .await;
        assert_eq!(r, "235 2.7.0 Authentication successful");
    }

    /// MAIL, one RCPT, DATA, the body (already dot-stuffed, ending in CRLF); the final reply.
    pub(super) async fn mail(&mut self, from: &str, to: &str, body: &str) -> String {
        assert_eq!(
            self.cmd(&format!("MAIL FROM:<{from}>")).await,
            "250 2.1.0 Ok"
        );
        assert_eq!(self.cmd(&format!("RCPT TO:<{to}>")).await, "250 2.1.5 Ok");
        assert!(self.cmd("DATA").await.starts_with("354 "));
        self.send(body.as_bytes()).await;
        self.cmd(".").await
    }
}

/// A session over a duplex pipe; `tls` says whether it runs as if TLS were already up.
pub(super) fn start(
    relay: &Arc<Relay>,
    kind: Kind,
    tls: bool,
) -> (Client<tokio::io::DuplexStream>, JoinHandle<Outcome>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let limits = Limits {
        auth_fail_delay: Duration::ZERO,
        bad_rcpt_delay: Duration::ZERO,
    };
    let mut session = Session::new(relay.clone(), kind, tls, limits);
    // The address the IP-literal senders of these tests use (someone@[192.0.2.1]).
    session.set_peer(Some(std::net::IpAddr::from([192, 0, 2, 1])));
    let task = tokio::spawn(async move {
        let mut io = SmtpStream::new(server, Duration::from_secs(10));
        session.greet(&mut io);
        session.run(&mut io).await
    });
    (
        Client {
            io: BufReader::new(client),
        },
        task,
    )
}

pub(super) async fn started(
    relay: &Arc<Relay>,
    kind: Kind,
    tls: bool,
) -> Client<tokio::io::DuplexStream> {
    let (mut c, _task) = start(relay, kind, tls);
    let greeting = c.reply().await.unwrap();
    assert_eq!(greeting, "220 [127.0.0.1] ESMTP relaybox");
    c
}

/// Bodies in the INBOX of `addr`.
pub(super) use crate::testkit::inbox;

/// A message that passes the encryption gate unchanged (its Subject is already `[...]`), with
/// `text` in the MIME preamble, where the gate does not look: so dot-stuffing and size cases can
/// be written as plain lines.
pub(super) fn message(from: &str, text: &str) -> String {
    let enc = String::from_utf8(crate::policy::testmsg::encrypted(from, RCPT)).unwrap_or_default();
    let (head, body) = enc.split_once("\r\n\r\n").unwrap_or((&enc, ""));
    format!("{head}\r\n\r\n{text}{body}")
}

#[tokio::test]
async fn ehlo_after_tls_advertises_auth_and_limits() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    let ehlo = c.cmd("EHLO client.example").await;
    let lines: Vec<&str> = ehlo.lines().collect();
    assert_eq!(lines[0], "250-[127.0.0.1]");
    for cap in [
        "AUTH PLAIN LOGIN",
        "SIZE 31457280",
        "8BITMIME",
        "SMTPUTF8",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(lines.iter().any(|l| &l[4..] == cap), "{cap} in {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("CHUNKING"),
        "{ehlo}"
    );
    assert_eq!(c.cmd("HELO client").await, "250 [127.0.0.1]");
}

#[tokio::test]
async fn plain_submission_offers_starttls_and_refuses_auth_and_mail() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let (mut c, task) = start(&r, Kind::Submission, false);
    c.reply().await.unwrap();
    let ehlo = c.cmd("EHLO client").await;
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let plain = b64(&format!("\0{USER}\0{PASS}"));
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {plain}")).await,
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{USER}>")).await,
        "530 5.7.0 Must issue a STARTTLS command first"
    );
    // A command pipelined after STARTTLS is dropped, not answered.
    c.send(b"STARTTLS\r\nNOOP\r\n").await;
    assert_eq!(c.reply().await.unwrap(), "220 2.0.0 Ready to start TLS");
    assert_eq!(task.await.unwrap(), Outcome::StartTls);
    assert_eq!(c.reply().await, None);
}

#[tokio::test]
async fn auth_plain_with_initial_response_and_with_continuation() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    assert_eq!(
        c.cmd("AUTH PLAIN =").await,
        "503 5.5.1 Error: already authenticated"
    );

    let mut c = started(&r, Kind::Submissions, true).await;
    c.cmd("EHLO client").await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "334");
    let r2 = c.cmd(&b64(&format!("{USER}\0{USER}\0{PASS}"))).await;
    assert_eq!(r2, "235 2.7.0 Authentication successful");

    let mut c = started(&r, Kind::Submissions, true).await;
    c.cmd("EHLO client").await;
    let wrong = b64(&format!("\0{USER}\0password2"));
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {wrong}")).await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(c.cmd("AUTH PLAIN").await, "334");
    assert_eq!(c.cmd("*").await, "501 5.7.0 Authentication aborted");
    assert_eq!(
        c.cmd("AUTH CRAM-MD5").await,
        "504 5.5.4 Unrecognized authentication type"
    );
    // A session that failed can still log in.
    c.login().await;
}

#[tokio::test]
async fn auth_login_success_and_failure() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.cmd("EHLO client").await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64(USER)).await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        c.cmd(&b64(PASS)).await,
        "235 2.7.0 Authentication successful"
    );

    let mut c = started(&r, Kind::Submissions, true).await;
    c.cmd("EHLO client").await;
    assert_eq!(
        c.cmd(&format!("AUTH LOGIN {}", b64(USER))).await,
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.cmd(&b64("wrong-password")).await,
        "535 5.7.8 Authentication credentials invalid"
    );
}

#[tokio::test]
async fn first_login_over_smtp_creates_the_account() {
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |_| {});
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    assert!(r.store.account(USER).unwrap().is_some());
}

#[tokio::test]
async fn mail_needs_auth_and_the_sender_must_be_the_login() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{USER}>")).await,
        "503 5.5.1 Error: send HELO/EHLO first"
    );
    c.cmd("EHLO client").await;
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{USER}>")).await,
        "530 5.7.0 Authentication required"
    );
    c.login().await;
    // As Postfix with smtpd_delay_reject: the refusal comes at RCPT TO, for every recipient.
    assert_eq!(c.cmd(&format!("MAIL FROM:<{RCPT}>")).await, "250 2.1.0 Ok");
    for _ in 0..2 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{RCPT}>")).await,
            format!("553 5.7.1 <{RCPT}>: Sender address rejected: not owned by user {USER}")
        );
    }
    assert_eq!(c.cmd("DATA").await, "554 5.5.1 Error: no valid recipients");
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Ok");
    assert_eq!(c.cmd("MAIL FROM:<>").await, "250 2.1.0 Ok");
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{RCPT}>")).await.get(..3),
        Some("553")
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Ok");
    assert_eq!(
        c.cmd("MAIL FROM:<ABCDEFGHI@[127.0.0.1]> BODY=8BITMIME SMTPUTF8")
            .await,
        "250 2.1.0 Ok"
    );
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{USER}>")).await,
        "503 5.5.1 Error: nested MAIL command"
    );
}

#[tokio::test]
async fn from_header_must_match_the_envelope() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    let reply = c.mail(USER, RCPT, &message(RCPT, "forged\r\n")).await;
    assert_eq!(reply, format!("500 Invalid FROM <{RCPT}> for <{USER}>"));
    assert!(inbox(&r, RCPT).await.is_empty());
}

#[tokio::test]
async fn delivered_message_lands_in_the_inbox() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    let body = message(USER, "hello\r\n");
    assert_eq!(c.mail(USER, RCPT, &body).await, "250 2.0.0 OK");
    assert_eq!(inbox(&r, RCPT).await, vec![body.into_bytes()]);
    // The session goes on: a second transaction on the same connection.
    let body2 = message(USER, "again\r\n");
    assert_eq!(c.mail(USER, RCPT, &body2).await, "250 2.0.0 OK");
    assert_eq!(inbox(&r, RCPT).await.len(), 2);
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    assert_eq!(c.reply().await, None);
}

#[tokio::test]
async fn dot_stuffing_is_undone_exactly() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    // The body is a single "." line, then a line "..x" that the client stuffed to "...x".
    let stuffed = message(USER, "..\r\n...x\r\n");
    assert_eq!(c.mail(USER, RCPT, &stuffed).await, "250 2.0.0 OK");
    let want = message(USER, ".\r\n..x\r\n");
    assert_eq!(inbox(&r, RCPT).await, vec![want.into_bytes()]);
}

#[tokio::test]
async fn size_limits_on_mail_from_and_in_data() {
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |c| c.max_message_size = 2000);
    r.accounts.login(USER, PASS).await.unwrap();
    r.accounts.login(RCPT, "password2").await.unwrap();
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    let too_big = "552 5.3.4 Message size exceeds fixed maximum message size";
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{USER}> SIZE=2001")).await,
        too_big
    );
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{USER}> SIZE=99999999999999999999999"))
            .await,
        too_big
    );
    let big = message(USER, &"0123456789abcdefghi\r\n".repeat(200));
    assert_eq!(c.mail(USER, RCPT, &big).await, too_big);
    // Read to the end marker: the session is still in step.
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
    assert!(inbox(&r, RCPT).await.is_empty());
    let small = message(USER, "fits\r\n");
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{USER}> SIZE=100")).await,
        "250 2.1.0 Ok"
    );
    assert_eq!(c.cmd(&format!("RCPT TO:<{RCPT}>")).await, "250 2.1.5 Ok");
    c.cmd("DATA").await;
    c.send(small.as_bytes()).await;
    assert_eq!(c.cmd(".").await, "250 2.0.0 OK");
}

#[tokio::test]
async fn endless_oversize_data_is_cut_off() {
    let d = tempfile::tempdir().unwrap();
    let r = relay_with(d.path(), |c| c.max_message_size = 1024);
    r.accounts.login(USER, PASS).await.unwrap();
    r.accounts.login(RCPT, "password2").await.unwrap();
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    c.cmd(&format!("MAIL FROM:<{USER}>")).await;
    c.cmd(&format!("RCPT TO:<{RCPT}>")).await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(&vec![b'x'; 20 * 1024]).await;
    assert_eq!(
        c.reply().await.unwrap(),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert_eq!(c.reply().await, None);
}

#[tokio::test]
async fn bare_lf_in_a_command_closes_the_connection() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.send(b"EHLO client\nNOOP\r\n").await;
    assert_eq!(
        c.reply().await.unwrap(),
        "500 5.5.2 Bare LF not allowed, lines must end with CRLF"
    );
    assert_eq!(c.reply().await, None);
}

#[tokio::test]
async fn over_long_command_line_closes_the_connection() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.send(&vec![b'A'; 10_000]).await;
    assert_eq!(c.reply().await.unwrap(), "500 5.5.2 Line too long");
    assert_eq!(c.reply().await, None);
}

#[tokio::test]
async fn bare_lf_in_data_is_no_end_marker_and_refuses_the_message() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    c.cmd(&format!("MAIL FROM:<{USER}>")).await;
    c.cmd(&format!("RCPT TO:<{RCPT}>")).await;
    c.cmd("DATA").await;
    // A smuggling attempt: `\n.\n` then a second transaction inside the first one's data.
    let smuggle = format!(
        "{}\n.\nMAIL FROM:<{USER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n{}",
        message(USER, "x"),
        message(USER, "smuggled\r\n")
    );
    c.send(smuggle.as_bytes()).await;
    assert_eq!(
        c.cmd(".").await,
        "554 5.6.0 Bare CR or LF in message data not allowed, lines must end with CRLF"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
    assert!(inbox(&r, RCPT).await.is_empty());
}

#[tokio::test]
async fn simple_commands() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submission, false).await;
    let vrfy = "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery";
    assert_eq!(c.cmd(&format!("VRFY {RCPT}")).await, vrfy);
    assert_eq!(c.cmd("VRFY nosuchuser").await, vrfy);
    assert_eq!(c.cmd("vrfy").await, vrfy);
    assert_eq!(c.cmd("EXPN staff").await.get(..4), Some("502 "));
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Ok");
    assert!(c.cmd("HELP").await.starts_with("214 "));
    assert_eq!(c.cmd("FOO bar").await, "500 5.5.2 Command not recognized");
    assert_eq!(c.cmd("").await, "500 5.5.2 Command not recognized");
    assert_eq!(c.cmd("EHLO").await.get(..4), Some("501 "));
    c.cmd("EHLO client").await;
    assert_eq!(
        c.cmd("RCPT TO:<a@b>").await,
        "503 5.5.1 Error: need MAIL command"
    );
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
}

#[tokio::test]
async fn bad_syntax_is_501() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.login().await;
    assert_eq!(c.cmd("MAIL FROM:nobrackets").await.get(..4), Some("501 "));
    assert_eq!(c.cmd("MAIL FROM:<a@@b>").await.get(..4), Some("501 "));
    assert_eq!(c.cmd(&format!("MAIL FROM:<{USER}>")).await, "250 2.1.0 Ok");
    assert_eq!(c.cmd("RCPT TO:<no-at-sign>").await.get(..4), Some("501 "));
    assert_eq!(c.cmd("RCPT to").await.get(..4), Some("501 "));
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    for _ in 0..19 {
        assert!(c.cmd("BOGUS").await.starts_with("500"));
    }
    assert!(c.cmd("BOGUS").await.starts_with("500"));
    assert_eq!(
        c.reply().await.unwrap(),
        "421 4.7.0 Too many errors, closing transmission channel"
    );
    assert_eq!(c.reply().await, None);
}

#[tokio::test]
async fn idle_session_times_out() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let (client, server) = tokio::io::duplex(1 << 16);
    let mut session = Session::new(r.clone(), Kind::Submissions, true, Limits::default());
    tokio::spawn(async move {
        let mut io = SmtpStream::new(server, Duration::from_millis(200));
        session.greet(&mut io);
        session.run(&mut io).await
    });
    let mut c = Client {
        io: BufReader::new(client),
    };
    c.reply().await.unwrap();
    assert_eq!(
        c.reply().await.unwrap(),
        "421 4.4.2 Timeout exceeded, closing transmission channel"
    );
    assert_eq!(c.reply().await, None);
}

#[tokio::test]
async fn shutdown_tells_idle_sessions_421() {
    let d = tempfile::tempdir().unwrap();
    let r = relay(d.path()).await;
    let mut c = started(&r, Kind::Submissions, true).await;
    c.cmd("EHLO client").await;
    r.shutdown.trigger();
    assert_eq!(
        c.reply().await.unwrap(),
        "421 4.3.2 Service shutting down, closing transmission channel"
    );
    assert_eq!(c.reply().await, None);
}
