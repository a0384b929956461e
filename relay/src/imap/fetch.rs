//! FETCH and UID FETCH.
//!
//! Bodies are read from disk only when an item needs them, parsed only as far as needed (headers
//! for ENVELOPE and HEADER.FIELDS, the full MIME tree for BODYSTRUCTURE and part numbers), and
//! each message's response is written before the next body is read.

use super::io::Framed;
use super::mime;
use super::selected::{fetch_response, flag_bit, flag_list, modseq_item, uid_item};
use super::session::{Done, Session};
use crate::store::{FlagOp, Flags, Message};
use imap_codec::imap_types::command::FetchModifier;
use imap_codec::imap_types::core::{IString, Literal, NString};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::fetch::{
    MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName,
};
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::IntoStatic;
use std::collections::HashMap;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};

/// A literal for message data. IMAP literals cannot carry NUL; like Dovecot we send 0x80 in its
/// place, which keeps the size.
fn literal(mut data: Vec<u8>) -> NString<'static> {
    for b in data.iter_mut() {
        if *b == 0 {
            *b = 0x80;
        }
    }
    match Literal::try_from(data) {
        Ok(l) => NString(Some(IString::Literal(l))),
        Err(_) => NString(None),
    }
}

fn internal_date(secs: i64) -> Option<DateTime> {
    let dt = chrono::DateTime::from_timestamp(secs, 0)?.fixed_offset();
    DateTime::try_from(dt).ok()
}

fn needs_body(n: &MessageDataItemName<'_>) -> bool {
    use MessageDataItemName as N;
    matches!(
        n,
        N::Body
            | N::BodyExt { .. }
            | N::BodyStructure
            | N::Envelope
            | N::Rfc822
            | N::Rfc822Header
            | N::Rfc822Text
    )
}

fn needs_full_parse(n: &MessageDataItemName<'_>) -> bool {
    use MessageDataItemName as N;
    match n {
        N::Body | N::BodyStructure => true,
        N::BodyExt {
            section: Some(s), ..
        } => mime::needs_full_parse(s),
        _ => false,
    }
}

fn needs_headers(n: &MessageDataItemName<'_>) -> bool {
    use imap_codec::imap_types::fetch::Section as S;
    use MessageDataItemName as N;
    matches!(
        n,
        N::Envelope
            | N::BodyExt {
                section: Some(S::HeaderFields(None, _) | S::HeaderFieldsNot(None, _)),
                ..
            }
    )
}

/// Items answered from the message header alone, so that Delta Chat's prefetch of a few header
/// fields does not read whole attachments from the SD card.
fn head_only(n: &MessageDataItemName<'_>) -> bool {
    use imap_codec::imap_types::fetch::Section as S;
    use MessageDataItemName as N;
    matches!(
        n,
        N::Envelope
            | N::Rfc822Header
            | N::BodyExt {
                section: Some(
                    S::HeaderFields(None, _) | S::HeaderFieldsNot(None, _) | S::Header(None)
                ),
                ..
            }
    )
}

/// A header longer than this is cut for head-only fetches (a real one is a few KiB).
const MAX_HEAD: usize = 1 << 20;

/// Items that set \Seen as a side effect (RFC 3501 §6.4.5).
fn sets_seen(n: &MessageDataItemName<'_>) -> bool {
    use MessageDataItemName as N;
    matches!(
        n,
        N::BodyExt { peek: false, .. } | N::Rfc822 | N::Rfc822Text
    )
}

fn partial(data: Vec<u8>, p: Option<(u32, std::num::NonZeroU32)>) -> Vec<u8> {
    match p {
        None => data,
        Some((origin, len)) => {
            let start = (origin as usize).min(data.len());
            let end = start.saturating_add(len.get() as usize).min(data.len());
            data[start..end].to_vec()
        }
    }
}

impl Session {
    pub(super) async fn fetch<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: &[FetchModifier],
    ) -> io::Result<Done> {
        let targets = match self.targets(set, uid) {
            Ok(t) => t,
            Err(d) => return Ok(d),
        };
        let names: Vec<MessageDataItemName<'static>> = match items {
            MacroOrMessageDataItemNames::Macro(m) => m
                .expand()
                .into_iter()
                .map(IntoStatic::into_static)
                .collect(),
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => {
                v.into_iter().map(IntoStatic::into_static).collect()
            }
        };
        if names.iter().any(|n| {
            matches!(
                n,
                MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. }
            )
        }) {
            return Ok(Done::bad("BINARY is not supported"));
        }
        let mut changed_since = None;
        for m in modifiers {
            match m {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => return Ok(Done::bad("QRESYNC is not enabled")),
            }
        }
        let want_modseq = changed_since.is_some() || names.contains(&MessageDataItemName::ModSeq);
        if want_modseq {
            self.condstore = true;
        }
        let Some(sel) = self.selected.as_ref() else {
            return Ok(Done::bad("No mailbox selected"));
        };
        let (mailbox, read_only) = (sel.id, sel.read_only);
        let store = self.relay.store.clone();

        // The message records, from one read of the mailbox unless only a few are wanted.
        let mut records: HashMap<u32, Message> = HashMap::new();
        if targets.len() <= 16 {
            for (_, u) in &targets {
                match store.message(mailbox, *u) {
                    Ok(Some(m)) => {
                        records.insert(*u, m);
                    }
                    Ok(None) => {}
                    Err(e) => return Ok(Done::store(e)),
                }
            }
        } else {
            let wanted: std::collections::HashSet<u32> = targets.iter().map(|t| t.1).collect();
            match store.messages(mailbox) {
                Ok(all) => records.extend(
                    all.into_iter()
                        .filter(|m| wanted.contains(&m.uid))
                        .map(|m| (m.uid, m)),
                ),
                Err(e) => return Ok(Done::store(e)),
            }
        }
        if let Some(since) = changed_since {
            records.retain(|_, m| m.modseq > since);
        }

        // Set \Seen before answering, so the FLAGS we send are the new ones.
        let mut flags_changed = std::collections::HashSet::new();
        if !read_only && names.iter().any(sets_seen) {
            let seen = flag_bit("\\Seen");
            let unseen: Vec<u32> = records
                .values()
                .filter(|m| !m.flags.has(seen))
                .map(|m| m.uid)
                .collect();
            if !unseen.is_empty() {
                let flags = Flags::from_names(["\\Seen"]);
                match store
                    .store_flags(mailbox, unseen, FlagOp::Add, flags, None)
                    .await
                {
                    Ok(upd) => {
                        for m in upd.updated {
                            if let Some(sel) = self.selected.as_mut() {
                                sel.note_reported(m.uid, m.modseq);
                            }
                            flags_changed.insert(m.uid);
                            records.insert(m.uid, m);
                        }
                    }
                    Err(e) => return Ok(Done::store(e)),
                }
            }
        }

        let body_wanted = names.iter().any(needs_body);
        let head_wanted = names.iter().filter(|n| needs_body(n)).all(head_only);
        let full_wanted = names.iter().any(needs_full_parse);
        let headers_wanted = names.iter().any(needs_headers);
        let mut failed = false;
        for (seq, u) in &targets {
            // Gone (another session expunged it, not yet reported) or filtered out.
            let Some(rec) = records.get(u) else {
                continue;
            };
            let body = if body_wanted {
                let read = if head_wanted {
                    store.read_head(rec.body_id, MAX_HEAD).await
                } else {
                    store.read_body(rec.body_id).await
                };
                match read {
                    Ok(b) => Some(b),
                    Err(e) => {
                        tracing::error!("cannot read a message body: {e}");
                        failed = true;
                        continue;
                    }
                }
            } else {
                None
            };
            let parsed = match &body {
                Some(b) if full_wanted => mime::parse_full(b),
                Some(b) if headers_wanted => mime::parse_headers(b),
                _ => None,
            };
            let mut out = Vec::with_capacity(names.len() + 2);
            if uid && !names.contains(&MessageDataItemName::Uid) {
                out.push(uid_item(rec.uid));
            }
            for n in &names {
                out.push(item(n, rec, body.as_deref(), parsed.as_ref()));
            }
            if flags_changed.contains(u) && !names.contains(&MessageDataItemName::Flags) {
                out.push(MessageDataItem::Flags(flag_list(&rec.flags)));
            }
            if want_modseq && !names.contains(&MessageDataItemName::ModSeq) {
                out.push(modseq_item(rec.modseq));
            }
            drop(parsed);
            drop(body);
            io.send(&fetch_response(*seq, out)).await?;
        }
        if uid {
            self.send_updates(io).await?;
        }
        if failed {
            return Ok(Done::no("Some messages could not be read, try again later"));
        }
        Ok(Done::ok("Fetch completed"))
    }
}

fn item(
    n: &MessageDataItemName<'static>,
    rec: &Message,
    body: Option<&[u8]>,
    parsed: Option<&mail_parser::Message<'_>>,
) -> MessageDataItem<'static> {
    use MessageDataItemName as N;
    let raw = body.unwrap_or_default();
    match n {
        N::Uid => uid_item(rec.uid),
        N::Flags => MessageDataItem::Flags(flag_list(&rec.flags)),
        N::InternalDate => match internal_date(rec.internal_date) {
            Some(d) => MessageDataItem::InternalDate(d),
            // Out of IMAP's range; the epoch is the least wrong answer.
            None => internal_date(0)
                .map(MessageDataItem::InternalDate)
                .unwrap_or_else(|| MessageDataItem::Rfc822Size(0)),
        },
        N::Rfc822Size => MessageDataItem::Rfc822Size(u32::try_from(rec.size).unwrap_or(u32::MAX)),
        N::ModSeq => modseq_item(rec.modseq),
        N::Envelope => MessageDataItem::Envelope(match parsed {
            Some(p) => mime::envelope(p),
            None => mime::envelope(&mail_parser::Message::default()),
        }),
        N::BodyStructure | N::Body => {
            let ext = matches!(n, N::BodyStructure);
            let bs = match parsed {
                Some(p) => mime::body_structure(p, ext),
                None => mime::body_structure(&mail_parser::Message::default(), ext),
            };
            if ext {
                MessageDataItem::BodyStructure(bs)
            } else {
                MessageDataItem::Body(bs)
            }
        }
        N::BodyExt {
            section,
            partial: p,
            ..
        } => {
            let data = mime::section_bytes(raw, parsed, section.as_ref());
            MessageDataItem::BodyExt {
                section: section.clone(),
                origin: p.map(|(o, _)| o),
                data: literal(partial(data, *p)),
            }
        }
        N::Rfc822 => MessageDataItem::Rfc822(literal(raw.to_vec())),
        N::Rfc822Header => {
            MessageDataItem::Rfc822Header(literal(raw[..mime::header_end(raw)].to_vec()))
        }
        N::Rfc822Text => {
            MessageDataItem::Rfc822Text(literal(raw[mime::header_end(raw)..].to_vec()))
        }
        // Refused before we get here.
        N::Binary { .. } | N::BinarySize { .. } => MessageDataItem::Rfc822Size(0),
    }
}
