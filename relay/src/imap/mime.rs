//! Message structure for FETCH: ENVELOPE, BODY/BODYSTRUCTURE and body sections, computed from
//! the raw message with mail-parser. Pure functions over bytes.
//!
//! mail-parser keeps byte offsets of every part and header field. A nested message/rfc822 part
//! carries its own `raw_message` that its offsets refer to (the whole outer message when it was
//! parsed in place, the decoded bytes when it was transfer-encoded), so offsets are always taken
//! against the `raw_message` of the message that owns the part.

use super::session::{istring, nstring_opt};
use base64::Engine;
use imap_codec::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
    SinglePartExtensionData, SpecificFields,
};
use imap_codec::imap_types::core::{AString, IString, NString, Vec1};
use imap_codec::imap_types::envelope::{Address, Envelope};
use imap_codec::imap_types::fetch::{Part, Section};
use mail_parser::{Addr, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType};

/// Nesting beyond this is shown as an opaque part; it only happens in hostile messages.
const MAX_DEPTH: usize = 16;

pub(crate) fn parse_full(raw: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(raw)
}

pub(crate) fn parse_headers(raw: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse_headers(raw)
}

/// Where the header ends: just after the empty line, or the end if there is none.
pub(crate) fn header_end(raw: &[u8]) -> usize {
    if raw.starts_with(b"\r\n") {
        return 2;
    }
    if raw.starts_with(b"\n") {
        return 1;
    }
    let mut i = 0;
    while let Some(p) = raw[i..].iter().position(|&b| b == b'\n') {
        let after = i + p + 1;
        if raw[after..].starts_with(b"\r\n") {
            return after + 2;
        }
        if raw[after..].starts_with(b"\n") {
            return after + 1;
        }
        i = after;
    }
    raw.len()
}

fn slice(base: &[u8], from: u32, to: u32) -> &[u8] {
    base.get(from as usize..to as usize).unwrap_or_default()
}

/// The first header field `name` of a part, unfolded and trimmed.
pub(crate) fn raw_header(base: &[u8], part: &MessagePart<'_>, name: &str) -> Option<String> {
    let h = part
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
    let v = String::from_utf8_lossy(slice(base, h.offset_start, h.offset_end));
    Some(v.replace(['\r', '\n'], "").trim().to_string())
}

/// Header fields of a part, verbatim, that are (or with `not`, are not) in `names`, followed by
/// the empty line (RFC 3501 §6.4.5).
fn header_fields(base: &[u8], part: &MessagePart<'_>, names: &[AString<'_>], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for h in &part.headers {
        let name = h.name.as_str().as_bytes();
        let listed = names.iter().any(|n| n.as_ref().eq_ignore_ascii_case(name));
        if listed != not {
            let field = slice(base, h.offset_field, h.offset_end);
            out.extend_from_slice(field);
            if !field.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The part a section path names: the message that owns it and its index in `parts`.
fn locate<'m>(msg: &'m Message<'m>, path: &Part) -> Option<(&'m Message<'m>, usize)> {
    let mut cur = msg;
    let mut idx = 0usize;
    for n in path.0.as_ref() {
        let n = n.get() as usize;
        let part = cur.parts.get(idx)?;
        match &part.body {
            PartType::Multipart(children) if !children.is_empty() => {
                idx = *children.get(n - 1)? as usize;
            }
            // Part numbers below a message/rfc822 part count in the enclosed message.
            PartType::Message(nested) => {
                let root = nested.parts.first()?;
                cur = nested;
                idx = match &root.body {
                    PartType::Multipart(children) if !children.is_empty() => {
                        *children.get(n - 1)? as usize
                    }
                    _ if n == 1 => 0,
                    _ => return None,
                };
            }
            // A non-multipart message has exactly one part, numbered 1: its body.
            _ if n == 1 => {}
            _ => return None,
        }
    }
    Some((cur, idx))
}

/// The message enclosed in a message/rfc822 part.
fn enclosed<'m>(msg: &'m Message<'m>, idx: usize) -> Option<&'m Message<'m>> {
    match &msg.parts.get(idx)?.body {
        PartType::Message(nested) => Some(nested),
        _ => None,
    }
}

/// Whether a section needs the full MIME parse (part numbers) or only the header.
pub(crate) fn needs_full_parse(section: &Section<'_>) -> bool {
    matches!(
        section,
        Section::Part(_)
            | Section::Mime(_)
            | Section::Header(Some(_))
            | Section::Text(Some(_))
            | Section::HeaderFields(Some(_), _)
            | Section::HeaderFieldsNot(Some(_), _)
    )
}

/// The bytes of a body section. `msg` is the parse of `raw` (headers only suffice unless
/// `needs_full_parse`).
pub(crate) fn section_bytes(
    raw: &[u8],
    msg: Option<&Message<'_>>,
    section: Option<&Section<'_>>,
) -> Vec<u8> {
    let Some(section) = section else {
        return raw.to_vec();
    };
    let root = msg.and_then(|m| m.parts.first());
    let at = |path: &Part| msg.and_then(|m| locate(m, path));
    match section {
        Section::Header(None) => raw[..header_end(raw)].to_vec(),
        Section::Text(None) => raw[header_end(raw)..].to_vec(),
        Section::HeaderFields(None, names) => match root {
            Some(r) => header_fields(raw, r, names.as_ref(), false),
            None => b"\r\n".to_vec(),
        },
        Section::HeaderFieldsNot(None, names) => match root {
            Some(r) => header_fields(raw, r, names.as_ref(), true),
            None => raw[..header_end(raw)].to_vec(),
        },
        Section::Part(path) => at(path)
            .and_then(|(m, i)| {
                let p = m.parts.get(i)?;
                Some(slice(&m.raw_message, p.offset_body, p.offset_end).to_vec())
            })
            .unwrap_or_default(),
        Section::Mime(path) => at(path)
            .and_then(|(m, i)| {
                let p = m.parts.get(i)?;
                Some(slice(&m.raw_message, p.offset_header, p.offset_body).to_vec())
            })
            .unwrap_or_default(),
        Section::Header(Some(path))
        | Section::Text(Some(path))
        | Section::HeaderFields(Some(path), _)
        | Section::HeaderFieldsNot(Some(path), _) => at(path)
            .and_then(|(m, i)| {
                let nested = enclosed(m, i)?;
                let r = nested.parts.first()?;
                let base = &nested.raw_message[..];
                Some(match section {
                    Section::Header(_) => slice(base, r.offset_header, r.offset_body).to_vec(),
                    Section::Text(_) => slice(base, r.offset_body, r.offset_end).to_vec(),
                    Section::HeaderFields(_, names) => {
                        header_fields(base, r, names.as_ref(), false)
                    }
                    Section::HeaderFieldsNot(_, names) => {
                        header_fields(base, r, names.as_ref(), true)
                    }
                    _ => Vec::new(),
                })
            })
            .unwrap_or_default(),
    }
}

/// RFC 2047 encoded words for a display name that is not plain ASCII; ENVELOPE carries header
/// text in its encoded form.
fn encode_words(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in s.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| {
            format!(
                "=?utf-8?b?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn address(a: &Addr<'_>) -> Address<'static> {
    let addr = a.address.as_deref().unwrap_or("");
    let (mailbox, host) = match addr.rsplit_once('@') {
        Some((l, h)) => (Some(l), Some(h)),
        None => (Some(addr), None),
    };
    Address {
        name: nstring_opt(a.name.as_deref().map(encode_words).as_deref()),
        adl: NString(None),
        mailbox: nstring_opt(mailbox),
        host: nstring_opt(host),
    }
}

fn group_marker(name: Option<&str>) -> Address<'static> {
    Address {
        name: NString(None),
        adl: NString(None),
        mailbox: nstring_opt(name),
        host: NString(None),
    }
}

fn addresses(part: &MessagePart<'_>, name: &str) -> Vec<Address<'static>> {
    let Some(h) = part
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
    else {
        return Vec::new();
    };
    match &h.value {
        HeaderValue::Address(mail_parser::Address::List(list)) => {
            list.iter().map(address).collect()
        }
        HeaderValue::Address(mail_parser::Address::Group(groups)) => {
            let mut out = Vec::new();
            for g in groups {
                // RFC 3501 §7.4.2: a group is framed by (NIL NIL "name" NIL) … (NIL NIL NIL NIL).
                if let Some(n) = g.name.as_deref() {
                    out.push(group_marker(Some(n)));
                }
                out.extend(g.addresses.iter().map(address));
                if g.name.is_some() {
                    out.push(group_marker(None));
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

pub(crate) fn envelope(msg: &Message<'_>) -> Envelope<'static> {
    let base = &msg.raw_message[..];
    let Some(root) = msg.parts.first() else {
        return Envelope {
            date: NString(None),
            subject: NString(None),
            from: vec![],
            sender: vec![],
            reply_to: vec![],
            to: vec![],
            cc: vec![],
            bcc: vec![],
            in_reply_to: NString(None),
            message_id: NString(None),
        };
    };
    let raw = |name: &str| nstring_opt(raw_header(base, root, name).as_deref());
    let from = addresses(root, "From");
    let or_from = |v: Vec<Address<'static>>| if v.is_empty() { from.clone() } else { v };
    Envelope {
        date: raw("Date"),
        subject: raw("Subject"),
        sender: or_from(addresses(root, "Sender")),
        reply_to: or_from(addresses(root, "Reply-To")),
        to: addresses(root, "To"),
        cc: addresses(root, "Cc"),
        bcc: addresses(root, "Bcc"),
        in_reply_to: raw("In-Reply-To"),
        message_id: raw("Message-ID"),
        from,
    }
}

fn params(
    attrs: Option<&[mail_parser::Attribute<'_>]>,
) -> Vec<(IString<'static>, IString<'static>)> {
    attrs
        .unwrap_or_default()
        .iter()
        .map(|a| (istring(&a.name), istring(&a.value)))
        .collect()
}

fn lines(body: &[u8]) -> u32 {
    let n = body.iter().filter(|&&b| b == b'\n').count();
    let partial = !body.is_empty() && !body.ends_with(b"\n");
    (n + partial as usize) as u32
}

fn disposition(base: &[u8], part: &MessagePart<'_>) -> Disposition<'static> {
    let disposition = part
        .content_disposition()
        .map(|d| (istring(&d.c_type), params(d.attributes.as_deref())));
    let language = raw_header(base, part, "Content-Language")
        .map(|l| {
            l.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(istring)
                .collect()
        })
        .unwrap_or_default();
    Disposition {
        disposition,
        tail: Some(Language {
            language,
            tail: Some(Location {
                location: nstring_opt(raw_header(base, part, "Content-Location").as_deref()),
                extensions: Vec::new(),
            }),
        }),
    }
}

/// BODYSTRUCTURE (`extended`) or BODY of a message.
pub(crate) fn body_structure(msg: &Message<'_>, extended: bool) -> BodyStructure<'static> {
    structure(msg, 0, extended, 0)
}

fn structure(msg: &Message<'_>, idx: usize, ext: bool, depth: usize) -> BodyStructure<'static> {
    let base = &msg.raw_message[..];
    let Some(part) = msg.parts.get(idx) else {
        return single(base, &MessagePart::default(), ext, depth);
    };
    if let PartType::Multipart(children) = &part.body {
        if depth < MAX_DEPTH {
            let bodies: Vec<BodyStructure<'static>> = children
                .iter()
                .filter(|&&c| c as usize != idx)
                .map(|&c| structure(msg, c as usize, ext, depth + 1))
                .collect();
            if let Ok(bodies) = Vec1::try_from(bodies) {
                let ct = part.content_type();
                let subtype = ct.and_then(|c| c.c_subtype.as_deref()).unwrap_or("mixed");
                return BodyStructure::Multi {
                    bodies,
                    subtype: istring(subtype),
                    extension_data: ext.then(|| MultiPartExtensionData {
                        parameter_list: params(ct.and_then(|c| c.attributes.as_deref())),
                        tail: Some(disposition(base, part)),
                    }),
                };
            }
        }
    }
    match &part.body {
        PartType::Message(nested) if depth < MAX_DEPTH => {
            let body = slice(base, part.offset_body, part.offset_end);
            let specific = SpecificFields::Message {
                envelope: Box::new(envelope(nested)),
                body_structure: Box::new(structure(nested, 0, ext, depth + 1)),
                number_of_lines: lines(body),
            };
            finish(base, part, ext, specific)
        }
        _ => single(base, part, ext, depth),
    }
}

fn single(base: &[u8], part: &MessagePart<'_>, ext: bool, _depth: usize) -> BodyStructure<'static> {
    let ct = part.content_type();
    let ty = ct.map(|c| c.c_type.as_ref()).unwrap_or("text");
    let sub =
        ct.and_then(|c| c.c_subtype.as_deref())
            .unwrap_or(if ty.eq_ignore_ascii_case("text") {
                "plain"
            } else {
                "octet-stream"
            });
    let body = slice(base, part.offset_body, part.offset_end);
    let specific = if ty.eq_ignore_ascii_case("text") {
        SpecificFields::Text {
            subtype: istring(sub),
            number_of_lines: lines(body),
        }
    } else if ty.eq_ignore_ascii_case("message") && sub.eq_ignore_ascii_case("rfc822")
        || ty.eq_ignore_ascii_case("multipart")
    {
        // The grammar of these types needs what we could not parse; show the bytes as opaque.
        SpecificFields::Basic {
            r#type: istring("application"),
            subtype: istring("octet-stream"),
        }
    } else {
        SpecificFields::Basic {
            r#type: istring(ty),
            subtype: istring(sub),
        }
    };
    finish(base, part, ext, specific)
}

fn finish(
    base: &[u8],
    part: &MessagePart<'_>,
    ext: bool,
    specific: SpecificFields<'static>,
) -> BodyStructure<'static> {
    let ct = part.content_type();
    let mut parameter_list = params(ct.and_then(|c| c.attributes.as_deref()));
    if parameter_list.is_empty() && matches!(specific, SpecificFields::Text { .. }) {
        parameter_list.push((istring("charset"), istring("us-ascii")));
    }
    let cte = raw_header(base, part, "Content-Transfer-Encoding")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "7bit".to_string());
    let body = slice(base, part.offset_body, part.offset_end);
    let basic = BasicFields {
        parameter_list,
        id: nstring_opt(raw_header(base, part, "Content-ID").as_deref()),
        description: nstring_opt(raw_header(base, part, "Content-Description").as_deref()),
        content_transfer_encoding: istring(&cte),
        size: u32::try_from(body.len()).unwrap_or(u32::MAX),
    };
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data: ext.then(|| SinglePartExtensionData {
            md5: nstring_opt(raw_header(base, part, "Content-MD5").as_deref()),
            tail: Some(disposition(base, part)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_end_finds_the_empty_line() {
        assert_eq!(header_end(b"A: b\r\n\r\nbody"), 8);
        assert_eq!(header_end(b"A: b\n\nbody"), 6);
        assert_eq!(header_end(b"\r\nbody"), 2);
        assert_eq!(header_end(b"A: b\r\n"), 6);
    }

    #[test]
    fn non_ascii_names_become_encoded_words() {
        assert_eq!(encode_words("Bob"), "Bob");
        assert_eq!(encode_words("Jörg"), "=?utf-8?b?SsO2cmc=?=");
    }

    #[test]
    fn lines_count_a_partial_last_line() {
        assert_eq!(lines(b"a\r\nb"), 2);
        assert_eq!(lines(b"a\r\nb\r\n"), 2);
        assert_eq!(lines(b""), 0);
    }
}
