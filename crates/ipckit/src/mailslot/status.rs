//! The status page of a mailslot (`RUNTIME/mailslot/ENC/status`): what other processes need to
//! know about it — its maximum message size, read timeout and server — and the two counters
//! from which they learn how many messages are queued. Layout: `docs/protocol/mailslot.md`.
//!
//! The header is written once, before the page is published (renamed into place); the read
//! timeout and the counters change later through atomics in the shared mapping. Every reader
//! treats the page as hostile: a header that does not validate makes the mailslot unusable
//! ([`ErrorKind::Protocol`]), and the counters are only ever displayed.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::file;
use crate::sys::mmap::{Access, MappedRegion};

const MAGIC: [u8; 8] = *b"IPCKMSLT";
const VERSION: u32 = 1;
/// The page's size: one page of the smallest size Linux uses.
pub(crate) const LEN: usize = 4096;
/// The header's encoded length (offsets 0..32).
pub(crate) const HEADER_LEN: usize = 32;
const TIMEOUT_OFFSET: usize = 20;
/// Messages sent by ipckit writers (on its own cache line).
const SENT_OFFSET: usize = 64;
/// Messages taken by the server: returned by reads, or discarded as malformed.
const TAKEN_OFFSET: usize = 128;

/// The fixed part of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The largest message a writer may send (1..=`MAX_MESSAGE_SIZE_LIMIT`).
    pub max_message_size: u32,
    /// The server's pid when it created the mailslot.
    pub server_pid: u32,
    /// The read timeout at creation, in ms ([`MAILSLOT_WAIT_FOREVER`](super::MAILSLOT_WAIT_FOREVER)); the live value is an atomic.
    pub read_timeout_ms: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.max_message_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.server_pid.to_le_bytes());
        b[20..24].copy_from_slice(&self.read_timeout_ms.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Header> {
        let bad = |why: &str| {
            Error::with_message(
                ErrorKind::Protocol,
                format!("damaged mailslot status: {why}"),
            )
        };
        if b.len() != HEADER_LEN {
            return Err(bad("wrong length"));
        }
        if b[0..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let w = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        if w(8) != VERSION {
            return Err(bad("unknown version"));
        }
        let max_message_size = w(12);
        if max_message_size == 0 || max_message_size > super::MAX_MESSAGE_SIZE_LIMIT {
            return Err(bad("max message size out of range"));
        }
        if b[24..].iter().any(|&x| x != 0) {
            return Err(bad("reserved bytes set"));
        }
        Ok(Header {
            max_message_size,
            server_pid: w(16),
            read_timeout_ms: w(20),
        })
    }
}

/// A mapped status page.
#[derive(Debug)]
pub(crate) struct StatusPage {
    region: MappedRegion,
    header: Header,
}

impl StatusPage {
    /// Writes a fresh page into the empty file `fd` (which must not be visible yet).
    pub fn init(fd: impl AsFd, header: &Header) -> Result<()> {
        file::set_size(&fd, LEN as u64)?;
        file::write_all_at(&fd, &header.encode(), 0)
    }

    /// Maps the page of `fd` and validates its header.
    pub fn map(fd: impl AsFd) -> Result<StatusPage> {
        if file::size(&fd)? != LEN as u64 {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                "damaged mailslot status: wrong file size",
            ));
        }
        let region = MappedRegion::map(&fd, 0, LEN, Access::Write)?;
        let mut b = [0u8; HEADER_LEN];
        file::read_exact_at(&fd, &mut b, 0)?;
        let header = Header::decode(&b)?;
        Ok(StatusPage { region, header })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= LEN && off.is_multiple_of(4));
        // SAFETY: the mapping is LEN bytes long and page-aligned, `off` is a constant below LEN
        // and a multiple of 4, so the pointer is in range and aligned; the reference lives no
        // longer than `&self`, which keeps the mapping. Other processes change these bytes only
        // through atomics too.
        unsafe { AtomicU32::from_ptr(self.region.as_ptr().add(off).cast()) }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off + 8 <= LEN && off.is_multiple_of(8));
        // SAFETY: as in `u32_at`, with 8-byte alignment.
        unsafe { AtomicU64::from_ptr(self.region.as_ptr().add(off).cast()) }
    }

    /// The read timeout now, in ms ([`MAILSLOT_WAIT_FOREVER`](super::MAILSLOT_WAIT_FOREVER)).
    pub fn read_timeout_ms(&self) -> u32 {
        self.u32_at(TIMEOUT_OFFSET).load(Ordering::Relaxed)
    }

    pub fn set_read_timeout_ms(&self, ms: u32) {
        self.u32_at(TIMEOUT_OFFSET).store(ms, Ordering::Relaxed);
    }

    /// A writer sent one message.
    pub fn count_sent(&self) {
        self.u64_at(SENT_OFFSET).fetch_add(1, Ordering::Relaxed);
    }

    /// The server has taken `n` messages in all.
    pub fn set_taken(&self, n: u64) {
        self.u64_at(TAKEN_OFFSET).store(n, Ordering::Relaxed);
    }

    /// Messages sent by ipckit writers and not yet taken by the server.
    pub fn queued(&self) -> u64 {
        let taken = self.u64_at(TAKEN_OFFSET).load(Ordering::Relaxed);
        let sent = self.u64_at(SENT_OFFSET).load(Ordering::Relaxed);
        sent.saturating_sub(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejections() {
        let h = Header {
            max_message_size: 424,
            server_pid: 77,
            read_timeout_ms: super::super::MAILSLOT_WAIT_FOREVER,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        for (at, v) in [(0, b'x'), (8, 2), (12, 0), (15, 0xff), (24, 1), (31, 1)] {
            let mut b = h.encode();
            if at == 12 {
                b[12..16].copy_from_slice(&0u32.to_le_bytes());
            } else {
                b[at] = v;
            }
            assert_eq!(
                Header::decode(&b).unwrap_err().kind(),
                ErrorKind::Protocol,
                "byte {at}"
            );
        }
        assert!(Header::decode(&h.encode()[..20]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            if let Ok(h) = Header::decode(&bytes) {
                proptest::prop_assert_eq!(&h.encode()[..], &bytes[..]);
            }
        }
    }
}
