//! The front door of ports 80 and 443: accepts connections, terminates TLS on 443 and lets the
//! ALPN protocol the client asked for pick the service, like the reference's nginx `stream` map
//! (reference §3.1): `imap` → an IMAP session as on 993, `smtp` → a submissions session as on
//! 465, anything else (or none) → the HTTPS router. Port 443 is the fallback port for mail
//! clients behind strict firewalls. Apart from `web` so the HTTP routes do not import the mail
//! protocols, and so the admin API can build on `web` without `web` importing it.

use crate::limits::Service;
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
            let tls = match crate::net::handshake(HANDSHAKE_TIMEOUT, accept_443(&relay, tcp)).await
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
/// config (TLS 1.3 only, as on 993/465); anything else the HTTPS config. The protocol the
/// handshake agreed on picks the service.
async fn accept_443(
    relay: &Relay,
    tcp: TcpStream,
) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Alpn)> {
    let _ = tcp.set_nodelay(true);
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let mail = start
        .client_hello()
        .alpn()
        .is_some_and(|mut l| l.any(|p| p == b"imap" || p == b"smtp"));
    let config = if mail {
        relay.tls.client_config.clone()
    } else {
        relay.tls.https_config.clone()
    };
    let tls = start.into_stream(config).await?;
    let alpn = match tls.get_ref().1.alpn_protocol() {
        Some(b"imap") => Alpn::Imap,
        Some(b"smtp") => Alpn::Smtp,
        _ => Alpn::Http,
    };
    Ok((tls, alpn))
}
