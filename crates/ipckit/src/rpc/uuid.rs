//! UUIDs naming RPC interfaces and objects.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};

/// A UUID (`6b29fc40-ca47-1067-b31d-00dd010662da`).
///
/// Windows counterpart: `UUID` / `GUID` (`UuidFromString`, `UuidToString`). ipckit keeps the
/// 16 bytes in the order the text reads (RFC 9562), on the wire too; Windows stores the first
/// three fields little-endian in memory.
///
/// ```
/// use ipckit::rpc::Uuid;
/// let u = Uuid::parse("6B29FC40-CA47-1067-B31D-00DD010662DA")?;
/// assert_eq!(u.to_string(), "6b29fc40-ca47-1067-b31d-00dd010662da");
/// assert_eq!(u, Uuid::from_u128(0x6b29fc40_ca47_1067_b31d_00dd010662da));
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// The UUID with these 16 bytes (in text order).
    pub const fn from_bytes(b: [u8; 16]) -> Uuid {
        Uuid(b)
    }
    /// The UUID whose text is this 128-bit number in hex.
    pub const fn from_u128(v: u128) -> Uuid {
        Uuid(v.to_be_bytes())
    }
    /// The 16 bytes, in text order.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex digits in either case, optionally in
    /// braces). Windows: `UuidFromString` (`RPC_S_INVALID_STRING_UUID`, 1705).
    pub fn parse(s: &str) -> Result<Uuid> {
        let t = s
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(s);
        let bad = || {
            Error::with_message(ErrorKind::InvalidParameter, format!("bad UUID {s:?}"))
                .with_win32_code(1705)
        };
        let b = t.as_bytes();
        if b.len() != 36 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b[i] != b'-' {
                    return Err(bad());
                }
                i += 1;
                continue;
            }
            let hi = (b[i] as char).to_digit(16).ok_or_else(bad)?;
            let lo = (b[i + 1] as char).to_digit(16).ok_or_else(bad)?;
            out[n] = (hi * 16 + lo) as u8;
            n += 1;
            i += 2;
        }
        Ok(Uuid(out))
    }

    /// Parses at compile time (for the interface attribute); panics on a malformed UUID.
    pub const fn parse_const(s: &str) -> Uuid {
        const fn hex(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => panic!("bad hex digit in UUID"),
            }
        }
        let b = s.as_bytes();
        assert!(b.len() == 36, "a UUID has 36 characters");
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if i == 8 || i == 13 || i == 18 || i == 23 {
                assert!(b[i] == b'-', "UUID groups are separated by '-'");
                i += 1;
                continue;
            }
            out[n] = hex(b[i]) * 16 + hex(b[i + 1]);
            n += 1;
            i += 2;
        }
        Uuid(out)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

impl std::str::FromStr for Uuid {
    type Err = Error;
    fn from_str(s: &str) -> Result<Uuid> {
        Uuid::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn text_round_trip(v: u128) {
            let u = Uuid::from_u128(v);
            prop_assert_eq!(Uuid::parse(&u.to_string()).unwrap(), u);
            prop_assert_eq!(Uuid::parse_const(&u.to_string()), u);
        }
        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = Uuid::parse(&s);
        }
    }
}
