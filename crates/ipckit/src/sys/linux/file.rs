//! Files inside checked namespace folders: exclusive creation, whole-file locks, positioned I/O.
//!
//! The lifetime of a named object follows Windows (gone when the last holder closes it or
//! dies) through `flock(2)` locks on its side file: every holder keeps a shared lock; the
//! kernel drops a dead process's locks for it.
//!
//! Linux references: `openat(2)` (`O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC`), `unlinkat(2)`,
//! `flock(2)`, `fstat(2)`, `pread(2)`, `pwrite(2)`, `ftruncate(2)`.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::dir::SecureDir;
use crate::error::{Error, ErrorKind, Result};

const FILE_FLAGS: OFlags = OFlags::RDWR.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

fn io_err(what: &str, dir: &SecureDir, name: &str, e: Errno) -> Error {
    Error::from_io(
        format!("{what} {}", dir.path().join(name).display()),
        e.into(),
    )
}

/// Creates `name` in `dir`, failing with [`ErrorKind::AlreadyExists`] if it exists.
/// `mode` is the permission bits (0600 for private objects).
pub fn create_new(dir: &SecureDir, name: &str, mode: u32) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        FILE_FLAGS | OFlags::CREATE | OFlags::EXCL,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| io_err("cannot create", dir, name, e))
}

/// Opens the existing regular file `name` in `dir` for reading and writing.
/// Fails with [`ErrorKind::NotFound`] if absent.
pub fn open_existing(dir: &SecureDir, name: &str) -> Result<OwnedFd> {
    rustix::fs::openat(dir, name, FILE_FLAGS, Mode::empty()).map_err(|e| match e {
        Errno::LOOP => {
            Error::with_message(ErrorKind::AccessDenied, "object file is a symbolic link")
        }
        e => io_err("cannot open", dir, name, e),
    })
}

/// Removes `name` from `dir`. Removing a name that is already gone is not an error.
pub fn unlink(dir: &SecureDir, name: &str) -> Result<()> {
    match rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err("cannot remove", dir, name, e)),
    }
}

/// Takes a shared `flock` on the whole file, waiting while someone holds it exclusively.
pub fn lock_shared(fd: impl AsFd) -> Result<()> {
    retry_intr(|| rustix::fs::flock(&fd, FlockOperation::LockShared))
        .map_err(|e| Error::from_io("cannot lock object file", e.into()))
}

/// Takes an exclusive `flock` on the whole file, waiting for other holders to let go.
pub fn lock_exclusive(fd: impl AsFd) -> Result<()> {
    retry_intr(|| rustix::fs::flock(&fd, FlockOperation::LockExclusive))
        .map_err(|e| Error::from_io("cannot lock object file", e.into()))
}

/// Tries to take (or convert to) an exclusive `flock` without waiting: `Ok(true)` when taken,
/// `Ok(false)` when another open file holds a lock.
pub fn try_lock_exclusive(fd: impl AsFd) -> Result<bool> {
    match retry_intr(|| rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(Error::from_io("cannot lock object file", e.into())),
    }
}

/// Releases this open file's `flock`.
pub fn unlock(fd: impl AsFd) -> Result<()> {
    rustix::fs::flock(&fd, FlockOperation::Unlock)
        .map_err(|e| Error::from_io("cannot unlock object file", e.into()))
}

/// Whether the open file still has a name (an unlinked file has no links).
pub fn is_linked(fd: impl AsFd) -> Result<bool> {
    let st =
        rustix::fs::fstat(&fd).map_err(|e| Error::from_io("cannot stat object file", e.into()))?;
    Ok(st.st_nlink > 0)
}

/// Whether the open file may be read and whether it may be written (its access mode,
/// `fcntl(F_GETFL)`).
pub fn access(fd: impl AsFd) -> Result<(bool, bool)> {
    let flags = rustix::fs::fcntl_getfl(&fd)
        .map_err(|e| Error::from_io("cannot query file access", e.into()))?;
    Ok(match flags & OFlags::RWMODE {
        m if m == OFlags::RDONLY => (true, false),
        m if m == OFlags::WRONLY => (false, true),
        _ => (true, true),
    })
}

/// The file's size in bytes.
pub fn size(fd: impl AsFd) -> Result<u64> {
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::from_io("cannot stat file", e.into()))?;
    Ok(st.st_size as u64)
}

/// Device and inode number: the identity `/proc/locks` reports locks by.
pub fn identity(fd: impl AsFd) -> Result<(u64, u64)> {
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::from_io("cannot stat file", e.into()))?;
    Ok((st.st_dev, st.st_ino))
}

/// Sets the file's size; new bytes read as zero.
pub fn set_size(fd: impl AsFd, len: u64) -> Result<()> {
    rustix::fs::ftruncate(&fd, len).map_err(|e| Error::from_io("cannot set file size", e.into()))
}

/// Reads exactly `buf.len()` bytes at `offset`; a short file is [`ErrorKind::Protocol`].
pub fn read_exact_at(fd: impl AsFd, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(&fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(Error::with_message(
                    ErrorKind::Protocol,
                    "file is shorter than its header",
                ));
            }
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(Error::from_io("cannot read file", e.into())),
        }
    }
    Ok(())
}

/// Writes all of `buf` at `offset`.
pub fn write_all_at(fd: impl AsFd, buf: &[u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(&fd, &buf[done..], offset + done as u64) {
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(Error::from_io("cannot write file", e.into())),
        }
    }
    Ok(())
}

fn retry_intr<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            r => return r,
        }
    }
}

/// Sets the permission bits exactly (the umask narrows those given at creation).
pub fn set_mode(fd: impl AsFd, mode: u32) -> Result<()> {
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
        .map_err(|e| Error::from_io("cannot set file mode", e.into()))
}
