//! A server-side TLS stream that holds no buffer while its peer is quiet (issue 18: 100 000 IMAP
//! clients in IDLE under 1 GB). tokio-rustls' stream wraps rustls' buffered `ServerConnection`,
//! whose record buffer is sized to 4 KB before every read and never given back, so each idle
//! connection carries it for days. Here rustls' unbuffered API does the protocol and this stream
//! owns the three buffers: received TLS bytes (only a partial record is kept between reads),
//! decrypted bytes the reader has not taken yet, and encrypted bytes not yet sent. Each is freed
//! as soon as it is empty, and nothing is allocated for reading until the socket is readable.

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room made for one read from the socket; IMAP commands fit, bigger records take a few reads.
const READ_SIZE: usize = 4096;
/// Received bytes that rustls has not been able to use past this are an attack: a handshake
/// message is at most 64 KiB (rustls' own limit), a record under 17 KiB.
const MAX_INCOMING: usize = 80 * 1024;
/// Plaintext encrypted per `poll_write`: one full record.
const WRITE_CHUNK: usize = 16 * 1024;
/// Encrypted output waiting beyond this is sent before more is encrypted.
const SEND_HIGH_WATER: usize = 16 * 1024;
/// Record overhead we reserve room for up front (header, content type, AEAD tag, padding).
const RECORD_OVERHEAD: usize = 64;

/// The server side of a TLS connection over TCP; see the module comment.
pub struct LeanTls {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes received and not yet consumed by rustls.
    incoming: Vec<u8>,
    /// Decrypted bytes from `plain_at` on are the reader's.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes from `sent` on are to be written to the socket.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer ended its side (close_notify, or TCP end of stream): reads give end of file.
    peer_closed: bool,
    /// Our close_notify is queued.
    closing: bool,
    /// The TLS error that ended the connection; every later call reports it again.
    failed: Option<rustls::Error>,
}

/// What running rustls over the received bytes came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Decrypted data is waiting in `plain`.
    Data,
    /// Nothing to do until more bytes arrive.
    NeedInput,
    /// The handshake is done and all input used: application data may be sent.
    Ready,
}

/// What to do once rustls lets us send application data.
enum App<'a> {
    Encrypt(&'a [u8]),
    CloseNotify,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends what `encode` writes to `out`, growing it to the size rustls asks for.
fn append<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    let mut room = guess;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match required(&e) {
                Some(need) if need > room => room = need,
                _ => {
                    out.truncate(start);
                    return Err(e);
                }
            },
        }
    }
}

fn encrypt_required(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

impl LeanTls {
    /// The handshake on `tcp` with `config`. `received` is what was already read from `tcp`
    /// (none on 993; a listener that looked at the ClientHello passes it on). No timeout here:
    /// the caller bounds the handshake.
    pub async fn accept(
        config: Arc<ServerConfig>,
        tcp: TcpStream,
        received: Vec<u8>,
    ) -> io::Result<LeanTls> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = LeanTls {
            tcp,
            conn,
            incoming: received,
            plain: Vec::new(),
            plain_at: 0,
            outgoing: Vec::new(),
            sent: 0,
            peer_closed: false,
            closing: false,
            failed: None,
        };
        std::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
        Ok(s)
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The ALPN protocol the handshake agreed on.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The buffer capacity held now (input, plaintext, output), for the memory tests.
    #[cfg(test)]
    pub(crate) fn buffered_capacity(&self) -> (usize, usize, usize) {
        (
            self.incoming.capacity(),
            self.plain.capacity(),
            self.outgoing.capacity(),
        )
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = match self.drive(None) {
                Ok(step) => step,
                Err(e) => {
                    // The alert rustls queued goes out if the socket takes it right away.
                    let _ = self.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            };
            // What the handshake produced (our flight, session tickets) is sent before we wait
            // for the client, and before the stream is handed over.
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.peer_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                )));
            }
            debug_assert_ne!(step, Step::Ready);
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the TLS handshake",
                )));
            }
        }
    }

    /// Runs rustls over the received bytes until it needs more input, has decrypted data, or is
    /// ready for application data, in which case `app` is done. Handshake messages, tickets and
    /// alerts rustls produces land in `outgoing`.
    fn drive(&mut self, mut app: Option<App<'_>>) -> io::Result<Step> {
        if let Some(e) = &self.failed {
            return Err(tls_error(e.clone()));
        }
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let step = match state {
                Err(e) => {
                    self.incoming.drain(..discard.min(self.incoming.len()));
                    return Err(self.fail(e));
                }
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    let mut failed = None;
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(r) => {
                                discard += r.discard;
                                if self.plain_at == self.plain.len() {
                                    self.plain.clear();
                                    self.plain_at = 0;
                                }
                                self.plain.extend_from_slice(r.payload);
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = failed {
                        self.incoming.drain(..discard.min(self.incoming.len()));
                        return Err(self.fail(e));
                    }
                    Some(Step::Data)
                }
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    let r = append(
                        &mut self.outgoing,
                        READ_SIZE,
                        |buf| enc.encode(buf),
                        |e| match e {
                            EncodeError::InsufficientSize(s) => Some(s.required_size),
                            EncodeError::AlreadyEncoded => None,
                        },
                    );
                    if let Err(e) = r {
                        return Err(io::Error::other(e));
                    }
                    None
                }
                // The bytes stay in `outgoing` until sent: every path that waits for the peer
                // sends them first.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    None
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Step::NeedInput),
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    if let Some(app) = app.take() {
                        if let Err(e) = Self::app(&mut w, app, &mut self.outgoing) {
                            return Err(match e {
                                EncryptError::EncryptExhausted => {
                                    io::Error::other("TLS traffic keys exhausted")
                                }
                                e => io::Error::other(e),
                            });
                        }
                    }
                    Some(Step::Ready)
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    None
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    if app.is_some() {
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                    Some(Step::Ready)
                }
                // Early data is off in our configs; any other state is from a newer rustls.
                Ok(other) => {
                    return Err(io::Error::other(format!("unexpected TLS state {other:?}")))
                }
            };
            self.incoming.drain(..discard);
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            if let Some(step) = step {
                if step == Step::Ready && self.conn.is_handshaking() {
                    // TLS 1.3 lets the server send before the client's Finished arrived.
                    return Ok(Step::NeedInput);
                }
                return Ok(step);
            }
        }
    }

    fn app(
        w: &mut WriteTraffic<'_, ServerConnectionData>,
        app: App<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncryptError> {
        match app {
            App::Encrypt(data) => append(
                out,
                data.len() + RECORD_OVERHEAD,
                |buf| w.encrypt(data, buf),
                encrypt_required,
            ),
            App::CloseNotify => append(
                out,
                RECORD_OVERHEAD,
                |buf| w.queue_close_notify(buf),
                encrypt_required,
            ),
        }
    }

    /// Records a TLS error and queues the alert rustls has for it.
    fn fail(&mut self, e: rustls::Error) -> io::Error {
        self.failed = Some(e.clone());
        // rustls hands out its queued alert before it repeats the error; a few rounds at most.
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    let _ = append(
                        &mut self.outgoing,
                        RECORD_OVERHEAD,
                        |buf| enc.encode(buf),
                        |e| match e {
                            EncodeError::InsufficientSize(s) => Some(s.required_size),
                            EncodeError::AlreadyEncoded => None,
                        },
                    );
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
        self.incoming = Vec::new();
        tls_error(e)
    }

    /// Reads what the socket has into `incoming`: `Ok(0)` at end of stream. Allocates only once
    /// the socket is readable; an empty buffer is freed before waiting.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS input that does not make a record",
            )));
        }
        loop {
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            ready!(self.tcp.poll_read_ready(cx))?;
            if self.incoming.capacity() - self.incoming.len() < READ_SIZE / 4 {
                self.incoming.reserve(READ_SIZE);
            }
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `outgoing` out; frees it once it is all sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Moves decrypted bytes to `buf`; frees `plain` once it is all taken.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.plain.len() - self.plain_at);
        buf.put_slice(&self.plain[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
    }
}

impl AsyncRead for LeanTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                this.take_plain(buf);
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let step = match this.drive(None) {
                Ok(step) => step,
                Err(e) => {
                    let _ = this.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            };
            if step == Step::Data || this.peer_closed {
                continue;
            }
            // Whatever rustls produced (a key update, tickets) goes out before we wait; a full
            // socket does not keep us from reading, its waker is set.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            match ready!(this.poll_fill(cx))? {
                0 if this.incoming.is_empty() => {
                    // The peer closed TCP without close_notify (a phone that lost its
                    // network): for IMAP, whose commands end in CRLF, that is just an end.
                    this.peer_closed = true;
                }
                0 => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a TLS record",
                    )))
                }
                _ => {}
            }
        }
    }
}

impl AsyncWrite for LeanTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.outgoing.len() - this.sent >= SEND_HIGH_WATER {
            ready!(this.poll_send(cx))?;
        }
        if this.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(WRITE_CHUNK)];
        loop {
            match this.drive(Some(App::Encrypt(data)))? {
                Step::Ready => return Poll::Ready(Ok(data.len())),
                // Received records were decrypted for the reader; go on to the writing.
                Step::Data => continue,
                Step::NeedInput => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing && this.failed.is_none() {
            this.closing = true;
            // Decrypted input met on the way is kept for the reader; errors end in the send.
            while let Ok(Step::Data) = this.drive(Some(App::CloseNotify)) {}
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
