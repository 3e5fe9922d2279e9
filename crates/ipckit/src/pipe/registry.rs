//! The instance directory of a named pipe: who serves it, which instances are free, and how a
//! client claims one. The scheme is specified in `docs/protocol/pipe.md`:
//!
//! ```text
//! RUNTIME/pipe/.lock                   flock: creating or closing an instance of any pipe
//! RUNTIME/pipe/ENC/meta                the pipe's parameters (64 bytes, see meta.rs)
//! RUNTIME/pipe/ENC/i-PID-N             one per instance; its server holds a shared flock
//! RUNTIME/pipe/ENC/i-PID-N.sock        the instance's listening socket, while it is free
//! RUNTIME/pipe/ENC/c-PID-N.CPID-M.sock the same socket, renamed by the client CPID claiming it
//! ```
//!
//! A client claims a free instance by renaming its socket to a name of its own (atomic: one
//! client wins), connects to that name and removes it. So at most one client ever connects to a
//! listening socket, and a busy instance has no socket name at all: a connect can never be left
//! queued on a busy instance.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::meta::Meta;
use crate::error::{Error, ErrorKind, Result};
use crate::name::{PipeName, Scope};
use crate::namespace::{Folder, Namespace};
use crate::sys::dir::{DirPolicy, SecureDir};
use crate::sys::{fd, file, process, socket};

const FOLDER_LOCK: &str = ".lock";
const META: &str = "meta";

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// An open pipe directory.
#[derive(Debug)]
pub(crate) struct PipeDir {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

/// `RUNTIME/pipe/.lock`, held exclusively while an instance is created or closed (and
/// `RUNTIME/mailslot/.lock` while a mailslot is: any private folder's `.lock`).
#[derive(Debug)]
pub(crate) struct FolderLock(OwnedFd);

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Unlock explicitly: a child forked meanwhile by another thread holds a copy of the
        // descriptor until it executes its program.
        let _ = file::unlock(&self.0);
    }
}

/// Takes the exclusive lock of the private folder `folder` (its `.lock` file, created 0600).
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

fn is_slot(name: &str) -> bool {
    name.starts_with("i-") && !name.contains('.')
}

fn sock_of(slot: &str) -> String {
    format!("{slot}.sock")
}

/// `c-PID-N.` for the slot `i-PID-N`.
fn claim_prefix(slot: &str) -> String {
    format!("c-{}.", &slot[2..])
}

/// The slot a claim belongs to and the claiming pid.
fn parse_claim(name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix("c-")?.strip_suffix(".sock")?;
    let (inst, client) = rest.split_once('.')?;
    let pid = client.split_once('-')?.0.parse().ok()?;
    Some((format!("i-{inst}"), pid))
}

/// Whether the instance `slot` has a live server: someone holds a lock on its slot file.
fn slot_alive(dir: &PipeDir, slot: &str) -> bool {
    match fd::open_file(&dir.fd, &dir.path, slot) {
        Ok(f) => !matches!(file::try_lock_exclusive(&f), Ok(true)),
        Err(_) => false,
    }
}

/// Removes dead instances (slot files nobody locks, with their sockets and claims) and orphaned
/// files. Caller holds the folder lock. Returns the live slots.
fn sweep(dir: &PipeDir) -> Result<Vec<String>> {
    let names = fd::list(&dir.fd, &dir.path)?;
    let mut live = Vec::new();
    for slot in names.iter().filter(|n| is_slot(n)) {
        let Ok(f) = fd::open_file(&dir.fd, &dir.path, slot) else {
            continue;
        };
        if file::try_lock_exclusive(&f)? {
            remove_instance_files(dir, slot, &names)?;
        } else {
            live.push(slot.clone());
        }
    }
    for n in &names {
        let owner = if let Some(slot) = n.strip_suffix(".sock").filter(|s| is_slot(s)) {
            Some(slot.to_owned())
        } else {
            parse_claim(n).map(|(slot, _)| slot)
        };
        let orphan = match owner {
            Some(slot) => !live.contains(&slot),
            None => n.starts_with("meta.tmp-"),
        };
        if orphan {
            fd::remove_file(&dir.fd, &dir.path, n)?;
        }
    }
    Ok(live)
}

fn remove_instance_files(dir: &PipeDir, slot: &str, names: &[String]) -> Result<()> {
    fd::remove_file(&dir.fd, &dir.path, &sock_of(slot))?;
    let prefix = claim_prefix(slot);
    for n in names.iter().filter(|n| n.starts_with(&prefix)) {
        fd::remove_file(&dir.fd, &dir.path, n)?;
    }
    fd::remove_file(&dir.fd, &dir.path, slot)
}

pub(crate) fn read_meta(dir: &PipeDir) -> Result<Meta> {
    let f = fd::open_file(&dir.fd, &dir.path, META)?;
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

fn write_meta(dir: &PipeDir, meta: &Meta) -> Result<()> {
    let tmp = format!("meta.tmp-{}-{}", process::current_pid(), next_id());
    fd::remove_file(&dir.fd, &dir.path, &tmp)?;
    let f = fd::create_file(&dir.fd, &dir.path, &tmp, 0o600)?;
    file::write_all_at(&f, &meta.encode(), 0)?;
    drop(f);
    fd::rename(&dir.fd, &tmp, META)
        .map_err(|e| Error::from_io("cannot publish pipe metadata", e.into()))
}

/// One server instance, registered in the pipe's directory.
#[derive(Debug)]
pub(crate) struct Instance {
    pub dir: PipeDir,
    pub meta: Meta,
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
}

/// `CreateNamedPipe`: registers a new instance (not yet listening).
pub(crate) fn create_instance(ns: &Namespace, req: &CreateRequest<'_>) -> Result<Instance> {
    let component = component(ns, req.name)?;
    let folder = ns.folder(Folder::Pipe, Scope::Local)?;
    let _guard = folder_lock(&folder)?;
    let sdir = folder.subdir(&component, DirPolicy::Private)?;
    let dir = PipeDir {
        fd: fd::duplicate(&sdir)?,
        path: sdir.path().to_owned(),
    };
    let live = sweep(&dir)?;
    let meta = if live.is_empty() {
        let mut meta = req.meta;
        meta.creator_pid = process::current_pid();
        write_meta(&dir, &meta)?;
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
    file::lock_shared(&slot_fd)?;
    Ok(Instance {
        dir,
        meta,
        folder,
        component,
        slot,
        _slot_fd: slot_fd,
    })
}

/// What a server waiting for a client finds when its accept times out.
pub(crate) enum Reach {
    /// Clients can reach the listener (or one is connecting).
    Fine,
    /// The socket's name is gone without a live claimant: listen anew.
    Relisten,
}

impl Instance {
    fn sock(&self) -> String {
        sock_of(&self.slot)
    }

    /// Makes the instance free: a new listening socket under its name (stale claims removed).
    /// At most one connection can wait on it (backlog 0), and only a claimant finds it.
    pub(crate) fn listen(&self) -> Result<OwnedFd> {
        self.remove_claims()?;
        fd::remove_file(&self.dir.fd, &self.dir.path, &self.sock())?;
        socket::bind_listen_at(&self.dir.fd, &self.dir.path, &self.sock(), 0)
    }

    fn remove_claims(&self) -> Result<()> {
        let prefix = claim_prefix(&self.slot);
        for n in fd::list(&self.dir.fd, &self.dir.path)? {
            if n.starts_with(&prefix) {
                fd::remove_file(&self.dir.fd, &self.dir.path, &n)?;
            }
        }
        Ok(())
    }

    /// Called while waiting for a client: gives back the name a dead claimant took.
    pub(crate) fn check_reachable(&self) -> Result<Reach> {
        let names = fd::list(&self.dir.fd, &self.dir.path)?;
        if names.contains(&self.sock()) {
            return Ok(Reach::Fine);
        }
        let prefix = claim_prefix(&self.slot);
        let mut any = false;
        for n in names.iter().filter(|n| n.starts_with(&prefix)) {
            any = true;
            if let Some((_, pid)) = parse_claim(n)
                && !process::process_exists(pid)
            {
                // The claimant died before it connected: free the instance again.
                match fd::rename(&self.dir.fd, n, &self.sock()) {
                    Ok(()) | Err(Errno::NOENT) => return Ok(Reach::Fine),
                    Err(e) => return Err(Error::from_io("cannot restore pipe socket", e.into())),
                }
            }
        }
        Ok(if any { Reach::Fine } else { Reach::Relisten })
    }

    /// Removes the name of the listening socket (the instance is connected or closing).
    pub(crate) fn unlisten(&self) -> Result<()> {
        fd::remove_file(&self.dir.fd, &self.dir.path, &self.sock())?;
        self.remove_claims()
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
        let names = fd::list(&self.dir.fd, &self.dir.path)?;
        remove_instance_files(&self.dir, &self.slot, &names)?;
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

/// Opens a pipe's directory for a client: [`ErrorKind::NotFound`] when there is no such pipe.
pub(crate) fn open_dir(ns: &Namespace, name: &PipeName) -> Result<PipeDir> {
    let component = component(ns, name)?;
    let folder = ns.folder(Folder::Pipe, Scope::Local)?;
    let not_found = || Error::with_message(ErrorKind::NotFound, format!("no pipe named {name}"));
    let fd = fd::open_subdir(&folder, folder.path(), &component).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            not_found()
        } else {
            e
        }
    })?;
    Ok(PipeDir {
        fd,
        path: folder.path().join(&component),
    })
}

/// `CreateFile` on a pipe: claims a free instance and connects to it. Fails with
/// [`ErrorKind::PipeBusy`] when instances exist but none is free, [`ErrorKind::NotFound`]
/// when none exists.
pub(crate) fn connect(ns: &Namespace, name: &PipeName) -> Result<(OwnedFd, Meta)> {
    let not_found = || Error::with_message(ErrorKind::NotFound, format!("no pipe named {name}"));
    let dir = open_dir(ns, name)?;
    let meta = match read_meta(&dir) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(e),
    };
    let names = fd::list(&dir.fd, &dir.path)?;
    let free: Vec<&String> = names
        .iter()
        .filter(|n| n.strip_suffix(".sock").is_some_and(is_slot))
        .collect();
    let me = process::current_pid();
    let start = if free.is_empty() {
        0
    } else {
        (me as usize).wrapping_add(next_id() as usize) % free.len()
    };
    for i in 0..free.len() {
        let sock = free[(start + i) % free.len()];
        let slot = sock.strip_suffix(".sock").expect("filtered");
        let claim = format!("{}{me}-{}.sock", claim_prefix(slot), next_id());
        match fd::rename(&dir.fd, sock, &claim) {
            Ok(()) => {}
            Err(Errno::NOENT) => continue, // another client claimed it first
            Err(e) => return Err(Error::from_io("cannot claim a pipe instance", e.into())),
        }
        match socket::connect_at(&dir.fd, &dir.path, &claim) {
            Ok(sock_fd) => {
                fd::remove_file(&dir.fd, &dir.path, &claim)?;
                return Ok((sock_fd, meta));
            }
            Err(Errno::AGAIN) => {
                // A connection already waits on it: give the name back, try another.
                let _ = fd::rename(&dir.fd, &claim, sock);
            }
            Err(Errno::CONNREFUSED | Errno::NOENT) => {
                // A socket left by a server that died or is closing the instance.
                fd::remove_file(&dir.fd, &dir.path, &claim)?;
            }
            Err(e) => {
                let _ = fd::rename(&dir.fd, &claim, sock);
                return Err(Error::from_io(
                    format!("cannot connect to {name}"),
                    e.into(),
                ));
            }
        }
    }
    if names.iter().any(|n| is_slot(n) && slot_alive(&dir, n)) {
        Err(Error::with_message(
            ErrorKind::PipeBusy,
            format!("all instances of {name} are busy"),
        ))
    } else {
        Err(not_found())
    }
}

/// `WaitNamedPipe`: waits until an instance of the pipe is free, at most `timeout`
/// ([`PipeWait::Default`](super::PipeWait::Default) is the server's default timeout from the
/// pipe's metadata).
pub(crate) fn wait_free(ns: &Namespace, name: &PipeName, timeout: super::PipeWait) -> Result<()> {
    let not_found = || Error::with_message(ErrorKind::NotFound, format!("no pipe named {name}"));
    let dir = open_dir(ns, name)?;
    let meta = read_meta(&dir).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            not_found()
        } else {
            e
        }
    })?;
    let deadline = match timeout {
        super::PipeWait::Default => Some(Instant::now() + meta.default_timeout()),
        super::PipeWait::Forever => None,
        super::PipeWait::Timeout(t) => Some(Instant::now() + t),
    };
    let mut pause = Duration::from_millis(1);
    loop {
        let names = match fd::list(&dir.fd, &dir.path) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(e),
        };
        let live: Vec<&String> = names
            .iter()
            .filter(|n| is_slot(n) && slot_alive(&dir, n))
            .collect();
        if live.is_empty() {
            return Err(not_found());
        }
        if live.iter().any(|s| names.contains(&sock_of(s))) {
            return Ok(());
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Error::with_message(
                ErrorKind::Timeout,
                format!("no instance of {name} became free in time"),
            )
            .with_win32_code(121)); // ERROR_SEM_TIMEOUT
        }
        let nap = deadline.map_or(pause, |d| pause.min(d - now));
        std::thread::sleep(nap);
        pause = (pause * 2).min(Duration::from_millis(20));
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
        assert_eq!(claim_prefix("i-12-3"), "c-12-3.");
        assert_eq!(
            parse_claim("c-12-3.99-7.sock"),
            Some(("i-12-3".to_owned(), 99))
        );
        assert_eq!(parse_claim("c-12-3.sock"), None);
        assert_eq!(parse_claim("c-12-3.x-1.sock"), None);
    }
}
