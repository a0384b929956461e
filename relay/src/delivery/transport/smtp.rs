//! A small SMTP client for the fallback path (reference §3.8): greeting, EHLO, mandatory
//! STARTTLS, EHLO again, MAIL, one RCPT per recipient, DATA with a dot-stuffed body, QUIT.
//!
//! No pipelining and no connection reuse: each delivery opens its own connection and closes it
//! with QUIT. (The reference pools one idle SMTP connection per host for 100 s; relay-to-relay
//! mail normally goes over HTTPS, so SMTP reuse is left out for simplicity.)

use crate::policy::Reply;
use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Read and write timeout for every command, reply and piece of the body.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest reply line we accept (RFC 5321 allows 512 octets; be generous).
const MAX_LINE: usize = 4096;
/// Most lines in one multiline reply (an EHLO answer has a dozen).
const MAX_LINES: usize = 128;
/// The body is written in pieces of this size, each with its own write timeout.
const WRITE_CHUNK: usize = 64 * 1024;

/// One complete reply from the server: its code and the text of each line (after `250-`/`250 `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl SmtpReply {
    /// The reply as we report it: the code and the lines joined by spaces.
    pub fn to_reply(&self) -> Reply {
        Reply::new(self.code, self.lines.join(" ").trim().to_string())
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Does this EHLO answer list `keyword` (e.g. `STARTTLS`, `SIZE`)? The first line is the
    /// greeting, not a capability.
    pub fn has_capability(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split_ascii_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
        })
    }
}

/// Parses one reply from the start of `buf`. `Ok(None)`: not complete yet, read more.
/// `Ok(Some((reply, n)))`: the reply and how many bytes it took. Lines end in CRLF or a bare LF;
/// each line is three digits, then `-` (more lines follow), a space or nothing (last line).
/// Every line of a multiline reply must carry the same code.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(SmtpReply, usize)>, String> {
    let mut pos = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE {
                return Err("reply line too long".into());
            }
            return Ok(None);
        };
        if nl > MAX_LINE {
            return Err("reply line too long".into());
        }
        let mut line = &rest[..nl];
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        pos += nl + 1;
        let line = String::from_utf8_lossy(line);
        let digits = line
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let Some(c) = digits.and_then(|d| d.parse::<u16>().ok()) else {
            return Err(format!("malformed reply line {:?}", truncate(&line)));
        };
        if !(200..600).contains(&c) {
            return Err(format!("reply code {c} out of range"));
        }
        if code.is_some_and(|first| first != c) {
            return Err(format!("reply code changed within a reply ({line:?})"));
        }
        code = Some(c);
        let (more, text) = match line.as_bytes().get(3) {
            None => (false, ""),
            Some(b'-') => (true, &line[4..]),
            Some(b' ') => (false, &line[4..]),
            Some(_) => return Err(format!("malformed reply line {:?}", truncate(&line))),
        };
        lines.push(text.to_string());
        if !more {
            return Ok(Some((SmtpReply { code: c, lines }, pos)));
        }
        if lines.len() >= MAX_LINES {
            return Err("reply has too many lines".into());
        }
    }
}

/// An SMTP reply written as text (an `/mxdeliv` error body such as `554 5.7.1 No DKIM
/// signature found`): the reply, or `None` when the text is not one.
pub fn parse_reply_text(text: &str) -> Option<Reply> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let mut owned = t.replace("\r\n", "\n");
    owned.push('\n');
    match parse_reply(owned.as_bytes()) {
        Ok(Some((r, _))) => Some(r.to_reply()),
        _ => None,
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The message as DATA sends it: every line ending made CRLF (bare LF and bare CR alike, so
/// that no receiver sees a line end we did not mean), lines that start with `.` get another
/// one (RFC 5321 §4.5.2), and the terminating `.` line. Sending uses [`DotStuffer`]; this is
/// the whole-message form the tests compare it with.
#[cfg(test)]
pub fn dot_stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 50 + 8);
    let mut stuffer = DotStuffer::default();
    stuffer.push(msg, &mut out);
    stuffer.finish(&mut out);
    out
}

/// The message as DATA sends it, piece by piece: every line ending made CRLF (bare LF and
/// bare CR alike, so that no receiver sees a line end we did not mean), lines that start with
/// `.` get another one (RFC 5321 §4.5.2), and the terminating `.` line; a large message is
/// sent without a stuffed copy of the whole of it.
#[derive(Debug, Default)]
pub struct DotStuffer {
    /// The last byte was neither CR nor LF.
    mid_line: bool,
    /// The last byte was a CR (already sent as CRLF): an LF right after it is part of it.
    after_cr: bool,
}

impl DotStuffer {
    pub fn push(&mut self, msg: &[u8], out: &mut Vec<u8>) {
        for &b in msg {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            if !self.mid_line && b == b'.' {
                out.push(b'.');
            }
            match b {
                b'\r' => {
                    out.extend_from_slice(b"\r\n");
                    self.after_cr = true;
                    self.mid_line = false;
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.mid_line = false;
                }
                _ => {
                    out.push(b);
                    self.mid_line = true;
                }
            }
        }
    }

    /// The end of the last line, if it had none, and the terminating `.` line.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.mid_line {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// A stream with a read buffer for replies.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    async fn read_reply(&mut self) -> Result<SmtpReply, String> {
        loop {
            if let Some((reply, n)) = parse_reply(&self.buf)? {
                self.buf.drain(..n);
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .map_err(|_| "timeout waiting for a reply".to_string())?
                .map_err(|e| format!("read error: {e}"))?;
            if n == 0 {
                return Err("connection closed by the server".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), String> {
        for piece in data.chunks(WRITE_CHUNK) {
            tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(piece))
                .await
                .map_err(|_| "timeout while writing".to_string())?
                .map_err(|e| format!("write error: {e}"))?;
        }
        tokio::time::timeout(IO_TIMEOUT, self.stream.flush())
            .await
            .map_err(|_| "timeout while writing".to_string())?
            .map_err(|e| format!("write error: {e}"))
    }

    async fn command(&mut self, line: &str) -> Result<SmtpReply, String> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    /// Says goodbye without caring about the answer.
    async fn quit(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.command("QUIT")).await;
    }
}

/// What one SMTP session with one host gives.
pub struct Session<'a> {
    pub host: &'a str,
    pub ehlo: &'a str,
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
    pub sender: &'a str,
    pub rcpts: &'a [&'a str],
    pub message: &'a [u8],
}

/// Runs one transaction over `tcp`. `Ok`: one reply per recipient, each either the server's own
/// reply (returned as is) or `250 OK (SMTP)`. `Err`: connect-level trouble (I/O, TLS, garbage,
/// no STARTTLS): the caller tries the next MX host.
pub async fn deliver(tcp: TcpStream, s: Session<'_>) -> Result<Vec<Reply>, String> {
    let all = |r: &SmtpReply| vec![r.to_reply(); s.rcpts.len()];
    let mut c = Conn::new(tcp);
    let greeting = c.read_reply().await?;
    if greeting.code != 220 {
        c.quit().await;
        return Ok(all(&greeting));
    }
    let ehlo = c.command(&format!("EHLO {}", s.ehlo)).await?;
    if !ehlo.is_positive() {
        c.quit().await;
        return Ok(all(&ehlo));
    }
    if !ehlo.has_capability("STARTTLS") {
        c.quit().await;
        return Err(format!("STARTTLS not offered by {}", s.host));
    }
    let r = c.command("STARTTLS").await?;
    if r.code != 220 {
        c.quit().await;
        return Ok(all(&r));
    }
    if !c.buf.is_empty() {
        // Anything after the 220 was sent in clear text and could be an injection.
        return Err(format!("{} sent data after its STARTTLS reply", s.host));
    }
    let tls = tokio::time::timeout(IO_TIMEOUT, s.connector.connect(s.server_name, c.stream))
        .await
        .map_err(|_| "timeout in the TLS handshake".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let mut c = Conn::new(tls);
    let ehlo = c.command(&format!("EHLO {}", s.ehlo)).await?;
    if !ehlo.is_positive() {
        c.quit().await;
        return Ok(all(&ehlo));
    }
    let sender = format!("<{}>", s.sender);
    let mail = if ehlo.has_capability("SIZE") {
        format!("MAIL FROM:{sender} SIZE={}", s.message.len())
    } else {
        format!("MAIL FROM:{sender}")
    };
    let r = c.command(&mail).await?;
    if !r.is_positive() {
        c.quit().await;
        return Ok(all(&r));
    }
    let mut replies = Vec::with_capacity(s.rcpts.len());
    let mut accepted = Vec::new();
    for (i, rcpt) in s.rcpts.iter().enumerate() {
        let r = c.command(&format!("RCPT TO:<{rcpt}>")).await?;
        if r.is_positive() {
            accepted.push(i);
        }
        replies.push(r.to_reply());
    }
    if accepted.is_empty() {
        c.quit().await;
        return Ok(replies);
    }
    let r = c.command("DATA").await?;
    if r.code != 354 {
        for &i in &accepted {
            replies[i] = r.to_reply();
        }
        c.quit().await;
        return Ok(replies);
    }
    let mut stuffer = DotStuffer::default();
    let mut buf = Vec::with_capacity(WRITE_CHUNK + WRITE_CHUNK / 8);
    for piece in s.message.chunks(WRITE_CHUNK) {
        buf.clear();
        stuffer.push(piece, &mut buf);
        c.write(&buf).await?;
    }
    buf.clear();
    stuffer.finish(&mut buf);
    c.write(&buf).await?;
    let r = c.read_reply().await?;
    let fin = if r.is_positive() {
        Reply::new(250, "OK (SMTP)")
    } else {
        r.to_reply()
    };
    tracing::debug!(host = s.host, reply = %r.to_reply(), "SMTP end of data");
    for &i in &accepted {
        replies[i] = fin.clone();
    }
    c.quit().await;
    let _ = c.stream.shutdown().await;
    Ok(replies)
}
