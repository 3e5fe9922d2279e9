//! The message channel abstraction and the generic two-process drivers.
//!
//! A two-process benchmark only has to provide a [`Channel`] (send one
//! message, receive one message of a known size) and a [`Transport`] (how
//! the harness and the peer each obtain their end). The drivers here run the
//! phases of the plan over it identically for every mechanism:
//!
//! * **round trip** (`rtt-<size>`): the harness stamps a sequence number in
//!   the first 8 bytes, sends the message, receives the echo and checks the
//!   stamp. Each sample is `Instant::now()` after the receive minus
//!   `Instant::now()` before the send, so it includes one clock read
//!   (~20-30 ns through the vDSO).
//! * **zero-copy round trip** (`rtt-zc-<size>`, only for transports whose
//!   [`Transport::zero_copy`] is true): the same exchange through
//!   [`Channel::send_stamp`] / [`Channel::recv_stamp`], which move a
//!   `size`-byte message but write and read only its 8-byte stamp in place
//!   (loan or reserve a slot, write the stamp, publish; borrow the message,
//!   read the stamp, release). The payload is never touched, so a true
//!   zero-copy path is flat in size.
//! * **stream** (`stream-<size>`): the harness sends messages back to back;
//!   the peer receives each one with one receive operation, checks the
//!   sequence, and acknowledges the last message of a round with an 8-byte
//!   message. A round's time runs from its first send to the receipt of the
//!   acknowledgement.
//!
//! The harness marks the last message of a round ([`END_BATCH`]) and of a
//! phase ([`END_PHASE`]) in the stamp, so the peer needs no iteration
//! counts and the harness can bound rounds by time.

use std::io;
use std::time::{Duration, Instant};

use crate::affinity::{PinGuard, Placement};
use crate::params::{Budget, Params, Phase, StreamMetric, size_label};
use crate::peer::{Launcher, PeerEnv, invalid};
use crate::stats::{Summary, median_f64};

/// Stamp flag: last message of a streaming round (the peer acknowledges it).
pub const END_BATCH: u64 = 1 << 62;
/// Stamp flag: last message of a phase (the peer echoes or acknowledges it
/// and moves on to the next phase).
pub const END_PHASE: u64 = 1 << 63;
const SEQ_MASK: u64 = END_BATCH - 1;
/// Size of a stamp and of a streaming acknowledgement.
pub const STAMP_LEN: usize = 8;

/// One end of a bidirectional message channel between two processes.
///
/// Messages are at least [`STAMP_LEN`] bytes long and at most 64 KiB in the
/// shipped plans (4 MiB for the zero-copy round trips). All operations block
/// until done; a waiting side must give up with an error once the other
/// process is gone.
pub trait Channel {
    /// Sends one message holding all of `msg`.
    fn send(&mut self, msg: &[u8]) -> io::Result<()>;
    /// Receives one message of exactly `buf.len()` bytes into `buf`.
    /// Implementations report an end of stream or a size mismatch as an
    /// error.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()>;

    /// Zero-copy send (only called when [`Transport::zero_copy`] is true):
    /// publishes a `len`-byte message whose first [`STAMP_LEN`] bytes are
    /// `stamp` (little endian), writing nothing but the stamp into the
    /// message's place in shared memory; the rest of the payload is
    /// whatever the slot held.
    fn send_stamp(&mut self, len: usize, stamp: u64) -> io::Result<()> {
        let _ = (len, stamp);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this channel has no zero-copy path",
        ))
    }

    /// Zero-copy receive (only called when [`Transport::zero_copy`] is
    /// true): takes the next message, which must be `len` bytes long,
    /// reads only its stamp in place and releases it.
    fn recv_stamp(&mut self, len: usize) -> io::Result<u64> {
        let _ = len;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this channel has no zero-copy path",
        ))
    }

    /// Called on both sides before phase number `index` of the plan (the
    /// plan as filtered for this transport) starts, for channels that use
    /// different resources per phase. Does nothing by default.
    fn begin_phase(&mut self, index: usize, phase: &Phase) -> io::Result<()> {
        let _ = (index, phase);
        Ok(())
    }
}

/// How the two processes of a case obtain their ends of a [`Channel`].
///
/// Implement this (on a unit struct) to add a two-process benchmark; the
/// drivers, placement, peer management and reporting come for free through
/// the blanket [`ErasedTransport`] implementation.
pub trait Transport: Sync + 'static {
    /// The channel end type (the same type serves both processes).
    type Chan: Channel;

    /// Harness side: create the rendezvous (listener, shared file, …),
    /// start the peer with [`Launcher::spawn`] (passing the address), wait
    /// for it with [`Launcher::wait_for`] and return the connected end.
    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<Self::Chan>;

    /// Peer side: connect to `peer.addr` and return the connected end.
    fn open_peer(&self, peer: &PeerEnv) -> io::Result<Self::Chan>;

    /// Whether the streaming phases apply (false for one-slot hand-off channels, whose
    /// streaming numbers would only restate the round trip).
    fn streams(&self) -> bool {
        true
    }

    /// Whether the zero-copy round trips (`rtt-zc-<size>`) apply: the
    /// channel implements [`Channel::send_stamp`] and [`Channel::recv_stamp`].
    fn zero_copy(&self) -> bool {
        false
    }
}

/// The phases of `params` that a transport runs.
fn phases_for<T: Transport>(t: &T, params: &Params) -> Vec<Phase> {
    let mut phases = params.phases();
    phases.retain(|p| match p {
        Phase::Rtt { .. } => true,
        Phase::RttZc { .. } => t.zero_copy(),
        Phase::Stream { .. } => t.streams(),
    });
    phases
}

/// One measured value of a case, before it is named after its mechanism.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Case name, e.g. `rtt-64B/cross-core` or `copy-64KiB`.
    pub case: String,
    /// `median`, `p99`, `throughput` or `rate`.
    pub metric: &'static str,
    /// The value in `unit`.
    pub value: f64,
    /// `ns`, `MiB/s` or `msg/s`.
    pub unit: &'static str,
}

impl Measurement {
    pub(crate) fn new(case: String, metric: &'static str, value: f64, unit: &'static str) -> Self {
        Self {
            case,
            metric,
            value,
            unit,
        }
    }
}

/// What the harness needs to run one two-process case.
#[derive(Debug)]
pub struct Job<'a> {
    /// Executable to start as the peer.
    pub exe: &'a std::path::Path,
    /// Benchmark name (selects the peer role).
    pub mechanism: &'a str,
    /// CPU placement of the case.
    pub placement: &'a Placement,
    /// Measurement plan.
    pub params: &'a Params,
}

/// Object-safe form of [`Transport`], implemented for every `Transport`;
/// this is what the registry stores.
pub trait ErasedTransport: Sync {
    /// Runs all phases of the plan as the harness and returns the results.
    fn run_parent(&self, job: &Job<'_>) -> io::Result<Vec<Measurement>>;
    /// Serves all phases as the peer.
    fn run_peer(&self, env: &PeerEnv) -> io::Result<()>;
}

impl<T: Transport> ErasedTransport for T {
    fn run_parent(&self, job: &Job<'_>) -> io::Result<Vec<Measurement>> {
        // The peer inherits this mask and then pins itself to its own CPU.
        let _pin = PinGuard::pin(job.placement.parent_cpu)?;
        let phases = phases_for(self, job.params);
        let mut launcher = Launcher::new(job.exe, job.mechanism, job.placement, &phases)?;
        let opened = self.open_parent(&mut launcher);
        let process = launcher.take_process();
        match (opened, process) {
            (Ok(mut chan), Some(peer)) => {
                let result = drive_parent(&mut chan, &phases, job);
                // Closing our end lets the peer see the end of the case.
                drop(chan);
                match result {
                    Ok(m) => peer.finish().map(|()| m),
                    Err(e) => Err(peer.fail(e)),
                }
            }
            (Ok(_), None) => Err(io::Error::other("the transport did not start a peer")),
            (Err(e), Some(peer)) => Err(peer.fail(e)),
            (Err(e), None) => Err(e),
        }
    }

    fn run_peer(&self, env: &PeerEnv) -> io::Result<()> {
        let mut chan = self.open_peer(env)?;
        for (index, phase) in env.phases.iter().enumerate() {
            chan.begin_phase(index, phase)?;
            match *phase {
                Phase::Rtt { size } => peer_rtt(&mut chan, size)?,
                Phase::RttZc { size } => peer_rtt_zc(&mut chan, size)?,
                Phase::Stream { size, .. } => peer_stream(&mut chan, size)?,
            }
        }
        Ok(())
    }
}

fn drive_parent<C: Channel>(
    chan: &mut C,
    phases: &[Phase],
    job: &Job<'_>,
) -> io::Result<Vec<Measurement>> {
    let p = job.params;
    let place = job.placement.label;
    let mut out = Vec::new();
    for (index, phase) in phases.iter().enumerate() {
        chan.begin_phase(index, phase)?;
        match *phase {
            Phase::Rtt { size } | Phase::RttZc { size } => {
                let zero_copy = matches!(phase, Phase::RttZc { .. });
                let s = parent_rtt(chan, size, zero_copy, p)?;
                let kind = if zero_copy { "rtt-zc" } else { "rtt" };
                let case = format!("{kind}-{}/{place}", size_label(size));
                out.push(Measurement::new(case.clone(), "median", s.median, "ns"));
                out.push(Measurement::new(case, "p99", s.p99, "ns"));
            }
            Phase::Stream { size, metric } => {
                let rounds = parent_stream(chan, size, p)?;
                let case = format!("stream-{}/{place}", size_label(size));
                let per_round: Vec<f64> = rounds
                    .iter()
                    .map(|&(n, t)| match metric {
                        StreamMetric::Throughput => {
                            (n as f64 * size as f64) / t.as_secs_f64() / (1024.0 * 1024.0)
                        }
                        StreamMetric::Rate => n as f64 / t.as_secs_f64(),
                    })
                    .collect();
                let value = median_f64(&per_round).ok_or_else(|| invalid("no stream rounds"))?;
                out.push(match metric {
                    StreamMetric::Throughput => {
                        Measurement::new(case, "throughput", value, "MiB/s")
                    }
                    StreamMetric::Rate => Measurement::new(case, "rate", value, "msg/s"),
                });
            }
        }
    }
    Ok(out)
}

fn put_stamp(buf: &mut [u8], stamp: u64) {
    buf[..STAMP_LEN].copy_from_slice(&stamp.to_le_bytes());
}

fn get_stamp(buf: &[u8]) -> u64 {
    let mut b = [0u8; STAMP_LEN];
    b.copy_from_slice(&buf[..STAMP_LEN]);
    u64::from_le_bytes(b)
}

fn check_size(size: usize) -> io::Result<()> {
    if size < STAMP_LEN {
        return Err(invalid(format!(
            "messages must be at least {STAMP_LEN} bytes"
        )));
    }
    Ok(())
}

/// Harness side of a round-trip phase: warm-up, then `rtt_rounds` rounds;
/// all samples (ns) pooled into one summary. `zero_copy` exchanges through
/// [`Channel::send_stamp`] / [`Channel::recv_stamp`] instead of copying
/// whole messages.
fn parent_rtt<C: Channel>(
    chan: &mut C,
    size: usize,
    zero_copy: bool,
    p: &Params,
) -> io::Result<Summary> {
    check_size(size)?;
    let buf_len = if zero_copy { 0 } else { size };
    let mut tx = vec![0xA5u8; buf_len];
    let mut rx = vec![0u8; buf_len];
    let mut seq = 0u64;
    let mut exchange = |stamp: u64, chan: &mut C| -> io::Result<()> {
        let echoed = if zero_copy {
            chan.send_stamp(size, stamp)?;
            chan.recv_stamp(size)?
        } else {
            put_stamp(&mut tx, stamp);
            chan.send(&tx)?;
            chan.recv(&mut rx)?;
            get_stamp(&rx)
        };
        if echoed != stamp {
            return Err(invalid(format!(
                "echo mismatch: sent stamp {stamp:#x}, got {echoed:#x}"
            )));
        }
        Ok(())
    };

    let start = Instant::now();
    let mut n = 0;
    while !p.rtt_warmup.done(n, start.elapsed()) {
        seq += 1;
        exchange(seq, chan)?;
        n += 1;
    }

    let cap = (p.rtt_round.max_iters.min(100_000) * u64::from(p.rtt_rounds)) as usize;
    let mut samples = Vec::with_capacity(cap);
    for _ in 0..p.rtt_rounds {
        let round_start = Instant::now();
        let mut n = 0;
        loop {
            seq += 1;
            let t0 = Instant::now();
            exchange(seq, chan)?;
            let t1 = Instant::now();
            samples.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
            n += 1;
            if p.rtt_round.done(n, t1 - round_start) {
                break;
            }
        }
    }
    seq += 1;
    exchange(seq | END_PHASE, chan)?;
    Summary::of(&mut samples).ok_or_else(|| invalid("no round-trip samples"))
}

/// Harness side of a streaming phase: a warm-up round, then the recorded
/// rounds; returns `(messages, elapsed)` per recorded round.
fn parent_stream<C: Channel>(
    chan: &mut C,
    size: usize,
    p: &Params,
) -> io::Result<Vec<(u64, Duration)>> {
    check_size(size)?;
    let mut tx = vec![0x5Au8; size];
    let mut ack = [0u8; STAMP_LEN];
    let mut seq = 0u64;
    // Reading the clock per message would cost ~10% of a small message on
    // the fastest mechanisms; check it every 64 small messages.
    let check_every = if size >= 4096 { 1 } else { 64 };

    let mut round = |budget: &Budget, chan: &mut C| -> io::Result<(u64, Duration)> {
        let start = Instant::now();
        let mut n = 0u64;
        loop {
            n += 1;
            seq += 1;
            let last = n >= budget.max_iters
                || (n.is_multiple_of(check_every) && budget.done(n, start.elapsed()));
            let stamp = if last { seq | END_BATCH } else { seq };
            put_stamp(&mut tx, stamp);
            chan.send(&tx)?;
            if last {
                chan.recv(&mut ack)?;
                let elapsed = start.elapsed();
                if get_stamp(&ack) != stamp {
                    return Err(invalid(format!(
                        "bad acknowledgement: expected {stamp:#x}, got {:#x}",
                        get_stamp(&ack)
                    )));
                }
                return Ok((n, elapsed));
            }
        }
    };

    round(&p.stream_warmup, chan)?;
    let mut rounds = Vec::with_capacity(p.stream_rounds as usize);
    for _ in 0..p.stream_rounds {
        rounds.push(round(&p.stream_round, chan)?);
    }
    seq += 1;
    put_stamp(&mut tx, seq | END_PHASE);
    chan.send(&tx)?;
    chan.recv(&mut ack)?;
    if get_stamp(&ack) != seq | END_PHASE {
        return Err(invalid("bad end-of-phase acknowledgement"));
    }
    Ok(rounds)
}

/// Peer side of a round-trip phase: echo every message until the end of
/// the phase.
fn peer_rtt<C: Channel>(chan: &mut C, size: usize) -> io::Result<()> {
    check_size(size)?;
    let mut buf = vec![0u8; size];
    loop {
        chan.recv(&mut buf)?;
        chan.send(&buf)?;
        if get_stamp(&buf) & END_PHASE != 0 {
            return Ok(());
        }
    }
}

/// Peer side of a zero-copy round-trip phase: echo every stamp in a
/// message of the same size until the end of the phase.
fn peer_rtt_zc<C: Channel>(chan: &mut C, size: usize) -> io::Result<()> {
    check_size(size)?;
    loop {
        let stamp = chan.recv_stamp(size)?;
        chan.send_stamp(size, stamp)?;
        if stamp & END_PHASE != 0 {
            return Ok(());
        }
    }
}

/// Peer side of a streaming phase: receive every message, check the
/// sequence, acknowledge round and phase ends.
fn peer_stream<C: Channel>(chan: &mut C, size: usize) -> io::Result<()> {
    check_size(size)?;
    let mut buf = vec![0u8; size];
    let mut expected = 0u64;
    loop {
        chan.recv(&mut buf)?;
        let stamp = get_stamp(&buf);
        expected += 1;
        if stamp & SEQ_MASK != expected {
            return Err(invalid(format!(
                "stream out of sequence: expected {expected}, got {}",
                stamp & SEQ_MASK
            )));
        }
        if stamp & (END_BATCH | END_PHASE) != 0 {
            chan.send(&stamp.to_le_bytes())?;
            if stamp & END_PHASE != 0 {
                return Ok(());
            }
        }
    }
}
