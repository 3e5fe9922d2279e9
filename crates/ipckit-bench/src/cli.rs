//! The command line shared by `ipckit-bench` and `ipckit bench`.

use std::io;

/// Measure IPC mechanisms between two processes: round-trip latency, streaming throughput and
/// message rate, same-core and cross-core, with ratios to the raw baselines of the same run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Mechanisms to measure: names or `-`-prefixes such as `shm` (default: all).
    #[arg(value_name = "MECHANISM")]
    pub mechanisms: Vec<String>,
    /// Fewer sizes and shorter rounds (well under a minute for everything).
    #[arg(long)]
    pub quick: bool,
    /// Print only JSON lines on stdout, one record per line:
    /// {"mechanism","case","metric","value","unit","baseline","ratio"}.
    #[arg(long)]
    pub json: bool,
    /// List the mechanisms that can be measured and exit.
    #[arg(long)]
    pub list: bool,
}

/// The mechanisms with their group and description, for `--help`.
pub fn listing() -> String {
    let rows: Vec<String> = crate::registry::benches()
        .iter()
        .map(|b| format!("  {:<24} {:<10} {}", b.name, b.group.as_str(), b.about))
        .collect();
    format!("Mechanisms:\n{}", rows.join("\n"))
}

/// Runs what `args` asks for, printing to stdout.
pub fn run(args: BenchArgs) -> io::Result<()> {
    if args.list {
        for name in crate::mechanisms() {
            println!("{name}");
        }
        return Ok(());
    }
    let opts = crate::Options {
        filters: args.mechanisms,
        quick: args.quick,
        json: args.json,
        progress: !args.json,
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    crate::run(&opts, &mut out).map(|_| ())
}
