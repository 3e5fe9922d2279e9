//! Process and user identity.
//!
//! Windows counterparts: `GetCurrentProcessId`, the user SID of the process token,
//! and `OpenProcess` + `GetExitCodeProcess` to learn whether a process still runs.

use rustix::process::{Pid, getegid, geteuid, getpid, test_kill_process};

/// This process's id. Linux: `getpid(2)`.
pub fn current_pid() -> u32 {
    getpid().as_raw_nonzero().get() as u32
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(current_pid(), std::process::id());
        assert!(process_exists(current_pid()));
        assert!(!process_exists(0));
        assert!(!process_exists(u32::MAX));
    }
}
