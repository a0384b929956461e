//! The single writer thread. Every change to the index is an [`Op`]; the thread takes whatever
//! ops are waiting, applies them in one redb transaction and commits once (group commit), then
//! answers each caller. Logical errors (no such mailbox, …) are detected before an op writes
//! anything, so one failing op never leaves half its changes in a shared transaction.

use super::index::*;
use super::{
    recover, AccountId, CopyResult, CrashPoint, FlagOp, FlagUpdate, MailboxId, StoreError,
};
use redb::{ReadableTable, WriteTransaction};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

pub(super) enum Op {
    CreateAccount {
        addr: String,
        hash: String,
        now: i64,
    },
    LastLogin {
        id: AccountId,
        day: i64,
    },
    DeleteAccount {
        id: AccountId,
    },
    RemoveToken {
        id: AccountId,
        token: String,
    },
    AddToken {
        id: AccountId,
        token: String,
        now: i64,
        /// Most tokens the account keeps; the least recently set go first.
        max: usize,
    },
    CreateMailbox {
        account: AccountId,
        name: String,
    },
    DeleteMailbox {
        account: AccountId,
        name: String,
    },
    RenameMailbox {
        account: AccountId,
        from: String,
        to: String,
    },
    Subscribe {
        account: AccountId,
        name: String,
        subscribed: bool,
    },
    Deliver {
        accounts: Vec<AccountId>,
        body_id: u64,
        size: u64,
        internal_date: i64,
    },
    /// Queues a message for remote recipients, and (in the same transaction) delivers the local
    /// copy, so a message to local and remote recipients is accepted all or nothing.
    Enqueue {
        entry: Queued,
        local: Option<LocalCopy>,
    },
    /// Records what one delivery attempt did: `done` recipients leave the queue (delivered or
    /// bounced), the bounce (if any) lands in the sender's INBOX in the same transaction, so a
    /// recipient is reported exactly once; the rest waits for `retry`.
    QueueUpdate {
        id: u64,
        done: Vec<String>,
        retry: Option<(i64, String)>,
        bounce: Option<LocalCopy>,
    },
    Append {
        mailbox: MailboxId,
        flags: Flags,
        body_id: u64,
        size: u64,
        internal_date: i64,
    },
    StoreFlags {
        mailbox: MailboxId,
        uids: Vec<u32>,
        op: FlagOp,
        flags: Flags,
        unchanged_since: Option<u64>,
    },
    Expunge {
        mailbox: MailboxId,
        uids: Option<Vec<u32>>,
    },
    Remove {
        mailbox: MailboxId,
        uids: Vec<u32>,
    },
    Copy {
        src: MailboxId,
        uids: Vec<u32>,
        dst: MailboxId,
        remove: bool,
    },
}

impl Op {
    /// The body file this op brings in, which must be unlinked if the op does not commit.
    fn new_bodies(&self) -> Vec<u64> {
        match self {
            Op::Deliver { body_id, .. } | Op::Append { body_id, .. } => vec![*body_id],
            Op::Enqueue { entry, local } => std::iter::once(entry.body_id)
                .chain(local.as_ref().map(|l| l.body_id))
                .collect(),
            Op::QueueUpdate { bounce, .. } => bounce.iter().map(|b| b.body_id).collect(),
            _ => Vec::new(),
        }
    }
}

pub(super) enum Reply {
    Done,
    Account(Account, bool),
    Mailbox(Mailbox),
    Appended(u32, u32),
    Flags(FlagUpdate),
    Uids(Vec<u32>),
    Copied(CopyResult),
    Queued(u64),
}

/// A message stored into the INBOX of local accounts alongside a queue change.
pub(super) struct LocalCopy {
    pub accounts: Vec<AccountId>,
    pub body_id: u64,
    pub size: u64,
    pub internal_date: i64,
}

type Answer = Result<(Reply, Vec<MailboxId>), StoreError>;

/// A job's reply channel, what applying its op gave, and the new body it brought (if any).
type Outcome = (
    oneshot::Sender<Answer>,
    Result<(Reply, Effects), StoreError>,
    Vec<u64>,
);

struct Job {
    op: Op,
    reply: oneshot::Sender<Answer>,
}

pub(super) struct Writer {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
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

/// What one op did, beyond its reply: mailboxes to wake, body files to unlink after commit.
#[derive(Default)]
struct Effects {
    touched: Vec<MailboxId>,
    freed_bodies: Vec<u64>,
}

const MAX_BATCH: usize = 256;

impl Writer {
    pub(super) fn start(
        db: Arc<redb::Database>,
        dir: PathBuf,
        crash_at: Arc<Mutex<Option<CrashPoint>>>,
    ) -> Writer {
        let (tx, rx) = mpsc::channel::<Job>();
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

    pub(super) async fn submit(&self, op: Op) -> Answer {
        let (reply, rx) = oneshot::channel();
        let sent = {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            match tx.as_ref() {
                Some(tx) => tx.send(Job { op, reply }).is_ok(),
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
    rx: mpsc::Receiver<Job>,
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
    batch: Vec<Job>,
    crash: Option<CrashPoint>,
) {
    // Renames of new body files must be durable before the index names them; one fsync per
    // directory covers every body of the batch.
    let dirs: BTreeSet<PathBuf> = batch
        .iter()
        .flat_map(|j| j.op.new_bodies())
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
    let mut results: Vec<Outcome> = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    while let Some(job) = jobs.next() {
        let body = job.op.new_bodies();
        let r = apply(&txn, job.op);
        if let Err(e) = &r {
            if !is_logical(e) {
                // The transaction may hold part of this op: give up the whole batch.
                let err = e.to_string();
                tracing::error!("index write failed: {err}");
                drop(txn);
                results.push((job.reply, Err(StoreError::Db(err.clone())), body));
                for j in jobs {
                    let b = j.op.new_bodies();
                    results.push((j.reply, Err(StoreError::Closed), b));
                }
                for (reply, _, b) in results {
                    for b in b {
                        recover::unlink_body(dir, b);
                    }
                    let _ = reply.send(Err(StoreError::Db(err.clone())));
                }
                return;
            }
        }
        results.push((job.reply, r, body));
    }
    if let Err(e) = txn.commit() {
        let err = e.to_string();
        tracing::error!("index commit failed: {err}");
        for (reply, _, b) in results {
            for b in b {
                recover::unlink_body(dir, b);
            }
            let _ = reply.send(Err(StoreError::Db(err.clone())));
        }
        return;
    }
    if crash == Some(CrashPoint::AfterCommit) {
        // Simulated power cut: the commit is on disk, nobody hears about it.
        return;
    }
    for (reply, r, body) in results {
        match r {
            Ok((rep, eff)) => {
                if crash != Some(CrashPoint::ExpungeAfterCommit) {
                    for b in &eff.freed_bodies {
                        recover::unlink_body(dir, *b);
                    }
                }
                let _ = reply.send(Ok((rep, eff.touched)));
            }
            Err(e) => {
                for b in body {
                    recover::unlink_body(dir, b);
                }
                let _ = reply.send(Err(e));
            }
        }
    }
}

fn fail_all(dir: &std::path::Path, batch: Vec<Job>, e: StoreError) {
    let msg = e.to_string();
    tracing::error!("store write failed: {msg}");
    for j in batch {
        for b in j.op.new_bodies() {
            recover::unlink_body(dir, b);
        }
        let _ = j.reply.send(Err(StoreError::Db(msg.clone())));
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

fn next_counter(txn: &WriteTransaction, name: &str, floor: u64) -> Result<u64, StoreError> {
    let mut t = txn.open_table(COUNTERS)?;
    let cur = t.get(name)?.map(|v| v.value()).unwrap_or(0);
    let next = cur.max(floor) + 1;
    t.insert(name, next)?;
    Ok(next)
}

fn get_account_w(txn: &WriteTransaction, id: AccountId) -> Result<Account, StoreError> {
    let addr = {
        let t = txn.open_table(ACCOUNT_IDS)?;
        let v = t.get(id)?.ok_or(StoreError::NoSuchAccount)?;
        v.value().to_string()
    };
    let t = txn.open_table(ACCOUNTS)?;
    let v = t.get(addr.as_str())?.ok_or(StoreError::NoSuchAccount)?;
    decode(v.value())
}

fn put_account(txn: &WriteTransaction, a: &Account) -> Result<(), StoreError> {
    let mut t = txn.open_table(ACCOUNTS)?;
    t.insert(a.addr.as_str(), encode(a)?.as_slice())?;
    Ok(())
}

fn get_mailbox_w(
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

fn get_mailbox_by_id_w(txn: &WriteTransaction, id: MailboxId) -> Result<Mailbox, StoreError> {
    let (account, name) = {
        let t = txn.open_table(MAILBOX_IDS)?;
        let v = t.get(id)?.ok_or(StoreError::NoSuchMailbox)?;
        let (a, n) = v.value();
        (a, n.to_string())
    };
    get_mailbox_w(txn, account, &name)?.ok_or(StoreError::NoSuchMailbox)
}

fn put_mailbox(txn: &WriteTransaction, m: &Mailbox) -> Result<(), StoreError> {
    let mut t = txn.open_table(MAILBOXES)?;
    t.insert((m.account, m.name.as_str()), encode(m)?.as_slice())?;
    let mut ids = txn.open_table(MAILBOX_IDS)?;
    ids.insert(m.id, (m.account, m.name.as_str()))?;
    Ok(())
}

fn new_mailbox(
    txn: &WriteTransaction,
    account: AccountId,
    name: &str,
) -> Result<Mailbox, StoreError> {
    let id = next_counter(txn, "mailbox", 0)?;
    // UIDVALIDITY grows with time and never repeats, so a mailbox deleted and made again (or a
    // store restored from backup into a fresh one) never reuses UIDs under an old validity.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
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

fn put_message(txn: &WriteTransaction, mailbox: MailboxId, m: &Message) -> Result<(), StoreError> {
    let mut t = txn.open_table(MESSAGES)?;
    t.insert((mailbox, m.uid), encode(m)?.as_slice())?;
    Ok(())
}

fn add_ref(txn: &WriteTransaction, body: u64) -> Result<(), StoreError> {
    let mut t = txn.open_table(BODY_REFS)?;
    let n = t.get(body)?.map(|v| v.value()).unwrap_or(0);
    t.insert(body, n + 1)?;
    Ok(())
}

/// Drops one reference; returns true when the body is no longer named and can be unlinked.
fn drop_ref(txn: &WriteTransaction, body: u64) -> Result<bool, StoreError> {
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

/// Adds a message to a mailbox (assigning UID and modseq) and keeps the counters right.
fn insert_message(
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
fn remove_uids(
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
            eff.freed_bodies.push(m.body_id);
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

fn all_messages(txn: &WriteTransaction, mailbox: MailboxId) -> Result<Vec<Message>, StoreError> {
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
fn deliver_local(
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

fn account_exists(txn: &WriteTransaction, id: AccountId) -> Result<bool, StoreError> {
    Ok(txn.open_table(ACCOUNT_IDS)?.get(id)?.is_some())
}

fn apply(txn: &WriteTransaction, op: Op) -> Result<(Reply, Effects), StoreError> {
    let mut eff = Effects::default();
    let reply = match op {
        Op::CreateAccount { addr, hash, now } => {
            {
                let t = txn.open_table(ACCOUNTS)?;
                let existing = t.get(addr.as_str())?;
                if let Some(v) = existing {
                    return Ok((Reply::Account(decode(v.value())?, false), eff));
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
            Reply::Account(a, true)
        }
        Op::LastLogin { id, day } => {
            let mut a = get_account_w(txn, id)?;
            if a.last_login_day != day {
                a.last_login_day = day;
                put_account(txn, &a)?;
            }
            Reply::Done
        }
        Op::DeleteAccount { id } => {
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
                remove_uids(txn, &mut mb, &uids, &mut eff)?;
                txn.open_table(MAILBOXES)?.remove((id, name.as_str()))?;
                txn.open_table(MAILBOX_IDS)?.remove(mbid)?;
                eff.touched.push(mbid);
            }
            txn.open_table(ACCOUNTS)?.remove(a.addr.as_str())?;
            txn.open_table(ACCOUNT_IDS)?.remove(id)?;
            Reply::Done
        }
        Op::RemoveToken { id, token } => {
            let mut a = get_account_w(txn, id)?;
            let before = a.device_tokens.len();
            a.device_tokens.retain(|t| t.token != token);
            if a.device_tokens.len() != before {
                put_account(txn, &a)?;
            }
            Reply::Done
        }
        Op::AddToken {
            id,
            token,
            now,
            max,
        } => {
            let mut a = get_account_w(txn, id)?;
            // Kept in the order they were last set, so the least recently set is first.
            a.device_tokens.retain(|t| t.token != token);
            a.device_tokens.push(DeviceToken {
                token,
                last_set: now,
            });
            let over = a.device_tokens.len().saturating_sub(max.max(1));
            a.device_tokens.drain(..over);
            put_account(txn, &a)?;
            Reply::Done
        }
        Op::CreateMailbox { account, name } => {
            get_account_w(txn, account)?;
            if get_mailbox_w(txn, account, &name)?.is_some() {
                return Err(StoreError::MailboxExists);
            }
            Reply::Mailbox(new_mailbox(txn, account, &name)?)
        }
        Op::DeleteMailbox { account, name } => {
            if name == "INBOX" {
                return Err(StoreError::InboxProtected);
            }
            let mut mb = get_mailbox_w(txn, account, &name)?.ok_or(StoreError::NoSuchMailbox)?;
            let uids: Vec<u32> = all_messages(txn, mb.id)?.iter().map(|m| m.uid).collect();
            remove_uids(txn, &mut mb, &uids, &mut eff)?;
            txn.open_table(MAILBOXES)?
                .remove((account, name.as_str()))?;
            txn.open_table(MAILBOX_IDS)?.remove(mb.id)?;
            eff.touched.push(mb.id);
            Reply::Done
        }
        Op::RenameMailbox { account, from, to } => {
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
                remove_uids(txn, &mut mb, &uids, &mut eff)?;
                put_mailbox(txn, &mb)?;
                eff.touched.push(mb.id);
            } else {
                txn.open_table(MAILBOXES)?
                    .remove((account, from.as_str()))?;
                mb.name = to;
                put_mailbox(txn, &mb)?;
                eff.touched.push(mb.id);
            }
            Reply::Done
        }
        Op::Subscribe {
            account,
            name,
            subscribed,
        } => {
            let mut mb = get_mailbox_w(txn, account, &name)?.ok_or(StoreError::NoSuchMailbox)?;
            mb.subscribed = subscribed;
            put_mailbox(txn, &mb)?;
            Reply::Done
        }
        Op::Deliver {
            accounts,
            body_id,
            size,
            internal_date,
        } => {
            let l = LocalCopy {
                accounts,
                body_id,
                size,
                internal_date,
            };
            deliver_local(txn, &l, &mut eff)?;
            Reply::Done
        }
        Op::Enqueue { mut entry, local } => {
            if let Some(l) = local {
                deliver_local(txn, &l, &mut eff)?;
            }
            entry.id = next_counter(txn, "queue", 0)?;
            add_ref(txn, entry.body_id)?;
            txn.open_table(QUEUE)?
                .insert(entry.id, encode(&entry)?.as_slice())?;
            Reply::Queued(entry.id)
        }
        Op::QueueUpdate {
            id,
            done,
            retry,
            bounce,
        } => {
            let entry: Option<Queued> = {
                let t = txn.open_table(QUEUE)?;
                let v = t.get(id)?;
                v.map(|v| decode(v.value())).transpose()?
            };
            let Some(mut entry) = entry else {
                // Already finished (a duplicate update): report nothing twice.
                if let Some(b) = bounce {
                    eff.freed_bodies.push(b.body_id);
                }
                return Ok((Reply::Done, eff));
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
                    deliver_local(txn, &b, &mut eff)?;
                }
                Some(b) => eff.freed_bodies.push(b.body_id),
                None => {}
            }
            if entry.rcpts.is_empty() {
                txn.open_table(QUEUE)?.remove(id)?;
                if drop_ref(txn, entry.body_id)? {
                    eff.freed_bodies.push(entry.body_id);
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
            Reply::Done
        }
        Op::Append {
            mailbox,
            flags,
            body_id,
            size,
            internal_date,
        } => {
            let mut mb = get_mailbox_by_id_w(txn, mailbox)?;
            let uid = insert_message(txn, &mut mb, body_id, size, internal_date, flags)?;
            put_mailbox(txn, &mb)?;
            eff.touched.push(mb.id);
            Reply::Appended(mb.uidvalidity, uid)
        }
        Op::StoreFlags {
            mailbox,
            uids,
            op,
            flags,
            unchanged_since,
        } => {
            let mut mb = get_mailbox_by_id_w(txn, mailbox)?;
            let mut out = FlagUpdate::default();
            let mut changed_any = false;
            for uid in uids {
                let Some(mut m) = ({
                    let t = txn.open_table(MESSAGES)?;
                    let r = t.get((mailbox, uid))?;
                    match r {
                        Some(v) => Some(decode::<Message>(v.value())?),
                        None => None,
                    }
                }) else {
                    continue;
                };
                if let Some(since) = unchanged_since {
                    if m.modseq > since {
                        out.modified.push(uid);
                        continue;
                    }
                }
                let new = match op {
                    FlagOp::Replace => flags.clone(),
                    FlagOp::Add => {
                        let mut f = m.flags.clone();
                        f.bits |= flags.bits;
                        for k in &flags.keywords {
                            if !f.keywords.iter().any(|x| x.eq_ignore_ascii_case(k)) {
                                f.keywords.push(k.clone());
                            }
                        }
                        f
                    }
                    FlagOp::Remove => {
                        let mut f = m.flags.clone();
                        f.bits &= !flags.bits;
                        f.keywords
                            .retain(|x| !flags.keywords.iter().any(|k| k.eq_ignore_ascii_case(x)));
                        f
                    }
                };
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
            Reply::Flags(out)
        }
        Op::Expunge { mailbox, uids } => {
            let mut mb = get_mailbox_by_id_w(txn, mailbox)?;
            let wanted: Option<BTreeSet<u32>> = uids.map(|u| u.into_iter().collect());
            let victims: Vec<u32> = all_messages(txn, mailbox)?
                .into_iter()
                .filter(|m| m.flags.has(DELETED))
                .filter(|m| wanted.as_ref().is_none_or(|w| w.contains(&m.uid)))
                .map(|m| m.uid)
                .collect();
            let removed = remove_uids(txn, &mut mb, &victims, &mut eff)?;
            if !removed.is_empty() {
                put_mailbox(txn, &mb)?;
            }
            Reply::Uids(removed)
        }
        Op::Remove { mailbox, uids } => {
            let mut mb = get_mailbox_by_id_w(txn, mailbox)?;
            let removed = remove_uids(txn, &mut mb, &uids, &mut eff)?;
            if !removed.is_empty() {
                put_mailbox(txn, &mb)?;
            }
            Reply::Uids(removed)
        }
        Op::Copy {
            src,
            uids,
            dst,
            remove,
        } => {
            let mut sbox = get_mailbox_by_id_w(txn, src)?;
            let mut dbox = get_mailbox_by_id_w(txn, dst)?;
            let mut pairs = Vec::new();
            let mut moved = Vec::new();
            for uid in uids {
                let m: Option<Message> = {
                    let t = txn.open_table(MESSAGES)?;
                    let r = t.get((src, uid))?;
                    match r {
                        Some(v) => Some(decode(v.value())?),
                        None => None,
                    }
                };
                let Some(m) = m else { continue };
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
                remove_uids(txn, &mut sbox, &moved, &mut eff)?;
                if src == dst {
                    dbox = sbox.clone();
                }
                put_mailbox(txn, &sbox)?;
            }
            put_mailbox(txn, &dbox)?;
            if !pairs.is_empty() {
                eff.touched.push(dst);
            }
            Reply::Copied(CopyResult {
                uidvalidity: dbox.uidvalidity,
                pairs,
            })
        }
    };
    Ok((reply, eff))
}
