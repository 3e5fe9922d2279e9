//! A mailslot served by one process and written by three others.
//!
//! Run: `cargo run -p ipckit --example mailslot`
//!
//! The parent creates `\\.\mailslot\example-PID` (CreateMailslot, at most 424 bytes a message,
//! reads waiting up to 5 s) and starts itself three times as a writer; each child opens the
//! mailslot (CreateFile) and writes two messages (WriteFile). The parent asks how many are
//! queued (GetMailslotInfo), reads them one by one with their senders, then finds the mailslot
//! empty once its read timeout is 0 (SetMailslotInfo; ERROR_SEM_TIMEOUT).

use std::process::Command;
use std::time::Duration;

use ipckit::mailslot::{MailslotOptions, MailslotWriter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("writer") {
        let w = MailslotWriter::open(&args[2])?;
        for i in 0..2 {
            w.write(format!("message {i} from pid {}", std::process::id()).as_bytes())?;
        }
        // Over the mailslot's maximum: refused, nothing sent.
        let too_big = w.write(&[0u8; 425]).unwrap_err();
        assert_eq!(too_big.win32_code(), 87); // ERROR_INVALID_PARAMETER
        return Ok(());
    }

    let name = format!(r"\\.\mailslot\example-{}", std::process::id());
    let mut server = MailslotOptions::new()
        .max_message_size(424)?
        .read_timeout(Some(Duration::from_secs(5)))
        .create(&name)?;
    let mut children = Vec::new();
    for _ in 0..3 {
        children.push(
            Command::new(std::env::current_exe()?)
                .args(["writer", &name])
                .spawn()?,
        );
    }
    for mut c in children {
        assert!(c.wait()?.success(), "a writer failed");
    }
    let info = server.info()?;
    println!(
        "server: {} messages queued, next one {} bytes, max {} bytes",
        info.count,
        info.next_size.unwrap_or(0),
        info.max_message_size
    );
    for _ in 0..info.count {
        let m = server.read_message()?;
        println!(
            "server: from pid {}: {:?}",
            m.sender.pid,
            String::from_utf8_lossy(&m.data)
        );
    }
    server.set_read_timeout(Some(Duration::ZERO));
    let empty = server.read_message().unwrap_err();
    println!("server: then {empty}");
    assert_eq!(empty.win32_code(), 121); // ERROR_SEM_TIMEOUT
    Ok(())
}
