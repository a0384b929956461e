//! SEARCH and UID SEARCH over the selected mailbox. Criteria on flags, sizes, dates and numbers
//! use the index; header and text criteria read the message (only when the query has them).

use super::io::Framed;
use super::mime;
use super::selected::flag_bit;
use super::selected::set_error;
use super::sequence::{Ranges, SetError, MAX_RANGES};
use super::session::{other_code, Done, Session};
use crate::store::Message;
use imap_codec::imap_types::core::{AString, Charset, Vec1};
use imap_codec::imap_types::datetime::NaiveDate;
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use memchr::memmem;
use std::io;
use std::num::{NonZeroU32, NonZeroU64};
use tokio::io::{AsyncRead, AsyncWrite};

/// The longest search string accepted (bytes). Matching is linear, but a long needle still
/// costs a copy per key and message; real clients search for words and addresses.
pub(crate) const MAX_NEEDLE: usize = 1024;

/// Body and header searches that may run at once, relay-wide. They read and scan message files
/// on the blocking pool; the bound keeps a few clients from taking every core.
const PARALLEL_SEARCHES: usize = 2;
static SEARCH_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PARALLEL_SEARCHES);

/// What evaluating a query needs beyond the index record.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reads {
    Index,
    Headers,
    Body,
}

fn day_number(d: &NaiveDate) -> i64 {
    d.as_ref()
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp().div_euclid(86_400))
        .unwrap_or(0)
}

/// An ASCII case-insensitive substring matcher (IMAP SEARCH for US-ASCII; other bytes compare
/// exactly, as before): the needle is lowercased once, each haystack once per test, and
/// memmem's search is linear in the haystack, whatever the needle.
struct Needle(memmem::Finder<'static>);

impl Needle {
    fn new(needle: &[u8]) -> Needle {
        Needle(memmem::Finder::new(&needle.to_ascii_lowercase()).into_owned())
    }

    /// `hay` must already be ASCII-lowercased.
    fn in_lower(&self, hay: &[u8]) -> bool {
        self.0.find(hay).is_some()
    }

    fn in_raw(&self, hay: &[u8]) -> bool {
        self.in_lower(&hay.to_ascii_lowercase())
    }
}

/// ASCII case-insensitive substring test (for the fuzz target's comparison with a naive one).
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn find_ci(hay: &[u8], needle: &[u8]) -> bool {
    Needle::new(needle).in_raw(hay)
}

/// Why a query is refused before it runs.
enum Refused {
    TooManyRanges,
    NeedleTooLong,
}

/// A SEARCH key compiled once per command: sequence sets normalised to ranges, needles to
/// finders, and owned, so it can run on the blocking pool.
enum Query {
    And(Vec<Query>),
    Or(Box<Query>, Box<Query>),
    Not(Box<Query>),
    Const(bool),
    Seq(Ranges),
    Uid(Ranges),
    /// The flag's bit, and whether it must be set.
    Flag(u8, bool),
    Keyword(String, bool),
    Larger(u64),
    Smaller(u64),
    Before(i64),
    On(i64),
    Since(i64),
    SentBefore(i64),
    SentOn(i64),
    SentSince(i64),
    Header(Vec<u8>, Needle),
    Body(Needle),
    Text(Needle),
    ModSeq(u64),
}

/// Sizes a compiled query must stay within.
struct Budget {
    /// Sequence-set ranges left for the whole command.
    ranges: usize,
}

impl Query {
    fn compile(
        k: &SearchKey<'_>,
        count: u32,
        largest_uid: u32,
        budget: &mut Budget,
    ) -> Result<Query, Refused> {
        use SearchKey as K;
        let mut ranges = |set: &SequenceSet, largest: u32| {
            let n = set.0.as_ref().len();
            budget.ranges = budget.ranges.checked_sub(n).ok_or(Refused::TooManyRanges)?;
            Ok(Ranges::new(set, largest))
        };
        let needle = |v: &[u8]| {
            if v.len() > MAX_NEEDLE {
                return Err(Refused::NeedleTooLong);
            }
            Ok(Needle::new(v))
        };
        let header =
            |name: &[u8], v: &AString<'_>| Ok(Query::Header(name.to_vec(), needle(v.as_ref())?));
        Ok(match k {
            K::And(keys) => {
                let mut v = Vec::with_capacity(keys.as_ref().len());
                for k in keys.as_ref() {
                    v.push(Query::compile(k, count, largest_uid, budget)?);
                }
                Query::And(v)
            }
            K::Or(a, b) => Query::Or(
                Box::new(Query::compile(a, count, largest_uid, budget)?),
                Box::new(Query::compile(b, count, largest_uid, budget)?),
            ),
            K::Not(k) => Query::Not(Box::new(Query::compile(k, count, largest_uid, budget)?)),
            K::All | K::Old => Query::Const(true),
            K::New | K::Recent => Query::Const(false),
            K::SequenceSet(set) => Query::Seq(ranges(set, count)?),
            K::Uid(set) => Query::Uid(ranges(set, largest_uid)?),
            K::Answered => Query::Flag(flag_bit("\\Answered"), true),
            K::Deleted => Query::Flag(flag_bit("\\Deleted"), true),
            K::Draft => Query::Flag(flag_bit("\\Draft"), true),
            K::Flagged => Query::Flag(flag_bit("\\Flagged"), true),
            K::Seen => Query::Flag(flag_bit("\\Seen"), true),
            K::Unanswered => Query::Flag(flag_bit("\\Answered"), false),
            K::Undeleted => Query::Flag(flag_bit("\\Deleted"), false),
            K::Undraft => Query::Flag(flag_bit("\\Draft"), false),
            K::Unflagged => Query::Flag(flag_bit("\\Flagged"), false),
            K::Unseen => Query::Flag(flag_bit("\\Seen"), false),
            K::Keyword(a) => Query::Keyword(a.as_ref().to_string(), true),
            K::Unkeyword(a) => Query::Keyword(a.as_ref().to_string(), false),
            K::Larger(n) => Query::Larger(u64::from(*n)),
            K::Smaller(n) => Query::Smaller(u64::from(*n)),
            K::Before(d) => Query::Before(day_number(d)),
            K::On(d) => Query::On(day_number(d)),
            K::Since(d) => Query::Since(day_number(d)),
            K::SentBefore(d) => Query::SentBefore(day_number(d)),
            K::SentOn(d) => Query::SentOn(day_number(d)),
            K::SentSince(d) => Query::SentSince(day_number(d)),
            K::Bcc(v) => header(b"Bcc", v)?,
            K::Cc(v) => header(b"Cc", v)?,
            K::From(v) => header(b"From", v)?,
            K::To(v) => header(b"To", v)?,
            K::Subject(v) => header(b"Subject", v)?,
            K::Header(name, v) => header(name.as_ref(), v)?,
            K::Body(v) => Query::Body(needle(v.as_ref())?),
            K::Text(v) => Query::Text(needle(v.as_ref())?),
            K::ModSequence { modseq, .. } => Query::ModSeq(*modseq),
        })
    }

    fn reads(&self) -> Reads {
        match self {
            Query::And(v) => v.iter().map(Query::reads).max().unwrap_or(Reads::Index),
            Query::Not(q) => q.reads(),
            Query::Or(a, b) => a.reads().max(b.reads()),
            Query::Header(..) | Query::SentBefore(_) | Query::SentOn(_) | Query::SentSince(_) => {
                Reads::Headers
            }
            Query::Body(_) | Query::Text(_) => Reads::Body,
            _ => Reads::Index,
        }
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

struct Ctx<'a> {
    seq: u32,
    msg: &'a Message,
    raw: &'a [u8],
    headers: Option<&'a mail_parser::Message<'a>>,
    /// `raw` ASCII-lowercased, made on the first BODY or TEXT test of this message.
    lower: std::cell::OnceCell<Vec<u8>>,
}

impl Ctx<'_> {
    fn lower(&self) -> &[u8] {
        self.lower.get_or_init(|| self.raw.to_ascii_lowercase())
    }

    fn header_contains(&self, name: &[u8], needle: &Needle) -> bool {
        let Some(root) = self.headers.and_then(|h| h.parts.first()) else {
            return false;
        };
        let base = self.headers.map(|h| &h.raw_message[..]).unwrap_or_default();
        root.headers
            .iter()
            .filter(|h| h.name.as_str().as_bytes().eq_ignore_ascii_case(name))
            .any(|h| {
                let raw = base
                    .get(h.offset_start as usize..h.offset_end as usize)
                    .unwrap_or_default();
                if needle.in_raw(raw) {
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
                needle.in_raw(decoded.as_bytes())
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

    fn eval(&self, q: &Query) -> bool {
        let m = self.msg;
        let day = m.internal_date.div_euclid(86_400);
        match q {
            Query::And(v) => v.iter().all(|q| self.eval(q)),
            Query::Or(a, b) => self.eval(a) || self.eval(b),
            Query::Not(q) => !self.eval(q),
            Query::Const(b) => *b,
            Query::Seq(r) => r.contains(self.seq),
            Query::Uid(r) => r.contains(m.uid),
            Query::Flag(bit, set) => m.flags.has(*bit) == *set,
            Query::Keyword(a, set) => {
                m.flags.keywords.iter().any(|k| k.eq_ignore_ascii_case(a)) == *set
            }
            Query::Larger(n) => m.size > *n,
            Query::Smaller(n) => m.size < *n,
            Query::Before(d) => day < *d,
            Query::On(d) => day == *d,
            Query::Since(d) => day >= *d,
            Query::SentBefore(d) => self.sent_day().is_some_and(|s| s < *d),
            Query::SentOn(d) => self.sent_day().is_some_and(|s| s == *d),
            Query::SentSince(d) => self.sent_day().is_some_and(|s| s >= *d),
            Query::Header(name, n) => self.header_contains(name, n),
            Query::Body(n) => n.in_lower(&self.lower()[mime::header_end(self.raw)..]),
            Query::Text(n) => n.in_lower(self.lower()),
            Query::ModSeq(modseq) => m.modseq >= *modseq,
        }
    }
}

/// Runs `query` over `known` (sequence number, record) pairs, reading message files as it
/// needs: (hits as sequence numbers or UIDs, highest modseq among them). Blocking: it reads
/// files and scans bodies, so it runs on the blocking pool.
fn run_query(
    store: &crate::store::Store,
    query: &Query,
    known: &[(u32, Message)],
    uid: bool,
) -> Result<(Vec<u32>, u64), crate::store::StoreError> {
    let need = query.reads();
    let mut hits = Vec::new();
    let mut highest = 0u64;
    for (seq, m) in known {
        let raw = match need {
            Reads::Body => store.read_body_blocking(m.body_id)?,
            Reads::Headers => store.read_head_blocking(m.body_id, 1 << 20)?,
            Reads::Index => Vec::new(),
        };
        let headers = if need > Reads::Index {
            mime::parse_headers(&raw)
        } else {
            None
        };
        let ctx = Ctx {
            seq: *seq,
            msg: m,
            raw: &raw,
            headers: headers.as_ref(),
            lower: std::cell::OnceCell::new(),
        };
        if ctx.eval(query) {
            hits.push(if uid { m.uid } else { *seq });
            highest = highest.max(m.modseq);
        }
    }
    Ok((hits, highest))
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
        let Some(sel) = self.selected.as_ref() else {
            return Ok(Done::bad("No mailbox selected"));
        };
        let count = sel.uids.len() as u32;
        let largest_uid = sel.uids.last().copied().unwrap_or(0);
        let mut budget = Budget { ranges: MAX_RANGES };
        let query = match Query::compile(&key, count, largest_uid, &mut budget) {
            Ok(q) => q,
            Err(Refused::TooManyRanges) => {
                return Ok(set_error(SetError::TooLarge));
            }
            Err(Refused::NeedleTooLong) => {
                return Ok(Done::no(format!(
                    "Search string too long (at most {MAX_NEEDLE} bytes)"
                ))
                .code(other_code("LIMIT")));
            }
        };
        drop(key);
        let store = self.relay.store.clone();
        let msgs = match store.messages(sel.id) {
            Ok(m) => m,
            Err(e) => return Ok(Done::store(e)),
        };
        // Only messages the client knows about, numbered as the client knows them.
        let known: Vec<(u32, Message)> = msgs
            .into_iter()
            .filter_map(|m| sel.seq_of(m.uid).map(|s| (s, m)))
            .collect();
        // Off the async workers: a body scan over a full mailbox takes long enough to delay
        // every other session on the same worker (greetings included). Those that read message
        // files also take a slot, held by the task itself so that a client hanging up does not
        // free it early.
        let slot = if query.reads() > Reads::Index {
            match SEARCH_SLOTS.acquire().await {
                Ok(p) => Some(p),
                Err(_) => return Ok(Done::no("Server shutting down")),
            }
        } else {
            None
        };
        let run = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            run_query(&store, &query, &known, uid)
        });
        let (hits, highest) = match run.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!("cannot read a message body: {e}");
                return Ok(Done::no("Some messages could not be read, try again later"));
            }
            Err(e) => {
                tracing::error!("search task failed: {e}");
                return Ok(Done::no("Search failed, try again later"));
            }
        };
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
