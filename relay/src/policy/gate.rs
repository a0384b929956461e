//! The encryption gate (reference §3.6–3.7): is a message OpenPGP/MIME, down to the packet
//! structure? Pure functions over bytes; no I/O.

use super::Direction;
use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use mail_parser::{Message, MessagePart, MimeHeaders};

const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----\r\n";
const END: &[u8] = b"-----END PGP MESSAGE-----";

/// Packet tags that may come before the encrypted data.
const PKESK: u8 = 1;
const SKESK: u8 = 3;
/// Symmetrically Encrypted Integrity Protected Data: the only payload we accept.
const SEIPD: u8 = 18;

fn content_type(part: &MessagePart) -> (String, String) {
    match part.content_type() {
        Some(ct) => (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or("").to_ascii_lowercase(),
        ),
        None => ("text".into(), "plain".into()),
    }
}

fn is_type(part: &MessagePart, t: &str, s: &str) -> bool {
    let (a, b) = content_type(part);
    a == t && b == s
}

/// Rule 1–4 of reference §3.6 over a parsed message.
pub fn is_encrypted(msg: &Message, dir: Direction) -> bool {
    let root = msg.root_part();
    if !is_type(root, "multipart", "encrypted") {
        return false;
    }
    let Some(ids) = root.sub_parts() else {
        return false;
    };
    if ids.len() != 2 {
        return false;
    }
    let (Some(p1), Some(p2)) = (msg.part(ids[0]), msg.part(ids[1])) else {
        return false;
    };
    if p1.is_multipart() || p2.is_multipart() {
        return false;
    }
    if !is_type(p1, "application", "pgp-encrypted") {
        return false;
    }
    if trimmed_text(p1.contents()) != "Version: 1" {
        return false;
    }
    if !is_type(p2, "application", "octet-stream") {
        return false;
    }
    is_armored_pgp_message(p2.contents(), dir)
}

/// A decoded body as the reference compares it: text, trimmed with `str::trim` (Unicode
/// whitespace, so a vertical tab counts, which `u8::is_ascii_whitespace` does not).
fn trimmed_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// The armor check: BEGIN line with CRLF, END line, optional `Version:` header (refused going
/// out, skipped coming in), optional CRC24 line, base64 that decodes to an acceptable packet
/// sequence.
pub fn is_armored_pgp_message(payload: &[u8], dir: Direction) -> bool {
    let Some(mut rest) = payload.strip_prefix(BEGIN) else {
        return false;
    };
    while let Some(r) = rest.strip_suffix(b"\r\n") {
        rest = r;
    }
    let Some(mut body) = rest.strip_suffix(END) else {
        return false;
    };
    if body.starts_with(b"Version: ") {
        if dir == Direction::Outgoing {
            return false;
        }
        match body.windows(2).position(|w| w == b"\r\n") {
            Some(i) => body = &body[i + 2..],
            None => return false,
        }
    }
    while let Some(r) = body.strip_prefix(b"\r\n") {
        body = r;
    }
    // The CRC24 line (`=XXXX`) is optional in RFC 9580. The reference cuts at the last `=`,
    // which also eats base64 padding when there is no CRC line; we cut only a line that starts
    // with `=` and accept padded or unpadded base64, so valid messages without CRC pass too.
    // The reference removes every CR and LF before decoding, not just line ends. One buffer
    // for the joined lines (a big message's armor is tens of MB; no Vec per line).
    let mut b64: Vec<u8> = Vec::with_capacity(body.len());
    let mut last_line = 0;
    for l in body.split(|&b| b == b'\n') {
        let start = b64.len();
        b64.extend(l.iter().copied().filter(|&b| b != b'\r'));
        if b64.len() > start {
            last_line = start;
        }
    }
    if b64[last_line..].starts_with(b"=") {
        b64.truncate(last_line);
    }
    // Unpadded base64 is fine, but padding that is there must be complete, as standard base64
    // (the reference's decoder) wants it; `Indifferent` alone would take "QQ=".
    if b64.is_empty() || (b64.ends_with(b"=") && !b64.len().is_multiple_of(4)) {
        return false;
    }
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    match engine.decode(&b64) {
        Ok(bytes) => is_valid_packet_sequence(&bytes),
        Err(_) => false,
    }
}

/// Reads one packet header at `pos`; returns the tag and where the packet ends. `None` for a
/// truncated or unsupported header (legacy indeterminate length).
fn packet_at(data: &[u8], pos: usize) -> Option<(u8, usize)> {
    let h = *data.get(pos)?;
    if h & 0x80 == 0 {
        return None;
    }
    if h & 0x40 != 0 {
        let tag = h & 0x3f;
        let mut p = pos + 1;
        loop {
            let b0 = *data.get(p)? as usize;
            match b0 {
                0..=191 => return p.checked_add(1 + b0).map(|e| (tag, e)),
                192..=223 => {
                    let b1 = *data.get(p + 1)? as usize;
                    let len = ((b0 - 192) << 8) + b1 + 192;
                    return p.checked_add(2 + len).map(|e| (tag, e));
                }
                255 => {
                    let l = data.get(p + 1..p + 5)?;
                    let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
                    return p.checked_add(5 + len).map(|e| (tag, e));
                }
                _ => {
                    // Partial body length: a chunk of 2^n bytes, then another length octet.
                    let chunk = 1usize << (b0 & 0x1f);
                    p = p.checked_add(1 + chunk)?;
                    if p >= data.len() {
                        return None;
                    }
                }
            }
        }
    } else {
        let tag = (h >> 2) & 0x0f;
        let p = pos + 1;
        let (len, hdr) = match h & 0x03 {
            0 => (*data.get(p)? as usize, 1),
            1 => {
                let l = data.get(p..p + 2)?;
                (u16::from_be_bytes([l[0], l[1]]) as usize, 2)
            }
            2 => {
                let l = data.get(p..p + 4)?;
                (u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize, 4)
            }
            _ => return None,
        };
        p.checked_add(hdr + len).map(|e| (tag, e))
    }
}

/// Zero or more PKESK/SKESK packets, then exactly one SEIPD that ends at the end of the data.
pub fn is_valid_packet_sequence(data: &[u8]) -> bool {
    let mut pos = 0;
    loop {
        let Some((tag, end)) = packet_at(data, pos) else {
            return false;
        };
        if end == data.len() {
            return tag == SEIPD;
        }
        if end > data.len() || (tag != PKESK && tag != SKESK) {
            return false;
        }
        pos = end;
    }
}

/// The Secure-Join exception (reference §3.7).
pub fn is_securejoin(msg: &Message) -> bool {
    let hdr = msg
        .header_raw("Secure-Join")
        .map(|h| h.trim().to_ascii_lowercase());
    let step = match hdr.as_deref() {
        Some(s @ ("vc-request" | "vg-request")) => s.to_string(),
        _ => return false,
    };
    let root = msg.root_part();
    let Some(ids) = root.sub_parts() else {
        return false;
    };
    if ids.len() != 1 {
        return false;
    }
    let Some(p) = msg.part(ids[0]) else {
        return false;
    };
    if p.is_multipart() || !is_type(p, "text", "plain") {
        return false;
    }
    let body = trimmed_text(p.contents()).to_lowercase();
    body == format!("secure-join: {step}")
}

/// A delivery status report from a mailer daemon (reference §3.5 step 5), in the shape RFC 3464
/// gives it: `multipart/report; report-type=delivery-status` with a `message/delivery-status`
/// part. The reference only looks at the top-level type, which let any unencrypted
/// `multipart/report` through, HTML included; here every part must be one a DSN carries (text,
/// the status, the returned headers or message) and nothing anywhere may be active content.
/// Whether the sender may use our own domain is the origin check's question, not this one.
pub fn is_mailer_daemon_report(msg: &Message, from: &str) -> bool {
    let auto = msg
        .header_raw("Auto-Submitted")
        .is_some_and(|v| !v.trim().is_empty());
    if !auto || !from.to_ascii_lowercase().starts_with("mailer-daemon@") {
        return false;
    }
    let root = msg.root_part();
    let report_type = root
        .content_type()
        .and_then(|ct| ct.attribute("report-type"))
        .map(|t| t.trim().to_ascii_lowercase());
    if !is_type(root, "multipart", "report") || report_type.as_deref() != Some("delivery-status") {
        return false;
    }
    let Some(ids) = root.sub_parts() else {
        return false;
    };
    let mut has_status = false;
    for &id in ids {
        let Some(part) = msg.part(id) else {
            return false;
        };
        let (t, s) = content_type(part);
        match (t.as_str(), s.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") => has_status = true,
            ("text", "plain" | "rfc822-headers")
            | ("message", "rfc822" | "global" | "rfc822-headers" | "global-headers") => {}
            _ => return false,
        }
    }
    has_status && !has_active_content(msg, 0)
}

/// Content a mail client might render or run: HTML, scripts, SVG. Looked for in every part,
/// also inside a returned `message/rfc822`, up to a small nesting depth (deeper is refused).
fn has_active_content(msg: &Message, depth: usize) -> bool {
    if depth > 3 {
        return true;
    }
    msg.parts.iter().any(|part| {
        let (t, s) = content_type(part);
        let active = matches!(
            (t.as_str(), s.as_str()),
            ("text", "html" | "javascript" | "ecmascript" | "xml")
                | (
                    "application",
                    "javascript" | "ecmascript" | "xhtml+xml" | "xml"
                )
                | ("image", "svg+xml")
        );
        active
            || match &part.body {
                mail_parser::PartType::Message(inner) => has_active_content(inner, depth + 1),
                _ => false,
            }
    })
}

/// A self-sent Autocrypt Setup Message (reference §3.4 step 5).
pub fn is_self_sent_setup_message(msg: &Message, from: &str, rcpts: &[String]) -> bool {
    rcpts.len() == 1
        && rcpts[0].eq_ignore_ascii_case(from)
        && msg.subject().map(str::trim) == Some("Autocrypt Setup Message")
        && is_type(msg.root_part(), "multipart", "mixed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_hdr(tag: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0xC0 | tag];
        if len < 192 {
            v.push(len as u8);
        } else {
            v.push(255);
            v.extend_from_slice(&(len as u32).to_be_bytes());
        }
        v.extend(std::iter::repeat_n(0u8, len));
        v
    }

    #[test]
    fn packet_sequences() {
        let pk = new_hdr(1, 20);
        let sk = new_hdr(3, 10);
        let se = new_hdr(18, 300);
        assert!(is_valid_packet_sequence(&se));
        assert!(is_valid_packet_sequence(&[pk.clone(), se.clone()].concat()));
        assert!(is_valid_packet_sequence(
            &[pk.clone(), sk.clone(), se.clone()].concat()
        ));
        assert!(!is_valid_packet_sequence(&pk));
        assert!(!is_valid_packet_sequence(
            &[se.clone(), pk.clone()].concat()
        ));
        assert!(!is_valid_packet_sequence(
            &[pk.clone(), new_hdr(11, 5)].concat()
        ));
        assert!(!is_valid_packet_sequence(
            &[pk.clone(), new_hdr(20, 50)].concat()
        ));
        assert!(!is_valid_packet_sequence(&se[..se.len() - 1]));
        assert!(!is_valid_packet_sequence(&[se.clone(), vec![0]].concat()));
        assert!(!is_valid_packet_sequence(&[]));
    }

    #[test]
    fn legacy_and_partial_lengths() {
        // Legacy PKESK, 1-octet length; legacy SEIPD is impossible (tag > 15), so a new one.
        let mut legacy_pk = vec![0x80 | (1 << 2), 3, 0, 0, 0];
        let se = new_hdr(18, 5);
        legacy_pk.extend_from_slice(&se);
        assert!(is_valid_packet_sequence(&legacy_pk));
        // Legacy indeterminate length is refused.
        assert!(!is_valid_packet_sequence(&[0x80 | (1 << 2) | 3, 0, 0]));
        // SEIPD with a partial chunk of 2 bytes, then a final 1-octet length of 3.
        let partial = [vec![0xC0 | 18, 224 + 1, 0, 0, 3, 0, 0, 0]].concat();
        assert!(is_valid_packet_sequence(&partial));
        // A partial chain that runs past the end.
        assert!(!is_valid_packet_sequence(&[0xC0 | 18, 224 + 20, 0]));
    }

    fn armored(data: &[u8], crc: bool) -> String {
        use base64::engine::general_purpose::STANDARD;
        let mut s = String::from("-----BEGIN PGP MESSAGE-----\r\n\r\n");
        s.push_str(&STANDARD.encode(data));
        s.push_str("\r\n");
        if crc {
            s.push_str("=AAAA\r\n");
        }
        s.push_str("-----END PGP MESSAGE-----\r\n");
        s
    }

    /// Found by the property tests against the oracle (relay/tests/gate_props.rs): the reference
    /// removes every CR before decoding, not only those at line ends.
    #[test]
    fn stray_cr_in_the_base64_is_removed() {
        let seq = [new_hdr(1, 20), new_hdr(18, 31)].concat();
        let a = armored(&seq, true).replacen("\r\n\r\n", "\r\n\r\n\r", 1);
        assert!(is_armored_pgp_message(a.as_bytes(), Direction::Outgoing));
    }

    /// Found by the property tests: padding may be left out, but partial padding is not base64.
    #[test]
    fn base64_padding_complete_or_absent() {
        // 22 + 33 = 55 bytes, 55 % 3 == 1: the base64 ends in "==".
        let seq = [new_hdr(1, 20), new_hdr(18, 31)].concat();
        assert_eq!(seq.len() % 3, 1, "needs '==' padding");
        let full = armored(&seq, false);
        assert!(full.contains("==\r\n"));
        assert!(is_armored_pgp_message(full.as_bytes(), Direction::Incoming));
        let none = full.replace("==\r\n", "\r\n");
        assert!(is_armored_pgp_message(none.as_bytes(), Direction::Incoming));
        let half = full.replace("==\r\n", "=\r\n");
        assert!(!is_armored_pgp_message(
            half.as_bytes(),
            Direction::Incoming
        ));
        // With a CRC line too.
        let half_crc = armored(&seq, true).replace("==\r\n", "=\r\n");
        assert!(!is_armored_pgp_message(
            half_crc.as_bytes(),
            Direction::Incoming
        ));
    }

    /// Found by the property tests: "Version: 1" is compared after `str::trim`, which also
    /// removes a vertical tab (the reference trims the decoded body the same way).
    #[test]
    fn version_part_trimmed_like_a_str() {
        let m = crate::policy::testmsg::encrypted("a@x.org", "b@x.org");
        let m = String::from_utf8(m)
            .unwrap()
            .replacen("Version: 1\r\n", "Version: 1\x0b\r\n", 1);
        let msg = mail_parser::MessageParser::new()
            .parse(m.as_bytes())
            .unwrap();
        assert!(is_encrypted(&msg, Direction::Outgoing));
    }
}
