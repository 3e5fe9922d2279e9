//! Shared-memory channels across real processes: every size through the copying and the
//! zero-copy APIs, full and empty channels, backpressure, eight producers, writers and receivers
//! killed with SIGKILL at random points, `PeerGone`, CPU use while waiting, lifetime, and peers
//! that scribble over the channel's shared memory.
//!
//! Every test runs in its own namespace (the test kit's `IPCKIT_RUNTIME_DIR`), which the parent
//! opens with `Namespace::at(t.namespace())` and every peer gets from the environment.
//!
//! Random choices (message sizes, APIs, kill points) come from a seed printed by each test;
//! `IPCKIT_TEST_SEED=N` replays one.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use ipckit::ErrorKind;
use ipckit::channel::{Channel, ChannelBuilder, Geometry, Receiver, Sender, WaitMode, describe};
use ipckit::mapping::{FileMapping, ViewAccess};
use ipckit::name::ObjectName;
use ipckit::namespace::Namespace;
use ipckit_testkit::{Peer, RoleCtx, RoleResult, TestCase, TestDir, test_case, wait_for};
use proptest::prelude::*;

mod common;
use common::*;

/// Upper bound for anything that must happen eventually.
const T: Duration = Duration::from_secs(10);
/// A wait that is expected to time out.
const SHORT: Duration = Duration::from_millis(50);
/// How long to watch for something that must not happen (an upper bound, not a measurement).
const GRACE: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------------
// Helpers

fn chan(ns: &Namespace, name: &str) -> ChannelBuilder {
    Channel::builder().name(name).unwrap().namespace(ns.clone())
}

/// Fails the role unless `r` failed with `kind`.
fn ensure_kind<V>(r: ipckit::Result<V>, kind: ErrorKind, what: &str) -> RoleResult {
    match r {
        Ok(_) => Err(format!("{what}: expected {kind:?}, got Ok").into()),
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(format!("{what}: expected {kind:?}, got {e}").into()),
    }
}

#[track_caller]
fn assert_kind<V: std::fmt::Debug>(r: ipckit::Result<V>, kind: ErrorKind, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: {e}"),
    }
}

/// The seed of a test's random choices: `IPCKIT_TEST_SEED`, or a fresh one (printed).
fn seed(test: &str) -> u64 {
    let seed = std::env::var("IPCKIT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        });
    eprintln!("{test}: IPCKIT_TEST_SEED={seed}");
    seed
}

/// A small deterministic generator (SplitMix64), so that peers can recompute what they expect.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }
}

/// FNV-1a, the checksum of framed messages.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Deterministic bytes for message `id` of `len` bytes (any length, also 0).
fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill(id ^ ((len as u64) << 40), &mut out);
    out
}

fn fill(seed: u64, out: &mut [u8]) {
    let mut r = Rng::new(seed);
    for chunk in out.chunks_mut(8) {
        let w = r.next().to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Smallest framed message: writer (4), sequence number (8), checksum (8).
const FRAME_MIN: usize = 20;
/// The sequence number of the last message of a stream.
const END: u64 = u64::MAX;

/// Writes the framed message (`writer`, `seq`) into `out`: writer and sequence number, bytes
/// derived from both and the length, then the FNV-1a checksum of everything before it.
fn frame_into(writer: u32, seq: u64, out: &mut [u8]) {
    let len = out.len();
    assert!(len >= FRAME_MIN);
    out[..4].copy_from_slice(&writer.to_le_bytes());
    out[4..12].copy_from_slice(&seq.to_le_bytes());
    fill(
        u64::from(writer) << 48 ^ seq ^ (len as u64) << 32,
        &mut out[12..len - 8],
    );
    let sum = fnv(&out[..len - 8]);
    out[len - 8..].copy_from_slice(&sum.to_le_bytes());
}

fn frame(writer: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    frame_into(writer, seq, &mut v);
    v
}

/// Checks a framed message (checksum and every byte) and returns its writer and sequence number.
fn parse_frame(b: &[u8]) -> Result<(u32, u64), String> {
    if b.len() < FRAME_MIN {
        return Err(format!(
            "a {}-byte message is too short for a frame",
            b.len()
        ));
    }
    let n = b.len();
    let sum = u64::from_le_bytes(b[n - 8..].try_into().unwrap());
    let writer = u32::from_le_bytes(b[..4].try_into().unwrap());
    let seq = u64::from_le_bytes(b[4..12].try_into().unwrap());
    if fnv(&b[..n - 8]) != sum {
        return Err(format!(
            "torn message: checksum mismatch ({n} bytes, writer {writer}, seq {seq})"
        ));
    }
    if b != frame(writer, seq, n) {
        return Err(format!(
            "message of writer {writer} seq {seq} has wrong bytes"
        ));
    }
    Ok((writer, seq))
}

fn err_text(e: &ipckit::Error) -> String {
    format!("err {:?}", e.kind())
}

/// A received framed message as text: `msg SEQ LEN`, `bad WHY` or `err KIND`.
fn msg_text(r: ipckit::Result<Vec<u8>>) -> String {
    match r {
        Ok(m) => match parse_frame(&m) {
            Ok((_, seq)) => format!("msg {seq} {}", m.len()),
            Err(why) => format!("bad {why}"),
        },
        Err(e) => err_text(&e),
    }
}

fn unit_text(r: ipckit::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => err_text(&e),
    }
}

fn wait_mode(s: Option<&str>) -> Result<WaitMode, String> {
    match s {
        None | Some("adaptive") => Ok(WaitMode::Adaptive),
        Some("sleep") => Ok(WaitMode::Sleep),
        Some("busy") => Ok(WaitMode::BusyPoll),
        Some(other) => Err(format!("unknown wait mode {other}")),
    }
}

/// A peer that runs commands against the channel `arg(0)` (created, if it has to be, with
/// capacity `arg(1)`, max_message `arg(2)` and `arg(3)` lanes) and answers each with one frame.
/// Messages are frames of writer 0.
///
/// Commands: `rx [MODE]`, `tx [MODE]` (attach: `ok` or `err KIND`), `drop-rx`, `drop-tx`,
/// `send SEQ LEN`, `try-send SEQ LEN`, `fill FROM LEN` (try-send until full: `filled N`),
/// `recv`, `try-recv` (`msg SEQ LEN`), `drain` (receive until an error: `msgs SEQ...; err
/// KIND`), `hold` (borrow the next message: `holding SEQ`, and keep it until the next command),
/// `depth`.
fn agent(ctx: &mut RoleCtx) -> RoleResult {
    let ns = ctx_ns(ctx);
    let name = ctx.arg(0).ok_or("no channel name")?.to_owned();
    let num = |s: Option<&str>, default: u32| s.and_then(|s| s.parse().ok()).unwrap_or(default);
    let (cap, max, lanes) = (num(ctx.arg(1), 4), num(ctx.arg(2), 256), num(ctx.arg(3), 1));
    let builder = |mode: Option<&str>| -> Result<ChannelBuilder, String> {
        Ok(chan(&ns, &name)
            .capacity(cap)
            .max_message(max)
            .producers(lanes)
            .wait_mode(wait_mode(mode)?))
    };
    let mut rx: Option<Receiver> = None;
    let mut tx: Option<Sender> = None;
    while let Some(cmd) = ctx.recv_str()? {
        let parts: Vec<&str> = cmd.split(' ').collect();
        let arg = |i: usize| -> Result<u64, String> {
            parts
                .get(i)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{cmd:?}: argument {i}"))
        };
        let answer = match parts[0] {
            "rx" => match builder(parts.get(1).copied())?.receiver() {
                Ok(r) => {
                    rx = Some(r);
                    "ok".into()
                }
                Err(e) => err_text(&e),
            },
            "tx" => match builder(parts.get(1).copied())?.sender() {
                Ok(s) => {
                    tx = Some(s);
                    "ok".into()
                }
                Err(e) => err_text(&e),
            },
            "drop-rx" => {
                rx = None;
                "ok".into()
            }
            "drop-tx" => {
                tx = None;
                "ok".into()
            }
            "send" | "try-send" => {
                let tx = tx.as_mut().ok_or("no sender")?;
                let msg = frame(0, arg(1)?, arg(2)? as usize);
                unit_text(if parts[0] == "send" {
                    tx.send(&msg)
                } else {
                    tx.try_send(&msg)
                })
            }
            "fill" => {
                let tx = tx.as_mut().ok_or("no sender")?;
                let (from, len) = (arg(1)?, arg(2)? as usize);
                let mut n = 0;
                loop {
                    match tx.try_send(&frame(0, from + n, len)) {
                        Ok(()) => n += 1,
                        Err(e) if e.kind() == ErrorKind::Full => break format!("filled {n}"),
                        Err(e) => break err_text(&e),
                    }
                }
            }
            "recv" => msg_text(rx.as_mut().ok_or("no receiver")?.recv()),
            "try-recv" => msg_text(rx.as_mut().ok_or("no receiver")?.try_recv()),
            "drain" => {
                let rx = rx.as_mut().ok_or("no receiver")?;
                let mut seqs = String::from("msgs");
                loop {
                    match rx.recv() {
                        Ok(m) => match parse_frame(&m) {
                            Ok((_, seq)) => seqs.push_str(&format!(" {seq}")),
                            Err(why) => break format!("bad {why}"),
                        },
                        Err(e) => break format!("{seqs}; {}", err_text(&e)),
                    }
                }
            }
            "hold" => {
                let rx = rx.as_mut().ok_or("no receiver")?;
                match rx.recv_borrow() {
                    Ok(guard) => {
                        let (_, seq) = parse_frame(&guard.to_vec())?;
                        ctx.send_str(&format!("holding {seq}"))?;
                        ctx.recv()?;
                        drop(guard);
                        "released".into()
                    }
                    Err(e) => err_text(&e),
                }
            }
            "depth" => format!("depth {}", rx.as_ref().ok_or("no receiver")?.depth()),
            other => return Err(format!("unknown command {other:?}").into()),
        };
        ctx.send_str(&answer)?;
    }
    Ok(())
}

/// Starts an agent on the channel `name` with this geometry.
fn spawn_agent(t: &TestCase, name: &str, cap: u32, max: u32, lanes: u32) -> Peer {
    t.spawn("agent")
        .args([
            name.to_owned(),
            cap.to_string(),
            max.to_string(),
            lanes.to_string(),
        ])
        .start()
}

/// Sends `cmd` to an agent and returns its answer.
#[track_caller]
fn ask(peer: &mut Peer, cmd: &str) -> String {
    peer.send_str(cmd).unwrap();
    peer.recv_str_timeout(T).unwrap()
}

/// Receives the next message, waiting through `PeerGone` (between two senders) until `deadline`.
fn recv_across_senders(rx: &mut Receiver, deadline: Instant) -> Result<Vec<u8>, String> {
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or("no message before the deadline")?;
        match rx.recv_timeout(left) {
            Ok(m) => return Ok(m),
            Err(e) if e.kind() == ErrorKind::PeerGone => thread::sleep(Duration::from_micros(200)),
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Single producer: contents, order, and the error cases

/// The sizes of the size test: every small size, the edges of cache lines and of the maximum,
/// then random ones (deterministic, both processes compute them).
fn sizes(max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=70).collect();
    v.extend([127, 128, 129, 255, 256, 257, 1000, 2047, 2048, 2049]);
    v.extend(max - 20..=max);
    let mut r = Rng::new(7);
    v.extend((0..300).map(|_| r.range(0, max)));
    v.push(max);
    v.push(0);
    v
}

#[test]
fn spsc_every_size_arrives_intact_in_order_through_both_apis() {
    const NAME: &str = r"Local\sizes";
    const MAX: usize = 3000;
    let t = test_case!();
    t.role("writer", |ctx| {
        let ns = ctx_ns(ctx);
        // The receiver's geometry wins over the builder's.
        let mut tx = chan(&ns, NAME).capacity(64).max_message(10).sender()?;
        ensure(tx.max_message() == MAX, "the existing channel's geometry")?;
        for (i, &len) in sizes(MAX).iter().enumerate() {
            let msg = payload(i as u64, len);
            match i % 6 {
                0 => tx.send(&msg)?,
                1 => {
                    // Zero copy, written in odd-sized pieces.
                    let mut slot = tx.reserve(len)?;
                    ensure(
                        slot.len() == len && slot.is_empty() == (len == 0),
                        "slot length",
                    )?;
                    for (k, piece) in msg.chunks(37).enumerate() {
                        slot.write(k * 37, piece)?;
                    }
                    ensure_kind(
                        slot.write(len, &[1]),
                        ErrorKind::InvalidParameter,
                        "write past",
                    )?;
                    ensure_kind(
                        slot.write(usize::MAX, &[]),
                        ErrorKind::InvalidParameter,
                        "offset past",
                    )?;
                    slot.commit();
                }
                2 => {
                    // Zero copy in place: reserve the most, fill, commit a prefix.
                    let mut slot = tx.reserve(MAX)?;
                    // SAFETY: every process attached to this channel follows its protocol.
                    let bytes = unsafe { slot.as_mut_slice() };
                    bytes[..len].copy_from_slice(&msg);
                    bytes[len..].fill(0xEE);
                    slot.commit_len(len)?;
                }
                3 => {
                    // Reserved and abandoned (the slot goes out of scope): nothing is sent.
                    tx.reserve(len.max(1))?.write(0, &[0xAB])?;
                    let deadline = Instant::now() + T;
                    loop {
                        match tx.try_send(&msg) {
                            Ok(()) => break,
                            Err(e) if e.kind() == ErrorKind::Full && Instant::now() < deadline => {
                                thread::yield_now()
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                4 => tx.send_timeout(&msg, T)?,
                _ => {
                    let mut slot = tx.reserve_timeout(len, T)?;
                    slot.write(0, &msg)?;
                    slot.commit();
                }
            }
        }
        ctx.send_str("sent")?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut rx = chan(&ns, NAME)
        .capacity(8)
        .max_message(MAX as u32)
        .receiver()
        .unwrap();
    assert_eq!(
        rx.geometry(),
        Geometry {
            capacity: 8,
            max_message: MAX as u32,
            lanes: 1
        }
    );
    let mut writer = t.spawn("writer").start();
    for (i, &len) in sizes(MAX).iter().enumerate() {
        let expected = payload(i as u64, len);
        let got = match i % 7 {
            0 => rx.recv().unwrap(),
            1 => {
                let msg = rx.recv_borrow().unwrap();
                assert_eq!((msg.len(), msg.is_empty()), (len, len == 0));
                let mut v = vec![0u8; len];
                for (k, piece) in v.chunks_mut(13).enumerate() {
                    msg.read(k * 13, piece).unwrap();
                }
                assert_kind(msg.read(len, &mut [0]), ErrorKind::InvalidParameter, "past");
                v
            }
            2 => rx.recv_timeout(T).unwrap(),
            3 => {
                let mut buf = vec![0u8; MAX];
                let n = rx.recv_into(&mut buf).unwrap();
                buf.truncate(n);
                buf
            }
            4 => {
                let msg = rx.recv_borrow_timeout(T).unwrap();
                // SAFETY: every process attached to this channel follows its protocol.
                unsafe { msg.as_slice() }.to_vec()
            }
            5 => rx.recv_borrow().unwrap().to_vec(),
            _ => {
                let deadline = Instant::now() + T;
                loop {
                    match rx.try_recv() {
                        Ok(m) => break m,
                        Err(e) if e.kind() == ErrorKind::Timeout && Instant::now() < deadline => {
                            thread::yield_now()
                        }
                        Err(e) => panic!("try_recv: {e}"),
                    }
                }
            }
        };
        assert!(
            got == expected,
            "message {i} ({len} bytes) arrived as {} different bytes",
            got.len()
        );
    }
    writer.expect("sent", T).unwrap();
    assert!(writer.wait_timeout(T).unwrap().success());
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "nothing more");
    assert_kind(rx.recv(), ErrorKind::PeerGone, "the writer left");
}

#[test]
fn spsc_full_empty_timeouts_and_size_errors() {
    const NAME: &str = "errors";
    let t = test_case!();
    t.role("writer", |ctx| {
        let ns = ctx_ns(ctx);
        let mut tx = chan(&ns, NAME).sender()?;
        for seq in 0..4 {
            tx.try_send(&frame(0, seq, 32))?;
        }
        ensure_kind(tx.try_send(&frame(0, 4, 32)), ErrorKind::Full, "try_send")?;
        ensure_kind(tx.try_reserve(8), ErrorKind::Full, "try_reserve")?;
        ensure_kind(
            tx.send_timeout(&frame(0, 4, 32), SHORT),
            ErrorKind::Timeout,
            "send_timeout",
        )?;
        ensure_kind(
            tx.reserve_timeout(8, SHORT),
            ErrorKind::Timeout,
            "reserve_timeout",
        )?;
        // Too large beats full.
        ensure_kind(
            tx.try_send(&[0; 65]),
            ErrorKind::MessageTooLarge,
            "try_send 65",
        )?;
        ensure_kind(tx.send(&[0; 65]), ErrorKind::MessageTooLarge, "send 65")?;
        ensure_kind(tx.reserve(65), ErrorKind::MessageTooLarge, "reserve 65")?;
        ensure_kind(
            tx.reserve(usize::MAX),
            ErrorKind::MessageTooLarge,
            "reserve MAX",
        )?;
        ctx.send_str("full")?;
        ctx.expect("drained", T)?;
        tx.send(&frame(0, 4, 32))?;
        // A failed commit publishes nothing.
        let slot = tx.reserve(30)?;
        ensure_kind(
            slot.commit_len(31),
            ErrorKind::InvalidParameter,
            "commit_len",
        )?;
        tx.send(&frame(0, 5, 64))?;
        ctx.send_str("more")?;
        ctx.expect("one more", T)?;
        tx.send(&frame(0, 6, 20))?;
        ctx.send_str("sent")?;
        ctx.recv()?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut rx = chan(&ns, NAME)
        .capacity(3) // rounded up to 4
        .max_message(64)
        .receiver()
        .unwrap();
    assert_eq!(rx.geometry().capacity, 4);
    // Empty, no sender yet.
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "try_recv");
    assert_kind(rx.try_recv_borrow(), ErrorKind::Timeout, "try_recv_borrow");
    assert_kind(rx.recv_timeout(SHORT), ErrorKind::Timeout, "recv_timeout");
    assert_kind(
        rx.recv_borrow_timeout(SHORT),
        ErrorKind::Timeout,
        "recv_borrow_timeout",
    );

    let mut w = t.spawn("writer").start();
    w.expect("full", T).unwrap();
    assert_eq!(rx.depth(), 4);
    assert_eq!(describe(&ns, NAME).unwrap().depth, 4);
    for seq in 0..4 {
        assert_eq!(msg_text(rx.try_recv()), format!("msg {seq} 32"));
    }
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "drained");
    assert_kind(
        rx.recv_timeout(SHORT),
        ErrorKind::Timeout,
        "drained, sender alive",
    );
    w.send_str("drained").unwrap();
    w.expect("more", T).unwrap();
    assert_eq!(msg_text(rx.recv()), "msg 4 32");

    // Too small a buffer: the message stays queued, as often as we ask.
    let mut small = [0u8; 63];
    for _ in 0..3 {
        assert_kind(
            rx.recv_into(&mut small),
            ErrorKind::InsufficientBuffer,
            "recv_into",
        );
        assert_eq!(rx.depth(), 1);
    }
    // Kept explicitly: the same.
    let msg = rx.recv_borrow().unwrap();
    assert_eq!(msg.len(), 64);
    msg.keep();
    assert_eq!(rx.depth(), 1);
    let mut buf = [0u8; 64];
    assert_eq!(rx.recv_into(&mut buf).unwrap(), 64);
    assert_eq!(parse_frame(&buf).unwrap(), (0, 5));
    assert_eq!(rx.depth(), 0);
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "drained again");
    w.send_str("one more").unwrap();
    w.expect("sent", T).unwrap();
    let mut exact = [0u8; 20];
    assert_eq!(rx.recv_into(&mut exact).unwrap(), 20);
    assert_eq!(parse_frame(&exact).unwrap(), (0, 6));
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "nothing else was sent");
}

#[test]
fn invalid_geometries_are_refused() {
    let t = test_case!();
    let ns = ns_of(&t);
    for (what, b) in [
        ("no lanes", chan(&ns, "g").producers(0)),
        ("65 lanes", chan(&ns, "g").producers(65)),
        ("max_message 0", chan(&ns, "g").max_message(0)),
        ("max_message 2 GiB", chan(&ns, "g").max_message(1 << 31)),
        ("capacity 2^21", chan(&ns, "g").capacity(1 << 21)),
        ("capacity 2^32", chan(&ns, "g").capacity(u32::MAX)),
        (
            "too much memory",
            chan(&ns, "g")
                .capacity(1 << 20)
                .max_message(1 << 20)
                .producers(64),
        ),
    ] {
        assert_kind(b.clone().receiver(), ErrorKind::InvalidParameter, what);
        assert_kind(b.sender(), ErrorKind::InvalidParameter, what);
    }
    assert_kind(
        Channel::builder().namespace(ns.clone()).receiver(),
        ErrorKind::InvalidName,
        "no name",
    );
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());

    // One namespace with the other kernel objects.
    let m = FileMapping::builder()
        .name("taken")
        .unwrap()
        .size(4096)
        .namespace(ns.clone())
        .create()
        .unwrap();
    assert_kind(
        chan(&ns, "taken").receiver(),
        ErrorKind::WrongKind,
        "a mapping",
    );
    assert_kind(
        chan(&ns, "taken").sender(),
        ErrorKind::WrongKind,
        "a mapping",
    );
    assert_kind(describe(&ns, "taken"), ErrorKind::WrongKind, "a mapping");
    drop(m);
    let _rx = chan(&ns, "chan").receiver().unwrap();
    assert_kind(
        FileMapping::open_in(&ns, "chan", ViewAccess::Read),
        ErrorKind::WrongKind,
        "a channel",
    );
}

#[test]
fn large_messages_cross_intact() {
    const NAME: &str = "large";
    const MAX: usize = 4 << 20;
    const SIZES: [usize; 6] = [MAX, MAX - 1, (1 << 20) + 3, 0, 1, MAX];
    let t = test_case!();
    t.role("writer", |ctx| {
        let ns = ctx_ns(ctx);
        let mut tx = chan(&ns, NAME).sender()?;
        for (i, len) in SIZES.into_iter().enumerate() {
            let msg = payload(i as u64, len);
            if i % 2 == 0 {
                tx.send(&msg)?;
            } else {
                let mut slot = tx.reserve(len)?;
                // SAFETY: every process attached to this channel follows its protocol.
                unsafe { slot.as_mut_slice() }.copy_from_slice(&msg);
                slot.commit();
            }
        }
        ensure_kind(
            tx.send(&vec![0; MAX + 1]),
            ErrorKind::MessageTooLarge,
            "MAX + 1",
        )?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut rx = chan(&ns, NAME)
        .capacity(2)
        .max_message(MAX as u32)
        .receiver()
        .unwrap();
    let mut w = t.spawn("writer").start();
    for (i, len) in SIZES.into_iter().enumerate() {
        let got = rx.recv_timeout(T).unwrap();
        assert!(got == payload(i as u64, len), "message {i} of {len} bytes");
    }
    assert!(w.wait_timeout(T).unwrap().success(), "{}", w.report());
}

// ---------------------------------------------------------------------------------------------
// Backpressure

#[test]
fn slow_receiver_gets_every_message_once_in_order_and_the_sender_blocks() {
    const NAME: &str = "backpressure";
    const N: u64 = 12_000;
    const CAP: u32 = 16;
    const MAX: usize = 256;
    let t = test_case!();
    t.role("writer", |ctx| {
        let seed: u64 = ctx.arg(0).ok_or("no seed")?.parse()?;
        let ns = ctx_ns(ctx);
        let mut tx = chan(&ns, NAME).sender()?;
        let mut rng = Rng::new(seed);
        let mut fulls = 0u64;
        for seq in 0..N {
            let len = rng.range(FRAME_MIN, MAX);
            if seq % 3 == 0 {
                let mut slot = match tx.try_reserve(len) {
                    Ok(slot) => slot,
                    Err(e) if e.kind() == ErrorKind::Full => {
                        fulls += 1;
                        tx.reserve(len)?
                    }
                    Err(e) => return Err(e.into()),
                };
                // SAFETY: every process attached to this channel follows its protocol.
                frame_into(1, seq, unsafe { slot.as_mut_slice() });
                slot.commit();
            } else {
                let msg = frame(1, seq, len);
                match tx.try_send(&msg) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::Full => {
                        fulls += 1;
                        tx.send(&msg)?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        ctx.send_str(&format!("done {fulls}"))?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut rx = chan(&ns, NAME)
        .capacity(CAP)
        .max_message(MAX as u32)
        .receiver()
        .unwrap();
    let seed = seed("backpressure");
    let mut w = t.spawn("writer").arg(seed.to_string()).start();
    // Receive nothing until the writer has filled the channel: it must then wait.
    assert!(wait_for(T, || rx.depth() == u64::from(CAP)), "never full");
    for expected in 0..N {
        let m = rx.recv().unwrap();
        let (writer, seq) = parse_frame(&m).unwrap();
        assert_eq!((writer, seq), (1, expected), "out of order or duplicated");
        if expected % 25 == 0 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let done = w.recv_str_timeout(T).unwrap();
    let fulls: u64 = done.strip_prefix("done ").unwrap().parse().unwrap();
    assert!(fulls > 0, "the writer never found the channel full");
    assert!(w.wait_timeout(T).unwrap().success());
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "nothing more");
    assert_kind(rx.recv(), ErrorKind::PeerGone, "the writer left");
}

// ---------------------------------------------------------------------------------------------
// Several producers

#[test]
fn eight_senders_deliver_every_message_once_in_order_per_sender() {
    const NAME: &str = "mpsc";
    const SENDERS: u32 = 8;
    const N: u64 = 1500;
    const MAX: usize = 200;
    let t = test_case!();
    t.role("producer", |ctx| {
        let id: u32 = ctx.arg(0).ok_or("no id")?.parse()?;
        let seed: u64 = ctx.arg(1).ok_or("no seed")?.parse()?;
        let ns = ctx_ns(ctx);
        let mut tx = chan(&ns, NAME).sender()?;
        ctx.send_str("attached")?;
        ctx.expect("go", T)?;
        let mut rng = Rng::new(seed ^ u64::from(id));
        for seq in 0..N {
            let len = rng.range(FRAME_MIN, MAX);
            if rng.below(2) == 0 {
                tx.send(&frame(id, seq, len))?;
            } else {
                let mut slot = tx.reserve(len)?;
                slot.write(0, &frame(id, seq, len))?;
                slot.commit();
            }
        }
        ctx.send_str("done")?;
        Ok(())
    });
    t.role("attach", |ctx| {
        let ns = ctx_ns(ctx);
        let b = chan(&ns, NAME);
        let r = match ctx.arg(0) {
            Some("rx") => b.receiver().map(drop),
            _ => b.sender().map(drop),
        };
        ctx.send_str(&unit_text(r))?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut rx = chan(&ns, NAME)
        .producers(SENDERS)
        .capacity(32)
        .max_message(MAX as u32)
        .receiver()
        .unwrap();
    let seed = seed("mpsc");
    let mut producers: Vec<Peer> = (0..SENDERS)
        .map(|id| {
            t.spawn("producer")
                .args([id.to_string(), seed.to_string()])
                .start()
        })
        .collect();
    for p in &mut producers {
        p.expect("attached", T).unwrap();
    }
    let info = describe(&ns, NAME).unwrap();
    let mut pids: Vec<u32> = producers.iter().map(Peer::pid).collect();
    pids.sort_unstable();
    let mut senders = info.senders.clone();
    senders.sort_unstable();
    assert_eq!(senders, pids);
    assert_eq!(info.receiver, Some(std::process::id()));
    assert_eq!(info.geometry.lanes, SENDERS);

    // A ninth sender and a second receiver, in other processes and in this one.
    for (role, what) in [("tx", "ninth sender"), ("rx", "second receiver")] {
        let mut p = t.spawn("attach").arg(role).start();
        assert_eq!(p.recv_str_timeout(T).unwrap(), "err PipeBusy", "{what}");
    }
    assert_kind(
        chan(&ns, NAME).sender(),
        ErrorKind::PipeBusy,
        "ninth sender",
    );
    assert_kind(
        chan(&ns, NAME).receiver(),
        ErrorKind::PipeBusy,
        "second receiver",
    );

    for p in &mut producers {
        p.send_str("go").unwrap();
    }
    let mut next = vec![0u64; SENDERS as usize];
    for _ in 0..u64::from(SENDERS) * N {
        let m = rx.recv().unwrap();
        let (id, seq) = parse_frame(&m).unwrap();
        let want = next
            .get_mut(id as usize)
            .unwrap_or_else(|| panic!("unknown sender {id}"));
        assert_eq!(seq, *want, "sender {id}: out of order or duplicated");
        *want += 1;
    }
    for p in &mut producers {
        p.expect("done", T).unwrap();
        assert!(p.wait_timeout(T).unwrap().success());
    }
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "nothing more");
    assert_kind(rx.recv(), ErrorKind::PeerGone, "every sender left");
    // Their lanes are free again.
    let mut p = t.spawn("attach").arg("tx").start();
    assert_eq!(p.recv_str_timeout(T).unwrap(), "ok");
    let mut tx = chan(&ns, NAME).sender().unwrap();
    tx.send(&frame(9, 0, 20)).unwrap();
    assert_eq!(parse_frame(&rx.recv().unwrap()).unwrap(), (9, 0));
}

#[test]
fn a_kept_message_stays_first_in_line_with_several_lanes() {
    const NAME: &str = "keep";
    let t = test_case!();
    t.role("agent", agent);

    let ns = ns_of(&t);
    let mut rx = chan(&ns, NAME)
        .producers(2)
        .capacity(4)
        .max_message(64)
        .receiver()
        .unwrap();
    // Lanes are taken in order: a gets lane 0, b lane 1.
    let mut a = spawn_agent(&t, NAME, 4, 64, 2);
    assert_eq!(ask(&mut a, "tx"), "ok");
    let mut b = spawn_agent(&t, NAME, 4, 64, 2);
    assert_eq!(ask(&mut b, "tx"), "ok");

    assert_eq!(ask(&mut b, "send 100 64"), "ok");
    let mut small = [0u8; 32];
    assert_kind(
        rx.recv_into(&mut small),
        ErrorKind::InsufficientBuffer,
        "b's message",
    );
    // A message that fits arrives on the other lane meanwhile: the kept one is still next.
    assert_eq!(ask(&mut a, "send 200 32"), "ok");
    assert_kind(
        rx.recv_into(&mut small),
        ErrorKind::InsufficientBuffer,
        "b's message again",
    );
    let msg = rx.recv_borrow().unwrap();
    assert_eq!(parse_frame(&msg.to_vec()).unwrap(), (0, 100));
    msg.keep();
    assert_eq!(ask(&mut a, "send 201 32"), "ok");
    assert_eq!(msg_text(rx.recv()), "msg 100 64", "kept, then received");
    assert_eq!(msg_text(rx.recv()), "msg 200 32");
    assert_eq!(msg_text(rx.recv()), "msg 201 32");
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "drained");
}

#[test]
fn senders_coming_and_going_on_few_lanes_keep_every_stream_intact() {
    const NAME: &str = "churn";
    const CHURNERS: u32 = 6;
    const ROUNDS: u64 = 40;
    const PER_ROUND: u64 = 20;
    let t = test_case!();
    t.role("churner", |ctx| {
        let id: u32 = ctx.arg(0).ok_or("no id")?.parse()?;
        let ns = ctx_ns(ctx);
        let deadline = Instant::now() + Duration::from_secs(30);
        for round in 0..ROUNDS {
            let mut tx = loop {
                match chan(&ns, NAME).sender() {
                    Ok(tx) => break tx,
                    Err(e) if e.kind() == ErrorKind::PipeBusy && Instant::now() < deadline => {
                        thread::sleep(Duration::from_micros(100))
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let writer = id * 1000 + round as u32;
            for seq in 0..PER_ROUND {
                tx.send(&frame(writer, seq, FRAME_MIN + seq as usize))?;
            }
        }
        ctx.send_str("done")?;
        Ok(())
    });

    let ns = ns_of(&t);
    let mut rx = chan(&ns, NAME)
        .producers(3)
        .capacity(4)
        .max_message(64)
        .receiver()
        .unwrap();
    let mut peers: Vec<Peer> = (0..CHURNERS)
        .map(|id| t.spawn("churner").arg(id.to_string()).start())
        .collect();
    let mut next: HashMap<u32, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..u64::from(CHURNERS) * ROUNDS * PER_ROUND {
        let m = recv_across_senders(&mut rx, deadline).unwrap();
        let (writer, seq) = parse_frame(&m).unwrap();
        let want = next.entry(writer).or_insert(0);
        assert_eq!(seq, *want, "stream {writer}: out of order or duplicated");
        *want += 1;
    }
    for p in &mut peers {
        p.expect("done", T).unwrap();
    }
    assert_eq!(next.len() as u64, u64::from(CHURNERS) * ROUNDS);
    assert!(next.values().all(|&n| n == PER_ROUND));
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "nothing more");
}

// ---------------------------------------------------------------------------------------------
// Crash safety

/// The channel and the mapping of the crash tests.
const CRASH: &str = "crash";
const PROGRESS: &str = "progress";
const CRASH_CAP: u32 = 16;
const CRASH_MAX: usize = 600;

/// The `progress` mapping of the crash tests: word 0 is the stop flag, word `1 + g` what
/// incarnation `g` (of a writer or a reader) recorded.
fn progress_word(
    view: &ipckit::mapping::View,
    g: u64,
) -> Result<&std::sync::atomic::AtomicU64, String> {
    view.atomic_u64(8 * (1 + g as usize))
        .map_err(|e| e.to_string())
}

fn stop_flag(view: &ipckit::mapping::View) -> Result<&std::sync::atomic::AtomicU64, String> {
    view.atomic_u64(0).map_err(|e| e.to_string())
}

/// Writer incarnation `arg(0)` (seed `arg(1)`): sends frames (g, 0), (g, 1), ... in a tight loop
/// through every API, and after each commit records how many it committed. When the stop flag
/// is set it sends an END frame and exits.
fn crash_writer(ctx: &mut RoleCtx) -> RoleResult {
    let g: u32 = ctx.arg(0).ok_or("no incarnation")?.parse()?;
    let seed: u64 = ctx.arg(1).ok_or("no seed")?.parse()?;
    let ns = ctx_ns(ctx);
    let progress = FileMapping::open_in(&ns, PROGRESS, ViewAccess::Write)?;
    let view = progress.map_view(ViewAccess::Write, 0, 0)?;
    let committed = progress_word(&view, u64::from(g))?;
    let stop = stop_flag(&view)?;
    let mut tx = chan(&ns, CRASH).sender()?;
    ctx.send_str("attached")?;
    let mut rng = Rng::new(seed ^ (u64::from(g) << 20));
    let mut seq = 0u64;
    loop {
        if stop.load(Ordering::SeqCst) != 0 {
            tx.send(&frame(g, END, FRAME_MIN))?;
            return Ok(());
        }
        let len = rng.range(FRAME_MIN, CRASH_MAX);
        match rng.below(8) {
            0..=2 => tx.send(&frame(g, seq, len))?,
            3 | 4 => {
                let msg = frame(g, seq, len);
                let mut slot = tx.reserve(len)?;
                for (i, piece) in msg.chunks(100).enumerate() {
                    slot.write(i * 100, piece)?;
                }
                slot.commit();
            }
            5 => {
                let mut slot = tx.reserve(CRASH_MAX)?;
                // SAFETY: every process attached to this channel follows its protocol.
                let bytes = unsafe { slot.as_mut_slice() };
                bytes.fill(0x5A);
                frame_into(g, seq, &mut bytes[..len]);
                slot.commit_len(len)?;
            }
            6 => {
                // Written and abandoned (the slot goes out of scope): must never arrive.
                tx.reserve(len)?.write(0, &frame(g, seq + 1_000_000, len))?;
                continue;
            }
            _ => loop {
                match tx.try_send(&frame(g, seq, len)) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::Full => std::hint::spin_loop(),
                    Err(e) => return Err(e.into()),
                }
            },
        }
        seq += 1;
        committed.store(seq, Ordering::SeqCst);
    }
}

/// The receiver of the writer crash tests, for `arg(0)` lanes and `arg(1)` incarnations. It
/// checks every message: intact (checksum and bytes), sequence numbers consecutive from 0 within
/// each incarnation, incarnations in order when there is one lane, and each incarnation's count
/// equal to what it committed: the recorded count, or one more for a writer killed between its
/// commit and the record. It stops after one END per lane.
fn crash_verifier(ctx: &mut RoleCtx) -> RoleResult {
    let lanes: u32 = ctx.arg(0).ok_or("no lanes")?.parse()?;
    let incarnations: u64 = ctx.arg(1).ok_or("no count")?.parse()?;
    let ns = ctx_ns(ctx);
    let mut rx = chan(&ns, CRASH)
        .capacity(CRASH_CAP)
        .max_message(CRASH_MAX as u32)
        .producers(lanes)
        .receiver()?;
    let progress = FileMapping::open_in(&ns, PROGRESS, ViewAccess::Write)?;
    let view = progress.map_view(ViewAccess::Write, 0, 0)?;
    ctx.send_str("ready")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got: HashMap<u32, u64> = HashMap::new();
    let mut ended: Vec<u32> = Vec::new();
    let (mut latest, mut total, mut gone) = (0u32, 0u64, 0u64);
    while ended.len() < lanes as usize {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or("the verifier waited too long")?;
        let msg = match rx.recv_timeout(left) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::PeerGone => {
                gone += 1;
                thread::sleep(Duration::from_micros(200));
                continue;
            }
            Err(e) => return Err(format!("recv: {e}").into()),
        };
        let (g, seq) = parse_frame(&msg)?;
        ensure(u64::from(g) < incarnations, format!("unknown writer {g}"))?;
        ensure(
            !ended.contains(&g),
            format!("writer {g} sent after its end"),
        )?;
        if lanes == 1 {
            // One writer at a time, the next one starting once the previous is dead: FIFO.
            ensure(g >= latest, format!("writer {g} after writer {latest}"))?;
            latest = g;
        }
        let n = got.entry(g).or_insert(0);
        if seq == END {
            ended.push(g);
            continue;
        }
        ensure(
            seq == *n,
            format!("writer {g}: seq {seq} where {n} was due"),
        )?;
        *n += 1;
        total += 1;
    }
    for g in 0..incarnations {
        let c = progress_word(&view, g)?.load(Ordering::SeqCst);
        let n = got.get(&(g as u32)).copied().unwrap_or(0);
        let killed = !ended.contains(&(g as u32));
        ensure(
            n == c || (killed && n == c + 1),
            format!("writer {g}: received {n} messages, it committed {c}"),
        )?;
    }
    ensure(
        rx.try_recv().map_err(|e| e.kind()) == Err(ErrorKind::Timeout),
        "a message after the end",
    )?;
    ctx.send_str(&format!("ok {total} {gone}"))?;
    Ok(())
}

/// Runs `lanes` writers at a time on the crash channel and, `cycles` times, SIGKILLs a random
/// one (at once, or after it attached and 0 to 3 ms of sending) and starts a new incarnation in
/// its place; then stops the survivors and checks the verifier's report.
fn run_writer_crashes(t: &TestCase, test: &str, lanes: u32, cycles: u32) {
    let seed = seed(test);
    let ns = ns_of(t);
    let incarnations = u64::from(lanes + cycles);
    let progress = FileMapping::builder()
        .name(PROGRESS)
        .unwrap()
        .size(8 * (incarnations + 1))
        .namespace(ns.clone())
        .create()
        .unwrap();
    let view = progress.map_view(ViewAccess::Write, 0, 0).unwrap();
    let mut verifier = t
        .spawn("verifier")
        .args([lanes.to_string(), incarnations.to_string()])
        .start();
    verifier.expect("ready", T).unwrap();
    let mut next = 0u32;
    let spawn = |next: &mut u32| {
        let w = t
            .spawn("writer")
            .args([next.to_string(), seed.to_string()])
            .start();
        *next += 1;
        (w, false)
    };
    let mut writers: Vec<(Peer, bool)> = (0..lanes).map(|_| spawn(&mut next)).collect();
    let mut rng = Rng::new(seed);
    for cycle in 0..cycles {
        let s = rng.below(u64::from(lanes)) as usize;
        // One in eight dies wherever it is (starting, attaching, sending).
        if rng.below(8) != 0 {
            let (w, attached) = &mut writers[s];
            if !*attached {
                w.expect("attached", T).unwrap();
                *attached = true;
            }
            let pause = rng.below(3000);
            if pause > 0 {
                thread::sleep(Duration::from_micros(pause));
            }
        }
        writers[s].0.kill().unwrap();
        assert!(verifier.is_alive(), "cycle {cycle}: {}", verifier.report());
        writers[s] = spawn(&mut next);
    }
    stop_flag(&view).unwrap().store(1, Ordering::SeqCst);
    for (w, _) in &mut writers {
        assert!(w.wait_timeout(T).unwrap().success(), "{}", w.report());
    }
    let report = verifier
        .recv_str_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.starts_with("ok "), "{report}");
    eprintln!("{test}: {report} (messages, PeerGone seen)");
    assert!(verifier.wait_timeout(T).unwrap().success());
}

/// Kill/respawn cycles of the single-lane writer crash test.
const CRASH_CYCLES: u32 = 1000;

#[test]
fn writers_killed_at_random_points_never_tear_duplicate_or_reorder() {
    let t = test_case!();
    t.role("writer", crash_writer);
    t.role("verifier", crash_verifier);
    run_writer_crashes(&t, "crash-1-lane", 1, CRASH_CYCLES);
}

#[test]
fn writers_killed_on_several_lanes_leave_the_others_and_their_successors_intact() {
    let t = test_case!();
    t.role("writer", crash_writer);
    t.role("verifier", crash_verifier);
    run_writer_crashes(&t, "crash-3-lanes", 3, CRASH_CYCLES / 2);
}

/// A writer that sends frames (0, 0), (0, 1), ... until the stop flag is set, waiting through
/// `PeerGone` (between two readers), then an END frame; it reports how many it sent.
fn stream_writer(ctx: &mut RoleCtx) -> RoleResult {
    let ns = ctx_ns(ctx);
    let progress = FileMapping::open_in(&ns, PROGRESS, ViewAccess::Write)?;
    let view = progress.map_view(ViewAccess::Write, 0, 0)?;
    let stop = stop_flag(&view)?;
    let mut tx = chan(&ns, CRASH)
        .capacity(CRASH_CAP)
        .max_message(CRASH_MAX as u32)
        .sender()?;
    ctx.send_str("attached")?;
    let mut rng = Rng::new(u64::from(std::process::id()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seq = 0u64;
    loop {
        let last = stop.load(Ordering::SeqCst) != 0;
        let msg = if last {
            frame(0, END, FRAME_MIN)
        } else {
            frame(0, seq, rng.range(FRAME_MIN, CRASH_MAX))
        };
        loop {
            match tx.send(&msg) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::PeerGone && Instant::now() < deadline => {
                    thread::sleep(Duration::from_micros(100))
                }
                Err(e) => return Err(e.into()),
            }
        }
        if last {
            ctx.send_str(&format!("sent {seq}"))?;
            return Ok(());
        }
        seq += 1;
    }
}

/// Reader incarnation `arg(0)`: receives in place, checks each message, records the next
/// sequence number it expects and only then releases the message. Its first message must be the
/// one its predecessors recorded as next, or the one before if the predecessor was killed
/// between its record and the release. Reports `end N` at the END frame.
fn crash_reader(ctx: &mut RoleCtx) -> RoleResult {
    let r: u64 = ctx.arg(0).ok_or("no incarnation")?.parse()?;
    let ns = ctx_ns(ctx);
    let progress = FileMapping::open_in(&ns, PROGRESS, ViewAccess::Write)?;
    let view = progress.map_view(ViewAccess::Write, 0, 0)?;
    let next = progress_word(&view, 0)?;
    let mut rx = chan(&ns, CRASH)
        .capacity(CRASH_CAP)
        .max_message(CRASH_MAX as u32)
        .receiver()?;
    ctx.send_str("attached")?;
    let mut expect: Option<u64> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or("the reader waited too long")?;
        let msg = rx.recv_borrow_timeout(left)?;
        let bytes = match r % 3 {
            0 => msg.to_vec(),
            1 => {
                let mut v = vec![0u8; msg.len()];
                for (i, piece) in v.chunks_mut(64).enumerate() {
                    msg.read(i * 64, piece)?;
                }
                v
            }
            // SAFETY: every process attached to this channel follows its protocol.
            _ => unsafe { msg.as_slice() }.to_vec(),
        };
        let (_, seq) = parse_frame(&bytes)?;
        let recorded = next.load(Ordering::SeqCst);
        if seq == END {
            ensure(expect.unwrap_or(recorded) == recorded, "END after a gap")?;
            ctx.send_str(&format!("end {recorded}"))?;
            return Ok(());
        }
        match expect {
            None => ensure(
                seq == recorded || seq + 1 == recorded,
                format!("reader {r} starts at {seq}, {recorded} was recorded as next"),
            )?,
            Some(e) => ensure(seq == e, format!("reader {r}: {seq} where {e} was due"))?,
        }
        next.store(seq + 1, Ordering::SeqCst);
        expect = Some(seq + 1);
        drop(msg);
    }
}

#[test]
fn readers_killed_at_random_points_lose_nothing_and_repeat_only_the_unreleased_message() {
    const CYCLES: u64 = 500;
    let t = test_case!();
    t.role("writer", stream_writer);
    t.role("reader", crash_reader);

    let seed = seed("reader-crash");
    let ns = ns_of(&t);
    let progress = FileMapping::builder()
        .name(PROGRESS)
        .unwrap()
        .size(16)
        .namespace(ns.clone())
        .create()
        .unwrap();
    let view = progress.map_view(ViewAccess::Write, 0, 0).unwrap();
    let mut first = t.spawn("reader").arg("0").start();
    first.expect("attached", T).unwrap();
    let mut writer = t.spawn("writer").start();
    writer.expect("attached", T).unwrap();
    let mut rng = Rng::new(seed);
    let mut reader = first;
    for r in 1..=CYCLES {
        if rng.below(8) != 0 {
            if r > 1 {
                reader.expect("attached", T).unwrap();
            }
            let pause = rng.below(3000);
            if pause > 0 {
                thread::sleep(Duration::from_micros(pause));
            }
        }
        reader.kill().unwrap();
        assert!(writer.is_alive(), "cycle {r}: {}", writer.report());
        reader = t.spawn("reader").arg(r.to_string()).start();
    }
    stop_flag(&view).unwrap().store(1, Ordering::SeqCst);
    let sent = writer.recv_str_timeout(T).unwrap();
    reader.expect("attached", T).unwrap();
    let end = reader.recv_str_timeout(T).unwrap_or_else(|e| panic!("{e}"));
    let sent: u64 = sent.strip_prefix("sent ").unwrap().parse().unwrap();
    assert_eq!(
        end,
        format!("end {sent}"),
        "the last reader got every message"
    );
    eprintln!("reader-crash: {sent} messages through {CYCLES} killed readers");
    assert!(writer.wait_timeout(T).unwrap().success());
    assert!(reader.wait_timeout(T).unwrap().success());
}

#[test]
fn receiver_killed_while_borrowing_leaves_the_message_to_the_next_receiver() {
    const NAME: &str = "borrowed";
    let t = test_case!();
    t.role("agent", agent);

    let ns = ns_of(&t);
    let mut r1 = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut r1, "rx"), "ok");
    let mut s = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut s, "tx"), "ok");
    assert_eq!(ask(&mut s, "fill 0 40"), "filled 4");
    r1.send_str("hold").unwrap();
    assert_eq!(r1.recv_str_timeout(T).unwrap(), "holding 0");
    // The borrowed message still takes its slot.
    assert_eq!(ask(&mut s, "try-send 4 40"), "err Full");
    // The sender waits for room; the receiver is killed meanwhile.
    s.send_str("send 4 40").unwrap();
    settle_asleep(s.pid());
    r1.kill().unwrap();
    assert_eq!(s.recv_str_timeout(T).unwrap(), "err PeerGone");
    let info = describe(&ns, NAME).unwrap();
    assert_eq!((info.depth, info.receiver), (4, None));

    // The next receiver gets the borrowed message, once, then the rest, then the retried one.
    let mut r2 = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut r2, "rx"), "ok");
    for seq in 0..4 {
        assert_eq!(ask(&mut r2, "recv"), format!("msg {seq} 40"));
    }
    assert_eq!(ask(&mut r2, "try-recv"), "err Timeout");
    assert_eq!(ask(&mut s, "send 4 40"), "ok");
    assert_eq!(ask(&mut r2, "recv"), "msg 4 40");
    assert_eq!(ask(&mut r2, "depth"), "depth 0");

    // Killed while borrowing with room left: the sender carries on, nothing is lost.
    r2.send_str("hold").unwrap();
    assert_eq!(ask(&mut s, "send 5 40"), "ok");
    assert_eq!(r2.recv_str_timeout(T).unwrap(), "holding 5");
    assert_eq!(ask(&mut s, "send 6 40"), "ok");
    r2.kill().unwrap();
    let mut r3 = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut r3, "rx"), "ok");
    assert_eq!(ask(&mut r3, "recv"), "msg 5 40");
    assert_eq!(ask(&mut r3, "recv"), "msg 6 40");
    assert_eq!(ask(&mut r3, "try-recv"), "err Timeout");
}

// ---------------------------------------------------------------------------------------------
// PeerGone

#[test]
fn peer_gone_when_the_other_end_is_killed_then_a_new_peer_resumes() {
    const NAME: &str = "gone";
    let t = test_case!();
    t.role("agent", agent);

    let mut r = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut r, "rx"), "ok");

    // Killed with messages committed: the receiver drains them, then learns it.
    let mut s1 = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut s1, "tx"), "ok");
    for seq in 0..3 {
        assert_eq!(ask(&mut s1, &format!("send {seq} 30")), "ok");
    }
    s1.kill().unwrap();
    assert_eq!(ask(&mut r, "drain"), "msgs 0 1 2; err PeerGone");
    assert_eq!(ask(&mut r, "try-recv"), "err Timeout");

    // Killed while the receiver sleeps in recv.
    let mut s2 = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut s2, "tx"), "ok");
    r.send_str("recv").unwrap();
    settle_asleep(r.pid());
    s2.kill().unwrap();
    assert_eq!(r.recv_str_timeout(T).unwrap(), "err PeerGone");

    // A new sender: traffic resumes.
    let mut s3 = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut s3, "tx"), "ok");
    r.send_str("recv").unwrap();
    assert_eq!(ask(&mut s3, "send 3 30"), "ok");
    assert_eq!(r.recv_str_timeout(T).unwrap(), "msg 3 30");

    // The receiver is killed while the sender waits for room.
    assert_eq!(ask(&mut s3, "fill 4 30"), "filled 4");
    s3.send_str("send 8 30").unwrap();
    settle_asleep(s3.pid());
    r.kill().unwrap();
    assert_eq!(s3.recv_str_timeout(T).unwrap(), "err PeerGone");
    // With the receiver gone, a full channel fails at once, in any mode.
    assert_eq!(ask(&mut s3, "send 8 30"), "err PeerGone");

    // A new receiver: it gets what was queued, and the sender's retry.
    let mut r2 = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut r2, "rx"), "ok");
    for seq in 4..8 {
        assert_eq!(ask(&mut r2, "recv"), format!("msg {seq} 30"));
    }
    assert_eq!(ask(&mut s3, "send 8 30"), "ok");
    assert_eq!(ask(&mut r2, "recv"), "msg 8 30");
    // A sender that leaves cleanly is gone as well.
    assert_eq!(ask(&mut s3, "drop-tx"), "ok");
    assert_eq!(ask(&mut r2, "recv"), "err PeerGone");
}

#[test]
fn a_sender_waits_for_a_receiver_that_has_not_attached_yet() {
    const NAME: &str = "early";
    let t = test_case!();
    t.role("agent", agent);

    let ns = ns_of(&t);
    // The sender comes first: it creates the channel and fills it.
    let mut s = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut s, "tx"), "ok");
    assert_eq!(ask(&mut s, "fill 0 24"), "filled 4");
    s.send_str("send 4 24").unwrap();
    settle_asleep(s.pid());
    assert!(
        s.recv_str_timeout(GRACE).is_err(),
        "a sender gave up before any receiver came"
    );
    let mut rx = chan(&ns, NAME).receiver().unwrap();
    for seq in 0..5 {
        assert_eq!(msg_text(rx.recv_timeout(T)), format!("msg {seq} 24"));
    }
    assert_eq!(s.recv_str_timeout(T).unwrap(), "ok");
}

// ---------------------------------------------------------------------------------------------
// Waiting costs no CPU

#[test]
fn waiting_costs_no_cpu() {
    const NAME: &str = "idle";
    const WAITING: Duration = Duration::from_millis(300);
    const BOUND: Duration = Duration::from_millis(50);
    let t = test_case!();
    t.role("agent", agent);

    for mode in ["adaptive", "sleep"] {
        // A receiver waiting for a message from a live, idle sender.
        let mut r = spawn_agent(&t, NAME, 4, 64, 1);
        assert_eq!(ask(&mut r, &format!("rx {mode}")), "ok");
        let mut s = spawn_agent(&t, NAME, 4, 64, 1);
        assert_eq!(ask(&mut s, &format!("tx {mode}")), "ok");
        r.send_str("recv").unwrap();
        settle_asleep(r.pid());
        let before = cpu_time(r.pid());
        thread::sleep(WAITING);
        let used = cpu_time(r.pid()) - before;
        assert_eq!(ask(&mut s, "send 1 20"), "ok");
        assert_eq!(r.recv_str_timeout(T).unwrap(), "msg 1 20");
        assert!(
            used < BOUND,
            "{mode}: a waiting receiver used {used:?} of CPU in {WAITING:?}"
        );

        // A sender waiting for room from a live, idle receiver.
        assert_eq!(ask(&mut s, "fill 2 20"), "filled 4");
        s.send_str("send 6 20").unwrap();
        settle_asleep(s.pid());
        let before = cpu_time(s.pid());
        thread::sleep(WAITING);
        let used = cpu_time(s.pid()) - before;
        assert_eq!(ask(&mut r, "recv"), "msg 2 20");
        assert_eq!(s.recv_str_timeout(T).unwrap(), "ok");
        assert!(
            used < BOUND,
            "{mode}: a waiting sender used {used:?} of CPU in {WAITING:?}"
        );
        drop((r, s));
        let ns = ns_of(&t);
        assert_kind(describe(&ns, NAME), ErrorKind::NotFound, "both killed");
    }

    // Busy polling may burn a CPU, but must work.
    let mut r = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut r, "rx busy"), "ok");
    let mut s = spawn_agent(&t, NAME, 4, 64, 1);
    assert_eq!(ask(&mut s, "tx busy"), "ok");
    r.send_str("recv").unwrap();
    assert_eq!(ask(&mut s, "send 1 20"), "ok");
    assert_eq!(r.recv_str_timeout(T).unwrap(), "msg 1 20");
}

// ---------------------------------------------------------------------------------------------
// Lifetime

#[test]
fn channel_vanishes_with_its_last_holder_and_describe_reports_it() {
    const NAME: &str = r"Local\life";
    let t = test_case!();
    t.role("agent", agent);

    let ns = ns_of(&t);
    assert_kind(describe(&ns, NAME), ErrorKind::NotFound, "before");
    let mut r = spawn_agent(&t, NAME, 8, 64, 2);
    assert_eq!(ask(&mut r, "rx"), "ok");
    let mut s1 = spawn_agent(&t, NAME, 8, 64, 2);
    assert_eq!(ask(&mut s1, "tx"), "ok");
    let mut s2 = spawn_agent(&t, NAME, 8, 64, 2);
    assert_eq!(ask(&mut s2, "tx"), "ok");

    let files = object_files(&ns);
    assert_eq!(files.len(), 2, "side file and shared memory: {files:?}");
    assert!(files.contains(&shm_file(&ns, NAME)), "{files:?}");
    let info = describe(&ns, NAME).unwrap();
    assert_eq!(
        info.geometry,
        Geometry {
            capacity: 8,
            max_message: 64,
            lanes: 2
        }
    );
    assert_eq!(info.depth, 0);
    assert_eq!(info.receiver, Some(r.pid()));
    let mut senders = info.senders.clone();
    senders.sort_unstable();
    let mut want = vec![s1.pid(), s2.pid()];
    want.sort_unstable();
    assert_eq!(senders, want);

    for seq in 0..3 {
        assert_eq!(ask(&mut s1, &format!("send {seq} 20")), "ok");
    }
    assert_eq!(ask(&mut s2, "send 10 20"), "ok");
    assert_eq!(describe(&ns, NAME).unwrap().depth, 4);
    assert_eq!(ask(&mut r, "recv"), "msg 0 20");
    assert_eq!(describe(&ns, NAME).unwrap().depth, 3);

    // A killed sender: the others keep the channel.
    s1.kill().unwrap();
    let info = describe(&ns, NAME).unwrap();
    assert_eq!((info.senders, info.depth), (vec![s2.pid()], 3));
    assert_eq!(object_files(&ns), files);
    // A receiver that leaves: still there, with its queue.
    assert_eq!(ask(&mut r, "drop-rx"), "ok");
    let info = describe(&ns, NAME).unwrap();
    assert_eq!((info.receiver, info.depth), (None, 3));
    r.close_input();
    assert!(r.wait_timeout(T).unwrap().success());
    assert_eq!(object_files(&ns), files);
    // The last holder leaves: gone at once.
    s2.close_input();
    assert!(s2.wait_timeout(T).unwrap().success());
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
    assert_kind(describe(&ns, NAME), ErrorKind::NotFound, "after close");

    // The only holder is killed: gone for every observer, and a new channel starts empty.
    let mut r = spawn_agent(&t, NAME, 8, 64, 2);
    assert_eq!(ask(&mut r, "rx"), "ok");
    let mut s = spawn_agent(&t, NAME, 8, 64, 2);
    assert_eq!(ask(&mut s, "tx"), "ok");
    assert_eq!(ask(&mut s, "send 0 20"), "ok");
    s.kill().unwrap();
    r.kill().unwrap();
    assert_kind(describe(&ns, NAME), ErrorKind::NotFound, "after kill");
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
    let mut rx = chan(&ns, NAME).capacity(2).receiver().unwrap();
    assert_eq!(rx.geometry().capacity, 2, "created afresh");
    assert_eq!(rx.depth(), 0);
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "new channel");
    drop(rx);
    assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
}

// ---------------------------------------------------------------------------------------------
// Hostile peers

// The channel's layout (see `ipckit::channel`): a 256-byte header, then 256 bytes per lane (tail at 0,
// head at 64), then the slots, each a 16-byte header (the length first) and the data, rounded up
// to 64 bytes.
const LANES_AT: u64 = 256;
const LANE_LEN: u64 = 256;
const TAIL: u64 = 0;
const HEAD: u64 = 64;

fn slots_at(lanes: u64) -> u64 {
    LANES_AT + lanes * LANE_LEN
}

/// A peer that writes `arg(2)` (a number, as `arg(3)` = 4 or 8 bytes) at offset `arg(1)` of the
/// file `arg(0)` (the channel's shared memory, or its side file).
fn scribbler(ctx: &mut RoleCtx) -> RoleResult {
    let path = ctx.arg(0).ok_or("no file")?;
    let offset: u64 = ctx.arg(1).ok_or("no offset")?.parse()?;
    let value: u64 = ctx.arg(2).ok_or("no value")?.parse()?;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    match ctx.arg(3) {
        Some("4") => f.write_all_at(&(value as u32).to_le_bytes(), offset)?,
        _ => f.write_all_at(&value.to_le_bytes(), offset)?,
    }
    ctx.send_str("written")?;
    Ok(())
}

fn scribble(t: &TestCase, file: &Path, offset: u64, value: u64, width: u32) {
    let mut p = t
        .spawn("scribbler")
        .args([
            file.display().to_string(),
            offset.to_string(),
            value.to_string(),
            width.to_string(),
        ])
        .start();
    p.expect("written", T).unwrap();
    assert!(p.wait_timeout(T).unwrap().success());
}

/// A sender killed after it published a message (the slot's sequence word) but before it advanced
/// the lane's `tail`: the receiver gets that message once, and the next sender of the lane
/// continues after it instead of overwriting it.
#[test]
fn a_sender_killed_between_publishing_and_advancing_tail_loses_nothing() {
    let t = test_case!();
    t.role("scribbler", scribbler);
    t.role("agent", agent);
    let ns = ns_of(&t);
    let mut rx = chan(&ns, "gap")
        .capacity(8)
        .max_message(100)
        .receiver()
        .unwrap();
    let mut s = spawn_agent(&t, "gap", 8, 100, 1);
    assert_eq!(ask(&mut s, "tx"), "ok");
    assert_eq!(ask(&mut s, "send 0 20"), "ok");
    assert_eq!(ask(&mut s, "send 1 20"), "ok");
    // The state the sender leaves when it dies between its two stores for message 1.
    scribble(&t, &shm_file(&ns, "gap"), LANES_AT + TAIL, 1, 8);
    s.kill().unwrap();
    let mut s2 = spawn_agent(&t, "gap", 8, 100, 1);
    assert_eq!(ask(&mut s2, "tx"), "ok");
    assert_eq!(ask(&mut s2, "send 2 20"), "ok");
    assert_eq!(msg_text(rx.recv()), "msg 0 20");
    assert_eq!(msg_text(rx.recv()), "msg 1 20");
    assert_eq!(msg_text(rx.recv()), "msg 2 20");
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "nothing more");
    assert_eq!(ipckit::channel::describe(&ns, "gap").unwrap().depth, 0);
}

#[test]
fn garbage_in_shared_memory_fails_with_protocol() {
    const MAX: u32 = 100;
    let t = test_case!();
    t.role("scribbler", scribbler);
    t.role("agent", agent);

    let ns = ns_of(&t);
    let stride = (64 + u64::from(MAX)).next_multiple_of(64);
    // A receiver that has read one message of two.
    let setup = |name: &str| -> (Receiver, Peer) {
        let mut rx = chan(&ns, name)
            .capacity(8)
            .max_message(MAX)
            .receiver()
            .unwrap();
        let mut s = spawn_agent(&t, name, 8, MAX, 1);
        assert_eq!(ask(&mut s, "tx"), "ok");
        assert_eq!(ask(&mut s, "send 0 20"), "ok");
        assert_eq!(ask(&mut s, "send 1 20"), "ok");
        assert_eq!(msg_text(rx.recv()), "msg 0 20");
        (rx, s)
    };
    let check = |rx: &mut Receiver, what: &str| {
        assert_kind(rx.recv_timeout(T), ErrorKind::Protocol, what);
        assert_kind(rx.try_recv(), ErrorKind::Protocol, what);
        assert_kind(rx.recv_borrow_timeout(T), ErrorKind::Protocol, what);
        let _ = rx.depth();
    };

    // The receiver waits on the sequence (low half of the state word) of its next slot (slot 2
    // after messages 0 and 1, which the setup sent): only `head + 1` (published) or the previous
    // lap's value (here 0) are valid there. `tail` is the sender's business; the receiver does
    // not trust it.
    let seq_at = |slot: u64| slots_at(1) + slot * stride;
    let len_at = |slot: u64| slots_at(1) + slot * stride + 4;
    for (name, value, what) in [
        ("far", 1u64 << 30, "sequence far beyond head"),
        ("behind", 1, "sequence behind head"),
        ("lapped", 2 + 1 + 8, "sequence a ring ahead"),
    ] {
        let (mut rx, _s) = setup(name);
        rx.recv().unwrap(); // message 1 was already published
        scribble(&t, &shm_file(&ns, name), seq_at(2), value, 4);
        check(&mut rx, what);
    }
    // A tail scribbled anywhere neither delivers nor loses anything.
    let (mut rx, _s) = setup("tail");
    scribble(&t, &shm_file(&ns, "tail"), LANES_AT + TAIL, 1 << 40, 8);
    assert_eq!(msg_text(rx.recv()), "msg 1 20");
    assert_kind(rx.try_recv(), ErrorKind::Timeout, "nothing more");
    // A slot longer than the largest message: the next one (slot 2), then published.
    for (name, len) in [("long", u64::from(MAX) + 1), ("huge", u64::from(u32::MAX))] {
        let (mut rx, _s) = setup(name);
        rx.recv().unwrap();
        scribble(&t, &shm_file(&ns, name), len_at(2), len, 4);
        scribble(&t, &shm_file(&ns, name), seq_at(2), 3, 4);
        check(&mut rx, "oversized slot");
    }

    // A receiver asleep in recv when the garbage comes: it wakes up and fails, without hanging.
    let mut r = spawn_agent(&t, "asleep", 8, MAX, 1);
    assert_eq!(ask(&mut r, "rx"), "ok");
    let mut s = spawn_agent(&t, "asleep", 8, MAX, 1);
    assert_eq!(ask(&mut s, "tx"), "ok");
    r.send_str("recv").unwrap();
    settle_asleep(r.pid());
    scribble(&t, &shm_file(&ns, "asleep"), seq_at(0), 1 << 30, 4);
    assert_eq!(r.recv_str_timeout(T).unwrap(), "err Protocol");

    // The head moved past the tail: a sender fails once it needs room.
    let _r = {
        let mut r = spawn_agent(&t, "head", 4, MAX, 1);
        assert_eq!(ask(&mut r, "rx"), "ok");
        r
    };
    let mut tx = chan(&ns, "head").sender().unwrap();
    scribble(&t, &shm_file(&ns, "head"), LANES_AT + HEAD, 1000, 8);
    let mut result = Ok(());
    for seq in 0..5 {
        result = tx.try_send(&frame(0, seq, 20));
        if result.is_err() {
            break;
        }
    }
    assert_kind(result, ErrorKind::Protocol, "head beyond tail");
    assert_kind(tx.send(&frame(0, 9, 20)), ErrorKind::Protocol, "again");

    // Positions at the very end of the 64-bit range, before a sender attaches: it must not
    // count past them.
    let mut r = spawn_agent(&t, "end", 4, MAX, 1);
    assert_eq!(ask(&mut r, "rx"), "ok");
    for at in [LANES_AT + TAIL, LANES_AT + HEAD] {
        scribble(&t, &shm_file(&ns, "end"), at, u64::MAX - 1, 8);
    }
    let mut s = spawn_agent(&t, "end", 4, MAX, 1);
    let attached = ask(&mut s, "tx");
    if attached == "ok" {
        let answers: Vec<String> = (0..3)
            .map(|seq| ask(&mut s, &format!("send {seq} 20")))
            .collect();
        assert!(
            answers.iter().any(|a| a == "err Protocol"),
            "sends past the end of the positions: {answers:?}"
        );
    } else {
        assert_eq!(attached, "err Protocol");
    }
    assert!(s.is_alive(), "the sender crashed: {}", s.report());
}

#[test]
fn dead_holders_are_recognised_by_start_time_and_half_done_claims_by_pid() {
    const NAME: &str = "stale";
    // Endpoint words: the receiver's pid at 64 (start time at 72); lane 1's producer pid at
    // 256 + 256 + 8. A pid word with bit 31 set is a claim in progress.
    const RX_PID: u64 = 64;
    const LANE1_PID: u64 = LANES_AT + LANE_LEN + 8;
    const CLAIMING: u64 = 1 << 31;
    let t = test_case!();
    t.role("agent", agent);
    t.role("scribbler", scribbler);

    let ns = ns_of(&t);
    let shm = shm_file(&ns, NAME);
    let mut r = spawn_agent(&t, NAME, 4, 64, 2);
    assert_eq!(ask(&mut r, "rx"), "ok");
    let mut h = spawn_agent(&t, NAME, 4, 64, 2);
    assert_eq!(ask(&mut h, "tx"), "ok"); // lane 0, keeps the channel alive throughout
    let mut s = spawn_agent(&t, NAME, 4, 64, 2);
    assert_eq!(ask(&mut s, "tx"), "ok"); // lane 1
    // x plays a process that reuses the pids of r and s once they are dead. A reused pid never
    // starts in the same clock tick as its previous owner (start times have that resolution):
    // make sure x does not either.
    let start = |pid: u32| ipckit::sys::process::start_time(pid).unwrap();
    let dead_starts = [start(r.pid()), start(s.pid())];
    let mut x = spawn_agent(&t, NAME, 4, 64, 2);
    while dead_starts.contains(&start(x.pid())) {
        thread::sleep(Duration::from_millis(10));
        x = spawn_agent(&t, NAME, 4, 64, 2);
    }
    let (r_pid, s_pid) = (r.pid(), s.pid());
    r.kill().unwrap();
    s.kill().unwrap();

    // The dead holders' pids were reused by x: the words name x, with the dead start times.
    scribble(&t, &shm, RX_PID, u64::from(x.pid()), 4);
    scribble(&t, &shm, LANE1_PID, u64::from(x.pid()), 4);
    let info = describe(&ns, NAME).unwrap();
    assert_eq!((info.receiver, info.senders), (None, vec![h.pid()]));
    assert_eq!(ask(&mut x, "rx"), "ok", "x is not the dead receiver");
    assert_eq!(ask(&mut x, "tx"), "ok", "x is not the dead sender");
    let info = describe(&ns, NAME).unwrap();
    assert_eq!(
        (info.receiver, info.senders),
        (Some(x.pid()), vec![h.pid(), x.pid()])
    );
    assert_eq!(ask(&mut x, "send 1 20"), "ok");
    assert_eq!(ask(&mut x, "recv"), "msg 1 20");

    // Claims that their processes did not live to finish.
    assert_eq!(ask(&mut x, "drop-rx"), "ok");
    assert_eq!(ask(&mut x, "drop-tx"), "ok");
    scribble(&t, &shm, RX_PID, u64::from(r_pid) | CLAIMING, 4);
    scribble(&t, &shm, LANE1_PID, u64::from(s_pid) | CLAIMING, 4);
    let info = describe(&ns, NAME).unwrap();
    assert_eq!((info.receiver, info.senders), (None, vec![h.pid()]));
    let mut y = spawn_agent(&t, NAME, 4, 64, 2);
    assert_eq!(ask(&mut y, "rx"), "ok");
    assert_eq!(ask(&mut y, "tx"), "ok");
    assert_eq!(ask(&mut y, "send 2 20"), "ok");
    assert_eq!(ask(&mut y, "recv"), "msg 2 20");

    // A claim in progress by a live process holds the endpoint.
    assert_eq!(ask(&mut y, "drop-rx"), "ok");
    scribble(&t, &shm, RX_PID, u64::from(x.pid()) | CLAIMING, 4);
    assert_eq!(describe(&ns, NAME).unwrap().receiver, Some(x.pid()));
    assert_eq!(ask(&mut y, "rx"), "err PipeBusy");
}

#[test]
fn a_damaged_channel_header_is_refused() {
    let t = test_case!();
    t.role("scribbler", scribbler);
    t.role("holder", |ctx| {
        let ns = ctx_ns(ctx);
        let _rx = chan(&ns, ctx.arg(0).ok_or("no name")?)
            .capacity(8)
            .max_message(64)
            .producers(2)
            .receiver()?;
        ctx.send_str("ready")?;
        ctx.recv()?;
        Ok(())
    });

    let ns = ns_of(&t);
    // Side file header: param (u64 at 24: capacity | max_message << 32), flags (u32 at 32:
    // lanes << 16).
    for (name, offset, value, width) in [
        ("cap3", 24, 3 | 64 << 32, 8),
        ("cap16", 24, 16 | 64 << 32, 8),
        ("max0", 24, 8, 8),
        ("lanes0", 32, 0, 4),
        ("lanes3", 32, 3 << 16, 4),
        ("lanes99", 32, 99 << 16, 4),
    ] {
        let mut holder = t.spawn("holder").arg(name).start();
        holder.expect("ready", T).unwrap();
        let side = ns.object_path(&ObjectName::parse(name).unwrap());
        scribble(&t, &side, offset, value, width);
        assert_kind(chan(&ns, name).sender(), ErrorKind::Protocol, name);
        assert_kind(chan(&ns, name).receiver(), ErrorKind::Protocol, name);
        assert_kind(describe(&ns, name), ErrorKind::Protocol, name);
    }
}

// ---------------------------------------------------------------------------------------------
// Properties (in one process).

#[derive(Debug, Clone)]
enum Op {
    /// try_send on sender `.0` of `.1` bytes.
    Send(usize, usize),
    /// try_reserve, write, commit (or drop, when `.2` is false).
    ZeroCopy(usize, usize, bool),
    /// try_reserve the most, commit `.1` bytes.
    CommitLen(usize, usize),
    TryRecv,
    /// try_recv_borrow, then keep the message.
    Keep,
    /// recv_into a buffer of `.0` bytes.
    RecvInto(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let len = 0usize..=MODEL_MAX + 2;
    prop_oneof![
        (0usize..4, len.clone()).prop_map(|(s, n)| Op::Send(s, n)),
        (0usize..4, len.clone(), any::<bool>()).prop_map(|(s, n, c)| Op::ZeroCopy(s, n, c)),
        (0usize..4, len.clone()).prop_map(|(s, n)| Op::CommitLen(s, n)),
        Just(Op::TryRecv),
        Just(Op::TryRecv),
        Just(Op::Keep),
        len.prop_map(Op::RecvInto),
    ]
}

const MODEL_MAX: usize = 40;

/// The channel as a model: a queue per lane, served round-robin from `next`.
#[derive(Debug)]
struct Model {
    lanes: Vec<VecDeque<Vec<u8>>>,
    next: usize,
    cap: usize,
}

impl Model {
    /// The lane of the next message.
    fn peek(&self) -> Option<usize> {
        let n = self.lanes.len();
        (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| !self.lanes[i].is_empty())
    }
    fn take(&mut self, lane: usize) -> Vec<u8> {
        self.next = (lane + 1) % self.lanes.len();
        self.lanes[lane].pop_front().unwrap()
    }
    fn depth(&self) -> u64 {
        self.lanes.iter().map(|q| q.len() as u64).sum()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of non-blocking operations behaves as a queue per sender, served
    /// round-robin: Full exactly when a sender's lane holds `capacity` messages,
    /// MessageTooLarge above the maximum, Timeout exactly when all are empty, and a message
    /// that is kept or does not fit stays first in line.
    #[test]
    fn channel_follows_its_queue_model(
        lanes in 1u32..=3,
        cap_log in 0u32..=2,
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        let dir = TestDir::new("ipckit-channel-model").unwrap();
        let ns = Namespace::at(dir.path().join("ns"));
        let cap = 1usize << cap_log;
        let mut rx = chan(&ns, "model")
            .producers(lanes)
            .capacity(cap as u32)
            .max_message(MODEL_MAX as u32)
            .receiver()
            .unwrap();
        let mut txs: Vec<Sender> = (0..lanes).map(|_| chan(&ns, "model").sender().unwrap()).collect();
        prop_assert_eq!(chan(&ns, "model").sender().unwrap_err().kind(), ErrorKind::PipeBusy);
        let mut model = Model { lanes: vec![VecDeque::new(); lanes as usize], next: 0, cap };
        let mut id = 0u64;
        for op in ops {
            id += 1;
            match op {
                Op::Send(s, len) | Op::ZeroCopy(s, len, _) | Op::CommitLen(s, len) => {
                    let s = s % lanes as usize;
                    let msg = payload(id, len);
                    let full = model.lanes[s].len() == model.cap;
                    let r = match op {
                        Op::Send(..) => txs[s].try_send(&msg),
                        Op::ZeroCopy(_, _, commit) => txs[s].try_reserve(len).map(|mut slot| {
                            slot.write(0, &msg).unwrap();
                            if commit { slot.commit() }
                        }),
                        _ => txs[s].try_reserve(MODEL_MAX).and_then(|mut slot| {
                            slot.write(0, &msg)?;
                            slot.commit_len(len)
                        }),
                    };
                    let committed = !matches!(op, Op::ZeroCopy(_, _, false));
                    if len > MODEL_MAX && !matches!(op, Op::CommitLen(..)) {
                        prop_assert_eq!(r.unwrap_err().kind(), ErrorKind::MessageTooLarge);
                    } else if full {
                        prop_assert_eq!(r.unwrap_err().kind(), ErrorKind::Full);
                    } else if len > MODEL_MAX {
                        prop_assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidParameter);
                    } else {
                        prop_assert!(r.is_ok(), "{:?}", r);
                        if committed {
                            model.lanes[s].push_back(msg);
                        }
                    }
                }
                Op::TryRecv => match model.peek() {
                    Some(lane) => prop_assert_eq!(rx.try_recv().unwrap(), model.take(lane)),
                    None => prop_assert_eq!(rx.try_recv().unwrap_err().kind(), ErrorKind::Timeout),
                },
                Op::Keep => match model.peek() {
                    Some(lane) => {
                        let msg = rx.try_recv_borrow().unwrap();
                        prop_assert_eq!(&msg.to_vec(), model.lanes[lane].front().unwrap());
                        msg.keep();
                        model.next = lane;
                    }
                    None => prop_assert_eq!(
                        rx.try_recv_borrow().unwrap_err().kind(),
                        ErrorKind::Timeout
                    ),
                },
                Op::RecvInto(n) => {
                    // recv_into waits: only call it when something is queued.
                    if let Some(lane) = model.peek() {
                        let mut buf = vec![0u8; n];
                        let want_len = model.lanes[lane].front().unwrap().len();
                        match rx.recv_into(&mut buf) {
                            Ok(got) => {
                                prop_assert!(want_len <= n);
                                prop_assert_eq!(&buf[..got], &model.take(lane)[..]);
                            }
                            Err(e) => {
                                prop_assert!(want_len > n);
                                prop_assert_eq!(e.kind(), ErrorKind::InsufficientBuffer);
                                model.next = lane;
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(rx.depth(), model.depth());
        }
        drop(txs);
        drop(rx);
        prop_assert_eq!(object_files(&ns), Vec::<PathBuf>::new());
    }
}

/// A value a hostile peer may write: small, around a ring's size, near the end of the range, or
/// anything.
fn garbage_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..20,
        (0u64..4).prop_map(|d| u64::MAX - d),
        (0u64..4).prop_map(|d| (1 << 63) - d),
        (0u64..4).prop_map(|d| u64::from(u32::MAX) - d),
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever a hostile peer writes into the channel's control words and slot headers, the
    /// receiver, the sender and newcomers answer with a value or an error, and never panic;
    /// every message they return fits the maximum.
    #[test]
    fn garbage_in_control_words_never_panics(
        writes in proptest::collection::vec((0usize..18, 0u64..4, garbage_value()), 1..6),
        ops in proptest::collection::vec(0u8..6, 1..24),
    ) {
        const CAP: u64 = 4;
        const MAX: u64 = 40;
        let dir = TestDir::new("ipckit-channel-garbage").unwrap();
        let ns = Namespace::at(dir.path().join("ns"));
        let mut rx = chan(&ns, "g")
            .producers(2)
            .capacity(CAP as u32)
            .max_message(MAX as u32)
            .receiver()
            .unwrap();
        let mut tx = chan(&ns, "g").sender().unwrap();
        for seq in 0..3 {
            tx.send(&frame(0, seq, FRAME_MIN)).unwrap();
        }
        rx.recv().unwrap();
        let stride = (64 + MAX).next_multiple_of(64);
        let shm = std::fs::OpenOptions::new().write(true).open(shm_file(&ns, "g")).unwrap();
        for (word, k, value) in writes {
            // (offset, width) of: header words, both lanes' words, slot length words.
            let lane = LANES_AT + (k % 2) * LANE_LEN;
            let (at, width) = match word {
                0 => (64, 4),                 // receiver pid
                1 => (72, 8),                 // receiver start time
                2 => (128, 4),                // receiver sleeping
                3 => (132, 4),                // doorbell
                4 => (192, 4),                // senders seen
                5 => (196, 4),                // receivers seen
                6 | 7 => (lane + TAIL, 8),
                8 | 9 => (lane + HEAD, 8),
                10 => (lane + 8, 4),          // sender pid
                11 => (lane + 16, 8),         // sender start time
                12 => (lane + 128, 4),        // sender sleeping
                13 => (lane + 132, 4),        // space bell
                14 | 15 => (slots_at(2) + ((k % 2) * CAP + k) * stride, 4), // a slot's sequence
                _ => (slots_at(2) + ((k % 2) * CAP + k) * stride + 4, 4), // a slot's length
            };
            let bytes = value.to_le_bytes();
            shm.write_all_at(&bytes[..width], at).unwrap();
        }
        let allowed = [
            ErrorKind::Timeout,
            ErrorKind::Full,
            ErrorKind::Protocol,
            ErrorKind::PeerGone,
            ErrorKind::PipeBusy,
            ErrorKind::InsufficientBuffer,
        ];
        let mut extra_tx: Option<Sender> = None;
        let mut extra_rx: Option<Receiver> = None;
        for (i, op) in ops.into_iter().enumerate() {
            let r: ipckit::Result<usize> = match op {
                0 => rx.try_recv().map(|m| m.len()),
                // recv_into waits when nothing is queued: only call it when something is.
                1 => {
                    let queued = rx.try_recv_borrow().map(|m| m.keep());
                    queued.and_then(|()| rx.recv_into(&mut [0u8; 24]))
                }
                2 => tx.try_send(&frame(0, 100 + i as u64, FRAME_MIN)).map(|()| 0),
                3 => tx.try_reserve(MAX as usize).and_then(|s| s.commit_len(MAX as usize)).map(|()| 0),
                4 => chan(&ns, "g").sender().map(|s| { extra_tx = Some(s); 0 }),
                _ => {
                    drop(extra_rx.take());
                    chan(&ns, "g").receiver().map(|r| { extra_rx = Some(r); 0 })
                }
            };
            match r {
                Ok(len) => prop_assert!(len as u64 <= MAX),
                Err(e) => prop_assert!(allowed.contains(&e.kind()), "{}", e),
            }
        }
        if let Some(tx) = extra_tx.as_mut() {
            let r = tx.try_send(&frame(1, 0, FRAME_MIN));
            prop_assert!(r.is_ok() || allowed.contains(&r.unwrap_err().kind()));
        }
        let _ = describe(&ns, "g").map(|info| info.depth);
    }
}

/// Hides other users' processes from this thread's view of `/proc`: a private mount namespace
/// (this thread's alone) with `/proc` mounted again with `hidepid=2`.
fn hide_other_users_processes() -> RoleResult {
    // The safe `unshare` is deprecated because unsharing descriptor tables (CLONE_FILES) can
    // break descriptor ownership; a mount namespace cannot, so the safe call is the right one.
    #[allow(deprecated)]
    rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNS)?;
    for args in [
        &["--make-rprivate", "/"][..],
        &["-t", "proc", "-o", "hidepid=2", "proc", "/proc"][..],
    ] {
        let st = std::process::Command::new("mount").args(args).status()?;
        ensure(st.success(), format!("mount {args:?}: {st}"))?;
    }
    Ok(())
}

#[test]
fn a_peer_that_proc_hides_is_not_taken_for_dead() {
    let t = test_case!();
    // The receiver: another user, whose /proc does not show the sender (hidepid=2).
    t.role("hidden", |ctx| {
        hide_other_users_processes()?;
        become_nobody(ctx)?;
        let sender: u32 = ctx.arg(1).unwrap().parse()?;
        ensure(
            !std::path::Path::new(&format!("/proc/{sender}")).exists(),
            "the sender is hidden",
        )?;
        let ns = ctx_ns(ctx).with_global_dir(ctx.arg(2).unwrap());
        let mut rx = Channel::builder()
            .name(ctx.arg(0).unwrap())?
            .namespace(ns)
            .receiver()?;
        ctx.send_str("waiting")?;
        // The sender sends well after the first liveness checks (10, 20, 40 ms).
        let got = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(m) => String::from_utf8_lossy(&m).into_owned(),
            Err(e) => format!("{:?}", e.kind()),
        };
        ctx.send_str(&got)?;
        Ok(())
    });
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root, to run a peer as another user"
    );
    let shared = TestDir::new("ipckit-shared").unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ns = ns_of(&t).with_global_dir(shared.path());
    let name = format!(r"Global\{}", ipckit_testkit::unique_name("hidden"));
    let mut tx = Channel::builder()
        .name(&name)
        .unwrap()
        .namespace(ns)
        .share_with_other_users(true)
        .sender()
        .unwrap();
    let mut p = t
        .spawn("hidden")
        .arg(&name)
        .arg(std::process::id().to_string())
        .arg(shared.path().to_str().unwrap())
        .start();
    p.expect("waiting", T).unwrap();
    thread::sleep(Duration::from_millis(300));
    tx.send(b"still here").unwrap();
    assert_eq!(p.recv_str_timeout(T).unwrap(), "still here");
    assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
}

#[test]
fn without_liveness_checks_a_sender_still_learns_that_its_receiver_detached() {
    let t = test_case!();
    t.role("leaving_receiver", |ctx| {
        let rx = Channel::builder()
            .name(ctx.arg(0).unwrap())?
            .namespace(ctx_ns(ctx))
            .receiver()?;
        ctx.send_str("attached")?;
        ctx.expect("leave", T)?;
        drop(rx);
        ctx.send_str("left")?;
        Ok(())
    });
    let name = ipckit_testkit::unique_name("leave");
    let mut tx = Channel::builder()
        .name(&name)
        .unwrap()
        .capacity(2)
        .max_message(64)
        .namespace(ns_of(&t))
        .peer_liveness_checks(false)
        .sender()
        .unwrap();
    let mut p = t.spawn("leaving_receiver").arg(&name).start();
    p.expect("attached", T).unwrap();
    tx.send(b"1").unwrap();
    tx.send(b"2").unwrap();
    p.send_str("leave").unwrap();
    p.expect("left", T).unwrap();
    // The ring is full and nobody will read: the wait ends with PeerGone, not at the timeout
    // (no liveness check would ever run).
    let e = tx.send_timeout(b"3", T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PeerGone, "{e}");
}
