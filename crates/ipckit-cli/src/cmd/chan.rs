//! `ipckit chan`: shared-memory message channels from the shell.

use std::io::{Read, Write};
use std::time::Duration;

use ipckit::ErrorKind;
use ipckit::channel::{Channel, describe};
use ipckit::namespace::Namespace;

use super::{CmdResult, parse_size};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Send one message to an existing channel (its receiver created it).
    Send {
        /// `NAME`, `Local\NAME` or `Global\NAME`.
        name: String,
        /// The message, or `-` to read it from standard input.
        data: String,
        /// Give up after this many milliseconds if the channel stays full.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Attach as the channel's receiver (creating it if needed) and print one message, or every
    /// message with --follow, one per line.
    Recv {
        name: String,
        /// Keep receiving until killed (new senders may come and go).
        #[arg(long)]
        follow: bool,
        /// Give up after this many milliseconds without a message (exit status 2).
        #[arg(long)]
        timeout: Option<u64>,
        /// Slots per sender lane, when creating.
        #[arg(long, default_value_t = 64)]
        capacity: u32,
        /// Largest message, when creating (suffixes k, M).
        #[arg(long, default_value = "64k", value_parser = parse_size)]
        max_message: u64,
        /// How many senders may be attached at once, when creating.
        #[arg(long, default_value_t = 4)]
        producers: u32,
    },
}

pub fn run(cmd: Cmd) -> CmdResult {
    match cmd {
        Cmd::Send {
            name,
            data,
            timeout,
        } => {
            let bytes = if data == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                data.into_bytes()
            };
            // The channel must exist: a channel made by a sender would end with it.
            describe(&Namespace::from_env(), &name)?;
            let mut tx = Channel::builder().name(&name)?.sender()?;
            match timeout {
                Some(ms) => tx.send_timeout(&bytes, Duration::from_millis(ms))?,
                None => tx.send(&bytes)?,
            }
            Ok(())
        }
        Cmd::Recv {
            name,
            follow,
            timeout,
            capacity,
            max_message,
            producers,
        } => {
            let max = u32::try_from(max_message).map_err(|_| "--max-message is too large")?;
            let mut rx = Channel::builder()
                .name(&name)?
                .capacity(capacity)
                .max_message(max)
                .producers(producers)
                .receiver()?;
            let g = rx.geometry();
            eprintln!(
                "receiving on {name}: {} slots x {} lanes, messages up to {} bytes (pid {})",
                g.capacity,
                g.lanes,
                g.max_message,
                std::process::id()
            );
            let mut out = std::io::stdout().lock();
            loop {
                let r = match timeout {
                    Some(ms) => rx.recv_timeout(Duration::from_millis(ms)),
                    None => rx.recv(),
                };
                match r {
                    Ok(msg) => {
                        out.write_all(&msg)?;
                        out.write_all(b"\n")?;
                        out.flush()?;
                        if !follow {
                            return Ok(());
                        }
                    }
                    // Senders come and go; a follower waits for the next one.
                    Err(e) if e.kind() == ErrorKind::PeerGone && follow => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) if e.kind() == ErrorKind::Timeout => {
                        eprintln!("timeout");
                        std::process::exit(2);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}
