//! `ipckit shm`: file mappings (named shared memory) from the shell.

use std::io::{Read, Write};

use ipckit::mapping::{FileMapping, ViewAccess};

use super::{CmdResult, hold_forever, parse_size};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Create (or open) a named mapping. It lives while some process holds it: use --hold.
    /// Windows: CreateFileMapping(INVALID_HANDLE_VALUE, ..., NAME).
    Create {
        /// `NAME`, `Local\NAME` or `Global\NAME`.
        name: String,
        /// Size in bytes (suffixes k, M, G: powers of 1024).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Keep the mapping alive until this process is killed.
        #[arg(long)]
        hold: bool,
        /// Let other users open it.
        #[arg(long)]
        share_with_other_users: bool,
    },
    /// Write DATA (or standard input for `-`) at --offset. Windows: MapViewOfFile + memcpy.
    Write {
        name: String,
        /// The bytes to write, or `-` to read them from standard input.
        data: String,
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Print bytes from --offset: --len bytes, or (without --len) up to the first NUL byte.
    Read {
        name: String,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long)]
        len: Option<usize>,
    },
    /// Show the mapping's size, OS name and holders.
    Info {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: Cmd) -> CmdResult {
    match cmd {
        Cmd::Create {
            name,
            size,
            hold,
            share_with_other_users,
        } => {
            let m = FileMapping::builder()
                .name(&name)?
                .size(size)
                .share_with_other_users(share_with_other_users)
                .create()?;
            let verb = if m.already_existed() {
                "opened existing"
            } else {
                "created"
            };
            println!(
                "{verb} mapping {} ({} bytes) at /dev/shm/{}",
                m.name().map(|n| n.to_string()).unwrap_or_default(),
                m.size(),
                m.os_name().unwrap_or("?")
            );
            if hold {
                hold_forever();
            } else {
                eprintln!(
                    "note: the mapping ends with this process, as on Windows; use --hold to keep it alive"
                );
            }
            Ok(())
        }
        Cmd::Write { name, data, offset } => {
            let bytes = if data == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                data.into_bytes()
            };
            let m = FileMapping::open(&name, ViewAccess::Write)?;
            m.map_view(ViewAccess::Write, 0, 0)?.write(offset, &bytes)?;
            Ok(())
        }
        Cmd::Read { name, offset, len } => {
            let m = FileMapping::open(&name, ViewAccess::Read)?;
            let view = m.map_view(ViewAccess::Read, 0, 0)?;
            let avail = view.len().saturating_sub(offset);
            let mut buf = vec![0u8; len.unwrap_or(avail).min(avail)];
            view.read(offset, &mut buf)?;
            if len.is_none()
                && let Some(nul) = buf.iter().position(|&b| b == 0)
            {
                buf.truncate(nul);
            }
            std::io::stdout().write_all(&buf)?;
            Ok(())
        }
        Cmd::Info { name, json } => {
            let m = FileMapping::open(&name, ViewAccess::Read)?;
            let info = super::ls::object_info(&m.name().expect("named").to_string())?;
            let holders = info.as_ref().map(|i| i.holders.clone()).unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": m.name().map(|n| n.to_string()),
                        "size": m.size(),
                        "shm_name": m.os_name(),
                        "holders": holders,
                    })
                );
            } else {
                println!(
                    "name      {}",
                    m.name().map(|n| n.to_string()).unwrap_or_default()
                );
                println!("size      {}", m.size());
                println!(
                    "os name   /{} (file /dev/shm/{})",
                    m.os_name().unwrap_or("?"),
                    m.os_name().unwrap_or("?")
                );
                println!("holders   {holders:?} (this command included)");
            }
            Ok(())
        }
    }
}
