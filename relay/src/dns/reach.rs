//! What the wizard's DNS step can find out about reachability from inside the box: whether the
//! network lets the relay out on ports 25 and 443 (home and mobile networks often block 25), and
//! how the domain's address records relate to this box's own addresses. Nothing here can see
//! the router's public address or test inbound ports: a box behind NAT cannot reach itself
//! through its public address on many routers (no hairpin NAT), so the verdicts say what is
//! known and what only an outside check can tell.

use serde::Serialize;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long one outbound connection attempt may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(6);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Probe {
    pub target: String,
    pub ok: bool,
    /// Connect time in milliseconds when it worked.
    pub ms: Option<f64>,
    pub error: Option<String>,
}

/// Connects to every `host:port` at once (TCP only: the handshake is the question) and says which
/// answered.
pub async fn outbound(targets: &[String]) -> Vec<Probe> {
    let probes = targets.iter().map(|t| async move {
        let t0 = Instant::now();
        let r =
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(t.as_str())).await;
        let (ok, error) = match r {
            Ok(Ok(_)) => (true, None),
            Ok(Err(e)) => (false, Some(e.to_string())),
            Err(_) => (
                false,
                Some(format!(
                    "no answer within {} s (a firewall dropping the connection?)",
                    PROBE_TIMEOUT.as_secs()
                )),
            ),
        };
        Probe {
            target: t.clone(),
            ok,
            ms: ok.then(|| (t0.elapsed().as_secs_f64() * 10_000.0).round() / 10.0),
            error,
        }
    });
    futures::future::join_all(probes).await
}

/// The box's own non-loopback addresses, for the DNS and port-forwarding hints.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(s) = a.address else { continue };
            let ip: Option<IpAddr> = if let Some(v4) = s.as_sockaddr_in() {
                Some(v4.ip().into())
            } else {
                s.as_sockaddr_in6().map(|v6| v6.ip().into())
            };
            if let Some(ip) = ip {
                let link_local =
                    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                if !ip.is_loopback() && !link_local && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// The first global IPv6 address among `local` (the box's, from [`local_addresses`]): the one
/// for the AAAA record.
pub fn global_ipv6(local: &[IpAddr]) -> Option<std::net::Ipv6Addr> {
    local.iter().find_map(|ip| match ip {
        IpAddr::V6(v6)
            if is_public(ip) && !v6.is_multicast() && (v6.segments()[0] & 0xe000) == 0x2000 =>
        {
            Some(*v6)
        }
        _ => None,
    })
}

/// One line of `/proc/net/if_inet6`: an IPv6 address of this box with the kernel's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inet6 {
    pub addr: std::net::Ipv6Addr,
    /// `IFA_F_*`, but only the low 8 bits: the kernel prints `(u8) flags`, so
    /// `IFA_F_MANAGETEMPADDR` (0x100) and `IFA_F_STABLE_PRIVACY` (0x800) are not in the file.
    pub flags: u8,
    pub ifname: String,
}

/// `IFA_F_*` from `<linux/if_addr.h>` that fit into the file's 8 bits.
const IFA_F_TEMPORARY: u8 = 0x01;
const IFA_F_DADFAILED: u8 = 0x08;
const IFA_F_DEPRECATED: u8 = 0x20;
const IFA_F_TENTATIVE: u8 = 0x40;
const IFA_F_PERMANENT: u8 = 0x80;

/// The lines of `/proc/net/if_inet6` (`address ifindex prefixlen scope flags name`, hex
/// fields); lines that do not read are left out.
pub fn parse_if_inet6(text: &str) -> Vec<Inet6> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[0].len() != 32 {
            continue;
        }
        let (Ok(bits), Ok(flags)) = (u128::from_str_radix(f[0], 16), u8::from_str_radix(f[4], 16))
        else {
            continue;
        };
        out.push(Inet6 {
            addr: std::net::Ipv6Addr::from(bits),
            flags,
            ifname: f[5].to_string(),
        });
    }
    out
}

/// The global IPv6 address to publish (AAAA, dynamic DNS, the DNS check) among `addrs`: one
/// that outlives the day. Temporary (privacy, RFC 8981) addresses change daily and are not
/// accepted on for long after, deprecated ones are on their way out, tentative or failed ones
/// do not work yet or at all. Of the rest, an address set by hand (permanent) comes first, then
/// an EUI-64 one (from the MAC address), then any other SLAAC address (stable-privacy, RFC
/// 7217, or the `mngtmpaddr` base of the temporary ones; the file cannot tell them apart).
pub fn stable_global_ipv6(addrs: &[Inet6]) -> Option<std::net::Ipv6Addr> {
    let unusable = IFA_F_TEMPORARY | IFA_F_DEPRECATED | IFA_F_TENTATIVE | IFA_F_DADFAILED;
    let rank = |a: &Inet6| {
        let s = a.addr.segments();
        let eui64 = (s[5] & 0xff) == 0xff && (s[6] >> 8) == 0xfe;
        if a.flags & IFA_F_PERMANENT != 0 {
            0
        } else if eui64 {
            1
        } else {
            2
        }
    };
    addrs
        .iter()
        .filter(|a| a.flags & unusable == 0)
        .filter(|a| global_ipv6(&[IpAddr::V6(a.addr)]).is_some())
        .min_by_key(|a| rank(a))
        .map(|a| a.addr)
}

/// This box's IPv6 address for the AAAA record: [`stable_global_ipv6`] over
/// `/proc/net/if_inet6`, or the first global one among `local` where that file cannot be read.
pub fn public_ipv6(local: &[IpAddr]) -> Option<std::net::Ipv6Addr> {
    match std::fs::read_to_string("/proc/net/if_inet6") {
        Ok(text) => stable_global_ipv6(&parse_if_inet6(&text)),
        Err(_) => global_ipv6(local),
    }
}

/// This box's addresses as [`address_verdict`] needs them: [`local_addresses`], plus those of
/// `found` this box holds. An address is this box's if a socket can be bound to it: that also
/// covers what the interface list does not show (127.0.0.0/8, addresses on a local route).
pub fn own_addresses(found: &[IpAddr]) -> Vec<IpAddr> {
    let mut local = local_addresses();
    for ip in found {
        if !local.contains(ip) && std::net::UdpSocket::bind((*ip, 0)).is_ok() {
            local.push(*ip);
        }
    }
    local
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AddressState {
    /// No A/AAAA record found.
    None,
    /// A record names one of this box's own addresses.
    ThisBox,
    /// The box has only private addresses and the record is public: presumably the router's
    /// address, which only an outside check can confirm.
    BehindNat,
    /// The record points somewhere this box is not, as far as it can tell.
    Elsewhere,
}

#[derive(Debug, Clone, Serialize)]
pub struct AddressVerdict {
    pub state: AddressState,
    pub found: Vec<IpAddr>,
    pub local: Vec<IpAddr>,
    pub note: String,
}

/// 100.64.0.0/10, the shared address space of carrier-grade NAT: a provider's many customers
/// behind one public address, none of them reachable from outside.
pub fn is_cgnat(v4: &std::net::Ipv4Addr) -> bool {
    let o = v4.octets();
    o[0] == 100 && (o[1] & 0xc0) == 64
}

/// Reachable from the internet as far as the address itself tells: not private, CGNAT,
/// loopback, link-local, unique-local or documentation space.
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_documentation()
                // carrier-grade NAT, not reachable from outside either
                || is_cgnat(v4))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link local
        }
    }
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How the domain's address records (`found`) relate to this box's addresses (`local`).
pub fn address_verdict(found: &[IpAddr], local: &[IpAddr]) -> AddressVerdict {
    let (state, note) = if found.is_empty() {
        (
            AddressState::None,
            "No A or AAAA record yet: nothing can reach the relay by name.".to_string(),
        )
    } else if let Some(ip) = found.iter().find(|f| local.contains(f)) {
        (
            AddressState::ThisBox,
            format!("The record points at this box directly ({ip})."),
        )
    } else if !local.iter().any(is_public) && found.iter().any(is_public) {
        (
            AddressState::BehindNat,
            format!(
                "This box has only private addresses ({}); {} should be your router's public \
                 address, with the ports above forwarded to this box. That cannot be seen from \
                 inside: check from outside your network (a phone on mobile data).",
                list(local),
                list(found)
            ),
        )
    } else {
        (
            AddressState::Elsewhere,
            format!(
                "The record points at {}, which is not this box (its addresses: {}).",
                list(found),
                if local.is_empty() {
                    "none found".to_string()
                } else {
                    list(local)
                }
            ),
        )
    };
    AddressVerdict {
        state,
        found: found.to_vec(),
        local: local.to_vec(),
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|i| i.parse().unwrap()).collect()
    }

    #[test]
    fn verdicts() {
        let lan = ips(&["192.168.1.20", "fd00::20"]);
        let v = |found: &[&str], local: &[IpAddr]| address_verdict(&ips(found), local).state;
        assert_eq!(v(&[], &lan), AddressState::None);
        assert_eq!(v(&["192.168.1.20"], &lan), AddressState::ThisBox);
        assert_eq!(v(&["203.0.114.7"], &lan), AddressState::BehindNat);
        assert_eq!(v(&["192.168.1.99"], &lan), AddressState::Elsewhere);
        // carrier-grade NAT space is not a public address
        assert_eq!(v(&["100.64.3.4"], &lan), AddressState::Elsewhere);
        let public = ips(&["203.0.114.7", "2a01:4f8::7"]);
        assert_eq!(v(&["2a01:4f8::7"], &public), AddressState::ThisBox);
        assert_eq!(v(&["198.51.99.1"], &public), AddressState::Elsewhere);
        let n = address_verdict(&ips(&["203.0.114.7"]), &lan).note;
        assert!(
            n.contains("router's public address") && n.contains("192.168.1.20"),
            "{n}"
        );
    }

    /// What `/proc/net/if_inet6` shows on a box with SLAAC privacy extensions on
    /// (`ip -6 addr` of a Raspberry Pi on a home network), written as the kernel writes it.
    const IF_INET6: &str = "\
2a0204000b1c7a3c6c2e9d4f11aa03e1 02 40 00 01     eth0
2a0204000b1c7a3c4d5e6f7a8b9c0d1e 02 40 00 00     eth0
2a0204000b1c7a3cba27ebfffe123456 02 40 00 20     eth0
fe80000000000000ba27ebfffe123456 02 40 20 80     eth0
fd000000000000000000000000000002 02 40 00 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
";

    #[test]
    fn proc_if_inet6_is_parsed() {
        let a = parse_if_inet6(IF_INET6);
        assert_eq!(a.len(), 6);
        assert_eq!(
            a[0].addr,
            "2a02:400:b1c:7a3c:6c2e:9d4f:11aa:3e1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
        );
        assert_eq!((a[0].flags, a[0].ifname.as_str()), (0x01, "eth0"));
        assert_eq!((a[5].flags, a[5].ifname.as_str()), (0x80, "lo"));
        assert!(parse_if_inet6("garbage\nzz 01 02\n").is_empty());
        // this machine's own file reads too (every line there is well-formed)
        if let Ok(t) = std::fs::read_to_string("/proc/net/if_inet6") {
            assert_eq!(parse_if_inet6(&t).len(), t.lines().count(), "{t}");
        }
    }

    #[test]
    fn the_published_ipv6_address_is_a_stable_one() {
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        let a = parse_if_inet6(IF_INET6);
        // the temporary one (first in the file) and the deprecated EUI-64 one are passed over
        assert_eq!(
            stable_global_ipv6(&a),
            Some(v6("2a02:400:b1c:7a3c:4d5e:6f7a:8b9c:d1e"))
        );
        let ent = |s: &str, flags| Inet6 {
            addr: v6(s),
            flags,
            ifname: "eth0".into(),
        };
        let stable_privacy = ent("2001:db8:1::4d5e:6f7a:8b9c:d1e", 0);
        let eui64 = ent("2001:db8:1::ba27:ebff:fe12:3456", 0);
        let by_hand = ent("2001:db8:1::25", IFA_F_PERMANENT);
        let temporary = ent("2001:db8:1::6c2e:9d4f:11aa:3e1", IFA_F_TEMPORARY);
        let pick = |l: &[&Inet6]| {
            let l: Vec<Inet6> = l.iter().map(|a| (*a).clone()).collect();
            stable_global_ipv6(&l)
        };
        assert_eq!(
            pick(&[&temporary, &stable_privacy, &eui64]),
            Some(eui64.addr)
        );
        assert_eq!(pick(&[&temporary, &eui64, &by_hand]), Some(by_hand.addr));
        assert_eq!(
            pick(&[&temporary, &stable_privacy]),
            Some(stable_privacy.addr)
        );
        // only a temporary or a tentative address: none to publish
        let tentative = ent("2001:db8:1::7", IFA_F_TENTATIVE);
        assert_eq!(pick(&[&temporary, &tentative]), None);
        // unique-local and link-local addresses are never published
        assert_eq!(
            pick(&[&ent("fd00::2", IFA_F_PERMANENT), &ent("fe80::1", 0)]),
            None
        );
    }

    #[tokio::test]
    async fn outbound_probe_says_which_targets_answer() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open_addr = open.local_addr().unwrap().to_string();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let r = outbound(&[open_addr.clone(), closed.clone()]).await;
        assert!(
            r[0].ok && r[0].ms.is_some() && r[0].error.is_none(),
            "{r:?}"
        );
        assert!(!r[1].ok && r[1].error.is_some(), "{r:?}");
        assert_eq!(
            (r[0].target.as_str(), r[1].target.as_str()),
            (open_addr.as_str(), closed.as_str())
        );
    }
}
