//! One page of shared memory for the lock baselines: a file in `/dev/shm` (or an anonymous
//! memory file) mapped `MAP_SHARED`, with atomic words at fixed offsets.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::mm::{MapFlags, ProtFlags};

/// Size of the page.
pub const PAGE: usize = 4096;

/// A mapped page of shared memory. Named pages are unlinked when the creator drops them.
#[derive(Debug)]
pub struct ShmPage {
    ptr: *mut u8,
    path: Option<PathBuf>,
    owner: bool,
}

// SAFETY: the page is plain shared memory reached only through atomics and the pthread
// mutex's own synchronisation; the pointer may move between threads.
unsafe impl Send for ShmPage {}
// SAFETY: as above; shared references only hand out atomics.
unsafe impl Sync for ShmPage {}

fn map(fd: impl AsFd) -> io::Result<*mut u8> {
    // SAFETY: a fresh shared mapping of a file at least PAGE bytes long, at an address the kernel
    // picks; it is unmapped exactly once, in Drop.
    let p = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            PAGE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }?;
    Ok(p.cast())
}

impl ShmPage {
    /// An unnamed page (for single-process measurements).
    pub fn anonymous() -> io::Result<ShmPage> {
        let fd = rustix::fs::memfd_create("ipckit-bench-page", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, PAGE as u64)?;
        Ok(ShmPage {
            ptr: map(&fd)?,
            path: None,
            owner: true,
        })
    }

    /// A page another process can open by [`path`](Self::path).
    pub fn create_named() -> io::Result<ShmPage> {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!(
            "ipckit-bench-page-{}-{}",
            std::process::id(),
            rustix::time::clock_gettime(rustix::time::ClockId::Monotonic).tv_nsec
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.set_len(PAGE as u64)?;
        Ok(ShmPage {
            ptr: map(&file)?,
            path: Some(path),
            owner: true,
        })
    }

    /// Opens a page made by [`create_named`](Self::create_named).
    pub fn open(path: &Path) -> io::Result<ShmPage> {
        let file: File = OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() < PAGE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared page too small",
            ));
        }
        Ok(ShmPage {
            ptr: map(&file)?,
            path: Some(path.to_owned()),
            owner: false,
        })
    }

    /// The file of a named page.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// The 32-bit word at byte offset `4 * i` (within the first 64 bytes).
    pub fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < 16);
        // SAFETY: in bounds (asserted), 4-byte aligned (page-aligned base), valid while `self` lives.
        unsafe { AtomicU32::from_ptr(self.ptr.add(4 * i).cast()) }
    }

    /// The 64-bit word at byte offset `8 * i` (within the first 64 bytes).
    pub fn word64(&self, i: usize) -> &AtomicU64 {
        assert!(i < 8);
        // SAFETY: in bounds (asserted), 8-byte aligned, valid while `self` lives.
        unsafe { AtomicU64::from_ptr(self.ptr.add(8 * i).cast()) }
    }

    /// The bytes from offset 64 on, where a lock object may live.
    pub fn object_ptr(&self) -> *mut u8 {
        self.ptr.wrapping_add(64)
    }
}

impl Drop for ShmPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), PAGE) };
        if self.owner
            && let Some(p) = &self.path
        {
            let _ = std::fs::remove_file(p);
        }
    }
}
