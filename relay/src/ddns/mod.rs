//! Dynamic DNS: keeps the mail domain's A and AAAA records at the box's public addresses. The
//! public IPv4 comes from the router (port mapping's external address, through a watch channel)
//! or from `ddns.ipv4`; the IPv6 is the box's own global address. When either changes, the
//! records are rewritten by RFC 2136 (TSIG-signed) and/or a provider's update URL; a failed
//! update is tried again at the next check.

pub mod http;
pub mod rfc2136;

use crate::config::DdnsConfig;
use crate::sync::LockExt;
use crate::Relay;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The public addresses the records should hold; `None`: that kind is not known (not
/// published, not removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Addresses {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl Addresses {
    fn describe(&self) -> String {
        let v: Vec<String> = [self.ipv4.map(IpAddr::from), self.ipv6.map(IpAddr::from)]
            .into_iter()
            .flatten()
            .map(|i| i.to_string())
            .collect();
        v.join(", ")
    }
}

/// One update attempt, for the admin page.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Unix time.
    pub at: i64,
    pub addresses: String,
    pub ok: bool,
    /// Per method: what the server or provider said.
    pub result: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub enabled: bool,
    /// "rfc2136", "http".
    pub methods: Vec<&'static str>,
    /// What the last check saw.
    pub current: Addresses,
    pub last_check: Option<i64>,
    /// When the next check is due at the latest (Unix time); a new router address brings it
    /// forward.
    pub next_check: Option<i64>,
    pub last_update: Option<Attempt>,
    pub last_success: Option<Attempt>,
    /// Why dynamic DNS does nothing although configured (an IP-literal domain).
    pub note: Option<String>,
}

/// The state the admin page shows.
#[derive(Default)]
pub struct Ddns {
    status: Mutex<Status>,
}

impl Ddns {
    pub fn status(&self) -> Status {
        self.status.lock_or_recover().clone()
    }
}

/// The public addresses now: the configured or router-reported IPv4 if it is public, and
/// `box_ipv6` (the box's stable global IPv6, [`crate::dns::reach::public_ipv6`]) if `ddns.ipv6`
/// is on.
pub fn current(
    cfg: &DdnsConfig,
    router_v4: Option<Ipv4Addr>,
    box_ipv6: Option<Ipv6Addr>,
) -> Addresses {
    let ipv4 = cfg
        .ipv4
        .or(router_v4)
        .filter(|ip| crate::dns::reach::is_public(&IpAddr::V4(*ip)));
    let ipv6 = box_ipv6.filter(|_| cfg.ipv6);
    Addresses { ipv4, ipv6 }
}

/// The public addresses for the DNS step's A/AAAA records: the IPv4 the last DDNS check saw
/// or `ddns.ipv4`, and the box's stable global IPv6.
pub fn public_addresses(relay: &Relay) -> Addresses {
    let seen = relay.ddns.status().current;
    Addresses {
        ipv4: seen.ipv4.or(relay.cfg.ddns.ipv4),
        ipv6: crate::dns::reach::public_ipv6(&crate::dns::reach::local_addresses()),
    }
}

/// Writes `want` with every configured method; what each said, and whether all succeeded.
pub async fn update(
    cfg: &DdnsConfig,
    domain: &str,
    want: Addresses,
    changed: Addresses,
    tls: &tokio_rustls::TlsConnector,
    now: u64,
) -> (bool, String) {
    let mut ok = true;
    let mut said = Vec::new();
    if let Some(server) = cfg.server {
        let tsig = match (&cfg.tsig_key_name, cfg.tsig_key()) {
            (Some(name), Some(key)) => Some(rfc2136::Tsig {
                name: name.clone(),
                algorithm: cfg.tsig_algorithm.clone(),
                key,
            }),
            _ => None,
        };
        let u = rfc2136::Update {
            zone: cfg.zone.as_deref().unwrap_or(domain),
            name: domain,
            ttl: cfg.ttl,
            v4: want.ipv4,
            v6: want.ipv6,
        };
        match rfc2136::send(server, &u, tsig.as_ref(), now).await {
            Ok(()) => said.push(format!("RFC 2136 ({server}): updated")),
            Err(e) => {
                ok = false;
                said.push(format!("RFC 2136 ({server}): {e}"));
            }
        }
    }
    if let Some(template) = &cfg.update_url {
        let v4 = want.ipv4.map(|i| i.to_string()).unwrap_or_default();
        let v6 = want.ipv6.map(|i| i.to_string()).unwrap_or_default();
        // `{ip}`: one request per address that changed; else one with both.
        let urls: Vec<String> = if template.contains("{ip}") {
            [
                changed.ipv4.map(IpAddr::from),
                changed.ipv6.map(IpAddr::from),
            ]
            .into_iter()
            .flatten()
            .map(|ip| http::fill(template, domain, &ip.to_string(), &v4, &v6))
            .collect()
        } else {
            vec![http::fill(template, domain, "", &v4, &v6)]
        };
        for url in urls {
            // The URL may hold a token: only its host goes into the status.
            let host = url
                .parse::<hyper::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_string))
                .unwrap_or_default();
            match http::get(&url, tls).await {
                Ok(t) => said.push(format!("update URL ({host}): {t}")),
                Err(e) => {
                    ok = false;
                    said.push(format!("update URL ({host}): {e}"));
                }
            }
        }
    }
    (ok, said.join("; "))
}

/// Checks the addresses every `ddns.interval` and at once when the router reports a new IPv4,
/// and updates the records when they differ from what was last published. Returns at shutdown;
/// does nothing when not configured.
pub async fn run(relay: Arc<Relay>, mut router_v4: watch::Receiver<Option<Ipv4Addr>>) {
    let cfg = &relay.cfg.ddns;
    if !cfg.enabled() {
        return;
    }
    let domain = relay.cfg.mail_domain.clone();
    {
        let mut s = relay.ddns.status.lock_or_recover();
        s.enabled = true;
        s.methods = [
            cfg.server.map(|_| "rfc2136"),
            cfg.update_url.as_ref().map(|_| "http"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if domain.starts_with('[') {
            s.note =
                Some("the mail domain is an IP address: there are no records to update".into());
            tracing::warn!("ddns is configured, but the mail domain {domain} is an IP address");
            return;
        }
    }
    let tls = match crate::tls::client::Connectors::new(relay.cfg.outbound_ca_file.as_deref()) {
        Ok(c) => c.https_verified,
        Err(e) => {
            tracing::error!("ddns: no TLS client: {e:#}");
            return;
        }
    };
    // What the records hold as far as this process knows; unknown at start, so the first
    // check writes them.
    let mut published = Addresses::default();
    let mut watching = true;
    loop {
        let want = current(
            cfg,
            *router_v4.borrow_and_update(),
            crate::dns::reach::public_ipv6(&crate::dns::reach::local_addresses()),
        );
        let now = relay.clock.now();
        let changed = Addresses {
            ipv4: want.ipv4.filter(|ip| published.ipv4 != Some(*ip)),
            ipv6: want.ipv6.filter(|ip| published.ipv6 != Some(*ip)),
        };
        {
            let mut s = relay.ddns.status.lock_or_recover();
            s.current = want;
            s.last_check = Some(now);
        }
        if changed != Addresses::default() {
            let (ok, result) = update(cfg, &domain, want, changed, &tls, now.max(0) as u64).await;
            let attempt = Attempt {
                at: now,
                addresses: want.describe(),
                ok,
                result,
            };
            if ok {
                tracing::info!(addresses = %attempt.addresses, "ddns: records updated: {}", attempt.result);
                published = Addresses {
                    ipv4: want.ipv4.or(published.ipv4),
                    ipv6: want.ipv6.or(published.ipv6),
                };
            } else {
                tracing::warn!(addresses = %attempt.addresses, "ddns: update failed: {}", attempt.result);
            }
            let mut s = relay.ddns.status.lock_or_recover();
            if ok {
                s.last_success = Some(attempt.clone());
            }
            s.last_update = Some(attempt);
        }
        relay.ddns.status.lock_or_recover().next_check =
            Some(relay.clock.now().saturating_add_unsigned(cfg.interval.0));
        let tick = tokio::time::sleep(std::time::Duration::from_secs(cfg.interval.0));
        tokio::select! {
            _ = tick => {}
            r = router_v4.changed(), if watching => {
                // No sender any more: the router's address will not change; keep the timer.
                watching = r.is_ok();
            }
            _ = relay.shutdown.wait() => return,
        }
    }
}
