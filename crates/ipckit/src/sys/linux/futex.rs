//! Futexes shared between processes: sleep until a 32-bit word in shared memory changes.
//!
//! Windows counterpart: the kernel wait inside `WaitForSingleObject` /
//! `WaitForMultipleObjects` (and `WaitOnAddress`, which is process-private).
//!
//! The words live in memory that several processes map, so these are *shared* futexes (no
//! `FUTEX_PRIVATE_FLAG`). Waiting costs no CPU: the thread sleeps in the kernel.
//!
//! Linux references: `futex(2)` (`FUTEX_WAIT`, `FUTEX_WAKE`), `futex_waitv(2)` (Linux 5.16+),
//! `Documentation/userspace-api/futex2.rst`.

use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::thread::futex;

use crate::error::{Error, ErrorKind, Result};

/// Why a wait returned. Spurious returns are possible: callers re-check their condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Woken, or the word no longer held the expected value, or a signal arrived.
    Changed,
    /// The timeout passed.
    TimedOut,
}

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos() as i64,
    }
}

/// Sleeps while `*word == expected`, at most until `deadline` (`None`: no limit).
pub fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> Result<Wake> {
    let timeout = match deadline {
        None => None,
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(timespec(left)),
            _ => return Ok(Wake::TimedOut),
        },
    };
    match futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref()) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(Wake::Changed),
        Err(Errno::TIMEDOUT) => Ok(Wake::TimedOut),
        Err(e) => Err(Error::from_io("futex wait failed", e.into())),
    }
}

/// Wakes up to `n` threads sleeping on `word` (in any process); returns how many woke.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), n.min(i32::MAX as u32)).unwrap_or(0)
}

/// Wakes every thread sleeping on `word`.
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, i32::MAX as u32)
}

/// Makes every thread of every process on the machine pass a full memory barrier
/// (`membarrier(MEMBARRIER_CMD_GLOBAL)`, see `membarrier(2)`): after it returns, stores that other
/// CPUs made before are visible here, and their later loads see our earlier stores. Slow (it
/// waits for an RCU grace period): for rare protocol transitions only. Errors are ignored; callers
/// have a bounded fallback.
pub fn global_barrier() {
    let _ = rustix::thread::membarrier(rustix::thread::MembarrierCommand::Global);
}

/// The most words one [`wait_any`] can watch (`futex_waitv`'s limit).
pub const MAX_WAIT_ANY: usize = 128;

/// Sleeps until any `words[i].0` differs from `words[i].1`, at most until `deadline`.
/// Returns `Changed` (possibly spuriously) or `TimedOut`.
pub fn wait_any(words: &[(&AtomicU32, u32)], deadline: Option<Instant>) -> Result<Wake> {
    if words.len() > MAX_WAIT_ANY {
        return Err(Error::with_message(
            ErrorKind::InvalidParameter,
            "too many objects to wait for",
        ));
    }
    if let [(w, v)] = words {
        return wait(w, *v, deadline);
    }
    let mut waits = [futex::Wait::new(); MAX_WAIT_ANY];
    for (slot, (w, v)) in waits.iter_mut().zip(words) {
        slot.val = u64::from(*v);
        slot.uaddr = futex::WaitPtr::new(w.as_ptr().cast());
        slot.flags = futex::WaitFlags::SIZE_U32;
    }
    // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
    let abs = match deadline {
        None => None,
        Some(d) => {
            let left = match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => return Ok(Wake::TimedOut),
            };
            let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            let now = Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
            Some(timespec(now + left))
        }
    };
    match futex::waitv(
        &waits[..words.len()],
        futex::WaitvFlags::empty(),
        abs.as_ref(),
        rustix::time::ClockId::Monotonic,
    ) {
        Ok(_) | Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(Wake::Changed),
        Err(Errno::TIMEDOUT) => Ok(Wake::TimedOut),
        Err(e) => Err(Error::from_io("futex_waitv failed", e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_returns_at_once_and_timeout_times_out() {
        let w = AtomicU32::new(1);
        assert_eq!(wait(&w, 0, None).unwrap(), Wake::Changed);
        let t = Instant::now() + Duration::from_millis(5);
        assert_eq!(wait(&w, 1, Some(t)).unwrap(), Wake::TimedOut);
        let v = AtomicU32::new(7);
        assert_eq!(
            wait_any(&[(&w, 1), (&v, 7)], Some(t)).unwrap(),
            Wake::TimedOut
        );
        assert_eq!(wait_any(&[(&w, 1), (&v, 8)], None).unwrap(), Wake::Changed);
        assert_eq!(wake(&w, 1), 0);
    }
}
