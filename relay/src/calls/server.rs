//! The TURN server (webrtc-rs `turn`) on one UDP socket, with the limits the crate lacks:
//! allocations in total, per TURN username and per client IP, and a byte rate per allocation.
//!
//! The crate asks two hooks of ours during an Allocate request: the auth handler (which knows the
//! username and the client) and then the relay-port generator (which knows neither). They are
//! tied through `Identity`: the crate handles the datagrams of one listening socket strictly one
//! after another (`Server::read_loop` awaits each request), so the identity the auth handler saw
//! last is the one of the Allocate request being served. That only holds for one listening socket
//! per server, which is why [`start`] binds exactly one.

use super::{Secret, Turn};
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::{GaugeGuard, M};
use crate::sync::LockExt;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use turn::auth::{generate_auth_key, AuthHandler};
use turn::relay::relay_range::RelayAddressGeneratorRanges;
use turn::relay::RelayAddressGenerator;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::vnet::net::Net;
use webrtc_util::Conn;

/// The IP the TURN socket binds: that of the first IMAPS listener (the address clients already
/// reach this relay at), or every IPv4 address.
pub fn listen_ip(cfg: &Config) -> IpAddr {
    cfg.listen
        .imaps
        .first()
        .map_or(IpAddr::from([0, 0, 0, 0]), SocketAddr::ip)
}

/// Who the request being handled is: (TURN username, client IP).
type Identity = Arc<Mutex<Option<(String, IpAddr)>>>;

/// Binds the TURN socket and starts serving. `learned` is the public address the router reported
/// (see [`super::relay_ip`]); the caller closes the returned server on shutdown.
pub async fn start(
    cfg: &Config,
    turn: &Turn,
    clock: Clock,
    learned: Option<IpAddr>,
) -> anyhow::Result<turn::server::Server> {
    let listen = SocketAddr::new(listen_ip(cfg), cfg.turn_port);
    let socket = tokio::net::UdpSocket::bind(listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {listen} (UDP) for TURN: {e} (turn = false turns TURN off)"
        )
    })?;
    let local = crate::dns::reach::local_addresses();
    let relay_ip = super::relay_ip(cfg, learned, &local);
    if !cfg.is_ip_literal() && !crate::net::public_destination(relay_ip, false) {
        tracing::warn!(
            %relay_ip,
            "TURN announces a private address as its relay address: calls from outside this network \
             will fail; set turn_public_ip to the router's public address"
        );
    }
    let bind_ip = if listen.ip().is_unspecified() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        listen.ip()
    };
    let range = cfg.turn_relay_ports;
    let identity = Identity::default();
    let relays = Relays {
        inner: RelayAddressGeneratorRanges {
            relay_address: relay_ip,
            address: match bind_ip {
                IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            },
            min_port: range.0,
            max_port: range.1,
            // Random picks in a small range collide often once it fills up.
            max_retries: (range.count() * 3).min(u16::MAX as usize) as u16,
            net: Arc::new(Net::new(None)),
        },
        limits: Arc::new(Limits::new(
            // One port per allocation: past the range's size the port search only fails slower.
            cfg.turn_max_allocations.min(range.count()),
            cfg.turn_max_allocations_per_user,
            cfg.turn_max_allocations_per_ip,
        )),
        identity: identity.clone(),
        rate: cfg.turn_max_allocation_rate.0,
    };
    let server = turn::server::Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn: Arc::new(socket),
            relay_addr_generator: Box::new(relays),
        }],
        realm: cfg.mail_domain.clone(),
        auth_handler: Arc::new(Auth {
            secret: turn.secret().clone(),
            clock,
            identity,
        }),
        channel_bind_timeout: std::time::Duration::ZERO,
        alloc_close_notify: None,
    })
    .await?;
    tracing::info!(%listen, %relay_ip, relay_ports = %range, "TURN up");
    Ok(server)
}

/// Checks REST-scheme credentials against the secret and the clock.
struct Auth {
    secret: Secret,
    clock: Clock,
    identity: Identity,
}

impl AuthHandler for Auth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let expiry: i64 = username
            .parse()
            .map_err(|_| turn::Error::Other("username is not an expiry time".into()))?;
        if expiry < self.clock.now() {
            return Err(turn::Error::Other("credential expired".into()));
        }
        let password = self.secret.password(username);
        *self.identity.lock_or_recover() = Some((username.to_string(), src.ip()));
        Ok(generate_auth_key(username, realm, &password))
    }
}

/// Relay ports from the configured range, each behind the allocation limits and rate.
struct Relays {
    inner: RelayAddressGeneratorRanges,
    limits: Arc<Limits>,
    identity: Identity,
    rate: u64,
}

#[async_trait::async_trait]
impl RelayAddressGenerator for Relays {
    fn validate(&self) -> Result<(), turn::Error> {
        self.inner.validate()
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        // Not taken, only read: an EVEN-PORT request calls this twice for one authentication.
        let who = self.identity.lock_or_recover().clone();
        let Some((user, ip)) = who else {
            return Err(turn::Error::Other(
                "allocation without authentication".into(),
            ));
        };
        let Some(lease) = self.limits.acquire(&user, ip) else {
            M.turn_refused.inc();
            tracing::info!(client = %ip, "TURN allocation refused: limit reached");
            // The crate answers 508 Insufficient Capacity (RFC 8656 would prefer 486 for the
            // per-user quota; the crate has no way to choose).
            return Err(turn::Error::Other("allocation limit reached".into()));
        };
        let (conn, addr) = self.inner.allocate_conn(use_ipv4, requested_port).await?;
        M.turn_allocations_created.inc();
        Ok((
            Arc::new(Metered {
                inner: conn,
                lease,
                to_peer: Bucket::new(self.rate),
                to_client: Bucket::new(self.rate),
            }),
            addr,
        ))
    }
}

/// Allocation counts: in total, per TURN username, per client IP.
pub struct Limits {
    max_total: usize,
    max_per_user: usize,
    max_per_ip: usize,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    users: HashMap<String, usize>,
    ips: HashMap<IpAddr, usize>,
}

impl Limits {
    pub fn new(max_total: usize, max_per_user: usize, max_per_ip: usize) -> Limits {
        Limits {
            max_total,
            max_per_user,
            max_per_ip,
            state: Mutex::new(Counts::default()),
        }
    }

    /// One allocation for `user` from `ip`, if every limit allows it.
    pub fn acquire(self: &Arc<Self>, user: &str, ip: IpAddr) -> Option<Lease> {
        let mut s = self.state.lock_or_recover();
        let u = s.users.get(user).copied().unwrap_or(0);
        let i = s.ips.get(&ip).copied().unwrap_or(0);
        if s.total >= self.max_total || u >= self.max_per_user || i >= self.max_per_ip {
            return None;
        }
        s.total += 1;
        *s.users.entry(user.to_string()).or_default() += 1;
        *s.ips.entry(ip).or_default() += 1;
        Some(Lease {
            limits: self.clone(),
            key: Mutex::new(Some((user.to_string(), ip, M.turn_allocations.hold()))),
        })
    }

    pub fn total(&self) -> usize {
        self.state.lock_or_recover().total
    }
}

/// One counted allocation; given back when its relay socket is closed or dropped.
pub struct Lease {
    limits: Arc<Limits>,
    key: Mutex<Option<(String, IpAddr, GaugeGuard)>>,
}

impl Lease {
    fn release(&self) {
        let Some((user, ip, _gauge)) = self.key.lock_or_recover().take() else {
            return;
        };
        let mut s = self.limits.state.lock_or_recover();
        s.total -= 1;
        if let Some(n) = s.users.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                s.users.remove(&user);
            }
        }
        if let Some(n) = s.ips.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                s.ips.remove(&ip);
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

/// A token bucket of `rate` bytes per second holding at most one second's worth.
pub(super) struct Bucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub(super) fn new(rate: u64) -> Bucket {
        let rate = rate as f64;
        Bucket {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    pub(super) fn take(&self, n: usize) -> bool {
        let mut s = self.state.lock_or_recover();
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate);
        s.1 = now;
        if s.0 >= n as f64 {
            s.0 -= n as f64;
            true
        } else {
            false
        }
    }
}

/// A relay socket that counts and rate-limits what it relays. Over the rate, datagrams are
/// dropped, not delayed: sends run on the server's one read loop, which must never wait, and
/// media over UDP copes with loss better than with queueing.
struct Metered {
    inner: Arc<dyn Conn + Send + Sync>,
    lease: Lease,
    to_peer: Bucket,
    to_client: Bucket,
}

#[async_trait::async_trait]
impl Conn for Metered {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            if self.to_client.take(n) {
                M.turn_relayed_bytes.add(n as u64);
                return Ok((n, from));
            }
            M.turn_dropped_bytes.add(n as u64);
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !self.to_peer.take(buf.len()) {
            M.turn_dropped_bytes.add(buf.len() as u64);
            return Ok(buf.len());
        }
        let n = self.inner.send_to(buf, target).await?;
        M.turn_relayed_bytes.add(n as u64);
        Ok(n)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.lease.release();
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
