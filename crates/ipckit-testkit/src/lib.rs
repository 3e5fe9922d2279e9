//! Multi-process test harness for ipckit.
//!
//! Every IPC integration test needs a second process: a server for a client,
//! a writer for a reader, a process to kill in the middle of a transfer. This
//! crate starts such *peer* processes from an ordinary libtest `#[test]`
//! function, talks to them over a control channel, waits for them with
//! timeouts, kills them with `SIGKILL`, and guarantees that no process and no
//! file outlives the test — when it fails, and even when the test process is
//! itself killed.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # /*
//! #[test]
//! # */
//! fn echo_roundtrip() {
//!     let t = ipckit_testkit::test_case!();
//!     // Roles first: in a peer process, `role` runs the closure and exits.
//!     t.role("echo", |ctx| {
//!         while let Some(msg) = ctx.recv()? {
//!             ctx.send(&msg)?;
//!         }
//!         Ok(())
//!     });
//!
//!     // Parent work: only the test process gets here.
//!     let mut peer = t.spawn("echo").start();
//!     peer.send(b"hi").unwrap();
//!     assert_eq!(peer.recv_timeout(Duration::from_secs(10)).unwrap(), b"hi");
//!     peer.close_input(); // the role's recv() returns None, it returns Ok
//!     assert!(peer.wait_timeout(Duration::from_secs(10)).unwrap().success());
//! } // peers are killed and reaped, the namespace directory is removed
//! # fn main() { echo_roundtrip() }
//! ```
//!
//! # Roles and re-execution
//!
//! A peer is the test binary itself, re-executed to run the same test in a
//! named *role*. [`test_case!`] identifies the test by its libtest name (the
//! module path without the crate name, e.g. `ipc::pipe::echo_roundtrip`),
//! computed from the [`type_name`](std::any::type_name) of a function that
//! the macro defines inside the test function — thread names are not used.
//! It therefore has to be invoked directly in the `#[test]` function's body
//! (closures are fine, helper functions are not). It works for unit tests,
//! for tests in nested modules and for integration tests in `tests/*.rs`,
//! under `cargo test` and `cargo nextest run`. Doctests are not supported.
//!
//! [`TestCase::spawn`] runs [`std::env::current_exe`] with the arguments
//! `<test name> --exact --nocapture --test-threads=1 --include-ignored` and
//! the role name, the control socket, the parent's pid and the namespace in
//! the environment. libtest in the peer runs just this test function, from
//! the top: [`test_case!`] notices the environment, [`TestCase::role`] runs
//! the closure of the requested role and exits the process. Hence:
//!
//! * declare all roles right after `test_case!()`, before any other work —
//!   everything before the role's declaration also runs in the peer;
//! * a role reaching parent-only code means it was not declared: the peer
//!   then exits with [`exit_code::SETUP_FAILED`] and a message.
//!
//! A role closure returns [`RoleResult`]. The peer's exit code is:
//!
//! | outcome | code |
//! |---|---|
//! | `Ok(())` | [`exit_code::SUCCESS`] (0) |
//! | `Err(e)`: `e` and its sources printed to stderr | [`exit_code::ROLE_FAILED`] (1) |
//! | panic (reported by libtest) | [`exit_code::PANICKED`] (101) |
//! | harness setup problem (role not declared, bad environment…) | [`exit_code::SETUP_FAILED`] (2) |
//! | the parent died before the peer armed its death signal | [`exit_code::PARENT_GONE`] (3) |
//! | a supervised program could not be executed | [`exit_code::EXEC_FAILED`] (127) |
//!
//! Arguments ([`PeerBuilder::arg`]) reach the role through the environment
//! (libtest would take extra command-line arguments for filters) and are
//! read with [`RoleCtx::args`]; variables set with [`PeerBuilder::env`] are
//! read with [`RoleCtx::env`]. A role may spawn peers itself (through the
//! same `TestCase`, captured by the closure), for example to build a chain
//! of processes.
//!
//! Other programs, such as the `ipckit` binary in the CLI crate's tests
//! (`env!("CARGO_BIN_EXE_ipckit")`), are started with [`TestCase::command`]
//! (same guarantees as a role, through a re-executed test binary that arms
//! the parent-death signal and then `exec`s the program) or
//! [`Peer::command`] (directly, without the parent-death signal).
//!
//! # The control channel
//!
//! For each role peer, the parent binds a Unix stream socket in the test's
//! private directory (mode `0700`) and passes its path in the environment;
//! the peer connects when it enters its role. The parent accepts with a
//! timeout ([`PeerBuilder::connect_timeout`]), checks the connecting pid
//! with `SO_PEERCRED`, notices a peer that exits before connecting (the
//! error has its exit status and stderr, see [`PeerBuilder::try_start`]),
//! and unlinks the socket once connected.
//!
//! Messages are frames: a little-endian `u32` length then that many bytes,
//! at most [`MAX_FRAME_LEN`]. A larger frame is refused before anything is
//! allocated for it, and the channel is unusable afterwards. Both sides have
//! `send`, `recv` (`None` on a clean end of stream), `recv_timeout`, and the
//! string conveniences `send_str`, `recv_str`, `expect`. On the parent side
//! [`Peer::send`] and [`Peer::recv`] are bounded by an I/O timeout
//! ([`PeerBuilder::io_timeout`]), and every error message carries the
//! peer's state and the tail of its stderr.
//!
//! # Never leaking a process
//!
//! * A [`Peer`] is killed with `SIGKILL` and reaped when dropped, so failing
//!   assertions (panics) clean up too, and no zombie is left.
//! * [`Peer::wait_timeout`] kills the peer when the time is up.
//! * If the test process dies — even from `SIGKILL`, when no destructor
//!   runs — the kernel kills its peers: at role entry each peer calls
//!   `prctl(PR_SET_PDEATHSIG, SIGKILL)` and then checks that `getppid()` is
//!   still the pid the parent passed in the environment, exiting at once
//!   ([`exit_code::PARENT_GONE`]) if the parent died before the signal was
//!   armed. The same applies down a chain of peers.
//!
//! **The death signal fires when the *thread* that spawned the peer exits,
//! not the process.** Spawn peers from the test's own thread (or from a role
//! closure); a peer spawned from a short-lived helper thread is killed as
//! soon as that thread ends.
//!
//! # Isolation
//!
//! Each [`TestCase`] owns a fresh private directory (mode `0700`) under the
//! temporary directory. Its `ns` subdirectory is the test's *namespace*
//! ([`TestCase::namespace`]): every peer gets it as the
//! [`IPCKIT_RUNTIME_DIR`](RUNTIME_DIR_ENV) environment variable, which the
//! library honors as the override of its per-user runtime directory, so
//! tests running in parallel never see each other's objects. The directory
//! is removed recursively once the `TestCase` and its peers are dropped,
//! also on panic. [`unique_name`] makes names for objects that live
//! elsewhere, [`TestDir`] is a standalone private directory, and
//! [`process_exists`] checks that a process is really gone.
//!
//! Tests stay independent under both runners: `cargo test` runs them as
//! threads of one process, `cargo nextest run` as one process each.

#![warn(missing_docs)]

mod capture;
mod case;
mod channel;
mod peer;
mod util;

use std::time::Duration;

pub use case::{RoleCtx, RoleResult, TestCase};
pub use peer::{Peer, PeerBuilder};
pub use util::{
    TestDir, namespace_shm_token, process_exists, process_state, unique_name, wait_for,
};

/// Environment variable through which peers receive the test's
/// [namespace](TestCase::namespace): the override of the library's per-user
/// runtime directory.
pub const RUNTIME_DIR_ENV: &str = "IPCKIT_RUNTIME_DIR";

/// Largest control channel frame, in bytes (64 MiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

/// Default of [`PeerBuilder::connect_timeout`]: 15 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Default of [`PeerBuilder::io_timeout`]: 20 seconds.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Default of [`PeerBuilder::capture_limit`]: the last 64 KiB of stdout and
/// of stderr are kept.
pub const DEFAULT_CAPTURE_LIMIT: usize = 64 * 1024;

/// Exit codes of peer processes.
pub mod exit_code {
    /// The role closure returned `Ok(())`.
    pub const SUCCESS: i32 = 0;
    /// The role closure returned `Err`; the error is printed to stderr.
    pub const ROLE_FAILED: i32 = 1;
    /// The harness could not set the peer up (role not declared, control
    /// channel unreachable, inconsistent environment); see stderr.
    pub const SETUP_FAILED: i32 = 2;
    /// The parent died before the peer armed its parent-death signal.
    pub const PARENT_GONE: i32 = 3;
    /// The role panicked: libtest reports the failed test with this code.
    pub const PANICKED: i32 = 101;
    /// A supervised program ([`TestCase::command`](crate::TestCase::command))
    /// could not be executed.
    pub const EXEC_FAILED: i32 = 127;
}

/// Creates the [`TestCase`] of the enclosing `#[test]` function.
///
/// Must be invoked directly in the test function's body (possibly inside a
/// closure there), once, as its first statement: the libtest name is derived
/// from the path of a function the macro defines at the call site. In a
/// peer process started by [`TestCase::command`] this never returns (the
/// process becomes the program).
///
/// # Panics
///
/// In the test process, if the temporary directory cannot be created or the
/// name cannot be derived (the macro was used outside any function).
#[macro_export]
macro_rules! test_case {
    () => {{
        fn __ipckit_testkit_anchor() {}
        $crate::TestCase::__from_anchor($crate::__type_name_of(__ipckit_testkit_anchor))
    }};
}

/// Implementation detail of [`test_case!`].
#[doc(hidden)]
pub fn __type_name_of<T>(_: T) -> &'static str {
    std::any::type_name::<T>()
}
