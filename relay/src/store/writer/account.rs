//! Ops on the account tables (ACCOUNTS, ACCOUNT_IDS): creation, deletion, logins and push
//! device tokens.

use super::mailbox::{get_mailbox_by_id_w, new_mailbox};
use super::message::{all_messages, remove_uids};
use super::{next_counter, Effects, LoggedOp, WriteOp};
use crate::store::index::*;
use crate::store::{AccountId, MailboxId, StoreError};
use redb::{ReadableTable, WriteTransaction};

pub(super) fn get_account_w(txn: &WriteTransaction, id: AccountId) -> Result<Account, StoreError> {
    let addr = {
        let t = txn.open_table(ACCOUNT_IDS)?;
        let v = t.get(id)?.ok_or(StoreError::NoSuchAccount)?;
        v.value().to_string()
    };
    let t = txn.open_table(ACCOUNTS)?;
    let v = t.get(addr.as_str())?.ok_or(StoreError::NoSuchAccount)?;
    decode(v.value())
}

pub(super) fn put_account(txn: &WriteTransaction, a: &Account) -> Result<(), StoreError> {
    let mut t = txn.open_table(ACCOUNTS)?;
    t.insert(a.addr.as_str(), encode(a)?.as_slice())?;
    Ok(())
}

pub(super) fn account_exists(txn: &WriteTransaction, id: AccountId) -> Result<bool, StoreError> {
    Ok(txn.open_table(ACCOUNT_IDS)?.get(id)?.is_some())
}

/// Creates the account with its INBOX unless the address has one; answers the stored account
/// and whether this op created it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct CreateAccount {
    pub addr: String,
    pub hash: String,
    pub now: i64,
}

impl WriteOp for CreateAccount {
    fn logged(&self) -> LoggedOp {
        LoggedOp::CreateAccount(self.clone())
    }

    type Out = (Account, bool);

    fn apply(self, txn: &WriteTransaction, _: &mut Effects) -> Result<(Account, bool), StoreError> {
        let CreateAccount { addr, hash, now } = self;
        {
            let t = txn.open_table(ACCOUNTS)?;
            let existing = t.get(addr.as_str())?;
            if let Some(v) = existing {
                return Ok((decode(v.value())?, false));
            }
        }
        let id = next_counter(txn, "account", 0)?;
        let a = Account {
            id,
            addr: addr.clone(),
            password_hash: hash,
            created: now,
            last_login_day: now.div_euclid(86_400),
            used_bytes: 0,
            device_tokens: Vec::new(),
        };
        put_account(txn, &a)?;
        txn.open_table(ACCOUNT_IDS)?.insert(id, addr.as_str())?;
        new_mailbox(txn, id, "INBOX")?;
        Ok((a, true))
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct LastLogin {
    pub id: AccountId,
    pub day: i64,
}

impl WriteOp for LastLogin {
    fn logged(&self) -> LoggedOp {
        LoggedOp::LastLogin(self.clone())
    }

    type Out = ();

    fn apply(self, txn: &WriteTransaction, _: &mut Effects) -> Result<(), StoreError> {
        let mut a = get_account_w(txn, self.id)?;
        if a.last_login_day != self.day {
            a.last_login_day = self.day;
            put_account(txn, &a)?;
        }
        Ok(())
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct DeleteAccount {
    pub id: AccountId,
}

impl WriteOp for DeleteAccount {
    fn logged(&self) -> LoggedOp {
        LoggedOp::DeleteAccount(self.clone())
    }

    type Out = ();

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<(), StoreError> {
        let id = self.id;
        let a = get_account_w(txn, id)?;
        let boxes: Vec<(String, MailboxId)> = {
            let t = txn.open_table(MAILBOXES)?;
            let mut v = Vec::new();
            for r in t.range((id, "")..(id + 1, ""))? {
                let (k, val) = r?;
                let mb: Mailbox = decode(val.value())?;
                v.push((k.value().1.to_string(), mb.id));
            }
            v
        };
        for (name, mbid) in boxes {
            let mut mb = get_mailbox_by_id_w(txn, mbid)?;
            let uids: Vec<u32> = all_messages(txn, mbid)?.iter().map(|m| m.uid).collect();
            remove_uids(txn, &mut mb, &uids, eff)?;
            txn.open_table(MAILBOXES)?.remove((id, name.as_str()))?;
            txn.open_table(MAILBOX_IDS)?.remove(mbid)?;
            eff.touched.push(mbid);
        }
        txn.open_table(ACCOUNTS)?.remove(a.addr.as_str())?;
        txn.open_table(ACCOUNT_IDS)?.remove(id)?;
        Ok(())
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct RemoveToken {
    pub id: AccountId,
    pub token: String,
}

impl WriteOp for RemoveToken {
    fn logged(&self) -> LoggedOp {
        LoggedOp::RemoveToken(self.clone())
    }

    type Out = ();

    fn apply(self, txn: &WriteTransaction, _: &mut Effects) -> Result<(), StoreError> {
        let mut a = get_account_w(txn, self.id)?;
        let before = a.device_tokens.len();
        a.device_tokens.retain(|t| t.token != self.token);
        if a.device_tokens.len() != before {
            put_account(txn, &a)?;
        }
        Ok(())
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct AddToken {
    pub id: AccountId,
    pub token: String,
    pub now: i64,
    /// Most tokens the account keeps; the least recently set go first.
    pub max: usize,
}

impl WriteOp for AddToken {
    fn logged(&self) -> LoggedOp {
        LoggedOp::AddToken(self.clone())
    }

    type Out = ();

    fn apply(self, txn: &WriteTransaction, _: &mut Effects) -> Result<(), StoreError> {
        let mut a = get_account_w(txn, self.id)?;
        // Kept in the order they were last set, so the least recently set is first.
        a.device_tokens.retain(|t| t.token != self.token);
        a.device_tokens.push(DeviceToken {
            token: self.token,
            last_set: self.now,
        });
        let over = a.device_tokens.len().saturating_sub(self.max.max(1));
        a.device_tokens.drain(..over);
        put_account(txn, &a)?;
        Ok(())
    }
}
