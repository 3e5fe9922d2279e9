//! Unix stream sockets, the carrier of pipes, and the readiness waits around them.
//!
//! Windows counterpart: the named-pipe file system (`npfs`) behind `CreateNamedPipe`,
//! `ConnectNamedPipe` and `CreateFile(\\.\pipe\...)`, the anonymous pipes of `CreatePipe`, and
//! the waits of `ConnectNamedPipe` and `WaitNamedPipe`.
//!
//! Every socket is created close-on-exec, every send uses `MSG_NOSIGNAL` (a peer that is gone
//! gives `EPIPE`, never a `SIGPIPE` that would kill the process), and `EINTR` is retried.
//! Listening sockets are non-blocking: [`wait_readable`] (or an async reactor) says when a
//! connection waits, [`accept_now`] takes it.
//!
//! Socket paths are limited to 107 bytes by `sockaddr_un` (`unix(7)`). [`bind_listen_at`] and
//! [`connect_at`] take a folder descriptor and a file name: when the full path is too long they
//! reach the folder through `/proc/self/fd/N` instead, which is short whatever the folder.
//!
//! Waiting without polling: [`watch_dir`] reports changes of a folder's entries (`inotify(7)`),
//! [`process_exit_fd`] becomes readable when a process ends (`pidfd_open(2)`), and
//! [`wait_readable`] waits for the first of several descriptors (`poll(2)`).
//!
//! Linux references: `unix(7)`, `socket(2)`, `socketpair(2)`, `bind(2)`, `listen(2)`,
//! `accept4(2)`, `connect(2)`, `send(2)` / `sendmsg(2)` (`MSG_NOSIGNAL`, `MSG_DONTWAIT`),
//! `recv(2)` (`MSG_PEEK`, `MSG_DONTWAIT`, `MSG_WAITALL`), `shutdown(2)`, `getsockopt(2)`
//! (`SO_PEERCRED`), `fchmodat(2)`, `poll(2)`, `inotify(7)`, `pidfd_open(2)`, `proc(5)`
//! (`/proc/self/fd`).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::inotify;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendFlags, Shutdown, SocketAddrUnix,
    SocketFlags, SocketType, sockopt,
};

use crate::error::{Error, ErrorKind, Result};

/// Longest path `sockaddr_un` holds (108 bytes with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Who is at the other end of a connected socket, as the kernel recorded it when the connection
/// was made (`SO_PEERCRED`): for a listening socket's peers, the creator of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerCred {
    /// Process id.
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            r => return r,
        }
    }
}

/// The address of `name` inside the folder `dir` (open at `dir_path`): the plain path when it
/// fits, else `/proc/self/fd/N/name`. Shared with the datagram sockets of mailslots.
pub(crate) fn address(dir: &impl AsFd, dir_path: &Path, name: &str) -> Result<SocketAddrUnix> {
    let full = dir_path.join(name);
    let path = if full.as_os_str().len() <= MAX_SOCKET_PATH {
        full
    } else {
        let short = format!("/proc/self/fd/{}/{name}", dir.as_fd().as_raw_fd());
        if short.len() > MAX_SOCKET_PATH {
            return Err(Error::with_message(
                ErrorKind::InvalidName,
                format!("socket name {name:?} is too long for a Unix socket address"),
            ));
        }
        short.into()
    };
    SocketAddrUnix::new(path.as_path()).map_err(|e| {
        Error::from_io(
            format!(
                "{} is not a valid socket address",
                full_display(dir_path, name)
            ),
            e.into(),
        )
    })
}

fn full_display(dir_path: &Path, name: &str) -> String {
    dir_path.join(name).display().to_string()
}

/// Creates a non-blocking Unix stream socket bound to `name` in the folder `dir` and listening
/// with `backlog` (0 lets exactly one connection wait to be accepted on Linux). The socket file
/// gets the permissions `mode` when given (connecting needs write permission on it), else
/// `0777 & !umask`; the folders on the way decide who may reach it.
pub fn bind_listen_at(
    dir: &impl AsFd,
    dir_path: &Path,
    name: &str,
    backlog: i32,
    mode: Option<u32>,
) -> Result<OwnedFd> {
    let addr = address(dir, dir_path, name)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| Error::from_io("cannot create a Unix socket", e.into()))?;
    rustix::net::bind(&fd, &addr).map_err(|e| {
        Error::from_io(
            format!("cannot bind socket {}", full_display(dir_path, name)),
            e.into(),
        )
    })?;
    if let Some(mode) = mode {
        rustix::fs::chmodat(
            dir,
            name,
            rustix::fs::Mode::from_raw_mode(mode),
            rustix::fs::AtFlags::empty(),
        )
        .map_err(|e| {
            Error::from_io(
                format!("cannot set the mode of {}", full_display(dir_path, name)),
                e.into(),
            )
        })?;
    }
    rustix::net::listen(&fd, backlog).map_err(|e| {
        Error::from_io(
            format!("cannot listen on {}", full_display(dir_path, name)),
            e.into(),
        )
    })?;
    Ok(fd)
}

/// Connects a new Unix stream socket to `name` in the folder `dir`, without waiting. Errors
/// keep their errno (`ENOENT`: no such socket; `ECONNREFUSED`: nobody listens on it any more,
/// or its listener stopped taking connections; `EAGAIN`: its queue of connections waiting to
/// be accepted is full). The socket returned is blocking.
pub fn connect_at(dir: &impl AsFd, dir_path: &Path, name: &str) -> Result<OwnedFd, Errno> {
    let addr = address(dir, dir_path, name).map_err(|_| Errno::NAMETOOLONG)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    // Non-blocking, so that a full queue fails at once with EAGAIN instead of waiting; a Unix
    // stream connect otherwise completes (or fails) immediately.
    retry(|| rustix::net::connect(&fd, &addr))?;
    set_nonblocking(&fd, false).map_err(|_| Errno::INVAL)?;
    Ok(fd)
}

/// Switches `O_NONBLOCK` on or off (`fcntl(2)` `F_SETFL`).
pub fn set_nonblocking(fd: impl AsFd, on: bool) -> Result<()> {
    let flags = rustix::fs::fcntl_getfl(&fd)
        .map_err(|e| Error::from_io("cannot query descriptor flags", e.into()))?;
    let flags = if on {
        flags | rustix::fs::OFlags::NONBLOCK
    } else {
        flags - rustix::fs::OFlags::NONBLOCK
    };
    rustix::fs::fcntl_setfl(&fd, flags)
        .map_err(|e| Error::from_io("cannot set descriptor flags", e.into()))
}

/// Accepts a connection waiting on the non-blocking `listener` (the new socket is blocking and
/// close-on-exec). `Ok(None)` when none waits.
pub fn accept_now(listener: impl AsFd) -> Result<Option<OwnedFd>> {
    match retry(|| rustix::net::accept_with(&listener, SocketFlags::CLOEXEC)) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(Error::from_io("cannot accept a connection", e.into())),
    }
}

/// Stops a listening socket from taking connections (`shutdown(SHUT_RD)`): a connect then
/// fails with `ECONNREFUSED`, while a connection already waiting can still be accepted.
pub fn close_door(listener: impl AsFd) -> Result<()> {
    rustix::net::shutdown(&listener, Shutdown::Read)
        .map_err(|e| Error::from_io("cannot shut a listening socket", e.into()))
}

/// Waits until one of `fds` is readable (or reports an error or hang-up), at most `timeout`
/// (`None`: for ever), and returns the index of the first such descriptor; `Ok(None)` when
/// the time ran out (`poll(2)`).
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Result<Option<usize>> {
    let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let ts = left.map(|l| rustix::time::Timespec {
            tv_sec: l.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(l.subsec_nanos()),
        });
        match rustix::event::poll(&mut pfds, ts.as_ref()) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(pfds.iter().position(|p| !p.revents().is_empty())),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(Error::from_io("cannot wait for readiness", e.into())),
        }
    }
}

/// A non-blocking `inotify(7)` descriptor that becomes readable when an entry of the folder
/// `dir` is created, removed or renamed, or the folder itself goes. Read the events away with
/// [`drain_watch`].
pub fn watch_dir(dir: impl AsFd) -> Result<OwnedFd> {
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        .map_err(|e| Error::from_io("cannot create an inotify descriptor", e.into()))?;
    let path = format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd());
    inotify::add_watch(
        &fd,
        path.as_str(),
        inotify::WatchFlags::CREATE
            | inotify::WatchFlags::DELETE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::MOVED_FROM
            | inotify::WatchFlags::DELETE_SELF
            | inotify::WatchFlags::MOVE_SELF
            | inotify::WatchFlags::ONLYDIR,
    )
    .map_err(|e| Error::from_io("cannot watch a folder", e.into()))?;
    Ok(fd)
}

/// Reads and discards every event waiting on a [`watch_dir`] descriptor, without waiting.
pub fn drain_watch(watch: impl AsFd) -> Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        match retry(|| rustix::io::read(&watch, &mut buf)) {
            Ok(0) | Err(Errno::AGAIN) => return Ok(()),
            Ok(_) => continue,
            Err(e) => return Err(Error::from_io("cannot read folder events", e.into())),
        }
    }
}

/// A descriptor that becomes readable when process `pid` ends (`pidfd_open(2)`). `Ok(None)`
/// when there is no such process; [`ErrorKind::Unsupported`] when the kernel cannot do it
/// (before Linux 5.3, or denied).
pub fn process_exit_fd(pid: u32) -> Result<Option<OwnedFd>> {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Ok(None);
    };
    match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::SRCH) => Ok(None),
        Err(e) => Err(Error::with_message(
            ErrorKind::Unsupported,
            format!("cannot watch process {pid} for its end: {e}"),
        )),
    }
}

/// The credentials the kernel recorded for the peer of a connected socket (`SO_PEERCRED`).
pub fn peer_cred(fd: impl AsFd) -> Result<PeerCred> {
    let c = sockopt::socket_peercred(&fd)
        .map_err(|e| Error::from_io("cannot read peer credentials", e.into()))?;
    Ok(PeerCred {
        pid: c.pid.as_raw_nonzero().get() as u32,
        uid: c.uid.as_raw(),
        gid: c.gid.as_raw(),
    })
}

/// A connected pair of Unix stream sockets, both close-on-exec (`socketpair(2)`).
pub fn stream_pair() -> Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::from_io("cannot create a socket pair", e.into()))
}

/// Shuts down one or both directions of a socket (`shutdown(2)`). Errors (such as
/// `ENOTCONN` once the peer is gone) are ignored: the direction is unusable either way.
pub fn shutdown(fd: impl AsFd, read: bool, write: bool) {
    let how = match (read, write) {
        (true, true) => Shutdown::Both,
        (true, false) => Shutdown::Read,
        (false, true) => Shutdown::Write,
        (false, false) => return,
    };
    let _ = rustix::net::shutdown(&fd, how);
}

/// Sends all of `parts` in order (`sendmsg(2)` with `MSG_NOSIGNAL`), blocking as needed.
/// `EPIPE`, `ECONNRESET` and `ENOTCONN` (the peer closed its end) are [`ErrorKind::NoData`].
pub fn send_all(fd: impl AsFd, parts: &[&[u8]]) -> Result<()> {
    if let [one] = parts {
        // One buffer: plain send(2), lighter in the kernel than a vectored sendmsg(2).
        let mut off = 0;
        while off < one.len() {
            off += retry(|| rustix::net::send(&fd, &one[off..], SendFlags::NOSIGNAL))
                .map_err(send_error)?;
        }
        return Ok(());
    }
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        if off == parts[idx].len() {
            idx += 1;
            off = 0;
            continue;
        }
        let mut iov: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
        let mut n_iov = 0;
        for (i, part) in parts[idx..].iter().enumerate().take(4) {
            iov[i] = IoSlice::new(if i == 0 { &part[off..] } else { part });
            n_iov += 1;
        }
        let sent = retry(|| {
            rustix::net::sendmsg(
                &fd,
                &iov[..n_iov],
                &mut SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            )
        })
        .map_err(send_error)?;
        let mut left = sent;
        while left > 0 {
            let rest = parts[idx].len() - off;
            if left >= rest {
                left -= rest;
                idx += 1;
                off = 0;
            } else {
                off += left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// Sends what fits of `parts` (in order, as one `sendmsg(2)` with `MSG_DONTWAIT |
/// MSG_NOSIGNAL`) without waiting; returns how many bytes were sent, `Ok(None)` when the
/// socket's buffer is full. Errors as [`send_all`].
pub fn send_nowait(fd: impl AsFd, parts: &[&[u8]]) -> Result<Option<usize>> {
    let mut iov: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
    let n_iov = parts.len().min(4);
    for (i, part) in parts.iter().take(4).enumerate() {
        iov[i] = IoSlice::new(part);
    }
    match retry(|| {
        rustix::net::sendmsg(
            &fd,
            &iov[..n_iov],
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )
    }) {
        Ok(n) => Ok(Some(n)),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(send_error(e)),
    }
}

/// Sends what fits of `buf` without the signal (`send(2)` with `MSG_NOSIGNAL`), blocking until
/// at least one byte is sent; returns how many were.
pub fn send_some(fd: impl AsFd, buf: &[u8]) -> Result<usize> {
    retry(|| rustix::net::send(&fd, buf, SendFlags::NOSIGNAL)).map_err(send_error)
}

/// Sends what fits of `buf` without waiting and without the signal (`MSG_DONTWAIT |
/// MSG_NOSIGNAL`); returns how many bytes were sent (0 when the socket's buffer is full).
pub fn try_send(fd: impl AsFd, buf: &[u8]) -> Result<usize> {
    match retry(|| rustix::net::send(&fd, buf, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)) {
        Ok(n) => Ok(n),
        Err(Errno::AGAIN) => Ok(0),
        Err(e) => Err(send_error(e)),
    }
}

fn send_error(e: Errno) -> Error {
    match e {
        Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN => Error::with_message(
            ErrorKind::NoData,
            "the pipe is being closed: the other end is gone",
        ),
        e => Error::from_io("cannot send", e.into()),
    }
}

/// Receives into `buf` (`recv(2)`): `Ok(0)` at end of stream (also when the peer reset the
/// connection, `ECONNRESET`). With `wait == false` (`MSG_DONTWAIT`), `Ok(None)` when nothing is
/// there yet.
pub fn recv(fd: impl AsFd, buf: &mut [u8], wait: bool) -> Result<Option<usize>> {
    let flags = if wait {
        RecvFlags::empty()
    } else {
        RecvFlags::DONTWAIT
    };
    match retry(|| rustix::net::recv(&fd, &mut *buf, flags)) {
        Ok((n, _)) => Ok(Some(n)),
        Err(Errno::AGAIN) if !wait => Ok(None),
        Err(Errno::CONNRESET) => Ok(Some(0)),
        Err(e) => Err(Error::from_io("cannot receive", e.into())),
    }
}

/// Receives into `head`, then `tail` (one `recvmsg(2)` with two buffers), waiting for the first
/// byte; returns how many bytes arrived in all (0 at the end of the stream).
pub fn recv_split(fd: impl AsFd, head: &mut [u8], tail: &mut [u8]) -> Result<usize> {
    let mut iov = [IoSliceMut::new(head), IoSliceMut::new(tail)];
    match retry(|| {
        rustix::net::recvmsg(
            &fd,
            &mut iov,
            &mut rustix::net::RecvAncillaryBuffer::default(),
            RecvFlags::empty(),
        )
    }) {
        Ok(m) => Ok(m.bytes),
        Err(Errno::CONNRESET) => Ok(0),
        Err(e) => Err(Error::from_io("cannot receive", e.into())),
    }
}

/// Receives exactly `buf.len()` bytes, waiting for them (`recv(2)` with `MSG_WAITALL`, one
/// system call in the usual case); returns fewer only at the end of the stream.
pub fn recv_all(fd: impl AsFd, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match retry(|| rustix::net::recv(&fd, &mut buf[done..], RecvFlags::WAITALL)) {
            Ok((0, _)) | Err(Errno::CONNRESET) => break,
            Ok((n, _)) => done += n,
            Err(e) => return Err(Error::from_io("cannot receive", e.into())),
        }
    }
    Ok(done)
}

/// Bytes waiting to be read (`ioctl(FIONREAD)`, see `unix(7)` `SIOCINQ`).
pub fn bytes_available(fd: impl AsFd) -> Result<usize> {
    rustix::io::ioctl_fionread(&fd)
        .map(|n| n as usize)
        .map_err(|e| Error::from_io("cannot query pending bytes", e.into()))
}

/// Registers a socket (or an inotify or pidfd descriptor) with the current tokio runtime for
/// readiness waits (`epoll(7)`). [`ErrorKind::Unsupported`] outside a runtime.
#[cfg(feature = "tokio")]
pub fn register_async(fd: OwnedFd) -> Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::with_message(
            ErrorKind::Unsupported,
            "async pipes need a tokio runtime (with I/O and time enabled)",
        ));
    }
    // SAFETY: an `OwnedFd` is a valid open descriptor; the `AsyncFd` takes ownership of it and
    // keeps it open (and `as_raw_fd` returning the same number) until it is dropped or taken
    // back with `into_inner`. ipckit never swaps the descriptor through `get_mut`.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }
        .map_err(|e| Error::from_io("cannot register a descriptor with tokio", e.into()))
}

/// Whether `fd` is a Unix stream socket (`SO_TYPE`, `SO_DOMAIN`).
pub fn is_unix_stream(fd: impl AsFd) -> bool {
    sockopt::socket_type(&fd) == Ok(SocketType::STREAM)
        && sockopt::socket_domain(&fd) == Ok(AddressFamily::UNIX)
}

/// Whether `fd` is a listening socket (`SO_ACCEPTCONN`, `socket(7)`).
pub fn is_listening(fd: impl AsFd) -> bool {
    sockopt::socket_acceptconn(&fd) == Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_send_recv_and_closed_peer() {
        let (a, b) = stream_pair().unwrap();
        send_all(&a, &[b"he", b"", b"llo"]).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(recv(&b, &mut buf, true).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(recv(&b, &mut buf, false).unwrap(), None);
        let me = peer_cred(&b).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(is_unix_stream(&a));
        drop(b);
        // No SIGPIPE: the error is returned.
        assert_eq!(send_all(&a, &[b"x"]).unwrap_err().kind(), ErrorKind::NoData);
        assert_eq!(recv(&a, &mut buf, true).unwrap(), Some(0));
    }
}
