//! A writer of a connected named-pipe end that works apart from the end's reads, so that one
//! thread can wait in a read while another writes (Windows: a handle from `DuplicateHandle`, or
//! one handle used for overlapped reads and writes at once).
//!
//! ```
//! use ipckit::pipe::{ClientOptions, ReadMode, ServerOptions};
//! # let dir = std::env::temp_dir().join(format!("ipckit-doc-pipe-writer-{}", std::process::id()));
//! # let ns = ipckit::namespace::Namespace::at(&dir);
//! let mut server = ServerOptions::message().namespace(ns.clone()).create(r"\\.\pipe\duplex")?;
//! let mut client = ClientOptions::new().namespace(ns.clone()).connect(r"\\.\pipe\duplex")?;
//! client.set_read_mode(ReadMode::Message)?;
//! server.connect()?;
//!
//! // DuplicateHandle: a second handle on the client's connection, for another thread.
//! let writer = client.writer()?;
//! let sending = std::thread::spawn(move || writer.write(b"from the other thread"));
//! assert_eq!(server.read_message()?, b"from the other thread");
//! sending.join().unwrap()?;
//!
//! // The client waits in a read while the server answers.
//! let reading = std::thread::spawn(move || client.read_message());
//! server.write(b"answer")?;
//! assert_eq!(reading.join().unwrap()?, b"answer");
//! # drop(server); let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use super::PipeType;
use super::conn::FrameSender;
use crate::error::Result;
use crate::sys::socket;

/// Writes to the connection of a named-pipe end from another thread than the one that reads
/// it: [`NamedPipeClient::writer`](super::NamedPipeClient::writer),
/// [`NamedPipeServer::writer`](super::NamedPipeServer::writer). Windows: a second handle to
/// the same pipe end (`DuplicateHandle`) used for `WriteFile` while a `ReadFile` waits on the
/// first, or the full-duplex overlapped I/O of one handle.
///
/// Its writes follow the end's own rules: on a message-type pipe each write is one message
/// (empty ones included), one over the pipe's maximum message size fails with
/// [`ErrorKind::MessageTooLarge`](crate::ErrorKind::MessageTooLarge) and sends nothing; on a
/// byte-type pipe the bytes join the stream. Once the other end has closed a write fails with
/// [`ErrorKind::NoData`](crate::ErrorKind::NoData). The writes of the end and of every writer
/// made from it take turns, so messages never mix, whichever thread sends them.
///
/// Differences:
/// - A writer belongs to the connection that was current when it was made. A server end's
///   [`disconnect`](super::NamedPipeServer::disconnect) ends that connection: the writer's
///   writes fail with [`ErrorKind::NoData`](crate::ErrorKind::NoData) from then on and never
///   reach the instance's next client (Windows: a duplicated server handle would write to
///   whichever client is connected later).
/// - While a writer is open, the connection stays open even when its end is dropped, as the
///   pipe stays open on Windows while a duplicate handle of it is (the other end's reads end
///   once every writer is dropped too, or at [`disconnect`](Self::disconnect)).
/// - A writer cannot read, so a write refused because the peer ended the connection for a
///   reason (a client not allowed, a message over the limit) fails with
///   [`ErrorKind::NoData`](crate::ErrorKind::NoData); the end's own read reports the reason.
/// - Do not mix a writer with the async end the same end becomes by `into_async`: their
///   writes do not take turns.
#[derive(Debug)]
pub struct NamedPipeWriter {
    sender: FrameSender,
    turn: Arc<Mutex<()>>,
}

impl NamedPipeWriter {
    pub(crate) fn new(sender: FrameSender, turn: Arc<Mutex<()>>) -> NamedPipeWriter {
        NamedPipeWriter { sender, turn }
    }

    /// Writes one message (message-type pipe) or bytes of the stream (byte-type pipe), waiting
    /// while the pipe is full, and returns `data.len()`. Windows: `WriteFile` on the duplicated
    /// handle. Errors: [`ErrorKind::NoData`](crate::ErrorKind::NoData) when the connection has
    /// ended, [`ErrorKind::MessageTooLarge`](crate::ErrorKind::MessageTooLarge) (nothing sent)
    /// for a message over the pipe's maximum, [`ErrorKind::AccessDenied`](crate::ErrorKind::AccessDenied)
    /// on an end whose open mode does not write.
    pub fn write(&self, data: &[u8]) -> Result<usize> {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        self.sender.send(&[data])?;
        Ok(data.len())
    }

    /// The pipe's type: whether each write is a message.
    pub fn pipe_type(&self) -> PipeType {
        self.sender.pipe_type()
    }

    /// Another writer of the same connection. Windows: `DuplicateHandle` again.
    pub fn try_clone(&self) -> Result<NamedPipeWriter> {
        Ok(NamedPipeWriter {
            sender: self.sender.try_clone()?,
            turn: Arc::clone(&self.turn),
        })
    }

    /// Ends the connection both ways, at once and for every holder: a read waiting on the end
    /// in another thread returns (with [`ErrorKind::BrokenPipe`](crate::ErrorKind::BrokenPipe)
    /// once what had arrived is read), later writes fail with
    /// [`ErrorKind::NoData`](crate::ErrorKind::NoData), and the other end sees the pipe closed
    /// after what was sent before. Windows has no one call for it: `CancelIoEx` on the pending
    /// read, then `DisconnectNamedPipe` on a server end or closing every handle of a client end.
    /// A server end must still [`disconnect`](super::NamedPipeServer::disconnect) before its
    /// next client.
    pub fn disconnect(&self) {
        socket::shutdown(self.sender.fd(), true, true);
    }
}

impl std::io::Write for NamedPipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        NamedPipeWriter::write(self, buf).map_err(std::io::Error::from)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Write for &NamedPipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        NamedPipeWriter::write(self, buf).map_err(std::io::Error::from)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
