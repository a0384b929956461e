//! The one DNS resolver of the relay: MX and address lookups for outbound delivery, TXT lookups
//! for the DNS checks, and DKIM key lookups for the origin check.
//!
//! It wraps mail-auth's `MessageAuthenticator` (itself a hickory `TokioResolver`), so DKIM
//! verification and delivery share one resolver and its response cache. DKIM keys additionally
//! go through [`KeyCache`], the parsed-record cache mail-auth asks before querying.
//!
//! Errors keep what the delivery queue needs to know: NXDOMAIN is permanent, everything that might
//! go away on retry (timeout, SERVFAIL, REFUSED, an unreachable server) is temporary.

pub mod check;
pub mod reach;
pub mod records;

use crate::sync::LockExt;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use mail_auth::{MessageAuthenticator, ResolverCache, Txt};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist. Permanent.
    #[error("domain {0} does not exist")]
    NoDomain(String),
    /// The name cannot be put into a DNS query at all. Permanent.
    #[error("{0:?} is not a valid DNS name")]
    InvalidName(String),
    /// Timeout, SERVFAIL, REFUSED, no server reachable…: worth retrying later.
    #[error("DNS lookup of {name} failed: {reason}")]
    Temporary { name: String, reason: String },
    /// Only from [`Dns::new`]: the resolver configuration is unusable.
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
}

impl DnsError {
    /// Should the caller retry later (4xx) rather than give up (5xx)?
    pub fn is_temporary(&self) -> bool {
        matches!(self, DnsError::Temporary { .. })
    }
}

/// Where mail for a domain goes (RFC 5321 §5.1, RFC 7505).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mx {
    /// The hosts to try, best preference first, lower-case, without the trailing dot. A domain
    /// without MX records gets itself (the implicit MX).
    Hosts(Vec<String>),
    /// `MX 0 .`: the domain accepts no mail.
    Null,
    /// NXDOMAIN.
    NoDomain,
}

/// The most DKIM key records kept, as in the reference (an LRU of 1000 entries).
const KEY_CACHE_ENTRIES: usize = 1000;

/// mail-auth's cache of parsed TXT records (DKIM keys), bounded and honouring each record's TTL.
/// Pinned entries (tests, see [`Dns::pin_dkim_key`]) never expire and are looked at first.
pub struct KeyCache {
    entries: Mutex<HashMap<Box<str>, (Txt, Instant)>>,
    pinned: Mutex<HashMap<Box<str>, Txt>>,
}

impl KeyCache {
    fn new() -> KeyCache {
        KeyCache {
            entries: Mutex::new(HashMap::new()),
            pinned: Mutex::new(HashMap::new()),
        }
    }
}

// A poisoned lock only means another lookup panicked half-way; the map itself is still a valid
// cache, so keep using it rather than failing every later verification.

impl ResolverCache<Box<str>, Txt> for KeyCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(t) = self.pinned.lock_or_recover().get(name) {
            return Some(t.clone());
        }
        let mut entries = self.entries.lock_or_recover();
        match entries.get(name) {
            Some((t, until)) if *until > Instant::now() => Some(t.clone()),
            Some(_) => {
                entries.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.lock_or_recover().remove(name).map(|(t, _)| t)
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: Instant) {
        let mut entries = self.entries.lock_or_recover();
        if entries.len() >= KEY_CACHE_ENTRIES && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            // Still full: drop the entry closest to expiry, which is the one a fresh lookup would
            // have to replace soonest anyway.
            if entries.len() >= KEY_CACHE_ENTRIES {
                if let Some(k) = entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
                {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, (value, valid_until));
    }
}

/// The relay's resolver. Cheap to clone; all clones share the resolver and its caches.
#[derive(Clone)]
pub struct Dns {
    inner: Arc<Inner>,
}

struct Inner {
    auth: MessageAuthenticator,
    keys: KeyCache,
}

/// What one query found, before the caller decides what "nothing" means for its record type.
enum Answer {
    Records(Lookup),
    /// NOERROR without records of this type (the name exists).
    NoData,
    NoDomain,
}

impl Dns {
    /// The system resolver (`/etc/resolv.conf`), or exactly `cfg.dns_servers` when given.
    pub fn new(cfg: &Config) -> Result<Dns, DnsError> {
        let (config, opts) = if cfg.dns_servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| DnsError::Setup(format!("reading /etc/resolv.conf: {e}")))?
        } else {
            let servers = cfg
                .dns_servers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut opts = ResolverOpts::default();
            // "Exactly these servers": no answers from /etc/hosts either, so a test's zone is
            // the whole truth.
            opts.use_hosts_file = ResolveHosts::Never;
            (ResolverConfig::from_name_servers(servers), opts)
        };
        let auth =
            MessageAuthenticator::new(config, opts).map_err(|e| DnsError::Setup(e.to_string()))?;
        Ok(Dns {
            inner: Arc::new(Inner {
                auth,
                keys: KeyCache::new(),
            }),
        })
    }

    /// The mail-auth resolver, for DKIM verification (pass [`Dns::key_cache`] along with it).
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.inner.auth
    }

    /// The cache of parsed DKIM key records that verification reads and fills.
    pub fn key_cache(&self) -> &KeyCache {
        &self.inner.keys
    }

    /// Test hook: answers `name` (e.g. `opendkim._domainkey.a.test`) with this DKIM key record
    /// from now on, without asking DNS; an unparseable record is refused.
    #[cfg(any(test, feature = "testkit"))]
    pub fn pin_dkim_key(&self, name: &str, record: &str) -> Result<(), mail_auth::Error> {
        use mail_auth::common::{parse::TxtRecordParser, verify::DomainKey};
        let key = DomainKey::parse(record.as_bytes())?;
        self.inner
            .keys
            .pinned
            .lock_or_recover()
            .insert(fqdn(name).into_boxed_str(), Txt::from(key));
        Ok(())
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, DnsError> {
        let fq = fqdn(name);
        let qname = Name::from_utf8(&fq).map_err(|_| DnsError::InvalidName(name.to_string()))?;
        match self.inner.auth.resolver().lookup(qname, rtype).await {
            Ok(l) => Ok(Answer::Records(l)),
            Err(NetError::Dns(HickoryDnsError::NoRecordsFound(nr))) => {
                if nr.response_code == ResponseCode::NXDomain {
                    Ok(Answer::NoDomain)
                } else {
                    Ok(Answer::NoData)
                }
            }
            Err(e) => Err(DnsError::Temporary {
                name: name.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Where to deliver mail for `domain` (reference §3.8). A domain literal never reaches DNS:
    /// it is its own single host.
    pub async fn mx(&self, domain: &str) -> Result<Mx, DnsError> {
        if literal_ip(domain).is_some() {
            return Ok(Mx::Hosts(vec![domain.to_string()]));
        }
        match self.query(domain, RecordType::MX).await? {
            Answer::NoDomain => Ok(Mx::NoDomain),
            Answer::NoData => Ok(interpret_mx(domain, &[])),
            Answer::Records(l) => {
                let records: Vec<(u16, String)> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                Ok(interpret_mx(domain, &records))
            }
        }
    }

    /// The A and AAAA addresses of `host`, A first. An IP address or domain literal is returned
    /// as is. A name with no addresses gives an empty list; NXDOMAIN is an error.
    pub async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(ip) = literal_ip(host).or_else(|| host.parse().ok()) {
            return Ok(vec![ip]);
        }
        let (a, aaaa) = tokio::join!(
            self.query(host, RecordType::A),
            self.query(host, RecordType::AAAA)
        );
        let mut ips = Vec::new();
        let mut no_domain = 0;
        let mut first_err = None;
        for answer in [a, aaaa] {
            match answer {
                Ok(Answer::Records(l)) => {
                    ips.extend(l.answers().iter().filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    }))
                }
                Ok(Answer::NoData) => {}
                Ok(Answer::NoDomain) => no_domain += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // One family answering is enough to deliver; the other one's failure does not matter.
        if !ips.is_empty() {
            return Ok(ips);
        }
        match first_err {
            Some(e) => Err(e),
            None if no_domain == 2 => Err(DnsError::NoDomain(host.to_string())),
            None => Ok(ips),
        }
    }

    /// Every record of type `rtype` (`MX`, `TXT`, `CNAME`, `SRV`, `A`, …) at `name` in
    /// presentation form, for the wizard's DNS check: TXT strings joined and unquoted, names as
    /// hickory prints them. `None`: the name does not exist.
    pub async fn rdata(&self, name: &str, rtype: &str) -> Result<Option<Vec<String>>, DnsError> {
        let t: RecordType = rtype.parse().map_err(|_| DnsError::Temporary {
            name: name.to_string(),
            reason: format!("unknown record type {rtype}"),
        })?;
        Ok(match self.query(name, t).await? {
            Answer::NoDomain => None,
            Answer::NoData => Some(Vec::new()),
            Answer::Records(l) => Some(
                l.answers()
                    .iter()
                    .filter(|r| r.record_type() == t)
                    .map(|r| match &r.data {
                        RData::TXT(txt) => txt
                            .txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s))
                            .collect::<String>(),
                        RData::MX(mx) => format!("{} {}", mx.preference, mx.exchange.to_ascii()),
                        other => other.to_string(),
                    })
                    .collect(),
            ),
        })
    }

    /// The TXT records at `name`, each record's strings joined into one. No records: empty.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        match self.query(name, RecordType::TXT).await? {
            Answer::NoDomain => Err(DnsError::NoDomain(name.to_string())),
            Answer::NoData => Ok(Vec::new()),
            Answer::Records(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
        }
    }
}

/// `name.` — queries are always absolute, so no search domain of resolv.conf is ever appended.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The address in a domain literal: `[192.0.2.1]`, `[IPv6:2001:db8::1]` (the tag in any case).
/// A bare IPv6 address in brackets is accepted too, as the config accepts it.
pub fn literal_ip(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let tagged = inner
        .get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("ipv6:"))
        .map(|_| &inner[5..]);
    match tagged {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        None => inner.parse().ok(),
    }
}

/// Turns an MX answer (preference, exchange) into where mail goes. No records: the implicit MX,
/// the domain itself. Only null MX records (exchange `.`): [`Mx::Null`]. RFC 7505 forbids mixing
/// a null MX with others; if a zone does anyway, the real hosts are used. Ties in preference
/// keep the answer's order (servers rotate it), and a host listed twice is tried once.
pub fn interpret_mx(domain: &str, records: &[(u16, String)]) -> Mx {
    if records.is_empty() {
        return Mx::Hosts(vec![domain.trim_end_matches('.').to_ascii_lowercase()]);
    }
    let mut real: Vec<(u16, String)> = records
        .iter()
        .map(|(p, host)| (*p, host.trim_end_matches('.').to_ascii_lowercase()))
        .filter(|(_, host)| !host.is_empty())
        .collect();
    if real.is_empty() {
        return Mx::Null;
    }
    real.sort_by_key(|(p, _)| *p);
    let mut hosts: Vec<String> = Vec::with_capacity(real.len());
    for (_, h) in real {
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    Mx::Hosts(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_ip_accepts_both_families_and_any_tag_case() {
        assert_eq!(
            literal_ip("[192.0.2.1]"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            literal_ip("[IPv6:2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(literal_ip("[ipv6:::1]"), Some("::1".parse().unwrap()));
        assert_eq!(literal_ip("[IPV6:::1]"), Some("::1".parse().unwrap()));
        assert_eq!(literal_ip("[::1]"), Some("::1".parse().unwrap()));
    }

    #[test]
    fn literal_ip_refuses_names_and_malformed_literals() {
        for s in [
            "example.org",
            "192.0.2.1",
            "[192.0.2.1",
            "192.0.2.1]",
            "[300.0.2.1]",
            "[IPv6:192.0.2.1]",
            "[ipv6:]",
            "[]",
            "[example.org]",
            "[ipv6",
        ] {
            assert_eq!(literal_ip(s), None, "{s}");
        }
    }

    fn recs(r: &[(u16, &str)]) -> Vec<(u16, String)> {
        r.iter().map(|(p, h)| (*p, h.to_string())).collect()
    }

    #[test]
    fn mx_hosts_are_sorted_by_preference_lowercased_and_deduplicated() {
        let mx = interpret_mx(
            "a.test",
            &recs(&[
                (20, "B.mx.test."),
                (10, "a.mx.test."),
                (20, "c.mx.test."),
                (30, "a.mx.test."),
            ]),
        );
        assert_eq!(
            mx,
            Mx::Hosts(vec![
                "a.mx.test".into(),
                "b.mx.test".into(),
                "c.mx.test".into()
            ])
        );
    }

    #[test]
    fn no_mx_records_means_the_domain_itself() {
        assert_eq!(
            interpret_mx("Implicit.test.", &[]),
            Mx::Hosts(vec!["implicit.test".into()])
        );
    }

    #[test]
    fn a_lone_root_exchange_is_a_null_mx() {
        assert_eq!(interpret_mx("n.test", &recs(&[(0, ".")])), Mx::Null);
        assert_eq!(interpret_mx("n.test", &recs(&[(0, "")])), Mx::Null);
    }

    #[test]
    fn a_null_mx_mixed_with_real_hosts_is_ignored() {
        assert_eq!(
            interpret_mx("n.test", &recs(&[(0, "."), (10, "mx.n.test.")])),
            Mx::Hosts(vec!["mx.n.test".into()])
        );
    }

    #[test]
    fn resolver_is_shared_across_tasks() {
        fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
        send_sync_clone::<Dns>();
    }

    #[test]
    fn nxdomain_and_bad_names_are_permanent_the_rest_temporary() {
        assert!(!DnsError::NoDomain("x".into()).is_temporary());
        assert!(!DnsError::InvalidName("x".into()).is_temporary());
        assert!(DnsError::Temporary {
            name: "x".into(),
            reason: "timeout".into()
        }
        .is_temporary());
    }

    #[tokio::test]
    async fn servfail_is_a_temporary_error_for_every_lookup() {
        let dir = std::env::temp_dir();
        let mut cfg = Config::with_domain("a.test", &dir).unwrap();
        cfg.dns_servers = vec![crate::testkit::servfail_server()];
        let dns = Dns::new(&cfg).unwrap();
        let mx = dns.mx("a.test").await.unwrap_err();
        assert!(mx.is_temporary(), "{mx}");
        assert!(dns.ips("a.test").await.unwrap_err().is_temporary());
        assert!(dns.txt("a.test").await.unwrap_err().is_temporary());
    }

    #[tokio::test]
    async fn literals_never_reach_dns() {
        // A server that does not exist: any query would fail, so success proves none was made.
        let dir = std::env::temp_dir();
        let mut cfg = Config::with_domain("a.test", &dir).unwrap();
        cfg.dns_servers = vec!["127.0.0.1:9".parse().unwrap()];
        let dns = Dns::new(&cfg).unwrap();
        assert_eq!(
            dns.mx("[192.0.2.1]").await.unwrap(),
            Mx::Hosts(vec!["[192.0.2.1]".into()])
        );
        assert_eq!(
            dns.ips("[IPv6:2001:db8::1]").await.unwrap(),
            vec!["2001:db8::1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            dns.ips("192.0.2.7").await.unwrap(),
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
    }
}
