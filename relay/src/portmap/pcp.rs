//! PCP (RFC 6887) messages: bytes in, values out, no sockets. PCP is NAT-PMP's successor on the
//! same port (5351): the same request/answer shape with 128-bit addresses, so one MAP request
//! asks an IPv4 NAT for a forward and an IPv6 firewall for a pinhole alike. Only what the relay
//! needs is here: ANNOUNCE (is a PCP server there?) and MAP with the PREFER_FAILURE option.

use super::Protocol;
use std::net::{IpAddr, Ipv6Addr};

pub const VERSION: u8 = 2;
pub const OP_ANNOUNCE: u8 = 0;
pub const OP_MAP: u8 = 1;
/// The R bit: set in answers.
const RESPONSE: u8 = 0x80;
const HEADER: usize = 24;
const MAP_PAYLOAD: usize = 36;
/// RFC 6887 §13.2: fail rather than hand out another external port than the one suggested
/// (mail needs 25, not "some port").
const OPTION_PREFER_FAILURE: u8 = 2;
/// Longest message (RFC 6887 §7): what a receive buffer needs.
pub const MAX_MESSAGE: usize = 1100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the answer is {0} bytes long")]
    Length(usize),
    /// Version 0 is a NAT-PMP server saying it does not speak PCP (RFC 6887 §9).
    #[error("the answer has version {0}, not PCP's 2")]
    Version(u8),
    #[error("the message is a request, not an answer")]
    NotAnAnswer,
    #[error("the answer is for opcode {got}, not {want}")]
    Opcode { got: u8, want: u8 },
    #[error("the answer is for another request (nonce)")]
    Nonce,
}

/// RFC 6887 §7.4 result codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    Success,
    NotAuthorized,
    NetworkFailure,
    NoResources,
    UnsupportedProtocol,
    CannotProvideExternal,
    AddressMismatch,
    Other(u8),
}

impl ResultCode {
    fn from_u8(n: u8) -> ResultCode {
        match n {
            0 => ResultCode::Success,
            2 => ResultCode::NotAuthorized,
            7 => ResultCode::NetworkFailure,
            8 => ResultCode::NoResources,
            9 => ResultCode::UnsupportedProtocol,
            11 => ResultCode::CannotProvideExternal,
            12 => ResultCode::AddressMismatch,
            n => ResultCode::Other(n),
        }
    }

    /// For people: what the router said.
    pub fn describe(self) -> String {
        match self {
            ResultCode::Success => "success".into(),
            ResultCode::NotAuthorized => "the router refused (not authorized)".into(),
            ResultCode::NetworkFailure => {
                "the router has no working internet connection (network failure)".into()
            }
            ResultCode::NoResources => "the router has no room for more mappings".into(),
            ResultCode::UnsupportedProtocol => "the router does not map this protocol".into(),
            ResultCode::CannotProvideExternal => {
                "the port is taken or not allowed (cannot provide that external port)".into()
            }
            ResultCode::AddressMismatch => {
                "the router sees this box at another address than the request said (a NAT \
                 between them)"
                    .into()
            }
            ResultCode::Other(n) => format!("the router answered with PCP result code {n}"),
        }
    }
}

/// One MAP request's fields (RFC 6887 §11.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    /// Ties the answer to the request, and a renewal or removal to the mapping.
    pub nonce: [u8; 12],
    pub protocol: Protocol,
    /// This box's address the mapping is for (the source address of the request).
    pub client: IpAddr,
    pub internal_port: u16,
    pub external_port: u16,
    /// The external address wished for; unspecified: any. For an IPv6 pinhole, the box's own.
    pub external: IpAddr,
    /// Seconds; 0 removes the mapping.
    pub lifetime: u32,
}

/// A MAP answer (RFC 6887 §11.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapAnswer {
    pub result: ResultCode,
    pub lifetime: u32,
    /// Seconds since the server's state was (re)started (§8.5).
    pub epoch: u32,
    pub protocol: u8,
    pub internal_port: u16,
    pub external_port: u16,
    pub external: IpAddr,
}

/// IPv4 addresses travel as IPv4-mapped IPv6 (`::ffff:a.b.c.d`, RFC 6887 §5), "any IPv4
/// address" too (`::ffff:0.0.0.0`): the family of the suggested external address says whether
/// a NAT forward or an IPv6 pinhole is asked for.
fn to_wire(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn from_wire(b: &[u8]) -> IpAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn protocol_number(p: Protocol) -> u8 {
    // IANA protocol numbers
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    }
}

fn request_header(op: u8, lifetime: u32, client: IpAddr) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + MAP_PAYLOAD + 4);
    b.extend_from_slice(&[VERSION, op, 0, 0]);
    b.extend_from_slice(&lifetime.to_be_bytes());
    b.extend_from_slice(&to_wire(client));
    b
}

/// ANNOUNCE (§14.1): a server answers it at once, which tells that PCP is there.
pub fn announce_request(client: IpAddr) -> Vec<u8> {
    request_header(OP_ANNOUNCE, 0, client)
}

/// A MAP request asking the server to fail rather than offer another port.
pub fn map_request(m: &Map) -> Vec<u8> {
    let mut b = request_header(OP_MAP, m.lifetime, m.client);
    b.extend_from_slice(&m.nonce);
    b.extend_from_slice(&[protocol_number(m.protocol), 0, 0, 0]);
    b.extend_from_slice(&m.internal_port.to_be_bytes());
    b.extend_from_slice(&m.external_port.to_be_bytes());
    b.extend_from_slice(&to_wire(m.external));
    // A removal has nothing to prefer.
    if m.lifetime != 0 {
        b.extend_from_slice(&[OPTION_PREFER_FAILURE, 0, 0, 0]);
    }
    b
}

/// Result code and epoch of an answer to opcode `op`.
fn header(b: &[u8], op: u8) -> Result<(ResultCode, u32, u32), ParseError> {
    // A NAT-PMP server's "unsupported version" is 8 bytes long; check the version first.
    if let Some(&v) = b.first() {
        if v != VERSION && b.len() >= 2 {
            return Err(ParseError::Version(v));
        }
    }
    if b.len() < HEADER {
        return Err(ParseError::Length(b.len()));
    }
    if b[1] & RESPONSE == 0 {
        return Err(ParseError::NotAnAnswer);
    }
    if b[1] & !RESPONSE != op {
        return Err(ParseError::Opcode {
            got: b[1] & !RESPONSE,
            want: op,
        });
    }
    let lifetime = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let epoch = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    Ok((ResultCode::from_u8(b[3]), lifetime, epoch))
}

/// The answer to [`announce_request`]: its result code.
pub fn parse_announce(b: &[u8]) -> Result<ResultCode, ParseError> {
    header(b, OP_ANNOUNCE).map(|(r, _, _)| r)
}

/// The answer to a [`map_request`] with `nonce`.
pub fn parse_map(b: &[u8], nonce: &[u8; 12]) -> Result<MapAnswer, ParseError> {
    let (result, lifetime, epoch) = header(b, OP_MAP)?;
    if b.len() < HEADER + MAP_PAYLOAD {
        return Err(ParseError::Length(b.len()));
    }
    let p = &b[HEADER..];
    if &p[..12] != nonce {
        return Err(ParseError::Nonce);
    }
    Ok(MapAnswer {
        result,
        lifetime,
        epoch,
        protocol: p[12],
        internal_port: u16::from_be_bytes([p[16], p[17]]),
        external_port: u16::from_be_bytes([p[18], p[19]]),
        external: from_wire(&p[20..36]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const NONCE: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn map_v4() -> Map {
        Map {
            nonce: NONCE,
            protocol: Protocol::Tcp,
            client: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20)),
            internal_port: 10443,
            external_port: 443,
            external: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            lifetime: 3600,
        }
    }

    /// RFC 6887 figure 2 (request header), figure 9 (MAP payload) and §13.2 (PREFER_FAILURE).
    #[test]
    fn map_request_has_the_rfc_layout() {
        let b = map_request(&map_v4());
        assert_eq!(b.len(), 24 + 36 + 4);
        // version 2, R=0 and opcode 1, reserved, lifetime 3600
        assert_eq!(&b[..8], &[2, 1, 0, 0, 0, 0, 0x0E, 0x10]);
        // client address as IPv4-mapped IPv6
        assert_eq!(
            &b[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 20]
        );
        assert_eq!(&b[24..36], &NONCE);
        // protocol 6 (TCP), 3 reserved bytes, internal port, suggested external port
        assert_eq!(&b[36..44], &[6, 0, 0, 0, 0x28, 0xCB, 0x01, 0xBB]);
        // suggested external address: any IPv4 address (§11.1), ::ffff:0.0.0.0
        assert_eq!(
            &b[44..60],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
        // option 2, reserved, length 0
        assert_eq!(&b[60..], &[2, 0, 0, 0]);

        // an IPv6 pinhole for UDP: client and suggested external address are the box's own
        let v6: Ipv6Addr = "2001:db8::25".parse().unwrap();
        let mut m = map_v4();
        m.protocol = Protocol::Udp;
        m.client = IpAddr::V6(v6);
        m.external = IpAddr::V6(v6);
        m.lifetime = 0;
        let b = map_request(&m);
        assert_eq!(b.len(), 60, "a removal carries no option");
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
        assert_eq!(&b[8..24], &v6.octets());
        assert_eq!(b[36], 17);
        assert_eq!(&b[44..60], &v6.octets());

        assert_eq!(announce_request(IpAddr::V6(v6)).len(), 24);
        assert_eq!(announce_request(IpAddr::V6(v6))[..2], [2, 0]);
    }

    fn answer(result: u8, ext_port: u16, ext: IpAddr) -> Vec<u8> {
        // figure 3 (response header) + figure 9
        let mut b = vec![2, 0x81, 0, result, 0, 0, 0x0E, 0x10, 0, 0, 0x01, 0x00];
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&NONCE);
        b.extend_from_slice(&[6, 0, 0, 0, 0x28, 0xCB]);
        b.extend_from_slice(&ext_port.to_be_bytes());
        b.extend_from_slice(&to_wire(ext));
        b
    }

    #[test]
    fn map_answer_is_read() {
        let ext = IpAddr::V4(Ipv4Addr::new(81, 2, 69, 2));
        let a = parse_map(&answer(0, 443, ext), &NONCE).unwrap();
        assert_eq!(
            a,
            MapAnswer {
                result: ResultCode::Success,
                lifetime: 3600,
                epoch: 256,
                protocol: 6,
                internal_port: 10443,
                external_port: 443,
                external: ext,
            }
        );
        let v6 = IpAddr::V6("2001:db8::25".parse().unwrap());
        assert_eq!(parse_map(&answer(0, 443, v6), &NONCE).unwrap().external, v6);
        let refused = parse_map(&answer(11, 0, ext), &NONCE).unwrap();
        assert_eq!(refused.result, ResultCode::CannotProvideExternal);
        assert!(refused.result.describe().contains("taken"));
        assert_eq!(
            parse_map(&answer(2, 0, ext), &NONCE).unwrap().result,
            ResultCode::NotAuthorized
        );
    }

    #[test]
    fn malformed_or_foreign_answers_are_errors() {
        let ext = IpAddr::V4(Ipv4Addr::new(81, 2, 69, 2));
        let good = answer(0, 443, ext);
        assert_eq!(parse_map(&good[..40], &NONCE), Err(ParseError::Length(40)));
        assert_eq!(parse_map(&good, &[0; 12]), Err(ParseError::Nonce));
        // NAT-PMP's "unsupported version" (RFC 6886 §3.5): a router without PCP
        assert_eq!(
            parse_announce(&[0, 128, 0, 1, 0, 0, 0, 9]),
            Err(ParseError::Version(0))
        );
        // our own request echoed back is no answer
        assert_eq!(
            parse_map(&map_request(&map_v4()), &NONCE),
            Err(ParseError::NotAnAnswer)
        );
        let mut ann = good.clone();
        ann[1] = 0x80;
        assert_eq!(parse_announce(&ann[..24]), Ok(ResultCode::Success));
        assert_eq!(
            parse_map(&ann, &NONCE),
            Err(ParseError::Opcode { got: 0, want: 1 })
        );
        assert_eq!(parse_announce(&[]), Err(ParseError::Length(0)));
    }
}
