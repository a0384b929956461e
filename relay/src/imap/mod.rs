//! IMAP (143 STARTTLS, 993 implicit TLS) for Delta Chat clients.
//!
//! `serve` accepts connections and runs each in its own task; the TLS layer (implicit or after
//! STARTTLS) lives here, and everything else in a [`session::Session`] that works over any byte
//! stream, so tests drive it over an in-memory pipe.
//!
//! Files: `io` frames commands and literals; `session` runs the command loop; `auth` logs in;
//! `selected` keeps the selected mailbox in step with the store; `mailbox`, `fetch`, `search`,
//! `idle` and `meta` hold the commands; `mime` computes ENVELOPE, BODYSTRUCTURE and sections;
//! `sequence` resolves sequence sets.

mod appversions;
mod auth;
mod fetch;
mod idle;
mod io;
mod lenient;
mod mailbox;
mod meta;
mod mime;
mod search;
mod selected;
mod sequence;
mod session;

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_abuse;
#[cfg(test)]
mod tests_fetch;
#[cfg(test)]
mod tests_limits;
#[cfg(test)]
mod tests_net;

/// For the `imap_seqsearch` fuzz target (crate::testkit).
#[cfg(any(test, feature = "testkit"))]
pub(crate) use search::find_ci;
#[cfg(any(test, feature = "testkit"))]
pub(crate) use sequence::{resolve_seqs, resolve_uids, Ranges, SetError, MAX_RANGES};

use crate::limits::{Service, Slot};
use crate::net::{next_conn_id, Conn};
use crate::Relay;
use session::{bye, Exit, Session};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// A TLS handshake that takes longer than this is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until shutdown. With `implicit_tls` (993) TLS starts right away; otherwise
/// (143) the client must use STARTTLS before it may log in.
pub async fn serve(relay: Arc<Relay>, listener: TcpListener, implicit_tls: bool) {
    while let Some((tcp, peer)) = crate::net::accept(&relay.shutdown, || listener.accept()).await {
        let id = next_conn_id();
        let span = tracing::info_span!(
            "imap",
            conn = id,
            peer = %peer,
            user = tracing::field::Empty
        );
        let slot = match relay.conns.acquire(Service::Imap, peer.ip(), true) {
            Ok(slot) => slot,
            Err(why) => {
                crate::limits::log_refusal(Service::Imap, peer, why);
                // On 993 the client would not understand us before a handshake we do not want
                // to pay for: just close.
                let line = (!implicit_tls).then_some("* BYE Too many connections, try again later");
                crate::limits::turn_away(tcp, line);
                continue;
            }
        };
        let relay = relay.clone();
        tokio::spawn(
            async move {
                if relay.admin.maintenance() {
                    tracing::info!("in maintenance: connection turned away");
                    refuse(tcp, implicit_tls, &relay, "In maintenance, try again later").await;
                    return;
                }
                tracing::debug!("connected");
                let _open = crate::metrics::M.imap_connections.hold();
                connection(relay, tcp, implicit_tls, slot).await;
                tracing::debug!("disconnected");
            }
            .instrument(span),
        );
    }
}

/// Tells a client to go away (over TLS on 993, else it would not understand).
async fn refuse(tcp: TcpStream, implicit_tls: bool, relay: &Relay, why: &str) {
    let conn = if implicit_tls {
        match crate::net::accept_lean_tls(&relay.tls.client_config, tcp, TLS_HANDSHAKE_TIMEOUT)
            .await
        {
            Ok(conn) => conn,
            Err(_) => return,
        }
    } else {
        Conn::Plain(tcp)
    };
    let mut io = io::Framed::new(conn);
    let _ = io.send(&bye(why)).await;
    io.shutdown().await;
}

/// A session on a TLS stream that another listener terminated: port 443 with ALPN `imap`.
/// Behaves as on 993 (implicit TLS); the caller took the IMAP `slot`.
pub async fn serve_tls(relay: Arc<Relay>, tls: Conn, slot: Slot) {
    let span = tracing::info_span!(
        "imap",
        conn = next_conn_id(),
        peer = ?tls.tcp().peer_addr().ok(),
        alpn = true,
        user = tracing::field::Empty
    );
    async move {
        tracing::debug!("connected (443, ALPN imap)");
        if relay.admin.maintenance() {
            tracing::info!("in maintenance: connection turned away");
            let mut io = io::Framed::new(tls);
            let _ = io.send(&bye("In maintenance, try again later")).await;
            io.shutdown().await;
            return;
        }
        run_conn(relay, tls, true, slot).await;
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await
}

async fn connection(relay: Arc<Relay>, tcp: TcpStream, implicit_tls: bool, slot: Slot) {
    let _ = tcp.set_nodelay(true);
    let conn = if implicit_tls {
        match crate::net::accept_lean_tls(&relay.tls.client_config, tcp, TLS_HANDSHAKE_TIMEOUT)
            .await
        {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!("TLS handshake {e}");
                return;
            }
        }
    } else {
        Conn::Plain(tcp)
    };
    run_conn(relay, conn, implicit_tls, slot).await
}

async fn run_conn(relay: Arc<Relay>, conn: Conn, implicit_tls: bool, slot: Slot) {
    let mut session = Session::new(relay.clone(), conn.is_tls(), !implicit_tls);
    session.set_peer(conn.peer_ip());
    session.slot = Some(slot);
    let mut io = io::Framed::new(conn);
    let mut greet = true;
    loop {
        match session.run(&mut io, greet).await {
            Exit::Closed => return,
            Exit::StartTls => {
                // Whatever the client sent after STARTTLS in plaintext is dropped with `io`.
                let Conn::Plain(tcp) = io.into_inner() else {
                    return;
                };
                match crate::net::accept_lean_tls(
                    &relay.tls.client_config,
                    tcp,
                    TLS_HANDSHAKE_TIMEOUT,
                )
                .await
                {
                    Ok(conn) => io = io::Framed::new(conn),
                    Err(e) => {
                        tracing::debug!("STARTTLS handshake {e}");
                        return;
                    }
                }
                session.tls_started();
                // No new greeting after STARTTLS (RFC 3501 §6.2.1).
                greet = false;
            }
        }
    }
}

/// One session over any byte stream, for the fuzz targets (`fuzz/`): greeting, then commands
/// until the client leaves or STARTTLS is accepted (no handshake here; with `tls` the session
/// behaves as on port 993).
#[cfg(any(test, feature = "testkit"))]
pub async fn run_session<S>(relay: Arc<Relay>, tls: bool, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut session = Session::new(relay, tls, !tls);
    let mut io = io::Framed::new(stream);
    let _ = session.run(&mut io, true).await;
}
