//! The OS layer: the only part of ipckit that makes system calls.
//!
//! Each function here is a thin, safe wrapper over one OS facility, documented with the
//! OS references it relies on, in the manner of `rustix` (which does the actual calls;
//! `libc` is used only where `rustix` lacks a call). Mechanisms above this layer never
//! touch the OS directly, so a Windows backend can sit beside `linux` and export the
//! same items without changing them.
//!
//! | module | what | Linux references |
//! | --- | --- | --- |
//! | [`dir`] | private and shared namespace folders, checked for ownership and mode | `mkdir(2)`, `open(2)` with `O_NOFOLLOW`, `fstat(2)`, `fchmod(2)` |
//! | [`process`] | ids of this process and its user; liveness of other processes | `getpid(2)`, `geteuid(2)`, `kill(2)` with signal 0 |
//!
//! This module is public so that ipckit's own tests, benchmarks and tools can use the
//! same primitives; its API follows the needs of the mechanisms, not semantic versioning.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!(
    "ipckit has a Linux backend only for now; a Windows backend will sit beside sys/linux"
);
