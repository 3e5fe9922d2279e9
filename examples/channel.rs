//! A shared-memory channel between two processes, zero copy both ways.
//!
//! Run: `cargo run --release -p ipckit --example channel`
//!
//! The parent creates the channel as its receiver and starts itself again as the sender. The
//! child writes each message in place in shared memory (`reserve` + `commit`); the parent reads
//! each one in place (`recv_borrow`) and checks its sequence number.

use std::process::Command;
use std::time::Instant;

use ipckit::channel::Channel;

const MESSAGES: u64 = 200_000;
const SIZE: usize = 256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let name = format!(
        r"Local\example-channel-{}",
        args.get(2)
            .cloned()
            .unwrap_or_else(|| std::process::id().to_string())
    );
    if args.get(1).map(String::as_str) == Some("sender") {
        let mut tx = Channel::builder().name(&name)?.sender()?;
        for seq in 0..MESSAGES {
            let mut slot = tx.reserve(SIZE)?;
            slot.write(0, &seq.to_le_bytes())?;
            slot.commit();
        }
        return Ok(());
    }

    let mut rx = Channel::builder()
        .name(&name)?
        .capacity(256)
        .max_message(SIZE as u32)
        .receiver()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["sender", &std::process::id().to_string()])
        .spawn()?;
    let mut start = Instant::now();
    for expected in 0..MESSAGES {
        let msg = rx.recv_borrow()?;
        if expected == 0 {
            // Time the transfer, not the child's start-up.
            start = Instant::now();
        }
        let mut seq = [0u8; 8];
        msg.read(0, &mut seq)?;
        assert_eq!(
            u64::from_le_bytes(seq),
            expected,
            "messages arrive once, in order"
        );
    }
    let secs = start.elapsed().as_secs_f64();
    child.wait()?;
    println!(
        "received {MESSAGES} messages of {SIZE} bytes from pid {} in {:.1} ms: {:.1} M msg/s",
        child.id(),
        secs * 1e3,
        MESSAGES as f64 / secs / 1e6
    );
    Ok(())
}
