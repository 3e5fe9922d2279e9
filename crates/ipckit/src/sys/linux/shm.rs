//! POSIX shared-memory objects and anonymous memory files.
//!
//! Windows counterpart: the paging-file-backed section behind `CreateFileMapping(INVALID_HANDLE_VALUE, ...)`.
//!
//! Linux references: `shm_open(3)`, `shm_unlink(3)` (files in `/dev/shm`), `memfd_create(2)`.

use std::os::fd::OwnedFd;

use rustix::io::Errno;
use rustix::shm;

use crate::error::{Error, ErrorKind, Result};

fn os_name(name: &str) -> String {
    format!("/{name}")
}

/// Creates the shared-memory object `name` (without the leading `/`), failing with
/// [`ErrorKind::AlreadyExists`] if it exists. `mode` is its permission bits.
pub fn create_new(name: &str, mode: u32) -> Result<OwnedFd> {
    shm::open(
        os_name(name).as_str(),
        shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
        shm::Mode::from_raw_mode(mode),
    )
    .map_err(|e| Error::from_io(format!("cannot create shared memory /{name}"), e.into()))
}

/// Opens the existing shared-memory object `name`, for writing too when `write`.
pub fn open_existing(name: &str, write: bool) -> Result<OwnedFd> {
    let flags = if write {
        shm::OFlags::RDWR
    } else {
        shm::OFlags::RDONLY
    };
    shm::open(os_name(name).as_str(), flags, shm::Mode::empty()).map_err(|e| match e {
        Errno::NOENT => {
            Error::with_message(ErrorKind::NotFound, format!("no shared memory /{name}"))
        }
        e => Error::from_io(format!("cannot open shared memory /{name}"), e.into()),
    })
}

/// Removes the name `name`; memory stays mapped where it is mapped. A missing name is not an error.
pub fn unlink(name: &str) -> Result<()> {
    match shm::unlink(os_name(name).as_str()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(Error::from_io(
            format!("cannot remove shared memory /{name}"),
            e.into(),
        )),
    }
}

/// An anonymous memory file (no name; shared by passing or inheriting its descriptor).
pub fn anonymous(debug_name: &str) -> Result<OwnedFd> {
    rustix::fs::memfd_create(debug_name, rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| Error::from_io("cannot create anonymous memory", e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_open_unlink() {
        let name = format!("ipckit.test.shm.{}", std::process::id());
        let _ = unlink(&name);
        let fd = create_new(&name, 0o600).unwrap();
        assert_eq!(
            create_new(&name, 0o600).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        crate::sys::file::set_size(&fd, 4096).unwrap();
        assert!(std::path::Path::new(&format!("/dev/shm/{name}")).exists());
        let fd2 = open_existing(&name, false).unwrap();
        assert_eq!(crate::sys::file::size(&fd2).unwrap(), 4096);
        unlink(&name).unwrap();
        assert_eq!(
            open_existing(&name, true).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        unlink(&name).unwrap();
    }
}
