//! The redb schema and read-side queries. Records are postcard-encoded structs; keys are chosen
//! so that the hot queries (a mailbox's messages by UID, an account by address) are range scans.

use super::{AccountId, MailboxId, StoreError};
use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

/// address → account record
pub(super) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// account id → address
pub(super) const ACCOUNT_IDS: TableDefinition<u64, &str> = TableDefinition::new("account_ids");
/// (account id, mailbox name) → mailbox record
pub(super) const MAILBOXES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("mailboxes");
/// mailbox id → (account id, name)
pub(super) const MAILBOX_IDS: TableDefinition<u64, (u64, &str)> =
    TableDefinition::new("mailbox_ids");
/// (mailbox id, uid) → message record
pub(super) const MESSAGES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("messages");
/// body id → number of index entries naming it (COPY shares bodies)
pub(super) const BODY_REFS: TableDefinition<u64, u32> = TableDefinition::new("body_refs");
/// body id → the bytes of a small body (format 3, see `INLINE_MAX` in store/mod.rs); a body id
/// not here is a file under mail/
pub(super) const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
/// The keys of BODIES alone: redb keeps a value in the leaf beside its key, so asking BODIES
/// whether a body is inline reads the body. The sweep asks this for every body without a file.
pub(super) const INLINE_IDS: TableDefinition<u64, ()> = TableDefinition::new("inline_ids");
/// queue id → message waiting for remote delivery
pub(super) const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
/// named counters: next account id, next mailbox id, highest body id handed out
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

pub const SEEN: u8 = 1;
pub const ANSWERED: u8 = 2;
pub const FLAGGED: u8 = 4;
pub const DELETED: u8 = 8;
pub const DRAFT: u8 = 16;

/// System flags as bits plus keywords (`$MDNSent`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    pub bits: u8,
    pub keywords: Vec<String>,
}

impl Flags {
    pub fn has(&self, bit: u8) -> bool {
        self.bits & bit != 0
    }

    /// Parses IMAP flag names; unknown backslash flags (including `\Recent`) are ignored,
    /// anything else is a keyword.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Flags {
        let mut f = Flags::default();
        for n in names {
            match n.to_ascii_lowercase().as_str() {
                "\\seen" => f.bits |= SEEN,
                "\\answered" => f.bits |= ANSWERED,
                "\\flagged" => f.bits |= FLAGGED,
                "\\deleted" => f.bits |= DELETED,
                "\\draft" => f.bits |= DRAFT,
                s if s.starts_with('\\') => {}
                _ => {
                    if !f.keywords.iter().any(|k| k.eq_ignore_ascii_case(n)) {
                        f.keywords.push(n.to_string());
                    }
                }
            }
        }
        f
    }

    /// IMAP names of the flags, system flags first.
    pub fn names(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (bit, name) in [
            (SEEN, "\\Seen"),
            (ANSWERED, "\\Answered"),
            (FLAGGED, "\\Flagged"),
            (DELETED, "\\Deleted"),
            (DRAFT, "\\Draft"),
        ] {
            if self.has(bit) {
                v.push(name.to_string());
            }
        }
        v.extend(self.keywords.iter().cloned());
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceToken {
    pub token: String,
    /// Unix seconds when a client last set it.
    pub last_set: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub addr: String,
    /// A crypt(3) string (`$6$…`), optionally with the reference's `{SHA512-CRYPT}` prefix.
    pub password_hash: String,
    pub created: i64,
    /// UTC day number of the last login.
    pub last_login_day: i64,
    pub used_bytes: u64,
    pub device_tokens: Vec<DeviceToken>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    pub id: MailboxId,
    pub account: AccountId,
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highest_modseq: u64,
    pub subscribed: bool,
    /// Messages and total bytes, kept up to date by the writer so STATUS needs no scan.
    pub exists: u32,
    pub unseen: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub uid: u32,
    pub body_id: u64,
    pub size: u64,
    /// Unix seconds.
    pub internal_date: i64,
    pub flags: Flags,
    pub modseq: u64,
}

/// A message waiting for delivery to other domains. The body file is the signed message as it
/// goes on the wire; it counts as one reference in `body_refs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub id: u64,
    pub body_id: u64,
    pub size: u64,
    /// The envelope sender; empty for the null sender `<>`.
    pub sender: String,
    /// Recipients not yet delivered or bounced.
    pub rcpts: Vec<String>,
    /// Unix seconds when the message was accepted.
    pub created: i64,
    /// Unix seconds of the next attempt.
    pub next_attempt: i64,
    pub attempts: u32,
    /// The last temporary failure, for the bounce text and `relaybox queue`-style reports.
    pub last_error: String,
}

pub(super) fn queue(db: &redb::Database) -> Result<Vec<Queued>, StoreError> {
    all_records(db, QUEUE)
}

pub(super) fn queue_entry(db: &redb::Database, id: u64) -> Result<Option<Queued>, StoreError> {
    let tx = db.begin_read()?;
    let t = match tx.open_table(QUEUE) {
        Ok(t) => t,
        Err(e) => return missing_table(e),
    };
    match t.get(id)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

/// The bytes of a body kept in the index (`None`: it is a file, or gone).
pub(super) fn inline_body(db: &redb::Database, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let tx = db.begin_read()?;
    let t = match tx.open_table(BODIES) {
        Ok(t) => t,
        Err(e) => return missing_table(e),
    };
    let v = t.get(id)?.map(|v| v.value().to_vec());
    Ok(v)
}

/// Every record of a table keyed by anything with postcard values, in key order.
fn all_records<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
    db: &redb::Database,
    table: TableDefinition<K, &[u8]>,
) -> Result<Vec<T>, StoreError> {
    let tx = db.begin_read()?;
    let t = match tx.open_table(table) {
        Ok(t) => t,
        Err(e) => return missing_table(e).map(|_: Option<()>| Vec::new()),
    };
    let mut out = Vec::new();
    for r in redb::ReadableTable::iter(&t)? {
        let (_, v) = r?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

pub(super) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| StoreError::Db(format!("encode: {e}")))
}

pub(super) fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Db(format!("decode: {e}")))
}

fn missing_table<T>(e: redb::TableError) -> Result<Option<T>, StoreError> {
    match e {
        redb::TableError::TableDoesNotExist(_) => Ok(None),
        e => Err(e.into()),
    }
}

pub(super) fn get_account(db: &redb::Database, addr: &str) -> Result<Option<Account>, StoreError> {
    let tx = db.begin_read()?;
    let t = match tx.open_table(ACCOUNTS) {
        Ok(t) => t,
        Err(e) => return missing_table(e),
    };
    match t.get(addr)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

pub(super) fn get_account_by_id(
    db: &redb::Database,
    id: AccountId,
) -> Result<Option<Account>, StoreError> {
    let addr = {
        let tx = db.begin_read()?;
        let t = match tx.open_table(ACCOUNT_IDS) {
            Ok(t) => t,
            Err(e) => return missing_table(e),
        };
        match t.get(id)? {
            Some(a) => a.value().to_string(),
            None => return Ok(None),
        }
    };
    get_account(db, &addr)
}

pub(super) fn account_count(db: &redb::Database) -> Result<u64, StoreError> {
    let tx = db.begin_read()?;
    match tx.open_table(ACCOUNTS) {
        Ok(t) => Ok(t.len()?),
        Err(e) => missing_table::<u64>(e).map(|_| 0),
    }
}

pub(super) fn all_accounts(db: &redb::Database) -> Result<Vec<Account>, StoreError> {
    all_records(db, ACCOUNTS)
}

/// Up to `limit` accounts by address, starting after `after`.
pub(super) fn accounts_page(
    db: &redb::Database,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Account>, StoreError> {
    let tx = db.begin_read()?;
    let t = match tx.open_table(ACCOUNTS) {
        Ok(t) => t,
        Err(e) => return missing_table(e).map(|_: Option<()>| Vec::new()),
    };
    let mut out = Vec::new();
    let range = match after {
        Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
        None => t.range::<&str>(..)?,
    };
    for r in range.take(limit) {
        out.push(decode(r?.1.value())?);
    }
    Ok(out)
}

pub(super) fn mailboxes(
    db: &redb::Database,
    account: AccountId,
) -> Result<Vec<Mailbox>, StoreError> {
    let tx = db.begin_read()?;
    let t = match tx.open_table(MAILBOXES) {
        Ok(t) => t,
        Err(e) => return missing_table(e).map(|_: Option<()>| Vec::new()),
    };
    let mut out = Vec::new();
    for r in t.range((account, "")..(account + 1, ""))? {
        let (_, v) = r?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

pub(super) fn mailbox(
    db: &redb::Database,
    account: AccountId,
    name: &str,
) -> Result<Option<Mailbox>, StoreError> {
    let tx = db.begin_read()?;
    let t = match tx.open_table(MAILBOXES) {
        Ok(t) => t,
        Err(e) => return missing_table(e),
    };
    match t.get((account, name))? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

pub(super) fn mailbox_by_id(
    db: &redb::Database,
    id: MailboxId,
) -> Result<Option<Mailbox>, StoreError> {
    let key = {
        let tx = db.begin_read()?;
        let t = match tx.open_table(MAILBOX_IDS) {
            Ok(t) => t,
            Err(e) => return missing_table(e),
        };
        match t.get(id)? {
            Some(v) => {
                let (a, n) = v.value();
                (a, n.to_string())
            }
            None => return Ok(None),
        }
    };
    mailbox(db, key.0, &key.1)
}

pub(super) fn messages(
    db: &redb::Database,
    mailbox: MailboxId,
) -> Result<Vec<Message>, StoreError> {
    let tx = db.begin_read()?;
    let t = match tx.open_table(MESSAGES) {
        Ok(t) => t,
        Err(e) => return missing_table(e).map(|_: Option<()>| Vec::new()),
    };
    let mut out = Vec::new();
    for r in t.range((mailbox, 0u32)..=(mailbox, u32::MAX))? {
        let (_, v) = r?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

pub(super) fn message(
    db: &redb::Database,
    mailbox: MailboxId,
    uid: u32,
) -> Result<Option<Message>, StoreError> {
    let tx = db.begin_read()?;
    let t = match tx.open_table(MESSAGES) {
        Ok(t) => t,
        Err(e) => return missing_table(e),
    };
    match t.get((mailbox, uid))? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}
