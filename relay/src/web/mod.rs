//! HTTP (80) and HTTPS (443). For now a minimal page that says what this box is and `/mxdeliv`
//! (relay-to-relay delivery); the onboarding site, `/new` and autoconfig are built on this
//! router.

pub mod mxdeliv;

use crate::Relay;
use axum::extract::State;
use axum::response::Html;
use axum::routing::{any, get};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The routes of the HTTPS (`https`) or the plain HTTP server.
pub fn router(relay: Arc<Relay>, https: bool) -> Router {
    let mut r = Router::new().route("/", get(index)).route(
        "/robots.txt",
        get(|| async { "User-agent: *\nDisallow: /\n" }),
    );
    if https {
        // Only over TLS, as in the reference (nginx serves it in the 443 vhost): mail between
        // relays is never sent in the clear. `any`: the handler answers other methods itself
        // with the reference's 405.
        r = r.route("/mxdeliv", any(mxdeliv::handle));
    }
    r.with_state(relay)
}

async fn index(State(relay): State<Arc<Relay>>) -> Html<String> {
    let d = html_escape(&relay.cfg.mail_domain);
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{d} chatmail relay</title></head><body>\
         <h1>{d}</h1><p>This is a <a href=\"https://chatmail.at\">chatmail</a> relay run by relaybox. \
         It accepts only end-to-end encrypted mail for Delta Chat and other chatmail clients.</p>\
         </body></html>"
    ))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub async fn serve(relay: Arc<Relay>, listener: TcpListener, https: bool) {
    let app = router(relay.clone(), https);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = relay.shutdown.wait() => break,
        };
        let svc = TowerToHyperService::new(app.clone());
        let acceptor = relay.tls.https.clone();
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            // A client that trickles its request headers is cut off after 60 s (the reference's
            // read timeout); bodies are timed by the handlers that read them.
            http.timer(TokioTimer::new())
                .header_read_timeout(mxdeliv::READ_TIMEOUT);
            if https {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            } else {
                let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
            }
        });
    }
}
