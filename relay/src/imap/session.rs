//! One IMAP session: greeting, the command loop with its timeouts, dispatch by state, and the
//! response helpers the command modules share.
//! The session is independent of the transport: it runs over any `AsyncRead + AsyncWrite`, and
//! STARTTLS hands control back to the connection layer (`mod.rs`), which wraps the socket.

use super::io::{Frame, Framed, ReadError};
use super::selected::Selected;
use crate::store::{AccountId, StoreError};
use crate::Relay;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{IString, NString, Quoted, Tag, Text};
use imap_codec::imap_types::response::{
    Bye, Code, CodeOther, Data, Response, Status, StatusBody, StatusKind, Tagged,
};
use imap_codec::imap_types::IntoStatic;
use imap_codec::CommandCodec;
use std::borrow::Cow;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// RFC 3501 §5.4 asks for at least 30 minutes once logged in.
pub(crate) const AUTH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Before login a connection costs us without doing anything useful.
pub(crate) const PREAUTH_TIMEOUT: Duration = Duration::from_secs(60);
/// Literals before login only carry user names and passwords.
const PREAUTH_MAX_LITERAL: u64 = 8 * 1024;
/// Failed logins on one connection before we hang up.
const MAX_AUTH_FAILURES: u32 = 3;

/// The logged-in account.
pub(crate) struct Authed {
    pub id: AccountId,
}

pub(crate) struct Session {
    pub(super) relay: Arc<Relay>,
    pub(super) tls: bool,
    /// Port 143 before STARTTLS: STARTTLS is offered and logins are refused.
    pub(super) starttls: bool,
    pub(super) user: Option<Authed>,
    pub(super) selected: Option<Selected>,
    /// RFC 7162: once a client used CONDSTORE, FETCH responses carry MODSEQ.
    pub(super) condstore: bool,
    /// Silence in IDLE after which we say we are still here.
    pub(super) keepalive: Duration,
    pub(super) auth_failures: u32,
    /// The client's address, if known (not for the in-memory streams of tests and fuzzing):
    /// failed logins are counted against it.
    pub(super) peer: Option<std::net::IpAddr>,
    /// The connection's place in the shared limiter (absent in tests and fuzzing).
    pub(super) slot: Option<crate::limits::Slot>,
    /// A client that has not logged in by then is sent away, however busy it keeps us.
    login_deadline: tokio::time::Instant,
}

/// Why `run` returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Closed,
    /// The client asked for STARTTLS and got its OK; wrap the socket and call `run` again.
    StartTls,
}

/// The tagged completion of a command.
pub(crate) struct Done {
    pub kind: StatusKind,
    pub code: Option<Code<'static>>,
    pub text: Cow<'static, str>,
}

impl Done {
    pub fn ok(text: impl Into<Cow<'static, str>>) -> Done {
        Done {
            kind: StatusKind::Ok,
            code: None,
            text: text.into(),
        }
    }
    pub fn no(text: impl Into<Cow<'static, str>>) -> Done {
        Done {
            kind: StatusKind::No,
            ..Done::ok(text)
        }
    }
    pub fn bad(text: impl Into<Cow<'static, str>>) -> Done {
        Done {
            kind: StatusKind::Bad,
            ..Done::ok(text)
        }
    }
    pub fn code(mut self, code: Code<'static>) -> Done {
        self.code = Some(code);
        self
    }
    /// A store failure: logged here, reported without detail.
    pub fn store(e: StoreError) -> Done {
        match e {
            StoreError::NoSuchMailbox => {
                Done::no("Mailbox does not exist").code(other_code("NONEXISTENT"))
            }
            StoreError::MailboxExists => {
                Done::no("Mailbox already exists").code(other_code("ALREADYEXISTS"))
            }
            StoreError::InboxProtected => {
                Done::no("INBOX cannot be deleted or renamed").code(other_code("CANNOT"))
            }
            e => {
                tracing::error!("store: {e}");
                Done::no("Temporary server failure, try again later")
                    .code(other_code("UNAVAILABLE"))
            }
        }
    }
}

/// A response code imap-types has no variant for (RFC 5530 codes).
pub(crate) fn other_code(name: &'static str) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(name.as_bytes()))
}

/// Human-readable text for a status line; anything IMAP does not allow there is replaced.
pub(crate) fn text(s: &str) -> Text<'static> {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    let clean = if clean.trim().is_empty() {
        "OK".to_string()
    } else {
        clean
    };
    Text::try_from(clean).unwrap_or_else(|_| Text::unvalidated("OK"))
}

pub(crate) fn untagged(
    kind: StatusKind,
    code: Option<Code<'static>>,
    s: &str,
) -> Response<'static> {
    Response::Status(Status::Untagged(StatusBody {
        kind,
        code,
        text: text(s),
    }))
}

fn tagged<'a>(tag: Tag<'a>, done: Done) -> Response<'a> {
    Response::Status(Status::Tagged(Tagged {
        tag,
        body: StatusBody {
            kind: done.kind,
            code: done.code,
            text: text(&done.text),
        },
    }))
}

pub(crate) fn bye(s: &str) -> Response<'static> {
    Response::Status(Status::Bye(Bye {
        code: None,
        text: text(s),
    }))
}

/// The tag of a command we could not parse, if it has a usable one.
fn tag_of(buf: &[u8]) -> Option<Tag<'static>> {
    let end = buf
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let t = std::str::from_utf8(&buf[..end]).ok()?;
    Tag::try_from(t.to_string()).ok()
}

/// A string for a quoted-or-literal position.
pub(crate) fn istring(s: &str) -> IString<'static> {
    IString::try_from(s.replace('\0', ""))
        .unwrap_or_else(|_| IString::Quoted(Quoted::unvalidated("")))
}

pub(crate) fn nstring_opt(s: Option<&str>) -> NString<'static> {
    NString(s.map(istring))
}

enum Next {
    Continue,
    Logout,
    StartTls,
}

/// Which state a command needs.
enum Need {
    Any,
    NotAuth,
    Auth,
    Selected,
}

/// Whether a command line is `<tag> IDLE` (the decoder has the last word).
fn is_idle(buf: &[u8]) -> bool {
    let mut words = buf.trim_ascii_end().split(|&b| b == b' ');
    matches!(
        (words.next(), words.next(), words.next()),
        (Some(_), Some(w), None) if w.eq_ignore_ascii_case(b"IDLE")
    )
}

fn need(body: &CommandBody<'_>) -> Need {
    use CommandBody as C;
    match body {
        C::Capability | C::Noop | C::Logout | C::Id { .. } => Need::Any,
        C::StartTLS | C::Authenticate { .. } | C::Login { .. } => Need::NotAuth,
        C::Check
        | C::Close
        | C::Expunge
        | C::ExpungeUid { .. }
        | C::Search { .. }
        | C::Sort { .. }
        | C::Thread { .. }
        | C::Fetch { .. }
        | C::Store { .. }
        | C::Copy { .. }
        | C::Move { .. }
        | C::Unselect => Need::Selected,
        _ => Need::Auth,
    }
}

impl Session {
    pub(crate) fn new(relay: Arc<Relay>, tls: bool, starttls: bool) -> Session {
        Session {
            tls,
            starttls: starttls && !tls,
            user: None,
            selected: None,
            condstore: false,
            keepalive: super::idle::KEEPALIVE,
            auth_failures: 0,
            peer: None,
            slot: None,
            login_deadline: tokio::time::Instant::now() + relay.cfg.login_timeout.duration(),
            relay,
        }
    }

    pub(crate) fn set_peer(&mut self, peer: Option<std::net::IpAddr>) {
        self.peer = peer.map(|p| p.to_canonical());
    }

    /// Called by the connection layer once the TLS handshake after STARTTLS succeeded.
    pub(crate) fn tls_started(&mut self) {
        self.tls = true;
        self.starttls = false;
    }

    /// Runs commands until the client leaves, a timeout, shutdown, or STARTTLS.
    pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        greet: bool,
    ) -> Exit {
        let relay = self.relay.clone();
        io.set_transfer_limits(
            relay.inflight.clone(),
            relay.cfg.message_transfer_timeout.duration(),
        );
        io.set_spool_store(relay.store.clone());
        if greet {
            let code = Code::Capability(self.capabilities());
            if io
                .send(&untagged(StatusKind::Ok, Some(code), "relaybox ready"))
                .await
                .is_err()
            {
                return Exit::Closed;
            }
        }
        loop {
            if !io.has_buffered_input() {
                if io.flush().await.is_err() {
                    return Exit::Closed;
                }
                io.shrink();
            }
            let (timeout, max_literal) = match self.user {
                Some(_) => (
                    AUTH_TIMEOUT,
                    relay.cfg.max_message_size.saturating_add(64 * 1024),
                ),
                None => {
                    let left = self
                        .login_deadline
                        .saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        tracing::info!("no login in time, closing");
                        let _ = io.send(&bye("Login timeout")).await;
                        io.shutdown().await;
                        return Exit::Closed;
                    }
                    (PREAUTH_TIMEOUT.min(left), PREAUTH_MAX_LITERAL)
                }
            };
            let frame = tokio::select! {
                r = tokio::time::timeout(timeout, io.read_command(max_literal)) => r,
                _ = relay.shutdown.wait() => {
                    let _ = io.send(&bye("Server shutting down")).await;
                    io.shutdown().await;
                    return Exit::Closed;
                }
            };
            let frame = match frame {
                Err(_) => {
                    let why = if self.user.is_none()
                        && tokio::time::Instant::now() >= self.login_deadline
                    {
                        "Login timeout"
                    } else {
                        "Autologout; idle for too long"
                    };
                    let _ = io.send(&bye(why)).await;
                    io.shutdown().await;
                    return Exit::Closed;
                }
                Ok(Err(ReadError::TooLong)) => {
                    let _ = io.send(&bye("Literal too large")).await;
                    io.shutdown().await;
                    return Exit::Closed;
                }
                Ok(Err(ReadError::Busy)) => {
                    let _ = io.send(&bye("Server busy, try again later")).await;
                    io.shutdown().await;
                    return Exit::Closed;
                }
                Ok(Err(ReadError::Timeout)) => {
                    tracing::info!("literal took too long, closing");
                    let _ = io.send(&bye("Message transfer took too long")).await;
                    io.shutdown().await;
                    return Exit::Closed;
                }
                Ok(Err(_)) => return Exit::Closed,
                Ok(Ok(f)) => f,
            };
            let next = match frame {
                // A session spends nearly all its life in IDLE; every other command's future
                // is boxed, so the largest of them is not carried, inline, by each idle
                // connection's task.
                Frame::Command(buf) if self.user.is_some() && is_idle(&buf) => {
                    self.handle_idle(io, &buf).await
                }
                Frame::Command(buf) => Box::pin(self.handle(io, &buf)).await,
                Frame::TooLong(head) => {
                    self.refuse(io, &head, Done::bad("Command line too long"))
                        .await
                }
                Frame::LiteralRefused(head) => {
                    let done = Done::bad("Literal too large").code(other_code("TOOBIG"));
                    self.refuse(io, &head, done).await
                }
                Frame::Busy(head) => {
                    // The code issue 14 asks for; not registered (RFC 5530's UNAVAILABLE is the
                    // nearest), so a client that does not know it still sees a plain NO.
                    let done =
                        Done::no("Server busy, try again later").code(other_code("TRYLATER"));
                    self.refuse(io, &head, done).await
                }
            };
            io.release_held();
            match next {
                Ok(Next::Continue) => {}
                Ok(Next::Logout) => {
                    io.shutdown().await;
                    return Exit::Closed;
                }
                Ok(Next::StartTls) => {
                    if io.flush().await.is_err() {
                        return Exit::Closed;
                    }
                    return Exit::StartTls;
                }
                Err(e) => {
                    tracing::debug!("session ends: {e}");
                    io.shutdown().await;
                    return Exit::Closed;
                }
            }
        }
    }

    async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        head: &[u8],
        done: Done,
    ) -> io::Result<Next> {
        let r = match tag_of(head) {
            Some(tag) => tagged(tag, done),
            None => untagged(done.kind, done.code, &done.text),
        };
        io.send(&r).await?;
        Ok(Next::Continue)
    }

    /// `tag IDLE`, as `handle` would run it, with only the tag kept across the wait.
    async fn handle_idle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        buf: &[u8],
    ) -> io::Result<Next> {
        let tag = match CommandCodec::default().decode(buf) {
            Ok((
                _,
                Command {
                    tag,
                    body: CommandBody::Idle,
                },
            )) => tag.into_static(),
            _ => return Box::pin(self.handle(io, buf)).await,
        };
        tracing::debug!(command = "IDLE", "command");
        let done = self.idle(io).await?;
        io.send(&tagged(tag, done)).await?;
        Ok(Next::Continue)
    }

    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        buf: &[u8],
    ) -> io::Result<Next> {
        let forgiven;
        let decoded = match CommandCodec::default().decode(buf) {
            Ok((_, cmd)) => Some(cmd),
            Err(_) => match super::lenient::drop_space_before_paren(buf) {
                Some(f) => {
                    forgiven = f;
                    CommandCodec::default()
                        .decode(&forgiven)
                        .ok()
                        .map(|(_, cmd)| cmd)
                }
                None => None,
            },
        };
        let Some(cmd) = decoded else {
            return self
                .refuse(io, buf, Done::bad("Unknown command or syntax error"))
                .await;
        };
        // Only the command name: arguments may hold passwords or message data.
        tracing::debug!(command = cmd.body.name(), "command");
        let Command { tag, body } = cmd;
        let (done, next) = self.dispatch(io, body).await?;
        io.send(&tagged(tag, done)).await?;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            io.send(&bye("Too many failed logins")).await?;
            return Ok(Next::Logout);
        }
        Ok(next)
    }

    async fn dispatch<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        body: CommandBody<'_>,
    ) -> io::Result<(Done, Next)> {
        match (need(&body), &self.user, &self.selected) {
            (Need::NotAuth, Some(_), _) => {
                return Ok((Done::bad("Already logged in"), Next::Continue));
            }
            (Need::Auth | Need::Selected, None, _) => {
                return Ok((Done::bad("Please log in first"), Next::Continue));
            }
            (Need::Selected, Some(_), None) => {
                return Ok((Done::bad("No mailbox selected"), Next::Continue));
            }
            _ => {}
        }
        use CommandBody as C;
        let done = match body {
            C::Capability => {
                io.send(&Response::Data(Data::Capability(self.capabilities())))
                    .await?;
                Done::ok("Capability completed")
            }
            C::Noop | C::Check => {
                self.send_updates(io).await?;
                Done::ok("Completed")
            }
            C::Logout => {
                io.send(&bye("Logging out")).await?;
                return Ok((Done::ok("Logout completed"), Next::Logout));
            }
            C::StartTLS => {
                if !self.starttls {
                    Done::bad("TLS is already active")
                } else {
                    return Ok((Done::ok("Begin TLS negotiation now"), Next::StartTls));
                }
            }
            C::Login { username, password } => {
                self.login(username.as_ref(), password.declassify().as_ref())
                    .await
            }
            C::Authenticate {
                mechanism,
                initial_response,
            } => {
                let ir = initial_response.map(|s| s.declassify().to_vec());
                self.authenticate(io, mechanism, ir).await?
            }
            C::Id { .. } => {
                let params = vec![(istring("name"), NString(Some(istring("relaybox"))))];
                io.send(&Response::Data(Data::Id {
                    parameters: Some(params),
                }))
                .await?;
                Done::ok("ID completed")
            }
            C::Enable { capabilities } => self.enable(io, capabilities).await?,
            C::Namespace => self.namespace(io).await?,
            C::Select {
                mailbox,
                parameters,
            } => self.select(io, &mailbox, false, parameters).await?,
            C::Examine {
                mailbox,
                parameters,
            } => self.select(io, &mailbox, true, parameters).await?,
            C::Unselect => {
                self.selected = None;
                Done::ok("Unselect completed")
            }
            C::Close => self.close().await,
            C::Create { mailbox } => self.create(&mailbox).await,
            C::Delete { mailbox } => self.delete(&mailbox).await,
            C::Rename { from, to } => self.rename(&from, &to).await,
            C::Subscribe { mailbox } => self.subscribe(&mailbox, true).await,
            C::Unsubscribe { mailbox } => self.subscribe(&mailbox, false).await,
            C::List {
                reference,
                mailbox_wildcard,
            } => self.list(io, &reference, &mailbox_wildcard, false).await?,
            C::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(io, &reference, &mailbox_wildcard, true).await?,
            C::Status {
                mailbox,
                item_names,
            } => self.status(io, &mailbox, &item_names).await?,
            C::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.append(io, &mailbox, &flags, date, message).await?,
            C::Expunge => self.expunge(io, None).await?,
            C::ExpungeUid { sequence_set } => self.expunge(io, Some(sequence_set)).await?,
            C::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                self.fetch(io, &sequence_set, macro_or_item_names, uid, &modifiers)
                    .await?
            }
            C::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                self.store(io, &sequence_set, kind, response, &flags, uid, &modifiers)
                    .await?
            }
            C::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(io, &sequence_set, &mailbox, uid, false).await?,
            C::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(io, &sequence_set, &mailbox, uid, true).await?,
            C::Search {
                charset,
                criteria,
                uid,
            } => self.search(io, charset, criteria, uid).await?,
            C::Idle => self.idle(io).await?,
            C::GetQuota { root } => self.get_quota(io, root.as_ref()).await?,
            C::GetQuotaRoot { mailbox } => self.get_quota_root(io, &mailbox).await?,
            C::SetQuota { .. } => Done::no("Quotas are set by the administrator"),
            C::SetMetadata {
                mailbox,
                entry_values,
            } => self.set_metadata(&mailbox, entry_values).await,
            C::GetMetadata {
                mailbox, entries, ..
            } => self.get_metadata(io, &mailbox, entries).await?,
            C::Compress { .. } => Done::no("Compression is not offered"),
            C::Sort { .. } | C::Thread { .. } => Done::bad("Not supported"),
        };
        Ok((done, Next::Continue))
    }
}
