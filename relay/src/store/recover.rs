//! Body files on disk, and the repair that runs when the store opens.

use super::index::{BODY_REFS, COUNTERS, MAILBOXES, MAILBOX_IDS, MESSAGES};
use super::{index, CrashPoint, Inner, Store, StoreError};
use redb::ReadableTable;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `mail/<low byte>/<id>`: 256 directories keep each one small enough to list quickly.
pub(super) fn body_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("mail")
        .join(format!("{:02x}", id & 0xff))
        .join(format!("{id:016x}"))
}

pub(super) fn tmp_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("tmp").join(format!("{id:016x}"))
}

/// A write transaction that commits durably with redb's quick repair: the commit records the
/// allocator state, so opening after a crash loads it instead of walking the whole index
/// (12 s for 1 M messages). The cost, a few pages per durable commit, is paid only at
/// checkpoints now that the log makes each batch durable.
pub(super) fn begin_durable(db: &redb::Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    Ok(txn)
}

pub(super) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes a body under tmp/, fsyncs it and renames it into place. The directory fsync that makes
/// the rename durable is done by the writer, once per batch.
pub(super) fn write_body(
    dir: &Path,
    id: u64,
    data: &[u8],
    crash: Option<CrashPoint>,
) -> Result<(), StoreError> {
    let tmp = tmp_path(dir, id);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let written = if crash == Some(CrashPoint::DiskFull) {
        f.write_all(&data[..data.len() / 2])
            .and(Err(std::io::Error::from_raw_os_error(28)))
    } else {
        f.write_all(data)
    };
    if let Err(e) = written {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    if crash == Some(CrashPoint::AfterTmpWrite) {
        return Err(StoreError::Closed);
    }
    if let Err(e) = f.sync_data() {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    drop(f);
    let dst = body_path(dir, id);
    if let Err(e) = std::fs::rename(&tmp, &dst) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&dst)(e));
    }
    if crash == Some(CrashPoint::AfterRename) {
        return Err(StoreError::Closed);
    }
    Ok(())
}

pub(super) fn unlink_body(dir: &Path, id: u64) {
    let p = body_path(dir, id);
    if let Err(e) = std::fs::remove_file(&p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %p.display(), "cannot remove a message file: {e}");
        }
    }
}

/// Marks in `seen` the body ids below `below` of every file under mail/; ids at or above it are
/// new since the store opened and not the sweep's business. One bit per id: a million messages
/// cost 125 KB, where a set of them cost tens of MB.
/// `None` when `stop` said so between two directories.
fn scan_bodies_below(
    dir: &Path,
    below: u64,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Vec<u64>>, StoreError> {
    let mut seen = vec![0u64; (below / 64 + 1) as usize];
    let mail = dir.join("mail");
    for sub in std::fs::read_dir(&mail).map_err(io_err(&mail))? {
        if stop() {
            return Ok(None);
        }
        let sub = sub.map_err(io_err(&mail))?.path();
        if !sub.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&sub).map_err(io_err(&sub))? {
            let f = f.map_err(io_err(&sub))?;
            if let Some(id) = f
                .file_name()
                .to_str()
                .and_then(|n| u64::from_str_radix(n, 16).ok())
                .filter(|id| *id < below)
            {
                seen[(id / 64) as usize] |= 1 << (id % 64);
            }
        }
    }
    Ok(Some(seen))
}

/// Body ids of every file under mail/.
#[cfg(test)]
fn scan_bodies(dir: &Path) -> Result<BTreeSet<u64>, StoreError> {
    let mut out = BTreeSet::new();
    for sub in std::fs::read_dir(dir.join("mail")).map_err(io_err(dir))? {
        for f in std::fs::read_dir(sub.map_err(io_err(dir))?.path()).map_err(io_err(dir))? {
            let name = f.map_err(io_err(dir))?.file_name();
            if let Some(id) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) {
                out.insert(id);
            }
        }
    }
    Ok(out)
}

fn bits(seen: &[u64]) -> impl Iterator<Item = u64> + '_ {
    seen.iter().enumerate().flat_map(|(i, w)| {
        (0..64u64)
            .filter(move |b| w & (1 << b) != 0)
            .map(move |b| i as u64 * 64 + b)
    })
}

pub(super) fn open(dir: &Path) -> Result<Store, StoreError> {
    for sub in ["mail", "tmp"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    for i in 0..256u32 {
        let p = dir.join("mail").join(format!("{i:02x}"));
        if !p.exists() {
            std::fs::create_dir(&p).map_err(io_err(&p))?;
        }
    }
    // Whatever is in tmp/ was never renamed into place, so it was never accepted.
    let tmp = dir.join("tmp");
    for f in std::fs::read_dir(&tmp).map_err(io_err(&tmp))? {
        let f = f.map_err(io_err(&tmp))?;
        let _ = std::fs::remove_file(f.path());
    }

    let db_path = dir.join("index.redb");
    let db = redb::Database::builder()
        .set_cache_size(INDEX_CACHE_BYTES)
        .create(&db_path)?;
    {
        let txn = begin_durable(&db)?;
        // Create every table so that readers never see "table does not exist".
        txn.open_table(index::ACCOUNTS)?;
        txn.open_table(index::ACCOUNT_IDS)?;
        txn.open_table(MAILBOXES)?;
        txn.open_table(MAILBOX_IDS)?;
        txn.open_table(MESSAGES)?;
        txn.open_table(BODY_REFS)?;
        txn.open_table(index::BODIES)?;
        txn.open_table(index::INLINE_IDS)?;
        txn.open_table(COUNTERS)?;
        txn.open_table(index::QUEUE)?;
        txn.commit()?;
    }
    // The log first: files and index are compared against the index as it was at the crash.
    let (mut wal, records) = super::wal::Wal::open(dir)?;
    let seq = super::writer::replay(&db, dir, &mut wal, records)?;
    index_inline_ids(&db)?;
    let max_id = highest_body_id(&db, dir)?;

    let db = Arc::new(db);
    let crash_at = Arc::new(Mutex::new(None));
    let logged = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = super::writer::Writer::start(
        db.clone(),
        dir.to_owned(),
        crash_at.clone(),
        wal,
        seq,
        logged.clone(),
    );
    Ok(Store {
        inner: Arc::new(Inner {
            dir: dir.to_owned(),
            db,
            writer,
            watchers: Mutex::new(HashMap::new()),
            next_body: AtomicU64::new(max_id + 1),
            sweep_below: max_id + 1,
            crash_at,
            logged,
            inline_max: std::sync::atomic::AtomicUsize::new(0),
        }),
    })
}

/// Gap of absent ids after which [`highest_body_id`] stops looking for newer files: a crash leaves
/// at most the bodies then in flight above the highest committed one, and those were handed out
/// one after another.
const PROBE_GAP: u64 = 1024;

/// redb's page cache is heap, and its default (1 GiB) is the whole memory of a small Pi. With
/// small bodies inside the index, every FETCH would fill it; reads past it come from the kernel's
/// page cache, which the kernel can take back.
const INDEX_CACHE_BYTES: usize = 32 << 20;

/// Fills INLINE_IDS from BODIES when they disagree: a store written before INLINE_IDS existed
/// (format 3 of 2026-12-07) has inline bodies without ids. Reads every inline body once.
fn index_inline_ids(db: &redb::Database) -> Result<(), StoreError> {
    use redb::ReadableTableMetadata;
    let (bodies, ids) = {
        let txn = redb::ReadableDatabase::begin_read(db)?;
        let bodies = txn.open_table(index::BODIES)?.len()?;
        let ids = txn.open_table(index::INLINE_IDS)?.len()?;
        (bodies, ids)
    };
    if bodies == ids {
        return Ok(());
    }
    tracing::info!(
        bodies,
        "indexing the ids of the bodies kept in the index (once)"
    );
    let txn = begin_durable(db)?;
    {
        let mut ids = txn.open_table(index::INLINE_IDS)?;
        ids.retain(|_, _| false)?;
        for r in txn.open_table(index::BODIES)?.iter()? {
            ids.insert(r?.0.value(), ())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// The highest body id named by the index or found just above it on disk, so new ids never
/// collide with a file a crash left. Costs one index lookup and about [`PROBE_GAP`] `stat`s,
/// whatever the number of messages: start-up does not list mail/ (that is [`Store::sweep`]).
fn highest_body_id(db: &redb::Database, dir: &Path) -> Result<u64, StoreError> {
    let mut max_id = {
        let txn = redb::ReadableDatabase::begin_read(db)?;
        let t = txn.open_table(BODY_REFS)?;
        let last = t.last()?.map(|(k, _)| k.value());
        last.unwrap_or(0)
    };
    let mut id = max_id + 1;
    while id <= max_id + PROBE_GAP {
        if body_path(dir, id).exists() {
            max_id = id;
        }
        id += 1;
    }
    Ok(max_id)
}

/// What a sweep found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Files no index entry names (a crash between rename and commit, or between an expunge's
    /// commit and its unlink), removed.
    pub orphans: u64,
    /// Index entries whose file is gone (and whose body is not in the index), dropped.
    pub missing: u64,
}

impl Store {
    /// Makes files and index agree for every body that existed when the store opened: orphan
    /// files are removed, index entries without a file dropped. It lists every file under
    /// mail/, so it is not part of opening; `serve` runs it in the background once the relay
    /// is up. Safe while the store is in use: ids at or above the opening's high-water mark are
    /// left alone, files are listed before the index is read (a file unlinked in between was
    /// already unreferenced), and an id below the mark never gains a reference unless it
    /// already has one (COPY shares a named body, nothing else reuses old ids).
    pub fn sweep(&self) -> Result<SweepReport, StoreError> {
        Ok(self.sweep_until(&|| false)?.unwrap_or_default())
    }

    /// [`Store::sweep`] that gives up (`None`) as soon as `stop` returns true: a shutdown must
    /// not wait for it, nor exit under it without closing the index (redb would then check the
    /// whole index file at the next start).
    pub fn sweep_until(&self, stop: &dyn Fn() -> bool) -> Result<Option<SweepReport>, StoreError> {
        let (db, dir, below) = (&self.inner.db, &self.inner.dir, self.inner.sweep_below);
        let Some(mut seen) = scan_bodies_below(dir, below, stop)? else {
            return Ok(None);
        };
        let mut missing = BTreeSet::new();
        {
            let txn = redb::ReadableDatabase::begin_read(db.as_ref())?;
            let t = txn.open_table(BODY_REFS)?;
            let inline = txn.open_table(index::INLINE_IDS)?;
            for r in t.range(..below)? {
                let id = r?.0.value();
                let (w, b) = ((id / 64) as usize, 1u64 << (id % 64));
                if seen[w] & b != 0 {
                    seen[w] &= !b;
                } else if inline.get(id)?.is_none() {
                    missing.insert(id);
                }
            }
        }
        let mut report = SweepReport::default();
        for id in bits(&seen) {
            unlink_body(dir, id);
            report.orphans += 1;
        }
        if report.orphans > 0 {
            tracing::info!(
                count = report.orphans,
                "removed message files nobody was told were accepted"
            );
        }
        if !missing.is_empty() {
            tracing::warn!(
                count = missing.len(),
                "index entries name missing message files; dropping them"
            );
            drop_missing(db, &missing)?;
            report.missing = missing.len() as u64;
        }
        Ok(Some(report))
    }
}

/// Removes index entries whose body file is gone (a lost file must not break FETCH forever) and
/// fixes the mailbox and account counters they contributed to.
fn drop_missing(db: &redb::Database, missing: &BTreeSet<u64>) -> Result<(), StoreError> {
    let txn = begin_durable(db)?;
    let mut gone: Vec<((u64, u32), index::Message)> = Vec::new();
    {
        let t = txn.open_table(MESSAGES)?;
        for r in t.iter()? {
            let (k, v) = r?;
            let m: index::Message = index::decode(v.value())?;
            if missing.contains(&m.body_id) {
                gone.push((k.value(), m));
            }
        }
    }
    for ((mailbox, uid), m) in gone {
        txn.open_table(MESSAGES)?.remove((mailbox, uid))?;
        let key = {
            let ids = txn.open_table(MAILBOX_IDS)?;
            let r = ids.get(mailbox)?;
            r.map(|v| {
                let (a, n) = v.value();
                (a, n.to_string())
            })
        };
        if let Some((account, name)) = key {
            let mut mbt = txn.open_table(MAILBOXES)?;
            let mb = mbt
                .get((account, name.as_str()))?
                .map(|v| index::decode::<index::Mailbox>(v.value()));
            if let Some(mb) = mb {
                let mut mb = mb?;
                mb.exists = mb.exists.saturating_sub(1);
                if !m.flags.has(index::SEEN) {
                    mb.unseen = mb.unseen.saturating_sub(1);
                }
                mb.highest_modseq += 1;
                mbt.insert((account, name.as_str()), index::encode(&mb)?.as_slice())?;
            }
        }
    }
    {
        // A queued message whose file is gone cannot be sent or bounced with its content; the
        // log is all that is left to tell.
        let mut q = txn.open_table(index::QUEUE)?;
        let mut lost = Vec::new();
        for r in redb::ReadableTable::iter(&q)? {
            let (k, v) = r?;
            let e: index::Queued = index::decode(v.value())?;
            if missing.contains(&e.body_id) {
                lost.push((k.value(), e));
            }
        }
        for (k, e) in lost {
            tracing::error!(sender = %e.sender, rcpts = ?e.rcpts, "queued message file is missing; dropping it");
            q.remove(k)?;
        }
    }
    {
        let mut refs = txn.open_table(BODY_REFS)?;
        for id in missing {
            refs.remove(*id)?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
pub(super) fn scan_bodies_for_test(dir: &Path) -> BTreeSet<u64> {
    scan_bodies(dir).unwrap_or_default()
}

/// Ids of the bodies kept in the index.
#[cfg(test)]
pub(super) fn inline_bodies_for_test(s: &Store) -> BTreeSet<u64> {
    let txn = redb::ReadableDatabase::begin_read(s.inner.db.as_ref()).unwrap();
    let t = txn.open_table(index::BODIES).unwrap();
    let ids = t.iter().unwrap().map(|r| r.unwrap().0.value()).collect();
    ids
}

/// Empties INLINE_IDS, as in a store written before it existed.
#[cfg(test)]
pub(super) fn clear_inline_ids_for_test(dir: &Path) {
    let db = redb::Database::create(dir.join("index.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(index::INLINE_IDS)
        .unwrap()
        .retain(|_, _| false)
        .unwrap();
    txn.commit().unwrap();
}
