//! The one configuration struct, parsed once at start and passed down as `Arc<Config>`.
//!
//! Keys and defaults follow the reference's `chatmail.ini` where they apply; relaybox adds paths and
//! listen addresses. Unknown keys and bad values are refused with the key's name and the expected form.

use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

mod ddns;
pub(crate) mod settings;
pub use ddns::DdnsConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("cannot read {path} in the data directory {}: {source}{}", dir.display(), access_hint(source))]
    DataDir {
        dir: PathBuf,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn access_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (the data directory belongs to another user: run relaybox as that user, e.g. \
         `sudo -u relaybox relaybox …`, or fix its owner)"
    } else {
        ""
    }
}

/// A byte count written as `500M`, `1G`, `200K`, `30B` or a bare number of bytes. Units are binary
/// (K = 1024), matching the reference's `parse_size_mb`, which treats `M` as MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
        let (digits, mult) = match t.chars().last() {
            Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
            Some('M' | 'm') => (&t[..t.len() - 1], 1u64 << 20),
            Some('G' | 'g') => (&t[..t.len() - 1], 1u64 << 30),
            Some('T' | 't') => (&t[..t.len() - 1], 1u64 << 40),
            _ => (t, 1),
        };
        let n: u64 = digits.trim().parse().map_err(|_| {
            format!("expected a size like \"500M\", \"1G\" or a number of bytes, got {s:?}")
        })?;
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"500M\", \"1G\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}G", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}M", b >> 20)
        } else {
            write!(f, "{b}")
        }
    }
}

/// A duration written as `2d`, `36h`, `90m`, `30s` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub u64);

impl Seconds {
    pub fn parse(s: &str) -> Result<Seconds, String> {
        let t = s.trim();
        let (digits, mult) = match t.chars().last() {
            Some('s' | 'S') => (&t[..t.len() - 1], 1u64),
            Some('m' | 'M') => (&t[..t.len() - 1], 60),
            Some('h' | 'H') => (&t[..t.len() - 1], 3600),
            Some('d' | 'D') => (&t[..t.len() - 1], 86400),
            _ => (t, 1),
        };
        let n: u64 = digits.trim().parse().map_err(|_| {
            format!("expected a duration like \"2d\", \"36h\", \"90m\" or \"30s\", got {s:?}")
        })?;
        n.checked_mul(mult)
            .map(Seconds)
            .ok_or_else(|| format!("duration {s:?} is too long"))
    }

    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration like \"2d\", \"36h\", \"90m\", \"30s\" or a number of seconds",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                u64::try_from(v)
                    .map(Seconds)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                Seconds::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// An address block written as `127.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let bad = || format!("expected an address block like \"127.0.0.0/8\", got {s:?}");
        let (a, p) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(bad)?
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u32) {
            match ip.to_canonical() {
                IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (addr, w)) = (bits(self.addr), bits(ip));
        if width != w {
            return false;
        }
        let host_bits = width - u32::from(self.prefix).min(width);
        host_bits >= width || (net >> host_bits) == (addr >> host_bits)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IpNet::parse(&s).map_err(de::Error::custom)
    }
}

/// Where each service listens. An empty list switches that service off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// SMTP from other relays (port 25, STARTTLS).
    pub smtp: Vec<SocketAddr>,
    /// Submission with implicit TLS (port 465).
    pub submissions: Vec<SocketAddr>,
    /// Submission with STARTTLS (port 587).
    pub submission: Vec<SocketAddr>,
    /// IMAP with STARTTLS (port 143).
    pub imap: Vec<SocketAddr>,
    /// IMAP with implicit TLS (port 993).
    pub imaps: Vec<SocketAddr>,
    /// Plain HTTP (port 80).
    pub http: Vec<SocketAddr>,
    /// HTTPS (port 443).
    pub https: Vec<SocketAddr>,
    /// Prometheus metrics over plain HTTP (`GET /metrics`); loopback only by default
    /// (127.0.0.1:9464), since it is not authenticated.
    pub metrics: Vec<SocketAddr>,
}

impl Listen {
    /// The standard ports on one address, each shifted by `offset`; metrics stay on loopback
    /// (`ip` itself if it is a loopback address, so relays on 127.0.0.x do not collide).
    pub fn standard(ip: IpAddr, offset: u16) -> Result<Listen, ConfigError> {
        let at = |port: u16| -> Result<Vec<SocketAddr>, ConfigError> {
            let p = port.checked_add(offset).ok_or(ConfigError::Invalid {
                key: "port-offset",
                message: format!("port {port} + {offset} is above 65535"),
            })?;
            Ok(vec![SocketAddr::new(ip, p)])
        };
        Ok(Listen {
            smtp: at(25)?,
            submissions: at(465)?,
            submission: at(587)?,
            imap: at(143)?,
            imaps: at(993)?,
            http: at(80)?,
            https: at(443)?,
            metrics: at(9464)?
                .into_iter()
                .map(|a| {
                    if a.ip().is_loopback() {
                        a
                    } else {
                        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), a.port())
                    }
                })
                .collect(),
        })
    }
}

/// A UDP port range, `"first-last"` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl PortRange {
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let bad =
            || format!("expected \"first-last\" with 1024 <= first <= last <= 65535, got {s:?}");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        if a < 1024 || a > b {
            return Err(bad());
        }
        Ok(PortRange(a, b))
    }

    /// How many ports the range holds.
    pub fn count(&self) -> usize {
        usize::from(self.1 - self.0) + 1
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PortRange::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Default for Listen {
    /// Every standard port on all IPv4 and all IPv6 addresses (dual stack; the server makes the
    /// `[::]` sockets IPv6-only so both can be bound, and skips them on a host without IPv6).
    fn default() -> Self {
        let mut l = Listen::standard(IpAddr::from([0, 0, 0, 0]), 0).expect("offset 0 always fits");
        let v6 = Listen::standard(IpAddr::from([0u16; 8]), 0).expect("offset 0 always fits");
        for (all, six) in [
            (&mut l.smtp, v6.smtp),
            (&mut l.submissions, v6.submissions),
            (&mut l.submission, v6.submission),
            (&mut l.imap, v6.imap),
            (&mut l.imaps, v6.imaps),
            (&mut l.http, v6.http),
            (&mut l.https, v6.https),
        ] {
            all.extend(six);
        }
        l.metrics = vec![SocketAddr::from(([127, 0, 0, 1], 9464))];
        l
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The mail domain: a name (`chat.example.org`), or an IP literal (`[192.0.2.1]`). A bare IPv4
    /// address is accepted too and turned into a literal, as the reference does.
    pub mail_domain: String,
    /// Where all state lives: the index database, message files, keys.
    #[serde(default = "d_data_dir")]
    pub data_dir: PathBuf,
    /// PEM certificate chain and key. Unset: a self-signed certificate is made on first start and
    /// kept in `<data_dir>/tls/`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Where the certificate comes from: `"files"` (`tls_cert`/`tls_key`), `"self-signed"` (made
    /// on first start in `<data_dir>/tls/`) or `"acme"` (obtained and renewed from
    /// `acme_directory` with HTTP-01 on port 80; written to `tls_cert`/`tls_key` when given, else
    /// to `<data_dir>/acme/`). Unset: `"files"` when `tls_cert` is given, else `"self-signed"`.
    #[serde(default)]
    pub tls: Option<TlsMode>,
    /// The ACME server's directory URL (Let's Encrypt production by default; its staging
    /// directory or another CA's work too).
    #[serde(default = "d_acme_directory")]
    pub acme_directory: String,
    /// Contact address given to the ACME CA when the account is created (optional).
    #[serde(default)]
    pub acme_email: Option<String>,
    /// PEM CA certificate(s) trusted for the ACME server's own HTTPS, besides the system roots
    /// (a test CA such as pebble's, or a private ACME server).
    #[serde(default)]
    pub acme_ca_file: Option<PathBuf>,
    /// Renew when the certificate has fewer days than this left (unless the CA's ACME renewal
    /// information suggests an earlier time).
    #[serde(default = "d_30")]
    pub acme_renew_days: u32,
    #[serde(default)]
    pub listen: Listen,

    #[serde(default = "d_60")]
    pub max_user_send_per_minute: u32,
    #[serde(default = "d_10")]
    pub max_user_send_burst_size: u32,
    #[serde(default = "d_mailbox")]
    pub max_mailbox_size: ByteSize,
    #[serde(default = "d_msgsize")]
    pub max_message_size: u64,
    #[serde(default = "d_1000")]
    pub max_smtp_recipients: usize,
    #[serde(default = "d_20")]
    pub delete_mails_after: u32,
    #[serde(default = "d_7")]
    pub delete_large_after: u32,
    #[serde(default = "d_90")]
    pub delete_inactive_users_after: u32,
    #[serde(default = "d_9")]
    pub username_min_length: usize,
    #[serde(default = "d_9")]
    pub username_max_length: usize,
    #[serde(default = "d_9")]
    pub password_min_length: usize,
    #[serde(default = "d_load")]
    pub max_load_1m: f64,
    #[serde(default = "d_mem")]
    pub min_available_memory: ByteSize,
    #[serde(default = "d_disk")]
    pub min_free_disk_space: ByteSize,
    #[serde(default = "d_10000")]
    pub max_imap_connections: usize,
    #[serde(default = "d_1000")]
    pub max_smtp_connections: usize,
    /// Open HTTP and HTTPS connections (80 and 443 together, `/mxdeliv` and the admin pages
    /// included). Like the two above, cut down at start to a share of the descriptor limit.
    #[serde(default = "d_1000")]
    pub max_http_connections: usize,
    /// Open connections from one IPv4 address or IPv6 /64, per service.
    #[serde(default = "d_200")]
    pub max_imap_connections_per_ip: usize,
    #[serde(default = "d_30usize")]
    pub max_smtp_connections_per_ip: usize,
    #[serde(default = "d_30usize")]
    pub max_http_connections_per_ip: usize,
    /// IMAP and SMTP submission connections from one address that have not logged in yet.
    #[serde(default = "d_20usize")]
    pub max_unauthenticated_per_ip: usize,
    /// Loopback clients skip the per-IP caps (the totals still hold); tests that measure the
    /// per-IP caps on loopback turn this off.
    #[serde(default = "d_true")]
    pub conn_limits_exempt_loopback: bool,
    /// An IMAP or SMTP submission client that has not logged in this long after connecting is
    /// disconnected.
    #[serde(default = "d_login_timeout")]
    pub login_timeout: Seconds,
    /// The whole of one message transfer (SMTP DATA, an IMAP APPEND literal, a `/mxdeliv`
    /// body) must arrive within this, however steadily the bytes trickle in.
    #[serde(default = "d_transfer_timeout")]
    pub message_transfer_timeout: Seconds,
    /// Bytes of message bodies being received, summed over all connections, held in memory;
    /// transfers beyond it get `451 4.3.1` / `NO [TRYLATER]`. Never less than
    /// `max_message_size` in effect.
    #[serde(default = "d_inflight")]
    pub max_inflight_message_memory: ByteSize,
    /// When the daily expiry runs, as `HH:MM` in UTC (the reference's timer runs at 00:02).
    #[serde(default = "d_expiry_time")]
    pub expiry_time: String,
    /// DNS servers for MX, address and DKIM key lookups, each asked over UDP and TCP. Empty: the
    /// system resolver from `/etc/resolv.conf`. Tests point this at a loopback server.
    #[serde(default)]
    pub dns_servers: Vec<SocketAddr>,
    /// The port the wizard's DNS check asks a zone's authoritative servers on (always 53 on
    /// the internet; tests run their servers elsewhere).
    #[serde(default = "d_dns_port")]
    pub dns_authoritative_port: u16,
    /// The DKIM selector: the key is published at `<selector>._domainkey.<mail_domain>`. The
    /// default is the reference's, so a migrated relay keeps its DNS record.
    #[serde(default = "d_dkim_selector")]
    pub dkim_selector: String,
    /// `host:port` targets the wizard's DNS step connects to, to see whether this network lets
    /// the relay out on 25 (mail to other relays) and 443 (`/mxdeliv`, ACME). The default is the
    /// reference's public chatmail relay; an empty list turns the probe off.
    #[serde(default = "d_outbound_probes")]
    pub outbound_probes: Vec<String>,
    /// `"auto"`: ask the home router (UPnP-IGD, else NAT-PMP) to forward the ports in use to
    /// this box, renew the leases, remove them at shutdown (`relay/src/portmap/`). `"off"`:
    /// leave the router alone. `relaybox dev` turns it off.
    #[serde(default)]
    pub port_mapping: PortMapping,

    /// How long outbound mail is retried before it bounces (Postfix's `maximal_queue_lifetime`,
    /// 2 days in the reference).
    #[serde(default = "d_queue_lifetime")]
    pub queue_lifetime: Seconds,
    /// The first retry of a temporarily failed delivery waits this long; each further retry
    /// waits twice as long as the one before, up to `queue_retry_max`. A delivery that succeeds
    /// to a domain retries that domain's waiting mail at once.
    #[serde(default = "d_retry_initial")]
    pub queue_retry_initial: Seconds,
    #[serde(default = "d_retry_max")]
    pub queue_retry_max: Seconds,
    /// PEM file of extra trust anchors for outbound TLS, added to the system roots (a private CA
    /// in tests or in a closed network).
    #[serde(default)]
    pub outbound_ca_file: Option<PathBuf>,
    /// The ports outbound delivery connects to on other relays. Only tests that run several
    /// relays without root change them; the world uses 25 and 443.
    #[serde(default = "d_25")]
    pub outbound_smtp_port: u16,
    #[serde(default = "d_443")]
    pub outbound_https_port: u16,
    /// Address blocks outbound delivery may connect to although they are not public addresses
    /// (loopback, link-local, and for relays with a domain name the private ranges), such as
    /// `["127.0.0.0/8"]` for relays federating on one machine in tests. Empty (the default):
    /// mail to such addresses is refused at RCPT and never connected to.
    #[serde(default)]
    pub allowed_destination_networks: Vec<IpNet>,
    /// New accounts (made by a first login) one client address may create per hour, IMAP and
    /// SMTP together; IPv6 clients count per /64. 0: no limit.
    #[serde(default = "d_30")]
    pub max_new_accounts_per_ip_per_hour: u32,

    /// Where push notifications go: each device token is POSTed there as the raw body
    /// (reference §5.4). Plain `http://` works too (tests).
    #[serde(default = "d_push_url")]
    pub push_url: String,
    /// Waits before the retries of a failed push (reference: 8, 64, 512 and 4096 seconds).
    #[serde(default = "d_push_retry_delays")]
    pub push_retry_delays: Vec<Seconds>,
    /// A push not delivered this long after its first attempt is dropped.
    #[serde(default = "d_push_give_up_after")]
    pub push_give_up_after: Seconds,
    /// Most push device tokens kept per account (one per device and app install); setting one
    /// more drops the least recently set. Every token costs a POST per incoming message.
    #[serde(default = "d_push_max_tokens")]
    pub push_max_tokens: usize,
    /// Another iroh relay's URL to announce (METADATA `/shared/vendor/deltachat/irohrelay`)
    /// instead of serving one here, as in the reference.
    #[serde(default)]
    pub iroh_relay: Option<String>,
    /// Serve an iroh relay (webxdc realtime) on our HTTP(S) front at `/relay`, `/ping`,
    /// `/generate_204` and announce it. Unset: on unless `iroh_relay` names another one.
    #[serde(default)]
    pub iroh_relay_enabled: Option<bool>,
    /// Most iroh relay clients (app instances with a realtime channel open) at once.
    #[serde(default = "d_iroh_relay_max_clients")]
    pub iroh_relay_max_clients: usize,
    /// Bytes per second the iroh relay reads from one client; 0: no limit (the reference's).
    #[serde(default)]
    pub iroh_relay_client_rate: ByteSize,
    /// The TURN server announced to clients (METADATA `/shared/vendor/deltachat/turn`), in the
    /// reference's form `host:port:username:password`; unset: NIL.
    #[serde(default)]
    pub turn_server: Option<String>,
    /// Serve TURN (UDP) for Delta Chat calls and announce it in that METADATA entry. Unset: on
    /// for a named domain without `turn_server`, off for an IP literal (dev runs, LAN mode).
    #[serde(default)]
    pub turn: Option<bool>,
    /// The TURN port (UDP) on the IP of the first `[listen] imaps` address.
    #[serde(default = "d_turn_port")]
    pub turn_port: u16,
    /// The UDP ports relayed media flows through, `"first-last"`: few, so one router forward
    /// covers them; one allocation (one side of one call) takes one port.
    #[serde(default = "d_turn_relay_ports")]
    pub turn_relay_ports: PortRange,
    /// The public address a relay port is reached at, announced in each allocation. Behind NAT
    /// it is the router's public address (the box's own LAN address would break every call).
    #[serde(default)]
    pub turn_public_ip: Option<IpAddr>,
    /// Most TURN allocations at once, over all users.
    #[serde(default = "d_turn_max_allocations")]
    pub turn_max_allocations: usize,
    /// Most TURN allocations at once for one TURN username (one credential fetch; one call
    /// needs one per side).
    #[serde(default = "d_turn_max_allocations_per_user")]
    pub turn_max_allocations_per_user: usize,
    /// Most TURN allocations at once from one client IP address (a household or a carrier NAT
    /// shares one).
    #[serde(default = "d_turn_max_allocations_per_ip")]
    pub turn_max_allocations_per_ip: usize,
    /// Bytes per second one allocation may relay in each direction; more is dropped.
    #[serde(default = "d_turn_max_allocation_rate")]
    pub turn_max_allocation_rate: ByteSize,

    #[serde(default)]
    pub privacy_postal: String,
    #[serde(default)]
    pub privacy_mail: String,
    #[serde(default)]
    pub privacy_pdo: String,
    #[serde(default)]
    pub privacy_supervisor: String,
    /// Serve the set-up wizard (until an admin password is set) and the admin pages after
    /// (`relay/src/admin/`). The appliance turns it on; `relaybox dev --wizard` too.
    #[serde(default)]
    pub admin_ui: bool,
    /// The longest a client may take to send the whole body of a small HTTP request (the admin
    /// API's JSON, at most a few KiB): a body trickled in a byte at a time is cut off with 408
    /// then, however often bytes arrive.
    #[serde(default = "d_http_body_timeout")]
    pub http_body_timeout: Seconds,
    /// The largest backup the admin page restores. The upload goes to a file in `data_dir`
    /// as it arrives, never whole into memory.
    #[serde(default = "d_admin_restore_max_size")]
    pub admin_restore_max_size: ByteSize,
    /// The longest the upload of a backup to restore may take.
    #[serde(default = "d_admin_restore_timeout")]
    pub admin_restore_timeout: Seconds,
    /// `[update]`: signed A/B updates of the appliance.
    #[serde(default)]
    pub update: UpdateConfig,
    /// `[ddns]`: dynamic DNS updates of the domain's A/AAAA records.
    #[serde(default)]
    pub ddns: DdnsConfig,
}

/// The `[update]` table. Not settable from the settings file: the root update agent reads
/// these, and the settings file is the daemon's to write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// State, progress, agent requests and uploaded bundles.
    pub dir: PathBuf,
    /// Where the config partition p1 (autoboot.txt) is mounted.
    pub firmware_dir: PathBuf,
    /// How long a tryboot start has to become healthy before it reboots to the old slot.
    pub commit_timeout: Seconds,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            dir: PathBuf::from("/data/update"),
            firmware_dir: PathBuf::from("/run/relaybox/firmware"),
            commit_timeout: Seconds(300),
        }
    }
}

fn d_http_body_timeout() -> Seconds {
    Seconds(20)
}
fn d_admin_restore_max_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn d_admin_restore_timeout() -> Seconds {
    Seconds(600)
}

/// The wizard's settings file inside `data_dir`: same keys as the config file, its values win.
/// The appliance's config lives on a read-only image or is generated once, so what the operator
/// chooses in the browser goes here.
pub const SETTINGS_FILE: &str = "settings.toml";

/// Keys the settings file may not change: they decide where the settings file itself and the
/// listeners are, and a wrong value there would lock the operator out of the wizard.
const NOT_IN_SETTINGS: &[&str] = &["data_dir", "listen", "admin_ui", "update"];

/// The `port_mapping` config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortMapping {
    #[default]
    Auto,
    Off,
}

/// The `tls` config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Files,
    SelfSigned,
    Acme,
}

fn d_iroh_relay_max_clients() -> usize {
    500
}
fn d_turn_port() -> u16 {
    3478
}
fn d_turn_relay_ports() -> PortRange {
    PortRange(49152, 49251)
}
fn d_turn_max_allocations() -> usize {
    200
}
fn d_turn_max_allocations_per_user() -> usize {
    10
}
fn d_turn_max_allocations_per_ip() -> usize {
    20
}
fn d_turn_max_allocation_rate() -> ByteSize {
    // A video call is about 2.5 Mbit/s per direction; twice that leaves room.
    ByteSize(640 << 10)
}
fn d_acme_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".into()
}
fn d_30() -> u32 {
    30
}
fn d_push_url() -> String {
    "https://notifications.delta.chat/notify".into()
}
fn d_push_retry_delays() -> Vec<Seconds> {
    [8, 64, 512, 4096].into_iter().map(Seconds).collect()
}
fn d_push_give_up_after() -> Seconds {
    Seconds(5 * 3600)
}
fn d_push_max_tokens() -> usize {
    20
}
fn d_dns_port() -> u16 {
    53
}
fn d_outbound_probes() -> Vec<String> {
    vec!["nine.testrun.org:25".into(), "nine.testrun.org:443".into()]
}
fn d_dkim_selector() -> String {
    "opendkim".into()
}
fn d_queue_lifetime() -> Seconds {
    Seconds(2 * 86400)
}
fn d_retry_initial() -> Seconds {
    Seconds(60)
}
fn d_retry_max() -> Seconds {
    Seconds(20 * 60)
}
fn d_25() -> u16 {
    25
}
fn d_443() -> u16 {
    443
}
fn d_expiry_time() -> String {
    "00:02".into()
}
fn d_data_dir() -> PathBuf {
    PathBuf::from("/data/relaybox")
}
fn d_30usize() -> usize {
    30
}
fn d_20usize() -> usize {
    20
}
fn d_200() -> usize {
    200
}
fn d_true() -> bool {
    true
}
fn d_login_timeout() -> Seconds {
    Seconds(60)
}
fn d_transfer_timeout() -> Seconds {
    Seconds(600)
}
fn d_inflight() -> ByteSize {
    ByteSize(128 << 20)
}
fn d_60() -> u32 {
    60
}
fn d_10() -> u32 {
    10
}
fn d_20() -> u32 {
    20
}
fn d_7() -> u32 {
    7
}
fn d_90() -> u32 {
    90
}
fn d_9() -> usize {
    9
}
fn d_1000() -> usize {
    1000
}
fn d_10000() -> usize {
    10000
}
fn d_mailbox() -> ByteSize {
    ByteSize(500 << 20)
}
fn d_msgsize() -> u64 {
    31_457_280
}
fn d_load() -> f64 {
    5.0
}
fn d_mem() -> ByteSize {
    ByteSize(200 << 20)
}
fn d_disk() -> ByteSize {
    ByteSize(1 << 30)
}

impl Config {
    /// A config with every default, for `relaybox dev` and tests.
    pub fn with_domain(mail_domain: &str, data_dir: &Path) -> Result<Config, ConfigError> {
        let text = format!(
            "mail_domain = {}\ndata_dir = {}\n",
            toml_string(mail_domain),
            toml_string(&data_dir.to_string_lossy())
        );
        Config::from_toml(&text, Path::new("<built-in>"))
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses a config file's text, then applies `<data_dir>/settings.toml` on top if it
    /// exists.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parse_err = |path: &Path, e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: humanize(e.to_string().trim_end()),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(path, e))?;
        let data_dir = table
            .get("data_dir")
            .and_then(|v| v.as_str())
            .map_or_else(d_data_dir, PathBuf::from);
        let settings = data_dir.join(SETTINGS_FILE);
        let mut source = path.to_owned();
        match std::fs::read_to_string(&settings) {
            Ok(t) => {
                let overlay: toml::Table =
                    toml::from_str(&t).map_err(|e| parse_err(&settings, e))?;
                for (k, v) in overlay {
                    if NOT_IN_SETTINGS.contains(&k.as_str()) {
                        return Err(ConfigError::Parse {
                            path: settings,
                            message: format!("`{k}` can only be set in the config file"),
                        });
                    }
                    table.insert(k, v);
                }
                source = PathBuf::from(format!("{} + {}", path.display(), settings.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ConfigError::DataDir {
                    dir: data_dir,
                    path: settings,
                    source: e,
                })
            }
        }
        let mut cfg: Config = table.try_into().map_err(|e| parse_err(&source, e))?;
        cfg.normalize()?;
        Ok(cfg)
    }

    /// Where the wizard's settings are kept.
    pub fn settings_path(&self) -> PathBuf {
        self.data_dir.join(SETTINGS_FILE)
    }

    fn normalize(&mut self) -> Result<(), ConfigError> {
        let d = self.mail_domain.trim().to_ascii_lowercase();
        self.mail_domain = if let Ok(ip) = d.parse::<IpAddr>() {
            domain_literal(ip)
        } else if d.starts_with('[') {
            let inner = d
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim_start_matches("ipv6:");
            let ip: IpAddr = inner.parse().map_err(|_| ConfigError::Invalid {
                key: "mail_domain",
                message: format!("{d:?} is not a valid IP literal like \"[192.0.2.1]\""),
            })?;
            domain_literal(ip)
        } else {
            valid_domain_name(&d).map_err(|message| ConfigError::Invalid {
                key: "mail_domain",
                message,
            })?;
            d
        };
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.username_min_length == 0 || self.username_min_length > self.username_max_length {
            return invalid(
                "username_min_length",
                format!(
                    "must be at least 1 and at most username_max_length ({})",
                    self.username_max_length
                ),
            );
        }
        if self.username_max_length > 64 {
            return invalid("username_max_length", "must be at most 64".into());
        }
        if self.password_min_length == 0 {
            return invalid("password_min_length", "must be at least 1".into());
        }
        if self.max_message_size < 1024 {
            return invalid(
                "max_message_size",
                "must be at least 1024 bytes".to_string(),
            );
        }
        if self.max_smtp_recipients == 0 {
            return invalid("max_smtp_recipients", "must be at least 1".into());
        }
        if self.max_user_send_per_minute == 0 || self.max_user_send_burst_size == 0 {
            return invalid(
                "max_user_send_per_minute",
                "the send rate and burst size must be at least 1".into(),
            );
        }
        if self.max_load_1m.is_nan() || self.max_load_1m <= 0.0 {
            return invalid("max_load_1m", "must be a positive number".into());
        }
        if self.expiry_minute().is_none() {
            return invalid(
                "expiry_time",
                format!(
                    "expected a time like \"00:02\" (HH:MM, UTC), got {:?}",
                    self.expiry_time
                ),
            );
        }
        // The selector becomes a DNS label and a file name (`<data_dir>/dkim/<selector>.key`).
        let selector_ok = !self.dkim_selector.is_empty()
            && self.dkim_selector.len() <= 63
            && self
                .dkim_selector
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !self.dkim_selector.starts_with('-');
        if !selector_ok {
            return invalid(
                "dkim_selector",
                format!(
                    "expected one DNS label of letters, digits, '-' or '_' like \"opendkim\", got {:?}",
                    self.dkim_selector
                ),
            );
        }
        if self.queue_retry_initial.0 == 0 || self.queue_retry_max < self.queue_retry_initial {
            return invalid(
                "queue_retry_initial",
                "must be at least 1s and at most queue_retry_max".into(),
            );
        }
        self.ddns.check()?;
        if self.queue_lifetime.0 == 0 {
            return invalid("queue_lifetime", "must be longer than zero".into());
        }
        let url = self.push_url.trim();
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.parse::<hyper::Uri>().is_err()
        {
            return invalid(
                "push_url",
                format!(
                    "expected an http:// or https:// URL, got {:?}",
                    self.push_url
                ),
            );
        }
        if self.push_max_tokens == 0 {
            return invalid("push_max_tokens", "must be at least 1".into());
        }
        if self.push_retry_delays.iter().any(|d| d.0 == 0) {
            return invalid(
                "push_retry_delays",
                "every delay must be at least 1s".into(),
            );
        }
        for (key, v) in [
            ("iroh_relay", &self.iroh_relay),
            ("turn_server", &self.turn_server),
        ] {
            if v.as_deref()
                .is_some_and(|s| s.trim().is_empty() || s.contains(['\r', '\n']))
            {
                return invalid(key, "must be one non-empty line (or left out)".into());
            }
        }
        if self.turn == Some(true) && self.turn_server.is_some() {
            return invalid(
                "turn",
                "turn = true serves TURN here, turn_server announces another server: keep one"
                    .into(),
            );
        }
        if self.iroh_relay_enabled == Some(true) && self.iroh_relay.is_some() {
            return invalid(
                "iroh_relay_enabled",
                "iroh_relay_enabled = true serves an iroh relay here, iroh_relay announces another one: keep one"
                    .into(),
            );
        }
        if self.iroh_relay_enabled() && self.iroh_relay_max_clients == 0 {
            return invalid(
                "iroh_relay_max_clients",
                "must be at least 1 (or set iroh_relay_enabled = false)".into(),
            );
        }
        if self.turn_enabled() {
            if self.turn_port == 0 {
                return invalid("turn_port", "must be a port from 1 to 65535".into());
            }
            if self.turn_relay_ports.0 <= self.turn_port
                && self.turn_port <= self.turn_relay_ports.1
            {
                return invalid("turn_relay_ports", "must not contain turn_port".into());
            }
            if self.turn_max_allocations == 0
                || self.turn_max_allocations_per_user == 0
                || self.turn_max_allocations_per_ip == 0
            {
                return invalid(
                    "turn_max_allocations",
                    "must be at least 1 (or set turn = false)".into(),
                );
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return invalid(
                    "tls_cert",
                    "tls_cert and tls_key must be given together".into(),
                )
            }
            _ => {}
        }
        match self.tls {
            Some(TlsMode::Files) if self.tls_cert.is_none() => {
                return invalid("tls", "\"files\" needs tls_cert and tls_key".into())
            }
            Some(TlsMode::SelfSigned) if self.tls_cert.is_some() => {
                return invalid(
                    "tls",
                    "\"self-signed\" makes its own certificate; leave out tls_cert and tls_key"
                        .into(),
                )
            }
            Some(TlsMode::Acme) if self.mail_domain.starts_with('_') => {
                return invalid(
                    "tls",
                    "\"acme\" cannot certify a `_`-prefixed domain (no CA issues for it); use \"self-signed\""
                        .into(),
                )
            }
            Some(TlsMode::Acme) if self.is_ip_literal() => {
                return invalid(
                    "tls",
                    "\"acme\" needs a domain name; IP-literal relays use a self-signed certificate"
                        .into(),
                )
            }
            _ => {}
        }
        if !self.acme_directory.starts_with("https://") {
            return invalid("acme_directory", "must be an https:// URL".into());
        }
        if self.acme_renew_days == 0 {
            return invalid("acme_renew_days", "must be at least 1".into());
        }
        Ok(())
    }

    /// The effective certificate source (see the `tls` key).
    pub fn tls_mode(&self) -> TlsMode {
        match self.tls {
            Some(m) => m,
            None if self.tls_cert.is_some() => TlsMode::Files,
            None => TlsMode::SelfSigned,
        }
    }

    /// Whether this relay serves TURN itself (see the `turn` key).
    pub fn turn_enabled(&self) -> bool {
        self.turn
            .unwrap_or(!self.is_ip_literal() && self.turn_server.is_none())
    }

    /// Whether this relay serves an iroh relay itself (see `iroh_relay_enabled`).
    pub fn iroh_relay_enabled(&self) -> bool {
        self.iroh_relay_enabled.unwrap_or(self.iroh_relay.is_none())
    }

    /// True when certificates come from an ACME CA.
    pub fn is_acme(&self) -> bool {
        self.tls_mode() == TlsMode::Acme
    }

    /// True for `[a.b.c.d]` domains: no DNS, self-signed certificate, clients accept it by `ic=3`.
    pub fn is_ip_literal(&self) -> bool {
        self.mail_domain.starts_with('[')
    }

    /// The IP address inside an IP-literal domain.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        let inner = self.mail_domain.strip_prefix('[')?.strip_suffix(']')?;
        inner.strip_prefix("ipv6:").unwrap_or(inner).parse().ok()
    }

    /// Self-signed mode: IP literals and `_`-prefixed domains (reference §2).
    pub fn is_self_signed(&self) -> bool {
        self.tls_mode() == TlsMode::SelfSigned
    }

    /// May outbound delivery connect to `ip`? Public addresses yes; loopback, link-local,
    /// unspecified, multicast and broadcast addresses, and for a relay with a domain name the
    /// private ranges too, only when `allowed_destination_networks` lists them.
    pub fn destination_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        crate::net::public_destination(ip, self.is_ip_literal())
            || self
                .allowed_destination_networks
                .iter()
                .any(|n| n.contains(ip))
    }

    /// Is `domain` (from an address) ours? Compared case-insensitively.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        domain.eq_ignore_ascii_case(&self.mail_domain)
    }

    /// The host name used in greetings and certificates.
    pub fn hostname(&self) -> &str {
        &self.mail_domain
    }

    /// Minutes after midnight UTC at which the daily expiry runs.
    pub fn expiry_minute(&self) -> Option<u32> {
        let (h, m) = self.expiry_time.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    }

    /// The admin control socket (`relaybox expire` talks to a running relay through it).
    pub fn control_socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }

    pub fn nocreate_path(&self) -> PathBuf {
        self.data_dir.join("nocreate")
    }

    /// The admin password's file: set-up is finished once it exists. Here, not in `admin`,
    /// because `accounts` also waits for it (no login works before set-up).
    pub fn admin_password_path(&self) -> PathBuf {
        self.data_dir.join("admin").join("password")
    }
}

pub fn domain_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[ipv6:{v6}]"),
    }
}

pub(crate) fn valid_domain_name(d: &str) -> Result<(), String> {
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{d:?} is not a domain name (expected something like \"chat.example.org\" or \"[192.0.2.1]\")"
        ))
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// serde's and toml's wording, in terms of the config file: which key, what kind of value in
/// plain words, and for a misspelt key the one that was probably meant instead of all of them.
fn humanize(msg: &str) -> String {
    let (msg, key) = match msg.rsplit_once("\nin `") {
        Some((m, k)) => (m, k.strip_suffix('`')),
        None => (msg, None),
    };
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (field, known) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = known.split('`').skip(1).step_by(2).collect();
        // A key inside a table is named with its table, as it would be written on one line.
        let table = key.map(|k| format!("{k}.")).unwrap_or_default();
        return match closest(field, &known) {
            Some(k) => format!("unknown key `{table}{field}`; did you mean `{table}{k}`?"),
            None => format!(
                "unknown key `{table}{field}` (README.md and relay/src/config.rs list every key)"
            ),
        };
    }
    let text = if let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    {
        match rest.rsplit_once(", expected ") {
            Some((got, want)) => format!("expected {}, got {}", kind_words(want), got_words(got)),
            None => msg.to_string(),
        }
    } else if msg == "invalid socket address syntax" {
        "expected ip:port, like \"0.0.0.0:993\" or \"[::]:993\" (an address and a port)".to_string()
    } else if msg == "invalid IP address syntax" {
        "expected an IP address, like \"192.0.2.1\" or \"2001:db8::1\"".to_string()
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        format!("the key `{}` is required", rest.trim_end_matches('`'))
    } else {
        msg.to_string()
    };
    match key {
        Some(k) => format!("`{k}`: {text}"),
        None => text,
    }
}

/// What serde expected, in words.
fn kind_words(want: &str) -> String {
    match want {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list in brackets, like [\"…\"]".into(),
        "a string" => "a text in quotes".into(),
        other => other.to_string(),
    }
}

/// What serde got, in words: `string "lots"` → `"lots"`, ``integer `-5` `` → `-5`.
fn got_words(got: &str) -> String {
    for (prefix, words) in [
        ("string ", ""),
        ("integer ", ""),
        ("floating point ", ""),
        ("boolean ", ""),
    ] {
        if let Some(v) = got.strip_prefix(prefix) {
            return format!("{words}{}", v.trim_matches('`'));
        }
    }
    match got {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        other => other.to_string(),
    }
}

/// The known key most like `typo`, if one is close enough to be what was meant.
fn closest<'a>(typo: &str, known: &[&'a str]) -> Option<&'a str> {
    let (best, d) = known
        .iter()
        .map(|k| (*k, edit_distance(typo, k)))
        .min_by_key(|(_, d)| *d)?;
    (d <= (typo.len() / 3).max(2)).then_some(best)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::from_toml(t, Path::new("test.toml"))
    }

    #[test]
    fn tls_mode_defaults_and_acme_rules() {
        let d = "mail_domain = \"chat.example.org\"\n";
        let c = parse(d).unwrap();
        assert_eq!(c.tls_mode(), TlsMode::SelfSigned);
        assert!(c.is_self_signed() && !c.is_acme());
        assert_eq!(
            c.acme_directory,
            "https://acme-v02.api.letsencrypt.org/directory"
        );
        assert_eq!(c.acme_renew_days, 30);
        let files = format!("{d}tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n");
        assert_eq!(parse(&files).unwrap().tls_mode(), TlsMode::Files);
        let acme = parse(&format!("{d}tls = \"acme\"\nacme_email = \"a@b.org\"\n")).unwrap();
        assert!(acme.is_acme() && !acme.is_self_signed());
        let err = |t: &str| parse(t).unwrap_err().to_string();
        assert!(err("mail_domain = \"[192.0.2.1]\"\ntls = \"acme\"\n").contains("IP-literal"));
        assert!(err(&format!("{d}tls = \"files\"\n")).contains("tls_cert"));
        assert!(err(&format!(
            "{d}tls = \"acme\"\nacme_directory = \"http://x/dir\"\n"
        ))
        .contains("https://"));
        assert!(err(&format!("{d}tls = \"letsencrypt\"\n")).contains("tls"));
        assert!(err("mail_domain = \"_chat.example.org\"\ntls = \"acme\"\n").contains("_"));
    }

    #[test]
    fn defaults_follow_the_reference() {
        let c = parse("mail_domain = \"chat.example.org\"").unwrap();
        assert_eq!(c.max_user_send_per_minute, 60);
        assert_eq!(c.max_user_send_burst_size, 10);
        assert_eq!(c.max_mailbox_size, ByteSize(500 * 1024 * 1024));
        assert_eq!(c.max_message_size, 31_457_280);
        assert_eq!(c.delete_mails_after, 20);
        assert_eq!(c.delete_large_after, 7);
        assert_eq!(c.delete_inactive_users_after, 90);
        assert_eq!(
            (
                c.username_min_length,
                c.username_max_length,
                c.password_min_length
            ),
            (9, 9, 9)
        );
        assert_eq!(c.min_free_disk_space, ByteSize(1 << 30));
        assert_eq!(c.min_available_memory, ByteSize(200 << 20));
        assert!(!c.is_ip_literal());
        assert!(c.dns_servers.is_empty());
        assert_eq!(c.dkim_selector, "opendkim");
    }

    #[test]
    fn dns_servers_and_dkim_selector_are_read_and_checked() {
        let c = parse(
            "mail_domain = \"a.org\"\ndns_servers = [\"127.0.0.53:5353\", \"[::1]:53\"]\ndkim_selector = \"2024\"",
        )
        .unwrap();
        assert_eq!(
            c.dns_servers,
            vec![
                "127.0.0.53:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(c.dkim_selector, "2024");
        let e = parse("mail_domain = \"a.org\"\ndns_servers = [\"127.0.0.53\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns_servers"), "{e}");
        let e = parse("mail_domain = \"a.org\"\ndkim_selector = \"../key\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dkim_selector"), "{e}");
    }

    #[test]
    fn iroh_relay_keys() {
        let c = parse("mail_domain = \"a.org\"").unwrap();
        assert!(c.iroh_relay_enabled());
        assert_eq!(c.iroh_relay_max_clients, 500);
        assert_eq!(c.iroh_relay_client_rate, ByteSize(0));
        // IP literals too, as in the reference (announced over http://, see calls::iroh).
        assert!(parse("mail_domain = \"[192.0.2.1]\"")
            .unwrap()
            .iroh_relay_enabled());
        let other = parse("mail_domain = \"a.org\"\niroh_relay = \"https://i.a.org\"").unwrap();
        assert!(!other.iroh_relay_enabled());
        let off = parse("mail_domain = \"a.org\"\niroh_relay_enabled = false").unwrap();
        assert!(!off.iroh_relay_enabled());
        let e = parse(
            "mail_domain = \"a.org\"\niroh_relay = \"https://i.a.org\"\niroh_relay_enabled = true",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("iroh_relay_enabled"), "{e}");
        let e = parse("mail_domain = \"a.org\"\niroh_relay_max_clients = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("iroh_relay_max_clients"), "{e}");
    }

    #[test]
    fn push_metadata_and_metrics_keys() {
        let c = parse("mail_domain = \"a.org\"").unwrap();
        assert_eq!(c.push_url, "https://notifications.delta.chat/notify");
        let d: Vec<u64> = c.push_retry_delays.iter().map(|s| s.0).collect();
        assert_eq!(d, vec![8, 64, 512, 4096]);
        assert_eq!(c.push_give_up_after, Seconds(5 * 3600));
        assert_eq!(c.push_max_tokens, 20);
        assert_eq!(c.iroh_relay, None);
        assert_eq!(c.listen.metrics, vec!["127.0.0.1:9464".parse().unwrap()]);
        let c = parse(
            "mail_domain = \"a.org\"\npush_url = \"http://127.0.0.1:8080/notify\"\n\
             push_retry_delays = [1, \"2s\"]\npush_give_up_after = \"1m\"\n\
             iroh_relay = \"https://iroh.a.org\"\nturn_server = \"a.org:3478:u:p\"\n\
             [listen]\nmetrics = []\n",
        )
        .unwrap();
        assert_eq!(c.push_retry_delays, vec![Seconds(1), Seconds(2)]);
        assert_eq!(c.push_give_up_after, Seconds(60));
        assert_eq!(c.turn_server.as_deref(), Some("a.org:3478:u:p"));
        assert!(c.listen.metrics.is_empty());
        let e = parse("mail_domain = \"a.org\"\npush_url = \"ftp://x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("push_url"), "{e}");
        let l = Listen::standard("127.0.0.2".parse().unwrap(), 20000).unwrap();
        assert_eq!(l.metrics, vec!["127.0.0.2:29464".parse().unwrap()]);
        // `relaybox dev --ip <LAN address>`: everything there but the metrics.
        let l = Listen::standard("192.168.1.20".parse().unwrap(), 0).unwrap();
        assert_eq!(l.imaps, vec!["192.168.1.20:993".parse().unwrap()]);
        assert_eq!(l.metrics, vec!["127.0.0.1:9464".parse().unwrap()]);
        let l = Listen::standard("::".parse().unwrap(), 0).unwrap();
        assert_eq!(l.metrics, vec!["127.0.0.1:9464".parse().unwrap()]);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let e = parse("mail_domain = \"a.org\"\nmax_mailbox_sise = \"1G\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_mailbox_sise"), "{e}");
    }

    #[test]
    fn bad_size_names_the_key_and_the_form() {
        let e = parse("mail_domain = \"a.org\"\nmax_mailbox_size = \"lots\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_mailbox_size"), "{e}");
        assert!(e.contains("500M"), "{e}");
    }

    #[test]
    fn wrong_type_is_refused() {
        let e = parse("mail_domain = \"a.org\"\ndelete_mails_after = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("delete_mails_after"), "{e}");
    }

    #[test]
    fn expiry_time_is_checked() {
        let c = parse("mail_domain = \"a.org\"\nexpiry_time = \"03:30\"").unwrap();
        assert_eq!(c.expiry_minute(), Some(210));
        let e = parse("mail_domain = \"a.org\"\nexpiry_time = \"25:00\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expiry_time"), "{e}");
    }

    #[test]
    fn bare_ipv4_becomes_a_literal() {
        let c = parse("mail_domain = \"127.0.0.2\"").unwrap();
        assert_eq!(c.mail_domain, "[127.0.0.2]");
        assert!(c.is_ip_literal());
        assert_eq!(c.literal_ip(), Some("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn bad_domain_is_refused() {
        let e = parse("mail_domain = \"not a domain\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mail_domain"), "{e}");
        let e = parse("mail_domain = \"[300.1.1.1]\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("IP literal"), "{e}");
    }

    #[test]
    fn sizes_parse_like_the_reference() {
        assert_eq!(ByteSize::parse("500M").unwrap(), ByteSize(500 << 20));
        assert_eq!(ByteSize::parse("1g").unwrap(), ByteSize(1 << 30));
        assert_eq!(ByteSize::parse("200MB").unwrap(), ByteSize(200 << 20));
        assert_eq!(ByteSize::parse("1234").unwrap(), ByteSize(1234));
        assert!(ByteSize::parse("-1M").is_err());
    }

    #[test]
    fn listen_addresses_and_min_max_checks() {
        let c =
            parse("mail_domain = \"a.org\"\n[listen]\nimaps = [\"127.0.0.1:1993\"]\nsmtp = []\n")
                .unwrap();
        assert_eq!(c.listen.imaps, vec!["127.0.0.1:1993".parse().unwrap()]);
        assert!(c.listen.smtp.is_empty());
        assert_eq!(c.listen.submissions[0].port(), 465);
        let e = parse("mail_domain = \"a.org\"\nusername_min_length = 10")
            .unwrap_err()
            .to_string();
        assert!(e.contains("username_min_length"), "{e}");
        let e = parse("mail_domain = \"a.org\"\n[listen]\nimaps = [\"nowhere\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("imaps"), "{e}");
    }

    #[test]
    fn settings_file_overrides_the_config_file_but_not_its_own_location() {
        let dir = tempfile::tempdir().unwrap();
        let base = format!(
            "mail_domain = \"[192.0.2.1]\"\ndata_dir = {:?}\nmax_message_size = 5000\n",
            dir.path().display().to_string()
        );
        let c = Config::from_toml(&base, Path::new("base.toml")).unwrap();
        assert_eq!(
            (c.mail_domain.as_str(), c.max_message_size),
            ("[192.0.2.1]", 5000)
        );

        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            "mail_domain = \"Chat.Example.org\"\ntls = \"acme\"\n",
        )
        .unwrap();
        let c = Config::from_toml(&base, Path::new("base.toml")).unwrap();
        assert_eq!(
            c.mail_domain, "chat.example.org",
            "settings win and are normalised"
        );
        assert_eq!(
            c.max_message_size, 5000,
            "keys the settings leave alone stay"
        );
        assert!(c.is_acme());

        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            "data_dir = \"/elsewhere\"\n",
        )
        .unwrap();
        let e = Config::from_toml(&base, Path::new("base.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("settings.toml") && e.contains("data_dir"), "{e}");

        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            "max_message_size = \"big\"\n",
        )
        .unwrap();
        let e = Config::from_toml(&base, Path::new("base.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("settings.toml"),
            "errors name the settings file: {e}"
        );
    }
}
