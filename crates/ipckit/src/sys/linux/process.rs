//! Process and user identity.
//!
//! Windows counterparts: `GetCurrentProcessId`, the user SID of the process token,
//! and `OpenProcess` + `GetExitCodeProcess` to learn whether a process still runs.

use rustix::process::{Pid, getegid, geteuid, getpid, test_kill_process};

static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// This process's id (`getpid(2)`), cached so that hot paths make no system call.
/// A process that forks without exec must not use the cache in the child.
pub fn current_pid() -> u32 {
    use std::sync::atomic::Ordering::Relaxed;
    match PID.load(Relaxed) {
        0 => {
            let pid = getpid().as_raw_nonzero().get() as u32;
            PID.store(pid, Relaxed);
            pid
        }
        pid => pid,
    }
}

/// The effective user id, which owns the objects this process creates. Linux: `geteuid(2)`.
pub fn current_uid() -> u32 {
    geteuid().as_raw()
}

/// The effective group id. Linux: `getegid(2)`.
pub fn current_gid() -> u32 {
    getegid().as_raw()
}

/// Whether a process with this id exists (a zombie that its parent has not reaped
/// still counts). Linux: `kill(2)` with signal 0; `EPERM` means it exists but belongs
/// to another user.
pub fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// Whether process `pid` lives although `/proc` does not show it: `/proc` mounted with
/// `hidepid=2` hides other users' processes (`proc(5)`), and `kill(2)` with signal 0 still
/// tells that the pid is in use. A zombie is shown by `/proc`, so it never counts here.
pub fn hidden_but_alive(pid: u32) -> bool {
    let shown = std::fs::symlink_metadata(format!("/proc/{pid}")).is_ok();
    !shown && process_exists(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_liveness() {
        assert!(thread_alive(current_tid()));
        let t = std::thread::spawn(current_tid);
        let tid = t.join().unwrap();
        // An exited thread is gone once joined, though the kernel may still be finishing its
        // exit for a moment after `pthread_join` returns (the join is signalled early in exit).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while thread_alive(tid) {
            assert!(
                std::time::Instant::now() < deadline,
                "thread {tid} never ends"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!thread_alive(0));
    }

    #[test]
    fn start_times() {
        let me = start_time(current_pid()).unwrap();
        assert_eq!(start_time(current_pid()), Some(me));
        assert_eq!(start_time(0), None);
        assert!(current_cpu() < 4096);
    }

    #[test]
    fn ids() {
        assert_eq!(current_pid(), std::process::id());
        assert!(process_exists(current_pid()));
        assert!(!process_exists(0));
        assert!(!process_exists(u32::MAX));
    }
}

/// The processes holding a `flock` on the file with this device and inode number, from
/// `/proc/locks` (see `proc(5)`). Blocked requests are not counted. Empty when nobody holds it
/// or `/proc` is not mounted.
pub fn flock_holders(dev: u64, ino: u64) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    let mut pids: Vec<u32> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // "N: FLOCK ADVISORY READ PID MAJ:MIN:INO START END"; blocked waiters have "->".
            if fields.get(1) != Some(&"FLOCK") || fields.get(5) != Some(&want.as_str()) {
                return None;
            }
            fields.get(4)?.parse().ok()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

std::thread_local! {
    static TID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// This thread's id (`gettid(2)`), cached per thread so that hot paths make no system call.
/// A process that forks without exec must not use the cache in the child.
pub fn current_tid() -> u32 {
    TID.with(|t| {
        let v = t.get();
        if v != 0 {
            return v;
        }
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        t.set(tid);
        tid
    })
}

/// The start time of a live process (clock ticks after boot, field 22 of `/proc/PID/stat`,
/// see `proc(5)`): with the pid, it names one process even after the pid is reused. `None` when
/// the process does not exist or is a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": fields after the last ')' start with STATE (field 3).
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The CPU this thread runs on now (`sched_getcpu(3)`, through the vDSO: no system call).
pub fn current_cpu() -> u32 {
    rustix::thread::sched_getcpu() as u32
}

/// Whether the thread `tid` (of any process) is alive: `/proc/TID/stat` exists and its state is
/// not zombie or dead (`proc(5)`; thread ids resolve under `/proc` though they are not listed).
/// A killed process counts as dead before its parent reaps it.
pub fn thread_alive(tid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{tid}/stat")) else {
        return false;
    };
    // "TID (COMM) STATE ...": COMM may hold spaces and parentheses, so find the last ')'.
    match stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
    {
        Some(state) => !matches!(state, "Z" | "X" | "x"),
        None => false,
    }
}

/// Makes `cmd`'s child receive SIGKILL when the thread that spawns it exits (the process
/// killed included): `prctl(PR_SET_PDEATHSIG)` in the child before `exec`. For helpers whose
/// life must not outlast their spawner's. Windows: a job object with
/// `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let hook = || -> std::io::Result<()> {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(std::io::Error::from)
    };
    // SAFETY: the hook runs in the child between fork and exec, where only async-signal-safe
    // work is allowed: it makes one prctl system call (rustix calls the kernel directly; an error
    // converts to io::Error without allocating) and touches no lock or heap.
    unsafe {
        cmd.pre_exec(hook);
    }
}
