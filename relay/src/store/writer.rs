//! The single writer thread. Every change to the index is a [`WriteOp`]; the thread takes
//! whatever ops are waiting, applies them in one redb transaction and commits once (group
//! commit), then answers each caller with its op's own result type. Logical errors (no such
//! mailbox, …) are detected before an op writes anything, so one failing op never leaves half
//! its changes in a shared transaction.
//!
//! The ops live by the table they change: `account`, `mailbox`, `message`, `queue`.

mod account;
mod mailbox;
mod message;
mod queue;

pub(super) use account::{AddToken, CreateAccount, DeleteAccount, LastLogin, RemoveToken};
pub(super) use mailbox::{CreateMailbox, DeleteMailbox, RenameMailbox, Subscribe};
pub(super) use message::{Append, Copy, Deliver, Expunge, Remove, StoreFlags};
pub(super) use queue::{Enqueue, QueueUpdate};

use super::index::COUNTERS;
use super::{recover, AccountId, CrashPoint, MailboxId, StoreError};
use crate::sync::LockExt;
use redb::{ReadableTable, WriteTransaction};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// One change to the index, applied inside the writer's shared transaction.
pub(super) trait WriteOp: Send + 'static {
    /// What the caller gets once the transaction has committed.
    type Out: Send + 'static;

    /// The body files this op brings in, which must be unlinked if the op does not commit.
    fn new_bodies(&self) -> Vec<u64> {
        Vec::new()
    }

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<Self::Out, StoreError>;
}

/// A message stored into the INBOX of local accounts alongside a queue change.
pub(super) struct LocalCopy {
    pub accounts: Vec<AccountId>,
    pub body_id: u64,
    pub size: u64,
    pub internal_date: i64,
}

/// What one op did, beyond its result: mailboxes to wake, body files to unlink after commit.
#[derive(Default)]
pub(super) struct Effects {
    touched: Vec<MailboxId>,
    freed_bodies: Vec<u64>,
}

type Answer<T> = Result<(T, Vec<MailboxId>), StoreError>;

/// An op with its caller's reply channel; the batch sees it only through [`Job`].
struct Request<O: WriteOp> {
    op: Option<O>,
    bodies: Vec<u64>,
    result: Option<Result<(O::Out, Effects), StoreError>>,
    reply: oneshot::Sender<Answer<O::Out>>,
}

/// A queued op of any type, as the batch handles it.
trait Job: Send {
    fn new_bodies(&self) -> &[u64];
    /// Applies the op and keeps its result; returns the error if it is one the shared
    /// transaction cannot survive (it may hold part of the op).
    fn apply(&mut self, txn: &WriteTransaction) -> Option<String>;
    /// What the op did if it applied without error.
    fn effects(&self) -> Option<&Effects>;
    /// Answers the caller: with `failure` if given, else with the op's result.
    fn reply(self: Box<Self>, failure: Option<StoreError>);
}

impl<O: WriteOp> Job for Request<O> {
    fn new_bodies(&self) -> &[u64] {
        &self.bodies
    }

    fn apply(&mut self, txn: &WriteTransaction) -> Option<String> {
        let op = self.op.take()?;
        let mut eff = Effects::default();
        let r = op.apply(txn, &mut eff).map(|out| (out, eff));
        let fatal = match &r {
            Err(e) if !is_logical(e) => Some(e.to_string()),
            _ => None,
        };
        self.result = Some(r);
        fatal
    }

    fn effects(&self) -> Option<&Effects> {
        match &self.result {
            Some(Ok((_, eff))) => Some(eff),
            _ => None,
        }
    }

    fn reply(self: Box<Self>, failure: Option<StoreError>) {
        let answer = match (failure, self.result) {
            (Some(e), _) => Err(e),
            (None, Some(Ok((out, eff)))) => Ok((out, eff.touched)),
            (None, Some(Err(e))) => Err(e),
            (None, None) => Err(StoreError::Closed),
        };
        let _ = self.reply.send(answer);
    }
}

pub(super) struct Writer {
    tx: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Writer {
    /// Waits for the writer thread so that the database is closed when the store is dropped;
    /// reopening the same directory right after (tests, restore) then works.
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

const MAX_BATCH: usize = 256;

impl Writer {
    pub(super) fn start(
        db: Arc<redb::Database>,
        dir: PathBuf,
        crash_at: Arc<Mutex<Option<CrashPoint>>>,
    ) -> Writer {
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(db, dir, rx, crash_at))
            .map_err(|e| tracing::error!("cannot start the store writer: {e}"))
            .ok();
        Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
        }
    }

    /// Hands `op` to the writer thread; answers its result and the mailboxes it changed once
    /// the transaction holding it has committed.
    pub(super) async fn submit<O: WriteOp>(&self, op: O) -> Answer<O::Out> {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(Request {
            bodies: op.new_bodies(),
            op: Some(op),
            result: None,
            reply,
        });
        let sent = {
            let tx = self.tx.lock_or_recover();
            match tx.as_ref() {
                Some(tx) => tx.send(job).is_ok(),
                None => false,
            }
        };
        if !sent {
            return Err(StoreError::Closed);
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    }
}

fn run(
    db: Arc<redb::Database>,
    dir: PathBuf,
    rx: mpsc::Receiver<Box<dyn Job>>,
    crash_at: Arc<Mutex<Option<CrashPoint>>>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let crash = crash_at.lock().ok().and_then(|c| *c);
        commit_batch(&db, &dir, batch, crash);
    }
}

fn commit_batch(
    db: &redb::Database,
    dir: &std::path::Path,
    batch: Vec<Box<dyn Job>>,
    crash: Option<CrashPoint>,
) {
    // Renames of new body files must be durable before the index names them; one fsync per
    // directory covers every body of the batch.
    let dirs: BTreeSet<PathBuf> = batch
        .iter()
        .flat_map(|j| j.new_bodies().to_vec())
        .filter_map(|b| recover::body_path(dir, b).parent().map(|p| p.to_owned()))
        .collect();
    for d in &dirs {
        if let Err(e) = recover::fsync_dir(d) {
            fail_all(
                dir,
                batch,
                StoreError::Io {
                    path: d.clone(),
                    source: e,
                },
            );
            return;
        }
    }
    let txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => return fail_all(dir, batch, e.into()),
    };
    let mut applied: Vec<Box<dyn Job>> = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    while let Some(mut job) = jobs.next() {
        let fatal = job.apply(&txn);
        applied.push(job);
        if let Some(err) = fatal {
            // The transaction may hold part of this op: give up the whole batch.
            tracing::error!("index write failed: {err}");
            drop(txn);
            for j in applied.into_iter().chain(jobs) {
                unlink_new(dir, j.as_ref());
                j.reply(Some(StoreError::Db(err.clone())));
            }
            return;
        }
    }
    if let Err(e) = txn.commit() {
        let err = e.to_string();
        tracing::error!("index commit failed: {err}");
        for j in applied {
            unlink_new(dir, j.as_ref());
            j.reply(Some(StoreError::Db(err.clone())));
        }
        return;
    }
    if crash == Some(CrashPoint::AfterCommit) {
        // Simulated power cut: the commit is on disk, nobody hears about it.
        return;
    }
    for j in applied {
        match j.effects() {
            Some(eff) => {
                if crash != Some(CrashPoint::ExpungeAfterCommit) {
                    for b in &eff.freed_bodies {
                        recover::unlink_body(dir, *b);
                    }
                }
            }
            None => unlink_new(dir, j.as_ref()),
        }
        j.reply(None);
    }
}

/// Removes the body files a job brought in (it did not commit, so nobody names them).
fn unlink_new(dir: &std::path::Path, job: &dyn Job) {
    for b in job.new_bodies() {
        recover::unlink_body(dir, *b);
    }
}

fn fail_all(dir: &std::path::Path, batch: Vec<Box<dyn Job>>, e: StoreError) {
    let msg = e.to_string();
    tracing::error!("store write failed: {msg}");
    for j in batch {
        unlink_new(dir, j.as_ref());
        j.reply(Some(StoreError::Db(msg.clone())));
    }
}

fn is_logical(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::NoSuchMailbox
            | StoreError::MailboxExists
            | StoreError::InboxProtected
            | StoreError::NoSuchAccount
    )
}

pub(super) fn next_counter(
    txn: &WriteTransaction,
    name: &str,
    floor: u64,
) -> Result<u64, StoreError> {
    let mut t = txn.open_table(COUNTERS)?;
    let cur = t.get(name)?.map(|v| v.value()).unwrap_or(0);
    let next = cur.max(floor) + 1;
    t.insert(name, next)?;
    Ok(next)
}
