//! HTTP (80) and HTTPS (443).
//!
//! Port 443 is also the fallback port for mail clients: TLS is terminated once here, and the
//! ALPN protocol the client asked for picks the service, like the reference's nginx `stream`
//! map (reference §3.1): `imap` → an IMAP session as on 993, `smtp` → a submissions session as
//! on 465, anything else (or none) → the HTTPS router. Port 80 only redirects to HTTPS.
//!
//! Files: `pages` renders the public pages, autoconfig and MTA-STS; `new` hands out random
//! credentials (`/new`); `qr` draws the invite QR code; `mxdeliv` is relay-to-relay delivery.

pub mod mxdeliv;
mod new;
mod pages;
pub mod qr;
#[cfg(test)]
mod tests;

use crate::limits::Service;
use crate::Relay;
use axum::extract::{FromRef, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub use new::NewLimiter;

/// The router's state: the relay and the `/new` rate limiter (shared by every connection).
#[derive(Clone)]
pub struct Web {
    pub relay: Arc<Relay>,
    pub limiter: Arc<NewLimiter>,
    /// This router serves port 443 (else plain HTTP on 80).
    pub https: bool,
}

impl FromRef<Web> for Arc<Relay> {
    fn from_ref(w: &Web) -> Arc<Relay> {
        w.relay.clone()
    }
}

/// The client's address, added to every request by `serve` (missing when the router is called
/// without a socket, as in the fuzz target).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The routes of the HTTPS (`https`) or the plain HTTP server.
pub fn router(relay: Arc<Relay>, https: bool) -> Router {
    let state = Web {
        limiter: Arc::new(NewLimiter::new()),
        relay,
        https,
    };
    // The wizard and admin pages; they refuse themselves on port 80 once set-up is done.
    let admin = Router::new()
        .route("/setup", get(pages::admin_page))
        .route("/admin", get(pages::admin_page))
        .route("/admin.js", get(pages::admin_asset))
        .route("/favicon.svg", get(pages::favicon))
        .route("/favicon.ico", get(pages::favicon))
        // The handler reads the body itself, after the session check and with a limit per
        // endpoint (`admin::api`).
        .route("/api/admin/{*rest}", any(crate::admin::api::handle));
    let headers =
        axum::middleware::map_response(
            move |r: Response| async move { security_headers(r, https) },
        );
    if !https {
        return admin
            .route("/", get(pages::page_or_wizard))
            .route("/main.css", get(pages::css_if_wizard))
            .fallback(redirect_to_https)
            .with_state(state)
            .layer(headers);
    }
    admin
        .route("/", get(pages::page_or_wizard))
        .route("/index.html", get(pages::page))
        .route("/info.html", get(pages::page))
        .route("/privacy.html", get(pages::page))
        .route("/main.css", get(pages::css))
        .route(
            "/robots.txt",
            get(|| async { "User-agent: *\nDisallow: /\n" }),
        )
        .route("/new", get(new::get).post(new::post))
        // The reference's legacy name for `/new`, still in old QR codes.
        .route("/cgi-bin/newemail.py", get(new::get).post(new::post))
        .route("/invite.json", get(new::invite_json))
        .route("/invite/used", get(new::used))
        .route("/invite.js", get(pages::invite_js))
        .route("/qr-chatmail-invite.svg", get(qr::svg))
        .route("/qr-chatmail-invite.png", get(qr::png))
        .route(
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            get(pages::autoconfig),
        )
        .route("/mail/config-v1.1.xml", get(pages::autoconfig))
        .route("/.well-known/mta-sts.txt", get(pages::mta_sts))
        // Only over TLS, as in the reference (nginx serves it in the 443 vhost): mail between
        // relays is never sent in the clear. `any`: the handler answers other methods itself
        // with the reference's 405.
        .route("/mxdeliv", any(mxdeliv::handle))
        .fallback(reference_names)
        .with_state(state)
        .layer(headers)
}

/// What every page may load: only our own scripts, styles and images, no inline script or
/// style (the built-in pages have none; `admin.js` wires up the forms), no framing, no plugins.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Headers on every answer of ports 80 and 443. HSTS only over HTTPS (on port 80 it is ignored
/// anyway, and the wizard must stay reachable there while a new box has no certificate).
/// Browsers ignore HSTS from a connection with certificate errors and for IP-address hosts, so
/// it cannot lock anybody out of a self-signed or LAN-mode box. Without `includeSubDomains`:
/// other names under the domain are not ours.
fn security_headers(mut r: Response, https: bool) -> Response {
    let h = r.headers_mut();
    let mut set = |name: header::HeaderName, value: &'static str| {
        h.entry(name)
            .or_insert(header::HeaderValue::from_static(value));
    };
    set(header::CONTENT_SECURITY_POLICY, CSP);
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    if https {
        set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
    r
}

/// Names the reference uses that carry the domain: `/qr-chatmail-invite-<domain>.png`.
async fn reference_names(
    state: State<Web>,
    client: Option<axum::Extension<ClientAddr>>,
    uri: Uri,
) -> Response {
    let p = uri.path();
    if p.starts_with("/qr-chatmail-invite-") && p.ends_with(".png") {
        return qr::png(state, client).await;
    }
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

/// The host part of our URLs: the domain, or the bare IP of an IP-literal relay, with the HTTPS
/// port when it is not 443 (`relaybox dev` with a port offset).
pub fn https_origin(cfg: &crate::config::Config) -> String {
    let host = match cfg.literal_ip() {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
        None => cfg.mail_domain.clone(),
    };
    match cfg.listen.https.first().map(|a| a.port()) {
        Some(443) | None => format!("https://{host}"),
        Some(p) => format!("https://{host}:{p}"),
    }
}

/// Port 80: everything moves to HTTPS, except the ACME HTTP-01 challenge path (the key
/// authorization of a running order, else 404), and `/mxdeliv`: mail between relays is never sent in the
/// clear, and a redirect would invite a sender to retry a POST it should not have made.
pub(crate) async fn redirect_to_https(State(w): State<Web>, uri: Uri) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(token) = uri.path().strip_prefix("/.well-known/acme-challenge/") {
        return match w.relay.acme.key_authorization(token) {
            Some(ka) => {
                tracing::info!(token, "answering an ACME HTTP-01 challenge");
                ([(header::CONTENT_TYPE, "text/plain")], ka).into_response()
            }
            None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
        };
    }
    if uri.path() == "/mxdeliv" {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    let to = format!("{}{path}", https_origin(&w.relay.cfg));
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, to)],
        "Moved Permanently",
    )
        .into_response()
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

pub async fn serve(relay: Arc<Relay>, listener: TcpListener, https: bool) {
    let app = router(relay.clone(), https);
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
                .header_read_timeout(mxdeliv::READ_TIMEOUT);
            if !https {
                let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
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
                    let _ = http.serve_connection(TokioIo::new(tls.0), svc).await;
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

pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
