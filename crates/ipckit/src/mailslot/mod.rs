//! Mailslots (`CreateMailslot`, `ReadFile`, `GetMailslotInfo`, `SetMailslotInfo`, and
//! `CreateFile` / `WriteFile` on `\\.\mailslot\NAME`): one-way, message-at-a-time delivery from
//! any number of writers to the one process that created the mailslot. Blocking, and with the
//! `tokio` feature async (`AsyncMailslotServer`, `AsyncMailslotWriter`).
//!
//! ```
//! use std::time::Duration;
//! use ipckit::ErrorKind;
//! use ipckit::mailslot::{MailslotOptions, WriterOptions};
//! # let dir = std::env::temp_dir().join(format!("ipckit-doc-mailslot-{}", std::process::id()));
//! # let ns = ipckit::namespace::Namespace::at(&dir);
//!
//! // CreateMailslot("\\\\.\\mailslot\\inbox", 400, 0): messages of at most 400 bytes, reads
//! // that return at once when nothing is there.
//! let mut server = MailslotOptions::new()
//!     .max_message_size(400)?
//!     .read_timeout(Some(Duration::ZERO))
//!     .namespace(ns.clone())
//!     .create(r"\\.\mailslot\inbox")?;
//!
//! // CreateFile("\\\\.\\mailslot\\inbox", GENERIC_WRITE, FILE_SHARE_READ, ...) + WriteFile
//! let writer = WriterOptions::new().namespace(ns.clone()).open(r"\\.\mailslot\Inbox")?;
//! writer.write(b"first")?;
//! writer.write(b"")?; // an empty message is a message
//! assert_eq!(writer.write(&[0; 401]).unwrap_err().kind(), ErrorKind::MessageTooLarge);
//!
//! // GetMailslotInfo: max size, size of the next message, count, timeout.
//! let info = server.info()?;
//! assert_eq!((info.max_message_size, info.next_size, info.count), (400, Some(5), 2));
//!
//! let mut small = [0u8; 3];
//! let err = server.read(&mut small).unwrap_err(); // the message stays queued
//! assert_eq!(err.win32_code(), 122); // ERROR_INSUFFICIENT_BUFFER
//! let msg = server.read_message()?; // one whole message, oldest first, with its sender
//! assert_eq!((msg.data.as_slice(), msg.sender.pid), (&b"first"[..], std::process::id()));
//! assert_eq!(server.read(&mut small)?, 0);
//! assert_eq!(server.read(&mut small).unwrap_err().win32_code(), 121); // ERROR_SEM_TIMEOUT
//!
//! drop(server); // the mailslot and its queue are gone with the server's handle
//! assert_eq!(writer.write(b"late").unwrap_err().kind(), ErrorKind::PeerGone);
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! # Semantics (as on Windows)
//! - **Creation.** [`MailslotOptions::create`] makes `\\.\mailslot\[path\]NAME` on this
//!   machine; while a server holds the name, another create fails with
//!   [`ErrorKind::AlreadyExists`](crate::ErrorKind::AlreadyExists) (`ERROR_ALREADY_EXISTS`). Names
//!   ignore case. The mailslot and every queued message are gone when the server's handle is
//!   dropped or its process dies (SIGKILL included); the name is then free at once.
//! - **Reading.** Only the server reads. Each read returns one whole message, oldest first; a
//!   buffer smaller than the next message fails with
//!   [`ErrorKind::InsufficientBuffer`](crate::ErrorKind::InsufficientBuffer)
//!   (`ERROR_INSUFFICIENT_BUFFER`) and leaves it queued. With nothing queued a read waits for
//!   the read timeout: zero returns at once, `None` (`MAILSLOT_WAIT_FOREVER`) waits for ever, and
//!   when it runs out the read fails with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout)
//!   carrying `ERROR_SEM_TIMEOUT` (121). [`MailslotServer::set_read_timeout`] changes it
//!   (`SetMailslotInfo`).
//! - **Info.** [`MailslotServer::info`] (`GetMailslotInfo`) gives the maximum message size, the
//!   size of the next message, the number of queued messages and the read timeout, exactly.
//! - **Writing.** [`WriterOptions::open`] (`CreateFile`) fails with
//!   [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) when no such mailslot exists. Each write
//!   is one message; one larger than the mailslot's maximum fails with
//!   [`ErrorKind::MessageTooLarge`](crate::ErrorKind::MessageTooLarge) (`ERROR_INVALID_PARAMETER`,
//!   87) and sends nothing. Any number of writers, in any processes, may write at once; each
//!   message arrives whole, exactly once, and the messages of one writer in the order written.
//! - **Identity.** Every message carries its sender's pid, uid and gid, recorded by the kernel
//!   ([`Message::sender`], [`MailslotServer::read_from`]).
//! - **Security.** A mailslot lives in the user's private runtime folder (mode 0700): other
//!   users cannot reach it.
//!
//! # Differences
//! - **Writers can wait.** A Windows writer never blocks. Here the kernel queues at most
//!   `/proc/sys/net/unix/max_dgram_qlen` + 1 messages (11 by default) that the server has not
//!   taken yet, and a writer then waits until the server reads (or calls
//!   [`info`](MailslotServer::info), which moves the queue into the server's process). Nothing is
//!   ever dropped: [`WriterOptions::write_timeout`] bounds the wait
//!   ([`ErrorKind::Timeout`](crate::ErrorKind::Timeout)) and [`MailslotWriter::try_write`] does
//!   not wait ([`ErrorKind::Full`](crate::ErrorKind::Full)).
//! - **Largest message.** At most [`MAX_MESSAGE_SIZE_LIMIT`] (64 KiB), also when the maximum is
//!   0 ("any size"), which [`MailslotInfo::max_message_size`] then reports. A larger maximum fails
//!   at create with [`ErrorKind::InvalidParameter`](crate::ErrorKind::InvalidParameter).
//! - **After the server.** A write to a mailslot whose server closed or died fails with
//!   [`ErrorKind::PeerGone`](crate::ErrorKind::PeerGone), also when a new server has taken the
//!   name since (the writer must open it again).
//! - **Other processes' view.** [`describe`] shows a mailslot to processes other than its server
//!   (`ipckit mailslot info`, `ipckit ls`): the count there is maintained by the writers and the
//!   server in the shared status page and can be briefly off, see
//!   `docs/protocol/mailslot.md`.
//! - **Network forms.** `\\HOST\mailslot\NAME`, `\\DOMAIN\mailslot\NAME` and
//!   `\\*\mailslot\NAME` parse, but opening them fails with
//!   [`ErrorKind::NeedsGateway`](crate::ErrorKind::NeedsGateway) until the broker's network
//!   gateway carries them (where messages will be limited to [`NETWORK_MESSAGE_LIMIT`] bytes).
//!
//! The files and the status page are specified in `docs/protocol/mailslot.md`.

#[cfg(feature = "tokio")]
mod asynch;
mod server;
mod slot;
mod status;
mod writer;

use std::time::Duration;

pub use crate::pipe::PeerIdentity;
#[cfg(feature = "tokio")]
pub use asynch::{AsyncMailslotServer, AsyncMailslotWriter};
pub use server::{MailslotOptions, MailslotServer};
pub use slot::{MailslotStatus, describe, describe_name, sweep};
pub use writer::{MailslotWriter, WriterOptions};

/// The largest message a local mailslot carries: 64 KiB. One datagram of this size fits the
/// default socket buffers with room for more, and needs no large contiguous kernel allocation.
pub const MAX_MESSAGE_SIZE_LIMIT: u32 = 64 * 1024;

/// The largest message that may leave the machine (Windows: 424 bytes for mailslot datagrams).
pub const NETWORK_MESSAGE_LIMIT: u32 = 424;

/// Read timeout meaning "wait for ever", as a number of milliseconds. Windows:
/// `MAILSLOT_WAIT_FOREVER`.
pub const MAILSLOT_WAIT_FOREVER: u32 = u32::MAX;

/// What [`MailslotServer::info`] reports. Windows: the out parameters of `GetMailslotInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MailslotInfo {
    /// The largest message writers may send (`lpMaxMessageSize`): the size given at creation,
    /// or [`MAX_MESSAGE_SIZE_LIMIT`] when it was 0.
    pub max_message_size: u32,
    /// The size of the next message (`lpNextSize`); `None` for `MAILSLOT_NO_MESSAGE`.
    pub next_size: Option<usize>,
    /// How many messages are queued (`lpMessageCount`).
    pub count: usize,
    /// The read timeout (`lpReadTimeout`); `None` is `MAILSLOT_WAIT_FOREVER`.
    pub read_timeout: Option<Duration>,
}

/// One message, as [`MailslotServer::read_message`] returns it. Windows: the bytes of one
/// `ReadFile`, plus who sent them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// The message's bytes.
    pub data: Vec<u8>,
    /// The writer's pid, uid and gid, as the kernel recorded them when it sent the message.
    /// The pid is 0 for a writer outside this process's pid namespace.
    pub sender: PeerIdentity,
}

/// `ms` as a read timeout ([`MAILSLOT_WAIT_FOREVER`]: `None`).
pub(crate) fn timeout_from_ms(ms: u32) -> Option<Duration> {
    (ms != MAILSLOT_WAIT_FOREVER).then(|| Duration::from_millis(u64::from(ms)))
}

/// A read timeout in milliseconds, as published in the status page (longer ones are capped
/// just below [`MAILSLOT_WAIT_FOREVER`]; sub-millisecond ones round up).
pub(crate) fn timeout_to_ms(t: Option<Duration>) -> u32 {
    match t {
        None => MAILSLOT_WAIT_FOREVER,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            u32::try_from(ms)
                .unwrap_or(MAILSLOT_WAIT_FOREVER - 1)
                .min(MAILSLOT_WAIT_FOREVER - 1)
        }
    }
}

/// The sender identity of a received datagram.
fn sender_of(cred: Option<crate::sys::socket::PeerCred>) -> PeerIdentity {
    match cred {
        Some(c) => PeerIdentity {
            pid: c.pid,
            uid: c.uid,
            gid: c.gid,
        },
        // Not expected: the server's socket asks for credentials on every message.
        None => PeerIdentity {
            pid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_in_milliseconds() {
        assert_eq!(timeout_from_ms(MAILSLOT_WAIT_FOREVER), None);
        assert_eq!(timeout_from_ms(0), Some(Duration::ZERO));
        assert_eq!(timeout_to_ms(None), MAILSLOT_WAIT_FOREVER);
        assert_eq!(timeout_to_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(
            timeout_to_ms(Some(Duration::from_secs(1 << 40))),
            u32::MAX - 1
        );
    }
}
