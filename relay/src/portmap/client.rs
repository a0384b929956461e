//! Talking to the router: UPnP-IGD through `igd-next`, NAT-PMP over one UDP socket with the
//! messages of [`super::natpmp`]. Every call is bounded in time; what a router answers is
//! turned into an [`Outcome`] here and judged in [`super::plan`] and [`super`].

use super::natpmp;
use super::plan::{Target, LEASE_SECS};
use igd_next::aio::tokio::Tokio;
use igd_next::aio::Gateway;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
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
        }
    }

    fn gateway_ip(&self) -> IpAddr {
        match self {
            Router::Upnp(g) => g.addr.ip(),
            Router::NatPmp(a) => IpAddr::V4(*a.ip()),
        }
    }

    /// This box's address on the router's side: where the mappings must point.
    pub async fn local_address(&self) -> Option<Ipv4Addr> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
        // connect() on UDP sends nothing; it only picks the route and so the source address.
        s.connect((self.gateway_ip(), 9)).await.ok()?;
        match s.local_addr().ok()?.ip() {
            IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
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
        }
    }

    /// Asks for `t.external` on the router to reach `t.internal` at `local`.
    pub async fn map(&self, local: Ipv4Addr, t: &Target) -> Outcome {
        match self {
            Router::Upnp(g) => upnp_map(g, local, t).await,
            Router::NatPmp(gw) => {
                let req = natpmp::map_tcp_request(t.internal, t.external, LEASE_SECS);
                match natpmp_call(*gw, local, &req, natpmp::parse_map_tcp).await {
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
                .remove_port(PortMappingProtocol::TCP, t.external)
                .await
                .map_err(|e| e.to_string()),
            Router::NatPmp(gw) => {
                // RFC 6886 §3.4: lifetime 0 and external port 0 delete the mapping.
                let req = natpmp::map_tcp_request(t.internal, 0, 0);
                natpmp_call(*gw, local, &req, natpmp::parse_map_tcp)
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

/// Looks for a UPnP-IGD router (SSDP multicast), then for NAT-PMP on the default gateway.
/// `Err` says what was tried, for the "no router support" verdict.
pub async fn find(gateway: Option<Ipv4Addr>) -> Result<Router, String> {
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
    match natpmp_call(
        at,
        Ipv4Addr::UNSPECIFIED,
        &natpmp::external_address_request(),
        natpmp::parse_external_address,
    )
    .await
    {
        // Any well-formed answer means NAT-PMP is there, even a refusal (it then says why).
        Ok(_) => Ok(Router::NatPmp(at)),
        Err(e) => Err(format!(
            "no UPnP router answered ({upnp}) and the gateway {gw} does not answer NAT-PMP ({e})"
        )),
    }
}

/// Whether a failed GetExternalIPAddress was an answer with an empty address, which igd-next
/// reports as an invalid response carrying the body.
fn upnp_empty_address(error: &str) -> bool {
    error.contains("<NewExternalIPAddress></NewExternalIPAddress>")
        || error.contains("<NewExternalIPAddress/>")
}

async fn upnp_map(g: &Gateway<Tokio>, local: Ipv4Addr, t: &Target) -> Outcome {
    let to = SocketAddr::from((local, t.internal));
    let add = |lease| g.add_port(PortMappingProtocol::TCP, t.external, to, lease, DESCRIPTION);
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
    let s = UdpSocket::bind((from, 0))
        .await
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    s.connect(gw)
        .await
        .map_err(|e| format!("cannot reach {gw}: {e}"))?;
    let mut wait = NATPMP_FIRST_WAIT;
    let mut last = "no answer".to_string();
    let mut buf = [0u8; 64];
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
