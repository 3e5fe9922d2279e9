//! Bounded capture of a child's output stream by a background thread.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Keeps the last `limit` bytes read from a pipe. The pipe is drained
/// continuously by a detached thread so the child never blocks on a full
/// pipe; the thread ends when the pipe reports end of file (that is, when
/// every process holding its write end has exited or closed it).
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug)]
struct State {
    tail: VecDeque<u8>,
    limit: usize,
    discarded: u64,
    finished: bool,
}

impl Capture {
    /// A capture with nothing to read (the stream was not piped).
    pub(crate) fn empty() -> Self {
        let capture = Self::new(0);
        capture.lock().finished = true;
        capture
    }

    fn new(limit: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    tail: VecDeque::new(),
                    limit,
                    discarded: 0,
                    finished: false,
                }),
                done: Condvar::new(),
            }),
        }
    }

    /// Starts draining `reader` on a background thread named `name`.
    pub(crate) fn start<R: Read + Send + 'static>(
        mut reader: R,
        limit: usize,
        name: &str,
    ) -> io::Result<Self> {
        let capture = Self::new(limit);
        let sink = capture.clone();
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => sink.push(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
                sink.lock().finished = true;
                sink.shared.done.notify_all();
            })?;
        Ok(capture)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, data: &[u8]) {
        let mut state = self.lock();
        state.tail.extend(data);
        let excess = state.tail.len().saturating_sub(state.limit);
        if excess > 0 {
            state.tail.drain(..excess);
            state.discarded += excess as u64;
        }
    }

    /// The bytes kept so far (the last `limit` bytes of the stream).
    pub(crate) fn snapshot(&self) -> Vec<u8> {
        let state = self.lock();
        state.tail.iter().copied().collect()
    }

    /// How many leading bytes were dropped to respect the limit.
    pub(crate) fn discarded(&self) -> u64 {
        self.lock().discarded
    }

    /// Waits until the stream reached end of file, at most `timeout`.
    /// Returns whether it did.
    pub(crate) fn wait_finished(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .done
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_tail() {
        let data: Vec<u8> = (0..100u8).collect();
        let capture = Capture::start(io::Cursor::new(data), 10, "test-capture").expect("thread");
        assert!(capture.wait_finished(Duration::from_secs(10)));
        assert_eq!(capture.snapshot(), (90..100u8).collect::<Vec<_>>());
        assert_eq!(capture.discarded(), 90);
    }
}
