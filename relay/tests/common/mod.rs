//! Helpers shared by the gate integration tests: where the fixtures live, ASCII armor, the
//! PGP/MIME wrapping Delta Chat sends, and the envelope a fixture is checked with.
#![allow(dead_code)]

use relaybox::policy::{Direction, Envelope};
use std::path::PathBuf;

/// `tests/fixtures/gate/` at the top of the repository.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gate")
}

/// Every line ending made CRLF (the wire form of mail).
pub fn crlf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// CRC-24 of RFC 9580 §6.1 (the armor checksum).
pub fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0x00B7_04CE;
    for &b in data {
        crc ^= (b as u32) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x0100_0000 != 0 {
                crc ^= 0x0186_4CFB;
            }
        }
    }
    crc & 0x00FF_FFFF
}

/// ASCII armor for a PGP MESSAGE with CRLF line ends: optional headers, 64-column base64, an
/// optional CRC line.
pub fn armor(bin: &[u8], headers: &[(&str, &str)], checksum: bool) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(bin);
    let mut out = String::from("-----BEGIN PGP MESSAGE-----\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str("\r\n");
    }
    if checksum {
        let c = crc24(bin).to_be_bytes();
        let crc = base64::engine::general_purpose::STANDARD.encode(&c[1..]);
        out.push_str(&format!("={crc}\r\n"));
    }
    out.push_str("-----END PGP MESSAGE-----\r\n");
    out
}

pub const BOUNDARY: &str = "xB7uFf1Iq2gHpW5kRzT3vYcN8mLsJ0aE";

/// The PGP/MIME message Delta Chat sends around an armored payload (headers as in chatmail
/// core's `mimefactory`: the real Subject travels inside, the outer one is `[...]`).
pub fn pgp_mime(from: &str, to: &str, armored: &str) -> String {
    let b = BOUNDARY;
    crlf(&format!(
        "Subject: [...]\n\
         Chat-Version: 1.0\n\
         Message-ID: <Mr.gate-fixture.{b}@example.org>\n\
         Date: Mon, 03 Nov 2025 10:00:00 +0000\n\
         To: <{to}>\n\
         From: <{from}>\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\n\
         \tboundary=\"{b}\"\n\
         \n\
         \n\
         --{b}\n\
         Content-Type: application/pgp-encrypted\n\
         Content-Description: PGP/MIME version identification\n\
         \n\
         Version: 1\n\
         \n\
         --{b}\n\
         Content-Type: application/octet-stream; name=\"encrypted.asc\"\n\
         Content-Description: OpenPGP encrypted message\n\
         Content-Disposition: inline; filename=\"encrypted.asc\";\n\
         \n\
         {}\n\
         --{b}--\n",
        crlf(armored).trim_end()
    ))
}

/// The first address of a header (`From`, `To`), lower-cased.
pub fn header_addrs(data: &[u8], name: &str) -> Vec<String> {
    let Some(msg) = mail_parser::MessageParser::new().parse_headers(data) else {
        return vec![];
    };
    let addr = match name {
        "From" => msg.from(),
        "To" => msg.to(),
        _ => None,
    };
    addr.map(|a| {
        a.iter()
            .filter_map(|a| a.address())
            .map(|a| a.trim().to_ascii_lowercase())
            .collect()
    })
    .unwrap_or_default()
}

/// The envelope a fixture is checked with: MAIL FROM = the From address, RCPT TO = the To
/// addresses (so an Autocrypt Setup Message addressed to its sender is self-sent).
pub fn envelope_for(data: &[u8]) -> Envelope {
    let from = header_addrs(data, "From")
        .into_iter()
        .next()
        .unwrap_or_else(|| "alice@example.org".into());
    let mut rcpt_to = header_addrs(data, "To");
    if rcpt_to.is_empty() {
        rcpt_to.push("bob@example.net".into());
    }
    Envelope {
        mail_from: from,
        rcpt_to,
        peer: None,
    }
}

/// `"accept"` or the reply code, as the manifest writes verdicts.
pub fn verdict_name(v: &relaybox::policy::Verdict) -> String {
    match v {
        relaybox::policy::Verdict::Accept(_) => "accept".into(),
        relaybox::policy::Verdict::Reject(r) => r.code.to_string(),
    }
}

/// The gate's verdict on `data` in one direction, as the manifest writes it.
pub fn check(data: &[u8], dir: Direction) -> String {
    let env = envelope_for(data);
    let v = match dir {
        Direction::Outgoing => relaybox::policy::check_outgoing(&env, data),
        Direction::Incoming => relaybox::policy::check_incoming(&env, data),
    };
    verdict_name(&v)
}
