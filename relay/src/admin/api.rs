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

use super::{read_settings, write_settings, Admin, AdminError};
use crate::config::{ByteSize, Config};
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

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn ok(v: Value) -> Response {
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
    relay.admin.enabled() && (https || relay.admin.pending())
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
    let session = cookie_of(&headers).filter(|c| relay.admin.session_valid(c, now));
    if ep.needs_session() {
        let Some(s) = &session else {
            return error(StatusCode::UNAUTHORIZED, "log in first");
        };
        if method != Method::GET {
            let token = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !relay.admin.csrf_valid(s, token) {
                return error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
            }
        }
    }
    let ip = client.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0 .0.ip());
    if ep == Endpoint::Login && relay.admin.throttle.check(ip).is_err() {
        tracing::warn!(%ip, "admin login throttled");
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many attempts; wait a minute",
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if ep == Endpoint::Restore {
        let upload = match upload_to_file(relay, declared, body).await {
            Ok(u) => u,
            Err(r) => return r,
        };
        let input = json!({
            "passphrase": restore_passphrase(&headers),
            "force": headers.get("x-backup-force").is_some_and(|v| v.as_bytes() == b"1"),
        });
        let r = run(
            relay,
            ep,
            session.as_deref(),
            &input,
            Some(upload.path()),
            ip,
            now,
            https,
        )
        .await;
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
    match run(relay, ep, session.as_deref(), &input, None, ip, now, https).await {
        Ok(r) => r,
        Err(ApiError(s, m)) => error(s, m),
    }
}

fn too_large(max: u64) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {max} bytes"),
    )
}

fn too_slow() -> Response {
    error(
        StatusCode::REQUEST_TIMEOUT,
        "the request body did not arrive in time",
    )
}

/// Reads a body of at most `max` bytes that must be complete within `deadline`. A declared
/// length over the limit is refused before reading anything.
pub(crate) async fn read_small_body(
    body: Body,
    declared: Option<u64>,
    max: usize,
    deadline: std::time::Duration,
) -> Result<Vec<u8>, Response> {
    use futures::StreamExt;
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max as u64));
    }
    let end = tokio::time::Instant::now() + deadline;
    let mut data = Vec::new();
    let mut stream = body.into_data_stream();
    loop {
        match tokio::time::timeout_at(end, stream.next()).await {
            Err(_) => return Err(too_slow()),
            Ok(None) => return Ok(data),
            Ok(Some(Err(e))) => {
                tracing::debug!("admin: reading the body failed: {e}");
                return Err(error(StatusCode::BAD_REQUEST, "the body could not be read"));
            }
            Ok(Some(Ok(chunk))) => {
                if data.len() + chunk.len() > max {
                    return Err(too_large(max as u64));
                }
                data.extend_from_slice(&chunk);
            }
        }
    }
}

/// A backup upload on disk, removed when dropped.
struct Upload(std::path::PathBuf);

impl Upload {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Streams the restore upload into a private file under `<data_dir>/admin/` as it arrives, at
/// most `admin_restore_max_size` bytes within `admin_restore_timeout`.
async fn upload_to_file(
    relay: &Relay,
    declared: Option<u64>,
    body: Body,
) -> Result<Upload, Response> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let max = relay.cfg.admin_restore_max_size.0;
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let internal = |e: std::io::Error| {
        tracing::error!("admin: cannot store the backup upload: {e}");
        error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    let dir = relay.cfg.data_dir.join("admin");
    tokio::fs::create_dir_all(&dir).await.map_err(internal)?;
    let name = {
        use rand::RngCore;
        let mut b = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut b);
        format!("restore-upload-{}.tmp", super::b64(&b))
    };
    let upload = Upload(dir.join(name));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(upload.path())
        .await
        .map_err(internal)?;
    let end = tokio::time::Instant::now() + relay.cfg.admin_restore_timeout.duration();
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    loop {
        match tokio::time::timeout_at(end, stream.next()).await {
            Err(_) => return Err(too_slow()),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!("admin: reading the backup upload failed: {e}");
                return Err(error(StatusCode::BAD_REQUEST, "the body could not be read"));
            }
            Ok(Some(Ok(chunk))) => {
                written += chunk.len() as u64;
                if written > max {
                    return Err(too_large(max));
                }
                file.write_all(&chunk).await.map_err(internal)?;
            }
        }
    }
    file.flush().await.map_err(internal)?;
    Ok(upload)
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

#[allow(clippy::too_many_arguments)]
async fn run(
    relay: &Arc<Relay>,
    ep: Endpoint,
    session: Option<&str>,
    input: &Value,
    upload: Option<&std::path::Path>,
    ip: std::net::IpAddr,
    now: i64,
    https: bool,
) -> Result<Response, ApiError> {
    let admin = &relay.admin;
    let cfg = &relay.cfg;
    Ok(match ep {
        Endpoint::Login => {
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
            logged_in(admin, now, https, json!({ "pending": admin.pending() }))
        }
        Endpoint::Logout => {
            // Server-side: a copy of the cookie (or a replay) is refused from now on.
            admin
                .revoke_session(session.unwrap_or(""), now)
                .map_err(AdminError::from)?;
            tracing::info!(%ip, "admin logged out");
            (
                [(header::SET_COOKIE, set_cookie("", https, 0))],
                axum::Json(json!({ "ok": true })),
            )
                .into_response()
        }
        Endpoint::State => ok(state(relay, session.unwrap_or(""))?),
        Endpoint::Mode => {
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
            ok(json!({ "saved": true, "restart_needed": true }))
        }
        Endpoint::Dns => ok(dns(relay, now)?),
        Endpoint::DnsZone => {
            let (domain, dkim) = dns_domain_and_key(relay)?;
            let text = crate::dns::records::zone_text(&domain, &dkim, &mta_sts_id(now));
            (
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
                .into_response()
        }
        Endpoint::DnsCheck => {
            let (domain, dkim) = dns_domain_and_key(relay)?;
            let records = crate::dns::records::expected(&domain, &dkim, &mta_sts_id(now));
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
            let mut local = local_addresses();
            // An address is this box's if a socket can be bound to it: that also covers what
            // the interface list does not show (127.0.0.0/8, addresses on a local route).
            for ip in &found {
                if !local.contains(ip) && std::net::UdpSocket::bind((*ip, 0)).is_ok() {
                    local.push(*ip);
                }
            }
            let addresses = crate::dns::reach::address_verdict(&found, &local);
            let bad = |need: &str| {
                report
                    .records
                    .iter()
                    .filter(|r| r.need == need && r.state != crate::dns::check::State::Ok)
                    .count()
            };
            *admin
                .last_dns_check
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(json!({
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
            ok(v)
        }
        Endpoint::Settings => ok(settings(cfg)?),
        Endpoint::SaveSettings => {
            let mut t = read_settings(cfg)?;
            let Some(obj) = input.as_object() else {
                return Err(bad("expected an object"));
            };
            for (k, v) in obj {
                let Some(s) = SETTINGS.iter().find(|s| s.key == k) else {
                    return Err(bad(format!("{k} is not a setting the admin pages change")));
                };
                let text = match v {
                    Value::String(s) => s.trim().to_string(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(bad(format!("{k}: expected text or a number"))),
                };
                let value = match s.kind {
                    Kind::Int => toml::Value::Integer(
                        text.parse::<i64>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| bad(format!("{k}: expected a positive whole number")))?,
                    ),
                    Kind::Size => {
                        ByteSize::parse(&text).map_err(|e| bad(format!("{k}: {e}")))?;
                        toml::Value::String(text)
                    }
                    Kind::Text => {
                        if text.len() > 500 || text.contains(['\r', '\n']) {
                            return Err(bad(format!("{k}: one line of at most 500 characters")));
                        }
                        toml::Value::String(text)
                    }
                };
                t.insert(k.clone(), value);
            }
            validate(cfg, &t)?;
            write_settings(cfg, &t).map_err(AdminError::from)?;
            tracing::info!(keys = ?obj.keys().collect::<Vec<_>>(), "admin: settings saved");
            ok(json!({ "saved": true, "restart_needed": true }))
        }
        Endpoint::Password => {
            let pw = str_field(input, "password").unwrap_or("");
            admin.set_password(pw)?;
            if input.get("apply").and_then(|v| v.as_bool()) == Some(true) {
                // The last step of the wizard: the settings take effect with the password, since
                // on plain HTTP this browser cannot call `apply` once set-up is over.
                restart_soon(relay);
            }
            // The secret changed: hand this browser a session under the new one.
            logged_in(admin, now, https, json!({ "pending": false }))
        }
        Endpoint::Apply => {
            restart_soon(relay);
            ok(json!({ "restarting": true }))
        }
        Endpoint::Cert => {
            if !cfg.is_acme() {
                return Err(bad(
                    "this relay does not use ACME (choose the domain mode and apply it first)",
                ));
            }
            {
                let mut job = admin.cert_job.lock().unwrap_or_else(|p| p.into_inner());
                if job.running {
                    return Ok(ok(json!({ "started": false, "running": true })));
                }
                *job = super::CertJob {
                    running: true,
                    started: Some(now),
                    ..Default::default()
                };
            }
            let r = relay.clone();
            tokio::spawn(async move {
                let result = crate::acme::run(&r, true).await;
                let mut job = r.admin.cert_job.lock().unwrap_or_else(|p| p.into_inner());
                job.running = false;
                job.finished = Some(r.clock.now());
                job.ok = Some(result.is_ok());
                job.report = match result {
                    Ok(s) | Err(s) => s,
                };
            });
            ok(json!({ "started": true, "running": true }))
        }
        Endpoint::CertStatus => {
            let job = admin
                .cert_job
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            ok(json!({ "job": job, "certificate": cert_info(relay) }))
        }
        Endpoint::Backup => {
            let pass = str_field(input, "passphrase").unwrap_or("");
            let config_text = admin
                .config_path
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok());
            let armored = crate::backup::create(cfg, config_text, &relay.store, pass, now)
                .map_err(|e| match e {
                    crate::backup::BackupError::Refused(m) => bad(m),
                    e => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                })?;
            tracing::info!("admin: backup downloaded");
            let day = mta_sts_id(now);
            (
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
                .into_response()
        }
        Endpoint::Restore => {
            let pass = str_field(input, "passphrase").unwrap_or("");
            let force = input.get("force").and_then(|v| v.as_bool()) == Some(true);
            let Some(upload) = upload else {
                return Err(bad("no backup uploaded"));
            };
            let file = std::fs::File::open(upload).map_err(AdminError::from)?;
            let report = crate::backup::restore(
                std::io::BufReader::new(file),
                pass,
                &cfg.data_dir,
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
            ok(json!({ "restored": report, "restarting": true }))
        }
        Endpoint::Test => ok(self_test(relay).await),
        Endpoint::Status => ok(status(relay)),
        Endpoint::Logs => ok(json!({
            "lines": crate::logbuf::recent(crate::logbuf::LINES),
            "warnings": crate::logbuf::warnings(crate::logbuf::WARNINGS),
        })),
        Endpoint::Toggles => {
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
            ok(json!({
                "nocreate": cfg.nocreate_path().exists(),
                "maintenance": admin.maintenance(),
            }))
        }
    })
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

fn dns(relay: &Relay, now: i64) -> Result<Value, ApiError> {
    let (domain, dkim) = dns_domain_and_key(relay)?;
    let records: Vec<Value> = crate::dns::records::expected(&domain, &dkim, &mta_sts_id(now))
        .into_iter()
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
    let lan: Vec<String> = local_addresses().iter().map(|a| a.to_string()).collect();
    Ok(json!({
        "domain": domain,
        "records": records,
        "address_records": format!(
            "Also create an A record (and AAAA if you have IPv6) for {domain} pointing at your public address; \
             inside your network the box is at {}.",
            if lan.is_empty() { "(no address found)".to_string() } else { lan.join(", ") }
        ),
        "lan_addresses": lan,
        "ports": PORTS.iter().map(|(p, need, what)| json!({"port": p, "need": need, "what": what})).collect::<Vec<_>>(),
        "hairpin": "Many home routers cannot reach their own public address from inside (no NAT hairpin): \
                    if the relay's pages do not open by name from your own network but work from a phone on mobile data, \
                    that is the router, not the relay.",
    }))
}

/// The box's own non-loopback addresses, for the DNS and port-forwarding hints.
fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(s) = a.address else { continue };
            let ip: Option<std::net::IpAddr> = if let Some(v4) = s.as_sockaddr_in() {
                Some(v4.ip().into())
            } else {
                s.as_sockaddr_in6().map(|v6| v6.ip().into())
            };
            if let Some(ip) = ip {
                let link_local =
                    matches!(ip, std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                if !ip.is_loopback() && !link_local && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Size,
    Text,
}

struct Setting {
    key: &'static str,
    kind: Kind,
    help: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting { key: "max_user_send_per_minute", kind: Kind::Int, help: "Messages one address may send per minute (a Delta Chat group message counts once per relay)." },
    Setting { key: "max_user_send_burst_size", kind: Kind::Int, help: "How many messages may be sent at once before the per-minute rate applies." },
    Setting { key: "max_mailbox_size", kind: Kind::Size, help: "Mailbox quota per address (e.g. 500M); full mailboxes refuse new mail." },
    Setting { key: "max_message_size", kind: Kind::Int, help: "Largest message in bytes (31457280 = 30 MiB)." },
    Setting { key: "delete_mails_after", kind: Kind::Int, help: "Days after which any message is deleted from the relay." },
    Setting { key: "delete_large_after", kind: Kind::Int, help: "Days after which large messages that were already fetched are deleted." },
    Setting { key: "delete_inactive_users_after", kind: Kind::Int, help: "Days without a login after which an address and its mail are deleted." },
    Setting { key: "privacy_mail", kind: Kind::Text, help: "Privacy contact e-mail shown on the privacy page." },
    Setting { key: "privacy_postal", kind: Kind::Text, help: "Postal address of the operator, for the privacy page." },
    Setting { key: "privacy_pdo", kind: Kind::Text, help: "Data protection officer, for the privacy page." },
    Setting { key: "privacy_supervisor", kind: Kind::Text, help: "Supervisory authority, for the privacy page." },
];

fn running_value(cfg: &Config, key: &str) -> Value {
    match key {
        "max_user_send_per_minute" => cfg.max_user_send_per_minute.into(),
        "max_user_send_burst_size" => cfg.max_user_send_burst_size.into(),
        "max_mailbox_size" => cfg.max_mailbox_size.to_string().into(),
        "max_message_size" => cfg.max_message_size.into(),
        "delete_mails_after" => cfg.delete_mails_after.into(),
        "delete_large_after" => cfg.delete_large_after.into(),
        "delete_inactive_users_after" => cfg.delete_inactive_users_after.into(),
        "privacy_mail" => cfg.privacy_mail.clone().into(),
        "privacy_postal" => cfg.privacy_postal.clone().into(),
        "privacy_pdo" => cfg.privacy_pdo.clone().into(),
        "privacy_supervisor" => cfg.privacy_supervisor.clone().into(),
        _ => Value::Null,
    }
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
            json!({
                "key": s.key,
                "value": value,
                "default": running_value(&defaults, s.key),
                "help": s.help,
                "kind": match s.kind { Kind::Int => "int", Kind::Size => "size", Kind::Text => "text" },
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
        "last_dns_check": relay.admin.last_dns_check.lock().unwrap_or_else(|p| p.into_inner()).clone(),
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

/// Makes two fresh addresses, sends a message of the shape the gate accepts from one to the
/// other through the same delivery path SMTP uses, checks it is in the INBOX, and removes both
/// again: registration, the gate and the store all answer.
async fn self_test(relay: &Relay) -> Value {
    let t0 = std::time::Instant::now();
    let mut steps: Vec<String> = Vec::new();
    let result = self_test_steps(relay, &mut steps).await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(()) => json!({ "ok": true, "ms": (ms * 10.0).round() / 10.0, "steps": steps }),
        Err(e) => {
            tracing::warn!("admin self-test failed: {e}");
            json!({ "ok": false, "ms": (ms * 10.0).round() / 10.0, "steps": steps, "error": e })
        }
    }
}

pub(crate) async fn self_test_steps(relay: &Relay, steps: &mut Vec<String>) -> Result<(), String> {
    use crate::policy::{Direction, Envelope};
    let cfg = &relay.cfg;
    let (a, pa) = crate::accounts::random_credentials(cfg);
    let (b, pb) = crate::accounts::random_credentials(cfg);
    let mut made = Vec::new();
    let r: Result<(), String> = async {
        for (addr, pw) in [(&a, &pa), (&b, &pb)] {
            let u = relay
                .accounts
                .login(addr, pw)
                .await
                .map_err(|e| format!("creating {addr} failed: {e}"))?;
            made.push(u.account.id);
        }
        steps.push(format!("created {a} and {b} (first login)"));
        let target = relay
            .delivery
            .check_rcpt(&b, Direction::Outgoing)
            .map_err(|r| format!("recipient refused: {r}"))?;
        let env = Envelope {
            mail_from: a.clone(),
            rcpt_to: vec![b.clone()],
            peer: None,
        };
        let data = crate::policy::testmsg::encrypted(&a, &b);
        let reply = relay
            .delivery
            .submit(&env, &[target], data, Direction::Outgoing)
            .await;
        if reply.code != 250 {
            return Err(format!("delivery refused: {reply}"));
        }
        steps.push(format!("sent an encrypted-shaped message: {reply}"));
        let inbox = relay
            .store
            .mailboxes(made[1])
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|m| m.name == "INBOX")
            .ok_or("the recipient has no INBOX")?;
        let n = relay
            .store
            .messages(inbox.id)
            .map_err(|e| e.to_string())?
            .len();
        if n != 1 {
            return Err(format!(
                "the recipient's INBOX holds {n} messages, expected 1"
            ));
        }
        steps.push("the message is in the recipient's INBOX".into());
        Ok(())
    }
    .await;
    for id in made {
        if let Err(e) = relay.store.delete_account(id).await {
            tracing::warn!("self-test: cannot remove a test account: {e}");
        }
    }
    r
}
