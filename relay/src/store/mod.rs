//! The message store: metadata lives in redb; a small message body (up to [`INLINE_MAX`],
//! format 3 on) too, a larger one is a plain file.
//!
//! A small body travels in its batch's write-ahead log record and lands in redb's `bodies`
//! table, so one `fdatasync` covers body and index: no file created, synced and named per
//! message (three syncs and ~12 KB of writes for a 4 KB message before).
//!
//! Durability rule for files: a body file is written under `tmp/`, fsynced and renamed into `mail/` before
//! the index transaction that names it commits; an index entry is removed before its file is
//! unlinked. So after a crash at any point no index entry points at a missing file, and a file
//! without an index entry is an orphan that `Store::sweep` removes (nobody was told it was
//! accepted).
//!
//! Writes go through one writer thread that batches whatever is waiting into one redb transaction
//! (group commit): under load, many deliveries share one index fsync. That fsync is of a short
//! append to the index's write-ahead log (`wal`), not of redb's pages, which are made durable
//! by a checkpoint every minute; "the index transaction commits" below means "its log record is
//! synced".

pub mod format;
mod index;
mod mapped;
mod recover;
mod spool;
mod wal;
mod writer;

pub use index::{Account, DeviceToken, Flags, Mailbox, Message, Queued};
pub use index::{ANSWERED, DELETED, DRAFT, FLAGGED, SEEN};
pub use mapped::{Mapped, Received};
pub use recover::SweepReport;
pub use spool::{Body, Spool};

use crate::sync::LockExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Largest body kept in the index. Chatmail traffic is mostly PGP-encrypted text of a few KB
/// (a delta chat message with no attachment: 2-10 KB), which this covers; images and files
/// are larger and stay files, written once. Above this size, a second copy of the body (log,
/// then redb's page at the checkpoint) costs more than the file's own sync saves, and a batch
/// of 256 such bodies keeps a log record at 16 MiB, within what is held in memory.
pub const INLINE_MAX: usize = 64 << 10;

pub type AccountId = u64;
pub type MailboxId = u64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("index database: {0}")]
    Db(String),
    #[error("no such mailbox")]
    NoSuchMailbox,
    #[error("mailbox already exists")]
    MailboxExists,
    #[error("INBOX cannot be deleted or renamed away")]
    InboxProtected,
    #[error("no such account")]
    NoSuchAccount,
    #[error("the store is shutting down")]
    Closed,
}

impl StoreError {
    /// Errors a client can do nothing about but try later (disk full, I/O).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. } | StoreError::Db(_) | StoreError::Closed
        )
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.to_string()) }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// How a STORE command changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FlagOp {
    Replace,
    Add,
    Remove,
}

/// Result of a flag change.
#[derive(Debug, Default)]
pub struct FlagUpdate {
    /// Messages whose flags changed (or were named), with their new flags and modseq.
    pub updated: Vec<Message>,
    /// UIDs not changed because their modseq was above UNCHANGEDSINCE (RFC 7162 MODIFIED).
    pub modified: Vec<u32>,
}

/// Where a copied or moved message went: (source uid, destination uid).
#[derive(Debug, Default)]
pub struct CopyResult {
    pub uidvalidity: u32,
    pub pairs: Vec<(u32, u32)>,
}

/// Names a failpoint in the delivery write sequence; used by crash-consistency tests to stop
/// the sequence after a step, as a power cut would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// After the body is written to tmp/ (not yet fsynced/renamed).
    AfterTmpWrite,
    /// After the body file is renamed into mail/ but before the index commit.
    AfterRename,
    /// After the index commit but before the caller is told.
    AfterCommit,
    /// Expunge: after the index commit, before the files are unlinked.
    ExpungeAfterCommit,
    /// The disk fills up half-way through writing a body (ENOSPC): its file, or for a small
    /// body the log record that carries it.
    DiskFull,
    /// A power cut before the index checkpoint: redb's non-durable commits are lost, only the
    /// write-ahead log has them (the writer never checkpoints, not even when the store closes).
    BeforeCheckpoint,
}

struct Inner {
    dir: PathBuf,
    db: Arc<redb::Database>,
    writer: writer::Writer,
    watchers: Mutex<HashMap<MailboxId, watch::Sender<u64>>>,
    next_body: std::sync::atomic::AtomicU64,
    /// Body ids below this existed when the store opened: the ones [`Store::sweep`] checks.
    sweep_below: u64,
    crash_at: Arc<Mutex<Option<CrashPoint>>>,
    /// Whether the writer logs batches to `index.wal` (format 2 and later, see `format`).
    logged: Arc<std::sync::atomic::AtomicBool>,
    /// Bodies up to this size go into the index (format 3 and later: 0 before, see `format`).
    inline_max: std::sync::atomic::AtomicUsize,
}

/// A body handed to the store: its id and size, and the bytes when it goes into the index.
struct Put {
    id: u64,
    size: u64,
    inline: Option<writer::PutBody>,
}

impl Put {
    fn inline(&mut self) -> Vec<writer::PutBody> {
        self.inline.take().into_iter().collect()
    }
}

/// Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Normalizes a mailbox name: INBOX is case-insensitive (RFC 3501 §5.1).
pub fn normalize_mailbox_name(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_string()
    } else {
        name.to_string()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. Leftovers in tmp/ are removed; orphan body files
    /// and index entries without a body are left to [`Store::sweep`], so opening costs the same
    /// with a thousand messages or a million.
    /// Runs pending format migrations too (`format`; a tryboot start uses `open_deferred`).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let s = Store::open_deferred(dir)?;
        s.migrate()?;
        Ok(s)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Test hook: make the next write sequence stop after `point`, leaving disk as a crash would.
    /// Not in the release binary (there the crash point is always `None`).
    /// Test hook: bodies up to `max` bytes go into the index (0: every body is a file, to test
    /// the file path with small bodies).
    #[cfg(any(test, feature = "testkit"))]
    pub fn set_inline_max(&self, max: usize) {
        self.inner
            .inline_max
            .store(max, std::sync::atomic::Ordering::Release);
    }

    #[cfg(any(test, feature = "testkit"))]
    pub fn crash_at(&self, point: Option<CrashPoint>) {
        if let Ok(mut c) = self.inner.crash_at.lock() {
            *c = point;
        }
    }

    // ---- accounts ------------------------------------------------------------------------

    pub fn account(&self, addr: &str) -> Result<Option<Account>, StoreError> {
        index::get_account(&self.inner.db, addr)
    }

    pub fn account_by_id(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        index::get_account_by_id(&self.inner.db, id)
    }

    pub fn account_count(&self) -> Result<u64, StoreError> {
        index::account_count(&self.inner.db)
    }

    /// Every account (expiry and metrics walk them; a relay has thousands, not millions).
    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        index::all_accounts(&self.inner.db)
    }

    /// Up to `limit` accounts in address order, starting after the address `after`: a walk over
    /// every account that holds one page at a time, and survives deletions on the way.
    pub fn accounts_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError> {
        index::accounts_page(&self.inner.db, after, limit)
    }

    /// Deletes an account with all its mailboxes, messages and device tokens.
    pub async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        self.write(writer::DeleteAccount { id }).await
    }

    /// Creates the account with its INBOX unless it exists. Returns the stored account and
    /// whether this call created it; concurrent callers for one address get one stored hash.
    pub async fn create_account(
        &self,
        addr: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<(Account, bool), StoreError> {
        self.write(writer::CreateAccount {
            addr: addr.to_string(),
            hash: password_hash.to_string(),
            now,
        })
        .await
    }

    /// Records the UTC day of the last login (only written when it changes).
    pub async fn set_last_login_day(&self, id: AccountId, day: i64) -> Result<(), StoreError> {
        self.write(writer::LastLogin { id, day }).await
    }

    /// Adds (or refreshes) a push device token; tokens accumulate.
    pub async fn add_device_token(
        &self,
        id: AccountId,
        token: &str,
        now: i64,
        max: usize,
    ) -> Result<(), StoreError> {
        self.write(writer::AddToken {
            id,
            token: token.to_string(),
            now,
            max,
        })
        .await
    }

    /// Removes a push device token (the push service answered 410, or a client cleared it).
    pub async fn remove_device_token(&self, id: AccountId, token: &str) -> Result<(), StoreError> {
        self.write(writer::RemoveToken {
            id,
            token: token.to_string(),
        })
        .await
    }

    // ---- mailboxes -----------------------------------------------------------------------

    pub fn mailboxes(&self, account: AccountId) -> Result<Vec<Mailbox>, StoreError> {
        index::mailboxes(&self.inner.db, account)
    }

    pub fn mailbox(&self, account: AccountId, name: &str) -> Result<Option<Mailbox>, StoreError> {
        index::mailbox(&self.inner.db, account, &normalize_mailbox_name(name))
    }

    pub fn mailbox_by_id(&self, id: MailboxId) -> Result<Option<Mailbox>, StoreError> {
        index::mailbox_by_id(&self.inner.db, id)
    }

    pub async fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
    ) -> Result<Mailbox, StoreError> {
        self.write(writer::CreateMailbox {
            account,
            name: normalize_mailbox_name(name),
        })
        .await
    }

    /// Deletes a mailbox and its messages.
    pub async fn delete_mailbox(&self, account: AccountId, name: &str) -> Result<(), StoreError> {
        self.write(writer::DeleteMailbox {
            account,
            name: normalize_mailbox_name(name),
        })
        .await
    }

    /// Renames a mailbox. Renaming INBOX moves its messages to the new mailbox and leaves INBOX
    /// empty (RFC 3501 §6.3.5).
    pub async fn rename_mailbox(
        &self,
        account: AccountId,
        from: &str,
        to: &str,
    ) -> Result<(), StoreError> {
        self.write(writer::RenameMailbox {
            account,
            from: normalize_mailbox_name(from),
            to: normalize_mailbox_name(to),
        })
        .await
    }

    pub async fn set_subscribed(
        &self,
        account: AccountId,
        name: &str,
        subscribed: bool,
    ) -> Result<(), StoreError> {
        self.write(writer::Subscribe {
            account,
            name: normalize_mailbox_name(name),
            subscribed,
        })
        .await
    }

    // ---- messages ------------------------------------------------------------------------

    /// All messages of a mailbox, by ascending UID.
    pub fn messages(&self, mailbox: MailboxId) -> Result<Vec<Message>, StoreError> {
        index::messages(&self.inner.db, mailbox)
    }

    pub fn message(&self, mailbox: MailboxId, uid: u32) -> Result<Option<Message>, StoreError> {
        index::message(&self.inner.db, mailbox, uid)
    }

    /// The raw RFC 5322 bytes of a message.
    pub async fn read_body(&self, body_id: u64) -> Result<Vec<u8>, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_body_blocking(body_id))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// A stored body mapped read-only instead of read: the queue hands large signed copies to
    /// the transport so, without a heap copy per delivery attempt. Stored bodies are never
    /// written or truncated, only unlinked, which leaves a mapping intact.
    pub async fn map_body(&self, body_id: u64) -> Result<Received, StoreError> {
        let path = self.body_path(body_id);
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            // Small bodies live in the index, not in a file (store format 3).
            if let Some(b) = index::inline_body(&db, body_id)? {
                return Ok(Received::Heap(b));
            }
            let io = |source| StoreError::Io {
                path: path.clone(),
                source,
            };
            let file = std::fs::File::open(&path).map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            Ok(match Mapped::new(&[], &file, 0, len).map_err(io)? {
                Some(m) => Received::Mapped(m),
                None => Received::Heap(Vec::new()),
            })
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// [`Store::read_body`] for code already off the async workers (SEARCH's pool).
    pub fn read_body_blocking(&self, body_id: u64) -> Result<Vec<u8>, StoreError> {
        if let Some(b) = index::inline_body(&self.inner.db, body_id)? {
            return Ok(b);
        }
        let path = self.body_path(body_id);
        std::fs::read(&path).map_err(|source| StoreError::Io { path, source })
    }

    /// The header of a message (up to and including the blank line), reading at most `max`
    /// bytes: header fetches and searches need not read a 30 MB body.
    pub async fn read_head(&self, body_id: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_head_blocking(body_id, max))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// [`Store::read_head`] for code already off the async workers.
    pub fn read_head_blocking(&self, body_id: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        if let Some(b) = index::inline_body(&self.inner.db, body_id)? {
            return Ok(head_of(b, max));
        }
        let path = self.body_path(body_id);
        use std::io::Read;
        let err = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::File::open(&path).map_err(err)?;
        let mut out = Vec::with_capacity(8192.min(max));
        let mut buf = [0u8; 8192];
        loop {
            let n = f.read(&mut buf).map_err(err)?;
            if n == 0 {
                return Ok(out);
            }
            let scan_from = out.len().saturating_sub(3);
            out.extend_from_slice(&buf[..n]);
            let tail = &out[scan_from..];
            let end = tail
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| scan_from + i + 4)
                .or_else(|| {
                    tail.windows(2)
                        .position(|w| w == b"\n\n")
                        .map(|i| scan_from + i + 2)
                });
            if let Some(end) = end {
                out.truncate(end.min(max));
                return Ok(out);
            }
            if out.len() >= max {
                out.truncate(max);
                return Ok(out);
            }
        }
    }

    /// Bytes stored for an account, over all its mailboxes.
    pub fn usage(&self, account: AccountId) -> Result<u64, StoreError> {
        Ok(index::get_account_by_id(&self.inner.db, account)?
            .map(|a| a.used_bytes)
            .unwrap_or(0))
    }

    /// Stores one message in the INBOX of every listed account. Returns once body and index are
    /// durable; all or nothing.
    pub async fn deliver(&self, accounts: &[AccountId], data: Arc<[u8]>) -> Result<(), StoreError> {
        let now = crate::clock::Clock::system().now();
        self.deliver_at(accounts, data, now).await
    }

    /// `deliver` with an explicit internal date.
    pub async fn deliver_at(
        &self,
        accounts: &[AccountId],
        data: Arc<[u8]>,
        internal_date: i64,
    ) -> Result<(), StoreError> {
        self.deliver_body(accounts, Body::Bytes(data), internal_date)
            .await
    }

    /// `deliver_at` for a body in memory or spooled to disk (adopted, not copied).
    pub async fn deliver_body(
        &self,
        accounts: &[AccountId],
        body: Body,
        internal_date: i64,
    ) -> Result<(), StoreError> {
        let mut put = self.put_body(body).await?;
        let op = writer::Deliver {
            accounts: accounts.to_vec(),
            body_id: put.id,
            size: put.size,
            internal_date,
        };
        self.write_with(op, put.inline()).await
    }

    /// A new message body to write to disk piece by piece as it arrives; see [`Spool`].
    pub async fn spool(&self) -> Result<Spool, StoreError> {
        Spool::create(self).await
    }

    /// Bytes written to spools since start.
    pub fn spooled_bytes() -> u64 {
        spool::SPOOLED.load(std::sync::atomic::Ordering::Relaxed)
    }

    // ---- outbound queue ------------------------------------------------------------------

    /// Queues `data` (the signed message, in memory or spooled) from `sender` for the remote
    /// `rcpts`, together with a local copy for `local` accounts if given. Returns the queue id
    /// once both are durable.
    pub async fn enqueue(
        &self,
        sender: &str,
        rcpts: Vec<String>,
        data: Body,
        now: i64,
        local: Option<(&[AccountId], Body)>,
    ) -> Result<u64, StoreError> {
        let mut queued = self.put_body(data).await?;
        let mut inline = queued.inline();
        let local = match local {
            Some((accounts, body)) => match self.put_body(body).await {
                Ok(mut put) => {
                    inline.extend(put.inline());
                    Some(writer::LocalCopy {
                        accounts: accounts.to_vec(),
                        body_id: put.id,
                        size: put.size,
                        internal_date: now,
                    })
                }
                Err(e) => {
                    recover::unlink_body(&self.inner.dir, queued.id);
                    return Err(e);
                }
            },
            None => None,
        };
        let entry = Queued {
            id: 0,
            body_id: queued.id,
            size: queued.size,
            sender: sender.to_string(),
            rcpts,
            created: now,
            next_attempt: now,
            attempts: 0,
            last_error: String::new(),
        };
        self.write_with(writer::Enqueue { entry, local }, inline)
            .await
    }

    /// Everything waiting in the queue.
    pub fn queued(&self) -> Result<Vec<Queued>, StoreError> {
        index::queue(&self.inner.db)
    }

    /// One queue entry, `None` once it has left the queue.
    pub fn queue_entry(&self, id: u64) -> Result<Option<Queued>, StoreError> {
        index::queue_entry(&self.inner.db, id)
    }

    /// Records the outcome of a delivery attempt: `done` recipients leave the queue; `bounce`
    /// (the sender's account and the report) is stored in the same transaction; the others
    /// wait until `retry` = (unix seconds, last error).
    pub async fn queue_update(
        &self,
        id: u64,
        done: Vec<String>,
        retry: Option<(i64, String)>,
        bounce: Option<(AccountId, Arc<[u8]>, i64)>,
    ) -> Result<(), StoreError> {
        let mut inline = Vec::new();
        let bounce = match bounce {
            Some((account, body, date)) => {
                let mut put = self.put_body(Body::Bytes(body)).await?;
                inline = put.inline();
                Some(writer::LocalCopy {
                    accounts: vec![account],
                    body_id: put.id,
                    size: put.size,
                    internal_date: date,
                })
            }
            None => None,
        };
        let op = writer::QueueUpdate {
            id,
            done,
            retry,
            bounce,
        };
        self.write_with(op, inline).await
    }

    /// APPEND: stores a message in one mailbox; returns (uidvalidity, uid).
    pub async fn append(
        &self,
        mailbox: MailboxId,
        flags: Flags,
        internal_date: i64,
        data: Arc<[u8]>,
    ) -> Result<(u32, u32), StoreError> {
        self.append_body(mailbox, flags, internal_date, Body::Bytes(data))
            .await
    }

    /// `append` for a body in memory or spooled to disk (adopted, not copied).
    pub async fn append_body(
        &self,
        mailbox: MailboxId,
        flags: Flags,
        internal_date: i64,
        body: Body,
    ) -> Result<(u32, u32), StoreError> {
        let mut put = self.put_body(body).await?;
        let op = writer::Append {
            mailbox,
            flags,
            body_id: put.id,
            size: put.size,
            internal_date,
        };
        self.write_with(op, put.inline()).await
    }

    /// STORE: changes the flags of the named UIDs (absent ones are ignored). With
    /// `unchanged_since`, messages whose modseq is higher are left alone and reported.
    pub async fn store_flags(
        &self,
        mailbox: MailboxId,
        uids: Vec<u32>,
        op: FlagOp,
        flags: Flags,
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate, StoreError> {
        self.write(writer::StoreFlags {
            mailbox,
            uids,
            op,
            flags,
            unchanged_since,
        })
        .await
    }

    /// Removes messages flagged `\Deleted` (only among `uids` if given); returns the removed UIDs.
    pub async fn expunge(
        &self,
        mailbox: MailboxId,
        uids: Option<Vec<u32>>,
    ) -> Result<Vec<u32>, StoreError> {
        self.write(writer::Expunge { mailbox, uids }).await
    }

    /// Removes the named messages whatever their flags (used by expiry and quota cleanup).
    pub async fn remove_messages(
        &self,
        mailbox: MailboxId,
        uids: Vec<u32>,
    ) -> Result<Vec<u32>, StoreError> {
        self.write(writer::Remove { mailbox, uids }).await
    }

    pub async fn copy(
        &self,
        src: MailboxId,
        uids: Vec<u32>,
        dst: MailboxId,
    ) -> Result<CopyResult, StoreError> {
        self.write(writer::Copy {
            src,
            uids,
            dst,
            remove: false,
        })
        .await
    }

    /// MOVE: like copy, then the source messages are removed in the same transaction.
    pub async fn move_messages(
        &self,
        src: MailboxId,
        uids: Vec<u32>,
        dst: MailboxId,
    ) -> Result<CopyResult, StoreError> {
        self.write(writer::Copy {
            src,
            uids,
            dst,
            remove: true,
        })
        .await
    }

    /// A receiver that changes whenever the mailbox changes (new mail, flags, expunge). IMAP
    /// sessions wait on it in IDLE; the value is a change counter, not a modseq.
    pub fn watch(&self, mailbox: MailboxId) -> watch::Receiver<u64> {
        let mut w = self.inner.watchers.lock_or_recover();
        w.entry(mailbox)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    // ---- internals -----------------------------------------------------------------------

    fn body_path(&self, body_id: u64) -> PathBuf {
        recover::body_path(&self.inner.dir, body_id)
    }

    fn notify(&self, mailboxes: &[MailboxId]) {
        let mut w = self.inner.watchers.lock_or_recover();
        for m in mailboxes {
            if let Some(tx) = w.get(m) {
                if tx.receiver_count() == 0 {
                    w.remove(m);
                } else {
                    tx.send_modify(|v| *v += 1);
                }
            }
        }
    }

    /// The crash point `crash_at` set; always `None` without the test kit.
    fn crash_point(&self) -> Option<CrashPoint> {
        if cfg!(any(test, feature = "testkit")) {
            self.inner.crash_at.lock().ok().and_then(|c| *c)
        } else {
            None
        }
    }

    /// Gives a body its id: a small one goes into the index with the op that names it (the
    /// writer puts it in), a larger one into `mail/`, written from memory or a spool adopted.
    async fn put_body(&self, body: Body) -> Result<Put, StoreError> {
        let size = body.len();
        let max = self
            .inner
            .inline_max
            .load(std::sync::atomic::Ordering::Acquire);
        let (id, inline) = match body {
            Body::Bytes(b) if max > 0 && b.len() <= max => {
                let id = self
                    .inner
                    .next_body
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let data = b.to_vec();
                (id, Some(writer::PutBody { id, data }))
            }
            Body::Bytes(b) => (self.write_body(&b).await?, None),
            Body::Spooled(s) => (s.commit().await?, None),
        };
        Ok(Put { id, size, inline })
    }

    async fn write_body(&self, data: &Arc<[u8]>) -> Result<u64, StoreError> {
        let id = self
            .inner
            .next_body
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.inner.dir.clone();
        let data = data.clone();
        let crash = self.crash_point();
        tokio::task::spawn_blocking(move || recover::write_body(&dir, id, &data, crash))
            .await
            .map_err(|_| StoreError::Closed)??;
        Ok(id)
    }

    async fn write<O: writer::WriteOp>(&self, op: O) -> Result<O::Out, StoreError> {
        self.write_with(op, Vec::new()).await
    }

    /// [`Store::write`] for an op that brings bodies to keep in the index.
    async fn write_with<O: writer::WriteOp>(
        &self,
        op: O,
        inline: Vec<writer::PutBody>,
    ) -> Result<O::Out, StoreError> {
        let (out, touched) = self.inner.writer.submit(op, inline).await?;
        self.notify(&touched);
        Ok(out)
    }
}

/// The header of a message (up to and including the blank line), at most `max` bytes.
fn head_of(mut b: Vec<u8>, max: usize) -> Vec<u8> {
    let end = memchr::memmem::find(&b, b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| memchr::memmem::find(&b, b"\n\n").map(|i| i + 2))
        .unwrap_or(b.len());
    b.truncate(end.min(max));
    b
}

#[cfg(test)]
mod tests;
