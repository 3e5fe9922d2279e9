//! The server end of a named pipe: one instance (`CreateNamedPipe`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use super::conn::{Conn, Side};
use super::frame::Control;
use super::meta::{FLAG_REJECT_REMOTE, Meta};
use super::registry::{self, CreateRequest, Instance};
use super::{
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_TIMEOUT, MaxInstances, OpenMode, PeekInfo, PeerIdentity,
    PipeInfo, PipeType, ReadMode, pipe_io_methods,
};
use crate::error::{Error, ErrorKind, Result};
use crate::name::PipeName;
use crate::namespace::Namespace;
use crate::sys::{process, socket};

/// The parameters of `CreateNamedPipe`, as a builder.
///
/// Defaults: byte type and byte read mode, duplex, unlimited instances, 4 KiB advisory
/// buffers, a 50 ms default timeout, 64 MiB maximum message size, private to this user (see
/// [`allow_user`](Self::allow_user)), the namespace of the environment
/// ([`Namespace::from_env`]).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    namespace: Option<Namespace>,
    pipe_type: PipeType,
    read_mode: ReadMode,
    open_mode: OpenMode,
    max_instances: MaxInstances,
    first_instance: bool,
    out_buffer_size: u32,
    in_buffer_size: u32,
    default_timeout: Duration,
    max_message_size: u32,
    allowed_uids: Vec<u32>,
    any_user: bool,
    reject_remote: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            namespace: None,
            pipe_type: PipeType::Byte,
            read_mode: ReadMode::Byte,
            open_mode: OpenMode::Duplex,
            max_instances: MaxInstances::Unlimited,
            first_instance: false,
            out_buffer_size: 4096,
            in_buffer_size: 4096,
            default_timeout: DEFAULT_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            allowed_uids: Vec::new(),
            any_user: false,
            reject_remote: true,
        }
    }
}

impl ServerOptions {
    /// A byte-type pipe read in byte mode (`PIPE_TYPE_BYTE | PIPE_READMODE_BYTE`).
    pub fn new() -> ServerOptions {
        ServerOptions::default()
    }

    /// A message-type pipe read in message mode (`PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE`).
    pub fn message() -> ServerOptions {
        ServerOptions {
            pipe_type: PipeType::Message,
            read_mode: ReadMode::Message,
            ..ServerOptions::default()
        }
    }

    /// The namespace the pipe lives in (default: [`Namespace::from_env`]).
    pub fn namespace(mut self, ns: Namespace) -> Self {
        self.namespace = Some(ns);
        self
    }

    /// `PIPE_TYPE_BYTE` or `PIPE_TYPE_MESSAGE` (also sets the read mode to match).
    pub fn pipe_type(mut self, t: PipeType) -> Self {
        self.pipe_type = t;
        self.read_mode = match t {
            PipeType::Byte => ReadMode::Byte,
            PipeType::Message => ReadMode::Message,
        };
        self
    }

    /// The server end's initial read mode (`PIPE_READMODE_*`).
    pub fn read_mode(mut self, m: ReadMode) -> Self {
        self.read_mode = m;
        self
    }

    /// `PIPE_ACCESS_DUPLEX`, `PIPE_ACCESS_INBOUND` or `PIPE_ACCESS_OUTBOUND`.
    pub fn open_mode(mut self, m: OpenMode) -> Self {
        self.open_mode = m;
        self
    }

    /// `nMaxInstances`: 1 to 254 ([`ErrorKind::InvalidParameter`] otherwise). Only the first
    /// instance's value counts.
    pub fn max_instances(mut self, n: u8) -> Result<Self> {
        if !(1..=254).contains(&n) {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "max instances must be 1 to 254 (or unlimited)",
            ));
        }
        self.max_instances = MaxInstances::Limited(n);
        Ok(self)
    }

    /// `PIPE_UNLIMITED_INSTANCES`.
    pub fn unlimited_instances(mut self) -> Self {
        self.max_instances = MaxInstances::Unlimited;
        self
    }

    /// `FILE_FLAG_FIRST_PIPE_INSTANCE`: fail with [`ErrorKind::AccessDenied`] if the pipe
    /// exists.
    pub fn first_instance(mut self, yes: bool) -> Self {
        self.first_instance = yes;
        self
    }

    /// `nOutBufferSize` and `nInBufferSize` (advisory, as on Windows).
    pub fn buffer_sizes(mut self, out_size: u32, in_size: u32) -> Self {
        self.out_buffer_size = out_size;
        self.in_buffer_size = in_size;
        self
    }

    /// `nDefaultTimeOut`: what [`PipeWait::Default`](super::PipeWait::Default) waits
    /// (0 means 50 ms, as on Windows).
    pub fn default_timeout(mut self, t: Duration) -> Self {
        self.default_timeout = if t.is_zero() { DEFAULT_TIMEOUT } else { t };
        self
    }

    /// The largest message either end accepts (1 to 2^31 - 1 bytes; no Windows counterpart).
    /// Fixed by the first instance.
    pub fn max_message_size(mut self, bytes: u32) -> Result<Self> {
        if bytes == 0 || bytes > super::frame::MAX_FRAME_PAYLOAD {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "max message size must be 1 to 2^31 - 1 bytes",
            ));
        }
        self.max_message_size = bytes;
        Ok(self)
    }

    /// Shares the pipe with the user `uid`: the pipe is published where other users can reach
    /// it, and clients running as `uid` are accepted besides this user's. Windows: a security
    /// descriptor whose DACL grants that user access (`SECURITY_ATTRIBUTES`).
    ///
    /// A published pipe lives in `GLOBAL/pipe/UID/` (this user's folder in the namespace's
    /// machine-wide folder, mode 0755: others may enter and connect, never create or remove
    /// anything); other users open it with [`ClientOptions::owner`](super::ClientOptions::owner).
    /// Every client's uid is checked when it connects (`SO_PEERCRED`); one that is neither this
    /// user nor allowed is sent away with [`ErrorKind::AccessDenied`] and the instance waits for
    /// the next. All instances of a pipe are private or published alike (else
    /// [`ErrorKind::AccessDenied`]); each checks clients against its own list.
    ///
    /// Differences: only user ids, no groups, deny entries or per-right grants; the pipe's
    /// name and parameters can be read by every user (the folder is readable), as a Windows
    /// pipe's name is visible to all.
    pub fn allow_user(mut self, uid: u32) -> Self {
        self.allowed_uids.push(uid);
        self
    }

    /// Shares the pipe with every user (a NULL DACL): published as with
    /// [`allow_user`](Self::allow_user), and clients of any user are accepted.
    pub fn allow_any_user(mut self) -> Self {
        self.any_user = true;
        self
    }

    /// `PIPE_REJECT_REMOTE_CLIENTS` (the default) or `PIPE_ACCEPT_REMOTE_CLIENTS`, recorded
    /// for the broker's gateway; local pipes serve no remote clients today.
    pub fn reject_remote_clients(mut self, yes: bool) -> Self {
        self.reject_remote = yes;
        self
    }

    /// `CreateNamedPipe`: creates one instance of the local pipe `name` (`\\.\pipe\NAME`), free
    /// for a client at once.
    ///
    /// Fails with [`ErrorKind::InvalidName`] for a malformed name,
    /// [`ErrorKind::NeedsGateway`] for `\\HOST\pipe\...`, [`ErrorKind::PipeBusy`] when the pipe
    /// has its maximum number of instances, [`ErrorKind::AccessDenied`] when the pipe exists
    /// with another type or open mode, or exists at all with
    /// [`first_instance`](Self::first_instance).
    pub fn create(&self, name: &str) -> Result<NamedPipeServer> {
        let name = PipeName::parse(name)?;
        if self.read_mode == ReadMode::Message && self.pipe_type == PipeType::Byte {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "a byte-type pipe cannot be read in message mode",
            ));
        }
        let ns = self.namespace.clone().unwrap_or_else(Namespace::from_env);
        let meta = Meta {
            pipe_type: self.pipe_type,
            open_mode: self.open_mode,
            max_instances: self.max_instances,
            out_buffer_size: self.out_buffer_size,
            in_buffer_size: self.in_buffer_size,
            default_timeout_ms: u32::try_from(self.default_timeout.as_millis()).unwrap_or(u32::MAX),
            max_message_size: self.max_message_size,
            creator_pid: 0,
            flags: if self.reject_remote {
                FLAG_REJECT_REMOTE
            } else {
                0
            },
        };
        let inst = registry::create_instance(
            &ns,
            &CreateRequest {
                meta,
                first_instance: self.first_instance,
                name: &name,
                publish: self.any_user || !self.allowed_uids.is_empty(),
            },
        )?;
        let listener = inst.listen()?;
        Ok(NamedPipeServer {
            name,
            inst,
            listener: Some(listener),
            conn: None,
            read_mode: self.read_mode,
            allowed_uids: self.allowed_uids.clone(),
            any_user: self.any_user,
        })
    }
}

#[cfg(feature = "tokio")]
impl ServerOptions {
    /// [`create`](Self::create) for tokio (feature `tokio`; call it inside a runtime).
    /// Windows: `CreateNamedPipe` with `FILE_FLAG_OVERLAPPED`.
    pub fn create_async(&self, name: &str) -> Result<super::tokio::NamedPipeServer> {
        self.create(name)?.into_async()
    }
}

/// One instance of a named pipe, the server end. Windows: the handle `CreateNamedPipe`
/// returns.
///
/// The instance is free for a client from its creation; [`connect`](Self::connect) waits for
/// one, [`disconnect`](Self::disconnect) drops it and frees the instance again. Dropping the
/// value closes the instance (`CloseHandle`); the pipe disappears with its last instance,
/// also when the serving processes are killed.
#[derive(Debug)]
pub struct NamedPipeServer {
    name: PipeName,
    inst: Instance,
    listener: Option<OwnedFd>,
    conn: Option<Conn>,
    read_mode: ReadMode,
    allowed_uids: Vec<u32>,
    any_user: bool,
}

impl NamedPipeServer {
    /// `CreateNamedPipe` with the defaults of [`ServerOptions::new`] (a byte pipe).
    pub fn create(name: &str) -> Result<NamedPipeServer> {
        ServerOptions::new().create(name)
    }

    /// The pipe's name.
    pub fn name(&self) -> &PipeName {
        &self.name
    }

    /// The pipe's fixed parameters. Windows: `GetNamedPipeInfo`.
    pub fn info(&self) -> PipeInfo {
        PipeInfo::from_meta(&self.inst.meta)
    }

    /// How many instances the pipe has now, in every process. Windows: `lpCurInstances` of
    /// `GetNamedPipeHandleState`.
    pub fn instances(&self) -> Result<usize> {
        self.inst.count()
    }

    /// Waits for a client. Windows: `ConnectNamedPipe`; a client that connected before the
    /// call (`ERROR_PIPE_CONNECTED`) or is still connected makes it return `Ok` at once.
    ///
    /// A client of another user that is not allowed ([`ServerOptions::allow_user`]) is sent
    /// away (it reads [`ErrorKind::AccessDenied`]) and the wait goes on.
    pub fn connect(&mut self) -> Result<()> {
        self.wait_client(None, None).map(|_| ())
    }

    /// [`connect`](Self::connect), giving up after `timeout` with [`ErrorKind::Timeout`]
    /// (Windows: an overlapped `ConnectNamedPipe` and a wait that times out, `WAIT_TIMEOUT`).
    /// The instance stays free for a client.
    pub fn connect_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.wait_client(Some(Instant::now() + timeout), None)
            .map(|_| ())
    }

    /// [`connect`](Self::connect), or `Ok(false)` as soon as `wake` becomes readable (how a
    /// server thread that waits for clients is told to stop, with no periodic wake-up).
    pub(crate) fn connect_or_woken(&mut self, wake: BorrowedFd<'_>) -> Result<bool> {
        self.wait_client(None, Some(wake))
    }

    /// Waits for a client: `Ok(true)` once one is connected, `Ok(false)` when `wake` became
    /// readable first.
    fn wait_client(
        &mut self,
        deadline: Option<Instant>,
        wake: Option<BorrowedFd<'_>>,
    ) -> Result<bool> {
        if self.conn.is_some() {
            return Ok(true);
        }
        loop {
            if self.listener.is_none() {
                self.listener = Some(self.inst.listen()?);
            }
            let listener = self.listener.as_ref().expect("listening");
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let mut fds = vec![listener.as_fd()];
            fds.extend(wake);
            match socket::wait_readable(&fds, left)? {
                None => {
                    return Err(Error::with_message(
                        ErrorKind::Timeout,
                        format!("no client connected to {} in time", self.name),
                    ));
                }
                Some(1) => return Ok(false),
                Some(_) => {}
            }
            let listener = self.listener.take().expect("listening");
            if let Some(fd) = self.inst.take_client(&listener)? {
                let conn = Conn::new(
                    fd,
                    Side::Server,
                    self.inst.meta.pipe_type,
                    self.inst.meta.open_mode,
                    self.read_mode,
                    self.inst.meta.max_message_size,
                )?;
                if let Some(conn) = admit(&self.name, conn, &self.allowed_uids, self.any_user) {
                    self.conn = Some(conn);
                    return Ok(true);
                }
            }
        }
    }

    /// Drops the client: unread data is discarded, the client's reads fail with
    /// [`ErrorKind::BrokenPipe`] and its writes with [`ErrorKind::NoData`]; the instance is
    /// free for the next client at once. Windows: `DisconnectNamedPipe`.
    pub fn disconnect(&mut self) -> Result<()> {
        if let Some(conn) = self.conn.take() {
            // Ended for every holder of the socket, the instance's writers included.
            socket::shutdown(&conn.sock, true, true);
            drop(conn);
        }
        if self.listener.is_none() {
            self.listener = Some(self.inst.listen()?);
        }
        Ok(())
    }

    /// Whether a client is connected (it may have closed its end since).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The connected client's pid, uid and gid, recorded when it connected. Windows:
    /// `GetNamedPipeClientProcessId` (and, for the user, `ImpersonateNamedPipeClient`).
    pub fn client(&self) -> Option<PeerIdentity> {
        self.conn.as_ref().map(Conn::peer)
    }

    /// The connected client's pid. Windows: `GetNamedPipeClientProcessId`.
    pub fn client_process_id(&self) -> Result<u32> {
        self.client().map(|p| p.pid).ok_or_else(not_connected)
    }

    /// The server end's read mode.
    pub fn read_mode(&self) -> ReadMode {
        self.read_mode
    }

    /// Switches the server end's read mode (kept across clients). Windows:
    /// `SetNamedPipeHandleState(PIPE_READMODE_*)`; [`ReadMode::Message`] on a byte-type pipe
    /// fails with [`ErrorKind::InvalidParameter`].
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

    /// The same instance (and its client, if one is connected) for tokio (feature `tokio`;
    /// call it inside a runtime). Windows has no such conversion: overlapped I/O is chosen
    /// when the handle is made.
    #[cfg(feature = "tokio")]
    pub fn into_async(self) -> Result<super::tokio::NamedPipeServer> {
        super::tokio::NamedPipeServer::from_parts(
            self.name,
            self.inst,
            self.listener,
            self.conn,
            self.read_mode,
            self.allowed_uids,
            self.any_user,
        )
    }

    fn conn(&mut self) -> Result<&mut Conn> {
        self.conn.as_mut().ok_or_else(not_connected)
    }

    /// A writer of the current client's connection, for another thread than the one that
    /// reads (see [`NamedPipeWriter`](super::NamedPipeWriter)). Windows: `DuplicateHandle` on
    /// the instance's handle. It writes to this client only: after
    /// [`disconnect`](Self::disconnect) its writes fail with
    /// [`ErrorKind::NoData`](crate::ErrorKind::NoData). With no client connected it fails with
    /// [`ErrorKind::BrokenPipe`] (`ERROR_PIPE_LISTENING`, 536).
    pub fn writer(&self) -> Result<super::NamedPipeWriter> {
        self.conn.as_ref().ok_or_else(not_connected)?.writer()
    }

    pipe_io_methods!();
}

/// Checks a new client against the allowed users: its connection, or `None` after it was sent
/// away (a REFUSED frame, then the connection is closed).
pub(crate) fn admit<S: AsFd>(
    name: &PipeName,
    mut conn: Conn<S>,
    allowed: &[u32],
    any_user: bool,
) -> Option<Conn<S>> {
    let peer = conn.peer();
    if any_user || peer.uid == process::current_uid() || allowed.contains(&peer.uid) {
        return Some(conn);
    }
    tracing::info!(
        "{name}: refusing client pid {} of uid {}",
        peer.pid,
        peer.uid
    );
    conn.end_with(Control::Refused);
    None
}

pub(crate) fn not_connected() -> Error {
    Error::with_message(
        ErrorKind::BrokenPipe,
        "no client is connected to this pipe instance (call connect first)",
    )
    .with_win32_code(536) // ERROR_PIPE_LISTENING
}

impl std::io::Read for NamedPipeServer {
    /// Reads as [`NamedPipeServer::read`]; in message mode a message that does not fit is
    /// returned in pieces; end of file after the client closed.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        io_read(NamedPipeServer::read(self, buf), buf.len())
    }
}

impl std::io::Write for NamedPipeServer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        NamedPipeServer::write(self, buf).map_err(io_error)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `std::io::Read` semantics for a pipe read: a partial message is data, end of pipe is EOF.
pub(crate) fn io_read(r: Result<usize>, len: usize) -> std::io::Result<usize> {
    match r {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == ErrorKind::MoreData => Ok(len),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(io_error(e)),
    }
}

pub(crate) fn io_error(e: Error) -> std::io::Error {
    std::io::Error::from(e)
}
