//! `ipckit tour`: every mechanism exercised between real processes, with what it costs.
//!
//! The tour is the first thing a new user runs (`cargo run --release -- tour`). For each of
//! the nine mechanisms it either runs a short exchange between this process and a peer
//! process and reports latency and throughput, or says plainly that the mechanism is not
//! available yet. It starts by checking the namespace folder and measuring the OS floor
//! (a raw Unix-socket round trip between two processes) so the numbers have a reference.

use std::io::IsTerminal;
use std::time::Instant;

use ipckit::namespace::Namespace;
use ipckit_bench::Record;

use super::CmdResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip the OS-floor measurement (only check and list).
    #[arg(long)]
    no_measure: bool,
}

/// What the tour knows about one mechanism.
struct Mechanism {
    name: &'static str,
    windows: &'static str,
    /// The benchmarks (run between this process and a peer process) that exercise it;
    /// empty while the mechanism is not implemented.
    benches: &'static [&'static str],
    /// Turns their records into the one-line result.
    summary: fn(&[Record]) -> String,
}

fn none(_: &[Record]) -> String {
    "-".into()
}

/// The median of `mechanism`'s `case` (prefix) in µs, formatted.
fn us(records: &[Record], mechanism: &str, case: &str) -> Option<String> {
    records
        .iter()
        .find(|r| r.mechanism == mechanism && r.case.starts_with(case) && r.metric == "median")
        .map(|r| {
            if r.value < 1000.0 {
                format!("{:.0} ns", r.value)
            } else {
                format!("{:.1} µs", r.value / 1000.0)
            }
        })
}

fn pipes(records: &[Record]) -> String {
    format!(
        "named pipe, message round trip {} (same core), {} (cross core)",
        us(records, "ipckit-pipe", "rtt-64B/same").unwrap_or_else(|| "?".into()),
        us(records, "ipckit-pipe", "rtt-64B/cross").unwrap_or_else(|| "?".into()),
    )
}

/// A `rate` record's value in msg/s, formatted, with its ratio to the baseline.
fn rate(records: &[Record], mechanism: &str, case: &str) -> Option<String> {
    records
        .iter()
        .find(|r| r.mechanism == mechanism && r.case.starts_with(case) && r.metric == "rate")
        .map(|r| {
            let ratio = r
                .ratio
                .map(|x| format!(" ({x:.2}x raw)"))
                .unwrap_or_default();
            format!("{:.0}k msg/s{ratio}", r.value / 1000.0)
        })
}

fn mailslots(records: &[Record]) -> String {
    format!(
        "one-way 64 B messages {} (same core), {} (cross core); round trip {} (same core)",
        rate(records, "ipckit-mailslot", "stream-64B/same").unwrap_or_else(|| "?".into()),
        rate(records, "ipckit-mailslot", "stream-64B/cross").unwrap_or_else(|| "?".into()),
        us(records, "ipckit-mailslot", "rtt-64B/same").unwrap_or_else(|| "?".into()),
    )
}

fn file_mapping(records: &[Record]) -> String {
    format!(
        "SetEvent->wake round trip {} (same core), {} (cross core); mutex lock+unlock {}",
        us(records, "ipckit-event", "rtt-64B/same").unwrap_or_else(|| "?".into()),
        us(records, "ipckit-event", "rtt-64B/cross").unwrap_or_else(|| "?".into()),
        us(records, "ipckit-mutex", "lock-unlock").unwrap_or_else(|| "?".into()),
    )
}

fn rpc(records: &[Record]) -> String {
    let ratio = records
        .iter()
        .find(|r| {
            r.mechanism == "ipckit-rpc-ncalrpc"
                && r.case.starts_with("null-call/same")
                && r.metric == "median"
        })
        .and_then(|r| r.ratio)
        .map(|x| format!(" ({x:.1}x a raw socket exchange)"))
        .unwrap_or_default();
    format!(
        "ncalrpc typed null call {} (same core){ratio}, {} (cross core)",
        us(records, "ipckit-rpc-ncalrpc", "null-call/same").unwrap_or_else(|| "?".into()),
        us(records, "ipckit-rpc-ncalrpc", "null-call/cross").unwrap_or_else(|| "?".into()),
    )
}

/// The nine mechanisms of the Windows IPC model, in the order the seed lists them.
const MECHANISMS: [Mechanism; 9] = [
    Mechanism {
        name: "Clipboard",
        windows: "OpenClipboard, SetClipboardData",
        benches: &[],
        summary: none,
    },
    Mechanism {
        name: "COM",
        windows: "CoCreateInstance, IUnknown",
        benches: &[],
        summary: none,
    },
    Mechanism {
        name: "Copy Data",
        windows: "SendMessage(WM_COPYDATA)",
        benches: &[],
        summary: none,
    },
    Mechanism {
        name: "DDE",
        windows: "DdeConnect, DdeClientTransaction",
        benches: &[],
        summary: none,
    },
    Mechanism {
        name: "File Mapping",
        windows: "CreateFileMapping, CreateEvent, CreateMutex",
        benches: &["ipckit-event", "ipckit-mutex"],
        summary: file_mapping,
    },
    Mechanism {
        name: "Pipes",
        windows: "CreatePipe, CreateNamedPipe",
        benches: &["ipckit-pipe"],
        summary: pipes,
    },
    Mechanism {
        name: "Mailslots",
        windows: "CreateMailslot, WriteFile",
        benches: &["ipckit-mailslot"],
        summary: mailslots,
    },
    Mechanism {
        name: "Sockets",
        windows: "WSASocket, connect, send",
        benches: &[],
        summary: none,
    },
    Mechanism {
        name: "RPC",
        windows: "RpcBindingFromStringBinding, NdrClientCall",
        benches: &["ipckit-rpc-ncalrpc"],
        summary: rpc,
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
    let records = if args.no_measure {
        Vec::new()
    } else {
        // One run of the bench harness: every case is this process and a peer process.
        let mut filters = vec!["unix-stream".to_owned()];
        filters.extend(
            MECHANISMS
                .iter()
                .flat_map(|m| m.benches.iter().map(|b| (*b).to_owned())),
        );
        let opts = ipckit_bench::Options {
            filters,
            quick: true,
            json: true,
            progress: false,
        };
        let tty = std::io::stderr().is_terminal();
        if tty {
            eprint!("measuring between two processes...\r");
        }
        let records = ipckit_bench::run(&opts, &mut std::io::sink())?;
        if tty {
            eprint!("                                   \r");
        }
        println!(
            "os floor    raw Unix-socket round trip, 64 B: {} (same core), {} (cross core)",
            us(&records, "unix-stream", "rtt-64B/same").unwrap_or_else(|| "?".into()),
            us(&records, "unix-stream", "rtt-64B/cross").unwrap_or_else(|| "?".into()),
        );
        records
    };
    println!();
    println!(
        "{:<3} {:<13} {:<44} {:<10} RESULT (two processes)",
        "#", "MECHANISM", "WINDOWS API", "STATUS"
    );
    let mut available = 0;
    for (i, m) in MECHANISMS.iter().enumerate() {
        let (status, result) = if m.benches.is_empty() {
            ("not yet", "-".to_owned())
        } else {
            available += 1;
            let result = if args.no_measure {
                "(not measured)".to_owned()
            } else {
                (m.summary)(&records)
            };
            ("ok", result)
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
