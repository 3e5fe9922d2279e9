//! Anonymous pipes: `CreatePipe`, handed to child processes.
//!
//! The two ends are a connected pair of Unix stream sockets, each shut down in the direction
//! it does not use, so that writing to a pipe whose reader is gone fails with
//! [`ErrorKind::NoData`] (`MSG_NOSIGNAL`) instead of raising `SIGPIPE`. Both ends are
//! close-on-exec: a child receives an end only as its stdin/stdout/stderr
//! ([`Stdio::from`](std::process::Stdio)) or through [`PipeReader::inherit`] /
//! [`PipeWriter::inherit`], which hand it to that one child under a number the child is told.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::fd::{self, FdKind};
use crate::sys::socket;

/// `CreatePipe`: a one-way byte stream, read end first.
///
/// The buffer size argument of `CreatePipe` has no counterpart: the kernel's socket buffers
/// apply (a writer waits while they are full).
pub fn anonymous_pipe() -> Result<(PipeReader, PipeWriter)> {
    let (r, w) = socket::stream_pair()?;
    socket::shutdown(&r, false, true);
    socket::shutdown(&w, true, false);
    Ok((
        PipeReader {
            inner: Inner::Socket(r),
        },
        PipeWriter {
            inner: Inner::Socket(w),
        },
    ))
}

#[derive(Debug)]
enum Inner {
    /// ipckit's own pipe end.
    Socket(OwnedFd),
    /// A pipe(2)/FIFO end inherited from a parent that is not ipckit.
    Fifo(File),
}

impl Inner {
    fn from_fd(fd: OwnedFd) -> Result<Inner> {
        match fd::kind(&fd)? {
            FdKind::Socket if socket::is_unix_stream(&fd) => Ok(Inner::Socket(fd)),
            FdKind::Fifo => Ok(Inner::Fifo(File::from(fd))),
            _ => Err(Error::with_message(
                ErrorKind::InvalidParameter,
                "the descriptor is not a pipe",
            )),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Inner::Socket(f) => f.as_fd(),
            Inner::Fifo(f) => f.as_fd(),
        }
    }

    fn into_fd(self) -> OwnedFd {
        match self {
            Inner::Socket(f) => f,
            Inner::Fifo(f) => f.into(),
        }
    }

    fn try_clone(&self) -> Result<Inner> {
        let d = fd::duplicate(self.fd())?;
        Ok(match self {
            Inner::Socket(_) => Inner::Socket(d),
            Inner::Fifo(_) => Inner::Fifo(File::from(d)),
        })
    }
}

fn claim_env(var: &str) -> Result<OwnedFd> {
    let v = std::env::var(var).map_err(|_| {
        Error::with_message(
            ErrorKind::NotFound,
            format!("environment variable {var} does not name an inherited pipe"),
        )
    })?;
    let raw: RawFd = v.trim().parse().map_err(|_| {
        Error::with_message(
            ErrorKind::InvalidParameter,
            format!("environment variable {var}={v:?} is not a descriptor number"),
        )
    })?;
    fd::claim_inherited(raw)
}

fn set_env(cmd: &mut Command, var: impl AsRef<OsStr>, raw: RawFd) {
    cmd.env(var, raw.to_string());
}

macro_rules! common_methods {
    ($ty:ident) => {
        impl $ty {
            /// Takes over an end this process inherited, by its number. Windows: using an
            /// inherited handle whose value the parent passed on.
            ///
            /// The number must be open here, above 2, and not close-on-exec (so it was
            /// inherited, not opened by this program); it must be a pipe (an ipckit pipe end or
            /// any FIFO). It becomes close-on-exec, so it goes no further, and cannot be taken
            /// twice. Otherwise [`ErrorKind::InvalidParameter`].
            pub fn from_inherited(fd: RawFd) -> Result<$ty> {
                let owned = fd::claim_inherited(fd)?;
                Ok($ty {
                    inner: Inner::from_fd(owned)?,
                })
            }

            /// [`from_inherited`](Self::from_inherited) with the number read from the
            /// environment variable `var` (as [`inherit_env`](Self::inherit_env) sets it).
            pub fn from_inherited_env(var: &str) -> Result<$ty> {
                let owned = claim_env(var)?;
                Ok($ty {
                    inner: Inner::from_fd(owned)?,
                })
            }

            /// Hands this end to the child `cmd` will start, under the returned number (tell
            /// the child, e.g. with [`inherit_env`](Self::inherit_env)). No other child
            /// receives it. `cmd` keeps this process's copy open until `cmd` is dropped: drop it
            /// after spawning, or the other end will not see the pipe close. Windows: an
            /// inheritable handle and `CreateProcess(bInheritHandles = TRUE)`.
            pub fn inherit(self, cmd: &mut Command) -> RawFd {
                fd::inherit_in_child(cmd, self.inner.into_fd())
            }

            /// [`inherit`](Self::inherit), and sets the environment variable `var` of the child
            /// to the number, for [`from_inherited_env`](Self::from_inherited_env).
            pub fn inherit_env(self, cmd: &mut Command, var: impl AsRef<OsStr>) -> RawFd {
                let raw = self.inherit(cmd);
                set_env(cmd, var, raw);
                raw
            }

            /// Another handle to the same end. Windows: `DuplicateHandle`.
            pub fn try_clone(&self) -> Result<$ty> {
                Ok($ty {
                    inner: self.inner.try_clone()?,
                })
            }
        }

        impl From<$ty> for Stdio {
            /// For `Command::stdin`/`stdout`/`stderr` (Windows: `STARTUPINFO.hStd*`). The
            /// command keeps this process's copy until it is dropped.
            fn from(p: $ty) -> Stdio {
                Stdio::from(p.inner.into_fd())
            }
        }

        impl From<$ty> for OwnedFd {
            fn from(p: $ty) -> OwnedFd {
                p.inner.into_fd()
            }
        }

        impl AsFd for $ty {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.inner.fd()
            }
        }
    };
}

/// The read end of an anonymous pipe. Windows: the `hReadPipe` of `CreatePipe`.
#[derive(Debug)]
pub struct PipeReader {
    inner: Inner,
}

/// The write end of an anonymous pipe. Windows: the `hWritePipe` of `CreatePipe`.
#[derive(Debug)]
pub struct PipeWriter {
    inner: Inner,
}

common_methods!(PipeReader);
common_methods!(PipeWriter);

impl PipeReader {
    /// Waits for data and returns what is there (at most `buf.len()` bytes). Windows:
    /// `ReadFile`: once every write end is closed and everything was read, fails with
    /// [`ErrorKind::BrokenPipe`] (`std::io::Read` returns end of file instead).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match &mut self.inner {
            Inner::Socket(fd) => socket::recv(&*fd, buf, true)?.unwrap_or(0),
            Inner::Fifo(f) => f
                .read(buf)
                .map_err(|e| Error::from_io("cannot read from pipe", e))?,
        };
        if n == 0 {
            return Err(Error::with_message(
                ErrorKind::BrokenPipe,
                "the pipe has been ended: every write end is closed",
            ));
        }
        Ok(n)
    }

    /// This end for tokio (feature `tokio`; call it inside a runtime): an ipckit pipe end
    /// only ([`ErrorKind::Unsupported`] for an inherited FIFO). Windows: a pipe handle used
    /// with overlapped I/O.
    #[cfg(feature = "tokio")]
    pub fn into_async(self) -> Result<super::tokio::PipeReader> {
        super::tokio::PipeReader::new(self.inner.into_fd())
    }

    /// Bytes that can be read now without waiting. Windows: `lpTotalBytesAvail` of
    /// `PeekNamedPipe` on an anonymous pipe.
    pub fn available(&self) -> Result<usize> {
        socket::bytes_available(self.inner.fd())
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match PipeReader::read(self, buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

impl PipeWriter {
    /// Writes some of `data` (waiting while the pipe is full) and returns how much. Windows:
    /// `WriteFile`: fails with [`ErrorKind::NoData`] when every read end is closed, without
    /// `SIGPIPE` (for an inherited FIFO, see [`from_inherited`](Self::from_inherited): the
    /// kernel raises `SIGPIPE` there, which Rust programs ignore by default).
    pub fn write(&mut self, data: &[u8]) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        match &mut self.inner {
            Inner::Socket(fd) => socket::send_some(&*fd, data),
            Inner::Fifo(f) => f.write(data).map_err(|e| {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    Error::with_message(ErrorKind::NoData, "the pipe is being closed")
                } else {
                    Error::from_io("cannot write to pipe", e)
                }
            }),
        }
    }

    /// This end for tokio (feature `tokio`; call it inside a runtime): an ipckit pipe end
    /// only ([`ErrorKind::Unsupported`] for an inherited FIFO).
    #[cfg(feature = "tokio")]
    pub fn into_async(self) -> Result<super::tokio::PipeWriter> {
        super::tokio::PipeWriter::new(self.inner.into_fd())
    }

    /// Writes all of `data`.
    pub fn write_all(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = PipeWriter::write(self, data)?;
            data = &data[n..];
        }
        Ok(())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        PipeWriter::write(self, buf).map_err(Into::into)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
