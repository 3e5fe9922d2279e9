//! Unix stream sockets: the carrier of pipes.
//!
//! Windows counterpart: the named-pipe file system (`npfs`) behind `CreateNamedPipe`,
//! `ConnectNamedPipe` and `CreateFile(\\.\pipe\...)`, and the anonymous pipes of `CreatePipe`.
//!
//! Every socket is created close-on-exec, every send uses `MSG_NOSIGNAL` (a peer that is gone
//! gives `EPIPE`, never a `SIGPIPE` that would kill the process), and `EINTR` is retried.
//!
//! Socket paths are limited to 107 bytes by `sockaddr_un` (`unix(7)`). [`bind_listen_at`] and
//! [`connect_at`] take a folder descriptor and a file name: when the full path is too long they
//! reach the folder through `/proc/self/fd/N` instead, which is short whatever the folder.
//!
//! Linux references: `unix(7)`, `socket(2)`, `socketpair(2)`, `bind(2)`, `listen(2)`,
//! `accept4(2)`, `connect(2)`, `send(2)` / `sendmsg(2)` (`MSG_NOSIGNAL`), `recv(2)`
//! (`MSG_PEEK`, `MSG_DONTWAIT`), `shutdown(2)`, `getsockopt(2)` (`SO_PEERCRED`), `setsockopt(2)`
//! (`SO_RCVTIMEO`), `proc(5)` (`/proc/self/fd`).

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

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

fn new_stream_socket() -> Result<OwnedFd> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::from_io("cannot create a Unix socket", e.into()))
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

/// Creates a Unix stream socket bound to `name` in the folder `dir` and listening with
/// `backlog` (0 lets exactly one connection wait to be accepted on Linux). The socket file gets
/// the permissions `0777 & !umask`; the folder's permissions decide who may reach it.
pub fn bind_listen_at(
    dir: &impl AsFd,
    dir_path: &Path,
    name: &str,
    backlog: i32,
) -> Result<OwnedFd> {
    let addr = address(dir, dir_path, name)?;
    let fd = new_stream_socket()?;
    rustix::net::bind(&fd, &addr).map_err(|e| {
        Error::from_io(
            format!("cannot bind socket {}", full_display(dir_path, name)),
            e.into(),
        )
    })?;
    rustix::net::listen(&fd, backlog).map_err(|e| {
        Error::from_io(
            format!("cannot listen on {}", full_display(dir_path, name)),
            e.into(),
        )
    })?;
    Ok(fd)
}

/// Connects a new Unix stream socket to `name` in the folder `dir`. Errors keep their errno
/// (`ENOENT`: no such socket; `ECONNREFUSED`: nobody listens on it any more; `EAGAIN`: its
/// queue of connections waiting to be accepted is full).
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

/// Accepts one connection (close-on-exec, blocking), waiting at most `timeout` (`SO_RCVTIMEO`;
/// `None` waits for ever). `Ok(None)` when the time ran out.
pub fn accept_timeout(listener: impl AsFd, timeout: Option<Duration>) -> Result<Option<OwnedFd>> {
    // SO_RCVTIMEO of zero means "no timeout": use the smallest non-zero one instead.
    let t = timeout.map(|t| t.max(Duration::from_micros(1)));
    sockopt::set_socket_timeout(&listener, sockopt::Timeout::Recv, t)
        .map_err(|e| Error::from_io("cannot set accept timeout", e.into()))?;
    match retry(|| rustix::net::accept_with(&listener, SocketFlags::CLOEXEC)) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(Error::from_io("cannot accept a connection", e.into())),
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

/// Bytes waiting to be read (`ioctl(FIONREAD)`, see `unix(7)` `SIOCINQ`).
pub fn bytes_available(fd: impl AsFd) -> Result<usize> {
    rustix::io::ioctl_fionread(&fd)
        .map(|n| n as usize)
        .map_err(|e| Error::from_io("cannot query pending bytes", e.into()))
}

/// Whether `fd` is a Unix stream socket (`SO_TYPE`, `SO_DOMAIN`).
pub fn is_unix_stream(fd: impl AsFd) -> bool {
    sockopt::socket_type(&fd) == Ok(SocketType::STREAM)
        && sockopt::socket_domain(&fd) == Ok(AddressFamily::UNIX)
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
