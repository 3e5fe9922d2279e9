//! The carriers under RPC connections: Unix stream sockets (`ncalrpc`), TCP (`ncacn_ip_tcp`)
//! and ipckit named pipes (`ncacn_np`), behind one small interface.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Binding, Caller, Protseq};
use crate::error::{Error, ErrorKind, Result};
use crate::name::{PipeName, encode_component};
use crate::namespace::Namespace;
use crate::sys::dir::{DirPolicy, SecureDir};
use crate::sys::{fd, socket, tcp};

/// `RPC_S_DUPLICATE_ENDPOINT`.
const DUPLICATE_ENDPOINT: u32 = 1740;

/// A connection's byte stream. Every link is full duplex: a thread blocked in `recv` never
/// holds up another one's `send`.
pub(crate) trait Link: Send + Sync + 'static {
    /// Sends the parts as one frame (frames from several threads never interleave).
    fn send(&self, parts: &[&[u8]]) -> Result<()>;
    /// Receives into `buf`: `Ok(None)` when `timeout` ran out first, `Ok(Some(0))` at the end.
    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>>;
    /// Ends the connection both ways (a thread blocked in `recv` wakes with the end).
    fn shutdown(&self);
}

/// A Unix or TCP stream socket.
pub(crate) struct SockLink {
    fd: OwnedFd,
    send_lock: Mutex<()>,
}

impl SockLink {
    pub(crate) fn new(fd: OwnedFd) -> SockLink {
        SockLink {
            fd,
            send_lock: Mutex::new(()),
        }
    }

    /// The socket.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl Link for SockLink {
    fn send(&self, parts: &[&[u8]]) -> Result<()> {
        let _g = self.send_lock.lock().unwrap_or_else(|e| e.into_inner());
        socket::send_all(&self.fd, parts)
    }
    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>> {
        if let Some(t) = timeout
            && socket::wait_readable(&[self.fd.as_fd()], Some(t))?.is_none()
        {
            return Ok(None);
        }
        socket::recv(&self.fd, buf, true)
    }
    fn shutdown(&self) {
        socket::shutdown(&self.fd, true, true);
    }
}

/// Either end of an ipckit named pipe, full duplex: the end itself reads (one reader at a
/// time), a [`FrameSender`](crate::pipe::FrameSender) over a duplicate of its socket sends, so a
/// thread waiting for frames never holds up one that sends, and calls on one connection run at
/// the same time as over a socket. Waits with a timeout sleep in `poll(2)` on the socket,
/// holding no lock; a wait without one blocks in the socket call holding the reading side only
/// (RPC's readers take turns by themselves: the server's reader of a connection, the client's
/// caller that holds the decoder).
pub(crate) struct PipeLink<P> {
    pipe: Mutex<P>,
    sender: crate::pipe::FrameSender,
    send_lock: Mutex<()>,
}

/// The reading side of a pipe end, as [`PipeLink`] needs it.
pub(crate) trait PipeEnd: Send + 'static {
    /// A blocking read in the end's read mode.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// A read that does not wait: `Ok(None)` when the socket has nothing more now.
    fn read_now(&mut self, buf: &mut [u8]) -> Result<Option<usize>>;
    /// Whether received bytes wait in the end's buffer.
    fn has_buffered(&mut self) -> bool;
    /// The sender of the end's frames.
    fn frame_sender(&mut self) -> Result<crate::pipe::FrameSender>;
}

macro_rules! pipe_end {
    ($t:ty) => {
        impl PipeEnd for $t {
            fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
                <$t>::read(self, buf)
            }
            fn read_now(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
                <$t>::read_now(self, buf)
            }
            fn has_buffered(&mut self) -> bool {
                <$t>::has_buffered(self)
            }
            fn frame_sender(&mut self) -> Result<crate::pipe::FrameSender> {
                <$t>::frame_sender(self)
            }
        }
    };
}
pipe_end!(crate::pipe::NamedPipeClient);
pipe_end!(crate::pipe::NamedPipeServer);

/// A read's result for [`Link::recv`]: the end of the pipe is `Ok(0)`.
fn at_end(r: Result<usize>) -> Result<usize> {
    match r {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(0),
        r => r,
    }
}

impl<P: PipeEnd> PipeLink<P> {
    /// Takes a connected end (a server instance with its client, or a client).
    pub(crate) fn new(mut p: P) -> Result<PipeLink<P>> {
        let sender = p.frame_sender()?;
        Ok(PipeLink {
            pipe: Mutex::new(p),
            sender,
            send_lock: Mutex::new(()),
        })
    }
}

impl<P: PipeEnd> Link for PipeLink<P> {
    fn send(&self, parts: &[&[u8]]) -> Result<()> {
        let _g = self.send_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sender.send(parts)
    }
    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>> {
        let Some(t) = timeout else {
            // Waits in the socket call, holding only the reading side; `shutdown` wakes it.
            let mut p = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
            return at_end(p.read(buf)).map(Some);
        };
        let deadline = Instant::now() + t;
        // Look first only when bytes are buffered: otherwise anything new is in the socket,
        // and the wait (which returns at once then) comes first.
        let mut look = self
            .pipe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .has_buffered();
        loop {
            if look {
                let mut p = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
                match p.read_now(buf) {
                    Ok(Some(n)) => return Ok(Some(n)),
                    // Only part of a frame, or empty frames, came: the socket is dry again, so
                    // the wait below sleeps until more arrives (no spinning).
                    Ok(None) => {}
                    Err(e) => return at_end(Err(e)).map(Some),
                }
            }
            look = true;
            let left = deadline.saturating_duration_since(Instant::now());
            if socket::wait_readable(&[self.sender.fd()], Some(left))?.is_none() {
                return Ok(None);
            }
        }
    }
    fn shutdown(&self) {
        socket::shutdown(self.sender.fd(), true, true);
    }
}

/// The private folder of `ncalrpc` endpoints: `RUNTIME/rpc/`, mode 0700.
pub(crate) fn lrpc_dir(ns: &Namespace) -> Result<SecureDir> {
    ns.folder_root()?.subdir("rpc", DirPolicy::Private)
}

/// A live `ncalrpc` endpoint of a namespace: what `ipckit ls` shows.
///
/// Windows counterpart: the ALPC ports of `\\RPC Control` (as `WinObj` lists them), or
/// `RpcMgmtEpEltInqBegin` for the registered ones. Difference: every `ncalrpc` endpoint of the
/// user is found here, registered with the endpoint mapper or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The endpoint's name (lower-cased, as endpoints are case-insensitive); `None` for a long
    /// name stored hashed.
    pub endpoint: Option<String>,
    /// The process listening there (from the socket's credentials).
    pub server_pid: u32,
    /// The socket file.
    pub path: std::path::PathBuf,
}

/// The live `ncalrpc` endpoints of `ns`. Each is looked at by connecting to it (the server
/// sees a connection that ends at once); a socket file nobody listens on any more is removed.
/// Nothing is created: without the `rpc` folder the list is empty.
pub fn local_endpoints(ns: &Namespace) -> Result<Vec<LocalEndpoint>> {
    let folder = ns.runtime_dir().join("rpc");
    let names: Vec<String> = match std::fs::read_dir(&folder) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::from_io(
                format!("cannot list {}", folder.display()),
                e,
            ));
        }
    };
    let dir = lrpc_dir(ns)?;
    let mut out = Vec::new();
    for name in names {
        match socket::connect_at(&dir, dir.path(), &name) {
            Ok(fd) => {
                if let Ok(c) = socket::peer_cred(&fd) {
                    out.push(LocalEndpoint {
                        endpoint: crate::name::decode_component(&name),
                        server_pid: c.pid,
                        path: dir.path().join(&name),
                    });
                }
            }
            Err(rustix::io::Errno::CONNREFUSED) => {
                let _ = fd::remove_file(&dir, dir.path(), &name);
            }
            Err(_) => {}
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The socket's file name for an `ncalrpc` endpoint (endpoints are case-insensitive).
pub(crate) fn lrpc_component(endpoint: &str) -> String {
    encode_component(&endpoint.to_lowercase(), 40)
}

/// The pipe name for an `ncacn_np` binding (`\\.\pipe\NAME`); remote hosts need the gateway.
pub(crate) fn pipe_name(b: &Binding) -> Result<String> {
    if !b.is_local() {
        return Err(Error::with_message(
            ErrorKind::NeedsGateway,
            format!("{b}: named pipes on other machines need the broker's network gateway"),
        ));
    }
    let ep = b.endpoint().unwrap_or_default();
    let name = format!("\\\\.{ep}");
    PipeName::parse(&name)?;
    Ok(name)
}

fn unavailable(b: &Binding, e: impl std::fmt::Display) -> Error {
    Error::with_message(
        ErrorKind::ServerUnavailable,
        format!("no RPC server at {b}: {e}"),
    )
}

/// The client's TLS settings (feature `tls`; without it, a type with no value).
#[cfg(feature = "tls")]
pub(crate) use super::tls::TlsClientConfig as ClientTls;
/// The client's TLS settings (feature `tls`; without it, a type with no value).
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub(crate) enum ClientTls {}

/// Connects a client to `b` (which has an endpoint); over TCP with `tls`, the TLS handshake
/// too, all within `timeout`.
/// `local_shm`: on `ncalrpc`, ask the server to move the connection to shared memory.
pub(crate) fn connect(
    b: &Binding,
    ns: &Namespace,
    timeout: Duration,
    tls: Option<&ClientTls>,
    local_shm: bool,
) -> Result<Box<dyn Link>> {
    let deadline = Instant::now() + timeout;
    let ep = b.endpoint().unwrap_or_default();
    match b.protseq() {
        Protseq::Local => {
            let dir = lrpc_dir(ns)?;
            let fd = socket::connect_at(&dir, dir.path(), &lrpc_component(ep))
                .map_err(|e| unavailable(b, e))?;
            if !local_shm {
                return Ok(Box::new(SockLink::new(fd)));
            }
            match super::shm::client_upgrade(&fd, ns, deadline) {
                Ok(Some(shm)) => Ok(Box::new(super::shm::LrpcClientLink::new(shm, fd))),
                Ok(None) => Ok(Box::new(SockLink::new(fd))),
                // A server that does not know the request (it answered with frames, or closed):
                // connect again and speak frames at once.
                Err(e) if matches!(e.kind(), ErrorKind::Protocol | ErrorKind::BrokenPipe) => {
                    tracing::debug!("rpc: {b} does not move to shared memory ({e})");
                    let fd = socket::connect_at(&dir, dir.path(), &lrpc_component(ep))
                        .map_err(|e| unavailable(b, e))?;
                    Ok(Box::new(SockLink::new(fd)))
                }
                Err(e) => Err(unavailable(b, e)),
            }
        }
        Protseq::Tcp => {
            let port: u16 = ep.parse().map_err(|_| unavailable(b, "bad port"))?;
            let addrs = tcp::resolve(b.address(), port)?;
            let fd = tcp::connect(&addrs, timeout).map_err(|e| unavailable(b, e))?;
            match tls {
                None => Ok(Box::new(SockLink::new(fd))),
                #[cfg(feature = "tls")]
                Some(t) => {
                    let link = super::tls::connect(t, fd, b.address(), deadline).map_err(|e| {
                        if e.kind() == ErrorKind::InvalidParameter {
                            e
                        } else {
                            unavailable(b, format!("TLS handshake failed: {e}"))
                        }
                    })?;
                    Ok(Box::new(link))
                }
                #[cfg(not(feature = "tls"))]
                Some(t) => match *t {},
            }
        }
        Protseq::NamedPipe => {
            let name = pipe_name(b)?;
            let client = crate::pipe::ClientOptions::new()
                .namespace(ns.clone())
                .wait(crate::pipe::PipeWait::Timeout(timeout))
                .connect(&name)
                .map_err(|e| match e.kind() {
                    ErrorKind::NotFound | ErrorKind::PipeBusy | ErrorKind::Timeout => {
                        unavailable(b, e)
                    }
                    _ => e,
                })?;
            Ok(Box::new(PipeLink::new(client)?))
        }
    }
}

/// A listening socket of an `ncalrpc` or `ncacn_ip_tcp` endpoint.
pub(crate) struct SockListener {
    pub(crate) fd: OwnedFd,
    pub(crate) protseq: Protseq,
    /// The socket file to remove when the listener closes (`ncalrpc`).
    pub(crate) file: Option<(SecureDir, String)>,
    /// The binding clients use (the port filled in for TCP port 0).
    pub(crate) binding: Binding,
}

impl Drop for SockListener {
    fn drop(&mut self) {
        if let Some((dir, name)) = &self.file {
            let _ = fd::remove_file(dir, dir.path(), name);
        }
    }
}

/// Listens on an `ncalrpc` or `ncacn_ip_tcp` binding.
pub(crate) fn listen_socket(b: &Binding, ns: &Namespace) -> Result<SockListener> {
    let ep = b.endpoint().unwrap_or_default();
    match b.protseq() {
        Protseq::Local => {
            let dir = lrpc_dir(ns)?;
            let name = lrpc_component(ep);
            let fd = match socket::bind_listen_at(&dir, dir.path(), &name, 128, Some(0o600)) {
                Ok(fd) => fd,
                Err(e)
                    if e.os_error().and_then(|o| o.raw_os_error())
                        == Some(rustix::io::Errno::ADDRINUSE.raw_os_error()) =>
                {
                    // A live server answers; a stale socket file refuses.
                    match socket::connect_at(&dir, dir.path(), &name) {
                        Err(rustix::io::Errno::CONNREFUSED) => {
                            fd::remove_file(&dir, dir.path(), &name)?;
                            socket::bind_listen_at(&dir, dir.path(), &name, 128, Some(0o600))?
                        }
                        _ => {
                            return Err(Error::with_message(
                                ErrorKind::AlreadyExists,
                                format!("{b}: another server listens on this endpoint"),
                            )
                            .with_win32_code(DUPLICATE_ENDPOINT));
                        }
                    }
                }
                Err(e) => return Err(e),
            };
            Ok(SockListener {
                fd,
                protseq: Protseq::Local,
                file: Some((dir, name)),
                binding: b.clone(),
            })
        }
        Protseq::Tcp => {
            let port: u16 = ep.parse().unwrap_or(0);
            let host = if b.address().is_empty() {
                "0.0.0.0"
            } else {
                b.address()
            };
            let addr = tcp::resolve(host, port)?[0];
            let fd = tcp::listen(addr, 128).map_err(|e| {
                if e.os_error().and_then(|o| o.raw_os_error())
                    == Some(rustix::io::Errno::ADDRINUSE.raw_os_error())
                {
                    Error::with_message(
                        ErrorKind::AlreadyExists,
                        format!("{b}: the port is in use"),
                    )
                    .with_win32_code(DUPLICATE_ENDPOINT)
                } else {
                    e
                }
            })?;
            let local = tcp::local_addr(&fd)?;
            let binding = Binding::compose(
                b.object(),
                Protseq::Tcp,
                b.address(),
                Some(&local.port().to_string()),
                &[],
            )?;
            Ok(SockListener {
                fd,
                protseq: Protseq::Tcp,
                file: None,
                binding,
            })
        }
        Protseq::NamedPipe => Err(Error::new(ErrorKind::InvalidParameter)),
    }
}

/// Who is at the other end of an accepted socket.
pub(crate) fn socket_caller(protseq: Protseq, fd: &OwnedFd) -> Caller {
    match protseq {
        Protseq::Tcp => {
            let _ = tcp::set_nodelay(fd);
            Caller {
                protseq,
                pid: None,
                uid: None,
                gid: None,
                address: tcp::peer_addr(fd).ok(),
                peer_certificate: None,
            }
        }
        _ => {
            let c = socket::peer_cred(fd).ok();
            Caller {
                protseq,
                pid: c.map(|c| c.pid),
                uid: c.map(|c| c.uid),
                gid: c.map(|c| c.gid),
                address: None,
                peer_certificate: None,
            }
        }
    }
}
