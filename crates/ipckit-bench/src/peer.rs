//! The peer process: how it is started, found, watched and reaped.
//!
//! The harness re-executes its own executable with [`PEER_ENV`] naming the
//! benchmark. A host binary calls [`run_peer_if_requested`] first thing in
//! `main`; in a peer it runs the role and exits, so the rest of the host
//! (argument parsing, logging) never runs there. Everything else the peer
//! needs travels in the environment:
//!
//! | variable | content |
//! |---|---|
//! | `IPCKIT_BENCH_PEER` | benchmark name (selects the role) |
//! | `IPCKIT_BENCH_PARENT` | pid of the harness |
//! | `IPCKIT_BENCH_ADDR` | rendezvous: socket path, TCP port or shm file |
//! | `IPCKIT_BENCH_CPU` | CPU the peer pins itself to |
//! | `IPCKIT_BENCH_PLAN` | JSON list of the [`Phase`]s to serve |
//!
//! Lifetime rules:
//!
//! * the peer asks for `SIGKILL` when its parent dies
//!   (`PR_SET_PDEATHSIG`) and then checks that `getppid()` is still the
//!   harness, which closes the race with a parent that died before the
//!   `prctl`;
//! * the harness owns the peer through a [`PeerProcess`], which kills and
//!   reaps it when dropped, so every error path (and unwinding) cleans up;
//! * rendezvous waits are bounded by [`HANDSHAKE_TIMEOUT`] and abort as soon
//!   as the peer exits; the peer's stderr is captured and quoted in errors.

use std::io::{self, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, getppid, waitid};

use crate::affinity::{Placement, pin_current_thread};
use crate::params::Phase;
use crate::registry::{self, Kind};

/// Selects the peer role; its value is the benchmark name.
pub const PEER_ENV: &str = "IPCKIT_BENCH_PEER";
/// Pid of the harness that started the peer.
pub const PARENT_ENV: &str = "IPCKIT_BENCH_PARENT";
/// Rendezvous address (meaning depends on the mechanism).
pub const ADDR_ENV: &str = "IPCKIT_BENCH_ADDR";
/// CPU the peer pins itself to.
pub const CPU_ENV: &str = "IPCKIT_BENCH_CPU";
/// JSON-encoded list of phases.
pub const PLAN_ENV: &str = "IPCKIT_BENCH_PLAN";

/// Longest wait for the peer to show up at the rendezvous.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a single blocking wait on the data path may take before the
/// other side is considered stuck.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the peer to exit after the last phase.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Exit code of a peer whose role failed.
const PEER_FAILED: i32 = 2;
/// Exit code of a peer whose parent was already gone.
const PEER_ORPHANED: i32 = 3;

/// Runs the benchmark peer role and exits the process if this process was
/// started as a peer (the `IPCKIT_BENCH_PEER` environment variable is set);
/// returns immediately otherwise.
///
/// Call it first thing in `main` of every binary that hosts the benchmarks
/// (`ipckit-bench`, `ipckit bench`): the harness starts its peers by
/// re-executing [`std::env::current_exe`]. The peer never writes to stdout;
/// failures are reported on stderr and with a non-zero exit status.
pub fn run_peer_if_requested() {
    // The broker child of the `ipckit-broker` benchmark.
    crate::ipckit_broker::run_broker_if_requested();
    let Some(name) = std::env::var_os(PEER_ENV) else {
        return;
    };
    let name = name.to_string_lossy().into_owned();
    let code = match peer_main(&name) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ipckit-bench peer `{name}`: {e}");
            PEER_FAILED
        }
    };
    std::process::exit(code);
}

/// What a peer knows about its case.
#[derive(Debug)]
pub struct PeerEnv {
    /// Benchmark name.
    pub mechanism: String,
    /// Rendezvous address chosen by the harness.
    pub addr: String,
    /// Phases to serve, in order.
    pub phases: Vec<Phase>,
    /// Watches the harness.
    pub liveness: Liveness,
}

fn peer_main(name: &str) -> io::Result<()> {
    // Die with the parent; then make sure the parent is still the harness
    // (it may have died before the prctl took effect).
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    let parent: i32 = env_parse(PARENT_ENV)?;
    let parent = Pid::from_raw(parent).ok_or_else(|| invalid(format!("bad {PARENT_ENV}")))?;
    if getppid() != Some(parent) {
        std::process::exit(PEER_ORPHANED);
    }
    if let Some(cpu) = std::env::var_os(CPU_ENV).filter(|v| !v.is_empty()) {
        let cpu: usize = cpu
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad {CPU_ENV}")))?;
        pin_current_thread(cpu)?;
    }
    let plan = std::env::var(PLAN_ENV).map_err(|_| invalid(format!("{PLAN_ENV} missing")))?;
    let phases: Vec<Phase> = serde_json::from_str(&plan).map_err(|e| invalid(e.to_string()))?;
    let env = PeerEnv {
        mechanism: name.to_owned(),
        addr: std::env::var(ADDR_ENV).unwrap_or_default(),
        phases,
        liveness: Liveness::Parent(parent),
    };
    let bench =
        registry::find(name).ok_or_else(|| invalid(format!("unknown benchmark `{name}`")))?;
    match bench.kind {
        Kind::TwoProcess(transport) => transport.run_peer(&env),
        Kind::Local(_) => Err(invalid(format!("`{name}` has no peer role"))),
    }
}

fn env_parse<T: std::str::FromStr>(var: &str) -> io::Result<T> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| invalid(format!("{var} missing or malformed")))
}

pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Cheap check that the other process of a case is still there, for the
/// data-path waits that would otherwise block forever (shared memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The harness watching its peer (a child; checked without reaping it).
    Child(Pid),
    /// A peer watching the harness (its parent).
    Parent(Pid),
}

impl Liveness {
    /// `Ok` while the other process runs; an error once it has exited.
    pub fn check(&self) -> io::Result<()> {
        match *self {
            Liveness::Child(pid) => {
                let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
                match waitid(WaitId::Pid(pid), opts)? {
                    None => Ok(()),
                    Some(_) => Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the peer process exited",
                    )),
                }
            }
            Liveness::Parent(pid) => {
                if getppid() == Some(pid) {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the harness process exited",
                    ))
                }
            }
        }
    }
}

/// Starts the peer of one case and waits for it at the rendezvous; handed
/// to [`Transport::open_parent`](crate::Transport::open_parent).
#[derive(Debug)]
pub struct Launcher<'a> {
    exe: &'a Path,
    mechanism: &'a str,
    placement: &'a Placement,
    phases: Vec<Phase>,
    plan: String,
    process: Option<PeerProcess>,
}

impl<'a> Launcher<'a> {
    pub(crate) fn new(
        exe: &'a Path,
        mechanism: &'a str,
        placement: &'a Placement,
        phases: &[Phase],
    ) -> io::Result<Self> {
        let plan = serde_json::to_string(phases).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            exe,
            mechanism,
            placement,
            phases: phases.to_vec(),
            plan,
            process: None,
        })
    }

    /// The phases the case will run (the peer gets the same list in
    /// [`PeerEnv::phases`]), for transports that size their resources per
    /// phase.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// Starts the peer with `addr` as its rendezvous address and stdin and
    /// stdout connected to `/dev/null`.
    pub fn spawn(&mut self, addr: &str) -> io::Result<()> {
        self.spawn_with_stdio(addr, Stdio::null(), Stdio::null())
    }

    /// Starts the peer with the given stdin and stdout (the `pipe` baseline
    /// hands the peer its pipe ends this way). The parent's copies of the
    /// `Stdio` handles are closed when this returns.
    pub fn spawn_with_stdio(&mut self, addr: &str, stdin: Stdio, stdout: Stdio) -> io::Result<()> {
        if self.process.is_some() {
            return Err(io::Error::other("peer already started"));
        }
        let mut cmd = Command::new(self.exe);
        cmd.env(PEER_ENV, self.mechanism)
            .env(PARENT_ENV, std::process::id().to_string())
            .env(ADDR_ENV, addr)
            .env(CPU_ENV, self.placement.peer_cpu.to_string())
            .env(PLAN_ENV, &self.plan)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start peer {}: {e}", self.exe.display()),
            )
        })?;
        // `cmd` (and with it the parent's copies of the peer's stdio) is
        // dropped here.
        drop(cmd);
        self.process = Some(PeerProcess::new(child)?);
        Ok(())
    }

    /// A liveness check for the started peer.
    pub fn liveness(&self) -> io::Result<Liveness> {
        self.process
            .as_ref()
            .map(|p| Liveness::Child(p.pid))
            .ok_or_else(|| io::Error::other("peer not started"))
    }

    /// Polls `attempt` until it returns `Some`, failing if the peer exits
    /// first or [`HANDSHAKE_TIMEOUT`] passes. `what` names the awaited event
    /// in the error.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        mut attempt: impl FnMut() -> io::Result<Option<T>>,
    ) -> io::Result<T> {
        let process = self
            .process
            .as_mut()
            .ok_or_else(|| io::Error::other("peer not started"))?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(50);
        loop {
            if let Some(v) = attempt()? {
                return Ok(v);
            }
            if let Some(status) = process.child.try_wait()? {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("peer exited ({status}) while waiting for {what}"),
                ));
            }
            if start.elapsed() > HANDSHAKE_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no {what} from the peer within {HANDSHAKE_TIMEOUT:?}"),
                ));
            }
            sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    pub(crate) fn take_process(&mut self) -> Option<PeerProcess> {
        self.process.take()
    }
}

/// A running peer, killed and reaped on drop.
#[derive(Debug)]
pub struct PeerProcess {
    child: Child,
    pid: Pid,
    reaped: Option<ExitStatus>,
}

impl PeerProcess {
    fn new(child: Child) -> io::Result<Self> {
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::other("peer pid out of range"))?;
        Ok(Self {
            child,
            pid,
            reaped: None,
        })
    }

    /// Waits (bounded) for a clean exit after the last phase; an error with
    /// the peer's stderr if it failed or had to be killed.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        let status = self.wait_exit(EXIT_TIMEOUT)?;
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(io::Error::other(format!(
                "peer failed ({s}){}",
                self.stderr_suffix()
            ))),
            None => {
                self.kill_and_reap();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "peer did not exit within {EXIT_TIMEOUT:?}; killed{}",
                        self.stderr_suffix()
                    ),
                ))
            }
        }
    }

    /// Turns a harness-side error into one that also says what happened to
    /// the peer: gives it a moment to exit on its own (it usually failed
    /// first and is printing why), kills it otherwise, and quotes its stderr.
    pub(crate) fn fail(mut self, err: io::Error) -> io::Error {
        let status = match self.wait_exit(Duration::from_secs(1)) {
            Ok(Some(s)) => format!("peer exited ({s})"),
            _ => {
                self.kill_and_reap();
                "peer killed".to_owned()
            }
        };
        io::Error::new(
            err.kind(),
            format!("{err}; {status}{}", self.stderr_suffix()),
        )
    }

    fn wait_exit(&mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.reaped {
            return Ok(Some(s));
        }
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait()? {
                self.reaped = Some(s);
                return Ok(Some(s));
            }
            if start.elapsed() > limit {
                return Ok(None);
            }
            sleep(Duration::from_millis(1));
        }
    }

    fn kill_and_reap(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            if let Ok(s) = self.child.wait() {
                self.reaped = Some(s);
            }
        }
    }

    /// `: peer stderr: …` once the peer is gone, empty when it said nothing.
    fn stderr_suffix(&mut self) -> String {
        let mut text = String::new();
        if self.reaped.is_some()
            && let Some(mut err) = self.child.stderr.take()
        {
            let _ = err.read_to_string(&mut text);
        }
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!("; peer stderr: {text}")
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement() -> Placement {
        let cpu = crate::affinity::allowed_cpus().unwrap()[0];
        Placement {
            label: "same-core",
            parent_cpu: cpu,
            peer_cpu: cpu,
        }
    }

    /// A "peer" that exits at once makes the rendezvous fail promptly, and
    /// the process is reaped.
    #[test]
    fn handshake_fails_fast_when_the_peer_exits() {
        let place = placement();
        let phases = [Phase::Rtt { size: 64 }];
        let mut launcher = Launcher::new(Path::new("/bin/true"), "pipe", &place, &phases).unwrap();
        let start = Instant::now();
        launcher.spawn("nowhere").unwrap();
        let err = launcher
            .wait_for("connection", || Ok(None::<()>))
            .unwrap_err();
        assert!(start.elapsed() < HANDSHAKE_TIMEOUT);
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(err.to_string().contains("connection"), "{err}");
        let peer = launcher.take_process().unwrap();
        let err = peer.fail(err);
        assert!(err.to_string().contains("peer exited"), "{err}");
    }

    #[test]
    fn liveness_of_a_running_child_and_of_the_parent() {
        let child = Command::new("/bin/sleep").arg("5").spawn().unwrap();
        let mut peer = PeerProcess::new(child).unwrap();
        assert!(Liveness::Child(peer.pid).check().is_ok());
        peer.kill_and_reap();
        assert!(peer.reaped.is_some());
        let parent = getppid().unwrap();
        assert!(Liveness::Parent(parent).check().is_ok());
    }
}
