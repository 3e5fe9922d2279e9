//! Anonymous and named pipes across real processes: echo in byte and message mode with
//! boundaries from 0 B to 16 MiB, ERROR_MORE_DATA, peek, instances and PIPE_BUSY across server
//! processes, WaitNamedPipe (woken by a free instance or the last server's death), a concurrent
//! stress run with checksums, peer identity, SIGKILL in the middle of a message, hostile peers
//! speaking the wire protocol directly, private and shared pipes with a real unprivileged client
//! of another user (refused unless allowed), and anonymous pipes handed to a child as stdio and
//! as inherited handles; a writer sending from one thread while another waits in a read.
//!
//! Every test runs in its own namespace (the test kit's `IPCKIT_RUNTIME_DIR`), which the parent
//! opens with `Namespace::at(t.namespace())` and every peer gets from `ctx.namespace()`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipckit::ErrorKind;
use ipckit::name::PipeName;
use ipckit::namespace::Namespace;
use ipckit::pipe::{
    ClientOptions, NamedPipeServer, OpenMode, PipeReader, PipeWait, PipeWriter, ReadMode,
    ServerOptions, anonymous_pipe,
};
use ipckit_testkit::{RoleCtx, test_case, unique_name, wait_for};

mod common;
use common::{become_nobody, ctx_ns, ensure, fnv, ns_of, pattern, settle_asleep};

/// Upper bound for anything that must happen eventually.
const T: Duration = Duration::from_secs(30);

/// Set in the environment of a child started by the anonymous-pipe test: the test binary then
/// acts as that child instead of running the test.
const CHILD_ENV: &str = "IPCKIT_PIPE_TEST_CHILD";

fn client(ctx: &RoleCtx) -> ClientOptions {
    ClientOptions::new().namespace(ctx_ns(ctx))
}

fn pipe_name(tag: &str) -> String {
    format!(r"\\.\pipe\{}", unique_name(tag))
}

fn kind_of<T>(r: ipckit::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{:?}:{}", e.kind(), e.win32_code()),
    }
}

fn assert_kind<T: std::fmt::Debug>(r: ipckit::Result<T>, kind: ErrorKind, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: {e}"),
    }
}

const SIZES: &[usize] = &[
    0,
    1,
    2,
    0,
    3,
    100,
    4095,
    4096,
    4097,
    65_536,
    200_000,
    1 << 20,
    16 << 20,
    0,
    7,
];

#[test]
fn echo_message_mode_keeps_boundaries_more_data_and_peek() {
    let t = test_case!();
    t.role("client", |ctx| {
        let name = ctx.arg(0).unwrap().to_owned();
        let mut c = client(ctx).connect(&name)?;
        ensure(c.server_process_id() == ctx.parent_pid(), "server pid")?;
        ensure(
            c.read_mode() == ReadMode::Byte,
            "clients start in byte mode",
        )?;
        // A message-type pipe read in byte mode: two messages as one stream of 6 bytes.
        let mut six = [0u8; 6];
        c.read_exact(&mut six)?;
        ensure(&six == b"abcdef", format!("byte-mode read {six:?}"))?;
        c.set_read_mode(ReadMode::Message)?;
        for (i, &size) in SIZES.iter().enumerate() {
            let m = pattern(size, i as u64);
            ensure(c.write(&m)? == size, "write length")?;
            let back = c.read_message()?;
            ensure(
                back == m,
                format!("message {i} of {size} bytes came back changed"),
            )?;
        }
        // ERROR_MORE_DATA: a 1000-byte message read 7 bytes at a time, then the next one whole.
        let mut got = Vec::new();
        let mut buf = [0u8; 7];
        let mut partials = 0;
        loop {
            match c.read(&mut buf) {
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::MoreData => {
                    ensure(e.win32_code() == 234, "ERROR_MORE_DATA")?;
                    got.extend_from_slice(&buf);
                    partials += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        ensure(got == pattern(1000, 99), "reassembled message differs")?;
        ensure(partials == 1000 / 7, format!("{partials} partial reads"))?;
        let mut big = [0u8; 64];
        ensure(c.read(&mut big)? == 2, "the next message is separate")?;
        ensure(&big[..2] == b"ok", "next message")?;
        // An empty message is a message.
        ensure(c.read(&mut big)? == 0, "empty message")?;
        c.write(b"after")?;
        // Peek does not consume.
        ctx.expect("sent", T)?;
        let mut pb = [0u8; 3];
        let p = c.peek(&mut pb)?;
        ensure(
            p.available == 5 && p.message_left == 5 && p.bytes_read == 3 && &pb == b"abc",
            format!("peek {p:?} {pb:?}"),
        )?;
        let mut pb2 = [0u8; 16];
        let p2 = c.peek(&mut pb2)?;
        ensure(
            p2.bytes_read == 5 && &pb2[..5] == b"abcde",
            format!("peek {p2:?}"),
        )?;
        ensure(c.read_message()? == b"abcde", "read after peek")?;
        ensure(c.peek(&mut pb)?.available == 0, "nothing left")?;
        ctx.send_str("done")?;
        Ok(())
    });

    let name = pipe_name("echo-msg");
    let mut s = ServerOptions::message()
        .namespace(ns_of(&t))
        .create(&name)
        .unwrap();
    let mut peer = t.spawn("client").arg(&name).start();
    s.connect().unwrap();
    assert_eq!(s.client().unwrap().pid, peer.pid());
    s.write(b"abc").unwrap();
    s.write(b"def").unwrap();
    for &size in SIZES {
        let m = s.read_message().unwrap();
        assert_eq!(m.len(), size);
        s.write(&m).unwrap();
    }
    s.write(&pattern(1000, 99)).unwrap();
    s.write(b"ok").unwrap();
    s.write(b"").unwrap();
    assert_eq!(s.read_message().unwrap(), b"after");
    s.write(b"abcde").unwrap();
    peer.send_str("sent").unwrap();
    peer.expect("done", T).unwrap();
    assert!(peer.wait_timeout(T).unwrap().success(), "{}", peer.report());
    // The client is gone: reading gives ERROR_BROKEN_PIPE, writing ERROR_NO_DATA.
    let e = s.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!((e.kind(), e.win32_code()), (ErrorKind::BrokenPipe, 109));
    let e = s.write(b"x").unwrap_err();
    assert_eq!((e.kind(), e.win32_code()), (ErrorKind::NoData, 232));
}

#[test]
fn large_reads_keep_boundaries_when_messages_queue_up() {
    let t = test_case!();
    const SIZES: [usize; 6] = [20_000, 0, 30_000, 70_000, 17_000, 3];
    t.role("writer", |ctx| {
        let mut c = client(ctx).connect(ctx.arg(0).unwrap())?;
        for (i, &n) in SIZES.iter().enumerate() {
            c.write(&pattern(n, i as u64))?;
        }
        ctx.send_str("written")?;
        ctx.expect("bye", T)?;
        Ok(())
    });
    let name = pipe_name("large");
    let mut s = ServerOptions::message()
        .namespace(ns_of(&t))
        .create(&name)
        .unwrap();
    let mut p = t.spawn("writer").arg(&name).start();
    s.connect().unwrap();
    // Every message queued up (the socket holds them all), so one receive may take several.
    p.expect("written", T).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    for (i, &n) in SIZES.iter().enumerate() {
        let mut got = Vec::new();
        loop {
            match s.read(&mut buf) {
                Ok(k) => {
                    got.extend_from_slice(&buf[..k]);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::MoreData => got.extend_from_slice(&buf),
                Err(e) => panic!("message {i}: {e}"),
            }
        }
        assert!(got == pattern(n, i as u64), "message {i} of {n} bytes");
    }
    p.send_str("bye").unwrap();
    assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
}

#[test]
fn echo_byte_mode_with_a_long_name() {
    let t = test_case!();
    t.role("client", |ctx| {
        let name = ctx.arg(0).unwrap().to_owned();
        let mut c = client(ctx).connect(&name)?;
        ensure(
            c.set_read_mode(ReadMode::Message).unwrap_err().kind() == ErrorKind::InvalidParameter,
            "message mode on a byte pipe",
        )?;
        c.write(b"hello ")?;
        c.write(b"")?;
        c.write(b"world")?;
        let mut back = vec![0u8; 300_000];
        c.read_exact(&mut back)?;
        ensure(back == pattern(300_000, 5), "byte stream differs")?;
        Ok(())
    });

    // A name whose socket paths exceed sockaddr_un's 107 bytes inside the test's folder.
    let name = format!(r"\\.\pipe\{}", unique_name(&"long".repeat(10)));
    let ns = ns_of(&t);
    assert!(
        ns.pipe_path(&PipeName::parse(&name).unwrap())
            .unwrap()
            .as_os_str()
            .len()
            + 40
            > 107
    );
    let mut s = ServerOptions::new().namespace(ns).create(&name).unwrap();
    let mut peer = t.spawn("client").arg(&name).start();
    s.connect().unwrap();
    assert_kind(
        s.set_read_mode(ReadMode::Message),
        ErrorKind::InvalidParameter,
        "server message mode on a byte pipe",
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4];
    while got.len() < 11 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"hello world");
    s.write(&pattern(300_000, 5)).unwrap();
    assert!(peer.wait_timeout(T).unwrap().success(), "{}", peer.report());
    assert_kind(s.read(&mut buf), ErrorKind::BrokenPipe, "after client exit");
}

#[test]
fn max_instances_pipe_busy_wait_and_two_server_processes() {
    let t = test_case!();
    t.role("server2", |ctx| {
        let name = ctx.arg(0).unwrap().to_owned();
        let mut s = ServerOptions::message()
            .max_instances(2)?
            .namespace(ctx_ns(ctx))
            .create(&name)?;
        ctx.send_str("ready")?;
        s.connect()?;
        ensure(s.read_message()? == b"who", "who")?;
        s.write(std::process::id().to_string().as_bytes())?;
        ensure(
            s.read_message().unwrap_err().kind() == ErrorKind::BrokenPipe,
            "client left",
        )?;
        ctx.send_str("served")?;
        Ok(())
    });
    t.role("client", |ctx| {
        let name = ctx.arg(0).unwrap().to_owned();
        let opts = client(ctx);
        let mut c = match opts.connect(&name) {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::PipeBusy => {
                ctx.send_str(&format!("busy:{}", e.win32_code()))?;
                let r = opts.wait_named_pipe(&name, PipeWait::Timeout(Duration::from_millis(50)));
                ctx.send_str(&kind_of(r))?;
                ctx.expect("wait", T)?;
                opts.wait_named_pipe(&name, PipeWait::Timeout(T))?;
                opts.clone().wait(PipeWait::Timeout(T)).connect(&name)?
            }
            Err(e) => return Err(e.into()),
        };
        ctx.send_str("connected")?;
        c.set_read_mode(ReadMode::Message)?;
        let pid = c.transact_message(b"who")?;
        ensure(
            String::from_utf8_lossy(&pid) == c.server_process_id().to_string(),
            "server pid",
        )?;
        ctx.send_str(&format!("server:{}", String::from_utf8_lossy(&pid)))?;
        ctx.expect("bye", T)?;
        Ok(())
    });

    let name = pipe_name("busy");
    let opts = ServerOptions::message()
        .max_instances(2)
        .unwrap()
        .namespace(ns_of(&t));
    let mut s1 = opts.create(&name).unwrap();
    let mut p2 = t.spawn("server2").arg(&name).start();
    p2.expect("ready", T).unwrap();
    assert_eq!(s1.instances().unwrap(), 2);
    // A third instance passes the maximum, counted over both processes.
    let e = opts.create(&name).unwrap_err();
    assert_eq!((e.kind(), e.win32_code()), (ErrorKind::PipeBusy, 231));

    let mut a = t.spawn("client").arg(&name).start();
    a.expect("connected", T).unwrap();
    let mut b = t.spawn("client").arg(&name).start();
    b.expect("connected", T).unwrap();
    s1.connect().unwrap();
    assert_eq!(s1.read_message().unwrap(), b"who");
    s1.write(std::process::id().to_string().as_bytes()).unwrap();
    let sa = a.recv_str_timeout(T).unwrap();
    let sb = b.recv_str_timeout(T).unwrap();
    let servers: BTreeSet<String> = [sa.clone(), sb].into_iter().collect();
    let expected: BTreeSet<String> = [
        format!("server:{}", std::process::id()),
        format!("server:{}", p2.pid()),
    ]
    .into_iter()
    .collect();
    assert_eq!(servers, expected, "both server processes serve a client");

    // Both instances are busy: the third client gets ERROR_PIPE_BUSY, WaitNamedPipe times out.
    let mut c = t.spawn("client").arg(&name).start();
    c.expect("busy:231", T).unwrap();
    c.expect("Timeout:121", T).unwrap();

    // The client of this process's instance leaves; the instance serves the third client.
    let (mine, other) = if sa == format!("server:{}", std::process::id()) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    mine.send_str("bye").unwrap();
    assert!(mine.wait_timeout(T).unwrap().success());
    assert_kind(
        s1.read_message(),
        ErrorKind::BrokenPipe,
        "first client left",
    );
    s1.disconnect().unwrap();
    c.send_str("wait").unwrap();
    c.expect("connected", T).unwrap();
    s1.connect().unwrap();
    assert_eq!(s1.read_message().unwrap(), b"who");
    s1.write(std::process::id().to_string().as_bytes()).unwrap();
    c.expect(&format!("server:{}", std::process::id()), T)
        .unwrap();
    c.send_str("bye").unwrap();
    other.send_str("bye").unwrap();
    p2.expect("served", T).unwrap();
    for p in [&mut c, other, &mut p2] {
        assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
    }
}

const STRESS_CLIENTS: u32 = 8;
const STRESS_PER_CLIENT: u32 = 10_000 / STRESS_CLIENTS;

#[test]
fn ten_thousand_messages_from_eight_client_processes() {
    let t = test_case!();
    t.role("stress", |ctx| {
        let name = ctx.arg(0).unwrap().to_owned();
        let id: u32 = ctx.arg(1).unwrap().parse()?;
        let mut c = client(ctx).wait(PipeWait::Timeout(T)).connect(&name)?;
        c.set_read_mode(ReadMode::Message)?;
        let mut rng = u64::from(id) * 7919 + 1;
        for seq in 0..STRESS_PER_CLIENT {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = match rng % 10 {
                0 => 0,
                1 => (rng >> 8) as usize % 300_000,
                _ => (rng >> 8) as usize % 4096,
            };
            let payload = pattern(len, rng);
            let mut m = Vec::with_capacity(16 + len);
            m.extend_from_slice(&id.to_le_bytes());
            m.extend_from_slice(&seq.to_le_bytes());
            m.extend_from_slice(&fnv(&payload).to_le_bytes());
            m.extend_from_slice(&payload);
            c.write(&m)?;
            let back = c.read_message()?;
            ensure(back == m, format!("client {id}: echo of {seq} differs"))?;
        }
        ensure(c.transact_message(b"end")? == b"end", "end")?;
        ctx.send_str("done")?;
        Ok(())
    });

    let name = pipe_name("stress");
    let opts = ServerOptions::message().namespace(ns_of(&t));
    let servers: Vec<NamedPipeServer> = (0..STRESS_CLIENTS)
        .map(|_| opts.create(&name).unwrap())
        .collect();
    let threads: Vec<_> = servers
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || -> Result<(u32, u32, u32), String> {
                s.connect_timeout(T).map_err(|e| e.to_string())?;
                let pid = s.client().unwrap().pid;
                let mut client_id = None;
                let mut next = 0u32;
                loop {
                    let m = s.read_message().map_err(|e| e.to_string())?;
                    if m == b"end" {
                        s.write(b"end").map_err(|e| e.to_string())?;
                        return Ok((client_id.unwrap_or(u32::MAX), next, pid));
                    }
                    if m.len() < 16 {
                        return Err(format!("short message {m:?}"));
                    }
                    let id = u32::from_le_bytes(m[0..4].try_into().unwrap());
                    let seq = u32::from_le_bytes(m[4..8].try_into().unwrap());
                    let sum = u64::from_le_bytes(m[8..16].try_into().unwrap());
                    if *client_id.get_or_insert(id) != id {
                        return Err(format!("client {id} on the connection of another"));
                    }
                    if seq != next {
                        return Err(format!("client {id}: got #{seq}, expected #{next}"));
                    }
                    if fnv(&m[16..]) != sum {
                        return Err(format!("client {id}: checksum of #{seq} differs"));
                    }
                    next += 1;
                    s.write(&m).map_err(|e| e.to_string())?;
                }
            })
        })
        .collect();
    let mut peers: Vec<_> = (0..STRESS_CLIENTS)
        .map(|i| t.spawn("stress").arg(&name).arg(i.to_string()).start())
        .collect();
    for p in &mut peers {
        p.expect("done", Duration::from_secs(120)).unwrap();
        assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
    }
    let mut seen = BTreeSet::new();
    let pids: BTreeSet<u32> = peers.iter().map(|p| p.pid()).collect();
    for th in threads {
        let (id, count, pid) = th.join().unwrap().unwrap();
        assert_eq!(count, STRESS_PER_CLIENT, "client {id}");
        assert!(pids.contains(&pid));
        assert!(seen.insert(id), "client {id} twice");
    }
    assert_eq!(seen, (0..STRESS_CLIENTS).collect());
}

#[test]
fn peer_identity_and_sigkill_in_the_middle_of_a_message() {
    let t = test_case!();
    t.role("hello", |ctx| {
        let mut c = client(ctx).connect(ctx.arg(0).unwrap())?;
        c.write(b"hello")?;
        ctx.send_str(&format!("server:{}", c.server_process_id()))?;
        ctx.expect("bye", T)?;
        Ok(())
    });
    t.role("big_writer", |ctx| {
        let mut c = client(ctx).connect(ctx.arg(0).unwrap())?;
        ctx.send_str("writing")?;
        c.write(&vec![7u8; 16 << 20])?;
        ctx.expect("never", T)?;
        Ok(())
    });
    t.role("echo_once", |ctx| {
        let mut c = client(ctx).connect(ctx.arg(0).unwrap())?;
        c.set_read_mode(ReadMode::Message)?;
        ensure(c.transact_message(b"ping")? == b"pong", "pong")?;
        ctx.send_str("ok")?;
        Ok(())
    });
    t.role("big_server", |ctx| {
        let mut s = ServerOptions::message()
            .namespace(ctx_ns(ctx))
            .create(ctx.arg(0).unwrap())?;
        ctx.send_str("ready")?;
        s.connect()?;
        s.write(&vec![9u8; 16 << 20])?;
        ctx.expect("never", T)?;
        Ok(())
    });

    let name = pipe_name("ident");
    let mut s = ServerOptions::message()
        .namespace(ns_of(&t))
        .create(&name)
        .unwrap();

    // Who is there.
    let mut p = t.spawn("hello").arg(&name).start();
    s.connect().unwrap();
    let who = s.client().unwrap();
    assert_eq!(who.pid, p.pid());
    assert_eq!(s.client_process_id().unwrap(), p.pid());
    assert_eq!(who.uid, rustix::process::geteuid().as_raw());
    assert_eq!(who.gid, rustix::process::getegid().as_raw());
    assert_eq!(s.read_message().unwrap(), b"hello");
    p.expect(&format!("server:{}", std::process::id()), T)
        .unwrap();
    p.send_str("bye").unwrap();
    assert!(p.wait_timeout(T).unwrap().success());
    assert_kind(s.read_message(), ErrorKind::BrokenPipe, "after bye");
    s.disconnect().unwrap();

    // A client killed while its 16 MiB message is on the way.
    let mut p = t.spawn("big_writer").arg(&name).start();
    s.connect().unwrap();
    p.expect("writing", T).unwrap();
    assert!(
        wait_for(T, || s
            .peek(&mut [])
            .is_ok_and(|i| i.message_left == 16 << 20 && i.available > 0)),
        "the message never started"
    );
    p.kill().unwrap();
    let e = s.read_message().unwrap_err();
    assert_eq!((e.kind(), e.win32_code()), (ErrorKind::BrokenPipe, 109));
    s.disconnect().unwrap();

    // The server goes on serving.
    let mut p = t.spawn("echo_once").arg(&name).start();
    s.connect().unwrap();
    assert_eq!(s.read_message().unwrap(), b"ping");
    s.write(b"pong").unwrap();
    p.expect("ok", T).unwrap();
    assert!(p.wait_timeout(T).unwrap().success());

    // A server killed while its 16 MiB message is on the way.
    let name2 = pipe_name("ident2");
    let mut ps = t.spawn("big_server").arg(&name2).start();
    ps.expect("ready", T).unwrap();
    let copts = ClientOptions::new().namespace(ns_of(&t));
    let mut c = copts.connect(&name2).unwrap();
    assert_eq!(c.server_process_id(), ps.pid());
    c.set_read_mode(ReadMode::Message).unwrap();
    assert!(
        wait_for(T, || c
            .peek(&mut [])
            .is_ok_and(|i| i.message_left == 16 << 20 && i.available > 0)),
        "the message never started"
    );
    ps.kill().unwrap();
    assert_kind(c.read_message(), ErrorKind::BrokenPipe, "server killed");
    assert_kind(c.write(b"x"), ErrorKind::NoData, "write after server died");
    // The pipe died with its only server.
    assert_kind(copts.connect(&name2), ErrorKind::NotFound, "dead pipe");
}

/// Connects to a free instance of `name` by the wire protocol of `docs/protocol/pipe.md`,
/// without the library: connect to any listening socket `i-PID-N.sock` of the pipe's folder.
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

fn read_all(mut s: UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(T)).unwrap();
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}

#[test]
fn hostile_clients_end_only_their_own_connection() {
    let t = test_case!();
    t.role("raw", |ctx| {
        let name = ctx.arg(0).unwrap().to_owned();
        let mode = ctx.arg(1).unwrap().to_owned();
        let mut s = raw_connect(&ctx_ns(ctx), &name)?;
        match mode.as_str() {
            "oversize" => {
                // One write: the server may end the connection as soon as it has read the
                // header, and a second write would then fail with EPIPE.
                let mut frame = (1u32 << 30).to_le_bytes().to_vec();
                frame.extend_from_slice(&[1u8; 100]);
                s.write_all(&frame)?;
                // The server answers with the TOO_LARGE control frame and ends the connection.
                let got = read_all(s);
                ensure(got == [2, 0, 0, 0x80], format!("got {got:?}"))?;
            }
            "garbage" => {
                s.write_all(&0x8000_0077u32.to_le_bytes())?;
                let got = read_all(s);
                ensure(got.is_empty(), format!("got {got:?}"))?;
            }
            "vanish" => {
                s.write_all(&100u32.to_le_bytes())?;
                s.write_all(&[5u8; 10])?;
                ctx.expect("go", T)?;
                return Ok(()); // exits in the middle of the message
            }
            _ => return Err("unknown mode".into()),
        }
        ctx.send_str("done")?;
        Ok(())
    });
    t.role("good", |ctx| {
        let mut c = client(ctx).connect(ctx.arg(0).unwrap())?;
        c.set_read_mode(ReadMode::Message)?;
        ensure(c.info().max_message_size == 1024, "limit")?;
        // Over the limit: refused locally, nothing sent, the connection stays usable.
        let e = c.write(&[0u8; 1025]).unwrap_err();
        ensure(e.kind() == ErrorKind::MessageTooLarge, format!("{e}"))?;
        ensure(c.transact_message(&[3u8; 1024])? == [3u8; 1024], "echo")?;
        ctx.send_str("done")?;
        Ok(())
    });

    let ns = ns_of(&t);
    // Names are validated before anything touches the file system.
    for bad in [
        "",
        r"\\.\pipe\",
        r"\\.\pipe\..",
        r"\\.\pipe\a/b",
        "\\\\.\\pipe\\a\0b",
        r"\\.\mailslot\x",
        r"pipe\x",
        r"\\.\pipe\a\..\..\b",
    ] {
        assert_kind(
            ServerOptions::new().namespace(ns.clone()).create(bad),
            ErrorKind::InvalidName,
            bad,
        );
        assert_kind(
            ClientOptions::new().namespace(ns.clone()).connect(bad),
            ErrorKind::InvalidName,
            bad,
        );
    }
    let copts = ClientOptions::new().namespace(ns.clone());
    assert_kind(
        copts.connect(r"\\far-host\pipe\x"),
        ErrorKind::NeedsGateway,
        "remote",
    );
    assert_kind(
        ServerOptions::new()
            .namespace(ns.clone())
            .create(r"\\far-host\pipe\x"),
        ErrorKind::NeedsGateway,
        "remote server",
    );
    let e = copts.connect(r"\\.\pipe\nobody-here").unwrap_err();
    assert_eq!((e.kind(), e.win32_code()), (ErrorKind::NotFound, 2));
    assert_kind(
        copts.wait_named_pipe(r"\\.\pipe\nobody-here", PipeWait::Default),
        ErrorKind::NotFound,
        "wait on no pipe",
    );
    assert_kind(
        ServerOptions::new().max_instances(0),
        ErrorKind::InvalidParameter,
        "0",
    );
    assert_kind(
        ServerOptions::new().max_instances(255),
        ErrorKind::InvalidParameter,
        "255",
    );

    let name = pipe_name("hostile");
    let opts = ServerOptions::message()
        .namespace(ns.clone())
        .max_message_size(1024)
        .unwrap();
    let mut s = opts.create(&name).unwrap();
    // FILE_FLAG_FIRST_PIPE_INSTANCE, and a second instance of another type.
    assert_kind(
        opts.clone().first_instance(true).create(&name),
        ErrorKind::AccessDenied,
        "first instance",
    );
    assert_kind(
        ServerOptions::new().namespace(ns.clone()).create(&name),
        ErrorKind::AccessDenied,
        "byte instance of a message pipe",
    );
    assert_kind(
        opts.clone().open_mode(OpenMode::Inbound).create(&name),
        ErrorKind::AccessDenied,
        "other open mode",
    );

    for (mode, kind) in [
        ("oversize", ErrorKind::MessageTooLarge),
        ("garbage", ErrorKind::Protocol),
        ("vanish", ErrorKind::BrokenPipe),
    ] {
        let mut p = t.spawn("raw").arg(&name).arg(mode).start();
        s.connect().unwrap();
        if mode == "vanish" {
            p.send_str("go").unwrap();
        }
        assert_kind(s.read_message(), kind, mode);
        assert_kind(
            s.read_message(),
            ErrorKind::BrokenPipe,
            "then the pipe is ended",
        );
        if mode != "vanish" {
            p.expect("done", T).unwrap();
        }
        assert!(
            p.wait_timeout(T).unwrap().success(),
            "{mode}: {}",
            p.report()
        );
        s.disconnect().unwrap();

        // The same instance serves a well-behaved client next.
        let mut g = t.spawn("good").arg(&name).start();
        s.connect().unwrap();
        let m = s.read_message().unwrap();
        assert_eq!(m, [3u8; 1024]);
        s.write(&m).unwrap();
        g.expect("done", T).unwrap();
        assert!(g.wait_timeout(T).unwrap().success(), "{}", g.report());
        s.disconnect().unwrap();
    }
}

/// The test's namespace with its machine-wide folder at the first argument.
fn shared_ns(ctx: &RoleCtx) -> Namespace {
    ctx_ns(ctx).with_global_dir(ctx.arg(1).unwrap())
}

#[test]
fn pipes_are_private_unless_shared_and_other_users_are_refused_unless_allowed() {
    let t = test_case!();
    // args: pipe name, shared namespace, mode (private / deny / allow / any)
    t.role("server", |ctx| {
        let ns = shared_ns(ctx);
        let mut opts = ServerOptions::message().max_instances(1)?.namespace(ns);
        opts = match ctx.arg(2) {
            Some("allow") => opts.allow_user(65534),
            Some("deny") => opts.allow_user(4242),
            Some("any") => opts.allow_any_user(),
            _ => opts,
        };
        let mut s = opts.create(ctx.arg(0).unwrap())?;
        ctx.send_str("ready")?;
        loop {
            s.connect()?;
            let who = s.client().unwrap();
            let m = s.read_message()?;
            s.write(&m)?;
            ctx.send_str(&format!("served:{}", who.uid))?;
            let _ = s.read_message();
            s.disconnect()?;
        }
    });
    t.role("foreign", |ctx| {
        become_nobody(ctx)?;
        let name = ctx.arg(0).unwrap();
        let ns = shared_ns(ctx);
        let owner: u32 = ctx.arg(2).unwrap().parse()?;
        // Another owner's pipe of that name does not exist.
        let wrong = ClientOptions::new()
            .namespace(ns.clone())
            .owner(4242)
            .connect(name);
        ensure(
            wrong
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::NotFound),
            format!("wrong owner: {:?}", wrong.map(|_| ())),
        )?;
        let opts = ClientOptions::new().namespace(ns).owner(owner);
        let verdict = match opts.connect(name) {
            Err(e) => format!("open:{:?}", e.kind()),
            Ok(mut c) => {
                c.set_read_mode(ReadMode::Message)?;
                ensure(c.server().uid == owner, "server uid")?;
                match c.transact_message(b"hi") {
                    Ok(m) if m == b"hi" => "echoed".to_owned(),
                    Ok(m) => format!("unexpected reply {m:?}"),
                    Err(e) => format!("transact:{:?}:{}", e.kind(), e.win32_code()),
                }
            }
        };
        ctx.send_str(&verdict)?;
        Ok(())
    });
    t.role("friend", |ctx| {
        // The server's own user finds the pipe without naming the owner, shared or not.
        let mut c = ClientOptions::new()
            .namespace(shared_ns(ctx))
            .connect(ctx.arg(0).unwrap())?;
        c.set_read_mode(ReadMode::Message)?;
        ensure(c.transact_message(b"yo")? == b"yo", "echo")?;
        Ok(())
    });
    // CI runs as root, which can start a client as another user; elsewhere this test cannot
    // prove anything and says so loudly.
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root, to run a client as another user"
    );
    let me = rustix::process::geteuid().as_raw();
    // A machine-wide folder that other users can enter (the test's own folder is private).
    let shared = ipckit_testkit::TestDir::new("ipckit-shared").unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let shared_path = shared.path().to_str().unwrap().to_owned();
    let private_dir = |name: &str| {
        ns_of(&t)
            .pipe_path(&PipeName::parse(name).unwrap())
            .unwrap()
    };
    let published_dir = |name: &str| {
        let enc = private_dir(name).file_name().unwrap().to_owned();
        shared.path().join("pipe").join(me.to_string()).join(enc)
    };
    for (mode, expected) in [
        ("private", "open:NotFound"),
        ("deny", "transact:AccessDenied:5"),
        ("allow", "echoed"),
        ("any", "echoed"),
    ] {
        let name = pipe_name(mode);
        let mut srv = t
            .spawn("server")
            .arg(&name)
            .arg(&shared_path)
            .arg(mode)
            .start();
        srv.expect("ready", T).unwrap();
        // Where the pipe lives, and who may enter.
        if mode == "private" {
            assert!(private_dir(&name).is_dir());
            assert!(!published_dir(&name).exists());
        } else {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            assert!(!private_dir(&name).exists(), "{mode}");
            let md = std::fs::metadata(published_dir(&name)).unwrap();
            assert_eq!((md.uid(), md.permissions().mode() & 0o7777), (me, 0o755));
        }
        let mut f = t
            .spawn("foreign")
            .arg(&name)
            .arg(&shared_path)
            .arg(me.to_string())
            .start();
        f.expect(expected, T).unwrap();
        assert!(f.wait_timeout(T).unwrap().success(), "{}", f.report());
        if expected == "echoed" {
            srv.expect("served:65534", T).unwrap();
        }
        // The instance (its only one) serves its own user next: a refused client did not
        // leave it busy.
        let mut g = t.spawn("friend").arg(&name).arg(&shared_path).start();
        srv.expect(&format!("served:{me}"), T).unwrap();
        assert!(g.wait_timeout(T).unwrap().success(), "{}", g.report());
        srv.kill().unwrap();
    }
}

#[test]
fn wait_named_pipe_ends_when_the_last_server_is_killed() {
    let t = test_case!();
    t.role("server", |ctx| {
        let mut s = ServerOptions::new()
            .max_instances(1)?
            .namespace(ctx_ns(ctx))
            .create(ctx.arg(0).unwrap())?;
        ctx.send_str("ready")?;
        s.connect()?;
        ctx.send_str("busy")?;
        ctx.expect("never", T)?;
        Ok(())
    });
    t.role("holder", |ctx| {
        let _c = client(ctx).connect(ctx.arg(0).unwrap())?;
        ctx.expect("never", T)?;
        Ok(())
    });
    t.role("waiter", |ctx| {
        // No time limit: only the server's end can finish this wait (a killed server removes
        // nothing from the pipe's folder).
        let r = client(ctx).wait_named_pipe(ctx.arg(0).unwrap(), PipeWait::Forever);
        ctx.send_str(&kind_of(r))?;
        Ok(())
    });
    let name = pipe_name("waitkill");
    let mut s = t.spawn("server").arg(&name).start();
    s.expect("ready", T).unwrap();
    let mut h = t.spawn("holder").arg(&name).start();
    s.expect("busy", T).unwrap();
    let mut w = t.spawn("waiter").arg(&name).start();
    settle_asleep(w.pid());
    s.kill().unwrap();
    w.expect("NotFound:2", T).unwrap();
    assert!(w.wait_timeout(T).unwrap().success(), "{}", w.report());
    h.kill().unwrap();
}

/// The child of `anonymous_pipes_to_a_child`: reads its stdin and the inherited handles,
/// reports on stdout, lists its descriptors.
fn pipe_child() -> ! {
    let run = || -> Result<String, Box<dyn std::error::Error>> {
        let mut stdin = String::new();
        std::io::stdin().read_to_string(&mut stdin)?;
        let mut extra = PipeReader::from_inherited_env("EXTRA_IN")?;
        let mut extra_text = String::new();
        extra.read_to_string(&mut extra_text)?;
        let eof = kind_of(extra.read(&mut [0u8; 4]));
        let mut out = PipeWriter::from_inherited_env("EXTRA_OUT")?;
        out.write_all(b"from-child")?;
        let unused = PipeReader::from_inherited_env("EXTRA_UNUSED")?;
        // A second claim of the same number fails.
        let again = kind_of(PipeReader::from_inherited_env("EXTRA_IN"));
        let mut fds = Vec::new();
        for e in std::fs::read_dir("/proc/self/fd")? {
            let e = e?;
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            if target.starts_with("/proc") {
                continue; // the listing's own descriptor
            }
            fds.push(e.file_name().into_string().unwrap().parse::<i32>()?);
        }
        fds.sort_unstable();
        use std::os::fd::{AsFd, AsRawFd};
        let numbers = [
            extra.as_fd().as_raw_fd(),
            out.as_fd().as_raw_fd(),
            unused.as_fd().as_raw_fd(),
        ];
        Ok(format!(
            "stdin={stdin};extra={extra_text};eof={eof};again={again};fds={fds:?};inherited={numbers:?}"
        ))
    };
    match run() {
        Ok(report) => {
            print!("<<REPORT>>{report}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("pipe child failed: {e}");
            std::process::exit(1)
        }
    }
}

fn parse_list(s: &str) -> Vec<i32> {
    s.trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().unwrap())
        .collect()
}

/// This process's descriptors that are not close-on-exec (`flags` in `/proc/self/fdinfo`,
/// `O_CLOEXEC` = 0o2000000).
fn inheritable_fds() -> std::io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fdinfo")? {
        let e = e?;
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        if flags & 0o2000000 == 0 {
            out.push(e.file_name().into_string().unwrap().parse().unwrap());
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[test]
fn anonymous_pipes_to_a_child() {
    if std::env::var_os(CHILD_ENV).is_some() {
        pipe_child();
    }
    let t = test_case!();
    t.role("spawner", |ctx| {
        // Taken before any pipe exists, so that a pipe end leaking would not be excused.
        let before = inheritable_fds()?;
        let (in_r, mut in_w) = anonymous_pipe()?;
        let (mut out_r, out_w) = anonymous_pipe()?;
        let (x_r, mut x_w) = anonymous_pipe()?;
        let (mut y_r, y_w) = anonymous_pipe()?;
        let (z_r, mut z_w) = anonymous_pipe()?;
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args([
            ctx.test_name(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(in_r)
        .stdout(out_w);
        for (k, _) in std::env::vars() {
            if k.starts_with("IPCKIT_TESTKIT_") {
                cmd.env_remove(k);
            }
        }
        let nx = x_r.inherit_env(&mut cmd, "EXTRA_IN");
        let ny = y_w.inherit_env(&mut cmd, "EXTRA_OUT");
        let nz = z_r.inherit_env(&mut cmd, "EXTRA_UNUSED");
        let mut child = cmd.spawn()?;
        drop(cmd); // this process's copies of the child's ends
        in_w.write_all(b"to-stdin")?;
        drop(in_w);
        x_w.write_all(b"to-extra")?;
        drop(x_w);
        let mut stdout = String::new();
        out_r.read_to_string(&mut stdout)?;
        // libtest prints its own lines before the child's report.
        let report = stdout
            .rsplit_once("<<REPORT>>")
            .map(|(_, r)| r.to_owned())
            .ok_or_else(|| format!("no report in {stdout:?}"))?;
        let mut from_child = String::new();
        y_r.read_to_string(&mut from_child)?;
        // Every write end is closed: ERROR_BROKEN_PIPE.
        let eof = kind_of(y_r.read(&mut [0u8; 4]));
        let status = child.wait()?;
        ensure(status.success(), format!("child: {status}"))?;
        // Every read end is closed: ERROR_NO_DATA, and this process is still alive.
        let nodata = kind_of(z_w.write(b"anyone?"));
        ctx.send_str(&format!(
            "{report}|{from_child}|{eof}|{nodata}|{:?}|{:?}",
            [nx, ny, nz],
            before
        ))?;
        Ok(())
    });

    let mut p = t.spawn("spawner").start();
    let got = p.recv_str_timeout(T).unwrap();
    assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
    let parts: Vec<&str> = got.split('|').collect();
    assert_eq!(parts.len(), 6, "{got}");
    let numbers = parts[4];
    assert_eq!(parts[1], "from-child");
    assert_eq!(parts[2], "BrokenPipe:109");
    assert_eq!(parts[3], "NoData:232");
    let report = parts[0];
    assert!(
        report.starts_with(
            "stdin=to-stdin;extra=to-extra;eof=BrokenPipe:109;again=InvalidParameter:87;"
        ),
        "{report}"
    );
    // Only the standard streams and the three handed-over ends reached the child, under the
    // numbers the parent was told.
    let nums = parse_list(numbers);
    // Descriptors the spawner itself inherited without close-on-exec (from the environment
    // that started the tests) pass on to its children whatever ipckit does.
    let before: Vec<i32> = parse_list(parts[5]);
    let mut expected = vec![0, 1, 2];
    expected.extend(&nums);
    expected.extend(before.iter().filter(|&&n| n > 2));
    expected.sort_unstable();
    assert!(report.contains(&format!("fds={expected:?}")), "{report}");
    assert!(
        report.ends_with(&format!("inherited={numbers}")),
        "{report}"
    );
}

#[test]
fn pipe_disappears_with_its_last_instance() {
    let t = test_case!();
    t.role("server", |ctx| {
        let _s = ServerOptions::new()
            .namespace(ctx_ns(ctx))
            .create(ctx.arg(0).unwrap())?;
        ctx.send_str("ready")?;
        ctx.expect("never", T)?;
        Ok(())
    });
    let name = pipe_name("gone");
    let ns = ns_of(&t);
    let dir: PathBuf = ns.pipe_path(&PipeName::parse(&name).unwrap()).unwrap();
    let mut p = t.spawn("server").arg(&name).start();
    p.expect("ready", T).unwrap();
    assert!(dir.is_dir());
    p.kill().unwrap();
    // Killed: its instance no longer counts, the pipe is gone for clients, and a new first
    // instance may fix new parameters.
    let copts = ClientOptions::new().namespace(ns.clone());
    assert_kind(copts.connect(&name), ErrorKind::NotFound, "dead server");
    let s = ServerOptions::message()
        .namespace(ns.clone())
        .first_instance(true)
        .create(&name)
        .unwrap();
    assert_eq!(s.instances().unwrap(), 1);
    assert_eq!(s.info().pipe_type, ipckit::pipe::PipeType::Message);
    drop(s);
    assert!(
        !Path::new(&dir).exists(),
        "the last instance removes the pipe"
    );
}

/// The sizes the writer test sends: empty, small, over the 64 KiB socket buffer, 1 MiB.
const WRITER_SIZES: &[usize] = &[0, 1, 511, 513, 4096, 70_000, 1 << 20];
/// The writer test's pipe refuses messages over this.
const WRITER_LIMIT: u32 = 2 << 20;

#[test]
fn a_writer_sends_while_another_thread_waits_in_a_read() {
    let t = test_case!();
    // A client whose reading thread waits while its main thread writes through the writer.
    t.role("duplex_client", |ctx| {
        let mut c = client(ctx).connect(ctx.arg(0).unwrap())?;
        c.set_read_mode(ReadMode::Message)?;
        let w = c.writer()?;
        let reading = std::thread::spawn(move || {
            let mut echoes = Vec::new();
            loop {
                match c.read_message() {
                    Ok(m) => echoes.push(m),
                    Err(e) => return (echoes, format!("{:?}:{}", e.kind(), e.win32_code())),
                }
            }
        });
        ctx.send_str("reading")?;
        ctx.expect("write", T)?;
        for (i, &len) in WRITER_SIZES.iter().enumerate() {
            ensure(
                w.write(&pattern(len, i as u64))? == len,
                "write returns its length",
            )?;
        }
        let too_large = kind_of(w.write(&vec![1u8; WRITER_LIMIT as usize + 1]));
        // A clone writes to the same connection, after what the first one wrote.
        w.try_clone()?.write(b"from a clone")?;
        let (echoes, end) = reading.join().map_err(|_| "the reading thread panicked")?;
        let mut want: Vec<Vec<u8>> = WRITER_SIZES
            .iter()
            .enumerate()
            .map(|(i, &len)| pattern(len, i as u64))
            .collect();
        want.push(b"from a clone".to_vec());
        ensure(
            echoes == want,
            format!(
                "{} echoes, not the {} messages sent",
                echoes.len(),
                want.len()
            ),
        )?;
        // The server disconnected: the writer's writes fail too.
        let after = kind_of(w.write(b"anyone?"));
        ctx.send_str(&format!("{too_large}|{end}|{after}"))?;
        Ok(())
    });
    // A client that waits until it is killed.
    t.role("idle_client", |ctx| {
        let _c = client(ctx).connect(ctx.arg(0).unwrap())?;
        ctx.send_str("connected")?;
        ctx.expect("never", T)?;
        Ok(())
    });

    let name = pipe_name("writer");
    let mut s = ServerOptions::message()
        .max_message_size(WRITER_LIMIT)
        .unwrap()
        .namespace(ns_of(&t))
        .create(&name)
        .unwrap();
    assert_kind(s.writer(), ErrorKind::BrokenPipe, "no client yet");

    // Echo: each message the client's writer sends comes back to its waiting reader.
    let mut p = t.spawn("duplex_client").arg(&name).start();
    s.connect().unwrap();
    p.expect("reading", T).unwrap();
    settle_asleep(p.pid());
    p.send_str("write").unwrap();
    for (i, &len) in WRITER_SIZES.iter().enumerate() {
        let m = s.read_message().unwrap();
        assert_eq!(m.len(), len, "message {i}");
        assert_eq!(fnv(&m), fnv(&pattern(len, i as u64)), "message {i}");
        s.write(&m).unwrap();
    }
    let m = s.read_message().unwrap();
    assert_eq!(m, b"from a clone");
    // The server's own writer, used from this thread, sends the last echo.
    let w = s.writer().unwrap();
    assert_eq!(w.write(&m).unwrap(), m.len());
    s.disconnect().unwrap();
    let report = p.recv_str_timeout(T).unwrap();
    assert_eq!(
        report,
        "MessageTooLarge:87|BrokenPipe:109|NoData:232",
        "{}",
        p.report()
    );
    assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
    // The writer belonged to that client: after the disconnect it fails, also once the
    // instance has its next client, which it never reaches.
    assert_kind(
        w.write(b"late"),
        ErrorKind::NoData,
        "writer after disconnect",
    );

    // A writer of the next client: its peer is killed, its writes fail.
    let mut p = t.spawn("idle_client").arg(&name).start();
    s.connect().unwrap();
    p.expect("connected", T).unwrap();
    assert_kind(
        w.write(b"late"),
        ErrorKind::NoData,
        "old writer, new client",
    );
    let w = s.writer().unwrap();
    w.write(b"hello").unwrap();
    p.kill().unwrap();
    assert_kind(w.write(b"after"), ErrorKind::NoData, "writer after SIGKILL");
    assert_kind(
        s.read_message(),
        ErrorKind::BrokenPipe,
        "read after SIGKILL",
    );
    s.disconnect().unwrap();

    // A writer's disconnect wakes the read another thread waits in.
    let mut p = t.spawn("idle_client").arg(&name).start();
    s.connect().unwrap();
    p.expect("connected", T).unwrap();
    let w = s.writer().unwrap();
    std::thread::scope(|scope| {
        let reading = scope.spawn(|| s.read_message());
        settle_asleep(std::process::id());
        w.disconnect();
        assert_kind(reading.join().unwrap(), ErrorKind::BrokenPipe, "woken read");
    });
    assert_kind(
        w.write(b"x"),
        ErrorKind::NoData,
        "writer after its disconnect",
    );
    s.disconnect().unwrap();
    p.kill().unwrap();
}
