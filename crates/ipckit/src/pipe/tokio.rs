//! Async (tokio) pipes: overlapped I/O. Feature `tokio`.
//!
//! The same pipes as the blocking API, driven by the tokio reactor: the sockets are registered
//! with [`AsyncFd`] and every operation waits for readiness, never on a thread.
//! [`ServerOptions::create_async`](super::ServerOptions::create_async) and
//! [`ClientOptions::connect_async`](super::ClientOptions::connect_async) open the ends;
//! [`NamedPipeServer::into_async`](super::NamedPipeServer::into_async) and friends convert
//! blocking ones. Framing, read modes and the instance scheme are the blocking API's own code.
//!
//! ```
//! use ipckit::pipe::{ClientOptions, ReadMode, ServerOptions};
//! # let dir = std::env::temp_dir().join(format!("ipckit-doc-apipe-{}", std::process::id()));
//! # let ns = ipckit::namespace::Namespace::at(&dir);
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! // CreateNamedPipe(FILE_FLAG_OVERLAPPED), then an overlapped ConnectNamedPipe.
//! let mut server = ServerOptions::message().namespace(ns.clone()).create_async(r"\\.\pipe\calc")?;
//! let serve = tokio::spawn(async move {
//!     server.connect().await?;
//!     let request = server.read_message().await?;
//!     server.write(&[request.len() as u8]).await?;
//!     Ok::<_, ipckit::Error>(())
//! });
//!
//! let mut client = ClientOptions::new().namespace(ns.clone()).connect_async(r"\\.\pipe\calc").await?;
//! client.set_read_mode(ReadMode::Message)?;
//! let mut reply = [0u8; 1];
//! assert_eq!(client.transact(b"count me", &mut reply).await?, 1); // TransactNamedPipe
//! assert_eq!(reply[0], 8);
//! serve.await.unwrap()?;
//! # Ok::<(), ipckit::Error>(())
//! # })?;
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! # Cancellation
//! Every future here may be dropped at any `.await` without losing or duplicating data:
//! - A read that did not complete consumed nothing: what arrived stays buffered for the next
//!   read (a message-mode read completes with a whole message, or a piece filling the buffer
//!   with [`ErrorKind::MoreData`], or nothing).
//! - A write either sent nothing, or its whole message (or bytes) is taken: what the socket
//!   did not take yet waits in the end's outbox and goes out before anything else, at the next
//!   operation on that end (or `AsyncWriteExt::flush`).
//! - [`NamedPipeServer::connect`] dropped while waiting leaves the instance free.
//!
//! The functions must run inside a tokio runtime with I/O and time enabled
//! ([`Builder::enable_all`](::tokio::runtime::Builder::enable_all)).

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::client::{ClientOptions, check_server, connect_in};
use super::conn::{Conn, Side};
use super::registry::{FreeWait, Instance, PipeDir, WaitStep};
use super::server::{admit, not_connected};
use super::{PeekInfo, PeerIdentity, PipeInfo, PipeType, PipeWait, ReadMode};
use crate::error::{Error, ErrorKind, Result};
use crate::name::PipeName;
use crate::sys::{fd, socket};

type Sock = AsyncFd<OwnedFd>;
type AConn = Conn<Sock>;

fn register(fd: OwnedFd) -> Result<Sock> {
    socket::register_async(fd)
}

fn reactor_error(e: io::Error) -> Error {
    Error::from_io("the tokio reactor failed", e)
}

/// Ready when `sock` is writable (`write`) or readable (`read`); the readiness reported is
/// cleared, so the next would-block waits for a new event.
fn poll_ready(sock: &Sock, cx: &mut Context<'_>, read: bool, write: bool) -> Poll<Result<()>> {
    if write && let Poll::Ready(r) = sock.poll_write_ready(cx) {
        r.map_err(reactor_error)?.clear_ready();
        return Poll::Ready(Ok(()));
    }
    if read && let Poll::Ready(r) = sock.poll_read_ready(cx) {
        r.map_err(reactor_error)?.clear_ready();
        return Poll::Ready(Ok(()));
    }
    Poll::Pending
}

/// Runs a non-blocking step until it completes, waiting for readiness between tries (for
/// reading when `read`, else for writing). Frame bytes an earlier write left in the outbox are
/// sent meanwhile.
async fn drive<T>(
    c: &mut AConn,
    read: bool,
    mut op: impl FnMut(&mut AConn) -> Result<Option<T>>,
) -> Result<T> {
    loop {
        c.flush_step(false)?;
        if let Some(v) = op(c)? {
            return Ok(v);
        }
        let write = !read || c.has_outbox();
        poll_fn(|cx| poll_ready(&c.sock, cx, read, write)).await?;
    }
}

async fn read(c: &mut AConn, buf: &mut [u8]) -> Result<usize> {
    drive(c, true, |c| c.read_step(buf, false)).await
}

async fn read_message(c: &mut AConn) -> Result<Vec<u8>> {
    drive(c, true, |c| c.read_vec_step(false)).await
}

async fn write(c: &mut AConn, data: &[u8]) -> Result<usize> {
    let n = drive(c, false, |c| c.write_step(data, false)).await?;
    // What the socket did not take yet goes before the write is reported done.
    drive(c, false, |c| Ok(c.flush_step(false)?.then_some(()))).await?;
    Ok(n)
}

async fn transact(c: &mut AConn, request: &[u8], buf: &mut [u8]) -> Result<usize> {
    c.check_transact()?;
    write(c, request).await?;
    read(c, buf).await
}

async fn transact_message(c: &mut AConn, request: &[u8]) -> Result<Vec<u8>> {
    c.check_transact()?;
    write(c, request).await?;
    read_message(c).await
}

fn poll_read_conn(
    c: &mut AConn,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        if c.has_outbox() {
            c.flush_step(false)?;
        }
        let dst = buf.initialize_unfilled();
        let len = dst.len();
        match c.read_step(dst, false) {
            Ok(Some(n)) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Ok(None) => {}
            Err(e) if e.kind() == ErrorKind::MoreData => {
                buf.advance(len);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Poll::Ready(Ok(())),
            Err(e) => return Poll::Ready(Err(e.into())),
        }
        let write = c.has_outbox();
        ready!(poll_ready(&c.sock, cx, true, write))?;
    }
}

fn poll_write_conn(c: &mut AConn, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        if let Some(n) = c.write_step(data, false)? {
            return Poll::Ready(Ok(n));
        }
        ready!(poll_ready(&c.sock, cx, false, true))?;
    }
}

fn poll_flush_conn(c: &mut AConn, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    loop {
        if c.flush_step(false)? {
            return Poll::Ready(Ok(()));
        }
        ready!(poll_ready(&c.sock, cx, false, true))?;
    }
}

/// The methods both async ends of a named pipe share.
macro_rules! async_io_methods {
    () => {
        /// Reads in the current [`ReadMode`], as the blocking `read` does. Windows: an
        /// overlapped `ReadFile`. Cancel-safe.
        pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
            read(self.conn()?, buf).await
        }

        /// Reads the rest of the current message, or the next whole message. Cancel-safe.
        pub async fn read_message(&mut self) -> Result<Vec<u8>> {
            read_message(self.conn()?).await
        }

        /// Writes one message (message-type pipe) or bytes of the stream (byte-type pipe) and
        /// returns `data.len()`. Windows: an overlapped `WriteFile`. Dropped before it
        /// completes, it sent nothing or the whole of `data` follows (see the module docs).
        pub async fn write(&mut self, data: &[u8]) -> Result<usize> {
            write(self.conn()?, data).await
        }

        /// Copies what is waiting into `buf` without consuming it and without waiting.
        /// Windows: `PeekNamedPipe`.
        pub fn peek(&mut self, buf: &mut [u8]) -> Result<PeekInfo> {
            self.conn()?.peek(buf)
        }

        /// Writes one message and reads one reply into `buf`. Windows: an overlapped
        /// `TransactNamedPipe` (same conditions as the blocking `transact`).
        pub async fn transact(&mut self, request: &[u8], buf: &mut [u8]) -> Result<usize> {
            transact(self.conn()?, request, buf).await
        }

        /// Like [`transact`](Self::transact), returning the whole reply.
        pub async fn transact_message(&mut self, request: &[u8]) -> Result<Vec<u8>> {
            transact_message(self.conn()?, request).await
        }
    };
}

/// One instance of a named pipe, the server end, for tokio. Windows: the handle
/// `CreateNamedPipe(FILE_FLAG_OVERLAPPED)` returns. See the blocking
/// [`NamedPipeServer`](super::NamedPipeServer) for the semantics.
///
/// [`AsyncRead`] and [`AsyncWrite`] read and write as `std::io::Read`/`Write` do on the
/// blocking end: in message mode a message that does not fit comes in pieces, end of file
/// once the client closed; every `poll_write` is one message on a message-type pipe.
#[derive(Debug)]
pub struct NamedPipeServer {
    name: PipeName,
    inst: Instance,
    listener: Option<Sock>,
    conn: Option<AConn>,
    read_mode: ReadMode,
    allowed_uids: Vec<u32>,
    any_user: bool,
}

impl NamedPipeServer {
    pub(crate) fn from_parts(
        name: PipeName,
        inst: Instance,
        listener: Option<OwnedFd>,
        conn: Option<Conn>,
        read_mode: ReadMode,
        allowed_uids: Vec<u32>,
        any_user: bool,
    ) -> Result<NamedPipeServer> {
        Ok(NamedPipeServer {
            name,
            inst,
            listener: listener.map(register).transpose()?,
            conn: conn.map(|c| c.map_sock(register)).transpose()?,
            read_mode,
            allowed_uids,
            any_user,
        })
    }

    /// The pipe's name.
    pub fn name(&self) -> &PipeName {
        &self.name
    }

    /// The pipe's fixed parameters. Windows: `GetNamedPipeInfo`.
    pub fn info(&self) -> PipeInfo {
        PipeInfo::from_meta(&self.inst.meta)
    }

    /// How many instances the pipe has now, in every process.
    pub fn instances(&self) -> Result<usize> {
        self.inst.count()
    }

    /// Waits for a client without blocking a thread. Windows: an overlapped
    /// `ConnectNamedPipe` and the wait on its event; a client that came first
    /// (`ERROR_PIPE_CONNECTED`) or is still connected makes it return at once. A client of
    /// a user that is not allowed is sent away and the wait goes on. Cancel-safe: dropped, it
    /// leaves the instance free.
    pub async fn connect(&mut self) -> Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        loop {
            if self.listener.is_none() {
                self.listener = Some(register(self.inst.listen()?)?);
            }
            let l = self.listener.as_ref().expect("listening");
            l.readable().await.map_err(reactor_error)?.clear_ready();
            let l = self.listener.take().expect("listening").into_inner();
            if let Some(fd) = self.inst.take_client(&l)? {
                let conn = Conn::new(
                    register(fd)?,
                    Side::Server,
                    self.inst.meta.pipe_type,
                    self.inst.meta.open_mode,
                    self.read_mode,
                    self.inst.meta.max_message_size,
                )?;
                if let Some(conn) = admit(&self.name, conn, &self.allowed_uids, self.any_user) {
                    self.conn = Some(conn);
                    return Ok(());
                }
            }
        }
    }

    /// Drops the client; the instance is free for the next one at once. Windows:
    /// `DisconnectNamedPipe`.
    pub fn disconnect(&mut self) -> Result<()> {
        self.conn = None;
        if self.listener.is_none() {
            self.listener = Some(register(self.inst.listen()?)?);
        }
        Ok(())
    }

    /// Whether a client is connected (it may have closed its end since).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The connected client's pid, uid and gid. Windows: `GetNamedPipeClientProcessId`.
    pub fn client(&self) -> Option<PeerIdentity> {
        self.conn.as_ref().map(Conn::peer)
    }

    /// The server end's read mode.
    pub fn read_mode(&self) -> ReadMode {
        self.read_mode
    }

    /// Switches the server end's read mode. Windows: `SetNamedPipeHandleState`.
    pub fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        if mode == ReadMode::Message && self.inst.meta.pipe_type == PipeType::Byte {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "a byte-type pipe cannot be read in message mode",
            ));
        }
        if let Some(c) = &mut self.conn {
            c.set_read_mode(mode)?;
        }
        self.read_mode = mode;
        Ok(())
    }

    fn conn(&mut self) -> Result<&mut AConn> {
        self.conn.as_mut().ok_or_else(not_connected)
    }

    async_io_methods!();
}

/// The client end of a named pipe, for tokio. Windows: the handle `CreateFile` returns for a
/// pipe name with `FILE_FLAG_OVERLAPPED`. See the blocking
/// [`NamedPipeClient`](super::NamedPipeClient); [`AsyncRead`] and [`AsyncWrite`] as on
/// [`NamedPipeServer`].
#[derive(Debug)]
pub struct NamedPipeClient {
    name: PipeName,
    info: PipeInfo,
    conn: AConn,
}

impl NamedPipeClient {
    pub(crate) fn from_parts(name: PipeName, info: PipeInfo, conn: Conn) -> Result<Self> {
        Ok(NamedPipeClient {
            name,
            info,
            conn: conn.map_sock(register)?,
        })
    }

    /// The pipe's name.
    pub fn name(&self) -> &PipeName {
        &self.name
    }

    /// The pipe's fixed parameters. Windows: `GetNamedPipeInfo`.
    pub fn info(&self) -> PipeInfo {
        self.info
    }

    /// The server instance's process. Windows: `GetNamedPipeServerProcessId`.
    pub fn server(&self) -> PeerIdentity {
        self.conn.peer()
    }

    /// The current read mode.
    pub fn read_mode(&self) -> ReadMode {
        self.conn.read_mode()
    }

    /// Switches the read mode. Windows: `SetNamedPipeHandleState(PIPE_READMODE_*)`.
    pub fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        self.conn.set_read_mode(mode)
    }

    #[allow(clippy::unnecessary_wraps)]
    fn conn(&mut self) -> Result<&mut AConn> {
        Ok(&mut self.conn)
    }

    async_io_methods!();
}

impl ClientOptions {
    /// Opens the pipe `name` for tokio. Windows: `CreateFile` with `FILE_FLAG_OVERLAPPED`.
    /// As [`connect`](Self::connect); with [`wait`](Self::wait), the wait for a free instance
    /// is [`wait_named_pipe_async`](Self::wait_named_pipe_async).
    pub async fn connect_async(&self, name: &str) -> Result<NamedPipeClient> {
        let name = PipeName::parse(name)?;
        let ns = self.namespace_or_env();
        let deadline = match self.wait_option() {
            Some(PipeWait::Timeout(t)) => Some(std::time::Instant::now() + t),
            _ => None,
        };
        loop {
            let (dir, place) = self.locate(&ns, &name)?;
            match connect_in(&dir, &name) {
                Err(e) if e.kind() == ErrorKind::PipeBusy => {
                    let wait = match (self.wait_option(), deadline) {
                        (None, _) => return Err(e),
                        (Some(_), Some(d)) => PipeWait::Timeout(
                            d.saturating_duration_since(std::time::Instant::now()),
                        ),
                        (Some(w), None) => w,
                    };
                    wait_free(dir, &name, wait).await?;
                }
                Ok((fd, meta)) => {
                    let conn = Conn::new(
                        register(fd)?,
                        Side::Client,
                        meta.pipe_type,
                        meta.open_mode,
                        ReadMode::Byte,
                        meta.max_message_size,
                    )?;
                    check_server(&name, place, conn.peer().uid)?;
                    return Ok(NamedPipeClient {
                        name,
                        info: PipeInfo::from_meta(&meta),
                        conn,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `WaitNamedPipe` without blocking a thread: as
    /// [`wait_named_pipe`](Self::wait_named_pipe), woken by the pipe's folder changing or a
    /// serving process ending.
    pub async fn wait_named_pipe_async(&self, name: &str, wait: PipeWait) -> Result<()> {
        let name = PipeName::parse(name)?;
        let (dir, _) = self.locate(&self.namespace_or_env(), &name)?;
        wait_free(dir, &name, wait).await
    }
}

/// `WaitNamedPipe` in the namespace of the environment, for tokio; see
/// [`ClientOptions::wait_named_pipe_async`].
pub async fn wait_named_pipe(name: &str, wait: PipeWait) -> Result<()> {
    ClientOptions::new().wait_named_pipe_async(name, wait).await
}

async fn wait_free(dir: PipeDir, name: &PipeName, timeout: PipeWait) -> Result<()> {
    let (mut w, watch) = FreeWait::new(dir, name, timeout)?;
    let watch = register(watch)?;
    loop {
        match w.step(watch.as_fd())? {
            WaitStep::Ready => return Ok(()),
            WaitStep::Sleep { exits, slice } => {
                let exits = exits
                    .into_iter()
                    .map(register)
                    .collect::<Result<Vec<Sock>>>()?;
                let event = poll_fn(|cx| {
                    for f in std::iter::once(&watch).chain(&exits) {
                        if let Poll::Ready(r) = f.poll_read_ready(cx) {
                            r.map_err(reactor_error)?.clear_ready();
                            return Poll::Ready(Ok::<(), Error>(()));
                        }
                    }
                    Poll::Pending
                });
                let limit = match (w.left(), slice) {
                    (Some(l), Some(s)) => Some(l.min(s)),
                    (l, s) => l.or(s),
                };
                match limit {
                    // The next step reports the time running out.
                    Some(t) => {
                        if let Ok(r) = ::tokio::time::timeout(t, event).await {
                            r?;
                        }
                    }
                    None => event.await?,
                }
            }
        }
    }
}

impl AsyncRead for NamedPipeServer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read_conn(self.get_mut().conn()?, cx, buf)
    }
}

impl AsyncWrite for NamedPipeServer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write_conn(self.get_mut().conn()?, cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_flush_conn(self.get_mut().conn()?, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_flush_conn(self.get_mut().conn()?, cx)
    }
}

impl AsyncRead for NamedPipeClient {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read_conn(&mut self.get_mut().conn, cx, buf)
    }
}

impl AsyncWrite for NamedPipeClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write_conn(&mut self.get_mut().conn, cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_flush_conn(&mut self.get_mut().conn, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_flush_conn(&mut self.get_mut().conn, cx)
    }
}

/// Checks that an anonymous pipe end is ipckit's own (a socket): FIFOs inherited from other
/// programs have no async form.
fn socket_end(fd: OwnedFd) -> Result<Sock> {
    if fd::kind(&fd)? != fd::FdKind::Socket || !socket::is_unix_stream(&fd) {
        return Err(Error::with_message(
            ErrorKind::Unsupported,
            "only ipckit's own anonymous pipe ends (not inherited FIFOs) have an async form",
        ));
    }
    register(fd)
}

/// The read end of an anonymous pipe, for tokio: see
/// [`PipeReader::into_async`](super::PipeReader::into_async). Cancel-safe reads; [`AsyncRead`]
/// gives end of file once every write end is closed.
#[derive(Debug)]
pub struct PipeReader {
    sock: Sock,
}

impl PipeReader {
    pub(crate) fn new(fd: OwnedFd) -> Result<PipeReader> {
        Ok(PipeReader {
            sock: socket_end(fd)?,
        })
    }

    /// Waits for data and returns what is there. Windows: an overlapped `ReadFile`; after
    /// every write end closed and everything was read, [`ErrorKind::BrokenPipe`].
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match socket::recv(&self.sock, buf, false)? {
                Some(0) => {
                    return Err(Error::with_message(
                        ErrorKind::BrokenPipe,
                        "the pipe has been ended: every write end is closed",
                    ));
                }
                Some(n) => return Ok(n),
                None => poll_fn(|cx| poll_ready(&self.sock, cx, true, false)).await?,
            }
        }
    }
}

impl AsyncRead for PipeReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            match socket::recv(&me.sock, buf.initialize_unfilled(), false)? {
                Some(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                None => ready!(poll_ready(&me.sock, cx, true, false))?,
            }
        }
    }
}

/// The write end of an anonymous pipe, for tokio: see
/// [`PipeWriter::into_async`](super::PipeWriter::into_async). A write that did not complete
/// wrote nothing.
#[derive(Debug)]
pub struct PipeWriter {
    sock: Sock,
}

impl PipeWriter {
    pub(crate) fn new(fd: OwnedFd) -> Result<PipeWriter> {
        Ok(PipeWriter {
            sock: socket_end(fd)?,
        })
    }

    /// Writes some of `data` and returns how much. Windows: an overlapped `WriteFile`; every
    /// read end closed: [`ErrorKind::NoData`].
    pub async fn write(&mut self, data: &[u8]) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        loop {
            match socket::send_nowait(&self.sock, &[data])? {
                Some(n) => return Ok(n),
                None => poll_fn(|cx| poll_ready(&self.sock, cx, false, true)).await?,
            }
        }
    }

    /// Writes all of `data`. Dropped before it completes, a prefix of `data` was written.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            data = &data[n..];
        }
        Ok(())
    }
}

impl AsyncWrite for PipeWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        loop {
            match socket::send_nowait(&me.sock, &[data])? {
                Some(n) => return Poll::Ready(Ok(n)),
                None => ready!(poll_ready(&me.sock, cx, false, true))?,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
