//! The client end of a named pipe (`CreateFile` on `\\.\pipe\NAME`), `WaitNamedPipe` and
//! `CallNamedPipe`.

use std::os::fd::OwnedFd;
use std::time::Instant;

use super::conn::{Conn, Side};
use super::meta::Meta;
use super::registry::{self, PipeDir, Place};
use super::server::{io_error, io_read};
use super::{PeekInfo, PeerIdentity, PipeInfo, PipeWait, ReadMode, pipe_io_methods};
use crate::error::{Error, ErrorKind, Result};
use crate::name::PipeName;
use crate::namespace::Namespace;
use crate::sys::process;

/// How a client end reaches its server. Only the local carrier exists today; the broker's
/// gateway for `\\HOST\pipe\NAME` will add one that carries the same frames, without changing
/// [`NamedPipeClient`]'s API.
#[derive(Debug)]
enum Transport {
    /// A Unix socket to a server instance in this user's namespace.
    Local(Conn),
}

/// How to open a pipe, as a builder. Windows: the arguments of `CreateFile` on a pipe name,
/// plus a wait for a free instance (`WaitNamedPipe`) when asked.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    namespace: Option<Namespace>,
    wait: Option<PipeWait>,
    owner: Option<u32>,
}

impl ClientOptions {
    /// Open without waiting (a busy pipe fails with [`ErrorKind::PipeBusy`]), in the namespace
    /// of the environment.
    pub fn new() -> ClientOptions {
        ClientOptions::default()
    }

    /// The namespace the pipe lives in (default: [`Namespace::from_env`]).
    pub fn namespace(mut self, ns: Namespace) -> Self {
        self.namespace = Some(ns);
        self
    }

    /// When every instance is busy, wait up to `wait` for a free one and retry (the
    /// `WaitNamedPipe` + `CreateFile` loop of Windows programs). If the time runs out the open
    /// fails with [`ErrorKind::Timeout`] (`ERROR_SEM_TIMEOUT`).
    pub fn wait(mut self, wait: PipeWait) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Opens the pipe that the user `uid` shares with other users
    /// ([`ServerOptions::allow_user`](super::ServerOptions::allow_user)), in the machine-wide
    /// part of the namespace. Windows has one pipe namespace per machine and needs no such
    /// option; here every user has their own, and naming the owner keeps another user from
    /// standing in for the server: a server of any other user (root excepted) is refused with
    /// [`ErrorKind::AccessDenied`].
    ///
    /// Without it a client looks in its own user's private folder, then among the pipes its
    /// own user shares.
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    fn ns(&self) -> Namespace {
        self.namespace_or_env()
    }

    pub(crate) fn namespace_or_env(&self) -> Namespace {
        self.namespace.clone().unwrap_or_else(Namespace::from_env)
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wait_option(&self) -> Option<PipeWait> {
        self.wait
    }

    /// Opens the pipe `name`: connects to a free instance. Windows: `CreateFile`.
    ///
    /// Fails with [`ErrorKind::NotFound`] when no such pipe exists, [`ErrorKind::PipeBusy`]
    /// when every instance is busy (and no [`wait`](Self::wait) was given),
    /// [`ErrorKind::InvalidName`] for a malformed name and [`ErrorKind::NeedsGateway`] for a
    /// pipe on another machine.
    pub fn connect(&self, name: &str) -> Result<NamedPipeClient> {
        let name = PipeName::parse(name)?;
        let ns = self.ns();
        let deadline = match self.wait {
            Some(PipeWait::Timeout(t)) => Some(Instant::now() + t),
            _ => None,
        };
        loop {
            let (dir, place) = self.locate(&ns, &name)?;
            match connect_in(&dir, &name) {
                Err(e) if e.kind() == ErrorKind::PipeBusy => {
                    let wait = match (self.wait, deadline) {
                        (None, _) => return Err(e),
                        (Some(_), Some(d)) => {
                            PipeWait::Timeout(d.saturating_duration_since(Instant::now()))
                        }
                        (Some(w), None) => w,
                    };
                    registry::wait_free(dir, &name, wait)?;
                }
                Ok((fd, meta)) => {
                    let conn = Conn::new(
                        fd,
                        Side::Client,
                        meta.pipe_type,
                        meta.open_mode,
                        ReadMode::Byte,
                        meta.max_message_size,
                    )?;
                    check_server(&name, place, conn.peer().uid)?;
                    return Ok(NamedPipeClient {
                        name: name.clone(),
                        info: PipeInfo::from_meta(&meta),
                        transport: Transport::Local(conn),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The pipe's directory: in the owner's published folder when [`owner`](Self::owner) was
    /// given, else in this user's private folder, else among this user's published pipes.
    pub(crate) fn locate(&self, ns: &Namespace, name: &PipeName) -> Result<(PipeDir, Place)> {
        if !name.is_local() {
            return Err(Error::with_message(
                ErrorKind::NeedsGateway,
                format!(
                    "{name} is on another machine: remote pipes need the broker's network gateway, which is not available yet"
                ),
            ));
        }
        if let Some(owner) = self.owner {
            let place = Place::Published { owner };
            return Ok((registry::open_dir(ns, name, place)?, place));
        }
        match registry::open_dir(ns, name, Place::Private) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let place = Place::Published {
                    owner: process::current_uid(),
                };
                match registry::open_dir(ns, name, place) {
                    Ok(dir) => Ok((dir, place)),
                    Err(e2) if e2.kind() == ErrorKind::NotFound => Err(e),
                    Err(e2) => Err(e2),
                }
            }
            r => r.map(|d| (d, Place::Private)),
        }
    }

    /// `WaitNamedPipe`: waits until an instance of `name` is free. Fails at once with
    /// [`ErrorKind::NotFound`] when the pipe does not exist, and with [`ErrorKind::Timeout`]
    /// carrying `ERROR_SEM_TIMEOUT` (121) when the time runs out. Another client may still take
    /// the instance first, as on Windows. The wait sleeps until the pipe's folder changes or
    /// a serving process ends (inotify, pidfd): it does not poll.
    pub fn wait_named_pipe(&self, name: &str, wait: PipeWait) -> Result<()> {
        let name = PipeName::parse(name)?;
        let (dir, _) = self.locate(&self.ns(), &name)?;
        registry::wait_free(dir, &name, wait)
    }

    /// `CallNamedPipe`: opens the pipe (waiting up to `wait` while it is busy), switches to
    /// message mode, sends `request` as one message, reads one reply into `buf` and closes.
    /// A reply that does not fit fills `buf` and fails with [`ErrorKind::MoreData`]; the rest
    /// is discarded.
    pub fn call(
        &self,
        name: &str,
        request: &[u8],
        buf: &mut [u8],
        wait: PipeWait,
    ) -> Result<usize> {
        let mut c = self.clone().wait(wait).connect(name)?;
        c.set_read_mode(ReadMode::Message)?;
        c.transact(request, buf)
    }
}

/// Connects to a free instance in `dir` and reads the pipe's parameters.
pub(crate) fn connect_in(dir: &PipeDir, name: &PipeName) -> Result<(OwnedFd, Meta)> {
    let meta = registry::client_meta(dir, name)?;
    let fd = registry::connect(dir, name)?;
    Ok((fd, meta))
}

/// Refuses a server that is neither the pipe's owner nor root.
pub(crate) fn check_server(name: &PipeName, place: Place, server_uid: u32) -> Result<()> {
    let owner = match place {
        Place::Private => process::current_uid(),
        Place::Published { owner } => owner,
    };
    if server_uid != owner && server_uid != 0 {
        return Err(Error::with_message(
            ErrorKind::AccessDenied,
            format!("{name} is served by uid {server_uid}, not by its owner (uid {owner})"),
        ));
    }
    Ok(())
}

/// `WaitNamedPipe` in the namespace of the environment; see [`ClientOptions::wait_named_pipe`].
pub fn wait_named_pipe(name: &str, wait: PipeWait) -> Result<()> {
    ClientOptions::new().wait_named_pipe(name, wait)
}

/// `CallNamedPipe` in the namespace of the environment; see [`ClientOptions::call`].
pub fn call_named_pipe(
    name: &str,
    request: &[u8],
    buf: &mut [u8],
    wait: PipeWait,
) -> Result<usize> {
    ClientOptions::new().call(name, request, buf, wait)
}

/// The client end of a named pipe. Windows: the handle `CreateFile` returns for a pipe name.
///
/// Starts in byte read mode, as on Windows; [`set_read_mode`](Self::set_read_mode) switches
/// to message mode. Dropping it closes the connection (`CloseHandle`): the server's reads then
/// fail with [`ErrorKind::BrokenPipe`] once it has read what was sent.
#[derive(Debug)]
pub struct NamedPipeClient {
    name: PipeName,
    info: PipeInfo,
    transport: Transport,
}

impl NamedPipeClient {
    /// Opens `name` in the namespace of the environment, without waiting. Windows:
    /// `CreateFile`. See [`ClientOptions::connect`].
    pub fn connect(name: &str) -> Result<NamedPipeClient> {
        ClientOptions::new().connect(name)
    }

    /// The pipe's name.
    pub fn name(&self) -> &PipeName {
        &self.name
    }

    /// The pipe's fixed parameters. Windows: `GetNamedPipeInfo`.
    pub fn info(&self) -> PipeInfo {
        self.info
    }

    /// The server instance's process (pid, uid, gid), recorded when it began listening.
    /// Windows: `GetNamedPipeServerProcessId`.
    pub fn server(&self) -> PeerIdentity {
        match &self.transport {
            Transport::Local(c) => c.peer(),
        }
    }

    /// The server instance's pid. Windows: `GetNamedPipeServerProcessId`.
    pub fn server_process_id(&self) -> u32 {
        self.server().pid
    }

    /// The current read mode.
    pub fn read_mode(&self) -> ReadMode {
        match &self.transport {
            Transport::Local(c) => c.read_mode(),
        }
    }

    /// Switches the read mode. Windows: `SetNamedPipeHandleState(PIPE_READMODE_*)`;
    /// [`ReadMode::Message`] on a byte-type pipe fails with [`ErrorKind::InvalidParameter`].
    pub fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        self.conn()?.set_read_mode(mode)
    }

    /// The same connection for tokio (feature `tokio`; call it inside a runtime). Windows
    /// has no such conversion: overlapped I/O is chosen when the handle is made.
    #[cfg(feature = "tokio")]
    pub fn into_async(self) -> Result<super::tokio::NamedPipeClient> {
        let Transport::Local(conn) = self.transport;
        super::tokio::NamedPipeClient::from_parts(self.name, self.info, conn)
    }

    /// A writer of this connection, for another thread than the one that reads (see
    /// [`NamedPipeWriter`](super::NamedPipeWriter)). Windows: `DuplicateHandle` on the client's
    /// handle.
    pub fn writer(&self) -> Result<super::NamedPipeWriter> {
        match &self.transport {
            Transport::Local(c) => c.writer(),
        }
    }

    #[allow(clippy::unnecessary_wraps)]
    fn conn(&mut self) -> Result<&mut Conn> {
        match &mut self.transport {
            Transport::Local(c) => Ok(c),
        }
    }

    pipe_io_methods!();
}

impl std::io::Read for NamedPipeClient {
    /// Reads as [`NamedPipeClient::read`]; in message mode a message that does not fit is
    /// returned in pieces; end of file after the server closed.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        io_read(NamedPipeClient::read(self, buf), buf.len())
    }
}

impl std::io::Write for NamedPipeClient {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        NamedPipeClient::write(self, buf).map_err(io_error)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
