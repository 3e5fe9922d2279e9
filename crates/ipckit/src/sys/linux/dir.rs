//! Namespace folders whose ownership and mode are checked before use.
//!
//! A folder in a shared place such as `/tmp` may have been made by someone else, to read
//! or replace what we put in it (the classic `/tmp` attack). [`SecureDir`] opens a folder
//! without following symbolic links, checks the opened folder itself (no race between
//! check and use: later operations go through the open descriptor or the checked path of a
//! folder only its owner can change), and refuses it with [`ErrorKind::AccessDenied`] when
//! it is not what the policy demands.
//!
//! Windows counterpart: the security descriptor of the `\Sessions\N\BaseNamedObjects`
//! object directory, which only the session's user may populate.
//!
//! Linux references: `mkdir(2)`, `mkdirat(2)`, `open(2)` (`O_DIRECTORY | O_NOFOLLOW`),
//! `fstat(2)`, `fchmod(2)`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, ErrorKind, Result};

/// What a folder must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirPolicy {
    /// Owned by this user, mode 0700 (created so; tightened to it when it is merely
    /// readable by others; refused when others may write to it).
    Private,
    /// Machine-wide: owned by root or this user; if others may write to it, the sticky bit
    /// must be set so nobody removes or renames another user's entries. Created 01777.
    Shared,
    /// Published by this user for others to reach: owned by this user, mode 0755 (others may
    /// list and enter it, never write to it; set so when it differs).
    Published,
}

/// An open, checked folder.
#[derive(Debug)]
pub struct SecureDir {
    path: PathBuf,
    fd: OwnedFd,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn create_mode(policy: DirPolicy) -> Mode {
    match policy {
        DirPolicy::Private => Mode::from_raw_mode(0o700),
        DirPolicy::Shared => Mode::from_raw_mode(0o1777),
        DirPolicy::Published => Mode::from_raw_mode(0o755),
    }
}

fn open_error(path: &Path, e: Errno) -> Error {
    match e {
        Errno::LOOP | Errno::NOTDIR => Error::with_message(
            ErrorKind::AccessDenied,
            format!(
                "{} is a symbolic link or not a folder; refusing to use it",
                path.display()
            ),
        ),
        Errno::NOENT => Error::with_message(
            ErrorKind::NotFound,
            format!(
                "the folder that should hold {} does not exist",
                path.display()
            ),
        ),
        e => Error::from_io(format!("cannot open folder {}", path.display()), e.into()),
    }
}

impl SecureDir {
    /// Opens the folder at `path`, creating it (not its parents) when absent, and checks it
    /// against `policy`.
    pub fn open_or_create(path: &Path, policy: DirPolicy) -> Result<SecureDir> {
        if !path.is_absolute() {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!(
                    "namespace folder {} must be an absolute path",
                    path.display()
                ),
            ));
        }
        let created = match rustix::fs::mkdir(path, create_mode(policy)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(open_error(path, e)),
        };
        let fd =
            rustix::fs::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| open_error(path, e))?;
        let dir = SecureDir {
            path: path.to_owned(),
            fd,
        };
        dir.check(policy, created)?;
        Ok(dir)
    }

    /// Opens (creating when absent) the folder `name` inside this one. `name` must be a
    /// single path component.
    pub fn subdir(&self, name: &str, policy: DirPolicy) -> Result<SecureDir> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::with_message(
                ErrorKind::InvalidName,
                format!("{name:?} is not a single folder name"),
            ));
        }
        let path = self.path.join(name);
        let created = match rustix::fs::mkdirat(&self.fd, name, create_mode(policy)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(open_error(&path, e)),
        };
        let fd = rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| open_error(&path, e))?;
        let dir = SecureDir { path, fd };
        dir.check(policy, created)?;
        Ok(dir)
    }

    fn check(&self, policy: DirPolicy, created: bool) -> Result<()> {
        let st = rustix::fs::fstat(&self.fd).map_err(|e| {
            Error::from_io(format!("cannot stat {}", self.path.display()), e.into())
        })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(open_error(&self.path, Errno::NOTDIR));
        }
        let me = super::process::current_uid();
        let mode = st.st_mode & 0o7777;
        let denied = |why: String| {
            Err(Error::with_message(
                ErrorKind::AccessDenied,
                format!("refusing to use {}: {why}", self.path.display()),
            ))
        };
        match policy {
            DirPolicy::Private => {
                if st.st_uid != me {
                    return denied(format!(
                        "it is owned by uid {}, not by this user (uid {me}), who could read or replace its objects",
                        st.st_uid
                    ));
                }
                if mode & 0o022 != 0 {
                    return denied(format!("it is writable by other users (mode {mode:04o})"));
                }
                if mode & 0o7777 != 0o700 {
                    // Ours and not writable by others: make it private, as if we had made it.
                    rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(0o700)).map_err(|e| {
                        Error::from_io(
                            format!("cannot make {} private", self.path.display()),
                            e.into(),
                        )
                    })?;
                }
            }
            DirPolicy::Published => {
                if st.st_uid != me {
                    return denied(format!(
                        "it is owned by uid {}, not by this user (uid {me})",
                        st.st_uid
                    ));
                }
                if mode != 0o755 {
                    rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(0o755)).map_err(|e| {
                        Error::from_io(
                            format!("cannot set the mode of {}", self.path.display()),
                            e.into(),
                        )
                    })?;
                }
            }
            DirPolicy::Shared => {
                if st.st_uid != me && st.st_uid != 0 {
                    return denied(format!(
                        "it is owned by uid {}, neither root nor this user (uid {me})",
                        st.st_uid
                    ));
                }
                if created && st.st_uid == me {
                    // mkdir's mode is filtered by the umask; set the intended one.
                    rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(0o1777)).map_err(|e| {
                        Error::from_io(
                            format!("cannot set the mode of {}", self.path.display()),
                            e.into(),
                        )
                    })?;
                } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                    return denied(format!(
                        "others may write to it but its sticky bit is not set (mode {mode:04o})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for SecureDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "ipckit-dir-test-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn creates_private_folder_0700() {
        let p = scratch("create");
        let _c = Cleanup(p.clone());
        let d = SecureDir::open_or_create(&p, DirPolicy::Private).unwrap();
        let md = std::fs::metadata(d.path()).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o700);
        assert_eq!(md.uid(), super::super::process::current_uid());
        let sub = d.subdir("pipe", DirPolicy::Private).unwrap();
        assert_eq!(
            std::fs::metadata(sub.path()).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        // Opening again succeeds and changes nothing.
        SecureDir::open_or_create(&p, DirPolicy::Private).unwrap();
    }

    #[test]
    fn refuses_world_writable_folder() {
        let p = scratch("ww");
        let _c = Cleanup(p.clone());
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = SecureDir::open_or_create(&p, DirPolicy::Private).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        assert!(e.to_string().contains("writable by other users"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o720)).unwrap();
        let e = SecureDir::open_or_create(&p, DirPolicy::Private).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
    }

    #[test]
    fn tightens_a_readable_folder_of_ours() {
        let p = scratch("tight");
        let _c = Cleanup(p.clone());
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        SecureDir::open_or_create(&p, DirPolicy::Private).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o700
        );
    }

    #[test]
    fn refuses_symlink() {
        let p = scratch("link");
        let target = scratch("link-target");
        let _c = (Cleanup(p.clone()), Cleanup(target.clone()));
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = SecureDir::open_or_create(&p, DirPolicy::Private).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn refuses_folder_of_another_user() {
        let me = super::super::process::current_uid();
        let p = scratch("owner");
        let _c = Cleanup(p.clone());
        if me == 0 {
            // As root we can make a folder that belongs to someone else.
            std::fs::create_dir(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&p, Some(54321), Some(54321)).unwrap();
            let e = SecureDir::open_or_create(&p, DirPolicy::Private).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
            assert!(e.to_string().contains("owned by uid 54321"), "{e}");
            // A shared folder must belong to root or to us, too.
            let e = SecureDir::open_or_create(&p, DirPolicy::Shared).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        } else {
            // Without root, `/` is a folder that belongs to another user.
            let e = SecureDir::open_or_create(Path::new("/"), DirPolicy::Private).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        }
    }

    #[test]
    fn shared_folder_is_sticky() {
        let p = scratch("shared");
        let _c = Cleanup(p.clone());
        SecureDir::open_or_create(&p, DirPolicy::Shared).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = SecureDir::open_or_create(&p, DirPolicy::Shared).unwrap_err();
        assert!(e.to_string().contains("sticky"), "{e}");
    }

    #[test]
    fn published_folder_is_0755_and_ours() {
        let p = scratch("published");
        let _c = Cleanup(p.clone());
        let d = SecureDir::open_or_create(&p, DirPolicy::Private).unwrap();
        let sub = d.subdir("pub", DirPolicy::Published).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(sub.path()), 0o755);
        std::fs::set_permissions(sub.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        d.subdir("pub", DirPolicy::Published).unwrap();
        assert_eq!(mode(sub.path()), 0o755, "tightened");
    }

    #[test]
    fn subdir_rejects_paths() {
        let p = scratch("sub");
        let _c = Cleanup(p.clone());
        let d = SecureDir::open_or_create(&p, DirPolicy::Private).unwrap();
        for bad in ["", ".", "..", "a/b"] {
            assert_eq!(
                d.subdir(bad, DirPolicy::Private).unwrap_err().kind(),
                ErrorKind::InvalidName
            );
        }
    }
}
