//! Commands of the authenticated state that work on mailboxes as a whole: LIST/LSUB, CREATE,
//! DELETE, RENAME, (UN)SUBSCRIBE, STATUS, APPEND, NAMESPACE, ENABLE.

use super::io::Framed;
use super::selected::{flag_bit, flags_from, mailbox_name};
use super::session::{istring, other_code, Done, Session};
use crate::store::Body;
use imap_codec::imap_types::core::{Atom, QuotedChar, Vec1};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::extensions::namespace::Namespace;
use imap_codec::imap_types::flag::{Flag, FlagNameAttribute};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::{Code, Data, Response};
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};
use std::borrow::Cow;
use std::io;
use std::num::NonZeroU32;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

const DELIMITER: char = '/';
/// LIST patterns longer than this are refused; matching is quadratic.
const MAX_PATTERN: usize = 1024;

/// RFC 6154 attributes by the names the reference's Dovecot configures (chatmail-relay §5.2).
fn special_use(name: &str) -> Option<&'static str> {
    let special = [
        ("Sent", "Sent"),
        ("Sent Messages", "Sent"),
        ("Drafts", "Drafts"),
        ("Trash", "Trash"),
        ("Junk", "Junk"),
    ];
    special
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, a)| *a)
}

fn attribute(name: &str) -> Option<FlagNameAttribute<'static>> {
    Atom::try_from(name.to_string())
        .ok()
        .map(FlagNameAttribute::from)
}

/// RFC 3501 §6.3.8 wildcards: `*` matches anything, `%` anything but the delimiter. INBOX is
/// matched case-insensitively.
pub(crate) fn list_matches(pattern: &str, name: &str) -> bool {
    let ci = name == "INBOX";
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    // row[j]: p[..i] matches n[..j]
    let mut row = vec![false; n.len() + 1];
    row[0] = true;
    for &pc in p {
        let mut next = vec![false; n.len() + 1];
        match pc {
            b'*' | b'%' => {
                // next[j]: some k <= j matched, and n[k..j] may be eaten by the wildcard.
                let mut reach = false;
                for j in 0..=n.len() {
                    if pc == b'%' && j > 0 && n[j - 1] == DELIMITER as u8 {
                        reach = false;
                    }
                    reach |= row[j];
                    next[j] = reach;
                }
            }
            _ => {
                for j in 1..=n.len() {
                    let eq = if ci {
                        pc.eq_ignore_ascii_case(&n[j - 1])
                    } else {
                        pc == n[j - 1]
                    };
                    next[j] = row[j - 1] && eq;
                }
            }
        }
        row = next;
    }
    row[n.len()]
}

impl Session {
    pub(super) async fn list<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
    ) -> io::Result<Done> {
        let reference = match reference {
            Mailbox::Inbox => "INBOX".to_string(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.inner().as_ref()).into_owned(),
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
            ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
        };
        let delimiter = QuotedChar::try_from(DELIMITER).ok();
        let make = |items: Vec<FlagNameAttribute<'static>>, mailbox: Mailbox<'static>| {
            if lsub {
                Data::Lsub {
                    items,
                    delimiter,
                    mailbox,
                }
            } else {
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                }
            }
        };
        if pattern.is_empty() {
            // `LIST "" ""` asks for the hierarchy delimiter (RFC 3501 §6.3.8).
            if let Ok(root) = Mailbox::try_from(String::new()) {
                io.send(&Response::Data(make(
                    vec![FlagNameAttribute::Noselect],
                    root,
                )))
                .await?;
            }
            return Ok(Done::ok("List completed"));
        }
        let full = format!("{reference}{pattern}");
        if full.len() > MAX_PATTERN {
            return Ok(Done::bad("Pattern too long"));
        }
        let mut mbs = match self.relay.store.mailboxes(self.account_id()) {
            Ok(m) => m,
            Err(e) => return Ok(Done::store(e)),
        };
        mbs.sort_by(|a, b| (a.name != "INBOX", &a.name).cmp(&(b.name != "INBOX", &b.name)));
        for mb in &mbs {
            if (lsub && !mb.subscribed) || !list_matches(&full, &mb.name) {
                continue;
            }
            let prefix = format!("{}{DELIMITER}", mb.name);
            let children = mbs.iter().any(|o| o.name.starts_with(&prefix));
            let mut items = Vec::new();
            items.extend(attribute(if children {
                "HasChildren"
            } else {
                "HasNoChildren"
            }));
            if let Some(su) = special_use(&mb.name) {
                items.extend(attribute(su));
            }
            if let Ok(mailbox) = Mailbox::try_from(mb.name.clone()) {
                io.send(&Response::Data(make(items, mailbox))).await?;
            }
        }
        Ok(Done::ok(if lsub {
            "Lsub completed"
        } else {
            "List completed"
        }))
    }

    pub(super) async fn create(&mut self, mailbox: &Mailbox<'_>) -> Done {
        let name = match mailbox_name(mailbox) {
            Ok(n) => n,
            Err(d) => return d,
        };
        // A trailing delimiter only says the client wants to put children under it.
        let name = name.trim_end_matches(DELIMITER);
        if name.is_empty() || name.split(DELIMITER).any(str::is_empty) {
            return Done::bad("Invalid mailbox name");
        }
        if name.eq_ignore_ascii_case("INBOX") {
            return Done::no("INBOX exists").code(other_code("ALREADYEXISTS"));
        }
        match self
            .relay
            .store
            .create_mailbox(self.account_id(), name)
            .await
        {
            Ok(_) => Done::ok("Create completed"),
            Err(e) => Done::store(e),
        }
    }

    pub(super) async fn delete(&mut self, mailbox: &Mailbox<'_>) -> Done {
        let name = match mailbox_name(mailbox) {
            Ok(n) => n,
            Err(d) => return d,
        };
        match self
            .relay
            .store
            .delete_mailbox(self.account_id(), &name)
            .await
        {
            Ok(()) => {
                if self.selected.as_ref().is_some_and(|s| s.name == name) {
                    self.selected = None;
                }
                Done::ok("Delete completed")
            }
            Err(e) => Done::store(e),
        }
    }

    pub(super) async fn rename(&mut self, from: &Mailbox<'_>, to: &Mailbox<'_>) -> Done {
        let (from, to) = match (mailbox_name(from), mailbox_name(to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(d), _) | (_, Err(d)) => return d,
        };
        let to = to.trim_end_matches(DELIMITER).to_string();
        if to.is_empty() {
            return Done::bad("Invalid mailbox name");
        }
        match self
            .relay
            .store
            .rename_mailbox(self.account_id(), &from, &to)
            .await
        {
            Ok(()) => {
                if let Some(sel) = self.selected.as_mut() {
                    if sel.name == from && from != "INBOX" {
                        sel.name = to;
                    }
                }
                Done::ok("Rename completed")
            }
            Err(e) => Done::store(e),
        }
    }

    pub(super) async fn subscribe(&mut self, mailbox: &Mailbox<'_>, on: bool) -> Done {
        let name = match mailbox_name(mailbox) {
            Ok(n) => n,
            Err(d) => return d,
        };
        match self
            .relay
            .store
            .set_subscribed(self.account_id(), &name, on)
            .await
        {
            Ok(()) if on => Done::ok("Subscribe completed"),
            Ok(()) => Done::ok("Unsubscribe completed"),
            Err(e) => Done::store(e),
        }
    }

    pub(super) async fn status<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        mailbox: &Mailbox<'_>,
        names: &[StatusDataItemName],
    ) -> io::Result<Done> {
        let name = match mailbox_name(mailbox) {
            Ok(n) => n,
            Err(d) => return Ok(d),
        };
        let store = &self.relay.store;
        let mb = match store.mailbox(self.account_id(), &name) {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Ok(Done::no("Mailbox does not exist").code(other_code("NONEXISTENT")))
            }
            Err(e) => return Ok(Done::store(e)),
        };
        let needs_scan = names.iter().any(|n| {
            matches!(
                n,
                StatusDataItemName::Deleted | StatusDataItemName::DeletedStorage
            )
        });
        let (deleted, deleted_bytes) = if needs_scan {
            match store.messages(mb.id) {
                Ok(msgs) => {
                    let del = flag_bit("\\Deleted");
                    msgs.iter()
                        .filter(|m| m.flags.has(del))
                        .fold((0u32, 0u64), |(n, b), m| (n + 1, b + m.size))
                }
                Err(e) => return Ok(Done::store(e)),
            }
        } else {
            (0, 0)
        };
        let mut items = Vec::new();
        for n in names {
            items.push(match n {
                StatusDataItemName::Messages => StatusDataItem::Messages(mb.exists),
                StatusDataItemName::Recent => StatusDataItem::Recent(0),
                StatusDataItemName::UidNext => {
                    StatusDataItem::UidNext(NonZeroU32::new(mb.uidnext).unwrap_or(NonZeroU32::MIN))
                }
                StatusDataItemName::UidValidity => StatusDataItem::UidValidity(
                    NonZeroU32::new(mb.uidvalidity).unwrap_or(NonZeroU32::MIN),
                ),
                StatusDataItemName::Unseen => StatusDataItem::Unseen(mb.unseen),
                StatusDataItemName::Deleted => StatusDataItem::Deleted(deleted),
                StatusDataItemName::DeletedStorage => StatusDataItem::DeletedStorage(deleted_bytes),
                StatusDataItemName::HighestModSeq => {
                    self.condstore = true;
                    StatusDataItem::HighestModSeq(mb.highest_modseq.max(1))
                }
            });
        }
        if let Ok(mailbox) = Mailbox::try_from(mb.name) {
            io.send(&Response::Data(Data::Status {
                mailbox,
                items: Cow::Owned(items),
            }))
            .await?;
        }
        Ok(Done::ok("Status completed"))
    }

    pub(super) async fn append<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        mailbox: &Mailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<DateTime>,
        message: LiteralOrLiteral8<'_>,
    ) -> io::Result<Done> {
        let name = match mailbox_name(mailbox) {
            Ok(n) => n,
            Err(d) => return Ok(d),
        };
        // A big message went to disk as it arrived; `message` is then a placeholder.
        let spooled = io.take_spooled();
        let store = &self.relay.store;
        let account = self.account_id();
        let mb = match store.mailbox(account, &name) {
            Ok(Some(m)) => m,
            // Nothing is created: the client decides after TRYCREATE (RFC 3501 §6.3.11).
            Ok(None) => return Ok(Done::no("Mailbox does not exist").code(Code::TryCreate)),
            Err(e) => return Ok(Done::store(e)),
        };
        let data: &[u8] = match &message {
            LiteralOrLiteral8::Literal(l) => l.data(),
            LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
        };
        let size = spooled.as_ref().map_or(data.len() as u64, |s| s.len());
        let cfg = &self.relay.cfg;
        if size > cfg.max_message_size {
            return Ok(Done::no("Message too large").code(Code::TooBig));
        }
        match store.usage(account) {
            Ok(used) if used.saturating_add(size) > cfg.max_mailbox_size.0 => {
                return Ok(Done::no("Mailbox is full").code(Code::OverQuota));
            }
            Ok(_) => {}
            Err(e) => return Ok(Done::store(e)),
        }
        let internal_date = date
            .map(|d| d.as_ref().timestamp())
            .unwrap_or_else(|| self.relay.clock.now());
        let body = match spooled {
            Some(s) => Body::Spooled(s),
            None => Body::Bytes(Arc::from(data)),
        };
        let (validity, uid) = match store
            .append_body(mb.id, flags_from(flags), internal_date, body)
            .await
        {
            Ok(r) => r,
            Err(e) => return Ok(Done::store(e)),
        };
        if self.selected.as_ref().is_some_and(|s| s.id == mb.id) {
            self.send_updates(io).await?;
        }
        Ok(match (NonZeroU32::new(validity), NonZeroU32::new(uid)) {
            (Some(uid_validity), Some(uid)) => {
                Done::ok("Append completed").code(Code::AppendUid { uid_validity, uid })
            }
            _ => Done::ok("Append completed"),
        })
    }

    pub(super) async fn namespace<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
    ) -> io::Result<Done> {
        let personal = vec![Namespace::new(
            istring(""),
            QuotedChar::try_from(DELIMITER).ok(),
        )];
        io.send(&Response::Data(Data::Namespace {
            personal,
            other: Vec::new(),
            shared: Vec::new(),
        }))
        .await?;
        Ok(Done::ok("Namespace completed"))
    }

    pub(super) async fn enable<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        caps: Vec1<CapabilityEnable<'_>>,
    ) -> io::Result<Done> {
        let mut enabled = Vec::new();
        for c in caps.into_iter() {
            if c == CapabilityEnable::CondStore {
                self.condstore = true;
                enabled.push(CapabilityEnable::CondStore);
            }
        }
        io.send(&Response::Data(Data::Enabled {
            capabilities: enabled,
        }))
        .await?;
        Ok(Done::ok("Enable completed"))
    }
}

#[cfg(test)]
mod tests {
    use super::list_matches;

    #[test]
    fn list_wildcards() {
        assert!(list_matches("*", "INBOX"));
        assert!(list_matches("inbox", "INBOX"));
        assert!(!list_matches("inbox", "Inbox2"));
        assert!(list_matches("*", "a/b/c"));
        assert!(list_matches("%", "Sent"));
        assert!(!list_matches("%", "a/b"));
        assert!(list_matches("a/%", "a/b"));
        assert!(!list_matches("a/%", "a/b/c"));
        assert!(list_matches("a*c", "a/b/c"));
        assert!(list_matches("%/%", "a/b"));
        assert!(!list_matches("Sent", "sent"));
        assert!(list_matches("Se%", "Sent Messages"));
    }
}
