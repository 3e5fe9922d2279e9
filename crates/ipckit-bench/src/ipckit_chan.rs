//! ipckit's shared-memory message channels (`ipckit::channel`), beside the raw rings.
//!
//! | benchmark | wait mode | baseline |
//! |---|---|---|
//! | `ipckit-chan-spin` | [`WaitMode::BusyPoll`] | `shm-spin` |
//! | `ipckit-chan` | [`WaitMode::Adaptive`] | `shm-futex` |
//! | `ipckit-chan-sleep` | [`WaitMode::Sleep`] | `shm-futex` |
//!
//! A channel carries one direction, so a case uses a pair per phase: `down` (the harness sends,
//! the peer receives) and `up`. The harness creates every pair of the plan in a private
//! namespace (a fresh 0700 directory, [`Namespace::at`]) before it starts the peer, and passes
//! the directory in the address; the peer attaches to all of them and then says hello on the
//! first `up` channel, which is what the harness waits for. Each phase gets its own pair so that
//! its geometry fits it: slots of the phase's message size, as many as make 1 MiB per direction
//! (rounded up to a power of two), the size of the raw baselines' rings, and at least 4: 8192
//! slots of 64 B, 256 of 4 KiB, 16 of 64 KiB, 4 of 1 MiB and 4 of 4 MiB (16 MiB per direction,
//! of which the zero-copy round trips touch only the first page of each slot). A round trip
//! reuses a slot only after cycling through the ring, as it reuses ring space in the raw rings.
//!
//! Data paths:
//!
//! * [`Channel::send`] / [`Channel::recv`] (the `rtt-*` and `stream-*` cases): `reserve` a slot,
//!   copy the message into it, `commit`; `recv_borrow`, copy the message out, release. One copy
//!   each way, like the raw rings.
//! * [`Channel::send_stamp`] / [`Channel::recv_stamp`] (the `rtt-zc-*` cases): `reserve` a
//!   `size`-byte slot, write only the 8-byte stamp, `commit`; `recv_borrow`, read only the
//!   stamp, release. Nothing else of the payload is touched: this is the zero-copy path, and it
//!   should be flat in size.
//!
//! When the case ends the harness waits (briefly) for the peer to exit before it removes the
//! namespace, since the last process to close a channel needs it to remove the channel's shared
//! memory; then it opens and closes every channel once more, which clears what a killed peer left.
//!
//! Waits never hang on a dead peer: the channel itself notices that the other process is gone
//! and returns [`ipckit::ErrorKind::PeerGone`], mapped to [`io::ErrorKind::BrokenPipe`].

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use ipckit::channel::{Channel as IpcChannel, Receiver, Sender, WaitMode};
use ipckit::namespace::Namespace;

use crate::channel::{Channel, STAMP_LEN, Transport};
use crate::params::Phase;
use crate::peer::{Launcher, Liveness, PeerEnv, invalid};
use crate::raw::{TempDir, path_arg};

/// Ring memory per direction, as in the raw rings.
const RING_BYTES: usize = 1 << 20;
/// The channel's per-slot header and alignment (see `docs/protocol/channel.md`), used only to
/// size the rings like the raw ones.
const SLOT_OVERHEAD: usize = 16;
const SLOT_ALIGN: usize = 64;
/// Fewest slots of a channel (those of the 1 MiB and 4 MiB messages).
const MIN_SLOTS: usize = 4;
/// The hello the peer sends once it has attached to every channel.
const HELLO: u64 = 0x6865_6c6c_6f21_0001;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the harness's end, when dropped, waits for the peer to exit.
const PEER_EXIT_WAIT: Duration = Duration::from_secs(2);

/// An ipckit channel benchmark in one wait mode.
#[derive(Debug)]
pub struct ChanBench {
    mode: WaitMode,
}

/// `ipckit-chan-spin`: busy-polling ends.
pub static CHAN_SPIN: ChanBench = ChanBench {
    mode: WaitMode::BusyPoll,
};
/// `ipckit-chan`: adaptive ends (spin briefly when the peer runs on another CPU, then sleep).
pub static CHAN_ADAPTIVE: ChanBench = ChanBench {
    mode: WaitMode::Adaptive,
};
/// `ipckit-chan-sleep`: ends that sleep at once.
pub static CHAN_SLEEP: ChanBench = ChanBench {
    mode: WaitMode::Sleep,
};

/// `(capacity, max_message)` of the pair of `phase`: slots of the phase's size, as many as make
/// the raw rings' 1 MiB (rounded up to a power of two), and at least [`MIN_SLOTS`].
fn geometry(phase: &Phase) -> (u32, u32) {
    let size = match *phase {
        Phase::Rtt { size } | Phase::RttZc { size } | Phase::Stream { size, .. } => size,
    };
    // Acknowledgements and hellos are stamp-sized.
    let size = size.max(STAMP_LEN);
    let stride = (SLOT_OVERHEAD + size).next_multiple_of(SLOT_ALIGN);
    let slots = (RING_BYTES / stride).max(MIN_SLOTS).next_power_of_two();
    (
        u32::try_from(slots).unwrap_or(u32::MAX),
        u32::try_from(size).unwrap_or(u32::MAX),
    )
}

fn name(index: usize, dir: &str) -> String {
    format!(r"Local\bench-{index}-{dir}")
}

/// One end of a case: a (sender, receiver) pair per phase.
#[derive(Debug)]
pub struct ChanEnd {
    pairs: Vec<(Sender, Receiver)>,
    cur: usize,
    /// Harness only: the case's namespace, removed on drop.
    owned: Option<Owned>,
}

/// What the harness's end owns beyond its channels.
#[derive(Debug)]
struct Owned {
    dir: TempDir,
    peer: Liveness,
}

impl Drop for ChanEnd {
    fn drop(&mut self) {
        let phases = self.pairs.len();
        self.pairs.clear();
        let Some(owned) = self.owned.take() else {
            return;
        };
        // The last process to close a channel removes its shared memory, and needs the
        // namespace directory to do so: let the peer finish closing before the directory goes.
        let start = Instant::now();
        while owned.peer.check().is_ok() && start.elapsed() < PEER_EXIT_WAIT {
            std::thread::sleep(Duration::from_millis(1));
        }
        // A peer that was killed closed nothing: opening and closing each channel again
        // (as its last holder) clears what it left.
        let ns = Namespace::at(owned.dir.path());
        for i in 0..phases {
            for dir in ["down", "up"] {
                if let Ok(b) = builder(&ns, &name(i, dir), WaitMode::Sleep) {
                    drop(b.receiver());
                }
            }
        }
        drop(owned.dir);
    }
}

impl ChanEnd {
    fn pair(&mut self) -> &mut (Sender, Receiver) {
        &mut self.pairs[self.cur]
    }
}

fn builder(
    ns: &Namespace,
    name: &str,
    mode: WaitMode,
) -> io::Result<ipckit::channel::ChannelBuilder> {
    Ok(IpcChannel::builder()
        .name(name)?
        .namespace(ns.clone())
        .wait_mode(mode))
}

impl Channel for ChanEnd {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let (tx, _) = self.pair();
        let mut slot = tx.reserve(msg.len())?;
        slot.write(0, msg)?;
        slot.commit();
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let (_, rx) = self.pair();
        let msg = rx.recv_borrow()?;
        if msg.len() != buf.len() {
            return Err(invalid(format!(
                "message of {} bytes, expected {}",
                msg.len(),
                buf.len()
            )));
        }
        msg.read(0, buf)?;
        Ok(())
    }

    fn send_stamp(&mut self, len: usize, stamp: u64) -> io::Result<()> {
        let (tx, _) = self.pair();
        let mut slot = tx.reserve(len)?;
        slot.write(0, &stamp.to_le_bytes())?;
        slot.commit();
        Ok(())
    }

    fn recv_stamp(&mut self, len: usize) -> io::Result<u64> {
        let (_, rx) = self.pair();
        let msg = rx.recv_borrow()?;
        if msg.len() != len {
            return Err(invalid(format!(
                "message of {} bytes, expected {len}",
                msg.len()
            )));
        }
        let mut b = [0u8; STAMP_LEN];
        msg.read(0, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn begin_phase(&mut self, index: usize, _phase: &Phase) -> io::Result<()> {
        if index >= self.pairs.len() {
            return Err(invalid(format!("no channel pair for phase {index}")));
        }
        self.cur = index;
        Ok(())
    }
}

impl Transport for ChanBench {
    type Chan = ChanEnd;

    fn open_parent(&self, launcher: &mut Launcher<'_>) -> io::Result<ChanEnd> {
        let dir = TempDir::new()?;
        let ns = Namespace::at(dir.path());
        let mut pairs = Vec::new();
        for (i, phase) in launcher.phases().iter().enumerate() {
            let (capacity, max) = geometry(phase);
            // The creator's geometry wins; the peer opens what we made.
            let tx = builder(&ns, &name(i, "down"), self.mode)?
                .capacity(capacity)
                .max_message(max)
                .sender()?;
            let rx = builder(&ns, &name(i, "up"), self.mode)?
                .capacity(capacity)
                .max_message(max)
                .receiver()?;
            pairs.push((tx, rx));
        }
        if pairs.is_empty() {
            return Err(invalid("a case without phases"));
        }
        launcher.spawn(path_arg(dir.path())?)?;
        let hello = launcher.wait_for("channel attach", || match pairs[0].1.try_recv_borrow() {
            Ok(msg) => {
                let mut b = [0u8; STAMP_LEN];
                msg.read(0, &mut b)?;
                Ok(Some(u64::from_le_bytes(b)))
            }
            Err(e) if e.kind() == ipckit::ErrorKind::Timeout => Ok(None),
            Err(e) => Err(e.into()),
        })?;
        if hello != HELLO {
            return Err(invalid("bad hello from the peer"));
        }
        Ok(ChanEnd {
            pairs,
            cur: 0,
            owned: Some(Owned {
                dir,
                peer: launcher.liveness()?,
            }),
        })
    }

    fn open_peer(&self, peer: &PeerEnv) -> io::Result<ChanEnd> {
        let ns = Namespace::at(Path::new(&peer.addr));
        let mut pairs = Vec::new();
        for i in 0..peer.phases.len() {
            // Receive first: the harness may send as soon as it has our hello.
            let rx = builder(&ns, &name(i, "down"), self.mode)?.receiver()?;
            let tx = builder(&ns, &name(i, "up"), self.mode)?.sender()?;
            pairs.push((tx, rx));
        }
        let Some((tx, _)) = pairs.first_mut() else {
            return Err(invalid("a case without phases"));
        };
        // There is room (nothing was sent yet); bound the wait anyway.
        tx.send_timeout(&HELLO.to_le_bytes(), HELLO_TIMEOUT)?;
        Ok(ChanEnd {
            pairs,
            cur: 0,
            owned: None,
        })
    }

    fn zero_copy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::StreamMetric;

    #[test]
    fn geometries() {
        assert_eq!(geometry(&Phase::Rtt { size: 64 }), (8192, 64));
        assert_eq!(geometry(&Phase::RttZc { size: 4096 }), (256, 4096));
        assert_eq!(geometry(&Phase::RttZc { size: 1 << 20 }), (4, 1 << 20));
        assert_eq!(geometry(&Phase::RttZc { size: 4 << 20 }), (4, 4 << 20));
        let stream = |size| Phase::Stream {
            size,
            metric: StreamMetric::Rate,
        };
        assert_eq!(geometry(&stream(64)), (8192, 64));
        assert_eq!(geometry(&stream(64 << 10)), (16, 64 << 10));
    }
}
