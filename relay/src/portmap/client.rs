//! Talking to the router: UPnP-IGD through `igd-next`, NAT-PMP over one UDP socket with the
//! messages of [`super::natpmp`]. Every call is bounded in time; what a router answers is
//! turned into an [`Outcome`] here and judged in [`super::plan`] and [`super`].

use super::natpmp;
use super::pcp;
use super::plan::{Target, LEASE_SECS};
use super::Protocol;
use igd_next::aio::tokio::Tokio;
use igd_next::aio::Gateway;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::UdpSocket;

/// How long the SSDP search for a UPnP router waits for answers. Home routers answer within
/// milliseconds; a network without one should not hold the status page up for long.
const UPNP_SEARCH: Duration = Duration::from_secs(3);
/// NAT-PMP's first wait (RFC 6886 §3.1), doubled at each of [`NATPMP_TRIES`] sends: 1.75 s in
/// all instead of the RFC's 64 s, since a router that is there answers at once.
const NATPMP_FIRST_WAIT: Duration = Duration::from_millis(250);
const NATPMP_TRIES: u32 = 3;
/// What the mappings are called in the router's list.
const DESCRIPTION: &str = "relaybox";

/// A router that answered, and how to talk to it.
pub enum Router {
    Upnp(Gateway<Tokio>),
    NatPmp(SocketAddrV4),
    Pcp(Pcp),
}

/// A PCP server (RFC 6887): an IPv4 router that speaks neither UPnP nor NAT-PMP, or the IPv6
/// router whose firewall takes pinholes.
pub struct Pcp {
    pub at: SocketAddr,
    /// This box's address, the requests' source and client address.
    pub client: IpAddr,
    /// Makes each port's mapping nonce, the same across renewals within one run (a server
    /// refuses to change a mapping asked for with another nonce).
    key: [u8; 8],
    /// The external address of the last granted mapping: PCP tells it only there.
    external: Mutex<Option<IpAddr>>,
}

/// What became of one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Granted for this many seconds (0: until removed).
    Mapped(u32),
    /// The router answered no, with its reason.
    Refused(String),
}

impl Router {
    /// "UPnP-IGD at 192.168.1.1", for the status page.
    pub fn describe(&self) -> String {
        match self {
            Router::Upnp(g) => format!("UPnP-IGD at {}", g.addr.ip()),
            Router::NatPmp(a) => format!("NAT-PMP at {}", a.ip()),
            Router::Pcp(p) => format!("PCP at {}", p.at.ip()),
        }
    }

    fn gateway_ip(&self) -> IpAddr {
        match self {
            Router::Upnp(g) => g.addr.ip(),
            Router::NatPmp(a) => IpAddr::V4(*a.ip()),
            Router::Pcp(p) => p.at.ip(),
        }
    }

    /// This box's address on the router's side: where the mappings must point.
    pub async fn local_address(&self) -> Option<Ipv4Addr> {
        match local_address_towards(self.gateway_ip()).await? {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }

    /// The router's own address on the internet side, as it says; 0.0.0.0 when it says it has
    /// none it could forward from.
    pub async fn external_address(&self) -> Result<Ipv4Addr, String> {
        match self {
            Router::Upnp(g) => match g.get_external_ip().await {
                Ok(IpAddr::V4(v4)) => Ok(v4),
                Ok(IpAddr::V6(v6)) => Err(format!("the router gave an IPv6 address ({v6})")),
                // miniupnpd (and routers built on it) answers with an empty address when its
                // own WAN address is private or CGNAT: "none worth telling".
                Err(e) if upnp_empty_address(&e.to_string()) => Ok(Ipv4Addr::UNSPECIFIED),
                Err(e) => Err(e.to_string()),
            },
            Router::NatPmp(gw) => {
                let a = natpmp_call(
                    *gw,
                    Ipv4Addr::UNSPECIFIED,
                    &natpmp::external_address_request(),
                    natpmp::parse_external_address,
                )
                .await?;
                match a.result {
                    natpmp::ResultCode::Success => Ok(a.address),
                    // RFC 6886 §3.2: the gateway has no usable external address (yet).
                    natpmp::ResultCode::NetworkFailure => Ok(Ipv4Addr::UNSPECIFIED),
                    r => Err(r.describe()),
                }
            }
            // Called after the mappings: their answers carried it.
            Router::Pcp(p) => match *p.external.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(IpAddr::V4(v4)) => Ok(v4),
                _ => Err("the router granted no mapping, which is where PCP tells it".into()),
            },
        }
    }

    /// Asks for `t.external` on the router to reach `t.internal` at `local`.
    pub async fn map(&self, local: Ipv4Addr, t: &Target) -> Outcome {
        match self {
            Router::Upnp(g) => upnp_map(g, local, t).await,
            Router::Pcp(p) => p.map(t, LEASE_SECS).await,
            Router::NatPmp(gw) => {
                let req = natpmp::map_request(t.protocol, t.internal, t.external, LEASE_SECS);
                let parse = |b: &[u8]| natpmp::parse_map(t.protocol, b);
                match natpmp_call(*gw, local, &req, parse).await {
                    Err(e) => Outcome::Refused(e),
                    Ok(m) if m.result != natpmp::ResultCode::Success => {
                        Outcome::Refused(m.result.describe())
                    }
                    Ok(m) if m.external_port != t.external => {
                        // Mail needs the standard port; another one is of no use, so it is
                        // given back at once.
                        self.unmap(local, t).await;
                        Outcome::Refused(format!(
                            "the router offered port {} instead (the port is taken or not allowed)",
                            m.external_port
                        ))
                    }
                    Ok(m) => Outcome::Mapped(m.lifetime),
                }
            }
        }
    }

    /// Removes a mapping made by [`Router::map`]; failures are only logged (the lease runs
    /// out anyway).
    pub async fn unmap(&self, local: Ipv4Addr, t: &Target) {
        let r = match self {
            Router::Upnp(g) => g
                .remove_port(igd_protocol(t.protocol), t.external)
                .await
                .map_err(|e| e.to_string()),
            Router::Pcp(p) => {
                p.unmap(t).await;
                Ok(())
            }
            Router::NatPmp(gw) => {
                // RFC 6886 §3.4: lifetime 0 and external port 0 delete the mapping.
                let req = natpmp::map_request(t.protocol, t.internal, 0, 0);
                natpmp_call(*gw, local, &req, |b| natpmp::parse_map(t.protocol, b))
                    .await
                    .and_then(|m| match m.result {
                        natpmp::ResultCode::Success => Ok(()),
                        r => Err(r.describe()),
                    })
            }
        };
        if let Err(e) = r {
            tracing::warn!(port = t.external, "could not remove the port mapping: {e}");
        }
    }
}

impl Pcp {
    /// Asks `at` whether it speaks PCP (ANNOUNCE), from `client`. `key`: see [`Pcp`].
    pub async fn find(at: SocketAddr, client: IpAddr, key: [u8; 8]) -> Result<Pcp, String> {
        let req = pcp::announce_request(client);
        match udp_call(at, client, &req, pcp::parse_announce).await? {
            pcp::ResultCode::Success => Ok(Pcp {
                at,
                client,
                key,
                external: Mutex::new(None),
            }),
            r => Err(r.describe()),
        }
    }

    fn request(&self, t: &Target, lifetime: u32) -> pcp::Map {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.key);
        nonce[8] = t.protocol as u8;
        nonce[9..11].copy_from_slice(&t.internal.to_be_bytes());
        pcp::Map {
            nonce,
            protocol: t.protocol,
            client: self.client,
            internal_port: t.internal,
            external_port: t.external,
            // IPv4: any external address of the NAT; IPv6: a pinhole to this very address.
            external: match self.client {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                v6 => v6,
            },
            lifetime,
        }
    }

    /// Asks for `t` (a NAT forward, or for an IPv6 client a pinhole) for `lifetime` seconds.
    pub async fn map(&self, t: &Target, lifetime: u32) -> Outcome {
        let m = self.request(t, lifetime);
        let req = pcp::map_request(&m);
        match udp_call(self.at, self.client, &req, |b| pcp::parse_map(b, &m.nonce)).await {
            Err(e) => Outcome::Refused(e),
            Ok(a) if a.result != pcp::ResultCode::Success => Outcome::Refused(a.result.describe()),
            Ok(a) if a.external_port != t.external => {
                // PREFER_FAILURE asked for the port or nothing; a server that ignored it gets
                // the other port back.
                self.unmap(t).await;
                Outcome::Refused(format!(
                    "the router offered port {} instead (the port is taken or not allowed)",
                    a.external_port
                ))
            }
            Ok(a) => {
                *self.external.lock().unwrap_or_else(|e| e.into_inner()) = Some(a.external);
                Outcome::Mapped(a.lifetime)
            }
        }
    }

    /// Removes a mapping made by [`Pcp::map`] (lifetime 0, same nonce); failures only logged.
    pub async fn unmap(&self, t: &Target) {
        let m = self.request(t, 0);
        let req = pcp::map_request(&m);
        let r = udp_call(self.at, self.client, &req, |b| pcp::parse_map(b, &m.nonce))
            .await
            .and_then(|a| match a.result {
                pcp::ResultCode::Success => Ok(()),
                r => Err(r.describe()),
            });
        if let Err(e) = r {
            tracing::warn!(port = t.external, at = %self.at, "could not remove the PCP mapping: {e}");
        }
    }
}

/// Looks for a UPnP-IGD router (SSDP multicast), then for NAT-PMP on the default gateway, then
/// for PCP there (a PCP-only router answers NAT-PMP with "unsupported version" or not at all).
/// `Err` says what was tried, for the "no router support" verdict. `key`: see [`Pcp`].
pub async fn find(gateway: Option<Ipv4Addr>, key: [u8; 8]) -> Result<Router, String> {
    let mut opts = SearchOptions::default();
    opts.timeout = Some(UPNP_SEARCH);
    opts.single_search_timeout = Some(UPNP_SEARCH);
    let upnp = match igd_next::aio::tokio::search_gateway(opts).await {
        Ok(g) => return Ok(Router::Upnp(g)),
        Err(e) => e.to_string(),
    };
    let Some(gw) = gateway else {
        return Err(format!(
            "no UPnP router answered ({upnp}) and there is no default gateway to ask for NAT-PMP"
        ));
    };
    let at = SocketAddrV4::new(gw, natpmp::PORT);
    let natpmp = match natpmp_call(
        at,
        Ipv4Addr::UNSPECIFIED,
        &natpmp::external_address_request(),
        natpmp::parse_external_address,
    )
    .await
    {
        // Any well-formed answer means NAT-PMP is there, even a refusal (it then says why),
        // except "unsupported version" from a server that speaks only PCP.
        Ok(a) if a.result != natpmp::ResultCode::UnsupportedVersion => {
            return Ok(Router::NatPmp(at))
        }
        Ok(a) => a.result.describe(),
        Err(e) => e,
    };
    let client = match local_address_towards(IpAddr::V4(gw)).await {
        Some(IpAddr::V4(v4)) => v4,
        _ => {
            return Err(format!(
                "no UPnP router answered ({upnp}) and there is no route to {gw}"
            ))
        }
    };
    match Pcp::find(SocketAddr::from(at), IpAddr::V4(client), key).await {
        Ok(p) => Ok(Router::Pcp(p)),
        Err(pcp) => Err(format!(
            "no UPnP router answered ({upnp}) and the gateway {gw} answers neither NAT-PMP \
             ({natpmp}) nor PCP ({pcp})"
        )),
    }
}

/// The source address this box uses towards `to`.
pub async fn local_address_towards(to: IpAddr) -> Option<IpAddr> {
    let any: IpAddr = match to {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = UdpSocket::bind((any, 0)).await.ok()?;
    // connect() on UDP sends nothing; it only picks the route and so the source address.
    s.connect((to, 9)).await.ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

/// Whether a failed GetExternalIPAddress was an answer with an empty address, which igd-next
/// reports as an invalid response carrying the body.
fn upnp_empty_address(error: &str) -> bool {
    error.contains("<NewExternalIPAddress></NewExternalIPAddress>")
        || error.contains("<NewExternalIPAddress/>")
}

fn igd_protocol(p: Protocol) -> PortMappingProtocol {
    match p {
        Protocol::Tcp => PortMappingProtocol::TCP,
        Protocol::Udp => PortMappingProtocol::UDP,
    }
}

async fn upnp_map(g: &Gateway<Tokio>, local: Ipv4Addr, t: &Target) -> Outcome {
    let to = SocketAddr::from((local, t.internal));
    let add = |lease| g.add_port(igd_protocol(t.protocol), t.external, to, lease, DESCRIPTION);
    let r = match add(LEASE_SECS).await {
        // IGDv1 routers may take only permanent mappings; those are removed at shutdown.
        Err(AddPortError::OnlyPermanentLeasesSupported) => add(0).await.map(|_| 0),
        r => r.map(|_| LEASE_SECS),
    };
    match r {
        Ok(lease) => Outcome::Mapped(lease),
        Err(AddPortError::ActionNotAuthorized) => {
            Outcome::Refused("the router does not allow this mapping (not authorized)".into())
        }
        Err(AddPortError::PortInUse) => Outcome::Refused(
            "the router already forwards this port to another device or service".into(),
        ),
        Err(AddPortError::SamePortValuesRequired) => Outcome::Refused(format!(
            "the router maps only to the same port on the box (the relay listens on {})",
            t.internal
        )),
        Err(e) => Outcome::Refused(format!("the router refused: {e}")),
    }
}

/// Sends `req` to a NAT-PMP gateway from `from` (the listener's own address, or any) and waits
/// for a matching answer, resending with doubling waits.
async fn natpmp_call<T>(
    gw: SocketAddrV4,
    from: Ipv4Addr,
    req: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, natpmp::ParseError>,
) -> Result<T, String> {
    udp_call(SocketAddr::from(gw), IpAddr::V4(from), req, parse).await
}

/// Sends `req` to a NAT-PMP or PCP server from `from` and waits for a matching answer,
/// resending with doubling waits (RFC 6886 §3.1, RFC 6887 §8.1.1, both shortened).
async fn udp_call<T, E: std::fmt::Display>(
    gw: SocketAddr,
    from: IpAddr,
    req: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, E>,
) -> Result<T, String> {
    let s = UdpSocket::bind((from, 0))
        .await
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    s.connect(gw)
        .await
        .map_err(|e| format!("cannot reach {gw}: {e}"))?;
    let mut wait = NATPMP_FIRST_WAIT;
    let mut last = "no answer".to_string();
    let mut buf = vec![0u8; pcp::MAX_MESSAGE];
    for _ in 0..NATPMP_TRIES {
        s.send(req)
            .await
            .map_err(|e| format!("cannot send to {gw}: {e}"))?;
        let deadline = tokio::time::Instant::now() + wait;
        // Keep reading until this try's wait is over: a stray or malformed datagram must not
        // cut it short.
        while let Ok(r) = tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
            match r {
                Ok(n) => match parse(&buf[..n]) {
                    Ok(v) => return Ok(v),
                    Err(e) => last = e.to_string(),
                },
                // ICMP port unreachable: nothing listens there.
                Err(e) => return Err(e.to_string()),
            }
        }
        wait *= 2;
    }
    Err(last)
}
