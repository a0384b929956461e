//! What to ask the router for and what its answers mean, without any I/O: the ports to map from
//! the listeners, what the router's external address says about reachability, and when to
//! renew.

use super::Protocol;
use crate::config::{Listen, PortRange};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The lease asked for. Routers forget mappings when they reboot, and a box that is unplugged
/// should not leave ports open for long; an hour renewed at half-time covers both.
pub const LEASE_SECS: u32 = 3600;

/// One port to map: the router's `external` port to this box's `internal` one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub service: &'static str,
    pub protocol: Protocol,
    pub external: u16,
    pub internal: u16,
    /// The listener's own address when it is bound to one (the mapping must point there),
    /// `None` when it listens on every address.
    #[serde(skip)]
    pub bound: Option<Ipv4Addr>,
}

/// The ports the world connects to, most useful first: 443 alone carries relay-to-relay
/// delivery (`/mxdeliv`) and every client protocol (ALPN), so it is asked for before routers
/// run out of room or patience; 80 last, only ACME HTTP-01 needs it.
pub fn targets(l: &Listen) -> Vec<Target> {
    let services: [(&'static str, u16, &Vec<SocketAddr>); 7] = [
        ("HTTPS, IMAP and SMTP over 443", 443, &l.https),
        ("SMTP from other relays", 25, &l.smtp),
        ("SMTPS (Delta Chat sends)", 465, &l.submissions),
        ("SMTP submission", 587, &l.submission),
        ("IMAPS (Delta Chat fetches)", 993, &l.imaps),
        ("IMAP", 143, &l.imap),
        ("HTTP (certificates, ACME)", 80, &l.http),
    ];
    let mut out = Vec::new();
    for (service, external, addrs) in services {
        // A mapping forwards IPv4 from the router to one host: only an IPv4 listener that is
        // not confined to this machine can take it.
        let usable = addrs.iter().find_map(|a| match a.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => Some((a.port(), None)),
            IpAddr::V4(v4) if !v4.is_loopback() => Some((a.port(), Some(v4))),
            // `[::]` takes IPv4 too on Linux unless IPV6_V6ONLY is set.
            IpAddr::V6(v6) if v6.is_unspecified() => Some((a.port(), None)),
            _ => None,
        });
        if let Some((internal, bound)) = usable {
            out.push(Target {
                service,
                protocol: Protocol::Tcp,
                external,
                internal,
                bound,
            });
        }
    }
    out
}

/// TURN's UDP ports, for a relay that serves TURN on `listen_ip` (see
/// `calls::server::listen_ip`): the server port, then every relay port. UPnP-IGD, NAT-PMP and
/// PCP map single ports only, so a range costs one request per port; the relay range is kept
/// small for that reason (100 ports by default). The ports are the same outside and in: the
/// TURN server announces its relay ports as they are.
pub fn turn_targets(listen_ip: IpAddr, port: u16, relay: PortRange) -> Vec<Target> {
    let bound = match listen_ip {
        IpAddr::V4(v4) if v4.is_unspecified() => None,
        IpAddr::V4(v4) if !v4.is_loopback() => Some(v4),
        IpAddr::V6(v6) if v6.is_unspecified() => None,
        _ => return Vec::new(),
    };
    let one = |service, p| Target {
        service,
        protocol: Protocol::Udp,
        external: p,
        internal: p,
        bound,
    };
    std::iter::once(one("TURN (Delta Chat calls)", port))
        .chain((relay.0..=relay.1).map(|p| one("TURN relay (call media)", p)))
        .collect()
}

/// What the router's external address says about reaching this box from the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// A public address: the mappings make the box reachable there.
    Public,
    /// Carrier-grade NAT (100.64.0.0/10): the provider shares one public address among many
    /// customers; nothing can be forwarded through it.
    Cgnat,
    /// Another private address: this router sits behind a second router.
    Private,
    /// The router says it has no address it could forward from (what miniupnpd answers when its
    /// WAN address is private or CGNAT).
    NoPublicAddress,
    /// The router did not say.
    Unknown,
}

pub fn classify(ip: Option<Ipv4Addr>) -> Reach {
    let Some(ip) = ip else { return Reach::Unknown };
    let o = ip.octets();
    if ip.is_unspecified() {
        Reach::NoPublicAddress
    } else if crate::dns::reach::is_cgnat(&ip) {
        Reach::Cgnat
    } else if ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        // 198.18.0.0/15, benchmarking; never routed on the internet
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        Reach::Private
    } else {
        Reach::Public
    }
}

/// For people: what the external address means and what to do about it.
pub fn reach_note(reach: Reach, ip: Option<Ipv4Addr>) -> String {
    let ip = ip.map_or_else(|| "unknown".to_string(), |i| i.to_string());
    match reach {
        Reach::Public => {
            format!("The router's public address is {ip}: point the domain's A record there.")
        }
        Reach::Cgnat => format!(
            "This connection cannot receive from the internet: the router's external address \
             {ip} is carrier-grade NAT (100.64.0.0/10), shared with other customers of your \
             provider, so nothing from outside can be forwarded to this box. Ask your provider \
             for a public IPv4 address (often free, sometimes called \"dual stack\" instead of \
             \"DS-Lite\"), use IPv6 if the provider gives you a global IPv6 address, or run the \
             relay on a server with a public address."
        ),
        Reach::Private => format!(
            "This connection cannot receive from the internet as it is: the router's external \
             address {ip} is itself private, so there is a second router (a provider's modem \
             or another router) in front of it. Put that one into bridge mode, or forward the \
             same ports on it to this router ({ip}), or ask the provider for a public address."
        ),
        Reach::NoPublicAddress => "This connection cannot receive from the internet: the \
             router says it has no public address to forward from. Its own connection is \
             probably behind the provider's carrier-grade NAT or behind another router. Ask \
             your provider for a public IPv4 address, put a modem in front into bridge mode, use \
             IPv6 if the provider gives you a global IPv6 address, or run the relay on a server \
             with a public address."
            .to_string(),
        Reach::Unknown => "The router did not tell its external address.".to_string(),
    }
}

/// When to ask again for a lease the router granted for `lease_secs` (0: until removed): at
/// half-time, as RFC 6886 recommends, but not more often than every 30 s (a router granting
/// tiny leases should not be flooded), and every 20 minutes for a permanent mapping, which a
/// router reboot drops as well.
pub fn renew_after(lease_secs: u32) -> Duration {
    if lease_secs == 0 {
        return Duration::from_secs(20 * 60);
    }
    Duration::from_secs(u64::from(lease_secs / 2).max(30))
}

/// The IPv4 default gateway from `/proc/net/route`'s text: the router a box on a home network
/// asks for NAT-PMP.
pub fn default_gateway(proc_net_route: &str) -> Option<Ipv4Addr> {
    for line in proc_net_route.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags ...; the fields are little-endian hex on every
        // platform relaybox runs on (x86-64, arm64).
        if f.len() < 4 || f[1] != "00000000" {
            continue;
        }
        let flags = u32::from_str_radix(f[3], 16).ok()?;
        // RTF_UP | RTF_GATEWAY
        if flags & 0x3 != 0x3 {
            continue;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        return Some(Ipv4Addr::from(gw.swap_bytes()));
    }
    None
}

/// The IPv6 default router from `/proc/net/ipv6_route`'s text, with its interface's name (a
/// link-local router address needs it): where the PCP server for IPv6 pinholes is asked.
pub fn default_gateway6(proc_net_ipv6_route: &str) -> Option<(std::net::Ipv6Addr, String)> {
    for line in proc_net_ipv6_route.lines() {
        // dest dest_len src src_len next_hop metric refcnt use flags ifname
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[1] != "00" || u128::from_str_radix(f[0], 16).ok() != Some(0) {
            continue;
        }
        let (Ok(hop), Ok(flags)) = (
            u128::from_str_radix(f[4], 16),
            u32::from_str_radix(f[8], 16),
        ) else {
            continue;
        };
        // RTF_UP | RTF_GATEWAY, and not the "unreachable" default the kernel keeps on lo
        if flags & 0x3 == 0x3 && hop != 0 {
            return Some((std::net::Ipv6Addr::from(hop), f[9].to_string()));
        }
    }
    None
}

/// The ports to open in an IPv6 firewall: the same ones, where the listener takes IPv6 on its
/// standard port (a pinhole lets through, it does not translate ports).
pub fn pinhole_targets(targets: &[Target]) -> Vec<Target> {
    targets
        .iter()
        .filter(|t| t.bound.is_none() && t.internal == t.external)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_in_use_are_mapped_443_first_and_loopback_ones_not() {
        let l = Listen::standard("0.0.0.0".parse().unwrap(), 0).unwrap();
        let t = targets(&l);
        let ext: Vec<u16> = t.iter().map(|t| t.external).collect();
        assert_eq!(ext, vec![443, 25, 465, 587, 993, 143, 80]);
        assert!(t
            .iter()
            .all(|t| t.external == t.internal && t.bound.is_none() && t.protocol == Protocol::Tcp));

        // dev relays on loopback have nothing a router could forward to
        let lo = Listen::standard("127.0.0.1".parse().unwrap(), 10000).unwrap();
        assert_eq!(targets(&lo), vec![]);

        // a port offset maps the standard external port to the shifted internal one; a
        // switched-off service is not asked for
        let mut l = Listen::standard("192.168.1.20".parse().unwrap(), 10000).unwrap();
        l.imap.clear();
        let t = targets(&l);
        assert_eq!(t[0].external, 443);
        assert_eq!(t[0].internal, 10443);
        assert_eq!(t[0].bound, Some(Ipv4Addr::new(192, 168, 1, 20)));
        assert!(!t.iter().any(|t| t.external == 143));
    }

    #[test]
    fn turn_ports_are_mapped_as_udp_the_server_port_first() {
        let t = turn_targets("0.0.0.0".parse().unwrap(), 3478, PortRange(49152, 49251));
        assert_eq!(t.len(), 101);
        assert!(t
            .iter()
            .all(|t| t.protocol == Protocol::Udp && t.external == t.internal && t.bound.is_none()));
        assert_eq!(
            (t[0].external, t[1].external, t[100].external),
            (3478, 49152, 49251)
        );
        let on = turn_targets(
            "192.168.1.20".parse().unwrap(),
            3478,
            PortRange(50000, 50001),
        );
        assert_eq!(on.len(), 3);
        assert_eq!(on[2].bound, Some(Ipv4Addr::new(192, 168, 1, 20)));
        // TURN on loopback (a dev relay): nothing a router could forward to
        assert_eq!(
            turn_targets("127.0.0.1".parse().unwrap(), 3478, PortRange(50000, 50001)),
            vec![]
        );
    }

    #[test]
    fn external_addresses_are_classified() {
        let c = |s: &str| classify(Some(s.parse().unwrap()));
        assert_eq!(c("203.0.113.7"), Reach::Public);
        assert_eq!(c("100.64.0.1"), Reach::Cgnat);
        assert_eq!(c("100.127.255.254"), Reach::Cgnat);
        assert_eq!(c("100.128.0.1"), Reach::Public);
        assert_eq!(c("192.168.178.1"), Reach::Private);
        assert_eq!(c("10.1.2.3"), Reach::Private);
        assert_eq!(c("0.0.0.0"), Reach::NoPublicAddress);
        let n = reach_note(Reach::NoPublicAddress, None);
        assert!(n.contains("cannot receive from the internet"), "{n}");
        assert_eq!(classify(None), Reach::Unknown);
        let n = reach_note(Reach::Cgnat, Some("100.64.0.1".parse().unwrap()));
        assert!(n.contains("cannot receive from the internet"), "{n}");
        assert!(n.contains("public IPv4"), "{n}");
    }

    #[test]
    fn leases_are_renewed_at_half_time_within_bounds() {
        assert_eq!(renew_after(3600), Duration::from_secs(1800));
        assert_eq!(renew_after(10), Duration::from_secs(30));
        assert_eq!(renew_after(0), Duration::from_secs(1200));
    }

    #[test]
    fn ipv6_default_router_is_read_from_the_route_table() {
        // as a box on a home network has it (router advertisement: link-local next hop)
        let t = "\
2a0204000b1c7a3c0000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00040001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe80000000000000020c29fffe3d4e5f 00000400 00000002 00000000 00450003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        let (gw, dev) = default_gateway6(t).unwrap();
        assert_eq!(
            gw,
            "fe80::20c:29ff:fe3d:4e5f"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
        );
        assert_eq!(dev, "eth0");
        // only the kernel's unreachable default: no router
        assert_eq!(default_gateway6(t.lines().nth(2).unwrap()), None);
        assert_eq!(default_gateway6(""), None);
    }

    #[test]
    fn default_gateway_is_read_from_the_route_table() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_gateway(t), Some(Ipv4Addr::new(192, 168, 2, 1)));
        assert_eq!(default_gateway("Iface\tDestination\n"), None);
    }
}
