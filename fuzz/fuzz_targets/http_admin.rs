//! The HTTP routers of ports 443 and 80 with the set-up wizard and admin pages on (a fresh box
//! in set-up): routing, the admin API's table, session, CSRF and body checks, the JSON
//! endpoints (login with the setup code, mode, settings, toggles, password, DNS records…), the
//! pages and the security headers. Input: the first byte picks the router (bit 0: HTTPS), a
//! valid session cookie and CSRF token (bit 1), the method (bits 2-3: GET, POST, PUT, DELETE)
//! and whether the path is put under `/api/admin/` (bit 4); then the path up to the first
//! newline, header lines (`Name: value`) up to an empty line, then the body.
//!
//! Asserted for every answer: no 5xx but 500 (an I/O error), the security headers are there,
//! and without a session no admin endpoint but the login answers 2xx.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox::testkit::{admin_env, admin_session, reset_admin, router_request, split_request};

/// Whether `path` may reach a handler behind the router's per-client `/new` limit (`/new`,
/// `/cgi-bin/newemail.py`, the invite QR codes), generously: such a request gets a router of its
/// own, so that every input starts with the limit's full burst, as it did when each input built
/// its router. Every other request goes through the router built once (as `alpn::serve` serves
/// all connections with one).
fn may_reach_new_limit(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    p.contains("new") || p.contains("qr") || p.contains('%')
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let https = mode & 1 == 1;
    let logged_in = mode & 2 == 2;
    let method = ["GET", "POST", "PUT", "DELETE"][usize::from((mode >> 2) & 3)];
    let (line, rest) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let path = if mode & 16 == 16 {
        format!("/api/admin/{line}")
    } else {
        format!("/{line}")
    };
    let (mut headers, body) = split_request(rest);
    let env = admin_env();
    env.rt.block_on(async {
        reset_admin(&env.relay).await.expect("reset");
        if logged_in {
            let (cookie, csrf) = admin_session(&env.relay);
            headers.push((b"cookie".to_vec(), cookie.into_bytes()));
            headers.push((b"x-csrf-token".to_vec(), csrf.into_bytes()));
        }
        // A path the HTTP library refuses never reaches the router.
        let answer = if may_reach_new_limit(&path) {
            router_request(&env.relay, https, method, &path, &headers, body.to_vec()).await
        } else {
            env.router_request(https, method, &path, &headers, body.to_vec())
                .await
        };
        let Ok((status, h, _)) = answer else {
            return;
        };
        assert!(status < 500 || status == 500, "unexpected status {status}");
        assert_eq!(
            h.get("x-frame-options").map(|v| v.as_bytes()),
            Some(&b"DENY"[..]),
            "{path}"
        );
        assert!(h.contains_key("content-security-policy"), "{path}");
        assert_eq!(h.contains_key("strict-transport-security"), https, "{path}");
        let admin_path = path.split('?').next().unwrap_or("");
        if !logged_in && (200..300).contains(&status) && admin_path.starts_with("/api/admin/") {
            assert_eq!(
                admin_path, "/api/admin/login",
                "{method} {path} answered {status} without a session"
            );
        }
    });
});
