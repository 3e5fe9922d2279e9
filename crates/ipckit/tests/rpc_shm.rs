//! `ncalrpc` over shared memory, across real processes: a connection moves onto a pair of
//! channels (visible as kernel objects while it lives, gone when its client is SIGKILLed),
//! carries frames larger than a slot both ways, falls back to the socket when either side
//! declines, hostile rendezvous bytes end only their own connection, and an idle server with
//! an idle connection wakes nobody.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{ctx_ns, ensure, ns_of, object_files};
use ipckit::rpc::{self, ClientOptions, Server, ServerOptions};
use ipckit_testkit::{TestCase, test_case, unique_name, wait_for};

const T: Duration = Duration::from_secs(30);

#[rpc::interface(uuid = "0b7d3c52-91e4-4c0a-a0f3-5d2e6b8c1f47", version = "1.0")]
pub trait Echo {
    /// The bytes back, reversed.
    fn reverse(&self, data: Vec<u8>) -> Vec<u8>;
    /// The caller's pid as the server sees it.
    fn pid(&self, ctx: &rpc::CallContext) -> Option<u32>;
}

struct EchoImpl;

impl Echo for EchoImpl {
    fn reverse(&self, mut data: Vec<u8>) -> Vec<u8> {
        data.reverse();
        data
    }
    fn pid(&self, ctx: &rpc::CallContext) -> Option<u32> {
        ctx.caller().pid
    }
}

/// The side files of the channels RPC connections use.
fn rpc_channels(t: &TestCase) -> Vec<String> {
    object_files(&ns_of(t))
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.contains("/object/") && p.contains("ipckit-rpc-"))
        .collect()
}

fn client_role(t: &TestCase) {
    t.role("client", |ctx| {
        let shm = ctx.arg(1).unwrap() == "shm";
        let o = ClientOptions::new()
            .namespace(ctx_ns(ctx))
            .local_shared_memory(shm);
        let c = EchoClient::connect_with(&o, ctx.arg(0).unwrap())?;
        ensure(c.pid()? == Some(std::process::id()), "caller pid")?;
        // Empty, one slot, one byte over a slot, many slots (both ways).
        for (i, len) in [0usize, 100, 64 * 1024, 64 * 1024 + 1, 3 << 20]
            .into_iter()
            .enumerate()
        {
            let data = common::pattern(len, i as u64);
            let mut want = data.clone();
            want.reverse();
            ensure(c.reverse(data)? == want, format!("reverse {len}"))?;
        }
        // Concurrent calls from several threads on the one connection.
        let threads: Vec<_> = (0..4u64)
            .map(|k| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..200u64).all(|i| {
                        let data = common::pattern((i * 37 % 5000) as usize, k * 1000 + i);
                        let mut want = data.clone();
                        want.reverse();
                        c.reverse(data).ok() == Some(want)
                    })
                })
            })
            .collect();
        for th in threads {
            ensure(th.join().map_err(|_| "panic")?, "concurrent calls")?;
        }
        ctx.send_str("ok")?;
        std::thread::sleep(T * 2);
        Ok(())
    });
}

#[test]
fn ncalrpc_connections_move_to_shared_memory_and_leave_nothing_behind() {
    let t = test_case!();
    client_role(&t);
    let server = Server::new(
        ServerOptions::new().namespace(ns_of(&t)),
        vec![EchoServer::new(EchoImpl)],
    );
    let b = server
        .listen(&format!("ncalrpc:[{}]", unique_name("shm")))
        .unwrap()
        .to_string();
    assert!(rpc_channels(&t).is_empty());
    let mut p = t.spawn("client").arg(&b).arg("shm").start();
    p.expect("ok", T).unwrap();
    // One channel per direction, each with the client attached at one end.
    let chans = rpc_channels(&t);
    assert_eq!(chans.len(), 2, "{chans:?}");
    let infos: Vec<_> = chans
        .iter()
        .map(|path| {
            let comp = path.rsplit('/').next().unwrap();
            let name = format!(r"Local\{comp}");
            ipckit::channel::describe(&ns_of(&t), &name).unwrap()
        })
        .collect();
    let me = std::process::id();
    let mut ends: Vec<(Option<u32>, Vec<u32>)> = infos
        .iter()
        .map(|i| (i.receiver, i.senders.clone()))
        .collect();
    ends.sort();
    let mut want = vec![(Some(me), vec![p.pid()]), (Some(p.pid()), vec![me])];
    want.sort();
    assert_eq!(ends, want);
    p.kill().unwrap();
    assert!(
        wait_for(T, || server.connections() == 0),
        "the server notices the dead client"
    );
    assert!(
        wait_for(T, || rpc_channels(&t).is_empty()),
        "channels left: {:?}",
        rpc_channels(&t)
    );
    server.stop();
}

#[test]
fn either_side_may_keep_ncalrpc_on_the_socket() {
    let t = test_case!();
    client_role(&t);
    for (server_shm, client_shm) in [(false, true), (true, false)] {
        let server = Server::new(
            ServerOptions::new()
                .namespace(ns_of(&t))
                .local_shared_memory(server_shm),
            vec![EchoServer::new(EchoImpl)],
        );
        let b = server
            .listen(&format!("ncalrpc:[{}]", unique_name("sock")))
            .unwrap()
            .to_string();
        let mode = if client_shm { "shm" } else { "socket" };
        let mut p = t.spawn("client").arg(&b).arg(mode).start();
        p.expect("ok", T).unwrap();
        assert!(rpc_channels(&t).is_empty(), "{server_shm} {client_shm}");
        assert_eq!(server.connections(), 1);
        p.kill().unwrap();
        assert!(wait_for(T, || server.connections() == 0));
        server.stop();
    }
}

#[test]
fn hostile_rendezvous_bytes_end_only_their_connection() {
    let t = test_case!();
    t.role("hostile", |ctx| {
        let path = ctx.arg(0).unwrap();
        // What to send first, and what to send once the server has answered.
        const REQ: &[u8] = b"IPCKSHM1\0\0\0\0\0\0\0\0";
        let attacks: Vec<(&[u8], Option<&[u8]>)> = vec![
            // An unknown request.
            (b"IPCKSHMX\0\0\0\0\0\0\0\0", None),
            // A request with bytes after it.
            (b"IPCKSHM1\0\0\0\0\0\0\0\0-and-more", None),
            // A truncated request, then the end.
            (b"IPCK", None),
            // A request, then a bad acknowledgement.
            (REQ, Some(b"\x07")),
            // A request, then the end without acknowledgement.
            (REQ, Some(b"")),
        ];
        for round in 0..10 {
            for (first, then) in &attacks {
                let mut s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(first)?;
                let mut buf = vec![];
                if let Some(then) = then {
                    let mut head = [0u8; 10];
                    s.read_exact(&mut head)?;
                    let mut name = vec![0u8; usize::from(head[9])];
                    s.read_exact(&mut name)?;
                    buf.extend_from_slice(&head);
                    buf.extend_from_slice(&name);
                    s.write_all(then)?;
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = s.read_to_end(&mut buf);
                if round == 0 {
                    ctx.send_str(&format!("{}", buf.len()))?;
                }
            }
        }
        ctx.send_str("done")?;
        Ok(())
    });
    let server = Server::new(
        ServerOptions::new().namespace(ns_of(&t)),
        vec![EchoServer::new(EchoImpl)],
    );
    let name = unique_name("rdv");
    let b = server
        .listen(&format!("ncalrpc:[{name}]"))
        .unwrap()
        .to_string();
    let good = EchoClient::connect_with(&ClientOptions::new().namespace(ns_of(&t)), &b).unwrap();
    let path = t.namespace().join("rpc").join(&name);
    let mut p = t.spawn("hostile").arg(path.to_str().unwrap()).start();
    let mut n = 0u64;
    let mut lines = vec![];
    loop {
        let data = common::pattern(100, n);
        let mut want = data.clone();
        want.reverse();
        assert_eq!(good.reverse(data).unwrap(), want);
        n += 1;
        if let Ok(s) = p.recv_str_timeout(Duration::from_millis(1)) {
            if s == "done" {
                break;
            }
            lines.push(s);
        }
    }
    p.wait_timeout(T).unwrap();
    // The refused requests get no reply; the valid ones get a channel name (a reply of 10 bytes
    // plus the name) that the hostile client then does not use.
    assert_eq!(lines[..3], ["0", "0", "0"], "{lines:?}");
    assert!(lines[3].parse::<usize>().unwrap() > 10, "{lines:?}");
    assert!(lines[4].parse::<usize>().unwrap() > 10, "{lines:?}");
    assert!(
        wait_for(T, || server.connections() == 1),
        "hostile ones end"
    );
    // Only the good client's pair is left.
    assert!(
        wait_for(T, || rpc_channels(&t).len() == 2),
        "{:?}",
        rpc_channels(&t)
    );
    let data = common::pattern(70_000, 7);
    let mut want = data.clone();
    want.reverse();
    assert_eq!(good.reverse(data).unwrap(), want);
    server.stop();
}

/// Voluntary context switches of this process's threads named `name` (summed), and how many
/// such threads there are.
fn switches(name: &str) -> (u64, usize) {
    let mut total = 0;
    let mut threads = 0;
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        // The kernel keeps the first 15 bytes of a thread's name.
        if comm.trim_end() != &name[..name.len().min(15)] {
            continue;
        }
        threads += 1;
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (total, threads)
}

/// Whether every thread of this process named `name` sleeps (state `S`).
fn asleep(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .all(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != &name[..name.len().min(15)] {
                return true;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].trim_start().chars().next())
                == Some('S')
        })
}

#[test]
fn an_idle_server_and_its_shared_memory_connection_wake_nobody() {
    let t = test_case!();
    // The server runs in a child, so that every connection thread it has is this test's.
    t.role("server", |ctx| {
        let server = Server::new(
            ServerOptions::new().namespace(ctx_ns(ctx)),
            vec![EchoServer::new(EchoImpl)],
        );
        let b = server.listen(&format!("ncalrpc:[{}]", unique_name("idle")))?;
        server.listen(&format!(r"ncacn_np:\\.[\pipe\{}]", unique_name("idle")))?;
        server.listen("ncacn_ip_tcp:127.0.0.1[0]")?;
        ctx.send_str(&b.to_string())?;
        ctx.expect("measure", T)?;
        // The connection's thread, the two accepting threads and the pipe's.
        let names = ["ipckit-rpc-conn", "ipckit-rpc-accept", "ipckit-rpc-pipe"];
        // Counted once each is asleep: a thread still on its way to sleep (after answering the
        // first call, on a loaded machine) would add the one switch of falling asleep.
        ensure(
            ipckit_testkit::wait_for(T, || names.iter().all(|n| asleep(n))),
            "the server's threads fall asleep",
        )?;
        let before: Vec<_> = names.iter().map(|n| switches(n)).collect();
        std::thread::sleep(Duration::from_millis(600));
        let after: Vec<_> = names.iter().map(|n| switches(n)).collect();
        let report: Vec<String> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| format!("{}:{}", b.1.min(1), a.0 - b.0))
            .collect();
        ctx.send_str(&report.join(" "))?;
        ctx.expect("stop", T)?;
        server.stop();
        Ok(())
    });
    let mut p = t.spawn("server").start();
    let b = p.recv_str_timeout(T).unwrap();
    let c = EchoClient::connect_with(&ClientOptions::new().namespace(ns_of(&t)), &b).unwrap();
    assert_eq!(c.pid().unwrap(), Some(std::process::id()));
    assert_eq!(rpc_channels(&t).len(), 2, "on shared memory");
    p.send_str("measure").unwrap();
    // Threads asleep the whole time: no wake-up for liveness checks or to look for a stop
    // (threads present:wake-ups, for the connection, the two accept loops and the pipe loop).
    assert_eq!(p.recv_str_timeout(T).unwrap(), "1:0 1:0 1:0");
    // Still connected and working.
    assert_eq!(c.reverse(vec![1, 2, 3]).unwrap(), vec![3, 2, 1]);
    p.send_str("stop").unwrap();
    p.wait_timeout(T).unwrap();
}

#[test]
fn a_server_that_does_not_know_the_shared_memory_request_is_reached_over_its_socket() {
    let t = test_case!();
    // A server that speaks only the frames of rpc.md section 2 (as an older ipckit, or one in
    // another language): the request is garbage to it, so it answers with a protocol fault
    // and closes; then it serves the client's bind on the next connection.
    t.role("frames_only", |ctx| {
        use ipckit::rpc::proto::{Decoder, ServerEvent, ServerProto, fault_frame, status};
        let path = ctx.namespace().join("rpc").join(ctx.arg(0).unwrap());
        std::fs::create_dir_all(path.parent().unwrap())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o700),
        )?;
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        ctx.send_str("ready")?;
        let mut faults = 0;
        for conn in listener.incoming() {
            let mut s = conn?;
            let mut dec = Decoder::new(1 << 20);
            let mut proto = ServerProto::new(vec![(EchoClient::INTERFACE, 2)], 1 << 20, 4);
            let mut buf = [0u8; 4096];
            'conn: loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                dec.push(&buf[..n]);
                loop {
                    let frame = match dec.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            faults += 1;
                            let _ = s.write_all(&fault_frame(
                                0,
                                status::PROTOCOL_ERROR,
                                &e.to_string(),
                            ));
                            break 'conn;
                        }
                    };
                    if let Ok(ServerEvent::Send(bytes)) = proto.on_frame(frame) {
                        s.write_all(&bytes)?;
                        ctx.send_str(&format!("bound after {faults} fault(s)"))?;
                    }
                }
            }
        }
        Ok(())
    });
    let name = unique_name("frames");
    let mut p = t.spawn("frames_only").arg(&name).start();
    p.expect("ready", T).unwrap();
    let c = rpc::ClientOptions::new()
        .namespace(ns_of(&t))
        .connect(&format!("ncalrpc:[{name}]"), EchoClient::INTERFACE)
        .unwrap();
    assert_eq!(c.server_version(), (1, 0));
    assert_eq!(p.recv_str_timeout(T).unwrap(), "bound after 1 fault(s)");
}
