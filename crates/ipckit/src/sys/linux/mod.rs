//! The Linux backend of [`crate::sys`].

pub mod dgram;
pub mod dir;
pub mod fd;
pub mod file;
pub mod futex;
pub mod mmap;
pub mod process;
pub mod shm;
pub mod socket;
pub mod tcp;
