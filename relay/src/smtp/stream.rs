//! Framing over a byte stream: command lines that must end in CRLF, raw access to buffered
//! input for DATA, and replies that are queued and sent when the session next waits for input
//! (so a pipelined batch of commands gets its replies in one write, RFC 2920).

use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why no command line could be read. Every one of these ends the session.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("connection closed")]
    Eof,
    #[error("timed out")]
    Timeout,
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error("bare LF in a command line")]
    BareLf,
    #[error("bare CR in a command line")]
    BareCr,
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

const READ_CHUNK: usize = 16 * 1024;

pub struct SmtpStream<S> {
    inner: S,
    /// Input read but not used yet: `rbuf[rpos..]`.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Replies not yet sent.
    wbuf: Vec<u8>,
    /// Limit for each read and each write.
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpStream<S> {
    pub fn new(inner: S, timeout: Duration) -> SmtpStream<S> {
        SmtpStream {
            inner,
            rbuf: Vec::with_capacity(1024),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            timeout,
        }
    }

    /// The stream, for the TLS upgrade. Unread input and unsent replies are dropped: input that
    /// came before the handshake must not be taken as if it came over TLS (CVE-2011-0411).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Queues one reply line (`code text`).
    pub fn reply(&mut self, code: u16, text: &str) {
        self.wbuf
            .extend_from_slice(format!("{code} {text}\r\n").as_bytes());
    }

    /// Queues one of the named replies of [`crate::policy::codes`].
    pub fn send(&mut self, c: crate::policy::codes::Canned) {
        self.reply(c.code, c.text)
    }

    /// Queues a multi-line reply: `code-line` for all but the last, `code line` for the last.
    pub fn reply_lines(&mut self, code: u16, lines: &[String]) {
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.wbuf
                .extend_from_slice(format!("{code}{sep}{l}\r\n").as_bytes());
        }
    }

    /// Sends the queued replies.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.inner.write_all(&self.wbuf).await?;
            self.inner.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Input that has been read but not used.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Marks `n` buffered bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.rpos = (self.rpos + n).min(self.rbuf.len());
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    /// Drops all buffered input; returns how much there was.
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.rbuf.len() - self.rpos;
        self.consume(n);
        n
    }

    /// Sends pending replies and closes the sending side (TLS close_notify).
    pub async fn shutdown(&mut self) {
        if self.flush().await.is_ok() {
            let _ = tokio::time::timeout(self.timeout, self.inner.shutdown()).await;
        }
    }

    /// Sends pending replies, then reads more input. `Ok(0)` is end of stream.
    pub async fn fill(&mut self) -> Result<usize, LineError> {
        self.flush().await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(READ_CHUNK);
        let read = self.inner.read_buf(&mut self.rbuf);
        match tokio::time::timeout(self.timeout, read).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(LineError::Timeout),
        }
    }

    /// Reads one line that ends in CRLF and returns it without the CRLF. A bare LF or CR, a line
    /// longer than `max` bytes, or a partial line at end of stream is an error: the caller
    /// answers if it can and closes, since the framing can no longer be trusted.
    pub async fn read_line(&mut self, max: usize) -> Result<Vec<u8>, LineError> {
        loop {
            let buf = self.buffered();
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                // `i` counts the line and its CR.
                if i > max + 1 {
                    return Err(LineError::TooLong(max));
                }
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(LineError::BareLf);
                }
                let line = &buf[..i - 1];
                if line.contains(&b'\r') {
                    return Err(LineError::BareCr);
                }
                let line = line.to_vec();
                self.consume(i + 1);
                return Ok(line);
            }
            if buf.len() > max + 1 {
                return Err(LineError::TooLong(max));
            }
            if self.fill().await? == 0 {
                return Err(LineError::Eof);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, String>> {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(input).await.unwrap();
        drop(client);
        let mut s = SmtpStream::new(server, Duration::from_secs(5));
        let mut out = Vec::new();
        loop {
            match s.read_line(max).await {
                Ok(l) => out.push(Ok(l)),
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn lines_need_crlf() {
        let r = lines_of(b"EHLO a\r\nNOOP\r\n", 100).await;
        assert_eq!(r[0].as_deref(), Ok(&b"EHLO a"[..]));
        assert_eq!(r[1].as_deref(), Ok(&b"NOOP"[..]));
        assert_eq!(r[2], Err("connection closed".into()));
        let r = lines_of(b"NOOP\nQUIT\r\n", 100).await;
        assert_eq!(r[0], Err("bare LF in a command line".into()));
        let r = lines_of(b"NO\rOP\r\n", 100).await;
        assert_eq!(r[0], Err("bare CR in a command line".into()));
        let r = lines_of(b"QUIT", 100).await;
        assert_eq!(r[0], Err("connection closed".into()));
    }

    #[tokio::test]
    async fn long_lines_are_refused_without_reading_them_whole() {
        let r = lines_of(&[b'a'; 300], 100).await;
        assert_eq!(r[0], Err("line longer than 100 bytes".into()));
        let mut l = vec![b'a'; 101];
        l.extend_from_slice(b"\r\n");
        let r = lines_of(&l, 100).await;
        assert_eq!(r[0], Err("line longer than 100 bytes".into()));
    }
}
