//! `ncalrpc` over shared memory: after connecting to the endpoint's Unix socket, client and
//! server may move the connection's frames onto a pair of ipckit channels (one per direction).
//! The socket stays open (it carried the rendezvous and the client's credentials); the channels
//! carry the byte stream of frames. Wire details: `docs/protocol/rpc.md` section 1.2.
//!
//! Why: a call then costs no system call when both ends run at once on different CPUs (the
//! channels spin briefly before they sleep), and one futex wake-up instead of a socket's
//! wake-up and two copies through the kernel otherwise.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::link::{Link, SockLink};
use crate::channel::{Channel, Closer, Receiver, Sender};
use crate::error::{Error, ErrorKind, Result};
use crate::namespace::Namespace;
use crate::sys::socket;

/// What a client sends first to ask for shared memory: 16 bytes, a frame header's length, so
/// that a server that knows only frames sees a whole (bad) header at once and answers with a
/// fault; its first byte is not a frame's magic. The reply starts with its first 8 bytes.
pub(crate) const UPGRADE_REQUEST: &[u8; 16] = b"IPCKSHM1\0\0\0\0\0\0\0\0";
/// The first bytes of the server's reply.
const REPLY_MAGIC: &[u8; 8] = b"IPCKSHM1";
/// Slots per direction.
pub(crate) const SLOTS: u32 = 16;
/// Bytes per slot: a slot with its header is then 64 KiB.
pub(crate) const SLOT_BYTES: u32 = 64 * 1024 - 64;
/// How long the rendezvous may take once the request has arrived.
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest channel base name in a reply.
const MAX_NAME: usize = 100;

const STATUS_OK: u8 = 0;
const STATUS_REFUSED: u8 = 1;
const ACK_ATTACHED: u8 = 1;
const ACK_FAILED: u8 = 0;

/// Numbers the channel pairs of this process.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn closed_or_gone(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::PeerGone | ErrorKind::BrokenPipe | ErrorKind::NoData
    )
}

/// The byte stream of one connection over two channels.
pub(crate) struct ShmLink {
    tx: Mutex<Sender>,
    rx: Mutex<RxState>,
    closers: [Closer; 2],
    /// The connection's socket under the process's [`SocketWatch`] (`None`: the channels check
    /// the peer's liveness themselves).
    _watched: Option<Watched>,
}

struct RxState {
    rx: Receiver,
    /// Bytes of the first queued message already returned.
    off: usize,
}

impl ShmLink {
    fn new(tx: Sender, rx: Receiver) -> ShmLink {
        ShmLink {
            closers: [tx.closer(), rx.closer()],
            tx: Mutex::new(tx),
            rx: Mutex::new(RxState { rx, off: 0 }),
            _watched: None,
        }
    }

    /// Puts the connection's socket under the watch (once the rendezvous is over: anything
    /// readable on it then ends the link); for channels made without liveness checks.
    fn watched(mut self, sock: &OwnedFd) -> Result<ShmLink> {
        let w = SocketWatch::get().ok_or_else(no_watch)?;
        self._watched = Some(w.add(sock, &self.closers)?);
        Ok(self)
    }
}

fn no_watch() -> Error {
    Error::with_message(ErrorKind::Other, "the socket watcher is not running")
}

/// One thread per process that watches the sockets of the connections on shared memory: when
/// one ends (the peer closed it, or died and the kernel closed it), the connection's channel
/// ends are closed, which wakes whoever waits on them. The channels themselves then need no
/// periodic liveness checks, so an idle connection costs no wake-up at all. Nothing travels
/// on such a socket after the rendezvous, so anything readable on it ends the connection.
struct SocketWatch {
    /// The last id given, and the watched sockets (duplicates) with the ends they close.
    entries: Mutex<(u64, HashMap<u64, WatchEntry>)>,
    wake: OwnedFd,
}

type WatchEntry = (Arc<OwnedFd>, Vec<Closer>);

/// A socket under the watch, until dropped.
struct Watched {
    id: u64,
    watch: &'static SocketWatch,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.watch
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .remove(&self.id);
        self.watch.poke();
    }
}

impl SocketWatch {
    /// The process's watch, started on first use (`None` if its thread cannot start).
    fn get() -> Option<&'static SocketWatch> {
        static WATCH: OnceLock<Option<SocketWatch>> = OnceLock::new();
        WATCH
            .get_or_init(|| {
                let (r, w) = socket::stream_pair().ok()?;
                socket::set_nonblocking(&r, true).ok()?;
                socket::set_nonblocking(&w, true).ok()?;
                std::thread::Builder::new()
                    .name("ipckit-rpc-sockw".into())
                    .spawn(move || SocketWatch::run(r))
                    .ok()?;
                Some(SocketWatch {
                    entries: Mutex::new((0, HashMap::new())),
                    wake: w,
                })
            })
            .as_ref()
    }

    fn add(&'static self, sock: &OwnedFd, closers: &[Closer]) -> Result<Watched> {
        let dup = crate::sys::fd::duplicate(sock)?;
        let id = {
            let mut g = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            g.0 += 1;
            let id = g.0;
            g.1.insert(id, (Arc::new(dup), closers.to_vec()));
            id
        };
        self.poke();
        Ok(Watched { id, watch: self })
    }

    /// Makes the thread look at the entries again.
    fn poke(&self) {
        // A full wake socket already has a wake-up pending.
        let _ = socket::try_send(&self.wake, b"w");
    }

    fn run(wake: OwnedFd) {
        // Waits until the initialisation that started this thread has stored the watch.
        let Some(me) = Self::get() else {
            return;
        };
        let mut scratch = [0u8; 64];
        loop {
            let snap: Vec<(u64, Arc<OwnedFd>)> = me
                .entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .iter()
                .map(|(id, (fd, _))| (*id, fd.clone()))
                .collect();
            let mut fds = vec![wake.as_fd()];
            fds.extend(snap.iter().map(|(_, fd)| fd.as_fd()));
            match socket::wait_readable(&fds, None) {
                Ok(Some(0)) => {
                    while let Ok(Some(n)) = socket::recv(&wake, &mut scratch, false) {
                        if n == 0 {
                            return;
                        }
                    }
                }
                Ok(Some(i)) => {
                    let (id, _) = &snap[i - 1];
                    let gone = me
                        .entries
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .1
                        .remove(id);
                    if let Some((_, closers)) = gone {
                        for c in closers {
                            c.close();
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("rpc: the socket watch failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

impl Link for ShmLink {
    fn send(&self, parts: &[&[u8]]) -> Result<()> {
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let mut left: usize = parts.iter().map(|p| p.len()).sum();
        let max = tx.max_message();
        let (mut part, mut poff) = (0, 0);
        while left > 0 {
            let n = left.min(max);
            let mut slot = tx.reserve(n).map_err(|e| {
                if closed_or_gone(&e) {
                    Error::with_message(ErrorKind::BrokenPipe, "the peer left the connection")
                } else {
                    e
                }
            })?;
            let mut w = 0;
            while w < n {
                let p = parts[part];
                let take = (p.len() - poff).min(n - w);
                slot.write(w, &p[poff..poff + take])?;
                w += take;
                poff += take;
                if poff == p.len() {
                    part += 1;
                    poff = 0;
                }
            }
            slot.commit();
            left -= n;
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>> {
        let mut g = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let RxState { rx, off } = &mut *g;
        let msg = match timeout {
            None => rx.recv_borrow(),
            Some(t) => rx.recv_borrow_timeout(t),
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::Timeout => return Ok(None),
            Err(e) if closed_or_gone(&e) => return Ok(Some(0)),
            Err(e) => return Err(e),
        };
        let len = msg.len();
        if len == 0 || buf.is_empty() {
            // An empty message carries nothing (ipckit never sends one), and 0 means the end:
            // say "nothing yet" and let the caller ask again.
            if len == 0 {
                drop(msg);
            } else {
                msg.keep();
            }
            return Ok(None);
        }
        let n = (len - *off).min(buf.len());
        msg.read(*off, &mut buf[..n])?;
        if *off + n < len {
            *off += n;
            msg.keep();
        } else {
            *off = 0;
        }
        Ok(Some(n))
    }

    fn shutdown(&self) {
        for c in &self.closers {
            c.close();
        }
    }
}

fn protocol(msg: &str) -> Error {
    Error::with_message(
        ErrorKind::Protocol,
        format!("ncalrpc shared-memory rendezvous: {msg}"),
    )
}

/// Reads exactly `buf.len()` bytes from the socket before `deadline`.
fn read_exact(fd: &OwnedFd, buf: &mut [u8], deadline: Instant) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if socket::wait_readable(&[fd.as_fd()], Some(left))?.is_none() {
            return Err(Error::with_message(
                ErrorKind::Timeout,
                "ncalrpc shared-memory rendezvous: no answer in time",
            ));
        }
        match socket::recv(fd, &mut buf[done..], false)? {
            Some(0) => return Err(Error::new(ErrorKind::BrokenPipe)),
            Some(n) => done += n,
            None => {}
        }
    }
    Ok(())
}

fn channel_names(base: &str) -> (String, String) {
    (format!("Local\\{base}-c"), format!("Local\\{base}-s"))
}

fn valid_base(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

/// The client's half of the rendezvous on a freshly connected `ncalrpc` socket: the shared-memory
/// link, or `None` when the server declines (then the socket carries the frames).
pub(crate) fn client_upgrade(
    fd: &OwnedFd,
    ns: &Namespace,
    deadline: Instant,
) -> Result<Option<ShmLink>> {
    socket::send_all(fd, &[UPGRADE_REQUEST])?;
    let mut head = [0u8; 10];
    read_exact(fd, &mut head, deadline)?;
    if &head[..8] != REPLY_MAGIC {
        return Err(protocol("the server answered something else"));
    }
    match head[8] {
        STATUS_OK => {}
        STATUS_REFUSED if head[9] == 0 => return Ok(None),
        _ => return Err(protocol("unknown status")),
    }
    let mut name = vec![0u8; usize::from(head[9])];
    read_exact(fd, &mut name, deadline)?;
    if !valid_base(&name) {
        return Err(protocol("bad channel name"));
    }
    let base = String::from_utf8_lossy(&name);
    let (c2s, s2c) = channel_names(&base);
    let watch = SocketWatch::get().is_some();
    let attached = (|| {
        let tx = Channel::builder()
            .name(&c2s)?
            .namespace(ns.clone())
            .peer_liveness_checks(!watch)
            .sender()?;
        let rx = Channel::builder()
            .name(&s2c)?
            .namespace(ns.clone())
            .peer_liveness_checks(!watch)
            .receiver()?;
        Ok::<_, Error>(ShmLink::new(tx, rx))
    })();
    match attached {
        Ok(link) => {
            socket::send_all(fd, &[&[ACK_ATTACHED]])?;
            Ok(Some(if watch { link.watched(fd)? } else { link }))
        }
        Err(e) => {
            tracing::debug!("rpc: cannot attach the server's channels, staying on the socket: {e}");
            socket::send_all(fd, &[&[ACK_FAILED]])?;
            Ok(None)
        }
    }
}

/// The server's half: creates the channel pair, names it to the client and waits for its
/// acknowledgement. `Ok(None)`: stay on the socket.
fn server_upgrade(fd: &OwnedFd, ns: &Namespace, allow: bool) -> Result<Option<ShmLink>> {
    let deadline = Instant::now() + RENDEZVOUS_TIMEOUT;
    let created = if allow {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let base = format!("ipckit-rpc-{}-{n}-{nonce:x}", std::process::id());
        let (c2s, s2c) = channel_names(&base);
        let watch = SocketWatch::get().is_some();
        let make = || {
            let rx = Channel::builder()
                .name(&c2s)?
                .capacity(SLOTS)
                .max_message(SLOT_BYTES)
                .namespace(ns.clone())
                .peer_liveness_checks(!watch)
                .receiver()?;
            let tx = Channel::builder()
                .name(&s2c)?
                .capacity(SLOTS)
                .max_message(SLOT_BYTES)
                .namespace(ns.clone())
                .peer_liveness_checks(!watch)
                .sender()?;
            Ok::<_, Error>((ShmLink::new(tx, rx), watch))
        };
        match make() {
            Ok((link, watch)) => Some((base, link, watch)),
            Err(e) => {
                tracing::warn!("rpc: cannot create shared memory for a connection: {e}");
                None
            }
        }
    } else {
        None
    };
    let Some((base, link, watch)) = created else {
        let mut reply = REPLY_MAGIC.to_vec();
        reply.extend_from_slice(&[STATUS_REFUSED, 0]);
        socket::send_all(fd, &[&reply])?;
        return Ok(None);
    };
    let mut reply = REPLY_MAGIC.to_vec();
    reply.extend_from_slice(&[STATUS_OK, base.len() as u8]);
    reply.extend_from_slice(base.as_bytes());
    socket::send_all(fd, &[&reply])?;
    let mut ack = [0u8; 1];
    read_exact(fd, &mut ack, deadline)?;
    match ack[0] {
        ACK_ATTACHED if watch => Ok(Some(link.watched(fd)?)),
        ACK_ATTACHED => Ok(Some(link)),
        ACK_FAILED => Ok(None),
        _ => Err(protocol("bad acknowledgement")),
    }
}

const UNDECIDED: u8 = 0;
const SOCKET: u8 = 1;
const SHARED: u8 = 2;

/// The server's link of an accepted `ncalrpc` connection: the socket until the client asks for
/// shared memory (in its first bytes), the channels after.
pub(crate) struct LrpcServerLink {
    sock: SockLink,
    ns: Namespace,
    allow_shm: bool,
    mode: AtomicU8,
    shm: OnceLock<ShmLink>,
    shut: AtomicBool,
}

impl LrpcServerLink {
    pub(crate) fn new(fd: OwnedFd, ns: Namespace, allow_shm: bool) -> LrpcServerLink {
        LrpcServerLink {
            sock: SockLink::new(fd),
            ns,
            allow_shm,
            mode: AtomicU8::new(UNDECIDED),
            shm: OnceLock::new(),
            shut: AtomicBool::new(false),
        }
    }

    /// The first bytes of the connection: an upgrade request, or frames.
    fn first_recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>> {
        let n = match self.sock.recv(buf, timeout)? {
            Some(n) if n > 0 => n,
            other => return Ok(other),
        };
        if buf[0] != UPGRADE_REQUEST[0] {
            self.mode.store(SOCKET, Ordering::Release);
            return Ok(Some(n));
        }
        let mut req = [0u8; UPGRADE_REQUEST.len()];
        let have = n.min(req.len());
        req[..have].copy_from_slice(&buf[..have]);
        if n > req.len() {
            return Err(protocol("bytes after the request"));
        }
        read_exact(
            self.sock.fd(),
            &mut req[have..],
            Instant::now() + RENDEZVOUS_TIMEOUT,
        )?;
        if &req != UPGRADE_REQUEST {
            return Err(protocol("unknown request"));
        }
        match server_upgrade(self.sock.fd(), &self.ns, self.allow_shm) {
            Ok(Some(link)) => {
                let link = self.shm.get_or_init(|| link);
                self.mode.store(SHARED, Ordering::Release);
                std::sync::atomic::fence(Ordering::SeqCst);
                // A stop that came meanwhile shut the socket only: shut the channels too.
                if self.shut.load(Ordering::SeqCst) {
                    link.shutdown();
                }
                link.recv(buf, timeout)
            }
            Ok(None) => {
                self.mode.store(SOCKET, Ordering::Release);
                self.sock.recv(buf, timeout)
            }
            Err(e) if closed_or_gone(&e) || e.kind() == ErrorKind::Timeout => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }
}

impl Link for LrpcServerLink {
    fn send(&self, parts: &[&[u8]]) -> Result<()> {
        if let Some(s) = self.shm.get() {
            return s.send(parts);
        }
        self.sock.send(parts)
    }

    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>> {
        match self.mode.load(Ordering::Acquire) {
            SHARED => match self.shm.get() {
                Some(s) => s.recv(buf, timeout),
                None => Ok(Some(0)),
            },
            SOCKET => self.sock.recv(buf, timeout),
            _ => self.first_recv(buf, timeout),
        }
    }

    fn shutdown(&self) {
        self.shut.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.sock.shutdown();
        if let Some(s) = self.shm.get() {
            s.shutdown();
        }
    }
}

/// The client's link over shared memory, holding the connection's socket open.
pub(crate) struct LrpcClientLink {
    shm: ShmLink,
    fd: OwnedFd,
}

impl LrpcClientLink {
    pub(crate) fn new(shm: ShmLink, fd: OwnedFd) -> LrpcClientLink {
        LrpcClientLink { shm, fd }
    }
}

impl Link for LrpcClientLink {
    fn send(&self, parts: &[&[u8]]) -> Result<()> {
        self.shm.send(parts)
    }
    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Option<usize>> {
        self.shm.recv(buf, timeout)
    }
    fn shutdown(&self) {
        self.shm.shutdown();
        socket::shutdown(&self.fd, true, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A link over a fresh channel pair in a private namespace, both ends in this process: the
    /// test of the byte stream the channels carry (the processes are in `tests/rpc_shm.rs`).
    fn pair(slot: u32) -> (ShmLink, ShmLink, std::path::PathBuf) {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ipckit-shm-link-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let ns = Namespace::at(&dir);
        let b = |name: &str| {
            Channel::builder()
                .name(name)
                .unwrap()
                .capacity(4)
                .max_message(slot)
                .namespace(ns.clone())
        };
        let a_rx = b("a").receiver().unwrap();
        let b_rx = b("b").receiver().unwrap();
        let a = ShmLink::new(b("b").sender().unwrap(), a_rx);
        let bl = ShmLink::new(b("a").sender().unwrap(), b_rx);
        (a, bl, dir)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the parts sent and the buffers received into, the bytes arrive once, in
        /// order (messages cut at slot size, buffers shorter than a message).
        #[test]
        fn the_byte_stream_survives_any_cutting(
            sends in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..4),
                1..12,
            ),
            slot in 16u32..200,
            buf in 1usize..500,
        ) {
            let (a, b, dir) = pair(slot);
            let want: Vec<u8> = sends.iter().flatten().flatten().copied().collect();
            let writer = std::thread::spawn(move || {
                for parts in &sends {
                    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                    a.send(&refs).unwrap();
                }
                a
            });
            let mut got = Vec::new();
            let mut scratch = vec![0u8; buf];
            while got.len() < want.len() {
                let n = b.recv(&mut scratch, Some(Duration::from_secs(10))).unwrap().unwrap();
                prop_assert!(n > 0);
                got.extend_from_slice(&scratch[..n]);
            }
            let a = writer.join().unwrap();
            prop_assert_eq!(&got, &want);
            // Nothing more: the next receive times out.
            prop_assert_eq!(b.recv(&mut scratch, Some(Duration::ZERO)).unwrap(), None);
            // Closed from another thread: a wait ends with the end of the stream.
            b.shutdown();
            prop_assert_eq!(b.recv(&mut scratch, None).unwrap(), Some(0));
            drop((a, b));
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
