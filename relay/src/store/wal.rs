//! The index's write-ahead log, `<data>/index.wal`.
//!
//! A durable redb commit rewrites every B-tree page the transaction touched (copy-on-write,
//! 4 KiB each: messages, body refs, mailbox, account, the table tree, the allocator state), about
//! 45 KB per commit; for one message that arrives alone, the common case on a Pi, that was most
//! of the bytes written. So the writer logs each batch's ops here instead, one `fdatasync` of a
//! short append, and commits redb without durability (its pages stay in memory). A checkpoint
//! (a durable redb commit, then the log emptied) runs every [`CHECKPOINT_AFTER`] or once the log
//! passes [`CHECKPOINT_BYTES`], and when the store closes.
//!
//! After a crash, `open` replays the records whose sequence number is above the one redb holds
//! (`wal_seq` in `counters`, written in every batch's transaction), in order, onto the last
//! durable commit: the ops are deterministic given the state and the batch's time, which the
//! record carries. A torn last record (power cut mid-append) fails its checksum and is dropped;
//! nobody was told it was accepted, since the caller is answered only after the `fdatasync`.
//!
//! Record: length (u32 LE), CRC-32 of the payload (u32 LE), payload (postcard [`Record`]),
//! then zeros up to the next [`PAGE`] boundary (unless fewer than 8 bytes are left to it). The padding costs nothing that would not be
//! written anyway (the page is written whole at the `fdatasync`) and saves writing the
//! record's last page a second time with the next record: a lone 4.7 KB message is two pages
//! of log, not two or three. A length of 0 is padding (a record is never empty); logs of
//! format 2, which has no padding, read the same.

use super::writer::LoggedOp;
use super::StoreError;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long redb's state may stay non-durable; bounds the replay after a power cut too.
pub(super) const CHECKPOINT_AFTER: Duration = Duration::from_secs(60);
/// Log size that forces a checkpoint even before [`CHECKPOINT_AFTER`].
pub(super) const CHECKPOINT_BYTES: u64 = 8 << 20;
/// A length above this is garbage, not a record (a batch holds at most 256 small ops).
const MAX_RECORD: u32 = 64 << 20;
/// The page size the records are aligned to (the kernel's and the SD card's write unit).
const PAGE: usize = 4096;

/// One committed batch: the ops that applied, in order.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Record {
    pub seq: u64,
    /// Unix seconds the batch ran at (new mailboxes take their UIDVALIDITY from it).
    pub now: u64,
    pub ops: Vec<LoggedOp>,
}

pub(super) struct Wal {
    file: std::fs::File,
    path: PathBuf,
    len: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Wal {
    /// Opens (or creates) the log; returns it with the intact records it holds, oldest first.
    /// Whatever follows the first damaged record is cut off.
    pub(super) fn open(dir: &Path) -> Result<(Wal, Vec<Record>), StoreError> {
        let path = dir.join("index.wal");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io_err(&path))?;
        let (records, valid) = parse(&buf);
        if valid < buf.len() {
            tracing::warn!(
                dropped = buf.len() - valid,
                "index log ends in a torn record (a power cut mid-write); dropping it"
            );
            file.set_len(valid as u64).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
        }
        file.seek(SeekFrom::Start(valid as u64))
            .map_err(io_err(&path))?;
        Ok((
            Wal {
                file,
                path,
                len: valid as u64,
            },
            records,
        ))
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Appends `rec` and makes it durable. On failure the log is cut back to where it was, so a
    /// batch its callers were told failed is never replayed.
    /// With `disk_full` (the `DiskFull` crash point of the tests; for a small body, this is
    /// where the body is written) the disk fills up half-way through the record.
    pub(super) fn append(&mut self, rec: &Record, disk_full: bool) -> Result<(), StoreError> {
        let payload =
            postcard::to_stdvec(rec).map_err(|e| StoreError::Db(format!("index log: {e}")))?;
        let mut out = Vec::with_capacity(payload.len() + 8);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        // Padding starts with a length of 0, so it needs 8 bytes; a smaller gap stays unpadded.
        let gap = (PAGE - (self.len as usize + out.len()) % PAGE) % PAGE;
        if gap >= 8 {
            out.resize(out.len() + gap, 0);
        }
        let r = if disk_full {
            self.file
                .write_all(&out[..out.len() / 2])
                .and(Err(std::io::Error::from_raw_os_error(28)))
        } else {
            self.file
                .write_all(&out)
                .and_then(|_| self.file.sync_data())
        };
        if let Err(e) = r {
            self.rewind(self.len);
            return Err(io_err(&self.path)(e));
        }
        self.len += out.len() as u64;
        Ok(())
    }

    /// Cuts the log back to `len` bytes (the last append is withdrawn when redb refused it).
    pub(super) fn rewind(&mut self, len: u64) {
        let r = self
            .file
            .set_len(len)
            .and_then(|_| self.file.seek(SeekFrom::Start(len)).map(|_| ()))
            .and_then(|_| self.file.sync_data());
        match r {
            Ok(()) => self.len = len,
            Err(e) => {
                tracing::error!(path = %self.path.display(), "cannot cut the index log back: {e}")
            }
        }
    }

    /// Empties the log once redb holds everything in it durably. Not synced: should the
    /// truncation be lost, the records are older than redb's `wal_seq` and skipped.
    pub(super) fn reset(&mut self) -> Result<(), StoreError> {
        self.file.set_len(0).map_err(io_err(&self.path))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err(&self.path))?;
        self.len = 0;
        Ok(())
    }
}

/// The intact records at the start of `buf`, and how many bytes they take.
fn parse(buf: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while buf.len() - at >= 8 {
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let crc = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        if len == 0 {
            // Padding up to the next page: the next record starts there.
            let next = (at / PAGE + 1) * PAGE;
            if next > buf.len() || buf[at..next].iter().any(|b| *b != 0) {
                break;
            }
            at = next;
            continue;
        }
        if len > MAX_RECORD || buf.len() - at - 8 < len as usize {
            break;
        }
        let payload = &buf[at + 8..at + 8 + len as usize];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match postcard::from_bytes::<Record>(payload) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        at += 8 + len as usize;
    }
    (out, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            now: 1_700_000_000,
            ops: Vec::new(),
        }
    }

    #[test]
    fn store_wal_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, r) = Wal::open(dir.path()).unwrap();
            assert!(r.is_empty());
            w.append(&rec(1), false).unwrap();
            w.append(&rec(2), false).unwrap();
        }
        let p = dir.path().join("index.wal");
        let full = std::fs::read(&p).unwrap();
        // A power cut in the middle of a third record.
        let mut torn = full.clone();
        torn.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 5]);
        std::fs::write(&p, &torn).unwrap();
        let (mut w, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(std::fs::read(&p).unwrap(), full);
        // A flipped byte in the second record ends the log before it.
        w.append(&rec(3), false).unwrap();
        drop(w);
        let mut bad = std::fs::read(&p).unwrap();
        let second = PAGE + 9; // records start on a page: this is in the second one's payload
        bad[second] ^= 0xff;
        std::fs::write(&p, &bad).unwrap();
        let (_, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
    }
}
