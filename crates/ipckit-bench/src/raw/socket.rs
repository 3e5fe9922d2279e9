//! Socket baselines: `unix-stream`, `unix-seqpacket` and `tcp-loopback`.
//!
//! The harness listens (Unix sockets in a private 0700 temporary directory,
//! TCP on an ephemeral port of 127.0.0.1), starts the peer with the address,
//! and accepts its connection within the handshake timeout. Receives on
//! both ends time out after [`STALL_TIMEOUT`] so a stuck peer cannot hang
//! the run.
//!
//! * `unix-stream`: `SOCK_STREAM`; one `write(2)` per message, `read(2)`
//!   until the message is complete.
//! * `unix-seqpacket`: `SOCK_SEQPACKET`; one `send(2)`/`recv(2)` per
//!   message, message boundaries kept by the kernel.
//! * `tcp-loopback`: TCP over 127.0.0.1 with `TCP_NODELAY` on both ends;
//!   otherwise like `unix-stream`.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};

use rustix::io::Errno;
use rustix::net::sockopt::{Timeout, set_socket_timeout};
use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType, accept_with,
    bind, connect, listen, recv, send, socket_with,
};

use crate::channel::{Channel, Transport};
use crate::peer::{Launcher, PeerEnv, STALL_TIMEOUT, invalid};
use crate::raw::{Duplex, TempDir, path_arg, pending};

/// The `unix-stream` baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixStreamSocket;

impl Transport for UnixStreamSocket {
    type Chan = Duplex<UnixStream, UnixStream>;

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<Self::Chan> {
        let dir = TempDir::new()?;
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        launcher.spawn(path_arg(&path)?)?;
        let (stream, _) = launcher.wait_for("connection", || pending(listener.accept()))?;
        // The socket file and directory go away with `dir`; the connection stays.
        stream_channel(stream)
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<Self::Chan> {
        stream_channel(UnixStream::connect(&peer.addr)?)
    }
}

fn stream_channel(stream: UnixStream) -> io::Result<Duplex<UnixStream, UnixStream>> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(STALL_TIMEOUT))?;
    Ok(Duplex::new(stream.try_clone()?, stream))
}

/// The `tcp-loopback` baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpLoopback;

impl Transport for TcpLoopback {
    type Chan = Duplex<TcpStream, TcpStream>;

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<Self::Chan> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        launcher.spawn(&port.to_string())?;
        let (stream, _) = launcher.wait_for("connection", || pending(listener.accept()))?;
        tcp_channel(stream)
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<Self::Chan> {
        let port: u16 = peer
            .addr
            .parse()
            .map_err(|_| invalid(format!("bad TCP port `{}`", peer.addr)))?;
        tcp_channel(TcpStream::connect((Ipv4Addr::LOCALHOST, port))?)
    }
}

fn tcp_channel(stream: TcpStream) -> io::Result<Duplex<TcpStream, TcpStream>> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STALL_TIMEOUT))?;
    Ok(Duplex::new(stream.try_clone()?, stream))
}

/// The `unix-seqpacket` baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixSeqpacket;

/// One end of a connected `SOCK_SEQPACKET` Unix socket.
#[derive(Debug)]
pub struct SeqpacketChannel {
    fd: OwnedFd,
}

impl SeqpacketChannel {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        set_socket_timeout(&fd, Timeout::Recv, Some(STALL_TIMEOUT))?;
        Ok(Self { fd })
    }
}

impl Channel for SeqpacketChannel {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        loop {
            match send(&self.fd, msg, SendFlags::NOSIGNAL) {
                Ok(n) if n == msg.len() => return Ok(()),
                Ok(n) => return Err(invalid(format!("short send: {n} of {}", msg.len()))),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        loop {
            // With MSG_TRUNC the kernel reports the full message length.
            match recv(&self.fd, &mut *buf, RecvFlags::TRUNC) {
                Ok((_, n)) if n == buf.len() => return Ok(()),
                Ok((_, 0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed",
                    ));
                }
                Ok((_, n)) => {
                    return Err(invalid(format!(
                        "message of {n} bytes, expected {}",
                        buf.len()
                    )));
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Transport for UnixSeqpacket {
    type Chan = SeqpacketChannel;

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<Self::Chan> {
        let dir = TempDir::new()?;
        let path = dir.path().join("sock");
        let listener = socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        bind(&listener, &SocketAddrUnix::new(&path)?)?;
        listen(&listener, 1)?;
        launcher.spawn(path_arg(&path)?)?;
        let fd = launcher.wait_for("connection", || {
            pending(accept_with(&listener, SocketFlags::CLOEXEC).map_err(io::Error::from))
        })?;
        SeqpacketChannel::new(fd)
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<Self::Chan> {
        let fd = socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        connect(&fd, &SocketAddrUnix::new(peer.addr.as_str())?)?;
        SeqpacketChannel::new(fd)
    }
}
