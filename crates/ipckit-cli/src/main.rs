//! `ipckit`: the command-line face of ipckit.
//!
//! Every subcommand is a thin layer over the library; see `ipckit --help`.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The nine Windows IPC mechanisms on Linux: inspect, try and measure them from the shell.
#[derive(Debug, Parser)]
#[command(name = "ipckit", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the live named objects of your namespace (pipes, mailslots, mappings, sync objects).
    Ls(cmd::ls::Args),
    /// Exercise every mechanism between real processes and report what works, how fast.
    Tour(cmd::tour::Args),
    /// The per-user session broker (registry, RPC endpoint mapper): run it, or see its state.
    Broker(cmd::broker::Args),
    /// Measure ipckit's mechanisms against the raw OS baselines, in one run.
    Bench(cmd::bench::Args),
    /// Show where a Windows-style name lives on this system (path, shared-memory name).
    Where(cmd::where_::Args),
    /// File mappings: named shared memory (CreateFileMapping / MapViewOfFile).
    #[command(subcommand)]
    Shm(cmd::shm::Cmd),
    /// Named events (CreateEvent / SetEvent / ResetEvent / WaitForSingleObject).
    #[command(subcommand)]
    Event(cmd::sync::EventCmd),
    /// Named mutexes (CreateMutex / WaitForSingleObject / ReleaseMutex).
    #[command(subcommand)]
    Mutex(cmd::sync::MutexCmd),
    /// Named semaphores (CreateSemaphore / ReleaseSemaphore / WaitForSingleObject).
    #[command(subcommand)]
    Sem(cmd::sync::SemCmd),
    /// Shared-memory message channels (ipckit's fastest local path).
    #[command(subcommand)]
    Chan(cmd::chan::Cmd),
    /// Named pipes (CreateNamedPipe / ConnectNamedPipe / CreateFile / CallNamedPipe).
    #[command(subcommand)]
    Pipe(cmd::pipe::Cmd),
    /// Mailslots (CreateMailslot / ReadFile / GetMailslotInfo, CreateFile / WriteFile).
    #[command(subcommand)]
    Mailslot(cmd::mailslot::Cmd),
    /// RPC: a demo server and a client that times it (RpcServerListen, RpcBindingFromStringBinding).
    #[command(subcommand)]
    Rpc(cmd::rpc::Cmd),
}

fn main() -> ExitCode {
    // When started as a benchmark's peer process, run that role and exit.
    ipckit_bench::run_peer_if_requested();
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ls(a) => cmd::ls::run(a),
        Command::Tour(a) => cmd::tour::run(a),
        Command::Broker(a) => cmd::broker::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Where(a) => cmd::where_::run(a),
        Command::Shm(c) => cmd::shm::run(c),
        Command::Event(c) => cmd::sync::event(c),
        Command::Mutex(c) => cmd::sync::mutex(c),
        Command::Sem(c) => cmd::sync::sem(c),
        Command::Chan(c) => cmd::chan::run(c),
        Command::Pipe(c) => cmd::pipe::run(c),
        Command::Mailslot(c) => cmd::mailslot::run(c),
        Command::Rpc(c) => cmd::rpc::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipckit: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `IPCKIT_LOG` (e.g. `IPCKIT_LOG=debug`); warnings by default.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("IPCKIT_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
