//! How much to measure: message sizes, warm-up, rounds and their budgets.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variable that shrinks quick mode to a handful of iterations
/// (for the crate's own tests; the numbers it produces are meaningless).
pub const TINY_ENV: &str = "IPCKIT_BENCH_TINY";

/// When a warm-up or a measurement round stops.
///
/// A round stops after `max_iters` iterations, or as soon as it has run for
/// `time` *and* done at least `min_iters` iterations, whichever comes first.
/// The time bound keeps slow cases (same-core `shm-spin`) finite; the
/// minimum keeps a fair number of samples in every round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Iterations always performed (unless `max_iters` is smaller).
    pub min_iters: u64,
    /// Hard cap on iterations.
    pub max_iters: u64,
    /// Soft time limit.
    pub time: Duration,
}

impl Budget {
    const fn new(min_iters: u64, max_iters: u64, millis: u64) -> Self {
        Self {
            min_iters,
            max_iters,
            time: Duration::from_millis(millis),
        }
    }

    /// Whether a round that did `iters` iterations in `elapsed` is over.
    pub fn done(&self, iters: u64, elapsed: Duration) -> bool {
        iters >= self.max_iters || (iters >= self.min_iters && elapsed >= self.time)
    }
}

/// What the streaming phase of a size reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamMetric {
    /// Payload bytes per second, in MiB/s (`throughput`).
    Throughput,
    /// Messages per second (`rate`).
    Rate,
}

/// One phase of a two-process case, as both processes see it.
///
/// The peer gets only this list (through the environment); the parent owns
/// the budgets and tells the peer where rounds and phases end with flags in
/// the messages, so the peer never needs to know iteration counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Round trips of `size`-byte messages; the peer echoes each one.
    Rtt {
        /// Message size in bytes.
        size: usize,
    },
    /// Zero-copy round trips of `size`-byte messages of which only the
    /// stamp is written and read (transports with a zero-copy path only).
    RttZc {
        /// Message size in bytes.
        size: usize,
    },
    /// One-way stream of `size`-byte messages; the peer acknowledges the
    /// last message of each round.
    Stream {
        /// Message size in bytes.
        size: usize,
        /// The reported metric.
        metric: StreamMetric,
    },
}

/// The measurement plan of a run (`quick`, `full` or the tests' `tiny`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `quick`, `full` or `tiny`.
    pub mode: &'static str,
    /// Message sizes of the round-trip phases.
    pub rtt_sizes: Vec<usize>,
    /// Un-recorded warm-up before the round-trip rounds.
    pub rtt_warmup: Budget,
    /// Number of recorded round-trip rounds.
    pub rtt_rounds: u32,
    /// Budget of one round-trip round.
    pub rtt_round: Budget,
    /// Message sizes of the zero-copy round-trip phases (same budgets as
    /// `rtt_round`).
    pub zc_sizes: Vec<usize>,
    /// Streaming phases: message size and metric.
    pub streams: Vec<(usize, StreamMetric)>,
    /// Un-recorded warm-up round before the streaming rounds.
    pub stream_warmup: Budget,
    /// Number of recorded streaming rounds.
    pub stream_rounds: u32,
    /// Budget of one streaming round (in messages).
    pub stream_round: Budget,
    /// Sizes for the single-process `memcpy` ceiling.
    pub copy_sizes: Vec<usize>,
    /// Budget of one `memcpy` round (in batches).
    pub copy_round: Budget,
    /// Number of recorded `memcpy` rounds (after one warm-up round).
    pub copy_rounds: u32,
}

const KIB: usize = 1024;
const MIB: usize = KIB * KIB;

impl Params {
    /// The plan for `quick` or full mode; `tiny` (from [`TINY_ENV`]) wins
    /// over both.
    pub fn new(quick: bool, tiny: bool) -> Self {
        if tiny {
            Self::tiny()
        } else if quick {
            Self::quick()
        } else {
            Self::full()
        }
    }

    /// Whether the tests asked for the tiny plan.
    pub fn tiny_requested() -> bool {
        std::env::var_os(TINY_ENV).is_some_and(|v| !v.is_empty() && v != "0")
    }

    fn quick() -> Self {
        Self {
            mode: "quick",
            rtt_sizes: vec![64],
            rtt_warmup: Budget::new(50, 5_000, 50),
            rtt_rounds: 3,
            rtt_round: Budget::new(100, 20_000, 150),
            zc_sizes: vec![64, 4 * KIB],
            streams: vec![
                (64 * KIB, StreamMetric::Throughput),
                (64, StreamMetric::Rate),
            ],
            stream_warmup: Budget::new(16, u64::MAX, 30),
            stream_rounds: 3,
            stream_round: Budget::new(64, u64::MAX, 150),
            copy_sizes: vec![64, 64 * KIB],
            copy_round: Budget::new(100, 1_000_000, 100),
            copy_rounds: 3,
        }
    }

    fn full() -> Self {
        Self {
            mode: "full",
            rtt_sizes: vec![64, 4 * KIB, 64 * KIB],
            rtt_warmup: Budget::new(100, 20_000, 200),
            rtt_rounds: 5,
            rtt_round: Budget::new(200, 50_000, 300),
            zc_sizes: vec![64, 4 * KIB, 64 * KIB, MIB, 4 * MIB],
            streams: vec![
                (64 * KIB, StreamMetric::Throughput),
                (64, StreamMetric::Rate),
            ],
            stream_warmup: Budget::new(16, u64::MAX, 100),
            stream_rounds: 5,
            stream_round: Budget::new(64, u64::MAX, 300),
            copy_sizes: vec![64, 4 * KIB, 64 * KIB],
            copy_round: Budget::new(100, 1_000_000, 200),
            copy_rounds: 5,
        }
    }

    fn tiny() -> Self {
        Self {
            mode: "tiny",
            rtt_sizes: vec![64],
            rtt_warmup: Budget::new(5, 20, 2),
            rtt_rounds: 2,
            rtt_round: Budget::new(10, 200, 10),
            zc_sizes: vec![64, 4 * KIB],
            streams: vec![
                (64 * KIB, StreamMetric::Throughput),
                (64, StreamMetric::Rate),
            ],
            stream_warmup: Budget::new(4, 64, 2),
            stream_rounds: 2,
            stream_round: Budget::new(16, 2_000, 10),
            copy_sizes: vec![64, 64 * KIB],
            copy_round: Budget::new(10, 1_000, 5),
            copy_rounds: 2,
        }
    }

    /// The phases of every two-process case, in execution order.
    pub fn phases(&self) -> Vec<Phase> {
        let rtt = self.rtt_sizes.iter().map(|&size| Phase::Rtt { size });
        let zc = self.zc_sizes.iter().map(|&size| Phase::RttZc { size });
        let streams = self
            .streams
            .iter()
            .map(|&(size, metric)| Phase::Stream { size, metric });
        rtt.chain(zc).chain(streams).collect()
    }
}

/// `64B`, `4KiB`, `64KiB`, `1MiB`: the size part of a case name.
pub fn size_label(size: usize) -> String {
    if size >= MIB && size.is_multiple_of(MIB) {
        format!("{}MiB", size / MIB)
    } else if size >= KIB && size.is_multiple_of(KIB) {
        format!("{}KiB", size / KIB)
    } else {
        format!("{size}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(size_label(64), "64B");
        assert_eq!(size_label(4096), "4KiB");
        assert_eq!(size_label(65536), "64KiB");
        assert_eq!(size_label(1 << 20), "1MiB");
        assert_eq!(size_label(1000), "1000B");
    }

    #[test]
    fn budgets() {
        let b = Budget::new(10, 100, 5);
        assert!(!b.done(5, Duration::from_secs(1)));
        assert!(b.done(10, Duration::from_millis(5)));
        assert!(!b.done(50, Duration::from_millis(1)));
        assert!(b.done(100, Duration::ZERO));
    }

    #[test]
    fn plans_round_trip_through_json() {
        let phases = Params::new(false, false).phases();
        let json = serde_json::to_string(&phases).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Phase>>(&json).unwrap(), phases);
    }
}
