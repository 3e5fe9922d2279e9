//! The metadata file of a named pipe (`RUNTIME/pipe/ENC/meta`): the parameters that the first
//! instance fixed. Written atomically (a temporary file renamed into place) under the pipe
//! folder's lock; read and validated by every later instance and by clients, which treat it as
//! hostile input. Layout: see `docs/protocol/pipe.md`.

use std::time::Duration;

use super::{MaxInstances, OpenMode, PipeType};
use crate::error::{Error, ErrorKind, Result};

const MAGIC: [u8; 8] = *b"IPCKPIPE";
const VERSION: u32 = 1;

/// `Meta::flags` bit: remote clients are refused (`PIPE_REJECT_REMOTE_CLIENTS`).
pub(crate) const FLAG_REJECT_REMOTE: u32 = 1;

/// The fixed parameters of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub pipe_type: PipeType,
    pub open_mode: OpenMode,
    pub max_instances: MaxInstances,
    pub out_buffer_size: u32,
    pub in_buffer_size: u32,
    /// `nDefaultTimeOut`, in milliseconds (`WaitNamedPipe(NMPWAIT_USE_DEFAULT_WAIT)`).
    pub default_timeout_ms: u32,
    /// The largest message (data frame payload) either side accepts.
    pub max_message_size: u32,
    pub creator_pid: u32,
    pub flags: u32,
}

impl Meta {
    /// Encoded length.
    pub const LEN: usize = 64;

    pub fn default_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.default_timeout_ms))
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&MAGIC);
        let words = [
            VERSION,
            match self.pipe_type {
                PipeType::Byte => 0,
                PipeType::Message => 1,
            },
            match self.open_mode {
                OpenMode::Inbound => 1,
                OpenMode::Outbound => 2,
                OpenMode::Duplex => 3,
            },
            match self.max_instances {
                MaxInstances::Limited(n) => u32::from(n),
                MaxInstances::Unlimited => 255,
            },
            self.out_buffer_size,
            self.in_buffer_size,
            self.default_timeout_ms,
            self.max_message_size,
            self.creator_pid,
            self.flags,
        ];
        for (i, w) in words.iter().enumerate() {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Meta> {
        let bad = |why: &str| {
            Error::with_message(ErrorKind::Protocol, format!("damaged pipe metadata: {why}"))
        };
        if b.len() != Self::LEN {
            return Err(bad("wrong length"));
        }
        if b[0..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let w = |i: usize| u32::from_le_bytes(b[8 + 4 * i..12 + 4 * i].try_into().expect("4"));
        if w(0) != VERSION {
            return Err(bad("unknown version"));
        }
        let pipe_type = match w(1) {
            0 => PipeType::Byte,
            1 => PipeType::Message,
            _ => return Err(bad("unknown pipe type")),
        };
        let open_mode = match w(2) {
            1 => OpenMode::Inbound,
            2 => OpenMode::Outbound,
            3 => OpenMode::Duplex,
            _ => return Err(bad("unknown open mode")),
        };
        let max_instances = match w(3) {
            255 => MaxInstances::Unlimited,
            n @ 1..=254 => MaxInstances::Limited(n as u8),
            _ => return Err(bad("max instances out of range")),
        };
        let max_message_size = w(7);
        if max_message_size == 0 || max_message_size > super::frame::MAX_FRAME_PAYLOAD {
            return Err(bad("max message size out of range"));
        }
        if w(9) & !FLAG_REJECT_REMOTE != 0 {
            return Err(bad("unknown flags"));
        }
        if b[48..].iter().any(|&x| x != 0) {
            return Err(bad("reserved bytes set"));
        }
        Ok(Meta {
            pipe_type,
            open_mode,
            max_instances,
            out_buffer_size: w(4),
            in_buffer_size: w(5),
            default_timeout_ms: w(6),
            max_message_size,
            creator_pid: w(8),
            flags: w(9),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Meta {
        Meta {
            pipe_type: PipeType::Message,
            open_mode: OpenMode::Duplex,
            max_instances: MaxInstances::Limited(2),
            out_buffer_size: 4096,
            in_buffer_size: 4096,
            default_timeout_ms: 50,
            max_message_size: 1 << 20,
            creator_pid: 7,
            flags: FLAG_REJECT_REMOTE,
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let m = sample();
        assert_eq!(Meta::decode(&m.encode()).unwrap(), m);
        let u = Meta {
            max_instances: MaxInstances::Unlimited,
            ..m
        };
        assert_eq!(Meta::decode(&u.encode()).unwrap(), u);
        for (at, v) in [
            (0, b'x'),
            (8, 2),
            (12, 9),
            (16, 0),
            (20, 0),
            (36, 0),
            (44, 4),
            (50, 1),
        ] {
            let mut b = m.encode();
            b[at] = v;
            if at == 20 || at == 36 {
                b[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
            }
            assert_eq!(
                Meta::decode(&b).unwrap_err().kind(),
                ErrorKind::Protocol,
                "byte {at}"
            );
        }
        assert!(Meta::decode(&m.encode()[..10]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            if let Ok(m) = Meta::decode(&bytes) {
                proptest::prop_assert_eq!(&m.encode()[..], &bytes[..]);
            }
        }
    }
}
