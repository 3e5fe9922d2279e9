//! The raw OS baselines: what the kernel (or the hardware) gives with no
//! library in between. Each ipckit mechanism is compared against one of
//! these.

pub mod dgram;
pub mod memcpy;
pub mod page;
pub mod pipe;
pub mod pthread;
pub mod shm;
pub mod socket;

pub use page::ShmPage;

/// An unnamed shared page for single-process lock measurements.
pub fn shm_page() -> io::Result<ShmPage> {
    ShmPage::anonymous()
}

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::channel::Channel;

/// A [`Channel`] over a byte stream: `send` is `write_all`, `recv` is
/// `read_exact` (one `read(2)` when the whole message is already queued).
#[derive(Debug)]
pub struct Duplex<R, W> {
    rx: R,
    tx: W,
}

impl<R: Read, W: Write> Duplex<R, W> {
    /// A channel reading from `rx` and writing to `tx`.
    pub fn new(rx: R, tx: W) -> Self {
        Self { rx, tx }
    }
}

impl<R: Read, W: Write> Channel for Duplex<R, W> {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.tx.write_all(msg)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.rx.read_exact(buf)
    }
}

/// A unique name for this process's rendezvous objects:
/// `ipckit-bench-<pid>-<n>`.
pub(crate) fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "ipckit-bench-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private (mode 0700) directory under the system temporary directory,
/// removed with its contents when dropped. Holds the Unix socket files.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new() -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut last = None;
        // A stale directory of an earlier process with the same pid is
        // possible; try a few names.
        for _ in 0..8 {
            let path = base.join(unique_name());
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("cannot create a temporary directory")))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The path as the UTF-8 string passed to the peer.
pub(crate) fn path_arg(path: &Path) -> io::Result<&str> {
    path.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("non-UTF-8 path {}", path.display()),
        )
    })
}

/// Maps "no connection yet" to `None` for [`Launcher::wait_for`](crate::Launcher::wait_for).
pub(crate) fn pending<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
