//! Memory mappings of files and shared-memory objects.
//!
//! Windows counterparts: `MapViewOfFile`, `UnmapViewOfFile`, `FlushViewOfFile`,
//! `GetSystemInfo().dwAllocationGranularity`.
//!
//! Linux references: `mmap(2)` (`MAP_SHARED`, `MAP_PRIVATE`), `munmap(2)`, `msync(2)`,
//! `sysconf(_SC_PAGESIZE)`.

use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, MsyncFlags, ProtFlags};

use crate::error::{Error, ErrorKind, Result};

/// How a view may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read only (`FILE_MAP_READ`).
    Read,
    /// Read and write, shared with every other view (`FILE_MAP_WRITE`).
    Write,
    /// Read and write, writes private to this view (`FILE_MAP_COPY`).
    CopyOnWrite,
}

/// The granularity of view offsets: the page size on Linux (Windows: 64 KiB).
pub fn allocation_granularity() -> usize {
    rustix::param::page_size()
}

/// A mapped region of a file. Unmapped when dropped.
///
/// The region is memory that other processes may change at any time: it is exposed only
/// as a raw pointer, and the types built on it decide how it may be touched.
#[derive(Debug)]
pub struct MappedRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value; moving it to another thread
// moves nothing but the pointer, and all access goes through raw pointers whose users
// state their own synchronisation contract.
unsafe impl Send for MappedRegion {}
// SAFETY: as above; `&MappedRegion` only hands out the raw pointer and length.
unsafe impl Sync for MappedRegion {}

impl MappedRegion {
    /// Maps `len` bytes of `fd` from `offset` (a multiple of [`allocation_granularity`]).
    pub fn map(fd: impl AsFd, offset: u64, len: usize, access: Access) -> Result<MappedRegion> {
        if len == 0 {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "cannot map zero bytes",
            ));
        }
        if !offset.is_multiple_of(allocation_granularity() as u64) {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!(
                    "view offset {offset} is not a multiple of the allocation granularity ({})",
                    allocation_granularity()
                ),
            ));
        }
        let (prot, flags) = match access {
            Access::Read => (ProtFlags::READ, MapFlags::SHARED),
            Access::Write => (ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED),
            Access::CopyOnWrite => (ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE),
        };
        // SAFETY: a null hint lets the kernel pick fresh addresses, so no existing memory of
        // this process is replaced; the result is owned by the returned value and unmapped once.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) }
            .map_err(|e| Error::from_io("cannot map view", e.into()))?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::with_message(ErrorKind::Other, "mmap returned null"))?;
        Ok(MappedRegion { ptr, len })
    }

    /// The first byte. Valid for [`len`](Self::len) bytes while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes dirty pages of `[offset, offset + len)` to the backing file and waits
    /// (`msync(MS_SYNC)`). `len == 0` means to the end.
    pub fn flush(&self, offset: usize, len: usize) -> Result<()> {
        if offset > self.len || len > self.len - offset {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "flush range is outside the view",
            ));
        }
        let len = if len == 0 { self.len - offset } else { len };
        let page = allocation_granularity();
        let start = offset - offset % page;
        // SAFETY: [start, offset + len) lies within this mapping (start is rounded down to a
        // page boundary of a page-aligned mapping); msync does not change memory contents.
        unsafe {
            rustix::mm::msync(
                self.ptr.as_ptr().add(start).cast(),
                offset + len - start,
                MsyncFlags::SYNC,
            )
        }
        .map_err(|e| Error::from_io("cannot flush view", e.into()))
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe exactly the mapping created in `map`, unmapped only here.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
