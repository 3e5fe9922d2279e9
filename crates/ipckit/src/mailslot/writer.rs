//! The client end of a mailslot (`CreateFile` on `\\.\mailslot\NAME`, then `WriteFile`).

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::io::Errno;

use super::slot;
use super::status::StatusPage;
use crate::error::{Error, ErrorKind, Result};
use crate::name::{MailslotName, MailslotTarget};
use crate::namespace::Namespace;
use crate::sys::dgram;

/// How a writer reaches the mailslot. Only the local carrier exists today; the broker's gateway
/// will add one for `\\HOST\mailslot\NAME` (one host) and `\\DOMAIN\mailslot\NAME` /
/// `\\*\mailslot\NAME` (a broadcast), limited to
/// [`NETWORK_MESSAGE_LIMIT`](super::NETWORK_MESSAGE_LIMIT) bytes, without changing
/// [`MailslotWriter`]'s API.
#[derive(Debug)]
pub(crate) enum Carrier {
    /// A datagram socket connected to the server's, in this user's namespace.
    Local(Local),
}

#[derive(Debug)]
pub(crate) struct Local {
    pub sock: OwnedFd,
    pub page: StatusPage,
}

/// Picks the carrier for `name`: the local one, or [`ErrorKind::NeedsGateway`] for the network
/// forms.
pub(crate) fn open_carrier(
    ns: &Namespace,
    name: &MailslotName,
    nonblocking: bool,
) -> Result<Local> {
    match name.target() {
        MailslotTarget::Local => {
            let (sock, page) = slot::connect(ns, name, nonblocking)?;
            dgram::reserve_send_buffer(&sock, page.header().max_message_size as usize)?;
            Ok(Local { sock, page })
        }
        MailslotTarget::Remote(_) | MailslotTarget::Broadcast => Err(Error::with_message(
            ErrorKind::NeedsGateway,
            format!(
                "{name}: network mailslots need the broker's network gateway, which is not available yet"
            ),
        )),
    }
}

impl Local {
    pub fn max(&self) -> u32 {
        self.page.header().max_message_size
    }

    /// After a successful send: the message counts as queued for other processes' view.
    pub fn sent(&self, len: usize) -> usize {
        self.page.count_sent();
        len
    }
}

/// Refuses a message over the mailslot's maximum `max` before anything is sent.
pub(crate) fn check_size(name: &MailslotName, max: u32, len: usize) -> Result<()> {
    if len > max as usize {
        return Err(Error::with_message(
            ErrorKind::MessageTooLarge,
            format!("a message of {len} bytes exceeds the maximum of {name}, {max} bytes"),
        ));
    }
    Ok(())
}

/// What a failed send means to the writer. `EAGAIN` is the caller's (full queue).
pub(crate) fn send_error(name: &MailslotName, e: Errno) -> Error {
    match e {
        Errno::CONNREFUSED | Errno::CONNRESET | Errno::NOTCONN | Errno::PIPE => {
            Error::with_message(
                ErrorKind::PeerGone,
                format!("{name} is gone: its server closed it or died"),
            )
        }
        Errno::MSGSIZE => Error::with_message(
            ErrorKind::MessageTooLarge,
            format!("the message does not fit a datagram to {name}"),
        ),
        e => Error::from_io(format!("cannot write to {name}"), e.into()),
    }
}

pub(crate) fn full_error(name: &MailslotName) -> Error {
    Error::with_message(
        ErrorKind::Full,
        format!("{name}'s queue is full: its server has not read the messages before"),
    )
}

pub(crate) fn write_timeout_error(name: &MailslotName) -> Error {
    Error::with_message(
        ErrorKind::Timeout,
        format!("{name}'s queue stayed full for the write timeout"),
    )
}

/// How to open a mailslot for writing, as a builder. Windows: the arguments of `CreateFile` on
/// a mailslot name.
#[derive(Debug, Clone, Default)]
pub struct WriterOptions {
    namespace: Option<Namespace>,
    write_timeout: Option<Duration>,
}

impl WriterOptions {
    /// Writes wait for room as long as needed, in the namespace of the environment.
    pub fn new() -> WriterOptions {
        WriterOptions::default()
    }

    /// The namespace the mailslot lives in (default: [`Namespace::from_env`]).
    pub fn namespace(mut self, ns: Namespace) -> Self {
        self.namespace = Some(ns);
        self
    }

    /// How long a write waits while the mailslot's queue is full (`None`, the default: as long
    /// as needed). No Windows counterpart: Windows writers never wait.
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_timeout = timeout;
        self
    }

    pub(crate) fn ns(&self) -> Namespace {
        self.namespace.clone().unwrap_or_else(Namespace::from_env)
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.write_timeout
    }

    /// Opens the mailslot `name` for writing. Windows: `CreateFile(name, GENERIC_WRITE,
    /// FILE_SHARE_READ, ..., OPEN_EXISTING, ...)`.
    ///
    /// Fails with [`ErrorKind::NotFound`] when no such mailslot exists on this machine,
    /// [`ErrorKind::InvalidName`] for a malformed name, and [`ErrorKind::NeedsGateway`] for
    /// `\\HOST\mailslot\NAME`, `\\DOMAIN\mailslot\NAME` and `\\*\mailslot\NAME` (until the
    /// broker's network gateway carries them).
    pub fn open(&self, name: &str) -> Result<MailslotWriter> {
        let name = MailslotName::parse(name)?;
        let local = open_carrier(&self.ns(), &name, false)?;
        if let Some(t) = self.timeout() {
            dgram::set_send_timeout(&local.sock, Some(t))?;
        }
        Ok(MailslotWriter {
            name,
            carrier: Carrier::Local(local),
        })
    }

    /// [`open`](Self::open) for async writes; needs a tokio runtime.
    #[cfg(feature = "tokio")]
    pub fn open_async(&self, name: &str) -> Result<super::AsyncMailslotWriter> {
        super::AsyncMailslotWriter::open(self, name)
    }
}

/// A mailslot opened for writing. Windows: the handle `CreateFile` returns for a mailslot name.
///
/// Writes take `&self`: one writer may be shared by threads, each write staying one message.
#[derive(Debug)]
pub struct MailslotWriter {
    name: MailslotName,
    carrier: Carrier,
}

impl MailslotWriter {
    /// Opens `name` in the namespace of the environment. Windows: `CreateFile`. See
    /// [`WriterOptions::open`].
    pub fn open(name: &str) -> Result<MailslotWriter> {
        WriterOptions::new().open(name)
    }

    /// The mailslot's name.
    pub fn name(&self) -> &MailslotName {
        &self.name
    }

    fn local(&self) -> &Local {
        match &self.carrier {
            Carrier::Local(l) => l,
        }
    }

    /// The largest message the mailslot accepts.
    pub fn max_message_size(&self) -> u32 {
        self.local().max()
    }

    /// The server's pid.
    pub fn server_process_id(&self) -> u32 {
        self.local().page.header().server_pid
    }

    /// Sends `data` as one message and returns its length. Windows: `WriteFile`.
    ///
    /// Fails with [`ErrorKind::MessageTooLarge`] (`ERROR_INVALID_PARAMETER`, sending nothing)
    /// over the maximum size, and [`ErrorKind::PeerGone`] when the mailslot's server closed it
    /// or died. While the queue is full it waits for room (see the module docs), at most the
    /// write timeout ([`ErrorKind::Timeout`]).
    pub fn write(&self, data: &[u8]) -> Result<usize> {
        self.send(data, true)
    }

    /// [`write`](Self::write) without waiting: [`ErrorKind::Full`] when the queue is full.
    pub fn try_write(&self, data: &[u8]) -> Result<usize> {
        self.send(data, false)
    }

    fn send(&self, data: &[u8], wait: bool) -> Result<usize> {
        let l = self.local();
        check_size(&self.name, l.max(), data.len())?;
        match dgram::send(&l.sock, data, wait) {
            Ok(()) => Ok(l.sent(data.len())),
            Err(Errno::AGAIN) if wait => Err(write_timeout_error(&self.name)),
            Err(Errno::AGAIN) => Err(full_error(&self.name)),
            Err(e) => Err(send_error(&self.name, e)),
        }
    }
}

impl std::io::Write for MailslotWriter {
    /// One message per call.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        MailslotWriter::write(self, buf).map_err(std::io::Error::from)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
