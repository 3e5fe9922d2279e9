//! Private temporary directories, unique names and process probes.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::io::Errno;
use rustix::process::{Pid, test_kill_process};

/// Longest temporary base directory used as is. Control sockets live below
/// it and a Unix socket path is limited to 107 bytes, so a longer `TMPDIR`
/// is replaced by `/tmp`.
const MAX_TMP_BASE_LEN: usize = 48;

/// A fresh private directory (mode `0700`) under the system temporary
/// directory, removed recursively when dropped (also while unwinding from a
/// panic).
///
/// The directory is created with a new unique name and never reuses an
/// existing one. Its base is [`std::env::temp_dir`], or `/tmp` when that path
/// is longer than 48 bytes (control sockets are created below it, and Unix
/// socket paths are limited to 107 bytes).
///
/// A directory cannot be removed if the process is killed with `SIGKILL`;
/// such leftovers are named `<prefix>-<pid>-…` in the temporary directory.
///
/// ```
/// let dir = ipckit_testkit::TestDir::new("example").unwrap();
/// let path = dir.path().to_owned();
/// std::fs::write(path.join("file"), b"data").unwrap();
/// drop(dir);
/// assert!(!path.exists());
/// ```
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates a new private directory named `<prefix>-<unique suffix>`.
    ///
    /// # Errors
    ///
    /// Fails if the directory cannot be created or its mode cannot be set.
    pub fn new(prefix: &str) -> io::Result<TestDir> {
        let base = temp_base();
        loop {
            let path = base.join(unique_name(prefix));
            match create_private_dir(&path) {
                Ok(()) => return Ok(TestDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create private directory {}: {e}", path.display()),
                    ));
                }
            }
        }
    }

    /// The directory's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            eprintln!("ipckit-testkit: cannot remove {}: {e}", self.path.display());
        }
    }
}

fn temp_base() -> PathBuf {
    let base = std::env::temp_dir();
    if base.is_absolute() && base.as_os_str().len() <= MAX_TMP_BASE_LEN {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

/// Creates `path` (not its parents) with mode `0700`, failing if it exists.
pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(path)?;
    // The umask can only clear bits; make sure the owner has full access.
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Removes a directory tree, first restoring owner access on directories
/// that a test made unreadable.
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            restore_dir_access(path);
            match fs::remove_dir_all(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
    }
}

fn restore_dir_access(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                restore_dir_access(&entry.path());
            }
        }
    }
}

/// Returns a name that is unique across the processes of this machine and
/// across calls in this process: `<prefix>-<pid>-<counter>-<time>`, where
/// `<time>` is the low 32 bits of the current time in nanoseconds, in hex.
///
/// Use it for the objects a test creates (named pipes, shared memory,
/// events…) so that tests running in parallel never collide.
///
/// ```
/// let a = ipckit_testkit::unique_name("evt");
/// let b = ipckit_testkit::unique_name("evt");
/// assert!(a.starts_with("evt-"));
/// assert_ne!(a, b);
/// ```
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
    format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id())
}

/// Whether a process with this pid exists, as seen by `kill(pid, 0)`.
///
/// A process counts as existing from its creation until it has been
/// **reaped** by its parent: a zombie (terminated but not yet waited for,
/// state `Z` in `/proc/<pid>/stat`) still exists and this returns `true` for
/// it, because an unreaped child is a leak. A process owned by another user
/// (`kill` fails with `EPERM`) also exists. Only `ESRCH` means it does not.
///
/// Pids are recycled by the kernel, so a `false` answer is reliable while a
/// `true` answer long after the process ended could, in principle, be about
/// a new process with the same pid; checks in tests should be done promptly.
/// Returns `false` for pid 0 and for pids that do not fit a `pid_t`.
pub fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e != Errno::SRCH,
    }
}

/// The state letter of a process from `/proc/<pid>/stat` (`R` running, `S`
/// sleeping, `D` disk sleep, `T` stopped, `Z` zombie, …), or `None` if there
/// is no such process (it has been reaped) or `/proc` is unavailable.
/// Useful in failure messages: a pid that still [exists](process_exists) with
/// state `Z` has terminated but has not been reaped by its parent.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.trim_start().chars().next()
}

/// Polls `condition` (every few milliseconds, backing off to 20 ms) until it
/// returns `true` or `timeout` has elapsed. Returns whether it became true;
/// the condition is always evaluated at least once, and once more at the
/// deadline.
///
/// ```
/// use std::time::Duration;
/// let start = std::time::Instant::now();
/// assert!(ipckit_testkit::wait_for(Duration::from_secs(5), || start.elapsed() > Duration::from_millis(10)));
/// ```
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if condition() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return condition();
        }
        thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The token that ipckit puts in the POSIX shared-memory names of the namespace at `dir`
/// (`ipckit.UID.TOKEN.NAME` and `ipckit.global.TOKEN.NAME`): the first 12 hex digits of the
/// SHA-256 of the path. ipckit's tests check that both sides agree.
pub fn namespace_shm_token(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes every `/dev/shm` entry of the namespace at `dir`: objects whose last holder was
/// killed leave their shared memory until the namespace is next used, and a test's namespace is
/// not used again.
pub(crate) fn remove_namespace_shm(dir: &Path) {
    let token = namespace_shm_token(dir);
    let Ok(entries) = fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let mut parts = name.splitn(4, '.');
        if parts.next() == Some("ipckit") && parts.nth(1) == Some(token.as_str()) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_exists_and_pid_zero_does_not() {
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(0));
        assert!(!process_exists(u32::MAX));
        assert!(matches!(process_state(std::process::id()), Some('R' | 'S')));
    }

    #[test]
    fn unique_names_differ() {
        let names: std::collections::HashSet<_> = (0..1000).map(|_| unique_name("x")).collect();
        assert_eq!(names.len(), 1000);
    }

    #[test]
    fn test_dir_is_private_and_removed_even_when_unreadable_inside() {
        let dir = TestDir::new("ipckit-testkit-unit").expect("create");
        let path = dir.path().to_owned();
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let locked = path.join("a/b");
        fs::create_dir_all(&locked).expect("mkdir");
        fs::write(locked.join("f"), b"x").expect("write");
        fs::set_permissions(path.join("a"), fs::Permissions::from_mode(0o000)).expect("chmod");
        drop(dir);
        assert!(!path.exists());
    }
}
