//! Where names live on Linux: the per-user runtime folder and the OS names of objects.
//!
//! Windows keeps named objects in the object manager's namespace: `\Sessions\N\BaseNamedObjects`
//! for `Local\` names, `\BaseNamedObjects` for `Global\` ones, the named-pipe file system for
//! `\\.\pipe\`, the mailslot file system for `\\.\mailslot\`. ipckit keeps them here:
//!
//! | name | OS location |
//! | --- | --- |
//! | `\\.\pipe\NAME` | `RUNTIME/pipe/ENC(lowercase NAME)` |
//! | `\\.\mailslot\NAME` | `RUNTIME/mailslot/ENC(lowercase NAME)` |
//! | `NAME`, `Local\NAME` | side file `RUNTIME/object/ENC(NAME)`; shared memory `/ipckit.UID.ENC(NAME)` |
//! | `Global\NAME` | side file `GLOBAL/object/ENC(NAME)`; shared memory `/ipckit.global.ENC(NAME)` |
//!
//! `RUNTIME` is `$IPCKIT_RUNTIME_DIR` when set, else `$XDG_RUNTIME_DIR/ipckit`, else
//! `/tmp/ipckit-UID`; it is created with mode 0700 and refused when it belongs to another
//! user or others may write to it. `GLOBAL` is `/tmp/ipckit-global` (mode 01777, owned by
//! root or the user). `ENC` is [`encode_component`]: letters,
//! digits, `.`, `_` and `-` stand for themselves, every other byte is `%XX`, and a name whose
//! encoding would be too long becomes `~` and 32 hex digits of its SHA-256 (pipes and mailslots
//! over 40 bytes, to keep socket paths within the kernel's 108-byte limit; objects over 200).
//! Shared-memory names appear in `/dev/shm` and can be opened by any POSIX program, e.g.
//! `multiprocessing.shared_memory.SharedMemory(name="ipckit.1000.x")` in Python.
//!
//! When `IPCKIT_RUNTIME_DIR` is set (as the test harness does for each test), everything,
//! `Global\` objects included, lives below that folder and the shared-memory names gain a
//! token derived from the folder (`/ipckit.UID.TOKEN.ENC`), so separate namespaces never meet.
//!
//! ```
//! use ipckit::name::{ObjectName, PipeName};
//! use ipckit::namespace::Namespace;
//!
//! let ns = Namespace::at("/run/user/1000/ipckit");
//! let pipe = PipeName::parse(r"\\.\pipe\App\Ctl")?;
//! assert_eq!(ns.pipe_path(&pipe)?, std::path::Path::new("/run/user/1000/ipckit/pipe/app%5Cctl"));
//! let obj = ObjectName::parse(r"Local\frame buffer")?;
//! assert!(ns.shm_name(&obj).ends_with(".frame%20buffer"));
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::name::{
    MailslotName, MailslotTarget, Name, ObjectName, PipeName, Scope, encode_component,
};
use crate::sys::dir::{DirPolicy, SecureDir};
use crate::sys::process::current_uid;

/// Environment variable that overrides the per-user runtime folder.
pub const RUNTIME_DIR_ENV: &str = "IPCKIT_RUNTIME_DIR";
/// The machine-wide folder of `Global\` objects.
pub const GLOBAL_DIR: &str = "/tmp/ipckit-global";

/// Longest encoded pipe or mailslot component before it is hashed.
const SOCKET_COMPONENT_LIMIT: usize = 40;
use crate::object::OBJECT_COMPONENT_LIMIT;

/// The kinds of folder inside a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Folder {
    /// Named pipes.
    Pipe,
    /// Mailslots.
    Mailslot,
    /// Kernel objects: file mappings, mutexes, events, semaphores.
    Object,
}

impl Folder {
    /// Every folder, in listing order.
    pub const ALL: [Folder; 3] = [Folder::Pipe, Folder::Mailslot, Folder::Object];

    /// The folder's file name.
    pub const fn dir_name(self) -> &'static str {
        match self {
            Folder::Pipe => "pipe",
            Folder::Mailslot => "mailslot",
            Folder::Object => "object",
        }
    }
}

/// A user's namespace: the folders and shared-memory prefixes where named objects live.
///
/// Constructing one does no I/O; the folders are created and checked (see
/// [`SecureDir`]) each time a mechanism opens one with [`Namespace::folder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    runtime: PathBuf,
    global: PathBuf,
    local_shm_prefix: String,
    global_shm_prefix: String,
}

/// Where a name lives, for display (`ipckit where`) and for programs outside ipckit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A pipe's or mailslot's folder entry.
    Path(PathBuf),
    /// A kernel object: its side file (lifetime, kind, holders) and its POSIX shared-memory
    /// name (used when the object is a file mapping).
    Object {
        /// The side file.
        path: PathBuf,
        /// The name for `shm_open(3)`, without the leading `/`.
        shm_name: String,
    },
    /// A name on another machine, reached through the broker's gateway (case-folded).
    Remote(String),
}

fn token_of(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// `display` with its trailing `name` part replaced by the case-folded `key`.
fn fold_name(display: &str, name: &str, key: &str) -> String {
    format!("{}{key}", &display[..display.len() - name.len()])
}

impl Namespace {
    /// This user's namespace, from the environment (see the module docs), with its
    /// runtime folder created and checked.
    pub fn user() -> Result<Namespace> {
        let ns = Self::from_env();
        ns.folder_root()?;
        Ok(ns)
    }

    /// This user's namespace from the environment, without touching the file system.
    pub fn from_env() -> Namespace {
        if let Some(dir) = std::env::var_os(RUNTIME_DIR_ENV).filter(|d| !d.is_empty()) {
            return Self::at(PathBuf::from(dir));
        }
        let uid = current_uid();
        let runtime = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(x) if x.is_absolute() => x.join("ipckit"),
            _ => PathBuf::from(format!("/tmp/ipckit-{uid}")),
        };
        Namespace {
            runtime,
            global: PathBuf::from(GLOBAL_DIR),
            local_shm_prefix: format!("ipckit.{uid}."),
            global_shm_prefix: "ipckit.global.".to_owned(),
        }
    }

    /// A self-contained namespace below `dir` (`Global\` objects included), as
    /// `IPCKIT_RUNTIME_DIR=dir` gives. Does no I/O.
    pub fn at(dir: impl Into<PathBuf>) -> Namespace {
        let runtime: PathBuf = dir.into();
        let token = token_of(&runtime);
        Namespace {
            global: runtime.join("global"),
            local_shm_prefix: format!("ipckit.{}.{token}.", current_uid()),
            global_shm_prefix: format!("ipckit.global.{token}."),
            runtime,
        }
    }

    /// The same namespace with its machine-wide folder at `dir` (where `Global\` objects and
    /// the pipes users share live), e.g. a folder other users can reach when the runtime
    /// folder is set with `IPCKIT_RUNTIME_DIR` or [`Namespace::at`]. Does no I/O.
    pub fn with_global_dir(mut self, dir: impl Into<PathBuf>) -> Namespace {
        self.global = dir.into();
        self
    }

    /// The per-user runtime folder.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime
    }

    /// The machine-wide folder of `Global\` objects.
    pub fn global_dir(&self) -> &Path {
        &self.global
    }

    /// Opens (creating and checking) the runtime folder.
    pub fn folder_root(&self) -> Result<SecureDir> {
        SecureDir::open_or_create(&self.runtime, DirPolicy::Private).map_err(|e| {
            if e.kind() == ErrorKind::AccessDenied {
                Error::with_message(
                    e.kind(),
                    format!(
                        "{}. Remove that folder, or set {RUNTIME_DIR_ENV} (or XDG_RUNTIME_DIR) to a folder of your own",
                        e.message().unwrap_or("unsafe runtime folder")
                    ),
                )
            } else {
                e
            }
        })
    }

    /// Opens (creating and checking) one kind's folder in `scope`.
    pub fn folder(&self, folder: Folder, scope: Scope) -> Result<SecureDir> {
        match scope {
            Scope::Local => self
                .folder_root()?
                .subdir(folder.dir_name(), DirPolicy::Private),
            Scope::Global => SecureDir::open_or_create(&self.global, DirPolicy::Shared)?
                .subdir(folder.dir_name(), DirPolicy::Shared),
        }
    }

    /// The path of a local pipe's folder entry. Remote names need the broker's gateway.
    pub fn pipe_path(&self, name: &PipeName) -> Result<PathBuf> {
        if !name.is_local() {
            return Err(Error::with_message(
                ErrorKind::NeedsGateway,
                format!(
                    "{name} is on another machine: remote pipes need the broker's network gateway"
                ),
            ));
        }
        Ok(self
            .runtime
            .join(Folder::Pipe.dir_name())
            .join(encode_component(name.key(), SOCKET_COMPONENT_LIMIT)))
    }

    /// The path of a local mailslot's folder entry. Other forms need the broker's gateway.
    pub fn mailslot_path(&self, name: &MailslotName) -> Result<PathBuf> {
        if *name.target() != MailslotTarget::Local {
            return Err(Error::with_message(
                ErrorKind::NeedsGateway,
                format!("{name}: network mailslots need the broker's network gateway"),
            ));
        }
        Ok(self
            .runtime
            .join(Folder::Mailslot.dir_name())
            .join(encode_component(name.key(), SOCKET_COMPONENT_LIMIT)))
    }

    /// The side file of a kernel object (holds its kind and its holders' locks).
    pub fn object_path(&self, name: &ObjectName) -> PathBuf {
        let base = match name.scope() {
            Scope::Local => &self.runtime,
            Scope::Global => &self.global,
        };
        base.join(Folder::Object.dir_name())
            .join(encode_component(name.name(), OBJECT_COMPONENT_LIMIT))
    }

    /// The POSIX shared-memory name of a kernel object, without the leading `/`
    /// (the file `/dev/shm/NAME`).
    pub fn shm_name(&self, name: &ObjectName) -> String {
        self.shm_name_for(name.scope(), name.name())
    }

    /// The shared-memory name of the object `name` (without prefix) in `scope`.
    pub fn shm_name_for(&self, scope: Scope, name: &str) -> String {
        format!(
            "{}{}",
            self.shm_prefix(scope),
            encode_component(name, OBJECT_COMPONENT_LIMIT)
        )
    }

    /// The prefix every shared-memory name of `scope` in this namespace starts with.
    pub fn shm_prefix(&self, scope: Scope) -> &str {
        match scope {
            Scope::Local => &self.local_shm_prefix,
            Scope::Global => &self.global_shm_prefix,
        }
    }

    /// Where any name lives.
    pub fn locate(&self, name: &Name) -> Result<Location> {
        match name {
            // Case-folded, so that two spellings of one name locate the same.
            Name::Pipe(p) if !p.is_local() => Ok(Location::Remote(fold_name(
                &p.to_string(),
                p.name(),
                p.key(),
            ))),
            Name::Mailslot(m) if !m.is_local() => Ok(Location::Remote(fold_name(
                &m.to_string(),
                m.name(),
                m.key(),
            ))),
            Name::Pipe(p) => self.pipe_path(p).map(Location::Path),
            Name::Mailslot(m) => self.mailslot_path(m).map(Location::Path),
            Name::Object(o) => Ok(Location::Object {
                path: self.object_path(o),
                shm_name: self.shm_name(o),
            }),
        }
    }
}

/// One live entry of a namespace folder, as `ipckit ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The folder it is in.
    pub folder: Folder,
    /// `Local` for the runtime folder, `Global` for the machine-wide one.
    pub scope: Scope,
    /// The name, decoded from the entry's file name; `None` for a long name stored hashed.
    pub name: Option<String>,
    /// The entry's path.
    pub path: PathBuf,
}

impl Namespace {
    /// Every entry of this namespace's folders, local then global, sorted by folder and name.
    /// Folders that do not exist yet are empty; nothing is created.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for (scope, base) in [(Scope::Local, &self.runtime), (Scope::Global, &self.global)] {
            for folder in Folder::ALL {
                let dir = base.join(folder.dir_name());
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(Error::from_io(format!("cannot list {}", dir.display()), e));
                    }
                };
                for ent in rd {
                    let ent = ent
                        .map_err(|e| Error::from_io(format!("cannot list {}", dir.display()), e))?;
                    let file_name = ent.file_name();
                    let name = file_name.to_str().and_then(crate::name::decode_component);
                    out.push(Entry {
                        folder,
                        scope,
                        name,
                        path: ent.path(),
                    });
                }
            }
        }
        out.sort_by(|a, b| (a.folder, a.scope, &a.path).cmp(&(b.folder, b.scope, &b.path)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let ns = Namespace::at("/r");
        let p = PipeName::parse(r"\\.\pipe\A\B").unwrap();
        assert_eq!(ns.pipe_path(&p).unwrap(), Path::new("/r/pipe/a%5Cb"));
        let m = MailslotName::parse(r"\\.\mailslot\Box").unwrap();
        assert_eq!(ns.mailslot_path(&m).unwrap(), Path::new("/r/mailslot/box"));
        let g = ObjectName::parse(r"Global\x").unwrap();
        assert_eq!(ns.object_path(&g), Path::new("/r/global/object/x"));
        assert!(ns.shm_name(&g).starts_with("ipckit.global."));
        let l = ObjectName::parse("x").unwrap();
        assert_ne!(ns.shm_name(&l), ns.shm_name(&g));
        let remote = PipeName::parse(r"\\h\pipe\x").unwrap();
        assert_eq!(
            ns.pipe_path(&remote).unwrap_err().kind(),
            ErrorKind::NeedsGateway
        );
        let bc = MailslotName::parse(r"\\*\mailslot\x").unwrap();
        assert_eq!(
            ns.mailslot_path(&bc).unwrap_err().kind(),
            ErrorKind::NeedsGateway
        );
    }

    #[test]
    fn test_kit_knows_the_shm_token() {
        let dir = Path::new("/tmp/some/test/dir");
        let token = ipckit_testkit::namespace_shm_token(dir);
        let ns = Namespace::at(dir);
        assert!(ns.shm_prefix(Scope::Local).ends_with(&format!(".{token}.")));
        assert_eq!(
            ns.shm_prefix(Scope::Global),
            format!("ipckit.global.{token}.")
        );
    }

    #[test]
    fn separate_namespaces_have_separate_shm_names() {
        let o = ObjectName::parse("x").unwrap();
        assert_ne!(
            Namespace::at("/a").shm_name(&o),
            Namespace::at("/b").shm_name(&o)
        );
    }
}
