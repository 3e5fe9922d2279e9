//! The Linux backend of [`crate::sys`].

pub mod dir;
pub mod process;
