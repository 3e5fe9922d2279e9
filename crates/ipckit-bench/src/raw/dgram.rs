//! `unix-dgram`: the raw Unix datagram socket baseline of mailslots.
//!
//! Each process binds one `SOCK_DGRAM` socket to receive on (`h.sock` for the harness, `p.sock`
//! for the peer, in a private 0700 temporary directory) and sends from a second, unbound socket
//! connected to the other's: the shape of a mailslot (a bound reader, writers connected to it,
//! nothing connected back, so the kernel's per-socket queue limit `max_dgram_qlen` applies as it
//! does to mailslots). One `send(2)` / `recv(2)` per message. The harness waits until the peer's
//! socket accepts a connection; receives time out after [`STALL_TIMEOUT`].

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use crate::channel::{Channel, Transport};
use crate::peer::{Launcher, PeerEnv, STALL_TIMEOUT, invalid};
use crate::raw::{TempDir, path_arg, pending};

/// The `unix-dgram` baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixDgram;

/// One side: a bound socket to receive on, a connected one to send from.
#[derive(Debug)]
pub struct DgramChannel {
    rx: UnixDatagram,
    tx: UnixDatagram,
    /// Harness only: the directory of both socket files, removed on drop.
    _dir: Option<TempDir>,
}

impl DgramChannel {
    fn new(rx: UnixDatagram, peer_sock: &Path, dir: Option<TempDir>) -> io::Result<Self> {
        rx.set_read_timeout(Some(STALL_TIMEOUT))?;
        let tx = UnixDatagram::unbound()?;
        tx.connect(peer_sock)?;
        Ok(Self { rx, tx, _dir: dir })
    }
}

impl Channel for DgramChannel {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let n = self.tx.send(msg)?;
        if n != msg.len() {
            return Err(invalid(format!("short send: {n} of {}", msg.len())));
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        // With MSG_TRUNC the kernel reports the whole message's length.
        let n = loop {
            match rustix::net::recv(&self.rx, &mut *buf, rustix::net::RecvFlags::TRUNC) {
                Ok((_, n)) => break n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n != buf.len() {
            return Err(invalid(format!(
                "message of {n} bytes, expected {}",
                buf.len()
            )));
        }
        Ok(())
    }
}

impl Transport for UnixDgram {
    type Chan = DgramChannel;

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<DgramChannel> {
        let dir = TempDir::new()?;
        let rx = UnixDatagram::bind(dir.path().join("h.sock"))?;
        launcher.spawn(path_arg(dir.path())?)?;
        let peer_sock = dir.path().join("p.sock");
        launcher.wait_for("peer socket", || {
            pending(UnixDatagram::unbound()?.connect(&peer_sock).map_err(|e| {
                match e.kind() {
                    // Not bound yet.
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        io::Error::from(io::ErrorKind::WouldBlock)
                    }
                    _ => e,
                }
            }))
        })?;
        DgramChannel::new(rx, &peer_sock, Some(dir))
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<DgramChannel> {
        let dir = Path::new(&peer.addr);
        let rx = UnixDatagram::bind(dir.join("p.sock"))?;
        DgramChannel::new(rx, &dir.join("h.sock"), None)
    }
}
