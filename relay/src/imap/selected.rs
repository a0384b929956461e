//! The selected mailbox: the session's snapshot of it (sequence number → UID), the updates that
//! bring a client in line with the store (EXPUNGE, EXISTS, FETCH FLAGS), and the commands that
//! change messages in place (SELECT, STORE, EXPUNGE, CLOSE, COPY, MOVE).
//!
//! Sequence numbers only change when we tell the client: the snapshot keeps a UID until its
//! EXPUNGE has been sent, even if another session already removed the message (RFC 3501 §7.4.1).
//! Updates are sent only in replies to commands that allow them, never spontaneously.

use super::io::Framed;
use super::sequence::{resolve_seqs, resolve_uids, sequence_set, uid_set, SetError, MAX_RANGES};
use super::session::{other_code, untagged, Done, Session};
use crate::store::{FlagOp, Flags, MailboxId, Message};
use imap_codec::imap_types::command::{SelectParameter, StoreModifier};
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{Flag, FlagFetch, FlagPerm, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Code, Data, Response, StatusKind};
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::IntoStatic;
use std::io;
use std::num::{NonZeroU32, NonZeroU64};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// What a session remembers about its selected mailbox: a few words plus one u32 per message.
pub(crate) struct Selected {
    pub id: MailboxId,
    pub name: String,
    pub read_only: bool,
    /// UIDs in sequence-number order (index + 1 = sequence number), as the client knows them.
    pub uids: Vec<u32>,
    /// Flag changes up to this modseq have been reported (or were known at SELECT).
    pub modseq_seen: u64,
    /// (uid, modseq) of flag changes this session already reported in its own replies, so the
    /// next update does not echo them as if someone else had made them.
    pub self_reported: Vec<(u32, u64)>,
    /// Changes on every store write to this mailbox.
    pub watch: watch::Receiver<u64>,
}

impl Selected {
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.uids.binary_search(&uid).ok().map(|i| i as u32 + 1)
    }

    pub fn note_reported(&mut self, uid: u32, modseq: u64) {
        if self.self_reported.len() >= 10_000 {
            // Only costs a redundant FETCH later.
            self.self_reported = Vec::new();
        }
        self.self_reported.push((uid, modseq));
    }
}

/// IMAP flags to store flags.
pub(crate) fn flags_from(list: &[Flag<'_>]) -> Flags {
    let names: Vec<String> = list.iter().map(|f| f.to_string()).collect();
    Flags::from_names(names.iter().map(String::as_str))
}

/// Store flags to IMAP flags; keywords IMAP cannot carry are left out.
pub(crate) fn flag_list(flags: &Flags) -> Vec<FlagFetch<'static>> {
    flags
        .names()
        .into_iter()
        .filter_map(|n| {
            Flag::try_from(n.as_str())
                .ok()
                .map(|f| FlagFetch::Flag(f.into_static()))
        })
        .collect()
}

/// The bit of one system flag (the bit constants are private to the store).
pub(crate) fn flag_bit(name: &str) -> u8 {
    Flags::from_names([name]).bits
}

pub(crate) fn modseq_item(modseq: u64) -> MessageDataItem<'static> {
    MessageDataItem::ModSeq(NonZeroU64::new(modseq).unwrap_or(NonZeroU64::MIN))
}

/// A mailbox name from the wire: INBOX in any case is INBOX; names must be UTF-8 (modified
/// UTF-7 names are ASCII).
pub(crate) fn mailbox_name(m: &Mailbox<'_>) -> Result<String, Done> {
    match m {
        Mailbox::Inbox => Ok("INBOX".into()),
        Mailbox::Other(o) => match std::str::from_utf8(o.inner().as_ref()) {
            Ok(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(Done::bad("Invalid mailbox name")),
        },
    }
}

fn system_flags() -> Vec<Flag<'static>> {
    vec![
        Flag::Answered,
        Flag::Flagged,
        Flag::Deleted,
        Flag::Seen,
        Flag::Draft,
    ]
}

/// The reply for a sequence set that cannot be used.
pub(super) fn set_error(e: SetError) -> Done {
    match e {
        SetError::Invalid => Done::bad("Invalid message sequence number"),
        // RFC 5530 LIMIT: a server limit, not a syntax error; the client may split the set.
        SetError::TooLarge => Done::no(format!(
            "Too many ranges in the sequence set (at most {MAX_RANGES})"
        ))
        .code(other_code("LIMIT")),
    }
}

impl Session {
    pub(super) fn account_id(&self) -> u64 {
        self.user.as_ref().map(|u| u.id).unwrap_or(0)
    }

    pub(super) async fn select<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        mailbox: &Mailbox<'_>,
        read_only: bool,
        params: Vec<SelectParameter>,
    ) -> io::Result<Done> {
        // A failed SELECT leaves no mailbox selected (RFC 3501 §6.3.1).
        self.selected = None;
        for p in &params {
            match p {
                SelectParameter::CondStore => self.condstore = true,
                SelectParameter::QResync { .. } => return Ok(Done::bad("QRESYNC is not enabled")),
            }
        }
        let name = match mailbox_name(mailbox) {
            Ok(n) => n,
            Err(d) => return Ok(d),
        };
        let store = &self.relay.store;
        let mb = match store.mailbox(self.account_id(), &name) {
            Ok(Some(mb)) => mb,
            Ok(None) => {
                return Ok(Done::no("Mailbox does not exist").code(other_code("NONEXISTENT")))
            }
            Err(e) => return Ok(Done::store(e)),
        };
        // Subscribe before reading, so that nothing written in between goes unnoticed.
        let mut watch = store.watch(mb.id);
        watch.borrow_and_update();
        let (mb, msgs) = match (store.mailbox_by_id(mb.id), store.messages(mb.id)) {
            (Ok(Some(mb)), Ok(msgs)) => (mb, msgs),
            (Ok(None), _) => {
                return Ok(Done::no("Mailbox does not exist").code(other_code("NONEXISTENT")))
            }
            (Err(e), _) | (_, Err(e)) => return Ok(Done::store(e)),
        };
        let uids: Vec<u32> = msgs.iter().map(|m| m.uid).collect();
        let highest = msgs
            .iter()
            .map(|m| m.modseq)
            .max()
            .unwrap_or(0)
            .max(mb.highest_modseq);
        let uidnext = mb
            .uidnext
            .max(uids.last().map_or(1, |u| u.saturating_add(1)));
        let first_unseen = msgs
            .iter()
            .position(|m| !m.flags.has(flag_bit("\\Seen")))
            .map(|i| i as u32 + 1);

        io.send(&Response::Data(Data::Flags(system_flags())))
            .await?;
        let permanent: Vec<FlagPerm<'static>> = if read_only {
            Vec::new()
        } else {
            let mut v: Vec<FlagPerm<'static>> =
                system_flags().into_iter().map(FlagPerm::Flag).collect();
            v.push(FlagPerm::Asterisk);
            v
        };
        io.send(&untagged(
            StatusKind::Ok,
            Some(Code::PermanentFlags(permanent)),
            "Flags permitted",
        ))
        .await?;
        io.send(&Response::Data(Data::Exists(uids.len() as u32)))
            .await?;
        io.send(&Response::Data(Data::Recent(0))).await?;
        if let Some(seq) = first_unseen.and_then(NonZeroU32::new) {
            io.send(&untagged(
                StatusKind::Ok,
                Some(Code::Unseen(seq)),
                "First unseen",
            ))
            .await?;
        }
        let validity = NonZeroU32::new(mb.uidvalidity).unwrap_or(NonZeroU32::MIN);
        io.send(&untagged(
            StatusKind::Ok,
            Some(Code::UidValidity(validity)),
            "UIDs valid",
        ))
        .await?;
        let next = NonZeroU32::new(uidnext).unwrap_or(NonZeroU32::MIN);
        io.send(&untagged(
            StatusKind::Ok,
            Some(Code::UidNext(next)),
            "Predicted next UID",
        ))
        .await?;
        let hm = NonZeroU64::new(highest).unwrap_or(NonZeroU64::MIN);
        io.send(&untagged(
            StatusKind::Ok,
            Some(Code::HighestModSeq(hm)),
            "Highest",
        ))
        .await?;
        self.selected = Some(Selected {
            id: mb.id,
            name: mb.name,
            read_only,
            uids,
            modseq_seen: highest,
            self_reported: Vec::new(),
            watch,
        });
        Ok(if read_only {
            Done::ok("Examine completed").code(Code::ReadOnly)
        } else {
            Done::ok("Select completed").code(Code::ReadWrite)
        })
    }

    /// Brings the client up to date with the store: EXPUNGE for messages gone (highest sequence
    /// number first, so each number is valid when it is read), EXISTS for new ones, FETCH FLAGS
    /// for flags someone else changed. Only call this where RFC 3501 §7.4.1 allows EXPUNGE.
    pub(super) async fn send_updates<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
    ) -> io::Result<()> {
        let condstore = self.condstore;
        let store = self.relay.store.clone();
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        match sel.watch.has_changed() {
            Ok(false) => return Ok(()),
            Ok(true) => {
                sel.watch.borrow_and_update();
            }
            Err(_) => {
                sel.watch = store.watch(sel.id);
                sel.watch.borrow_and_update();
            }
        }
        let msgs = match store.messages(sel.id) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("cannot read mailbox for updates: {e}");
                return Ok(());
            }
        };
        let last_known = sel.uids.last().copied().unwrap_or(0);
        let mut kept = Vec::with_capacity(sel.uids.len());
        let mut gone = Vec::new();
        let mut j = 0;
        for (i, &uid) in sel.uids.iter().enumerate() {
            while j < msgs.len() && msgs[j].uid < uid {
                j += 1;
            }
            if j < msgs.len() && msgs[j].uid == uid {
                kept.push(uid);
            } else {
                gone.push(i as u32 + 1);
            }
        }
        for seq in gone.iter().rev() {
            if let Some(seq) = NonZeroU32::new(*seq) {
                io.send(&Response::Data(Data::Expunge(seq))).await?;
            }
        }
        let before = kept.len();
        kept.extend(msgs.iter().filter(|m| m.uid > last_known).map(|m| m.uid));
        let grew = kept.len() > before;
        sel.uids = kept;
        if grew {
            io.send(&Response::Data(Data::Exists(sel.uids.len() as u32)))
                .await?;
        }
        let mut highest = sel.modseq_seen;
        for m in &msgs {
            highest = highest.max(m.modseq);
            if m.modseq <= sel.modseq_seen
                || m.uid > last_known
                || sel.self_reported.contains(&(m.uid, m.modseq))
            {
                continue;
            }
            if let Some(seq) = sel.seq_of(m.uid) {
                io.send(&flags_response(seq, m, true, condstore)).await?;
            }
        }
        sel.modseq_seen = highest;
        sel.self_reported = Vec::new();
        Ok(())
    }

    /// Sends EXPUNGE for `removed` UIDs this session itself removed and drops them from the
    /// snapshot.
    async fn forget<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        removed: &[u32],
    ) -> io::Result<()> {
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        let mut seqs: Vec<u32> = removed.iter().filter_map(|u| sel.seq_of(*u)).collect();
        seqs.sort_unstable();
        seqs.dedup();
        for seq in seqs.iter().rev() {
            sel.uids.remove(*seq as usize - 1);
            if let Some(seq) = NonZeroU32::new(*seq) {
                io.send(&Response::Data(Data::Expunge(seq))).await?;
            }
        }
        Ok(())
    }

    /// (sequence number, UID) pairs a command names; BAD for sequence numbers that do not exist.
    pub(super) fn targets(&self, set: &SequenceSet, uid: bool) -> Result<Vec<(u32, u32)>, Done> {
        let Some(sel) = self.selected.as_ref() else {
            return Err(Done::bad("No mailbox selected"));
        };
        if uid {
            return resolve_uids(set, &sel.uids).map_err(set_error);
        }
        match resolve_seqs(set, sel.uids.len() as u32) {
            Ok(seqs) => Ok(seqs
                .into_iter()
                .map(|s| (s, sel.uids[s as usize - 1]))
                .collect()),
            Err(e) => Err(set_error(e)),
        }
    }

    pub(super) async fn close(&mut self) -> Done {
        if let Some(sel) = self.selected.take() {
            if !sel.read_only {
                // CLOSE expunges silently (RFC 3501 §6.4.2); the client has left the mailbox.
                if let Err(e) = self.relay.store.expunge(sel.id, None).await {
                    return Done::store(e);
                }
            }
        }
        Done::ok("Close completed")
    }

    pub(super) async fn expunge<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        set: Option<SequenceSet>,
    ) -> io::Result<Done> {
        let Some(sel) = self.selected.as_ref() else {
            return Ok(Done::bad("No mailbox selected"));
        };
        if sel.read_only {
            return Ok(Done::no("Mailbox is read-only").code(other_code("READ-ONLY")));
        }
        let id = sel.id;
        let uids = match set.map(|s| resolve_uids(&s, &sel.uids)).transpose() {
            Ok(t) => t.map(|t| t.into_iter().map(|(_, u)| u).collect()),
            Err(e) => return Ok(set_error(e)),
        };
        let removed = match self.relay.store.expunge(id, uids).await {
            Ok(r) => r,
            Err(e) => return Ok(Done::store(e)),
        };
        self.forget(io, &removed).await?;
        self.send_updates(io).await?;
        Ok(Done::ok("Expunge completed"))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn store<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
        modifiers: &[StoreModifier],
    ) -> io::Result<Done> {
        let targets = match self.targets(set, uid) {
            Ok(t) => t,
            Err(d) => return Ok(d),
        };
        let Some(sel) = self.selected.as_ref() else {
            return Ok(Done::bad("No mailbox selected"));
        };
        if sel.read_only {
            return Ok(Done::no("Mailbox is read-only").code(other_code("READ-ONLY")));
        }
        let mut unchanged_since = None;
        for m in modifiers {
            let StoreModifier::UnchangedSince(n) = m;
            unchanged_since = Some(*n);
            self.condstore = true;
        }
        let op = match kind {
            StoreType::Replace => FlagOp::Replace,
            StoreType::Add => FlagOp::Add,
            StoreType::Remove => FlagOp::Remove,
        };
        let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
        let upd = match self
            .relay
            .store
            .store_flags(sel.id, uids, op, flags_from(flags), unchanged_since)
            .await
        {
            Ok(u) => u,
            Err(e) => return Ok(Done::store(e)),
        };
        let silent = response == StoreResponse::Silent;
        let condstore = self.condstore;
        if let Some(sel) = self.selected.as_mut() {
            let mut updated = upd.updated;
            updated.sort_by_key(|m| m.uid);
            for m in &updated {
                sel.note_reported(m.uid, m.modseq);
                let Some(seq) = sel.seq_of(m.uid) else {
                    continue;
                };
                if !silent {
                    io.send(&flags_response(seq, m, uid, condstore)).await?;
                } else if unchanged_since.is_some() {
                    // RFC 7162 §3.1.3: even .SILENT reports the new MODSEQ.
                    let mut items = Vec::new();
                    if uid {
                        items.push(uid_item(m.uid));
                    }
                    items.push(modseq_item(m.modseq));
                    io.send(&fetch_response(seq, items)).await?;
                }
            }
        }
        if uid {
            self.send_updates(io).await?;
        }
        let mut done = Done::ok("Store completed");
        if !upd.modified.is_empty() {
            let mut nums: Vec<u32> = if uid {
                upd.modified.clone()
            } else {
                let sel = self.selected.as_ref();
                upd.modified
                    .iter()
                    .filter_map(|u| sel.and_then(|s| s.seq_of(*u)))
                    .collect()
            };
            nums.sort_unstable();
            if let Some(set) = sequence_set(&nums) {
                done = Done::ok("Conditional store failed for some messages")
                    .code(Code::Modified(set));
            }
        }
        Ok(done)
    }

    pub(super) async fn copy<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        is_move: bool,
    ) -> io::Result<Done> {
        let targets = match self.targets(set, uid) {
            Ok(t) => t,
            Err(d) => return Ok(d),
        };
        let name = match mailbox_name(mailbox) {
            Ok(n) => n,
            Err(d) => return Ok(d),
        };
        let Some(sel) = self.selected.as_ref() else {
            return Ok(Done::bad("No mailbox selected"));
        };
        if is_move && sel.read_only {
            return Ok(Done::no("Mailbox is read-only").code(other_code("READ-ONLY")));
        }
        let src = sel.id;
        let store = self.relay.store.clone();
        let dst = match store.mailbox(self.account_id(), &name) {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Ok(Done::no("Mailbox does not exist").code(Code::TryCreate));
            }
            Err(e) => return Ok(Done::store(e)),
        };
        let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
        let result = if is_move {
            store.move_messages(src, uids, dst.id).await
        } else {
            store.copy(src, uids, dst.id).await
        };
        let mut result = match result {
            Ok(r) => r,
            Err(e) => return Ok(Done::store(e)),
        };
        result.pairs.sort_unstable();
        let srcs: Vec<u32> = result.pairs.iter().map(|p| p.0).collect();
        let dsts: Vec<u32> = result.pairs.iter().map(|p| p.1).collect();
        let copyuid = match (
            NonZeroU32::new(result.uidvalidity),
            uid_set(&srcs),
            uid_set(&dsts),
        ) {
            (Some(uid_validity), Some(source), Some(destination)) => Some(Code::CopyUid {
                uid_validity,
                source,
                destination,
            }),
            _ => None,
        };
        if is_move {
            // RFC 6851 §4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
            if let Some(code) = copyuid {
                io.send(&untagged(StatusKind::Ok, Some(code), "Moved"))
                    .await?;
            }
            self.forget(io, &srcs).await?;
            if uid {
                self.send_updates(io).await?;
            }
            return Ok(Done::ok("Move completed"));
        }
        if uid {
            self.send_updates(io).await?;
        }
        Ok(match copyuid {
            Some(code) => Done::ok("Copy completed").code(code),
            None => Done::ok("No messages copied"),
        })
    }
}

pub(crate) fn uid_item(uid: u32) -> MessageDataItem<'static> {
    MessageDataItem::Uid(NonZeroU32::new(uid).unwrap_or(NonZeroU32::MIN))
}

pub(crate) fn fetch_response(seq: u32, items: Vec<MessageDataItem<'static>>) -> Response<'static> {
    let seq = NonZeroU32::new(seq).unwrap_or(NonZeroU32::MIN);
    let items =
        Vec1::try_from(items).unwrap_or_else(|_| Vec1::from(MessageDataItem::Flags(Vec::new())));
    Response::Data(Data::Fetch { seq, items })
}

/// `* n FETCH (FLAGS (...) [UID u] [MODSEQ (m)])`.
pub(crate) fn flags_response(
    seq: u32,
    m: &Message,
    uid: bool,
    condstore: bool,
) -> Response<'static> {
    let mut items = vec![MessageDataItem::Flags(flag_list(&m.flags))];
    if uid {
        items.push(uid_item(m.uid));
    }
    if condstore {
        items.push(modseq_item(m.modseq));
    }
    fetch_response(seq, items)
}
