//! The carriers under RPC connections: Unix stream sockets (`ncalrpc`), TCP (`ncacn_ip_tcp`)
//! and ipckit named pipes (`ncacn_np`), behind one small interface.

use std::io::{Read, Write};
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

/// A connection's byte stream.
pub(crate) trait Link: Send + Sync + 'static {
    /// Sends the parts as one frame (frames from several threads never interleave).
    fn send(&self, parts: &[&[u8]]) -> Result<()>;
    /// Receives into `buf`: `Ok(None)` when `timeout` ran out first, `Ok(Some(0))` at the end.
    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>>;
    /// Ends the connection both ways (a thread blocked in `recv` wakes with the end).
    fn shutdown(&self);
    /// Whether sends and receives may run at the same time from different threads.
    fn full_duplex(&self) -> bool {
        true
    }
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

/// Either end of an ipckit named pipe: calls on one connection take turns.
pub(crate) struct PipeLink<P> {
    pipe: Mutex<P>,
}

pub(crate) trait PipeEnd: Read + Write + Send + 'static {
    fn available(&mut self) -> Result<usize>;
    fn close(&mut self);
}

impl PipeEnd for crate::pipe::NamedPipeClient {
    fn available(&mut self) -> Result<usize> {
        self.peek(&mut []).map(|p| p.available)
    }
    fn close(&mut self) {}
}

impl PipeEnd for crate::pipe::NamedPipeServer {
    fn available(&mut self) -> Result<usize> {
        self.peek(&mut []).map(|p| p.available)
    }
    fn close(&mut self) {
        let _ = self.disconnect();
    }
}

impl<P: PipeEnd> PipeLink<P> {
    pub(crate) fn new(p: P) -> PipeLink<P> {
        PipeLink {
            pipe: Mutex::new(p),
        }
    }
}

impl<P: PipeEnd> Link for PipeLink<P> {
    fn send(&self, parts: &[&[u8]]) -> Result<()> {
        let mut p = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if parts.len() > 1 && parts.iter().map(|x| x.len()).sum::<usize>() <= 64 * 1024 {
            p.write_all(&parts.concat()).map_err(Error::from)?;
        } else {
            for part in parts {
                p.write_all(part).map_err(Error::from)?;
            }
        }
        Ok(())
    }
    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>> {
        let Some(t) = timeout else {
            let mut p = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
            return Ok(Some(p.read(buf).map_err(Error::from)?));
        };
        // Pipes have no readiness wait here: look, then sleep briefly, until the deadline.
        let deadline = Instant::now() + t;
        let mut nap = Duration::from_micros(50);
        loop {
            {
                let mut p = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
                match p.available() {
                    Ok(0) => {}
                    Ok(_) => return Ok(Some(p.read(buf).map_err(Error::from)?)),
                    Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(Some(0)),
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
            nap = (nap * 2).min(Duration::from_millis(5));
        }
    }
    fn shutdown(&self) {
        if let Ok(mut p) = self.pipe.try_lock() {
            p.close();
        }
    }
    fn full_duplex(&self) -> bool {
        false
    }
}

/// The private folder of `ncalrpc` endpoints: `RUNTIME/rpc/`, mode 0700.
pub(crate) fn lrpc_dir(ns: &Namespace) -> Result<SecureDir> {
    ns.folder_root()?.subdir("rpc", DirPolicy::Private)
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
pub(crate) fn connect(
    b: &Binding,
    ns: &Namespace,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<Box<dyn Link>> {
    #[cfg(feature = "tls")]
    let deadline = Instant::now() + timeout;
    let ep = b.endpoint().unwrap_or_default();
    match b.protseq() {
        Protseq::Local => {
            let dir = lrpc_dir(ns)?;
            let fd = socket::connect_at(&dir, dir.path(), &lrpc_component(ep))
                .map_err(|e| unavailable(b, e))?;
            Ok(Box::new(SockLink::new(fd)))
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
            Ok(Box::new(PipeLink::new(client)))
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
