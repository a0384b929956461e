//! The policy decision: one pure function over an envelope and the message bytes, answering
//! accept (possibly with rewritten bytes) or reject with an exact SMTP reply. Every path (SMTP
//! submission, local delivery, MX, `/mxdeliv`) asks it before anything is stored or queued. It
//! does no I/O and knows nothing of the store or any protocol session.

pub mod gate;
pub mod ratelimit;

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
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accept; the bytes to store or forward (after header cleanup).
    Accept(Vec<u8>),
    Reject(Reply),
}

/// The first address of the From header, lower-cased; for a group, its first member.
pub fn from_address(data: &[u8]) -> Result<Option<String>, Reply> {
    let msg = mail_parser::MessageParser::new()
        .parse_headers(data)
        .ok_or_else(|| Reply::new(500, "Failed to parse message: no headers"))?;
    let from = match msg.from() {
        Some(f) => f,
        None => return Ok(None),
    };
    let addr = from
        .first()
        .and_then(|a| a.address())
        .map(|a| a.trim().to_ascii_lowercase());
    Ok(addr)
}

/// Outgoing rules (reference §3.4): the From header must name the envelope sender. The
/// encryption gate and header cleanup plug in here.
pub fn check_outgoing(env: &Envelope, data: &[u8]) -> Verdict {
    let from = match from_address(data) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Verdict::Reject(Reply::new(500, "Invalid FROM header: missing"));
        }
        Err(r) => return Verdict::Reject(r),
    };
    if !from.eq_ignore_ascii_case(&env.mail_from) {
        return Verdict::Reject(Reply::new(
            500,
            format!("Invalid FROM <{from}> for <{}>", env.mail_from),
        ));
    }
    Verdict::Accept(data.to_vec())
}

/// Incoming rules (reference §3.5).
pub fn check_incoming(_env: &Envelope, data: &[u8]) -> Verdict {
    match from_address(data) {
        Ok(Some(_)) => Verdict::Accept(data.to_vec()),
        Ok(None) => Verdict::Reject(Reply::new(500, "Invalid FROM header: missing")),
        Err(r) => Verdict::Reject(r),
    }
}

/// Headers removed before a message lands in a local mailbox (reference §3.10).
const LOCAL_STRIP: &[&str] = &["dkim-signature", "authentication-results", "received"];

/// Removes `LOCAL_STRIP` headers (with their continuation lines) from the top-level header.
pub fn prepare_local_delivery(data: &[u8]) -> Vec<u8> {
    strip_headers(data, LOCAL_STRIP)
}

/// Removes the named top-level header fields, keeping every other byte as it was.
pub fn strip_headers(data: &[u8], names: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut pos = 0;
    let mut skipping = false;
    while pos < data.len() {
        let end = data[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(data.len());
        let line = &data[pos..end];
        if line == b"\r\n" || line == b"\n" {
            // End of the header: the body is copied untouched.
            out.extend_from_slice(&data[pos..]);
            return out;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            skipping = line
                .iter()
                .position(|&b| b == b':')
                .map(|c| {
                    let name = String::from_utf8_lossy(&line[..c]);
                    names.iter().any(|n| name.trim().eq_ignore_ascii_case(n))
                })
                .unwrap_or(false);
        }
        if !skipping {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(from: &str) -> Envelope {
        Envelope {
            mail_from: from.into(),
            rcpt_to: vec!["b@x.org".into()],
        }
    }

    #[test]
    fn from_must_match_envelope_sender() {
        let m = b"From: Alice <alice@x.org>\r\nTo: b@x.org\r\n\r\nhi\r\n";
        assert!(matches!(
            check_outgoing(&env("alice@x.org"), m),
            Verdict::Accept(_)
        ));
        assert!(matches!(
            check_outgoing(&env("ALICE@x.org"), m),
            Verdict::Accept(_)
        ));
        match check_outgoing(&env("mallory@x.org"), m) {
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
