//! ipckit: the nine Windows IPC mechanisms, natively on Linux.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod error;
pub mod name;
pub mod namespace;
pub mod sys;

pub use error::{Error, ErrorKind, Result};
