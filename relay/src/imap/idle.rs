//! IDLE (RFC 2177): wait on the store's change signal for the selected mailbox, no polling.
//!
//! Delta Chat gives up on a connection after 5 minutes without any server data and expects the
//! tagged reply to DONE within 15 s (chatmail/core src/imap/idle.rs), so we send a keepalive
//! after 2 minutes of silence, as Dovecot does, and answer DONE right away.

use super::io::{Framed, ReadError};
use super::session::{bye, untagged, Done, Session, AUTH_TIMEOUT};
use imap_codec::imap_types::response::{CommandContinuationRequest, Response, StatusKind};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

pub(crate) const KEEPALIVE: Duration = Duration::from_secs(120);

enum Event {
    Line(Result<Vec<u8>, ReadError>),
    Changed,
    Keepalive,
    Timeout,
    Shutdown,
}

impl Session {
    /// Only the wait itself is inline in the connection's future: the steps around it (the
    /// continuation, updates, keepalives) are boxed, being rare, so an idle client's task
    /// carries no more than the `select!` below.
    pub(super) async fn idle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
    ) -> io::Result<Done> {
        Box::pin(self.idle_start(io)).await?;
        let relay = self.relay.clone();
        let deadline = Instant::now() + AUTH_TIMEOUT;
        let _idling = crate::metrics::M.imap_idle.hold();
        loop {
            let changed = async {
                match self.selected.as_mut() {
                    Some(sel) => {
                        // A closed channel (store gone) would wake us forever; wait instead.
                        if sel.watch.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let ev = tokio::select! {
                line = io.read_line() => Event::Line(line),
                _ = changed => Event::Changed,
                // One timer for both (each costs the future its size)
                _ = tokio::time::sleep_until((Instant::now() + self.keepalive).min(deadline)) => {
                    if Instant::now() >= deadline {
                        Event::Timeout
                    } else {
                        Event::Keepalive
                    }
                }
                _ = relay.shutdown.wait() => Event::Shutdown,
            };
            if let Some(done) = Box::pin(self.idle_event(io, ev)).await? {
                return Ok(done);
            }
        }
    }

    async fn idle_start<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
    ) -> io::Result<()> {
        if let Ok(c) = CommandContinuationRequest::basic(None, "idling") {
            io.send(&Response::CommandContinuationRequest(c)).await?;
        }
        // Whatever changed since the last command is news the client is waiting for.
        self.send_updates(io).await?;
        io.flush().await?;
        io.shrink();
        Ok(())
    }

    /// What one wake-up in IDLE leads to: the tagged reply to DONE, or `None` to go on waiting.
    async fn idle_event<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        ev: Event,
    ) -> io::Result<Option<Done>> {
        match ev {
            Event::Line(Ok(line)) => {
                let word = line.trim_ascii();
                return Ok(Some(if word.eq_ignore_ascii_case(b"DONE") {
                    Done::ok("Idle completed")
                } else {
                    Done::bad("Expected DONE")
                }));
            }
            Event::Line(Err(ReadError::TooLong)) => return Ok(Some(Done::bad("Expected DONE"))),
            Event::Line(Err(ReadError::Io(e))) => return Err(e),
            Event::Line(Err(ReadError::Eof | ReadError::Busy | ReadError::Timeout)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed in IDLE",
                ))
            }
            Event::Changed => {
                // The change counter was consumed by `changed()`; make `send_updates` look.
                if let Some(sel) = self.selected.as_mut() {
                    sel.watch.mark_changed();
                }
                self.send_updates(io).await?;
            }
            Event::Keepalive => {
                io.send(&untagged(StatusKind::Ok, None, "Still here"))
                    .await?;
            }
            Event::Timeout => {
                io.send(&bye("Autologout; idle for too long")).await?;
                io.flush().await?;
                return Err(io::Error::new(io::ErrorKind::TimedOut, "IDLE timeout"));
            }
            Event::Shutdown => {
                io.send(&bye("Server shutting down")).await?;
                io.flush().await?;
                return Err(io::Error::other("shutdown"));
            }
        }
        io.flush().await?;
        io.shrink();
        Ok(None)
    }
}
