//! File mapping: memory shared between processes, by name, with Windows lifetime.
//!
//! ```
//! use ipckit::mapping::{FileMapping, ViewAccess};
//! # let dir = std::env::temp_dir().join(format!("ipckit-doc-mapping-{}", std::process::id()));
//! # let ns = ipckit::namespace::Namespace::at(&dir);
//!
//! // CreateFileMapping(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE, 0, 4096, "Local\\frame")
//! let mapping = FileMapping::builder().name(r"Local\frame")?.size(4096).namespace(ns.clone()).create()?;
//! // MapViewOfFile(mapping, FILE_MAP_WRITE, 0, 0, 0)
//! let view = mapping.map_view(ViewAccess::Write, 0, 0)?;
//! view.write(0, b"hello")?;
//!
//! // Another process: OpenFileMapping(FILE_MAP_READ, FALSE, "Local\\frame")
//! let other = FileMapping::open_in(&ns, r"Local\frame", ViewAccess::Read)?;
//! let mut buf = [0u8; 5];
//! other.map_view(ViewAccess::Read, 0, 0)?.read(0, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! // A C or Python program opens the same bytes with shm_open(3):
//! println!("/dev/shm/{}", mapping.os_name().unwrap());
//! # drop((view, other, mapping)); let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! # Windows semantics kept
//! - Named and unnamed mappings, paging-file (shared memory) or file backed; creating an
//!   existing name opens it and its size wins ([`FileMapping::already_existed`] is the
//!   `ERROR_ALREADY_EXISTS` of `CreateFileMapping`); a name held by a mutex, event or semaphore
//!   is [`ErrorKind::WrongKind`].
//! - Views: read, write or copy-on-write, at offsets that are multiples of
//!   [`allocation_granularity`], length 0 meaning "to the end"; all shared views of one mapping,
//!   in every process, see the same bytes; a copy-on-write view is private.
//! - A read-only mapping (`PAGE_READONLY`) and a handle opened for reading or copying map no
//!   write view, in any process ([`ErrorKind::AccessDenied`]); a failed create changes
//!   nothing (a file is grown only once every check has passed).
//! - The mapping lives while a handle or a view is open in any process, and vanishes with its
//!   data when the last one closes or its process dies (SIGKILL included).
//!
//! # Differences
//! - The allocation granularity is the page size (4 KiB), not 64 KiB.
//! - A named mapping's bytes are the POSIX shared-memory object `/dev/shm/`[`os_name`](FileMapping::os_name),
//!   which programs outside ipckit can open.
//! - Reading shared memory as a plain `&[u8]` would let the compiler assume bytes that another
//!   process changes are stable; [`View`] offers copies, aligned atomics and plain-value
//!   accessors instead, and raw slices only through `unsafe` methods with their contract.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::error::{Error, ErrorKind, Result};
use crate::name::ObjectName;
use crate::namespace::Namespace;
use crate::object::{
    Disposition, FLAG_FILE_BACKED, FLAG_READ_ONLY, Header, ObjectHandle, ObjectKind, Spec,
};
use crate::sys::mmap::{Access, MappedRegion};

pub use crate::sys::mmap::allocation_granularity;

/// The largest mapping ipckit creates (1 TiB): a guard against absurd sizes.
pub const MAX_MAPPING_SIZE: u64 = 1 << 40;

/// The page protection of a mapping. Windows: `PAGE_READONLY`, `PAGE_READWRITE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protection {
    /// Views may only read.
    ReadOnly,
    /// Views may read and write.
    #[default]
    ReadWrite,
}

/// The access of a view. Windows: `FILE_MAP_READ`, `FILE_MAP_WRITE`, `FILE_MAP_COPY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViewAccess {
    /// Read only.
    Read,
    /// Read and write, seen by every other shared view.
    Write,
    /// Read and write, private to this view (copy-on-write).
    CopyOnWrite,
}

/// Builder for [`FileMapping`]. Windows: the arguments of `CreateFileMapping`.
#[derive(Debug, Default)]
pub struct FileMappingBuilder {
    name: Option<ObjectName>,
    size: u64,
    protection: Protection,
    file: Option<File>,
    others: bool,
    namespace: Option<Namespace>,
}

impl FileMappingBuilder {
    /// The mapping's name (`NAME`, `Local\NAME` or `Global\NAME`); without one it is unnamed.
    pub fn name(mut self, name: &str) -> Result<Self> {
        self.name = Some(ObjectName::parse(name)?);
        Ok(self)
    }

    /// Size in bytes. Required (non-zero) without a file; with a file, 0 means the file's size
    /// and a larger size grows the file.
    pub fn size(mut self, size: u64) -> Self {
        self.size = size;
        self
    }

    /// Page protection (default read-write). A read-only mapping refuses write views in every
    /// process that opens it; with a file, read-write needs a file open for writing
    /// ([`ErrorKind::AccessDenied`] otherwise).
    pub fn protection(mut self, protection: Protection) -> Self {
        self.protection = protection;
        self
    }

    /// Back the mapping with this file instead of shared memory.
    /// Windows: the `hFile` argument of `CreateFileMapping`.
    pub fn file(mut self, file: File) -> Self {
        self.file = Some(file);
        self
    }

    /// Let other users open the mapping (mode 0666). Default: only this user.
    /// Windows: a security descriptor that grants access to others.
    pub fn share_with_other_users(mut self, yes: bool) -> Self {
        self.others = yes;
        self
    }

    /// Use this namespace instead of the user's (tests and embedded use).
    pub fn namespace(mut self, ns: Namespace) -> Self {
        self.namespace = Some(ns);
        self
    }

    /// Creates the mapping, or opens it if the name exists (check [`FileMapping::already_existed`]).
    /// Windows: `CreateFileMapping`.
    pub fn create(self) -> Result<FileMapping> {
        let file_backed = self.file.is_some();
        // Every check comes before the file grows: a failed call changes nothing.
        if file_backed && self.name.is_some() {
            return Err(Error::with_message(
                ErrorKind::Unsupported,
                "named file-backed mappings are not supported yet: name a paging-file mapping, or share the file itself",
            ));
        }
        let mut size = self.size;
        if let Some(file) = &self.file {
            // Windows: the file handle needs GENERIC_READ, and GENERIC_WRITE for PAGE_READWRITE.
            let (readable, writable) = crate::sys::file::access(file)?;
            if !readable || (!writable && self.protection == Protection::ReadWrite) {
                return Err(Error::with_message(
                    ErrorKind::AccessDenied,
                    if readable {
                        "the file is open read-only: map it with Protection::ReadOnly"
                    } else {
                        "the file must be open for reading to be mapped"
                    },
                ));
            }
            let file_len = crate::sys::file::size(file)?;
            if size == 0 {
                size = file_len;
            }
            if size == 0 {
                return Err(Error::with_message(
                    ErrorKind::InvalidParameter,
                    "cannot map an empty file with size 0 (Windows: ERROR_FILE_INVALID)",
                ));
            }
            if size > MAX_MAPPING_SIZE {
                return Err(too_big(size));
            }
            if size > file_len {
                if self.protection == Protection::ReadOnly {
                    return Err(Error::with_message(
                        ErrorKind::AccessDenied,
                        "a read-only mapping cannot grow its file",
                    ));
                }
                crate::sys::file::set_size(file, size)?;
            }
        } else if size == 0 {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "a mapping without a file needs a non-zero size",
            ));
        } else if size > MAX_MAPPING_SIZE {
            return Err(too_big(size));
        }
        let ns = match self.namespace {
            Some(ns) => ns,
            None => Namespace::user()?,
        };
        let mut flags = if file_backed { FLAG_FILE_BACKED } else { 0 };
        if self.protection == Protection::ReadOnly {
            flags |= FLAG_READ_ONLY;
        }
        let header = Header {
            kind: ObjectKind::FileMapping,
            size,
            param: 0,
            flags,
            creator_pid: 0,
        };
        let spec = Spec {
            header,
            with_shm: !file_backed,
            others: self.others,
            state: [0; 4],
        };
        let (object, disposition) = ObjectHandle::create(&ns, self.name.as_ref(), &spec)?;
        if disposition == Disposition::Opened {
            check_data_size(&object)?;
        }
        // An existing mapping's protection wins; ours may only narrow it.
        let writable = self.protection == Protection::ReadWrite && !read_only(&object);
        let size = object.header().size;
        Ok(FileMapping {
            inner: Arc::new(Inner {
                object,
                file: self.file,
                size,
                writable,
            }),
            existed: disposition == Disposition::Opened,
        })
    }
}

/// Whether the mapping was created read-only (`PAGE_READONLY`).
fn read_only(object: &ObjectHandle) -> bool {
    object.header().flags & FLAG_READ_ONLY != 0
}

/// Refuses a mapping whose shared memory is smaller than its header says (damaged, or truncated
/// by another program): touching the missing pages would kill the process with `SIGBUS`.
fn check_data_size(object: &ObjectHandle) -> Result<()> {
    let Some(fd) = object.data_fd() else {
        return Ok(());
    };
    let have = crate::sys::file::size(fd)?;
    let want = object.header().size;
    if have < want {
        return Err(Error::with_message(
            ErrorKind::Protocol,
            format!("damaged mapping: its shared memory has {have} of its {want} bytes"),
        ));
    }
    Ok(())
}

fn too_big(size: u64) -> Error {
    Error::with_message(
        ErrorKind::InvalidParameter,
        format!("mapping size {size} is larger than the maximum ({MAX_MAPPING_SIZE})"),
    )
}

#[derive(Debug)]
struct Inner {
    object: ObjectHandle,
    file: Option<File>,
    size: u64,
    writable: bool,
}

/// A file-mapping object. Windows: the handle from `CreateFileMapping` / `OpenFileMapping`.
///
/// Clones share one handle. Views keep the mapping alive, as on Windows.
#[derive(Debug, Clone)]
pub struct FileMapping {
    inner: Arc<Inner>,
    existed: bool,
}

impl FileMapping {
    /// A builder with the `CreateFileMapping` arguments.
    pub fn builder() -> FileMappingBuilder {
        FileMappingBuilder::default()
    }

    /// Creates (or opens, if it exists) a named read-write paging-file mapping of `size` bytes
    /// in the user's namespace. Windows: `CreateFileMapping(INVALID_HANDLE_VALUE, ..., name)`.
    pub fn create(name: &str, size: u64) -> Result<FileMapping> {
        Self::builder().name(name)?.size(size).create()
    }

    /// Opens an existing named mapping. Windows: `OpenFileMapping`. `access` is the most the
    /// handle allows: only [`ViewAccess::Write`] lets it map write views (and only when the
    /// mapping was not created read-only); any handle maps read and copy-on-write views.
    /// [`ErrorKind::NotFound`] if there is none, [`ErrorKind::WrongKind`] if the name is
    /// another kind of object.
    pub fn open(name: &str, access: ViewAccess) -> Result<FileMapping> {
        Self::open_in(&Namespace::user()?, name, access)
    }

    /// [`open`](Self::open) in a given namespace.
    pub fn open_in(ns: &Namespace, name: &str, access: ViewAccess) -> Result<FileMapping> {
        let name = ObjectName::parse(name)?;
        let object = ObjectHandle::open(ns, &name, ObjectKind::FileMapping)?;
        if object.data_fd().is_none() {
            return Err(Error::with_message(
                ErrorKind::Unsupported,
                "file-backed mappings cannot be opened by name",
            ));
        }
        check_data_size(&object)?;
        let size = object.header().size;
        // Windows: a handle opened for FILE_MAP_READ or FILE_MAP_COPY cannot map a write view,
        // nor can any handle of a PAGE_READONLY mapping.
        let writable = access == ViewAccess::Write && !read_only(&object);
        Ok(FileMapping {
            inner: Arc::new(Inner {
                object,
                file: None,
                size,
                writable,
            }),
            existed: true,
        })
    }

    /// Whether the create call found an existing mapping (Windows: `GetLastError() ==
    /// ERROR_ALREADY_EXISTS` after `CreateFileMapping`). Always true for [`open`](Self::open).
    pub fn already_existed(&self) -> bool {
        self.existed
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The name, if it has one.
    pub fn name(&self) -> Option<&ObjectName> {
        self.inner.object.name()
    }

    /// The POSIX shared-memory name of a named paging-file mapping (without `/`): the file
    /// `/dev/shm/NAME`, which `shm_open("/NAME")` or Python's
    /// `multiprocessing.shared_memory.SharedMemory(name="NAME")` opens.
    pub fn os_name(&self) -> Option<&str> {
        self.inner.object.shm_name()
    }

    fn data_fd(&self) -> BorrowedFd<'_> {
        match (&self.inner.file, self.inner.object.data_fd()) {
            (Some(f), _) => f.as_fd(),
            (None, Some(fd)) => fd.as_fd(),
            (None, None) => unreachable!("a mapping has a file or shared memory"),
        }
    }

    /// Maps a view of `len` bytes from `offset` (a multiple of [`allocation_granularity`]);
    /// `len == 0` maps to the end. Windows: `MapViewOfFile`.
    pub fn map_view(&self, access: ViewAccess, offset: u64, len: usize) -> Result<View> {
        let size = self.inner.size;
        if offset >= size {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!("view offset {offset} is at or past the end of the {size}-byte mapping"),
            ));
        }
        let len = if len == 0 {
            usize::try_from(size - offset).map_err(|_| too_big(size))?
        } else {
            len
        };
        if len as u64 > size - offset {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!(
                    "view [{offset}, {offset}+{len}) runs past the end of the {size}-byte mapping"
                ),
            ));
        }
        if access == ViewAccess::Write && !self.inner.writable {
            return Err(Error::with_message(
                ErrorKind::AccessDenied,
                "the mapping was created or opened read-only",
            ));
        }
        let os_access = match access {
            ViewAccess::Read => Access::Read,
            ViewAccess::Write => Access::Write,
            ViewAccess::CopyOnWrite => Access::CopyOnWrite,
        };
        let region = MappedRegion::map(self.data_fd(), offset, len, os_access)?;
        Ok(View {
            region,
            access,
            _mapping: self.inner.clone(),
        })
    }
}

/// Types that are plain bytes: every bit pattern is a valid value, no padding, no pointers.
///
/// # Safety
/// Implementors must be `Copy`, have no padding and accept any bit pattern.
pub unsafe trait Plain: Copy + 'static {}
// SAFETY: integers and arrays of them accept any bit pattern and have no padding.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}
// SAFETY: as above.
unsafe impl Plain for i16 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for i64 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for f64 {}
// SAFETY: an array of plain values has no padding between elements and accepts any bits.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

/// A mapped view. Windows: the address `MapViewOfFile` returns; unmapped on drop
/// (`UnmapViewOfFile`).
///
/// Other processes may write the bytes at any moment, so the view never hands out a plain
/// `&[u8]` safely. Use [`read`](View::read) / [`write`](View::write) (copies),
/// [`atomic_u32`](View::atomic_u32) / [`atomic_u64`](View::atomic_u64) (aligned atomics for
/// flags, counters and locks), [`get`](View::get) / [`set`](View::set) (plain values), or the
/// `unsafe` slice accessors under their stated contract.
#[derive(Debug)]
pub struct View {
    region: MappedRegion,
    access: ViewAccess,
    _mapping: Arc<Inner>,
}

impl View {
    /// The view's length in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Views are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The view's access.
    pub fn access(&self) -> ViewAccess {
        self.access
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        if offset > self.len() || len > self.len() - offset {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!(
                    "range [{offset}, {offset}+{len}) is outside the {}-byte view",
                    self.len()
                ),
            ));
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.access == ViewAccess::Read {
            return Err(Error::with_message(
                ErrorKind::AccessDenied,
                "the view is read-only",
            ));
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes from `offset` of the view into `buf`. If another process writes
    /// the same bytes meanwhile, the copy may mix old and new bytes: guard shared data with a
    /// mutex or an event, as on Windows.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        // SAFETY: the range lies within the mapping (checked above) and `buf` is our own memory,
        // disjoint from it. Bytes are copied once into `buf`; a concurrent writer can only make
        // them torn, and every bit pattern is a valid `u8`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.region.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Copies `data` into the view at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, data.len())?;
        // SAFETY: the range lies within a writable mapping (checked above) and `data` is disjoint
        // from it. Shared memory is never referenced as a Rust `&[u8]`, so writing through the
        // raw pointer invalidates no reference.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.region.as_ptr().add(offset),
                data.len(),
            )
        };
        Ok(())
    }

    /// Fills `len` bytes from `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        // SAFETY: as in `write`.
        unsafe { std::ptr::write_bytes(self.region.as_ptr().add(offset), byte, len) };
        Ok(())
    }

    /// Reads a plain value at `offset` (any alignment).
    pub fn get<T: Plain>(&self, offset: usize) -> Result<T> {
        self.check_range(offset, size_of::<T>())?;
        // SAFETY: in range (checked), `read_unaligned` has no alignment requirement and `T: Plain`
        // accepts whatever bits are there.
        Ok(unsafe {
            self.region
                .as_ptr()
                .add(offset)
                .cast::<T>()
                .read_unaligned()
        })
    }

    /// Writes a plain value at `offset` (any alignment).
    pub fn set<T: Plain>(&self, offset: usize, value: T) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, size_of::<T>())?;
        // SAFETY: in range of a writable view (checked); no Rust reference to this memory exists.
        unsafe {
            self.region
                .as_ptr()
                .add(offset)
                .cast::<T>()
                .write_unaligned(value)
        };
        Ok(())
    }

    fn atomic_ptr(&self, offset: usize, size: usize) -> Result<*mut u8> {
        self.check_range(offset, size)?;
        let p = self.region.as_ptr().wrapping_add(offset);
        if !(p as usize).is_multiple_of(size) {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!("offset {offset} is not aligned to {size} bytes"),
            ));
        }
        Ok(p)
    }

    /// An atomic 32-bit integer at `offset` (4-byte aligned), shared with every process that
    /// maps the same bytes. Writing through it on a read-only view is prevented by requiring
    /// a writable view.
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32> {
        self.check_writable()?;
        let p = self.atomic_ptr(offset, 4)?;
        // SAFETY: `p` is in range, 4-byte aligned and writable, and lives as long as `&self`
        // (the mapping stays until the view drops). Atomics are the sanctioned way to share
        // memory that others modify concurrently.
        Ok(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// An atomic 64-bit integer at `offset` (8-byte aligned). See [`atomic_u32`](Self::atomic_u32).
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64> {
        self.check_writable()?;
        let p = self.atomic_ptr(offset, 8)?;
        // SAFETY: as in `atomic_u32`, with 8-byte alignment.
        Ok(unsafe { AtomicU64::from_ptr(p.cast()) })
    }

    /// Writes this view's dirty pages in `[offset, offset + len)` to the backing file
    /// (`len == 0`: to the end). Windows: `FlushViewOfFile`.
    pub fn flush(&self, offset: usize, len: usize) -> Result<()> {
        self.region.flush(offset, len)
    }

    /// The first byte of the view.
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// The view as a byte slice.
    ///
    /// # Safety
    /// For as long as the slice lives, no process and no thread may write these bytes
    /// (through any view of the mapping). Typically: hold the mutex that guards the data, or
    /// have an event tell you the writer is done.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the caller guarantees nobody writes while the slice lives; the memory is mapped
        // and valid for `len` bytes for the lifetime of `&self`.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr(), self.len()) }
    }

    /// The view as a mutable byte slice.
    ///
    /// # Safety
    /// For as long as the slice lives, no other process or thread may read or write these
    /// bytes through any view of the mapping.
    pub unsafe fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        self.check_writable()?;
        // SAFETY: the caller guarantees exclusive access; `&mut self` excludes other borrows of
        // this view; the memory is mapped writable for `len` bytes.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.region.as_ptr(), self.len()) })
    }
}
