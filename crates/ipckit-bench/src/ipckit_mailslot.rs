//! `ipckit-mailslot`: ipckit mailslots (`ipckit::mailslot`), beside the `unix-dgram` baseline
//! they are built on.
//!
//! A mailslot carries messages one way, so each process serves one and writes to the other's:
//! the harness creates `\\.\mailslot\h` in a private namespace (a fresh 0700 directory,
//! [`Namespace::at`]) and starts the peer with that directory as the address; the peer creates
//! `\\.\mailslot\p` and opens `h` for writing; the harness opens `p` for writing as soon as it
//! exists. Both read timeouts are [`STALL_TIMEOUT`], so a vanished peer ends a wait with an error.
//!
//! Data path: [`Channel::send`] is one `WriteFile` on the other's mailslot (one datagram);
//! [`Channel::recv`] is one `ReadFile` on one's own, into the caller's buffer, which must receive
//! one whole message of the expected size. The stream cases measure the one-way message rate
//! and throughput through one mailslot; the round trip crosses two.

use std::io;
use std::path::Path;

use ipckit::ErrorKind;
use ipckit::mailslot::{MailslotOptions, MailslotServer, MailslotWriter, WriterOptions};
use ipckit::namespace::Namespace;

use crate::channel::{Channel, Transport};
use crate::peer::{Launcher, PeerEnv, STALL_TIMEOUT, invalid};
use crate::raw::{TempDir, path_arg};

const HARNESS: &str = r"\\.\mailslot\h";
const PEER: &str = r"\\.\mailslot\p";

/// The `ipckit-mailslot` benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct MailslotBench;

/// One side. Fields drop in order: the mailslot and the writer close before the namespace
/// directory goes.
#[derive(Debug)]
pub struct MailslotEnd {
    server: MailslotServer,
    writer: MailslotWriter,
    _dir: Option<TempDir>,
}

fn serve(ns: &Namespace, name: &str) -> io::Result<MailslotServer> {
    Ok(MailslotOptions::new()
        .namespace(ns.clone())
        .read_timeout(Some(STALL_TIMEOUT))
        .create(name)?)
}

impl Channel for MailslotEnd {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.writer.write(msg)?;
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self.server.read(buf) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(n) => Err(invalid(format!(
                "message of {n} bytes, expected {}",
                buf.len()
            ))),
            Err(e) if e.kind() == ErrorKind::InsufficientBuffer => Err(invalid(format!(
                "message longer than the expected {} bytes",
                buf.len()
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

impl Transport for MailslotBench {
    type Chan = MailslotEnd;

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<MailslotEnd> {
        let dir = TempDir::new()?;
        let ns = Namespace::at(dir.path());
        let server = serve(&ns, HARNESS)?;
        launcher.spawn(path_arg(dir.path())?)?;
        let opts = WriterOptions::new().namespace(ns);
        let writer = launcher.wait_for("peer mailslot", || match opts.open(PEER) {
            Ok(w) => Ok(Some(w)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })?;
        Ok(MailslotEnd {
            server,
            writer,
            _dir: Some(dir),
        })
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<MailslotEnd> {
        let ns = Namespace::at(Path::new(&peer.addr));
        let server = serve(&ns, PEER)?;
        let writer = WriterOptions::new().namespace(ns).open(HARNESS)?;
        Ok(MailslotEnd {
            server,
            writer,
            _dir: None,
        })
    }
}
