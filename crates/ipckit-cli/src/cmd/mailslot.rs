//! `ipckit mailslot`: mailslots from the shell (CreateMailslot / ReadFile / GetMailslotInfo,
//! CreateFile / WriteFile).

use std::io::{Read, Write};
use std::time::Duration;

use ipckit::ErrorKind;
use ipckit::mailslot::{MailslotOptions, Message, WriterOptions, describe_name};
use ipckit::namespace::Namespace;

use super::CmdResult;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Create a mailslot and print each message as it arrives, one per line, until killed.
    Serve {
        /// `NAME` or `\\.\mailslot\NAME`.
        name: String,
        /// The largest message writers may send, in bytes (0: any size up to 64 KiB).
        #[arg(long, default_value_t = 0)]
        max_size: u32,
        /// The read timeout in milliseconds, as GetMailslotInfo reports it (default: wait for
        /// ever). Serving goes on after a timeout.
        #[arg(long)]
        timeout: Option<u32>,
        /// One JSON object per message: {"size", "sender": {"pid", "uid", "gid"}, "bytes",
        /// "text"}.
        #[arg(long)]
        json: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Open a mailslot and write DATA as one message.
    Write {
        name: String,
        /// The message, or `-` to read it from standard input.
        data: String,
        /// Wait at most this many milliseconds while the mailslot's queue is full (default: as
        /// long as needed).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Show a mailslot's maximum message size, read timeout, server and queued messages.
    Info {
        name: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `NAME` → `\\.\mailslot\NAME`; full names are kept.
fn full_name(name: &str) -> String {
    if name.starts_with(r"\\") {
        name.to_owned()
    } else {
        format!(r"\\.\mailslot\{name}")
    }
}

pub fn run(cmd: Cmd) -> CmdResult {
    match cmd {
        Cmd::Serve {
            name,
            max_size,
            timeout,
            json,
            count,
        } => serve(&full_name(&name), max_size, timeout, json, count),
        Cmd::Write {
            name,
            data,
            timeout,
        } => {
            let data = if data == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                data.into_bytes()
            };
            let w = WriterOptions::new()
                .write_timeout(timeout.map(Duration::from_millis))
                .open(&full_name(&name))?;
            w.write(&data)?;
            Ok(())
        }
        Cmd::Info { name, json } => info(&full_name(&name), json),
    }
}

/// One message as a line of text: invalid UTF-8 replaced, control characters escaped.
fn text_line(data: &[u8]) -> String {
    String::from_utf8_lossy(data)
        .chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            if c.is_control() {
                Box::new(c.escape_default())
            } else {
                Box::new(std::iter::once(c))
            }
        })
        .collect()
}

fn message_json(m: &Message) -> serde_json::Value {
    serde_json::json!({
        "size": m.data.len(),
        "sender": {"pid": m.sender.pid, "uid": m.sender.uid, "gid": m.sender.gid},
        "bytes": m.data,
        "text": String::from_utf8_lossy(&m.data),
    })
}

fn serve(
    name: &str,
    max_size: u32,
    timeout: Option<u32>,
    json: bool,
    count: Option<u64>,
) -> CmdResult {
    let mut opts = MailslotOptions::new().max_message_size(max_size)?;
    if let Some(ms) = timeout {
        opts = opts.read_timeout_ms(ms);
    }
    let mut s = opts.create(name)?;
    let info = s.info()?;
    eprintln!(
        "serving {name} (max {} bytes) (pid {})",
        info.max_message_size,
        std::process::id()
    );
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let m = match s.read_message() {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::Timeout => continue,
            Err(e) => return Err(e.into()),
        };
        if json {
            writeln!(out, "{}", message_json(&m))?;
        } else {
            writeln!(out, "{}", text_line(&m.data))?;
        }
        out.flush()?;
        seen += 1;
    }
    Ok(())
}

fn info(name: &str, json: bool) -> CmdResult {
    let ns = Namespace::from_env();
    let Some(st) = describe_name(&ns, name)? else {
        return Err(format!("no mailslot named {name}").into());
    };
    let timeout_ms = st.read_timeout.map(|t| t.as_millis());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "name": name,
                "max_message_size": st.max_message_size,
                "read_timeout_ms": timeout_ms,
                "server_pid": st.server_pid,
                "queued": st.queued,
            })
        );
    } else {
        println!("name              {name}");
        println!("max message size  {} bytes", st.max_message_size);
        println!(
            "read timeout      {}",
            timeout_ms.map_or_else(|| "forever".to_owned(), |ms| format!("{ms} ms"))
        );
        println!("server pid        {}", st.server_pid);
        println!("queued            {}", st.queued);
    }
    Ok(())
}
