//! Shared-memory baselines: `shm-futex` and `shm-spin`.
//!
//! The harness creates a private (0600, `O_EXCL`) file in `/dev/shm` (the
//! temporary directory when there is no `/dev/shm`), sizes it, maps it
//! `MAP_SHARED | MAP_POPULATE`, and passes its path to the peer, which maps
//! it too and raises a ready flag. The harness then unlinks the file; both
//! mappings stay.
//!
//! The mapping holds two single-producer single-consumer byte rings of
//! 1 MiB, one per direction. A message is a 64-byte record header (its
//! length) followed by the payload rounded up to 64 bytes; a record that
//! would straddle the end of the ring is preceded by a padding marker and
//! placed at the start. The producer copies the message into the ring and
//! publishes the new `head` with release ordering; the consumer copies it
//! out and publishes the new `tail`. So every message is copied twice, like
//! the kernel paths it is compared with (user → kernel → user).
//!
//! The zero-copy round trips (`rtt-zc-<size>`) use the same rings as the
//! floor of a zero-copy path: a record's header says `size` bytes, but the
//! record carries (and takes ring space for) only the 8-byte stamp, which
//! the producer writes and the consumer reads. So those cases cost the same
//! at every size.
//!
//! The mechanisms differ only in how a side waits for the other:
//!
//! * `shm-futex`: never spins. A side that finds nothing to do sets a
//!   waiter flag, re-checks, and sleeps in `FUTEX_WAIT` on the counter; a
//!   side that publishes calls `FUTEX_WAKE` only when the waiter flag is set
//!   (sequentially consistent flag/counter accesses make a lost wake-up
//!   impossible). This measures the kernel's sleep/wake-up path.
//! * `shm-spin`: busy-polls the counter with [`std::hint::spin_loop`], and
//!   after [`SPINS_BEFORE_YIELD`] polls calls `sched_yield(2)` before
//!   polling again. Cross-core this is a pure cache-line ping-pong; on a
//!   shared core the yield is what lets the other process run at all, so
//!   same-core `shm-spin` mostly measures the scheduler's yield path (and
//!   can be slow; its rounds are time-bounded like all others).
//!
//! All blocking waits check every 100 ms that the other process still
//! exists and give up after [`STALL_TIMEOUT`].

use std::fs::{File, OpenOptions};
use std::hint::spin_loop;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};
use rustix::thread::futex;
use rustix::thread::sched_yield;

use crate::channel::{Channel, STAMP_LEN, Transport};
use crate::peer::{Launcher, Liveness, PeerEnv, STALL_TIMEOUT, invalid};
use crate::raw::{path_arg, unique_name};

/// Polls of the counter between two `sched_yield` calls in `shm-spin`.
pub const SPINS_BEFORE_YIELD: u32 = 256;

const READY_OFF: usize = 0;
const READY_MAGIC: u32 = 0x1bc7_5e11;
/// Control block of ring `i` at `128 + 256 * i`: `head` and the consumer's
/// waiter flag on one cache line, `tail` and the producer's on the next.
const RING_CTL: [usize; 2] = [128, 384];
const TAIL_OFF: usize = 128;
const WAITERS_OFF: usize = 4;
const HEADER_LEN: usize = 4096;
const RING_BYTES: usize = 1 << 20;
const RING_MASK: usize = RING_BYTES - 1;
const MAP_LEN: usize = HEADER_LEN + 2 * RING_BYTES;
const REC_HDR: usize = 64;
const PAD_MARK: u32 = u32::MAX;
/// Largest message; keeps several records in flight per ring.
pub const MAX_MESSAGE: usize = RING_BYTES / 4;
const POLL_LIVENESS: Duration = Duration::from_millis(100);

/// How a side waits for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Sleep in `FUTEX_WAIT`; publishers wake sleepers with `FUTEX_WAKE`.
    Futex,
    /// Spin, yielding the CPU every [`SPINS_BEFORE_YIELD`] polls.
    Spin,
    /// Spin up to [`SPINS_BEFORE_PARK`] polls, then sleep in `FUTEX_WAIT` (the classic adaptive
    /// mutex): the raw floor of an adaptive waiter whose peer runs on another CPU.
    SpinThenPark,
}

/// Polls before a [`WaitPolicy::SpinThenPark`] waiter parks (about 10 µs here).
pub const SPINS_BEFORE_PARK: u32 = 400;

/// The `shm-spinpark` baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShmSpinPark;

impl Transport for ShmSpinPark {
    type Chan = ShmChannel;

    fn zero_copy(&self) -> bool {
        true
    }

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<ShmChannel> {
        open_parent(launcher, WaitPolicy::SpinThenPark)
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<ShmChannel> {
        open_peer(peer, WaitPolicy::SpinThenPark)
    }
}

/// The `shm-futex` baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShmFutex;

/// The `shm-spin` baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShmSpin;

impl Transport for ShmFutex {
    type Chan = ShmChannel;

    fn zero_copy(&self) -> bool {
        true
    }

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<ShmChannel> {
        open_parent(launcher, WaitPolicy::Futex)
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<ShmChannel> {
        open_peer(peer, WaitPolicy::Futex)
    }
}

impl Transport for ShmSpin {
    type Chan = ShmChannel;

    fn zero_copy(&self) -> bool {
        true
    }

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<ShmChannel> {
        open_parent(launcher, WaitPolicy::Spin)
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<ShmChannel> {
        open_peer(peer, WaitPolicy::Spin)
    }
}

fn open_parent(launcher: &mut Launcher<'_>, policy: WaitPolicy) -> io::Result<ShmChannel> {
    let file = ShmFile::create()?;
    let map = Mapping::new(&file.file, MAP_LEN)?;
    launcher.spawn(path_arg(&file.path)?)?;
    let ready = map.atomic(READY_OFF);
    launcher.wait_for("shared-memory attach", || {
        Ok((ready.load(Ordering::Acquire) == READY_MAGIC).then_some(()))
    })?;
    // Both processes have it mapped; the name is no longer needed.
    drop(file);
    Ok(ShmChannel::new(map, policy, 0, launcher.liveness()?))
}

fn open_peer(peer: &PeerEnv, policy: WaitPolicy) -> io::Result<ShmChannel> {
    let file = OpenOptions::new().read(true).write(true).open(&peer.addr)?;
    if file.metadata()?.len() < MAP_LEN as u64 {
        return Err(invalid("shared-memory file is too small"));
    }
    let map = Mapping::new(&file, MAP_LEN)?;
    map.atomic(READY_OFF).store(READY_MAGIC, Ordering::Release);
    Ok(ShmChannel::new(map, policy, 1, peer.liveness))
}

/// The harness's shared-memory file, unlinked when dropped.
#[derive(Debug)]
struct ShmFile {
    path: PathBuf,
    file: File,
}

impl ShmFile {
    fn create() -> io::Result<Self> {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let mut last = None;
        for _ in 0..8 {
            let path = dir.join(unique_name());
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    let this = Self { path, file };
                    this.file.set_len(MAP_LEN as u64)?;
                    return Ok(this);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("cannot create a shared-memory file")))
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A `MAP_SHARED` read-write mapping of a whole file, unmapped on drop.
///
/// The first [`HEADER_LEN`] bytes are only ever accessed as `AtomicU32`s
/// ([`Mapping::atomic`]); the rest only by copying ([`Mapping::write`],
/// [`Mapping::read`]). No Rust reference into the data part exists.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps the first `len` bytes of `file`, which must be at least that
    /// long and opened read-write.
    fn new(file: &File, len: usize) -> io::Result<Self> {
        if len < HEADER_LEN || file.metadata()?.len() < len as u64 {
            return Err(invalid("shared-memory file is too small"));
        }
        // SAFETY: a null address hint makes the kernel choose a fresh range,
        // so no existing Rust object is affected. The file was checked to be
        // at least `len` bytes long; it is created by the harness with
        // O_EXCL and mode 0600, sized before either side maps it, never
        // truncated by this crate and unlinked as soon as both sides have
        // mapped it, so accesses within `len` do not fault. All later
        // accesses go through the bounds-checked methods below.
        let addr = unsafe {
            mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::POPULATE,
                file,
                0,
            )?
        };
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap: null"))?;
        Ok(Self { ptr, len })
    }

    /// The atomic `u32` at byte offset `off` of the header.
    fn atomic(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= HEADER_LEN && HEADER_LEN <= self.len);
        let p = self.ptr.as_ptr().wrapping_add(off).cast::<u32>();
        // SAFETY: `p` lies inside the live mapping (checked above) and is
        // 4-byte aligned (the mapping is page-aligned and `off % 4 == 0`).
        // The mapping stays valid for the returned borrow of `self`: it is
        // only unmapped in `drop`. Header bytes are accessed only through
        // these atomics, by both processes (the copy methods refuse the
        // header), so atomic and non-atomic accesses never mix.
        unsafe { AtomicU32::from_ptr(p) }
    }

    fn check_data_range(&self, off: usize, len: usize) {
        assert!(off >= HEADER_LEN && off.checked_add(len).is_some_and(|end| end <= self.len));
    }

    /// Copies `src` into the data part at byte offset `off`.
    fn write(&self, off: usize, src: &[u8]) {
        self.check_data_range(off, src.len());
        // SAFETY: the destination range is inside the live mapping and
        // outside the header (checked above). `src` cannot overlap it: no
        // Rust reference into the data part is ever created. The ring
        // protocol gives this process exclusive use of the range: it lies in
        // free space that the consumer released by publishing `tail`
        // (acquired before this call) and will not read before the new
        // `head` is published with release ordering after this copy.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(off), src.len()) }
    }

    /// Copies `dst.len()` bytes from the data part at byte offset `off`.
    fn read(&self, off: usize, dst: &mut [u8]) {
        self.check_data_range(off, dst.len());
        // SAFETY: the source range is inside the live mapping and outside the
        // header (checked above) and cannot overlap `dst`, which is ordinary
        // memory (no reference into the data part exists). The ring protocol
        // makes the range stable: it belongs to a record published by the
        // producer before the `head` value this process acquired, and the
        // producer will not reuse it before this process publishes a `tail`
        // past it, after this copy.
        unsafe { ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), dst.as_mut_ptr(), dst.len()) }
    }

    fn write_u32(&self, off: usize, v: u32) {
        self.write(off, &v.to_ne_bytes());
    }

    fn read_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(off, &mut b);
        u32::from_ne_bytes(b)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly the range `mmap` returned in
        // `new`. Every borrow into the mapping (`atomic`) is tied to a borrow
        // of `self`, so none is alive during `drop`, and nothing else points
        // into the range.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Offsets of one ring in the mapping.
#[derive(Debug, Clone, Copy)]
struct Ring {
    head: usize,
    head_waiters: usize,
    tail: usize,
    tail_waiters: usize,
    data: usize,
}

impl Ring {
    fn at(i: usize) -> Self {
        let ctl = RING_CTL[i];
        Self {
            head: ctl,
            head_waiters: ctl + WAITERS_OFF,
            tail: ctl + TAIL_OFF,
            tail_waiters: ctl + TAIL_OFF + WAITERS_OFF,
            data: HEADER_LEN + i * RING_BYTES,
        }
    }
}

/// One end of the shared-memory channel: producer of one ring, consumer of
/// the other.
#[derive(Debug)]
pub struct ShmChannel {
    map: Mapping,
    policy: WaitPolicy,
    tx: Ring,
    rx: Ring,
    /// Producer state: our `head`, and the last `tail` we saw.
    tx_head: u32,
    tx_tail_seen: u32,
    /// Consumer state: our `tail`, and the last `head` we saw.
    rx_tail: u32,
    rx_head_seen: u32,
    liveness: Liveness,
}

const fn record_len(len: usize) -> usize {
    REC_HDR + len.next_multiple_of(64)
}

impl ShmChannel {
    /// `side` 0 (harness) produces into ring 0 and consumes ring 1; side 1
    /// (peer) the other way round.
    fn new(map: Mapping, policy: WaitPolicy, side: usize, liveness: Liveness) -> Self {
        Self {
            map,
            policy,
            tx: Ring::at(side),
            rx: Ring::at(1 - side),
            tx_head: 0,
            tx_tail_seen: 0,
            rx_tail: 0,
            rx_head_seen: 0,
            liveness,
        }
    }

    /// Waits until the counter at `counter` differs from `seen`; returns
    /// its new value (acquired).
    fn wait_change(&self, counter: usize, waiters: usize, seen: u32) -> io::Result<u32> {
        let c = self.map.atomic(counter);
        let v = c.load(Ordering::Acquire);
        if v != seen {
            return Ok(v);
        }
        match self.policy {
            WaitPolicy::Spin => spin_wait(c, seen, &self.liveness),
            WaitPolicy::Futex => futex_wait(c, self.map.atomic(waiters), seen, &self.liveness),
            WaitPolicy::SpinThenPark => {
                for _ in 0..SPINS_BEFORE_PARK {
                    spin_loop();
                    let v = c.load(Ordering::Acquire);
                    if v != seen {
                        return Ok(v);
                    }
                }
                futex_wait(c, self.map.atomic(waiters), seen, &self.liveness)
            }
        }
    }

    /// Publishes `v` (release) and wakes a sleeping other side.
    fn publish(&self, counter: usize, waiters: usize, v: u32) -> io::Result<()> {
        let c = self.map.atomic(counter);
        match self.policy {
            WaitPolicy::Spin => c.store(v, Ordering::Release),
            WaitPolicy::Futex | WaitPolicy::SpinThenPark => {
                c.store(v, Ordering::SeqCst);
                if self.map.atomic(waiters).load(Ordering::SeqCst) != 0 {
                    futex::wake(c, futex::Flags::empty(), 1)?;
                }
            }
        }
        Ok(())
    }
}

impl ShmChannel {
    /// Writes one record whose header says `len` and whose payload is
    /// `payload` (all of the message for a copy, only the stamp for the
    /// zero-copy floor), and publishes it.
    fn send_record(&mut self, len: u32, payload: &[u8]) -> io::Result<()> {
        let msg = payload;
        if msg.len() > MAX_MESSAGE {
            return Err(invalid(format!(
                "message of {} bytes exceeds {MAX_MESSAGE}",
                msg.len()
            )));
        }
        let ring = self.tx;
        let rec = record_len(msg.len());
        let mut pos = self.tx_head as usize & RING_MASK;
        let pad = if pos + rec > RING_BYTES {
            RING_BYTES - pos
        } else {
            0
        };
        let need = (pad + rec) as u32;
        while RING_BYTES as u32 - self.tx_head.wrapping_sub(self.tx_tail_seen) < need {
            self.tx_tail_seen =
                self.wait_change(ring.tail, ring.tail_waiters, self.tx_tail_seen)?;
        }
        if pad > 0 {
            self.map.write_u32(ring.data + pos, PAD_MARK);
            pos = 0;
        }
        self.map.write_u32(ring.data + pos, len);
        self.map.write(ring.data + pos + REC_HDR, msg);
        self.tx_head = self.tx_head.wrapping_add(need);
        self.publish(ring.head, ring.head_waiters, self.tx_head)
    }

    /// Takes the next record, which must say `expected` bytes, copying the first
    /// `buf.len()` bytes of its payload into `buf` (the sender wrote a
    /// payload of that length).
    fn recv_record(&mut self, expected: usize, buf: &mut [u8]) -> io::Result<()> {
        let ring = self.rx;
        while self.rx_head_seen == self.rx_tail {
            self.rx_head_seen = self.wait_change(ring.head, ring.head_waiters, self.rx_tail)?;
        }
        let mut pos = self.rx_tail as usize & RING_MASK;
        let mut consumed = 0;
        let mut len = self.map.read_u32(ring.data + pos);
        if len == PAD_MARK {
            consumed = RING_BYTES - pos;
            pos = 0;
            len = self.map.read_u32(ring.data);
        }
        if len as usize != expected {
            return Err(invalid(format!(
                "message of {len} bytes, expected {expected}"
            )));
        }
        self.map.read(ring.data + pos + REC_HDR, buf);
        consumed += record_len(buf.len());
        self.rx_tail = self.rx_tail.wrapping_add(consumed as u32);
        self.publish(ring.tail, ring.tail_waiters, self.rx_tail)
    }
}

impl Channel for ShmChannel {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let len = u32::try_from(msg.len()).map_err(|_| invalid("message too large"))?;
        self.send_record(len, msg)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.recv_record(buf.len(), buf)
    }

    /// The zero-copy floor: the record says `len` bytes but carries (and
    /// occupies ring space for) only the stamp, so the cost is that of a
    /// stamp-sized message whatever `len` is.
    fn send_stamp(&mut self, len: usize, stamp: u64) -> io::Result<()> {
        let len = u32::try_from(len)
            .ok()
            .filter(|&l| l != PAD_MARK)
            .ok_or_else(|| invalid("message too large"))?;
        self.send_record(len, &stamp.to_le_bytes())
    }

    fn recv_stamp(&mut self, len: usize) -> io::Result<u64> {
        let mut b = [0u8; STAMP_LEN];
        self.recv_record(len, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// Tracks a long wait: checks the other process every [`POLL_LIVENESS`]
/// and gives up after [`STALL_TIMEOUT`].
struct Stall {
    start: Instant,
    last_check: Instant,
}

impl Stall {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last_check: now,
        }
    }

    fn tick(&mut self, liveness: &Liveness) -> io::Result<()> {
        let now = Instant::now();
        if now - self.last_check >= POLL_LIVENESS {
            self.last_check = now;
            liveness.check()?;
            if now - self.start > STALL_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no progress from the other process for {STALL_TIMEOUT:?}"),
                ));
            }
        }
        Ok(())
    }
}

fn spin_wait(c: &AtomicU32, seen: u32, liveness: &Liveness) -> io::Result<u32> {
    let mut stall: Option<Stall> = None;
    loop {
        for _ in 0..SPINS_BEFORE_YIELD {
            let v = c.load(Ordering::Acquire);
            if v != seen {
                return Ok(v);
            }
            spin_loop();
        }
        sched_yield();
        stall.get_or_insert_with(Stall::new).tick(liveness)?;
    }
}

fn futex_wait(
    c: &AtomicU32,
    waiters: &AtomicU32,
    seen: u32,
    liveness: &Liveness,
) -> io::Result<u32> {
    let timeout = futex::Timespec {
        tv_sec: 0,
        tv_nsec: POLL_LIVENESS.as_nanos() as _,
    };
    let mut stall = Stall::new();
    loop {
        // Announce the sleep, then re-check: the publisher stores the
        // counter and then loads the flag (both SeqCst), so either it sees
        // the flag and wakes us, or we see its new value here.
        waiters.store(1, Ordering::SeqCst);
        let v = c.load(Ordering::SeqCst);
        if v != seen {
            waiters.store(0, Ordering::Relaxed);
            return Ok(v);
        }
        // Returns at once (EAGAIN) if the counter already moved.
        let r = futex::wait(c, futex::Flags::empty(), seen, Some(&timeout));
        waiters.store(0, Ordering::Relaxed);
        let v = c.load(Ordering::Acquire);
        if v != seen {
            return Ok(v);
        }
        match r {
            Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) | Err(Errno::TIMEDOUT) => {}
            Err(e) => return Err(e.into()),
        }
        stall.tick(liveness)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_consistent() {
        assert!(RING_BYTES.is_power_of_two());
        // Counters wrap at 2^32; the ring size must divide it.
        assert_eq!((1u64 << 32) % RING_BYTES as u64, 0);
        for i in 0..2 {
            let r = Ring::at(i);
            assert!(r.tail_waiters + 4 <= HEADER_LEN);
            assert_eq!(r.data % 64, 0);
        }
        assert!(record_len(MAX_MESSAGE) * 2 <= RING_BYTES);
        assert_eq!(record_len(64), 128);
        assert_eq!(record_len(8), 128);
    }

    /// Both ends in one process (no peer), driven far enough to wrap the
    /// rings several times with mixed sizes.
    #[test]
    fn ring_wraps_and_preserves_messages() {
        let file = ShmFile::create().unwrap();
        let a_map = Mapping::new(&file.file, MAP_LEN).unwrap();
        let b_map = Mapping::new(&file.file, MAP_LEN).unwrap();
        drop(file);
        let me = rustix::process::getpid();
        let live = Liveness::Child(me);
        let mut a = ShmChannel::new(a_map, WaitPolicy::Futex, 0, live);
        let mut b = ShmChannel::new(b_map, WaitPolicy::Futex, 1, live);
        let sizes = [8usize, 64, 4096, 65536, 1000, 65536 - 8];
        let mut rx = vec![0u8; 65536];
        for i in 0..2000usize {
            let size = sizes[i % sizes.len()];
            let msg: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
            a.send(&msg).unwrap();
            b.recv(&mut rx[..size]).unwrap();
            assert_eq!(&rx[..size], &msg[..]);
            b.send(&msg).unwrap();
            a.recv(&mut rx[..size]).unwrap();
            assert_eq!(&rx[..size], &msg[..]);
        }
        // A size mismatch is reported, not misread.
        a.send(&[1u8; 64]).unwrap();
        assert!(b.recv(&mut rx[..128]).is_err());
    }
}
