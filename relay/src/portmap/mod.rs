//! Automatic port mapping on the home router (`port_mapping = "auto"`): the ports the relay
//! listens on are asked for with UPnP-IGD, or NAT-PMP when no UPnP router answers, renewed
//! before their lease runs out and removed at shutdown. The outcome per port (mapped, refused
//! by the router, no router support) and what the router's external address means for
//! reachability are kept in a [`Status`] for the wizard and the admin page.
//!
//! `natpmp` is the pure protocol, `plan` the pure policy (which ports, what an address means,
//! when to renew), `client` the I/O; this file runs the loop.

pub mod client;
pub mod natpmp;
pub mod pcp;
pub mod plan;

use crate::config::PortMapping;
use crate::Relay;
use client::{Outcome, Pcp, Router};
use plan::{Reach, Target};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// After an attempt that mapped nothing (no router, all refused), the next one comes this much
/// later: a router may be plugged in or switched on, but searching costs a multicast burst.
const RETRY_UNMAPPED: Duration = Duration::from_secs(10 * 60);
/// Removing the mappings at shutdown may take this long at most.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a port carries: the mail and web listeners TCP, TURN UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn suffix(self) -> &'static str {
        match self {
            Protocol::Tcp => "",
            Protocol::Udp => "/udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// `port_mapping = "off"`.
    Off,
    /// No listener a router could forward to (all on loopback).
    NothingToMap,
    /// Asking the router now.
    Working,
    /// The last attempt is over; see the ports.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortResult {
    Mapped,
    RefusedByRouter,
    NoRouterSupport,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortStatus {
    pub service: &'static str,
    pub protocol: Protocol,
    /// The router's port.
    pub external: u16,
    /// The relay's port it forwards to.
    pub internal: u16,
    pub result: PortResult,
    /// The router's reason for a refusal, or the lease.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: State,
    /// "UPnP-IGD at 192.168.1.1" or "NAT-PMP at …"; `None` when no router answered.
    pub router: Option<String>,
    /// This box's address the mappings point at.
    pub local_ipv4: Option<Ipv4Addr>,
    /// The router's external address, as it said.
    pub external_ipv4: Option<Ipv4Addr>,
    pub reach: Reach,
    /// For people: the verdict and what to do.
    pub note: String,
    pub ports: Vec<PortStatus>,
    /// When the last attempt ended (Unix time).
    pub checked: Option<i64>,
    /// IPv6: this box's stable global address, which needs no forward, only a way through the
    /// router's firewall.
    pub ipv6: Option<Ipv6Addr>,
    /// "PCP at fe80::1%2" when the IPv6 router takes pinholes.
    pub ipv6_router: Option<String>,
    /// For people: what was done for IPv6.
    pub ipv6_note: String,
    /// The IPv6 firewall pinholes, per port.
    pub pinholes: Vec<PortStatus>,
}

impl Status {
    fn initial(mode: PortMapping) -> Status {
        let (state, note) = match mode {
            PortMapping::Off => (
                State::Off,
                "Automatic port mapping is off (port_mapping = \"off\"): forward the ports on \
                 the router by hand.",
            ),
            PortMapping::Auto => (State::Working, "Asking the router…"),
        };
        Status {
            state,
            router: None,
            local_ipv4: None,
            external_ipv4: None,
            reach: Reach::Unknown,
            note: note.to_string(),
            ports: Vec::new(),
            checked: None,
            ipv6: None,
            ipv6_router: None,
            ipv6_note: String::new(),
            pinholes: Vec::new(),
        }
    }
}

/// The shared side of port mapping: the latest [`Status`], the public IPv4 address, and the
/// "try again" signal.
pub struct PortMap {
    status: watch::Sender<Status>,
    public: watch::Sender<Option<Ipv4Addr>>,
    retry: Notify,
}

impl PortMap {
    pub fn new(mode: PortMapping) -> PortMap {
        PortMap {
            status: watch::Sender::new(Status::initial(mode)),
            public: watch::Sender::new(None),
            retry: Notify::new(),
        }
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// The box's public IPv4 address as the router reports it: `Some` only when the router's
    /// external address is a public one (not private, not carrier-grade NAT), updated at every
    /// renewal. What dynamic DNS should publish as the A record.
    pub fn public_ipv4(&self) -> watch::Receiver<Option<Ipv4Addr>> {
        self.public.subscribe()
    }

    /// Asks the router again now, and waits (at most `limit`) until that attempt is over.
    pub async fn retry(&self, limit: Duration) -> Status {
        if self.status.borrow().state != State::Done {
            return self.status();
        }
        let mut rx = self.status.subscribe();
        rx.mark_unchanged();
        self.retry.notify_one();
        let _ = tokio::time::timeout(limit, async {
            // First "working", then the outcome.
            while rx.changed().await.is_ok() {
                if rx.borrow_and_update().state == State::Done {
                    break;
                }
            }
        })
        .await;
        self.status()
    }

    fn publish(&self, s: Status) {
        let public = (s.reach == Reach::Public)
            .then_some(s.external_ipv4)
            .flatten();
        self.public.send_if_modified(|p| {
            let changed = *p != public;
            *p = public;
            changed
        });
        self.status.send_replace(s);
    }
}

/// What is mapped right now, for renewal and removal.
struct Held {
    router: Router,
    local: Ipv4Addr,
    mapped: Vec<(Target, u32)>,
}

/// The IPv6 pinholes open right now.
struct Held6 {
    pcp: Pcp,
    mapped: Vec<(Target, u32)>,
}

/// Maps, renews and finally removes the ports; ends after removing them once the relay shuts
/// down. The server waits for that (bounded) before it exits.
pub async fn run(relay: Arc<Relay>) {
    let pm = &relay.portmap;
    if relay.cfg.port_mapping == PortMapping::Off {
        return;
    }
    let mut targets = plan::targets(&relay.cfg.listen);
    if relay.cfg.turn_enabled() {
        targets.extend(plan::turn_targets(
            crate::calls::server::listen_ip(&relay.cfg),
            relay.cfg.turn_port,
            relay.cfg.turn_relay_ports,
        ));
    }
    if targets.is_empty() {
        let mut s = Status::initial(PortMapping::Auto);
        s.state = State::NothingToMap;
        s.note = "Every listener is on a loopback address: there is nothing a router could \
                  forward to."
            .into();
        pm.publish(s);
        return;
    }
    // PCP mapping nonces: one key per run, so renewals match and a restart starts afresh.
    let key: [u8; 8] = rand::random();
    let mut held: Option<Held> = None;
    let mut held6: Option<Held6> = None;
    loop {
        pm.status.send_modify(|s| s.state = State::Working);
        // A shutdown does not wait for a round in progress (a slow router can take 10 s a
        // request); what it mapped runs out with its lease, and what was held is removed below.
        let round = async {
            let (mut status, now_held) = attempt(&targets, relay.clock.now(), key).await;
            let now_held6 = attempt6(&targets, key, &mut status).await;
            (status, now_held, now_held6)
        };
        let (status, now_held, now_held6) = tokio::select! {
            r = round => r,
            _ = relay.shutdown.wait() => break,
        };
        if let Some(old) = held6.take() {
            if now_held6.as_ref().map(|h| h.pcp.at) != Some(old.pcp.at) {
                remove6(&old).await;
            }
        }
        // A different router (or none) now: the old one's mappings are given back.
        if let Some(old) = held.take() {
            let same = now_held
                .as_ref()
                .is_some_and(|h| h.router.describe() == old.router.describe());
            if !same {
                remove(&old).await;
            }
        }
        let wait = now_held
            .iter()
            .flat_map(|h| &h.mapped)
            .chain(now_held6.iter().flat_map(|h| &h.mapped))
            .map(|(_, lease)| plan::renew_after(*lease))
            .min()
            .unwrap_or(RETRY_UNMAPPED);
        log_outcome(&status);
        pm.publish(status);
        held = now_held.filter(|h| !h.mapped.is_empty());
        held6 = now_held6.filter(|h| !h.mapped.is_empty());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = pm.retry.notified() => {}
            _ = relay.shutdown.wait() => break,
        }
    }
    let both = async {
        if let Some(h) = &held {
            remove(h).await;
            tracing::info!(router = %h.router.describe(), "port mappings removed");
        }
        if let Some(h) = &held6 {
            remove6(h).await;
            tracing::info!(router = %h.pcp.at, "IPv6 pinholes removed");
        }
    };
    if tokio::time::timeout(REMOVE_TIMEOUT, both).await.is_err() {
        tracing::warn!("the router did not confirm the removal of every port mapping in time");
    }
}

async fn remove(h: &Held) {
    for (t, _) in &h.mapped {
        h.router.unmap(t.bound.unwrap_or(h.local), t).await;
    }
}

async fn remove6(h: &Held6) {
    for (t, _) in &h.mapped {
        h.pcp.unmap(t).await;
    }
}

fn log_outcome(s: &Status) {
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|p| format!("{}{}:{:?}", p.external, p.protocol.suffix(), p.result))
        .collect();
    tracing::info!(
        router = s.router.as_deref().unwrap_or("none"),
        external = ?s.external_ipv4,
        reach = ?s.reach,
        ports = %ports.join(" "),
        "port mapping"
    );
    if s.ipv6.is_some() {
        let pinholes: Vec<String> = s
            .pinholes
            .iter()
            .map(|p| format!("{}{}:{:?}", p.external, p.protocol.suffix(), p.result))
            .collect();
        tracing::info!(
            router = s.ipv6_router.as_deref().unwrap_or("none"),
            address = ?s.ipv6,
            pinholes = %pinholes.join(" "),
            "IPv6 pinholes"
        );
    }
}

/// The IPv6 part of a round: with a stable global address and an IPv6 router that speaks PCP,
/// a pinhole per port; what happened goes into `s`.
async fn attempt6(targets: &[Target], key: [u8; 8], s: &mut Status) -> Option<Held6> {
    s.ipv6 = crate::dns::reach::public_ipv6(&crate::dns::reach::local_addresses());
    let Some(v6) = s.ipv6 else {
        s.ipv6_note = "This box has no global IPv6 address.".into();
        return None;
    };
    let route = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let Some((gw, dev)) = plan::default_gateway6(&route) else {
        s.ipv6_note = format!("This box has the IPv6 address {v6} but no IPv6 router.");
        return None;
    };
    // A link-local router address is only meaningful with its interface.
    let scope = if (gw.segments()[0] & 0xffc0) == 0xfe80 {
        nix::net::if_::if_nametoindex(dev.as_str()).unwrap_or(0)
    } else {
        0
    };
    let at = SocketAddr::V6(SocketAddrV6::new(gw, natpmp::PORT, 0, scope));
    let pcp = match Pcp::find(at, IpAddr::V6(v6), key).await {
        Ok(p) => p,
        Err(e) => {
            s.ipv6_note = format!(
                "The IPv6 router {gw} does not answer PCP ({e}). If its firewall blocks \
                 connections from the internet (most do), allow the ports below to {v6} in its \
                 settings."
            );
            return None;
        }
    };
    s.ipv6_router = Some(format!("PCP at {gw}"));
    let mut mapped = Vec::new();
    for t in plan::pinhole_targets(targets) {
        let ps = match pcp.map(&t, plan::LEASE_SECS).await {
            Outcome::Mapped(lease) => {
                mapped.push((t.clone(), lease));
                port_status(&t, PortResult::Mapped, format!("lease {lease} s"))
            }
            Outcome::Refused(why) => port_status(&t, PortResult::RefusedByRouter, why),
        };
        s.pinholes.push(ps);
    }
    let opened = s
        .pinholes
        .iter()
        .filter(|p| p.result == PortResult::Mapped)
        .count();
    s.ipv6_note = format!(
        "The IPv6 router's firewall lets {opened} of {} ports through to {v6}: point the AAAA \
         record there.",
        s.pinholes.len()
    );
    Some(Held6 { pcp, mapped })
}

/// One round: find the router, ask for every port, learn its external address.
async fn attempt(targets: &[Target], now: i64, key: [u8; 8]) -> (Status, Option<Held>) {
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let mut s = Status::initial(PortMapping::Auto);
    s.state = State::Done;
    s.checked = Some(now);
    let router = match client::find(plan::default_gateway(&route), key).await {
        Ok(r) => r,
        Err(why) => {
            s.note = format!(
                "No router support: {why}. Switch on UPnP or NAT-PMP in the router's settings, \
                 or forward the ports below by hand."
            );
            s.ports = targets
                .iter()
                .map(|t| port_status(t, PortResult::NoRouterSupport, String::new()))
                .collect();
            return (s, None);
        }
    };
    s.router = Some(router.describe());
    let Some(local) = router.local_address().await else {
        s.note = "This box has no IPv4 address on the router's network.".into();
        s.ports = targets
            .iter()
            .map(|t| port_status(t, PortResult::NoRouterSupport, String::new()))
            .collect();
        return (s, None);
    };
    s.local_ipv4 = Some(local);
    let mut mapped = Vec::new();
    for t in targets {
        // A listener bound to one address can only be forwarded to that address.
        let at = t.bound.unwrap_or(local);
        let ps = match router.map(at, t).await {
            Outcome::Mapped(lease) => {
                mapped.push((t.clone(), lease));
                let detail = if lease == 0 {
                    "until the relay stops".to_string()
                } else {
                    format!("lease {lease} s, renewed at half-time")
                };
                port_status(t, PortResult::Mapped, detail)
            }
            Outcome::Refused(why) => port_status(t, PortResult::RefusedByRouter, why),
        };
        s.ports.push(ps);
    }
    // Asked after the mappings: a PCP router tells it only in its answers to them.
    let external = router.external_address().await;
    let ext = external.as_ref().ok().copied();
    s.external_ipv4 = ext.filter(|a| !a.is_unspecified());
    s.reach = plan::classify(ext);
    s.note = match &external {
        Err(e) => format!("The router did not tell its external address: {e}."),
        Ok(_) => plan::reach_note(s.reach, ext),
    };
    (
        s,
        Some(Held {
            router,
            local,
            mapped,
        }),
    )
}

fn port_status(t: &Target, result: PortResult, detail: String) -> PortStatus {
    PortStatus {
        service: t.service,
        protocol: t.protocol,
        external: t.external,
        internal: t.internal,
        result,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(reach: Reach, ext: &str) -> Status {
        let mut s = Status::initial(PortMapping::Auto);
        s.state = State::Done;
        s.reach = reach;
        s.external_ipv4 = ext.parse().ok();
        s
    }

    /// Dynamic DNS gets the router's external address only when the internet can reach it.
    #[test]
    fn only_a_public_external_address_is_offered_as_the_public_ipv4() {
        let pm = PortMap::new(PortMapping::Auto);
        let rx = pm.public_ipv4();
        pm.publish(done(Reach::Cgnat, "100.64.0.9"));
        assert_eq!(*rx.borrow(), None);
        pm.publish(done(Reach::Public, "81.2.69.2"));
        assert_eq!(*rx.borrow(), Some(Ipv4Addr::new(81, 2, 69, 2)));
        pm.publish(done(Reach::NoPublicAddress, ""));
        assert_eq!(*rx.borrow(), None);
        assert_eq!(pm.status().reach, Reach::NoPublicAddress);
    }

    /// "Retry" while mapping is off, or while a round runs, answers at once with the status.
    #[tokio::test]
    async fn retry_does_not_wait_when_nothing_would_run() {
        let pm = PortMap::new(PortMapping::Off);
        let t0 = std::time::Instant::now();
        assert_eq!(pm.retry(Duration::from_secs(20)).await.state, State::Off);
        let pm = PortMap::new(PortMapping::Auto);
        assert_eq!(
            pm.retry(Duration::from_secs(20)).await.state,
            State::Working
        );
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
