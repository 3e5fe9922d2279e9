//! `ipckit-bench`: measure the raw OS IPC baselines (and ipckit against
//! them) between two processes.

use std::io;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

/// Measure IPC mechanisms between two processes: round-trip latency,
/// streaming throughput and message rate, same-core and cross-core.
#[derive(Debug, Parser)]
#[command(name = "ipckit-bench", version)]
struct Cli {
    /// Mechanisms to measure: names or `-`-prefixes such as `shm`
    /// (default: all).
    #[arg(value_name = "MECHANISM")]
    mechanisms: Vec<String>,
    /// Fewer sizes and shorter rounds (well under a minute for everything).
    #[arg(long)]
    quick: bool,
    /// Print only JSON lines on stdout, one record per line.
    #[arg(long)]
    json: bool,
    /// List the mechanisms that can be measured and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    // When started as a benchmark peer, run that role and exit.
    ipckit_bench::run_peer_if_requested();

    let listing = ipckit_bench::registry::benches()
        .iter()
        .map(|b| format!("  {:<16} {:<7} {}", b.name, b.group.as_str(), b.about))
        .collect::<Vec<_>>()
        .join("\n");
    let matches = Cli::command()
        .after_help(format!("Mechanisms:\n{listing}"))
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };

    if cli.list {
        for name in ipckit_bench::mechanisms() {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    let opts = ipckit_bench::Options {
        filters: cli.mechanisms,
        quick: cli.quick,
        json: cli.json,
        progress: !cli.json,
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match ipckit_bench::run(&opts, &mut out) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipckit-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
