//! The test kit: what unit tests and the fuzz targets in `fuzz/` (cargo-fuzz) share. Not an
//! API, and not in the release binary: built for `cfg(test)` and with the `testkit` feature
//! (which the fuzz crate enables). It builds a relay on a temporary directory, drives the SMTP
//! and IMAP sessions over an in-memory stream, reaches the pure gate functions, and holds the
//! test-only hooks (the SERVFAIL DNS server here; `Store::crash_at` and `Dns::pin_dkim_key`
//! are compiled only together with this module).

use crate::config::{ByteSize, Config};
use crate::Relay;
use std::path::Path;
use std::sync::Arc;

pub use crate::imap::run_session as imap_session;
pub use crate::policy::gate::{is_armored_pgp_message, is_valid_packet_sequence};
pub use crate::policy::{
    check_incoming, check_outgoing, check_outgoing_kind, from_address, Direction, Envelope,
    MailKind, Verdict,
};
pub use crate::smtp::{run_session as smtp_session, Kind as SmtpKind};

/// The IMAP sequence-set and SEARCH-string code, for the `imap_seqsearch` target to compare
/// with naive versions.
pub mod imap_sets {
    use crate::imap::{Ranges, SetError};
    pub use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

    /// Most ranges a command's sequence sets may have.
    pub const MAX_RANGES: usize = crate::imap::MAX_RANGES;

    /// ASCII case-insensitive substring test, as SEARCH BODY/TEXT use it.
    pub fn find_ci(hay: &[u8], needle: &[u8]) -> bool {
        crate::imap::find_ci(hay, needle)
    }

    /// (sequence number, UID) pairs `set` names in the ascending snapshot `uids`; `None` when
    /// the set has too many ranges.
    pub fn resolve_uids(set: &SequenceSet, uids: &[u32]) -> Option<Vec<(u32, u32)>> {
        crate::imap::resolve_uids(set, uids).ok()
    }

    /// Sequence numbers `set` names among `count` messages; `Err(true)` when the set has too
    /// many ranges, `Err(false)` when it names a message that does not exist.
    pub fn resolve_seqs(set: &SequenceSet, count: u32) -> Result<Vec<u32>, bool> {
        crate::imap::resolve_seqs(set, count).map_err(|e| e == SetError::TooLarge)
    }

    /// The normalised ranges of `set` (`*` = `largest`), and whether each of `probe` is in it.
    pub fn ranges(set: &SequenceSet, largest: u32, probe: &[u32]) -> (Vec<(u32, u32)>, Vec<bool>) {
        let r = Ranges::new(set, largest);
        let hits = probe.iter().map(|&n| r.contains(n)).collect();
        (r.as_slice().to_vec(), hits)
    }
}

/// The account the targets log in as, and a second one to send to.
pub const USER: &str = "abcdefghi@[127.0.0.1]";
pub const PASS: &str = "password1";
pub const RCPT: &str = "rcptuser1@[127.0.0.1]";
pub const RCPT_PASS: &str = "password2";

/// The config tests and fuzz targets share: the domain `[127.0.0.1]` with its data in `dir`,
/// the resource gate off (tests must not depend on how busy the machine is) and every DNS
/// lookup answered SERVFAIL on loopback (nothing ever leaves the machine).
pub fn test_config(dir: &Path) -> anyhow::Result<Config> {
    let mut cfg = Config::with_domain("[127.0.0.1]", dir)?;
    cfg.max_load_1m = 1e9;
    cfg.min_available_memory = ByteSize(0);
    cfg.min_free_disk_space = ByteSize(0);
    cfg.dns_servers = vec![servfail_server()];
    Ok(cfg)
}

/// A relay built from `test_config` after `tune` changed it, exactly as `relaybox serve` builds
/// one.
pub fn test_relay(dir: &Path, tune: impl FnOnce(&mut Config)) -> anyhow::Result<Arc<Relay>> {
    let mut cfg = test_config(dir)?;
    tune(&mut cfg);
    crate::server::build(cfg)
}

/// A relay for the fuzz targets: send rate unlimited, messages up to 256 KiB; `USER` and `RCPT`
/// exist.
pub async fn relay(dir: &Path) -> anyhow::Result<Arc<Relay>> {
    relay_with(dir, |cfg| {
        cfg.max_user_send_per_minute = u32::MAX / 2;
        cfg.max_user_send_burst_size = u32::MAX / 2;
        cfg.max_message_size = 256 * 1024;
    })
    .await
}

/// A relay from `test_config` changed by `tune`, with `USER` and `RCPT`.
async fn relay_with(dir: &Path, tune: impl FnOnce(&mut Config)) -> anyhow::Result<Arc<Relay>> {
    let relay = test_relay(dir, tune)?;
    relay.accounts.login(USER, PASS).await?;
    relay.accounts.login(RCPT, RCPT_PASS).await?;
    Ok(relay)
}

/// The fuzz targets' process-wide state: a single-threaded runtime and the relay of [`relay`],
/// built on first use in a directory under `$TMPDIR` that is kept for the whole run
/// (scripts/fuzz.sh points TMPDIR at a directory it removes afterwards).
pub struct FuzzEnv {
    pub rt: tokio::runtime::Runtime,
    pub relay: Arc<Relay>,
    /// The plain HTTP and the HTTPS router, built on first use: `alpn::serve` also builds its
    /// router once and serves every connection with it, and building one per input cost the
    /// HTTP targets more than the request itself.
    routers: [std::sync::OnceLock<axum::Router>; 2],
}

impl FuzzEnv {
    /// [`router_request`] through this environment's router for `https`.
    pub async fn router_request(
        &self,
        https: bool,
        method: &str,
        path: &str,
        headers: &[(Vec<u8>, Vec<u8>)],
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, axum::http::HeaderMap, Vec<u8>)> {
        let router = self.routers[usize::from(https)]
            .get_or_init(|| crate::alpn::app(self.relay.clone(), https))
            .clone();
        call(router, request(method, path, headers, body)?).await
    }
}

/// The one [`FuzzEnv`] of this process.
pub fn env() -> &'static FuzzEnv {
    static ENV: std::sync::OnceLock<FuzzEnv> = std::sync::OnceLock::new();
    ENV.get_or_init(|| new_env("relaybox-fuzz", |dir| Box::pin(relay(dir))))
}

/// A single-threaded runtime and the relay `make` builds in a fresh directory `name-PID` under
/// `$TMPDIR`.
fn new_env(
    name: &str,
    make: impl FnOnce(
        &Path,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<Arc<Relay>>> + '_>,
    >,
) -> FuzzEnv {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fuzz data directory");
    let relay = rt.block_on(make(&dir)).expect("relay");
    FuzzEnv {
        rt,
        relay,
        routers: Default::default(),
    }
}

/// Brings the store back to the state `relay` left it in: only `USER` and `RCPT`, each with an
/// empty INBOX and nothing else, so that every fuzz input starts alike (otherwise delivered and
/// APPENDed messages and LOGIN-created accounts pile up, later inputs get slower and the run
/// stops being reproducible). Writes only what changed, and keeps the two accounts (creating
/// one hashes a password).
pub async fn reset(relay: &Relay) -> anyhow::Result<()> {
    for a in relay.store.accounts()? {
        if a.addr != USER && a.addr != RCPT {
            relay.store.delete_account(a.id).await?;
            continue;
        }
        for m in relay.store.mailboxes(a.id)? {
            if m.name != "INBOX" {
                relay.store.delete_mailbox(a.id, &m.name).await?;
                continue;
            }
            let uids: Vec<u32> = relay.store.messages(m.id)?.iter().map(|m| m.uid).collect();
            if !uids.is_empty() {
                relay.store.remove_messages(m.id, uids).await?;
            }
        }
    }
    for (addr, pass) in [(USER, PASS), (RCPT, RCPT_PASS)] {
        let id = match relay.store.account(addr)? {
            Some(a) => a.id,
            None => relay.accounts.login(addr, pass).await?.account.id,
        };
        if relay.store.mailbox(id, "INBOX")?.is_none() {
            relay.store.create_mailbox(id, "INBOX").await?;
        }
    }
    Ok(())
}

/// One request to the HTTPS router (where `/mxdeliv` lives), without a socket: `method`, a
/// path, header lines (`Name: value`; unusable ones are left out, as a client library would
/// refuse to send them) and a body. Returns the status code and the response body.
pub async fn https_request(
    relay: &Arc<Relay>,
    method: &str,
    path: &str,
    headers: &[(Vec<u8>, Vec<u8>)],
    body: Vec<u8>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let (status, _, body) = router_request(relay, true, method, path, headers, body).await?;
    Ok((status, body))
}

/// One request to the HTTPS (`https`) or plain HTTP router, as [`https_request`], also
/// returning the response headers. A path the HTTP library refuses is an error.
pub async fn router_request(
    relay: &Arc<Relay>,
    https: bool,
    method: &str,
    path: &str,
    headers: &[(Vec<u8>, Vec<u8>)],
    body: Vec<u8>,
) -> anyhow::Result<(u16, axum::http::HeaderMap, Vec<u8>)> {
    route(relay, https, request(method, path, headers, body)?).await
}

/// The request [`router_request`] sends.
fn request(
    method: &str,
    path: &str,
    headers: &[(Vec<u8>, Vec<u8>)],
    body: Vec<u8>,
) -> anyhow::Result<axum::http::Request<axum::body::Body>> {
    let mut req = axum::http::Request::builder().method(method).uri(path);
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(name),
            axum::http::HeaderValue::from_bytes(value),
        ) {
            req = req.header(n, v);
        }
    }
    Ok(req.body(axum::body::Body::from(body))?)
}

/// Passes `req` through the HTTPS (`https`) or plain HTTP router, without a socket, and
/// collects the whole response: status code, headers and body.
pub async fn route(
    relay: &Arc<Relay>,
    https: bool,
    req: axum::http::Request<axum::body::Body>,
) -> anyhow::Result<(u16, axum::http::HeaderMap, Vec<u8>)> {
    call(crate::alpn::app(relay.clone(), https), req).await
}

/// `req` through `router`, the whole response collected.
async fn call(
    mut router: axum::Router,
    req: axum::http::Request<axum::body::Body>,
) -> anyhow::Result<(u16, axum::http::HeaderMap, Vec<u8>)> {
    use http_body_util::BodyExt;
    use tower::Service;
    let resp = router.call(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, headers, bytes))
}

/// The bodies of the messages in `addr`'s INBOX, oldest first; the account and its INBOX must
/// exist.
pub async fn inbox(relay: &Relay, addr: &str) -> Vec<Vec<u8>> {
    let acc = relay.store.account(addr).unwrap().expect("account");
    let mbox = relay
        .store
        .mailbox(acc.id, "INBOX")
        .unwrap()
        .expect("INBOX");
    let mut out = Vec::new();
    for m in relay.store.messages(mbox.id).unwrap() {
        out.push(relay.store.read_body(m.body_id).await.unwrap());
    }
    out
}

/// A port on `ip` that is free for both TCP and UDP (bound, then let go): for a listener a test
/// starts later, or for a port where nobody may answer.
pub fn free_port(ip: std::net::IpAddr) -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind((ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// The setup code of the admin fuzz relay (also in the target's dictionary).
pub const SETUP_CODE: &str = "FUZZ-CODE-ABCD-EFGH";

/// The admin fuzz target's process-wide state: a relay with the admin pages on, in set-up.
pub fn admin_env() -> &'static FuzzEnv {
    static ENV: std::sync::OnceLock<FuzzEnv> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        new_env("relaybox-fuzz-admin", |dir| {
            Box::pin(relay_with(dir, |cfg| {
                cfg.admin_ui = true;
                // The DNS check's reachability probes: never out of this machine.
                cfg.outbound_probes = vec!["127.0.0.1:9".into()];
            }))
        })
    })
}

/// Brings the admin state back to a fresh box in set-up (no password, no saved settings, no
/// switches, the setup code [`SETUP_CODE`]), and the store as [`reset`] does.
pub async fn reset_admin(relay: &Relay) -> anyhow::Result<()> {
    let d = &relay.cfg.data_dir;
    for f in [
        d.join("admin/password"),
        d.join("admin/revoked"),
        relay.cfg.settings_path(),
        relay.cfg.nocreate_path(),
    ] {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    if relay.admin.maintenance() {
        relay.admin.set_maintenance(false)?;
    }
    if std::fs::read_to_string(relay.admin.code_path())
        .ok()
        .as_deref()
        != Some(SETUP_CODE)
    {
        crate::io::write_private(relay.admin.code_path(), SETUP_CODE.as_bytes())?;
    }
    reset(relay).await
}

/// A valid admin session cookie (`relaybox_session=…`) and its CSRF token, now.
pub fn admin_session(relay: &Relay) -> (String, String) {
    let s = relay.admin.new_session(relay.clock.now());
    let csrf = relay.admin.csrf_token(&s);
    (format!("{}={s}", crate::admin::api::COOKIE), csrf)
}

/// Header name and value pairs, as the HTTP fuzz targets send them.
pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// The HTTP targets' input after their mode bytes: `Name: value` header lines, a blank line,
/// the body (no blank line: no body).
pub fn split_request(rest: &[u8]) -> (Headers, &[u8]) {
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let headers = head
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            let c = l.iter().position(|&b| b == b':')?;
            let v = &l[c + 1..];
            let v = v.strip_prefix(b" ").unwrap_or(v);
            Some((l[..c].to_vec(), v.to_vec()))
        })
        .collect();
    (headers, body)
}

/// A DNS server for tests that answers every query with SERVFAIL at once, so temporary failures
/// can be tested without waiting for timeouts. The test and fuzz relays resolve through it,
/// so they never reach the network and an unexpected lookup fails at once instead of hanging.
pub fn servfail_server() -> std::net::SocketAddr {
    // One per process: every test relay asks for it, and each server is a thread for good.
    static SERVER: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    *SERVER.get_or_init(start_servfail_server)
}

fn start_servfail_server() -> std::net::SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP port");
    let addr = sock.local_addr().expect("a bound socket has an address");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            // Same id and question; QR (response) and RA set, RCODE 2 (SERVFAIL).
            let mut resp = buf[..n].to_vec();
            resp[2] |= 0x80;
            resp[3] = 0x80 | 2;
            let _ = sock.send_to(&resp, peer);
        }
    });
    addr
}
