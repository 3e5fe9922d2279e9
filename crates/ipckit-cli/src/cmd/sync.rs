//! `ipckit event`, `ipckit mutex`, `ipckit sem`: named synchronisation objects from the shell.

use std::time::Duration;

use ipckit::ErrorKind;
use ipckit::sync::{Event, Mutex, Options, Semaphore, WaitStatus};

use super::{CmdResult, hold_forever};

fn timeout(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

/// Prints a wait's outcome; a timeout is reported and exits with status 2.
fn report(what: &str, r: ipckit::Result<WaitStatus>) -> CmdResult {
    match r {
        Ok(WaitStatus::Signaled) => {
            println!("{what}");
            Ok(())
        }
        Ok(WaitStatus::Abandoned) => {
            println!("abandoned");
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::Timeout => {
            println!("timeout");
            std::process::exit(2);
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum EventCmd {
    /// Create (or open) an event and hold it until killed. Windows: CreateEvent.
    Create {
        name: String,
        /// Manual-reset (stays signalled until reset); default auto-reset.
        #[arg(long)]
        manual: bool,
        /// Start signalled.
        #[arg(long)]
        set: bool,
    },
    /// Signal the event. Windows: SetEvent.
    Set { name: String },
    /// Make it non-signalled. Windows: ResetEvent.
    Reset { name: String },
    /// Wait for it (prints `signaled` or `timeout`, exit status 2 on timeout). Windows: WaitForSingleObject.
    Wait {
        name: String,
        /// Milliseconds; default forever.
        #[arg(long)]
        timeout: Option<u64>,
    },
}

pub fn event(cmd: EventCmd) -> CmdResult {
    match cmd {
        EventCmd::Create { name, manual, set } => {
            let e = Event::create(&Options::named(&name)?, manual, set)?;
            let kind = if e.is_manual_reset() {
                "manual-reset"
            } else {
                "auto-reset"
            };
            let verb = if e.already_existed() {
                "opened existing"
            } else {
                "created"
            };
            println!(
                "{verb} {kind} event {name}, holding it (pid {})",
                std::process::id()
            );
            hold_forever()
        }
        EventCmd::Set { name } => Ok(Event::open(&Options::named(&name)?)?.set()?),
        EventCmd::Reset { name } => Ok(Event::open(&Options::named(&name)?)?.reset()?),
        EventCmd::Wait { name, timeout: ms } => {
            let e = Event::open(&Options::named(&name)?)?;
            report(
                "signaled",
                e.wait(timeout(ms)).map(|()| WaitStatus::Signaled),
            )
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum MutexCmd {
    /// Acquire the mutex (creating it if needed) and hold it for --for ms, or until killed.
    /// Prints `acquired` or `abandoned` once it owns it.
    Hold {
        name: String,
        /// Milliseconds to hold it; default until killed.
        #[arg(long = "for")]
        for_ms: Option<u64>,
    },
    /// Try to acquire the mutex within --timeout ms, then release it. Prints `acquired`,
    /// `abandoned` or `timeout` (exit status 2).
    Try {
        name: String,
        /// Milliseconds; default forever.
        #[arg(long)]
        timeout: Option<u64>,
    },
}

pub fn mutex(cmd: MutexCmd) -> CmdResult {
    match cmd {
        MutexCmd::Hold { name, for_ms } => {
            let m = Mutex::create(&Options::named(&name)?, false)?;
            let status = m.wait(None)?;
            println!(
                "{}",
                if status == WaitStatus::Abandoned {
                    "abandoned"
                } else {
                    "acquired"
                }
            );
            match for_ms {
                Some(ms) => {
                    std::thread::sleep(Duration::from_millis(ms));
                    m.release()?;
                    println!("released");
                    Ok(())
                }
                None => hold_forever(),
            }
        }
        MutexCmd::Try { name, timeout: ms } => {
            let m = Mutex::create(&Options::named(&name)?, false)?;
            let r = m.wait(timeout(ms));
            if r.is_ok() {
                m.release()?;
            }
            report("acquired", r)
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum SemCmd {
    /// Create (or open) a semaphore and hold it until killed. Windows: CreateSemaphore.
    Create {
        name: String,
        #[arg(long, default_value_t = 0)]
        initial: u32,
        #[arg(long, default_value_t = 1)]
        max: u32,
    },
    /// Add to the count; prints the previous count. Windows: ReleaseSemaphore.
    Release {
        name: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Take one from the count (prints `signaled` or `timeout`, exit status 2 on timeout).
    Wait {
        name: String,
        /// Milliseconds; default forever.
        #[arg(long)]
        timeout: Option<u64>,
    },
}

pub fn sem(cmd: SemCmd) -> CmdResult {
    match cmd {
        SemCmd::Create { name, initial, max } => {
            let s = Semaphore::create(&Options::named(&name)?, initial, max)?;
            let verb = if s.already_existed() {
                "opened existing"
            } else {
                "created"
            };
            println!(
                "{verb} semaphore {name} (count {}, max {}), holding it (pid {})",
                s.count_now(),
                s.maximum(),
                std::process::id()
            );
            hold_forever()
        }
        SemCmd::Release { name, count } => {
            let prev = Semaphore::open(&Options::named(&name)?)?.release(count)?;
            println!("{prev}");
            Ok(())
        }
        SemCmd::Wait { name, timeout: ms } => {
            let s = Semaphore::open(&Options::named(&name)?)?;
            report(
                "signaled",
                s.wait(timeout(ms)).map(|()| WaitStatus::Signaled),
            )
        }
    }
}
