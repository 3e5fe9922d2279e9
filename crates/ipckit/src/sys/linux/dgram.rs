//! Unix datagram sockets: the carrier of local mailslots.
//!
//! Windows counterpart: the mailslot file system (`msfs`) behind `CreateMailslot`, `ReadFile`
//! on a mailslot and `CreateFile` / `WriteFile` on `\\.\mailslot\NAME`.
//!
//! A `SOCK_DGRAM` Unix socket keeps message boundaries, queues whole messages in arrival order,
//! and accepts them from any number of unconnected writers. A datagram is queued whole or not at
//! all (`unix(7)`), so a writer killed in the middle of `sendmsg` never leaves half a message.
//! The receiving socket has `SO_PASSCRED` set, so the kernel attaches the sender's pid, uid and
//! gid to every message (`SCM_CREDENTIALS`); they cannot be forged by the sender.
//!
//! The receive queue of a Unix datagram socket holds at most `max_dgram_qlen` + 1 messages
//! (`/proc/sys/net/unix/max_dgram_qlen`, 10 by default); a writer then waits (or fails with
//! `EAGAIN` when it asked not to wait) until the reader takes one: nothing is ever dropped.
//!
//! Every socket is close-on-exec, every send uses `MSG_NOSIGNAL`, and `EINTR` is retried.
//!
//! Linux references: `unix(7)` (`SOCK_DGRAM`, `SO_PASSCRED`, `SCM_CREDENTIALS`), `socket(7)`
//! (`SO_RCVTIMEO`, `SO_SNDTIMEO`, `SO_SNDBUF`), `socket(2)`, `bind(2)`, `connect(2)`,
//! `sendmsg(2)`, `recvmsg(2)` (`MSG_TRUNC`, `MSG_PEEK`, `MSG_DONTWAIT`), `cmsg(3)`.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, SendFlags, SocketFlags, SocketType, sockopt,
};

use super::socket::{PeerCred, address};
use crate::error::{Error, Result};

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            r => return r,
        }
    }
}

fn new_socket(nonblocking: bool) -> rustix::io::Result<OwnedFd> {
    let mut flags = SocketFlags::CLOEXEC;
    if nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, flags, None)
}

/// Creates a Unix datagram socket with `SO_PASSCRED` (every message carries its sender's
/// credentials) bound to `name` in the folder `dir` (open at `dir_path`). `EADDRINUSE` when a
/// file of that name exists. The socket file gets `0777 & !umask`; the folder decides who may
/// reach it.
pub fn bind_at(dir: &impl AsFd, dir_path: &Path, name: &str, nonblocking: bool) -> Result<OwnedFd> {
    let addr = address(dir, dir_path, name)?;
    let shown = || dir_path.join(name).display().to_string();
    let fd = new_socket(nonblocking)
        .map_err(|e| Error::from_io("cannot create a Unix datagram socket", e.into()))?;
    sockopt::set_socket_passcred(&fd, true)
        .map_err(|e| Error::from_io("cannot set SO_PASSCRED", e.into()))?;
    rustix::net::bind(&fd, &addr)
        .map_err(|e| Error::from_io(format!("cannot bind socket {}", shown()), e.into()))?;
    Ok(fd)
}

/// A new Unix datagram socket connected to `name` in the folder `dir`: every send goes there.
/// Errors keep their errno: `ENOENT` (no such socket), `ECONNREFUSED` (nobody is bound to it
/// any more: its owner died), `ENAMETOOLONG`.
pub fn connect_at(
    dir: &impl AsFd,
    dir_path: &Path,
    name: &str,
    nonblocking: bool,
) -> Result<OwnedFd, Errno> {
    let addr = address(dir, dir_path, name).map_err(|_| Errno::NAMETOOLONG)?;
    let fd = new_socket(nonblocking)?;
    retry(|| rustix::net::connect(&fd, &addr))?;
    Ok(fd)
}

/// A connected pair of Unix datagram sockets, close-on-exec, the second with `SO_PASSCRED`
/// (`socketpair(2)`): for tests.
pub fn pair() -> Result<(OwnedFd, OwnedFd)> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::from_io("cannot create a datagram socket pair", e.into()))?;
    sockopt::set_socket_passcred(&b, true)
        .map_err(|e| Error::from_io("cannot set SO_PASSCRED", e.into()))?;
    Ok((a, b))
}

/// Sends `data` as one datagram on a connected socket (`send(2)` with `MSG_NOSIGNAL`, and
/// `MSG_DONTWAIT` unless `wait`). Errors keep their errno: `EAGAIN` (the receiver's queue or this
/// socket's send buffer is full and `wait` is false, or `SO_SNDTIMEO` ran out), `ECONNREFUSED`
/// (the receiver is gone), `EMSGSIZE` (larger than the send buffer allows).
pub fn send(fd: impl AsFd, data: &[u8], wait: bool) -> Result<(), Errno> {
    let mut flags = SendFlags::NOSIGNAL;
    if !wait {
        flags |= SendFlags::DONTWAIT;
    }
    let n = retry(|| rustix::net::send(&fd, data, flags))?;
    // A datagram is sent whole or not at all.
    debug_assert_eq!(n, data.len());
    Ok(())
}

fn timeout_err(e: Errno) -> Error {
    Error::from_io("cannot set socket timeout", e.into())
}

/// How long a blocking send waits for room (`SO_SNDTIMEO`; `None`: for ever).
pub fn set_send_timeout(fd: impl AsFd, timeout: Option<Duration>) -> Result<()> {
    // Zero means "no timeout" to the kernel: use the smallest non-zero one instead.
    let t = timeout.map(|t| t.max(Duration::from_micros(1)));
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, t).map_err(timeout_err)
}

/// How long a blocking receive waits for a message (`SO_RCVTIMEO`; `None`: for ever).
pub fn set_recv_timeout(fd: impl AsFd, timeout: Option<Duration>) -> Result<()> {
    let t = timeout.map(|t| t.max(Duration::from_micros(1)));
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, t).map_err(timeout_err)
}

/// Raises the socket's send buffer (`SO_SNDBUF`, capped by `/proc/sys/net/core/wmem_max`) so
/// that datagrams of `bytes` fit; a datagram may be at most the send buffer less 32 bytes.
pub fn reserve_send_buffer(fd: impl AsFd, bytes: usize) -> Result<()> {
    let have = sockopt::socket_send_buffer_size(&fd)
        .map_err(|e| Error::from_io("cannot query SO_SNDBUF", e.into()))?;
    if have >= bytes + 32 {
        return Ok(());
    }
    // The kernel doubles the value it is given (socket(7)).
    sockopt::set_socket_send_buffer_size(&fd, (bytes + 32).div_ceil(2))
        .map_err(|e| Error::from_io("cannot set SO_SNDBUF", e.into()))
}

/// What [`recv`] took off the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The message's whole length (`MSG_TRUNC`): more than the buffers held when `truncated`.
    pub len: usize,
    /// The buffers were too small; only their size of the message was kept.
    pub truncated: bool,
    /// The sender, from `SCM_CREDENTIALS` (`None` when the socket lacks `SO_PASSCRED`). A
    /// sender whose process is not visible in this process's pid namespace has pid 0.
    pub sender: Option<PeerCred>,
}

/// Room for one `SCM_CREDENTIALS` control message (`CMSG_SPACE(sizeof(struct ucred))` = 32),
/// aligned for `struct cmsghdr`, with slack.
#[repr(C, align(8))]
struct CmsgSpace([MaybeUninit<u8>; 64]);

const SOL_SOCKET: i32 = 1;
const SCM_CREDENTIALS: i32 = 2;
/// `sizeof(struct cmsghdr)` on 64-bit Linux: `size_t cmsg_len; int cmsg_level; int cmsg_type`.
const CMSG_HDR: usize = std::mem::size_of::<usize>() + 8;

/// Reads the credentials out of a control buffer that holds at most one message. Parsed here
/// rather than by rustix, whose `UCred` cannot represent the pid 0 the kernel reports for a
/// sender outside this pid namespace.
fn parse_cred(ctl: &[u8]) -> Option<PeerCred> {
    let word = |at: usize| -> Option<[u8; 4]> { ctl.get(at..at + 4)?.try_into().ok() };
    let len = usize::from_ne_bytes(ctl.get(..std::mem::size_of::<usize>())?.try_into().ok()?);
    let level = i32::from_ne_bytes(word(CMSG_HDR - 8)?);
    let kind = i32::from_ne_bytes(word(CMSG_HDR - 4)?);
    if level != SOL_SOCKET || kind != SCM_CREDENTIALS || len < CMSG_HDR + 12 || len > ctl.len() {
        return None;
    }
    Some(PeerCred {
        pid: i32::from_ne_bytes(word(CMSG_HDR)?).max(0) as u32,
        uid: u32::from_ne_bytes(word(CMSG_HDR + 4)?),
        gid: u32::from_ne_bytes(word(CMSG_HDR + 8)?),
    })
}

/// Takes the next datagram off the queue into `bufs` (`recvmsg(2)` with `MSG_TRUNC`, and
/// `MSG_DONTWAIT` unless `wait`), with its sender's credentials. `Ok(None)` when nothing came:
/// the queue is empty and `wait` is false, or `SO_RCVTIMEO` ran out. A message longer than the
/// buffers is consumed all the same ([`Received::truncated`]).
pub fn recv(fd: impl AsFd, bufs: &mut [IoSliceMut<'_>], wait: bool) -> Result<Option<Received>> {
    let mut flags = RecvFlags::TRUNC;
    if !wait {
        flags |= RecvFlags::DONTWAIT;
    }
    let mut space = CmsgSpace([MaybeUninit::new(0); 64]);
    let capacity: usize = bufs.iter().map(|b| b.len()).sum();
    let r = {
        let mut control = RecvAncillaryBuffer::new(&mut space.0);
        retry(|| rustix::net::recvmsg(&fd, bufs, &mut control, flags))
    };
    let msg = match r {
        Ok(m) => m,
        Err(Errno::AGAIN) => return Ok(None),
        Err(e) => return Err(Error::from_io("cannot receive a datagram", e.into())),
    };
    let mut ctl = [0u8; 64];
    for (dst, src) in ctl.iter_mut().zip(space.0.iter()) {
        // SAFETY: every byte of `space` was initialised to zero above, and the kernel writes only
        // initialised bytes into the control buffer, so each one holds a valid `u8`.
        *dst = unsafe { src.assume_init() };
    }
    Ok(Some(Received {
        len: msg.bytes,
        truncated: msg.bytes > capacity,
        sender: parse_cred(&ctl),
    }))
}

/// The length of the next datagram without taking it (`MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT`);
/// `None` when the queue is empty. Zero-length datagrams report `Some(0)`.
pub fn peek_len(fd: impl AsFd) -> Result<Option<usize>> {
    let flags = RecvFlags::PEEK | RecvFlags::TRUNC | RecvFlags::DONTWAIT;
    match retry(|| rustix::net::recv(&fd, &mut [0u8; 0][..], flags)) {
        Ok((_, len)) => Ok(Some(len)),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(Error::from_io("cannot peek at a datagram", e.into())),
    }
}

/// Registers `sock` with the current tokio runtime for readiness waits (`epoll(7)`).
/// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) outside a runtime.
#[cfg(feature = "tokio")]
pub fn register_async(sock: OwnedFd) -> Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::with_message(
            crate::ErrorKind::Unsupported,
            "async sockets need a tokio runtime",
        ));
    }
    // SAFETY: an `OwnedFd` is a valid open descriptor; the `AsyncFd` takes ownership of it and
    // keeps it open (and `as_raw_fd` returning the same number) until it is dropped. ipckit never
    // swaps the descriptor through `get_mut`.
    unsafe { tokio::io::unix::AsyncFd::register(sock) }
        .map_err(|e| Error::from_io("cannot register a socket with tokio", e.into()))
}

/// Whether `fd` is a Unix datagram socket (`SO_TYPE`, `SO_DOMAIN`).
pub fn is_unix_dgram(fd: impl AsFd) -> bool {
    sockopt::socket_type(&fd) == Ok(SocketType::DGRAM)
        && sockopt::socket_domain(&fd) == Ok(AddressFamily::UNIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_messages_credentials_truncation_and_peek() {
        let (a, b) = pair().unwrap();
        assert!(is_unix_dgram(&a));
        assert_eq!(peek_len(&b).unwrap(), None);
        send(&a, b"hello", true).unwrap();
        send(&a, b"", true).unwrap();
        send(&a, &[7u8; 100], true).unwrap();
        assert_eq!(peek_len(&b).unwrap(), Some(5));
        let mut buf = [0u8; 16];
        let r = recv(&b, &mut [IoSliceMut::new(&mut buf)], false)
            .unwrap()
            .unwrap();
        assert_eq!((r.len, r.truncated), (5, false));
        assert_eq!(&buf[..5], b"hello");
        let me = r.sender.unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.uid, crate::sys::process::current_uid());
        assert_eq!(peek_len(&b).unwrap(), Some(0));
        let r = recv(&b, &mut [IoSliceMut::new(&mut buf)], false)
            .unwrap()
            .unwrap();
        assert_eq!((r.len, r.truncated), (0, false));
        // Two buffers: the message spills from the first into the second.
        let (mut x, mut y) = ([0u8; 10], [0u8; 10]);
        let r = recv(
            &b,
            &mut [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)],
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.len, r.truncated), (100, true));
        assert_eq!((x, y), ([7u8; 10], [7u8; 10]));
        assert_eq!(
            recv(&b, &mut [IoSliceMut::new(&mut buf)], false).unwrap(),
            None
        );
        set_recv_timeout(&b, Some(Duration::ZERO)).unwrap();
        assert_eq!(
            recv(&b, &mut [IoSliceMut::new(&mut buf)], true).unwrap(),
            None
        );
    }

    #[test]
    fn full_queue_and_gone_receiver() {
        let (a, b) = pair().unwrap();
        let mut sent = 0;
        while send(&a, b"x", false).is_ok() {
            sent += 1;
            assert!(sent < 100_000, "the queue never filled");
        }
        assert_eq!(send(&a, b"x", false), Err(Errno::AGAIN));
        set_send_timeout(&a, Some(Duration::from_millis(1))).unwrap();
        assert_eq!(send(&a, b"x", true), Err(Errno::AGAIN));
        drop(b);
        assert!(matches!(
            send(&a, b"x", true),
            Err(Errno::CONNREFUSED | Errno::CONNRESET | Errno::NOTCONN)
        ));
        reserve_send_buffer(&a, 65_536).unwrap();
    }

    #[test]
    fn credentials_parser_refuses_garbage() {
        assert_eq!(parse_cred(&[]), None);
        assert_eq!(parse_cred(&[0u8; 64]), None);
        let mut c = [0u8; 64];
        c[..8].copy_from_slice(&28usize.to_ne_bytes());
        c[8..12].copy_from_slice(&1i32.to_ne_bytes());
        c[12..16].copy_from_slice(&2i32.to_ne_bytes());
        c[16..20].copy_from_slice(&(-5i32).to_ne_bytes());
        c[20..24].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(
            parse_cred(&c),
            Some(PeerCred {
                pid: 0,
                uid: 7,
                gid: 0
            })
        );
        c[..8].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(parse_cred(&c), None);
    }

    proptest::proptest! {
        #[test]
        fn credentials_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let _ = parse_cred(&bytes);
        }
    }
}
