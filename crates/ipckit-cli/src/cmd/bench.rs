//! `ipckit bench`: ipckit's mechanisms beside the raw OS baselines, measured in one run.

use super::CmdResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Mechanisms to measure (default: all). `ipckit bench --list` names them.
    mechanisms: Vec<String>,
    /// A short run (fewer rounds and sizes): seconds instead of minutes.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per line: {"mechanism","case","metric","value","unit","baseline","ratio"}.
    #[arg(long)]
    json: bool,
    /// List the mechanisms that can be measured and exit.
    #[arg(long)]
    list: bool,
}

pub fn run(args: Args) -> CmdResult {
    if args.list {
        for m in ipckit_bench::mechanisms() {
            println!("{m}");
        }
        return Ok(());
    }
    let opts = ipckit_bench::Options {
        filters: args.mechanisms,
        quick: args.quick,
        json: args.json,
        progress: !args.json,
    };
    let mut out = std::io::stdout().lock();
    ipckit_bench::run(&opts, &mut out)?;
    Ok(())
}
