//! Where a local mailslot lives and how it is created, found and removed. The scheme is
//! specified in `docs/protocol/mailslot.md`:
//!
//! ```text
//! RUNTIME/mailslot/.lock                  flock: creating, opening or closing any mailslot
//! RUNTIME/mailslot/ENC/sock               the server's Unix datagram socket (SO_PASSCRED)
//! RUNTIME/mailslot/ENC/status             the status page; its server holds a shared flock
//! RUNTIME/mailslot/ENC/status.tmp-PID-N   a status page being written
//! ```
//!
//! The server's lock on `status` says the mailslot lives: the kernel drops it when the server
//! dies, SIGKILL included, and the next `CreateMailslot` of the name, finding the lock free,
//! removes the dead socket and takes the name.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;

use super::status::{Header, StatusPage};
use crate::error::{Error, ErrorKind, Result};
use crate::name::{MailslotName, Scope};
use crate::namespace::{Folder, Namespace};
use crate::pipe::folder_lock;
use crate::sys::dir::{DirPolicy, SecureDir};
use crate::sys::{dgram, fd, file, process};

pub(crate) const SOCK: &str = "sock";
pub(crate) const STATUS: &str = "status";
const STATUS_TMP: &str = "status.tmp-";

fn next_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn component(ns: &Namespace, name: &MailslotName) -> Result<String> {
    let path = ns.mailslot_path(name)?;
    Ok(path
        .file_name()
        .and_then(|c| c.to_str())
        .expect("mailslot_path ends in an encoded component")
        .to_owned())
}

fn not_found(name: &MailslotName) -> Error {
    Error::with_message(ErrorKind::NotFound, format!("no mailslot named {name}"))
}

/// A mailslot's folder, open.
#[derive(Debug)]
pub(crate) struct SlotDir {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

/// The registration of a live mailslot, held by its server. Dropping it removes the mailslot.
#[derive(Debug)]
pub(crate) struct Slot {
    dir: SlotDir,
    folder: SecureDir,
    component: String,
    /// The status file; the shared lock on it says the mailslot lives.
    _status_fd: OwnedFd,
}

/// `CreateMailslot`: registers the mailslot and binds its socket. Fails with
/// [`ErrorKind::AlreadyExists`] while a live server has the name.
pub(crate) fn create(
    ns: &Namespace,
    name: &MailslotName,
    header: &Header,
    nonblocking: bool,
) -> Result<(Slot, OwnedFd, StatusPage)> {
    let component = component(ns, name)?;
    let folder = ns.folder(Folder::Mailslot, Scope::Local)?;
    let _guard = folder_lock(&folder)?;
    let sdir = folder.subdir(&component, DirPolicy::Private)?;
    let dir = SlotDir {
        fd: fd::duplicate(&sdir)?,
        path: sdir.path().to_owned(),
    };
    if let Ok(f) = fd::open_file(&dir.fd, &dir.path, STATUS)
        && !file::try_lock_exclusive(&f)?
    {
        return Err(Error::with_message(
            ErrorKind::AlreadyExists,
            format!("{name} already exists"),
        ));
    }
    // Nobody serves the name: whatever is left belongs to a dead server.
    for n in fd::list(&dir.fd, &dir.path)? {
        fd::remove_file(&dir.fd, &dir.path, &n)?;
    }
    let sock = dgram::bind_at(&dir.fd, &dir.path, SOCK, nonblocking)?;
    let tmp = format!("{STATUS_TMP}{}-{}", process::current_pid(), next_id());
    let status_fd = fd::create_file(&dir.fd, &dir.path, &tmp, 0o600)?;
    StatusPage::init(&status_fd, header)?;
    file::lock_shared(&status_fd)?;
    fd::rename(&dir.fd, &tmp, STATUS)
        .map_err(|e| Error::from_io("cannot publish mailslot status", e.into()))?;
    let page = StatusPage::map(&status_fd)?;
    Ok((
        Slot {
            dir,
            folder,
            component,
            _status_fd: status_fd,
        },
        sock,
        page,
    ))
}

impl Slot {
    fn close(&self) -> Result<()> {
        let _guard = folder_lock(&self.folder)?;
        for n in fd::list(&self.dir.fd, &self.dir.path)? {
            fd::remove_file(&self.dir.fd, &self.dir.path, &n)?;
        }
        fd::remove_dir(&self.folder, self.folder.path(), &self.component)?;
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!("closing mailslot {}: {e}", self.dir.path.display());
        }
    }
}

/// `CreateFile` on a local mailslot: a socket connected to its server, and its status page.
/// [`ErrorKind::NotFound`] when no live server has the name.
pub(crate) fn connect(
    ns: &Namespace,
    name: &MailslotName,
    nonblocking: bool,
) -> Result<(OwnedFd, StatusPage)> {
    let component = component(ns, name)?;
    let folder = ns.folder(Folder::Mailslot, Scope::Local)?;
    // Under the folder lock, the status and the socket belong to the same server.
    let _guard = folder_lock(&folder)?;
    let dir = fd::open_subdir(&folder, folder.path(), &component).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            not_found(name)
        } else {
            e
        }
    })?;
    let path = folder.path().join(&component);
    let sock = match dgram::connect_at(&dir, &path, SOCK, nonblocking) {
        Ok(s) => s,
        // No socket, or one nobody is bound to any more (its server died).
        Err(Errno::NOENT | Errno::CONNREFUSED) => return Err(not_found(name)),
        Err(e) => return Err(Error::from_io(format!("cannot open {name}"), e.into())),
    };
    let status = match fd::open_file(&dir, &path, STATUS) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found(name)),
        Err(e) => return Err(e),
    };
    Ok((sock, StatusPage::map(&status)?))
}

/// What [`describe`] finds: a mailslot as other processes see it. Windows: `GetMailslotInfo`
/// (which needs the server's handle there), plus the server's pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailslotStatus {
    /// The largest message a writer may send.
    pub max_message_size: u32,
    /// The server's read timeout now (`None`: waits for ever).
    pub read_timeout: Option<std::time::Duration>,
    /// The server's pid.
    pub server_pid: u32,
    /// Messages that ipckit writers sent and the server has not read yet (see the module docs
    /// for how exact this is).
    pub queued: u64,
}

/// Describes the local mailslot stored under the folder entry `component` (the encoded name,
/// as [`Namespace::entries`] lists it), without disturbing it. `Ok(None)` when there is no such
/// mailslot or its server is dead.
pub fn describe(ns: &Namespace, component: &str) -> Result<Option<MailslotStatus>> {
    if component.starts_with('.') {
        return Ok(None); // the folder's lock file
    }
    let folder = ns.folder(Folder::Mailslot, Scope::Local)?;
    let dir = match fd::open_subdir(&folder, folder.path(), component) {
        Ok(fd) => fd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let path = folder.path().join(component);
    // A socket that refuses a connection has no server behind it.
    match dgram::connect_at(&dir, &path, SOCK, true) {
        Ok(_) => {}
        Err(Errno::NOENT | Errno::CONNREFUSED) => return Ok(None),
        Err(e) => return Err(Error::from_io("cannot reach mailslot", e.into())),
    }
    let status = match fd::open_file(&dir, &path, STATUS) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let page = StatusPage::map(&status)?;
    Ok(Some(MailslotStatus {
        max_message_size: page.header().max_message_size,
        read_timeout: super::timeout_from_ms(page.read_timeout_ms()),
        server_pid: page.header().server_pid,
        queued: page.queued(),
    }))
}

/// Removes the files of mailslots whose server died (SIGKILL leaves them; they stand for nothing,
/// since a dead server's lock is gone). Returns how many it removed. `ipckit ls` calls it; a new
/// server of the name would remove them too.
pub fn sweep(ns: &Namespace) -> Result<usize> {
    let folder = match ns.folder(Folder::Mailslot, Scope::Local) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let _guard = folder_lock(&folder)?;
    let mut removed = 0;
    for component in fd::list(&folder, folder.path())? {
        if component.starts_with('.') {
            continue; // the folder's lock file
        }
        let Ok(dir) = fd::open_subdir(&folder, folder.path(), &component) else {
            continue;
        };
        let path = folder.path().join(&component);
        // Under the folder lock a live mailslot has its status file, locked by its server.
        let alive = match fd::open_file(&dir, &path, STATUS) {
            Ok(f) => !file::try_lock_exclusive(&f)?,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if alive {
            continue;
        }
        for n in fd::list(&dir, &path)? {
            fd::remove_file(&dir, &path, &n)?;
        }
        fd::remove_dir(&folder, folder.path(), &component)?;
        removed += 1;
    }
    Ok(removed)
}

/// [`describe`] by name (`\\.\mailslot\NAME`). Windows: `GetMailslotInfo` from a process that
/// does not hold the server handle (which Windows does not offer).
pub fn describe_name(ns: &Namespace, name: &str) -> Result<Option<MailslotStatus>> {
    let name = MailslotName::parse(name)?;
    describe(ns, &component(ns, &name)?)
}
