//! The single writer thread. Every change to the index is a [`WriteOp`]; the thread takes
//! whatever ops are waiting, applies them in one redb transaction and commits once (group
//! commit), then answers each caller with its op's own result type. Logical errors (no such
//! mailbox, …) are detected before an op writes anything, so one failing op never leaves half
//! its changes in a shared transaction.
//!
//! The ops live by the table they change: `account`, `mailbox`, `message`, `queue`.
//!
//! A batch is durable once its ops are in the write-ahead log (`wal`); the redb commit itself
//! is not synced until the next checkpoint.

mod account;
mod mailbox;
mod message;
mod queue;

pub(super) use account::{AddToken, CreateAccount, DeleteAccount, LastLogin, RemoveToken};
pub(super) use mailbox::{CreateMailbox, DeleteMailbox, RenameMailbox, Subscribe};
pub(super) use message::{Append, Copy, Deliver, Expunge, PutBody, Remove, StoreFlags};
pub(super) use queue::{Enqueue, QueueUpdate};

use super::index::COUNTERS;
use super::wal::{Record, Wal};
use super::{recover, wal, AccountId, CrashPoint, MailboxId, StoreError};
use crate::sync::LockExt;
use redb::{ReadableTable, WriteTransaction};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

thread_local! {
    /// Unix seconds of the batch being applied on this thread (see [`batch_now`]).
    static BATCH_NOW: Cell<u64> = const { Cell::new(0) };
}

/// The time of the batch being applied: ops read it instead of the clock, so that a batch
/// replayed from the log after a crash does exactly what it did the first time.
pub(super) fn batch_now() -> u64 {
    BATCH_NOW.with(|n| n.get())
}

/// Counter in `counters`: the sequence number of the last batch in redb's state.
pub(super) const WAL_SEQ: &str = "wal_seq";

/// Every op as the log stores it. Postcard names a variant by its position: append new ops at
/// the end, never reorder or remove one (a log written before must still replay).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) enum LoggedOp {
    CreateAccount(CreateAccount),
    LastLogin(LastLogin),
    DeleteAccount(DeleteAccount),
    RemoveToken(RemoveToken),
    AddToken(AddToken),
    CreateMailbox(CreateMailbox),
    DeleteMailbox(DeleteMailbox),
    RenameMailbox(RenameMailbox),
    Subscribe(Subscribe),
    Deliver(Deliver),
    Append(Append),
    StoreFlags(StoreFlags),
    Expunge(Expunge),
    Remove(Remove),
    Copy(Copy),
    Enqueue(Enqueue),
    QueueUpdate(QueueUpdate),
    PutBody(PutBody),
}

impl LoggedOp {
    /// Applies the op again (replay); its answer is not needed any more.
    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<(), StoreError> {
        fn run<O: WriteOp>(
            op: O,
            txn: &WriteTransaction,
            eff: &mut Effects,
        ) -> Result<(), StoreError> {
            op.apply(txn, eff).map(|_| ())
        }
        match self {
            LoggedOp::CreateAccount(o) => run(o, txn, eff),
            LoggedOp::LastLogin(o) => run(o, txn, eff),
            LoggedOp::DeleteAccount(o) => run(o, txn, eff),
            LoggedOp::RemoveToken(o) => run(o, txn, eff),
            LoggedOp::AddToken(o) => run(o, txn, eff),
            LoggedOp::CreateMailbox(o) => run(o, txn, eff),
            LoggedOp::DeleteMailbox(o) => run(o, txn, eff),
            LoggedOp::RenameMailbox(o) => run(o, txn, eff),
            LoggedOp::Subscribe(o) => run(o, txn, eff),
            LoggedOp::Deliver(o) => run(o, txn, eff),
            LoggedOp::Append(o) => run(o, txn, eff),
            LoggedOp::StoreFlags(o) => run(o, txn, eff),
            LoggedOp::Expunge(o) => run(o, txn, eff),
            LoggedOp::Remove(o) => run(o, txn, eff),
            LoggedOp::Copy(o) => run(o, txn, eff),
            LoggedOp::Enqueue(o) => run(o, txn, eff),
            LoggedOp::QueueUpdate(o) => run(o, txn, eff),
            LoggedOp::PutBody(o) => run(o, txn, eff),
        }
    }
}

/// Replays the log records redb does not hold yet (a crash came before their checkpoint) in
/// one durable transaction, then empties the log. Returns the last sequence number.
pub(super) fn replay(
    db: &redb::Database,
    dir: &std::path::Path,
    wal: &mut Wal,
    records: Vec<Record>,
) -> Result<u64, StoreError> {
    let durable = {
        let txn = redb::ReadableDatabase::begin_read(db)?;
        let t = txn.open_table(COUNTERS)?;
        let v = t.get(WAL_SEQ)?.map(|v| v.value());
        v.unwrap_or(0)
    };
    let mut last = durable;
    let pending: Vec<Record> = records.into_iter().filter(|r| r.seq > durable).collect();
    if !pending.is_empty() {
        let txn = recover::begin_durable(db)?;
        let mut eff = Effects::default();
        let n = pending.len();
        for rec in pending {
            BATCH_NOW.with(|t| t.set(rec.now));
            for op in rec.ops {
                match op.apply(&txn, &mut eff) {
                    Ok(()) => {}
                    Err(e) if is_logical(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            last = rec.seq;
        }
        txn.open_table(COUNTERS)?.insert(WAL_SEQ, last)?;
        txn.commit()?;
        for b in &eff.freed_bodies {
            recover::unlink_body(dir, *b);
        }
        tracing::info!(batches = n, "replayed the index log after an unclean stop");
    }
    wal.reset()?;
    Ok(last)
}

/// One change to the index, applied inside the writer's shared transaction.
pub(super) trait WriteOp: Send + 'static {
    /// What the caller gets once the transaction has committed.
    type Out: Send + 'static;

    /// The body files this op brings in, which must be unlinked if the op does not commit.
    fn new_bodies(&self) -> Vec<u64> {
        Vec::new()
    }

    /// The op as the log records it.
    fn logged(&self) -> LoggedOp;

    fn apply(self, txn: &WriteTransaction, eff: &mut Effects) -> Result<Self::Out, StoreError>;
}

/// A message stored into the INBOX of local accounts alongside a queue change.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
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
    logged: Option<LoggedOp>,
    /// New body files (unlinked if the op does not commit).
    bodies: Vec<u64>,
    /// New bodies kept in the index, put in with the op.
    inline: Vec<PutBody>,
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
    /// The op for the log, after the bodies it brought in, if it applied (an op refused with a
    /// logical error changed nothing).
    fn take_logged(&mut self) -> Vec<LoggedOp>;
    /// Answers the caller: with `failure` if given, else with the op's result.
    fn reply(self: Box<Self>, failure: Option<StoreError>);
}

impl<O: WriteOp> Job for Request<O> {
    fn new_bodies(&self) -> &[u64] {
        &self.bodies
    }

    fn apply(&mut self, txn: &WriteTransaction) -> Option<String> {
        let op = self.op.take()?;
        self.logged = Some(op.logged());
        let mut eff = Effects::default();
        let r = self
            .inline
            .iter()
            .try_for_each(|b| b.clone().apply(txn, &mut eff))
            .and_then(|_| op.apply(txn, &mut eff))
            .map(|out| (out, eff));
        let r = match r {
            // Refused: the op changed nothing, and its bodies must not stay either.
            Err(e) if is_logical(&e) => self
                .inline
                .iter()
                .try_for_each(|b| {
                    txn.open_table(super::index::BODIES)?.remove(b.id)?;
                    txn.open_table(super::index::INLINE_IDS)?.remove(b.id)?;
                    Ok(())
                })
                .and(Err(e)),
            r => r,
        };
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

    fn take_logged(&mut self) -> Vec<LoggedOp> {
        match &self.result {
            Some(Ok(_)) => std::mem::take(&mut self.inline)
                .into_iter()
                .map(LoggedOp::PutBody)
                .chain(self.logged.take())
                .collect(),
            _ => Vec::new(),
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
        wal: Wal,
        seq: u64,
        on: Arc<AtomicBool>,
    ) -> Writer {
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let mut log = Log {
                    on,
                    wal,
                    seq,
                    unsynced_since: None,
                };
                run(&db, &dir, rx, &crash_at, &mut log);
            })
            .map_err(|e| tracing::error!("cannot start the store writer: {e}"))
            .ok();
        Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
        }
    }

    /// Hands `op` to the writer thread, with the `inline` bodies it names (kept in the index,
    /// not in files); answers its result and the mailboxes it changed once the transaction
    /// holding it has committed.
    pub(super) async fn submit<O: WriteOp>(&self, op: O, inline: Vec<PutBody>) -> Answer<O::Out> {
        let (reply, rx) = oneshot::channel();
        let mut bodies = op.new_bodies();
        bodies.retain(|b| !inline.iter().any(|i| i.id == *b));
        let job = Box::new(Request {
            bodies,
            inline,
            op: Some(op),
            logged: None,
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

/// The writer's side of the log: the next sequence number, and since when redb holds batches
/// that only the log makes durable.
struct Log {
    /// Set once the store is in format 2 (`format`); until then every commit is durable.
    on: Arc<AtomicBool>,
    wal: Wal,
    seq: u64,
    unsynced_since: Option<Instant>,
}

impl Log {
    /// A durable redb commit (it persists every non-durable one before it), then the log
    /// emptied. On failure the log is kept: it still holds what redb may have lost.
    fn checkpoint(&mut self, db: &redb::Database) {
        let r = recover::begin_durable(db)
            .and_then(|t| t.commit().map_err(StoreError::from))
            .and_then(|_| self.wal.reset());
        match r {
            Ok(()) => self.unsynced_since = None,
            Err(e) => {
                tracing::error!("index checkpoint failed (will retry): {e}");
                // Not at once: the disk is in trouble, and retrying in a loop helps nobody.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    fn due(&self) -> Option<Duration> {
        let since = self.unsynced_since?;
        if self.wal.len() >= wal::CHECKPOINT_BYTES {
            return Some(Duration::ZERO);
        }
        Some(wal::CHECKPOINT_AFTER.saturating_sub(since.elapsed()))
    }
}

fn run(
    db: &redb::Database,
    dir: &std::path::Path,
    rx: mpsc::Receiver<Box<dyn Job>>,
    crash_at: &Mutex<Option<CrashPoint>>,
    log: &mut Log,
) {
    loop {
        let crash = || crash_at.lock().ok().and_then(|c| *c);
        let due = match crash() {
            Some(CrashPoint::BeforeCheckpoint) => None,
            _ => log.due(),
        };
        let first = match due {
            Some(wait) if wait.is_zero() => {
                log.checkpoint(db);
                continue;
            }
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        commit_batch(db, dir, batch, crash(), log);
    }
    // The store is closing: leave redb durable and the log empty.
    let crash = crash_at.lock().ok().and_then(|c| *c);
    if log.unsynced_since.is_some() && crash != Some(CrashPoint::BeforeCheckpoint) {
        log.checkpoint(db);
    }
}

fn commit_batch(
    db: &redb::Database,
    dir: &std::path::Path,
    batch: Vec<Box<dyn Job>>,
    crash: Option<CrashPoint>,
    log: &mut Log,
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    BATCH_NOW.with(|t| t.set(now));
    let logged = log.on.load(Ordering::Acquire);
    let begin = if logged {
        db.begin_write().map_err(StoreError::from)
    } else {
        recover::begin_durable(db)
    };
    let mut txn = match begin {
        Ok(t) => t,
        Err(e) => return fail_all(dir, batch, e),
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
    let ops: Vec<LoggedOp> = applied.iter_mut().flat_map(|j| j.take_logged()).collect();
    let wal_before = log.wal.len();
    if ops.is_empty() {
        // Every op was refused before it wrote anything: there is nothing to commit.
        drop(txn);
    } else if logged {
        // The log record is the commit point: redb's own commit below is not synced.
        let rec = Record {
            seq: log.seq + 1,
            now,
            ops,
        };
        let appended = txn
            .open_table(COUNTERS)
            .map_err(StoreError::from)
            .and_then(|mut t| {
                t.insert(WAL_SEQ, rec.seq)?;
                Ok(())
            })
            .and_then(|_| {
                txn.set_durability(redb::Durability::None)
                    .map_err(|e| StoreError::Db(e.to_string()))
            })
            .and_then(|_| log.wal.append(&rec, crash == Some(CrashPoint::DiskFull)));
        if let Err(e) = appended {
            let err = e.to_string();
            tracing::error!("index log write failed: {err}");
            drop(txn);
            for j in applied {
                unlink_new(dir, j.as_ref());
                j.reply(Some(StoreError::Db(err.clone())));
            }
            return;
        }
        log.seq = rec.seq;
        log.unsynced_since.get_or_insert_with(Instant::now);
        if let Err(e) = txn.commit() {
            let err = e.to_string();
            tracing::error!("index commit failed: {err}");
            // Callers hear of a failure, so the batch must not come back at replay.
            log.wal.rewind(wal_before);
            for j in applied {
                unlink_new(dir, j.as_ref());
                j.reply(Some(StoreError::Db(err.clone())));
            }
            return;
        }
    } else if let Err(e) = txn.commit() {
        // Format 1 (a trial boot before migration): redb's own durable commit, as the
        // version that may be booted again expects.
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
