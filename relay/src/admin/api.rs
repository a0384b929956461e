//! The JSON API of the wizard and the admin pages, under `/api/admin/`.
//!
//! Every endpoint is one row of [`Endpoint::ALL`], and [`handle`] checks the session and the
//! CSRF token from that row before any endpoint code runs, so a new endpoint cannot forget
//! them (the tests walk the whole table).
//!
//! The body is read only after those checks (for the login, after the throttle), at most
//! [`Endpoint::max_body`] bytes and within `http_body_timeout` as a whole: an unauthenticated
//! client can make us hold nothing but its headers. The one large body, a backup to restore,
//! goes to a file in `data_dir` as it arrives (`admin_restore_max_size`,
//! `admin_restore_timeout`).

use super::upload::{read_small_body, upload_to_file, UploadTo};
use super::{read_settings, write_settings, Admin, AdminError};
use crate::config::settings::{running_value, setting_value, shown, Kind, SETTINGS};
use crate::config::Config;
use crate::sync::LockExt;
use crate::web::{ClientAddr, Web};
use crate::Relay;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};
use std::sync::Arc;

pub const PREFIX: &str = "/api/admin/";
pub const COOKIE: &str = "relaybox_session";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Logout,
    State,
    Mode,
    Dns,
    DnsZone,
    DnsCheck,
    Settings,
    SaveSettings,
    Password,
    Apply,
    Cert,
    CertStatus,
    Test,
    Status,
    Toggles,
    Backup,
    Restore,
    Logs,
    Updates,
    UpdateUpload,
    UpdateInstall,
    PortMap,
    PortMapRetry,
    Ddns,
}

impl Endpoint {
    pub const ALL: &'static [Endpoint] = &[
        Endpoint::Login,
        Endpoint::Logout,
        Endpoint::State,
        Endpoint::Mode,
        Endpoint::Dns,
        Endpoint::DnsZone,
        Endpoint::DnsCheck,
        Endpoint::Settings,
        Endpoint::SaveSettings,
        Endpoint::Password,
        Endpoint::Apply,
        Endpoint::Cert,
        Endpoint::CertStatus,
        Endpoint::Test,
        Endpoint::Status,
        Endpoint::Toggles,
        Endpoint::Backup,
        Endpoint::Restore,
        Endpoint::Logs,
        Endpoint::Updates,
        Endpoint::UpdateUpload,
        Endpoint::UpdateInstall,
        Endpoint::PortMap,
        Endpoint::PortMapRetry,
        Endpoint::Ddns,
    ];

    /// Method and path below [`PREFIX`].
    pub fn route(self) -> (Method, &'static str) {
        use Endpoint::*;
        match self {
            Login => (Method::POST, "login"),
            Logout => (Method::POST, "logout"),
            State => (Method::GET, "state"),
            Mode => (Method::POST, "mode"),
            Dns => (Method::GET, "dns"),
            DnsZone => (Method::GET, "dns/zone"),
            DnsCheck => (Method::POST, "dns/check"),
            Settings => (Method::GET, "settings"),
            SaveSettings => (Method::POST, "settings"),
            Password => (Method::POST, "password"),
            Apply => (Method::POST, "apply"),
            Cert => (Method::POST, "cert"),
            CertStatus => (Method::GET, "cert"),
            Test => (Method::POST, "test"),
            Status => (Method::GET, "status"),
            Toggles => (Method::POST, "toggles"),
            Backup => (Method::POST, "backup"),
            Restore => (Method::POST, "restore"),
            Logs => (Method::GET, "logs"),
            Updates => (Method::GET, "update"),
            UpdateUpload => (Method::POST, "update/upload"),
            UpdateInstall => (Method::POST, "update/install"),
            PortMap => (Method::GET, "portmap"),
            PortMapRetry => (Method::POST, "portmap/retry"),
            Ddns => (Method::GET, "ddns"),
        }
    }

    /// Everything but logging in needs a session.
    pub fn needs_session(self) -> bool {
        self != Endpoint::Login
    }

    /// The largest JSON body this endpoint reads (the backup restore's upload has its own
    /// limit, `admin_restore_max_size`). The settings form, the largest, is 11 values of at
    /// most 500 characters.
    pub fn max_body(self) -> usize {
        match self {
            Endpoint::Login | Endpoint::Password => 4 << 10,
            _ => 16 << 10,
        }
    }

    fn find(method: &Method, path: &str) -> Result<Endpoint, StatusCode> {
        let mut path_known = false;
        for e in Endpoint::ALL {
            let (m, p) = e.route();
            if p == path {
                path_known = true;
                if m == *method {
                    return Ok(*e);
                }
            }
        }
        Err(if path_known {
            StatusCode::METHOD_NOT_ALLOWED
        } else {
            StatusCode::NOT_FOUND
        })
    }
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

pub(super) fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn set_cookie(value: &str, https: bool, max_age: i64) -> String {
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if https { "; Secure" } else { "" }
    )
}

/// A session was made: the cookie and, in the body, its CSRF token.
fn logged_in(admin: &Admin, now: i64, https: bool, mut body: Value) -> Response {
    let session = admin.new_session(now);
    body["csrf"] = Value::String(admin.csrf_token(&session));
    (
        [(
            header::SET_COOKIE,
            set_cookie(&session, https, super::SESSION_SECS),
        )],
        axum::Json(body),
    )
        .into_response()
}

/// Whether this request may reach the API on this port: always over HTTPS, over plain HTTP only
/// while set-up is pending (a new box has no certificate the browser trusts yet).
pub fn reachable(relay: &Relay, https: bool) -> bool {
    relay.admin.reachable(https)
}

/// `/api/admin/*` on port 443 (and on 80 while set-up is pending).
pub async fn handle(
    State(w): State<Web>,
    client: Option<Extension<ClientAddr>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let relay = &w.relay;
    let https = w.https;
    if !reachable(relay, https) {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let path = uri.path().strip_prefix(PREFIX).unwrap_or("");
    let ep = match Endpoint::find(&method, path) {
        Ok(e) => e,
        Err(s) => return error(s, "no such admin endpoint"),
    };
    let now = relay.clock.now();
    let ip = client.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0 .0.ip());
    let session = match authorize(relay, ep, &method, &headers, ip, now) {
        Ok(s) => s,
        Err(ApiError(s, m)) => return error(s, m),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if ep == Endpoint::UpdateUpload {
        return super::update_api::upload(relay, declared, body).await;
    }
    if ep == Endpoint::Restore {
        let to = UploadTo {
            dir: relay.cfg.data_dir.join("admin"),
            prefix: "restore-upload",
            max: relay.cfg.admin_restore_max_size.0,
            timeout: relay.cfg.admin_restore_timeout.duration(),
        };
        let upload = match upload_to_file(&to, declared, body).await {
            Ok(u) => u,
            Err(r) => return r,
        };
        let input = json!({
            "passphrase": restore_passphrase(&headers),
            "force": headers.get("x-backup-force").is_some_and(|v| v.as_bytes() == b"1"),
        });
        let call = Call {
            relay,
            session: session.as_deref(),
            input: &input,
            upload: Some(upload.path()),
            ip,
            now,
            https,
        };
        let r = run(ep, &call).await;
        return r.unwrap_or_else(|ApiError(s, m)| error(s, m));
    }
    let body = match read_small_body(
        body,
        declared,
        ep.max_body(),
        relay.cfg.http_body_timeout.duration(),
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
        }
    };
    let call = Call {
        relay,
        session: session.as_deref(),
        input: &input,
        upload: None,
        ip,
        now,
        https,
    };
    match run(ep, &call).await {
        Ok(r) => r,
        Err(ApiError(s, m)) => error(s, m),
    }
}

/// What the endpoint's row asks before any of its code runs or its body is read: a valid
/// session, the CSRF token on a change, the throttle for the login. The valid session, if any.
fn authorize(
    relay: &Relay,
    ep: Endpoint,
    method: &Method,
    headers: &HeaderMap,
    ip: std::net::IpAddr,
    now: i64,
) -> Result<Option<String>, ApiError> {
    let session = cookie_of(headers).filter(|c| relay.admin.session_valid(c, now));
    if ep.needs_session() {
        let Some(s) = &session else {
            return Err(ApiError(StatusCode::UNAUTHORIZED, "log in first".into()));
        };
        if method != Method::GET {
            let token = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !relay.admin.csrf_valid(s, token) {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token".into(),
                ));
            }
        }
    }
    if ep == Endpoint::Login && relay.admin.throttle.check(ip).is_err() {
        tracing::warn!(%ip, "admin login throttled");
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "too many attempts; wait a minute".into(),
        ));
    }
    Ok(session)
}

/// The restore's passphrase travels in a header, percent-encoded UTF-8 (the body is the
/// backup file itself).
fn restore_passphrase(headers: &HeaderMap) -> String {
    let raw = headers
        .get("x-backup-passphrase")
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    percent_encoding::percent_decode(raw)
        .decode_utf8_lossy()
        .into_owned()
}

pub struct ApiError(StatusCode, String);

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        match e {
            AdminError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            AdminError::Io(e) => {
                tracing::error!("admin: {e}");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, m.into())
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(|x| x.as_str())
}

/// One authorized call: what every endpoint function gets.
struct Call<'a> {
    relay: &'a Arc<Relay>,
    /// The caller's valid session cookie (none only for the login).
    session: Option<&'a str>,
    /// The JSON body (for the restore, values from its headers).
    input: &'a Value,
    /// The restore's backup file, streamed to disk in `handle`.
    upload: Option<&'a std::path::Path>,
    ip: std::net::IpAddr,
    now: i64,
    https: bool,
}

async fn run(ep: Endpoint, c: &Call<'_>) -> Result<Response, ApiError> {
    use Endpoint::*;
    let relay = c.relay;
    match ep {
        Login => login(c),
        Logout => logout(c),
        State => Ok(ok(state(relay, c.session.unwrap_or(""))?)),
        Mode => save_mode(c),
        Dns => Ok(ok(dns(relay, c.now)?)),
        DnsZone => dns_zone(c),
        DnsCheck => dns_check(c).await,
        Settings => Ok(ok(settings(&relay.cfg)?)),
        SaveSettings => save_settings(c),
        Password => set_password(c),
        Apply => {
            restart_soon(relay);
            Ok(ok(json!({ "restarting": true })))
        }
        Cert => start_cert(c),
        CertStatus => {
            let job = relay.admin.cert_job.lock_or_recover().clone();
            Ok(ok(json!({ "job": job, "certificate": cert_info(relay) })))
        }
        Backup => backup(c),
        Restore => restore(c).await,
        Test => Ok(ok(crate::selftest::self_test(relay).await)),
        Updates => Ok(ok(super::update_api::status(relay))),
        // Handled (streamed) before the body is read as JSON.
        UpdateUpload => Err(bad("the bundle is the request body")),
        UpdateInstall => Ok(ok(super::update_api::install(relay, c.input).map_err(bad)?)),
        Status => Ok(ok(status(relay))),
        Logs => Ok(ok(json!({
            "lines": crate::logbuf::recent(crate::logbuf::LINES),
            "warnings": crate::logbuf::warnings(crate::logbuf::WARNINGS),
        }))),
        Toggles => toggles(c),
        PortMap => Ok(ok(json!(relay.portmap.status()))),
        Ddns => Ok(ok(json!(relay.ddns.status()))),
        // Answers once the new attempt is over (a UPnP search and the requests take a few
        // seconds), so the page can show the outcome at once.
        PortMapRetry => Ok(ok(json!(
            relay
                .portmap
                .retry(std::time::Duration::from_secs(20))
                .await
        ))),
    }
}

fn login(c: &Call<'_>) -> Result<Response, ApiError> {
    let admin = &c.relay.admin;
    let (input, ip) = (c.input, c.ip);
    // The throttle was asked in `handle`, before the body was read.
    let good = if admin.pending() {
        str_field(input, "setup_code").is_some_and(|c| admin.check_code(c))
    } else {
        str_field(input, "password").is_some_and(|p| admin.check_password(p))
    };
    if !good {
        admin.throttle.failed(ip);
        tracing::warn!(%ip, "admin login failed");
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            if admin.pending() {
                "wrong setup code".into()
            } else {
                "wrong password".into()
            },
        ));
    }
    admin.throttle.succeeded(ip);
    tracing::info!(%ip, "admin logged in");
    Ok(logged_in(
        admin,
        c.now,
        c.https,
        json!({ "pending": admin.pending() }),
    ))
}

fn logout(c: &Call<'_>) -> Result<Response, ApiError> {
    let ip = c.ip;
    // Server-side: a copy of the cookie (or a replay) is refused from now on.
    c.relay
        .admin
        .revoke_session(c.session.unwrap_or(""), c.now)
        .map_err(AdminError::from)?;
    tracing::info!(%ip, "admin logged out");
    Ok((
        [(header::SET_COOKIE, set_cookie("", c.https, 0))],
        axum::Json(json!({ "ok": true })),
    )
        .into_response())
}

fn save_mode(c: &Call<'_>) -> Result<Response, ApiError> {
    let (cfg, input) = (&c.relay.cfg, c.input);
    let mut t = read_settings(cfg)?;
    match str_field(input, "mode") {
        Some("lan") => {
            for k in ["mail_domain", "tls", "acme_email"] {
                t.remove(k);
            }
        }
        Some("domain") => {
            let domain = str_field(input, "domain").unwrap_or("").trim();
            let probe = Config::with_domain(domain, std::path::Path::new("/nonexistent"))
                .map_err(|e| bad(e.to_string()))?;
            if probe.is_ip_literal() {
                return Err(bad(
                    "a domain mode relay needs a domain name, not an IP address",
                ));
            }
            t.insert("mail_domain".into(), probe.mail_domain.clone().into());
            t.insert("tls".into(), "acme".into());
            match str_field(input, "acme_email").map(str::trim) {
                Some(e) if !e.is_empty() => {
                    if !e.contains('@') || e.len() > 254 {
                        return Err(bad("the ACME contact must be an e-mail address"));
                    }
                    t.insert("acme_email".into(), e.into());
                }
                _ => {
                    t.remove("acme_email");
                }
            }
        }
        _ => return Err(bad("mode must be \"lan\" or \"domain\"")),
    }
    validate(cfg, &t)?;
    write_settings(cfg, &t).map_err(AdminError::from)?;
    tracing::info!(mode = ?str_field(input, "mode"), "admin: mode saved");
    Ok(ok(json!({ "saved": true, "restart_needed": true })))
}

fn dns_zone(c: &Call<'_>) -> Result<Response, ApiError> {
    let (domain, dkim) = dns_domain_and_key(c.relay)?;
    let mut text = crate::dns::records::zone_text(&domain, &dkim, &mta_sts_id(c.now));
    let own = crate::ddns::public_addresses(c.relay);
    let addresses = crate::dns::records::addresses(&domain, own.ipv4, own.ipv6);
    if !addresses.is_empty() {
        text.push_str("\n; This box's public addresses, as it sees them now:\n");
        for r in addresses {
            text.push_str(&r.zone_line());
            text.push('\n');
        }
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{domain}.zone\""),
            ),
        ],
        text,
    )
        .into_response())
}

async fn dns_check(c: &Call<'_>) -> Result<Response, ApiError> {
    let (relay, now) = (c.relay, c.now);
    let cfg = &relay.cfg;
    let (domain, dkim) = dns_domain_and_key(relay)?;
    let own = crate::ddns::public_addresses(relay);
    let mut records = crate::dns::records::addresses(&domain, own.ipv4, own.ipv6);
    records.extend(crate::dns::records::expected(
        &domain,
        &dkim,
        &mta_sts_id(now),
    ));
    let (report, outbound) = tokio::join!(
        crate::dns::check::check(cfg, &domain, &records),
        crate::dns::reach::outbound(&cfg.outbound_probes)
    );
    let found: Vec<std::net::IpAddr> = report
        .records
        .iter()
        .filter(|r| r.rtype == "A/AAAA")
        .flat_map(|r| r.found.iter().filter_map(|f| f.parse().ok()))
        .collect();
    let local = crate::dns::reach::own_addresses(&found);
    let addresses = crate::dns::reach::address_verdict(&found, &local);
    let bad = |need: &str| {
        report
            .records
            .iter()
            .filter(|r| r.need == need && r.state != crate::dns::check::State::Ok)
            .count()
    };
    *relay.admin.last_dns_check.lock_or_recover() = Some(json!({
        "at": now,
        "domain": report.domain,
        "required_ok": report.required_ok,
        "required_not_ok": bad("required"),
        "recommended_not_ok": bad("recommended"),
    }));
    let mut v = serde_json::to_value(report)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    v["outbound"] = json!(outbound);
    v["addresses"] = json!(addresses);
    Ok(ok(v))
}

fn save_settings(c: &Call<'_>) -> Result<Response, ApiError> {
    let (cfg, input) = (&c.relay.cfg, c.input);
    let saved = read_settings(cfg)?;
    let Some(obj) = input.as_object() else {
        return Err(bad("expected an object"));
    };
    // Every field's problem at once, keyed by setting, for the form to show beside each
    // field (and the count beside the button).
    let mut fields = serde_json::Map::new();
    let mut t = saved.clone();
    for (k, v) in obj {
        let Some(s) = SETTINGS.iter().find(|s| s.key == k) else {
            fields.insert(
                k.clone(),
                format!("{k} is not a setting the admin pages change").into(),
            );
            continue;
        };
        match setting_value(s, v) {
            Ok(value) => {
                t.insert(k.clone(), value);
            }
            Err(e) => {
                fields.insert(k.clone(), e.into());
            }
        }
    }
    if fields.is_empty() {
        if let Err(whole) = validate(cfg, &t) {
            // Name the field(s) the config check refused (one at a time against what
            // is saved), or else say it for the whole form.
            for k in obj.keys() {
                let mut one = saved.clone();
                if let Some(v) = t.get(k) {
                    one.insert(k.clone(), v.clone());
                }
                if let Err(ApiError(_, m)) = validate(cfg, &one) {
                    fields.insert(k.clone(), m.into());
                }
            }
            if fields.is_empty() {
                return Err(whole);
            }
        }
    }
    if !fields.is_empty() {
        let label = |k: &str| {
            SETTINGS
                .iter()
                .find(|s| s.key == k)
                .map_or(k.to_string(), |s| s.label.to_string())
        };
        let summary: Vec<String> = fields
            .iter()
            .map(|(k, m)| format!("{}: {}", label(k), m.as_str().unwrap_or("")))
            .collect();
        return Ok((
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": summary.join("; "),
                "fields": fields,
            })),
        )
            .into_response());
    }
    write_settings(cfg, &t).map_err(AdminError::from)?;
    tracing::info!(keys = ?obj.keys().collect::<Vec<_>>(), "admin: settings saved");
    Ok(ok(json!({ "saved": true, "restart_needed": true })))
}

fn set_password(c: &Call<'_>) -> Result<Response, ApiError> {
    let (relay, input) = (c.relay, c.input);
    let pw = str_field(input, "password").unwrap_or("");
    relay.admin.set_password(pw)?;
    if input.get("apply").and_then(|v| v.as_bool()) == Some(true) {
        // The last step of the wizard: the settings take effect with the password, since
        // on plain HTTP this browser cannot call `apply` once set-up is over.
        restart_soon(relay);
    }
    // The secret changed: hand this browser a session under the new one.
    Ok(logged_in(
        &relay.admin,
        c.now,
        c.https,
        json!({ "pending": false }),
    ))
}

fn start_cert(c: &Call<'_>) -> Result<Response, ApiError> {
    let relay = c.relay;
    if !relay.cfg.is_acme() {
        return Err(bad(
            "this relay does not use ACME (choose the domain mode and apply it first)",
        ));
    }
    {
        let mut job = relay.admin.cert_job.lock_or_recover();
        if job.running {
            return Ok(ok(json!({ "started": false, "running": true })));
        }
        *job = super::CertJob {
            running: true,
            started: Some(c.now),
            ..Default::default()
        };
    }
    let r = relay.clone();
    tokio::spawn(async move {
        let result = crate::acme::run(&r, true).await;
        let mut job = r.admin.cert_job.lock_or_recover();
        job.running = false;
        job.finished = Some(r.clock.now());
        job.ok = Some(result.is_ok());
        job.report = match result {
            Ok(s) | Err(s) => s,
        };
    });
    Ok(ok(json!({ "started": true, "running": true })))
}

fn backup(c: &Call<'_>) -> Result<Response, ApiError> {
    let (relay, now) = (c.relay, c.now);
    let cfg = &relay.cfg;
    let pass = str_field(c.input, "passphrase").unwrap_or("");
    let config_text = relay
        .admin
        .config_path
        .lock_or_recover()
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let armored =
        crate::backup::create(cfg, config_text, &relay.store, pass, now).map_err(|e| match e {
            crate::backup::BackupError::Refused(m) => bad(m),
            e => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })?;
    tracing::info!("admin: backup downloaded");
    let day = mta_sts_id(now);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/pgp-encrypted".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"relaybox-backup-{}-{}.asc\"",
                    cfg.mail_domain.trim_matches(['[', ']']).replace(':', "_"),
                    &day[..day.len().min(8)]
                ),
            ),
        ],
        armored,
    )
        .into_response())
}

async fn restore(c: &Call<'_>) -> Result<Response, ApiError> {
    let relay = c.relay;
    let pass = str_field(c.input, "passphrase").unwrap_or("");
    let force = c.input.get("force").and_then(|v| v.as_bool()) == Some(true);
    let Some(upload) = c.upload else {
        return Err(bad("no backup uploaded"));
    };
    let file = std::fs::File::open(upload).map_err(AdminError::from)?;
    let report = crate::backup::restore(
        std::io::BufReader::new(file),
        pass,
        &relay.cfg.data_dir,
        &relay.store,
        force,
    )
    .await
    .map_err(|e| match e {
        crate::backup::BackupError::Io(e) => {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        e => bad(e.to_string()),
    })?;
    // The restored keys and settings are read at start.
    restart_soon(relay);
    Ok(ok(json!({ "restored": report, "restarting": true })))
}

fn toggles(c: &Call<'_>) -> Result<Response, ApiError> {
    let (admin, cfg, input) = (&c.relay.admin, &c.relay.cfg, c.input);
    if let Some(on) = input.get("maintenance").and_then(|v| v.as_bool()) {
        admin.set_maintenance(on).map_err(AdminError::from)?;
        if on {
            tracing::warn!("admin: maintenance on: new mail connections are turned away");
        } else {
            tracing::info!("admin: maintenance off");
        }
    }
    if let Some(on) = input.get("nocreate").and_then(|v| v.as_bool()) {
        super::set_flag_file(&cfg.nocreate_path(), on).map_err(AdminError::from)?;
        tracing::info!(
            nocreate = on,
            "admin: new accounts {}",
            if on { "off" } else { "on" }
        );
    }
    Ok(ok(json!({
        "nocreate": cfg.nocreate_path().exists(),
        "maintenance": admin.maintenance(),
    })))
}

fn restart_soon(relay: &Arc<Relay>) {
    relay.admin.request_restart();
    let r = relay.clone();
    tokio::spawn(async move {
        // Let the answer reach the browser before the listeners close.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        r.shutdown.trigger();
    });
}

/// The settings file would make a valid config with the running config's domain.
fn validate(cfg: &Config, t: &toml::Table) -> Result<(), ApiError> {
    let mut full = toml::Table::new();
    full.insert("mail_domain".into(), cfg.mail_domain.clone().into());
    // A directory without a settings file, so that only `t` is checked.
    full.insert("data_dir".into(), "/nonexistent/relaybox-validate".into());
    for (k, v) in t {
        full.insert(k.clone(), v.clone());
    }
    let text = toml::to_string(&full).map_err(|e| bad(e.to_string()))?;
    Config::from_toml(&text, std::path::Path::new("settings"))
        .map(|_| ())
        .map_err(|e| bad(e.to_string()))
}

fn mta_sts_id(now: i64) -> String {
    chrono::DateTime::from_timestamp(now, 0)
        .map(|t| t.format("%Y%m%d%H%M").to_string())
        .unwrap_or_default()
}

/// The domain the DNS records are for: the saved one (maybe not applied yet), and the DKIM key.
fn dns_domain_and_key(relay: &Relay) -> Result<(String, crate::dkim::Dkim), ApiError> {
    let saved = read_settings(&relay.cfg)?;
    let domain = saved
        .get("mail_domain")
        .and_then(|v| v.as_str())
        .map_or_else(|| relay.cfg.mail_domain.clone(), str::to_string);
    if crate::dns::literal_ip(&domain).is_some() || domain.starts_with('[') {
        return Err(bad(
            "this relay has an IP-literal address (LAN mode): it needs no DNS records",
        ));
    }
    // The key of the saved domain: before the domain is applied the running config is still the
    // IP literal, which signs nothing and has no key, and the required DKIM record would be
    // missing from the records, the zone file and the check. The key file does not depend on
    // the domain, so the relay signs with this key once it runs with the domain.
    let mut named = (*relay.cfg).clone();
    named.mail_domain = domain.clone();
    let dkim = crate::dkim::Dkim::load_or_create(&named)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((domain, dkim))
}

/// The ports a router must forward to the box, and what for.
const PORTS: &[(u16, &str, &str)] = &[
    (443, "required", "HTTPS: the web pages, account creation, relay-to-relay delivery (/mxdeliv) and clients behind strict firewalls (IMAP and SMTP by ALPN)"),
    (80, "required", "HTTP: certificate issuance and renewal (ACME HTTP-01)"),
    (993, "required", "IMAPS: Delta Chat receives mail"),
    (465, "required", "SMTPS: Delta Chat sends mail"),
    (25, "recommended", "SMTP: mail from relays that do not speak /mxdeliv (many home connections block it; chatmail relays fall back to HTTPS)"),
    (587, "optional", "SMTP submission with STARTTLS (older clients)"),
    (143, "optional", "IMAP with STARTTLS (older clients)"),
];

/// [`PORTS`] (TCP), and TURN's UDP ports when the relay will serve calls under `domain`.
fn forward_ports(cfg: &Config, domain: &str) -> Vec<Value> {
    let mut out: Vec<Value> = PORTS
        .iter()
        .map(|(p, need, what)| json!({"port": p, "proto": "tcp", "need": need, "what": what}))
        .collect();
    let mut named = cfg.clone();
    named.mail_domain = domain.to_string();
    if named.turn_enabled() {
        out.push(json!({"port": named.turn_port, "proto": "udp", "need": "recommended",
            "what": "TURN: Delta Chat calls between people whose networks block a direct connection"}));
        out.push(json!({"port": named.turn_relay_ports.to_string(), "proto": "udp", "need": "recommended",
            "what": "TURN relay ports: the media of those calls (one port per side of a call)"}));
    }
    out
}

fn dns(relay: &Relay, now: i64) -> Result<Value, ApiError> {
    let (domain, dkim) = dns_domain_and_key(relay)?;
    let own = crate::ddns::public_addresses(relay);
    let records: Vec<Value> = crate::dns::records::addresses(&domain, own.ipv4, own.ipv6)
        .into_iter()
        .chain(crate::dns::records::expected(
            &domain,
            &dkim,
            &mta_sts_id(now),
        ))
        .map(|r| {
            json!({
                "name": r.name,
                "type": r.rtype,
                "value": r.rdata,
                "need": format!("{:?}", r.need).to_lowercase(),
                "zone_line": r.zone_line(),
            })
        })
        .collect();
    let lan: Vec<String> = crate::dns::reach::local_addresses()
        .iter()
        .map(|a| a.to_string())
        .collect();
    Ok(json!({
        "domain": domain,
        "records": records,
        "address_records": format!(
            "Also create an A record (and AAAA if you have IPv6) for {domain} pointing at your public address; \
             inside your network the box is at {}.",
            if lan.is_empty() { "(no address found)".to_string() } else { lan.join(", ") }
        ),
        "lan_addresses": lan,
        "ports": forward_ports(&relay.cfg, &domain),
        "hairpin": "Many home routers cannot reach their own public address from inside (no NAT hairpin): \
                    if the relay's pages do not open by name from your own network but work from a phone on mobile data, \
                    that is the router, not the relay.",
    }))
}

fn settings(cfg: &Config) -> Result<Value, ApiError> {
    let saved = read_settings(cfg)?;
    let defaults = Config::with_domain("[192.0.2.1]", std::path::Path::new("/nonexistent"))
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let list: Vec<Value> = SETTINGS
        .iter()
        .map(|s| {
            let value = match saved.get(s.key) {
                Some(toml::Value::Integer(n)) => json!(n),
                Some(toml::Value::String(t)) => json!(t),
                _ => running_value(cfg, s.key),
            };
            let default = running_value(&defaults, s.key);
            json!({
                "key": s.key,
                "label": s.label,
                "unit": s.unit,
                "value": value,
                "shown": shown(s, &value),
                "default": default,
                "default_shown": shown(s, &default),
                "help": s.help,
                "kind": match s.kind {
                    Kind::Int => "int",
                    Kind::Size | Kind::Bytes => "mb",
                    Kind::Text => "text",
                },
            })
        })
        .collect();
    Ok(json!({ "settings": list }))
}

/// The certificate served now: after an ACME order it is the new one, not the one of the start.
fn cert_info(relay: &Relay) -> Value {
    match relay.tls.certs.chain().first() {
        Some(c) => match crate::acme::inspect(pem_of(c.as_ref()).as_bytes()) {
            Ok(info) => json!({
                "sha256": sha256_fingerprint(c.as_ref()),
                "not_after": info.not_after,
                "days_left": (info.not_after - relay.clock.now()) / 86400,
                "self_issued": info.self_issued,
                "names": info.dns_names,
            }),
            Err(e) => json!({ "error": e }),
        },
        None => Value::Null,
    }
}

/// `AB:CD:…`, as browsers show a certificate's SHA-256 fingerprint: in LAN mode the wizard's
/// last page shows it, so the owner can tell the browser's warning is about this box.
fn sha256_fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

fn invite(relay: &Relay) -> String {
    let cfg = &relay.cfg;
    if cfg.is_acme() || !cfg.is_self_signed() {
        format!("DCACCOUNT:{}/new", crate::web::https_origin(cfg))
    } else {
        format!("{}/new", crate::web::https_origin(cfg))
    }
}

/// `session` is the caller's cookie: its CSRF token goes back with the state, so a page loaded
/// with a valid session (after a restart, or on HTTPS after set-up on HTTP) can go on.
fn state(relay: &Relay, session: &str) -> Result<Value, ApiError> {
    let cfg = &relay.cfg;
    let saved = read_settings(cfg)?;
    let saved_domain = saved.get("mail_domain").and_then(|v| v.as_str());
    Ok(json!({
        "pending": relay.admin.pending(),
        "mail_domain": cfg.mail_domain,
        "mode": if cfg.is_ip_literal() { "lan" } else { "domain" },
        "saved_mode": if saved_domain.is_some() { "domain" } else { "lan" },
        "saved_domain": saved_domain,
        "tls": if cfg.is_acme() { "acme" } else if cfg.is_self_signed() { "self-signed" } else { "files" },
        "https_origin": crate::web::https_origin(cfg),
        "invite": invite(relay),
        "certificate": cert_info(relay),
        "nocreate": cfg.nocreate_path().exists(),
        "version": crate::version::long(),
        "csrf": relay.admin.csrf_token(session),
    }))
}

fn status(relay: &Relay) -> Value {
    let s = crate::metrics::Snapshot::gather(relay);
    let disk = nix::sys::statvfs::statvfs(&relay.cfg.data_dir)
        .ok()
        .map(|v| {
            let bs = v.fragment_size();
            json!({
                "total_bytes": v.blocks() * bs,
                "free_bytes": v.blocks_available() * bs,
            })
        });
    let oldest = relay
        .store
        .queued()
        .ok()
        .and_then(|q| q.iter().map(|e| e.created).min());
    json!({
        "accounts": s.accounts,
        "active": { "1d": s.active[0], "7d": s.active[1], "30d": s.active[2] },
        "stored_bytes": s.stored_bytes,
        "queue_length": s.queue_length,
        "queue_oldest": oldest,
        "push_pending": s.push_pending,
        "written_bytes_since_start": s.written_bytes,
        "certificate_expires_in_s": s.cert_expiry_seconds,
        "disk": disk,
        "written_bytes_per_day": written_per_day(s.written_bytes, relay.clock.now() - relay.admin.started),
        "nocreate": relay.cfg.nocreate_path().exists(),
        "maintenance": relay.admin.maintenance(),
        "delivered_since_start": crate::metrics::M.delivered_mail.get(),
        "uptime_s": relay.clock.now() - relay.admin.started,
        "last_expiry": relay.admin.last_expiry(),
        "expiry_time_utc": relay.cfg.expiry_time,
        "last_dns_check": relay.admin.last_dns_check.lock_or_recover().clone(),
        "ddns": relay.ddns.status(),
        "warnings": crate::logbuf::warnings(10),
        "version": crate::version::long(),
        "os_release": crate::version::os_release(std::path::Path::new("/etc/os-release")),
    })
}

/// Bytes written per day, extrapolated from the time since start (an SD-card wear estimate);
/// none in the first ten minutes, when start-up writes (keys, store) would dominate.
fn written_per_day(written: Option<u64>, uptime_s: i64) -> Option<u64> {
    let w = written?;
    (uptime_s >= 600).then(|| (w as f64 * 86_400.0 / uptime_s as f64) as u64)
}
