//! The server end of a mailslot (`CreateMailslot`, `ReadFile`, `GetMailslotInfo`,
//! `SetMailslotInfo`).

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use super::slot::{self, Slot};
use super::status::{Header, StatusPage};
use super::{
    MAX_MESSAGE_SIZE_LIMIT, MailslotInfo, Message, PeerIdentity, sender_of, timeout_from_ms,
    timeout_to_ms,
};
use crate::error::{Error, ErrorKind, Result};
use crate::name::MailslotName;
use crate::namespace::Namespace;
use crate::sys::{dgram, process};

/// At most this many bytes of messages are moved into the server's process by
/// [`MailslotServer::info`]; past it the count is a lower bound.
const DRAIN_BYTES: usize = 64 << 20;
/// At most this many messages are moved by one [`MailslotServer::info`].
const DRAIN_MESSAGES: usize = 1 << 16;

/// The parameters of `CreateMailslot`, as a builder.
///
/// Defaults: any message size (up to [`MAX_MESSAGE_SIZE_LIMIT`]), reads wait for ever
/// (`MAILSLOT_WAIT_FOREVER`), the namespace of the environment ([`Namespace::from_env`]).
#[derive(Debug, Clone, Default)]
pub struct MailslotOptions {
    namespace: Option<Namespace>,
    max_message_size: u32,
    read_timeout: Option<Duration>,
}

impl MailslotOptions {
    /// The defaults.
    pub fn new() -> MailslotOptions {
        MailslotOptions::default()
    }

    /// The namespace the mailslot lives in (default: [`Namespace::from_env`]).
    pub fn namespace(mut self, ns: Namespace) -> Self {
        self.namespace = Some(ns);
        self
    }

    /// `nMaxMessageSize`: the largest message writers may send; 0 means any size up to
    /// [`MAX_MESSAGE_SIZE_LIMIT`]. A larger value fails with [`ErrorKind::InvalidParameter`]
    /// (Windows accepts it; Unix datagrams cannot carry it).
    pub fn max_message_size(mut self, bytes: u32) -> Result<Self> {
        if bytes > MAX_MESSAGE_SIZE_LIMIT {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!(
                    "max message size {bytes} exceeds the largest a local mailslot carries, {MAX_MESSAGE_SIZE_LIMIT} bytes"
                ),
            ));
        }
        self.max_message_size = bytes;
        Ok(self)
    }

    /// `lReadTimeout`: how long a read waits for a message; `Some(Duration::ZERO)` returns at
    /// once, `None` waits for ever (`MAILSLOT_WAIT_FOREVER`).
    pub fn read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// [`read_timeout`](Self::read_timeout) in milliseconds, as Windows takes it
    /// ([`MAILSLOT_WAIT_FOREVER`](super::MAILSLOT_WAIT_FOREVER) = `u32::MAX`).
    pub fn read_timeout_ms(self, ms: u32) -> Self {
        self.read_timeout(timeout_from_ms(ms))
    }

    /// `CreateMailslot`: creates the local mailslot `name` (`\\.\mailslot\[path\]NAME`).
    ///
    /// Fails with [`ErrorKind::InvalidName`] for a malformed name or one on another machine
    /// (`\\HOST\mailslot\...`, `\\*\mailslot\...`: Windows creates mailslots only locally), and
    /// with [`ErrorKind::AlreadyExists`] (`ERROR_ALREADY_EXISTS`) while a server has the name.
    pub fn create(&self, name: &str) -> Result<MailslotServer> {
        let (core, sock) = self.create_core(name, false)?;
        Ok(MailslotServer::new(core, sock))
    }

    /// [`create`](Self::create) for async reads; needs a tokio runtime.
    #[cfg(feature = "tokio")]
    pub fn create_async(&self, name: &str) -> Result<super::AsyncMailslotServer> {
        let (core, sock) = self.create_core(name, true)?;
        super::AsyncMailslotServer::new(core, sock)
    }

    pub(crate) fn create_core(&self, name: &str, nonblocking: bool) -> Result<(Core, OwnedFd)> {
        let name = MailslotName::parse(name)?;
        if !name.is_local() {
            return Err(Error::with_message(
                ErrorKind::InvalidName,
                format!(
                    r"{name}: a mailslot can be created only on this machine (\\.\mailslot\NAME)"
                ),
            ));
        }
        let ns = self.namespace.clone().unwrap_or_else(Namespace::from_env);
        let max = match self.max_message_size {
            0 => MAX_MESSAGE_SIZE_LIMIT,
            n => n,
        };
        let header = Header {
            max_message_size: max,
            server_pid: process::current_pid(),
            read_timeout_ms: timeout_to_ms(self.read_timeout),
        };
        let (slot, sock, page) = slot::create(&ns, &name, &header, nonblocking)?;
        Ok((
            Core {
                name,
                _slot: slot,
                page,
                max,
                timeout: self.read_timeout,
                queue: VecDeque::new(),
                queued_bytes: 0,
                spill: Vec::new(),
                taken: 0,
            },
            sock,
        ))
    }
}

/// What one receive from the socket gave.
pub(crate) enum Step {
    /// A message, in the caller's buffer.
    Got(usize, PeerIdentity),
    /// Nothing was there (or the wait ran out).
    Nothing,
    /// A malformed message was discarded: try again.
    Again,
}

/// The state shared by the blocking and the async server: the registration, the status page
/// and the messages already taken off the socket (by [`Core::drain`], or by a read whose buffer
/// was too small), which are older than anything still in the socket.
#[derive(Debug)]
pub(crate) struct Core {
    name: MailslotName,
    _slot: Slot,
    page: StatusPage,
    max: u32,
    timeout: Option<Duration>,
    queue: VecDeque<Message>,
    queued_bytes: usize,
    /// Room for the part of a message that does not fit the caller's buffer (`max` bytes, made
    /// on first use).
    spill: Vec<u8>,
    taken: u64,
}

impl Core {
    pub fn name(&self) -> &MailslotName {
        &self.name
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub fn set_timeout(&mut self, t: Option<Duration>) {
        self.timeout = t;
        self.page.set_read_timeout_ms(timeout_to_ms(t));
    }

    pub fn timeout_error(&self) -> Error {
        Error::with_message(
            ErrorKind::Timeout,
            format!(
                "no message arrived in {} within the read timeout",
                self.name
            ),
        )
        .with_win32_code(121) // ERROR_SEM_TIMEOUT
    }

    fn insufficient(&self, len: usize, have: usize) -> Error {
        Error::with_message(
            ErrorKind::InsufficientBuffer,
            format!(
                "the next message of {} has {len} bytes, more than the buffer's {have}; it stays queued",
                self.name
            ),
        )
    }

    fn took_one(&mut self) {
        self.taken += 1;
        self.page.set_taken(self.taken);
    }

    /// The oldest message, if one was already taken off the socket.
    pub fn take_queued(&mut self, buf: &mut [u8]) -> Option<Result<(usize, PeerIdentity)>> {
        let len = self.queue.front()?.data.len();
        if len > buf.len() {
            return Some(Err(self.insufficient(len, buf.len())));
        }
        let m = self.queue.pop_front().expect("front exists");
        self.queued_bytes -= len;
        buf[..len].copy_from_slice(&m.data);
        self.took_one();
        Some(Ok((len, m.sender)))
    }

    pub fn take_queued_message(&mut self) -> Option<Message> {
        let m = self.queue.pop_front()?;
        self.queued_bytes -= m.data.len();
        self.took_one();
        Some(m)
    }

    fn spill(&mut self, len: usize) -> &mut [u8] {
        if self.spill.len() < len {
            self.spill.resize(len, 0);
        }
        &mut self.spill[..len]
    }

    fn discard(&mut self, len: usize, from: PeerIdentity) {
        // Only a writer that bypasses ipckit sends more than the maximum: end that message.
        tracing::warn!(
            "{}: discarded a message of {len} bytes (over the maximum {}) from pid {}",
            self.name,
            self.max,
            from.pid
        );
        self.took_one();
    }

    /// One receive into `buf`. A message too large for `buf` but within the maximum is kept
    /// (first in the queue) and reported as [`ErrorKind::InsufficientBuffer`].
    pub fn recv_into(&mut self, fd: impl AsFd, buf: &mut [u8], wait: bool) -> Result<Step> {
        let max = self.max as usize;
        let have = buf.len();
        let r = if have >= max {
            dgram::recv(&fd, &mut [IoSliceMut::new(buf)], wait)?
        } else {
            let spill_len = max - have;
            let spill = self.spill(spill_len);
            let mut iov = [IoSliceMut::new(buf), IoSliceMut::new(spill)];
            dgram::recv(&fd, &mut iov, wait)?
        };
        let Some(r) = r else {
            return Ok(Step::Nothing);
        };
        let sender = sender_of(r.sender);
        if r.len > max {
            self.discard(r.len, sender);
            return Ok(Step::Again);
        }
        if r.len <= have {
            self.took_one();
            return Ok(Step::Got(r.len, sender));
        }
        // Too large for `buf`: keep it as the oldest message.
        let mut data = Vec::with_capacity(r.len);
        data.extend_from_slice(buf);
        data.extend_from_slice(&self.spill[..r.len - have]);
        self.queued_bytes += r.len;
        self.queue.push_front(Message { data, sender });
        Err(self.insufficient(r.len, have))
    }

    /// One receive of a whole message. `Ok(None)`: nothing came.
    pub fn recv_message(&mut self, fd: impl AsFd, wait: bool) -> Result<Option<Message>> {
        let max = self.max as usize;
        loop {
            let spill = self.spill(max);
            let Some(r) = dgram::recv(&fd, &mut [IoSliceMut::new(spill)], wait)? else {
                return Ok(None);
            };
            let sender = sender_of(r.sender);
            if r.len > max {
                self.discard(r.len, sender);
                continue;
            }
            self.took_one();
            return Ok(Some(Message {
                data: self.spill[..r.len].to_vec(),
                sender,
            }));
        }
    }

    /// Moves every message waiting in the socket into the queue (bounded), so that the count
    /// is exact and blocked writers can go on.
    fn drain(&mut self, fd: impl AsFd) -> Result<()> {
        let max = self.max as usize;
        while self.queued_bytes < DRAIN_BYTES && self.queue.len() < DRAIN_MESSAGES {
            let spill = self.spill(max);
            let Some(r) = dgram::recv(&fd, &mut [IoSliceMut::new(spill)], false)? else {
                break;
            };
            let sender = sender_of(r.sender);
            if r.len > max {
                self.discard(r.len, sender);
                continue;
            }
            let data = self.spill[..r.len].to_vec();
            self.queued_bytes += r.len;
            self.queue.push_back(Message { data, sender });
        }
        Ok(())
    }

    pub fn info(&mut self, fd: impl AsFd) -> Result<MailslotInfo> {
        self.drain(&fd)?;
        Ok(MailslotInfo {
            max_message_size: self.max,
            next_size: self.queue.front().map(|m| m.data.len()),
            count: self.queue.len(),
            read_timeout: self.timeout,
        })
    }
}

/// The server end of a mailslot. Windows: the handle `CreateMailslot` returns.
///
/// Dropping it deletes the mailslot with its queued messages (`CloseHandle` on the last
/// handle); so does the death of its process.
#[derive(Debug)]
pub struct MailslotServer {
    // Declared first so that it closes first: writers see the mailslot gone before its files go.
    sock: OwnedFd,
    core: Core,
    /// The receive timeout the socket holds now (`SO_RCVTIMEO`), once set.
    applied: Option<Option<Duration>>,
}

impl MailslotServer {
    fn new(core: Core, sock: OwnedFd) -> MailslotServer {
        MailslotServer {
            sock,
            core,
            applied: None,
        }
    }

    /// `CreateMailslot` with the defaults of [`MailslotOptions::new`].
    pub fn create(name: &str) -> Result<MailslotServer> {
        MailslotOptions::new().create(name)
    }

    /// The mailslot's name.
    pub fn name(&self) -> &MailslotName {
        self.core.name()
    }

    /// Reads the next message into `buf` and returns its length. Windows: `ReadFile`.
    ///
    /// Waits up to the read timeout for a message ([`ErrorKind::Timeout`] with
    /// `ERROR_SEM_TIMEOUT`, 121, when none came); a `buf` smaller than the message fails with
    /// [`ErrorKind::InsufficientBuffer`] (`ERROR_INSUFFICIENT_BUFFER`, 122) and leaves it
    /// queued (the contents of `buf` are then unspecified).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.read_from(buf).map(|(n, _)| n)
    }

    /// [`read`](Self::read), also returning who sent the message.
    pub fn read_from(&mut self, buf: &mut [u8]) -> Result<(usize, PeerIdentity)> {
        let mut deadline = None;
        loop {
            if let Some(r) = self.core.take_queued(buf) {
                return r;
            }
            let wait = self.prepare_wait(&mut deadline)?;
            match self.core.recv_into(&self.sock, buf, wait)? {
                Step::Got(n, who) => return Ok((n, who)),
                Step::Nothing if deadline.is_some_and(|d| Instant::now() < d) => {}
                Step::Nothing => return Err(self.core.timeout_error()),
                Step::Again => {}
            }
        }
    }

    /// Reads the next message whole, whatever its size, with its sender. Windows: `ReadFile`
    /// with a buffer of `GetMailslotInfo`'s next size. Waits as [`read`](Self::read) does.
    pub fn read_message(&mut self) -> Result<Message> {
        if let Some(m) = self.core.take_queued_message() {
            return Ok(m);
        }
        let mut deadline = None;
        loop {
            let wait = self.prepare_wait(&mut deadline)?;
            match self.core.recv_message(&self.sock, wait)? {
                Some(m) => return Ok(m),
                None if deadline.is_some_and(|d| Instant::now() < d) => {}
                None => return Err(self.core.timeout_error()),
            }
        }
    }

    /// Sets the socket's receive timeout for the next wait: the whole read timeout on the first
    /// try, what is left of it after that. Returns whether to wait at all.
    fn prepare_wait(&mut self, deadline: &mut Option<Instant>) -> Result<bool> {
        let want = match self.core.timeout() {
            Some(t) if t.is_zero() => return Ok(false),
            None => None,
            Some(t) => match *deadline {
                None => {
                    *deadline = Some(Instant::now() + t);
                    Some(t)
                }
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    Some(left)
                }
            },
        };
        if self.applied != Some(want) {
            dgram::set_recv_timeout(&self.sock, want)?;
            self.applied = Some(want);
        }
        Ok(true)
    }

    /// The maximum message size, the size of the next message, the number of queued messages
    /// and the read timeout. Windows: `GetMailslotInfo`.
    ///
    /// Exact: it first moves every message waiting in the socket into this process (at most
    /// 64 MiB or 65,536 messages; beyond that the count is a lower bound), which also lets
    /// writers waiting for room go on.
    pub fn info(&mut self) -> Result<MailslotInfo> {
        self.core.info(&self.sock)
    }

    /// Changes the read timeout (`None`: wait for ever). Windows: `SetMailslotInfo`.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.core.set_timeout(timeout);
    }

    /// The read timeout now.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.core.timeout()
    }
}
