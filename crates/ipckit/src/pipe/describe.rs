//! What a pipe's instance directory says about it, for tools such as `ipckit ls`: its fixed
//! parameters, its live and free instances and the processes serving it. Read-only: nothing is
//! swept or locked.

use super::registry::{self, PipeDir};
use super::{MaxInstances, PipeInfo};
use crate::error::{ErrorKind, Result};
use crate::name::Scope;
use crate::namespace::{Folder, Namespace};
use crate::sys::{fd, file, process};

/// The state of one named pipe, as [`describe`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeStatus {
    /// The fixed parameters (`GetNamedPipeInfo`).
    pub info: PipeInfo,
    /// Live instances, in every serving process (`lpCurInstances`).
    pub instances: usize,
    /// Live instances waiting for a client (their listening socket is there).
    pub free: usize,
    /// The processes serving the pipe (holders of the instances' slot locks), sorted.
    pub servers: Vec<u32>,
}

impl PipeStatus {
    /// The maximum number of instances, `None` when unlimited.
    pub fn max_instances(&self) -> Option<u8> {
        match self.info.max_instances {
            MaxInstances::Limited(n) => Some(n),
            MaxInstances::Unlimited => None,
        }
    }
}

fn is_slot(name: &str) -> bool {
    name.starts_with("i-") && !name.contains('.')
}

/// Describes the local pipe stored under the folder entry `component` (the encoded name, as
/// [`Namespace::entries`] lists it). `Ok(None)` when there is no such pipe or none of its
/// instances is alive (a pipe whose servers all died no longer exists).
pub fn describe(ns: &Namespace, component: &str) -> Result<Option<PipeStatus>> {
    if component.starts_with('.') {
        return Ok(None); // the folder's lock file
    }
    let folder = ns.folder(Folder::Pipe, Scope::Local)?;
    let dir = match fd::open_subdir(&folder, folder.path(), component) {
        Ok(fd) => PipeDir {
            fd,
            path: folder.path().join(component),
        },
        Err(e) if matches!(e.kind(), ErrorKind::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    describe_dir(&dir)
}

/// The live pipes that user `owner` shares with other users (`GLOBAL/pipe/OWNER/`, see
/// [`ServerOptions::allow_user`](super::ServerOptions::allow_user)): each one's folder entry
/// (the encoded name) and state, sorted by entry. Nothing is created.
pub fn describe_shared(ns: &Namespace, owner: u32) -> Result<Vec<(String, PipeStatus)>> {
    let user = owner.to_string();
    let path = ns.global_dir().join(Folder::Pipe.dir_name()).join(&user);
    if !path.is_dir() {
        return Ok(Vec::new());
    }
    let shared = ns.folder(Folder::Pipe, Scope::Global)?;
    let ofd = match fd::open_subdir_of(&shared, shared.path(), &user, owner) {
        Ok(fd) => fd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut names = fd::list(&ofd, &path)?;
    names.sort();
    for component in names.iter().filter(|n| !n.starts_with('.')) {
        let Ok(fd) = fd::open_subdir_of(&ofd, &path, component, owner) else {
            continue;
        };
        let dir = PipeDir {
            fd,
            path: path.join(component),
        };
        if let Some(st) = describe_dir(&dir)? {
            out.push((component.clone(), st));
        }
    }
    Ok(out)
}

fn describe_dir(dir: &PipeDir) -> Result<Option<PipeStatus>> {
    let meta = match registry::read_meta(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let names = match fd::list(&dir.fd, &dir.path) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut status = PipeStatus {
        info: PipeInfo::from_meta(&meta),
        instances: 0,
        free: 0,
        servers: Vec::new(),
    };
    for slot in names.iter().filter(|n| is_slot(n)) {
        let Ok(f) = fd::open_file_read(&dir.fd, &dir.path, slot) else {
            continue; // closed meanwhile
        };
        let (dev, ino) = file::identity(&f)?;
        let holders = process::flock_holders(dev, ino);
        let alive = if holders.is_empty() {
            // No /proc/locks: ask the lock itself (an exclusive lock succeeds on a dead slot).
            !matches!(file::try_lock_exclusive(&f), Ok(true))
        } else {
            true
        };
        if !alive {
            continue;
        }
        status.instances += 1;
        if names.iter().any(|n| *n == format!("{slot}.sock")) {
            status.free += 1;
        }
        status.servers.extend(holders);
    }
    if status.instances == 0 {
        return Ok(None);
    }
    status.servers.sort_unstable();
    status.servers.dedup();
    Ok(Some(status))
}
