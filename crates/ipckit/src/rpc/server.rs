//! The RPC server: endpoints, connections, a pool of call threads, graceful stop.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::context::{CallContext, Caller, CancelFlag, ContextTable};
use super::link::{self, Link, PipeLink, SockLink, SockListener};
use super::proto::{self, Decoder, Outcome, ServerEvent, ServerProto, status};
use super::{Binding, InterfaceId, Protseq};
use crate::error::{Error, ErrorKind, Result};
use crate::namespace::Namespace;
use crate::sys::socket;

/// Numbers the dynamic endpoints of this process.
static DYNAMIC: AtomicU64 = AtomicU64::new(0);

/// A server-side interface: what the `#[interface]` attribute generates for a trait, or a
/// hand-written dispatcher.
///
/// Windows counterpart: the server stub MIDL generates (`RPC_SERVER_INTERFACE` with its
/// dispatch table) registered with `RpcServerRegisterIf`.
pub trait Dispatch: Send + Sync + 'static {
    /// The interface's UUID and version.
    fn interface(&self) -> InterfaceId;
    /// How many procedures it has (opnums `0..procedures()`); others fault with
    /// `RPC_S_PROCNUM_OUT_OF_RANGE` (1745) before reaching [`dispatch`](Self::dispatch).
    fn procedures(&self) -> u16;
    /// Runs procedure `opnum` on the encoded `args`.
    fn dispatch(&self, ctx: &CallContext, opnum: u16, args: &[u8]) -> Outcome;
    /// For an async procedure (an `async fn` of an `#[interface]` trait): its call as a future,
    /// which the server runs on the tokio runtime of [`ServerOptions::runtime`] (feature
    /// `tokio`) without holding a thread while it awaits. `None` (the default): `opnum` is a
    /// plain procedure, run by [`dispatch`](Self::dispatch) on a call thread.
    ///
    /// Windows counterpart: an asynchronous server routine (`[async]` in the ACF), which gets
    /// an `RPC_ASYNC_STATE` and answers later with `RpcAsyncCompleteCall`; here the future's
    /// output is the answer.
    fn dispatch_async(&self, ctx: &CallContext, opnum: u16, args: &[u8]) -> Option<CallFuture> {
        let _ = (ctx, opnum, args);
        None
    }
}

/// The future of an async procedure's call (see [`Dispatch::dispatch_async`]).
pub type CallFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

/// Settings of a [`Server`].
///
/// Windows counterpart: the parameters of `RpcServerUseProtseqEp` and `RpcServerListen`
/// (`MaxCalls`), and `RpcMgmtSetServerStackSize`-like tuning.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    max_calls: usize,
    max_calls_per_connection: usize,
    max_body: u32,
    call_timeout: Option<Duration>,
    namespace: Option<Namespace>,
    local_shm: bool,
    #[cfg(feature = "tls")]
    tls: Option<super::TlsServerConfig>,
    #[cfg(feature = "tokio")]
    runtime: Option<tokio::runtime::Handle>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_calls: 16,
            max_calls_per_connection: 256,
            max_body: 16 << 20,
            call_timeout: None,
            namespace: None,
            local_shm: true,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tokio")]
            runtime: None,
        }
    }
}

impl ServerOptions {
    /// Default settings: 16 calls at once, 256 in flight per connection, 16 MiB bodies.
    pub fn new() -> ServerOptions {
        ServerOptions::default()
    }
    /// How many calls run at once over all connections (`RpcServerListen`'s `MaxCalls`);
    /// further calls wait their turn.
    pub fn max_calls(mut self, n: usize) -> Self {
        self.max_calls = n.max(1);
        self
    }
    /// How many calls one connection may have in flight; one more faults with
    /// `RPC_S_SERVER_TOO_BUSY` (1723).
    pub fn max_calls_per_connection(mut self, n: usize) -> Self {
        self.max_calls_per_connection = n.max(1);
        self
    }
    /// Largest request body accepted (bigger ones fault with code 87; at most 64 MiB).
    pub fn max_message_size(mut self, bytes: u32) -> Self {
        self.max_body = bytes.clamp(64, proto::MAX_BODY_LIMIT);
        self
    }
    /// A limit for every call: a call still waiting for a thread when it passes is answered
    /// with `RPC_S_CALL_CANCELLED` (1818) without running; a running one sees it in
    /// [`CallContext::deadline`] and [`CallContext::is_cancelled`].
    pub fn call_timeout(mut self, t: Duration) -> Self {
        self.call_timeout = Some(t);
        self
    }
    /// The namespace of `ncalrpc` and `ncacn_np` endpoints (default: the user's, from the
    /// environment).
    pub fn namespace(mut self, ns: Namespace) -> Self {
        self.namespace = Some(ns);
        self
    }
    /// Whether `ncalrpc` connections may move to shared memory when the client asks (default:
    /// yes). With `false` every `ncalrpc` connection stays on its Unix socket.
    ///
    /// Windows has no such switch (`ncalrpc` is ALPC there, the kernel's fast local path).
    pub fn local_shared_memory(mut self, yes: bool) -> Self {
        self.local_shm = yes;
        self
    }
    /// Speaks TLS (1.2 or 1.3, rustls) on every `ncacn_ip_tcp` endpoint of this server, with
    /// the certificate and the client-certificate rule of `tls` (feature `tls`); other
    /// carriers are unchanged. Each handshake runs on its connection's own thread and must
    /// finish within [`TLS_HANDSHAKE_TIMEOUT`] (a client that stalls or sends garbage is
    /// dropped alone), at most [`MAX_TLS_HANDSHAKES`] at once; the client's certificate reaches
    /// methods in
    /// [`Caller::peer_certificate`].
    ///
    /// Windows counterpart: `RpcServerRegisterAuthInfo` with an Schannel credential.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: super::TlsServerConfig) -> Self {
        self.tls = Some(tls);
        self
    }
    /// The tokio runtime that runs the calls of async procedures (`async fn` methods of an
    /// `#[interface]` trait, [`Dispatch::dispatch_async`]; feature `tokio`). Such a call holds
    /// no thread while it awaits, so any number of them (up to
    /// [`max_calls_per_connection`](Self::max_calls_per_connection) per connection) can wait
    /// at once whatever [`max_calls`](Self::max_calls) is; `max_calls` bounds the plain
    /// procedures only. Timeouts, cancellation ([`CallContext::is_cancelled`],
    /// [`CallContext::cancelled`]), context handles and the caller's identity work as for plain
    /// procedures, and [`Server::stop`] waits for async calls too (call it outside the
    /// runtime's threads, or from `spawn_blocking`, so those calls can finish). The runtime
    /// needs its time driver (`enable_time`) for [`CallContext::cancelled`]. Without a
    /// runtime, calls of async procedures fault with `RPC_S_CALL_FAILED` (1726).
    ///
    /// Windows counterpart: asynchronous server routines (`RpcAsyncCompleteCall` answers
    /// them), which run on the RPC runtime's own threads; here they run on the runtime given.
    #[cfg(feature = "tokio")]
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }
}

/// How long a client has to finish the TLS handshake with a server (feature `tls`). Windows
/// counterpart: none (`rpcrt4` has no TLS carrier).
#[cfg(feature = "tls")]
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many TLS handshakes a server runs at once (feature `tls`): a connection accepted while
/// that many are in progress is closed at once, so that clients that never finish their
/// handshake cannot tie up more than that many threads.
///
/// Windows counterpart: none (`rpcrt4` has no TLS carrier; see [`super::TlsServerConfig`]).
#[cfg(feature = "tls")]
pub const MAX_TLS_HANDSHAKES: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Job>,
    idle: usize,
    threads: usize,
    stop: bool,
}

/// The threads that run calls (at most `max` at once).
struct Pool {
    max: usize,
    state: Mutex<PoolState>,
    cv: Condvar,
}

impl Pool {
    fn submit(self: &Arc<Pool>, job: Job) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.queue.push_back(job);
        if st.idle == 0 && st.threads < self.max {
            st.threads += 1;
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("ipckit-rpc-call".into())
                .spawn(move || me.work());
            if spawned.is_err() {
                st.threads -= 1;
            }
        } else {
            self.cv.notify_one();
        }
    }

    fn work(self: Arc<Pool>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = st.queue.pop_front() {
                drop(st);
                job();
                st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if st.stop {
                st.threads -= 1;
                self.cv.notify_all();
                return;
            }
            st.idle += 1;
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            st.idle -= 1;
        }
    }
}

struct Conn {
    link: Box<dyn Link>,
    proto: Mutex<ServerProto>,
    caller: Arc<Caller>,
    contexts: Arc<ContextTable>,
    cancels: Mutex<HashMap<u32, Arc<CancelFlag>>>,
    /// Answers completed in the protocol state but not yet written: a graceful stop waits for
    /// them too (the state's in-flight count drops before the answer is sent).
    answering: AtomicUsize,
    /// The decoder of received bytes, held by whoever reads the connection: its own thread, or
    /// a rescuer while that thread runs a call (see [`Watch`]).
    dec: Mutex<Decoder>,
    /// When the call the connection's thread runs itself started (ns since the server's epoch),
    /// 0 while it runs none.
    inline_since: AtomicU64,
    /// A rescuer reads the connection now.
    rescuing: AtomicBool,
    /// A rescuer found the connection ended.
    broken: AtomicBool,
}

/// The watcher of calls that connection threads run themselves.
///
/// A connection's thread runs a call itself when nothing else it received waits to be decoded:
/// that saves the hand-off to a pool thread (a context switch on one core, a third of a small
/// call's cost). Meanwhile nobody reads the connection, so the watcher looks every millisecond
/// and lets a rescuer thread read on (cancels, further calls) once such a call has run for a
/// millisecond. It sleeps, costing nothing, once no call has started inline for 100 ms.
struct Watch {
    epoch: Instant,
    /// When the last inline call started (ns since `epoch`).
    last: AtomicU64,
    started: AtomicBool,
    sleeping: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

const RESCUE_AFTER: Duration = Duration::from_millis(1);
const WATCH_IDLE: Duration = Duration::from_millis(100);

impl Watch {
    fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }
}

struct Shared {
    opts: ServerOptions,
    ns: Namespace,
    interfaces: Vec<Arc<dyn Dispatch>>,
    pool: Arc<Pool>,
    stopping: AtomicBool,
    next_conn: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    conns_cv: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    wakers: Mutex<Vec<OwnedFd>>,
    watch: Arc<Watch>,
    /// The threads of TLS handshakes, with their sockets (duplicates), so that `stop` can end
    /// and join them; finished ones are dropped when the next handshake starts.
    #[cfg(feature = "tls")]
    handshakes: Mutex<Vec<(OwnedFd, JoinHandle<()>)>>,
}

/// An RPC server: interfaces registered, listening on endpoints.
///
/// Windows counterpart: the server side of `rpcrt4`: `RpcServerRegisterIf` ([`Server::new`]
/// with the dispatchers), `RpcServerUseProtseqEp` + `RpcServerListen` ([`Server::listen`]),
/// `RpcMgmtStopServerListening` + `RpcMgmtWaitServerListen` ([`Server::stop`]). Unlike
/// Windows, listening starts per endpoint at once, and there is no process-wide server:
/// several `Server`s may live in one process.
///
/// Calls run on a pool of at most [`ServerOptions::max_calls`] threads; many calls of one
/// connection run concurrently (on `ncacn_np` they take turns, one at a time per client). A
/// call that arrives alone on a socket connection runs on that connection's own thread (no
/// hand-off to the pool, which on one core is a third of a small call's cost); should it run
/// longer than a millisecond, another thread reads the connection on meanwhile. Such calls,
/// at most one per connection, are not counted against `max_calls`.
/// When a client disconnects or dies, the rundowns of its open context handles run once its
/// running calls have returned.
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("interfaces", &self.shared.interfaces.len())
            .finish()
    }
}

impl Server {
    /// A server offering `interfaces` (`RpcServerRegisterIf` for each).
    pub fn new(opts: ServerOptions, interfaces: Vec<Arc<dyn Dispatch>>) -> Server {
        let ns = opts.namespace.clone().unwrap_or_else(Namespace::from_env);
        Server {
            shared: Arc::new(Shared {
                pool: Arc::new(Pool {
                    max: opts.max_calls,
                    state: Mutex::default(),
                    cv: Condvar::new(),
                }),
                opts,
                ns,
                interfaces,
                stopping: AtomicBool::new(false),
                next_conn: AtomicU64::new(0),
                watch: Arc::new(Watch {
                    epoch: Instant::now(),
                    last: AtomicU64::new(0),
                    started: AtomicBool::new(false),
                    sleeping: AtomicBool::new(false),
                    lock: Mutex::new(()),
                    cv: Condvar::new(),
                }),
                conns: Mutex::default(),
                conns_cv: Condvar::new(),
                threads: Mutex::default(),
                wakers: Mutex::default(),
                #[cfg(feature = "tls")]
                handshakes: Mutex::default(),
            }),
        }
    }

    /// Listens on a string binding (`RpcServerUseProtseqEp` and `RpcServerListen`) and
    /// returns the binding clients use (for `ncacn_ip_tcp:host[0]`, with the port chosen).
    ///
    /// `ncalrpc:[name]`: a socket in the user's private `RUNTIME/rpc/` folder (other users
    /// cannot reach it). `ncacn_np:[\pipe\name]`: an ipckit named pipe (the same access
    /// rules as pipes). `ncacn_ip_tcp:host[port]`: TCP on `host` (empty: every address).
    ///
    /// A binding without endpoint (`ncalrpc:`, `ncacn_ip_tcp:host`, `ncacn_np:`) gets a
    /// dynamic one (`RpcServerUseProtseq`): a fresh name, or a port the kernel chooses; the
    /// returned binding names it. Register it with the endpoint mapper
    /// ([`crate::broker::BrokerClient::register_endpoint`], Windows: `RpcEpRegister`) so that
    /// clients with a binding without endpoint find it.
    pub fn listen(&self, binding: &str) -> Result<Binding> {
        let b = Binding::parse(binding)?;
        let b = if b.endpoint().is_some() {
            b
        } else {
            let n = DYNAMIC.fetch_add(1, Ordering::Relaxed);
            let pid = std::process::id();
            let ep = match b.protseq() {
                Protseq::Tcp => "0".to_owned(),
                Protseq::Local => format!("dyn-{pid}-{n}"),
                Protseq::NamedPipe => format!(r"\pipe\ipckit-dyn-{pid}-{n}"),
            };
            b.with_endpoint(&ep)?
        };
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "the server was stopped",
            ));
        }
        match b.protseq() {
            Protseq::Local | Protseq::Tcp => {
                let listener = link::listen_socket(&b, &self.shared.ns)?;
                self.serve_listener(listener)
            }
            Protseq::NamedPipe => {
                let name = link::pipe_name(&b)?;
                let opts = crate::pipe::ServerOptions::new()
                    .unlimited_instances()
                    .namespace(self.shared.ns.clone());
                let first = opts.create(&name)?;
                self.spawn_listening("ipckit-rpc-pipe", move |shared, wake| {
                    pipe_loop(shared, opts, name, first, wake)
                })?;
                Ok(b)
            }
        }
    }

    /// Serves `ncalrpc` connections on an inherited listening Unix socket: the one systemd
    /// passes to a socket-activated service (`LISTEN_FDS`), bound to the endpoint's path in the
    /// user's `RUNTIME/rpc/` folder. `binding` names the endpoint (`ncalrpc:[name]`); the socket
    /// file belongs to whoever made the socket and is left in place when the server stops.
    ///
    /// Windows counterpart: none (`rpcss` starts services on demand through the endpoint
    /// mapper); the nearest is `RpcServerUseProtseqEp` on an endpoint another process prepared.
    ///
    /// Errors: [`ErrorKind::InvalidParameter`] when `binding` is not `ncalrpc` with an
    /// endpoint, or `listener` is not a listening Unix stream socket.
    pub fn listen_inherited(&self, binding: &str, listener: OwnedFd) -> Result<Binding> {
        let b = Binding::parse(binding)?;
        if b.protseq() != Protseq::Local || b.endpoint().is_none() {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!("{b}: an inherited socket serves an ncalrpc endpoint"),
            ));
        }
        if !socket::is_unix_stream(&listener) || !socket::is_listening(&listener) {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "the inherited descriptor is not a listening Unix stream socket",
            ));
        }
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "the server was stopped",
            ));
        }
        self.serve_listener(SockListener {
            fd: listener,
            protseq: Protseq::Local,
            file: None,
            binding: b,
        })
    }

    /// Starts the accepting thread of a listening socket.
    fn serve_listener(&self, listener: SockListener) -> Result<Binding> {
        let public = listener.binding.clone();
        self.spawn_listening("ipckit-rpc-accept", move |shared, wake| {
            accept_loop(shared, listener, wake)
        })?;
        tracing::debug!("rpc: listening on {public}");
        Ok(public)
    }

    /// Starts a thread that waits for clients: `run` gets the end of a socket that `stop`
    /// writes to, and the thread is joined by `stop`.
    fn spawn_listening(
        &self,
        name: &str,
        run: impl FnOnce(Arc<Shared>, OwnedFd) + Send + 'static,
    ) -> Result<()> {
        let (wake_r, wake_w) = socket::stream_pair()?;
        self.shared
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(wake_w);
        let shared = self.shared.clone();
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(shared, wake_r))
            .map_err(|e| Error::from_io("cannot start a thread", e))?;
        self.shared
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(h);
        Ok(())
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Stops gracefully: no new connections; calls that arrive from now on fault with
    /// `RPC_S_SERVER_UNAVAILABLE` (1722); calls running finish and are answered; then every
    /// connection is closed (running context-handle rundowns) and the endpoints removed.
    /// Windows: `RpcMgmtStopServerListening` followed by `RpcMgmtWaitServerListen`.
    pub fn stop(&self) {
        let sh = &self.shared;
        if sh.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        for w in sh
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = socket::send_all(&w, &[b"x"]);
        }
        // Handshakes in progress end now (their clients see the connection close).
        #[cfg(feature = "tls")]
        {
            let hs: Vec<_> = sh
                .handshakes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .collect();
            for (fd, _) in &hs {
                socket::shutdown(fd, true, true);
            }
            for (_, h) in hs {
                let _ = h.join();
            }
        }
        // Wait for calls in flight, then close connections.
        let mut conns = sh.conns.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            for c in conns.values() {
                let busy = c
                    .proto
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .in_flight();
                if busy == 0 && c.answering.load(Ordering::Acquire) == 0 {
                    c.link.shutdown();
                }
            }
            if conns.is_empty() {
                break;
            }
            conns = sh
                .conns_cv
                .wait_timeout(conns, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(conns);
        let threads: Vec<_> = sh
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
        {
            let _g = sh.watch.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.watch.cv.notify_all();
        }
        let mut st = sh.pool.state.lock().unwrap_or_else(|e| e.into_inner());
        st.stop = true;
        sh.pool.cv.notify_all();
        while st.threads > 0 {
            st = sh.pool.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: Arc<Shared>, listener: SockListener, wake: OwnedFd) {
    while let Ok(Some(0)) = socket::wait_readable(&[listener.fd.as_fd(), wake.as_fd()], None) {
        if shared.stopping.load(Ordering::Acquire) {
            break;
        }
        match socket::accept_now(&listener.fd) {
            Ok(Some(fd)) => {
                let caller = link::socket_caller(listener.protseq, &fd);
                #[cfg(feature = "tls")]
                if listener.protseq == Protseq::Tcp
                    && let Some(tls) = &shared.opts.tls
                {
                    spawn_tls_conn(&shared, tls.clone(), fd, caller);
                    continue;
                }
                let link: Box<dyn Link> = match listener.protseq {
                    Protseq::Local => Box::new(super::shm::LrpcServerLink::new(
                        fd,
                        shared.ns.clone(),
                        shared.opts.local_shm,
                    )),
                    _ => Box::new(SockLink::new(fd)),
                };
                spawn_conn(&shared, link, caller);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("rpc: accept on {} failed: {e}", listener.binding);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    drop(listener);
}

/// Runs the TLS handshake of an accepted socket on a thread of its own, then serves it.
#[cfg(feature = "tls")]
fn spawn_tls_conn(
    shared: &Arc<Shared>,
    tls: super::TlsServerConfig,
    fd: OwnedFd,
    mut caller: Caller,
) {
    let mut hs = shared.handshakes.lock().unwrap_or_else(|e| e.into_inner());
    // Under the lock `stop` takes to end handshakes: one of us sees the other.
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    hs.retain(|(_, h)| !h.is_finished());
    if hs.len() >= MAX_TLS_HANDSHAKES {
        tracing::warn!(
            "rpc: {MAX_TLS_HANDSHAKES} TLS handshakes in progress: closing the connection of {:?}",
            caller.address
        );
        return;
    }
    let dup = match crate::sys::fd::duplicate(&fd) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("rpc: cannot start a TLS handshake: {e}");
            return;
        }
    };
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("ipckit-rpc-tls".into())
        .spawn(move || {
            let deadline = Instant::now() + TLS_HANDSHAKE_TIMEOUT;
            match super::tls::accept(&tls, fd, deadline) {
                Ok((link, cert)) => {
                    caller.peer_certificate = cert;
                    if !sh.stopping.load(Ordering::Acquire) {
                        spawn_conn(&sh, Box::new(link), caller);
                    }
                }
                Err(e) => {
                    tracing::debug!("rpc: TLS handshake with {:?} failed: {e}", caller.address);
                }
            }
        });
    match spawned {
        Ok(h) => hs.push((dup, h)),
        Err(e) => tracing::warn!("rpc: cannot start a TLS handshake thread: {e}"),
    }
}

fn pipe_loop(
    shared: Arc<Shared>,
    opts: crate::pipe::ServerOptions,
    name: String,
    first: crate::pipe::NamedPipeServer,
    wake: OwnedFd,
) {
    let mut inst = Some(first);
    while !shared.stopping.load(Ordering::Acquire) {
        let mut server = match inst.take() {
            Some(s) => s,
            None => match opts.create(&name) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("rpc: cannot create an instance of {name}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        // Sleeps until a client comes or `stop` writes to `wake`: no periodic wake-up.
        match server.connect_or_woken(wake.as_fd()) {
            Ok(false) => break,
            Ok(true) => {
                // The next instance exists before this one can end: otherwise a client that
                // closes at once would leave the pipe without any instance for a moment, and a
                // client connecting then would find no pipe at all (not a busy one to wait for).
                inst = opts.create(&name).ok();
                let c = server.client();
                let caller = Caller {
                    protseq: Protseq::NamedPipe,
                    pid: c.map(|c| c.pid),
                    uid: c.map(|c| c.uid),
                    gid: c.map(|c| c.gid),
                    address: None,
                    peer_certificate: None,
                };
                match PipeLink::new(server) {
                    Ok(l) => spawn_conn(&shared, Box::new(l), caller),
                    Err(e) => tracing::warn!("rpc: cannot serve a client of {name}: {e}"),
                }
            }
            Err(e) => {
                tracing::debug!("rpc: pipe connect on {name}: {e}");
            }
        }
    }
}

fn spawn_conn(shared: &Arc<Shared>, link: Box<dyn Link>, caller: Caller) {
    let ids = shared
        .interfaces
        .iter()
        .map(|d| (d.interface(), d.procedures()))
        .collect();
    let conn = Arc::new(Conn {
        link,
        proto: Mutex::new(ServerProto::new(
            ids,
            shared.opts.max_body,
            shared.opts.max_calls_per_connection,
        )),
        caller: Arc::new(caller),
        contexts: Arc::default(),
        cancels: Mutex::default(),
        answering: AtomicUsize::new(0),
        dec: Mutex::new(Decoder::new(shared.opts.max_body)),
        inline_since: AtomicU64::new(0),
        rescuing: AtomicBool::new(false),
        broken: AtomicBool::new(false),
    });
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    shared
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, conn.clone());
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("ipckit-rpc-conn".into())
        .spawn(move || {
            serve_conn(&sh, &conn);
            conn.link.shutdown();
            drop(conn);
            sh.conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            sh.conns_cv.notify_all();
        });
    if spawned.is_err() {
        shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// What reading a connection came to.
enum Flow {
    /// The connection ended (or broke the protocol): close it.
    Close,
    /// Run this call on the reading thread, then read on.
    Inline(Box<dyn FnOnce() + Send>),
    /// (A rescuer) the connection's thread finished its call: give the reading back.
    GiveBack,
}

fn serve_conn(shared: &Arc<Shared>, conn: &Arc<Conn>) {
    loop {
        let mut dec = conn.dec.lock().unwrap_or_else(|e| e.into_inner());
        if conn.broken.load(Ordering::Acquire) {
            return;
        }
        match read_frames(shared, conn, &mut dec, false) {
            Flow::Close | Flow::GiveBack => return,
            Flow::Inline(job) => {
                // Let a rescuer read while the call runs, should it run long.
                drop(dec);
                inline_started(shared, conn);
                job();
                conn.inline_since.store(0, Ordering::Release);
            }
        }
    }
}

/// Notes that `conn`'s thread runs a call itself, and wakes (or starts) the watcher.
fn inline_started(shared: &Arc<Shared>, conn: &Arc<Conn>) {
    let w = &shared.watch;
    let now = w.now();
    conn.inline_since.store(now, Ordering::Release);
    w.last.store(now, Ordering::SeqCst);
    // Store, then look (the watcher announces, then looks): one of us sees the other.
    if w.sleeping.load(Ordering::SeqCst) {
        let _g = w.lock.lock().unwrap_or_else(|e| e.into_inner());
        w.cv.notify_one();
    }
    // A load first: the exchange (a locked write) is needed once per server, not per call.
    if !w.started.load(Ordering::Acquire) && !w.started.swap(true, Ordering::AcqRel) {
        let weak = Arc::downgrade(shared);
        let watch = w.clone();
        if std::thread::Builder::new()
            .name("ipckit-rpc-watch".into())
            .spawn(move || watch_loop(&weak, &watch))
            .is_err()
        {
            w.started.store(false, Ordering::Release);
        }
    }
}

fn watch_loop(shared: &std::sync::Weak<Shared>, w: &Arc<Watch>) {
    loop {
        let now = w.now();
        if now.saturating_sub(w.last.load(Ordering::SeqCst)) > WATCH_IDLE.as_nanos() as u64 {
            let g = w.lock.lock().unwrap_or_else(|e| e.into_inner());
            w.sleeping.store(true, Ordering::SeqCst);
            let idle = w.now().saturating_sub(w.last.load(Ordering::SeqCst))
                > WATCH_IDLE.as_nanos() as u64;
            let stopping = shared
                .upgrade()
                .is_none_or(|s| s.stopping.load(Ordering::Acquire));
            if stopping {
                w.started.store(false, Ordering::Release);
                return;
            }
            let g = if idle {
                w.cv.wait(g).unwrap_or_else(|e| e.into_inner())
            } else {
                g
            };
            w.sleeping.store(false, Ordering::SeqCst);
            drop(g);
            continue;
        }
        let Some(sh) = shared.upgrade() else { return };
        if sh.stopping.load(Ordering::Acquire) {
            return;
        }
        let late: Vec<Arc<Conn>> = sh
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|c| {
                let since = c.inline_since.load(Ordering::Acquire);
                since != 0 && now.saturating_sub(since) > RESCUE_AFTER.as_nanos() as u64
            })
            .cloned()
            .collect();
        for c in late {
            if c.rescuing.swap(true, Ordering::AcqRel) {
                continue;
            }
            let (sh2, c2) = (sh.clone(), c.clone());
            if std::thread::Builder::new()
                .name("ipckit-rpc-rescue".into())
                .spawn(move || rescue(&sh2, &c2))
                .is_err()
            {
                c.rescuing.store(false, Ordering::Release);
            }
        }
        drop(sh);
        std::thread::sleep(RESCUE_AFTER);
    }
}

/// Reads `conn` while its thread runs a call, until that call returns.
fn rescue(shared: &Arc<Shared>, conn: &Arc<Conn>) {
    {
        let mut dec = conn.dec.lock().unwrap_or_else(|e| e.into_inner());
        if conn.inline_since.load(Ordering::Acquire) != 0
            && matches!(read_frames(shared, conn, &mut dec, true), Flow::Close)
        {
            conn.broken.store(true, Ordering::Release);
        }
    }
    conn.rescuing.store(false, Ordering::Release);
}

/// Reads and handles frames. Calls go to the pool, or (not `rescuing`, and nothing else
/// received) come back to run on this thread. A rescuer gives the reading back once the
/// connection's thread has finished its call.
fn read_frames(shared: &Arc<Shared>, conn: &Arc<Conn>, dec: &mut Decoder, rescuing: bool) -> Flow {
    loop {
        if rescuing && conn.inline_since.load(Ordering::Acquire) == 0 {
            return Flow::GiveBack;
        }
        // Every link wakes from `recv` when `stop` shuts it down. A rescuer looks every
        // millisecond whether to give the reading back.
        let wait = rescuing.then_some(RESCUE_AFTER);
        let mut timed_out = false;
        match dec.fill(|buf| {
            conn.link.recv(buf, wait).map(|n| {
                timed_out = n.is_none();
                n.unwrap_or(0)
            })
        }) {
            Ok(0) if timed_out => {
                if shared.stopping.load(Ordering::Acquire) {
                    return Flow::Close;
                }
                continue;
            }
            Ok(0) | Err(_) => return Flow::Close,
            Ok(_) => {}
        }
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("rpc: closing a connection that broke the protocol: {e}");
                    let _ = conn.link.send(&[&proto::fault_frame(
                        0,
                        status::PROTOCOL_ERROR,
                        &e.to_string(),
                    )]);
                    return Flow::Close;
                }
            };
            let ev = conn
                .proto
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .on_frame(frame);
            match ev {
                Err(e) => {
                    tracing::debug!("rpc: closing a connection that broke the protocol: {e}");
                    let _ = conn.link.send(&[&proto::fault_frame(
                        0,
                        status::PROTOCOL_ERROR,
                        &e.to_string(),
                    )]);
                    return Flow::Close;
                }
                Ok(ServerEvent::Send(bytes)) => {
                    if conn.link.send(&[&bytes]).is_err() {
                        return Flow::Close;
                    }
                }
                Ok(ServerEvent::None) => {}
                Ok(ServerEvent::Cancel { call_id, fault }) => {
                    if let Some(flag) = conn
                        .cancels
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&call_id)
                    {
                        flag.cancel();
                    }
                    if conn.link.send(&[&fault]).is_err() {
                        return Flow::Close;
                    }
                }
                Ok(ServerEvent::Call(call)) => {
                    let received = Instant::now();
                    let deadline = match (call.timeout, shared.opts.call_timeout) {
                        (Some(a), Some(b)) => Some(received + a.min(b)),
                        (a, b) => a.or(b).map(|t| received + t),
                    };
                    let cancelled = Arc::new(CancelFlag::default());
                    if !call.oneway {
                        conn.cancels
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(call.call_id, cancelled.clone());
                    }
                    let sh = shared.clone();
                    let c = conn.clone();
                    let job = move || run_call(&sh, &c, call, deadline, cancelled);
                    if !rescuing && dec.is_drained() {
                        return Flow::Inline(Box::new(job));
                    } else {
                        shared.pool.submit(Box::new(job));
                    }
                }
            }
        }
    }
}

fn run_call(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    call: proto::Call,
    deadline: Option<Instant>,
    cancelled: Arc<CancelFlag>,
) {
    let id = call.call_id;
    let outcome = if shared.stopping.load(Ordering::Acquire) {
        Outcome::Fault(status::SERVER_UNAVAILABLE, "the server is stopping".into())
    } else if deadline.is_some_and(|d| Instant::now() >= d) || cancelled.is_set() {
        // Counted as being answered before the protocol state lets go of the call, so that a
        // graceful stop waits for the fault to go out.
        conn.answering.fetch_add(1, Ordering::AcqRel);
        let out = conn
            .proto
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(id);
        conn.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(bytes) = out {
            let _ = conn.link.send(&[&bytes]);
        }
        conn.answering.fetch_sub(1, Ordering::AcqRel);
        return;
    } else {
        let idx = conn
            .proto
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bound()
            .unwrap_or(0);
        let d = &shared.interfaces[idx];
        let ctx = CallContext {
            caller: conn.caller.clone(),
            call_id: id,
            opnum: call.opnum,
            deadline,
            cancelled,
            contexts: conn.contexts.clone(),
        };
        let run = || match d.dispatch_async(&ctx, call.opnum, call.args()) {
            Some(fut) => Err(fut),
            None => Ok(d.dispatch(&ctx, call.opnum, call.args())),
        };
        match std::panic::catch_unwind(AssertUnwindSafe(run)) {
            Ok(Ok(o)) => o,
            Ok(Err(fut)) => return run_async(shared, conn, id, call.oneway, fut),
            Err(_) => Outcome::Fault(status::CALL_FAILED, "the server method panicked".into()),
        }
    };
    answer(conn, id, call.oneway, outcome);
}

/// Answers call `id` (nothing for a one-way call).
fn answer(conn: &Arc<Conn>, id: u32, oneway: bool, outcome: Outcome) {
    if oneway {
        return;
    }
    conn.answering.fetch_add(1, Ordering::AcqRel);
    conn.cancels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    // A large result goes out behind its header without being copied.
    let r = match outcome {
        Outcome::Ok(body) if body.len() > 64 * 1024 => {
            let h = conn
                .proto
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .complete_ok_header(id, body.len());
            match h {
                Some(Ok(head)) => conn.link.send(&[&head, &body]),
                Some(Err(fault)) => conn.link.send(&[&fault]),
                None => Ok(()),
            }
        }
        o => {
            let bytes = conn
                .proto
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .complete(id, o);
            match bytes {
                Some(b) => conn.link.send(&[&b]),
                None => Ok(()),
            }
        }
    };
    conn.answering.fetch_sub(1, Ordering::AcqRel);
    if let Err(e) = r {
        tracing::debug!("rpc: cannot send the answer to call {id}: {e}");
    }
}

/// Runs the call of an async procedure on the server's runtime; the thread returns at once.
fn run_async(shared: &Arc<Shared>, conn: &Arc<Conn>, id: u32, oneway: bool, fut: CallFuture) {
    #[cfg(feature = "tokio")]
    if let Some(rt) = &shared.opts.runtime {
        let mut fut = fut;
        // A first poll here, in the runtime's context: a method that does not wait completes
        // without a hand-off to a runtime worker (a wake-up and a thread switch each way).
        // Should it wait, the runtime polls it again at once, with its own waker.
        let first = {
            let _in_runtime = rt.enter();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)))
        };
        match first {
            Ok(std::task::Poll::Ready(o)) => return answer(conn, id, oneway, o),
            Ok(std::task::Poll::Pending) => {}
            Err(_) => {
                let o = Outcome::Fault(status::CALL_FAILED, "the server method panicked".into());
                return answer(conn, id, oneway, o);
            }
        }
        // Answers even if the future never completes: a panic, a runtime shut down.
        let mut guard = AsyncAnswer {
            conn: conn.clone(),
            id,
            oneway,
            done: false,
        };
        rt.spawn(async move {
            let o = fut.await;
            guard.done = true;
            answer(&guard.conn, guard.id, guard.oneway, o);
        });
        return;
    }
    let _ = (shared, fut);
    let msg = "an async procedure, and the server has no runtime (ServerOptions::runtime)";
    let o = Outcome::Fault(status::CALL_FAILED, msg.into());
    answer(conn, id, oneway, o);
}

/// Answers an async call whose future was dropped unfinished.
#[cfg(feature = "tokio")]
struct AsyncAnswer {
    conn: Arc<Conn>,
    id: u32,
    oneway: bool,
    done: bool,
}

#[cfg(feature = "tokio")]
impl Drop for AsyncAnswer {
    fn drop(&mut self) {
        if !self.done {
            let msg = "the server method panicked, or the runtime shut down";
            let o = Outcome::Fault(status::CALL_FAILED, msg.into());
            answer(&self.conn, self.id, self.oneway, o);
        }
    }
}

/// The outcome of a method that returned `r`, encoded (what generated dispatchers use).
pub fn outcome<T: serde::Serialize, E: serde::Serialize>(r: std::result::Result<T, E>) -> Outcome {
    let enc = match &r {
        Ok(v) => super::encode(v),
        Err(e) => super::encode(e),
    };
    match (r.is_ok(), enc) {
        (true, Ok(b)) => Outcome::Ok(b),
        (false, Ok(b)) => Outcome::AppError(b),
        (_, Err(e)) => Outcome::Fault(
            status::CALL_FAILED,
            format!("cannot encode the result: {e}"),
        ),
    }
}
