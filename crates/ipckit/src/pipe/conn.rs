//! One connected named-pipe end: framing over a Unix stream socket, read modes, peek.
//!
//! Shared by [`NamedPipeServer`](super::NamedPipeServer) and the local transport of
//! [`NamedPipeClient`](super::NamedPipeClient). The peer is hostile: every header is bounded by
//! the pipe's maximum message size before anything is allocated for it, and a broken rule ends
//! this connection only.

use std::os::fd::OwnedFd;

use super::frame::{self, Control, HEADER_LEN, Header};
use super::{OpenMode, PeekInfo, PeerIdentity, PipeType, ReadMode};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::socket;

/// Receive buffer size in normal operation.
const BUF_LEN: usize = 64 * 1024;
/// The most one buffered receive takes.
const FILL_WINDOW: usize = 4 * 1024;
/// Most bytes a vectored read of a whole message reserves ahead of the data that arrived.
const VEC_CHUNK: usize = 1 << 20;

/// Which side of the pipe this end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

#[derive(Debug)]
pub(crate) struct Conn {
    sock: OwnedFd,
    /// Bytes received and not consumed: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Payload bytes left in the current data frame, once its header was consumed.
    cur: Option<usize>,
    /// The peer closed its sending side (or the connection was ended).
    eof: bool,
    /// Set when the connection was ended because of a broken rule.
    ended: bool,
    limit: u32,
    pipe_type: PipeType,
    read_mode: ReadMode,
    can_read: bool,
    can_write: bool,
    peer: PeerIdentity,
}

enum Fill {
    Got,
    Eof,
    WouldBlock,
}

fn broken() -> Error {
    Error::with_message(
        ErrorKind::BrokenPipe,
        "the pipe has been ended: the other end closed it",
    )
}

impl Conn {
    pub(crate) fn new(
        sock: OwnedFd,
        side: Side,
        pipe_type: PipeType,
        open_mode: OpenMode,
        read_mode: ReadMode,
        limit: u32,
    ) -> Result<Conn> {
        let cred = socket::peer_cred(&sock)?;
        let (can_read, can_write) = match (open_mode, side) {
            (OpenMode::Duplex, _) => (true, true),
            (OpenMode::Inbound, Side::Server) | (OpenMode::Outbound, Side::Client) => (true, false),
            (OpenMode::Inbound, Side::Client) | (OpenMode::Outbound, Side::Server) => (false, true),
        };
        Ok(Conn {
            sock,
            buf: vec![0; BUF_LEN],
            start: 0,
            end: 0,
            cur: None,
            eof: false,
            ended: false,
            limit,
            pipe_type,
            read_mode,
            can_read,
            can_write,
            peer: PeerIdentity {
                pid: cred.pid,
                uid: cred.uid,
                gid: cred.gid,
            },
        })
    }

    pub(crate) fn peer(&self) -> PeerIdentity {
        self.peer
    }

    pub(crate) fn read_mode(&self) -> ReadMode {
        self.read_mode
    }

    pub(crate) fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        if mode == ReadMode::Message && self.pipe_type == PipeType::Byte {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "a byte-type pipe cannot be read in message mode",
            ));
        }
        self.read_mode = mode;
        Ok(())
    }

    /// Sends a control frame without waiting (best effort) and ends the connection.
    pub(crate) fn end_with(&mut self, c: Control) {
        let _ = socket::try_send(&self.sock, &frame::control_header(c));
        self.end();
    }

    fn end(&mut self) {
        socket::shutdown(&self.sock, true, true);
        self.ended = true;
        self.eof = true;
        self.cur = None;
        self.start = 0;
        self.end = 0;
    }

    fn check_read(&self) -> Result<()> {
        if !self.can_read {
            return Err(Error::with_message(
                ErrorKind::AccessDenied,
                "this end of the pipe may not read (its open mode is one-way)",
            ));
        }
        Ok(())
    }

    fn check_write(&self) -> Result<()> {
        if !self.can_write {
            return Err(Error::with_message(
                ErrorKind::AccessDenied,
                "this end of the pipe may not write (its open mode is one-way)",
            ));
        }
        if self.ended {
            return Err(Error::with_message(
                ErrorKind::NoData,
                "the pipe is being closed: the connection was ended",
            ));
        }
        Ok(())
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Receives more bytes into the buffer, growing it up to `cap` bytes if it is full.
    fn fill(&mut self, wait: bool, cap: usize) -> Result<Fill> {
        if self.eof {
            return Ok(Fill::Eof);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < cap {
                let new_len = (self.buf.len() * 2).min(cap);
                self.buf.resize(new_len, 0);
            } else {
                return Ok(Fill::WouldBlock);
            }
        }
        // Read a bounded window: enough to batch many small messages, small enough that the
        // payload of a large one is received straight into the caller's memory (take_some).
        let window = (self.end + FILL_WINDOW).min(self.buf.len());
        match socket::recv(&self.sock, &mut self.buf[self.end..window], wait)? {
            None => Ok(Fill::WouldBlock),
            Some(0) => {
                self.eof = true;
                Ok(Fill::Eof)
            }
            Some(n) => {
                self.end += n;
                Ok(Fill::Got)
            }
        }
    }

    /// Consumes the next frame header (waiting for it) and returns the length of the message it
    /// starts. Control frames end the connection with their error.
    fn start_message(&mut self) -> Result<usize> {
        while self.buffered() < HEADER_LEN {
            if let Fill::Eof = self.fill(true, BUF_LEN)? {
                return Err(broken());
            }
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        self.start += HEADER_LEN;
        match frame::decode(h, self.limit) {
            Ok(Header::Data(n)) => {
                self.cur = Some(n as usize);
                Ok(n as usize)
            }
            Ok(Header::Control(Control::Refused)) => {
                self.end();
                Err(Error::with_message(
                    ErrorKind::AccessDenied,
                    "the pipe server refused this client (its user is not allowed)",
                ))
            }
            Ok(Header::Control(Control::TooLarge)) => {
                self.end();
                Err(Error::with_message(
                    ErrorKind::MessageTooLarge,
                    "the other end received a message over its limit and ended the connection",
                ))
            }
            Err(e) if e.kind() == ErrorKind::MessageTooLarge => {
                self.end_with(Control::TooLarge);
                Err(e)
            }
            Err(e) => {
                self.end();
                Err(e)
            }
        }
    }

    /// Copies exactly `out.len()` payload bytes of the current frame, waiting for them.
    fn take_exact(&mut self, out: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < out.len() {
            done += self.take_some(&mut out[done..])?;
        }
        Ok(())
    }

    /// Copies between 1 and `out.len()` (non-zero, at most what is left of the current frame)
    /// payload bytes, waiting for the first.
    fn take_some(&mut self, out: &mut [u8]) -> Result<usize> {
        let n = if self.buffered() > 0 {
            let n = out.len().min(self.buffered());
            out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            n
        } else if self.eof {
            return Err(broken());
        } else {
            // Nothing buffered: receive straight into the caller's memory.
            match socket::recv(&self.sock, out, true)? {
                Some(0) | None => {
                    self.eof = true;
                    return Err(broken());
                }
                Some(n) => n,
            }
        };
        let left = self.cur.expect("inside a frame") - n;
        self.cur = (left > 0).then_some(left);
        Ok(n)
    }

    /// `ReadFile` in the current read mode.
    pub(crate) fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        match self.read_mode {
            ReadMode::Message => self.read_message(out),
            ReadMode::Byte => self.read_bytes(out),
        }
    }

    fn read_message(&mut self, out: &mut [u8]) -> Result<usize> {
        self.check_read()?;
        let left = match self.cur {
            Some(n) => n,
            None => self.start_message()?,
        };
        let n = left.min(out.len());
        if left == 0 {
            self.cur = None;
            return Ok(0);
        }
        self.take_exact(&mut out[..n])?;
        if n < left {
            return Err(Error::new(ErrorKind::MoreData));
        }
        Ok(n)
    }

    fn read_bytes(&mut self, out: &mut [u8]) -> Result<usize> {
        self.check_read()?;
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let left = match self.cur {
                Some(n) => n,
                None => self.start_message()?,
            };
            if left == 0 {
                // A zero-length message carries no bytes for a byte-mode reader.
                self.cur = None;
                continue;
            }
            let n = left.min(out.len());
            return self.take_some(&mut out[..n]);
        }
    }

    /// The rest of the current message, or the next whole message.
    pub(crate) fn read_to_vec(&mut self) -> Result<Vec<u8>> {
        self.check_read()?;
        let left = match self.cur {
            Some(n) => n,
            None => self.start_message()?,
        };
        let mut v = Vec::with_capacity(left.min(VEC_CHUNK));
        while v.len() < left {
            let old = v.len();
            // Grow with the data that arrived, not with what the header claims.
            let chunk = (left - old).min(VEC_CHUNK.max(old));
            v.resize(old + chunk, 0);
            self.take_exact(&mut v[old..])?;
        }
        self.cur = None;
        Ok(v)
    }

    /// `PeekNamedPipe`: copies without consuming, never waits.
    pub(crate) fn peek(&mut self, out: &mut [u8]) -> Result<PeekInfo> {
        self.check_read()?;
        let cap = BUF_LEN + out.len().min(self.limit as usize) + HEADER_LEN;
        while let Fill::Got = self.fill(false, cap)? {}
        let data = &self.buf[self.start..self.end];
        let mut pos = 0;
        let mut left = self.cur;
        let mut info = PeekInfo::default();
        let mut first = true;
        let mut copying = true;
        loop {
            let n = match left {
                Some(n) => n,
                None => {
                    if data.len() - pos < HEADER_LEN {
                        break;
                    }
                    let mut h = [0u8; HEADER_LEN];
                    h.copy_from_slice(&data[pos..pos + HEADER_LEN]);
                    match frame::decode(h, self.limit) {
                        Ok(Header::Data(n)) => {
                            pos += HEADER_LEN;
                            n as usize
                        }
                        // Control frames and bad headers end the data; the next read reports them.
                        _ => break,
                    }
                }
            };
            if first && self.pipe_type == PipeType::Message {
                info.message_left = n;
            }
            let avail = n.min(data.len() - pos);
            if copying {
                let k = avail.min(out.len() - info.bytes_read);
                out[info.bytes_read..info.bytes_read + k].copy_from_slice(&data[pos..pos + k]);
                info.bytes_read += k;
                // A message-type pipe is peeked one message at a time.
                if self.pipe_type == PipeType::Message || info.bytes_read == out.len() {
                    copying = false;
                }
            }
            info.available += avail;
            pos += avail;
            first = false;
            if avail < n {
                break;
            }
            left = None;
        }
        if info.available == 0 && info.message_left == 0 && self.eof && self.cur.is_none() {
            return Err(broken());
        }
        Ok(info)
    }

    /// `WriteFile`: one message (message-type pipe), or bytes of the stream.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<usize> {
        self.check_write()?;
        match self.pipe_type {
            PipeType::Message => {
                if data.len() > self.limit as usize {
                    return Err(Error::with_message(
                        ErrorKind::MessageTooLarge,
                        format!(
                            "a {}-byte message is over this pipe's limit of {} bytes",
                            data.len(),
                            self.limit
                        ),
                    ));
                }
                let h = frame::data_header(data.len() as u32);
                socket::send_all(&self.sock, &[&h, data])?;
            }
            PipeType::Byte => {
                // A byte stream has no boundaries to keep: send it in frames within the limit.
                for chunk in data.chunks(self.limit as usize) {
                    let h = frame::data_header(chunk.len() as u32);
                    socket::send_all(&self.sock, &[&h, chunk])?;
                }
            }
        }
        Ok(data.len())
    }

    /// `TransactNamedPipe`: writes one message and reads one reply.
    pub(crate) fn transact(&mut self, request: &[u8], out: &mut [u8]) -> Result<usize> {
        self.check_transact()?;
        self.write(request)?;
        self.read_message(out)
    }

    /// Like [`transact`](Self::transact), returning the whole reply.
    pub(crate) fn transact_to_vec(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        self.check_transact()?;
        self.write(request)?;
        self.read_to_vec()
    }

    fn check_transact(&mut self) -> Result<()> {
        if self.pipe_type != PipeType::Message || self.read_mode != ReadMode::Message {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "a transaction needs a message-type pipe in message read mode",
            )
            .with_win32_code(230)); // ERROR_BAD_PIPE
        }
        let p = self.peek(&mut [])?;
        if p.available > 0 || self.cur.is_some() {
            return Err(Error::with_message(
                ErrorKind::PipeBusy,
                "the pipe holds unread data: read it before a transaction",
            ));
        }
        Ok(())
    }
}
