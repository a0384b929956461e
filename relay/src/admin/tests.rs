use super::api::{Endpoint, COOKIE, PREFIX};
use crate::testkit::{https_request, test_relay};
use crate::Relay;
use std::sync::Arc;

fn relay(dir: &std::path::Path) -> Arc<Relay> {
    test_relay(dir, |c| c.admin_ui = true).unwrap()
}

fn code(relay: &Relay) -> String {
    std::fs::read_to_string(relay.admin.code_path())
        .unwrap()
        .trim()
        .to_string()
}

async fn call(
    relay: &Arc<Relay>,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value, Vec<u8>) {
    let mut headers: Vec<(Vec<u8>, Vec<u8>)> =
        vec![(b"content-type".to_vec(), b"application/json".to_vec())];
    if let Some(c) = cookie {
        headers.push((b"cookie".to_vec(), format!("{COOKIE}={c}").into_bytes()));
    }
    if let Some(t) = csrf {
        headers.push((b"x-csrf-token".to_vec(), t.as_bytes().to_vec()));
    }
    let (status, bytes) = https_request(relay, method, path, &headers, body.as_bytes().to_vec())
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, v, bytes)
}

/// Logs in with the setup code; the session cookie and the CSRF token.
async fn login(relay: &Arc<Relay>) -> (String, String) {
    let now = relay.clock.now();
    let body = format!("{{\"setup_code\":\"{}\"}}", code(relay));
    let (status, v, _) = call(relay, "POST", "/api/admin/login", None, None, &body).await;
    assert_eq!(status, 200, "{v}");
    // The cookie is stateless: any session the admin makes is as good as the one in the header.
    let session = relay.admin.new_session(now);
    let csrf = relay.admin.csrf_token(&session);
    assert!(v["csrf"].as_str().is_some_and(|c| !c.is_empty()));
    (session, csrf)
}

#[tokio::test]
async fn every_endpoint_refuses_without_session_and_without_csrf() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (session, csrf) = login(&relay).await;
    for ep in Endpoint::ALL {
        let (method, path) = ep.route();
        let url = format!("{PREFIX}{path}");
        if !ep.needs_session() {
            continue;
        }
        let (status, v, _) = call(&relay, method.as_str(), &url, None, None, "{}").await;
        assert_eq!(status, 401, "{method} {url} without a session: {v}");
        let (status, v, _) = call(
            &relay,
            method.as_str(),
            &url,
            Some("1.forged"),
            Some(&csrf),
            "{}",
        )
        .await;
        assert_eq!(status, 401, "{method} {url} with a forged session: {v}");
        if method != axum::http::Method::GET {
            let (status, v, _) =
                call(&relay, method.as_str(), &url, Some(&session), None, "{}").await;
            assert_eq!(status, 403, "{method} {url} without CSRF token: {v}");
            let (status, v, _) = call(
                &relay,
                method.as_str(),
                &url,
                Some(&session),
                Some("wrong"),
                "{}",
            )
            .await;
            assert_eq!(status, 403, "{method} {url} with a wrong CSRF token: {v}");
        }
    }
    // With both, the read-only ones answer.
    let (status, v, _) = call(&relay, "GET", "/api/admin/state", Some(&session), None, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["pending"], true);
    assert_eq!(v["csrf"], csrf.as_str());
}

#[tokio::test]
async fn setup_code_then_password_then_only_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    assert!(relay.admin.pending());
    let c = code(&relay);
    assert_eq!(c.len(), 19, "{c}");
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/login",
        None,
        None,
        r#"{"setup_code":"AAAA-BBBB-CCCC-DDDD"}"#,
    )
    .await;
    assert_eq!(status, 401, "{v}");
    // Lower case and without dashes is the same code.
    let typed = c.replace('-', " ").to_lowercase();
    let (status, _, _) = call(
        &relay,
        "POST",
        "/api/admin/login",
        None,
        None,
        &format!("{{\"setup_code\":\"{typed}\"}}"),
    )
    .await;
    assert_eq!(status, 200);

    let (session, csrf) = login(&relay).await;
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/password",
        Some(&session),
        Some(&csrf),
        r#"{"password":"short"}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("12"), "{v}");
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/password",
        Some(&session),
        Some(&csrf),
        r#"{"password":"correct horse battery"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(!relay.admin.pending());
    assert!(
        !relay.admin.code_path().exists(),
        "the setup code is deleted"
    );
    // The old session died with the old secret.
    let (status, _, _) = call(&relay, "GET", "/api/admin/state", Some(&session), None, "").await;
    assert_eq!(status, 401);
    let (status, _, _) = call(
        &relay,
        "POST",
        "/api/admin/login",
        None,
        None,
        &format!("{{\"setup_code\":\"{c}\"}}"),
    )
    .await;
    assert_eq!(status, 401, "the setup code no longer works");
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/login",
        None,
        None,
        r#"{"password":"correct horse battery"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn login_attempts_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let mut codes = Vec::new();
    for _ in 0..8 {
        let (status, _, _) = call(
            &relay,
            "POST",
            "/api/admin/login",
            None,
            None,
            r#"{"setup_code":"wrong"}"#,
        )
        .await;
        codes.push(status);
    }
    assert_eq!(&codes[..5], &[401; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|&c| c == 429), "{codes:?}");
    // Even the right code waits now.
    let body = format!("{{\"setup_code\":\"{}\"}}", code(&relay));
    let (status, _, _) = call(&relay, "POST", "/api/admin/login", None, None, &body).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn settings_are_validated_saved_and_read_back_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (session, csrf) = login(&relay).await;
    for bad in [
        r#"{"max_mailbox_size":"lots"}"#,
        r#"{"max_user_send_per_minute":0}"#,
        r#"{"data_dir":"/tmp"}"#,
        r#"{"privacy_mail":"a\nb"}"#,
    ] {
        let (status, v, _) = call(
            &relay,
            "POST",
            "/api/admin/settings",
            Some(&session),
            Some(&csrf),
            bad,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
    assert!(
        !relay.cfg.settings_path().exists(),
        "nothing written for refused input"
    );
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/settings",
        Some(&session),
        Some(&csrf),
        r#"{"max_mailbox_size":"200M","delete_mails_after":"7","privacy_mail":"privacy@example.org"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (_, v, _) = call(
        &relay,
        "GET",
        "/api/admin/settings",
        Some(&session),
        None,
        "",
    )
    .await;
    let get = |k: &str| {
        v["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == k)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(get("max_mailbox_size"), "200M");
    assert_eq!(get("delete_mails_after"), 7);
    // What `relaybox serve` would load after the restart.
    let cfg = crate::config::Config::with_domain("[127.0.0.1]", dir.path()).unwrap();
    assert_eq!(cfg.max_mailbox_size, crate::config::ByteSize(200 << 20));
    assert_eq!(cfg.delete_mails_after, 7);
    assert_eq!(cfg.privacy_mail, "privacy@example.org");

    // Domain mode: the domain is checked, then saved with ACME.
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/mode",
        Some(&session),
        Some(&csrf),
        r#"{"mode":"domain","domain":"not a domain"}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/mode",
        Some(&session),
        Some(&csrf),
        r#"{"mode":"domain","domain":"Chat.Example.org","acme_email":"op@example.org"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let cfg = crate::config::Config::with_domain("[127.0.0.1]", dir.path()).unwrap();
    assert_eq!(cfg.mail_domain, "chat.example.org");
    assert!(cfg.is_acme());
    assert_eq!(cfg.delete_mails_after, 7, "the limits stay");
    let (status, v, zone) = call(
        &relay,
        "GET",
        "/api/admin/dns/zone",
        Some(&session),
        None,
        "",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let zone = String::from_utf8(zone).unwrap();
    // The relay still runs as an IP literal (no DKIM key), yet the records are those of the
    // saved domain, with its DKIM key: the one the relay signs with after the restart.
    let dkim_line = zone
        .lines()
        .find(|l| l.starts_with("opendkim._domainkey.chat.example.org."))
        .unwrap_or_else(|| panic!("no DKIM record in the zone file:\n{zone}"));
    assert!(dkim_line.contains("v=DKIM1"), "{dkim_line}");
    let (_, v, _) = call(&relay, "GET", "/api/admin/dns", Some(&session), None, "").await;
    let records = v["records"].as_array().unwrap();
    assert!(records.iter().any(|r| r["type"] == "MX"), "{v}");
    let dkim_txt = crate::dkim::Dkim::load(&cfg).unwrap().txt_record().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["name"] == "opendkim._domainkey.chat.example.org."
                && r["type"] == "TXT"
                && r["value"]
                    .as_str()
                    .unwrap()
                    .replace("\" \"", "")
                    .contains(&dkim_txt)),
        "{v}"
    );
    // And back to LAN mode.
    let (status, _, _) = call(
        &relay,
        "POST",
        "/api/admin/mode",
        Some(&session),
        Some(&csrf),
        r#"{"mode":"lan"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let cfg = crate::config::Config::with_domain("[127.0.0.1]", dir.path()).unwrap();
    assert_eq!(cfg.mail_domain, "[127.0.0.1]");
}

#[tokio::test]
async fn self_test_delivers_through_the_relay_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (session, csrf) = login(&relay).await;
    let before = relay.store.accounts().unwrap().len();
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/test",
        Some(&session),
        Some(&csrf),
        "",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        relay.store.accounts().unwrap().len(),
        before,
        "test accounts removed"
    );
    // With sign-ups stopped, the test says so instead of passing.
    let (status, _, _) = call(
        &relay,
        "POST",
        "/api/admin/toggles",
        Some(&session),
        Some(&csrf),
        r#"{"nocreate":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (_, v, _) = call(
        &relay,
        "POST",
        "/api/admin/test",
        Some(&session),
        Some(&csrf),
        "",
    )
    .await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("creating"), "{v}");
}

#[tokio::test]
async fn without_admin_ui_there_is_no_admin_api_and_no_wizard() {
    let dir = tempfile::tempdir().unwrap();
    let relay = test_relay(dir.path(), |_| {}).unwrap();
    assert!(!relay.admin.pending());
    assert!(!relay.admin.code_path().exists());
    let (status, _, _) = call(
        &relay,
        "POST",
        "/api/admin/login",
        None,
        None,
        r#"{"setup_code":"x"}"#,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, page) = call(&relay, "GET", "/", None, None, "").await;
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&page).contains("setup code"));
}

#[tokio::test]
async fn the_wizard_is_the_front_page_while_pending() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (status, _, page) = call(&relay, "GET", "/", None, None, "").await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("setup code"));
}

#[tokio::test]
async fn backup_from_one_relay_restores_into_a_new_one_through_the_api() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = relay(a_dir.path());
    a.accounts
        .login("movingme1@[127.0.0.1]", "moving password")
        .await
        .unwrap();
    let (session, csrf) = login(&a).await;
    let (status, v, _) = call(
        &a,
        "POST",
        "/api/admin/backup",
        Some(&session),
        Some(&csrf),
        r#"{"passphrase":"short"}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (status, _, armored) = call(
        &a,
        "POST",
        "/api/admin/backup",
        Some(&session),
        Some(&csrf),
        r#"{"passphrase":"moving day passphrase"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let armored = String::from_utf8(armored).unwrap();
    assert!(
        armored.starts_with("-----BEGIN PGP MESSAGE-----"),
        "{armored:.200}"
    );

    let b_dir = tempfile::tempdir().unwrap();
    let b = relay(b_dir.path());
    let (session, csrf) = login(&b).await;
    // The backup file is the body; the passphrase travels percent-encoded in a header.
    let restore = |pass: &str| {
        let mut req = post(
            "/api/admin/restore",
            Some(&session),
            Some(&csrf),
            armored.clone().into(),
        );
        let enc = percent_encoding::utf8_percent_encode(pass, percent_encoding::NON_ALPHANUMERIC);
        req.headers_mut()
            .insert("x-backup-passphrase", enc.to_string().parse().unwrap());
        req
    };
    let (status, _, bytes) = send(&b, restore("not the passphrase"), None).await;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("wrong passphrase"),
        "{v}"
    );
    assert!(!b.admin.restart_requested());
    let (status, _, bytes) = send(&b, restore("moving day passphrase"), None).await;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["restored"]["accounts"], 1);
    assert!(b.admin.restart_requested(), "restored keys need a restart");
    let acc = b
        .store
        .account("movingme1@[127.0.0.1]")
        .unwrap()
        .expect("account restored");
    assert!(crate::accounts::verify_hash(
        "moving password",
        &acc.password_hash
    ));
    // The upload went to a file, which is gone again.
    let left = restore_uploads_left(b_dir.path());
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_backup_upload_over_its_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = test_relay(dir.path(), |c| {
        c.admin_ui = true;
        c.admin_restore_max_size = crate::config::ByteSize(64 << 10);
    })
    .unwrap();
    let (session, csrf) = login(&relay).await;
    let (status, _, _) = send(
        &relay,
        post(
            "/api/admin/restore",
            Some(&session),
            Some(&csrf),
            vec![b'A'; 100 << 10].into(),
        ),
        None,
    )
    .await;
    assert_eq!(status, 413);
    let left = restore_uploads_left(dir.path());
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn status_logs_toggles_and_the_last_expiry_run() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (session, csrf) = login(&relay).await;
    let (status, v, _) = call(&relay, "GET", "/api/admin/status", Some(&session), None, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["maintenance"], false);
    assert!(v["last_expiry"].is_null(), "{v}");
    assert!(v["last_dns_check"].is_null(), "{v}");
    assert_eq!(v["ddns"]["enabled"], false, "off unless configured: {v}");
    assert!(v["ddns"]["last_update"].is_null(), "{v}");
    assert!(v["warnings"].is_array(), "{v}");
    assert!(
        v["written_bytes_per_day"].is_null(),
        "not in the first minutes: {v}"
    );

    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/toggles",
        Some(&session),
        Some(&csrf),
        r#"{"maintenance": true}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["maintenance"], true);
    assert!(relay.admin.maintenance());
    assert!(relay.cfg.data_dir.join(super::MAINTENANCE_FILE).exists());
    // Relay-to-relay mail is turned away with a temporary failure while in maintenance.
    let (status, body) = https_request(&relay, "POST", "/mxdeliv", &[], b"irrelevant".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).starts_with("421 4.3.2"));
    let (_, v, _) = call(
        &relay,
        "POST",
        "/api/admin/toggles",
        Some(&session),
        Some(&csrf),
        r#"{"maintenance": false}"#,
    )
    .await;
    assert_eq!(v["maintenance"], false);
    assert!(!relay.cfg.data_dir.join(super::MAINTENANCE_FILE).exists());

    // An expiry run through the control channel is recorded and shown.
    crate::control::execute(&relay, &crate::control::Request::Expire { dry_run: false })
        .await
        .unwrap();
    let (_, v, _) = call(&relay, "GET", "/api/admin/status", Some(&session), None, "").await;
    assert_eq!(v["last_expiry"]["ok"], true, "{v}");
    assert_eq!(v["last_expiry"]["messages_removed"], 0, "{v}");

    // The log view answers with the buffered lines (the binary installs the layer; here the
    // buffer gets a line directly).
    crate::logbuf::push(crate::logbuf::Line {
        at: relay.clock.now(),
        level: "warn",
        origin: "test".into(),
        text: "a warning for the admin".into(),
    });
    let (status, v, _) = call(&relay, "GET", "/api/admin/logs", Some(&session), None, "").await;
    assert_eq!(status, 200, "{v}");
    assert!(v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["text"] == "a warning for the admin"));
    let (_, v, _) = call(&relay, "GET", "/api/admin/status", Some(&session), None, "").await;
    assert!(v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["text"] == "a warning for the admin"));
}

// ---- issue 14: bodies, login throttling, logout ----------------------------------------------

/// One request with any body through the HTTPS router, from `peer` (as `serve` would add it).
async fn send(
    relay: &Arc<Relay>,
    mut req: axum::http::Request<axum::body::Body>,
    peer: Option<std::net::SocketAddr>,
) -> (u16, axum::http::HeaderMap, Vec<u8>) {
    if let Some(p) = peer {
        req.extensions_mut().insert(crate::web::ClientAddr(p));
    }
    crate::testkit::route(relay, true, req).await.unwrap()
}

/// A body that sends `first` and then nothing, without ever ending.
fn endless(first: &'static [u8]) -> axum::body::Body {
    use futures::StreamExt;
    let s = futures::stream::once(async move {
        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(first))
    })
    .chain(futures::stream::pending());
    axum::body::Body::from_stream(s)
}

fn post(
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: axum::body::Body,
) -> axum::http::Request<axum::body::Body> {
    let mut b = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json");
    if let Some(c) = cookie {
        b = b.header("cookie", format!("{COOKIE}={c}"));
    }
    if let Some(t) = csrf {
        b = b.header("x-csrf-token", t);
    }
    b.body(body).unwrap()
}

#[tokio::test(start_paused = true)]
async fn no_body_is_read_before_the_session_and_csrf_checks() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (session, _) = login(&relay).await;
    for ep in Endpoint::ALL {
        let (method, path) = ep.route();
        if !ep.needs_session() || method != axum::http::Method::POST {
            continue;
        }
        let url = format!("{PREFIX}{path}");
        // A body that never ends: answered at once, from the headers alone.
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(300),
            send(&relay, post(&url, None, None, endless(b"{")), None),
        )
        .await;
        assert_eq!(r.map(|r| r.0), Ok(401), "POST {url} without a session");
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(300),
            send(
                &relay,
                post(&url, Some(&session), None, endless(b"{")),
                None,
            ),
        )
        .await;
        assert_eq!(r.map(|r| r.0), Ok(403), "POST {url} without CSRF token");
    }
}

#[tokio::test(start_paused = true)]
async fn a_trickled_body_is_cut_off_at_the_body_deadline() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (session, csrf) = login(&relay).await;
    let started = tokio::time::Instant::now();
    // One byte every 10 s, for ever (a per-read timeout would never fire).
    let trickle = futures::stream::unfold((), |()| async {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        Some((
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b" ")),
            (),
        ))
    });
    let body = axum::body::Body::from_stream(
        futures::stream::iter([Ok(axum::body::Bytes::from_static(b"{"))]).chain(trickle),
    );
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(1000),
        send(
            &relay,
            post("/api/admin/settings", Some(&session), Some(&csrf), body),
            None,
        ),
    )
    .await;
    assert_eq!(r.map(|r| r.0), Ok(408));
    let took = started.elapsed();
    assert!(
        took <= relay.cfg.http_body_timeout.duration() + std::time::Duration::from_secs(1),
        "{took:?}"
    );
    // The setup code login, which has no session yet, has the same deadline.
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(1000),
        send(
            &relay,
            post("/api/admin/login", None, None, endless(b"{")),
            None,
        ),
    )
    .await;
    assert_eq!(r.map(|r| r.0), Ok(408));
}

#[tokio::test]
async fn admin_json_bodies_are_limited_to_a_few_kib() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (session, csrf) = login(&relay).await;
    let big = serde_json::json!({ "privacy_mail": "x".repeat(64 << 10) }).to_string();
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/settings",
        Some(&session),
        Some(&csrf),
        &big,
    )
    .await;
    assert_eq!(status, 413, "{v}");
    // A declared length over the limit is refused without reading the body.
    let mut req = post(
        "/api/admin/login",
        None,
        None,
        endless(b"{\"setup_code\":\""),
    );
    req.headers_mut()
        .insert("content-length", "1048576".parse().unwrap());
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), send(&relay, req, None)).await;
    assert_eq!(r.map(|r| r.0), Ok(413));
}

#[tokio::test]
async fn an_attacker_cannot_lock_the_owner_out_of_the_login() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let wrong =
        || axum::body::Body::from(r#"{"setup_code":"AAAA-BBBB-CCCC-DDDD"}"#.as_bytes().to_vec());
    // 40 addresses guess 5 times each: far more than the old global 30 a minute.
    let mut answers = std::collections::BTreeMap::new();
    for i in 0..40u8 {
        let peer = std::net::SocketAddr::from(([198, 51, 100, i], 40000));
        for _ in 0..5 {
            let (status, _, _) = send(
                &relay,
                post("/api/admin/login", None, None, wrong()),
                Some(peer),
            )
            .await;
            *answers.entry(status).or_insert(0) += 1;
        }
    }
    // Every guess beyond each address's third waits for the shared budget of 30 a minute.
    assert_eq!(answers.get(&401), Some(&(40 * 3 + 30)), "{answers:?}");
    // One of them is refused even with the right code: it throttled itself.
    let body = format!("{{\"setup_code\":\"{}\"}}", code(&relay));
    let attacker = std::net::SocketAddr::from(([198, 51, 100, 7], 40000));
    let (status, _, _) = send(
        &relay,
        post("/api/admin/login", None, None, body.clone().into()),
        Some(attacker),
    )
    .await;
    assert_eq!(status, 429);
    // The owner, on another address, after a typo, is let in.
    let owner = std::net::SocketAddr::from(([192, 0, 2, 10], 50000));
    let (status, _, _) = send(
        &relay,
        post("/api/admin/login", None, None, wrong()),
        Some(owner),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, body) = send(
        &relay,
        post("/api/admin/login", None, None, body.into()),
        Some(owner),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn logout_revokes_the_session_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let body = format!("{{\"setup_code\":\"{}\"}}", code(&relay));
    let (status, headers, bytes) = send(
        &relay,
        post("/api/admin/login", None, None, body.into()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let csrf = v["csrf"].as_str().unwrap().to_string();
    // The cookie the browser got, as an attacker who copied it would replay it.
    let set_cookie = headers["set-cookie"].to_str().unwrap();
    let cookie = set_cookie
        .strip_prefix(&format!("{COOKIE}="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (status, _, _) = call(&relay, "GET", "/api/admin/state", Some(&cookie), None, "").await;
    assert_eq!(status, 200);
    let (status, _, _) = call(
        &relay,
        "POST",
        "/api/admin/logout",
        Some(&cookie),
        Some(&csrf),
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = call(&relay, "GET", "/api/admin/state", Some(&cookie), None, "").await;
    assert_eq!(status, 401, "the logged-out cookie still works");
    let (status, _, _) = call(
        &relay,
        "POST",
        "/api/admin/toggles",
        Some(&cookie),
        Some(&csrf),
        r#"{"nocreate":true}"#,
    )
    .await;
    assert_eq!(status, 401);
    // Also after a restart (the list is on disk), while other sessions go on.
    let (again, _) = super::Admin::open(&relay.cfg).unwrap();
    let now = relay.clock.now();
    assert!(!again.session_valid(&cookie, now));
    assert!(again.session_valid(&again.new_session(now), now));
}

/// Issue 16: the form shows every field's problem at once, beside the field: the answer names
/// each refused setting, in words for people, and writes nothing.
#[tokio::test]
async fn settings_errors_name_every_field_at_once_and_sizes_are_in_mb() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (session, csrf) = login(&relay).await;
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/settings",
        Some(&session),
        Some(&csrf),
        r#"{"max_mailbox_size":"lots","delete_mails_after":"soon","privacy_pdo":"Ann","max_user_send_per_minute":"0"}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let fields = v["fields"].as_object().unwrap();
    let mut keys: Vec<&str> = fields.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "delete_mails_after",
            "max_mailbox_size",
            "max_user_send_per_minute"
        ]
    );
    assert!(
        fields["max_mailbox_size"].as_str().unwrap().contains("MB"),
        "{v}"
    );
    let summary = v["error"].as_str().unwrap();
    assert!(
        summary.contains("Mailbox size") && summary.contains("Delete messages after"),
        "{summary}"
    );
    assert!(!relay.cfg.settings_path().exists(), "nothing written");

    // Sizes are typed in MB (whole or not), or with a unit.
    let (status, v, _) = call(
        &relay,
        "POST",
        "/api/admin/settings",
        Some(&session),
        Some(&csrf),
        r#"{"max_mailbox_size":"250","max_message_size":"20"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let cfg = crate::config::Config::with_domain("[127.0.0.1]", dir.path()).unwrap();
    assert_eq!(cfg.max_mailbox_size, crate::config::ByteSize(250 << 20));
    assert_eq!(cfg.max_message_size, 20 << 20);
    let (_, v, _) = call(
        &relay,
        "GET",
        "/api/admin/settings",
        Some(&session),
        None,
        "",
    )
    .await;
    let s = |k: &str| {
        v["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(s("max_message_size")["shown"], "20");
    assert_eq!(s("max_message_size")["unit"], "MB");
    assert_eq!(s("max_message_size")["default_shown"], "30");
    assert_eq!(s("max_mailbox_size")["shown"], "250");
    assert_eq!(s("delete_mails_after")["unit"], "days");
    assert_eq!(s("privacy_pdo")["label"], "Data protection officer");
}

/// Issue 16: before the owner has finished set-up, no IMAP or SMTP login works (a new box or
/// `relaybox dev --wizard` hands out no working accounts); afterwards they do.
#[tokio::test]
async fn logins_are_refused_until_set_up_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    assert!(relay.admin.pending());
    let (addr, pw) = crate::accounts::random_credentials(&relay.cfg);
    let peer = Some(std::net::IpAddr::from([192, 0, 2, 7]));
    let r = relay.accounts.login_from(&addr, &pw, peer).await;
    assert!(
        matches!(r, Err(crate::accounts::LoginError::RegistrationRejected(ref m)) if m.contains("set-up")),
        "{r:?}"
    );
    assert!(
        relay.store.account(&addr).unwrap().is_none(),
        "nothing created"
    );
    relay.admin.set_password("a long admin password").unwrap();
    let u = relay.accounts.login_from(&addr, &pw, peer).await.unwrap();
    assert!(u.created);
}

/// Issue 16: the wizard's last page shows the certificate's SHA-256 fingerprint, as browsers
/// show it, so the owner can compare it with the one in the browser's warning.
#[tokio::test]
async fn state_names_the_served_certificate_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path());
    let (session, _) = login(&relay).await;
    let (status, v, _) = call(&relay, "GET", "/api/admin/state", Some(&session), None, "").await;
    assert_eq!(status, 200, "{v}");
    let fp = v["certificate"]["sha256"].as_str().unwrap();
    let der = relay.tls.certs.chain()[0].clone();
    let want: Vec<String> = ring::digest::digest(&ring::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(fp, want.join(":"));
    assert_eq!(v["certificate"]["self_issued"], true);
}

/// Backup uploads still lying in the admin dir (each is deleted once the restore is done or refused).
fn restore_uploads_left(data_dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(data_dir.join("admin"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("restore-upload"))
        .collect()
}
