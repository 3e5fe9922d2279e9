//! Two-process benchmarks for ipckit and the raw OS mechanisms it is
//! measured against.
//!
//! # Method
//!
//! Every IPC measurement runs between two real processes. The harness
//! re-executes its own executable ([`std::env::current_exe`]) as the peer,
//! selecting the peer role with the `IPCKIT_BENCH_PEER` environment
//! variable; host binaries call [`run_peer_if_requested`] first thing in
//! `main` (see [`peer`] for the protocol and the lifetime rules: the peer
//! dies with the harness, the harness kills and reaps the peer on every
//! path, and the rendezvous is bounded by timeouts).
//!
//! Each two-process benchmark runs once per CPU placement ([`affinity`]):
//! `same-core` (both pinned to one CPU) and, with two or more CPUs,
//! `cross-core` (pinned to two different CPUs, preferably different
//! physical cores). The placement is the suffix of the record's `case`.
//!
//! Within a placement the phases of the plan ([`Params`]) run over the
//! mechanism's [`Channel`]:
//!
//! * `rtt-<size>`: round-trip latency. An un-recorded warm-up, then several
//!   rounds (3 in quick mode, 5 in full mode) of send-and-wait-for-echo;
//!   each round trip is timed with [`std::time::Instant`] (`clock_gettime`
//!   through the vDSO, one clock read included in every sample). The
//!   median and the nearest-rank p99 are computed over all samples of all
//!   rounds ([`stats`]). Sizes: 64 B (quick); 64 B, 4 KiB and 64 KiB (full).
//! * `rtt-zc-<size>`: zero-copy round-trip latency, for the mechanisms
//!   with a zero-copy path ([`Transport::zero_copy`]): the same rounds, but
//!   each message is a `size`-byte slot of which only the 8-byte stamp is
//!   written in place and read in place ([`Channel::send_stamp`],
//!   [`Channel::recv_stamp`]); a zero-copy path is flat in size. Sizes:
//!   64 B and 4 KiB (quick); 64 B, 4 KiB, 64 KiB, 1 MiB and 4 MiB (full).
//! * `stream-64KiB`: one-way throughput of 64 KiB messages, in MiB/s of
//!   payload; `stream-64B`: message rate of 64-byte messages, in msg/s.
//!   The harness sends back to back, the peer receives every message with
//!   its own receive operation and acknowledges the last one of each round;
//!   the value is the median over the rounds (after a warm-up round).
//!
//! Rounds stop after a number of iterations or, once a minimum number of
//! iterations is done, after a time budget, so slow cases (same-core
//! `shm-spin`, and the pure busy-polls of `ipckit-chan-spin` and `iceoryx2`,
//! whose same-core round trip is a scheduler time slice) stay short. Quick
//! mode takes about 15-25 s for all baselines on two CPUs, full mode about
//! two minutes.
//!
//! # The raw baselines
//!
//! | mechanism | data path |
//! |---|---|
//! | `memcpy` | single process: `copy_from_slice` between two hot buffers; the ceiling for anything that copies the message once |
//! | `pipe` | two anonymous pipes; one `write` per message, `read` until complete |
//! | `unix-stream` | Unix `SOCK_STREAM` socket; one `write` per message, `read` until complete |
//! | `unix-seqpacket` | Unix `SOCK_SEQPACKET` socket; one `send`/`recv` per message |
//! | `tcp-loopback` | TCP over 127.0.0.1, `TCP_NODELAY` |
//! | `shm-futex` | shared-memory rings (message copied in and out), waits sleep in `FUTEX_WAIT` and are woken with `FUTEX_WAKE` |
//! | `shm-spin` | the same rings, waits busy-poll: [`SPINS_BEFORE_YIELD`](raw::shm::SPINS_BEFORE_YIELD) polls with `spin_loop`, then `sched_yield`, repeated; same-core this mostly measures the yield path |
//!
//! In the `rtt-zc-*` cases the two shared-memory rings carry only the
//! stamp (the record's header still says `size` bytes): the floor of any
//! zero-copy path, flat in size by construction.
//!
//! See the modules under [`raw`] for the details of each.
//!
//! # ipckit and other crates
//!
//! | benchmark | baseline | data path |
//! |---|---|---|
//! | `ipckit-mutex`, `ipckit-mutex-contended`, `ipckit-event`, `ipckit-semaphore` | see [`ipckit_sync`] | named mutex, events, semaphores over a file mapping |
//! | `iceoryx2` | `shm-spin` | the iceoryx2 crate's publish-subscribe, loaned samples, busy-polled; round trips only ([`iox2`]) |
//! | `ipckit-chan-spin` | `shm-spin` | `ipckit::channel` pair, `WaitMode::BusyPoll` ([`ipckit_chan`]) |
//! | `ipckit-chan` | `shm-futex` | `ipckit::channel` pair, `WaitMode::Adaptive` |
//! | `ipckit-chan-sleep` | `shm-futex` | `ipckit::channel` pair, `WaitMode::Sleep` |
//! | `ipckit-pipe` | `unix-stream` | `ipckit::pipe` named pipe, message mode ([`ipckit_pipe`]) |
//! | `ipckit-pipe-byte` | `unix-stream` | the same named pipe in byte mode ([`ipckit_pipe`]) |
//! | `ipckit-rpc-ncalrpc`, `ipckit-rpc-ncalrpc-socket`, `ipckit-rpc-ncalrpc-async`, `ipckit-rpc-np`, `ipckit-rpc-tcp` | `rpc-unix-stream`, `rpc-tcp-loopback` | ipckit RPC null call and 1 MiB argument, server in the peer ([`rpc`], [`rpc_ipckit`]) |
//! | `tarpc-unix`, `tarpc-tcp`, `tonic-unix`, `tonic-tcp` | the same | tarpc and tonic (gRPC) on the same carriers ([`rpc_tarpc`], [`rpc_tonic`]) |
//!
//! A benchmark's ratio is always against its baseline; to compare
//! `ipckit-chan-spin` with `iceoryx2`, divide their values (or their
//! ratios against the common `shm-spin`) for the same case.
//!
//! # Output
//!
//! [`run`] prints a table (one row per mechanism and case) or, with
//! [`Options::json`], one [`Record`] per line as JSON with exactly the keys
//! `mechanism`, `case`, `metric`, `value`, `unit`, `baseline`, `ratio`.
//! Metrics are `median` and `p99` (unit `ns`), `throughput` (`MiB/s`) and
//! `rate` (`msg/s`). Raw baselines have `baseline` and `ratio` `null`;
//! other benchmarks name their baseline, and `ratio` is `value / baseline
//! value` from the same run (below 1 is better for `ns`, above 1 is better
//! for `MiB/s` and `msg/s`).
//!
//! # Adding a benchmark
//!
//! Implement [`Transport`] (and a [`Channel`]) for the mechanism and add a
//! [`Bench`] entry to [`registry::BENCHES`]; see [`registry`].

pub mod affinity;
pub mod channel;
pub mod cli;
pub mod interprocess_sock;
pub mod iox2;
pub mod ipckit_broker;
pub mod ipckit_chan;
pub mod ipckit_mailslot;
pub mod ipckit_pipe;
pub mod ipckit_sync;
pub mod params;
pub mod peer;
pub mod raw;
pub mod registry;
mod report;
pub mod rpc;
pub mod rpc_ipckit;
pub mod rpc_tarpc;
pub mod rpc_tonic;
pub mod stats;

use std::io::{self, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

pub use channel::{Channel, ErasedTransport, Job, Measurement, Transport};
pub use params::Params;
pub use peer::{Launcher, Liveness, PeerEnv, run_peer_if_requested};
pub use registry::{Bench, Group, Kind};

use affinity::PinGuard;
use report::Reporter;

/// What to run and how to report it.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Mechanism names or `-`-prefixes (`shm`); empty selects everything.
    pub filters: Vec<String>,
    /// Quick mode: 64 B round trips only, shorter and fewer rounds.
    pub quick: bool,
    /// Print only JSON lines (one [`Record`] per line) instead of the table.
    pub json: bool,
    /// Show a progress bar on stderr (only when stderr is a terminal and
    /// `json` is off).
    pub progress: bool,
}

/// One measured value.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Benchmark name, e.g. `unix-stream`.
    pub mechanism: String,
    /// Case, e.g. `rtt-64B/cross-core`, `stream-64KiB/same-core`,
    /// `copy-64B`.
    pub case: String,
    /// `median`, `p99`, `throughput` or `rate`.
    pub metric: String,
    /// The value, in `unit`.
    pub value: f64,
    /// `ns`, `MiB/s` or `msg/s`.
    pub unit: String,
    /// The benchmark this one is compared with; `None` for raw baselines.
    pub baseline: Option<String>,
    /// `value / baseline value` for the same case and metric in the same
    /// run; `None` without a baseline or a matching baseline record.
    pub ratio: Option<f64>,
}

/// The names accepted as filters, in run order.
pub fn mechanisms() -> Vec<&'static str> {
    registry::benches().iter().map(|b| b.name).collect()
}

/// Runs the selected benchmarks, writing the table or the JSON lines to
/// `out` as results come in, and returns all records.
///
/// Unknown filters are an [`io::ErrorKind::InvalidInput`] error listing the
/// valid names. The first failing benchmark aborts the run with an error
/// naming it (and quoting its peer's stderr); what was already written
/// stays written.
///
/// The current executable must call [`run_peer_if_requested`] at the start
/// of `main`, since it is started as the peer. Peers are bound to the
/// calling thread (`PR_SET_PDEATHSIG` fires when the thread that started
/// them exits), and that thread is pinned to a CPU while a case runs (its
/// previous affinity is restored afterwards).
pub fn run(opts: &Options, out: &mut dyn Write) -> io::Result<Vec<Record>> {
    let selected = registry::select(&opts.filters)?;
    let params = Params::new(opts.quick, Params::tiny_requested());
    let cpus = affinity::allowed_cpus()?;
    let placements = affinity::placements(&cpus);
    let Some(first) = placements.first() else {
        return Err(io::Error::other("no CPU available to run on"));
    };
    let exe = std::env::current_exe()?;

    let mut jobs = Vec::new();
    for bench in &selected {
        match bench.kind {
            Kind::TwoProcess(_) => jobs.extend(placements.iter().map(|p| (*bench, Some(p)))),
            Kind::Local(_) => jobs.push((*bench, None)),
        }
    }

    let bar = if opts.progress && !opts.json && io::stderr().is_terminal() {
        let bar =
            ProgressBar::with_draw_target(Some(jobs.len() as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut reporter = Reporter::new(out, opts.json, &bar);
    let result = (|| {
        reporter.header(&params, &placements)?;
        let mut records = Vec::new();
        for (bench, placement) in jobs {
            let label = placement.map_or("", |p| p.label);
            bar.set_message(format!("{} {label}", bench.name));
            let measured = match bench.kind {
                Kind::TwoProcess(transport) => transport.run_parent(&Job {
                    exe: &exe,
                    mechanism: bench.name,
                    placement: placement.unwrap_or(first),
                    params: &params,
                }),
                Kind::Local(f) => PinGuard::pin(first.parent_cpu).and_then(|_pin| f(&params)),
            };
            let measured = measured.map_err(|e| {
                let at = if label.is_empty() {
                    bench.name.to_owned()
                } else {
                    format!("{} ({label})", bench.name)
                };
                io::Error::new(e.kind(), format!("{at}: {e}"))
            })?;
            records.extend(reporter.emit(bench, measured)?);
            bar.inc(1);
        }
        Ok(records)
    })();
    bar.finish_and_clear();
    result
}
