//! NAT-PMP (RFC 6886) messages: bytes in, values out, no sockets. The protocol is four fixed-size
//! messages over UDP port 5351 of the default gateway, small enough that a parser with its own
//! tests is less to keep than another dependency.

use super::Protocol;
use std::net::Ipv4Addr;

/// The port a NAT-PMP gateway listens on.
pub const PORT: u16 = 5351;

const VERSION: u8 = 0;
const OP_EXTERNAL: u8 = 0;
const OP_MAP_UDP: u8 = 1;
const OP_MAP_TCP: u8 = 2;

fn map_opcode(p: Protocol) -> u8 {
    match p {
        Protocol::Udp => OP_MAP_UDP,
        Protocol::Tcp => OP_MAP_TCP,
    }
}
/// Responses carry the request's opcode plus 128.
const RESPONSE: u8 = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the answer is {0} bytes long")]
    Length(usize),
    #[error("the answer has protocol version {0}, not NAT-PMP's 0")]
    Version(u8),
    #[error("the answer is for opcode {got}, not {want}")]
    Opcode { got: u8, want: u8 },
}

/// A gateway's result code (RFC 6886 §3.5); anything but 0 means the request was not done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    Success,
    UnsupportedVersion,
    /// "Not Authorized/Refused": NAT-PMP is there but switched off, or this mapping is not allowed.
    NotAuthorized,
    NetworkFailure,
    OutOfResources,
    UnsupportedOpcode,
    Other(u16),
}

impl ResultCode {
    fn from_u16(n: u16) -> ResultCode {
        match n {
            0 => ResultCode::Success,
            1 => ResultCode::UnsupportedVersion,
            2 => ResultCode::NotAuthorized,
            3 => ResultCode::NetworkFailure,
            4 => ResultCode::OutOfResources,
            5 => ResultCode::UnsupportedOpcode,
            n => ResultCode::Other(n),
        }
    }

    /// For people: what the router said.
    pub fn describe(self) -> String {
        match self {
            ResultCode::Success => "success".into(),
            ResultCode::UnsupportedVersion => {
                "the router does not speak this NAT-PMP version".into()
            }
            ResultCode::NotAuthorized => "the router refused (not authorized)".into(),
            ResultCode::NetworkFailure => {
                "the router has no working internet connection (network failure)".into()
            }
            ResultCode::OutOfResources => "the router has no room for more mappings".into(),
            ResultCode::UnsupportedOpcode => "the router does not support this request".into(),
            ResultCode::Other(n) => format!("the router answered with result code {n}"),
        }
    }
}

/// The answer to [`external_address_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalAddress {
    pub result: ResultCode,
    /// Seconds since the gateway's mapping table was (re)started; a drop means it forgot
    /// every mapping (RFC 6886 §3.6).
    pub epoch: u32,
    pub address: Ipv4Addr,
}

/// The answer to [`map_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub result: ResultCode,
    pub epoch: u32,
    pub internal_port: u16,
    /// The gateway may give another port than the one asked for.
    pub external_port: u16,
    /// Seconds; may be shorter than asked for. 0 in answer to a removal.
    pub lifetime: u32,
}

pub fn external_address_request() -> [u8; 2] {
    [VERSION, OP_EXTERNAL]
}

/// Asks for `external_port` on the gateway to reach `internal_port` of the asking host for
/// `lifetime` seconds; a lifetime of 0 removes the mapping.
pub fn map_request(
    protocol: Protocol,
    internal_port: u16,
    external_port: u16,
    lifetime: u32,
) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = VERSION;
    b[1] = map_opcode(protocol);
    b[4..6].copy_from_slice(&internal_port.to_be_bytes());
    b[6..8].copy_from_slice(&external_port.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime.to_be_bytes());
    b
}

/// Version, opcode and result code of an answer to a request with opcode `op`.
fn header(b: &[u8], op: u8, len: usize) -> Result<(ResultCode, u32), ParseError> {
    // A failed request may be answered with just the 8-byte header.
    if b.len() < 8 {
        return Err(ParseError::Length(b.len()));
    }
    if b[0] != VERSION {
        return Err(ParseError::Version(b[0]));
    }
    if b[1] != RESPONSE + op {
        return Err(ParseError::Opcode {
            got: b[1],
            want: RESPONSE + op,
        });
    }
    let result = ResultCode::from_u16(u16::from_be_bytes([b[2], b[3]]));
    if result == ResultCode::Success && b.len() < len {
        return Err(ParseError::Length(b.len()));
    }
    Ok((result, u32::from_be_bytes([b[4], b[5], b[6], b[7]])))
}

pub fn parse_external_address(b: &[u8]) -> Result<ExternalAddress, ParseError> {
    let (result, epoch) = header(b, OP_EXTERNAL, 12)?;
    let address = if b.len() >= 12 {
        Ipv4Addr::new(b[8], b[9], b[10], b[11])
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    Ok(ExternalAddress {
        result,
        epoch,
        address,
    })
}

/// The answer to a [`map_request`] for `protocol`.
pub fn parse_map(protocol: Protocol, b: &[u8]) -> Result<Mapping, ParseError> {
    let (result, epoch) = header(b, map_opcode(protocol), 16)?;
    let (internal_port, external_port, lifetime) = if b.len() >= 16 {
        (
            u16::from_be_bytes([b[8], b[9]]),
            u16::from_be_bytes([b[10], b[11]]),
            u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
        )
    } else {
        (0, 0, 0)
    };
    Ok(Mapping {
        result,
        epoch,
        internal_port,
        external_port,
        lifetime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_rfc_layout() {
        assert_eq!(external_address_request(), [0, 0]);
        assert_eq!(
            map_request(Protocol::Tcp, 10443, 443, 3600),
            [0, 2, 0, 0, 0x28, 0xCB, 0x01, 0xBB, 0, 0, 0x0E, 0x10]
        );
        // UDP (TURN) has opcode 1
        assert_eq!(
            map_request(Protocol::Udp, 3478, 3478, 3600)[..8],
            [0, 1, 0, 0, 0x0D, 0x96, 0x0D, 0x96]
        );
        // removal: lifetime 0 (and RFC 6886 §3.4 wants the external port 0 too; the caller decides)
        assert_eq!(&map_request(Protocol::Tcp, 25, 0, 0)[8..], &[0, 0, 0, 0]);
    }

    #[test]
    fn external_address_answer_is_read() {
        let a = parse_external_address(&[0, 128, 0, 0, 0, 0, 1, 0, 203, 0, 113, 9]).unwrap();
        assert_eq!(
            a,
            ExternalAddress {
                result: ResultCode::Success,
                epoch: 256,
                address: Ipv4Addr::new(203, 0, 113, 9)
            }
        );
    }

    #[test]
    fn map_answer_is_read_with_the_port_the_router_chose() {
        let b = [
            0, 130, 0, 0, 0, 0, 0, 7, 0x28, 0xCB, 0x7A, 0x69, 0, 0, 0x07, 0x08,
        ];
        let m = parse_map(Protocol::Tcp, &b).unwrap();
        assert_eq!(m.result, ResultCode::Success);
        assert_eq!((m.epoch, m.internal_port), (7, 10443));
        assert_eq!((m.external_port, m.lifetime), (31337, 1800));
    }

    #[test]
    fn refusals_are_results_not_parse_errors() {
        // A refusal may come as the header alone.
        let m = parse_map(Protocol::Tcp, &[0, 130, 0, 2, 0, 0, 0, 1]).unwrap();
        assert_eq!(m.result, ResultCode::NotAuthorized);
        assert!(m.result.describe().contains("refused"));
        let a = parse_external_address(&[0, 128, 0, 3, 0, 0, 0, 1]).unwrap();
        assert_eq!(a.result, ResultCode::NetworkFailure);
        assert_eq!(
            parse_map(Protocol::Tcp, &[0, 130, 0, 9, 0, 0, 0, 1])
                .unwrap()
                .result,
            ResultCode::Other(9)
        );
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert_eq!(parse_map(Protocol::Tcp, &[]), Err(ParseError::Length(0)));
        // success, but cut short
        assert_eq!(
            parse_map(Protocol::Tcp, &[0, 130, 0, 0, 0, 0, 0, 1, 0, 25]),
            Err(ParseError::Length(10))
        );
        assert_eq!(
            parse_external_address(&[2, 128, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4]),
            Err(ParseError::Version(2))
        );
        // an answer to another request (UDP mapping) is not ours
        let udp = [0, 129, 0, 0, 0, 0, 0, 1, 0, 25, 0, 25, 0, 0, 0, 1];
        assert_eq!(
            parse_map(Protocol::Tcp, &udp),
            Err(ParseError::Opcode {
                got: 129,
                want: 130
            })
        );
        assert_eq!(parse_map(Protocol::Udp, &udp).unwrap().external_port, 25);
    }
}
