//! The HTTP routes of ports 80 and 443 (the connections themselves are [`crate::alpn`]'s).
//! Port 80 only redirects to HTTPS, except for the set-up wizard and ACME challenges.
//!
//! Files: `pages` renders the public pages, autoconfig and MTA-STS; `new` hands out random
//! credentials (`/new`); `qr` draws the invite QR code; `mxdeliv` is relay-to-relay delivery.

pub mod mxdeliv;
mod new;
mod pages;
pub mod qr;
#[cfg(test)]
mod tests;

use crate::Relay;
use axum::extract::{FromRef, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, MethodRouter};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;

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

/// The routes of the HTTPS (`https`) or the plain HTTP server. `admin_api` answers
/// `/api/admin/*`: the admin API builds on this module's state, so it is passed in rather than
/// imported (see [`crate::alpn::app`]).
pub fn router(relay: Arc<Relay>, https: bool, admin_api: MethodRouter<Web>) -> Router {
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
        .route("/api/admin/{*rest}", admin_api);
    let headers =
        axum::middleware::map_response(
            move |r: Response| async move { security_headers(r, https) },
        );
    // The iroh relay: over HTTPS, and over plain HTTP where that is what is announced (a
    // self-signed certificate, which iroh cannot be told to accept; see `calls::iroh`).
    let admin = if https || serves_plain_iroh(&state) {
        crate::calls::iroh::PATHS
            .iter()
            .fold(admin, |r, p| r.route(p, any(iroh_relay)))
    } else {
        admin
    };
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

fn serves_plain_iroh(w: &Web) -> bool {
    w.relay.iroh.is_some() && w.relay.cfg.is_self_signed()
}

async fn iroh_relay(State(w): State<Web>, req: axum::extract::Request) -> Response {
    match &w.relay.iroh {
        Some(iroh) => crate::calls::iroh::proxy(iroh, req).await,
        None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
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
