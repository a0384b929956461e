//! Ops on the outbound queue (QUEUE): queueing a message, and recording what a delivery
//! attempt did.

use super::account::account_exists;
use super::message::{add_ref, deliver_local, drop_ref, free_body};
use super::{next_counter, Effects, LocalCopy, LoggedOp, WriteOp};
use crate::store::index::*;
use crate::store::StoreError;
use redb::{ReadableTable, WriteTransaction};

/// Queues a message for remote recipients, and (in the same transaction) delivers the local
/// copy, so a message to local and remote recipients is accepted all or nothing. Answers the
/// queue id.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct Enqueue {
    pub entry: Queued,
    pub local: Option<LocalCopy>,
}

impl WriteOp for Enqueue {
    fn logged(&self) -> LoggedOp {
        LoggedOp::Enqueue(self.clone())
    }

    type Out = u64;

    fn new_bodies(&self) -> Vec<u64> {
        std::iter::once(self.entry.body_id)
            .chain(self.local.as_ref().map(|l| l.body_id))
            .collect()
    }

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<u64, StoreError> {
        let Enqueue { mut entry, local } = self;
        if let Some(l) = local {
            deliver_local(txn, &l, eff)?;
        }
        entry.id = next_counter(txn, "queue", 0)?;
        add_ref(txn, entry.body_id)?;
        txn.open_table(QUEUE)?
            .insert(entry.id, encode(&entry)?.as_slice())?;
        Ok(entry.id)
    }
}

/// Records what one delivery attempt did: `done` recipients leave the queue (delivered or
/// bounced), the bounce (if any) lands in the sender's INBOX in the same transaction, so a
/// recipient is reported exactly once; the rest waits for `retry`.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(in crate::store) struct QueueUpdate {
    pub id: u64,
    pub done: Vec<String>,
    pub retry: Option<(i64, String)>,
    pub bounce: Option<LocalCopy>,
}

impl WriteOp for QueueUpdate {
    fn logged(&self) -> LoggedOp {
        LoggedOp::QueueUpdate(self.clone())
    }

    type Out = ();

    fn new_bodies(&self) -> Vec<u64> {
        self.bounce.iter().map(|b| b.body_id).collect()
    }

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<(), StoreError> {
        let QueueUpdate {
            id,
            done,
            retry,
            bounce,
        } = self;
        let entry: Option<Queued> = {
            let t = txn.open_table(QUEUE)?;
            let v = t.get(id)?;
            v.map(|v| decode(v.value())).transpose()?
        };
        let Some(mut entry) = entry else {
            // Already finished (a duplicate update): report nothing twice.
            if let Some(b) = bounce {
                free_body(txn, b.body_id, eff)?;
            }
            return Ok(());
        };
        let before = entry.rcpts.len();
        entry.rcpts.retain(|r| !done.iter().any(|d| d == r));
        match bounce {
            // The sender may have been deleted meanwhile; then nobody is left to tell.
            Some(b)
                if entry.rcpts.len() < before
                    && b.accounts
                        .iter()
                        .all(|a| account_exists(txn, *a).unwrap_or(false)) =>
            {
                deliver_local(txn, &b, eff)?;
            }
            Some(b) => free_body(txn, b.body_id, eff)?,
            None => {}
        }
        if entry.rcpts.is_empty() {
            txn.open_table(QUEUE)?.remove(id)?;
            if drop_ref(txn, entry.body_id)? {
                free_body(txn, entry.body_id, eff)?;
            }
        } else {
            if let Some((next, err)) = retry {
                entry.attempts += 1;
                entry.next_attempt = next;
                entry.last_error = err;
            }
            txn.open_table(QUEUE)?
                .insert(id, encode(&entry)?.as_slice())?;
        }
        Ok(())
    }
}
