//! TCP sockets, the carrier of `ncacn_ip_tcp` RPC.
//!
//! Windows counterpart: Winsock TCP sockets as `rpcrt4` uses them for `ncacn_ip_tcp`.
//!
//! Sockets are created close-on-exec with `TCP_NODELAY` (RPC frames are small and latency
//! bound). Listening sockets are non-blocking ([`crate::sys::socket::accept_now`] and
//! [`crate::sys::socket::wait_readable`] work on them); connected sockets are blocking, and the
//! send and receive functions of [`crate::sys::socket`] work on them too.
//!
//! Linux references: `tcp(7)`, `ip(7)`, `ipv6(7)`, `socket(2)`, `bind(2)`, `listen(2)`,
//! `connect(2)`, `getsockname(2)`, `getpeername(2)`, `getaddrinfo(3)` (through the standard
//! library's resolver).

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

use crate::error::{Error, ErrorKind, Result};

/// Resolves `host` and `port` to socket addresses (`getaddrinfo(3)`).
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let host = if host.is_empty() { "localhost" } else { host };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::from_io(format!("cannot resolve {host}"), e).with_win32_code(1722))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::with_message(
            ErrorKind::ServerUnavailable,
            format!("{host} has no address"),
        ));
    }
    Ok(addrs)
}

fn family(a: &SocketAddr) -> AddressFamily {
    match a {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    }
}

/// A non-blocking TCP socket listening on `addr` (port 0: a free port), `SO_REUSEADDR` set.
pub fn listen(addr: SocketAddr, backlog: i32) -> Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        family(&addr),
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| Error::from_io("cannot create a TCP socket", e.into()))?;
    sockopt::set_socket_reuseaddr(&fd, true)
        .map_err(|e| Error::from_io("cannot set SO_REUSEADDR", e.into()))?;
    rustix::net::bind(&fd, &addr)
        .map_err(|e| Error::from_io(format!("cannot bind TCP {addr}"), e.into()))?;
    rustix::net::listen(&fd, backlog)
        .map_err(|e| Error::from_io(format!("cannot listen on TCP {addr}"), e.into()))?;
    Ok(fd)
}

/// Connects to the first of `addrs` that answers, each attempt waiting at most `timeout`.
/// The socket returned is blocking, with `TCP_NODELAY`.
pub fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<OwnedFd> {
    let mut last = None;
    for addr in addrs {
        match connect_one(addr, timeout) {
            Ok(fd) => return Ok(fd),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::new(ErrorKind::ServerUnavailable)))
}

fn connect_one(addr: &SocketAddr, timeout: Duration) -> Result<OwnedFd> {
    let unavailable = |e: Errno| {
        Error::from_io(format!("cannot connect to TCP {addr}"), e.into()).with_win32_code(1722)
    };
    let fd = rustix::net::socket_with(
        family(addr),
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| Error::from_io("cannot create a TCP socket", e.into()))?;
    match rustix::net::connect(&fd, addr) {
        Ok(()) => {}
        Err(Errno::INPROGRESS) | Err(Errno::INTR) => {
            let ready = wait_writable(&fd, timeout)?;
            if !ready {
                return Err(Error::with_message(
                    ErrorKind::ServerUnavailable,
                    format!("connecting to TCP {addr} timed out"),
                ));
            }
            if let Err(e) = sockopt::socket_error(&fd).map_err(unavailable)? {
                return Err(unavailable(e));
            }
        }
        Err(e) => return Err(unavailable(e)),
    }
    super::socket::set_nonblocking(&fd, false)?;
    set_nodelay(&fd)?;
    Ok(fd)
}

/// Sets `TCP_NODELAY` (frames go out at once).
pub fn set_nodelay(fd: impl AsFd) -> Result<()> {
    sockopt::set_tcp_nodelay(&fd, true)
        .map_err(|e| Error::from_io("cannot set TCP_NODELAY", e.into()))
}

/// The local address of a socket (`getsockname(2)`), e.g. to learn the port of a listener
/// bound to port 0.
pub fn local_addr(fd: impl AsFd) -> Result<SocketAddr> {
    let a = rustix::net::getsockname(&fd)
        .map_err(|e| Error::from_io("getsockname failed", e.into()))?;
    SocketAddr::try_from(a).map_err(|_| Error::new(ErrorKind::Unsupported))
}

/// The peer's address of a connected socket (`getpeername(2)`).
pub fn peer_addr(fd: impl AsFd) -> Result<SocketAddr> {
    let a = rustix::net::getpeername(&fd)
        .map_err(|e| Error::from_io("getpeername failed", e.into()))?
        .ok_or_else(|| Error::new(ErrorKind::Unsupported))?;
    SocketAddr::try_from(a).map_err(|_| Error::new(ErrorKind::Unsupported))
}

/// Waits until `fd` is writable (a non-blocking connect completed or failed), at most
/// `timeout` (`poll(2)`); `false` when the time ran out.
fn wait_writable(fd: &OwnedFd, timeout: Duration) -> Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut p = [PollFd::new(fd, PollFlags::OUT)];
        match rustix::event::poll(&mut p, Some(&ts)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(Error::from_io("poll failed", e.into())),
        }
    }
}
