//! The public pages (`/`, `/info.html`, `/privacy.html`, `/main.css`), the Thunderbird
//! autoconfig file and the MTA-STS policy (reference §6.2).
//!
//! Page templates are the files in `firmware-ui/` at the top of the repository, embedded at build
//! time. An operator overrides one by putting a file of the same name in `<data_dir>/www/`.
//! `{{name}}` placeholders are replaced by HTML-escaped values from the running configuration
//! (see [`values`]); `qr_svg` is inserted as markup. Unknown placeholders stay as they are.

use super::Web;
use crate::config::Config;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};

const INDEX: &str = include_str!("../../../firmware-ui/index.html");
const INFO: &str = include_str!("../../../firmware-ui/info.html");
const PRIVACY: &str = include_str!("../../../firmware-ui/privacy.html");
const CSS: &str = include_str!("../../../firmware-ui/main.css");
const SETUP: &str = include_str!("../../../firmware-ui/setup.html");
const ADMIN: &str = include_str!("../../../firmware-ui/admin.html");
const ADMIN_JS: &str = include_str!("../../../firmware-ui/admin.js");
const INVITE_JS: &str = include_str!("../../../firmware-ui/invite.js");
const FAVICON: &str = include_str!("../../../firmware-ui/favicon.svg");

/// Placeholders whose values are markup, not text.
const RAW: &[&str] = &["qr_svg"];

/// Placeholders that need an invite: in self-signed mode a fresh account's credentials, and
/// the QR code (the mask search makes it the dearest value by far). Made only for a template
/// that uses one: the wizard, info and privacy pages do not (an operator's override may).
const INVITE: &[&str] = &[
    "invite_url",
    "invite_addr",
    "invite_tag",
    "invite_note",
    "qr_svg",
];

/// `template` cut at its `{{key}}` placeholders: the text before each one with the placeholder
/// (as written, and its trimmed key), then the rest, which has none (an unclosed `{{` is text).
fn pieces(template: &str) -> impl Iterator<Item = (&str, Option<(&str, &str)>)> {
    let mut rest = Some(template);
    std::iter::from_fn(move || {
        let r = rest.take()?;
        let Some((start, end)) = r
            .find("{{")
            .and_then(|start| Some((start, r[start + 2..].find("}}")?)))
        else {
            return Some((r, None));
        };
        let whole = &r[start..start + 2 + end + 2];
        rest = Some(&r[start + whole.len()..]);
        Some((&r[..start], Some((whole, whole[2..whole.len() - 2].trim()))))
    })
}

/// The keys of the placeholders in `template`.
fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    pieces(template).filter_map(|(_, p)| p.map(|(_, key)| key))
}

/// A template: the operator's `<data_dir>/www/<name>` if it is there, else the built-in one.
async fn template(cfg: &Config, name: &str, builtin: &'static str) -> String {
    let path = cfg.data_dir.join("www").join(name);
    match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), "cannot read page override, using the built-in page: {e}");
            }
            builtin.to_string()
        }
    }
}

/// Replaces `{{key}}` by its value (escaped unless the key is in [`RAW`]).
pub fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() + 4096);
    for (text, placeholder) in pieces(template) {
        out.push_str(text);
        let Some((whole, key)) = placeholder else {
            continue;
        };
        match values.iter().find(|(k, _)| *k == key) {
            Some((k, v)) if RAW.contains(k) => out.push_str(v),
            Some((_, v)) => out.push_str(&super::html_escape(v)),
            None => out.push_str(whole),
        }
    }
    out
}

/// Sizes as people read them: `500 MB`, `30 MB`, `1.5 GB` (binary units, as configured).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)];
    for (name, unit) in UNITS {
        if bytes >= unit {
            let tenths = bytes * 10 / unit;
            return if tenths.is_multiple_of(10) {
                format!("{} {name}", tenths / 10)
            } else {
                format!("{}.{} {name}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes} bytes")
}

fn or_unset(s: &str) -> String {
    if s.trim().is_empty() {
        "not published".to_string()
    } else {
        s.trim().to_string()
    }
}

/// Every placeholder `template` may use (the invite's only if it uses one of them).
pub fn values(cfg: &Config, template: &str) -> Vec<(&'static str, String)> {
    let mut values = vec![
        ("domain", cfg.mail_domain.clone()),
        ("origin", super::https_origin(cfg)),
        (
            "mode",
            if cfg.is_self_signed() {
                "self-signed certificate".into()
            } else {
                "certificate from a certificate authority".into()
            },
        ),
        (
            "max_user_send_per_minute",
            cfg.max_user_send_per_minute.to_string(),
        ),
        (
            "max_user_send_burst_size",
            cfg.max_user_send_burst_size.to_string(),
        ),
        ("max_mailbox_size", human_size(cfg.max_mailbox_size.0)),
        ("max_message_size", human_size(cfg.max_message_size)),
        ("delete_mails_after", cfg.delete_mails_after.to_string()),
        ("delete_large_after", cfg.delete_large_after.to_string()),
        (
            "delete_inactive_users_after",
            cfg.delete_inactive_users_after.to_string(),
        ),
        ("privacy_mail", or_unset(&cfg.privacy_mail)),
        ("privacy_postal", or_unset(&cfg.privacy_postal)),
        ("privacy_pdo", or_unset(&cfg.privacy_pdo)),
        ("privacy_supervisor", or_unset(&cfg.privacy_supervisor)),
    ];
    if placeholders(template).any(|k| INVITE.contains(&k)) {
        values.extend(invite_values(cfg));
    }
    values
}

fn invite_values(cfg: &Config) -> [(&'static str, String); 5] {
    let invite = super::new::invite(cfg);
    let qr_svg = super::qr::inline_svg(&invite.url);
    let invite_tag = invite
        .addr
        .as_deref()
        .map(super::new::invite_tag)
        .unwrap_or_default();
    let invite_note = if invite.addr.is_some() {
        "One QR code is one person: it holds one new address and its password. \
         As soon as somebody has used it, a new code appears here for the next person."
    } else {
        "Everyone who scans this code gets an address of their own."
    };
    [
        ("invite_url", invite.url),
        ("invite_addr", invite.addr.unwrap_or_default()),
        ("invite_tag", invite_tag),
        ("invite_note", invite_note.into()),
        ("qr_svg", qr_svg),
    ]
}

pub async fn page(State(w): State<Web>, uri: Uri) -> Response {
    let (name, builtin) = match uri.path() {
        "/info.html" => ("info.html", INFO),
        "/privacy.html" => ("privacy.html", PRIVACY),
        _ => ("index.html", INDEX),
    };
    let cfg = &w.relay.cfg;
    let t = template(cfg, name, builtin).await;
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(render(&t, &values(cfg, &t))),
    )
        .into_response()
}

/// `/`: the set-up wizard while set-up is pending, else the public page (port 80 redirects).
pub async fn page_or_wizard(state: State<Web>, uri: Uri) -> Response {
    let w = &state.0;
    if w.relay.admin.pending() {
        return wizard_html(w).await;
    }
    if !w.https {
        return super::redirect_to_https(state, uri).await;
    }
    page(state, uri).await
}

async fn wizard_html(w: &Web) -> Response {
    let t = template(&w.relay.cfg, "setup.html", SETUP).await;
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(render(&t, &values(&w.relay.cfg, &t))),
    )
        .into_response()
}

/// `/setup` and `/admin`: the wizard while set-up is pending, the admin page after (HTTPS only).
pub async fn admin_page(state: State<Web>, uri: Uri) -> Response {
    let w = &state.0;
    if !w.relay.admin.reachable(w.https) {
        return if w.https {
            (StatusCode::NOT_FOUND, "Not Found").into_response()
        } else {
            super::redirect_to_https(state, uri).await
        };
    }
    if w.relay.admin.pending() {
        return wizard_html(w).await;
    }
    let t = template(&w.relay.cfg, "admin.html", ADMIN).await;
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(render(&t, &values(&w.relay.cfg, &t))),
    )
        .into_response()
}

pub async fn admin_asset(state: State<Web>, uri: Uri) -> Response {
    let w = &state.0;
    if !w.relay.admin.reachable(w.https) {
        return super::redirect_to_https(state, uri).await;
    }
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        ADMIN_JS,
    )
        .into_response()
}

/// The script that replaces a used invite QR code (public and admin pages).
pub async fn invite_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        INVITE_JS,
    )
        .into_response()
}

/// `/favicon.svg`, also as `/favicon.ico` (browsers ask for that name on their own); on port 80
/// too, for the wizard.
pub async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        FAVICON,
    )
        .into_response()
}

/// Port 80 serves the stylesheet only for the wizard.
pub async fn css_if_wizard(state: State<Web>, uri: Uri) -> Response {
    if state.0.relay.admin.pending() {
        return css(state).await;
    }
    super::redirect_to_https(state, uri).await
}

pub async fn css(State(w): State<Web>) -> Response {
    let t = template(&w.relay.cfg, "main.css", CSS).await;
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], t).into_response()
}

/// The host name mail clients connect to: the domain, or the bare IP of an IP relay.
fn mail_host(cfg: &Config) -> String {
    match cfg.literal_ip() {
        Some(ip) => ip.to_string(),
        None => cfg.mail_domain.clone(),
    }
}

/// Thunderbird autoconfig v1.1 as the reference serves it: IMAP 993 SSL, 143 STARTTLS,
/// 443 SSL; SMTP 465 SSL, 587 STARTTLS, 443 SSL. The ports are the ones this relay listens on
/// (the standard ones unless the configuration moves them).
pub fn autoconfig_xml(cfg: &Config) -> String {
    let d = super::html_escape(&cfg.mail_domain);
    let host = super::html_escape(&mail_host(cfg));
    let port = |l: &[std::net::SocketAddr], default: u16| l.first().map_or(default, |a| a.port());
    let l = &cfg.listen;
    let server = |dir: &str, kind: &str, p: u16, sock: &str| {
        format!(
            "    <{dir} type=\"{kind}\">\n      <hostname>{host}</hostname>\n      <port>{p}</port>\n      \
             <socketType>{sock}</socketType>\n      <authentication>password-cleartext</authentication>\n      \
             <username>%EMAILADDRESS%</username>\n    </{dir}>\n"
        )
    };
    let https = port(&l.https, 443);
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n  \
         <emailProvider id=\"{d}\">\n    <domain>{d}</domain>\n    \
         <displayName>{d} chatmail</displayName>\n    <displayShortName>{d}</displayShortName>\n"
    );
    out += &server("incomingServer", "imap", port(&l.imaps, 993), "SSL");
    out += &server("incomingServer", "imap", port(&l.imap, 143), "STARTTLS");
    out += &server("incomingServer", "imap", https, "SSL");
    out += &server("outgoingServer", "smtp", port(&l.submissions, 465), "SSL");
    out += &server(
        "outgoingServer",
        "smtp",
        port(&l.submission, 587),
        "STARTTLS",
    );
    out += &server("outgoingServer", "smtp", https, "SSL");
    out += "  </emailProvider>\n</clientConfig>\n";
    out
}

pub async fn autoconfig(State(w): State<Web>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        autoconfig_xml(&w.relay.cfg),
    )
        .into_response()
}

/// The MTA-STS policy (RFC 8461) the reference serves: enforce, our MX, four weeks.
pub fn mta_sts_text(cfg: &Config) -> String {
    format!(
        "version: STSv1\nmode: enforce\nmx: {}\nmax_age: 2419200\n",
        cfg.mail_domain
    )
}

pub async fn mta_sts(State(w): State<Web>) -> Response {
    if w.relay.cfg.is_ip_literal() {
        // No MX and no DNS for an IP relay: there is nothing a policy could name.
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        mta_sts_text(&w.relay.cfg),
    )
        .into_response()
}
