//! The tokio API of pipes across real processes: an async server serving concurrent async
//! clients (more clients than instances, so some wait in `WaitNamedPipe`), message mode with
//! ERROR_MORE_DATA, read and write futures dropped in the middle of a message (nothing lost,
//! nothing duplicated), a client killed with SIGKILL in the middle of a message while the
//! other clients go on being served, and anonymous pipe ends driven by tokio.

#![cfg(feature = "tokio")]

use std::collections::BTreeMap;
use std::io::{Read, Write};

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use ipckit::ErrorKind;
use ipckit::name::PipeName;
use ipckit::namespace::Namespace;
use ipckit::pipe::{ClientOptions, PipeWait, ReadMode, ServerOptions};
use ipckit_testkit::{RoleCtx, test_case, unique_name};

mod common;
use common::{ctx_ns, ensure, fnv, ns_of, pattern};
use tokio::io::AsyncReadExt;

/// Upper bound for anything that must happen eventually.
const T: Duration = Duration::from_secs(60);
/// How long a future is given before it is dropped, where it cannot complete.
const SHORT: Duration = Duration::from_millis(50);

fn pipe_name(tag: &str) -> String {
    format!(r"\\.\pipe\{}", unique_name(tag))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A message of client `id`, number `seq`: id, seq, checksum, then a payload of `len` bytes.
fn tagged(id: u32, seq: u32, len: usize) -> Vec<u8> {
    let payload = pattern(len, u64::from(id) << 32 | u64::from(seq));
    let mut m = Vec::with_capacity(16 + len);
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&fnv(&payload).to_le_bytes());
    m.extend_from_slice(&payload);
    m
}

/// Connects to a free instance of `name` by the wire protocol (`docs/protocol/pipe.md`),
/// without the library.
fn raw_connect(ns: &Namespace, name: &str) -> std::io::Result<UnixStream> {
    let dir: PathBuf = ns.pipe_path(&PipeName::parse(name).unwrap()).unwrap();
    for e in std::fs::read_dir(&dir)? {
        let f = e?.file_name().into_string().unwrap();
        if f.starts_with("i-")
            && f.ends_with(".sock")
            && let Ok(s) = UnixStream::connect(dir.join(&f))
        {
            return Ok(s);
        }
    }
    Err(std::io::Error::other("no free instance"))
}

const CLIENTS: u32 = 6;
const INSTANCES: usize = 4;
const PER_CLIENT: u32 = 150;

#[test]
fn async_server_serves_concurrent_async_clients() {
    let t = test_case!();
    t.role("client", |ctx| {
        let name = ctx.arg(0).unwrap().to_owned();
        let id: u32 = ctx.arg(1).unwrap().parse()?;
        runtime().block_on(async {
            // More clients than instances: the late ones wait for a free instance.
            let mut c = client(ctx)
                .wait(PipeWait::Timeout(T))
                .connect_async(&name)
                .await?;
            c.set_read_mode(ReadMode::Message)?;
            let mut rng = u64::from(id) * 7919 + 1;
            for seq in 0..PER_CLIENT {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let len = match rng % 8 {
                    0 => 0,
                    1 => (rng >> 8) as usize % 400_000,
                    _ => (rng >> 8) as usize % 5000,
                };
                let m = tagged(id, seq, len);
                let back = c.transact_message(&m).await?;
                ensure(back == m, format!("client {id}: echo of {seq} differs"))?;
            }
            ensure(c.transact_message(b"end").await? == b"end", "end")?;
            ctx.send_str("done")?;
            Ok(())
        })
    });

    let name = pipe_name("aserve");
    let rt = runtime();
    let served = rt.block_on(async {
        let opts = ServerOptions::message().namespace(ns_of(&t));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..INSTANCES {
            let mut s = opts.create_async(&name).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    s.connect().await.unwrap();
                    let pid = s.client().unwrap().pid;
                    let mut id = None;
                    let mut next = 0u32;
                    let verdict = loop {
                        let m = match s.read_message().await {
                            Ok(m) => m,
                            Err(e) => break Err(format!("read: {e}")),
                        };
                        if m == b"end" {
                            s.write(b"end").await.unwrap();
                            break Ok(());
                        }
                        let mid = u32::from_le_bytes(m[0..4].try_into().unwrap());
                        let seq = u32::from_le_bytes(m[4..8].try_into().unwrap());
                        let sum = u64::from_le_bytes(m[8..16].try_into().unwrap());
                        if *id.get_or_insert(mid) != mid || seq != next || fnv(&m[16..]) != sum {
                            break Err(format!("client {mid}: bad message #{seq}"));
                        }
                        next += 1;
                        s.write(&m).await.unwrap();
                    };
                    // The client closes after "end": its next read says so.
                    let closed = s.read_message().await.map(|_| ()).unwrap_err().kind();
                    let _ = tx.send((id, next, pid, verdict, closed));
                    s.disconnect().unwrap();
                }
            });
        }
        let mut peers: Vec<_> = (0..CLIENTS)
            .map(|i| t.spawn("client").arg(&name).arg(i.to_string()).start())
            .collect();
        let mut served = BTreeMap::new();
        for _ in 0..CLIENTS {
            let (id, count, pid, verdict, closed) =
                tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
            assert_eq!(verdict, Ok(()), "client {id:?}");
            assert_eq!(closed, ErrorKind::BrokenPipe);
            assert!(peers.iter().any(|p| p.pid() == pid));
            served.insert(id.unwrap(), count);
        }
        for p in &mut peers {
            p.expect("done", T).unwrap();
            assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
        }
        served
    });
    assert_eq!(
        served,
        (0..CLIENTS)
            .map(|i| (i, PER_CLIENT))
            .collect::<BTreeMap<_, _>>()
    );
}

fn client(ctx: &RoleCtx) -> ClientOptions {
    ClientOptions::new().namespace(ctx_ns(ctx))
}

#[test]
fn message_mode_more_data_peek_and_byte_reads_async() {
    let t = test_case!();
    t.role("client", |ctx| {
        let name = ctx.arg(0).unwrap().to_owned();
        runtime().block_on(async {
            let mut c = client(ctx).connect_async(&name).await?;
            ensure(c.server().pid == ctx.parent_pid(), "server pid")?;
            // A message pipe read as bytes (AsyncRead): two messages, one stream.
            let mut six = [0u8; 6];
            c.read_exact(&mut six).await?;
            ensure(&six == b"abcdef", format!("byte read {six:?}"))?;
            c.set_read_mode(ReadMode::Message)?;
            // ERROR_MORE_DATA: 1000 bytes read 7 at a time.
            let mut got = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                match c.read(&mut buf).await {
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::MoreData => got.extend_from_slice(&buf),
                    Err(e) => return Err(e.into()),
                }
            }
            ensure(got == pattern(1000, 9), "reassembled message differs")?;
            ensure(c.read(&mut buf).await? == 0, "an empty message")?;
            ctx.expect("sent", T)?;
            let p = c.peek(&mut [])?;
            ensure(p.message_left == 3 && p.available == 3, format!("{p:?}"))?;
            ensure(c.read_message().await? == b"xyz", "after peek")?;
            ensure(c.transact_message(b"ping").await? == b"pong", "transact")?;
            ctx.send_str("done")?;
            Ok(())
        })
    });

    let name = pipe_name("amsg");
    let rt = runtime();
    rt.block_on(async {
        let mut s = ServerOptions::message()
            .namespace(ns_of(&t))
            .create_async(&name)
            .unwrap();
        let mut p = t.spawn("client").arg(&name).start();
        s.connect().await.unwrap();
        assert_eq!(s.client().unwrap().pid, p.pid());
        s.write(b"abc").await.unwrap();
        s.write(b"def").await.unwrap();
        s.write(&pattern(1000, 9)).await.unwrap();
        s.write(b"").await.unwrap();
        s.write(b"xyz").await.unwrap();
        p.send_str("sent").unwrap();
        assert_eq!(s.read_message().await.unwrap(), b"ping");
        s.write(b"pong").await.unwrap();
        p.expect("done", T).unwrap();
        assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
        let e = s.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!((e.kind(), e.win32_code()), (ErrorKind::BrokenPipe, 109));
        let e = s.write(b"x").await.unwrap_err();
        assert_eq!((e.kind(), e.win32_code()), (ErrorKind::NoData, 232));
    });
}

const BIG: usize = 300_000;
const FIRST: usize = 100_000;
/// Larger than any socket buffer: a write of it cannot complete while the reader waits.
const HUGE: usize = 8 << 20;
const STREAM: usize = 3 << 20;

#[test]
fn dropped_futures_lose_and_duplicate_nothing() {
    let t = test_case!();
    t.role("raw", |ctx| {
        // Speaks the wire protocol directly, to stop in the middle of a message.
        let mut s = raw_connect(&ctx_ns(ctx), ctx.arg(0).unwrap())?;
        let big = pattern(BIG, 1);
        s.write_all(&(BIG as u32).to_le_bytes())?;
        s.write_all(&big[..FIRST])?;
        ctx.send_str("half")?;
        ctx.expect("go", T)?;
        s.write_all(&big[FIRST..])?;
        s.write_all(&[5, 0, 0, 0])?;
        s.write_all(b"hello")?;
        // A byte stream in frames of many sizes, for reads raced against timers.
        let data = pattern(STREAM, 2);
        let mut off = 0;
        let mut n = 1usize;
        while off < data.len() {
            let len = (n * 7919 % 70_000 + 1).min(data.len() - off);
            s.write_all(&(len as u32).to_le_bytes())?;
            s.write_all(&data[off..off + len])?;
            off += len;
            n += 1;
        }
        // The server's huge message, not read until told: its write future is dropped.
        ctx.expect("read", T)?;
        let mut h = [0u8; 4];
        s.read_exact(&mut h)?;
        ensure(u32::from_le_bytes(h) as usize == HUGE, "huge header")?;
        let mut huge = vec![0u8; HUGE];
        s.read_exact(&mut huge)?;
        ensure(huge == pattern(HUGE, 3), "the huge message arrived changed")?;
        s.read_exact(&mut h)?;
        ensure(h == [4, 0, 0, 0], "next header")?;
        let mut next = [0u8; 4];
        s.read_exact(&mut next)?;
        ensure(&next == b"next", "next message")?;
        ctx.send_str("all")?;
        Ok(())
    });

    let name = pipe_name("cancel");
    let rt = runtime();
    rt.block_on(async {
        let mut s = ServerOptions::message()
            .namespace(ns_of(&t))
            .create_async(&name)
            .unwrap();
        let mut p = t.spawn("raw").arg(&name).start();
        s.connect().await.unwrap();
        p.expect("half", T).unwrap();
        // The first third of a message is there; reads of it cannot complete and are dropped.
        for _ in 0..3 {
            assert!(tokio::time::timeout(SHORT, s.read_message()).await.is_err());
            let mut buf = vec![0u8; BIG];
            assert!(tokio::time::timeout(SHORT, s.read(&mut buf)).await.is_err());
        }
        let peek = s.peek(&mut []).unwrap();
        assert_eq!(peek.message_left, BIG, "nothing was consumed: {peek:?}");
        p.send_str("go").unwrap();
        assert_eq!(s.read_message().await.unwrap(), pattern(BIG, 1));
        assert_eq!(s.read_message().await.unwrap(), b"hello");

        // Byte mode, every read raced against a timer that often wins.
        s.set_read_mode(ReadMode::Byte).unwrap();
        let mut got = Vec::with_capacity(STREAM);
        let mut buf = vec![0u8; 64 << 10];
        let mut dropped = 0u32;
        while got.len() < STREAM {
            tokio::select! {
                r = s.read(&mut buf) => {
                    let n = r.unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                () = tokio::time::sleep(Duration::from_micros(50)) => dropped += 1,
            }
        }
        assert_eq!(got.len(), STREAM);
        assert!(got == pattern(STREAM, 2), "the byte stream arrived changed");
        eprintln!("{dropped} read futures dropped");

        // A write that cannot complete (the peer reads nothing yet) is dropped half-sent: the
        // rest of its message still goes first, then the next message.
        let huge = pattern(HUGE, 3);
        assert!(tokio::time::timeout(SHORT, s.write(&huge)).await.is_err());
        p.send_str("read").unwrap();
        assert_eq!(s.write(b"next").await.unwrap(), 4);
        p.expect("all", T).unwrap();
        assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
    });
}

#[test]
fn sigkill_mid_message_is_a_typed_error_and_others_are_served() {
    let t = test_case!();
    t.role("steady", |ctx| {
        let name = ctx.arg(0).unwrap().to_owned();
        let id: u32 = ctx.arg(1).unwrap().parse()?;
        runtime().block_on(async {
            let mut c = client(ctx)
                .wait(PipeWait::Timeout(T))
                .connect_async(&name)
                .await?;
            c.set_read_mode(ReadMode::Message)?;
            let mut seq = 0;
            // Before the kill, and after it.
            for phase in ["before", "after"] {
                for _ in 0..50 {
                    let m = tagged(id, seq, 3000);
                    ensure(c.transact_message(&m).await? == m, "echo")?;
                    seq += 1;
                }
                ctx.send_str(phase)?;
                if phase == "before" {
                    ctx.expect("killed", T)?;
                }
            }
            Ok(())
        })
    });
    t.role("victim", |ctx| {
        let name = ctx.arg(0).unwrap().to_owned();
        runtime().block_on(async {
            let mut c = client(ctx)
                .wait(PipeWait::Timeout(T))
                .connect_async(&name)
                .await?;
            // 16 MiB: far more than the socket holds; killed before it is all sent.
            c.write(&vec![7u8; HUGE * 2]).await?;
            ctx.expect("never", T)?;
            Ok(())
        })
    });

    let name = pipe_name("akill");
    let rt = runtime();
    rt.block_on(async {
        let opts = ServerOptions::message().namespace(ns_of(&t));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..3 {
            let mut s = opts.create_async(&name).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                s.connect().await.unwrap();
                let pid = s.client().unwrap().pid;
                let mut told = false;
                let outcome = loop {
                    // Reads raced against a timer: between them, peek for the big message.
                    tokio::select! {
                        r = s.read_message() => match r {
                            Ok(m) if m.len() == HUGE * 2 => break Ok("whole"),
                            Ok(m) => {
                                s.write(&m).await.unwrap();
                            }
                            Err(e) => break Err((e.kind(), e.win32_code())),
                        },
                        () = tokio::time::sleep(Duration::from_millis(5)) => {
                            let p = s.peek(&mut []).unwrap();
                            if !told && p.message_left == HUGE * 2 && p.available > 0 {
                                told = true;
                                let _ = tx.send((pid, Ok("started")));
                            }
                        }
                    }
                };
                let _ = tx.send((pid, outcome));
            });
        }
        let mut a = t.spawn("steady").arg(&name).arg("1").start();
        let mut b = t.spawn("steady").arg(&name).arg("2").start();
        a.expect("before", T).unwrap();
        b.expect("before", T).unwrap();
        let mut v = t.spawn("victim").arg(&name).start();
        // Part of the victim's 16 MiB message reached its server: kill the sender now.
        let (pid, started) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        assert_eq!((pid, started), (v.pid(), Ok("started")));
        v.kill().unwrap();
        a.send_str("killed").unwrap();
        b.send_str("killed").unwrap();
        let (pid, outcome) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        assert_eq!(pid, v.pid(), "the first connection to end is the victim's");
        assert_eq!(outcome, Err((ErrorKind::BrokenPipe, 109)));
        a.expect("after", T).unwrap();
        b.expect("after", T).unwrap();
        for p in [&mut a, &mut b] {
            assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
        }
        for _ in 0..2 {
            let (_, outcome) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
            assert_eq!(
                outcome,
                Err((ErrorKind::BrokenPipe, 109)),
                "steady clients leave"
            );
        }
    });
}

#[test]
fn anonymous_pipe_ends_for_tokio() {
    // A child (`cat`) between two anonymous pipes, both driven by tokio in this process.
    let (to_r, to_w) = ipckit::pipe::anonymous_pipe().unwrap();
    let (from_r, from_w) = ipckit::pipe::anonymous_pipe().unwrap();
    let mut cmd = std::process::Command::new("cat");
    cmd.stdin(to_r).stdout(from_w);
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let data = pattern(STREAM, 4);
    let rt = runtime();
    let back = rt.block_on(async {
        let mut w = to_w.into_async().unwrap();
        let mut r = from_r.into_async().unwrap();
        let send = async {
            w.write_all(&data).await.unwrap();
            drop(w); // end of file for cat
        };
        let recv = async {
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            let e = r.read(&mut [0u8; 4]).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BrokenPipe);
            back
        };
        tokio::join!(send, recv).1
    });
    assert!(back == data, "the bytes came back changed");
    assert!(child.wait().unwrap().success());
    // Outside a runtime there is no async form, and an error says so.
    let (r, _w) = ipckit::pipe::anonymous_pipe().unwrap();
    assert_eq!(r.into_async().unwrap_err().kind(), ErrorKind::Unsupported);
}
