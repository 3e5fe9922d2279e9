//! ipckit's File Mapping and synchronisation objects, beside their raw baselines.
//!
//! - `ipckit-event` (baseline `shm-futex`): a message channel made of a named file mapping and
//!   auto-reset events, the way a Windows program pairs `MapViewOfFile` with `SetEvent` /
//!   `WaitForSingleObject`. One slot per direction; `ready` and `free` events per slot. Its
//!   round trip is two set → wake hand-offs plus the copies, against the raw futex ring's.
//! - `ipckit-semaphore` (baseline `shm-futex`): the same channel with semaphores (max 1).
//!
//! These two are one-slot hand-offs, measured for their round trip only: streaming through
//! them would measure the same wake-ups again (the shared-memory channel of a later release
//! is ipckit's streaming path).
//! - `ipckit-mutex` (baseline `atomic-cas`): uncontended `WaitForSingleObject` + `ReleaseMutex`
//!   on a named mutex, against a bare compare-exchange pair (0 → 1, 1 → 0) on shared memory; and
//!   against `pthread-robust`, a process-shared robust pthread mutex (lock + unlock).
//! - `ipckit-mutex-contended` (baseline `pthread-robust-contended`): two processes take turns
//!   acquiring one mutex as fast as they can (lock, bump a shared counter, unlock); the rate is
//!   acquisitions per second across both, which is bounded by the cross-process hand-off.

use std::hint::black_box;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipckit::mapping::{FileMapping, View, ViewAccess};
use ipckit::namespace::Namespace;
use ipckit::sync::{Event, Mutex, Options, Semaphore};

use crate::affinity::PinGuard;
use crate::channel::{Channel, ErasedTransport, Job, Measurement, Transport};
use crate::params::Params;
use crate::peer::{Launcher, Liveness, PeerEnv, invalid};
use crate::stats::Summary;

const SLOT: usize = 8 + 64 * 1024;
const MAP_LEN: u64 = 2 * SLOT as u64;
/// How long a data-path wait sleeps before checking that the other process still runs.
const LIVENESS_SLICE: Duration = Duration::from_millis(200);

fn io_err(e: ipckit::Error) -> io::Error {
    io::Error::other(e)
}

/// A private namespace for one case, removed when dropped.
struct CaseDir(PathBuf);

impl CaseDir {
    fn new() -> io::Result<CaseDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "ipckit-bench-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(CaseDir(p))
    }
}

impl Drop for CaseDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A signal one side posts and the other takes: an auto-reset event or a semaphore.
pub trait Signal: Sized {
    /// Creates the named signal, set or not.
    fn create(opts: &Options, initially: bool) -> ipckit::Result<Self>;
    /// Opens the named signal.
    fn open(opts: &Options) -> ipckit::Result<Self>;
    /// Signals it (`SetEvent`, `ReleaseSemaphore(1)`).
    fn post(&self) -> ipckit::Result<()>;
    /// Waits for it (`WaitForSingleObject`).
    fn take(&self, timeout: Duration) -> ipckit::Result<()>;
}

impl Signal for Event {
    fn create(opts: &Options, initially: bool) -> ipckit::Result<Self> {
        Event::create(opts, false, initially)
    }
    fn open(opts: &Options) -> ipckit::Result<Self> {
        Event::open(opts)
    }
    fn post(&self) -> ipckit::Result<()> {
        self.set()
    }
    fn take(&self, timeout: Duration) -> ipckit::Result<()> {
        self.wait(Some(timeout))
    }
}

impl Signal for Semaphore {
    fn create(opts: &Options, initially: bool) -> ipckit::Result<Self> {
        Semaphore::create(opts, u32::from(initially), 1)
    }
    fn open(opts: &Options) -> ipckit::Result<Self> {
        Semaphore::open(opts)
    }
    fn post(&self) -> ipckit::Result<()> {
        self.release(1).map(|_| ())
    }
    fn take(&self, timeout: Duration) -> ipckit::Result<()> {
        self.wait(Some(timeout))
    }
}

/// One end of the mapping + signals channel.
#[allow(missing_debug_implementations)]
pub struct SyncChan<S> {
    view: View,
    tx: usize,
    rx: usize,
    tx_ready: S,
    tx_free: S,
    rx_ready: S,
    rx_free: S,
    liveness: Liveness,
    _mapping: FileMapping,
    _dir: Option<CaseDir>,
}

fn take<S: Signal>(s: &S, liveness: &Liveness) -> io::Result<()> {
    loop {
        match s.take(LIVENESS_SLICE) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ipckit::ErrorKind::Timeout => liveness.check()?,
            Err(e) => return Err(io_err(e)),
        }
    }
}

impl<S: Signal> Channel for SyncChan<S> {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        take(&self.tx_free, &self.liveness)?;
        self.view.set(self.tx, msg.len() as u64).map_err(io_err)?;
        self.view.write(self.tx + 8, msg).map_err(io_err)?;
        self.tx_ready.post().map_err(io_err)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        take(&self.rx_ready, &self.liveness)?;
        let len = self.view.get::<u64>(self.rx).map_err(io_err)?;
        if len != buf.len() as u64 {
            return Err(invalid(format!(
                "expected a {}-byte message, got {len}",
                buf.len()
            )));
        }
        self.view.read(self.rx + 8, buf).map_err(io_err)?;
        self.rx_free.post().map_err(io_err)
    }
}

struct Names {
    ns: Namespace,
    tag: String,
}

impl Names {
    fn opts(&self, what: &str) -> io::Result<Options> {
        Ok(Options::named(&format!(r"Local\bench-{}-{what}", self.tag))
            .map_err(io_err)?
            .namespace(self.ns.clone()))
    }
    fn mapping(&self) -> String {
        format!(r"Local\bench-{}-map", self.tag)
    }
}

fn open_parent<S: Signal>(launcher: &mut Launcher<'_>) -> io::Result<SyncChan<S>> {
    let dir = CaseDir::new()?;
    let tag = std::process::id().to_string();
    let names = Names {
        ns: Namespace::at(&dir.0),
        tag: tag.clone(),
    };
    let mapping = FileMapping::builder()
        .name(&names.mapping())
        .map_err(io_err)?
        .size(MAP_LEN)
        .namespace(names.ns.clone())
        .create()
        .map_err(io_err)?;
    let view = mapping.map_view(ViewAccess::Write, 0, 0).map_err(io_err)?;
    let attached = Event::create(&names.opts("attached")?, true, false).map_err(io_err)?;
    let chan = SyncChan {
        view,
        tx: 0,
        rx: SLOT,
        tx_ready: S::create(&names.opts("a-ready")?, false).map_err(io_err)?,
        tx_free: S::create(&names.opts("a-free")?, true).map_err(io_err)?,
        rx_ready: S::create(&names.opts("b-ready")?, false).map_err(io_err)?,
        rx_free: S::create(&names.opts("b-free")?, true).map_err(io_err)?,
        liveness: Liveness::Child(rustix::process::getpid()),
        _mapping: mapping,
        _dir: None,
    };
    let addr = format!("{}\n{tag}", dir.0.display());
    launcher.spawn(&addr)?;
    launcher.wait_for("ipckit objects attach", || {
        Ok(attached.is_set().then_some(()))
    })?;
    Ok(SyncChan {
        liveness: launcher.liveness()?,
        _dir: Some(dir),
        ..chan
    })
}

fn open_peer<S: Signal>(peer: &PeerEnv) -> io::Result<SyncChan<S>> {
    let (dir, tag) = peer
        .addr
        .split_once('\n')
        .ok_or_else(|| invalid("bad address"))?;
    let names = Names {
        ns: Namespace::at(Path::new(dir)),
        tag: tag.to_owned(),
    };
    let mapping =
        FileMapping::open_in(&names.ns, &names.mapping(), ViewAccess::Write).map_err(io_err)?;
    let view = mapping.map_view(ViewAccess::Write, 0, 0).map_err(io_err)?;
    let chan = SyncChan {
        view,
        tx: SLOT,
        rx: 0,
        tx_ready: S::open(&names.opts("b-ready")?).map_err(io_err)?,
        tx_free: S::open(&names.opts("b-free")?).map_err(io_err)?,
        rx_ready: S::open(&names.opts("a-ready")?).map_err(io_err)?,
        rx_free: S::open(&names.opts("a-free")?).map_err(io_err)?,
        liveness: peer.liveness,
        _mapping: mapping,
        _dir: None,
    };
    Event::open(&names.opts("attached")?)
        .and_then(|e| e.set())
        .map_err(io_err)?;
    Ok(chan)
}

/// A mapping + signals channel: `SyncChannel<Event>` is `ipckit-event`, `SyncChannel<Semaphore>`
/// is `ipckit-semaphore`.
#[derive(Debug)]
pub struct SyncChannel<S>(std::marker::PhantomData<fn() -> S>);

/// `ipckit-event`: mapping + auto-reset events.
pub const EVENT_CHANNEL: SyncChannel<Event> = SyncChannel(std::marker::PhantomData);
/// `ipckit-semaphore`: mapping + semaphores.
pub const SEMAPHORE_CHANNEL: SyncChannel<Semaphore> = SyncChannel(std::marker::PhantomData);

impl<S: Signal + 'static> Transport for SyncChannel<S> {
    type Chan = SyncChan<S>;
    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<Self::Chan> {
        open_parent(launcher)
    }
    fn open_peer(&self, peer: &PeerEnv) -> io::Result<Self::Chan> {
        open_peer(peer)
    }
    fn streams(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Uncontended lock + unlock
// ---------------------------------------------------------------------------------------------

const OPS_PER_SAMPLE: u32 = 1000;

/// Measures `op` (one acquire + release) in samples of [`OPS_PER_SAMPLE`]; median and p99 per op.
fn per_op(params: &Params, case: &str, mut op: impl FnMut()) -> io::Result<Vec<Measurement>> {
    for _ in 0..OPS_PER_SAMPLE * 10 {
        op();
    }
    let samples_wanted = if params.mode == "full" { 2000 } else { 300 };
    let mut samples = Vec::with_capacity(samples_wanted);
    for _ in 0..samples_wanted {
        let t0 = Instant::now();
        for _ in 0..OPS_PER_SAMPLE {
            op();
        }
        samples.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let s = Summary::of(&mut samples)
        .ok_or_else(|| invalid("no samples"))?
        .scaled_down(f64::from(OPS_PER_SAMPLE));
    Ok(vec![
        Measurement::new(case.to_owned(), "median", s.median, "ns"),
        Measurement::new(case.to_owned(), "p99", s.p99, "ns"),
    ])
}

/// `atomic-cas`: a compare-exchange pair on a word in a shared mapping, 0 → 1 (acquire) and
/// 1 → 0 (release): the least a lock that can tell its release from a waiter's arrival costs.
pub fn atomic_cas(params: &Params) -> io::Result<Vec<Measurement>> {
    let shm = crate::raw::shm_page()?;
    let word: &AtomicU32 = shm.word(0);
    per_op(params, "lock-unlock", || {
        while word
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {}
        while word
            .compare_exchange(1, 0, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {}
        black_box(word);
    })
}

/// `ipckit-mutex`: uncontended wait + release of a named mutex.
pub fn mutex_uncontended(params: &Params) -> io::Result<Vec<Measurement>> {
    let dir = CaseDir::new()?;
    let m = Mutex::create(
        &Options::named("m")
            .map_err(io_err)?
            .namespace(Namespace::at(&dir.0)),
        false,
    )
    .map_err(io_err)?;
    per_op(params, "lock-unlock", || {
        m.wait(None).expect("uncontended wait");
        m.release().expect("release");
    })
}

/// `pthread-robust`: lock + unlock of a process-shared robust pthread mutex in shared memory.
pub fn pthread_robust(params: &Params) -> io::Result<Vec<Measurement>> {
    let shm = crate::raw::shm_page()?;
    let m = crate::raw::pthread::RobustMutex::init_in(&shm)?;
    per_op(params, "lock-unlock", || {
        m.lock();
        m.unlock();
    })
}

// ---------------------------------------------------------------------------------------------
// Contended hand-off between two processes
// ---------------------------------------------------------------------------------------------

/// How long each contended round runs.
fn round_time(params: &Params) -> Duration {
    if params.mode == "full" {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(150)
    }
}

/// Two processes alternately take one lock: `lock` + bump counter + `unlock`, for a time.
trait Contended: Sync {
    /// Parent: set up, returning the address for the peer and a handle kept while measuring.
    fn setup(&self) -> io::Result<(String, Box<dyn ContendedEnd>)>;
    /// Peer: attach.
    fn attach(&self, addr: &str) -> io::Result<Box<dyn ContendedEnd>>;
}

trait ContendedEnd {
    /// The word both processes use to say "start" (1) and "stop" (2).
    fn control(&self) -> &AtomicU32;
    /// One acquisition: lock, bump the shared counter, unlock.
    fn op(&self);
    /// The shared counter.
    fn counter(&self) -> u64;
}

fn run_contended_parent(c: &dyn Contended, job: &Job<'_>) -> io::Result<Vec<Measurement>> {
    let _pin = PinGuard::pin(job.placement.parent_cpu)?;
    let phases = job.params.phases();
    let mut launcher = Launcher::new(job.exe, job.mechanism, job.placement, &phases)?;
    let (addr, end) = c.setup()?;
    launcher.spawn(&addr)?;
    let liveness = launcher.liveness()?;
    let peer = launcher.take_process().ok_or_else(|| invalid("no peer"))?;
    let result = (|| {
        // The peer says it attached by setting the control word to 1.
        let t0 = Instant::now();
        while end.control().load(Ordering::Acquire) != 1 {
            liveness.check()?;
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(invalid("peer did not attach"));
            }
            std::thread::yield_now();
        }
        let rounds = if job.params.mode == "full" { 5 } else { 3 };
        let mut rates = Vec::new();
        for _ in 0..rounds {
            let before = end.counter();
            let start = Instant::now();
            while start.elapsed() < round_time(job.params) {
                for _ in 0..64 {
                    end.op();
                }
            }
            let ops = end.counter() - before;
            rates.push(ops as f64 / start.elapsed().as_secs_f64());
        }
        end.control().store(2, Ordering::Release);
        let rate = crate::stats::median_f64(&rates).ok_or_else(|| invalid("no rounds"))?;
        Ok(vec![Measurement::new(
            format!("contended/{}", job.placement.label),
            "rate",
            rate,
            "ops/s",
        )])
    })();
    match result {
        Ok(m) => peer.finish().map(|()| m),
        Err(e) => Err(peer.fail(e)),
    }
}

fn run_contended_peer(c: &dyn Contended, env: &PeerEnv) -> io::Result<()> {
    let end = c.attach(&env.addr)?;
    end.control().store(1, Ordering::Release);
    let mut n = 0u32;
    while end.control().load(Ordering::Acquire) != 2 {
        end.op();
        n = n.wrapping_add(1);
        if n.is_multiple_of(4096) {
            env.liveness.check()?;
        }
    }
    Ok(())
}

/// Control word and counter live in a small named mapping beside the lock.
struct MutexEnd {
    mutex: Mutex,
    view: View,
    _mapping: FileMapping,
    _dir: Option<CaseDir>,
}

impl ContendedEnd for MutexEnd {
    fn control(&self) -> &AtomicU32 {
        self.view.atomic_u32(0).expect("aligned")
    }
    fn op(&self) {
        self.mutex.wait(None).expect("wait");
        let c = self.view.atomic_u64(8).expect("aligned");
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.mutex.release().expect("release");
    }
    fn counter(&self) -> u64 {
        self.view
            .atomic_u64(8)
            .expect("aligned")
            .load(Ordering::Relaxed)
    }
}

/// `ipckit-mutex-contended`.
#[derive(Debug)]
pub struct MutexContended;

impl MutexContended {
    fn end(ns: &Namespace, create: bool, dir: Option<CaseDir>) -> io::Result<MutexEnd> {
        let opts = Options::named("lock")
            .map_err(io_err)?
            .namespace(ns.clone());
        let (mutex, mapping) = if create {
            let m = Mutex::create(&opts, false).map_err(io_err)?;
            let map = FileMapping::builder()
                .name("ctl")
                .map_err(io_err)?
                .size(4096)
                .namespace(ns.clone())
                .create();
            (m, map.map_err(io_err)?)
        } else {
            (
                Mutex::open(&opts).map_err(io_err)?,
                FileMapping::open_in(ns, "ctl", ViewAccess::Write).map_err(io_err)?,
            )
        };
        let view = mapping.map_view(ViewAccess::Write, 0, 0).map_err(io_err)?;
        Ok(MutexEnd {
            mutex,
            view,
            _mapping: mapping,
            _dir: dir,
        })
    }
}

impl Contended for MutexContended {
    fn setup(&self) -> io::Result<(String, Box<dyn ContendedEnd>)> {
        let dir = CaseDir::new()?;
        let addr = dir.0.display().to_string();
        let ns = Namespace::at(&dir.0);
        Ok((addr, Box::new(Self::end(&ns, true, Some(dir))?)))
    }
    fn attach(&self, addr: &str) -> io::Result<Box<dyn ContendedEnd>> {
        Ok(Box::new(Self::end(&Namespace::at(addr), false, None)?))
    }
}

/// `pthread-robust-contended`.
#[derive(Debug)]
pub struct PthreadContended;

struct PthreadEnd {
    shm: crate::raw::ShmPage,
    mutex: crate::raw::pthread::RobustMutex,
}

impl ContendedEnd for PthreadEnd {
    fn control(&self) -> &AtomicU32 {
        self.shm.word(0)
    }
    fn op(&self) {
        self.mutex.lock();
        let c = self.shm.word64(1);
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.mutex.unlock();
    }
    fn counter(&self) -> u64 {
        self.shm.word64(1).load(Ordering::Relaxed)
    }
}

impl Contended for PthreadContended {
    fn setup(&self) -> io::Result<(String, Box<dyn ContendedEnd>)> {
        let shm = crate::raw::ShmPage::create_named()?;
        let mutex = crate::raw::pthread::RobustMutex::init_in(&shm)?;
        let addr = shm.path().display().to_string();
        Ok((addr, Box::new(PthreadEnd { shm, mutex })))
    }
    fn attach(&self, addr: &str) -> io::Result<Box<dyn ContendedEnd>> {
        let shm = crate::raw::ShmPage::open(Path::new(addr))?;
        let mutex = crate::raw::pthread::RobustMutex::attach(&shm);
        Ok(Box::new(PthreadEnd { shm, mutex }))
    }
}

macro_rules! contended_transport {
    ($t:ty) => {
        impl ErasedTransport for $t {
            fn run_parent(&self, job: &Job<'_>) -> io::Result<Vec<Measurement>> {
                run_contended_parent(self, job)
            }
            fn run_peer(&self, env: &PeerEnv) -> io::Result<()> {
                run_contended_peer(self, env)
            }
        }
    };
}
contended_transport!(MutexContended);
contended_transport!(PthreadContended);
