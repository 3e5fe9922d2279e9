//! One module per subcommand.

pub mod bench;
pub mod broker;
pub mod chan;
pub mod ls;
pub mod mailslot;
pub mod pipe;
pub mod rpc;
pub mod shm;
pub mod sync;
pub mod tour;
pub mod where_;

/// The error type of subcommands: anything that displays.
pub type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Keeps the process (and the objects it holds) alive until it is killed.
pub fn hold_forever() -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

/// Parses a size with an optional k / M / G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size (a number, optionally with k, M or G)"))
}
