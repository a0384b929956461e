//! RFC 2136 dynamic update of a name's A and AAAA records, signed with TSIG (RFC 8945), over
//! TCP to the zone's primary server.

use hickory_resolver::proto::op::{Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_resolver::proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one update (connect, send, answer) may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// TSIG's allowed clock difference (RFC 8945 recommends 300 s).
const FUDGE: u16 = 300;

pub struct Tsig {
    pub name: String,
    pub algorithm: String,
    pub key: Vec<u8>,
}

/// What to write: each address given replaces its record set; one not given is left alone (a
/// box that briefly lost its IPv6 must not remove the AAAA record).
pub struct Update<'a> {
    pub zone: &'a str,
    pub name: &'a str,
    pub ttl: u32,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

fn name(s: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(s.trim_end_matches('.')).map_err(|e| format!("{s:?}: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

fn algorithm(s: &str) -> Result<TsigAlgorithm, String> {
    Ok(match s {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        _ => return Err(format!("unsupported TSIG algorithm {s:?}")),
    })
}

/// The update message: zone section, then per address "delete the RRset, add the record" (RFC
/// 2136 §2.5.2 and §2.5.1), which the server applies atomically.
pub fn message(u: &Update<'_>) -> Result<Message, String> {
    let zone = name(u.zone)?;
    let owner = name(u.name)?;
    if !zone.zone_of(&owner) {
        return Err(format!("{} is not inside the zone {}", u.name, u.zone));
    }
    let mut m = Message::query();
    m.metadata.op_code = OpCode::Update;
    m.metadata.recursion_desired = false;
    let mut q = Query::new();
    q.set_name(zone)
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    m.add_zone(q);
    let mut replace = |rtype: RecordType, data: RData| {
        let mut delete = Record::update0(owner.clone(), 0, rtype);
        delete.dns_class = DNSClass::ANY;
        m.add_update(delete);
        m.add_update(Record::from_rdata(owner.clone(), u.ttl, data));
    };
    if let Some(ip) = u.v4 {
        replace(RecordType::A, RData::A(A(ip)));
    }
    if let Some(ip) = u.v6 {
        replace(RecordType::AAAA, RData::AAAA(AAAA(ip)));
    }
    Ok(m)
}

/// Sends the update to `server` and waits for its answer; signed with `tsig` when given, in
/// which case the answer's signature is checked too. `now`: seconds since 1970, for TSIG.
pub async fn send(
    server: SocketAddr,
    u: &Update<'_>,
    tsig: Option<&Tsig>,
    now: u64,
) -> Result<(), String> {
    let mut m = message(u)?;
    let mut verifier = match tsig {
        Some(t) => {
            let signer = TSigner::new(
                t.key.clone(),
                algorithm(&t.algorithm)?,
                name(&t.name)?,
                FUDGE,
            )
            .map_err(|e| format!("TSIG key: {e}"))?;
            m.finalize(&signer, now)
                .map_err(|e| format!("signing the update: {e}"))?
        }
        None => None,
    };
    let bytes = m
        .to_vec()
        .map_err(|e| format!("encoding the update: {e}"))?;
    let answer = tokio::time::timeout(TIMEOUT, exchange(server, &bytes))
        .await
        .map_err(|_| format!("{server} did not answer within {} s", TIMEOUT.as_secs()))?
        .map_err(|e| format!("{server}: {e}"))?;
    let reply = match verifier.as_mut() {
        Some(v) => v
            .verify(&answer)
            .map_err(|e| format!("the answer's TSIG does not verify: {e}"))?
            .into_message(),
        None => Message::from_vec(&answer).map_err(|e| format!("unreadable answer: {e}"))?,
    };
    if reply.metadata.id != m.metadata.id {
        return Err("the answer is for another request".into());
    }
    match reply.metadata.response_code {
        ResponseCode::NoError => Ok(()),
        ResponseCode::NotAuth => Err(format!(
            "refused: NOTAUTH (the server does not accept this TSIG key, or is not authoritative for {})",
            u.zone
        )),
        ResponseCode::Refused => Err("refused: REFUSED (updates not allowed for this key or address)".into()),
        ResponseCode::NotZone => Err(format!("refused: NOTZONE ({} is not in {})", u.name, u.zone)),
        c => Err(format!("refused: {c}")),
    }
}

/// One DNS message over TCP (two-byte length prefix each way).
async fn exchange(server: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(server).await?;
    let len = u16::try_from(msg.len()).map_err(std::io::Error::other)?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    s.write_all(&out).await?;
    let n = s.read_u16().await? as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}
