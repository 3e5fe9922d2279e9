//! RPC across real processes: typed calls over `ncalrpc`, `ncacn_np` and `ncacn_ip_tcp`;
//! version, interface and procedure-number refusals with their codes; 1,000 concurrent calls
//! from 8 client processes; context-handle rundown when a client is SIGKILLed; a server
//! SIGKILLed in the middle of a call; timeouts that cancel on the server; hostile bytes on
//! the endpoints while other clients go on; graceful stop.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ctx_ns, ensure, ns_of};
use ipckit::ErrorKind;
use ipckit::rpc::{
    self, CallContext, CallError, ClientOptions, ContextHandle, InterfaceId, Server, ServerOptions,
    Uuid,
};
use ipckit_testkit::{RoleCtx, TestCase, test_case, unique_name, wait_for};
use serde::{Deserialize, Serialize};

/// Upper bound for anything that must happen eventually.
const T: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MathError {
    DivideByZero,
    Overflow { a: i64, b: i64 },
}

#[rpc::interface(uuid = "3f2b8c10-5a4e-4d6f-9b21-7e0c4a1d2e55", version = "1.2")]
pub trait Calc {
    /// a + b.
    fn add(&self, a: i64, b: i64) -> i64;
    /// a / b, or a typed application error.
    fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// The bytes back, reversed.
    fn reverse(&self, data: Vec<u8>) -> Vec<u8>;
    /// The caller's pid and uid as the server sees them.
    fn whoami(&self, ctx: &CallContext) -> (Option<u32>, Option<u32>);
    /// One-way: remember a note.
    #[oneway]
    fn note(&self, text: String);
    /// Notes received so far.
    fn notes(&self) -> Vec<String>;
    /// Opens a context handle counting from `start`.
    fn open(&self, ctx: &CallContext, start: u64) -> ContextHandle;
    /// Increments and returns the counter behind a handle.
    fn bump(&self, ctx: &CallContext, h: ContextHandle) -> Result<u64, String>;
    /// Closes a handle (no rundown).
    fn close(&self, ctx: &CallContext, h: ContextHandle) -> Result<u64, String>;
    /// Waits until the call is cancelled (or 20 s), then says whether it was.
    fn wait_cancel(&self, ctx: &CallContext) -> bool;
    /// Sleeps `ms` milliseconds, then answers `ms`.
    fn sleep(&self, ms: u64) -> u64;
}

#[derive(Default)]
struct CalcImpl {
    notes: Mutex<Vec<String>>,
    rundowns: Arc<AtomicUsize>,
    cancels_seen: Arc<AtomicUsize>,
    /// Created when a `sleep` call starts (so the parent knows it is running).
    marker: Option<std::path::PathBuf>,
}

impl Calc for CalcImpl {
    fn add(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    fn div(&self, a: i64, b: i64) -> Result<i64, MathError> {
        if b == 0 {
            return Err(MathError::DivideByZero);
        }
        a.checked_div(b).ok_or(MathError::Overflow { a, b })
    }
    fn reverse(&self, mut data: Vec<u8>) -> Vec<u8> {
        data.reverse();
        data
    }
    fn whoami(&self, ctx: &CallContext) -> (Option<u32>, Option<u32>) {
        (ctx.caller().pid, ctx.caller().uid)
    }
    fn note(&self, text: String) {
        self.notes.lock().unwrap().push(text);
    }
    fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().clone()
    }
    fn open(&self, ctx: &CallContext, start: u64) -> ContextHandle {
        let r = self.rundowns.clone();
        ctx.open_context(start, move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        })
    }
    fn bump(&self, ctx: &CallContext, h: ContextHandle) -> Result<u64, String> {
        ctx.with_context(h, |v: &mut u64| {
            *v += 1;
            *v
        })
        .map_err(|e| e.to_string())
    }
    fn close(&self, ctx: &CallContext, h: ContextHandle) -> Result<u64, String> {
        ctx.close_context::<u64>(h).map_err(|e| e.to_string())
    }
    fn wait_cancel(&self, ctx: &CallContext) -> bool {
        let seen = wait_for(Duration::from_secs(20), || ctx.is_cancelled());
        if seen {
            self.cancels_seen.fetch_add(1, Ordering::SeqCst);
        }
        seen
    }
    fn sleep(&self, ms: u64) -> u64 {
        if let Some(m) = &self.marker {
            let _ = std::fs::write(m, b"running");
        }
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

fn server_opts(t: &TestCase) -> ServerOptions {
    ServerOptions::new().namespace(ns_of(t))
}

fn client_opts(ctx: &RoleCtx) -> ClientOptions {
    ClientOptions::new().namespace(ctx_ns(ctx))
}

fn code<V: std::fmt::Debug>(r: ipckit::Result<V>) -> String {
    match r {
        Ok(v) => format!("ok:{v:?}"),
        Err(e) => format!("{:?}:{}", e.kind(), e.win32_code()),
    }
}

/// The three bindings of one test server.
fn bindings(server: &Server) -> Vec<String> {
    let lrpc = format!("ncalrpc:[{}]", unique_name("calc"));
    let np = format!(r"ncacn_np:\\.[\pipe\{}]", unique_name("calc"));
    vec![
        server.listen(&lrpc).unwrap().to_string(),
        server.listen(&np).unwrap().to_string(),
        server
            .listen("ncacn_ip_tcp:127.0.0.1[0]")
            .unwrap()
            .to_string(),
    ]
}

#[test]
fn typed_calls_over_each_protocol_sequence() {
    let t = test_case!();
    t.role("client", |ctx| {
        let b = ctx.arg(0).unwrap();
        let c = CalcClient::connect_with(&client_opts(ctx), b)?;
        ensure(c.client().server_version() == (1, 2), "server version")?;
        ensure(c.add(40, 2)? == 42, "add")?;
        ensure(c.div(84, 2).map_err(|e| e.to_string())? == 42, "div")?;
        match c.div(1, 0) {
            Err(CallError::App(MathError::DivideByZero)) => {}
            other => return Err(format!("div by zero gave {other:?}").into()),
        }
        match c.div(i64::MIN, -1) {
            Err(CallError::App(MathError::Overflow { a: i64::MIN, b: -1 })) => {}
            other => return Err(format!("overflow gave {other:?}").into()),
        }
        // Boundaries: empty, small, one frame over 64 KiB, 4 MiB.
        for (i, len) in [0usize, 1, 65_537, 4 << 20].into_iter().enumerate() {
            let data = common::pattern(len, i as u64);
            let mut want = data.clone();
            want.reverse();
            ensure(c.reverse(data)? == want, format!("reverse {len}"))?;
        }
        let (pid, uid) = c.whoami()?;
        ctx.send_str(&format!("who {pid:?} {uid:?}"))?;
        for i in 0..5 {
            c.note(format!("{}-n{i}", std::process::id()))?;
        }
        // One-way calls of one connection run in order of arrival; the next two-way call is
        // answered after them only if they are done, so poll.
        let mut notes = vec![];
        ensure(
            wait_for(T, || {
                let me = format!("{}-", std::process::id());
                notes = c.notes().unwrap_or_default();
                notes.retain(|n| n.starts_with(&me));
                notes.iter_mut().for_each(|n| *n = n[me.len()..].to_owned());
                notes.len() == 5
            }),
            "notes arrive",
        )?;
        let mut sorted = notes.clone();
        sorted.sort();
        ensure(
            sorted == ["n0", "n1", "n2", "n3", "n4"],
            format!("notes {notes:?}"),
        )?;
        ctx.send_str("ok")?;
        Ok(())
    });

    let server = Server::new(server_opts(&t), vec![CalcServer::new(CalcImpl::default())]);
    for b in bindings(&server) {
        let mut p = t.spawn("client").arg(&b).start();
        let uid = rustix::process::geteuid().as_raw();
        let who = p.recv_str_timeout(T).unwrap();
        if b.starts_with("ncacn_ip_tcp") {
            assert_eq!(who, "who None None", "{b}");
        } else {
            assert_eq!(who, format!("who Some({}) Some({uid})", p.pid()), "{b}");
        }
        p.expect("ok", T).unwrap();
        p.wait_timeout(T).unwrap();
    }
    // The ncalrpc socket sits in the private rpc folder.
    let meta = std::fs::metadata(t.namespace().join("rpc")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    server.stop();
}

#[test]
fn refusals_carry_the_rpc_status_codes() {
    let t = test_case!();
    t.role("client", |ctx| {
        let b = ctx.arg(0).unwrap();
        let o = client_opts(ctx);
        let id = CalcClient::INTERFACE;
        let with = |major, minor, uuid| code(o.connect(b, InterfaceId::new(uuid, major, minor)));
        let mut out = vec![
            // Same major, lower minor: accepted; higher minor or other major: 1717.
            with(1, 0, id.uuid).starts_with("ok").to_string(),
            with(1, 3, id.uuid),
            with(2, 0, id.uuid),
            with(1, 0, Uuid::from_u128(1)),
        ];
        let c = o.connect(b, id)?;
        out.push(code(c.call_raw(200, &[], false).map(|_| ())));
        out.push(code(c.call_raw(0, &[0xff], false).map(|_| ())));
        // The connection still serves after faults.
        let typed = CalcClient::connect_with(&o, b)?;
        out.push(code(typed.add(1, 2)));
        ctx.send_str(&out.join(" "))?;
        Ok(())
    });
    let server = Server::new(server_opts(&t), vec![CalcServer::new(CalcImpl::default())]);
    for b in bindings(&server) {
        let mut p = t.spawn("client").arg(&b).start();
        p.expect(
            "true UnknownInterface:1717 UnknownInterface:1717 UnknownInterface:1717 \
             ProcNumOutOfRange:1745 Protocol:1783 ok:3",
            T,
        )
        .unwrap();
        p.wait_timeout(T).unwrap();
    }
    // No server, no endpoint, other machines.
    let o = ClientOptions::new().namespace(ns_of(&t));
    let id = CalcClient::INTERFACE;
    assert_eq!(
        code(o.connect("ncalrpc:[nobody-here]", id).map(|_| ())),
        "ServerUnavailable:1722"
    );
    assert_eq!(
        code(
            o.connect(r"ncacn_np:\\.[\pipe\nobody-here]", id)
                .map(|_| ())
        ),
        "ServerUnavailable:1722"
    );
    assert_eq!(
        code(o.connect("ncacn_ip_tcp:localhost", id).map(|_| ())),
        "NoEndpoint:1753"
    );
    assert_eq!(
        code(o.connect(r"ncacn_np:\\far[\pipe\x]", id).map(|_| ())),
        "NeedsGateway:53"
    );
    assert_eq!(
        code(o.connect("ncadg_ip_udp:h[1]", id).map(|_| ())),
        "Unsupported:1703"
    );
    // A dynamic endpoint (`RpcServerUseProtseq`): a fresh name; the broker's tests resolve it.
    let dynamic = server.listen("ncalrpc:").unwrap();
    assert!(dynamic.endpoint().unwrap().starts_with("dyn-"), "{dynamic}");
}

#[test]
fn a_thousand_concurrent_calls_from_eight_processes() {
    let t = test_case!();
    t.role("client", |ctx| {
        let b = ctx.arg(0).unwrap().to_owned();
        let me: i64 = ctx.arg(1).unwrap().parse()?;
        let c = CalcClient::connect_with(&client_opts(ctx), &b)?;
        ctx.expect("go", T)?;
        // 125 calls in flight at once on one connection: 125 threads, one call each.
        let handles: Vec<_> = (0..125i64)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let a = me * 1_000_000 + i;
                    (a, c.add(a, 7))
                })
            })
            .collect();
        let mut good = 0;
        for h in handles {
            let (a, r) = h.join().map_err(|_| "thread panicked")?;
            ensure(r? == a + 7, format!("answer for {a}"))?;
            good += 1;
        }
        ctx.send_str(&format!("good {good}"))?;
        Ok(())
    });
    let server = Server::new(
        server_opts(&t).max_calls(8),
        vec![CalcServer::new(CalcImpl::default())],
    );
    let b = server
        .listen(&format!("ncalrpc:[{}]", unique_name("many")))
        .unwrap()
        .to_string();
    let mut peers: Vec<_> = (0..8)
        .map(|i| t.spawn("client").arg(&b).arg(i.to_string()).start())
        .collect();
    for p in &mut peers {
        p.send_str("go").unwrap();
    }
    for p in &mut peers {
        p.expect("good 125", T).unwrap();
    }
}

#[test]
fn context_handles_run_down_when_their_client_is_killed() {
    let t = test_case!();
    t.role("client", |ctx| {
        let c = CalcClient::connect_with(&client_opts(ctx), ctx.arg(0).unwrap())?;
        let hs: Vec<ContextHandle> = (0..3).map(|i| c.open(i * 10)).collect::<Result<_, _>>()?;
        ensure(c.bump(hs[1]).map_err(|e| e.to_string())? == 11, "bump")?;
        ensure(c.close(hs[0]).map_err(|e| e.to_string())? == 0, "close")?;
        // A closed handle, and one made up, are refused with the application error.
        ensure(c.bump(hs[0]).is_err(), "closed handle")?;
        ensure(c.bump(ContextHandle(999)).is_err(), "made-up handle")?;
        ctx.send_str("opened")?;
        std::thread::sleep(T * 2);
        Ok(())
    });
    let imp = CalcImpl::default();
    let rundowns = imp.rundowns.clone();
    let server = Server::new(server_opts(&t), vec![CalcServer::new(imp)]);
    for b in bindings(&server) {
        let before = rundowns.load(Ordering::SeqCst);
        let mut p = t.spawn("client").arg(&b).start();
        p.expect("opened", T).unwrap();
        assert_eq!(
            rundowns.load(Ordering::SeqCst),
            before,
            "{b}: no rundown while alive"
        );
        p.kill().unwrap();
        // The two handles left open run down; the closed one does not.
        assert!(
            wait_for(T, || rundowns.load(Ordering::SeqCst) == before + 2),
            "{b}: rundowns {}",
            rundowns.load(Ordering::SeqCst) - before
        );
        assert!(
            wait_for(T, || server.connections() == 0),
            "{b}: connection gone"
        );
        assert_eq!(rundowns.load(Ordering::SeqCst), before + 2);
    }
}

#[test]
fn a_server_killed_in_the_middle_of_a_call_gives_a_clean_error() {
    let t = test_case!();
    t.role("server", |ctx| {
        let marker = ctx.namespace().join("call-running");
        let imp = CalcImpl {
            marker: Some(marker),
            ..CalcImpl::default()
        };
        let server = Server::new(
            ServerOptions::new().namespace(ctx_ns(ctx)),
            vec![CalcServer::new(imp)],
        );
        let out = [
            server.listen(ctx.arg(0).unwrap())?.to_string(),
            server.listen(ctx.arg(1).unwrap())?.to_string(),
            server.listen("ncacn_ip_tcp:127.0.0.1[0]")?.to_string(),
        ];
        ctx.send_str(&out.join("|"))?;
        std::thread::sleep(T * 4);
        Ok(())
    });
    let lrpc = format!("ncalrpc:[{}]", unique_name("victim"));
    let np = format!(r"ncacn_np:\\.[\pipe\{}]", unique_name("victim"));
    for which in 0..3 {
        let mut p = t.spawn("server").arg(&lrpc).arg(&np).start();
        let line = p.recv_str_timeout(T).unwrap();
        let b = line.split('|').nth(which).unwrap().to_owned();
        let marker = t.namespace().join("call-running");
        let _ = std::fs::remove_file(&marker);
        let o = ClientOptions::new().namespace(ns_of(&t));
        let c = CalcClient::connect_with(&o, &b).unwrap();
        assert_eq!(c.add(1, 1).unwrap(), 2);
        let c2 = c.clone();
        let call = std::thread::spawn(move || c2.sleep(600_000));
        assert!(wait_for(T, || marker.exists()), "{b}: the call started");
        p.kill().unwrap();
        let e = call.join().unwrap().unwrap_err();
        assert_eq!(
            (e.kind(), e.win32_code()),
            (ErrorKind::CallFailed, 1726),
            "{b}: {e}"
        );
        // Later calls on the dead connection, and new connections, find no server.
        assert_eq!(
            c.add(1, 1).unwrap_err().kind(),
            ErrorKind::ServerUnavailable,
            "{b}"
        );
        assert_eq!(
            code(CalcClient::connect_with(&o, &b).map(|_| ())),
            "ServerUnavailable:1722",
            "{b}"
        );
    }
}

#[test]
fn timeouts_cancel_the_call_on_the_server_and_the_connection_goes_on() {
    let t = test_case!();
    t.role("client", |ctx| {
        let o = client_opts(ctx).timeout(Duration::from_millis(200));
        let c = CalcClient::connect_with(&o, ctx.arg(0).unwrap())?;
        let e = c.wait_cancel().unwrap_err();
        ctx.send_str(&format!("{:?}:{}", e.kind(), e.win32_code()))?;
        ctx.send_str(&code(c.add(2, 3)))?;
        Ok(())
    });
    let imp = CalcImpl::default();
    let seen = imp.cancels_seen.clone();
    let server = Server::new(server_opts(&t), vec![CalcServer::new(imp)]);
    let bs = bindings(&server);
    for (i, b) in bs.iter().enumerate() {
        let mut p = t.spawn("client").arg(b).start();
        p.expect("Timeout:1818", T).unwrap();
        p.expect("ok:5", T).unwrap();
        assert!(
            wait_for(T, || seen.load(Ordering::SeqCst) == i + 1),
            "{b}: the method saw the cancel"
        );
    }
}

/// A long call on a connection does not hold up that connection's other calls: the server
/// runs a call on the connection's own thread only while it is short, and reads on beside it
/// once it runs long (over sockets and pipes alike).
#[test]
fn a_long_call_does_not_hold_up_other_calls_on_its_connection() {
    let t = test_case!();
    t.role("client", |ctx| {
        let c = CalcClient::connect_with(&client_opts(ctx), ctx.arg(0).unwrap())?;
        let done = Arc::new(AtomicBool::new(false));
        let long = {
            let (c, done) = (c.clone(), done.clone());
            std::thread::spawn(move || {
                let r = c.sleep(1_500);
                done.store(true, Ordering::SeqCst);
                r
            })
        };
        // Give the long call time to start on the server (setup, not a measurement: if it has
        // not, it simply goes to a pool thread and the check below holds all the same).
        std::thread::sleep(Duration::from_millis(100));
        let sum = c.add(40, 2)?;
        let overtaken = !done.load(Ordering::SeqCst);
        let slept = long.join().map_err(|_| "the long call panicked")??;
        ctx.send_str(&format!("{sum} {overtaken} {slept}"))?;
        Ok(())
    });
    let server = Server::new(server_opts(&t), vec![CalcServer::new(CalcImpl::default())]);
    for b in bindings(&server) {
        let mut p = t.spawn("client").arg(&b).start();
        p.expect("42 true 1500", T).unwrap();
        assert!(p.wait_timeout(T).unwrap().success(), "{b}: {}", p.report());
    }
}

#[test]
fn hostile_bytes_do_not_disturb_other_clients() {
    let t = test_case!();
    t.role("hostile", |ctx| {
        let addr = ctx.arg(0).unwrap();
        let path = ctx.arg(1).unwrap();
        let mut seen = HashSet::new();
        for round in 0..20u32 {
            let attacks: Vec<Vec<u8>> = vec![
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                common::pattern(4096, u64::from(round)),
                // A valid bind header announcing a 4 GiB body, then a little of it.
                [
                    &[0xC5u8, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
                    &u32::MAX.to_le_bytes(),
                    &[7u8; 100],
                ]
                .concat(),
                // A request before any bind.
                [
                    &[0xC5u8, 1, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0][..],
                    &4u32.to_le_bytes(),
                    &[0u8; 4],
                ]
                .concat(),
                // A truncated header.
                vec![0xC5, 1, 1],
            ];
            for (i, a) in attacks.iter().enumerate() {
                let reply = if round % 2 == 0 {
                    let mut s = TcpStream::connect(addr)?;
                    s.set_read_timeout(Some(Duration::from_millis(200)))?;
                    let _ = s.write_all(a);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let mut buf = vec![];
                    let _ = s.read_to_end(&mut buf);
                    buf
                } else {
                    let mut s = UnixStream::connect(path)?;
                    s.set_read_timeout(Some(Duration::from_millis(200)))?;
                    let _ = s.write_all(a);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let mut buf = vec![];
                    let _ = s.read_to_end(&mut buf);
                    buf
                };
                // The server answers with a connection fault (type 5, status 1728) or nothing.
                if reply.len() >= 16 {
                    seen.insert((i, reply[2], u32::from_le_bytes(reply[8..12].try_into()?)));
                }
            }
        }
        let mut seen: Vec<_> = seen.into_iter().collect();
        seen.sort();
        ctx.send_str(&format!("{seen:?}"))?;
        Ok(())
    });
    let server = Server::new(server_opts(&t), vec![CalcServer::new(CalcImpl::default())]);
    let name = unique_name("hostile");
    let lrpc = server
        .listen(&format!("ncalrpc:[{name}]"))
        .unwrap()
        .to_string();
    let tcp = server.listen("ncacn_ip_tcp:127.0.0.1[0]").unwrap();
    let addr = format!("127.0.0.1:{}", tcp.endpoint().unwrap());
    let path = t.namespace().join("rpc").join(&name);
    let o = ClientOptions::new().namespace(ns_of(&t));
    let good = CalcClient::connect_with(&o, &lrpc).unwrap();
    let good_tcp = CalcClient::connect_with(&o, &tcp.to_string()).unwrap();
    let mut p = t.spawn("hostile").arg(&addr).arg(&path).start();
    let mut n = 0i64;
    let report = loop {
        assert_eq!(good.add(n, 1).unwrap(), n + 1);
        assert_eq!(good_tcp.add(n, 2).unwrap(), n + 2);
        n += 1;
        if let Ok(s) = p.recv_str_timeout(Duration::from_millis(1)) {
            break s;
        }
    };
    // Garbage, the oversized bind and the request before bind get the protocol fault.
    for i in [0, 1, 2, 3] {
        assert!(
            report.contains(&format!("({i}, 5, 1728)")),
            "attack {i}: {report}"
        );
    }
    assert!(n > 0);
    assert_eq!(good.add(1, 1).unwrap(), 2);
    assert!(
        wait_for(T, || server.connections() == 2),
        "hostile connections closed"
    );
}

#[test]
fn graceful_stop_answers_running_calls_then_closes() {
    let t = test_case!();
    t.role("client", |ctx| {
        let c = CalcClient::connect_with(&client_opts(ctx), ctx.arg(0).unwrap())?;
        let c2 = c.clone();
        let slow = std::thread::spawn(move || c2.sleep(500));
        ctx.send_str(&code(slow.join().map_err(|_| "panic")?))?;
        ctx.expect("stopped", T)?;
        ctx.send_str(&code(c.add(1, 1)))?;
        ctx.send_str(&code(
            CalcClient::connect_with(&client_opts(ctx), ctx.arg(0).unwrap()).map(|_| ()),
        ))?;
        Ok(())
    });
    let marker = t.namespace().join("stop-call-running");
    for which in 0..3 {
        let _ = std::fs::remove_file(&marker);
        let imp = CalcImpl {
            marker: Some(marker.clone()),
            ..CalcImpl::default()
        };
        let server = Server::new(server_opts(&t), vec![CalcServer::new(imp)]);
        let b = bindings(&server)[which].clone();
        let mut p = t.spawn("client").arg(&b).start();
        assert!(wait_for(T, || marker.exists()), "{b}: the call started");
        server.stop();
        p.expect("ok:500", T).unwrap();
        p.send_str("stopped").unwrap();
        let after = p.recv_str_timeout(T).unwrap();
        assert!(
            after == "ServerUnavailable:1722" || after == "CallFailed:1726",
            "{b}: call after stop: {after}"
        );
        p.expect("ServerUnavailable:1722", T).unwrap();
        p.wait_timeout(T).unwrap();
    }
}

/// Two calls that can only finish together: each `meet` waits (up to 20 s) for the other
/// call of its round to arrive at the server.
#[rpc::interface(uuid = "5b7e2d90-3c1a-4f08-a6e4-91d2c0b8f317", version = "1.0")]
pub trait Rendezvous {
    /// Arrives at `round`'s meeting point and waits there for the other call: whether it came.
    fn meet(&self, round: u32) -> bool;
}

#[derive(Default)]
struct RendezvousImpl {
    arrived: Mutex<std::collections::HashMap<u32, u32>>,
    cv: std::sync::Condvar,
}

impl Rendezvous for RendezvousImpl {
    fn meet(&self, round: u32) -> bool {
        let mut a = self.arrived.lock().unwrap();
        *a.entry(round).or_default() += 1;
        self.cv.notify_all();
        let (a, _) = self
            .cv
            .wait_timeout_while(a, Duration::from_secs(20), |a| a[&round] < 2)
            .unwrap();
        a[&round] >= 2
    }
}

/// Calls on one connection run at the same time over every protocol sequence, named pipes
/// included: two calls from two threads over one client meet on the server, which only
/// happens if both run at once (calls that took turns would each give up after 20 s).
#[test]
fn calls_on_one_connection_run_at_the_same_time_over_each_protocol_sequence() {
    let t = test_case!();
    t.role("client", |ctx| {
        let round: u32 = ctx.arg(1).unwrap().parse()?;
        let o = client_opts(ctx).timeout(T);
        let c = RendezvousClient::connect_with(&o, ctx.arg(0).unwrap())?;
        let other = {
            let c = c.clone();
            std::thread::spawn(move || c.meet(round))
        };
        let mine = code(c.meet(round));
        let theirs = code(other.join().map_err(|_| "the other call panicked")?);
        ctx.send_str(&format!("{mine} {theirs}"))?;
        Ok(())
    });
    let server = Server::new(
        server_opts(&t),
        vec![RendezvousServer::new(RendezvousImpl::default())],
    );
    let lrpc = format!("ncalrpc:[{}]", unique_name("meet"));
    let np = format!(r"ncacn_np:\\.[\pipe\{}]", unique_name("meet"));
    let bs = [
        server.listen(&np).unwrap().to_string(),
        server.listen(&lrpc).unwrap().to_string(),
        server
            .listen("ncacn_ip_tcp:127.0.0.1[0]")
            .unwrap()
            .to_string(),
    ];
    for (round, b) in bs.iter().enumerate() {
        let mut p = t.spawn("client").arg(b).arg(round.to_string()).start();
        p.expect("ok:true ok:true", T).unwrap();
        assert!(p.wait_timeout(T).unwrap().success(), "{b}: {}", p.report());
    }
}
