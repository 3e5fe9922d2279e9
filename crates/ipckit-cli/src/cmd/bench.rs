//! `ipckit bench`: ipckit's mechanisms beside the raw OS baselines, measured in one run
//! (the same command line as the `ipckit-bench` binary).

use super::CmdResult;

pub use ipckit_bench::cli::BenchArgs as Args;

pub fn run(args: Args) -> CmdResult {
    ipckit_bench::cli::run(args)?;
    Ok(())
}
