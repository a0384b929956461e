//! SEARCH and UID SEARCH over the selected mailbox. Criteria on flags, sizes, dates and numbers
//! use the index; header and text criteria read the message (only when the query has them).

use super::io::Framed;
use super::mime;
use super::selected::flag_bit;
use super::sequence::contains;
use super::session::{Done, Session};
use crate::store::Message;
use imap_codec::imap_types::core::{AString, Charset, Vec1};
use imap_codec::imap_types::datetime::NaiveDate;
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::imap_types::search::SearchKey;
use std::io;
use std::num::{NonZeroU32, NonZeroU64};
use tokio::io::{AsyncRead, AsyncWrite};

/// What evaluating a key needs beyond the index record.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reads {
    Index,
    Headers,
    Body,
}

fn reads(k: &SearchKey<'_>) -> Reads {
    use SearchKey as K;
    match k {
        K::And(keys) => keys
            .as_ref()
            .iter()
            .map(reads)
            .max()
            .unwrap_or(Reads::Index),
        K::Not(k) => reads(k),
        K::Or(a, b) => reads(a).max(reads(b)),
        K::Bcc(_)
        | K::Cc(_)
        | K::From(_)
        | K::To(_)
        | K::Subject(_)
        | K::Header(..)
        | K::SentBefore(_)
        | K::SentOn(_)
        | K::SentSince(_) => Reads::Headers,
        K::Body(_) | K::Text(_) => Reads::Body,
        _ => Reads::Index,
    }
}

fn uses_modseq(k: &SearchKey<'_>) -> bool {
    match k {
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_modseq),
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::ModSequence { .. } => true,
        _ => false,
    }
}

fn day_number(d: &NaiveDate) -> i64 {
    d.as_ref()
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp().div_euclid(86_400))
        .unwrap_or(0)
}

/// ASCII case-insensitive substring test, as IMAP SEARCH wants for US-ASCII.
fn find_ci(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

struct Ctx<'a> {
    seq: u32,
    count: u32,
    largest_uid: u32,
    msg: &'a Message,
    raw: &'a [u8],
    headers: Option<&'a mail_parser::Message<'a>>,
}

impl Ctx<'_> {
    fn header_contains(&self, name: &[u8], value: &AString<'_>) -> bool {
        let Some(root) = self.headers.and_then(|h| h.parts.first()) else {
            return false;
        };
        let base = self.headers.map(|h| &h.raw_message[..]).unwrap_or_default();
        let needle = value.as_ref();
        root.headers
            .iter()
            .filter(|h| h.name.as_str().as_bytes().eq_ignore_ascii_case(name))
            .any(|h| {
                let raw = base
                    .get(h.offset_start as usize..h.offset_end as usize)
                    .unwrap_or_default();
                if find_ci(raw, needle) {
                    return true;
                }
                // Also match the decoded form of encoded words.
                let decoded = match &h.value {
                    mail_parser::HeaderValue::Text(t) => t.to_string(),
                    mail_parser::HeaderValue::TextList(l) => l.join(" "),
                    mail_parser::HeaderValue::Address(a) => a
                        .iter()
                        .map(|x| {
                            format!(
                                "{} <{}>",
                                x.name.as_deref().unwrap_or(""),
                                x.address.as_deref().unwrap_or("")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => String::new(),
                };
                find_ci(decoded.as_bytes(), needle)
            })
    }

    fn sent_day(&self) -> Option<i64> {
        let d = self.headers?.date()?;
        let date = chrono::NaiveDate::from_ymd_opt(d.year as i32, d.month as u32, d.day as u32)?;
        Some(
            date.and_hms_opt(0, 0, 0)?
                .and_utc()
                .timestamp()
                .div_euclid(86_400),
        )
    }

    fn eval(&self, k: &SearchKey<'_>) -> bool {
        use SearchKey as K;
        let m = self.msg;
        let has = |name: &str| m.flags.has(flag_bit(name));
        let day = m.internal_date.div_euclid(86_400);
        match k {
            K::And(keys) => keys.as_ref().iter().all(|k| self.eval(k)),
            K::Or(a, b) => self.eval(a) || self.eval(b),
            K::Not(k) => !self.eval(k),
            K::All | K::Old => true,
            K::New | K::Recent => false,
            K::SequenceSet(set) => contains(set, self.seq, self.count),
            K::Uid(set) => contains(set, m.uid, self.largest_uid),
            K::Answered => has("\\Answered"),
            K::Deleted => has("\\Deleted"),
            K::Draft => has("\\Draft"),
            K::Flagged => has("\\Flagged"),
            K::Seen => has("\\Seen"),
            K::Unanswered => !has("\\Answered"),
            K::Undeleted => !has("\\Deleted"),
            K::Undraft => !has("\\Draft"),
            K::Unflagged => !has("\\Flagged"),
            K::Unseen => !has("\\Seen"),
            K::Keyword(a) => m
                .flags
                .keywords
                .iter()
                .any(|k| k.eq_ignore_ascii_case(a.as_ref())),
            K::Unkeyword(a) => !m
                .flags
                .keywords
                .iter()
                .any(|k| k.eq_ignore_ascii_case(a.as_ref())),
            K::Larger(n) => m.size > u64::from(*n),
            K::Smaller(n) => m.size < u64::from(*n),
            K::Before(d) => day < day_number(d),
            K::On(d) => day == day_number(d),
            K::Since(d) => day >= day_number(d),
            K::SentBefore(d) => self.sent_day().is_some_and(|s| s < day_number(d)),
            K::SentOn(d) => self.sent_day().is_some_and(|s| s == day_number(d)),
            K::SentSince(d) => self.sent_day().is_some_and(|s| s >= day_number(d)),
            K::Bcc(v) => self.header_contains(b"Bcc", v),
            K::Cc(v) => self.header_contains(b"Cc", v),
            K::From(v) => self.header_contains(b"From", v),
            K::To(v) => self.header_contains(b"To", v),
            K::Subject(v) => self.header_contains(b"Subject", v),
            K::Header(name, v) => self.header_contains(name.as_ref(), v),
            K::Body(v) => find_ci(&self.raw[mime::header_end(self.raw)..], v.as_ref()),
            K::Text(v) => find_ci(self.raw, v.as_ref()),
            K::ModSequence { modseq, .. } => m.modseq >= *modseq,
        }
    }
}

impl Session {
    pub(super) async fn search<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        charset: Option<Charset<'_>>,
        criteria: Vec1<SearchKey<'_>>,
        uid: bool,
    ) -> io::Result<Done> {
        if let Some(cs) = &charset {
            let cs = cs.as_ref();
            if !cs.eq_ignore_ascii_case("UTF-8") && !cs.eq_ignore_ascii_case("US-ASCII") {
                return Ok(Done::no("Unsupported charset").code(
                    imap_codec::imap_types::response::Code::BadCharset {
                        allowed: ["UTF-8", "US-ASCII"]
                            .into_iter()
                            .filter_map(|c| Charset::try_from(c).ok())
                            .collect(),
                    },
                ));
            }
        }
        let key = SearchKey::And(criteria);
        let modseq = uses_modseq(&key);
        if modseq {
            self.condstore = true;
        }
        let need = reads(&key);
        let Some(sel) = self.selected.as_ref() else {
            return Ok(Done::bad("No mailbox selected"));
        };
        let store = self.relay.store.clone();
        let msgs = match store.messages(sel.id) {
            Ok(m) => m,
            Err(e) => return Ok(Done::store(e)),
        };
        let count = sel.uids.len() as u32;
        let largest_uid = sel.uids.last().copied().unwrap_or(0);
        // Only messages the client knows about, numbered as the client knows them.
        let known: Vec<(u32, Message)> = msgs
            .into_iter()
            .filter_map(|m| sel.seq_of(m.uid).map(|s| (s, m)))
            .collect();
        let mut hits = Vec::new();
        let mut highest = 0u64;
        for (seq, m) in &known {
            let raw = if need > Reads::Index {
                let read = if need == Reads::Body {
                    store.read_body(m.body_id).await
                } else {
                    store.read_head(m.body_id, 1 << 20).await
                };
                match read {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("cannot read a message body: {e}");
                        return Ok(Done::no("Some messages could not be read, try again later"));
                    }
                }
            } else {
                Vec::new()
            };
            let headers = if need > Reads::Index {
                mime::parse_headers(&raw)
            } else {
                None
            };
            let ctx = Ctx {
                seq: *seq,
                count,
                largest_uid,
                msg: m,
                raw: &raw,
                headers: headers.as_ref(),
            };
            if ctx.eval(&key) {
                hits.push(if uid { m.uid } else { *seq });
                highest = highest.max(m.modseq);
            }
        }
        let nums: Vec<NonZeroU32> = hits.into_iter().filter_map(NonZeroU32::new).collect();
        let modseq_reply = if modseq && !nums.is_empty() {
            NonZeroU64::new(highest)
        } else {
            None
        };
        io.send(&Response::Data(Data::Search(nums, modseq_reply)))
            .await?;
        if uid {
            self.send_updates(io).await?;
        }
        Ok(Done::ok("Search completed"))
    }
}
