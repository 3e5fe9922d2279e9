//! The frame header of named-pipe connections (see `docs/protocol/pipe.md`). I/O-free.
//!
//! Every frame starts with a little-endian `u32`. Bit 31 clear: a *data frame*, the other 31
//! bits are the payload length and the payload follows (one message of a message-type pipe, or
//! one piece of a byte stream). Bit 31 set: a *control frame* without payload, the other 31
//! bits are its code.

use crate::error::{Error, ErrorKind, Result};

/// Length of a frame header.
pub(crate) const HEADER_LEN: usize = 4;
/// Largest payload a frame can announce.
pub(crate) const MAX_FRAME_PAYLOAD: u32 = 0x7FFF_FFFF;
const CONTROL_BIT: u32 = 0x8000_0000;

/// Control code: the server refuses this client (its user is not allowed); the connection ends.
pub(crate) const CONTROL_REFUSED: u32 = 1;
/// Control code: the sender of this frame received a message over its limit and ends the
/// connection.
pub(crate) const CONTROL_TOO_LARGE: u32 = 2;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// A data frame with this many payload bytes.
    Data(u32),
    /// A control frame with this code.
    Control(Control),
}

/// The control frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// [`CONTROL_REFUSED`].
    Refused,
    /// [`CONTROL_TOO_LARGE`].
    TooLarge,
}

/// Encodes a data frame header for `len` payload bytes (`len <= MAX_FRAME_PAYLOAD`).
pub(crate) fn data_header(len: u32) -> [u8; HEADER_LEN] {
    debug_assert!(len <= MAX_FRAME_PAYLOAD);
    len.to_le_bytes()
}

/// Encodes a control frame.
pub(crate) fn control_header(c: Control) -> [u8; HEADER_LEN] {
    let code = match c {
        Control::Refused => CONTROL_REFUSED,
        Control::TooLarge => CONTROL_TOO_LARGE,
    };
    (CONTROL_BIT | code).to_le_bytes()
}

/// Decodes a header a peer sent: a data frame over `limit` is [`ErrorKind::MessageTooLarge`],
/// an unknown control code is [`ErrorKind::Protocol`].
pub(crate) fn decode(b: [u8; HEADER_LEN], limit: u32) -> Result<Header> {
    let v = u32::from_le_bytes(b);
    if v & CONTROL_BIT == 0 {
        if v > limit {
            return Err(Error::with_message(
                ErrorKind::MessageTooLarge,
                format!("the peer sent a {v}-byte message; this pipe accepts at most {limit}"),
            ));
        }
        return Ok(Header::Data(v));
    }
    match v & !CONTROL_BIT {
        CONTROL_REFUSED => Ok(Header::Control(Control::Refused)),
        CONTROL_TOO_LARGE => Ok(Header::Control(Control::TooLarge)),
        code => Err(Error::with_message(
            ErrorKind::Protocol,
            format!("the peer sent an unknown control frame (code {code})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(decode(data_header(0), 10).unwrap(), Header::Data(0));
        assert_eq!(decode(data_header(10), 10).unwrap(), Header::Data(10));
        assert_eq!(
            decode(data_header(11), 10).unwrap_err().kind(),
            ErrorKind::MessageTooLarge
        );
        for c in [Control::Refused, Control::TooLarge] {
            assert_eq!(decode(control_header(c), 0).unwrap(), Header::Control(c));
        }
        assert_eq!(
            decode([9, 0, 0, 0x80], 10).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics_and_bounds_lengths(b in proptest::prelude::any::<[u8; 4]>(), limit in 0u32..=MAX_FRAME_PAYLOAD) {
            if let Ok(Header::Data(n)) = decode(b, limit) {
                proptest::prop_assert!(n <= limit);
                proptest::prop_assert_eq!(data_header(n), b);
            }
        }
    }
}
