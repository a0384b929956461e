//! Metrics in the Prometheus text format (exposition format 0.0.4), served on their own
//! listener (`[listen] metrics`, default 127.0.0.1:9464) at `/metrics`.
//!
//! Counters are process-wide atomics in [`M`], bumped where things happen (one line per hook);
//! they start at zero with every process, as Prometheus expects of counters. Gauges that describe
//! the stored state (accounts, bytes, queue) are computed when the page is scraped. The counter
//! set covers the reference's mtail counters (§9.1) under `relaybox_` names; the page is rendered
//! by hand, the format being a few lines of text.

use crate::Relay;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (open connections).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Counts one up until the returned guard is dropped.
    pub fn hold(&'static self) -> GaugeGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(self)
    }
}

pub struct GaugeGuard(&'static Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every counter and live gauge of the process.
pub struct Metrics {
    /// Messages stored into an INBOX, per recipient (mtail `delivered_mail`).
    pub delivered_mail: Counter,
    /// Deliveries refused because the recipient's mailbox is full (`quota_exceeded`).
    pub quota_exceeded: Counter,
    /// Outgoing messages DKIM-signed (`dkim_signed`).
    pub dkim_signed: Counter,
    pub created_accounts: Counter,
    pub rejected_registrations: Counter,
    /// Messages that went through the outgoing filter, and what they were.
    pub filtered_outgoing_mail: Counter,
    pub outgoing_encrypted_mail: Counter,
    /// Accepted without encryption: Secure-Join requests and Autocrypt setup messages.
    pub outgoing_unencrypted_mail: Counter,
    pub filtered_incoming_mail: Counter,
    pub incoming_encrypted_mail: Counter,
    /// Accepted without encryption: Secure-Join requests and mailer-daemon reports.
    pub incoming_unencrypted_mail: Counter,
    pub incoming_mailer_daemon_mail: Counter,
    /// Messages refused with 523 (either direction).
    pub rejected_unencrypted_mail: Counter,
    /// Quota cleanups that removed something, and how many messages they removed.
    pub quota_expire_runs: Counter,
    pub quota_expire_removed_files: Counter,
    /// Daily expiry: messages and accounts removed.
    pub expired_messages: Counter,
    pub expired_accounts: Counter,
    /// Push notifications: accepted by the push service (200), tokens dropped on 410, attempts
    /// that failed (and will be retried), notifications given up.
    pub push_sent: Counter,
    pub push_token_removed: Counter,
    pub push_attempt_failed: Counter,
    pub push_failed: Counter,
    /// Outbound queue: recipients delivered to other relays, and bounced.
    pub outbound_delivered: Counter,
    pub outbound_bounced: Counter,
    pub imap_connections: Gauge,
    pub smtp_connections: Gauge,
    pub imap_idle: Gauge,
    /// TURN (calls): allocations open now and made so far, refused by a limit, and bytes relayed
    /// or dropped over the per-allocation rate (both directions).
    pub turn_allocations: Gauge,
    pub turn_allocations_created: Counter,
    pub turn_refused: Counter,
    pub turn_relayed_bytes: Counter,
    pub turn_dropped_bytes: Counter,
    /// iroh relay (webxdc realtime): clients connected now and so far, refused over
    /// `iroh_relay_max_clients`, and bytes through the relay connections (both directions).
    pub iroh_clients: Gauge,
    pub iroh_connections: Counter,
    pub iroh_refused: Counter,
    pub iroh_relayed_bytes: Counter,
}

/// The process's metrics.
pub static M: Metrics = Metrics::new();

impl Metrics {
    pub const fn new() -> Metrics {
        Metrics {
            delivered_mail: Counter::new(),
            quota_exceeded: Counter::new(),
            dkim_signed: Counter::new(),
            created_accounts: Counter::new(),
            rejected_registrations: Counter::new(),
            filtered_outgoing_mail: Counter::new(),
            outgoing_encrypted_mail: Counter::new(),
            outgoing_unencrypted_mail: Counter::new(),
            filtered_incoming_mail: Counter::new(),
            incoming_encrypted_mail: Counter::new(),
            incoming_unencrypted_mail: Counter::new(),
            incoming_mailer_daemon_mail: Counter::new(),
            rejected_unencrypted_mail: Counter::new(),
            quota_expire_runs: Counter::new(),
            quota_expire_removed_files: Counter::new(),
            expired_messages: Counter::new(),
            expired_accounts: Counter::new(),
            push_sent: Counter::new(),
            push_token_removed: Counter::new(),
            push_attempt_failed: Counter::new(),
            push_failed: Counter::new(),
            outbound_delivered: Counter::new(),
            outbound_bounced: Counter::new(),
            imap_connections: Gauge::new(),
            smtp_connections: Gauge::new(),
            imap_idle: Gauge::new(),
            turn_allocations: Gauge::new(),
            turn_allocations_created: Counter::new(),
            turn_refused: Counter::new(),
            turn_relayed_bytes: Counter::new(),
            turn_dropped_bytes: Counter::new(),
            iroh_clients: Gauge::new(),
            iroh_connections: Counter::new(),
            iroh_refused: Counter::new(),
            iroh_relayed_bytes: Counter::new(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts what the gate made of a message (called once per message that reached the policy).
pub fn count_filtered(dir: crate::policy::Direction, kind: crate::policy::MailKind, ok: bool) {
    use crate::policy::{Direction, MailKind};
    let m = &M;
    let (filtered, enc, unenc) = match dir {
        Direction::Outgoing => (
            &m.filtered_outgoing_mail,
            &m.outgoing_encrypted_mail,
            &m.outgoing_unencrypted_mail,
        ),
        Direction::Incoming => (
            &m.filtered_incoming_mail,
            &m.incoming_encrypted_mail,
            &m.incoming_unencrypted_mail,
        ),
    };
    filtered.inc();
    match (ok, kind) {
        (true, MailKind::Encrypted) => enc.inc(),
        (true, MailKind::MailerDaemon) => {
            m.incoming_mailer_daemon_mail.inc();
            unenc.inc()
        }
        (true, _) => unenc.inc(),
        (false, _) => {}
    }
}

/// The state-derived values, gathered at scrape time.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub accounts: u64,
    /// Accounts that logged in within the last 1, 7 and 30 days.
    pub active: [u64; 3],
    pub stored_bytes: u64,
    pub queue_length: u64,
    pub push_pending: u64,
    pub tokens: u64,
    /// Bytes this process caused to be written to storage since it started.
    pub written_bytes: Option<u64>,
    pub cert_expiry_seconds: Option<i64>,
}

pub const ACTIVE_DAYS: [i64; 3] = [1, 7, 30];

impl Snapshot {
    pub fn gather(relay: &Relay) -> Snapshot {
        let mut s = Snapshot::default();
        let today = relay.clock.today();
        match relay.store.accounts() {
            Ok(all) => {
                for a in &all {
                    s.accounts += 1;
                    s.stored_bytes += a.used_bytes;
                    s.tokens += a.device_tokens.len() as u64;
                    for (i, d) in ACTIVE_DAYS.iter().enumerate() {
                        if today - a.last_login_day < *d {
                            s.active[i] += 1;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("metrics: cannot list accounts: {e}"),
        }
        s.queue_length = relay.store.queued().map(|q| q.len() as u64).unwrap_or(0);
        s.push_pending = relay.delivery.push().pending() as u64;
        s.written_bytes = proc_write_bytes();
        s.cert_expiry_seconds = relay
            .tls
            .certs
            .chain()
            .first()
            .and_then(|c| cert_not_after(c.as_ref()))
            .map(|t| t - relay.clock.now());
        s
    }
}

/// `write_bytes` of /proc/self/io: what this process made the kernel write to storage.
fn proc_write_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn help(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, text: &str, c: &Counter) {
    let full = format!("relaybox_{name}_total");
    help(out, &full, "counter", text);
    let _ = writeln!(out, "{full} {}", c.get());
}

fn gauge(out: &mut String, name: &str, text: &str, v: impl std::fmt::Display) {
    let full = format!("relaybox_{name}");
    help(out, &full, "gauge", text);
    let _ = writeln!(out, "{full} {v}");
}

/// The whole page.
pub fn render(m: &Metrics, s: &Snapshot) -> String {
    let mut o = String::with_capacity(4096);
    let o = &mut o;
    counter(
        o,
        "delivered_mail",
        "Messages stored into an INBOX, per recipient.",
        &m.delivered_mail,
    );
    counter(
        o,
        "quota_exceeded",
        "Deliveries refused because the mailbox was full.",
        &m.quota_exceeded,
    );
    counter(
        o,
        "dkim_signed",
        "Outgoing messages DKIM-signed.",
        &m.dkim_signed,
    );
    counter(
        o,
        "created_accounts",
        "Accounts created at first login.",
        &m.created_accounts,
    );
    counter(
        o,
        "rejected_registrations",
        "Logins of new addresses refused.",
        &m.rejected_registrations,
    );
    counter(
        o,
        "filtered_outgoing_mail",
        "Outgoing messages checked by the policy.",
        &m.filtered_outgoing_mail,
    );
    counter(
        o,
        "outgoing_encrypted_mail",
        "Outgoing encrypted messages accepted.",
        &m.outgoing_encrypted_mail,
    );
    counter(
        o,
        "outgoing_unencrypted_mail",
        "Outgoing unencrypted messages accepted (Secure-Join, setup message).",
        &m.outgoing_unencrypted_mail,
    );
    counter(
        o,
        "filtered_incoming_mail",
        "Incoming messages checked by the policy.",
        &m.filtered_incoming_mail,
    );
    counter(
        o,
        "incoming_encrypted_mail",
        "Incoming encrypted messages accepted.",
        &m.incoming_encrypted_mail,
    );
    counter(
        o,
        "incoming_unencrypted_mail",
        "Incoming unencrypted messages accepted (Secure-Join, mailer-daemon).",
        &m.incoming_unencrypted_mail,
    );
    counter(
        o,
        "incoming_mailer_daemon_mail",
        "Incoming mailer-daemon reports accepted.",
        &m.incoming_mailer_daemon_mail,
    );
    counter(
        o,
        "rejected_unencrypted_mail",
        "Messages refused with 523 because they were not encrypted.",
        &m.rejected_unencrypted_mail,
    );
    counter(
        o,
        "quota_expire_runs",
        "Quota cleanups that removed messages.",
        &m.quota_expire_runs,
    );
    counter(
        o,
        "quota_expire_removed_files",
        "Messages removed by quota cleanups.",
        &m.quota_expire_removed_files,
    );
    counter(
        o,
        "expired_messages",
        "Messages removed by the daily expiry.",
        &m.expired_messages,
    );
    counter(
        o,
        "expired_accounts",
        "Inactive accounts removed by the daily expiry.",
        &m.expired_accounts,
    );
    counter(
        o,
        "push_sent",
        "Push notifications accepted by the push service.",
        &m.push_sent,
    );
    counter(
        o,
        "push_token_removed",
        "Device tokens dropped because the push service answered 410.",
        &m.push_token_removed,
    );
    counter(
        o,
        "push_attempt_failed",
        "Push attempts that failed (retried later).",
        &m.push_attempt_failed,
    );
    counter(
        o,
        "push_failed",
        "Push notifications given up after every retry.",
        &m.push_failed,
    );
    counter(
        o,
        "outbound_delivered",
        "Recipients delivered to other relays.",
        &m.outbound_delivered,
    );
    counter(
        o,
        "outbound_bounced",
        "Recipients on other relays given up (bounced).",
        &m.outbound_bounced,
    );
    gauge(o, "accounts", "Accounts on this relay.", s.accounts);
    let name = "relaybox_active_accounts";
    help(
        o,
        name,
        "gauge",
        "Accounts that logged in within the last `days` days.",
    );
    for (d, n) in ACTIVE_DAYS.iter().zip(s.active) {
        let _ = writeln!(o, "{name}{{days=\"{d}\"}} {n}");
    }
    gauge(
        o,
        "stored_bytes",
        "Bytes of mail stored, over all accounts.",
        s.stored_bytes,
    );
    gauge(o, "device_tokens", "Push device tokens stored.", s.tokens);
    gauge(
        o,
        "queue_length",
        "Messages waiting in the outbound queue.",
        s.queue_length,
    );
    gauge(
        o,
        "push_pending",
        "Push notifications waiting for a retry.",
        s.push_pending,
    );
    gauge(
        o,
        "imap_connections",
        "Open IMAP connections.",
        m.imap_connections.get(),
    );
    gauge(
        o,
        "smtp_connections",
        "Open SMTP connections (all ports).",
        m.smtp_connections.get(),
    );
    gauge(
        o,
        "imap_idle_clients",
        "IMAP clients in IDLE.",
        m.imap_idle.get(),
    );
    gauge(
        o,
        "turn_allocations",
        "TURN allocations open (one per side of a relayed call).",
        m.turn_allocations.get(),
    );
    counter(
        o,
        "turn_allocations_created",
        "TURN allocations made.",
        &m.turn_allocations_created,
    );
    counter(
        o,
        "turn_refused",
        "TURN allocations refused by a limit (total, per user, per IP).",
        &m.turn_refused,
    );
    counter(
        o,
        "turn_relayed_bytes",
        "Bytes relayed by TURN, both directions.",
        &m.turn_relayed_bytes,
    );
    counter(
        o,
        "turn_dropped_bytes",
        "Bytes TURN dropped over the per-allocation rate.",
        &m.turn_dropped_bytes,
    );
    gauge(
        o,
        "iroh_relay_clients",
        "iroh relay clients connected.",
        m.iroh_clients.get(),
    );
    counter(
        o,
        "iroh_relay_connections",
        "iroh relay client connections made.",
        &m.iroh_connections,
    );
    counter(
        o,
        "iroh_relay_refused",
        "iroh relay clients refused over iroh_relay_max_clients.",
        &m.iroh_refused,
    );
    counter(
        o,
        "iroh_relay_relayed_bytes",
        "Bytes through iroh relay client connections, both directions.",
        &m.iroh_relayed_bytes,
    );
    if let Some(w) = s.written_bytes {
        gauge(
            o,
            "data_written_bytes",
            "Bytes this process wrote to storage since it started (/proc/self/io write_bytes).",
            w,
        );
    }
    if let Some(c) = s.cert_expiry_seconds {
        gauge(
            o,
            "certificate_expiry_seconds",
            "Seconds until the TLS certificate expires (negative: expired).",
            c,
        );
    }
    std::mem::take(o)
}

/// Serves `GET /metrics` (and `/`) on `listener` until shutdown.
pub async fn serve(relay: Arc<Relay>, listener: TcpListener) {
    use axum::routing::get;
    async fn page(
        axum::extract::State(relay): axum::extract::State<Arc<Relay>>,
    ) -> impl axum::response::IntoResponse {
        let r = relay.clone();
        let snap = tokio::task::spawn_blocking(move || Snapshot::gather(&r))
            .await
            .unwrap_or_default();
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            render(&M, &snap),
        )
    }
    let app = axum::Router::new()
        .route("/metrics", get(page))
        .route("/", get(page))
        .with_state(relay.clone());
    while let Some((tcp, _)) = crate::net::accept(&relay.shutdown, || listener.accept()).await {
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// notAfter of an X.509 certificate (DER), in Unix seconds.
pub fn cert_not_after(cert: &[u8]) -> Option<i64> {
    crate::acme::inspect_der(cert).ok().map(|c| c.not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_of_an_rcgen_certificate() {
        let mut p = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        p.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        // 2031-05-17T00:00:00Z
        let want = 1_936_742_400;
        assert_eq!(cert_not_after(cert.der()), Some(want));
        assert_eq!(cert_not_after(b"\x30\x03\x02\x01\x01"), None);
        assert_eq!(cert_not_after(b""), None);
    }

    #[test]
    fn page_renders_counters_gauges_and_labels() {
        let m = Metrics::new();
        m.delivered_mail.add(3);
        m.push_sent.inc();
        let _g = M.imap_connections.hold();
        let s = Snapshot {
            accounts: 5,
            active: [1, 2, 4],
            stored_bytes: 1234,
            queue_length: 2,
            push_pending: 1,
            tokens: 3,
            written_bytes: Some(4096),
            cert_expiry_seconds: Some(-5),
        };
        let page = render(&m, &s);
        for want in [
            "# TYPE relaybox_delivered_mail_total counter\nrelaybox_delivered_mail_total 3\n",
            "relaybox_push_sent_total 1\n",
            "# TYPE relaybox_accounts gauge\nrelaybox_accounts 5\n",
            "relaybox_active_accounts{days=\"7\"} 2\n",
            "relaybox_stored_bytes 1234\n",
            "relaybox_queue_length 2\n",
            "relaybox_data_written_bytes 4096\n",
            "relaybox_certificate_expiry_seconds -5\n",
            "relaybox_rejected_unencrypted_mail_total 0\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in\n{page}");
        }
        // Every sample line belongs to a declared family and every line is well-formed.
        let mut declared = std::collections::HashSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "undeclared {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
            }
        }
        let page = render(&m, &Snapshot::default());
        assert!(!page.contains("certificate_expiry"));
    }
}
