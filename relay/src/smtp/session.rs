//! One SMTP session, one function per command. Generic over the stream, so tests drive it over
//! `tokio::io::duplex` without sockets or TLS; the listener in `mod.rs` does the TLS upgrade.

use super::data::{DataDecoder, DataError};
mod auth;

use super::path;
use super::stream::{LineError, SmtpStream};
use super::Kind;
use crate::delivery::spooler::{Spooler, SPILL};
use crate::delivery::Target;
use crate::limits::Slot;
use crate::policy::{codes, Direction, Envelope};
use crate::Relay;
use smtp_proto::{Error as ParseError, MailFrom, RcptTo, Request};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// Longest command line (without CRLF). RFC 5321 says 512; AUTH lines with long passwords and
/// SMTPUTF8 addresses need more, and the bound is what matters.
pub const MAX_LINE: usize = 4096;
/// Protocol errors (unknown commands, bad syntax, wrong order, failed logins) before we hang up.
const MAX_ERRORS: u32 = 20;
/// Refused recipients on port 25 that cost nothing; each further one waits
/// [`Limits::bad_rcpt_delay`], and at [`MAX_BAD_RCPTS`] the connection is dropped (guessing
/// addresses by the 550s they get).
const FREE_BAD_RCPTS: u32 = 5;
const MAX_BAD_RCPTS: u32 = 20;
/// Bytes of an oversize message we read and throw away, as a multiple of the size limit, so that
/// the client sees our 552 instead of a reset; past this we close.
const DISCARD_FACTOR: u64 = 8;

/// Why [`Session::run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The session is over; close the connection.
    Closed,
    /// `220` to STARTTLS was queued: do the handshake, then call [`Session::tls_started`] and
    /// run again.
    StartTls,
}

/// What the command loop does after a command.
enum Flow {
    Continue,
    Close,
    StartTls,
}

/// Knobs that tests shorten.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Pause after a failed login, to slow down password guessing.
    pub auth_fail_delay: Duration,
    /// Pause before answering a refused recipient past the free ones, on port 25.
    pub bad_rcpt_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            auth_fail_delay: Duration::from_secs(1),
            bad_rcpt_delay: Duration::from_secs(1),
        }
    }
}

/// MAIL FROM and what followed it.
struct Transaction {
    mail_from: String,
    /// The size MAIL FROM declared (`SIZE=`), 0 if none.
    size: u64,
    rcpt_to: Vec<String>,
    targets: Vec<Target>,
    sender: SenderCheck,
}

/// The sender's checks are answered at RCPT TO, as Postfix does with `smtpd_delay_reject`:
/// clients (and the reference's tests) expect the 553 and the 450 among the recipients' replies.
enum SenderCheck {
    /// Submission: the send rate is taken at the first RCPT, once per message.
    RateDue,
    Passed,
    Refused(crate::policy::Reply),
}

pub struct Session {
    relay: Arc<Relay>,
    kind: Kind,
    tls: bool,
    limits: Limits,
    helo: Option<String>,
    /// The login address after AUTH (submission only).
    user: Option<String>,
    tx: Option<Transaction>,
    errors: u32,
    /// Recipients refused for good in this connection.
    bad_rcpts: u32,
    /// The client's address, if known (not for the in-memory streams of tests and fuzzing).
    peer: Option<IpAddr>,
    /// The connection's place in the shared limiter (absent in tests and fuzzing).
    slot: Option<Slot>,
    /// Submission clients must have logged in by then (RFC 4954 leaves it to us); port 25 has
    /// no login.
    login_deadline: Option<Instant>,
}

impl Session {
    pub fn new(relay: Arc<Relay>, kind: Kind, tls: bool, limits: Limits) -> Session {
        Session {
            kind,
            tls,
            limits,
            helo: None,
            user: None,
            tx: None,
            errors: 0,
            bad_rcpts: 0,
            peer: None,
            slot: None,
            login_deadline: (kind != Kind::Mx)
                .then(|| Instant::now() + relay.cfg.login_timeout.duration()),
            relay,
        }
    }

    /// The client's address: the origin check compares address-literal senders with it, and
    /// failed logins are counted against it.
    pub fn set_peer(&mut self, peer: Option<IpAddr>) {
        self.peer = peer.map(|p| p.to_canonical());
    }

    /// Hands the session its connection slot, so that a login moves it out of the
    /// unauthenticated count.
    pub fn set_slot(&mut self, slot: Slot) {
        self.slot = Some(slot);
    }

    /// After the STARTTLS handshake everything learnt before it is forgotten (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.user = None;
        self.tx = None;
    }

    pub fn greet<S: AsyncRead + AsyncWrite + Unpin>(&self, io: &mut SmtpStream<S>) {
        io.reply(
            220,
            &format!("{} ESMTP relaybox", self.relay.cfg.hostname()),
        );
    }

    /// Reads and answers commands until the session ends or STARTTLS is accepted.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
    ) -> Outcome {
        let shutdown = self.relay.shutdown.clone();
        loop {
            let deadline = self.login_deadline.filter(|_| self.user.is_none());
            let line = tokio::select! {
                r = io.read_line(MAX_LINE) => Some(r),
                _ = shutdown.wait() => None,
                _ = sleep_until(deadline) => {
                    tracing::info!("no login in time, closing");
                    io.reply(421, "4.7.0 Login timeout, closing transmission channel");
                    let _ = io.flush().await;
                    return Outcome::Closed;
                }
            };
            let flow = match line {
                None => {
                    io.reply(
                        421,
                        "4.3.2 Service shutting down, closing transmission channel",
                    );
                    Flow::Close
                }
                Some(Err(e)) => {
                    self.line_error(io, e);
                    Flow::Close
                }
                Some(Ok(line)) => self.command(io, &line).await,
            };
            let flow = if self.errors >= MAX_ERRORS && matches!(flow, Flow::Continue) {
                tracing::info!("too many errors, closing");
                io.reply(421, "4.7.0 Too many errors, closing transmission channel");
                Flow::Close
            } else {
                flow
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => {
                    let _ = io.flush().await;
                    return Outcome::Closed;
                }
                Flow::StartTls => {
                    if io.flush().await.is_err() {
                        return Outcome::Closed;
                    }
                    return Outcome::StartTls;
                }
            }
        }
    }

    /// Answers a framing error if the peer can still hear us; the caller closes.
    fn line_error<S: AsyncRead + AsyncWrite + Unpin>(&self, io: &mut SmtpStream<S>, e: LineError) {
        match e {
            LineError::Eof | LineError::Io(_) => tracing::debug!("connection ended: {e}"),
            LineError::Timeout => {
                tracing::info!("idle timeout");
                io.reply(421, "4.4.2 Timeout exceeded, closing transmission channel");
            }
            LineError::TooLong(_) => {
                tracing::info!("closing: {e}");
                io.reply(500, "5.5.2 Line too long");
            }
            LineError::BareLf => {
                tracing::info!("closing: {e}");
                io.reply(500, "5.5.2 Bare LF not allowed, lines must end with CRLF");
            }
            LineError::BareCr => {
                tracing::info!("closing: {e}");
                io.reply(500, "5.5.2 Bare CR not allowed, lines must end with CRLF");
            }
        }
    }

    /// A protocol error: counts toward [`MAX_ERRORS`].
    fn fail<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        code: u16,
        text: &str,
    ) -> Flow {
        self.errors += 1;
        io.reply(code, text);
        Flow::Continue
    }

    fn direction(&self) -> Direction {
        match self.kind {
            Kind::Mx => Direction::Incoming,
            Kind::Submission | Kind::Submissions => Direction::Outgoing,
        }
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        line: &[u8],
    ) -> Flow {
        let Ok(text) = std::str::from_utf8(line) else {
            return self.fail(io, 500, "5.5.2 Command line is not valid UTF-8");
        };
        let (verb, args) = text.split_once(' ').unwrap_or((text, ""));
        let verb = verb.to_ascii_uppercase();
        // Only the verb is logged: AUTH arguments carry passwords.
        tracing::trace!(command = %verb);
        // Commands whose arguments we do not need smtp-proto for, or that it would refuse with
        // a syntax error where we want a fixed answer.
        match verb.as_str() {
            "AUTH" => return self.auth(io, args).await,
            "MAIL" => {
                return match path::parse_mail(args) {
                    Ok(from) => self.mail(io, from),
                    Err(r) => self.fail(io, r.code, &r.text),
                }
            }
            "RCPT" => {
                return match path::parse_rcpt(args) {
                    Ok(to) => self.rcpt(io, to).await,
                    Err(r) => self.fail(io, r.code, &r.text),
                }
            }
            "VRFY" => return self.vrfy(io),
            "EXPN" => return self.fail(io, 502, "5.5.1 EXPN not available"),
            "BDAT" | "ETRN" | "ATRN" | "BURL" | "TURN" => {
                return self.fail(io, 502, "5.5.1 Command not implemented")
            }
            _ => {}
        }
        let mut framed = Vec::with_capacity(line.len() + 2);
        framed.extend_from_slice(line);
        framed.extend_from_slice(b"\r\n");
        match Request::parse(&mut framed.iter()) {
            Ok(Request::Ehlo { host }) => self.ehlo(io, &host, true),
            Ok(Request::Helo { host }) => self.ehlo(io, &host, false),
            Ok(Request::Data) => self.data(io).await,
            Ok(Request::Rset) => self.rset(io),
            Ok(Request::Noop { .. }) => {
                io.send(codes::OK);
                Flow::Continue
            }
            Ok(Request::Help { .. }) => self.help(io),
            Ok(Request::Quit) => {
                io.reply(221, "2.0.0 Bye");
                Flow::Close
            }
            Ok(Request::StartTls) => self.starttls(io),
            Ok(_) => self.fail(io, codes::UNRECOGNIZED.code, codes::UNRECOGNIZED.text),
            Err(e) => self.parse_error(io, e),
        }
    }

    fn parse_error<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        e: ParseError,
    ) -> Flow {
        match e {
            ParseError::UnknownCommand => {
                self.fail(io, codes::UNRECOGNIZED.code, codes::UNRECOGNIZED.text)
            }
            ParseError::SyntaxError { syntax } => {
                self.fail(io, 501, &format!("5.5.4 Syntax: {syntax}"))
            }
            ParseError::InvalidSenderAddress => {
                self.fail(io, codes::BAD_SENDER.code, codes::BAD_SENDER.text)
            }
            ParseError::InvalidRecipientAddress => {
                self.fail(io, codes::BAD_RECIPIENT.code, codes::BAD_RECIPIENT.text)
            }
            // A SIZE too large to be a number is too large a message.
            ParseError::InvalidParameter { param: "SIZE" } => {
                self.fail(io, codes::TOO_BIG.code, codes::TOO_BIG.text)
            }
            ParseError::InvalidParameter { param } => {
                self.fail(io, 501, &format!("5.5.4 Invalid parameter {param}"))
            }
            ParseError::UnsupportedParameter { param } => {
                self.fail(io, 555, &format!("5.5.4 Unsupported option: {param}"))
            }
            _ => self.fail(io, 501, "5.5.2 Syntax error"),
        }
    }

    fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        host: &str,
        extended: bool,
    ) -> Flow {
        self.helo = Some(host.to_string());
        self.tx = None;
        let me = self.relay.cfg.hostname().to_string();
        if !extended {
            io.reply(250, &me);
            return Flow::Continue;
        }
        let mut lines = vec![
            me,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.relay.cfg.max_message_size),
        ];
        if !self.tls {
            lines.push("STARTTLS".into());
        } else if self.kind != Kind::Mx {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.extend(["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"].map(String::from));
        io.reply_lines(250, &lines);
        Flow::Continue
    }

    fn starttls<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut SmtpStream<S>) -> Flow {
        if self.tls {
            return self.fail(io, 503, "5.5.1 Error: TLS already active");
        }
        // Anything pipelined after STARTTLS was sent in clear text and must not be read as if it
        // came over TLS (CVE-2011-0411).
        let dropped = io.discard_buffered();
        if dropped > 0 {
            tracing::info!(bytes = dropped, "discarded input sent after STARTTLS");
        }
        io.reply(220, "2.0.0 Ready to start TLS");
        Flow::StartTls
    }

    fn mail<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        from: MailFrom<String>,
    ) -> Flow {
        if self.helo.is_none() {
            return self.fail(io, codes::NEED_HELO.code, codes::NEED_HELO.text);
        }
        if !self.tls {
            return self.fail(io, 530, "5.7.0 Must issue a STARTTLS command first");
        }
        let login = match (self.kind, &self.user) {
            (Kind::Mx, _) => None,
            (_, Some(u)) => Some(u.clone()),
            (_, None) => return self.fail(io, 530, "5.7.0 Authentication required"),
        };
        if self.tx.is_some() {
            return self.fail(io, 503, "5.5.1 Error: nested MAIL command");
        }
        if from.size as u64 > self.relay.cfg.max_message_size {
            return self.fail(io, codes::TOO_BIG.code, codes::TOO_BIG.text);
        }
        // A declared message the in-flight budget cannot take now is refused before it is
        // sent (one without SIZE is checked at DATA).
        if from.size > 0 && self.memory_need(from.size as u64) > self.relay.inflight.left() {
            tracing::warn!(
                size = from.size,
                in_flight = self.relay.inflight.used(),
                "in-flight message memory spent, MAIL gets 451"
            );
            io.send(codes::BUSY);
            return Flow::Continue;
        }
        let addr = from.address.trim();
        let (mail_from, sender) = match login {
            Some(login) if !addr.eq_ignore_ascii_case(&login) => {
                tracing::info!(sender = %addr, %login, "sender not owned by login");
                let text =
                    format!("5.7.1 <{addr}>: Sender address rejected: not owned by user {login}");
                (
                    addr.to_string(),
                    SenderCheck::Refused(crate::policy::Reply::new(553, text)),
                )
            }
            Some(login) => (login, SenderCheck::RateDue),
            None => (addr.to_ascii_lowercase(), SenderCheck::Passed),
        };
        self.tx = Some(Transaction {
            mail_from,
            size: from.size as u64,
            rcpt_to: Vec::new(),
            targets: Vec::new(),
            sender,
        });
        io.send(codes::SENDER_OK);
        Flow::Continue
    }

    async fn rcpt<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        to: RcptTo<String>,
    ) -> Flow {
        let dir = self.direction();
        let max = self.relay.cfg.max_smtp_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return self.fail(io, codes::NEED_MAIL.code, codes::NEED_MAIL.text);
        };
        if let SenderCheck::RateDue = tx.sender {
            tx.sender = match self.relay.delivery.check_send_rate(&tx.mail_from) {
                Ok(()) => SenderCheck::Passed,
                // A temporary refusal: the client keeps the message and retries later.
                Err(r) => SenderCheck::Refused(r),
            };
        }
        if let SenderCheck::Refused(r) = &tx.sender {
            let (code, text) = (r.code, r.text.clone());
            if code >= 500 {
                return self.fail(io, code, &text);
            }
            io.reply(code, &text);
            return Flow::Continue;
        }
        if tx.rcpt_to.len() >= max {
            io.send(codes::TOO_MANY_RECIPIENTS);
            return Flow::Continue;
        }
        let addr = if to.address.eq_ignore_ascii_case("postmaster") {
            format!("postmaster@{}", self.relay.cfg.mail_domain)
        } else {
            to.address
        };
        match self.relay.delivery.check_rcpt(&addr, dir) {
            Ok(target) => {
                tx.rcpt_to.push(addr.to_ascii_lowercase());
                tx.targets.push(target);
                io.send(codes::RECIPIENT_OK);
            }
            Err(reply) => {
                tracing::debug!(rcpt = %addr, %reply, "recipient refused");
                if self.kind == Kind::Mx && reply.code >= 500 {
                    return self.bad_rcpt(io, &reply).await;
                }
                io.reply(reply.code, &reply.text);
            }
        }
        Flow::Continue
    }

    /// A recipient refused for good on port 25: free a few times, then slower, then goodbye.
    async fn bad_rcpt<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        reply: &crate::policy::Reply,
    ) -> Flow {
        self.bad_rcpts += 1;
        if self.bad_rcpts >= MAX_BAD_RCPTS {
            tracing::info!(
                refused = self.bad_rcpts,
                "too many refused recipients, closing"
            );
            io.reply(
                421,
                "4.7.0 Too many invalid recipients, closing transmission channel",
            );
            return Flow::Close;
        }
        if self.bad_rcpts > FREE_BAD_RCPTS {
            // Pipelined RCPTs are answered one by one, so this paces a whole batch.
            let _ = io.flush().await;
            tokio::time::sleep(self.limits.bad_rcpt_delay).await;
        }
        io.reply(reply.code, &reply.text);
        Flow::Continue
    }

    /// Memory a message of `size` bytes (0: not declared) holds while it is received and
    /// checked: past `SPILL` bytes a body goes to disk, and the checks, the outgoing header
    /// cleanup and the DKIM signature map it or rewrite only its header, so any message holds
    /// at most `SPILL` (outgoing too, unless its header is too long to split off; see `data`).
    fn memory_need(&self, size: u64) -> u64 {
        match size {
            0 => SPILL as u64,
            n => n.min(SPILL as u64),
        }
    }

    async fn data<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut SmtpStream<S>) -> Flow {
        let declared = match &self.tx {
            None => return self.fail(io, codes::NEED_MAIL.code, codes::NEED_MAIL.text),
            Some(tx) if tx.targets.is_empty() => {
                return self.fail(io, 554, "5.5.1 Error: no valid recipients")
            }
            Some(tx) => tx.size,
        };
        let limit = self.relay.cfg.max_message_size;
        // The body's share of the in-flight budget, held until the message is stored: what the
        // message needs is taken before the client may send it, so that the refusal comes
        // before the transfer, not after it. It grows if the message turns out bigger.
        let mut held = self.relay.inflight.hold();
        if !held.grow(self.memory_need(declared).min(limit), limit) {
            tracing::warn!(
                in_flight = self.relay.inflight.used(),
                "in-flight message memory spent, DATA gets 451"
            );
            io.send(codes::BUSY);
            return Flow::Continue;
        }
        io.reply(354, "End data with <CR><LF>.<CR><LF>");
        let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut dec = DataDecoder::new(limit_usize);
        // The whole message must arrive by then, not just each piece within the read timeout.
        let deadline = Instant::now() + self.relay.cfg.message_transfer_timeout.duration();
        let mut spooler = Spooler::new(&self.relay.store, self.direction());
        while !dec.is_done() {
            if !dec.is_dropping() {
                let want = dec
                    .kept()
                    .saturating_add(io.buffered().len())
                    .min(limit_usize);
                if held.grow(want as u64, limit) {
                    dec.make_room(held.bytes() as usize);
                } else {
                    tracing::warn!(
                        held = held.bytes(),
                        in_flight = self.relay.inflight.used(),
                        "in-flight message memory spent, this message will get 451"
                    );
                    dec.drop_body();
                    held = self.relay.inflight.hold();
                }
            }
            let used = dec.feed(io.buffered());
            io.consume(used);
            if !dec.is_dropping() && dec.kept() >= SPILL {
                let mut kept = dec.take_kept(Vec::new());
                let pushed = spooler.push(&mut kept).await;
                dec.take_kept(kept);
                if let Err(e) = pushed {
                    tracing::error!("cannot write the message to disk: {e}");
                    dec.drop_body();
                }
            }
            if dec.is_done() {
                break;
            }
            if dec.total() > limit.saturating_mul(DISCARD_FACTOR) {
                tracing::info!(
                    bytes = dec.total(),
                    "message far over the size limit, closing"
                );
                io.send(codes::TOO_BIG);
                return Flow::Close;
            }
            let filled = tokio::select! {
                r = io.fill() => r,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(bytes = dec.total(), "DATA took too long, closing");
                    io.reply(421, "4.4.2 Message transfer took too long, closing transmission channel");
                    return Flow::Close;
                }
            };
            match filled {
                Ok(0) => {
                    tracing::info!("connection closed during DATA");
                    return Flow::Close;
                }
                Ok(_) => {}
                Err(e) => {
                    self.line_error(io, e);
                    return Flow::Close;
                }
            }
        }
        let Some(tx) = self.tx.take() else {
            return Flow::Close;
        };
        let size = dec.total();
        let body = match dec.finish() {
            Ok(b) => b,
            Err(DataError::TooBig) => {
                tracing::info!(size, "message refused: too big");
                io.send(codes::TOO_BIG);
                return Flow::Continue;
            }
            Err(DataError::Busy) => {
                io.send(codes::BUSY);
                return Flow::Continue;
            }
            Err(DataError::BareNewline) => {
                tracing::info!(size, "message refused: bare CR or LF");
                return self.fail(
                    io,
                    554,
                    "5.6.0 Bare CR or LF in message data not allowed, lines must end with CRLF",
                );
            }
        };
        let busy = || codes::BUSY.reply();
        // A header too long to split off (`Spooler::is_raw`) leaves outgoing mail to be
        // cleaned and signed whole in memory: only then is its whole size charged.
        let dir = self.direction();
        if spooler.is_raw() && dir == Direction::Outgoing && !held.grow(size, limit) {
            tracing::warn!(
                size,
                in_flight = self.relay.inflight.used(),
                "in-flight message memory spent, message gets 451"
            );
            let r = busy();
            io.reply(r.code, &r.text);
            return Flow::Continue;
        }
        let (body, spool) = match spooler.finish(body).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("cannot read the message back from disk: {e}");
                let r = busy();
                io.reply(r.code, &r.text);
                return Flow::Continue;
            }
        };
        let env = Envelope {
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt_to,
            peer: self.peer,
        };
        let reply = self
            .relay
            .delivery
            .submit_spooled(&env, &tx.targets, &body, spool, dir)
            .await;
        tracing::info!(
            size,
            rcpts = env.rcpt_to.len(),
            code = reply.code,
            "message"
        );
        io.reply(reply.code, &reply.text);
        drop(held);
        Flow::Continue
    }

    fn rset<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut SmtpStream<S>) -> Flow {
        self.tx = None;
        io.send(codes::OK);
        Flow::Continue
    }

    /// Postfix answers VRFY like this for every argument: no user enumeration.
    fn vrfy<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut SmtpStream<S>) -> Flow {
        io.reply(
            252,
            "2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
        );
        Flow::Continue
    }

    fn help<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut SmtpStream<S>) -> Flow {
        io.reply(
            214,
            "2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
        );
        Flow::Continue
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
