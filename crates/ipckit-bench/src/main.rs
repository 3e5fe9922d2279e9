//! `ipckit-bench`: measure the raw OS IPC baselines (and ipckit against them) between two
//! processes. The same command line is `ipckit bench`.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

#[derive(Debug, Parser)]
#[command(name = "ipckit-bench", version)]
struct Cli {
    #[command(flatten)]
    args: ipckit_bench::cli::BenchArgs,
}

fn main() -> ExitCode {
    // When started as a benchmark peer, run that role and exit.
    ipckit_bench::run_peer_if_requested();
    let matches = Cli::command()
        .after_help(ipckit_bench::cli::listing())
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match ipckit_bench::cli::run(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipckit-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
