//! `ipckit-pipe` and `ipckit-pipe-byte`: an ipckit named pipe (`ipckit::pipe`) in message mode
//! and in byte mode, beside the `unix-stream` baseline it is built on.
//!
//! Byte mode (`PIPE_TYPE_BYTE | PIPE_READMODE_BYTE`): the same, but a write is just bytes and
//! [`Channel::recv`] reads until the expected size has arrived, as a byte stream is read.
//!
//! The harness creates the only instance of a message-type pipe (`CreateNamedPipe` with
//! `PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE`, one instance, first instance) in a private
//! namespace (a fresh 0700 directory, [`Namespace::at`]), starts the peer with the address
//! `DIR/NAME` and waits for it in `ConnectNamedPipe`. The peer opens `\\.\pipe\NAME` in the
//! namespace `DIR` (`CreateFile`) and switches to message read mode.
//!
//! Data path: [`Channel::send`] is one `WriteFile` (one message: a 4-byte frame header and the
//! payload in one `sendmsg`); [`Channel::recv`] is one message-mode `ReadFile` into the
//! caller's buffer, which must receive exactly one whole message of the expected size.
//!
//! Cleanup: the server end closes the instance (the pipe's directory goes with its last
//! instance) before the namespace directory is removed; nothing else is created. A peer that
//! dies closes its socket, so the harness's next read fails with `BrokenPipe` (and the peer's,
//! if the harness dies), never waiting for ever.

use std::io;
use std::path::Path;
use std::time::Duration;

use ipckit::ErrorKind;
use ipckit::namespace::Namespace;
use ipckit::pipe::{ClientOptions, NamedPipeClient, NamedPipeServer, ReadMode, ServerOptions};

use crate::channel::{Channel, Transport};
use crate::peer::{Launcher, PeerEnv, invalid};
use crate::raw::{TempDir, path_arg};

/// The pipe's name inside the case's namespace.
const PIPE: &str = "bench";
/// One accept slice while the harness waits for the peer (bounded by the launcher).
const ACCEPT_SLICE: Duration = Duration::from_millis(1);

/// A named-pipe benchmark, in message or byte mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct NamedPipeBench {
    /// Byte-type pipe read in byte mode (else message type, message read mode).
    pub byte: bool,
}

/// `ipckit-pipe`: message mode.
pub static MESSAGE: NamedPipeBench = NamedPipeBench { byte: false };
/// `ipckit-pipe-byte`: byte mode.
pub static BYTE: NamedPipeBench = NamedPipeBench { byte: true };

impl NamedPipeBench {
    fn server_options(&self) -> ServerOptions {
        if self.byte {
            ServerOptions::new()
        } else {
            ServerOptions::message()
        }
    }
}

fn pipe_name(name: &str) -> String {
    format!(r"\\.\pipe\{name}")
}

/// Either end of the pipe.
#[derive(Debug)]
enum End {
    Server(NamedPipeServer),
    Client(NamedPipeClient),
}

/// One end of a case. Fields drop in order: the instance is closed before its namespace
/// directory goes.
#[derive(Debug)]
pub struct PipeEnd {
    end: End,
    /// Byte mode: a receive reads until the expected size has arrived.
    byte: bool,
    /// Harness only: the case's namespace, removed on drop.
    _dir: Option<TempDir>,
}

impl Channel for PipeEnd {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let n = match &mut self.end {
            End::Server(s) => s.write(msg)?,
            End::Client(c) => c.write(msg)?,
        };
        if n != msg.len() {
            return Err(invalid(format!("short write: {n} of {} bytes", msg.len())));
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if self.byte {
            let mut got = 0;
            while got < buf.len() {
                let n = match &mut self.end {
                    End::Server(s) => s.read(&mut buf[got..])?,
                    End::Client(c) => c.read(&mut buf[got..])?,
                };
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                got += n;
            }
            return Ok(());
        }
        let r = match &mut self.end {
            End::Server(s) => s.read(buf),
            End::Client(c) => c.read(buf),
        };
        match r {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(n) => Err(invalid(format!(
                "message of {n} bytes, expected {}",
                buf.len()
            ))),
            Err(e) if e.kind() == ErrorKind::MoreData => Err(invalid(format!(
                "message longer than the expected {} bytes",
                buf.len()
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

impl Transport for NamedPipeBench {
    type Chan = PipeEnd;

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<PipeEnd> {
        let dir = TempDir::new()?;
        let mut server = self
            .server_options()
            .max_instances(1)?
            .first_instance(true)
            .namespace(Namespace::at(dir.path()))
            .create(&pipe_name(PIPE))?;
        launcher.spawn(path_arg(&dir.path().join(PIPE))?)?;
        launcher.wait_for("pipe client", || {
            match server.connect_timeout(ACCEPT_SLICE) {
                Ok(()) => Ok(Some(())),
                Err(e) if e.kind() == ErrorKind::Timeout => Ok(None),
                Err(e) => Err(e.into()),
            }
        })?;
        Ok(PipeEnd {
            end: End::Server(server),
            byte: self.byte,
            _dir: Some(dir),
        })
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<PipeEnd> {
        let addr = Path::new(&peer.addr);
        let (Some(dir), Some(name)) = (addr.parent(), addr.file_name().and_then(|n| n.to_str()))
        else {
            return Err(invalid(format!("bad pipe address {}", peer.addr)));
        };
        let mut client = ClientOptions::new()
            .namespace(Namespace::at(dir))
            .connect(&pipe_name(name))?;
        if !self.byte {
            client.set_read_mode(ReadMode::Message)?;
        }
        Ok(PipeEnd {
            end: End::Client(client),
            byte: self.byte,
            _dir: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two ends in one process: messages keep their size, a vanished peer ends the wait
    /// with an error, and nothing is left on disk.
    #[test]
    fn round_trip_peer_gone_and_cleanup() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().to_owned();
        let mut server = ServerOptions::message()
            .max_instances(1)
            .unwrap()
            .namespace(Namespace::at(&path))
            .create(&pipe_name(PIPE))
            .unwrap();
        let addr = path.join(PIPE).to_str().unwrap().to_owned();
        let peer = std::thread::spawn(move || {
            let env = PeerEnv {
                mechanism: "ipckit-pipe".into(),
                addr,
                phases: Vec::new(),
                liveness: crate::peer::Liveness::Parent(rustix::process::getppid().unwrap()),
            };
            let mut c = MESSAGE.open_peer(&env).unwrap();
            let mut buf = [0u8; 16];
            c.recv(&mut buf).unwrap();
            c.send(&buf).unwrap();
            // Dropped here: the peer is gone.
        });
        server.connect().unwrap();
        let mut end = PipeEnd {
            end: End::Server(server),
            byte: false,
            _dir: Some(dir),
        };
        end.send(&[7u8; 16]).unwrap();
        let mut buf = [0u8; 16];
        end.recv(&mut buf).unwrap();
        assert_eq!(buf, [7u8; 16]);
        peer.join().unwrap();
        let err = end.recv(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
        drop(end);
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
