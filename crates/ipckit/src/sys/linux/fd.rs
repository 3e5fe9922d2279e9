//! Descriptors: duplication, inheritance by child processes, and the names inside a folder
//! reached through a descriptor.
//!
//! Windows counterparts: `DuplicateHandle`, inheritable handles (`bInheritHandle` in
//! `SECURITY_ATTRIBUTES`, `bInheritHandles` of `CreateProcess`), and the directory operations
//! of the named-pipe file system.
//!
//! ipckit opens every descriptor close-on-exec, so nothing leaks into child processes unless
//! it is handed over explicitly with [`inherit_in_child`], which clears close-on-exec in the
//! child only (between `fork` and `exec`), never in this process, so children that other
//! threads start meanwhile do not receive it.
//!
//! Linux references: `fcntl(2)` (`F_GETFD`, `F_SETFD`, `F_DUPFD_CLOEXEC`), `fstat(2)`,
//! `openat(2)` (`O_DIRECTORY | O_NOFOLLOW`), `getdents64(2)`, `renameat(2)`, `unlinkat(2)`
//! (`AT_REMOVEDIR`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::{Errno, FdFlags};

use crate::error::{Error, ErrorKind, Result};

/// A duplicate of `fd`, close-on-exec (`fcntl(F_DUPFD_CLOEXEC)`). Windows: `DuplicateHandle`.
pub fn duplicate(fd: impl AsFd) -> Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(&fd, 3)
        .map_err(|e| Error::from_io("cannot duplicate descriptor", e.into()))
}

/// Makes `cmd`'s child inherit `fd` under the same number, which is returned; `cmd` owns `fd`
/// from now on and closes it when dropped (drop `cmd` after spawning, or this process keeps its
/// copy open). Windows: an inheritable handle passed to `CreateProcess(bInheritHandles = TRUE)`,
/// except that no other child receives it.
pub fn inherit_in_child(cmd: &mut Command, fd: OwnedFd) -> RawFd {
    let raw = fd.as_raw_fd();
    let hook = move || -> std::io::Result<()> {
        // Clear close-on-exec on the child's copy. A plain system call: no allocation, no lock.
        rustix::io::fcntl_setfd(&fd, FdFlags::empty()).map_err(std::io::Error::from)
    };
    // SAFETY: the hook runs in the child between fork and exec, where only async-signal-safe
    // work is allowed: it makes one fcntl system call on a descriptor number (rustix calls the
    // kernel directly; an error converts to io::Error without allocating). The closure owns the
    // descriptor, which therefore stays open in this process, under the same number, until
    // `cmd` is dropped, so in the child the number names the same open file.
    unsafe {
        cmd.pre_exec(hook);
    }
    raw
}

/// What kind of file a descriptor refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A socket.
    Socket,
    /// A pipe or FIFO.
    Fifo,
    /// Anything else.
    Other,
}

/// The kind of file behind `fd` (`fstat(2)`).
pub fn kind(fd: impl AsFd) -> Result<FdKind> {
    let st =
        rustix::fs::fstat(&fd).map_err(|e| Error::from_io("cannot stat descriptor", e.into()))?;
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::Socket => FdKind::Socket,
        FileType::Fifo => FdKind::Fifo,
        _ => FdKind::Other,
    })
}

/// Takes ownership of a descriptor this process inherited from its parent, by number.
///
/// Accepted only when the number is above 2 (0, 1 and 2 are the standard streams, which
/// `std::io` uses), is open, and is *not* close-on-exec: every descriptor that Rust's standard
/// library, rustix or ipckit open in this process is close-on-exec, so such a descriptor was
/// inherited. Close-on-exec is then set on it, so it goes no further and a second claim of the
/// same number fails ([`ErrorKind::InvalidParameter`]).
pub fn claim_inherited(raw: RawFd) -> Result<OwnedFd> {
    let invalid = |why: String| Error::with_message(ErrorKind::InvalidParameter, why);
    if raw <= 2 {
        return Err(invalid(format!(
            "descriptor {raw} is a standard stream: use std::io::stdin/stdout/stderr"
        )));
    }
    // SAFETY: the borrow is used only for the two fcntl calls below, during which nothing in
    // this function closes `raw`; fcntl on a number that is not open fails with EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    let flags = rustix::io::fcntl_getfd(borrowed).map_err(|e| match e {
        Errno::BADF => invalid(format!("descriptor {raw} is not open in this process")),
        e => Error::from_io("cannot query descriptor", e.into()),
    })?;
    if flags.contains(FdFlags::CLOEXEC) {
        return Err(invalid(format!(
            "descriptor {raw} was not inherited (it is close-on-exec, or was claimed already)"
        )));
    }
    rustix::io::fcntl_setfd(borrowed, FdFlags::CLOEXEC)
        .map_err(|e| Error::from_io("cannot set close-on-exec", e.into()))?;
    // SAFETY: `raw` is open (F_GETFD succeeded) and was not close-on-exec, which no descriptor
    // opened by this program's Rust code is, so no owner exists in this process; the flag we
    // just set makes any later claim of the same number fail, so this is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn at_err(what: &str, dir_path: &Path, name: &str, e: Errno) -> Error {
    Error::from_io(
        format!("{what} {}", dir_path.join(name).display()),
        e.into(),
    )
}

/// Opens the existing folder `name` in `dir` without following links, and checks that it
/// belongs to this user and that no one else may write to it. Fails with
/// [`ErrorKind::NotFound`] when absent.
pub fn open_subdir(dir: impl AsFd, dir_path: &Path, name: &str) -> Result<OwnedFd> {
    open_subdir_of(dir, dir_path, name, super::process::current_uid())
}

/// [`open_subdir`] for a folder that must belong to the user `owner` (a folder another user
/// published).
pub fn open_subdir_of(dir: impl AsFd, dir_path: &Path, name: &str, owner: u32) -> Result<OwnedFd> {
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => Error::new(ErrorKind::NotFound),
        Errno::LOOP | Errno::NOTDIR => Error::with_message(
            ErrorKind::AccessDenied,
            format!(
                "{} is a symbolic link or not a folder",
                dir_path.join(name).display()
            ),
        ),
        e => at_err("cannot open", dir_path, name, e),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| at_err("cannot stat", dir_path, name, e))?;
    if st.st_uid != owner || st.st_mode & 0o022 != 0 {
        return Err(Error::with_message(
            ErrorKind::AccessDenied,
            format!(
                "refusing to use {}: owned by uid {} with mode {:04o}",
                dir_path.join(name).display(),
                st.st_uid,
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(fd)
}

/// The names in the folder `dir` (without `.` and `..`), in directory order.
pub fn list(dir: impl AsFd, dir_path: &Path) -> Result<Vec<String>> {
    let list_err =
        |e: Errno| Error::from_io(format!("cannot list {}", dir_path.display()), e.into());
    let mut out = Vec::new();
    for ent in rustix::fs::Dir::read_from(&dir).map_err(list_err)? {
        let ent = ent.map_err(list_err)?;
        if let Ok(name) = ent.file_name().to_str()
            && name != "."
            && name != ".."
        {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// Creates the regular file `name` in `dir` (`O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC`,
/// read-write), failing with [`ErrorKind::AlreadyExists`] if it exists.
pub fn create_file(dir: impl AsFd, dir_path: &Path, name: &str, mode: u32) -> Result<OwnedFd> {
    rustix::fs::openat(
        &dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| at_err("cannot create", dir_path, name, e))
}

/// Opens the existing regular file `name` in `dir` (read-write, `O_NOFOLLOW | O_CLOEXEC`).
pub fn open_file(dir: impl AsFd, dir_path: &Path, name: &str) -> Result<OwnedFd> {
    rustix::fs::openat(
        &dir,
        name,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => Error::new(ErrorKind::NotFound),
        e => at_err("cannot open", dir_path, name, e),
    })
}

/// Opens the existing regular file `name` in `dir` read-only (`O_NOFOLLOW | O_CLOEXEC`), as
/// a user who may not write to it does.
pub fn open_file_read(dir: impl AsFd, dir_path: &Path, name: &str) -> Result<OwnedFd> {
    rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => Error::new(ErrorKind::NotFound),
        e => at_err("cannot open", dir_path, name, e),
    })
}

/// Renames `from` to `to` inside `dir`, atomically replacing `to`. Keeps the errno
/// (`ENOENT`: `from` is gone, e.g. someone else renamed it first).
pub fn rename(dir: impl AsFd, from: &str, to: &str) -> Result<(), Errno> {
    rustix::fs::renameat(&dir, from, &dir, to)
}

/// Removes the file `name` from `dir`; a name already gone is not an error.
pub fn remove_file(dir: impl AsFd, dir_path: &Path, name: &str) -> Result<()> {
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(at_err("cannot remove", dir_path, name, e)),
    }
}

/// Removes the empty folder `name` from `dir`; `Ok(false)` when it is not empty or is gone.
pub fn remove_dir(dir: impl AsFd, dir_path: &Path, name: &str) -> Result<bool> {
    match rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST) => Ok(false),
        Err(e) => Err(at_err("cannot remove", dir_path, name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_refuses_our_own_and_standard_descriptors() {
        let (a, _b) = super::super::socket::stream_pair().unwrap();
        let e = claim_inherited(a.as_raw_fd()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter);
        assert_eq!(
            claim_inherited(1).unwrap_err().kind(),
            ErrorKind::InvalidParameter
        );
        assert_eq!(
            claim_inherited(1 << 20).unwrap_err().kind(),
            ErrorKind::InvalidParameter
        );
        let d = duplicate(&a).unwrap();
        assert_ne!(d.as_raw_fd(), a.as_raw_fd());
        assert_eq!(kind(&d).unwrap(), FdKind::Socket);
    }
}
