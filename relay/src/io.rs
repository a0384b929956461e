//! Crash-safe file writes, the one way every module replaces a small file (keys, certificates,
//! admin state, pending pushes, the update agent's files) or streams a large one (update bundles).
//!
//! A file is written whole under a temporary name in its own directory, fsynced, renamed over
//! its target, and the directory is fsynced: a crash leaves the old content or the new, never a
//! mix, and a rename that returned is not lost by a power cut. The temporary names end in `.tmp`,
//! which directory walks (backup, pending pushes) skip.
//!
//! The message store writes its bodies itself (its own crash points and space checks).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `data`, readable by the owner only (0600 whatever the umask).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic(path, data, 0o600)
}

/// Replaces `path` with `data`, with mode `mode` whatever the umask.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    Staged::write(path, data, Some(mode))?.commit()
}

/// Replaces `path` with what `write` writes (a large file, streamed), with mode `mode` whatever
/// the umask. On an error of `write` the temporary is removed and `path` stays as it was.
pub fn write_atomic_with<T, E: From<std::io::Error>>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut std::fs::File) -> Result<T, E>,
) -> Result<T, E> {
    let (staged, out) = Staged::write_as(tmp_name(path)?, path, Some(mode), write)?;
    staged.commit()?;
    Ok(out)
}

fn tmp_name(path: &Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    Ok(path.with_file_name(tmp_name))
}

/// A file written whole in a temporary name beside its target, fsynced, not yet in place.
/// [`Staged::commit`] renames it and fsyncs the directory; a crash before that leaves the old
/// file as it was (the next write replaces the stale temporary).
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

impl Staged {
    /// Stages `bytes` for `path` in `.<name>.tmp`, making the directory if it is missing.
    /// `mode` is set whatever the umask (the root agent's files are read by the daemon);
    /// None for files on FAT, which has no modes (new files are then 0600).
    pub fn write(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<Staged> {
        Ok(Self::write_as(tmp_name(path)?, path, mode, |f| f.write_all(bytes))?.0)
    }

    /// Like [`Staged::write`], in a temporary name of its own (process id and a random number),
    /// for a file that other processes may be writing at the same moment.
    pub fn write_unique(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<Staged> {
        let tmp = path.with_file_name(format!(
            ".{}.{:016x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        Ok(Self::write_as(tmp, path, mode, |f| f.write_all(bytes))?.0)
    }

    fn write_as<T, E: From<std::io::Error>>(
        tmp: PathBuf,
        path: &Path,
        mode: Option<u32>,
        write: impl FnOnce(&mut std::fs::File) -> Result<T, E>,
    ) -> Result<(Staged, T), E> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::create_dir_all(parent(path))?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.unwrap_or(0o600))
            .open(&tmp)?;
        let written = (|| {
            if let Some(mode) = mode {
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            let out = write(&mut f)?;
            f.sync_all()?;
            Ok(out)
        })();
        match written {
            Ok(out) => Ok((
                Staged {
                    tmp,
                    path: path.to_owned(),
                },
                out,
            )),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Puts the file in place (replacing what was there) and makes that durable.
    pub fn commit(self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.path)?;
        fsync_dir(&self.path)
    }

    /// Puts the file in place only if there is none yet: the first writer wins, a later one
    /// keeps what is there. Durable either way; the temporary is removed.
    pub fn commit_new(self) -> std::io::Result<()> {
        let result = (|| {
            match std::fs::hard_link(&self.tmp, &self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                // A file system without hard links: an atomic rename still never leaves a torn
                // file, only the first-writer-wins guarantee is lost.
                Err(_) => std::fs::rename(&self.tmp, &self.path)?,
            }
            fsync_dir(&self.path)
        })();
        let _ = std::fs::remove_file(&self.tmp);
        result
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Makes the renames and unlinks done in `path`'s directory durable.
pub fn fsync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(parent(path))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// `p` holds `data` with `mode`, and no temporary is left beside it.
    fn assert_alone(p: &Path, data: &[u8], mode: u32) {
        assert_eq!(std::fs::read(p).unwrap(), data);
        let got = std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(got & 0o777, mode);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(names(p.parent().unwrap()), [name]);
    }

    #[test]
    fn write_private_replaces_the_file_owner_only_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("secret");
        write_private(&p, b"one").unwrap();
        write_private(&p, b"two").unwrap();
        assert_alone(&p, b"two", 0o600);
    }

    #[test]
    fn a_stale_temporary_of_another_mode_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        let tmp = dir.path().join(".key.pem.tmp");
        std::fs::write(&tmp, b"half a key").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"whole key").unwrap();
        assert_alone(&p, b"whole key", 0o600);
    }

    #[test]
    fn a_failed_streamed_write_keeps_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.update");
        write_atomic_with(&p, 0o644, |f| f.write_all(b"old")).unwrap();
        let r: std::io::Result<()> = write_atomic_with(&p, 0o644, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("source changed"))
        });
        assert!(r.is_err());
        assert_alone(&p, b"old", 0o644);
    }

    #[test]
    fn commit_new_keeps_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        Staged::write_unique(&p, b"first", Some(0o600))
            .unwrap()
            .commit_new()
            .unwrap();
        Staged::write_unique(&p, b"second", Some(0o600))
            .unwrap()
            .commit_new()
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(names(dir.path()), ["k"]);
    }
}
