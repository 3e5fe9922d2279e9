//! Shared-memory message channels: the fastest way two local processes can talk.
//!
//! ```
//! use ipckit::channel::Channel;
//! # let dir = std::env::temp_dir().join(format!("ipckit-doc-chan-{}", std::process::id()));
//! # let ns = ipckit::namespace::Namespace::at(&dir);
//!
//! // The receiver creates the channel: 64 slots of up to 4 KiB, one producer lane.
//! let mut rx = Channel::builder().name(r"Local\frames")?.capacity(64).max_message(4096)
//!     .namespace(ns.clone()).receiver()?;
//! // Another process attaches as the sender (here the same one, for the example).
//! let mut tx = Channel::builder().name(r"Local\frames")?.namespace(ns.clone()).sender()?;
//!
//! tx.send(b"copied in")?;
//! // Zero copy: write in place in shared memory, then commit.
//! let mut slot = tx.reserve(5)?;
//! slot.write(0, b"hello")?;
//! slot.commit();
//!
//! assert_eq!(rx.recv()?, b"copied in");
//! let msg = rx.recv_borrow()?;        // borrowed in place, released on drop
//! assert_eq!(msg.to_vec(), b"hello");
//! # drop(msg); drop(tx); drop(rx); let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! # What it is
//! A named channel is a kernel object of ipckit's namespace (kind `channel`, shown by
//! `ipckit ls` with its depth and attached pids) whose data is one POSIX shared-memory object:
//! a header, then one ring of `capacity` fixed-size slots per producer *lane*. Each sender
//! attaches to a lane of its own, so every lane has one producer and one consumer
//! (single-producer/single-consumer with one lane, multi-producer/single-consumer with
//! several); the receiver serves the lanes round-robin. Messages of one sender arrive in
//! order, exactly once.
//!
//! - **Zero copy** both ways: [`Sender::reserve`] returns a slot in shared memory to write in
//!   place and [`SendSlot::commit`]; [`Receiver::recv_borrow`] lends the message in place until
//!   the guard drops. [`Sender::send`] / [`Receiver::recv`] copy.
//! - **Waiting** costs no CPU: an empty (or full) ring puts the waiter to sleep on a futex. Before
//!   sleeping it spins for a bounded, adaptive time, but only when the peer runs on another CPU
//!   (spinning on a CPU the peer needs only delays it). [`WaitMode::BusyPoll`] never sleeps, for
//!   latency-critical users; [`WaitMode::Sleep`] never spins.
//! - **Backpressure**: a full ring blocks the sender, or [`Sender::try_send`] returns
//!   [`ErrorKind::Full`]. Nothing is dropped.
//! - **Crash safety**: a message becomes visible only when its sender commits it with one atomic
//!   store, so a sender killed mid-write leaves nothing; indexes only grow, so nothing is read
//!   twice. A waiter checks at growing intervals (up to 100 ms) whether its peer still lives and
//!   then returns [`ErrorKind::PeerGone`]; a new sender or receiver may attach and carry on.
//!   Before the first peer of the other kind has attached there is nobody to lose: a receiver
//!   waits for a first sender, a sender for a first receiver. A receiver killed while it
//!   borrows a message leaves the message to the next receiver.
//!
//! Wire layout: `docs/protocol/channel.md`.

mod duplex;
mod lane;

pub use duplex::{Request, Requester, Responder};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::name::ObjectName;
use crate::namespace::Namespace;
use crate::object::{Header, ObjectHandle, ObjectKind, Spec};
use crate::sys::futex;
use crate::sys::mmap::{Access, MappedRegion};
use crate::sys::process::{current_cpu, current_pid, hidden_but_alive, start_time};

use lane::{LaneWords, Ring};

/// Most producer lanes a channel may have.
pub const MAX_LANES: u32 = 64;
/// Most slots per lane.
pub const MAX_CAPACITY: u32 = 1 << 20;
/// Largest message a channel may be created for (1 GiB).
pub const MAX_MESSAGE: u32 = 1 << 30;
/// Largest shared memory a channel may use (16 GiB).
pub const MAX_CHANNEL_BYTES: u64 = 1 << 34;

const LINE: usize = 64;
const HEADER_LEN: usize = 4 * LINE;
const LANE_LEN: usize = 4 * LINE;
/// The slot header: the state word (sequence and length, see [`lane::slot_state`]), padding. It
/// keeps payloads cache-line aligned, which makes large copies in and out markedly faster.
const SLOT_HEADER: usize = 64;
/// First liveness check of a sleeping end. Every timed sleep arms a kernel timer, and one that
/// expires before the scheduler's next tick must reprogram the CPU's timer hardware, which in a
/// virtual machine is a trap to the hypervisor (about a microsecond on the reference machine, a
/// third of a futex round trip). 10 ms stays behind the tick, so a sleep costs what an untimed one
/// does, and a dead peer is still noticed within 10 to 100 ms.
const FIRST_LIVENESS_CHECK: Duration = Duration::from_millis(10);
const MAX_LIVENESS_CHECK: Duration = Duration::from_millis(100);
const MIN_SPIN: u32 = 64;
const MAX_SPIN: u32 = 1 << 15;
/// Largest position a sender starts from: a lane's positions then never overflow (a position is
/// a message count; 2^63 messages take centuries).
const MAX_POSITION: u64 = 1 << 63;

/// How a blocked sender or receiver waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WaitMode {
    /// Spin briefly (adaptively, and only when the peer runs on another CPU), then sleep.
    #[default]
    Adaptive,
    /// Never sleep: poll until the peer acts (lowest latency, one CPU kept busy), yielding the CPU
    /// every 256 polls so that a peer on the same CPU can run.
    BusyPoll,
    /// Sleep at once (lowest CPU use).
    Sleep,
}

/// The geometry of a channel, fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Slots per lane (a power of two).
    pub capacity: u32,
    /// Largest message in bytes.
    pub max_message: u32,
    /// Producer lanes: how many senders may be attached at once.
    pub lanes: u32,
}

impl Geometry {
    fn validate(&self) -> Result<()> {
        let ok = self.capacity.is_power_of_two()
            && self.capacity <= MAX_CAPACITY
            && (1..=MAX_MESSAGE).contains(&self.max_message)
            && (1..=MAX_LANES).contains(&self.lanes);
        if !ok {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!(
                    "channel geometry {self:?}: capacity must be a power of two up to {MAX_CAPACITY}, \
                     max_message 1..={MAX_MESSAGE}, lanes 1..={MAX_LANES}"
                ),
            ));
        }
        match self.total_len() {
            Some(n) if n <= MAX_CHANNEL_BYTES => Ok(()),
            _ => Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!("channel {self:?} would need more than {MAX_CHANNEL_BYTES} bytes"),
            )),
        }
    }

    fn stride(&self) -> usize {
        (SLOT_HEADER + self.max_message as usize).next_multiple_of(LINE)
    }

    fn total_len(&self) -> Option<u64> {
        let slots = (self.stride() as u64)
            .checked_mul(u64::from(self.capacity))?
            .checked_mul(u64::from(self.lanes))?;
        slots.checked_add((HEADER_LEN + self.lanes as usize * LANE_LEN) as u64)
    }

    fn to_header(self) -> Header {
        Header {
            kind: ObjectKind::Channel,
            size: self.total_len().unwrap_or(0),
            param: u64::from(self.capacity) | (u64::from(self.max_message) << 32),
            flags: self.lanes << 16,
            creator_pid: 0,
        }
    }

    /// Reads and checks the geometry another process wrote.
    fn from_header(h: &Header) -> Result<Geometry> {
        let g = Geometry {
            capacity: h.param as u32,
            max_message: (h.param >> 32) as u32,
            lanes: h.flags >> 16,
        };
        g.validate()
            .map_err(|_| Error::with_message(ErrorKind::Protocol, "damaged channel header"))?;
        if g.total_len() != Some(h.size) {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                "channel size does not match its geometry",
            ));
        }
        Ok(g)
    }
}

/// Builder of both ends. Nothing happens until [`receiver`](Self::receiver) or
/// [`sender`](Self::sender), which create the channel if it does not exist (with this geometry)
/// or open it (its own geometry wins).
#[derive(Debug, Clone)]
pub struct ChannelBuilder {
    name: Option<ObjectName>,
    geometry: Geometry,
    namespace: Option<Namespace>,
    wait: WaitMode,
    others: bool,
    liveness: bool,
}

/// Namespace of the channel constructors.
#[derive(Debug)]
pub struct Channel;

impl Channel {
    /// A builder with defaults: 256 slots of up to 64 KiB, 1 producer lane, adaptive waiting.
    pub fn builder() -> ChannelBuilder {
        ChannelBuilder {
            name: None,
            geometry: Geometry {
                capacity: 256,
                max_message: 64 * 1024,
                lanes: 1,
            },
            namespace: None,
            wait: WaitMode::Adaptive,
            others: false,
            liveness: true,
        }
    }
}

impl ChannelBuilder {
    /// The channel's name (`NAME`, `Local\NAME`, `Global\NAME`; one namespace with mappings and
    /// sync objects).
    pub fn name(mut self, name: &str) -> Result<Self> {
        self.name = Some(ObjectName::parse(name)?);
        Ok(self)
    }
    /// Slots per lane (rounded up to a power of two).
    pub fn capacity(mut self, slots: u32) -> Self {
        self.geometry.capacity = slots.max(1).checked_next_power_of_two().unwrap_or(0);
        self
    }
    /// Largest message in bytes.
    pub fn max_message(mut self, bytes: u32) -> Self {
        self.geometry.max_message = bytes;
        self
    }
    /// Producer lanes: 1 for single-producer, more for multi-producer.
    pub fn producers(mut self, lanes: u32) -> Self {
        self.geometry.lanes = lanes;
        self
    }
    /// How this end waits.
    pub fn wait_mode(mut self, wait: WaitMode) -> Self {
        self.wait = wait;
        self
    }
    /// Use this namespace instead of the user's.
    pub fn namespace(mut self, ns: Namespace) -> Self {
        self.namespace = Some(ns);
        self
    }
    /// Whether this end, while it waits, checks at growing intervals (10 to 100 ms) whether its
    /// peer process still lives, and fails with [`ErrorKind::PeerGone`] when it does not
    /// (default: yes). Without the checks a wait costs no wake-up at all, however long it
    /// lasts, and a peer killed without detaching is noticed only through another signal that
    /// closes this end with its [`Closer`] (ipckit's RPC watches its connection's socket).
    ///
    /// Windows counterpart: none (channels are ipckit's own); a pipe or ALPC port learns of
    /// its peer's death from the kernel instead.
    pub fn peer_liveness_checks(mut self, yes: bool) -> Self {
        self.liveness = yes;
        self
    }
    /// Let other users attach (permissions 0666). Default: no.
    pub fn share_with_other_users(mut self, yes: bool) -> Self {
        self.others = yes;
        self
    }

    fn attach(&self) -> Result<Arc<Shared>> {
        self.geometry.validate()?;
        let name = self
            .name
            .as_ref()
            .ok_or_else(|| Error::with_message(ErrorKind::InvalidName, "a channel needs a name"))?;
        let ns = self.namespace.clone().unwrap_or_else(Namespace::from_env);
        let spec = Spec {
            header: self.geometry.to_header(),
            with_shm: true,
            others: self.others,
            state: [0; 4],
        };
        let (object, _) = ObjectHandle::create(&ns, Some(name), &spec)?;
        let mut shared = Shared::new(object)?;
        shared.liveness = self.liveness;
        Ok(Arc::new(shared))
    }

    /// Attaches as the channel's one receiver ([`ErrorKind::PipeBusy`] if a live receiver is
    /// attached).
    pub fn receiver(self) -> Result<Receiver> {
        let shared = self.attach()?;
        let me = Identity::me();
        if !claim(shared.consumer_endpoint(), me) {
            return Err(Error::with_message(
                ErrorKind::PipeBusy,
                "the channel already has a receiver",
            ));
        }
        shared.consumers_seen().fetch_add(1, Ordering::SeqCst);
        announce_busy(shared.u32_at(H_CONSUMER_BUSY), self.wait);
        let lanes = shared.geometry.lanes as usize;
        let heads: Vec<u64> = (0..lanes)
            .map(|i| shared.lane(i).head.load(Ordering::Acquire))
            .collect();
        let cursor = Cursor { heads, next: 0 };
        Ok(Receiver {
            shared,
            wait: self.wait,
            cursor,
            spin: Spin::new(),
            me,
        })
    }

    /// Attaches as a sender on a free lane ([`ErrorKind::PipeBusy`] if every lane has a live
    /// sender).
    pub fn sender(self) -> Result<Sender> {
        let shared = self.attach()?;
        let me = Identity::me();
        let lane = (0..shared.geometry.lanes as usize)
            .find(|&i| claim(shared.producer_endpoint(i), me))
            .ok_or_else(|| {
                Error::with_message(
                    ErrorKind::PipeBusy,
                    "every producer lane of the channel is in use",
                )
            })?;
        announce_busy(
            shared.u32_at(shared.lane_off(lane) + L_PRODUCER_BUSY),
            self.wait,
        );
        // Carry on from where the lane's previous sender stopped, once its positions are checked:
        // we count on from the tail, which must therefore be far from the end of the range.
        let mut tail = shared.lane(lane).tail.load(Ordering::Acquire);
        // A sender killed between publishing a message (its slot's sequence word) and advancing
        // `tail` left that message readable: count it.
        let state = shared.slot(lane, tail).state.load(Ordering::Acquire);
        if tail < MAX_POSITION && state as u32 == (tail + 1) as u32 {
            tail += 1;
            shared.lane(lane).tail.store(tail, Ordering::Release);
        }
        let cap = u64::from(shared.geometry.capacity);
        let consistent = tail <= MAX_POSITION && shared.lane(lane).free_slots(tail, cap).is_ok();
        let head = shared.lane(lane).head.load(Ordering::Acquire);
        if !consistent {
            release(shared.producer_endpoint(lane), me);
            return Err(shared.corrupt());
        }
        shared.producers_seen().fetch_add(1, Ordering::SeqCst);
        Ok(Sender {
            shared,
            wait: self.wait,
            lane,
            tail,
            head,
            spin: Spin::new(),
            sends: 0,
            me,
        })
    }
}

/// Stores whether this end busy-polls. The other end skips the sleep handshake (and its full
/// fence) while the word is 1. When a sleeping end replaces a busy-polling one, the other end may
/// still skip the handshake once on a stale read: `membarrier` makes every CPU see the new word
/// and finish its earlier stores before this end first sleeps. Should the call be unavailable,
/// the liveness checks bound such a missed wake-up to the first check (10 ms).
fn announce_busy(word: &AtomicU32, mode: WaitMode) {
    let busy = u32::from(mode == WaitMode::BusyPoll);
    if word.swap(busy, Ordering::SeqCst) == 1 && busy == 0 {
        crate::sys::futex::global_barrier();
    }
}

/// Rings a bell: changes its word (so a sleeper about to wait sees the change) and wakes one
/// sleeper.
fn ring(bell: &AtomicU32) {
    bell.fetch_add(1, Ordering::SeqCst);
    futex::wake(bell, 1);
}

/// A process, named so that a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    pid: u32,
    start: u64,
}

impl Identity {
    fn me() -> Identity {
        let pid = current_pid();
        Identity {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }
}

/// An endpoint's words in shared memory: pid (0 = free), start time, CPU.
struct Endpoint<'a> {
    pid: &'a AtomicU32,
    cpu: &'a AtomicU32,
    start: &'a AtomicU64,
}

/// Set in an endpoint's pid word from the moment a process takes the endpoint until it has
/// stored its start time. Meanwhile the start word still names the previous holder, so the new
/// holder is judged by its pid alone (Linux pids stay below 2^22).
const CLAIMING: u32 = 1 << 31;

impl Endpoint<'_> {
    /// The attached process, if any and alive.
    fn live(&self) -> Option<u32> {
        self.alive(self.pid.load(Ordering::Acquire))
    }

    /// The holder that the pid word value `word` names, if any and alive.
    fn alive(&self, word: u32) -> Option<u32> {
        let pid = word & !CLAIMING;
        if pid == 0 {
            return None;
        }
        match start_time(pid) {
            Some(start) => {
                (word & CLAIMING != 0 || start == self.start.load(Ordering::Acquire)).then_some(pid)
            }
            // Another user's process that `/proc` hides (`hidepid`): the pid alone decides (a
            // reused pid cannot be told from the holder then).
            None => hidden_but_alive(pid).then_some(pid),
        }
    }
}

/// Takes a free endpoint, or one whose process died.
///
/// The pid word is taken with one compare-and-swap, marked [`CLAIMING`] until the start time
/// is stored: otherwise a third process could see the new pid with the previous holder's start
/// time, judge the new holder dead and take the endpoint too.
fn claim(ep: Endpoint<'_>, me: Identity) -> bool {
    let cur = ep.pid.load(Ordering::Acquire);
    // A live holder, possibly this very process, keeps it. A dead one whose pid was reused (by
    // us or anyone) differs in start time.
    if ep.alive(cur).is_some() {
        return false;
    }
    if ep
        .pid
        .compare_exchange(cur, me.pid | CLAIMING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return false;
    }
    ep.start.store(me.start, Ordering::Release);
    ep.cpu.store(current_cpu(), Ordering::Relaxed);
    ep.pid.store(me.pid, Ordering::Release);
    true
}

fn release(ep: Endpoint<'_>, me: Identity) {
    let _ = ep
        .pid
        .compare_exchange(me.pid, 0, Ordering::AcqRel, Ordering::Relaxed);
}

/// The mapped channel.
#[derive(Debug)]
struct Shared {
    region: MappedRegion,
    geometry: Geometry,
    _object: ObjectHandle,
    /// This end was closed by a [`Closer`] (process-local, not in the mapping).
    closed: AtomicBool,
    /// This end checks while it waits whether its peer still lives (process-local).
    liveness: bool,
}

// Header words (byte offsets).
/// 1 while the attached receiver busy-polls (never sleeps): senders then skip the sleep
/// handshake. On a line of its own, written only when a receiver attaches.
const H_CONSUMER_BUSY: usize = 0;
const H_CONSUMER_PID: usize = LINE;
const H_CONSUMER_CPU: usize = LINE + 4;
const H_CONSUMER_START: usize = LINE + 8;
const H_CONSUMER_SLEEPING: usize = 2 * LINE;
const H_DOORBELL: usize = 2 * LINE + 4;
const H_PRODUCERS_SEEN: usize = 3 * LINE;
const H_CONSUMERS_SEEN: usize = 3 * LINE + 4;
// Lane words (byte offsets within a lane).
const L_TAIL: usize = 0;
const L_PRODUCER_PID: usize = 8;
const L_PRODUCER_CPU: usize = 12;
const L_PRODUCER_START: usize = 16;
const L_HEAD: usize = LINE;
const L_PRODUCER_SLEEPING: usize = 2 * LINE;
const L_SPACE_BELL: usize = 2 * LINE + 4;
/// 1 while the lane's sender busy-polls; written only when a sender attaches.
const L_PRODUCER_BUSY: usize = 3 * LINE;

impl Shared {
    fn new(mut object: ObjectHandle) -> Result<Shared> {
        let geometry = Geometry::from_header(object.header())?;
        let fd = object
            .data_fd()
            .ok_or_else(|| Error::with_message(ErrorKind::Protocol, "channel without memory"))?;
        let len = object.header().size;
        if crate::sys::file::size(fd)? < len {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                "channel memory is shorter than its header says",
            ));
        }
        let region = MappedRegion::map(fd, 0, len as usize, Access::Write)?;
        object.close_data_fd();
        Ok(Shared {
            region,
            geometry,
            _object: object,
            closed: AtomicBool::new(false),
            liveness: true,
        })
    }

    #[inline]
    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4)
                && off + 4 <= HEADER_LEN + self.geometry.lanes as usize * LANE_LEN
        );
        // SAFETY: in bounds of the control area (asserted), 4-aligned (page-aligned base), valid as
        // long as `self`; shared words are only accessed atomically by every process.
        unsafe { AtomicU32::from_ptr(self.region.as_ptr().add(off).cast()) }
    }

    #[inline]
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(
            off.is_multiple_of(8)
                && off + 8 <= HEADER_LEN + self.geometry.lanes as usize * LANE_LEN
        );
        // SAFETY: as in `u32_at`, 8-aligned.
        unsafe { AtomicU64::from_ptr(self.region.as_ptr().add(off).cast()) }
    }

    #[inline]
    fn lane_off(&self, lane: usize) -> usize {
        HEADER_LEN + lane * LANE_LEN
    }

    /// The protocol words of `lane`. On every message's path: one bounds check, not four.
    #[inline]
    fn lane(&self, lane: usize) -> LaneWords<'_> {
        assert!(lane < self.geometry.lanes as usize);
        let at = self.region.as_ptr().wrapping_add(self.lane_off(lane));
        // SAFETY: `lane` is in range, so its control block (LANE_LEN bytes, 64-aligned, inside the
        // control area that the validated geometry sized the region for) holds these words at
        // their aligned offsets; shared words are only accessed atomically, and the references
        // live no longer than `self` and its mapping.
        unsafe {
            LaneWords {
                tail: AtomicU64::from_ptr(at.add(L_TAIL).cast()),
                head: AtomicU64::from_ptr(at.add(L_HEAD).cast()),
                producer_sleeping: AtomicU32::from_ptr(at.add(L_PRODUCER_SLEEPING).cast()),
                consumer_sleeping: self.u32_at(H_CONSUMER_SLEEPING),
            }
        }
    }

    fn space_bell(&self, lane: usize) -> &AtomicU32 {
        self.u32_at(self.lane_off(lane) + L_SPACE_BELL)
    }

    fn doorbell(&self) -> &AtomicU32 {
        self.u32_at(H_DOORBELL)
    }

    fn producers_seen(&self) -> &AtomicU32 {
        self.u32_at(H_PRODUCERS_SEEN)
    }

    /// Receivers that ever attached: a sender waits for room while this is 0, as a receiver
    /// waits for a first sender.
    fn consumers_seen(&self) -> &AtomicU32 {
        self.u32_at(H_CONSUMERS_SEEN)
    }

    fn consumer_endpoint(&self) -> Endpoint<'_> {
        Endpoint {
            pid: self.u32_at(H_CONSUMER_PID),
            cpu: self.u32_at(H_CONSUMER_CPU),
            start: self.u64_at(H_CONSUMER_START),
        }
    }

    fn producer_endpoint(&self, lane: usize) -> Endpoint<'_> {
        let o = self.lane_off(lane);
        Endpoint {
            pid: self.u32_at(o + L_PRODUCER_PID),
            cpu: self.u32_at(o + L_PRODUCER_CPU),
            start: self.u64_at(o + L_PRODUCER_START),
        }
    }

    /// The slot for position `pos` of `lane`.
    #[inline]
    fn slot(&self, lane: usize, pos: u64) -> Slot<'_> {
        let g = &self.geometry;
        assert!(lane < g.lanes as usize);
        let index = (pos & u64::from(g.capacity - 1)) as usize;
        let off = HEADER_LEN
            + g.lanes as usize * LANE_LEN
            + (lane * g.capacity as usize + index) * g.stride();
        debug_assert!(off + g.stride() <= self.region.len());
        let at = self.region.as_ptr().wrapping_add(off);
        Slot {
            // SAFETY: `off` is a slot start inside the region (`lane` and `index` are in range and
            // the geometry was validated against the region's size), 64-aligned; the state word
            // is the slot's first 8 bytes, only ever accessed atomically.
            state: unsafe { AtomicU64::from_ptr(at.cast()) },
            data: off + SLOT_HEADER,
        }
    }

    /// The address of the byte at `off` (a [`Slot::data`] offset) in the mapping.
    #[inline]
    fn data(&self, off: usize) -> *mut u8 {
        self.region.as_ptr().wrapping_add(off)
    }

    /// Whether any lane has a sender attached (alive or not): pid words only, no system call.
    fn producers_attached(&self) -> bool {
        (0..self.geometry.lanes as usize)
            .any(|i| self.producer_endpoint(i).pid.load(Ordering::Acquire) != 0)
    }

    fn producers_alive(&self) -> bool {
        (0..self.geometry.lanes as usize).any(|i| self.producer_endpoint(i).live().is_some())
    }

    fn corrupt(&self) -> Error {
        Error::with_message(
            ErrorKind::Protocol,
            "channel indexes are inconsistent: a peer broke the protocol",
        )
    }
}

/// One slot's words, and where its message starts.
struct Slot<'a> {
    /// Sequence and length (see [`lane::slot_state`]).
    state: &'a AtomicU64,
    /// Offset of the message's first byte in the mapping (see [`Shared::data`]).
    data: usize,
}

/// Adaptive spin budget.
#[derive(Debug)]
struct Spin {
    budget: u32,
}

impl Spin {
    fn new() -> Spin {
        Spin { budget: 1024 }
    }
    fn succeeded(&mut self) {
        self.budget = (self.budget * 2).min(MAX_SPIN);
    }
    fn failed(&mut self) {
        self.budget = (self.budget / 2).max(MIN_SPIN);
    }
}

/// One side's view while it waits: what it waits for and how to sleep for it.
trait WaitSide {
    type Out;
    /// Whether what we wait for is there (then stop).
    fn ready(&mut self) -> Result<Option<Self::Out>>;
    /// Announces sleep; true if we must not sleep after all (it became ready meanwhile).
    fn announce(&mut self) -> bool;
    /// Undoes `announce`.
    fn awake(&mut self);
    /// Whether the peer we wait for may still act.
    fn peer_alive(&mut self) -> bool;
    /// The futex word the peer rings.
    fn bell(&self) -> &AtomicU32;
    /// The peer detached (pid words only, no system call): checked after every wake-up.
    fn peer_left(&self) -> bool;
    /// This end's [`Closer`] closed it.
    fn closed(&self) -> bool;
    /// This end checks at intervals whether its peer lives.
    fn checks_liveness(&self) -> bool;
}

fn closed_error() -> Error {
    Error::with_message(ErrorKind::BrokenPipe, "the channel end was closed")
}

/// Shared waiting loop: spin (per mode and placement), then sleep on the side's bell, checking at
/// growing intervals that the peer still lives.
fn wait_until<W: WaitSide>(
    mode: WaitMode,
    spin: &mut Spin,
    peer_cpu: Option<u32>,
    deadline: Option<Instant>,
    side: &mut W,
) -> Result<W::Out> {
    if let Some(v) = side.ready()? {
        return Ok(v);
    }
    let spin_first = match mode {
        WaitMode::Sleep | WaitMode::BusyPoll => false,
        WaitMode::Adaptive => peer_cpu.is_some_and(|c| c != current_cpu()),
    };
    if spin_first {
        for _ in 0..spin.budget {
            std::hint::spin_loop();
            if let Some(v) = side.ready()? {
                spin.succeeded();
                return Ok(v);
            }
        }
        spin.failed();
    }
    let watch = side.checks_liveness();
    let mut check_every = FIRST_LIVENESS_CHECK;
    // Read the clock only once the first polls failed: a busy-polling end should see a quick
    // answer as soon as it comes.
    let mut next_check: Option<Instant> = None;
    loop {
        if mode == WaitMode::BusyPoll {
            for _ in 0..256 {
                std::hint::spin_loop();
                if let Some(v) = side.ready()? {
                    return Ok(v);
                }
            }
            // A peer on this CPU can only act if we let it run.
            std::thread::yield_now();
        } else {
            let seen = side.bell().load(Ordering::SeqCst);
            // After loading the bell: a close, or a peer's detaching, that comes later also
            // rings it, so the wait below cannot miss it.
            if let Some(end) = ended(side) {
                return end;
            }
            if side.announce() {
                side.awake();
            } else {
                let until = if watch {
                    let next_check =
                        *next_check.get_or_insert_with(|| Instant::now() + check_every);
                    Some(deadline.map_or(next_check, |d| d.min(next_check)))
                } else {
                    deadline
                };
                let woke = futex::wait(side.bell(), seen, until);
                side.awake();
                woke?;
            }
            if let Some(v) = side.ready()? {
                return Ok(v);
            }
        }
        if let Some(end) = ended(side) {
            return end;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Error::new(ErrorKind::Timeout));
        }
        if watch && now >= *next_check.get_or_insert(now + check_every) {
            if !side.peer_alive() {
                // One last look: the peer may have finished just before it went.
                if let Some(v) = side.ready()? {
                    return Ok(v);
                }
                return Err(Error::with_message(
                    ErrorKind::PeerGone,
                    "the peer process is gone",
                ));
            }
            check_every = (check_every * 2).min(MAX_LIVENESS_CHECK);
            next_check = Some(now + check_every);
        }
    }
}

/// How a wait ends when this end was closed or its peer detached (`None`: neither). A peer
/// that detached gets one last look: it may have finished just before it left.
fn ended<W: WaitSide>(side: &mut W) -> Option<Result<W::Out>> {
    if side.closed() {
        return Some(Err(closed_error()));
    }
    if !side.peer_left() {
        return None;
    }
    Some(match side.ready() {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(Error::with_message(
            ErrorKind::PeerGone,
            "the peer detached from the channel",
        )),
        Err(e) => Err(e),
    })
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| {
        Instant::now()
            .checked_add(t)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 40))
    })
}

/// A sender waiting for room in its lane.
struct TxWait<'a> {
    shared: &'a Shared,
    lane: usize,
    tail: u64,
}

impl WaitSide for TxWait<'_> {
    /// The head seen when room appeared.
    type Out = u64;
    fn ready(&mut self) -> Result<Option<u64>> {
        let cap = u64::from(self.shared.geometry.capacity);
        let free = self
            .shared
            .lane(self.lane)
            .free_slots(self.tail, cap)
            .map_err(|_| self.shared.corrupt())?;
        Ok((free > 0).then(|| self.tail + free - cap))
    }
    fn announce(&mut self) -> bool {
        self.shared
            .lane(self.lane)
            .producer_will_sleep(self.tail, u64::from(self.shared.geometry.capacity))
    }
    fn awake(&mut self) {
        self.shared.lane(self.lane).producer_awake();
    }
    fn peer_alive(&mut self) -> bool {
        // No receiver yet: it may still come (the channel's creator need not be its receiver).
        self.shared.consumers_seen().load(Ordering::SeqCst) == 0
            || self.shared.consumer_endpoint().live().is_some()
    }
    fn bell(&self) -> &AtomicU32 {
        self.shared.space_bell(self.lane)
    }
    fn peer_left(&self) -> bool {
        self.shared.consumers_seen().load(Ordering::SeqCst) > 0
            && self.shared.consumer_endpoint().pid.load(Ordering::Acquire) == 0
    }
    fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
    fn checks_liveness(&self) -> bool {
        self.shared.liveness
    }
}

/// The sending end, attached to one producer lane. Windows: none (ipckit's own); the nearest
/// is a `WriteFile` on a message-mode pipe.
#[derive(Debug)]
pub struct Sender {
    shared: Arc<Shared>,
    wait: WaitMode,
    lane: usize,
    /// Next position to publish (our own copy of the lane's tail).
    tail: u64,
    /// Last head we read.
    head: u64,
    spin: Spin,
    sends: u32,
    me: Identity,
}

impl Sender {
    /// The largest message this channel carries.
    pub fn max_message(&self) -> usize {
        self.shared.geometry.max_message as usize
    }

    /// The channel's geometry.
    pub fn geometry(&self) -> Geometry {
        self.shared.geometry
    }

    #[inline]
    fn has_space(&mut self) -> Result<bool> {
        let cap = u64::from(self.shared.geometry.capacity);
        if self.tail.wrapping_sub(self.head) < cap {
            return Ok(true);
        }
        let free = self
            .shared
            .lane(self.lane)
            .free_slots(self.tail, cap)
            .map_err(|_| self.shared.corrupt())?;
        self.head = self.tail + free - cap;
        Ok(free > 0)
    }

    fn wait_space(&mut self, timeout: Option<Duration>) -> Result<()> {
        if self.has_space()? {
            return Ok(());
        }
        if timeout == Some(Duration::ZERO) {
            return Err(Error::new(ErrorKind::Full));
        }
        self.shared
            .producer_endpoint(self.lane)
            .cpu
            .store(current_cpu(), Ordering::Relaxed);
        let consumer = self.shared.consumer_endpoint();
        // The pid word only: `live()` reads /proc (~10 µs) and this runs whenever the ring is
        // full; a dead receiver is still found by `TxWait::peer_alive` while waiting.
        let peer_cpu = (consumer.pid.load(Ordering::Relaxed) != 0)
            .then(|| consumer.cpu.load(Ordering::Relaxed));
        let mut side = TxWait {
            shared: &self.shared,
            lane: self.lane,
            tail: self.tail,
        };
        let head = wait_until(
            self.wait,
            &mut self.spin,
            peer_cpu,
            deadline(timeout),
            &mut side,
        )?;
        self.head = head;
        Ok(())
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.max_message() {
            return Err(Error::with_message(
                ErrorKind::MessageTooLarge,
                format!(
                    "a {len}-byte message exceeds the channel's {}-byte maximum",
                    self.max_message()
                ),
            ));
        }
        Ok(())
    }

    /// The common case (the message fits, the cached head says there is room) inline; the rest
    /// out of line, so that the hot path stays a few instructions.
    #[inline]
    fn reserve_inner(&mut self, len: usize, timeout: Option<Duration>) -> Result<SendSlot<'_>> {
        let cap = u64::from(self.shared.geometry.capacity);
        if len > self.max_message() || self.tail.wrapping_sub(self.head) >= cap {
            return self.reserve_slow(len, timeout);
        }
        Ok(SendSlot { sender: self, len })
    }

    #[inline(never)]
    fn reserve_slow(&mut self, len: usize, timeout: Option<Duration>) -> Result<SendSlot<'_>> {
        self.check_len(len)?;
        self.wait_space(timeout)?;
        Ok(SendSlot { sender: self, len })
    }

    /// Reserves room for a `len`-byte message, waiting while the channel is full.
    #[inline]
    pub fn reserve(&mut self, len: usize) -> Result<SendSlot<'_>> {
        self.reserve_inner(len, None)
    }

    /// Like [`reserve`](Self::reserve), but [`ErrorKind::Full`] instead of waiting.
    pub fn try_reserve(&mut self, len: usize) -> Result<SendSlot<'_>> {
        self.reserve_inner(len, Some(Duration::ZERO))
    }

    /// Like [`reserve`](Self::reserve), waiting at most `timeout` ([`ErrorKind::Timeout`]).
    pub fn reserve_timeout(&mut self, len: usize, timeout: Duration) -> Result<SendSlot<'_>> {
        self.reserve_inner(len, Some(timeout))
    }

    fn send_inner(&mut self, msg: &[u8], timeout: Option<Duration>) -> Result<()> {
        let mut slot = self.reserve_inner(msg.len(), timeout)?;
        slot.write(0, msg)?;
        slot.commit();
        Ok(())
    }

    /// Sends a copy of `msg`, waiting while the channel is full.
    pub fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.send_inner(msg, None)
    }

    /// Sends without waiting: [`ErrorKind::Full`] when there is no room (nothing is sent).
    pub fn try_send(&mut self, msg: &[u8]) -> Result<()> {
        self.send_inner(msg, Some(Duration::ZERO))
    }

    /// Sends, waiting at most `timeout` for room.
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<()> {
        self.send_inner(msg, Some(timeout))
    }

    #[inline]
    fn publish(&mut self, len: usize) {
        let slot = self.shared.slot(self.lane, self.tail);
        let lane = self.shared.lane(self.lane);
        let may_sleep = self.shared.u32_at(H_CONSUMER_BUSY).load(Ordering::Relaxed) == 0;
        // `len` <= max_message < 2^32, checked at reserve.
        if lane.publish(slot.state, self.tail, len as u32, may_sleep) == Ring::Wake {
            ring(self.shared.doorbell());
        }
        self.tail += 1;
        self.sends = self.sends.wrapping_add(1);
        if self.sends.is_multiple_of(64) {
            self.shared
                .producer_endpoint(self.lane)
                .cpu
                .store(current_cpu(), Ordering::Relaxed);
        }
    }
}

impl Sender {
    /// A handle that closes this end from another thread (see [`Closer`]). Windows: as
    /// `CancelIoEx` on the handle.
    pub fn closer(&self) -> Closer {
        Closer {
            shared: self.shared.clone(),
            bell: Bell::Space(self.lane),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Bell {
    Door,
    Space(usize),
}

/// Closes one end of a channel from another thread: a wait of that end (for a message, or for
/// room) in progress or to come fails with [`ErrorKind::BrokenPipe`]. Messages already queued
/// can still be taken without waiting. The peer is not told; dropping the end tells it.
///
/// Windows counterpart: `CancelIoEx` on a handle another thread waits on, or closing that
/// handle. Difference: the end stays attached until it is dropped.
#[derive(Debug, Clone)]
pub struct Closer {
    shared: Arc<Shared>,
    bell: Bell,
}

impl Closer {
    /// Closes the end and wakes its waiter.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        match self.bell {
            Bell::Door => ring(self.shared.doorbell()),
            Bell::Space(lane) => ring(self.shared.space_bell(lane)),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        release(self.shared.producer_endpoint(self.lane), self.me);
        // A receiver asleep waiting for us should notice that we left.
        ring(self.shared.doorbell());
    }
}

/// Room for one message in shared memory. Write it, then [`commit`](Self::commit); dropping
/// without committing sends nothing.
#[derive(Debug)]
pub struct SendSlot<'a> {
    sender: &'a mut Sender,
    len: usize,
}

impl SendSlot<'_> {
    /// The message length reserved.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the reserved message is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn data(&self) -> *mut u8 {
        let shared = &self.sender.shared;
        shared.data(shared.slot(self.sender.lane, self.sender.tail).data)
    }

    /// Copies `bytes` into the message at `offset`.
    #[inline]
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        if offset > self.len || bytes.len() > self.len - offset {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "write past the reserved length",
            ));
        }
        // SAFETY: the range is inside this slot's data (len <= max_message, checked at reserve);
        // the slot is not published, so under the protocol no other process touches it; `bytes`
        // is our own memory, disjoint from the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data().add(offset), bytes.len())
        };
        Ok(())
    }

    /// The message's bytes in shared memory, to fill in place.
    ///
    /// # Safety
    /// Another process that maps the channel could write these bytes. The caller relies on
    /// every process attached to the channel following its protocol (nobody writes a slot it
    /// has not reserved) for as long as the slice lives.
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: in bounds as in `write`; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.data(), self.len) }
    }

    /// Publishes the message.
    #[inline]
    pub fn commit(self) {
        let len = self.len;
        self.sender.publish(len);
    }

    /// Publishes only the first `len` bytes (at most the reserved length).
    pub fn commit_len(mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "commit longer than the reservation",
            ));
        }
        self.len = len;
        self.commit();
        Ok(())
    }
}

/// The receiving end. Windows: none (ipckit's own); the nearest is a `ReadFile` on a
/// message-mode pipe.
#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
    wait: WaitMode,
    cursor: Cursor,
    spin: Spin,
    me: Identity,
}

/// The receiver's positions.
#[derive(Debug, Clone)]
struct Cursor {
    /// Next position to read, per lane.
    heads: Vec<u64>,
    /// Lane to look at first (round-robin).
    next: usize,
}

impl Cursor {
    /// The next message, if one is published.
    #[inline]
    fn find(&mut self, shared: &Shared) -> Result<Option<Found>> {
        let lanes = self.heads.len();
        let cap = u64::from(shared.geometry.capacity);
        for k in 0..lanes {
            let i = if self.next + k >= lanes {
                self.next + k - lanes
            } else {
                self.next + k
            };
            let slot = shared.slot(i, self.heads[i]);
            let ready = <LaneWords>::ready(slot.state, self.heads[i], cap);
            if let Some(len) = ready.map_err(|_| shared.corrupt())? {
                let len = len as usize;
                if len > shared.geometry.max_message as usize {
                    return Err(oversized());
                }
                return Ok(Some(Found {
                    lane: i,
                    len,
                    data: slot.data,
                }));
            }
        }
        Ok(None)
    }
}

#[cold]
fn oversized() -> Error {
    Error::with_message(
        ErrorKind::Protocol,
        "a sender published an oversized message",
    )
}

/// A receiver waiting for a message.
struct RxWait<'a> {
    shared: &'a Shared,
    cursor: &'a mut Cursor,
}

impl WaitSide for RxWait<'_> {
    type Out = Found;
    fn ready(&mut self) -> Result<Option<Found>> {
        self.cursor.find(self.shared)
    }
    fn announce(&mut self) -> bool {
        let (shared, heads) = (self.shared, &self.cursor.heads);
        let cap = u64::from(shared.geometry.capacity);
        // One announcement and fence cover every lane; a damaged word counts as a change.
        shared
            .lane(0)
            .consumer_will_sleep(shared.slot(0, heads[0]).state, heads[0], cap)
            || (1..heads.len()).any(|i| {
                <LaneWords>::ready(shared.slot(i, heads[i]).state, heads[i], cap) != Ok(None)
            })
    }
    fn awake(&mut self) {
        self.shared.lane(0).consumer_awake();
    }
    fn peer_alive(&mut self) -> bool {
        self.shared.producers_seen().load(Ordering::SeqCst) == 0 || self.shared.producers_alive()
    }
    fn bell(&self) -> &AtomicU32 {
        self.shared.doorbell()
    }
    fn peer_left(&self) -> bool {
        self.shared.producers_seen().load(Ordering::SeqCst) > 0 && !self.shared.producers_attached()
    }
    fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
    fn checks_liveness(&self) -> bool {
        self.shared.liveness
    }
}

/// Where the next message is.
#[derive(Debug, Clone, Copy)]
struct Found {
    lane: usize,
    len: usize,
    /// Offset of the message in the mapping.
    data: usize,
}

impl Receiver {
    /// The channel's geometry.
    pub fn geometry(&self) -> Geometry {
        self.shared.geometry
    }

    /// A handle that closes this end from another thread (see [`Closer`]). Windows: as
    /// `CancelIoEx` on the handle.
    pub fn closer(&self) -> Closer {
        Closer {
            shared: self.shared.clone(),
            bell: Bell::Door,
        }
    }

    /// Messages queued now, over all lanes.
    pub fn depth(&self) -> u64 {
        (0..self.shared.geometry.lanes as usize)
            .map(|i| {
                self.shared
                    .lane(i)
                    .tail
                    .load(Ordering::Acquire)
                    .saturating_sub(self.cursor.heads[i])
            })
            .fold(0, u64::saturating_add)
    }

    #[inline(never)]
    fn wait_message(&mut self, timeout: Option<Duration>) -> Result<Found> {
        if let Some(f) = self.cursor.find(&self.shared)? {
            return Ok(f);
        }
        if timeout == Some(Duration::ZERO) {
            return Err(Error::new(ErrorKind::Timeout));
        }
        // A sender came and went, and nothing is left to read: the peer is gone. (Only the pid
        // words are read here, no /proc: this runs every time the channel is found empty. A
        // sender killed without detaching is found by the liveness checks while waiting.)
        if self.shared.producers_seen().load(Ordering::SeqCst) > 0
            && !self.shared.producers_attached()
        {
            if let Some(f) = self.cursor.find(&self.shared)? {
                return Ok(f);
            }
            return Err(Error::with_message(
                ErrorKind::PeerGone,
                "no sender is attached to the channel",
            ));
        }
        self.shared
            .consumer_endpoint()
            .cpu
            .store(current_cpu(), Ordering::Relaxed);
        let peer_cpu = (0..self.cursor.heads.len()).find_map(|i| {
            let ep = self.shared.producer_endpoint(i);
            (ep.pid.load(Ordering::Relaxed) != 0).then(|| ep.cpu.load(Ordering::Relaxed))
        });
        let mut side = RxWait {
            shared: &self.shared,
            cursor: &mut self.cursor,
        };
        wait_until(
            self.wait,
            &mut self.spin,
            peer_cpu,
            deadline(timeout),
            &mut side,
        )
    }

    #[inline]
    fn take(&mut self, f: Found) {
        let c = &mut self.cursor;
        let head = c.heads[f.lane];
        let busy = self
            .shared
            .u32_at(self.shared.lane_off(f.lane) + L_PRODUCER_BUSY);
        let may_sleep = busy.load(Ordering::Relaxed) == 0;
        if self.shared.lane(f.lane).free(head, may_sleep) == Ring::Wake {
            ring(self.shared.space_bell(f.lane));
        }
        c.heads[f.lane] = head + 1;
        c.next = if f.lane + 1 == c.heads.len() {
            0
        } else {
            f.lane + 1
        };
    }

    /// A message already there inline; waiting out of line.
    #[inline]
    fn borrow_inner(&mut self, timeout: Option<Duration>) -> Result<RecvGuard<'_>> {
        let found = match self.cursor.find(&self.shared) {
            Ok(Some(f)) => f,
            _ => self.wait_message(timeout)?,
        };
        Ok(RecvGuard { rx: self, found })
    }

    /// Borrows the next message in place, waiting for one. Released when the guard drops.
    #[inline]
    pub fn recv_borrow(&mut self) -> Result<RecvGuard<'_>> {
        self.borrow_inner(None)
    }

    /// Borrows the next message if there is one ([`ErrorKind::Timeout`] otherwise).
    pub fn try_recv_borrow(&mut self) -> Result<RecvGuard<'_>> {
        self.borrow_inner(Some(Duration::ZERO))
    }

    /// Borrows the next message, waiting at most `timeout`.
    pub fn recv_borrow_timeout(&mut self, timeout: Duration) -> Result<RecvGuard<'_>> {
        self.borrow_inner(Some(timeout))
    }

    /// Receives a copy of the next message, waiting for one.
    pub fn recv(&mut self) -> Result<Vec<u8>> {
        Ok(self.recv_borrow()?.to_vec())
    }

    /// Receives a copy if a message is queued ([`ErrorKind::Timeout`] otherwise).
    pub fn try_recv(&mut self) -> Result<Vec<u8>> {
        Ok(self.try_recv_borrow()?.to_vec())
    }

    /// Receives a copy, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        Ok(self.recv_borrow_timeout(timeout)?.to_vec())
    }

    /// Copies the next message into `buf` and returns its length. A message longer than `buf`
    /// stays queued and the call fails with [`ErrorKind::InsufficientBuffer`].
    pub fn recv_into(&mut self, buf: &mut [u8]) -> Result<usize> {
        let msg = self.recv_borrow()?;
        if msg.len() > buf.len() {
            let e = Error::with_message(
                ErrorKind::InsufficientBuffer,
                format!("the next message has {} bytes", msg.len()),
            );
            msg.keep();
            return Err(e);
        }
        let n = msg.len();
        msg.read(0, &mut buf[..n])?;
        Ok(n)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        release(self.shared.consumer_endpoint(), self.me);
        // Senders waiting for room should notice that we left.
        for i in 0..self.cursor.heads.len() {
            ring(self.shared.space_bell(i));
        }
    }
}

/// A received message, borrowed in place in shared memory; released (its slot freed) on drop.
#[derive(Debug)]
pub struct RecvGuard<'a> {
    rx: &'a mut Receiver,
    found: Found,
}

impl RecvGuard<'_> {
    /// The message length.
    pub fn len(&self) -> usize {
        self.found.len
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.found.len == 0
    }

    #[inline]
    fn data(&self) -> *const u8 {
        self.rx.shared.data(self.found.data)
    }

    /// Copies bytes from `offset` of the message into `buf`.
    #[inline]
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        if offset > self.len() || buf.len() > self.len() - offset {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "read past the message",
            ));
        }
        // SAFETY: the range is inside the published slot (len <= max_message, checked when found);
        // `buf` is ours. A sender that broke the protocol could change the bytes meanwhile, which
        // can only tear the copy: any bytes are valid `u8`s.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(offset), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// A copy of the message.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        self.read(0, &mut v).expect("in range");
        v
    }

    /// The message in place.
    ///
    /// # Safety
    /// The bytes are in memory other processes map. The caller relies on every process attached
    /// to the channel following its protocol (nobody writes a published, unreleased slot) for as
    /// long as the slice lives.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: in bounds as in `read`; immutability is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.data(), self.len()) }
    }

    /// Leaves the message queued: the next receive returns it again (also when messages
    /// arrived meanwhile on other lanes).
    pub fn keep(self) {
        // The round-robin resumes at this lane, so that this message stays first in line.
        self.rx.cursor.next = self.found.lane;
        std::mem::forget(self);
    }
}

impl Drop for RecvGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.rx.take(self.found);
    }
}

/// How long one blocking wait of the async API lasts before the future looks again: bounds how
/// long a cancelled receive keeps a blocking thread.
#[cfg(feature = "tokio")]
const ASYNC_SLICE: Duration = Duration::from_millis(100);

/// Waits at most one [`ASYNC_SLICE`] for `side`; running out of time is not an error.
#[cfg(feature = "tokio")]
fn one_slice<W: WaitSide>(mode: WaitMode, side: &mut W) -> Result<()> {
    match wait_until(
        mode,
        &mut Spin::new(),
        None,
        deadline(Some(ASYNC_SLICE)),
        side,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Timeout => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs a blocking wait on tokio's blocking pool.
#[cfg(feature = "tokio")]
async fn wait_in_blocking_pool(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::with_message(ErrorKind::Other, format!("waiting thread failed: {e}")))?
}

#[cfg(feature = "tokio")]
impl Receiver {
    /// Receives a copy of the next message without blocking the async runtime (feature `tokio`).
    ///
    /// Cancel-safe: dropping the future loses no message. The waiting itself runs on tokio's
    /// blocking pool in slices of at most 100 ms and never consumes a message; the message is
    /// taken on the runtime thread when the future completes.
    pub async fn recv_async(&mut self) -> Result<Vec<u8>> {
        loop {
            match self.try_recv() {
                Ok(m) => return Ok(m),
                Err(e) if e.kind() == ErrorKind::Timeout => {}
                Err(e) => return Err(e),
            }
            let (shared, mut cursor, mode) = (self.shared.clone(), self.cursor.clone(), self.wait);
            wait_in_blocking_pool(move || {
                one_slice(
                    mode,
                    &mut RxWait {
                        shared: &shared,
                        cursor: &mut cursor,
                    },
                )
            })
            .await?;
        }
    }
}

#[cfg(feature = "tokio")]
impl Sender {
    /// Sends a copy of `msg`, waiting for room without blocking the async runtime (feature
    /// `tokio`). Cancel-safe: the message is sent only when the future completes.
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<()> {
        loop {
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Full => {}
                Err(e) => return Err(e),
            }
            let (shared, lane, tail, mode) = (self.shared.clone(), self.lane, self.tail, self.wait);
            wait_in_blocking_pool(move || {
                one_slice(
                    mode,
                    &mut TxWait {
                        shared: &shared,
                        lane,
                        tail,
                    },
                )
            })
            .await?;
        }
    }
}

/// What `ipckit ls` shows of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The geometry.
    pub geometry: Geometry,
    /// Messages queued.
    pub depth: u64,
    /// The attached receiver's pid.
    pub receiver: Option<u32>,
    /// The attached senders' pids.
    pub senders: Vec<u32>,
}

/// Describes the live channel `name` (without attaching to it).
pub fn describe(ns: &Namespace, name: &str) -> Result<ChannelInfo> {
    let name = ObjectName::parse(name)?;
    let shared = Shared::new(ObjectHandle::open(ns, &name, ObjectKind::Channel)?)?;
    let lanes = shared.geometry.lanes as usize;
    let depth = (0..lanes)
        .map(|i| {
            let l = shared.lane(i);
            l.tail
                .load(Ordering::Acquire)
                .saturating_sub(l.head.load(Ordering::Acquire))
        })
        .fold(0, u64::saturating_add);
    Ok(ChannelInfo {
        geometry: shared.geometry,
        depth,
        receiver: shared.consumer_endpoint().live(),
        senders: (0..lanes)
            .filter_map(|i| shared.producer_endpoint(i).live())
            .collect(),
    })
}
