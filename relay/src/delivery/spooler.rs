//! Where a message body goes while it arrives (SMTP DATA, `/mxdeliv`): the first
//! [`SPILL`] bytes stay in memory (most messages are smaller, and are then handled as before);
//! past that the body goes to a store [`Spool`] piece by piece, so a transfer holds at most
//! about `SPILL` bytes however big the message and however slowly it comes.
//!
//! The spool is written in the form the local mailbox gets: the header as
//! [`policy::prepare_local_delivery`] (and for outgoing mail, the gate's cleanup) leaves it,
//! then the body unchanged. Those rewrites touch only the header, so the store can adopt the
//! file as the local copy instead of writing the body a second time. The original header stays
//! in memory for the checks that need the message as received (the gate, DKIM).

use crate::policy::{self, Direction};
use crate::store::{Received, Spool, Store, StoreError};

/// Bytes kept in memory before the body goes to disk.
pub const SPILL: usize = 256 * 1024;
/// A header that has not ended by this size is spooled as it came (not adoptable).
pub const HEAD_MAX: usize = 1024 * 1024;

/// Just past the blank line that ends the top-level header, if it has arrived.
pub fn header_end(data: &[u8]) -> Option<usize> {
    if data.starts_with(b"\r\n") {
        return Some(2);
    }
    memchr::memmem::find(data, b"\r\n\r\n").map(|i| i + 4)
}

/// The header as the local mailbox stores it (see the module header).
pub fn stored_head(head: &[u8], dir: Direction) -> Vec<u8> {
    match dir {
        Direction::Incoming => policy::prepare_local_delivery(head),
        Direction::Outgoing => {
            policy::prepare_local_delivery(&policy::headers::clean_outgoing(head))
        }
    }
}

/// One message's body on its way to memory or disk; see the module header.
pub struct Spooler {
    store: Store,
    dir: Direction,
    /// The header as received, once the body went to disk.
    head: Vec<u8>,
    /// Bytes of the spool that are the stored header.
    stored_head_len: u64,
    spool: Option<Spool>,
    /// The spool holds the message as received (its header was too long to rewrite).
    raw: bool,
}

impl Spooler {
    pub fn new(store: &Store, dir: Direction) -> Spooler {
        Spooler {
            store: store.clone(),
            dir,
            head: Vec::new(),
            stored_head_len: 0,
            spool: None,
            raw: false,
        }
    }

    /// Whether the spool holds the message as received, because its header did not end
    /// within [`HEAD_MAX`] (then nothing is adopted, and outgoing mail is rewritten whole).
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// Takes the bytes in `buf` (the message so far, or what came since the last call) to disk
    /// once there are enough; `buf` is left empty then, with its capacity, for what follows.
    pub async fn push(&mut self, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        if let Some(spool) = &mut self.spool {
            if !buf.is_empty() {
                *buf = spool.write(std::mem::take(buf)).await?;
            }
            return Ok(());
        }
        if buf.len() < SPILL {
            return Ok(());
        }
        let head_len = match header_end(buf) {
            Some(n) => n,
            None if buf.len() < HEAD_MAX => return Ok(()),
            None => {
                self.raw = true;
                0
            }
        };
        let mut spool = self.store.spool().await?;
        if !self.raw {
            self.head = buf[..head_len].to_vec();
            let stored = stored_head(&self.head, self.dir);
            self.stored_head_len = stored.len() as u64;
            spool.write(stored).await?;
            buf.drain(..head_len);
        }
        *buf = spool.write(std::mem::take(buf)).await?;
        self.spool = Some(spool);
        Ok(())
    }

    /// The whole message as received (the gate and DKIM read it whole), and the spool to
    /// adopt as the local copy, if any. `rest` is what `push` has not taken. A spooled body is
    /// mapped, not read back: no second copy of it on the heap.
    pub async fn finish(self, rest: Vec<u8>) -> Result<(Received, Option<Spool>), StoreError> {
        let Spooler {
            spool,
            head,
            stored_head_len,
            raw,
            ..
        } = self;
        let Some(mut spool) = spool else {
            return Ok((Received::Heap(rest), None));
        };
        if !rest.is_empty() {
            spool.write(rest).await?;
        }
        if raw {
            return Ok((spool.received(Vec::new(), 0)?, None));
        }
        let data = spool.received(head, stored_head_len)?;
        Ok((data, Some(spool)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_head_plus_body_is_what_local_delivery_stores() {
        let msg = b"Received: from x\r\nDKIM-Signature: v=1;\r\n b=abc\r\nFrom: a@b.c\r\nSubject: hi\r\nX-Mailer: m\r\n\r\nbody\r\nReceived: not a header\r\n\r\nmore\r\n";
        let end = header_end(msg).unwrap();
        for dir in [Direction::Incoming, Direction::Outgoing] {
            let gate = match dir {
                Direction::Incoming => msg.to_vec(),
                Direction::Outgoing => policy::headers::clean_outgoing(msg),
            };
            let whole = policy::prepare_local_delivery(&gate);
            let split = [stored_head(&msg[..end], dir), msg[end..].to_vec()].concat();
            assert_eq!(whole, split, "{dir:?}");
        }
        assert_eq!(header_end(b"\r\nbody"), Some(2));
        assert_eq!(header_end(b"From: a\r\nTo: b\r\n"), None);
    }
}
