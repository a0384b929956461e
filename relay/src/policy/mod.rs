//! The policy decision: one pure function over an envelope and the message bytes, answering
//! accept (possibly with rewritten bytes) or reject with an exact SMTP reply. Every path (SMTP
//! submission, local delivery, MX, `/mxdeliv`) asks it before anything is stored or queued. It
//! does no I/O and knows nothing of the store or any protocol session.

pub mod codes;
pub mod gate;
pub mod headers;
pub mod ratelimit;
pub mod throttle;

use std::fmt;

/// An SMTP reply: code plus the text after it (which may carry an enhanced status code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            text: text.into(),
        }
    }
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Which way a message travels; the rules differ (reference §3.4 vs §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From an authenticated local user (submission on 465/587).
    Outgoing,
    /// From another MTA or relay (port 25, `/mxdeliv`).
    Incoming,
}

#[derive(Debug, Clone)]
pub struct Envelope {
    /// The MAIL FROM address (empty for the null sender).
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The address the message came from (the SMTP or `/mxdeliv` client), when known: the
    /// origin check of incoming mail compares address-literal senders with it.
    pub peer: Option<std::net::IpAddr>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accept; the bytes to store or forward (after header cleanup).
    Accept(Vec<u8>),
    Reject(Reply),
}

/// What kind of message passed (or failed) the gate; metrics count these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    Encrypted,
    SecureJoin,
    SetupMessage,
    MailerDaemon,
    Unencrypted,
}

/// The reply every unencrypted message gets (reference §3.11), outgoing and incoming.
pub fn encryption_needed() -> Reply {
    Reply::new(523, "Encryption Needed: Invalid Unencrypted Mail")
}

fn parse(data: &[u8]) -> Result<mail_parser::Message<'_>, Reply> {
    mail_parser::MessageParser::new()
        .parse(data)
        .ok_or_else(|| Reply::new(500, "Failed to parse message: no header"))
}

/// The first address of the From header, lower-cased; for a group, its first member.
fn first_from(msg: &mail_parser::Message) -> Option<String> {
    let from = msg.from()?;
    let first = match from {
        mail_parser::Address::List(l) => l.first(),
        mail_parser::Address::Group(g) => g.iter().flat_map(|g| g.addresses.iter()).next(),
    }?;
    first.address().map(|a| a.trim().to_ascii_lowercase())
}

/// Addresses in the From header, over all From fields (RFC 5322 allows exactly one field).
fn from_count(msg: &mail_parser::Message) -> usize {
    let fields = msg
        .headers()
        .iter()
        .filter(|h| h.name == mail_parser::HeaderName::From)
        .count();
    let addresses = match msg.from() {
        Some(mail_parser::Address::List(l)) => l.len(),
        Some(mail_parser::Address::Group(g)) => g.iter().map(|g| g.addresses.len()).sum(),
        None => 0,
    };
    fields.max(addresses)
}

fn from_or_reject(msg: &mail_parser::Message) -> Result<String, Reply> {
    // Only one address is checked (against the login, the DKIM domain, the peer); a second one
    // would reach the recipient unchecked, and clients may show either.
    if from_count(msg) > 1 {
        return Err(Reply::new(
            500,
            "Invalid FROM header: more than one address".to_string(),
        ));
    }
    match first_from(msg) {
        Some(f) if f.contains('@') => Ok(f),
        _ => {
            let raw = msg.header_raw("From").unwrap_or("").trim();
            Err(Reply::new(500, format!("Invalid FROM header: {raw}")))
        }
    }
}

/// The first address of the From header, lower-cased, if it has one.
pub fn from_address(data: &[u8]) -> Result<Option<String>, Reply> {
    let msg = mail_parser::MessageParser::new()
        .parse_headers(data)
        .ok_or_else(|| Reply::new(500, "Failed to parse message: no header"))?;
    Ok(first_from(&msg))
}

/// Classifies a parsed message by the gate's rules for one direction.
pub fn classify(
    msg: &mail_parser::Message,
    from: &str,
    env: &Envelope,
    dir: Direction,
) -> MailKind {
    if gate::is_encrypted(msg, dir) {
        MailKind::Encrypted
    } else if gate::is_securejoin(msg) {
        MailKind::SecureJoin
    } else if dir == Direction::Outgoing
        && gate::is_self_sent_setup_message(msg, from, &env.rcpt_to)
    {
        MailKind::SetupMessage
    } else if dir == Direction::Incoming && gate::is_mailer_daemon_report(msg, from) {
        MailKind::MailerDaemon
    } else {
        MailKind::Unencrypted
    }
}

/// Outgoing rules (reference §3.4), in the reference's order: the From header must name the
/// envelope sender; the message must be encrypted (or one of the two exceptions); then the
/// header is cleaned as the reference's reinjection does.
pub fn check_outgoing(env: &Envelope, data: &[u8]) -> Verdict {
    check_outgoing_kind(env, data).0
}

/// `check_outgoing`, also saying what kind of message it was (for metrics).
pub fn check_outgoing_kind(env: &Envelope, data: &[u8]) -> (Verdict, MailKind) {
    check(env, data, Direction::Outgoing)
}

/// Both directions share the order of the reference: parse, From, (outgoing: From = envelope),
/// gate; only an outgoing message is rewritten.
fn check(env: &Envelope, data: &[u8], dir: Direction) -> (Verdict, MailKind) {
    match judge(env, data, dir) {
        (Ok(()), kind) => {
            let out = match dir {
                Direction::Outgoing => headers::clean_outgoing(data),
                Direction::Incoming => data.to_vec(),
            };
            (Verdict::Accept(out), kind)
        }
        (Err(r), kind) => (Verdict::Reject(r), kind),
    }
}

/// The verdict of [`check`] without the copy of the message it hands back (the caller
/// rewrites an outgoing header with [`headers::clean_outgoing`] itself): a big message is not
/// copied to the heap to be passed on unchanged.
pub fn judge(env: &Envelope, data: &[u8], dir: Direction) -> (Result<(), Reply>, MailKind) {
    let reject = |r| (Err(r), MailKind::Unencrypted);
    let msg = match parse(data) {
        Ok(m) => m,
        Err(r) => return reject(r),
    };
    let from = match from_or_reject(&msg) {
        Ok(f) => f,
        Err(r) => return reject(r),
    };
    if dir == Direction::Outgoing && !from.eq_ignore_ascii_case(&env.mail_from) {
        return reject(Reply::new(
            500,
            format!("Invalid FROM <{from}> for <{}>", env.mail_from),
        ));
    }
    let kind = classify(&msg, &from, env, dir);
    if kind == MailKind::Unencrypted {
        return (Err(encryption_needed()), kind);
    }
    (Ok(()), kind)
}

/// Incoming rules (reference §3.5 steps 1–6): the From header must parse; the message must be
/// encrypted, a Secure-Join request or a mailer-daemon report, since every account we create
/// refuses unencrypted mail. DKIM (step 7) is the caller's, after this check.
pub fn check_incoming(env: &Envelope, data: &[u8]) -> Verdict {
    check_incoming_kind(env, data).0
}

/// `check_incoming`, also saying what kind of message it was.
pub fn check_incoming_kind(env: &Envelope, data: &[u8]) -> (Verdict, MailKind) {
    check(env, data, Direction::Incoming)
}

pub use headers::prepare_local_delivery;

/// Test messages shared by the policy tests, the protocol tests of other modules and the admin
/// page's self-test (a message of the shape the gate accepts, with random content).
pub mod testmsg {
    use base64::Engine;

    fn packet(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0xC0 | tag, 255];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// An armored PKESK + SEIPD payload: the right shape, random content.
    pub fn armored() -> String {
        let data = [packet(1, &[3u8; 40]), packet(18, &[1u8; 200])].concat();
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect();
        format!(
            "-----BEGIN PGP MESSAGE-----\r\n\r\n{}\r\n=AAAA\r\n-----END PGP MESSAGE-----\r\n",
            lines.join("\r\n")
        )
    }

    /// A message with the OpenPGP/MIME structure the gate accepts.
    pub fn encrypted(from: &str, to: &str) -> Vec<u8> {
        format!(
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: [...]\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"relaybox-7f3a9c1e5b\"\r\n\r\n\
             --relaybox-7f3a9c1e5b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n\
             --relaybox-7f3a9c1e5b\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n{}\r\n--relaybox-7f3a9c1e5b--\r\n",
            armored()
        )
        .into_bytes()
    }

    pub fn plain(from: &str, to: &str) -> Vec<u8> {
        format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: hi\r\n\r\nhello\r\n").into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(from: &str) -> Envelope {
        Envelope {
            mail_from: from.into(),
            rcpt_to: vec!["b@x.org".into()],
            peer: None,
        }
    }

    #[test]
    fn encrypted_mail_passes_and_is_cleaned() {
        let m = testmsg::encrypted("alice@x.org", "b@x.org");
        let (v, kind) = check_outgoing_kind(&env("alice@x.org"), &m);
        assert_eq!(kind, MailKind::Encrypted);
        match v {
            Verdict::Accept(out) => {
                assert!(String::from_utf8_lossy(&out).contains("Subject: [...]"))
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            check_incoming(&env("x@y.org"), &m),
            Verdict::Accept(_)
        ));
    }

    #[test]
    fn from_must_match_envelope_sender() {
        let m = testmsg::encrypted("alice@x.org", "b@x.org");
        assert!(matches!(
            check_outgoing(&env("ALICE@x.org"), &m),
            Verdict::Accept(_)
        ));
        match check_outgoing(&env("mallory@x.org"), &m) {
            Verdict::Reject(r) => {
                assert_eq!(
                    r.to_string(),
                    "500 Invalid FROM <alice@x.org> for <mallory@x.org>"
                )
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn plain_mail_is_refused_both_ways() {
        let m = testmsg::plain("alice@x.org", "b@x.org");
        let want = Verdict::Reject(Reply::new(
            523,
            "Encryption Needed: Invalid Unencrypted Mail",
        ));
        assert_eq!(check_outgoing(&env("alice@x.org"), &m), want);
        assert_eq!(check_incoming(&env("alice@x.org"), &m), want);
    }

    /// Issue 14 item 9: only the first From address was checked, so a second one rode along.
    #[test]
    fn more_than_one_from_address_is_refused_both_ways() {
        let good = String::from_utf8(testmsg::encrypted("alice@x.org", "b@x.org")).unwrap();
        let want = Verdict::Reject(Reply::new(
            500,
            "Invalid FROM header: more than one address",
        ));
        for bad in [
            good.replacen(
                "From: <alice@x.org>",
                "From: <alice@x.org>, <mallory@x.org>",
                1,
            ),
            good.replacen(
                "From: <alice@x.org>",
                "From: <alice@x.org>\r\nFrom: <mallory@x.org>",
                1,
            ),
            good.replacen(
                "From: <alice@x.org>",
                "From: friends: <alice@x.org>, <mallory@x.org>;",
                1,
            ),
        ] {
            assert_eq!(
                check_outgoing(&env("alice@x.org"), bad.as_bytes()),
                want,
                "{bad}"
            );
            assert_eq!(
                check_incoming(&env("alice@x.org"), bad.as_bytes()),
                want,
                "{bad}"
            );
        }
        assert!(matches!(
            check_outgoing(&env("alice@x.org"), good.as_bytes()),
            Verdict::Accept(_)
        ));
    }

    #[test]
    fn missing_from_is_refused() {
        let m = b"To: b@x.org\r\n\r\nhi\r\n";
        assert!(matches!(
            check_outgoing(&env("a@x.org"), m),
            Verdict::Reject(Reply { code: 500, .. })
        ));
    }

    #[test]
    fn local_delivery_strips_trace_and_dkim_headers() {
        let m = b"Received: from x\r\n\tby y\r\nDKIM-Signature: v=1;\r\n b=abc\r\nFrom: a@x.org\r\nSubject: s\r\n\r\nReceived: in body\r\n";
        let out = prepare_local_delivery(m);
        assert_eq!(
            out,
            b"From: a@x.org\r\nSubject: s\r\n\r\nReceived: in body\r\n".to_vec()
        );
    }
}
