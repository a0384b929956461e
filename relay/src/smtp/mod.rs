//! SMTP: submission (465 implicit TLS, 587 STARTTLS) and MX (25, STARTTLS).
//!
//! `serve` accepts connections and runs each in its own task; `session` answers the commands;
//! `stream` frames lines (CRLF only) and queues replies; `data` decodes the DATA section. The
//! session never sees a socket, only a stream, and hands STARTTLS back here for the handshake.

mod data;
mod path;
mod session;
mod stream;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_limits;
#[cfg(test)]
mod tests_policy;
#[cfg(test)]
mod tests_prop;
#[cfg(test)]
mod tests_rcpt;
#[cfg(test)]
mod tests_tls;

use crate::limits::{Service, Slot};
use crate::net::{next_conn_id, Conn};
use crate::Relay;
use session::{Limits, Outcome, Session};
use std::sync::Arc;
use std::time::Duration;
use stream::SmtpStream;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// Which SMTP service a listener provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Port 25: other MTAs; STARTTLS required before MAIL; no AUTH.
    Mx,
    /// Port 587: clients; STARTTLS, then AUTH.
    Submission,
    /// Port 465: clients; implicit TLS, then AUTH.
    Submissions,
}

/// How long we wait for each command and each read or write within DATA (RFC 5321 §4.5.3.2
/// asks for at least 5 minutes).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// On shutdown, how long we wait for sessions that are in the middle of a message.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until shutdown, then waits (a bounded time) for open sessions to end.
/// Idle sessions are told `421` at once; a session in DATA finishes its message first.
pub async fn serve(relay: Arc<Relay>, listener: TcpListener, kind: Kind) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, ?kind, "SMTP listening"),
        Err(e) => tracing::warn!(?kind, "SMTP listening on an unknown address: {e}"),
    }
    // One clone per running session, to wait for them at shutdown.
    let active = Arc::new(());
    while let Some((tcp, peer)) = crate::net::accept(&relay.shutdown, || listener.accept()).await {
        let _ = tcp.set_nodelay(true);
        let slot = match relay
            .conns
            .acquire(Service::Smtp, peer.ip(), kind != Kind::Mx)
        {
            Ok(slot) => slot,
            Err(why) => {
                crate::limits::log_refusal(Service::Smtp, peer, why);
                // 465 cannot speak before a handshake we do not want to pay for: just close.
                let line = (kind != Kind::Submissions).then(|| {
                    format!(
                        "421 4.7.0 {} Too many connections, try again later",
                        relay.cfg.hostname()
                    )
                });
                crate::limits::turn_away(tcp, line.as_deref());
                continue;
            }
        };
        let span = tracing::info_span!("smtp", conn = next_conn_id(), %peer, ?kind);
        let relay = relay.clone();
        let active = active.clone();
        tokio::spawn(
            async move {
                if relay.admin.maintenance() {
                    tracing::info!("in maintenance: connection turned away");
                    refuse(
                        &relay,
                        tcp,
                        kind,
                        "4.3.2 {} In maintenance, try again later",
                    )
                    .await
                } else {
                    tracing::debug!("connected");
                    let _open = crate::metrics::M.smtp_connections.hold();
                    handle(relay, tcp, kind, Limits::default(), slot).await;
                }
                drop(active);
            }
            .instrument(span),
        );
    }
    tracing::info!(?kind, "SMTP listener stopped");
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while Arc::strong_count(&active) > 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Turns a connection away with a 421 (`text`'s `{}` is our hostname) on plain-text ports; on
/// 465 we cannot speak before a handshake we do not want to pay for, so just close.
async fn refuse(relay: &Relay, tcp: TcpStream, kind: Kind, text: &str) {
    if kind == Kind::Submissions {
        return;
    }
    let mut io = SmtpStream::new(tcp, Duration::from_secs(10));
    io.reply(421, &text.replacen("{}", relay.cfg.hostname(), 1));
    io.shutdown().await;
}

/// A submissions session (as on 465) on a TLS stream another listener terminated: port 443
/// with ALPN `smtp`.
pub async fn serve_tls(relay: Arc<Relay>, tls: Conn, slot: Slot) {
    let peer = tls.tcp().peer_addr().ok();
    let span = tracing::info_span!("smtp", conn = next_conn_id(), ?peer, kind = ?Kind::Submissions, alpn = true);
    async move {
        tracing::debug!("connected (443, ALPN smtp)");
        if relay.admin.maintenance() {
            // as on 465: closed without a word (the client retries later)
            tracing::info!("in maintenance: connection turned away");
            return;
        }
        run_conn(relay, tls, Kind::Submissions, true, Limits::default(), slot).await
    }
    .instrument(span)
    .await
}

/// One connection from accept to close.
async fn handle(relay: Arc<Relay>, tcp: TcpStream, kind: Kind, limits: Limits, slot: Slot) {
    let (conn, tls) = if kind == Kind::Submissions {
        match tls_accept(&relay, tcp, kind).await {
            Some(c) => (c, true),
            None => return,
        }
    } else {
        (Conn::Plain(tcp), false)
    };
    run_conn(relay, conn, kind, tls, limits, slot).await
}

async fn run_conn(
    relay: Arc<Relay>,
    conn: Conn,
    kind: Kind,
    tls: bool,
    limits: Limits,
    slot: Slot,
) {
    let mut session = Session::new(relay.clone(), kind, tls, limits);
    session.set_peer(conn.peer_ip());
    session.set_slot(slot);
    let mut io = SmtpStream::new(conn, COMMAND_TIMEOUT);
    session.greet(&mut io);
    loop {
        match session.run(&mut io).await {
            Outcome::Closed => break,
            Outcome::StartTls => {
                // Unread input is dropped with the old stream (see `SmtpStream::into_inner`).
                let Conn::Plain(tcp) = io.into_inner() else {
                    tracing::error!("STARTTLS on a TLS stream");
                    return;
                };
                let Some(conn) = tls_accept(&relay, tcp, kind).await else {
                    return;
                };
                io = SmtpStream::new(conn, COMMAND_TIMEOUT);
                session.tls_started();
            }
        }
    }
    io.shutdown().await;
    tracing::debug!("closed");
}

/// The TLS handshake: TLS 1.3 only for clients, 1.2 and up for other MTAs on port 25.
async fn tls_accept(relay: &Relay, tcp: TcpStream, kind: Kind) -> Option<Conn> {
    let acceptor = match kind {
        Kind::Mx => &relay.tls.mx,
        Kind::Submission | Kind::Submissions => &relay.tls.client,
    };
    match crate::net::accept_tls(acceptor, tcp, HANDSHAKE_TIMEOUT).await {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::info!("TLS handshake {e}");
            None
        }
    }
}

/// One session over any byte stream, for the fuzz targets (`fuzz/`): greeting, then commands
/// until the client closes, the session ends or STARTTLS is accepted (no handshake here; with
/// `tls` the session behaves as after one). No pause after failed logins; `timeout` bounds each
/// read and write.
#[cfg(any(test, feature = "testkit"))]
pub async fn run_session<S>(relay: Arc<Relay>, kind: Kind, tls: bool, stream: S, timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let limits = Limits {
        auth_fail_delay: Duration::ZERO,
        bad_rcpt_delay: Duration::ZERO,
    };
    let mut session = Session::new(relay, kind, tls, limits);
    let mut io = SmtpStream::new(stream, timeout);
    session.greet(&mut io);
    let _ = session.run(&mut io).await;
    io.shutdown().await;
}
