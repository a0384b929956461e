//! Ops on the message tables (MESSAGES, BODY_REFS): delivery, APPEND, flags, expunge, copy and
//! move. A message record names a body file; BODY_REFS counts the records naming each body
//! (COPY shares it), and the body is freed (`free_body`) by the commit that drops the last one.

use super::account::{get_account_w, put_account};
use super::mailbox::{get_mailbox_by_id_w, get_mailbox_w, put_mailbox};
use super::{Effects, LocalCopy, LoggedOp, WriteOp};
use crate::store::index::*;
use crate::store::{AccountId, CopyResult, FlagOp, FlagUpdate, MailboxId, StoreError};
use redb::{ReadableTable, WriteTransaction};
use std::collections::BTreeSet;

pub(super) fn put_message(
    txn: &WriteTransaction,
    mailbox: MailboxId,
    m: &Message,
) -> Result<(), StoreError> {
    let mut t = txn.open_table(MESSAGES)?;
    t.insert((mailbox, m.uid), encode(m)?.as_slice())?;
    Ok(())
}

pub(super) fn add_ref(txn: &WriteTransaction, body: u64) -> Result<(), StoreError> {
    let mut t = txn.open_table(BODY_REFS)?;
    let n = t.get(body)?.map(|v| v.value()).unwrap_or(0);
    t.insert(body, n + 1)?;
    Ok(())
}

/// Drops one reference; returns true when the body is no longer named and can be unlinked.
pub(super) fn drop_ref(txn: &WriteTransaction, body: u64) -> Result<bool, StoreError> {
    let mut t = txn.open_table(BODY_REFS)?;
    let n = t.get(body)?.map(|v| v.value()).unwrap_or(0);
    if n <= 1 {
        t.remove(body)?;
        Ok(true)
    } else {
        t.insert(body, n - 1)?;
        Ok(false)
    }
}

/// A body nobody names any more: an inline one leaves the index in this transaction, a file
/// is unlinked after the commit.
pub(super) fn free_body(
    txn: &WriteTransaction,
    body: u64,
    eff: &mut Effects,
) -> Result<(), StoreError> {
    if txn.open_table(BODIES)?.remove(body)?.is_none() {
        eff.freed_bodies.push(body);
    } else {
        txn.open_table(INLINE_IDS)?.remove(body)?;
    }
    Ok(())
}

/// Adds a message to a mailbox (assigning UID and modseq) and keeps the counters right.
pub(super) fn insert_message(
    txn: &WriteTransaction,
    mb: &mut Mailbox,
    body_id: u64,
    size: u64,
    internal_date: i64,
    flags: Flags,
) -> Result<u32, StoreError> {
    let uid = mb.uidnext;
    mb.uidnext += 1;
    mb.highest_modseq += 1;
    mb.exists += 1;
    if !flags.has(SEEN) {
        mb.unseen += 1;
    }
    let m = Message {
        uid,
        body_id,
        size,
        internal_date,
        flags,
        modseq: mb.highest_modseq,
    };
    put_message(txn, mb.id, &m)?;
    add_ref(txn, body_id)?;
    let mut acc = get_account_w(txn, mb.account)?;
    acc.used_bytes += size;
    put_account(txn, &acc)?;
    Ok(uid)
}

/// Removes messages by UID; returns the removed UIDs and the bodies no longer referenced.
pub(super) fn remove_uids(
    txn: &WriteTransaction,
    mb: &mut Mailbox,
    uids: &[u32],
    eff: &mut Effects,
) -> Result<Vec<u32>, StoreError> {
    let mut removed = Vec::new();
    let mut freed_bytes = 0u64;
    for &uid in uids {
        let m: Message = {
            let mut t = txn.open_table(MESSAGES)?;
            let r = t.remove((mb.id, uid))?;
            match r {
                Some(v) => decode(v.value())?,
                None => continue,
            }
        };
        mb.exists = mb.exists.saturating_sub(1);
        if !m.flags.has(SEEN) {
            mb.unseen = mb.unseen.saturating_sub(1);
        }
        freed_bytes += m.size;
        if drop_ref(txn, m.body_id)? {
            free_body(txn, m.body_id, eff)?;
        }
        removed.push(uid);
    }
    if !removed.is_empty() {
        mb.highest_modseq += 1;
        let mut acc = get_account_w(txn, mb.account)?;
        acc.used_bytes = acc.used_bytes.saturating_sub(freed_bytes);
        put_account(txn, &acc)?;
        eff.touched.push(mb.id);
    }
    Ok(removed)
}

pub(super) fn all_messages(
    txn: &WriteTransaction,
    mailbox: MailboxId,
) -> Result<Vec<Message>, StoreError> {
    let t = txn.open_table(MESSAGES)?;
    let mut out = Vec::new();
    for r in t.range((mailbox, 0u32)..=(mailbox, u32::MAX))? {
        let (_, v) = r?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

/// Stores one body in the INBOX of each account. Every account is checked before anything is
/// written, so a missing one leaves the transaction untouched (a logical error).
pub(super) fn deliver_local(
    txn: &WriteTransaction,
    l: &LocalCopy,
    eff: &mut Effects,
) -> Result<(), StoreError> {
    let mut boxes = Vec::with_capacity(l.accounts.len());
    for a in &l.accounts {
        get_account_w(txn, *a)?;
        boxes.push(get_mailbox_w(txn, *a, "INBOX")?.ok_or(StoreError::NoSuchMailbox)?);
    }
    for mb in &mut boxes {
        insert_message(
            txn,
            mb,
            l.body_id,
            l.size,
            l.internal_date,
            Flags::default(),
        )?;
        put_mailbox(txn, mb)?;
        eff.touched.push(mb.id);
    }
    Ok(())
}

/// A small body kept in the index (BODIES) instead of a file: it travels in the batch's log
/// record, so the one `fdatasync` of the log covers body and index. The writer puts it in
/// just before the op that names it (`Request::apply`), and logs it just before that op.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct PutBody {
    pub id: u64,
    pub data: Vec<u8>,
}

impl WriteOp for PutBody {
    fn logged(&self) -> LoggedOp {
        LoggedOp::PutBody(self.clone())
    }

    type Out = ();

    fn apply(self, txn: &WriteTransaction, _: &mut Effects) -> Result<(), StoreError> {
        txn.open_table(BODIES)?
            .insert(self.id, self.data.as_slice())?;
        txn.open_table(INLINE_IDS)?.insert(self.id, ())?;
        Ok(())
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct Deliver {
    pub accounts: Vec<AccountId>,
    pub body_id: u64,
    pub size: u64,
    pub internal_date: i64,
}

impl WriteOp for Deliver {
    fn logged(&self) -> LoggedOp {
        LoggedOp::Deliver(self.clone())
    }

    type Out = ();

    fn new_bodies(&self) -> Vec<u64> {
        vec![self.body_id]
    }

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<(), StoreError> {
        let l = LocalCopy {
            accounts: self.accounts,
            body_id: self.body_id,
            size: self.size,
            internal_date: self.internal_date,
        };
        deliver_local(txn, &l, eff)
    }
}

/// APPEND; answers (uidvalidity, uid).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct Append {
    pub mailbox: MailboxId,
    pub flags: Flags,
    pub body_id: u64,
    pub size: u64,
    pub internal_date: i64,
}

impl WriteOp for Append {
    fn logged(&self) -> LoggedOp {
        LoggedOp::Append(self.clone())
    }

    type Out = (u32, u32);

    fn new_bodies(&self) -> Vec<u64> {
        vec![self.body_id]
    }

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<(u32, u32), StoreError> {
        let mut mb = get_mailbox_by_id_w(txn, self.mailbox)?;
        let uid = insert_message(
            txn,
            &mut mb,
            self.body_id,
            self.size,
            self.internal_date,
            self.flags,
        )?;
        put_mailbox(txn, &mb)?;
        eff.touched.push(mb.id);
        Ok((mb.uidvalidity, uid))
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct StoreFlags {
    pub mailbox: MailboxId,
    pub uids: Vec<u32>,
    pub op: FlagOp,
    pub flags: Flags,
    pub unchanged_since: Option<u64>,
}

/// The flags a message gets when `op` applies `flags` to its `old` ones.
fn changed_flags(old: &Flags, op: FlagOp, flags: &Flags) -> Flags {
    match op {
        FlagOp::Replace => flags.clone(),
        FlagOp::Add => {
            let mut f = old.clone();
            f.bits |= flags.bits;
            for k in &flags.keywords {
                if !f.keywords.iter().any(|x| x.eq_ignore_ascii_case(k)) {
                    f.keywords.push(k.clone());
                }
            }
            f
        }
        FlagOp::Remove => {
            let mut f = old.clone();
            f.bits &= !flags.bits;
            f.keywords
                .retain(|x| !flags.keywords.iter().any(|k| k.eq_ignore_ascii_case(x)));
            f
        }
    }
}

fn get_message_w(
    txn: &WriteTransaction,
    mailbox: MailboxId,
    uid: u32,
) -> Result<Option<Message>, StoreError> {
    let t = txn.open_table(MESSAGES)?;
    let r = t.get((mailbox, uid))?;
    match r {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

impl WriteOp for StoreFlags {
    fn logged(&self) -> LoggedOp {
        LoggedOp::StoreFlags(self.clone())
    }

    type Out = FlagUpdate;

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<FlagUpdate, StoreError> {
        let mailbox = self.mailbox;
        let mut mb = get_mailbox_by_id_w(txn, mailbox)?;
        let mut out = FlagUpdate::default();
        let mut changed_any = false;
        for uid in self.uids {
            let Some(mut m) = get_message_w(txn, mailbox, uid)? else {
                continue;
            };
            if let Some(since) = self.unchanged_since {
                if m.modseq > since {
                    out.modified.push(uid);
                    continue;
                }
            }
            let new = changed_flags(&m.flags, self.op, &self.flags);
            if new != m.flags {
                let was_seen = m.flags.has(SEEN);
                let now_seen = new.has(SEEN);
                if was_seen && !now_seen {
                    mb.unseen += 1;
                } else if !was_seen && now_seen {
                    mb.unseen = mb.unseen.saturating_sub(1);
                }
                mb.highest_modseq += 1;
                m.flags = new;
                m.modseq = mb.highest_modseq;
                put_message(txn, mailbox, &m)?;
                changed_any = true;
            }
            out.updated.push(m);
        }
        if changed_any {
            put_mailbox(txn, &mb)?;
            eff.touched.push(mailbox);
        }
        Ok(out)
    }
}

/// Removes messages flagged `\Deleted` (only among `uids` if given); answers the removed UIDs.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct Expunge {
    pub mailbox: MailboxId,
    pub uids: Option<Vec<u32>>,
}

impl WriteOp for Expunge {
    fn logged(&self) -> LoggedOp {
        LoggedOp::Expunge(self.clone())
    }

    type Out = Vec<u32>;

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<Vec<u32>, StoreError> {
        let mailbox = self.mailbox;
        let mut mb = get_mailbox_by_id_w(txn, mailbox)?;
        let wanted: Option<BTreeSet<u32>> = self.uids.map(|u| u.into_iter().collect());
        let victims: Vec<u32> = all_messages(txn, mailbox)?
            .into_iter()
            .filter(|m| m.flags.has(DELETED))
            .filter(|m| wanted.as_ref().is_none_or(|w| w.contains(&m.uid)))
            .map(|m| m.uid)
            .collect();
        let removed = remove_uids(txn, &mut mb, &victims, eff)?;
        if !removed.is_empty() {
            put_mailbox(txn, &mb)?;
        }
        Ok(removed)
    }
}

/// Removes the named messages whatever their flags; answers the removed UIDs.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct Remove {
    pub mailbox: MailboxId,
    pub uids: Vec<u32>,
}

impl WriteOp for Remove {
    fn logged(&self) -> LoggedOp {
        LoggedOp::Remove(self.clone())
    }

    type Out = Vec<u32>;

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<Vec<u32>, StoreError> {
        let mut mb = get_mailbox_by_id_w(txn, self.mailbox)?;
        let removed = remove_uids(txn, &mut mb, &self.uids, eff)?;
        if !removed.is_empty() {
            put_mailbox(txn, &mb)?;
        }
        Ok(removed)
    }
}

/// COPY, or MOVE with `remove` (the source messages go in the same transaction).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct Copy {
    pub src: MailboxId,
    pub uids: Vec<u32>,
    pub dst: MailboxId,
    pub remove: bool,
}

impl WriteOp for Copy {
    fn logged(&self) -> LoggedOp {
        LoggedOp::Copy(self.clone())
    }

    type Out = CopyResult;

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<CopyResult, StoreError> {
        let Copy {
            src,
            uids,
            dst,
            remove,
        } = self;
        let mut sbox = get_mailbox_by_id_w(txn, src)?;
        let mut dbox = get_mailbox_by_id_w(txn, dst)?;
        let mut pairs = Vec::new();
        let mut moved = Vec::new();
        for uid in uids {
            let Some(m) = get_message_w(txn, src, uid)? else {
                continue;
            };
            let new_uid = insert_message(
                txn,
                &mut dbox,
                m.body_id,
                m.size,
                m.internal_date,
                m.flags.clone(),
            )?;
            pairs.push((uid, new_uid));
            moved.push(uid);
        }
        if src == dst {
            // Copy into the same mailbox: the destination record is the one to keep.
            sbox = dbox.clone();
        }
        if remove {
            remove_uids(txn, &mut sbox, &moved, eff)?;
            if src == dst {
                dbox = sbox.clone();
            }
            put_mailbox(txn, &sbox)?;
        }
        put_mailbox(txn, &dbox)?;
        if !pairs.is_empty() {
            eff.touched.push(dst);
        }
        Ok(CopyResult {
            uidvalidity: dbox.uidvalidity,
            pairs,
        })
    }
}
