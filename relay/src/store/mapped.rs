//! A spooled message as one byte slice without a heap copy of its body: the checks at the end
//! of a transfer (the encryption gate's MIME parse, the DKIM verification) need the message as
//! received in one piece, but the spool holds the *stored* header followed by the body, and
//! the received header is in memory.
//!
//! The view is built from two mappings laid out back to back in one reserved address range:
//! anonymous pages for the received header, then the spool file mapped privately from the
//! page that holds the body's first byte. The received header is copied in just before the
//! body; where that overlaps the stored header's tail on the file's first mapped page, the
//! private mapping copies that one page on write, so the file never changes. The body's pages
//! are the page cache's: the kernel reads them in as the checks walk the message and can drop
//! them again under memory pressure, unlike a heap copy.

use nix::sys::mman::{mmap, mmap_anonymous, mprotect, munmap, MapFlags, ProtFlags};
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;

/// `head` followed by the bytes of `file` from `offset` to `len`, in one slice.
pub struct Mapped {
    base: NonNull<c_void>,
    /// Bytes reserved at `base`.
    reserved: usize,
    /// The message: `base + start .. base + start + len`.
    start: usize,
    len: usize,
}

// The mapping is read-only once built and owned by this value alone.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

impl Mapped {
    /// Maps `file` (`len` bytes long; nothing may truncate it while the view lives) from
    /// `offset` on, with `head` in front. `None` when there is no body to map.
    pub fn new(
        head: &[u8],
        file: impl AsFd,
        offset: u64,
        len: u64,
    ) -> std::io::Result<Option<Mapped>> {
        let to_usize =
            |n: u64| usize::try_from(n).map_err(|_| std::io::Error::other("too large to map"));
        let (offset, len) = (to_usize(offset)?, to_usize(len)?);
        if offset >= len {
            return Ok(None);
        }
        let page = page_size();
        let aligned = offset & !(page - 1);
        let skew = offset - aligned;
        let pre = head.len().saturating_sub(skew).div_ceil(page) * page;
        let file_len = len - aligned;
        let reserved = pre
            .checked_add(file_len.div_ceil(page) * page)
            .ok_or_else(|| std::io::Error::other("too large to map"))?;
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let nz = |n: usize| NonZeroUsize::new(n).ok_or_else(|| std::io::Error::other("empty map"));
        // SAFETY: a fresh private anonymous mapping that nothing else refers to.
        let base = unsafe { mmap_anonymous(None, nz(reserved)?, rw, MapFlags::MAP_PRIVATE) }?;
        let view = Mapped {
            base,
            reserved,
            start: pre + skew - head.len(),
            len: head.len() + (len - offset),
        };
        let at = NonZeroUsize::new(base.as_ptr() as usize + pre);
        // SAFETY: MAP_FIXED replaces only pages of the range reserved just above, which
        // `view` owns; a private mapping never writes to the file. `aligned` is a multiple of
        // the page size as mmap requires.
        unsafe {
            mmap(
                at,
                nz(file_len)?,
                rw,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED,
                file,
                aligned as nix::libc::off_t,
            )
        }?;
        // SAFETY: `start + head.len()` = `pre + skew` lies within the reserved range, all of
        // it mapped writable above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                head.as_ptr(),
                (base.as_ptr() as *mut u8).add(view.start),
                head.len(),
            );
            mprotect(base, reserved, ProtFlags::PROT_READ)?;
        }
        Ok(Some(view))
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `start..start + len` lies within the mapped range, which lives as long as
        // `self` and is never written after `new`.
        unsafe {
            std::slice::from_raw_parts((self.base.as_ptr() as *const u8).add(self.start), self.len)
        }
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the range `new` reserved, no longer borrowed (`deref` borrows `self`).
        let _ = unsafe { munmap(self.base, self.reserved) };
    }
}

/// A message for the checks: in memory (small ones), or [`Mapped`] from its spool. Also a
/// stored body mapped for the outbound transport ([`crate::store::Store::map_body`]).
pub enum Received {
    Heap(Vec<u8>),
    Mapped(Mapped),
}

impl AsRef<[u8]> for Received {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::ops::Deref for Received {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Received::Heap(v) => v,
            Received::Mapped(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(data: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn the_view_is_the_head_then_the_file_from_offset() {
        let page = page_size();
        let body: Vec<u8> = (0..3 * page + 17).map(|i| (i % 251) as u8).collect();
        // Stored heads that end before, on and after a page boundary; received heads shorter
        // and longer than them (the bytes before the body in the file never show).
        for stored in [0, 1, 100, page - 1, page, page + 5, 2 * page + 3] {
            for head_len in [0, 1, 99, page, page + 1, 3 * page + 7] {
                let stored_head = vec![b'S'; stored];
                let head: Vec<u8> = (0..head_len).map(|i| b'a' + (i % 26) as u8).collect();
                let f = file_with(&[&stored_head[..], &body].concat());
                let len = (stored + body.len()) as u64;
                let m = Mapped::new(&head, &f, stored as u64, len).unwrap().unwrap();
                assert_eq!(
                    &m[..],
                    &[&head[..], &body].concat()[..],
                    "{stored} {head_len}"
                );
                drop(m);
                // The file is untouched by the copy of the head.
                let mut back = Vec::new();
                use std::io::{Read, Seek};
                let mut f = f;
                f.rewind().unwrap();
                f.read_to_end(&mut back).unwrap();
                assert_eq!(back, [&stored_head[..], &body].concat());
            }
        }
    }

    #[test]
    fn nothing_past_the_stored_head_maps_to_none() {
        let f = file_with(b"head only");
        assert!(Mapped::new(b"x", &f, 9, 9).unwrap().is_none());
    }
}
