//! Helpers shared by the cross-process tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipckit::name::{ObjectName, Scope};
use ipckit::namespace::Namespace;
use ipckit_testkit::{RoleCtx, RoleResult, TestCase, wait_for};

/// CPU time (user + system) consumed so far by process `pid`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    // After the command: state is field 3 of proc(5), utime 14 and stime 15.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = rustix::param::clock_ticks_per_second();
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// Fails the role with `msg` unless `cond` holds.
pub fn ensure(cond: bool, msg: impl Into<String>) -> RoleResult {
    if cond { Ok(()) } else { Err(msg.into().into()) }
}

pub fn ns_of(t: &TestCase) -> Namespace {
    Namespace::at(t.namespace())
}

/// Every file that objects of `ns` occupy: side files (ipckit's own dot-files excepted) and
/// shared-memory objects. Sorted.
pub fn object_files(ns: &Namespace) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for base in [ns.runtime_dir(), ns.global_dir()] {
        if let Ok(rd) = std::fs::read_dir(base.join("object")) {
            for e in rd.flatten() {
                if !e.file_name().to_string_lossy().starts_with('.') {
                    out.push(e.path());
                }
            }
        }
    }
    let prefixes = [ns.shm_prefix(Scope::Local), ns.shm_prefix(Scope::Global)];
    for e in std::fs::read_dir("/dev/shm").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// Best effort: waits (bounded) until every thread of `pid` sleeps, so that what follows
/// finds the peer blocked. Correctness never depends on it.
pub fn settle_asleep(pid: u32) {
    wait_for(Duration::from_secs(2), || {
        let s = thread_states(pid);
        !s.is_empty() && s.iter().all(|&c| c == 'S')
    });
}

/// The states of every thread of process `pid` (`/proc/PID/task/*/stat`).
pub fn thread_states(pid: u32) -> Vec<char> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            stat[stat.rfind(')')? + 1..].trim_start().chars().next()
        })
        .collect()
}

pub fn ctx_ns(ctx: &RoleCtx) -> Namespace {
    Namespace::at(ctx.namespace())
}

/// The shared memory of the channel `name`.
pub fn shm_file(ns: &Namespace, name: &str) -> PathBuf {
    Path::new("/dev/shm").join(ns.shm_name(&ObjectName::parse(name).unwrap()))
}

/// Deterministic bytes for a message of `len` bytes (xorshift from `seed`).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a of `data`: the checksum stress tests put in their messages.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Makes this thread an unprivileged process of user and group 65534 ("nobody"): no
/// capabilities, no supplementary groups. Fails unless the thread really lost root's access.
pub fn become_nobody(ctx: &RoleCtx) -> RoleResult {
    use rustix::process::{Gid, Uid};
    rustix::thread::set_thread_groups(&[])?;
    let nobody_gid = Gid::from_raw(65534);
    rustix::thread::set_thread_res_gid(nobody_gid, nobody_gid, nobody_gid)?;
    let nobody = Uid::from_raw(65534);
    // All three uids leave 0: the kernel clears the thread's capabilities.
    rustix::thread::set_thread_res_uid(nobody, nobody, nobody)?;
    ensure(rustix::process::geteuid().as_raw() == 65534, "euid")?;
    // The test's private folder (0700, root's) is out of reach now.
    match std::fs::read_dir(ctx.namespace()) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        other => Err(format!("still reaches root's private folder: {other:?}").into()),
    }
}
