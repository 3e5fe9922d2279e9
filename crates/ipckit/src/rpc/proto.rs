//! The RPC wire protocol as state machines that do no I/O (see `docs/protocol/rpc.md`).
//!
//! Windows counterpart: the connection-oriented DCE/RPC PDUs (`bind`, `bind_ack`, `request`,
//! `response`, `fault`, `co_cancel`) that `rpcrt4` exchanges; ipckit's frames are simpler (a
//! fixed 16-byte little-endian header), but the negotiation and status codes are the same.
//!
//! ```
//! use ipckit::rpc::proto::{ClientProto, Decoder, ServerProto, ClientEvent, ServerEvent, Outcome};
//! use ipckit::rpc::{InterfaceId, Uuid};
//!
//! let iface = InterfaceId::new(Uuid::from_u128(7), 1, 0);
//! let mut client = ClientProto::new(iface, 1 << 20);
//! let mut server = ServerProto::new(vec![(iface, 4)], 1 << 20, 16);
//! let (mut to_server, mut to_client) = (Decoder::new(1 << 20), Decoder::new(1 << 20));
//!
//! // Bind: the server accepts interface 7, version 1.0.
//! to_server.push(&client.bind());
//! let ServerEvent::Send(ack) = server.on_frame(to_server.next_frame()?.unwrap())? else { panic!() };
//! to_client.push(&ack);
//! assert!(matches!(client.on_frame(to_client.next_frame()?.unwrap())?, ClientEvent::Bound { .. }));
//!
//! // One call: opnum 2, arguments b"args", answered with b"result".
//! let (id, head) = client.request(2, b"args", false, None)?;
//! to_server.push(&head);
//! to_server.push(b"args");
//! let ServerEvent::Call(call) = server.on_frame(to_server.next_frame()?.unwrap())? else { panic!() };
//! assert_eq!((call.opnum, call.args()), (2, &b"args"[..]));
//! let reply = server.complete(call.call_id, Outcome::Ok(b"result".to_vec())).unwrap();
//! to_client.push(&reply);
//! match client.on_frame(to_client.next_frame()?.unwrap())? {
//!     ClientEvent::Reply { call_id, result } => {
//!         assert_eq!(call_id, id);
//!         assert_eq!(result?.body(), b"result");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{InterfaceId, Uuid};
use crate::error::{Error, ErrorKind, Result};

/// First byte of every frame.
pub const MAGIC: u8 = 0xC5;
/// Protocol version carried in every frame.
pub const VERSION: u8 = 1;
/// Size of the frame header.
pub const HEADER_LEN: usize = 16;
/// Largest body any side accepts, whatever it announces (64 MiB).
pub const MAX_BODY_LIMIT: u32 = 64 << 20;
/// Longest fault message kept (longer ones are cut).
pub const MAX_FAULT_MESSAGE: usize = 1024;

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Client → server: bind to an interface. DCE/RPC: `bind`.
    Bind = 1,
    /// Server → client: the bind's answer. DCE/RPC: `bind_ack` / `bind_nak`.
    BindAck = 2,
    /// Client → server: a call. DCE/RPC: `request`.
    Request = 3,
    /// Server → client: a call's result. DCE/RPC: `response`.
    Response = 4,
    /// Server → client: a call failed (or, with call id 0, the connection). DCE/RPC: `fault`.
    Fault = 5,
    /// Client → server: the caller gave up on a call. DCE/RPC: `co_cancel`.
    Cancel = 6,
}

impl FrameType {
    fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            1 => FrameType::Bind,
            2 => FrameType::BindAck,
            3 => FrameType::Request,
            4 => FrameType::Response,
            5 => FrameType::Fault,
            6 => FrameType::Cancel,
            _ => return None,
        })
    }
}

/// Request flag: a one-way (`[maybe]`) call; the server sends nothing back.
pub const FLAG_ONEWAY: u8 = 1;
/// Response flag: the body is the method's application error, not its result.
pub const FLAG_APP_ERROR: u8 = 2;

/// Status codes carried by faults and bind acknowledgements.
pub mod status {
    /// Success.
    pub const OK: u32 = 0;
    /// `ERROR_INVALID_PARAMETER`: a frame was larger than the receiver accepts.
    pub const TOO_LARGE: u32 = 87;
    /// `RPC_S_UNKNOWN_IF`: no such interface, or no compatible version.
    pub const UNKNOWN_IF: u32 = 1717;
    /// `RPC_S_SERVER_UNAVAILABLE`.
    pub const SERVER_UNAVAILABLE: u32 = 1722;
    /// `RPC_S_SERVER_TOO_BUSY`: too many calls in flight on the connection.
    pub const SERVER_TOO_BUSY: u32 = 1723;
    /// `RPC_S_CALL_FAILED`: the method failed (panicked) on the server.
    pub const CALL_FAILED: u32 = 1726;
    /// `RPC_S_PROTOCOL_ERROR`.
    pub const PROTOCOL_ERROR: u32 = 1728;
    /// `RPC_S_PROCNUM_OUT_OF_RANGE`.
    pub const PROCNUM_OUT_OF_RANGE: u32 = 1745;
    /// `RPC_X_BAD_STUB_DATA`: the arguments could not be decoded.
    pub const BAD_STUB_DATA: u32 = 1783;
    /// `RPC_S_CALL_CANCELLED`: cancelled by the client, or its time ran out on the server.
    pub const CALL_CANCELLED: u32 = 1818;
}

/// The [`Error`] a status code stands for.
pub fn status_error(code: u32, message: &str) -> Error {
    let kind = match code {
        status::UNKNOWN_IF => ErrorKind::UnknownInterface,
        status::PROCNUM_OUT_OF_RANGE => ErrorKind::ProcNumOutOfRange,
        status::CALL_CANCELLED => ErrorKind::CallCancelled,
        status::PROTOCOL_ERROR | status::BAD_STUB_DATA => ErrorKind::Protocol,
        status::TOO_LARGE => ErrorKind::MessageTooLarge,
        status::SERVER_UNAVAILABLE => ErrorKind::ServerUnavailable,
        status::SERVER_TOO_BUSY => ErrorKind::Full,
        258 => ErrorKind::Timeout,
        _ => ErrorKind::CallFailed,
    };
    let e = if message.is_empty() {
        Error::new(kind)
    } else {
        Error::with_message(kind, format!("server: {message}"))
    };
    if kind.win32_code() == code {
        e
    } else {
        e.with_win32_code(code)
    }
}

/// A frame header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub ty: FrameType,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Call id (0 for bind, bind-ack and connection faults).
    pub call_id: u32,
    /// Opnum (request), status (bind-ack, fault), 0 otherwise.
    pub aux: u32,
    /// Body length.
    pub len: u32,
}

impl Header {
    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = MAGIC;
        h[1] = VERSION;
        h[2] = self.ty as u8;
        h[3] = self.flags;
        h[4..8].copy_from_slice(&self.call_id.to_le_bytes());
        h[8..12].copy_from_slice(&self.aux.to_le_bytes());
        h[12..16].copy_from_slice(&self.len.to_le_bytes());
        h
    }

    /// Decodes and checks 16 header bytes (magic, version, type).
    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<Header> {
        if h[0] != MAGIC || h[1] != VERSION {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                format!(
                    "not an ipckit RPC frame (magic {:#04x}, version {})",
                    h[0], h[1]
                ),
            ));
        }
        let ty = FrameType::from_u8(h[2]).ok_or_else(|| {
            Error::with_message(ErrorKind::Protocol, format!("unknown frame type {}", h[2]))
        })?;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        Ok(Header {
            ty,
            flags: h[3],
            call_id: word(4),
            aux: word(8),
            len: word(12),
        })
    }
}

/// One complete frame: its header and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: Header,
    bytes: Vec<u8>,
    /// The body was larger than the receiver's limit and was discarded.
    pub oversized: bool,
}

impl Frame {
    /// The body (empty when it was discarded as oversized).
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN.min(self.bytes.len())..]
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        if self.bytes.capacity() >= HAND_OVER {
            pool::give(std::mem::take(&mut self.bytes));
        }
    }
}

/// Buffers of large frames, kept for the next large frame: a fresh allocation of a megabyte is
/// a fresh mapping whose pages fault in one by one (several times the cost of filling them),
/// and the allocator gives such memory back as soon as it is freed. At most [`pool::KEEP`]
/// buffers of at most [`pool::LARGEST`] bytes are kept per process.
pub(crate) mod pool {
    use std::sync::Mutex;

    pub(crate) const KEEP: usize = 4;
    pub(crate) const LARGEST: usize = 8 << 20;
    /// Smallest buffer worth keeping.
    pub(crate) const SMALLEST: usize = super::HAND_OVER;

    static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    /// A kept buffer with room for `need` bytes (its `len()` bytes are initialized, with any
    /// values).
    pub(crate) fn take(need: usize) -> Option<Vec<u8>> {
        let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let i = p.iter().position(|b| b.capacity() >= need)?;
        Some(p.swap_remove(i))
    }

    /// Keeps `buf` for a later large frame, if there is room.
    pub(crate) fn give(buf: Vec<u8>) {
        if !(SMALLEST..=LARGEST).contains(&buf.capacity()) {
            return;
        }
        let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < KEEP {
            p.push(buf);
        } else if let Some(small) = p.iter_mut().min_by_key(|b| b.capacity())
            && small.capacity() < buf.capacity()
        {
            *small = buf;
        }
    }
}

/// Cuts a byte stream into frames, bounding memory before allocating.
///
/// A body longer than the decoder's limit is discarded as it arrives (never buffered) and
/// reported as a frame with [`Frame::oversized`] set, so that the receiver can answer that call
/// with a fault and go on with the connection.
#[derive(Debug)]
pub struct Decoder {
    /// Received bytes are `buf[start..end]`; `buf[end..]` is zeroed room kept for the next
    /// reads (so that it is not zeroed again on every read).
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    start: usize,
    /// End of received bytes in `buf`.
    end: usize,
    max_body: u32,
    /// Bytes of an oversized body still to discard.
    skip: u64,
}

/// Bytes read at a time while no frame header says how much is coming.
const READ_CHUNK: usize = 64 * 1024;
/// A frame at least this long that fills the whole buffer is handed over with the buffer
/// itself rather than copied out.
const HAND_OVER: usize = 64 * 1024;

impl Decoder {
    /// A decoder accepting bodies of up to `max_body` bytes (capped at [`MAX_BODY_LIMIT`]).
    pub fn new(max_body: u32) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_body: max_body.min(MAX_BODY_LIMIT),
            skip: 0,
        }
    }

    /// The body limit.
    pub fn max_body(&self) -> u32 {
        self.max_body
    }

    /// Whether nothing received is left to decode (no buffered bytes, nothing to discard).
    pub fn is_drained(&self) -> bool {
        self.end == self.start && self.skip == 0
    }

    /// Appends received bytes.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.skip > 0 {
            let n = (self.skip.min(data.len() as u64)) as usize;
            self.skip -= n as u64;
            data = &data[n..];
        }
        self.compact();
        self.buf.truncate(self.end);
        self.buf.extend_from_slice(data);
        self.end = self.buf.len();
    }

    /// Lets `read` write received bytes straight into the decoder's buffer (at most what the
    /// current frame still needs, or 64 KiB while no header is known); returns what `read`
    /// returned. `read` returning 0 means the end of the stream and adds nothing.
    pub fn fill(&mut self, read: impl FnOnce(&mut [u8]) -> Result<usize>) -> Result<usize> {
        self.compact();
        let have = self.end - self.start;
        if self.skip > 0 {
            let want = self.skip.min(READ_CHUNK as u64) as usize;
            self.grow(self.end + want);
            let n = read(&mut self.buf[self.end..self.end + want])?;
            let n = n.min(want);
            self.skip -= n as u64;
            return Ok(n);
        }
        let want = if have >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
            match Header::decode(&h) {
                Ok(hd) if hd.len <= self.max_body => {
                    (HEADER_LEN + hd.len as usize).saturating_sub(have).max(1)
                }
                _ => READ_CHUNK,
            }
        } else {
            READ_CHUNK.max(HEADER_LEN - have)
        }
        .max(READ_CHUNK.min(4096));
        let old = self.end;
        self.grow(old + want);
        let r = read(&mut self.buf[old..old + want]);
        let n = match &r {
            Ok(n) => (*n).min(want),
            Err(_) => 0,
        };
        self.end = old + n;
        r.map(|_| n)
    }

    /// Makes `buf[..need]` initialized room (the received bytes are at its start).
    fn grow(&mut self, need: usize) {
        if self.buf.len() >= need {
            return;
        }
        if need >= HAND_OVER
            && self.buf.capacity() < need
            && let Some(mut kept) = pool::take(need)
        {
            if kept.len() < self.end {
                kept.resize(self.end, 0);
            }
            kept[..self.end].copy_from_slice(&self.buf[..self.end]);
            let old = std::mem::replace(&mut self.buf, kept);
            if old.capacity() >= HAND_OVER {
                pool::give(old);
            }
        }
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            if self.start < self.end {
                self.buf.copy_within(self.start..self.end, 0);
            }
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed. An error (bad magic,
    /// version or type) means the stream cannot be resynchronised: close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        let have = self.end - self.start;
        if have < HEADER_LEN {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        let header = Header::decode(&h)?;
        if header.len > self.max_body {
            // Discard the body: what is buffered now, the rest as it arrives.
            let buffered = (have - HEADER_LEN).min(header.len as usize);
            self.start += HEADER_LEN + buffered;
            self.skip = u64::from(header.len) - buffered as u64;
            return Ok(Some(Frame {
                header,
                bytes: h.to_vec(),
                oversized: true,
            }));
        }
        let total = HEADER_LEN + header.len as usize;
        if have < total {
            return Ok(None);
        }
        let bytes = if self.start == 0 && self.end == total && total >= HAND_OVER {
            let mut b = std::mem::take(&mut self.buf);
            b.truncate(total);
            self.end = 0;
            b
        } else {
            let b = self.buf[self.start..self.start + total].to_vec();
            self.start += total;
            // Room kept after an exceptionally large frame is given back once drained.
            if self.start == self.end && self.buf.len() > 4 * HAND_OVER.max(READ_CHUNK) * 16 {
                self.buf = Vec::new();
                self.start = 0;
                self.end = 0;
            }
            b
        };
        Ok(Some(Frame {
            header,
            bytes,
            oversized: false,
        }))
    }
}

fn frame(ty: FrameType, flags: u8, call_id: u32, aux: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + body.len());
    v.extend_from_slice(
        &Header {
            ty,
            flags,
            call_id,
            aux,
            len: body.len() as u32,
        }
        .encode(),
    );
    v.extend_from_slice(body);
    v
}

/// A fault frame for `call_id` (0: the whole connection).
pub fn fault_frame(call_id: u32, code: u32, message: &str) -> Vec<u8> {
    let mut end = message.len().min(MAX_FAULT_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    frame(
        FrameType::Fault,
        0,
        call_id,
        code,
        &message.as_bytes()[..end],
    )
}

fn protocol(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_message(ErrorKind::Protocol, msg)
}

/// The answer to a call, as the client state machine reports it.
#[derive(Debug)]
pub struct Reply {
    frame: Frame,
    /// The body is the method's application error.
    pub app_error: bool,
}

impl Reply {
    /// An empty reply (what a one-way call gives).
    pub fn empty() -> Reply {
        Reply {
            frame: Frame {
                header: Header {
                    ty: FrameType::Response,
                    flags: 0,
                    call_id: 0,
                    aux: 0,
                    len: 0,
                },
                bytes: Vec::new(),
                oversized: false,
            },
            app_error: false,
        }
    }

    /// The encoded result (or application error).
    pub fn body(&self) -> &[u8] {
        self.frame.body()
    }
}

/// What the client learns from a frame.
#[derive(Debug)]
pub enum ClientEvent {
    /// The bind was accepted; the server's version and body limit.
    Bound {
        /// Server's major version.
        major: u16,
        /// Server's minor version.
        minor: u16,
        /// Largest request body the server accepts.
        max_body: u32,
    },
    /// A call ended: its reply or its fault.
    Reply {
        /// The call.
        call_id: u32,
        /// The result.
        result: Result<Reply>,
    },
    /// The answer to a call the client had cancelled or timed out: nothing to do.
    Ignored,
}

#[derive(Debug, PartialEq, Eq)]
enum ClientState {
    Unbound,
    Binding,
    Bound,
}

/// The client side of one connection.
///
/// Windows counterpart: the client half of `rpcrt4`'s connection (bind negotiation, call ids,
/// matching responses to calls).
#[derive(Debug)]
pub struct ClientProto {
    iface: InterfaceId,
    max_body: u32,
    peer_max: u32,
    state: ClientState,
    next_id: u32,
    pending: HashSet<u32>,
    abandoned: HashSet<u32>,
}

impl ClientProto {
    /// A client for `iface` accepting reply bodies up to `max_body` bytes.
    pub fn new(iface: InterfaceId, max_body: u32) -> ClientProto {
        ClientProto {
            iface,
            max_body: max_body.min(MAX_BODY_LIMIT),
            peer_max: 0,
            state: ClientState::Unbound,
            next_id: 1,
            pending: HashSet::new(),
            abandoned: HashSet::new(),
        }
    }

    /// The bind frame to send first.
    pub fn bind(&mut self) -> Vec<u8> {
        self.state = ClientState::Binding;
        let mut body = Vec::with_capacity(24);
        body.extend_from_slice(self.iface.uuid.as_bytes());
        body.extend_from_slice(&self.iface.major.to_le_bytes());
        body.extend_from_slice(&self.iface.minor.to_le_bytes());
        body.extend_from_slice(&self.max_body.to_le_bytes());
        frame(FrameType::Bind, 0, 0, 0, &body)
    }

    /// Whether the bind was accepted.
    pub fn is_bound(&self) -> bool {
        self.state == ClientState::Bound
    }

    /// Calls waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Starts a call: its id and the frame header (and timeout word) to send before `args`.
    /// A one-way call is forgotten at once (no answer comes).
    pub fn request(
        &mut self,
        opnum: u16,
        args: &[u8],
        oneway: bool,
        timeout: Option<Duration>,
    ) -> Result<(u32, [u8; HEADER_LEN + 4])> {
        if self.state != ClientState::Bound {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "not bound yet",
            ));
        }
        let len = args.len() as u64 + 4;
        if len > u64::from(self.peer_max) {
            return Err(Error::with_message(
                ErrorKind::MessageTooLarge,
                format!(
                    "arguments of {} bytes exceed the server's limit of {} bytes",
                    args.len(),
                    self.peer_max.saturating_sub(4)
                ),
            ));
        }
        let mut id = self.next_id;
        while id == 0 || self.pending.contains(&id) || self.abandoned.contains(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        if !oneway {
            self.pending.insert(id);
        }
        let ms = timeout.map_or(0, |t| t.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        let mut out = [0u8; HEADER_LEN + 4];
        out[..HEADER_LEN].copy_from_slice(
            &Header {
                ty: FrameType::Request,
                flags: if oneway { FLAG_ONEWAY } else { 0 },
                call_id: id,
                aux: u32::from(opnum),
                len: len as u32,
            }
            .encode(),
        );
        out[HEADER_LEN..].copy_from_slice(&ms.to_le_bytes());
        Ok((id, out))
    }

    /// Gives up on a call (timeout, caller dropped it): the cancel frame to send, if the call
    /// was still waiting. A late answer is then ignored.
    pub fn cancel(&mut self, call_id: u32) -> Option<Vec<u8>> {
        if self.pending.remove(&call_id) {
            self.abandoned.insert(call_id);
            Some(frame(FrameType::Cancel, 0, call_id, 0, &[]))
        } else {
            None
        }
    }

    /// Handles a frame from the server. An error ends the connection (every waiting call
    /// should then fail with it).
    pub fn on_frame(&mut self, f: Frame) -> Result<ClientEvent> {
        let h = f.header;
        match h.ty {
            FrameType::BindAck => {
                if self.state != ClientState::Binding {
                    return Err(protocol("unexpected bind-ack"));
                }
                let b = f.body();
                if f.oversized || b.len() != 8 {
                    return Err(protocol("bad bind-ack body"));
                }
                let major = u16::from_le_bytes([b[0], b[1]]);
                let minor = u16::from_le_bytes([b[2], b[3]]);
                let max_body = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                if h.aux != status::OK {
                    self.state = ClientState::Unbound;
                    let msg = format!(
                        "the server does not offer interface {} v{}.{} (server version {major}.{minor})",
                        self.iface.uuid, self.iface.major, self.iface.minor
                    );
                    return Err(status_error(h.aux, &msg));
                }
                if max_body < 4 {
                    return Err(protocol("bind-ack with a body limit below 4"));
                }
                self.peer_max = max_body.min(MAX_BODY_LIMIT);
                self.state = ClientState::Bound;
                Ok(ClientEvent::Bound {
                    major,
                    minor,
                    max_body,
                })
            }
            FrameType::Response | FrameType::Fault => {
                if h.call_id == 0 {
                    if h.ty == FrameType::Fault {
                        let msg = String::from_utf8_lossy(f.body()).into_owned();
                        return Err(status_error(h.aux, &msg));
                    }
                    return Err(protocol("response with call id 0"));
                }
                if self.abandoned.remove(&h.call_id) {
                    return Ok(ClientEvent::Ignored);
                }
                if !self.pending.remove(&h.call_id) {
                    return Err(protocol(format!("answer to unknown call {}", h.call_id)));
                }
                let result = if f.oversized {
                    Err(Error::with_message(
                        ErrorKind::MessageTooLarge,
                        format!(
                            "the reply of {} bytes exceeds this client's limit of {} bytes",
                            h.len, self.max_body
                        ),
                    ))
                } else if h.ty == FrameType::Fault {
                    Err(status_error(h.aux, &String::from_utf8_lossy(f.body())))
                } else {
                    Ok(Reply {
                        app_error: h.flags & FLAG_APP_ERROR != 0,
                        frame: f,
                    })
                };
                Ok(ClientEvent::Reply {
                    call_id: h.call_id,
                    result,
                })
            }
            other => Err(protocol(format!(
                "unexpected {other:?} frame from the server"
            ))),
        }
    }

    /// The ids of every waiting call (to fail them when the connection ends).
    pub fn drain_pending(&mut self) -> Vec<u32> {
        self.abandoned.clear();
        self.pending.drain().collect()
    }
}

/// A call the server is to run.
#[derive(Debug)]
pub struct Call {
    /// The call id.
    pub call_id: u32,
    /// The procedure number.
    pub opnum: u16,
    /// One-way: run it, send nothing back.
    pub oneway: bool,
    /// The client's timeout for the call (`None`: none given).
    pub timeout: Option<Duration>,
    frame: Frame,
}

impl Call {
    /// The encoded arguments.
    pub fn args(&self) -> &[u8] {
        &self.frame.body()[4..]
    }
}

/// What the server does with a frame.
#[derive(Debug)]
pub enum ServerEvent {
    /// Send these bytes (a bind-ack or a fault), nothing else to do.
    Send(Vec<u8>),
    /// Run this call; its index among the registered interfaces is [`ServerProto::bound`].
    Call(Call),
    /// The client cancelled this call: send the fault and tell the method.
    Cancel {
        /// The call.
        call_id: u32,
        /// The fault frame to send.
        fault: Vec<u8>,
    },
    /// Nothing to do.
    None,
}

/// How a call ended on the server.
#[derive(Debug)]
pub enum Outcome {
    /// The encoded result.
    Ok(Vec<u8>),
    /// The encoded application error.
    AppError(Vec<u8>),
    /// A fault: status code and message.
    Fault(u32, String),
}

/// The server side of one connection.
///
/// Windows counterpart: the server half of `rpcrt4`'s connection: interface and version
/// negotiation against the interfaces registered with `RpcServerRegisterIf`, call ids, cancels.
#[derive(Debug)]
pub struct ServerProto {
    interfaces: Vec<(InterfaceId, u16)>,
    max_body: u32,
    peer_max: u32,
    max_in_flight: usize,
    bound: Option<usize>,
    in_flight: HashSet<u32>,
    cancelled: HashMap<u32, ()>,
}

impl ServerProto {
    /// A server offering `interfaces` (each with its number of procedures), accepting request
    /// bodies up to `max_body` bytes and up to `max_in_flight` calls at once per connection.
    pub fn new(interfaces: Vec<(InterfaceId, u16)>, max_body: u32, max_in_flight: usize) -> Self {
        ServerProto {
            interfaces,
            max_body: max_body.clamp(4, MAX_BODY_LIMIT),
            peer_max: 0,
            max_in_flight: max_in_flight.max(1),
            bound: None,
            in_flight: HashSet::new(),
            cancelled: HashMap::new(),
        }
    }

    /// The index of the interface the client bound to.
    pub fn bound(&self) -> Option<usize> {
        self.bound
    }

    /// Calls started and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Handles a frame from the client. An error means the client broke the protocol: send
    /// [`fault_frame`]`(0, 1728, ..)` if possible and close the connection.
    pub fn on_frame(&mut self, f: Frame) -> Result<ServerEvent> {
        let h = f.header;
        match h.ty {
            FrameType::Bind => {
                if self.bound.is_some() {
                    return Err(protocol("second bind on a connection"));
                }
                let b = f.body();
                if f.oversized || b.len() != 24 {
                    return Err(protocol("bad bind body"));
                }
                let mut u = [0u8; 16];
                u.copy_from_slice(&b[..16]);
                let uuid = Uuid::from_bytes(u);
                let major = u16::from_le_bytes([b[16], b[17]]);
                let minor = u16::from_le_bytes([b[18], b[19]]);
                let peer_max = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
                let found = self.interfaces.iter().position(|(i, _)| i.uuid == uuid);
                let mut body = [0u8; 8];
                body[4..].copy_from_slice(&self.max_body.to_le_bytes());
                let code = match found {
                    Some(idx) => {
                        let offered = self.interfaces[idx].0;
                        body[..2].copy_from_slice(&offered.major.to_le_bytes());
                        body[2..4].copy_from_slice(&offered.minor.to_le_bytes());
                        if offered.major == major && offered.minor >= minor {
                            self.bound = Some(idx);
                            self.peer_max = peer_max.min(MAX_BODY_LIMIT);
                            status::OK
                        } else {
                            status::UNKNOWN_IF
                        }
                    }
                    None => status::UNKNOWN_IF,
                };
                Ok(ServerEvent::Send(frame(
                    FrameType::BindAck,
                    0,
                    0,
                    code,
                    &body,
                )))
            }
            FrameType::Request => {
                let Some(idx) = self.bound else {
                    return Err(protocol("request before bind"));
                };
                let oneway = h.flags & FLAG_ONEWAY != 0;
                if h.call_id == 0 {
                    return Err(protocol("request with call id 0"));
                }
                if self.in_flight.contains(&h.call_id) {
                    return Err(protocol(format!("call id {} already in flight", h.call_id)));
                }
                let reply_fault = |code: u32, msg: String| {
                    if oneway {
                        ServerEvent::None
                    } else {
                        ServerEvent::Send(fault_frame(h.call_id, code, &msg))
                    }
                };
                if f.oversized {
                    return Ok(reply_fault(
                        status::TOO_LARGE,
                        format!(
                            "request of {} bytes exceeds the limit of {}",
                            h.len, self.max_body
                        ),
                    ));
                }
                if f.body().len() < 4 {
                    return Err(protocol("request body shorter than its timeout word"));
                }
                let n_ops = self.interfaces[idx].1;
                if h.aux >= u32::from(n_ops) {
                    return Ok(reply_fault(
                        status::PROCNUM_OUT_OF_RANGE,
                        format!(
                            "procedure {} out of range (the interface has {n_ops})",
                            h.aux
                        ),
                    ));
                }
                if self.in_flight.len() >= self.max_in_flight {
                    return Ok(reply_fault(
                        status::SERVER_TOO_BUSY,
                        format!(
                            "more than {} calls in flight on one connection",
                            self.max_in_flight
                        ),
                    ));
                }
                let b = f.body();
                let ms = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !oneway {
                    self.in_flight.insert(h.call_id);
                }
                Ok(ServerEvent::Call(Call {
                    call_id: h.call_id,
                    opnum: h.aux as u16,
                    oneway,
                    timeout: (ms > 0).then(|| Duration::from_millis(u64::from(ms))),
                    frame: f,
                }))
            }
            FrameType::Cancel => {
                if self.in_flight.remove(&h.call_id) {
                    self.cancelled.insert(h.call_id, ());
                    Ok(ServerEvent::Cancel {
                        call_id: h.call_id,
                        fault: fault_frame(
                            h.call_id,
                            status::CALL_CANCELLED,
                            "cancelled by the client",
                        ),
                    })
                } else {
                    // The call already ended: its answer crossed the cancel.
                    Ok(ServerEvent::None)
                }
            }
            other => Err(protocol(format!(
                "unexpected {other:?} frame from a client"
            ))),
        }
    }

    /// Ends a call: the frame to send, or `None` when the call was cancelled (or timed out)
    /// meanwhile and its answer was already sent.
    pub fn complete(&mut self, call_id: u32, outcome: Outcome) -> Option<Vec<u8>> {
        if !self.in_flight.remove(&call_id) {
            self.cancelled.remove(&call_id);
            return None;
        }
        Some(match outcome {
            Outcome::Ok(body) if body.len() as u64 > u64::from(self.peer_max) => fault_frame(
                call_id,
                status::TOO_LARGE,
                &format!(
                    "result of {} bytes exceeds the client's limit of {}",
                    body.len(),
                    self.peer_max
                ),
            ),
            Outcome::AppError(body) if body.len() as u64 > u64::from(self.peer_max) => fault_frame(
                call_id,
                status::TOO_LARGE,
                "application error too large for the client",
            ),
            Outcome::Ok(body) => frame(FrameType::Response, 0, call_id, 0, &body),
            Outcome::AppError(body) => {
                frame(FrameType::Response, FLAG_APP_ERROR, call_id, 0, &body)
            }
            Outcome::Fault(code, msg) => fault_frame(call_id, code, &msg),
        })
    }

    /// The header of a successful response with a body of `len` bytes (so a large result can
    /// be sent without copying it behind the header), or `None` as for [`complete`](Self::complete).
    pub fn complete_ok_header(
        &mut self,
        call_id: u32,
        len: usize,
    ) -> Option<std::result::Result<[u8; HEADER_LEN], Vec<u8>>> {
        if !self.in_flight.remove(&call_id) {
            self.cancelled.remove(&call_id);
            return None;
        }
        if len as u64 > u64::from(self.peer_max) {
            return Some(Err(fault_frame(
                call_id,
                status::TOO_LARGE,
                &format!(
                    "result of {len} bytes exceeds the client's limit of {}",
                    self.peer_max
                ),
            )));
        }
        Some(Ok(Header {
            ty: FrameType::Response,
            flags: 0,
            call_id,
            aux: 0,
            len: len as u32,
        }
        .encode()))
    }

    /// Times out a call on the server (its deadline passed before it ended): the fault to send.
    pub fn expire(&mut self, call_id: u32) -> Option<Vec<u8>> {
        if self.in_flight.remove(&call_id) {
            self.cancelled.insert(call_id, ());
            Some(fault_frame(
                call_id,
                status::CALL_CANCELLED,
                "the call's time ran out on the server",
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn iface(minor: u16) -> InterfaceId {
        InterfaceId::new(Uuid::from_u128(0xabcdef), 2, minor)
    }

    /// A client and a server connected by simulated I/O: bytes are moved in chunks of `chunk`.
    struct Sim {
        c: ClientProto,
        s: ServerProto,
        to_s: Decoder,
        to_c: Decoder,
        chunk: usize,
    }

    impl Sim {
        fn new(client_minor: u16, server_minor: u16, chunk: usize) -> Sim {
            Sim {
                c: ClientProto::new(iface(client_minor), 1 << 16),
                s: ServerProto::new(vec![(iface(server_minor), 3)], 1 << 16, 8),
                to_s: Decoder::new(1 << 16),
                to_c: Decoder::new(1 << 16),
                chunk,
            }
        }
        fn feed(d: &mut Decoder, bytes: &[u8], chunk: usize) {
            let mut rest = bytes;
            while !rest.is_empty() {
                let n = chunk.min(rest.len()).max(1);
                let mut now = &rest[..n];
                rest = &rest[n..];
                while !now.is_empty() {
                    let k = d
                        .fill(|buf| {
                            let k = now.len().min(buf.len());
                            buf[..k].copy_from_slice(&now[..k]);
                            Ok(k)
                        })
                        .unwrap();
                    now = &now[k..];
                }
            }
        }
        fn deliver_server(&mut self, bytes: &[u8]) -> Vec<ServerEvent> {
            Self::feed(&mut self.to_s, bytes, self.chunk);
            let mut out = vec![];
            while let Some(f) = self.to_s.next_frame().unwrap() {
                out.push(self.s.on_frame(f).unwrap());
            }
            out
        }
        fn deliver_client(&mut self, bytes: &[u8]) -> Vec<ClientEvent> {
            Self::feed(&mut self.to_c, bytes, self.chunk);
            let mut out = vec![];
            while let Some(f) = self.to_c.next_frame().unwrap() {
                out.push(self.c.on_frame(f).unwrap());
            }
            out
        }
        fn bind(&mut self) -> Result<ClientEvent> {
            let b = self.c.bind();
            let ev = self.deliver_server(&b);
            let ServerEvent::Send(ack) = &ev[0] else {
                panic!("{ev:?}")
            };
            Self::feed(&mut self.to_c, ack, self.chunk);
            let f = self.to_c.next_frame().unwrap().unwrap();
            self.c.on_frame(f)
        }
    }

    #[test]
    fn version_negotiation() {
        // Server minor >= client minor: accepted.
        assert!(matches!(
            Sim::new(1, 3, 7).bind(),
            Ok(ClientEvent::Bound {
                major: 2,
                minor: 3,
                ..
            })
        ));
        // Server minor < client minor: RPC_S_UNKNOWN_IF.
        let e = Sim::new(4, 3, 7).bind().unwrap_err();
        assert_eq!(
            (e.kind(), e.win32_code()),
            (ErrorKind::UnknownInterface, 1717)
        );
        // Major differs.
        let mut sim = Sim::new(0, 0, 100);
        sim.c = ClientProto::new(InterfaceId::new(Uuid::from_u128(0xabcdef), 3, 0), 1 << 16);
        assert_eq!(sim.bind().unwrap_err().win32_code(), 1717);
        // Unknown UUID.
        let mut sim = Sim::new(0, 0, 100);
        sim.c = ClientProto::new(InterfaceId::new(Uuid::from_u128(1), 2, 0), 1 << 16);
        assert_eq!(sim.bind().unwrap_err().kind(), ErrorKind::UnknownInterface);
    }

    #[test]
    fn calls_out_of_order_faults_cancel_oneway() {
        let mut sim = Sim::new(0, 0, 3);
        sim.bind().unwrap();
        let mut calls = vec![];
        for op in 0..3u16 {
            let args = vec![op as u8; 100 * op as usize];
            let (id, head) = sim.c.request(op, &args, false, None).unwrap();
            let mut bytes = head.to_vec();
            bytes.extend_from_slice(&args);
            let mut ev = sim.deliver_server(&bytes);
            let Some(ServerEvent::Call(call)) = ev.pop() else {
                panic!()
            };
            assert_eq!((call.call_id, call.opnum, call.args()), (id, op, &args[..]));
            calls.push(call);
        }
        // Opnum 3 is out of range: a fault to that caller only.
        let (bad, head) = sim.c.request(3, &[], false, None).unwrap();
        let ev = sim.deliver_server(&head);
        let ServerEvent::Send(fault) = &ev[0] else {
            panic!()
        };
        let ev = sim.deliver_client(fault);
        let ClientEvent::Reply { call_id, result } = &ev[0] else {
            panic!()
        };
        assert_eq!(*call_id, bad);
        assert_eq!(result.as_ref().unwrap_err().win32_code(), 1745);
        // Answers in reverse order, one as an application error.
        let c2 = calls.pop().unwrap();
        let out = sim
            .s
            .complete(c2.call_id, Outcome::AppError(vec![9]))
            .unwrap();
        let ev = sim.deliver_client(&out);
        let ClientEvent::Reply { result: Ok(r), .. } = &ev[0] else {
            panic!()
        };
        assert!(r.app_error);
        assert_eq!(r.body(), [9]);
        // Cancel call 1: the server faults it with 1818, its late completion sends nothing.
        let c1 = calls.pop().unwrap();
        let cancel = sim.c.cancel(c1.call_id).unwrap();
        let ev = sim.deliver_server(&cancel);
        let ServerEvent::Cancel { fault, .. } = &ev[0] else {
            panic!()
        };
        assert!(matches!(sim.deliver_client(fault)[0], ClientEvent::Ignored));
        assert!(sim.s.complete(c1.call_id, Outcome::Ok(vec![])).is_none());
        // One-way: no pending entry, no answer.
        let (_, head) = sim.c.request(0, &[], true, None).unwrap();
        let ev = sim.deliver_server(&head);
        let ServerEvent::Call(ow) = &ev[0] else {
            panic!()
        };
        assert!(ow.oneway);
        assert_eq!(sim.s.in_flight(), 1);
        let c0 = calls.pop().unwrap();
        let out = sim
            .s
            .complete(c0.call_id, Outcome::Fault(1726, "boom".into()))
            .unwrap();
        let ev = sim.deliver_client(&out);
        let ClientEvent::Reply { result: Err(e), .. } = &ev[0] else {
            panic!()
        };
        assert_eq!((e.kind(), e.win32_code()), (ErrorKind::CallFailed, 1726));
        assert_eq!(sim.c.in_flight(), 0);
    }

    #[test]
    fn oversized_request_faults_that_call_and_the_stream_goes_on() {
        let mut sim = Sim::new(0, 0, 1000);
        sim.bind().unwrap();
        sim.c.peer_max = u32::MAX; // pretend the server said more
        let big = vec![1u8; 200_000];
        let (id, head) = sim.c.request(1, &big, false, None).unwrap();
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&big);
        let (id2, head2) = sim.c.request(0, b"x", false, None).unwrap();
        bytes.extend_from_slice(&head2);
        bytes.push(b'x');
        let ev = sim.deliver_server(&bytes);
        assert_eq!(ev.len(), 2);
        let ServerEvent::Send(f) = &ev[0] else {
            panic!()
        };
        let cev = sim.deliver_client(f);
        let ClientEvent::Reply {
            call_id,
            result: Err(e),
        } = &cev[0]
        else {
            panic!()
        };
        assert_eq!((*call_id, e.kind()), (id, ErrorKind::MessageTooLarge));
        let ServerEvent::Call(c) = &ev[1] else {
            panic!()
        };
        assert_eq!((c.call_id, c.args()), (id2, &b"x"[..]));
    }

    #[test]
    fn protocol_violations() {
        let mut s = ServerProto::new(vec![(iface(0), 1)], 1024, 4);
        let req = Frame {
            header: Header {
                ty: FrameType::Request,
                flags: 0,
                call_id: 1,
                aux: 0,
                len: 4,
            },
            bytes: [
                Header {
                    ty: FrameType::Request,
                    flags: 0,
                    call_id: 1,
                    aux: 0,
                    len: 4,
                }
                .encode()
                .to_vec(),
                vec![0; 4],
            ]
            .concat(),
            oversized: false,
        };
        assert_eq!(s.on_frame(req).unwrap_err().kind(), ErrorKind::Protocol);
        let mut d = Decoder::new(1024);
        d.push(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(d.next_frame().unwrap_err().kind(), ErrorKind::Protocol);
    }

    proptest! {
        #[test]
        fn decoder_never_panics_and_bounds_memory(data in proptest::collection::vec(any::<u8>(), 0..4096), cut in 1..64usize) {
            let mut d = Decoder::new(256);
            let mut s = ServerProto::new(vec![(iface(0), 2)], 256, 4);
            for chunk in data.chunks(cut) {
                d.push(chunk);
                prop_assert!(d.buf.len() <= 4096 + 256 + HEADER_LEN);
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => { prop_assert!(f.body().len() <= 256); let _ = s.on_frame(f); }
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
            }
        }

        #[test]
        fn valid_headers_with_random_fields_never_panic(ty in 0..8u8, flags: u8, id: u32, aux: u32, len in 0..600u32, body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut bytes = vec![MAGIC, VERSION, ty, flags];
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&aux.to_le_bytes());
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&body);
            let mut d = Decoder::new(512);
            d.push(&bytes);
            let mut s = ServerProto::new(vec![(iface(0), 2)], 512, 4);
            let mut c = ClientProto::new(iface(0), 512);
            let _ = c.bind();
            if let Ok(Some(f)) = d.next_frame() {
                let _ = s.on_frame(f.clone());
                let _ = c.on_frame(f);
            }
        }

        #[test]
        fn frames_survive_any_chunking(sizes in proptest::collection::vec(0..3000usize, 1..6), chunk in 1..5000usize) {
            let mut sim = Sim::new(0, 0, chunk);
            sim.bind().unwrap();
            for (i, n) in sizes.iter().enumerate() {
                let args = vec![i as u8; *n];
                let (id, head) = sim.c.request(1, &args, false, None).unwrap();
                let mut bytes = head.to_vec();
                bytes.extend_from_slice(&args);
                let ev = sim.deliver_server(&bytes);
                let ServerEvent::Call(call) = &ev[0] else { panic!() };
                prop_assert_eq!(call.call_id, id);
                prop_assert_eq!(call.args(), &args[..]);
                let out = sim.s.complete(id, Outcome::Ok(args.clone())).unwrap();
                let cev = sim.deliver_client(&out);
                let ClientEvent::Reply { result: Ok(r), .. } = &cev[0] else { panic!() };
                prop_assert_eq!(r.body(), &args[..]);
            }
        }
    }
}
