//! Limits shared by every listener: connection slots (a total and a per-IP count per service,
//! and a lower per-IP count for connections that have not logged in yet), the file-descriptor
//! headroom they are derived from, the accept loop that survives running out of descriptors,
//! and the memory budget for message bodies in flight.
//!
//! One limiter for all listeners, so that 25, 465, 587, 143, 993, 80 and 443 (and the mail
//! sessions 443 hands on by ALPN) count against the same numbers: a flood on one port cannot
//! take the descriptors the others need, because each service's total is a share of the
//! descriptors left after a reserve for the store, outbound delivery and DNS.

use crate::config::Config;
use crate::sync::LockExt;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;

/// What a connection is for; each has its own total and per-IP cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Smtp,
    Imap,
    Http,
}

impl Service {
    fn idx(self) -> usize {
        match self {
            Service::Smtp => 0,
            Service::Imap => 1,
            Service::Http => 2,
        }
    }
}

/// Why a connection was turned away (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
    Unauthenticated,
}

/// The caps in force (after the descriptor limit was taken into account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    pub total: [usize; 3],
    pub per_ip: [usize; 3],
    pub unauth_per_ip: usize,
    pub exempt_loopback: bool,
}

impl Caps {
    /// The configured caps, each service's total cut down to its share of the descriptors that
    /// remain after the reserve. IMAP gets most: thousands of idle clients are its normal load.
    pub fn derive(cfg: &Config, nofile: u64) -> Caps {
        let usable = nofile.saturating_sub(fd_reserve(nofile));
        let share = |num: u64, den: u64| usize::try_from(usable * num / den).unwrap_or(usize::MAX);
        let total = [
            cfg.max_smtp_connections.min(share(1, 8)).max(1),
            cfg.max_imap_connections.min(share(3, 4)).max(1),
            cfg.max_http_connections.min(share(1, 8)).max(1),
        ];
        Caps {
            total,
            per_ip: [
                cfg.max_smtp_connections_per_ip.max(1),
                cfg.max_imap_connections_per_ip.max(1),
                cfg.max_http_connections_per_ip.max(1),
            ],
            unauth_per_ip: cfg.max_unauthenticated_per_ip.max(1),
            exempt_loopback: cfg.conn_limits_exempt_loopback,
        }
    }
}

/// Descriptors kept out of the connection caps: the store, temp files, outbound connections,
/// DNS sockets, the listeners themselves, and the short-lived socket of a refused connection.
pub fn fd_reserve(nofile: u64) -> u64 {
    (nofile / 8).clamp(64, 1024)
}

/// Raises the soft descriptor limit to the hard one (systemd starts us with 1024 soft, often
/// 512 Ki hard) and returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard {
                match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => return hard,
                    Err(e) => tracing::warn!(soft, hard, "cannot raise the descriptor limit: {e}"),
                }
            }
            soft
        }
        Err(e) => {
            tracing::warn!("cannot read the descriptor limit: {e}");
            1024
        }
    }
}

/// The per-IP key: an IPv4 address, or an IPv6 /64 (one subscriber usually has a whole /64,
/// so counting single v6 addresses would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    V6(u64),
}

fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(v4) => IpKey::V4(v4.into()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpKey::V4(v4.into()),
            None => IpKey::V6((u128::from(v6) >> 64) as u64),
        },
    }
}

/// Counts of one IP: per service, and not-yet-logged-in connections of any service.
#[derive(Debug, Default)]
struct PerIp {
    open: [u32; 3],
    unauth: u32,
}

/// The shared connection limiter.
pub struct ConnLimiter {
    caps: Caps,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: [usize; 3],
    ips: HashMap<IpKey, PerIp>,
}

impl ConnLimiter {
    pub fn new(caps: Caps) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            caps,
            state: Mutex::new(State::default()),
        })
    }

    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The counts stay consistent even if a holder panicked: each update is one statement.
        self.state.lock_or_recover()
    }

    /// A slot for a new connection from `ip`, or why not. `login` marks a connection that must
    /// log in (IMAP, SMTP submission): until [`Slot::authenticated`] it also counts against the
    /// lower per-IP cap for unauthenticated connections.
    pub fn acquire(
        self: &Arc<Self>,
        service: Service,
        ip: IpAddr,
        login: bool,
    ) -> Result<Slot, Refused> {
        let per_ip = !(self.caps.exempt_loopback && ip.to_canonical().is_loopback());
        let key = ip_key(ip);
        let i = service.idx();
        let mut st = self.lock();
        if st.total[i] >= self.caps.total[i] {
            return Err(Refused::Total);
        }
        if per_ip {
            let c = st.ips.entry(key).or_default();
            if c.open[i] as usize >= self.caps.per_ip[i] {
                return Err(Refused::PerIp);
            }
            if login && c.unauth as usize >= self.caps.unauth_per_ip {
                return Err(Refused::Unauthenticated);
            }
            c.open[i] += 1;
            if login {
                c.unauth += 1;
            }
        }
        st.total[i] += 1;
        Ok(Slot {
            limiter: self.clone(),
            service,
            key: per_ip.then_some(key),
            unauth: login && per_ip,
        })
    }

    /// Open connections of a service (for tests and the log).
    pub fn open(&self, service: Service) -> usize {
        self.lock().total[service.idx()]
    }

    fn release(&self, service: Service, key: Option<IpKey>, unauth: bool) {
        let mut st = self.lock();
        let i = service.idx();
        st.total[i] = st.total[i].saturating_sub(1);
        if let Some(key) = key {
            if let Some(c) = st.ips.get_mut(&key) {
                c.open[i] = c.open[i].saturating_sub(1);
                if unauth {
                    c.unauth = c.unauth.saturating_sub(1);
                }
                if c.open == [0; 3] && c.unauth == 0 {
                    st.ips.remove(&key);
                }
            }
        }
    }

    fn drop_unauth(&self, key: IpKey) {
        if let Some(c) = self.lock().ips.get_mut(&key) {
            c.unauth = c.unauth.saturating_sub(1);
        }
    }
}

/// One connection's place in the limiter, given back when dropped.
pub struct Slot {
    limiter: Arc<ConnLimiter>,
    service: Service,
    key: Option<IpKey>,
    unauth: bool,
}

impl Slot {
    /// The connection logged in: it no longer counts as unauthenticated.
    pub fn authenticated(&mut self) {
        if self.unauth {
            self.unauth = false;
            if let Some(key) = self.key {
                self.limiter.drop_unauth(key);
            }
        }
    }

    /// Moves the connection to another service (443 hands a connection to IMAP or SMTP by
    /// ALPN); this slot is given back either way.
    pub fn switch(self, service: Service, ip: IpAddr, login: bool) -> Result<Slot, Refused> {
        let limiter = self.limiter.clone();
        drop(self);
        limiter.acquire(service, ip, login)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release(self.service, self.key, self.unauth);
    }
}

/// Logs a turned-away connection: a warning at most once a second (a flood must not flood the
/// log too), the rest at debug level.
pub fn log_refusal(service: Service, peer: SocketAddr, why: Refused) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(?service, %peer, ?why, "too many connections, turning some away");
    } else {
        tracing::debug!(?service, %peer, ?why, "too many connections, turned one away");
    }
}

/// Turns a connection away without holding it: one line if the protocol speaks first in plain
/// text (written without waiting; a fresh socket's buffer always takes it), else just closed.
/// A TLS handshake for a refusal would cost the CPU and time the cap is there to save.
pub fn turn_away(tcp: TcpStream, line: Option<&str>) {
    if let Some(line) = line {
        let _ = tcp.try_write(format!("{line}\r\n").as_bytes());
    }
    drop(tcp);
}

/// The memory budget for message bodies being received (SMTP DATA, IMAP APPEND, `/mxdeliv`):
/// a transfer grows its [`Held`] share as bytes arrive and is refused (`451 4.3.1`,
/// `NO [TRYLATER]`) when the budget is spent, so slow senders cannot add up to more than the
/// budget however many connections they hold.
pub struct Budget {
    cap: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(cap: u64) -> Arc<Budget> {
        Arc::new(Budget {
            cap,
            used: AtomicU64::new(0),
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes not taken yet.
    pub fn left(&self) -> u64 {
        self.cap.saturating_sub(self.used())
    }

    /// An empty share.
    pub fn hold(self: &Arc<Self>) -> Held {
        Held {
            budget: self.clone(),
            n: 0,
        }
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.cap)
            })
            .is_ok()
    }
}

/// A transfer's share of the [`Budget`], given back when dropped.
pub struct Held {
    budget: Arc<Budget>,
    n: u64,
}

impl Held {
    pub fn bytes(&self) -> u64 {
        self.n
    }

    /// Grows the share to at least `want` bytes, in steps that double (so a transfer asks
    /// the shared counter O(log size) times); false when the budget cannot give that much.
    /// `max` caps the step (the size limit of one message).
    pub fn grow(&mut self, want: u64, max: u64) -> bool {
        if want <= self.n {
            return true;
        }
        let target = want
            .max(self.n.saturating_mul(2))
            .max(64 * 1024)
            .min(max.max(want));
        if self.budget.take(target - self.n) {
            self.n = target;
            true
        } else if self.budget.take(want - self.n) {
            self.n = want;
            true
        } else {
            false
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Caps {
        Caps {
            total: [3, 3, 3],
            per_ip: [2, 2, 2],
            unauth_per_ip: 1,
            exempt_loopback: true,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_and_total_caps_and_slots_come_back() {
        let l = ConnLimiter::new(caps());
        let a = l.acquire(Service::Smtp, ip("192.0.2.1"), false).unwrap();
        let _b = l.acquire(Service::Smtp, ip("192.0.2.1"), false).unwrap();
        assert_eq!(
            l.acquire(Service::Smtp, ip("192.0.2.1"), false).err(),
            Some(Refused::PerIp)
        );
        // Another service of the same IP has its own count.
        let _h = l.acquire(Service::Http, ip("192.0.2.1"), false).unwrap();
        let _c = l.acquire(Service::Smtp, ip("192.0.2.2"), false).unwrap();
        assert_eq!(
            l.acquire(Service::Smtp, ip("192.0.2.3"), false).err(),
            Some(Refused::Total)
        );
        drop(a);
        let _d = l.acquire(Service::Smtp, ip("192.0.2.1"), false).unwrap();
        assert_eq!(l.open(Service::Smtp), 3);
        assert_eq!(l.open(Service::Http), 1);
    }

    #[test]
    fn unauthenticated_connections_have_a_lower_cap_until_login() {
        let l = ConnLimiter::new(caps());
        let mut a = l.acquire(Service::Imap, ip("198.51.100.7"), true).unwrap();
        assert_eq!(
            l.acquire(Service::Smtp, ip("198.51.100.7"), true).err(),
            Some(Refused::Unauthenticated)
        );
        a.authenticated();
        let _b = l.acquire(Service::Imap, ip("198.51.100.7"), true).unwrap();
        drop(a);
        // Only the second still counts as unauthenticated.
        assert_eq!(l.lock().ips[&ip_key(ip("198.51.100.7"))].unauth, 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = ConnLimiter::new(caps());
        let _a = l.acquire(Service::Http, ip("2001:db8::1"), false).unwrap();
        let _b = l.acquire(Service::Http, ip("2001:db8::2"), false).unwrap();
        assert_eq!(
            l.acquire(Service::Http, ip("2001:db8::3"), false).err(),
            Some(Refused::PerIp)
        );
        assert_eq!(ip_key(ip("::ffff:192.0.2.1")), ip_key(ip("192.0.2.1")));
    }

    #[test]
    fn loopback_is_exempt_from_per_ip_caps_only_when_configured() {
        let l = ConnLimiter::new(caps());
        let _a = l.acquire(Service::Imap, ip("127.0.0.1"), true).unwrap();
        let _b = l.acquire(Service::Imap, ip("127.0.0.1"), true).unwrap();
        let _c = l.acquire(Service::Imap, ip("127.0.0.1"), true).unwrap();
        assert_eq!(
            l.acquire(Service::Imap, ip("127.0.0.1"), true).err(),
            Some(Refused::Total)
        );
        let l = ConnLimiter::new(Caps {
            exempt_loopback: false,
            ..caps()
        });
        let _a = l.acquire(Service::Imap, ip("127.0.0.1"), false).unwrap();
        let _b = l.acquire(Service::Imap, ip("127.0.0.1"), false).unwrap();
        assert_eq!(
            l.acquire(Service::Imap, ip("127.0.0.1"), false).err(),
            Some(Refused::PerIp)
        );
    }

    #[test]
    fn totals_are_shares_of_the_descriptors_left_after_the_reserve() {
        let cfg = Config::with_domain("[127.0.0.1]", std::path::Path::new("/nonexistent")).unwrap();
        let c = Caps::derive(&cfg, 1024);
        let usable = 1024 - fd_reserve(1024) as usize;
        assert!(c.total.iter().sum::<usize>() <= usable, "{c:?}");
        assert!(c.total[Service::Imap.idx()] > c.total[Service::Smtp.idx()]);
        // With plenty of descriptors the configured caps apply.
        let c = Caps::derive(&cfg, 1 << 20);
        assert_eq!(c.total[Service::Imap.idx()], cfg.max_imap_connections);
        assert_eq!(c.total[Service::Http.idx()], cfg.max_http_connections);
    }

    #[test]
    fn budget_refuses_past_the_cap_and_gives_back_on_drop() {
        let b = Budget::new(1 << 20);
        let mut h1 = b.hold();
        assert!(h1.grow(600 << 10, 1 << 20));
        let mut h2 = b.hold();
        assert!(!h2.grow(600 << 10, 1 << 20));
        assert!(h2.grow(100 << 10, 1 << 20));
        drop(h1);
        assert!(h2.grow(900 << 10, 1 << 20));
        drop(h2);
        assert_eq!(b.used(), 0);
    }
}
