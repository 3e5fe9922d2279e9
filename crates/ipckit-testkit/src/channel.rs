//! The length-prefixed frame protocol spoken on the control channel.
//!
//! A frame is a little-endian `u32` byte count followed by that many bytes.
//! Frames longer than [`MAX_FRAME_LEN`] are refused on both sides: the sender
//! fails with [`io::ErrorKind::InvalidInput`] before writing anything, the
//! receiver fails with [`io::ErrorKind::InvalidData`] after reading only the
//! 4-byte header (nothing is allocated for the body).
//!
//! Receiving keeps the state of a partially read frame, so a timeout in the
//! middle of a frame loses nothing: the next receive call resumes where the
//! previous one stopped. A send that times out after having written part of a
//! frame leaves the stream unusable for sending (the peer would see a torn
//! frame), and every later send fails.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::MAX_FRAME_LEN;

/// Frame reader/writer over a connected Unix stream socket.
#[derive(Debug)]
pub(crate) struct Channel {
    stream: UnixStream,
    header: [u8; 4],
    header_len: usize,
    body: Option<Vec<u8>>,
    body_len: usize,
    rx_broken: Option<String>,
    /// Serializes senders; `true` once a send was interrupted mid-frame.
    tx_broken: Mutex<bool>,
}

/// Smallest socket timeout handed to the kernel (zero means "no timeout").
const MIN_SOCKET_TIMEOUT: Duration = Duration::from_millis(1);

impl Channel {
    pub(crate) fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            header: [0; 4],
            header_len: 0,
            body: None,
            body_len: 0,
            rx_broken: None,
            tx_broken: Mutex::new(false),
        }
    }

    /// Sends one frame; `timeout` bounds the whole write (`None`: unbounded).
    /// Concurrent senders are serialized, so frames never interleave.
    pub(crate) fn send(&self, data: &[u8], timeout: Option<Duration>) -> io::Result<()> {
        let mut tx_broken = self
            .tx_broken
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *tx_broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "control channel unusable for sending: an earlier send was interrupted mid-frame",
            ));
        }
        if data.len() > MAX_FRAME_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "frame of {} bytes exceeds the control channel limit of {MAX_FRAME_LEN} bytes",
                    data.len()
                ),
            ));
        }
        let header = u32::try_from(data.len())
            .expect("MAX_FRAME_LEN fits in u32")
            .to_le_bytes();
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut written = 0usize;
        let result = self
            .write_all(&header, deadline, &mut written)
            .and_then(|()| self.write_all(data, deadline, &mut written));
        if result.is_err() && written > 0 {
            *tx_broken = true;
        }
        result.map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "timed out after {:?} sending a frame of {} bytes (peer not reading?)",
                    timeout.unwrap_or_default(),
                    data.len()
                ),
            ),
            _ => e,
        })
    }

    fn write_all(
        &self,
        mut buf: &[u8],
        deadline: Option<Instant>,
        written: &mut usize,
    ) -> io::Result<()> {
        while !buf.is_empty() {
            self.stream.set_write_timeout(remaining(deadline)?)?;
            match (&self.stream).write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    *written += n;
                }
                Err(e) if is_retryable(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Receives one frame; `Ok(None)` on a clean end of stream at a frame
    /// boundary. `timeout` bounds the whole call (`None`: unbounded).
    pub(crate) fn recv(&mut self, timeout: Option<Duration>) -> io::Result<Option<Vec<u8>>> {
        if let Some(why) = &self.rx_broken {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let result = self.recv_inner(deadline);
        result.map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "timed out after {:?} waiting for a frame",
                    timeout.unwrap_or_default()
                ),
            ),
            _ => e,
        })
    }

    fn recv_inner(&mut self, deadline: Option<Instant>) -> io::Result<Option<Vec<u8>>> {
        loop {
            let Some(body) = self.body.as_mut() else {
                if self.header_len == self.header.len() {
                    let len = u32::from_le_bytes(self.header) as usize;
                    if len > MAX_FRAME_LEN {
                        let why = format!(
                            "refused a control channel frame of {len} bytes \
                             (limit {MAX_FRAME_LEN} bytes); the channel is unusable now"
                        );
                        self.rx_broken = Some(why.clone());
                        return Err(io::Error::new(io::ErrorKind::InvalidData, why));
                    }
                    self.body = Some(vec![0; len]);
                    self.body_len = 0;
                    continue;
                }
                let n = read_some(
                    &mut self.stream,
                    &mut self.header[self.header_len..],
                    deadline,
                )?;
                if n == 0 {
                    if self.header_len == 0 {
                        return Ok(None);
                    }
                    return Err(torn_frame());
                }
                self.header_len += n;
                continue;
            };
            if self.body_len == body.len() {
                let frame = self.body.take().unwrap_or_default();
                self.header_len = 0;
                self.body_len = 0;
                return Ok(Some(frame));
            }
            let n = read_some(&mut self.stream, &mut body[self.body_len..], deadline)?;
            if n == 0 {
                return Err(torn_frame());
            }
            self.body_len += n;
        }
    }

    /// Half-closes the sending direction: the peer's next receive at a frame
    /// boundary returns end of stream.
    pub(crate) fn close_send(&mut self) -> io::Result<()> {
        match self.stream.shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        }
    }
}

fn torn_frame() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "control channel closed in the middle of a frame",
    )
}

fn is_retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Socket timeout to use until `deadline`, or `TimedOut` once it has passed.
fn remaining(deadline: Option<Instant>) -> io::Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(io::ErrorKind::TimedOut.into())
            } else {
                Ok(Some(left.max(MIN_SOCKET_TIMEOUT)))
            }
        }
    }
}

fn read_some(
    stream: &mut UnixStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> io::Result<usize> {
    loop {
        stream.set_read_timeout(remaining(deadline)?)?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if is_retryable(&e) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Channel, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (Channel::new(a), b)
    }

    #[test]
    fn roundtrip_over_socketpair() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let (mut a, mut b) = (Channel::new(a), Channel::new(b));
        for size in [0usize, 1, 3, 4, 5, 4096, 200_000] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let writer = std::thread::spawn(move || {
                a.send(&data, Some(Duration::from_secs(10))).expect("send");
                (a, data)
            });
            let got = b.recv(Some(Duration::from_secs(10))).expect("recv");
            let (back, data) = writer.join().expect("writer thread");
            a = back;
            assert_eq!(got.as_deref(), Some(&data[..]), "size {size}");
        }
        a.close_send().expect("shutdown");
        assert_eq!(b.recv(Some(Duration::from_secs(10))).expect("eof"), None);
    }

    #[test]
    fn oversized_header_is_refused_without_reading_the_body() {
        let (mut ch, mut raw) = pair();
        let len = u32::try_from(MAX_FRAME_LEN + 1).expect("fits");
        raw.write_all(&len.to_le_bytes()).expect("write header");
        let err = ch.recv(Some(Duration::from_secs(10))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("refused"), "{err}");
        // The channel stays refused afterwards.
        let err = ch.recv(Some(Duration::from_secs(1))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn oversized_send_is_refused_before_writing() {
        let (ch, raw) = pair();
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        let err = ch.send(&big, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        // Nothing was written, so the channel is still usable.
        ch.send(b"ok", Some(Duration::from_secs(10))).expect("send");
        let mut peer = Channel::new(raw);
        assert_eq!(
            peer.recv(Some(Duration::from_secs(10))).expect("recv"),
            Some(b"ok".to_vec())
        );
    }

    #[test]
    fn timeout_mid_frame_resumes_later() {
        let (mut ch, mut raw) = pair();
        raw.write_all(&5u32.to_le_bytes()).expect("header");
        raw.write_all(b"he").expect("partial body");
        let err = ch.recv(Some(Duration::from_millis(50))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        raw.write_all(b"llo").expect("rest of body");
        assert_eq!(
            ch.recv(Some(Duration::from_secs(10))).expect("recv"),
            Some(b"hello".to_vec())
        );
    }

    #[test]
    fn eof_inside_a_frame_is_an_error() {
        let (mut ch, mut raw) = pair();
        raw.write_all(&10u32.to_le_bytes()).expect("header");
        raw.write_all(b"abc").expect("partial body");
        drop(raw);
        let err = ch.recv(Some(Duration::from_secs(10))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }
}
