//! One connected named-pipe end: framing over a Unix stream socket, read modes, peek.
//!
//! Shared by [`NamedPipeServer`](super::NamedPipeServer), [`NamedPipeClient`](super::NamedPipeClient)
//! and their tokio counterparts: the same code frames and unframes for both, and every
//! operation takes `wait`. With `wait == true` (the blocking ends) it blocks in the socket calls
//! and may receive large payloads straight into the caller's memory. With `wait == false` (the
//! async ends) it never blocks: `Ok(None)` means "would block, retry when the socket is ready",
//! and everything received so far stays in this connection's buffer, so an operation that is
//! abandoned there (a dropped future) loses and duplicates nothing.
//!
//! The peer is hostile: every header is bounded by the pipe's maximum message size before
//! anything is allocated for it, buffers grow only with data that arrived, and a broken rule
//! ends this connection only.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::frame::{self, Control, HEADER_LEN, Header};
use super::{OpenMode, PeekInfo, PeerIdentity, PipeType, ReadMode};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::socket;

/// Receive buffer size in normal operation.
const BUF_LEN: usize = 64 * 1024;
/// The most one buffered receive of a blocking end takes.
const FILL_WINDOW: usize = 4 * 1024;
/// Reads for at most this many bytes take the next message's header and payload in one receive
/// (into the buffer, then copied); larger ones receive the payload into the caller's memory.
const SMALL_MESSAGE: usize = 16 * 1024;
/// Writes of at most this many bytes are copied behind their header and sent as one buffer.
const SMALL_WRITE: usize = 512;
/// Most bytes a vectored read of a whole message reserves ahead of the data that arrived.
const VEC_CHUNK: usize = 1 << 20;

/// Which side of the pipe this end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

#[derive(Debug)]
pub(crate) struct Conn<S = OwnedFd> {
    pub(crate) sock: S,
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
    /// Frame bytes an async write handed over but could not send yet: `outbox[out_pos..]`,
    /// sent before anything else.
    outbox: Vec<u8>,
    out_pos: usize,
    limit: u32,
    pipe_type: PipeType,
    read_mode: ReadMode,
    can_read: bool,
    can_write: bool,
    peer: PeerIdentity,
    /// Made by the first [`writer`](Self::writer): it keeps the waiting writes of the end and
    /// of its writers whole (one message, or one write's bytes, at a time).
    write_lock: OnceLock<Arc<Mutex<()>>>,
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

/// The result of a waiting (`wait == true`) operation, which never reports "would block".
fn waited<T>(r: Option<T>) -> Result<T> {
    r.ok_or_else(|| {
        Error::with_message(
            ErrorKind::Other,
            "a blocking pipe operation returned without its result",
        )
    })
}

impl<S: AsFd> Conn<S> {
    /// A second, independent sender of this connection's frames (over a duplicate of its
    /// socket), for a writer that must not wait behind a reader, such as an RPC connection
    /// over a pipe. Only the sender should write from then on: the connection's own writes
    /// would interleave with it.
    pub(crate) fn frame_sender(&self) -> Result<FrameSender> {
        Ok(FrameSender {
            sock: crate::sys::fd::duplicate(&self.sock)?,
            pipe_type: self.pipe_type,
            limit: self.limit,
            can_write: self.can_write,
        })
    }

    /// A public writer of this connection (a [`FrameSender`] over a duplicate of its socket),
    /// whose writes and the connection's own waiting writes take turns.
    pub(crate) fn writer(&self) -> Result<super::NamedPipeWriter> {
        let lock = Arc::clone(self.write_lock.get_or_init(Arc::default));
        Ok(super::NamedPipeWriter::new(self.frame_sender()?, lock))
    }

    /// Whether bytes already received wait in this connection's buffer (a reader must take
    /// them before it waits for the socket).
    pub(crate) fn has_buffered(&self) -> bool {
        self.buffered() > 0
    }

    pub(crate) fn new(
        sock: S,
        side: Side,
        pipe_type: PipeType,
        open_mode: OpenMode,
        read_mode: ReadMode,
        limit: u32,
    ) -> Result<Conn<S>> {
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
            outbox: Vec::new(),
            out_pos: 0,
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
            write_lock: OnceLock::new(),
        })
    }

    /// The same connection over another holder of its socket (e.g. a tokio `AsyncFd`).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn map_sock<T>(self, f: impl FnOnce(S) -> Result<T>) -> Result<Conn<T>> {
        Ok(Conn {
            sock: f(self.sock)?,
            buf: self.buf,
            start: self.start,
            end: self.end,
            cur: self.cur,
            eof: self.eof,
            ended: self.ended,
            outbox: self.outbox,
            out_pos: self.out_pos,
            limit: self.limit,
            pipe_type: self.pipe_type,
            read_mode: self.read_mode,
            can_read: self.can_read,
            can_write: self.can_write,
            peer: self.peer,
            write_lock: self.write_lock,
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
        self.outbox = Vec::new();
        self.out_pos = 0;
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

    /// Receives more bytes into the buffer (at most `window` in one call), growing it up to
    /// `cap` bytes if it is full.
    fn fill(&mut self, wait: bool, cap: usize, window: usize) -> Result<Fill> {
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
        let upto = self.end.saturating_add(window).min(self.buf.len());
        match socket::recv(&self.sock, &mut self.buf[self.end..upto], wait)? {
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

    /// Without waiting, receives until at least `need` bytes are buffered: `Ok(false)` when
    /// the socket has no more yet (what arrived stays buffered).
    fn gather(&mut self, need: usize) -> Result<bool> {
        while self.buffered() < need {
            match self.fill(false, need.max(BUF_LEN), usize::MAX)? {
                Fill::Got => {}
                Fill::WouldBlock => return Ok(false),
                Fill::Eof => return Err(broken()),
            }
        }
        Ok(true)
    }

    /// Gives back the memory a large message needed, once it is consumed.
    fn shrink(&mut self) {
        if self.buf.len() > BUF_LEN && self.buffered() <= BUF_LEN {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.buf.truncate(BUF_LEN);
            self.buf.shrink_to_fit();
        }
    }

    /// Consumes `n` payload bytes of the current frame.
    fn advance(&mut self, n: usize) {
        let left = self.cur.map_or(0, |c| c - n);
        self.cur = (left > 0).then_some(left);
    }

    /// Copies up to `out.len()` buffered payload bytes; returns how many.
    fn take_buffered(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.buffered());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        self.advance(n);
        n
    }

    /// Consumes the next frame header and returns the length of the message it starts
    /// (`Ok(None)`: not all there yet, without waiting). Control frames end the connection
    /// with their error.
    fn start_message(&mut self, wait: bool, want: usize) -> Result<Option<usize>> {
        // A small message comes with its header in one receive; the payload of a large one
        // goes straight into the caller's memory.
        let window = if !wait {
            usize::MAX
        } else if want <= SMALL_MESSAGE {
            FILL_WINDOW.max(HEADER_LEN + want)
        } else {
            FILL_WINDOW
        };
        while self.buffered() < HEADER_LEN {
            match self.fill(wait, BUF_LEN, window)? {
                Fill::Got => {}
                Fill::Eof => return Err(broken()),
                Fill::WouldBlock => return Ok(None),
            }
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        self.start += HEADER_LEN;
        self.begin_frame(h).map(Some)
    }

    /// Takes a consumed frame header: the length of the message it starts. Control frames and
    /// bad headers end the connection with their error.
    fn begin_frame(&mut self, h: [u8; HEADER_LEN]) -> Result<usize> {
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

    /// The length of the rest of the current message, or of the next one.
    fn message_left(&mut self, wait: bool, want: usize) -> Result<Option<usize>> {
        match self.cur {
            Some(n) => Ok(Some(n)),
            None => self.start_message(wait, want),
        }
    }

    /// Waiting: copies exactly `out.len()` payload bytes of the current frame, the buffered
    /// ones first and the rest straight into `out` (one `MSG_WAITALL` receive).
    fn take_exact(&mut self, out: &mut [u8]) -> Result<()> {
        let mut done = self.take_buffered(out);
        if done < out.len() {
            if self.eof {
                return Err(broken());
            }
            let n = socket::recv_all(&self.sock, &mut out[done..])?;
            self.advance(n);
            done += n;
            if done < out.len() {
                self.eof = true;
                return Err(broken());
            }
        }
        Ok(())
    }

    /// Copies between 1 and `out.len()` (non-zero, at most what is left of the current frame)
    /// payload bytes; `Ok(None)` without waiting when none is there.
    fn take_some(&mut self, out: &mut [u8], wait: bool) -> Result<Option<usize>> {
        if self.buffered() > 0 {
            return Ok(Some(self.take_buffered(out)));
        }
        if self.eof {
            return Err(broken());
        }
        // Nothing buffered: receive straight into the caller's memory.
        match socket::recv(&self.sock, out, wait)? {
            None => Ok(None),
            Some(0) => {
                self.eof = true;
                Err(broken())
            }
            Some(n) => {
                self.advance(n);
                Ok(Some(n))
            }
        }
    }

    /// `ReadFile` in the current read mode, waiting.
    pub(crate) fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        self.read_step(out, true).and_then(waited)
    }

    /// `ReadFile` in the current read mode; `Ok(None)` when it would wait (`!wait`).
    pub(crate) fn read_step(&mut self, out: &mut [u8], wait: bool) -> Result<Option<usize>> {
        match self.read_mode {
            ReadMode::Message => self.read_message(out, wait),
            ReadMode::Byte => self.read_bytes(out, wait),
        }
    }

    fn read_message(&mut self, out: &mut [u8], wait: bool) -> Result<Option<usize>> {
        self.check_read()?;
        if wait
            && out.len() > SMALL_MESSAGE
            && self.cur.is_none()
            && self.buffered() == 0
            && !self.eof
            && let Some(n) = self.read_large(out)?
        {
            return n;
        }
        let Some(left) = self.message_left(wait, out.len())? else {
            return Ok(None);
        };
        if left == 0 {
            self.cur = None;
            return Ok(Some(0));
        }
        let n = left.min(out.len());
        if wait {
            self.take_exact(&mut out[..n])?;
        } else {
            // All of it at once, or nothing: an abandoned read must not lose a piece.
            if !self.gather(n)? {
                return Ok(None);
            }
            self.take_buffered(&mut out[..n]);
            self.shrink();
        }
        if n < left {
            return Err(Error::new(ErrorKind::MoreData));
        }
        Ok(Some(n))
    }

    /// A message-mode read into a large buffer with nothing buffered: the next header and as
    /// much payload as is there arrive in one receive, the payload straight in `out`. Returns
    /// the read's result, or `None` when only part of the header came (now buffered: the
    /// usual path goes on).
    fn read_large(&mut self, out: &mut [u8]) -> Result<Option<Result<Option<usize>>>> {
        let mut h = [0u8; HEADER_LEN];
        let n = socket::recv_split(&self.sock, &mut h, out)?;
        if n == 0 {
            self.eof = true;
            return Err(broken());
        }
        self.start = 0;
        if n < HEADER_LEN {
            self.buf[..n].copy_from_slice(&h[..n]);
            self.end = n;
            return Ok(None);
        }
        self.end = 0;
        let got = n - HEADER_LEN;
        let len = self.begin_frame(h)?;
        if got > len {
            // Later frames' bytes landed in `out`: they wait in the buffer, in order.
            let extra = got - len;
            if self.buf.len() < extra {
                self.buf.resize(extra, 0);
            }
            self.buf[..extra].copy_from_slice(&out[len..got]);
            self.end = extra;
        }
        let have = got.min(len);
        self.advance(have);
        let want = len.min(out.len());
        if have < want {
            self.take_exact(&mut out[have..want])?;
        }
        self.shrink();
        Ok(Some(if want < len {
            Err(Error::new(ErrorKind::MoreData))
        } else {
            Ok(Some(want))
        }))
    }

    fn read_bytes(&mut self, out: &mut [u8], wait: bool) -> Result<Option<usize>> {
        self.check_read()?;
        if out.is_empty() {
            return Ok(Some(0));
        }
        loop {
            let Some(left) = self.message_left(wait, out.len())? else {
                return Ok(None);
            };
            if left == 0 {
                // A zero-length message carries no bytes for a byte-mode reader.
                self.cur = None;
                continue;
            }
            let n = left.min(out.len());
            return self.take_some(&mut out[..n], wait);
        }
    }

    /// The rest of the current message, or the next whole message, waiting.
    pub(crate) fn read_to_vec(&mut self) -> Result<Vec<u8>> {
        self.read_vec_step(true).and_then(waited)
    }

    /// The rest of the current message, or the next whole message; `Ok(None)` when it would
    /// wait (`!wait`).
    pub(crate) fn read_vec_step(&mut self, wait: bool) -> Result<Option<Vec<u8>>> {
        self.check_read()?;
        let Some(left) = self.message_left(wait, FILL_WINDOW)? else {
            return Ok(None);
        };
        if !wait {
            if !self.gather(left)? {
                return Ok(None);
            }
            let v = self.buf[self.start..self.start + left].to_vec();
            self.start += left;
            self.cur = None;
            self.shrink();
            return Ok(Some(v));
        }
        let mut v = Vec::with_capacity(left.min(VEC_CHUNK));
        while v.len() < left {
            let old = v.len();
            // Grow with the data that arrived, not with what the header claims.
            let chunk = (left - old).min(VEC_CHUNK.max(old));
            v.resize(old + chunk, 0);
            self.take_exact(&mut v[old..])?;
        }
        self.cur = None;
        Ok(Some(v))
    }

    /// `PeekNamedPipe`: copies without consuming, never waits.
    pub(crate) fn peek(&mut self, out: &mut [u8]) -> Result<PeekInfo> {
        self.check_read()?;
        let cap = BUF_LEN + out.len().min(self.limit as usize) + HEADER_LEN;
        while let Fill::Got = self.fill(false, cap, usize::MAX)? {}
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
                        // Control frames and bad headers end the data; the next read
                        // reports them, and so does this peek when nothing comes first.
                        _ if first => {
                            return Err(self.start_message(false, 0).err().unwrap_or_else(broken));
                        }
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

    /// `WriteFile`, waiting: one message (message-type pipe), or bytes of the stream.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<usize> {
        // Writers of this connection send whole frames too: one at a time.
        let lock = self.write_lock.get().map(Arc::clone);
        let _turn = lock
            .as_deref()
            .map(|l| l.lock().unwrap_or_else(PoisonError::into_inner));
        self.write_step(data, true).and_then(waited)
    }

    /// `WriteFile`: one message (message-type pipe), or bytes of the stream. Without waiting
    /// (`!wait`): `Ok(None)` when nothing of `data` could be sent (retry when the socket is
    /// writable); otherwise `data` is taken whole and what did not fit waits in the outbox,
    /// which [`flush_step`](Self::flush_step) and every later write send first.
    pub(crate) fn write_step(&mut self, data: &[u8], wait: bool) -> Result<Option<usize>> {
        self.write_frames(data, wait)
            .map_err(|e| self.why_closed(e))
    }

    /// A write failed because the peer closed: if the peer said why (a control frame waiting
    /// to be read, before any data), that is the error.
    fn why_closed(&mut self, e: Error) -> Error {
        if e.kind() != ErrorKind::NoData || self.cur.is_some() || self.ended {
            return e;
        }
        while let Ok(Fill::Got) = self.fill(false, BUF_LEN, usize::MAX) {}
        if self.buffered() >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
            if let Ok(Header::Control(_)) = frame::decode(h, self.limit) {
                return self.start_message(false, 0).err().unwrap_or(e);
            }
        }
        e
    }

    fn write_frames(&mut self, data: &[u8], wait: bool) -> Result<Option<usize>> {
        self.check_write()?;
        if self.pipe_type == PipeType::Message && data.len() > self.limit as usize {
            return Err(Error::with_message(
                ErrorKind::MessageTooLarge,
                format!(
                    "a {}-byte message is over this pipe's limit of {} bytes",
                    data.len(),
                    self.limit
                ),
            ));
        }
        if self.has_outbox() && !self.flush_step(wait)? {
            return Ok(None);
        }
        // A message is one frame; a byte stream has no boundaries to keep and is sent in
        // frames within the limit (a write of 0 bytes sends nothing).
        let (frame_max, frames) = match self.pipe_type {
            PipeType::Message => (data.len().max(1), 1),
            PipeType::Byte => {
                let max = self.limit as usize;
                (max, data.len().div_ceil(max))
            }
        };
        let frame = |i: usize| &data[i * frame_max..((i + 1) * frame_max).min(data.len())];
        let mut sent_any = false;
        for i in 0..frames {
            let chunk = frame(i);
            let h = frame::data_header(chunk.len() as u32);
            if wait {
                if chunk.len() <= SMALL_WRITE {
                    // Header and payload as one buffer: one plain send.
                    let mut b = [0u8; HEADER_LEN + SMALL_WRITE];
                    b[..HEADER_LEN].copy_from_slice(&h);
                    b[HEADER_LEN..HEADER_LEN + chunk.len()].copy_from_slice(chunk);
                    socket::send_all(&self.sock, &[&b[..HEADER_LEN + chunk.len()]])?;
                } else {
                    socket::send_all(&self.sock, &[&h, chunk])?;
                }
                continue;
            }
            let wire = HEADER_LEN + chunk.len();
            let mut off = 0;
            while off < wire {
                let (a, b): (&[u8], &[u8]) = if off < HEADER_LEN {
                    (&h[off..], chunk)
                } else {
                    (&[], &chunk[off - HEADER_LEN..])
                };
                match socket::send_nowait(&self.sock, &[a, b])? {
                    Some(n) => {
                        off += n;
                        sent_any = true;
                    }
                    None if !sent_any => return Ok(None),
                    None => {
                        // Part of the frame is on its way: the rest must follow it.
                        self.outbox.extend_from_slice(a);
                        self.outbox.extend_from_slice(b);
                        for j in i + 1..frames {
                            let later = frame(j);
                            self.outbox
                                .extend_from_slice(&frame::data_header(later.len() as u32));
                            self.outbox.extend_from_slice(later);
                        }
                        return Ok(Some(data.len()));
                    }
                }
            }
        }
        Ok(Some(data.len()))
    }

    /// Sends what waits in the outbox; `Ok(false)` when some is left and the socket is full
    /// (`!wait`).
    pub(crate) fn flush_step(&mut self, wait: bool) -> Result<bool> {
        while self.out_pos < self.outbox.len() {
            if wait {
                socket::send_all(&self.sock, &[&self.outbox[self.out_pos..]])?;
                self.out_pos = self.outbox.len();
            } else {
                match socket::send_nowait(&self.sock, &[&self.outbox[self.out_pos..]])? {
                    Some(n) => self.out_pos += n,
                    None => return Ok(false),
                }
            }
        }
        if !self.outbox.is_empty() {
            self.outbox = Vec::new();
            self.out_pos = 0;
        }
        Ok(true)
    }

    /// Whether frame bytes wait in the outbox.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn has_outbox(&self) -> bool {
        self.out_pos < self.outbox.len()
    }

    /// `TransactNamedPipe`: writes one message and reads one reply, waiting.
    pub(crate) fn transact(&mut self, request: &[u8], out: &mut [u8]) -> Result<usize> {
        self.check_transact()?;
        self.write(request)?;
        self.read_message(out, true).and_then(waited)
    }

    /// Like [`transact`](Self::transact), returning the whole reply.
    pub(crate) fn transact_to_vec(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        self.check_transact()?;
        self.write(request)?;
        self.read_to_vec()
    }

    /// Whether a transaction may start: a message-type pipe in message read mode, with no
    /// unread data.
    pub(crate) fn check_transact(&mut self) -> Result<()> {
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

/// Sends data frames of one connection over a duplicate of its socket, apart from the
/// connection's reading state (see [`Conn::frame_sender`]). It keeps the same framing as
/// [`Conn::write`]: a message-type pipe gets one frame per send, a byte stream frames within
/// the pipe's limit. Callers that send from several threads hold one lock around each send.
#[derive(Debug)]
pub(crate) struct FrameSender {
    sock: OwnedFd,
    pipe_type: PipeType,
    limit: u32,
    can_write: bool,
}

impl FrameSender {
    /// Another sender over another duplicate of the same socket.
    pub(crate) fn try_clone(&self) -> Result<FrameSender> {
        Ok(FrameSender {
            sock: crate::sys::fd::duplicate(&self.sock)?,
            pipe_type: self.pipe_type,
            limit: self.limit,
            can_write: self.can_write,
        })
    }

    /// The pipe's type.
    pub(crate) fn pipe_type(&self) -> PipeType {
        self.pipe_type
    }

    /// The socket, to wait on its readiness or shut it down (both act on the connection).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Sends `parts` as one message (message-type pipe) or as bytes of the stream, waiting as
    /// needed. Errors as [`Conn::write`]: [`ErrorKind::NoData`] once the other end closed,
    /// [`ErrorKind::MessageTooLarge`] (sending nothing) for a message over the limit.
    pub(crate) fn send(&self, parts: &[&[u8]]) -> Result<()> {
        if !self.can_write {
            return Err(Error::with_message(
                ErrorKind::AccessDenied,
                "this end of the pipe may not write (its open mode is one-way)",
            ));
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let limit = self.limit as usize;
        match self.pipe_type {
            PipeType::Message if total > limit => {
                return Err(Error::with_message(
                    ErrorKind::MessageTooLarge,
                    format!("a {total}-byte message is over this pipe's limit of {limit} bytes"),
                ));
            }
            PipeType::Byte if total == 0 => return Ok(()),
            _ => {}
        }
        if total <= SMALL_WRITE.min(limit) {
            // Header and payload as one buffer: one plain send.
            let mut b = [0u8; HEADER_LEN + SMALL_WRITE];
            b[..HEADER_LEN].copy_from_slice(&frame::data_header(total as u32));
            let mut at = HEADER_LEN;
            for p in parts {
                b[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            return socket::send_all(&self.sock, &[&b[..at]]);
        }
        if total <= limit {
            // One frame: its header and the parts in one vectored send.
            let h = frame::data_header(total as u32);
            if let [a, b] = parts {
                return socket::send_all(&self.sock, &[&h, a, b]);
            }
            let mut v: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
            v.push(&h);
            v.extend_from_slice(parts);
            return socket::send_all(&self.sock, &v);
        }
        // A byte stream over the limit (a message that large was refused above): frames of at
        // most `limit` bytes.
        for p in parts {
            for chunk in p.chunks(limit.max(1)) {
                socket::send_all(
                    &self.sock,
                    &[&frame::data_header(chunk.len() as u32), chunk],
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(pipe_type: PipeType, limit: u32) -> (Conn, Conn) {
        let (a, b) = socket::stream_pair().unwrap();
        let mode = match pipe_type {
            PipeType::Byte => ReadMode::Byte,
            PipeType::Message => ReadMode::Message,
        };
        let open = |s, side| Conn::new(s, side, pipe_type, OpenMode::Duplex, mode, limit).unwrap();
        (open(a, Side::Server), open(b, Side::Client))
    }

    #[test]
    fn a_frame_sender_frames_a_byte_stream_within_the_limit() {
        let (a, mut b) = pair(PipeType::Byte, 100);
        let s = a.frame_sender().unwrap();
        let big: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        s.send(&[b"head", &big[..]]).unwrap();
        s.send(&[b"x", b"yz"]).unwrap();
        s.send(&[]).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        while got.len() < 4 + 700 + 3 {
            let n = b.read(&mut buf).unwrap();
            assert!(n > 0 && n <= 100, "a frame over the limit: {n}");
            got.extend_from_slice(&buf[..n]);
        }
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"xyz");
        assert_eq!(got, want);
        assert!(!b.has_buffered());
        assert_eq!(b.read_step(&mut buf, false).unwrap(), None);
        drop((s, a));
        assert_eq!(b.read(&mut buf).unwrap_err().kind(), ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_frame_sender_sends_one_message_per_send() {
        let (a, mut b) = pair(PipeType::Message, 1000);
        let s = a.frame_sender().unwrap();
        let big = vec![7u8; 900];
        s.send(&[b"ab", b"cd", b"e"]).unwrap();
        s.send(&[&big[..10], &big[10..]]).unwrap();
        let e = s.send(&[&big[..], &big[..200]]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MessageTooLarge);
        assert_eq!(b.read_to_vec().unwrap(), b"abcde");
        assert_eq!(b.read_to_vec().unwrap(), big);
        assert_eq!(b.read_step(&mut [0u8; 10], false).unwrap(), None);
    }
}
