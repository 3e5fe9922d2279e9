//! The instance directory of a named pipe: who serves it, which instances are free, how a client
//! connects to one, and where the directory lives. The scheme is specified in
//! `docs/protocol/pipe.md`:
//!
//! ```text
//! RUNTIME/pipe/.lock                  flock: creating or closing an instance of any pipe
//! RUNTIME/pipe/ENC/meta               the pipe's parameters (64 bytes, see meta.rs)
//! RUNTIME/pipe/ENC/i-PID-N            one per instance; its server holds a shared flock
//! RUNTIME/pipe/ENC/i-PID-N.sock       the instance's listening socket, while it is free
//!
//! GLOBAL/pipe/UID/...                 the same, for a pipe that user UID published for others
//! ```
//!
//! A free instance listens with a backlog of 0, so at most one connection can wait on it (a
//! second connect fails with `EAGAIN`). When one waits, the server removes the socket's name,
//! stops the listener from taking connections (`shutdown(SHUT_RD)`: a connect racing with it is
//! refused) and only then accepts: exactly one client ever connects to a listening socket, and
//! no connect is ever left queued on a busy instance. Clients never write to the directory, so
//! the scheme works unchanged in a folder that other users may only read.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::meta::Meta;
use crate::error::{Error, ErrorKind, Result};
use crate::name::{PipeName, Scope};
use crate::namespace::{Folder, Namespace};
use crate::sys::dir::{DirPolicy, SecureDir};
use crate::sys::{fd, file, process, socket};

const FOLDER_LOCK: &str = ".lock";
const META: &str = "meta";
/// Mode of the files of a published pipe that its clients read (the metadata, slot files).
const PUBLISHED_FILE_MODE: u32 = 0o644;
/// Mode of a published pipe's listening sockets (connecting needs write permission).
const PUBLISHED_SOCKET_MODE: u32 = 0o666;
/// How often a wait for a free instance re-checks the servers when the kernel cannot report
/// their end (no `pidfd_open`, or a server pid that is not in this pid namespace).
const FALLBACK_RECHECK: Duration = Duration::from_millis(250);

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Where a pipe's directory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// In the user's private runtime folder (`RUNTIME/pipe/ENC`): only this user reaches it.
    Private,
    /// Published by the user `owner` for other users (`GLOBAL/pipe/OWNER/ENC`, folders 0755).
    Published { owner: u32 },
}

/// An open pipe directory.
#[derive(Debug)]
pub(crate) struct PipeDir {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

/// `RUNTIME/pipe/.lock`, held exclusively while an instance is created or closed (and
/// `RUNTIME/mailslot/.lock` while a mailslot is: any private folder's `.lock`; and a published
/// pipe folder's `.lock`).
#[derive(Debug)]
pub(crate) struct FolderLock(OwnedFd);

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Unlock explicitly: a child forked meanwhile by another thread holds a copy of the
        // descriptor until it executes its program.
        let _ = file::unlock(&self.0);
    }
}

/// Takes the exclusive lock of the folder `folder` (its `.lock` file, created 0600).
pub(crate) fn folder_lock(folder: &SecureDir) -> Result<FolderLock> {
    let fd = match fd::open_file(folder, folder.path(), FOLDER_LOCK) {
        Ok(fd) => fd,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            match fd::create_file(folder, folder.path(), FOLDER_LOCK, 0o600) {
                Ok(fd) => fd,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    fd::open_file(folder, folder.path(), FOLDER_LOCK)?
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    file::lock_exclusive(&fd)?;
    Ok(FolderLock(fd))
}

fn component(ns: &Namespace, name: &PipeName) -> Result<String> {
    let path = ns.pipe_path(name)?;
    Ok(path
        .file_name()
        .and_then(|c| c.to_str())
        .expect("pipe_path ends in an encoded component")
        .to_owned())
}

/// The folder that holds the published pipes of `owner` (created when `create` and absent).
fn published_folder(ns: &Namespace, owner: u32) -> Result<SecureDir> {
    ns.folder(Folder::Pipe, Scope::Global)?
        .subdir(&owner.to_string(), DirPolicy::Published)
}

pub(crate) fn is_slot(name: &str) -> bool {
    name.starts_with("i-") && !name.contains('.')
}

fn sock_of(slot: &str) -> String {
    format!("{slot}.sock")
}

/// The server pid in a slot name `i-PID-N`.
fn slot_pid(slot: &str) -> Option<u32> {
    slot.strip_prefix("i-")?.split_once('-')?.0.parse().ok()
}

/// Whether the instance `slot` has a live server: someone holds a lock on its slot file.
fn slot_alive(dir: &PipeDir, slot: &str) -> bool {
    match fd::open_file_read(&dir.fd, &dir.path, slot) {
        Ok(f) => !matches!(file::try_lock_exclusive(&f), Ok(true)),
        Err(_) => false,
    }
}

/// Removes dead instances (slot files nobody locks, with their sockets) and orphaned files.
/// Caller holds the folder lock. Returns the live slots.
fn sweep(dir: &PipeDir) -> Result<Vec<String>> {
    let names = fd::list(&dir.fd, &dir.path)?;
    let mut live = Vec::new();
    for slot in names.iter().filter(|n| is_slot(n)) {
        let Ok(f) = fd::open_file(&dir.fd, &dir.path, slot) else {
            continue;
        };
        if file::try_lock_exclusive(&f)? {
            remove_instance_files(dir, slot)?;
        } else {
            live.push(slot.clone());
        }
    }
    for n in &names {
        let orphan = match n.strip_suffix(".sock").filter(|s| is_slot(s)) {
            Some(slot) => !live.iter().any(|l| l == slot),
            // Claim files of the first version of the scheme, and metadata being written.
            None => n.starts_with("meta.tmp-") || n.starts_with("c-"),
        };
        if orphan {
            fd::remove_file(&dir.fd, &dir.path, n)?;
        }
    }
    Ok(live)
}

fn remove_instance_files(dir: &PipeDir, slot: &str) -> Result<()> {
    fd::remove_file(&dir.fd, &dir.path, &sock_of(slot))?;
    fd::remove_file(&dir.fd, &dir.path, slot)
}

pub(crate) fn read_meta(dir: &PipeDir) -> Result<Meta> {
    let f = fd::open_file_read(&dir.fd, &dir.path, META)?;
    if file::size(&f)? != Meta::LEN as u64 {
        return Err(Error::with_message(
            ErrorKind::Protocol,
            "damaged pipe metadata: wrong length",
        ));
    }
    let mut b = [0u8; Meta::LEN];
    file::read_exact_at(&f, &mut b, 0)?;
    Meta::decode(&b)
}

fn write_meta(dir: &PipeDir, meta: &Meta, mode: u32) -> Result<()> {
    let tmp = format!("meta.tmp-{}-{}", process::current_pid(), next_id());
    fd::remove_file(&dir.fd, &dir.path, &tmp)?;
    let f = fd::create_file(&dir.fd, &dir.path, &tmp, 0o600)?;
    if mode != 0o600 {
        file::set_mode(&f, mode)?;
    }
    file::write_all_at(&f, &meta.encode(), 0)?;
    drop(f);
    fd::rename(&dir.fd, &tmp, META)
        .map_err(|e| Error::from_io("cannot publish pipe metadata", e.into()))
}

/// Whether the pipe `component` has a live instance in `folder`. Nothing is created.
fn alive_in(folder: &SecureDir, component: &str) -> bool {
    let Ok(fd) = fd::open_subdir(folder, folder.path(), component) else {
        return false;
    };
    let dir = PipeDir {
        fd,
        path: folder.path().join(component),
    };
    fd::list(&dir.fd, &dir.path)
        .map(|names| names.iter().any(|n| is_slot(n) && slot_alive(&dir, n)))
        .unwrap_or(false)
}

/// One server instance, registered in the pipe's directory.
#[derive(Debug)]
pub(crate) struct Instance {
    pub dir: PipeDir,
    pub meta: Meta,
    place: Place,
    folder: SecureDir,
    component: String,
    slot: String,
    /// The slot file; a shared lock on it says the instance lives.
    _slot_fd: OwnedFd,
}

/// What `create_instance` checks against an existing pipe.
pub(crate) struct CreateRequest<'a> {
    pub meta: Meta,
    pub first_instance: bool,
    pub name: &'a PipeName,
    /// Private, or published by this user.
    pub publish: bool,
}

/// `CreateNamedPipe`: registers a new instance (not yet listening).
pub(crate) fn create_instance(ns: &Namespace, req: &CreateRequest<'_>) -> Result<Instance> {
    let component = component(ns, req.name)?;
    let me = process::current_uid();
    // The private folder's lock orders every creation of this user's pipes, published or not,
    // so that one name is never a private and a published pipe at once.
    let private = ns.folder(Folder::Pipe, Scope::Local)?;
    let _private_guard = folder_lock(&private)?;
    let (folder, place, _published_guard) = if req.publish {
        let f = published_folder(ns, me)?;
        let g = folder_lock(&f)?;
        if alive_in(&private, &component) {
            return Err(exists_elsewhere(req.name, "private"));
        }
        (f, Place::Published { owner: me }, Some(g))
    } else {
        let shared = ns
            .global_dir()
            .join(Folder::Pipe.dir_name())
            .join(me.to_string());
        // Only looked at when this user published pipes there (nothing is created).
        if shared.join(&component).is_dir()
            && SecureDir::open_or_create(&shared, DirPolicy::Published)
                .is_ok_and(|f| alive_in(&f, &component))
        {
            return Err(exists_elsewhere(
                req.name,
                "published (shared with other users)",
            ));
        }
        (private, Place::Private, None)
    };
    let (policy, file_mode) = match place {
        Place::Private => (DirPolicy::Private, 0o600),
        Place::Published { .. } => (DirPolicy::Published, PUBLISHED_FILE_MODE),
    };
    let sdir = folder.subdir(&component, policy)?;
    let dir = PipeDir {
        fd: fd::duplicate(&sdir)?,
        path: sdir.path().to_owned(),
    };
    let live = sweep(&dir)?;
    let meta = if live.is_empty() {
        let mut meta = req.meta;
        meta.creator_pid = process::current_pid();
        write_meta(&dir, &meta, file_mode)?;
        meta
    } else {
        if req.first_instance {
            return Err(Error::with_message(
                ErrorKind::AccessDenied,
                format!(
                    "{} already exists (FILE_FLAG_FIRST_PIPE_INSTANCE)",
                    req.name
                ),
            ));
        }
        let meta = read_meta(&dir)?;
        if meta.pipe_type != req.meta.pipe_type || meta.open_mode != req.meta.open_mode {
            return Err(Error::with_message(
                ErrorKind::AccessDenied,
                format!(
                    "{} exists as a {:?} {:?} pipe; new instances must have the same type and open mode",
                    req.name, meta.pipe_type, meta.open_mode
                ),
            ));
        }
        if let super::MaxInstances::Limited(max) = meta.max_instances
            && live.len() >= usize::from(max)
        {
            return Err(Error::with_message(
                ErrorKind::PipeBusy,
                format!("{} already has its maximum of {max} instances", req.name),
            ));
        }
        meta
    };
    let pid = process::current_pid();
    let (slot, slot_fd) = loop {
        let slot = format!("i-{pid}-{}", next_id());
        match fd::create_file(&dir.fd, &dir.path, &slot, 0o600) {
            Ok(f) => break (slot, f),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    if file_mode != 0o600 {
        file::set_mode(&slot_fd, file_mode)?;
    }
    file::lock_shared(&slot_fd)?;
    Ok(Instance {
        dir,
        meta,
        place,
        folder,
        component,
        slot,
        _slot_fd: slot_fd,
    })
}

fn exists_elsewhere(name: &PipeName, place: &str) -> Error {
    Error::with_message(
        ErrorKind::AccessDenied,
        format!(
            "{name} exists as a {place} pipe; new instances must be shared with other users alike"
        ),
    )
}

impl Instance {
    fn sock(&self) -> String {
        sock_of(&self.slot)
    }

    /// Makes the instance free: a new non-blocking listening socket under its name. At most one
    /// connection can wait on it (backlog 0).
    pub(crate) fn listen(&self) -> Result<OwnedFd> {
        fd::remove_file(&self.dir.fd, &self.dir.path, &self.sock())?;
        let mode = match self.place {
            Place::Private => None,
            Place::Published { .. } => Some(PUBLISHED_SOCKET_MODE),
        };
        socket::bind_listen_at(&self.dir.fd, &self.dir.path, &self.sock(), 0, mode)
    }

    /// Takes the connection waiting on `listener` (which was reported readable): removes the
    /// socket's name, stops the listener from taking more, then accepts. `Ok(None)` when no
    /// connection was there after all: the caller listens anew.
    pub(crate) fn take_client(&self, listener: impl AsFd) -> Result<Option<OwnedFd>> {
        self.unlisten()?;
        socket::close_door(&listener)?;
        socket::accept_now(&listener)
    }

    /// Removes the name of the listening socket (the instance is connected or closing).
    pub(crate) fn unlisten(&self) -> Result<()> {
        fd::remove_file(&self.dir.fd, &self.dir.path, &self.sock())
    }

    /// The live instances of the pipe now (this one included).
    pub(crate) fn count(&self) -> Result<usize> {
        let names = fd::list(&self.dir.fd, &self.dir.path)?;
        Ok(names
            .iter()
            .filter(|n| is_slot(n) && (*n == &self.slot || slot_alive(&self.dir, n)))
            .count())
    }

    fn close(&self) -> Result<()> {
        let _guard = folder_lock(&self.folder)?;
        remove_instance_files(&self.dir, &self.slot)?;
        if sweep(&self.dir)?.is_empty() {
            // The last instance: the pipe goes away with it.
            for n in fd::list(&self.dir.fd, &self.dir.path)? {
                fd::remove_file(&self.dir.fd, &self.dir.path, &n)?;
            }
            fd::remove_dir(&self.folder, self.folder.path(), &self.component)?;
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!("closing pipe instance {}: {e}", self.dir.path.display());
        }
    }
}

fn not_found(name: &PipeName) -> Error {
    Error::with_message(ErrorKind::NotFound, format!("no pipe named {name}"))
}

/// Opens a pipe's directory for a client: [`ErrorKind::NotFound`] when there is no such pipe.
/// The folders must belong to the user who serves the pipe there.
pub(crate) fn open_dir(ns: &Namespace, name: &PipeName, place: Place) -> Result<PipeDir> {
    let component = component(ns, name)?;
    let nf = |e: Error| {
        if e.kind() == ErrorKind::NotFound {
            not_found(name)
        } else {
            e
        }
    };
    let (fd, path) = match place {
        Place::Private => {
            let folder = ns.folder(Folder::Pipe, Scope::Local)?;
            let fd = fd::open_subdir(&folder, folder.path(), &component).map_err(nf)?;
            (fd, folder.path().join(&component))
        }
        Place::Published { owner } => {
            let user = owner.to_string();
            // A client creates nothing (it may not be allowed to): no folder, no pipe.
            let folder = ns.global_dir().join(Folder::Pipe.dir_name()).join(&user);
            if !folder.is_dir() {
                return Err(not_found(name));
            }
            let shared = ns.folder(Folder::Pipe, Scope::Global)?;
            let ofd = fd::open_subdir_of(&shared, shared.path(), &user, owner).map_err(nf)?;
            let opath = shared.path().join(&user);
            let fd = fd::open_subdir_of(&ofd, &opath, &component, owner).map_err(nf)?;
            (fd, opath.join(&component))
        }
    };
    Ok(PipeDir { fd, path })
}

/// Reads a client's view of the pipe's metadata: [`ErrorKind::NotFound`] when it is gone.
pub(crate) fn client_meta(dir: &PipeDir, name: &PipeName) -> Result<Meta> {
    read_meta(dir).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            not_found(name)
        } else {
            e
        }
    })
}

/// `CreateFile` on a pipe: connects to a free instance (the socket returned is blocking).
/// Fails with [`ErrorKind::PipeBusy`] when instances exist but none is free,
/// [`ErrorKind::NotFound`] when none exists.
pub(crate) fn connect(dir: &PipeDir, name: &PipeName) -> Result<OwnedFd> {
    let names = fd::list(&dir.fd, &dir.path)?;
    let free: Vec<&String> = names
        .iter()
        .filter(|n| n.strip_suffix(".sock").is_some_and(is_slot))
        .collect();
    let start = if free.is_empty() {
        0
    } else {
        (process::current_pid() as usize).wrapping_add(next_id() as usize) % free.len()
    };
    for i in 0..free.len() {
        let sock = free[(start + i) % free.len()];
        match socket::connect_at(&dir.fd, &dir.path, sock) {
            Ok(fd) => return Ok(fd),
            // EAGAIN: a client is already waiting on it; ECONNREFUSED: its server is taking a
            // client (or died); ENOENT: it was taken meanwhile. Try the next.
            Err(
                rustix::io::Errno::AGAIN
                | rustix::io::Errno::CONNREFUSED
                | rustix::io::Errno::NOENT,
            ) => {}
            Err(e) => {
                return Err(Error::from_io(
                    format!("cannot connect to {name}"),
                    e.into(),
                ));
            }
        }
    }
    if names.iter().any(|n| is_slot(n) && slot_alive(dir, n)) {
        Err(Error::with_message(
            ErrorKind::PipeBusy,
            format!("all instances of {name} are busy"),
        ))
    } else {
        Err(not_found(name))
    }
}

/// What a wait for a free instance does next.
#[derive(Debug)]
pub(crate) enum WaitStep {
    /// An instance is free.
    Ready,
    /// Nothing is free: wait until the folder changes (its watch), one of these descriptors
    /// (the servers' ends) becomes readable, or `slice` passes (`None`: no limit but the
    /// deadline), then step again.
    Sleep {
        exits: Vec<OwnedFd>,
        slice: Option<Duration>,
    },
}

/// `WaitNamedPipe`: waits until an instance of the pipe is free. Shared by the blocking and
/// the async driver: [`step`](Self::step) checks, the driver waits on what it returns.
#[derive(Debug)]
pub(crate) struct FreeWait {
    dir: PipeDir,
    name: PipeName,
    deadline: Option<Instant>,
}

impl FreeWait {
    /// Starts a wait of at most `timeout` ([`PipeWait::Default`](super::PipeWait::Default) is
    /// the server's default timeout from the metadata). Returns the folder watch to wait on,
    /// made before the first check so that no change is missed.
    pub(crate) fn new(
        dir: PipeDir,
        name: &PipeName,
        timeout: super::PipeWait,
    ) -> Result<(FreeWait, OwnedFd)> {
        let meta = client_meta(&dir, name)?;
        let deadline = match timeout {
            super::PipeWait::Default => Some(Instant::now() + meta.default_timeout()),
            super::PipeWait::Forever => None,
            super::PipeWait::Timeout(t) => Some(Instant::now() + t),
        };
        let watch = socket::watch_dir(&dir.fd)?;
        Ok((
            FreeWait {
                dir,
                name: name.clone(),
                deadline,
            },
            watch,
        ))
    }

    /// Time left, `None` without a deadline.
    pub(crate) fn left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Checks the directory (after reading the watch's events away): ready when a live instance
    /// has its socket name, [`ErrorKind::NotFound`] when no instance lives,
    /// [`ErrorKind::Timeout`] (`ERROR_SEM_TIMEOUT`, 121) when the time ran out.
    pub(crate) fn step(&mut self, watch: BorrowedFd<'_>) -> Result<WaitStep> {
        socket::drain_watch(watch)?;
        let names = match fd::list(&self.dir.fd, &self.dir.path) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found(&self.name)),
            Err(e) => return Err(e),
        };
        let live: Vec<&String> = names
            .iter()
            .filter(|n| is_slot(n) && slot_alive(&self.dir, n))
            .collect();
        if live.is_empty() {
            return Err(not_found(&self.name));
        }
        if live.iter().any(|s| names.contains(&sock_of(s))) {
            return Ok(WaitStep::Ready);
        }
        if self.left().is_some_and(|l| l.is_zero()) {
            return Err(Error::with_message(
                ErrorKind::Timeout,
                format!("no instance of {} became free in time", self.name),
            )
            .with_win32_code(121)); // ERROR_SEM_TIMEOUT
        }
        // A server that dies removes nothing: watch the serving processes' ends too.
        let mut exits = Vec::new();
        let mut slice = None;
        let mut pids: Vec<u32> = live.iter().filter_map(|s| slot_pid(s)).collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            match socket::process_exit_fd(pid) {
                Ok(Some(fd)) => exits.push(fd),
                // Gone just now (or a server in another pid namespace, or no pidfds): look
                // again a little later; never spin.
                Ok(None) | Err(_) => slice = Some(FALLBACK_RECHECK),
            }
        }
        Ok(WaitStep::Sleep { exits, slice })
    }
}

/// `WaitNamedPipe`, blocking.
pub(crate) fn wait_free(dir: PipeDir, name: &PipeName, timeout: super::PipeWait) -> Result<()> {
    let (mut w, watch) = FreeWait::new(dir, name, timeout)?;
    loop {
        match w.step(watch.as_fd())? {
            WaitStep::Ready => return Ok(()),
            WaitStep::Sleep { exits, slice } => {
                let mut fds = vec![watch.as_fd()];
                fds.extend(exits.iter().map(AsFd::as_fd));
                let t = match (w.left(), slice) {
                    (Some(l), Some(s)) => Some(l.min(s)),
                    (l, s) => l.or(s),
                };
                socket::wait_readable(&fds, t)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_slot("i-12-3"));
        assert!(!is_slot("i-12-3.sock"));
        assert!(!is_slot("meta"));
        assert_eq!(slot_pid("i-12-3"), Some(12));
        assert_eq!(slot_pid("i-x-3"), None);
        assert_eq!(sock_of("i-12-3"), "i-12-3.sock");
    }
}
