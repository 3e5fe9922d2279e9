//! The RPC benchmarks' driver, and the raw baselines they are compared with.
//!
//! An RPC benchmark does not fit the message [`Channel`](crate::Channel): the client makes a
//! call and the server's dispatch answers it, on the server's own threads. So an RPC system
//! provides an [`RpcSystem`] (how the peer serves, how the harness connects, one null call,
//! one bulk call) and this driver does the rest with the harness's launcher, CPU pinning,
//! statistics and report, exactly as the channel drivers do.
//!
//! The peer process is the **server**; the harness is the client and does the timing.
//! Cases (per CPU placement):
//!
//! * `null-call/<placement>`: a call with one `u64` argument returning it (the RPC "null
//!   call": the cost of the machinery, not of the data). Warm-up, then the round-trip rounds
//!   of the plan ([`Params::rtt_rounds`] with [`Params::rtt_round`] budgets); median and p99
//!   of every call, in ns.
//! * `arg-1MiB/<placement>`: a call with a 1 MiB byte-string argument returning its length
//!   (checked). Warm-up, then the streaming rounds of the plan; each round's MiB/s of argument
//!   data, median over the rounds.
//!
//! The raw baselines [`RawUnix`] (`rpc-unix-stream`) and [`RawTcp`] (`rpc-tcp-loopback`) do
//! the same exchanges with no RPC at all: a 16-byte header (operation, length) and the
//! argument bytes written to a stream socket, a single-threaded server that reads them and
//! writes back an 8-byte answer. They are the floor of any RPC over that carrier.
//!
//! The harness ends a case with [`RpcCaller::quit`]; the server process then exits (and, like
//! every peer, it dies with the harness).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::affinity::PinGuard;
use crate::channel::{ErasedTransport, Job, Measurement};
use crate::params::{Budget, Params};
use crate::peer::{Launcher, PeerEnv, invalid};
use crate::raw::{TempDir, path_arg};
use crate::stats::{Summary, median_f64};

/// Size of the bulk argument.
pub const BULK: usize = 1 << 20;

/// The client side of one connection, as the driver uses it.
pub trait RpcCaller {
    /// The null call: sends `x`, returns what the server answered (must be `x`).
    fn null(&mut self, x: u64) -> io::Result<u64>;
    /// The bulk call: sends `data`, returns the length the server counted.
    fn bulk(&mut self, data: &Arc<Vec<u8>>) -> io::Result<u64>;
    /// Tells the server process to exit (its answer, if any, may be lost).
    fn quit(&mut self) -> io::Result<()>;
}

/// One RPC system on one carrier.
pub trait RpcSystem: Sync + 'static {
    /// The client type.
    type Caller: RpcCaller;
    /// Harness: the address the peer will serve on; `dir` is a private directory that lives
    /// as long as the case.
    fn address(&self, dir: &Path) -> io::Result<String>;
    /// Peer: serve at `addr` until a `quit` call arrives (return then) or the harness is gone
    /// (`alive` fails; return its error).
    fn serve(&self, addr: &str, alive: &dyn Fn() -> io::Result<()>) -> io::Result<()>;
    /// Harness: connect to `addr`; `Ok(None)` while nothing listens there yet.
    fn connect(&self, addr: &str) -> io::Result<Option<Self::Caller>>;
}

/// Wraps an [`RpcSystem`] as a registry entry.
#[derive(Debug)]
pub struct Rpc<S>(pub S);

/// Sleeps in slices until `stop` is set, checking `alive` in between.
pub fn wait_quit(stop: &AtomicBool, alive: &dyn Fn() -> io::Result<()>) -> io::Result<()> {
    while !stop.load(Ordering::Acquire) {
        alive()?;
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Maps a "nothing listens there yet" error to `Ok(None)`.
pub fn not_yet<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The carrier of the peer-crate comparisons (tarpc, tonic): a Unix stream socket or TCP on
/// 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub enum SocketCarrier {
    /// A Unix stream socket.
    Unix,
    /// TCP on 127.0.0.1.
    Tcp,
}

impl SocketCarrier {
    /// Where a server listens: the socket `file` in `dir`, or a free loopback port.
    pub fn address(self, dir: &Path, file: &str) -> io::Result<String> {
        Ok(match self {
            SocketCarrier::Unix => path_arg(&dir.join(file))?.to_owned(),
            SocketCarrier::Tcp => format!("127.0.0.1:{}", free_tcp_port()?),
        })
    }
}

/// The current-thread tokio runtime each peer-crate end runs on.
pub fn current_thread_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Any displayable error as an `io::Error`.
pub fn io_other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A free TCP port on 127.0.0.1 (bound and released; the peer binds it again).
pub fn free_tcp_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl<S: RpcSystem> ErasedTransport for Rpc<S> {
    fn run_parent(&self, job: &Job<'_>) -> io::Result<Vec<Measurement>> {
        let _pin = PinGuard::pin(job.placement.parent_cpu)?;
        let dir = TempDir::new()?;
        let addr = self.0.address(dir.path())?;
        let mut launcher = Launcher::new(job.exe, job.mechanism, job.placement, &[])?;
        launcher.spawn(&addr)?;
        let connected = launcher.wait_for("RPC server", || self.0.connect(&addr));
        let Some(peer) = launcher.take_process() else {
            return Err(io::Error::other("no peer started"));
        };
        let mut caller = match connected {
            Ok(c) => c,
            Err(e) => return Err(peer.fail(e)),
        };
        match measure(&mut caller, job) {
            Ok(m) => {
                let quit = caller.quit();
                drop(caller);
                match quit {
                    Ok(()) => peer.finish().map(|()| m),
                    Err(e) => Err(peer.fail(e)),
                }
            }
            Err(e) => {
                drop(caller);
                Err(peer.fail(e))
            }
        }
    }

    fn run_peer(&self, env: &PeerEnv) -> io::Result<()> {
        let liveness = env.liveness;
        self.0.serve(&env.addr, &move || liveness.check())
    }
}

fn measure<C: RpcCaller>(c: &mut C, job: &Job<'_>) -> io::Result<Vec<Measurement>> {
    let p = job.params;
    let place = job.placement.label;
    let mut out = Vec::new();

    let s = null_calls(c, p)?;
    let case = format!("null-call/{place}");
    out.push(Measurement::new(case.clone(), "median", s.median, "ns"));
    out.push(Measurement::new(case, "p99", s.p99, "ns"));

    let data = Arc::new((0..BULK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut round = |b: &Budget| -> io::Result<(u64, Duration)> {
        let start = Instant::now();
        let mut n = 0;
        loop {
            let got = c.bulk(&data)?;
            if got != BULK as u64 {
                return Err(invalid(format!(
                    "bulk call counted {got} bytes, sent {BULK}"
                )));
            }
            n += 1;
            // Bulk calls take milliseconds: the iteration floor of the streaming budgets is
            // cut by 8 so that slow systems keep rounds short.
            if n >= b.max_iters
                || (n >= b.min_iters.div_ceil(8).max(2) && start.elapsed() >= b.time)
            {
                return Ok((n, start.elapsed()));
            }
        }
    };
    round(&p.stream_warmup)?;
    let mut rates = Vec::new();
    for _ in 0..p.stream_rounds {
        let (n, t) = round(&p.stream_round)?;
        rates.push(n as f64 * BULK as f64 / t.as_secs_f64() / (1024.0 * 1024.0));
    }
    let v = median_f64(&rates).ok_or_else(|| invalid("no bulk rounds"))?;
    out.push(Measurement::new(
        format!("arg-1MiB/{place}"),
        "throughput",
        v,
        "MiB/s",
    ));
    Ok(out)
}

fn null_calls<C: RpcCaller>(c: &mut C, p: &Params) -> io::Result<Summary> {
    let mut x = 0u64;
    let mut call = |c: &mut C| -> io::Result<()> {
        x += 1;
        let got = c.null(x)?;
        if got != x {
            return Err(invalid(format!("null call answered {got}, sent {x}")));
        }
        Ok(())
    };
    let start = Instant::now();
    let mut n = 0;
    while !p.rtt_warmup.done(n, start.elapsed()) {
        call(c)?;
        n += 1;
    }
    let mut samples = Vec::new();
    for _ in 0..p.rtt_rounds {
        let round_start = Instant::now();
        let mut n = 0;
        loop {
            let t0 = Instant::now();
            call(c)?;
            let t1 = Instant::now();
            samples.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
            n += 1;
            if p.rtt_round.done(n, t1 - round_start) {
                break;
            }
        }
    }
    Summary::of(&mut samples).ok_or_else(|| invalid("no null-call samples"))
}

// ---------------------------------------------------------------------------------------
// Raw baselines.

const OP_NULL: u64 = 0;
const OP_BULK: u64 = 1;
const OP_QUIT: u64 = 2;

/// The raw client: one stream socket, a 16-byte header (operation, length) and the bytes.
#[derive(Debug)]
pub struct RawCaller<S> {
    s: S,
}

impl<S: Read + Write> RawCaller<S> {
    fn call(&mut self, op: u64, head_arg: u64, body: &[u8]) -> io::Result<u64> {
        let mut h = [0u8; 16];
        h[..8].copy_from_slice(&op.to_le_bytes());
        h[8..].copy_from_slice(&head_arg.to_le_bytes());
        if body.is_empty() {
            self.s.write_all(&h)?;
        } else {
            self.s.write_all(&h)?;
            self.s.write_all(body)?;
        }
        if op == OP_QUIT {
            return Ok(0);
        }
        let mut a = [0u8; 8];
        self.s.read_exact(&mut a)?;
        Ok(u64::from_le_bytes(a))
    }
}

impl<S: Read + Write> RpcCaller for RawCaller<S> {
    fn null(&mut self, x: u64) -> io::Result<u64> {
        self.call(OP_NULL, x, &[])
    }
    fn bulk(&mut self, data: &Arc<Vec<u8>>) -> io::Result<u64> {
        self.call(OP_BULK, data.len() as u64, data)
    }
    fn quit(&mut self) -> io::Result<()> {
        self.call(OP_QUIT, 0, &[]).map(|_| ())
    }
}

/// The raw server loop on one accepted connection; returns at `quit` or end of stream.
fn raw_serve_conn<S: Read + Write>(mut s: S) -> io::Result<()> {
    let mut body = vec![0u8; BULK];
    loop {
        let mut h = [0u8; 16];
        match s.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let op = u64::from_le_bytes(h[..8].try_into().unwrap_or_default());
        let arg = u64::from_le_bytes(h[8..].try_into().unwrap_or_default());
        let answer = match op {
            OP_NULL => arg,
            OP_BULK => {
                let len = usize::try_from(arg)
                    .ok()
                    .filter(|&l| l <= BULK)
                    .ok_or_else(|| invalid("bulk argument too large"))?;
                s.read_exact(&mut body[..len])?;
                len as u64
            }
            OP_QUIT => return Ok(()),
            _ => return Err(invalid(format!("unknown operation {op}"))),
        };
        s.write_all(&answer.to_le_bytes())?;
    }
}

/// Accepts one connection (non-blocking accept polled with `alive`) and serves it.
fn raw_accept_and_serve<S: Read + Write>(
    accept: impl Fn() -> io::Result<S>,
    alive: &dyn Fn() -> io::Result<()>,
) -> io::Result<()> {
    let conn = loop {
        match accept() {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                alive()?;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e),
        }
    };
    raw_serve_conn(conn)
}

/// `rpc-unix-stream`: the raw exchange over a Unix stream socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawUnix;

impl RpcSystem for RawUnix {
    type Caller = RawCaller<UnixStream>;
    fn address(&self, dir: &Path) -> io::Result<String> {
        Ok(path_arg(&dir.join("rpc.sock"))?.to_owned())
    }
    fn serve(&self, addr: &str, alive: &dyn Fn() -> io::Result<()>) -> io::Result<()> {
        let l = UnixListener::bind(addr)?;
        l.set_nonblocking(true)?;
        raw_accept_and_serve(
            || {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok(s)
            },
            alive,
        )
    }
    fn connect(&self, addr: &str) -> io::Result<Option<Self::Caller>> {
        Ok(not_yet(UnixStream::connect(addr))?.map(|s| RawCaller { s }))
    }
}

/// `rpc-tcp-loopback`: the raw exchange over TCP on 127.0.0.1 (`TCP_NODELAY`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawTcp;

impl RpcSystem for RawTcp {
    type Caller = RawCaller<TcpStream>;
    fn address(&self, _dir: &Path) -> io::Result<String> {
        Ok(format!("127.0.0.1:{}", free_tcp_port()?))
    }
    fn serve(&self, addr: &str, alive: &dyn Fn() -> io::Result<()>) -> io::Result<()> {
        let l = TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        raw_accept_and_serve(
            || {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                Ok(s)
            },
            alive,
        )
    }
    fn connect(&self, addr: &str) -> io::Result<Option<Self::Caller>> {
        let Some(s) = not_yet(TcpStream::connect(addr))? else {
            return Ok(None);
        };
        s.set_nodelay(true)?;
        Ok(Some(RawCaller { s }))
    }
}
