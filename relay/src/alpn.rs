//! The front door of ports 80 and 443: accepts connections, terminates TLS on 443 and lets the
//! ALPN protocol the client asked for pick the service, like the reference's nginx `stream` map
//! (reference §3.1): `imap` → an IMAP session as on 993, `smtp` → a submissions session as on
//! 465, anything else (or none) → the HTTPS router. Port 443 is the fallback port for mail
//! clients behind strict firewalls. Apart from `web` so the HTTP routes do not import the mail
//! protocols, and so the admin API can build on `web` without `web` importing it.

use crate::limits::Service;
use crate::net::Conn;
use crate::tls::lean::LeanTls;
use crate::web::ClientAddr;
use crate::Relay;
use axum::routing::any;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The whole HTTP app of port 443 (`https`) or 80: the web pages plus the admin API.
pub fn app(relay: Arc<Relay>, https: bool) -> Router {
    crate::web::router(relay, https, any(crate::admin::api::handle))
}

/// A TLS handshake on 443 that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the ClientHello on 443 asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alpn {
    Imap,
    Smtp,
    Http,
}

/// Serves port 443 (`https`) or 80 until shutdown.
pub async fn serve(relay: Arc<Relay>, listener: TcpListener, https: bool) {
    let app = app(relay.clone(), https);
    while let Some((tcp, peer)) = crate::net::accept(&relay.shutdown, || listener.accept()).await {
        // Mail sessions on 443 move to the IMAP or SMTP count once ALPN says which.
        let slot = match relay.conns.acquire(Service::Http, peer.ip(), false) {
            Ok(slot) => slot,
            Err(why) => {
                crate::limits::log_refusal(Service::Http, peer, why);
                crate::limits::turn_away(tcp, None);
                continue;
            }
        };
        let svc = TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .layer(axum::Extension(ClientAddr(peer)))
                .service(app.clone()),
        );
        let relay = relay.clone();
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            // A client that trickles its request headers is cut off after 60 s (the reference's
            // read timeout); bodies are timed by the handlers that read them.
            http.timer(TokioTimer::new())
                .header_read_timeout(crate::web::mxdeliv::READ_TIMEOUT);
            if !https {
                // Upgrades: the iroh relay's `/relay` (`calls::iroh`).
                let _ = http
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
                drop(slot);
                return;
            }
            let tls =
                match crate::net::handshake(HANDSHAKE_TIMEOUT, Box::pin(accept_443(&relay, tcp)))
                    .await
                {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(%peer, "TLS handshake on 443 {e}");
                        return;
                    }
                };
            match tls.1 {
                Alpn::Imap => {
                    let slot = match slot.switch(Service::Imap, peer.ip(), true) {
                        Ok(s) => s,
                        Err(why) => {
                            tracing::warn!(%peer, ?why, "too many IMAP connections on 443");
                            return;
                        }
                    };
                    crate::imap::serve_tls(relay, tls.0, slot).await;
                }
                Alpn::Smtp => {
                    let slot = match slot.switch(Service::Smtp, peer.ip(), true) {
                        Ok(s) => s,
                        Err(why) => {
                            tracing::warn!(%peer, ?why, "too many SMTP connections on 443");
                            return;
                        }
                    };
                    crate::smtp::serve_tls(relay, tls.0, slot).await;
                }
                Alpn::Http => {
                    let _ = http
                        .serve_connection(TokioIo::new(tls.0), svc)
                        .with_upgrades()
                        .await;
                    drop(slot);
                }
            }
        });
    }
}

/// The handshake on 443. A ClientHello that offers `imap` or `smtp` gets the mail clients'
/// config (TLS 1.3 only, as on 993/465) and a [`LeanTls`] stream, as on 993, since IMAP clients
/// stay for days; anything else the HTTPS config on tokio-rustls. The protocol the handshake
/// agreed on picks the service.
async fn accept_443(relay: &Relay, tcp: TcpStream) -> std::io::Result<(Conn, Alpn)> {
    let _ = tcp.set_nodelay(true);
    let (hello, seen) = read_client_hello(&tcp).await?;
    let mail = hello
        .client_hello()
        .alpn()
        .is_some_and(|mut l| l.any(|p| p == b"imap" || p == b"smtp"));
    let (conn, alpn) = if mail {
        drop(hello);
        // The ClientHello is read again, from the bytes kept, by the stream's own handshake.
        let tls = LeanTls::accept(relay.tls.client_config.clone(), tcp, seen).await?;
        let alpn = tls.alpn_protocol().map(<[u8]>::to_vec);
        (Conn::Lean(Box::new(tls)), alpn)
    } else {
        let tls = tokio_rustls::StartHandshake::from_parts(hello, tcp)
            .into_stream(relay.tls.https_config.clone())
            .await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        (Conn::Tls(Box::new(tls)), alpn)
    };
    let alpn = match alpn.as_deref() {
        Some(b"imap") => Alpn::Imap,
        Some(b"smtp") => Alpn::Smtp,
        _ => Alpn::Http,
    };
    Ok((conn, alpn))
}

/// Reads from `tcp` until rustls has the whole ClientHello; returns it with every byte read, for
/// a handshake that starts over from them.
async fn read_client_hello(
    tcp: &TcpStream,
) -> std::io::Result<(rustls::server::Accepted, Vec<u8>)> {
    use std::io::{Error, ErrorKind};
    // rustls refuses a ClientHello above 64 KiB itself; this only bounds what a peer that sends
    // no hello at all can make us keep.
    const MAX_HELLO: usize = 70 * 1024;
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    loop {
        tcp.readable().await?;
        seen.reserve(4096);
        let start = seen.len();
        match tcp.try_read_buf(&mut seen) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        let mut fresh = &seen[start..];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh)? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(Some(hello)) => return Ok((hello, seen)),
            Ok(None) if seen.len() < MAX_HELLO => {}
            Ok(None) => return Err(Error::new(ErrorKind::InvalidData, "ClientHello too long")),
            Err((e, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = tcp.try_write(&out);
                return Err(Error::new(ErrorKind::InvalidData, e));
            }
        }
    }
}
