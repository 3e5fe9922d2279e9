//! `ipckit tour`: every mechanism exercised between real processes, with what it costs.
//!
//! The tour is the first thing a new user runs (`cargo run --release -- tour`). For each of
//! the nine mechanisms it either runs a short exchange between this process and a peer
//! process and reports latency and throughput, or says plainly that the mechanism is not
//! available yet. It starts by checking the namespace folder and measuring the OS floor
//! (a raw Unix-socket round trip between two processes) so the numbers have a reference.

use std::time::Instant;

use ipckit::namespace::Namespace;

use super::CmdResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip the OS-floor measurement (only check and list).
    #[arg(long)]
    no_measure: bool,
}

/// A mechanism's tour: exchange with a peer process, return a one-line result.
type TourFn = fn() -> Result<String, Box<dyn std::error::Error>>;

/// What the tour knows about one mechanism.
struct Mechanism {
    name: &'static str,
    windows: &'static str,
    /// `None` while the mechanism is not implemented.
    run: Option<TourFn>,
}

/// The nine mechanisms of the Windows IPC model, in the order the seed lists them.
const MECHANISMS: [Mechanism; 9] = [
    Mechanism {
        name: "Clipboard",
        windows: "OpenClipboard, SetClipboardData",
        run: None,
    },
    Mechanism {
        name: "COM",
        windows: "CoCreateInstance, IUnknown",
        run: None,
    },
    Mechanism {
        name: "Copy Data",
        windows: "SendMessage(WM_COPYDATA)",
        run: None,
    },
    Mechanism {
        name: "DDE",
        windows: "DdeConnect, DdeClientTransaction",
        run: None,
    },
    Mechanism {
        name: "File Mapping",
        windows: "CreateFileMapping, MapViewOfFile",
        run: None,
    },
    Mechanism {
        name: "Pipes",
        windows: "CreatePipe, CreateNamedPipe",
        run: None,
    },
    Mechanism {
        name: "Mailslots",
        windows: "CreateMailslot, WriteFile",
        run: None,
    },
    Mechanism {
        name: "Sockets",
        windows: "WSASocket, connect, send",
        run: None,
    },
    Mechanism {
        name: "RPC",
        windows: "RpcBindingFromStringBinding, NdrClientCall",
        run: None,
    },
];

pub fn run(args: Args) -> CmdResult {
    let started = Instant::now();
    println!("ipckit tour: the nine Windows IPC mechanisms on this machine\n");

    let ns = Namespace::user()?;
    println!(
        "namespace   {} (private to uid {}, mode 0700, checked)",
        ns.runtime_dir().display(),
        ipckit::sys::process::current_uid()
    );
    if !args.no_measure {
        println!("os floor    {}", measure_os_floor()?);
    }
    println!();
    println!(
        "{:<3} {:<13} {:<44} {:<10} RESULT",
        "#", "MECHANISM", "WINDOWS API", "STATUS"
    );
    let mut available = 0;
    for (i, m) in MECHANISMS.iter().enumerate() {
        let (status, result) = match m.run {
            None => ("not yet", "-".to_owned()),
            Some(f) => {
                available += 1;
                match f() {
                    Ok(r) => ("ok", r),
                    Err(e) => ("FAILED", e.to_string()),
                }
            }
        };
        println!(
            "{:<3} {:<13} {:<44} {:<10} {}",
            i + 1,
            m.name,
            m.windows,
            status,
            result
        );
    }
    println!(
        "\n{available} of 9 mechanisms available; tour took {:.1} s. `ipckit bench` compares them with the raw OS.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A raw Unix-socket round trip between this process and a peer process: the floor that
/// every local mechanism is measured against.
fn measure_os_floor() -> Result<String, Box<dyn std::error::Error>> {
    let opts = ipckit_bench::Options {
        filters: vec!["unix-stream".into()],
        quick: true,
        json: true,
        progress: false,
    };
    let records = ipckit_bench::run(&opts, &mut std::io::sink())?;
    let mut parts: Vec<String> = records
        .iter()
        .filter(|r| r.metric == "median" && r.case.starts_with("rtt-64B"))
        .map(|r| {
            let placement = r.case.split('/').nth(1).unwrap_or("");
            format!("{:.1} µs {placement}", r.value / 1000.0)
        })
        .collect();
    if parts.is_empty() {
        parts.push("no measurement".into());
    }
    Ok(format!(
        "Unix-socket round trip, 64 B, two processes: {}",
        parts.join(", ")
    ))
}
