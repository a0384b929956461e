//! Framing: IMAP input is lines, except that a line ending in `{n}` is followed by n raw bytes
//! (a literal) and then more of the same command. This module turns the byte stream into whole
//! commands and batches our output, with the limits that keep one client from eating memory.

use crate::delivery::spooler::SPILL;
use crate::limits::{Budget, Held};
use crate::store::{Spool, Store};
use imap_codec::encode::{Encoder, Fragment};
use imap_codec::imap_types::response::Response;
use imap_codec::ResponseCodec;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Longest line (outside literals) we accept; real commands are far shorter.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// Output is written out once this much is waiting, so a big FETCH streams instead of piling up.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// Buffers larger than this are given back after use: an idle connection should hold almost
/// nothing.
const KEEP_CAPACITY: usize = 4 * 1024;
/// A client that does not take our output for this long is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Eof,
    /// The line exceeded the limit; the rest of it is skipped.
    TooLong,
    /// A non-synchronizing literal the in-flight budget has no room for.
    Busy,
    /// The command's literals did not arrive within the transfer deadline.
    Timeout,
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// What the framer made of the next command.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A whole command, literals included, ready for the decoder.
    Command(Vec<u8>),
    /// A line too long to be a command; answered with BAD.
    TooLong(Vec<u8>),
    /// A synchronizing literal we refuse; the client will not send it.
    LiteralRefused(Vec<u8>),
    /// A synchronizing literal the in-flight budget has no room for right now.
    Busy(Vec<u8>),
}

pub(crate) struct Framed<S> {
    stream: S,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    skipping_line: bool,
    /// The start of the last line dropped as too long, for the tag of the BAD reply.
    dropped_head: Vec<u8>,
    /// The in-flight budget literals count against, and how long a command's literals may
    /// take in all (set by the session; the framer's own tests go without).
    transfer: Option<(Arc<Budget>, Duration)>,
    /// The current command's share of the budget, kept until the next command is read (so
    /// that an APPEND holds it until its message is stored).
    held: Option<Held>,
    /// Where a large APPEND literal goes instead of memory (set by the session).
    spool_store: Option<Store>,
    /// The current command's APPEND message, if it went to disk; the command itself then
    /// carries a one-byte placeholder literal.
    spooled: Option<Spool>,
}

/// `{123}` or `{123+}` at the end of a line (before CRLF): the length and whether it is
/// synchronizing.
pub(crate) fn literal_suffix(line: &[u8]) -> Option<(u64, bool)> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut num = &inner[open + 1..];
    let sync = match num.strip_suffix(b"+") {
        Some(n) => {
            num = n;
            false
        }
        None => true,
    };
    // `~{n}` (literal8) is framed the same way.
    if num.is_empty() || num.len() > 12 || !num.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(num).ok()?.parse().ok()?;
    Some((n, sync))
}

/// Pieces in which a spooled literal is written.
const SPOOL_CHUNK: usize = 64 * 1024;

/// Whether the command so far is an APPEND (`tag APPEND …`).
fn is_append(buf: &[u8]) -> bool {
    let mut words = buf.splitn(3, |&b| b == b' ');
    words.next();
    words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(b"APPEND"))
}

/// Replaces the literal announced at the end of `buf` by a one-byte literal (`{1}` + `X`):
/// the decoder sees a well-formed APPEND, the message itself is in the spool.
fn placeholder_literal(buf: &mut Vec<u8>) {
    let eol = if buf.ends_with(b"\r\n") { 2 } else { 1 };
    let end = buf.len() - eol;
    let nl = buf[end..].to_vec();
    if let Some(open) = buf[..end].iter().rposition(|&b| b == b'{') {
        buf.truncate(open);
        buf.extend_from_slice(b"{1}");
        buf.extend_from_slice(&nl);
        buf.push(b'X');
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    pub(crate) fn new(stream: S) -> Self {
        Framed {
            stream,
            rbuf: Vec::new(),
            out: Vec::new(),
            skipping_line: false,
            dropped_head: Vec::new(),
            transfer: None,
            held: None,
            spool_store: None,
            spooled: None,
        }
    }

    /// APPEND literals past `SPILL` bytes go to a spool of `store` as they arrive.
    pub(crate) fn set_spool_store(&mut self, store: Store) {
        self.spool_store = Some(store);
    }

    /// The APPEND message of the command just read, if it was spooled (see `spooled`).
    pub(crate) fn take_spooled(&mut self) -> Option<Spool> {
        self.spooled.take()
    }

    pub(crate) fn set_transfer_limits(&mut self, budget: Arc<Budget>, timeout: Duration) {
        self.transfer = Some((budget, timeout));
    }

    /// Gives the last command's budget share back.
    pub(crate) fn release_held(&mut self) {
        self.held = None;
    }

    /// Gives the stream back. Input already read but not yet used is dropped: after STARTTLS
    /// anything the client pipelined in plaintext must not be taken as coming over TLS.
    pub(crate) fn into_inner(self) -> S {
        self.stream
    }

    /// Reads more input. Cancel-safe: bytes read land in `rbuf` and stay there.
    async fn fill(&mut self) -> Result<(), ReadError> {
        if self.rbuf.capacity() == 0 {
            // Waiting with nothing buffered (IDLE, between commands): hold no buffer until
            // input arrives. The few bytes here cost the future little; `DONE` fits.
            let mut first = [0u8; 32];
            return match self.stream.read(&mut first).await? {
                0 => Err(ReadError::Eof),
                n => {
                    self.rbuf.extend_from_slice(&first[..n]);
                    Ok(())
                }
            };
        }
        if self.rbuf.capacity() - self.rbuf.len() < 512 {
            // Small while idle, doubling for long lines.
            self.rbuf.reserve(self.rbuf.len().max(1024));
        }
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(ReadError::Eof),
            _ => Ok(()),
        }
    }

    /// The next line, CRLF (or bare LF) included. Cancel-safe.
    pub(crate) async fn read_line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(pos) = self.rbuf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.rbuf.drain(..=pos).collect();
                if self.skipping_line {
                    self.skipping_line = false;
                    continue;
                }
                if line.len() > MAX_LINE {
                    self.dropped_head = line[..64].to_vec();
                    return Err(ReadError::TooLong);
                }
                return Ok(line);
            }
            if self.rbuf.len() > MAX_LINE {
                if !self.skipping_line {
                    self.dropped_head = self.rbuf[..64].to_vec();
                }
                self.rbuf.clear();
                if !self.skipping_line {
                    self.skipping_line = true;
                    return Err(ReadError::TooLong);
                }
            }
            self.fill().await?;
        }
    }

    /// Appends what arrives, at most `max` bytes, to `dst`: at least one byte, or an error (end of
    /// input is an error here, since a literal was announced).
    async fn read_some(
        &mut self,
        dst: &mut Vec<u8>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize, ReadError> {
        let mut limited = (&mut self.stream).take(max as u64);
        let read = limited.read_buf(dst);
        let got = match deadline {
            Some(d) => match tokio::time::timeout_at(d, read).await {
                Ok(r) => r?,
                Err(_) => return Err(ReadError::Timeout),
            },
            None => read.await?,
        };
        if got == 0 {
            return Err(ReadError::Eof);
        }
        Ok(got)
    }

    /// Appends exactly `n` bytes of input to `dst`. Memory grows as data arrives, not as
    /// announced, so announcing a huge literal costs a client nothing it has not sent.
    async fn read_exact_into(
        &mut self,
        n: usize,
        dst: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), ReadError> {
        let take = n.min(self.rbuf.len());
        dst.extend(self.rbuf.drain(..take));
        let mut left = n - take;
        while left > 0 {
            if dst.capacity() - dst.len() < 16 * 1024 {
                // Exact, doubling at most: the buffer never exceeds what was announced (and
                // accounted for in the budget) by more than the command's text.
                dst.reserve_exact(left.min(dst.len().max(256 * 1024)));
            }
            left -= self.read_some(dst, left, deadline).await?;
        }
        Ok(())
    }

    /// Reads one command, answering `+` for synchronizing literals. `max_literal` bounds each
    /// literal and the command as a whole.
    pub(crate) async fn read_command(&mut self, max_literal: u64) -> Result<Frame, ReadError> {
        self.held = None;
        self.spooled = None;
        let mut buf = Vec::new();
        let mut literal_total: u64 = 0;
        // Literal bytes held in memory (a spooled APPEND message is not).
        let mut in_memory: u64 = 0;
        let mut deadline = None;
        loop {
            let line = match self.read_line().await {
                Ok(l) => l,
                Err(ReadError::TooLong) => {
                    // Keep what identifies the command (its tag) for the BAD reply.
                    let mut head = if buf.is_empty() {
                        std::mem::take(&mut self.dropped_head)
                    } else {
                        buf
                    };
                    head.truncate(64);
                    return Ok(Frame::TooLong(head));
                }
                Err(e) => return Err(e),
            };
            if buf.len() + line.len() > MAX_LINE + literal_total as usize {
                return Ok(Frame::TooLong(buf));
            }
            buf.extend_from_slice(&line);
            let Some((n, sync)) = literal_suffix(&line) else {
                return Ok(Frame::Command(buf));
            };
            if n > max_literal || literal_total + n > max_literal {
                if sync {
                    return Ok(Frame::LiteralRefused(buf));
                }
                // The client sends a non-synchronizing literal without asking; there is no way
                // to skip it short of reading it, so the connection ends (RFC 7888 §4).
                return Err(ReadError::TooLong);
            }
            literal_total += n;
            // A big APPEND message goes to disk, not against the memory budget.
            let spool = match &self.spool_store {
                Some(store) if n > SPILL as u64 && self.spooled.is_none() && is_append(&buf) => {
                    match store.spool().await {
                        Ok(s) => Some(s),
                        Err(e) => {
                            tracing::error!("cannot spool an APPEND: {e}");
                            if sync {
                                return Ok(Frame::Busy(buf));
                            }
                            return Err(ReadError::Busy);
                        }
                    }
                }
                _ => None,
            };
            if let Some((_, timeout)) = &self.transfer {
                deadline.get_or_insert_with(|| Instant::now() + *timeout);
            }
            if spool.is_none() {
                in_memory += n;
            }
            if let (None, Some((budget, _))) = (&spool, &self.transfer) {
                // Announced bytes are taken from the budget before the client may send them,
                // so a refusal can still be a plain NO.
                let held = self.held.get_or_insert_with(|| budget.hold());
                if !held.grow(in_memory, max_literal) {
                    tracing::warn!(
                        in_flight = budget.used(),
                        "in-flight message memory spent, literal refused"
                    );
                    self.held = None;
                    if sync {
                        return Ok(Frame::Busy(buf));
                    }
                    return Err(ReadError::Busy);
                }
            }
            if sync {
                self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                self.flush().await?;
            }
            match spool {
                Some(mut spool) => {
                    self.read_exact_into_spool(n as usize, &mut spool, deadline)
                        .await?;
                    placeholder_literal(&mut buf);
                    self.spooled = Some(spool);
                }
                None => self.read_exact_into(n as usize, &mut buf, deadline).await?,
            }
        }
    }

    /// Writes exactly `n` bytes of input to `spool`, in pieces of at most `SPOOL_CHUNK`.
    async fn read_exact_into_spool(
        &mut self,
        n: usize,
        spool: &mut Spool,
        deadline: Option<Instant>,
    ) -> Result<(), ReadError> {
        let take = n.min(self.rbuf.len());
        let mut chunk: Vec<u8> = self.rbuf.drain(..take).collect();
        chunk.reserve(SPOOL_CHUNK);
        let mut left = n - take;
        loop {
            if chunk.len() >= SPOOL_CHUNK || (left == 0 && !chunk.is_empty()) {
                chunk = spool
                    .write(chunk)
                    .await
                    .map_err(|e| ReadError::Io(io::Error::other(e.to_string())))?;
            }
            if left == 0 {
                return Ok(());
            }
            let room = (SPOOL_CHUNK - chunk.len()).min(left);
            left -= self.read_some(&mut chunk, room, deadline).await?;
        }
    }

    /// Queues a response; writes out when enough is waiting.
    pub(crate) async fn send(&mut self, r: &Response<'_>) -> io::Result<()> {
        for fragment in ResponseCodec::default().encode(r) {
            let data = match fragment {
                Fragment::Line { data } | Fragment::Literal { data, .. } => data,
            };
            if data.len() >= OUT_HIGH_WATER {
                // Big literals go straight out instead of being copied once more.
                self.flush().await?;
                self.write_timed(&data).await?;
            } else {
                self.out.extend_from_slice(&data);
            }
        }
        if self.out.len() >= OUT_HIGH_WATER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn write_timed(&mut self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(OUT_HIGH_WATER) {
            match tokio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(chunk)).await {
                Ok(r) => r?,
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "write timeout")),
            }
        }
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let r = self.write_timed(&out).await;
            self.out = out;
            self.out.clear();
            r?;
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.stream.flush()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "flush timeout")),
        }
    }

    /// Gives back buffer memory before a long wait (IDLE, between commands).
    pub(crate) fn shrink(&mut self) {
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        if self.rbuf.is_empty() {
            self.rbuf = Vec::new();
        } else if self.rbuf.capacity() > KEEP_CAPACITY {
            self.rbuf.shrink_to(self.rbuf.len().max(KEEP_CAPACITY));
        }
        if self.dropped_head.capacity() > 0 {
            self.dropped_head = Vec::new();
        }
    }

    /// Whether input is already waiting (pipelined commands).
    pub(crate) fn has_buffered_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    pub(crate) async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::imap_types::response::StatusKind;

    #[tokio::test]
    async fn waiting_for_input_holds_no_buffers() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut io = Framed::new(server);
        client.write_all(b"a NOOP\r\n").await.unwrap();
        assert_eq!(io.read_line().await.unwrap(), b"a NOOP\r\n");
        let ok = crate::imap::session::untagged(StatusKind::Ok, None, "Still here");
        io.send(&ok).await.unwrap();
        io.flush().await.unwrap();
        io.shrink();
        // As in IDLE: a read that waits for input that does not come.
        let wait = tokio::time::timeout(Duration::from_millis(20), io.read_line()).await;
        assert!(wait.is_err());
        assert_eq!((io.rbuf.capacity(), io.out.capacity()), (0, 0));
        client.write_all(b"DONE\r\n").await.unwrap();
        assert_eq!(io.read_line().await.unwrap(), b"DONE\r\n");
        let long = format!("b LOGIN {} x\r\n", "u".repeat(3000));
        client.write_all(long.as_bytes()).await.unwrap();
        assert_eq!(io.read_line().await.unwrap(), long.as_bytes());
    }

    #[test]
    fn literal_suffixes() {
        assert_eq!(literal_suffix(b"a LOGIN {5}\r\n"), Some((5, true)));
        assert_eq!(literal_suffix(b"a LOGIN {5+}\r\n"), Some((5, false)));
        assert_eq!(literal_suffix(b"a APPEND x ~{7}\n"), Some((7, true)));
        assert_eq!(literal_suffix(b"a LOGIN {}\r\n"), None);
        assert_eq!(literal_suffix(b"a LOGIN {x}\r\n"), None);
        assert_eq!(literal_suffix(b"a LOGIN \"{5}\" b\r\n"), None);
        assert_eq!(literal_suffix(b"a {99999999999999}\r\n"), None);
    }
}
