//! Async RPC across real processes (feature `tokio`): a dropped async call is cancelled on the
//! server and its connection goes on; `async fn` methods run on the server's tokio runtime
//! without holding a thread (more calls wait at once than `max_calls`), with caller identity,
//! context handles (rundown when the client is SIGKILLed), typed errors, timeouts and a
//! graceful stop that waits for them; a server SIGKILLed under waiting async calls.
#![cfg(feature = "tokio")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{ctx_ns, ensure, ns_of};
use ipckit::rpc::{
    self, CallContext, CallError, ClientOptions, ContextHandle, Server, ServerOptions,
};
use ipckit_testkit::{RoleCtx, TestCase, test_case, unique_name, wait_for};

/// Upper bound for anything that must happen eventually.
const T: Duration = Duration::from_secs(30);
/// How many calls wait at once in the rendezvous test (the server has 2 call threads).
const PARTY: usize = 20;

#[rpc::interface(uuid = "c1a9e0b4-7d3f-4e21-9a56-2b8f0d4c6e13", version = "1.0")]
pub trait Waiter {
    /// Blocks its thread until the call is cancelled (or 20 s); says whether it was.
    fn wait_cancel(&self, ctx: &CallContext) -> bool;
    /// Awaits the cancel (or 20 s); says whether it came.
    async fn wait_cancel_async(&self, ctx: &CallContext) -> bool;
    /// How many calls saw their cancel so far.
    fn cancels_seen(&self) -> usize;
    /// a + b.
    fn add(&self, a: i64, b: i64) -> i64;
    /// Waits until `PARTY` calls wait here, then answers how many had arrived before it
    /// (`usize::MAX` if the call was cancelled first).
    async fn rendezvous(&self, ctx: &CallContext) -> usize;
    /// The caller's pid and uid, after a yield to the runtime.
    async fn whoami(&self, ctx: &CallContext) -> (Option<u32>, Option<u32>);
    /// a / b, or a typed application error.
    async fn div(&self, a: i64, b: i64) -> Result<i64, String>;
    /// Opens a context handle counting from `start`.
    async fn open(&self, ctx: &CallContext, start: u64) -> ContextHandle;
    /// Increments and returns the counter behind a handle, across an await.
    async fn bump(&self, ctx: &CallContext, h: ContextHandle) -> Result<u64, String>;
    /// Says it started, sleeps `ms` on the runtime's timer, answers `ms`.
    async fn sleep(&self, ms: u64) -> u64;
    /// Panics after an await.
    async fn boom(&self) -> u32;
    /// One-way: counts, after an await.
    #[oneway]
    async fn tick(&self);
    /// The ticks so far.
    fn ticks(&self) -> usize;
}

#[derive(Default)]
struct WaiterImpl {
    cancels_seen: Arc<AtomicUsize>,
    rundowns: Arc<AtomicUsize>,
    sleeping: Arc<AtomicBool>,
    arrived: AtomicUsize,
    ticks: AtomicUsize,
    sleepers: Arc<AtomicUsize>,
    all_here: tokio::sync::Notify,
}

impl Waiter for WaiterImpl {
    fn wait_cancel(&self, ctx: &CallContext) -> bool {
        let seen = wait_for(Duration::from_secs(20), || ctx.is_cancelled());
        if seen {
            self.cancels_seen.fetch_add(1, Ordering::SeqCst);
        }
        seen
    }
    async fn wait_cancel_async(&self, ctx: &CallContext) -> bool {
        let seen = tokio::time::timeout(Duration::from_secs(20), ctx.cancelled())
            .await
            .is_ok();
        if seen {
            self.cancels_seen.fetch_add(1, Ordering::SeqCst);
        }
        seen
    }
    fn cancels_seen(&self) -> usize {
        self.cancels_seen.load(Ordering::SeqCst)
    }
    fn add(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    async fn rendezvous(&self, ctx: &CallContext) -> usize {
        // Register for the wake-up before counting in, so the last one's wake is not missed.
        let woken = self.all_here.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let before = self.arrived.fetch_add(1, Ordering::SeqCst);
        if before + 1 == PARTY {
            self.all_here.notify_waiters();
            return before;
        }
        // Given up by the client (its timeout): return, so that a failing test ends.
        tokio::select! {
            _ = woken => before,
            _ = ctx.cancelled() => usize::MAX,
        }
    }
    async fn whoami(&self, ctx: &CallContext) -> (Option<u32>, Option<u32>) {
        tokio::task::yield_now().await;
        (ctx.caller().pid, ctx.caller().uid)
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, String> {
        tokio::task::yield_now().await;
        a.checked_div(b)
            .ok_or_else(|| "division by zero".to_owned())
    }
    async fn open(&self, ctx: &CallContext, start: u64) -> ContextHandle {
        tokio::task::yield_now().await;
        let r = self.rundowns.clone();
        ctx.open_context(start, move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        })
    }
    async fn bump(&self, ctx: &CallContext, h: ContextHandle) -> Result<u64, String> {
        tokio::task::yield_now().await;
        ctx.with_context(h, |v: &mut u64| {
            *v += 1;
            *v
        })
        .map_err(|e| e.to_string())
    }
    async fn sleep(&self, ms: u64) -> u64 {
        self.sleeping.store(true, Ordering::SeqCst);
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
    async fn boom(&self) -> u32 {
        tokio::task::yield_now().await;
        panic!("boom (this panic is part of the test)")
    }
    async fn tick(&self) {
        tokio::task::yield_now().await;
        self.ticks.fetch_add(1, Ordering::SeqCst);
    }
    fn ticks(&self) -> usize {
        self.ticks.load(Ordering::SeqCst)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn server_opts(t: &TestCase, rt: &tokio::runtime::Runtime) -> ServerOptions {
    ServerOptions::new()
        .namespace(ns_of(t))
        .runtime(rt.handle().clone())
}

fn client_opts(ctx: &RoleCtx) -> ClientOptions {
    ClientOptions::new().namespace(ctx_ns(ctx))
}

/// The three bindings of one test server.
fn bindings(server: &Server) -> Vec<String> {
    let lrpc = format!("ncalrpc:[{}]", unique_name("wait"));
    let np = format!(r"ncacn_np:\\.[\pipe\{}]", unique_name("wait"));
    vec![
        server.listen(&lrpc).unwrap().to_string(),
        server.listen(&np).unwrap().to_string(),
        server
            .listen("ncacn_ip_tcp:127.0.0.1[0]")
            .unwrap()
            .to_string(),
    ]
}

/// The cancels the server saw reach `n` (polled through calls on the same connection).
async fn cancels_reach(c: &WaiterAsyncClient, n: usize) -> ipckit::Result<bool> {
    let deadline = tokio::time::Instant::now() + T;
    while tokio::time::Instant::now() < deadline {
        if c.cancels_seen().await? >= n {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(false)
}

#[test]
fn dropping_an_async_call_cancels_it_on_the_server_and_the_connection_goes_on() {
    let t = test_case!();
    t.role("client", |ctx| {
        runtime().block_on(async {
            let c = WaiterAsyncClient::connect_with(&client_opts(ctx), ctx.arg(0).unwrap()).await?;
            let mut want = c.cancels_seen().await?;
            // No client timeout: only dropping the future ends these calls.
            let r = tokio::time::timeout(Duration::from_millis(200), c.wait_cancel()).await;
            ensure(r.is_err(), format!("the plain method answered: {r:?}"))?;
            want += 1;
            ensure(
                cancels_reach(&c, want).await?,
                "the plain method saw the cancel",
            )?;
            let r = tokio::time::timeout(Duration::from_millis(200), c.wait_cancel_async()).await;
            ensure(r.is_err(), format!("the async method answered: {r:?}"))?;
            want += 1;
            ensure(
                cancels_reach(&c, want).await?,
                "the async method saw the cancel",
            )?;
            // An aborted task is a dropped future too.
            let c2 = c.clone();
            let task = tokio::spawn(async move { c2.wait_cancel_async().await });
            tokio::time::sleep(Duration::from_millis(100)).await;
            task.abort();
            ensure(task.await.is_err_and(|e| e.is_cancelled()), "aborted")?;
            want += 1;
            ensure(
                cancels_reach(&c, want).await?,
                "the aborted call was cancelled",
            )?;
            // The same connection serves on, the blocking client beside it as well.
            ensure(c.add(40, 2).await? == 42, "a call after the cancels")?;
            let blocking = c.client().blocking().clone();
            let sum =
                tokio::task::spawn_blocking(move || blocking.call::<_, i64, ()>(3, &(1i64, 2i64)))
                    .await?
                    .map_err(CallError::into_error)?;
            ensure(sum == 3, "a blocking call on the same connection")?;
            ctx.send_str("ok")?;
            Ok(())
        })
    });
    let rt = runtime();
    let imp = WaiterImpl::default();
    let seen = imp.cancels_seen.clone();
    let server = Server::new(server_opts(&t, &rt), vec![WaiterServer::new(imp)]);
    for (i, b) in bindings(&server).iter().enumerate() {
        let mut p = t.spawn("client").arg(b).start();
        p.expect("ok", T).unwrap();
        assert!(p.wait_timeout(T).unwrap().success(), "{b}: {}", p.report());
        assert_eq!(seen.load(Ordering::SeqCst), 3 * (i + 1), "{b}");
    }
    server.stop();
}

/// Twenty `async fn` calls wait for each other at once on a server with two call threads: a
/// server that held a thread per waiting call would never gather them (the client's timeout
/// then fails the test instead of hanging it). The client's runtime has a single blocking
/// thread, so its waiting calls hold no thread either.
#[test]
fn awaiting_async_calls_hold_no_thread() {
    let t = test_case!();
    t.role("client", |ctx| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(1)
            .enable_all()
            .build()?;
        rt.block_on(async {
            let o = client_opts(ctx).timeout(T);
            let c = WaiterAsyncClient::connect_with(&o, ctx.arg(0).unwrap()).await?;
            let calls: Vec<_> = (0..PARTY)
                .map(|_| {
                    let c = c.clone();
                    tokio::spawn(async move { c.rendezvous().await })
                })
                .collect();
            let mut order = Vec::new();
            for h in calls {
                order.push(h.await??);
            }
            order.sort_unstable();
            ensure(
                order == (0..PARTY).collect::<Vec<_>>(),
                format!("{order:?}"),
            )?;
            ctx.send_str("gathered")?;
            Ok(())
        })
    });
    for b in [0, 1, 2] {
        let rt = runtime();
        let server = Server::new(
            server_opts(&t, &rt).max_calls(2),
            vec![WaiterServer::new(WaiterImpl::default())],
        );
        let b = &bindings(&server)[b];
        let mut p = t.spawn("client").arg(b).start();
        p.expect("gathered", T)
            .unwrap_or_else(|e| panic!("{b}: {e}: {}", p.report()));
        assert!(p.wait_timeout(T).unwrap().success(), "{b}: {}", p.report());
        server.stop();
    }
}

#[test]
fn async_methods_have_identity_context_handles_errors_timeouts_and_stop() {
    let t = test_case!();
    t.role("client", |ctx| {
        runtime().block_on(async {
            let b = ctx.arg(0).unwrap();
            let c = WaiterAsyncClient::connect_with(&client_opts(ctx), b).await?;
            let (pid, uid) = c.whoami().await?;
            ctx.send_str(&format!("who {pid:?} {uid:?}"))?;
            ensure(c.div(84, 2).await.map_err(|e| e.to_string())? == 42, "div")?;
            match c.div(1, 0).await {
                Err(CallError::App(e)) if e == "division by zero" => {}
                other => return Err(format!("div by zero gave {other:?}").into()),
            }
            // A panic in an async method faults that call only (RPC_S_CALL_FAILED).
            let e = c.boom().await.unwrap_err();
            ensure(e.win32_code() == 1726, format!("boom gave {e}"))?;
            let before = c.ticks().await?;
            for _ in 0..3 {
                c.tick().await?;
            }
            let mut ticks = 0;
            for _ in 0..3000 {
                ticks = c.ticks().await? - before;
                if ticks >= 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ensure(ticks == 3, format!("{ticks} of 3 one-way async calls ran"))?;
            let h = c.open(10).await?;
            ensure(c.bump(h).await.map_err(|e| e.to_string())? == 11, "bump")?;
            ensure(c.bump(h).await.map_err(|e| e.to_string())? == 12, "bump")?;
            // A client timeout cancels an async method as it does a plain one.
            let short = client_opts(ctx).timeout(Duration::from_millis(200));
            let s = WaiterAsyncClient::connect_with(&short, b).await?;
            let e = s.wait_cancel_async().await.unwrap_err();
            ctx.send_str(&format!("{:?}:{}", e.kind(), e.win32_code()))?;
            // Left open: the rundown runs when this process dies. A slow call for the stop.
            ctx.send_str("opened")?;
            let slept = c.sleep(800).await?;
            ctx.send_str(&format!("slept {slept}"))?;
            ctx.expect("die", T)?;
            std::thread::sleep(T);
            Ok(())
        })
    });
    let rt = runtime();
    let imp = WaiterImpl::default();
    let (seen, rundowns, sleeping) = (
        imp.cancels_seen.clone(),
        imp.rundowns.clone(),
        imp.sleeping.clone(),
    );
    let server = Server::new(server_opts(&t, &rt), vec![WaiterServer::new(imp)]);
    let bs = bindings(&server);
    // Over TCP the caller has no pid; the local carriers give the kernel's.
    let uid = rustix::process::geteuid().as_raw();
    for (i, b) in bs.iter().enumerate().take(2) {
        let mut p = t.spawn("client").arg(b).start();
        let who = p.recv_str_timeout(T).unwrap();
        assert_eq!(who, format!("who Some({}) Some({uid})", p.pid()), "{b}");
        p.expect("Timeout:1818", T).unwrap();
        p.expect("opened", T).unwrap();
        assert!(
            wait_for(T, || seen.load(Ordering::SeqCst) == i + 1),
            "{b}: cancel seen"
        );
        assert!(
            wait_for(T, || sleeping.swap(false, Ordering::SeqCst)),
            "{b}: sleep started"
        );
        p.expect("slept 800", T).unwrap();
        p.send_str("die").unwrap();
        p.kill().unwrap();
        assert!(
            wait_for(T, || rundowns.load(Ordering::SeqCst) == i + 1),
            "{b}: rundown"
        );
    }
    // A graceful stop waits for an async call in flight: it is answered, then the end.
    let b = &bs[2];
    let mut p = t.spawn("client").arg(b).start();
    p.expect("who None None", T).unwrap();
    p.expect("Timeout:1818", T).unwrap();
    p.expect("opened", T).unwrap();
    assert!(
        wait_for(T, || sleeping.load(Ordering::SeqCst)),
        "{b}: sleep started"
    );
    server.stop();
    p.expect("slept 800", T)
        .unwrap_or_else(|e| panic!("{b}: {e}: {}", p.report()));
    assert_eq!(server.connections(), 0);
    p.kill().unwrap();
    assert!(
        wait_for(T, || rundowns.load(Ordering::SeqCst) == 3),
        "rundown after stop"
    );
}

/// A server SIGKILLed while async calls await it (the connection read for them by the pump):
/// each fails with `RPC_S_CALL_FAILED` (1726), later calls find no server, nothing hangs.
#[test]
fn a_server_killed_under_waiting_async_calls_gives_clean_errors() {
    let t = test_case!();
    t.role("server", |ctx| {
        let rt = runtime();
        let imp = WaiterImpl::default();
        let sleepers = imp.sleepers.clone();
        let server = Server::new(
            ServerOptions::new()
                .namespace(ctx_ns(ctx))
                .runtime(rt.handle().clone()),
            vec![WaiterServer::new(imp)],
        );
        let b = server.listen(ctx.arg(0).unwrap())?.to_string();
        ctx.send_str(&b)?;
        ensure(
            wait_for(T, || sleepers.load(Ordering::SeqCst) == 3),
            "calls came",
        )?;
        ctx.send_str("sleeping")?;
        std::thread::sleep(T * 4);
        Ok(())
    });
    let rt = runtime();
    for b in [
        format!("ncalrpc:[{}]", unique_name("victim")),
        format!(r"ncacn_np:\\.[\pipe\{}]", unique_name("victim")),
        "ncacn_ip_tcp:127.0.0.1[0]".to_owned(),
    ] {
        let mut p = t.spawn("server").arg(&b).start();
        let b = p.recv_str_timeout(T).unwrap();
        let o = ClientOptions::new().namespace(ns_of(&t));
        rt.block_on(async {
            let c = WaiterAsyncClient::connect_with(&o, &b).await.unwrap();
            assert_eq!(c.add(1, 1).await.unwrap(), 2, "{b}");
            let calls: Vec<_> = (0..3)
                .map(|_| {
                    let c = c.clone();
                    tokio::spawn(async move { c.sleep(600_000).await })
                })
                .collect();
            p.expect("sleeping", T).unwrap();
            p.kill().unwrap();
            for h in calls {
                let e = tokio::time::timeout(T, h)
                    .await
                    .expect("no hang")
                    .unwrap()
                    .unwrap_err();
                assert_eq!(
                    (e.kind(), e.win32_code()),
                    (ipckit::ErrorKind::CallFailed, 1726),
                    "{b}: {e}"
                );
            }
            let e = c.add(1, 1).await.unwrap_err();
            assert_eq!(e.kind(), ipckit::ErrorKind::ServerUnavailable, "{b}: {e}");
        });
    }
}
