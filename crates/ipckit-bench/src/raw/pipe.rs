//! `pipe`: two anonymous pipes, one per direction.
//!
//! The harness creates both pipes with `pipe2(2)` and starts the peer with
//! the read end of the first as its stdin and the write end of the second
//! as its stdout, so no rendezvous is needed and the data path is a plain
//! kernel pipe (default 64 KiB buffer). Each message is one `write(2)`;
//! the receiver `read(2)`s until it has the whole message.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;

use crate::channel::Transport;
use crate::peer::{Launcher, PeerEnv, invalid};
use crate::raw::Duplex;

/// The `pipe` baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pipe;

impl Transport for Pipe {
    type Chan = Duplex<File, File>;

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<Self::Chan> {
        let (peer_rx, tx) = io::pipe()?;
        let (rx, peer_tx) = io::pipe()?;
        launcher.spawn_with_stdio("stdio", peer_rx.into(), peer_tx.into())?;
        Ok(Duplex::new(
            File::from(OwnedFd::from(rx)),
            File::from(OwnedFd::from(tx)),
        ))
    }

    fn open_peer(&self, _peer: &PeerEnv) -> io::Result<Self::Chan> {
        let rx = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        let tx = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        for f in [&rx, &tx] {
            if !f.metadata()?.file_type().is_fifo() {
                return Err(invalid("stdin/stdout of a `pipe` peer must be pipes"));
            }
        }
        Ok(Duplex::new(rx, tx))
    }
}
