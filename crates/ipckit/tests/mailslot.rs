//! Mailslots across real processes: order from one writer, exactly-once delivery from eight
//! concurrent writer processes (checksums), oversize writes, zero-length messages, read
//! timeouts and SetMailslotInfo, GetMailslotInfo (in the server and from other processes),
//! ERROR_INSUFFICIENT_BUFFER, duplicate creation, remote names, a hostile raw writer, and a
//! server killed with SIGKILL (writers, blocked ones included, get a clear error and the name
//! is free again).
//!
//! Every test runs in its own namespace (the test kit's `IPCKIT_RUNTIME_DIR`).

mod common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{fnv, pattern};
use ipckit::ErrorKind;
use ipckit::mailslot::{MAX_MESSAGE_SIZE_LIMIT, MailslotOptions, WriterOptions, describe_name};
use ipckit::name::MailslotName;
use ipckit::namespace::Namespace;
use ipckit_testkit::{RoleCtx, RoleResult, TestCase, test_case, unique_name};

/// Upper bound for anything that must happen eventually.
const T: Duration = Duration::from_secs(30);

fn ns_of(t: &TestCase) -> Namespace {
    Namespace::at(t.namespace())
}

fn writer(ctx: &RoleCtx) -> WriterOptions {
    WriterOptions::new().namespace(Namespace::at(ctx.namespace()))
}

fn server(t: &TestCase) -> MailslotOptions {
    MailslotOptions::new().namespace(ns_of(t))
}

fn ensure(cond: bool, msg: impl Into<String>) -> RoleResult {
    if cond { Ok(()) } else { Err(msg.into().into()) }
}

fn slot_name(tag: &str) -> String {
    format!(r"\\.\mailslot\{}", unique_name(tag))
}

fn code_of<T>(r: ipckit::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{:?}:{}", e.kind(), e.win32_code()),
    }
}

fn assert_err<T: std::fmt::Debug>(r: ipckit::Result<T>, kind: ErrorKind, code: u32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
        Err(e) => assert_eq!((e.kind(), e.win32_code()), (kind, code), "{what}: {e}"),
    }
}

/// Sizes written by the ordering test: zero-length messages among them, up to the maximum.
const SIZES: &[usize] = &[5, 0, 1, 0, 100, 4096, 0, 65_536, 3, 0];

#[test]
fn one_writer_in_order_with_info_insufficient_buffer_and_zero_length() {
    let t = test_case!();
    t.role("writer", |ctx| {
        let w = writer(ctx).open(ctx.arg(0).unwrap())?;
        ensure(w.server_process_id() == ctx.parent_pid(), "server pid")?;
        ensure(w.max_message_size() == MAX_MESSAGE_SIZE_LIMIT, "max size")?;
        for (i, &len) in SIZES.iter().enumerate() {
            ensure(w.write(&pattern(len, i as u64))? == len, "write length")?;
        }
        ctx.send_str("written")?;
        ctx.expect("more", T)?;
        for i in 0..20u32 {
            w.write(&i.to_le_bytes())?;
        }
        ctx.send_str("done")?;
        Ok(())
    });

    let name = slot_name("order");
    // Maximum 0: any size up to the limit.
    let mut s = server(&t)
        .read_timeout(Some(Duration::ZERO))
        .create(&name)
        .unwrap();
    let info = s.info().unwrap();
    assert_eq!(
        (info.max_message_size, info.next_size, info.count),
        (MAX_MESSAGE_SIZE_LIMIT, None, 0)
    );
    assert_eq!(info.read_timeout, Some(Duration::ZERO));
    let mut p = t.spawn("writer").arg(&name).start();
    p.expect("written", T).unwrap();

    // GetMailslotInfo counts every message, zero-length ones included, and sizes the next.
    let info = s.info().unwrap();
    assert_eq!((info.count, info.next_size), (SIZES.len(), Some(5)));
    // Another process's view (the status page) agrees once everything is written.
    let seen = describe_name(&ns_of(&t), &name).unwrap().unwrap();
    assert_eq!(seen.queued, SIZES.len() as u64);
    assert_eq!(seen.server_pid, std::process::id());

    // A buffer too small fails with ERROR_INSUFFICIENT_BUFFER and keeps the message queued.
    let mut small = [0u8; 4];
    assert_err(
        s.read(&mut small),
        ErrorKind::InsufficientBuffer,
        122,
        "4-byte buffer",
    );
    assert_eq!(s.info().unwrap().count, SIZES.len());
    let mut buf = vec![0u8; 70_000];
    for (i, &len) in SIZES.iter().enumerate() {
        let (n, who) = s.read_from(&mut buf).unwrap();
        assert_eq!(n, len, "message {i}");
        assert_eq!(&buf[..n], &pattern(len, i as u64)[..], "message {i}");
        assert_eq!(who.pid, p.pid());
        assert_eq!(who.uid, rustix::process::geteuid().as_raw());
        let info = s.info().unwrap();
        assert_eq!(info.count, SIZES.len() - i - 1);
        assert_eq!(info.next_size, SIZES.get(i + 1).copied());
    }
    assert_err(
        s.read(&mut buf),
        ErrorKind::Timeout,
        121,
        "empty, timeout 0",
    );

    // More than the kernel queues (11): the writer waits until they are read, then goes on;
    // the count is exact whenever it is asked, and the order holds.
    s.set_read_timeout(Some(T));
    p.send_str("more").unwrap();
    let mut got = Vec::new();
    while got.len() < 20 {
        if got.len() == 5 {
            let c = s.info().unwrap().count;
            assert!(c <= 15, "{c} queued");
        }
        let n = s.read(&mut buf).unwrap();
        got.push(u32::from_le_bytes(buf[..n].try_into().unwrap()));
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    p.expect("done", T).unwrap();
    assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
    assert_eq!(s.info().unwrap().count, 0);
    let seen = describe_name(&ns_of(&t), &name).unwrap().unwrap();
    assert_eq!((seen.queued, seen.read_timeout), (0, Some(T)));
}

const WRITERS: u32 = 8;
const PER_WRITER: u32 = 500;

#[test]
fn eight_writer_processes_every_message_exactly_once() {
    let t = test_case!();
    t.role("writer", |ctx| {
        let w = writer(ctx).open(ctx.arg(0).unwrap())?;
        let id: u32 = ctx.arg(1).unwrap().parse()?;
        ctx.expect("go", T)?;
        let mut rng = u64::from(id) * 7919 + 1;
        for seq in 0..PER_WRITER {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = match rng % 8 {
                0 => 0,
                1 => (rng >> 8) as usize % 60_000,
                _ => (rng >> 8) as usize % 2048,
            };
            let payload = pattern(len, rng);
            let mut m = Vec::with_capacity(16 + len);
            m.extend_from_slice(&id.to_le_bytes());
            m.extend_from_slice(&seq.to_le_bytes());
            m.extend_from_slice(&fnv(&payload).to_le_bytes());
            m.extend_from_slice(&payload);
            w.write(&m)?;
        }
        ctx.send_str("done")?;
        Ok(())
    });

    let name = slot_name("stress");
    let mut s = server(&t).read_timeout(Some(T)).create(&name).unwrap();
    let mut peers: Vec<_> = (0..WRITERS)
        .map(|id| t.spawn("writer").arg(&name).arg(id.to_string()).start())
        .collect();
    for p in &mut peers {
        p.send_str("go").unwrap();
    }
    let pids: Vec<u32> = peers.iter().map(|p| p.pid()).collect();
    let mut next: BTreeMap<u32, u32> = BTreeMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE_SIZE_LIMIT as usize];
    for _ in 0..WRITERS * PER_WRITER {
        let (n, who) = s.read_from(&mut buf).unwrap();
        assert!(n >= 16, "a message of {n} bytes");
        let id = u32::from_le_bytes(buf[0..4].try_into().unwrap());
        let seq = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        let sum = u64::from_le_bytes(buf[8..16].try_into().unwrap());
        assert_eq!(fnv(&buf[16..n]), sum, "writer {id} message {seq} damaged");
        assert_eq!(
            who.pid, pids[id as usize],
            "sender of writer {id}'s message"
        );
        let want = next.entry(id).or_insert(0);
        assert_eq!(seq, *want, "writer {id}: out of order or repeated");
        *want += 1;
    }
    assert_eq!(next.len(), WRITERS as usize);
    assert!(next.values().all(|&n| n == PER_WRITER));
    for p in &mut peers {
        p.expect("done", T).unwrap();
        assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
    }
    // Nothing more: no message was delivered twice.
    s.set_read_timeout(Some(Duration::ZERO));
    assert_err(s.read(&mut buf), ErrorKind::Timeout, 121, "after the last");
    assert_eq!(s.info().unwrap().count, 0);
}

#[test]
fn oversize_writes_timeouts_set_timeout_and_a_hostile_writer() {
    let t = test_case!();
    t.role("writer", |ctx| {
        let w = writer(ctx).open(ctx.arg(0).unwrap())?;
        ensure(w.max_message_size() == 100, "max 100")?;
        ctx.send_str(&code_of(w.write(&[1u8; 101])))?;
        ctx.send_str(&code_of(w.write(&[2u8; 100])))?;
        ctx.expect("late", T)?;
        w.write(b"late")?;
        Ok(())
    });
    t.role("observer", |ctx| {
        let seen = describe_name(&Namespace::at(ctx.namespace()), ctx.arg(0).unwrap())?
            .ok_or("no mailslot")?;
        ctx.send_str(&format!(
            "{}/{:?}/{}",
            seen.max_message_size, seen.read_timeout, seen.server_pid
        ))?;
        Ok(())
    });

    let name = slot_name("limits");
    assert_err(
        server(&t).max_message_size(MAX_MESSAGE_SIZE_LIMIT + 1),
        ErrorKind::InvalidParameter,
        87,
        "max over the limit",
    );
    let mut s = server(&t)
        .max_message_size(100)
        .unwrap()
        .read_timeout_ms(0)
        .create(&name)
        .unwrap();
    let mut p = t.spawn("writer").arg(&name).start();
    p.expect("MessageTooLarge:87", T).unwrap();
    p.expect("ok", T).unwrap();
    let mut buf = [0u8; 200];
    assert_eq!(s.read(&mut buf).unwrap(), 100);
    assert_eq!(buf[..100], [2u8; 100]);

    // Read timeouts: 0 returns at once, N ms waits and fails with ERROR_SEM_TIMEOUT.
    assert_err(s.read(&mut buf), ErrorKind::Timeout, 121, "timeout 0");
    s.set_read_timeout(Some(Duration::from_millis(30)));
    assert_eq!(s.read_timeout(), Some(Duration::from_millis(30)));
    assert_err(s.read(&mut buf), ErrorKind::Timeout, 121, "timeout 30 ms");
    assert_err(
        s.read_message(),
        ErrorKind::Timeout,
        121,
        "read_message, 30 ms",
    );
    assert_eq!(
        s.info().unwrap().read_timeout,
        Some(Duration::from_millis(30))
    );
    let mut o = t.spawn("observer").arg(&name).start();
    o.expect(&format!("100/Some(30ms)/{}", std::process::id()), T)
        .unwrap();
    // Forever: the read waits for the writer's next message.
    s.set_read_timeout(None);
    p.send_str("late").unwrap();
    assert_eq!(s.read_message().unwrap().data, b"late");
    assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
    let mut o = t.spawn("observer").arg(&name).start();
    o.expect(&format!("100/None/{}", std::process::id()), T)
        .unwrap();

    // A writer that bypasses ipckit and sends more than the maximum: that message is discarded,
    // the next one arrives.
    let path = ns_of(&t)
        .mailslot_path(&MailslotName::parse(&name).unwrap())
        .unwrap()
        .join("sock");
    let raw = UnixDatagram::unbound().unwrap();
    raw.send_to(&[9u8; 150], &path).unwrap();
    raw.send_to(b"fine", &path).unwrap();
    s.set_read_timeout(Some(T));
    assert_eq!(s.read(&mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"fine");
}

#[test]
fn duplicate_create_missing_and_remote_names() {
    let t = test_case!();
    t.role("create", |ctx| {
        let opts = MailslotOptions::new().namespace(Namespace::at(ctx.namespace()));
        ctx.send_str(&code_of(opts.create(ctx.arg(0).unwrap())))?;
        Ok(())
    });
    let name = slot_name("dup");
    let _s = server(&t).create(&name).unwrap();
    // Names ignore case, in this process and in another.
    let upper = name
        .to_uppercase()
        .replace(r"\\.\MAILSLOT\", r"\\.\mailslot\");
    assert_err(
        server(&t).create(&upper),
        ErrorKind::AlreadyExists,
        183,
        "same process",
    );
    let mut p = t.spawn("create").arg(&upper).start();
    p.expect("AlreadyExists:183", T).unwrap();

    let w = WriterOptions::new().namespace(ns_of(&t));
    assert_err(
        w.open(&slot_name("missing")),
        ErrorKind::NotFound,
        2,
        "no such mailslot",
    );
    for remote in [
        r"\\otherhost\mailslot\x",
        r"\\WORKGROUP\mailslot\x",
        r"\\*\mailslot\x",
    ] {
        let e = w.open(remote).unwrap_err();
        assert_eq!((e.kind(), e.win32_code()), (ErrorKind::NeedsGateway, 53));
        assert!(e.to_string().contains("gateway"), "{e}");
        assert_err(
            server(&t).create(remote),
            ErrorKind::InvalidName,
            123,
            "create remote",
        );
    }
    assert_err(
        w.open(r"\\.\mailslot\..\x"),
        ErrorKind::InvalidName,
        123,
        "bad name",
    );
}

#[test]
fn server_killed_writers_get_a_clear_error_and_the_name_is_free() {
    let t = test_case!();
    t.role("server", |ctx| {
        let _s = MailslotOptions::new()
            .namespace(Namespace::at(ctx.namespace()))
            .create(ctx.arg(0).unwrap())?;
        ctx.send_str("ready")?;
        ctx.expect("never", T)?;
        Ok(())
    });
    t.role("flooder", |ctx| {
        let w = writer(ctx).open(ctx.arg(0).unwrap())?;
        let mut sent = 0;
        loop {
            match w.try_write(b"x") {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == ErrorKind::Full => break,
                Err(e) => return Err(e.into()),
            }
        }
        ctx.send_str(&format!("full:{}", sent > 0))?;
        // Now a blocking write waits for room that never comes: the server dies instead.
        ctx.send_str(&code_of(w.write(b"blocked")))?;
        Ok(())
    });

    let name = slot_name("killed");
    let ns = ns_of(&t);
    let mut srv = t.spawn("server").arg(&name).start();
    srv.expect("ready", T).unwrap();
    let w = WriterOptions::new()
        .namespace(ns.clone())
        .open(&name)
        .unwrap();
    assert_eq!(w.server_process_id(), srv.pid());
    w.write(b"hello").unwrap();
    let mut f = t.spawn("flooder").arg(&name).start();
    f.expect("full:true", T).unwrap();
    assert!(describe_name(&ns, &name).unwrap().unwrap().queued >= 2);
    common::settle_asleep(f.pid());
    srv.kill().unwrap();

    // The blocked writer and this one learn that the mailslot is gone.
    f.expect("PeerGone:109", T).unwrap();
    assert!(f.wait_timeout(T).unwrap().success(), "{}", f.report());
    let e = w.write(b"after").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PeerGone);
    assert!(e.to_string().contains("gone"), "{e}");
    // The name is free: nothing to open, nothing listed, and a new server takes it.
    assert_err(
        WriterOptions::new().namespace(ns.clone()).open(&name),
        ErrorKind::NotFound,
        2,
        "dead mailslot",
    );
    assert_eq!(describe_name(&ns, &name).unwrap(), None);
    // The dead server's files are swept (as `ipckit ls` does), a live mailslot's are not.
    let slot_dir = ns
        .mailslot_path(&MailslotName::parse(&name).unwrap())
        .unwrap();
    let live = MailslotOptions::new()
        .namespace(ns.clone())
        .create(r"\\.\mailslot\still-here")
        .unwrap();
    assert!(slot_dir.exists(), "nothing to sweep: the test cannot fail");
    assert_eq!(ipckit::mailslot::sweep(&ns).unwrap(), 1);
    assert!(!slot_dir.exists(), "the dead mailslot's files remain");
    assert!(
        describe_name(&ns, r"\\.\mailslot\still-here")
            .unwrap()
            .is_some()
    );
    drop(live);
    let mut s = MailslotOptions::new()
        .namespace(ns.clone())
        .read_timeout(Some(T))
        .create(&name)
        .unwrap();
    let w2 = WriterOptions::new()
        .namespace(ns.clone())
        .open(&name)
        .unwrap();
    w2.write(b"new").unwrap();
    // The old queue went with the old server.
    assert_eq!(s.info().unwrap().count, 1);
    assert_eq!(s.read_message().unwrap().data, b"new");
    assert_err(
        w.write(b"old handle"),
        ErrorKind::PeerGone,
        109,
        "old writer",
    );
    drop(s);
    let dir = ns
        .mailslot_path(&MailslotName::parse(&name).unwrap())
        .unwrap();
    assert!(!dir.exists(), "the mailslot's files outlive it");
}
