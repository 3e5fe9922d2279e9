//! `iceoryx2`: the iceoryx2 crate's publish-subscribe, for comparison with `ipckit-chan-spin`.
//!
//! Set up the way iceoryx2's own `publish-subscribe` benchmark measures it: two processes
//! ping-pong over two services (`a2b`, `b2a`) of `[u8]` slices, each with one publisher and one
//! subscriber, no history, a subscriber buffer of 1 with safe overflow; the publisher is created
//! with `initial_max_slice_len` equal to the message size, and every message is loaned from
//! shared memory (`loan_slice_uninit`), filled in place and sent; the receiver busy-polls
//! `receive()` (the benchmark's `while receiver.receive()?.is_none() {}`). Each phase gets its
//! own pair of services, sized for it.
//!
//! * `rtt-zc-<size>` (zero copy, as iceoryx2's benchmark without `--send-copy`): only the 8-byte
//!   stamp is written into the loaned sample and only the stamp is read on receive.
//! * `rtt-<size>`: the whole message is copied into the loaned sample (`write_from_slice`) and
//!   out of the received one, like every copying mechanism here.
//!
//! No streaming phases: the benchmark's services drop the oldest sample when the subscriber lags
//! (safe overflow), which is right for a ping-pong and wrong for a lossless stream.
//!
//! iceoryx2 reports half a round trip as its "latency"; the values here are whole round trips.
//!
//! Every case uses its own iceoryx2 configuration: a root directory under a fresh private
//! temporary directory and a unique file prefix, so cases cannot see each other's services; the
//! harness removes the case's shared-memory files when the case ends, even if the peer was
//! killed. A busy-polling wait checks every 100 ms that the other process still runs and gives
//! up after [`STALL_TIMEOUT`].

use std::io;
use std::mem::MaybeUninit;
use std::path::Path as StdPath;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;
use iceoryx2::sample_mut_uninit::SampleMutUninit;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

use crate::channel::{Channel, STAMP_LEN, Transport};
use crate::params::Phase;
use crate::peer::{Launcher, Liveness, PeerEnv, STALL_TIMEOUT, invalid};
use crate::raw::TempDir;

type Pub = Publisher<ipc::Service, [u8], ()>;
type Sub = Subscriber<ipc::Service, [u8], ()>;
type Received = Sample<ipc::Service, [u8], ()>;
type Loaned = SampleMutUninit<ipc::Service, [MaybeUninit<u8>], ()>;
type Factory = PortFactory<ipc::Service, [u8], ()>;

/// The hello the peer publishes once its ports exist.
const HELLO: u64 = 0x6865_6c6c_6f21_0002;
/// Failed polls between two looks at the clock.
const POLLS_PER_CHECK: u32 = 4096;
const LIVENESS_EVERY: Duration = Duration::from_millis(100);

/// The `iceoryx2` benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct Iceoryx2;

fn err(what: &str, e: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("iceoryx2: {what}: {e:?}"))
}

/// The case's iceoryx2 configuration: everything under `root`, files named with `prefix`.
fn config(root: &str, prefix: &str) -> io::Result<Config> {
    let mut config = Config::default();
    config
        .global
        .set_root_path(&Path::new(root.as_bytes()).map_err(|e| err("root path", e))?);
    config.global.prefix = FileName::new(prefix.as_bytes()).map_err(|e| err("prefix", e))?;
    Ok(config)
}

fn node(config: &Config) -> io::Result<Node<ipc::Service>> {
    // Errors are returned, not logged; iceoryx2 would otherwise warn on stderr.
    set_log_level(LogLevel::Error);
    NodeBuilder::new()
        .config(config)
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(|e| err("node", e))
}

fn service_name(index: usize, dir: &str) -> io::Result<ServiceName> {
    ServiceName::new(&format!("ipckit-bench/{index}/{dir}")).map_err(|e| err("service name", e))
}

fn phase_size(phase: &Phase) -> usize {
    match *phase {
        Phase::Rtt { size } | Phase::RttZc { size } | Phase::Stream { size, .. } => size,
    }
}

/// Creates (`create`) or opens the service of phase `index` in direction `dir`.
fn service(
    node: &Node<ipc::Service>,
    index: usize,
    dir: &str,
    create: bool,
) -> io::Result<Factory> {
    let builder = node
        .service_builder(&service_name(index, dir)?)
        .publish_subscribe::<[u8]>()
        .max_publishers(1)
        .max_subscribers(1)
        .history_size(0)
        .subscriber_max_buffer_size(1)
        .enable_safe_overflow(true);
    if create {
        builder.create().map_err(|e| err("create service", e))
    } else {
        builder.open().map_err(|e| err("open service", e))
    }
}

/// One end of a case: a publisher and a subscriber per phase.
pub struct Iox2End {
    ports: Vec<(Pub, Sub)>,
    cur: usize,
    liveness: Liveness,
    node: Option<Node<ipc::Service>>,
    cleanup: Option<Cleanup>,
}

impl std::fmt::Debug for Iox2End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iox2End")
            .field("phases", &self.ports.len())
            .field("cur", &self.cur)
            .finish_non_exhaustive()
    }
}

impl Drop for Iox2End {
    fn drop(&mut self) {
        // Ports, then the node, then the files they use.
        self.ports.clear();
        drop(self.node.take());
        drop(self.cleanup.take());
    }
}

/// Removes a case's iceoryx2 files: its root directory, and its shared-memory objects (named
/// with its unique prefix) in case a killed peer left some behind.
#[derive(Debug)]
struct Cleanup {
    prefix: String,
    _dir: TempDir,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&self.prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Iox2End {
    fn ports(&mut self) -> &mut (Pub, Sub) {
        &mut self.ports[self.cur]
    }

    /// Busy-polls for the next sample of the current phase.
    fn wait_sample(&mut self) -> io::Result<Received> {
        let liveness = self.liveness;
        let (_, sub) = &self.ports[self.cur];
        let mut polls = 0u32;
        let mut since: Option<(Instant, Instant)> = None;
        loop {
            if let Some(s) = sub.receive().map_err(|e| err("receive", e))? {
                return Ok(s);
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(POLLS_PER_CHECK) {
                let now = Instant::now();
                let (start, last) = since.get_or_insert((now, now));
                if now - *last >= LIVENESS_EVERY {
                    *last = now;
                    liveness.check()?;
                    if now - *start > STALL_TIMEOUT {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no message from the other process for {STALL_TIMEOUT:?}"),
                        ));
                    }
                }
            }
        }
    }

    fn loan(&mut self, len: usize) -> io::Result<Loaned> {
        let (publisher, _) = self.ports();
        publisher.loan_slice_uninit(len).map_err(|e| err("loan", e))
    }
}

fn check_len(got: usize, expected: usize) -> io::Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(invalid(format!(
            "message of {got} bytes, expected {expected}"
        )))
    }
}

fn read_stamp(payload: &[u8]) -> u64 {
    let mut b = [0u8; STAMP_LEN];
    b.copy_from_slice(&payload[..STAMP_LEN]);
    u64::from_le_bytes(b)
}

impl Channel for Iox2End {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let sample = self.loan(msg.len())?.write_from_slice(msg);
        sample.send().map_err(|e| err("send", e))?;
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let sample = self.wait_sample()?;
        check_len(sample.payload().len(), buf.len())?;
        buf.copy_from_slice(sample.payload());
        Ok(())
    }

    fn send_stamp(&mut self, len: usize, stamp: u64) -> io::Result<()> {
        if len < STAMP_LEN {
            return Err(invalid("messages must hold a stamp"));
        }
        let mut sample = self.loan(len)?;
        for (dst, src) in sample.payload_mut().iter_mut().zip(stamp.to_le_bytes()) {
            *dst = MaybeUninit::new(src);
        }
        // SAFETY: the payload lies in shared memory that the OS handed out zero-filled and that
        // only ever holds bytes written by earlier samples, so every byte is initialised, and any
        // byte is a valid `u8`. This is what iceoryx2's own zero-copy benchmark does.
        let sample = unsafe { sample.assume_init() };
        sample.send().map_err(|e| err("send", e))?;
        Ok(())
    }

    fn recv_stamp(&mut self, len: usize) -> io::Result<u64> {
        let sample = self.wait_sample()?;
        check_len(sample.payload().len(), len)?;
        Ok(read_stamp(sample.payload()))
    }

    fn begin_phase(&mut self, index: usize, _phase: &Phase) -> io::Result<()> {
        if index >= self.ports.len() {
            return Err(invalid(format!("no services for phase {index}")));
        }
        self.cur = index;
        Ok(())
    }
}

/// `iox2b_<pid>_<n>_`: a prefix no other case (or process) uses.
fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "iox2b_{}_{}_",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Transport for Iceoryx2 {
    type Chan = Iox2End;

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<Iox2End> {
        let dir = TempDir::new()?;
        let root = format!("{}/", crate::raw::path_arg(dir.path())?);
        let prefix = unique_prefix();
        let cleanup = Cleanup {
            prefix: prefix.clone(),
            _dir: dir,
        };
        let config = config(&root, &prefix)?;
        let node = node(&config)?;
        let mut ports = Vec::new();
        for (i, phase) in launcher.phases().iter().enumerate() {
            let a2b = service(&node, i, "a2b", true)?;
            let b2a = service(&node, i, "b2a", true)?;
            let publisher = a2b
                .publisher_builder()
                .initial_max_slice_len(phase_size(phase).max(STAMP_LEN))
                .create()
                .map_err(|e| err("publisher", e))?;
            let subscriber = b2a
                .subscriber_builder()
                .create()
                .map_err(|e| err("subscriber", e))?;
            ports.push((publisher, subscriber));
        }
        if ports.is_empty() {
            return Err(invalid("a case without phases"));
        }
        launcher.spawn(&format!("{root}\n{prefix}"))?;
        let hello = launcher.wait_for("iceoryx2 ports", || {
            match ports[0].1.receive().map_err(|e| err("receive", e))? {
                Some(s) if s.payload().len() >= STAMP_LEN => Ok(Some(read_stamp(s.payload()))),
                Some(_) => Err(invalid("short hello")),
                None => Ok(None),
            }
        })?;
        if hello != HELLO {
            return Err(invalid("bad hello from the peer"));
        }
        Ok(Iox2End {
            ports,
            cur: 0,
            liveness: launcher.liveness()?,
            node: Some(node),
            cleanup: Some(cleanup),
        })
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<Iox2End> {
        let (root, prefix) = peer
            .addr
            .split_once('\n')
            .ok_or_else(|| invalid("bad address"))?;
        if !StdPath::new(root).is_dir() {
            return Err(invalid("the case directory is missing"));
        }
        let config = config(root, prefix)?;
        let node = node(&config)?;
        let mut ports = Vec::new();
        for (i, phase) in peer.phases.iter().enumerate() {
            let a2b = service(&node, i, "a2b", false)?;
            let b2a = service(&node, i, "b2a", false)?;
            let subscriber = a2b
                .subscriber_builder()
                .create()
                .map_err(|e| err("subscriber", e))?;
            let publisher = b2a
                .publisher_builder()
                .initial_max_slice_len(phase_size(phase).max(STAMP_LEN))
                .create()
                .map_err(|e| err("publisher", e))?;
            ports.push((publisher, subscriber));
        }
        let mut end = Iox2End {
            ports,
            cur: 0,
            liveness: peer.liveness,
            node: Some(node),
            cleanup: None,
        };
        // Our subscribers exist before the harness can see this, so nothing it sends is lost.
        end.send(&HELLO.to_le_bytes())?;
        Ok(end)
    }

    fn streams(&self) -> bool {
        false
    }

    fn zero_copy(&self) -> bool {
        true
    }
}
