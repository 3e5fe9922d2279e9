//! Async (tokio) ends of a mailslot: the same semantics as the blocking ones, waiting on the
//! socket's readiness ([`tokio::io::unix::AsyncFd`]) instead of blocking a thread.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::io::Errno;
use tokio::io::unix::AsyncFd;

use super::server::{Core, Step};
use super::writer::{Local, check_size, full_error, open_carrier, send_error, write_timeout_error};
use super::{MailslotInfo, Message, PeerIdentity, WriterOptions};
use crate::error::{Error, Result};
use crate::name::MailslotName;
use crate::sys::dgram;

fn register(sock: OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    dgram::register_async(sock)
}

/// Runs `f` within `timeout` (`None`: no limit), or returns `on_timeout`.
async fn within<T>(
    timeout: Option<Duration>,
    f: impl Future<Output = Result<T>>,
    on_timeout: impl FnOnce() -> Error,
) -> Result<T> {
    match timeout {
        None => f.await,
        // A zero timeout still polls `f` once: what is queued is returned.
        Some(t) => tokio::time::timeout(t, f)
            .await
            .unwrap_or_else(|_| Err(on_timeout())),
    }
}

/// The server end of a mailslot, async. Windows: a mailslot handle read with overlapped
/// `ReadFile`. Made by [`MailslotOptions::create_async`](super::MailslotOptions::create_async);
/// otherwise as [`MailslotServer`](super::MailslotServer).
#[derive(Debug)]
pub struct AsyncMailslotServer {
    sock: AsyncFd<OwnedFd>,
    core: Core,
}

impl AsyncMailslotServer {
    pub(crate) fn new(core: Core, sock: OwnedFd) -> Result<AsyncMailslotServer> {
        Ok(AsyncMailslotServer {
            sock: register(sock)?,
            core,
        })
    }

    /// The mailslot's name.
    pub fn name(&self) -> &MailslotName {
        self.core.name()
    }

    /// Reads the next message into `buf`, waiting up to the read timeout. Windows: `ReadFile`.
    /// Errors as [`MailslotServer::read`](super::MailslotServer::read).
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.read_from(buf).await.map(|(n, _)| n)
    }

    /// [`read`](Self::read), also returning who sent the message.
    pub async fn read_from(&mut self, buf: &mut [u8]) -> Result<(usize, PeerIdentity)> {
        let timeout = self.core.timeout();
        let err = self.core.timeout_error();
        let Self { sock, core } = self;
        within(
            timeout,
            async move {
                loop {
                    if let Some(r) = core.take_queued(buf) {
                        return r;
                    }
                    let mut ready = sock
                        .readable()
                        .await
                        .map_err(|e| Error::from_io("cannot wait for a message", e))?;
                    match core.recv_into(ready.get_inner(), buf, false)? {
                        Step::Got(n, who) => return Ok((n, who)),
                        Step::Nothing => ready.clear_ready(),
                        Step::Again => {}
                    }
                }
            },
            || err,
        )
        .await
    }

    /// Reads the next message whole, with its sender, waiting up to the read timeout.
    pub async fn read_message(&mut self) -> Result<Message> {
        let timeout = self.core.timeout();
        let err = self.core.timeout_error();
        let Self { sock, core } = self;
        within(
            timeout,
            async move {
                if let Some(m) = core.take_queued_message() {
                    return Ok(m);
                }
                loop {
                    let mut ready = sock
                        .readable()
                        .await
                        .map_err(|e| Error::from_io("cannot wait for a message", e))?;
                    match core.recv_message(ready.get_inner(), false)? {
                        Some(m) => return Ok(m),
                        None => ready.clear_ready(),
                    }
                }
            },
            || err,
        )
        .await
    }

    /// `GetMailslotInfo`; see [`MailslotServer::info`](super::MailslotServer::info). Does not
    /// wait.
    pub fn info(&mut self) -> Result<MailslotInfo> {
        self.core.info(self.sock.get_ref())
    }

    /// `SetMailslotInfo`: changes the read timeout (`None`: wait for ever).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.core.set_timeout(timeout);
    }

    /// The read timeout now.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.core.timeout()
    }
}

/// A mailslot opened for async writing. Made by [`WriterOptions::open_async`]; otherwise as
/// [`MailslotWriter`](super::MailslotWriter).
#[derive(Debug)]
pub struct AsyncMailslotWriter {
    name: MailslotName,
    sock: AsyncFd<OwnedFd>,
    page: super::status::StatusPage,
    max: u32,
    timeout: Option<Duration>,
}

impl AsyncMailslotWriter {
    pub(crate) fn open(opts: &WriterOptions, name: &str) -> Result<AsyncMailslotWriter> {
        let name = MailslotName::parse(name)?;
        let Local { sock, page } = open_carrier(&opts.ns(), &name, true)?;
        Ok(AsyncMailslotWriter {
            max: page.header().max_message_size,
            name,
            sock: register(sock)?,
            page,
            timeout: opts.timeout(),
        })
    }

    /// The mailslot's name.
    pub fn name(&self) -> &MailslotName {
        &self.name
    }

    /// The largest message the mailslot accepts.
    pub fn max_message_size(&self) -> u32 {
        self.max
    }

    /// Sends `data` as one message, waiting (without blocking the thread) while the queue is
    /// full, at most the write timeout. Windows: `WriteFile`. Errors as
    /// [`MailslotWriter::write`](super::MailslotWriter::write).
    pub async fn write(&self, data: &[u8]) -> Result<usize> {
        check_size(&self.name, self.max, data.len())?;
        within(
            self.timeout,
            async {
                loop {
                    let mut ready = self
                        .sock
                        .writable()
                        .await
                        .map_err(|e| Error::from_io("cannot wait for room", e))?;
                    match dgram::send(ready.get_inner(), data, false) {
                        Ok(()) => {
                            self.page.count_sent();
                            return Ok(data.len());
                        }
                        Err(Errno::AGAIN) => ready.clear_ready(),
                        Err(e) => return Err(send_error(&self.name, e)),
                    }
                }
            },
            || write_timeout_error(&self.name),
        )
        .await
    }

    /// Sends `data` as one message without waiting: [`ErrorKind::Full`](crate::ErrorKind::Full) when the queue is full.
    pub fn try_write(&self, data: &[u8]) -> Result<usize> {
        check_size(&self.name, self.max, data.len())?;
        match dgram::send(self.sock.get_ref(), data, false) {
            Ok(()) => {
                self.page.count_sent();
                Ok(data.len())
            }
            Err(Errno::AGAIN) => Err(full_error(&self.name)),
            Err(e) => Err(send_error(&self.name, e)),
        }
    }
}
