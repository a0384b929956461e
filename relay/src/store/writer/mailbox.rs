//! Ops on the mailbox tables (MAILBOXES, MAILBOX_IDS): create, delete, rename, subscribe.

use super::account::get_account_w;
use super::message::{all_messages, insert_message, remove_uids};
use super::{next_counter, Effects, LoggedOp, WriteOp};
use crate::store::index::*;
use crate::store::{AccountId, MailboxId, StoreError};
use redb::{ReadableTable, WriteTransaction};

pub(super) fn get_mailbox_w(
    txn: &WriteTransaction,
    account: AccountId,
    name: &str,
) -> Result<Option<Mailbox>, StoreError> {
    let t = txn.open_table(MAILBOXES)?;
    let r = t.get((account, name))?;
    match r {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

pub(super) fn get_mailbox_by_id_w(
    txn: &WriteTransaction,
    id: MailboxId,
) -> Result<Mailbox, StoreError> {
    let (account, name) = {
        let t = txn.open_table(MAILBOX_IDS)?;
        let v = t.get(id)?.ok_or(StoreError::NoSuchMailbox)?;
        let (a, n) = v.value();
        (a, n.to_string())
    };
    get_mailbox_w(txn, account, &name)?.ok_or(StoreError::NoSuchMailbox)
}

pub(super) fn put_mailbox(txn: &WriteTransaction, m: &Mailbox) -> Result<(), StoreError> {
    let mut t = txn.open_table(MAILBOXES)?;
    t.insert((m.account, m.name.as_str()), encode(m)?.as_slice())?;
    let mut ids = txn.open_table(MAILBOX_IDS)?;
    ids.insert(m.id, (m.account, m.name.as_str()))?;
    Ok(())
}

pub(super) fn new_mailbox(
    txn: &WriteTransaction,
    account: AccountId,
    name: &str,
) -> Result<Mailbox, StoreError> {
    let id = next_counter(txn, "mailbox", 0)?;
    // UIDVALIDITY grows with time and never repeats, so a mailbox deleted and made again (or a
    // store restored from backup into a fresh one) never reuses UIDs under an old validity.
    // The batch's time, not the clock's: a batch replayed from the log must get the same value.
    let now = super::batch_now();
    let uidvalidity = next_counter(txn, "uidvalidity", now.saturating_sub(1))? as u32;
    let m = Mailbox {
        id,
        account,
        name: name.to_string(),
        uidvalidity,
        uidnext: 1,
        highest_modseq: 1,
        subscribed: true,
        exists: 0,
        unseen: 0,
    };
    put_mailbox(txn, &m)?;
    Ok(m)
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct CreateMailbox {
    pub account: AccountId,
    pub name: String,
}

impl WriteOp for CreateMailbox {
    fn logged(&self) -> LoggedOp {
        LoggedOp::CreateMailbox(self.clone())
    }

    type Out = Mailbox;

    fn apply(self, txn: &WriteTransaction, _: &mut Effects) -> Result<Mailbox, StoreError> {
        get_account_w(txn, self.account)?;
        if get_mailbox_w(txn, self.account, &self.name)?.is_some() {
            return Err(StoreError::MailboxExists);
        }
        new_mailbox(txn, self.account, &self.name)
    }
}

/// Deletes a mailbox with its messages.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct DeleteMailbox {
    pub account: AccountId,
    pub name: String,
}

impl WriteOp for DeleteMailbox {
    fn logged(&self) -> LoggedOp {
        LoggedOp::DeleteMailbox(self.clone())
    }

    type Out = ();

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<(), StoreError> {
        let DeleteMailbox { account, name } = self;
        if name == "INBOX" {
            return Err(StoreError::InboxProtected);
        }
        let mut mb = get_mailbox_w(txn, account, &name)?.ok_or(StoreError::NoSuchMailbox)?;
        let uids: Vec<u32> = all_messages(txn, mb.id)?.iter().map(|m| m.uid).collect();
        remove_uids(txn, &mut mb, &uids, eff)?;
        txn.open_table(MAILBOXES)?
            .remove((account, name.as_str()))?;
        txn.open_table(MAILBOX_IDS)?.remove(mb.id)?;
        eff.touched.push(mb.id);
        Ok(())
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct RenameMailbox {
    pub account: AccountId,
    pub from: String,
    pub to: String,
}

impl WriteOp for RenameMailbox {
    fn logged(&self) -> LoggedOp {
        LoggedOp::RenameMailbox(self.clone())
    }

    type Out = ();

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<(), StoreError> {
        let RenameMailbox { account, from, to } = self;
        let mut mb = get_mailbox_w(txn, account, &from)?.ok_or(StoreError::NoSuchMailbox)?;
        if get_mailbox_w(txn, account, &to)?.is_some() {
            return Err(StoreError::MailboxExists);
        }
        if to == "INBOX" {
            return Err(StoreError::InboxProtected);
        }
        if from == "INBOX" {
            // RFC 3501: renaming INBOX moves its messages and leaves an empty INBOX.
            let mut dst = new_mailbox(txn, account, &to)?;
            let msgs = all_messages(txn, mb.id)?;
            for m in &msgs {
                insert_message(
                    txn,
                    &mut dst,
                    m.body_id,
                    m.size,
                    m.internal_date,
                    m.flags.clone(),
                )?;
            }
            put_mailbox(txn, &dst)?;
            let uids: Vec<u32> = msgs.iter().map(|m| m.uid).collect();
            remove_uids(txn, &mut mb, &uids, eff)?;
            put_mailbox(txn, &mb)?;
            eff.touched.push(mb.id);
        } else {
            txn.open_table(MAILBOXES)?
                .remove((account, from.as_str()))?;
            mb.name = to;
            put_mailbox(txn, &mb)?;
            eff.touched.push(mb.id);
        }
        Ok(())
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct Subscribe {
    pub account: AccountId,
    pub name: String,
    pub subscribed: bool,
}

impl WriteOp for Subscribe {
    fn logged(&self) -> LoggedOp {
        LoggedOp::Subscribe(self.clone())
    }

    type Out = ();

    fn apply(self, txn: &WriteTransaction, _: &mut Effects) -> Result<(), StoreError> {
        let mut mb =
            get_mailbox_w(txn, self.account, &self.name)?.ok_or(StoreError::NoSuchMailbox)?;
        mb.subscribed = self.subscribed;
        put_mailbox(txn, &mb)
    }
}
