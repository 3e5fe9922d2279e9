//! `ipckit-broker`: what the session broker costs a client.
//!
//! The harness starts a broker in a child process (this executable re-run with
//! [`BROKER_ENV`] naming a fresh private namespace), connects to it as a client over its
//! `ncalrpc` socket, and measures, each as the median and p99 of single calls:
//!
//! * `register` — register a name and unregister it again (two calls, the pair timed);
//! * `lookup` — look up one registered name;
//! * `list-10000` — list the whole registry while it holds 10,000 live entries (what
//!   `ipckit ls` asks the broker for);
//! * `sigkill-cleanup` — from the SIGKILL of a client process holding an entry to a watcher's
//!   receipt of its removal (the broker's promise: a dead process's entries vanish at once).
//!
//! There is no raw baseline: Windows does these in the kernel and in system services, and the
//! closest Linux equivalents (a D-Bus name request, a file in a directory) are different
//! operations. The round trip of a plain Unix socket (`unix-stream` rtt, selected with this
//! benchmark as its baseline, though no case matches for a ratio) is the floor of any call.

use std::io;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipckit::broker::registry::{EntryKind, Limits};
use ipckit::broker::{BrokerClient, BrokerServer};
use ipckit::namespace::Namespace;

use crate::channel::Measurement;
use crate::params::Params;
use crate::raw::TempDir;
use crate::stats::Summary;

/// Set in the broker child's environment: the namespace directory to serve.
pub const BROKER_ENV: &str = "IPCKIT_BENCH_BROKER";
/// Set in a client child's environment: `DIR` of the broker; it registers `victim`, prints a
/// line, and waits to be killed.
pub const CLIENT_ENV: &str = "IPCKIT_BENCH_BROKER_CLIENT";
const ENTRIES: usize = 10_000;

/// In the broker child: serves `dir` until the harness dies. Returns when this process is not a
/// broker child.
pub fn run_broker_if_requested() {
    if let Some(dir) = std::env::var_os(CLIENT_ENV) {
        let _ =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
        let code = match BrokerClient::connect(&Namespace::at(dir)).and_then(|c| {
            c.register(EntryKind::NamedObject, "victim", b"", true)
                .map(|()| c)
        }) {
            Ok(_c) => {
                println!("registered");
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                eprintln!("ipckit-bench broker client: {e}");
                2
            }
        };
        std::process::exit(code);
    }
    let Some(dir) = std::env::var_os(BROKER_ENV) else {
        return;
    };
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    match BrokerServer::start(&Namespace::at(dir), Limits::default()) {
        Ok(_server) => loop {
            std::thread::park();
        },
        Err(e) => {
            eprintln!("ipckit-bench broker: {e:?}");
            std::process::exit(2);
        }
    }
}

struct Broker {
    child: Child,
    _dir: TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn samples(n: usize, mut f: impl FnMut(usize) -> io::Result<()>) -> io::Result<Summary> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i)?;
        v.push(t.elapsed().as_nanos() as u64);
    }
    Summary::of(&mut v).ok_or_else(|| io::Error::other("no samples"))
}

fn push(out: &mut Vec<Measurement>, case: &str, s: Summary) {
    out.push(Measurement::new(case.to_owned(), "median", s.median, "ns"));
    out.push(Measurement::new(case.to_owned(), "p99", s.p99, "ns"));
}

/// Runs the cases.
pub fn run(params: &Params) -> io::Result<Vec<Measurement>> {
    let tiny = params.mode == "tiny";
    let dir = TempDir::new()?;
    let ns = Namespace::at(dir.path());
    let dir_path = dir.path().to_owned();
    let child = Command::new(std::env::current_exe()?)
        .env(BROKER_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    let _broker = Broker { child, _dir: dir };
    let until = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match BrokerClient::connect(&ns) {
            Ok(c) => break c,
            Err(e) if Instant::now() >= until => return Err(io::Error::other(e.to_string())),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let (n, entries) = if tiny { (50, 200) } else { (2_000, ENTRIES) };
    let mut out = Vec::new();
    let kind = EntryKind::NamedObject;
    // Warm-up.
    for i in 0..n.min(200) {
        client.register(kind, &format!("warm-{i}"), b"", true)?;
        client.unregister(kind, &format!("warm-{i}"))?;
    }
    push(
        &mut out,
        "register",
        samples(n, |i| {
            let name = format!("reg-{i}");
            client.register(kind, &name, b"value", true)?;
            client.unregister(kind, &name)?;
            Ok(())
        })?,
    );
    for i in 0..entries {
        client.register(kind, &format!("obj-{i:05}"), b"value", true)?;
    }
    push(
        &mut out,
        "lookup",
        samples(n, |i| {
            let name = format!("obj-{:05}", (i * 7919) % entries);
            match client.lookup(kind, &name)? {
                Some(_) => Ok(()),
                None => Err(io::Error::other(format!("{name} not found"))),
            }
        })?,
    );
    let rounds = if tiny { 3 } else { 30 };
    push(
        &mut out,
        &format!("list-{entries}"),
        samples(rounds, |_| {
            let all = client.list(None, "")?;
            if all.len() == entries {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "listed {} of {entries}",
                    all.len()
                )))
            }
        })?,
    );
    push(
        &mut out,
        "sigkill-cleanup",
        sigkill_cleanup(&client, &dir_path, if tiny { 3 } else { 20 })?,
    );
    Ok(out)
}

/// Kills a client holding an entry `rounds` times; each sample runs from the kill to the
/// watcher's receipt of the removal.
fn sigkill_cleanup(
    watcher: &BrokerClient,
    dir: &std::path::Path,
    rounds: usize,
) -> io::Result<Summary> {
    use ipckit::broker::ChangeInfo;
    use std::io::BufRead;
    watcher.watch(Some(EntryKind::NamedObject), "victim")?;
    let mut v = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut child = Command::new(std::env::current_exe()?)
            .env(CLIENT_ENV, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| io::Error::other("no stdout"))?,
        )
        .read_line(&mut line)?;
        if line.trim() != "registered" {
            let _ = child.kill();
            return Err(io::Error::other("the client did not register"));
        }
        // Drain the Added notification.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !watcher
            .changes(Duration::from_millis(100))?
            .iter()
            .any(|c| matches!(c, ChangeInfo::Added(_)))
        {
            if Instant::now() >= deadline {
                return Err(io::Error::other("no Added notification"));
            }
        }
        let t = Instant::now();
        child.kill()?;
        loop {
            let changes = watcher.changes(Duration::from_secs(1))?;
            if changes
                .iter()
                .any(|c| matches!(c, ChangeInfo::Removed { .. }))
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err(io::Error::other("no Removed notification"));
            }
        }
        v.push(t.elapsed().as_nanos() as u64);
        let _ = child.wait();
    }
    Summary::of(&mut v).ok_or_else(|| io::Error::other("no samples"))
}
