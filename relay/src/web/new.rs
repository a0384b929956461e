//! `/new` (reference §4.2): random credentials for a new account. Nothing is created here; the
//! account appears at its first login (create-on-login). `POST` always; `GET` only in
//! self-signed mode (in ACME mode a browser is sent to `dcaccount:https://<domain>/new`, which
//! opens the app). Both are rate-limited per client IP like the reference's nginx
//! `limit_req` (2 per second, bursts of 5).

use super::{ClientAddr, Web};
use crate::config::Config;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;

/// Per-IP limit for `/new` and the self-signed invite QR codes.
pub struct NewLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl Default for NewLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl NewLimiter {
    pub fn new() -> NewLimiter {
        let quota = Quota::per_second(NonZeroU32::new(2).expect("2 > 0"))
            .allow_burst(NonZeroU32::new(5).expect("5 > 0"));
        NewLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
        }
    }

    /// True if this client may have another one now. Requests without a known address (the
    /// fuzz target) share one bucket.
    pub fn check(&self, client: Option<&ClientAddr>) -> bool {
        let ip = client.map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        // Forget clients whose bucket is full again, so a scan from many addresses cannot grow
        // the table without bound.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).is_ok()
    }
}

/// The `dclogin:` URL for an account on this relay (reference §4.2/§4.3): `ic=3` since the
/// certificate is self-signed; IP relays name the host (`ih`/`sh`), and ports are named when
/// they are not the standard 993/465 (a relay behind a port offset).
pub fn dclogin_for(cfg: &Config, addr: &str, password: &str) -> String {
    let imaps = cfg.listen.imaps.first().map_or(993, |a| a.port());
    let submissions = cfg.listen.submissions.first().map_or(465, |a| a.port());
    if let Some(ip) = cfg.literal_ip() {
        return crate::accounts::dclogin_url(addr, password, &ip.to_string(), imaps, submissions);
    }
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const ADDR: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'@')
        .remove(b'[')
        .remove(b']')
        .remove(b'.')
        .remove(b'-')
        .remove(b'_');
    let mut url = format!(
        "dclogin:{}?p={}&v=1",
        utf8_percent_encode(addr, ADDR),
        utf8_percent_encode(password, NON_ALPHANUMERIC),
    );
    if imaps != 993 || submissions != 465 {
        url.push_str(&format!("&ip={imaps}&is=ssl&sp={submissions}&ss=ssl"));
    }
    url.push_str("&ic=3");
    url
}

/// The invite a QR code carries: `DCACCOUNT:https://<domain>/new` with a real certificate, a
/// fresh `dclogin:` account in self-signed mode.
pub fn invite_url(cfg: &Config) -> String {
    invite(cfg).url
}

/// One invite. In self-signed mode it *is* one account (address and password in the QR code),
/// so a second phone scanning it becomes the same user: `addr` and `tag` let a page ask
/// whether it was used ([`used`]) and show a fresh one. A `DCACCOUNT:` code asks `/new` at
/// every scan, so it serves everybody (`addr` is `None`).
pub struct Invite {
    pub url: String,
    pub addr: Option<String>,
}

pub fn invite(cfg: &Config) -> Invite {
    if cfg.is_self_signed() {
        let (addr, password) = crate::accounts::random_credentials(cfg);
        Invite {
            url: dclogin_for(cfg, &addr, &password),
            addr: Some(addr),
        }
    } else {
        Invite {
            url: format!("DCACCOUNT:{}/new", super::https_origin(cfg)),
            addr: None,
        }
    }
}

/// Proof that this process handed out `addr` in an invite: only the page that shows the code
/// may ask whether it was used, so the question cannot be put about any other address. The key
/// lives in memory only; after a restart the page gets a 400 and fetches a fresh invite.
pub fn invite_tag(addr: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::hmac::sign(tag_key(), addr.as_bytes()).as_ref())
}

fn tag_key() -> &'static ring::hmac::Key {
    static KEY: std::sync::OnceLock<ring::hmac::Key> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut b = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut b);
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b)
    })
}

/// [`invite_tag`] made `tag` for `addr` (compared in constant time).
pub fn tag_valid(addr: &str, tag: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tag)
        .is_ok_and(|t| ring::hmac::verify(tag_key(), addr.as_bytes(), &t).is_ok())
}

/// `GET /invite.json`: a fresh invite for the pages' script (`firmware-ui/invite.js`): the URL,
/// its QR code as SVG, and in self-signed mode the address and its tag. Limited like `/new`,
/// since in self-signed mode every answer is a new account.
pub async fn invite_json(State(w): State<Web>, client: Option<Extension<ClientAddr>>) -> Response {
    let cfg = &w.relay.cfg;
    if cfg.is_self_signed() && !w.limiter.check(client.as_ref().map(|e| &e.0)) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(serde_json::json!({"error": "too many requests, try again in a few seconds"})),
        )
            .into_response();
    }
    let inv = invite(cfg);
    let svg = super::qr::inline_svg(&inv.url);
    let tag = inv.addr.as_deref().map(invite_tag);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({
            "url": inv.url,
            "svg": svg,
            "addr": inv.addr,
            "tag": tag,
        })),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct UsedQuery {
    addr: String,
    tag: String,
}

/// `GET /invite/used?addr=…&tag=…`: whether the account of a shown invite exists, i.e. somebody
/// scanned the code and logged in (accounts are made at their first login). The pages ask every
/// few seconds and then show the next code. One store lookup, no password hashing.
pub async fn used(
    State(w): State<Web>,
    axum::extract::Query(q): axum::extract::Query<UsedQuery>,
) -> Response {
    if !tag_valid(&q.addr, &q.tag) {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "not an invite of this relay (or from before a restart)"})),
        )
            .into_response();
    }
    match w.relay.store.account(&q.addr) {
        Ok(a) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(serde_json::json!({"used": a.is_some()})),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!("invite check: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn credentials(w: &Web, client: Option<&ClientAddr>) -> Response {
    if !w.limiter.check(client) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(serde_json::json!({"reason": "too many requests, try again in a few seconds"})),
        )
            .into_response();
    }
    let cfg = &w.relay.cfg;
    let (email, password) = crate::accounts::random_credentials(cfg);
    let mut body = serde_json::json!({"email": email, "password": password});
    if cfg.is_self_signed() {
        body["dclogin_url"] = dclogin_for(cfg, &email, &password).into();
    }
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

pub async fn post(State(w): State<Web>, client: Option<Extension<ClientAddr>>) -> Response {
    credentials(&w, client.as_ref().map(|e| &e.0))
}

pub async fn get(State(w): State<Web>, client: Option<Extension<ClientAddr>>) -> Response {
    if !w.relay.cfg.is_self_signed() {
        let to = format!("dcaccount:{}/new", super::https_origin(&w.relay.cfg));
        return (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, to)],
            "Moved Permanently",
        )
            .into_response();
    }
    credentials(&w, client.as_ref().map(|e| &e.0))
}
