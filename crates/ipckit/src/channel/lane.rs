//! The lane protocol: one producer, one consumer, a ring of fixed-size slots.
//!
//! This is the synchronisation core of the channel, written once and used both by the real
//! channel (atomics in shared memory) and by the loom model (`--cfg ipckit_loom`), which checks it
//! exhaustively. It does no I/O and never sleeps: the caller decides how to wait.
//!
//! Protocol (a ring whose slots carry their own state word, with a sleep handshake):
//! - The producer writes slot `tail % cap`, then publishes it with one Release store of the
//!   slot's state word: the message length and the sequence `tail + 1` (mod 2^32) together; then
//!   it stores the lane's `tail` (which only observers and a later producer read); if the
//!   consumer announced sleep, it rings the doorbell.
//! - The consumer reads slot `head % cap` once its state word's sequence is `head + 1` (Acquire):
//!   it polls the line it is about to read anyway, not a separate index, and one load gives it
//!   the length too. It frees the slot with a Release store of `head + 1`; if the producer
//!   announced it waits for space, it rings the producer's bell.
//! - A side that wants to sleep stores its announcement, re-checks the word it waits on, and
//!   only then sleeps; the other side stores that word and then reads the announcement. A
//!   sequentially consistent fence between the store and the load on both sides guarantees that
//!   at least one of them sees the other's store, so no wake-up is lost.
//! - A producer killed before publishing leaves nothing visible; one killed after publishing
//!   left a complete message (possibly with `tail` not yet advanced, which the next producer
//!   repairs). Positions only grow, so nothing is read twice.

use std::sync::atomic::Ordering;

#[cfg(ipckit_loom)]
use loom::sync::atomic::fence;
#[cfg(not(ipckit_loom))]
use std::sync::atomic::fence;

/// The atomic operations the protocol uses on a word, so that the same code runs on the
/// standard atomics (in shared memory) and on loom's (in the model).
pub(crate) trait Word<T> {
    fn load(&self, order: Ordering) -> T;
    fn store(&self, value: T, order: Ordering);
}

macro_rules! word {
    ($atomic:ty, $t:ty) => {
        impl Word<$t> for $atomic {
            fn load(&self, order: Ordering) -> $t {
                <$atomic>::load(self, order)
            }
            fn store(&self, value: $t, order: Ordering) {
                <$atomic>::store(self, value, order)
            }
        }
    };
}
word!(std::sync::atomic::AtomicU64, u64);
word!(std::sync::atomic::AtomicU32, u32);
#[cfg(ipckit_loom)]
word!(loom::sync::atomic::AtomicU64, u64);
#[cfg(ipckit_loom)]
word!(loom::sync::atomic::AtomicU32, u32);

/// The shared control words of one lane.
#[derive(Debug)]
pub(crate) struct LaneWords<
    'a,
    W64: Word<u64> = std::sync::atomic::AtomicU64,
    W32: Word<u32> = std::sync::atomic::AtomicU32,
> {
    /// Next position the producer publishes (written by the producer only).
    pub tail: &'a W64,
    /// Next position the consumer reads (written by the consumer only).
    pub head: &'a W64,
    /// Non-zero while the producer sleeps waiting for space.
    pub producer_sleeping: &'a W32,
    /// Non-zero while the consumer sleeps waiting for messages (shared by all lanes).
    pub consumer_sleeping: &'a W32,
}

/// A slot's state word: the sequence `seq` (a position + 1, mod 2^32) in the low half, the
/// message length in the high half.
pub(crate) fn slot_state(seq: u64, len: u32) -> u64 {
    (u64::from(len) << 32) | u64::from(seq as u32)
}

/// Why an index read from shared memory cannot be right: a peer broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corrupt;

/// What publishing or freeing asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Ring {
    /// Nobody sleeps: nothing to do.
    Quiet,
    /// The other side sleeps: wake it.
    Wake,
}

impl<W64: Word<u64>, W32: Word<u32>> LaneWords<'_, W64, W32> {
    /// Producer: how many slots are free, given the producer's `tail` (its own copy) and the
    /// lane capacity. Reads `head` with Acquire so the consumer's reads of freed slots happen
    /// before our rewrite.
    pub fn free_slots(&self, tail: u64, cap: u64) -> Result<u64, Corrupt> {
        let head = self.head.load(Ordering::Acquire);
        let used = tail.checked_sub(head).ok_or(Corrupt)?;
        cap.checked_sub(used).ok_or(Corrupt)
    }

    /// Producer: publishes the `len`-byte message in slot `tail % cap`, whose state word is
    /// `state`. `consumer_may_sleep` false (a busy-polling consumer, which never sleeps) skips the
    /// sleep handshake and its fence.
    pub fn publish(&self, state: &W64, tail: u64, len: u32, consumer_may_sleep: bool) -> Ring {
        state.store(slot_state(tail + 1, len), Ordering::Release);
        self.tail.store(tail + 1, Ordering::Release);
        if !consumer_may_sleep {
            return Ring::Quiet;
        }
        // Store, full fence, load (both sides): the sleep handshake of the module docs.
        fence(Ordering::SeqCst);
        if self.consumer_sleeping.load(Ordering::Relaxed) != 0 {
            Ring::Wake
        } else {
            Ring::Quiet
        }
    }

    /// Consumer: the length of the message at position `head` (its own copy) once it is
    /// published, given the state word `state` of slot `head % cap`. Acquire: the message's bytes
    /// are then visible. Until then the word's sequence is what the slot's previous message left
    /// (`head + 1 - cap`), or 0 in the first lap; any other value means a peer broke the
    /// protocol. (Only these two values are possible, and they differ modulo 2^32 since a lane
    /// has fewer than 2^32 slots.)
    pub fn ready(state: &W64, head: u64, cap: u64) -> Result<Option<u32>, Corrupt> {
        let s = state.load(Ordering::Acquire);
        let next = head.wrapping_add(1);
        if s as u32 == next as u32 {
            Ok(Some((s >> 32) as u32))
        } else if s as u32 == next.saturating_sub(cap) as u32 {
            Ok(None)
        } else {
            Err(Corrupt)
        }
    }

    /// Consumer: frees slot `head % cap`. `producer_may_sleep` as for [`publish`](Self::publish).
    pub fn free(&self, head: u64, producer_may_sleep: bool) -> Ring {
        self.head.store(head + 1, Ordering::Release);
        if !producer_may_sleep {
            return Ring::Quiet;
        }
        fence(Ordering::SeqCst);
        if self.producer_sleeping.load(Ordering::Relaxed) != 0 {
            Ring::Wake
        } else {
            Ring::Quiet
        }
    }

    /// Consumer: announces it is about to sleep; returns whether the message at `head` (slot
    /// state word `state`) arrived meanwhile (then it must not sleep). Either way it must call
    /// [`consumer_awake`](Self::consumer_awake) once it no longer sleeps.
    /// A damaged word counts as a change, so that the caller looks again and reports it.
    pub fn consumer_will_sleep(&self, state: &W64, head: u64, cap: u64) -> bool {
        self.consumer_sleeping.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Self::ready(state, head, cap) != Ok(None)
    }

    /// Consumer: no longer sleeping.
    pub fn consumer_awake(&self) {
        self.consumer_sleeping.store(0, Ordering::Relaxed);
    }

    /// Producer: announces it is about to sleep for space; returns whether space appeared.
    pub fn producer_will_sleep(&self, tail: u64, cap: u64) -> bool {
        self.producer_sleeping.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.head.load(Ordering::Relaxed).wrapping_add(cap) != tail
    }

    /// Producer: no longer sleeping.
    pub fn producer_awake(&self) {
        self.producer_sleeping.store(0, Ordering::Relaxed);
    }
}

#[cfg(all(test, ipckit_loom))]
mod model {
    //! `RUSTFLAGS="--cfg ipckit_loom" cargo test -p ipckit --release --lib channel::lane::model`
    use super::*;
    use loom::sync::atomic::{AtomicU32, AtomicU64};
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    /// Heap stand-in for the shared memory of one lane with `CAP` slots, whose payload is
    /// written and read with relaxed atomics: a missing happens-before edge shows up as a stale
    /// payload, which the consumer's checks catch.
    struct Lane<const CAP: usize> {
        tail: AtomicU64,
        head: AtomicU64,
        psleep: AtomicU32,
        csleep: AtomicU32,
        pbell: Bell,
        cbell: Bell,
        slots: [AtomicU64; CAP],
        seqs: [AtomicU64; CAP],
    }

    /// A futex stand-in: a word, and a condition variable for sleepers. `wait(seen)` returns at
    /// once when the word differs from `seen`, like FUTEX_WAIT; a lost wake-up leaves a sleeper
    /// blocked forever, which loom reports as a deadlock.
    struct Bell {
        word: AtomicU32,
        lock: Mutex<()>,
        cv: Condvar,
    }

    impl Bell {
        fn new() -> Self {
            Bell {
                word: AtomicU32::new(0),
                lock: Mutex::new(()),
                cv: Condvar::new(),
            }
        }
        fn seen(&self) -> u32 {
            self.word.load(Ordering::SeqCst)
        }
        fn wait(&self, seen: u32) {
            let mut g = self.lock.lock().unwrap();
            while self.word.load(Ordering::SeqCst) == seen {
                g = self.cv.wait(g).unwrap();
            }
        }
        fn ring(&self) {
            self.word.fetch_add(1, Ordering::SeqCst);
            let _g = self.lock.lock().unwrap();
            self.cv.notify_all();
        }
    }

    impl<const CAP: usize> Lane<CAP> {
        fn new() -> Self {
            Lane {
                tail: AtomicU64::new(0),
                head: AtomicU64::new(0),
                psleep: AtomicU32::new(0),
                csleep: AtomicU32::new(0),
                pbell: Bell::new(),
                cbell: Bell::new(),
                slots: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
                seqs: std::array::from_fn(|_| AtomicU64::new(0)),
            }
        }
        fn words(&self) -> LaneWords<'_, AtomicU64, AtomicU32> {
            LaneWords {
                tail: &self.tail,
                head: &self.head,
                producer_sleeping: &self.psleep,
                consumer_sleeping: &self.csleep,
            }
        }
    }

    fn run<const CAP: usize>(messages: u64) {
        loom::model(move || {
            let lane = Arc::new(Lane::<CAP>::new());
            let p = lane.clone();
            let producer = thread::spawn(move || {
                let w = p.words();
                let mut tail = 0;
                for m in 0..messages {
                    loop {
                        if w.free_slots(tail, CAP as u64).unwrap() > 0 {
                            break;
                        }
                        let seen = p.pbell.seen();
                        if !w.producer_will_sleep(tail, CAP as u64) {
                            p.pbell.wait(seen);
                        }
                        w.producer_awake();
                    }
                    let i = (tail % CAP as u64) as usize;
                    p.slots[i].store(m * 7 + 1, Ordering::Relaxed);
                    if w.publish(&p.seqs[i], tail, m as u32 + 1, true) == Ring::Wake {
                        p.cbell.ring();
                    }
                    tail += 1;
                }
            });
            let w = lane.words();
            let mut head = 0;
            for m in 0..messages {
                let seq = &lane.seqs[(head % CAP as u64) as usize];
                loop {
                    let len = LaneWords::<AtomicU64, AtomicU32>::ready(seq, head, CAP as u64);
                    if let Some(len) = len.unwrap() {
                        assert_eq!(len, m as u32 + 1, "torn length");
                        break;
                    }
                    let seen = lane.cbell.seen();
                    if !w.consumer_will_sleep(seq, head, CAP as u64) {
                        lane.cbell.wait(seen);
                    }
                    w.consumer_awake();
                }
                let v = lane.slots[(head % CAP as u64) as usize].load(Ordering::Relaxed);
                assert_eq!(v, m * 7 + 1, "torn, stale or duplicate message");
                if w.free(head, true) == Ring::Wake {
                    lane.pbell.ring();
                }
                head += 1;
            }
            producer.join().unwrap();
        });
    }

    #[test]
    fn one_slot_three_messages() {
        run::<1>(3);
    }

    #[test]
    fn two_slots_three_messages() {
        run::<2>(3);
    }
}
