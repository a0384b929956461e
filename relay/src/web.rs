//! HTTP (80) and HTTPS (443). For now a minimal page that says what this box is; the onboarding
//! site, `/new`, autoconfig and `/mxdeliv` are built on this router.

use crate::Relay;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/robots.txt",
            get(|| async { "User-agent: *\nDisallow: /\n" }),
        )
        .with_state(relay)
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
    let app = router(relay.clone());
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
            let http = hyper::server::conn::http1::Builder::new();
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
