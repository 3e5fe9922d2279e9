//! `interprocess`: the local sockets of the `interprocess` crate (`interprocess::local_socket`),
//! the usual cross-platform Rust answer to named pipes, measured beside `ipckit-pipe` and the
//! `unix-stream` baseline that both are built on.
//!
//! The harness creates a listener on a file-path name (`GenericFilePath`, a Unix socket in a
//! private 0700 temporary directory; on Windows the crate would use a named pipe), starts the
//! peer with the path and accepts its connection (`ListenerNonblockingMode::Accept`, so the
//! launcher's handshake timeout applies). The stream then carries the messages as a byte stream:
//! [`Channel::send`] is one `write_all`, [`Channel::recv`] one `read_exact` of the expected size
//! (the crate has no message framing; the round trips are those of `ipckit-pipe`).
//!
//! Cleanup: the listener reclaims (removes) its socket file when dropped right after the accept,
//! and the directory goes with the harness's end. A peer that dies closes its stream, so the
//! other end's next read fails with end of file instead of waiting for ever.

use std::io::{self, Read, Write};

use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{
    GenericFilePath, ListenerNonblockingMode, ListenerOptions, Stream,
};

use crate::channel::{Channel, Transport};
use crate::peer::{Launcher, PeerEnv};
use crate::raw::{TempDir, path_arg, pending};

/// The `interprocess` benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalSocketBench;

/// One end: the connected stream. Fields drop in order: the stream before the directory.
#[derive(Debug)]
pub struct LocalSocketEnd {
    stream: Stream,
    /// Harness only: the directory of the socket file, removed on drop.
    _dir: Option<TempDir>,
}

impl Channel for LocalSocketEnd {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.stream.write_all(msg)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.stream.read_exact(buf)
    }
}

impl Transport for LocalSocketBench {
    type Chan = LocalSocketEnd;

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<LocalSocketEnd> {
        let dir = TempDir::new()?;
        let path = dir.path().join("sock");
        let listener = ListenerOptions::new()
            .name(path.as_path().to_fs_name::<GenericFilePath>()?)
            .nonblocking(ListenerNonblockingMode::Accept)
            .create_sync()?;
        launcher.spawn(path_arg(&path)?)?;
        let stream = launcher.wait_for("connection", || pending(listener.accept()))?;
        Ok(LocalSocketEnd {
            stream,
            _dir: Some(dir),
        })
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<LocalSocketEnd> {
        let name = peer.addr.as_str().to_fs_name::<GenericFilePath>()?;
        Ok(LocalSocketEnd {
            stream: Stream::connect(name)?,
            _dir: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends in one process: a round trip, then end of file once the peer is gone.
    #[test]
    fn round_trip_and_peer_gone() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("sock");
        let listener = ListenerOptions::new()
            .name(path.as_path().to_fs_name::<GenericFilePath>().unwrap())
            .create_sync()
            .unwrap();
        let addr = path.to_str().unwrap().to_owned();
        let peer = std::thread::spawn(move || {
            let env = PeerEnv {
                mechanism: "interprocess".into(),
                addr,
                phases: Vec::new(),
                liveness: crate::peer::Liveness::Parent(rustix::process::getppid().unwrap()),
            };
            let mut c = LocalSocketBench.open_peer(&env).unwrap();
            let mut buf = [0u8; 16];
            c.recv(&mut buf).unwrap();
            c.send(&buf).unwrap();
        });
        let mut end = LocalSocketEnd {
            stream: listener.accept().unwrap(),
            _dir: Some(dir),
        };
        end.send(&[5u8; 16]).unwrap();
        let mut buf = [0u8; 16];
        end.recv(&mut buf).unwrap();
        assert_eq!(buf, [5u8; 16]);
        peer.join().unwrap();
        assert!(end.recv(&mut buf).is_err(), "the peer is gone");
    }
}
