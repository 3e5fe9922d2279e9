//! Kernel objects: the one namespace shared by file mappings, mutexes, events and semaphores.
//!
//! Windows keeps these four kinds of object in one namespace (a mutex and an event cannot
//! both be called `x`), creates-or-opens by name atomically, and deletes an object when its
//! last handle closes, also when the holder was killed. This module does the same for every
//! ipckit kernel object; the mechanism modules ([`crate::mapping`], [`crate::sync`]) build on it.
//!
//! # How it works
//! Each named object has a *side file* `object/ENC(NAME)` in its namespace folder (see
//! [`crate::namespace`]). The first page of the side file holds a [`Header`] (kind, size,
//! parameters) and, for synchronisation objects, their shared state. A file mapping's bytes
//! live in the POSIX shared-memory object [`Namespace::shm_name`].
//!
//! - Every holder keeps a shared `flock` on the side file for as long as it holds the object.
//! - Creating, opening and closing take an exclusive `flock` on the folder's `.lock` file, so
//!   these steps never interleave between processes.
//! - Closing converts the holder's lock to an exclusive one without waiting: whoever succeeds
//!   is the last holder and removes the side file and the shared memory.
//! - A process that dies loses its locks in the kernel. If it was the last holder, the next
//!   create, open or `ipckit ls` finds a side file that nobody locks, knows the object is gone,
//!   and removes the remains: to every observer, the object vanished with its last holder.
//!
//! Unnamed objects use an anonymous memory file (`memfd`) instead of a side file; they live
//! as long as a descriptor to them does.

use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Error, ErrorKind, Result};
use crate::name::{ObjectName, Scope, encode_component};
use crate::namespace::{Folder, Namespace};
use crate::sys::dir::SecureDir;
use crate::sys::{file, mmap, process, shm};

/// Longest encoded object component before it is hashed (see [`encode_component`]).
pub(crate) const OBJECT_COMPONENT_LIMIT: usize = 200;

/// Size of a side file: one page, header then state.
pub(crate) const SIDE_FILE_LEN: usize = 4096;
/// Where the shared state of a synchronisation object starts in its side file.
pub(crate) const STATE_OFFSET: usize = 64;

const MAGIC: [u8; 8] = *b"IPCKOBJ\0";
/// 2: events keep a queue word of sleepers and handed releases (see `sync.rs`).
const VERSION: u32 = 2;
const FOLDER_LOCK: &str = ".lock";

/// The kind of a kernel object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A file mapping (`CreateFileMapping`).
    FileMapping,
    /// A mutex (`CreateMutex`).
    Mutex,
    /// An event (`CreateEvent`).
    Event,
    /// A semaphore (`CreateSemaphore`).
    Semaphore,
    /// A shared-memory message channel (ipckit's own; no Windows counterpart).
    Channel,
}

impl ObjectKind {
    const fn code(self) -> u32 {
        match self {
            ObjectKind::FileMapping => 1,
            ObjectKind::Mutex => 2,
            ObjectKind::Event => 3,
            ObjectKind::Semaphore => 4,
            ObjectKind::Channel => 5,
        }
    }

    const fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(ObjectKind::FileMapping),
            2 => Some(ObjectKind::Mutex),
            3 => Some(ObjectKind::Event),
            4 => Some(ObjectKind::Semaphore),
            5 => Some(ObjectKind::Channel),
            _ => None,
        }
    }

    /// Whether the object keeps its data in a POSIX shared-memory object.
    pub const fn has_shared_memory(self) -> bool {
        matches!(self, ObjectKind::FileMapping | ObjectKind::Channel)
    }

    /// The kind's name as `ipckit ls` shows it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ObjectKind::FileMapping => "mapping",
            ObjectKind::Mutex => "mutex",
            ObjectKind::Event => "event",
            ObjectKind::Semaphore => "semaphore",
            ObjectKind::Channel => "channel",
        }
    }
}

/// The header at the start of every side file (64 bytes, little-endian):
///
/// | offset | field |
/// | --- | --- |
/// | 0 | magic `IPCKOBJ\0` |
/// | 8 | version (u32, 2) |
/// | 12 | kind (u32: 1 mapping, 2 mutex, 3 event, 4 semaphore) |
/// | 16 | size (u64: a mapping's size in bytes, else 0) |
/// | 24 | param (u64: a semaphore's maximum count, else 0) |
/// | 32 | flags (u32: bit 0 manual-reset event, bit 1 file-backed mapping) |
/// | 36 | creator pid (u32) |
/// | 40..64 | reserved, zero |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The object's kind.
    pub kind: ObjectKind,
    /// A mapping's size in bytes.
    pub size: u64,
    /// Kind-specific parameter (a semaphore's maximum count).
    pub param: u64,
    /// Kind-specific flags.
    pub flags: u32,
    /// The process that created the object.
    pub creator_pid: u32,
}

/// `Header::flags` bit: the event is manual-reset.
pub(crate) const FLAG_MANUAL_RESET: u32 = 1;
/// `Header::flags` bit: the mapping is backed by a file the user named, not shared memory.
pub(crate) const FLAG_FILE_BACKED: u32 = 2;
/// `Header::flags` bit: the mapping was created read-only (`PAGE_READONLY`): no process may
/// map a writable shared view of it.
pub(crate) const FLAG_READ_ONLY: u32 = 4;

impl Header {
    /// Encoded length.
    pub const LEN: usize = 64;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.kind.code().to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..32].copy_from_slice(&self.param.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.creator_pid.to_le_bytes());
        b
    }

    /// Decodes and validates a header that another process wrote.
    pub fn decode(b: &[u8]) -> Result<Header> {
        let bad = |why: &str| {
            Error::with_message(ErrorKind::Protocol, format!("damaged object header: {why}"))
        };
        let b: &[u8; Self::LEN] = b
            .get(..Self::LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("too short"))?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if b[0..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        if u32_at(8) != VERSION {
            return Err(bad("unknown version"));
        }
        let kind = ObjectKind::from_code(u32_at(12)).ok_or_else(|| bad("unknown kind"))?;
        let h = Header {
            kind,
            size: u64_at(16),
            param: u64_at(24),
            flags: u32_at(32),
            creator_pid: u32_at(36),
        };
        if h.size > isize::MAX as u64 {
            return Err(bad("size out of range"));
        }
        if b[40..].iter().any(|&x| x != 0) {
            return Err(bad("reserved bytes set"));
        }
        Ok(h)
    }
}

/// What a create call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The object was made by this call.
    Created,
    /// An object of that name existed and was opened (Windows: `ERROR_ALREADY_EXISTS`).
    Opened,
}

/// What to create.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub header: Header,
    /// Create a shared-memory object of `header.size` bytes for the data.
    pub with_shm: bool,
    /// Let other users open the object (permissions 0666 instead of 0600).
    pub others: bool,
    /// Initial words of a synchronisation object's state (at [`STATE_OFFSET`]).
    pub state: [u32; 4],
}

fn state_bytes(state: &[u32; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (chunk, w) in b.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    b
}

/// A held kernel object: while it lives, the object lives.
#[derive(Debug)]
pub(crate) struct ObjectHandle {
    header: Header,
    /// Side file (named objects) or anonymous memory file (unnamed ones).
    side: OwnedFd,
    /// The data's shared memory, for mappings that have it.
    shm: Option<OwnedFd>,
    named: Option<Named>,
}

#[derive(Debug)]
struct Named {
    name: ObjectName,
    folder: SecureDir,
    component: String,
    shm_name: String,
}

/// The folder's `.lock`, held exclusively while an object of the folder is created, opened or
/// closed.
#[derive(Debug)]
struct FolderLock(OwnedFd);

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Unlock explicitly rather than by closing: a child that another thread forks meanwhile
        // has a copy of the descriptor until it executes its program, and would otherwise keep
        // the folder locked until then.
        let _ = file::unlock(&self.0);
    }
}

fn folder_lock(folder: &SecureDir, scope: Scope) -> Result<FolderLock> {
    let fd = match file::open_existing(folder, FOLDER_LOCK) {
        Ok(fd) => fd,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let mode = if scope == Scope::Global { 0o666 } else { 0o600 };
            match file::create_new(folder, FOLDER_LOCK, mode) {
                Ok(fd) => {
                    if scope == Scope::Global {
                        // The umask may have narrowed the mode; every user must be able to lock.
                        file::set_mode(&fd, 0o666)?;
                    }
                    fd
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    file::open_existing(folder, FOLDER_LOCK)?
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    file::lock_exclusive(&fd)?;
    Ok(FolderLock(fd))
}

/// Removes a dead object's side file and shared memory. Caller holds the folder lock and an
/// exclusive lock on the side file.
fn remove_remains(folder: &SecureDir, component: &str, shm_name: &str) -> Result<()> {
    shm::unlink(shm_name)?;
    file::unlink(folder, component)
}

fn read_header(fd: impl AsFd) -> Result<Header> {
    let mut b = [0u8; Header::LEN];
    file::read_exact_at(fd, &mut b, 0)?;
    Header::decode(&b)
}

impl ObjectHandle {
    /// Creates the object `name` or, if an object of that name exists, opens it (its own
    /// parameters win, as on Windows). `None` makes an unnamed object.
    pub(crate) fn create(
        ns: &Namespace,
        name: Option<&ObjectName>,
        spec: &Spec,
    ) -> Result<(ObjectHandle, Disposition)> {
        let Some(name) = name else {
            return Ok((Self::create_unnamed(spec)?, Disposition::Created));
        };
        Self::create_or_open(ns, name, Some(spec), spec.header.kind)
    }

    /// Opens the existing object `name` of `kind`: [`ErrorKind::NotFound`] if there is none,
    /// [`ErrorKind::WrongKind`] if the name belongs to another kind of object.
    pub(crate) fn open(
        ns: &Namespace,
        name: &ObjectName,
        kind: ObjectKind,
    ) -> Result<ObjectHandle> {
        Self::create_or_open(ns, name, None, kind).map(|(h, _)| h)
    }

    fn create_unnamed(spec: &Spec) -> Result<ObjectHandle> {
        let side = shm::anonymous("ipckit-object")?;
        file::set_size(&side, SIDE_FILE_LEN as u64)?;
        file::write_all_at(&side, &spec.header.encode(), 0)?;
        file::write_all_at(&side, &state_bytes(&spec.state), STATE_OFFSET as u64)?;
        let shm = if spec.with_shm {
            let fd = shm::anonymous("ipckit-mapping")?;
            file::set_size(&fd, spec.header.size)?;
            Some(fd)
        } else {
            None
        };
        Ok(ObjectHandle {
            header: spec.header,
            side,
            shm,
            named: None,
        })
    }

    fn create_or_open(
        ns: &Namespace,
        name: &ObjectName,
        spec: Option<&Spec>,
        kind: ObjectKind,
    ) -> Result<(ObjectHandle, Disposition)> {
        let folder = ns.folder(Folder::Object, name.scope())?;
        let component = encode_component(name.name(), OBJECT_COMPONENT_LIMIT);
        let shm_name = ns.shm_name(name);
        let _guard = folder_lock(&folder, name.scope())?;

        match file::open_existing(&folder, &component) {
            Ok(side) => {
                if file::try_lock_exclusive(&side)? {
                    // Nobody holds it: its last holder died. It is gone; clear the remains.
                    remove_remains(&folder, &component, &shm_name)?;
                    drop(side);
                } else {
                    file::lock_shared(&side)?;
                    let header = read_header(&side)?;
                    if header.kind != kind {
                        return Err(Error::with_message(
                            ErrorKind::WrongKind,
                            format!(
                                "{name} is a {}, not a {}",
                                header.kind.as_str(),
                                kind.as_str()
                            ),
                        ));
                    }
                    let shm = if header.kind.has_shared_memory()
                        && header.flags & FLAG_FILE_BACKED == 0
                    {
                        Some(shm::open_existing(&shm_name, true).or_else(|e| {
                            if e.kind() == ErrorKind::AccessDenied {
                                shm::open_existing(&shm_name, false)
                            } else {
                                Err(e)
                            }
                        })?)
                    } else {
                        None
                    };
                    let named = Named {
                        name: name.clone(),
                        folder,
                        component,
                        shm_name,
                    };
                    return Ok((
                        ObjectHandle {
                            header,
                            side,
                            shm,
                            named: Some(named),
                        },
                        Disposition::Opened,
                    ));
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }

        let Some(spec) = spec else {
            return Err(Error::with_message(
                ErrorKind::NotFound,
                format!("no {} named {name}", kind.as_str()),
            ));
        };
        let mode = if spec.others { 0o666 } else { 0o600 };
        let side = file::create_new(&folder, &component, mode)?;
        let made = (|| {
            if spec.others {
                file::set_mode(&side, mode)?;
            }
            file::lock_shared(&side)?;
            file::set_size(&side, SIDE_FILE_LEN as u64)?;
            let mut header = spec.header;
            header.creator_pid = process::current_pid();
            file::write_all_at(&side, &header.encode(), 0)?;
            file::write_all_at(&side, &state_bytes(&spec.state), STATE_OFFSET as u64)?;
            let shm = if spec.with_shm {
                // A name left by a crashed creator is stale: the side file was absent.
                shm::unlink(&shm_name)?;
                let fd = shm::create_new(&shm_name, mode)?;
                if spec.others {
                    file::set_mode(&fd, mode)?;
                }
                file::set_size(&fd, header.size)?;
                Some(fd)
            } else {
                None
            };
            Ok((header, shm))
        })();
        match made {
            Ok((header, shm)) => {
                let named = Named {
                    name: name.clone(),
                    folder,
                    component,
                    shm_name,
                };
                Ok((
                    ObjectHandle {
                        header,
                        side,
                        shm,
                        named: Some(named),
                    },
                    Disposition::Created,
                ))
            }
            Err(e) => {
                let _ = remove_remains(&folder, &component, &shm_name);
                Err(e)
            }
        }
    }

    /// The object's header.
    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    /// The object's name, if it has one.
    pub(crate) fn name(&self) -> Option<&ObjectName> {
        self.named.as_ref().map(|n| &n.name)
    }

    /// The shared-memory name of a named mapping's data.
    pub(crate) fn shm_name(&self) -> Option<&str> {
        self.named
            .as_ref()
            .filter(|_| self.shm.is_some())
            .map(|n| n.shm_name.as_str())
    }

    /// The data's descriptor, for mappings.
    pub(crate) fn data_fd(&self) -> Option<&OwnedFd> {
        self.shm.as_ref()
    }

    /// Closes the data's descriptor once the data is mapped for good (a channel maps it once):
    /// the mapping keeps the memory, the side file the object. One descriptor fewer per handle.
    pub(crate) fn close_data_fd(&mut self) {
        self.shm = None;
    }

    /// The identity of the object itself (device and inode of its side file or anonymous
    /// memory file): equal for every handle to one object, in every process.
    pub(crate) fn identity(&self) -> Result<(u64, u64)> {
        file::identity(&self.side)
    }

    /// Maps the side file's page, where a synchronisation object keeps its state at
    /// [`STATE_OFFSET`].
    pub(crate) fn map_state(&self) -> Result<mmap::MappedRegion> {
        mmap::MappedRegion::map(&self.side, 0, SIDE_FILE_LEN, mmap::Access::Write)
    }
}

impl Drop for ObjectHandle {
    fn drop(&mut self) {
        let Some(named) = &self.named else { return };
        let result = (|| {
            let _guard = folder_lock(&named.folder, named.name.scope())?;
            if file::try_lock_exclusive(&self.side)? {
                // Last holder: the object ends with us.
                remove_remains(&named.folder, &named.component, &named.shm_name)?;
            }
            Ok::<(), Error>(())
        })();
        if let Err(e) = result {
            tracing::warn!("closing {}: {e}", named.name);
        }
    }
}

/// What `ipckit ls` shows of a live kernel object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The kind.
    pub kind: ObjectKind,
    /// A mapping's size.
    pub size: u64,
    /// The shared-memory name of a mapping's data (without `/`).
    pub shm_name: Option<String>,
    /// Processes holding it, from `/proc/locks`.
    pub holders: Vec<u32>,
}

/// Describes the side file at `path` (an entry of an object folder): `Ok(None)` when the object
/// is dead (nobody holds it) or not an ipckit object.
pub fn describe(ns: &Namespace, scope: Scope, component: &str) -> Result<Option<ObjectInfo>> {
    let folder = ns.folder(Folder::Object, scope)?;
    let side = match file::open_existing(&folder, component) {
        Ok(fd) => fd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let header = match read_header(&side) {
        Ok(h) => h,
        Err(_) => return Ok(None),
    };
    let (dev, ino) = file::identity(&side)?;
    let holders = process::flock_holders(dev, ino);
    if holders.is_empty() {
        return Ok(None);
    }
    let shm_name = (header.kind.has_shared_memory() && header.flags & FLAG_FILE_BACKED == 0)
        .then(|| crate::name::decode_component(component).map(|n| ns.shm_name_for(scope, &n)))
        .flatten();
    Ok(Some(ObjectInfo {
        kind: header.kind,
        size: header.size,
        shm_name,
        holders,
    }))
}

/// Removes the remains of dead objects (side files nobody holds, and their shared memory) in
/// both scopes of `ns`; returns how many were removed. Dead objects are already gone for every
/// caller; this only frees their files. `ipckit ls` runs it.
pub fn sweep(ns: &Namespace) -> Result<usize> {
    let mut removed = 0;
    for scope in [Scope::Local, Scope::Global] {
        let base = match scope {
            Scope::Local => ns.runtime_dir(),
            Scope::Global => ns.global_dir(),
        };
        if !base.join(Folder::Object.dir_name()).is_dir() {
            continue;
        }
        let folder = ns.folder(Folder::Object, scope)?;
        let _guard = folder_lock(&folder, scope)?;
        let names: Vec<String> = std::fs::read_dir(folder.path())
            .map_err(|e| Error::from_io(format!("cannot list {}", folder.path().display()), e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        for component in names {
            let Ok(side) = file::open_existing(&folder, &component) else {
                continue;
            };
            if file::try_lock_exclusive(&side)? {
                let shm_name = match crate::name::decode_component(&component) {
                    Some(n) => ns.shm_name_for(scope, &n),
                    // A hashed name: the shared-memory name carries the same component.
                    None => format!("{}{component}", ns.shm_prefix(scope)),
                };
                remove_remains(&folder, &component, &shm_name)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            kind: ObjectKind::Semaphore,
            size: 0,
            param: 10,
            flags: 0,
            creator_pid: 42,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn header_rejects_garbage() {
        let good = Header {
            kind: ObjectKind::FileMapping,
            size: 4096,
            param: 0,
            flags: 0,
            creator_pid: 1,
        }
        .encode();
        let mut b = good;
        b[0] = b'X';
        assert_eq!(Header::decode(&b).unwrap_err().kind(), ErrorKind::Protocol);
        let mut b = good;
        b[12] = 9;
        assert_eq!(Header::decode(&b).unwrap_err().kind(), ErrorKind::Protocol);
        let mut b = good;
        b[23] = 0xff;
        assert_eq!(Header::decode(&b).unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(
            Header::decode(&good[..10]).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }

    proptest::proptest! {
        #[test]
        fn header_decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            if let Ok(h) = Header::decode(&bytes) {
                proptest::prop_assert_eq!(&h.encode()[..], &bytes[..Header::LEN]);
            }
        }
    }
}
