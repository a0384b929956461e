//! Message bodies written to disk as they arrive (SMTP DATA, `/mxdeliv`), so that a slow
//! sender holds a small buffer instead of the whole message.
//!
//! A [`Spool`] is a file `tmp/<body id>` in the store's directory. When the message is
//! accepted the store adopts it: fsync, rename into `mail/` under the same id (the body is not
//! copied), then the index transaction that names it, as for a body written in one piece. A
//! spool that is dropped unadopted is unlinked; after a crash, `open` empties `tmp/`, so a
//! half-received message is never visible.

use super::{recover, CrashPoint, Store, StoreError};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes spooled by all [`Spool`]s since start (tests check the write path is taken).
pub(super) static SPOOLED: AtomicU64 = AtomicU64::new(0);

/// A message body being written to `tmp/`; see the module header.
pub struct Spool {
    store: Store,
    id: u64,
    path: PathBuf,
    file: Option<std::fs::File>,
    len: u64,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl Spool {
    pub(super) async fn create(store: &Store) -> Result<Spool, StoreError> {
        let id = store.inner.next_body.fetch_add(1, Ordering::Relaxed);
        let path = recover::tmp_path(&store.inner.dir, id);
        let p = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .open(&p)
                .map_err(|source| StoreError::Io { path: p, source })
        })
        .await
        .map_err(|_| StoreError::Closed)??;
        Ok(Spool {
            store: store.clone(),
            id,
            path,
            file: Some(file),
            len: 0,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs `f` on the file off the async workers.
    async fn with_file<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut std::fs::File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let mut file = self.file.take().ok_or(StoreError::Closed)?;
        let (file, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut file);
            (file, r)
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        self.file = Some(file);
        r.map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Appends `data`; hands the buffer back emptied, for the next piece.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let n = data.len() as u64;
        let crash = self.store.crash_point();
        let buf = self
            .with_file(move |f| {
                let mut data = data;
                if crash == Some(CrashPoint::DiskFull) {
                    f.write_all(&data[..data.len() / 2])?;
                    return Err(std::io::Error::from_raw_os_error(28));
                }
                f.write_all(&data)?;
                data.clear();
                Ok(data)
            })
            .await?;
        self.len += n;
        SPOOLED.fetch_add(n, Ordering::Relaxed);
        Ok(buf)
    }

    /// The received message for the checks: `head`, then the file from `offset` on, mapped
    /// rather than read (see [`super::Mapped`]); `head` alone when nothing follows it.
    pub fn received(&self, head: Vec<u8>, offset: u64) -> Result<super::Received, StoreError> {
        let file = self.file.as_ref().ok_or(StoreError::Closed)?;
        match super::Mapped::new(&head, file, offset, self.len) {
            Ok(Some(m)) => Ok(super::Received::Mapped(m)),
            Ok(None) => Ok(super::Received::Heap(head)),
            Err(source) => Err(StoreError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// A new spool holding `head` and then this spool's bytes from `offset` on: the signed
    /// copy of outgoing mail, a new header before the spooled body. The body goes file to file
    /// (`copy_file_range` where the file system has it, else through std's 8 KiB buffer), never
    /// through a buffer of the message's size.
    pub async fn splice(&mut self, head: Vec<u8>, offset: u64) -> Result<Spool, StoreError> {
        let mut out = Spool::create(&self.store).await?;
        let mut dst = out.file.take().ok_or(StoreError::Closed)?;
        let n = self.len.saturating_sub(offset);
        let head_len = head.len() as u64;
        let crash = self.store.crash_point();
        let dst = self
            .with_file(move |src| {
                use std::io::{Read, Seek, SeekFrom};
                if crash == Some(CrashPoint::DiskFull) {
                    dst.write_all(&head[..head.len() / 2])?;
                    return Err(std::io::Error::from_raw_os_error(28));
                }
                dst.write_all(&head)?;
                src.seek(SeekFrom::Start(offset))?;
                let copied = std::io::copy(&mut (&*src).take(n), &mut dst);
                // Later writes to this spool append, wherever the copy stopped.
                src.seek(SeekFrom::End(0))?;
                if copied? != n {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Ok(dst)
            })
            .await?;
        out.file = Some(dst);
        out.len = head_len + n;
        SPOOLED.fetch_add(out.len, Ordering::Relaxed);
        Ok(out)
    }

    /// Makes the file durable and moves it into `mail/`; returns its body id. The directory
    /// fsync that makes the rename durable is the writer's, once per batch, as for every body.
    pub(super) async fn commit(mut self) -> Result<u64, StoreError> {
        let crash = self.store.crash_point();
        if crash == Some(CrashPoint::AfterTmpWrite) {
            // Simulated power cut: the file stays in tmp/ as the crash would leave it.
            self.file.take();
            self.path = PathBuf::new();
            return Err(StoreError::Closed);
        }
        self.with_file(|f| f.sync_data()).await?;
        self.file.take();
        let dst = recover::body_path(&self.store.inner.dir, self.id);
        let src = std::mem::take(&mut self.path);
        let d = dst.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::rename(&src, &d).inspect_err(|_| {
                let _ = std::fs::remove_file(&src);
            })
        })
        .await
        .map_err(|_| StoreError::Closed)?
        .map_err(|source| StoreError::Io { path: dst, source })?;
        if crash == Some(CrashPoint::AfterRename) {
            return Err(StoreError::Closed);
        }
        Ok(self.id)
    }
}

#[cfg(test)]
impl Spool {
    /// Test hook: the process dies mid-stream; the partial file stays where it is.
    pub(super) fn abandon(mut self) {
        self.path = PathBuf::new();
    }
}

impl Drop for Spool {
    /// A spool nobody adopted was never accepted: nothing of it stays.
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A message body for the store: bytes in memory, or a [`Spool`] to adopt.
#[derive(Debug)]
pub enum Body {
    Bytes(std::sync::Arc<[u8]>),
    Spooled(Spool),
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Spooled(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<std::sync::Arc<[u8]>> for Body {
    fn from(b: std::sync::Arc<[u8]>) -> Body {
        Body::Bytes(b)
    }
}
