//! Anonymous pipes (`CreatePipe`) and named pipes (`CreateNamedPipe`, `ConnectNamedPipe`,
//! `CreateFile`, `WaitNamedPipe`, `TransactNamedPipe`, `CallNamedPipe`, ...), blocking here and
//! async (overlapped) in `pipe::tokio` (feature `tokio`; its docs open with a runnable example).
//!
//! ```
//! use ipckit::ErrorKind;
//! use ipckit::pipe::{ClientOptions, ReadMode, ServerOptions};
//! # let dir = std::env::temp_dir().join(format!("ipckit-doc-pipe-{}", std::process::id()));
//! # let ns = ipckit::namespace::Namespace::at(&dir);
//!
//! // CreateNamedPipe("\\\\.\\pipe\\echo", PIPE_ACCESS_DUPLEX,
//! //                 PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE, 4, ...)
//! let mut server = ServerOptions::message()
//!     .max_instances(4)?
//!     .namespace(ns.clone())
//!     .create(r"\\.\pipe\echo")?;
//!
//! // CreateFile("\\\\.\\pipe\\echo") + SetNamedPipeHandleState(PIPE_READMODE_MESSAGE)
//! let mut client = ClientOptions::new().namespace(ns.clone()).connect(r"\\.\pipe\Echo")?;
//! client.set_read_mode(ReadMode::Message)?;
//! server.connect()?; // ConnectNamedPipe: the client came first (ERROR_PIPE_CONNECTED), no wait
//! assert_eq!(server.client().unwrap().pid, std::process::id());
//!
//! client.write(b"ping")?; // one message
//! let mut small = [0u8; 3];
//! let err = server.read(&mut small).unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::MoreData); // ERROR_MORE_DATA: `small` is full, 1 byte left
//! let mut rest = [0u8; 8];
//! assert_eq!(server.read(&mut rest)?, 1);
//! assert_eq!((&small, &rest[..1]), (b"pin", &b"g"[..]));
//!
//! server.write(b"pong")?;
//! let peek = client.peek(&mut [])?; // PeekNamedPipe consumes nothing
//! assert_eq!((peek.available, peek.message_left), (4, 4));
//! assert_eq!(client.read_message()?, b"pong");
//!
//! drop(client);
//! assert_eq!(server.read(&mut rest).unwrap_err().kind(), ErrorKind::BrokenPipe); // ERROR_BROKEN_PIPE
//! server.disconnect()?; // DisconnectNamedPipe: the instance waits for its next client
//! # drop(server); let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! Anonymous pipes connect a parent with its child processes:
//!
//! ```
//! use std::io::Read;
//! use std::process::{Command, Stdio};
//!
//! let (mut reader, writer) = ipckit::pipe::anonymous_pipe()?; // CreatePipe
//! let mut cmd = Command::new("echo");
//! cmd.arg("hello").stdout(Stdio::from(writer));              // STARTUPINFO.hStdOutput
//! let mut child = cmd.spawn().unwrap();
//! drop(cmd); // closes this process's copy of the write end, as CloseHandle would
//! let mut out = String::new();
//! reader.read_to_string(&mut out).unwrap();                  // stops at end of file
//! assert_eq!(out, "hello\n");
//! assert_eq!(reader.read(&mut [0; 8]).unwrap_err().kind(), ipckit::ErrorKind::BrokenPipe);
//! child.wait().unwrap();
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! # Semantics (as on Windows)
//! - **Instances.** Each [`NamedPipeServer`] is one instance of its pipe and serves one client
//!   at a time. The first instance fixes the pipe's [`PipeType`], [`OpenMode`] and
//!   [`MaxInstances`]; later instances must use the same type and open mode
//!   ([`ErrorKind::AccessDenied`](crate::ErrorKind::AccessDenied)), and one past the maximum fails with
//!   [`ErrorKind::PipeBusy`](crate::ErrorKind::PipeBusy), counted over every process serving the pipe.
//!   [`ServerOptions::first_instance`] makes creation fail when the pipe exists.
//! - **Clients** connect to any free instance; when every instance is busy the open fails with
//!   [`ErrorKind::PipeBusy`](crate::ErrorKind::PipeBusy), when the pipe does not exist with [`ErrorKind::NotFound`](crate::ErrorKind::NotFound).
//!   [`wait_named_pipe`] waits for a free instance ([`ErrorKind::Timeout`](crate::ErrorKind::Timeout) with
//!   `ERROR_SEM_TIMEOUT`, 121, otherwise). A client starts in byte read mode.
//! - **Messages.** On a message-type pipe every write is one message (empty ones included) and
//!   a message-mode read returns at most one; when the buffer is too small it is filled and the
//!   read fails with [`ErrorKind::MoreData`](crate::ErrorKind::MoreData), and the next reads return the rest. A message-type
//!   pipe may be read in byte mode; a byte-type pipe cannot be read in message mode.
//! - **Ends.** Reading after the other end closed and everything was read fails with
//!   [`ErrorKind::BrokenPipe`](crate::ErrorKind::BrokenPipe); writing after it closed fails with [`ErrorKind::NoData`](crate::ErrorKind::NoData). No
//!   `SIGPIPE` is ever raised.
//! - **Identity.** The server learns the client's pid, uid and gid ([`NamedPipeServer::client`]),
//!   the client the server's pid ([`NamedPipeClient::server_process_id`]).
//! - **Security.** A pipe is private to its user by default: it lives in the user's private
//!   runtime folder (mode 0700), so other users cannot even reach it. [`ServerOptions::allow_user`]
//!   and [`ServerOptions::allow_any_user`] (the pipe's security descriptor) publish it where
//!   other users can reach it (their client names the owner, [`ClientOptions::owner`]); the
//!   server still checks every client's uid when it connects and refuses one that is not
//!   allowed ([`ErrorKind::AccessDenied`](crate::ErrorKind::AccessDenied)). A client refuses a
//!   server that is not the pipe's owner (or root).
//! - **Threads.** An end's reads and writes take `&mut self`; its
//!   [`writer`](NamedPipeClient::writer) ([`NamedPipeWriter`], a duplicated handle) writes from
//!   another thread while one waits in a read, as full-duplex I/O on one Windows handle does.
//! - **Waiting.** [`NamedPipeServer::connect`] and [`wait_named_pipe`] sleep until something
//!   happens (a connection, a change of the pipe's folder, a server's end): they do not poll.
//!
//! # Differences
//! - A refused client learns it at its first read, write or peek
//!   ([`ErrorKind::AccessDenied`](crate::ErrorKind::AccessDenied)), not when it opens the pipe.
//! - Sharing is per user id only: no groups, no deny entries, no separate read/write rights.
//!   A shared pipe's name and parameters are readable by every user (its folder is 0755), as a
//!   Windows pipe's name is visible to all; a private one's are not. Each user has their own
//!   pipe names (Windows has one namespace per machine): another user's pipe is opened by naming
//!   its owner.
//! - [`NamedPipeServer::disconnect`] makes the instance listen again at once (Windows waits for
//!   the next `ConnectNamedPipe`); [`NamedPipeServer::connect`] then returns when a client came.
//! - Every message is bounded by the pipe's maximum message size
//!   ([`ServerOptions::max_message_size`], 64 MiB by default): a larger write fails with
//!   [`ErrorKind::MessageTooLarge`](crate::ErrorKind::MessageTooLarge) and sends nothing; a peer that sends a larger message
//!   anyway has its connection ended. Buffer sizes are recorded but advisory, as on Windows.
//! - Zero-length messages carry no bytes for a byte-mode reader, which skips them.
//! - Remote pipes (`\\HOST\pipe\NAME`, which fail with
//!   [`ErrorKind::NeedsGateway`](crate::ErrorKind::NeedsGateway)) await the broker.
//! - The client end of an anonymous pipe is a Unix socket, not a FIFO (so that a write to a
//!   closed pipe reports [`ErrorKind::NoData`](crate::ErrorKind::NoData) instead of raising `SIGPIPE`).
//!
//! The on-socket framing and the instance directory are specified in `docs/protocol/pipe.md`.

mod anonymous;
mod client;
mod conn;
mod describe;
mod frame;
mod meta;
mod registry;
mod server;
#[cfg(feature = "tokio")]
pub mod tokio;
mod writer;

use std::time::Duration;

pub use anonymous::{PipeReader, PipeWriter, anonymous_pipe};
pub use client::{ClientOptions, NamedPipeClient, call_named_pipe, wait_named_pipe};
pub(crate) use conn::FrameSender;
pub use describe::{PipeStatus, describe, describe_shared};
/// Shared with the mailslots, whose folder is locked the same way.
pub(crate) use registry::folder_lock;
pub use server::{NamedPipeServer, ServerOptions};
pub use writer::NamedPipeWriter;

/// Default largest message: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u32 = 64 << 20;
/// Default of the server's default timeout (`nDefaultTimeOut` = 0 means 50 ms on Windows).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// How data is written into the pipe. Windows: `PIPE_TYPE_BYTE` / `PIPE_TYPE_MESSAGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipeType {
    /// A byte stream (`PIPE_TYPE_BYTE`).
    Byte,
    /// Messages: every write is one message (`PIPE_TYPE_MESSAGE`).
    Message,
}

/// How data is read. Windows: `PIPE_READMODE_BYTE` / `PIPE_READMODE_MESSAGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadMode {
    /// Reads return whatever bytes are there, ignoring message boundaries.
    Byte,
    /// Each read returns at most one message ([`ErrorKind::MoreData`](crate::ErrorKind::MoreData) when it does not fit).
    Message,
}

/// Which way data flows. Windows: `PIPE_ACCESS_DUPLEX` / `PIPE_ACCESS_INBOUND` /
/// `PIPE_ACCESS_OUTBOUND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenMode {
    /// Both ways.
    Duplex,
    /// Client to server only.
    Inbound,
    /// Server to client only.
    Outbound,
}

/// How many instances a pipe may have. Windows: `nMaxInstances` (1 to 254, or
/// `PIPE_UNLIMITED_INSTANCES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaxInstances {
    /// At most this many (1..=254).
    Limited(u8),
    /// No limit (`PIPE_UNLIMITED_INSTANCES`).
    Unlimited,
}

/// How long to wait for a free instance. Windows: the `nTimeOut` of `WaitNamedPipe` and
/// `CallNamedPipe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipeWait {
    /// The server's default timeout (`NMPWAIT_USE_DEFAULT_WAIT`).
    Default,
    /// No limit (`NMPWAIT_WAIT_FOREVER`).
    Forever,
    /// At most this long.
    Timeout(Duration),
}

/// What [`NamedPipeServer::peek`] / [`NamedPipeClient::peek`] found. Windows: the out
/// parameters of `PeekNamedPipe`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PeekInfo {
    /// Bytes copied into the buffer (`lpBytesRead`): of the current message only, on a
    /// message-type pipe.
    pub bytes_read: usize,
    /// Bytes that can be read now without waiting (`lpTotalBytesAvail`; counted up to what
    /// the peek buffered, at least 64 KiB beyond the caller's buffer).
    pub available: usize,
    /// Bytes left in the current message, arrived or not (`lpBytesLeftThisMessage`); 0 on a
    /// byte-type pipe.
    pub message_left: usize,
}

/// Who is at the other end, as the kernel recorded it when the connection was made.
/// Windows: `GetNamedPipeClientProcessId` / `GetNamedPipeServerProcessId`, and the token
/// `ImpersonateNamedPipeClient` would give (here: its uid and gid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// Process id.
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// The fixed parameters of a pipe. Windows: `GetNamedPipeInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipeInfo {
    /// Byte or message pipe.
    pub pipe_type: PipeType,
    /// Direction of data.
    pub open_mode: OpenMode,
    /// The maximum number of instances.
    pub max_instances: MaxInstances,
    /// Advisory output buffer size (`nOutBufferSize`).
    pub out_buffer_size: u32,
    /// Advisory input buffer size (`nInBufferSize`).
    pub in_buffer_size: u32,
    /// Largest message either end accepts (no Windows counterpart).
    pub max_message_size: u32,
    /// The server's default timeout for [`PipeWait::Default`] (`nDefaultTimeOut`).
    pub default_timeout: Duration,
}

impl PipeInfo {
    fn from_meta(m: &meta::Meta) -> PipeInfo {
        PipeInfo {
            pipe_type: m.pipe_type,
            open_mode: m.open_mode,
            max_instances: m.max_instances,
            out_buffer_size: m.out_buffer_size,
            in_buffer_size: m.in_buffer_size,
            max_message_size: m.max_message_size,
            default_timeout: m.default_timeout(),
        }
    }
}

/// The methods both ends of a named pipe share, delegating to the connection.
macro_rules! pipe_io_methods {
    () => {
        /// Reads in the current [`ReadMode`]. Windows: `ReadFile`.
        ///
        /// Byte mode: waits for data and returns what is there (at most `buf.len()` bytes).
        /// Message mode: returns one message; if it does not fit, `buf` is filled and the call
        /// fails with [`ErrorKind::MoreData`](crate::ErrorKind::MoreData) — the rest of the
        /// message comes with the next reads. After the other end closed and everything was
        /// read: [`ErrorKind::BrokenPipe`](crate::ErrorKind::BrokenPipe).
        pub fn read(&mut self, buf: &mut [u8]) -> crate::Result<usize> {
            self.conn()?.read(buf)
        }

        /// Reads the rest of the current message, or the next whole message (in byte mode as in
        /// message mode), however long it is, up to the pipe's maximum message size. Windows:
        /// `ReadFile` with a buffer as large as `PeekNamedPipe`'s `lpBytesLeftThisMessage`.
        pub fn read_message(&mut self) -> crate::Result<Vec<u8>> {
            self.conn()?.read_to_vec()
        }

        /// Writes one message (message-type pipe) or bytes of the stream (byte-type pipe) and
        /// returns `data.len()`. Windows: `WriteFile`. Fails with
        /// [`ErrorKind::NoData`](crate::ErrorKind::NoData) when the other end closed, and with
        /// [`ErrorKind::MessageTooLarge`](crate::ErrorKind::MessageTooLarge) (sending nothing)
        /// for a message over the pipe's maximum message size.
        pub fn write(&mut self, data: &[u8]) -> crate::Result<usize> {
            self.conn()?.write(data)
        }

        /// Copies what is waiting into `buf` without consuming it and without waiting.
        /// Windows: `PeekNamedPipe`.
        pub fn peek(&mut self, buf: &mut [u8]) -> crate::Result<PeekInfo> {
            self.conn()?.peek(buf)
        }

        /// Writes one message and reads one reply into `buf` (as [`read`](Self::read) in
        /// message mode). Windows: `TransactNamedPipe`: needs a message-type pipe in message
        /// read mode (else [`ErrorKind::InvalidParameter`](crate::ErrorKind::InvalidParameter)
        /// with `ERROR_BAD_PIPE`, 230) and no unread data
        /// ([`ErrorKind::PipeBusy`](crate::ErrorKind::PipeBusy)).
        pub fn transact(&mut self, request: &[u8], buf: &mut [u8]) -> crate::Result<usize> {
            self.conn()?.transact(request, buf)
        }

        /// Like [`transact`](Self::transact), returning the whole reply.
        pub fn transact_message(&mut self, request: &[u8]) -> crate::Result<Vec<u8>> {
            self.conn()?.transact_to_vec(request)
        }

        /// Reads in the current read mode without waiting: `Ok(None)` when nothing is there
        /// yet. Then the socket was read dry (what arrived of a frame waits in the buffer), so
        /// a readiness wait on it sleeps until more comes.
        pub(crate) fn read_now(&mut self, buf: &mut [u8]) -> crate::Result<Option<usize>> {
            self.conn()?.read_step(buf, false)
        }

        /// Whether received bytes wait in the buffer (read them before waiting on the socket).
        pub(crate) fn has_buffered(&mut self) -> bool {
            self.conn().is_ok_and(|c| c.has_buffered())
        }

        /// A sender of this connection's frames that works apart from its reads (see
        /// `Conn::frame_sender`); this end should not write itself from then on.
        pub(crate) fn frame_sender(&mut self) -> crate::Result<crate::pipe::FrameSender> {
            self.conn()?.frame_sender()
        }
    };
}
pub(crate) use pipe_io_methods;
