//! `ipckit rpc`: a demo RPC server and a client that measures it (RpcServerUseProtseqEp /
//! RpcServerListen, RpcBindingFromStringBinding and a call per round trip).
//!
//! The demo interface is [`Demo`]: `echo`, `add`, `whoami` and `sleep`. `serve-demo` offers it
//! on one or more string bindings (`ncalrpc:[name]`, `ncacn_np:\\.[\pipe\name]`,
//! `ncacn_ip_tcp:127.0.0.1[port]`) until killed; `ping` binds to it, asks the server who it
//! thinks the caller is, then times `--count` echo calls of `--size` bytes.

use std::io::Write;
use std::time::{Duration, Instant};

use ipckit::rpc::{self, CallContext, ClientOptions, Server, ServerOptions};

use super::CmdResult;

/// The demo interface of `ipckit rpc serve-demo`.
///
/// Windows counterpart: a MIDL interface (`[uuid(...), version(1.0)] interface Demo`).
#[rpc::interface(uuid = "9d1c6f3e-2b47-4a80-8e15-3c7a5f0b6d21", version = "1.0")]
pub trait Demo {
    /// The bytes back.
    fn echo(&self, data: Vec<u8>) -> Vec<u8>;
    /// a + b (wrapping).
    fn add(&self, a: i64, b: i64) -> i64;
    /// The caller as the server sees it: pid, uid, gid (local carriers) or the address (TCP).
    fn whoami(&self, ctx: &CallContext) -> String;
    /// Sleeps `ms` milliseconds (at most 60 s) or until the call is cancelled; answers
    /// whether it was cancelled.
    fn sleep(&self, ctx: &CallContext, ms: u64) -> bool;
}

/// The server side of [`Demo`].
#[derive(Debug, Default)]
pub struct DemoImpl;

impl Demo for DemoImpl {
    fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }
    fn add(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    fn whoami(&self, ctx: &CallContext) -> String {
        caller_line(ctx.caller())
    }
    fn sleep(&self, ctx: &CallContext, ms: u64) -> bool {
        let end = Instant::now() + Duration::from_millis(ms.min(60_000));
        while Instant::now() < end {
            if ctx.is_cancelled() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

fn caller_line(c: &rpc::Caller) -> String {
    let opt = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    match c.address {
        Some(a) => format!("{} address {a}", c.protseq),
        None => format!(
            "{} pid {} uid {} gid {}",
            c.protseq,
            opt(c.pid),
            opt(c.uid),
            opt(c.gid)
        ),
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Serve the demo interface (echo, add, whoami, sleep) on each BINDING until killed;
    /// prints `listening on BINDING` for each (with the port chosen for `[0]`).
    ServeDemo {
        /// String bindings, e.g. `ncalrpc:[demo]`, `ncacn_np:\\.[\pipe\demo]`,
        /// `ncacn_ip_tcp:127.0.0.1[0]`.
        #[arg(required = true)]
        bindings: Vec<String>,
        /// Calls served at once (RpcServerListen's MaxCalls).
        #[arg(long, default_value_t = 16)]
        max_calls: usize,
    },
    /// Bind to the demo interface at BINDING and time echo calls: min and median latency.
    Ping {
        /// The server's string binding.
        binding: String,
        /// Number of timed calls (after 10 untimed ones).
        #[arg(long, default_value_t = 1000)]
        count: u32,
        /// Bytes sent and echoed per call (k, M suffixes allowed; up to 8M).
        #[arg(long, default_value = "0", value_parser = super::parse_size)]
        size: u64,
        /// Give up on a call after this many milliseconds (cancelled on the server).
        #[arg(long)]
        timeout: Option<u64>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Call `add A B` on the demo interface at BINDING and print the sum.
    Add {
        binding: String,
        #[arg(allow_negative_numbers = true)]
        a: i64,
        #[arg(allow_negative_numbers = true)]
        b: i64,
    },
    /// List the endpoints registered with the session broker's endpoint mapper (Windows: the
    /// endpoint map of `rpcdump`); needs a running broker, never starts one.
    Ls {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: Cmd) -> CmdResult {
    match cmd {
        Cmd::ServeDemo {
            bindings,
            max_calls,
        } => serve(&bindings, max_calls),
        Cmd::Ping {
            binding,
            count,
            size,
            timeout,
            json,
        } => ping(&binding, count, size, timeout, json),
        Cmd::Ls { json } => ls(json),
        Cmd::Add { binding, a, b } => {
            let c = DemoClient::connect_with(&ClientOptions::new(), &binding)?;
            println!("{}", c.add(a, b)?);
            Ok(())
        }
    }
}

fn serve(bindings: &[String], max_calls: usize) -> CmdResult {
    let server = Server::new(
        ServerOptions::new().max_calls(max_calls.max(1)),
        vec![DemoServer::new(DemoImpl)],
    );
    let mut out = std::io::stdout().lock();
    // Dynamic endpoints are registered with the session broker's endpoint mapper (started if
    // need be), as `RpcEpRegister` does; the registrations go when this process does.
    let mut broker = None;
    for b in bindings {
        let public = server.listen(b)?;
        if ipckit::rpc::Binding::parse(b)?.endpoint().is_none() {
            let ns = ipckit::namespace::Namespace::from_env();
            if broker.is_none() {
                let c = std::sync::Arc::new(ipckit::broker::BrokerClient::connect_or_start(&ns)?);
                c.keep_alive(Duration::from_secs(1));
                broker = Some(c);
            }
            if let Some(c) = &broker {
                c.register_endpoint(DemoClient::INTERFACE, &public)?;
            }
            writeln!(
                out,
                "listening on {public} (registered with the endpoint mapper)"
            )?;
        } else {
            writeln!(out, "listening on {public}")?;
        }
    }
    writeln!(
        out,
        "serving {} (echo, add, whoami, sleep); stop with Ctrl-C",
        DemoClient::INTERFACE
    )?;
    drop(out);
    super::hold_forever()
}

/// The largest `--size`.
const MAX_SIZE: u64 = 8 << 20;

fn ping(binding: &str, count: u32, size: u64, timeout: Option<u64>, json: bool) -> CmdResult {
    if size > MAX_SIZE {
        return Err(format!("--size at most {MAX_SIZE} bytes").into());
    }
    if count == 0 {
        return Err("--count must be at least 1".into());
    }
    let mut opts = ClientOptions::new();
    if let Some(ms) = timeout {
        opts = opts.timeout(Duration::from_millis(ms));
    }
    let c = DemoClient::connect_with(&opts, binding)?;
    let (major, minor) = c.client().server_version();
    let seen_as = c.whoami()?;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    for _ in 0..10 {
        check_echo(&data, c.echo(data.clone())?)?;
    }
    let mut samples = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let arg = data.clone();
        let t0 = Instant::now();
        let back = c.echo(arg)?;
        samples.push(t0.elapsed());
        check_echo(&data, back)?;
    }
    samples.sort();
    let min = samples[0];
    let median = samples[samples.len() / 2];
    if json {
        println!(
            "{}",
            serde_json::json!({
                "binding": c.client().binding().to_string(),
                "server_version": format!("{major}.{minor}"),
                "seen_as": seen_as,
                "count": count,
                "size": size,
                "min_ns": min.as_nanos() as u64,
                "median_ns": median.as_nanos() as u64,
            })
        );
    } else {
        println!(
            "bound to {} at {} (server version {major}.{minor}); the server sees {seen_as}",
            DemoClient::INTERFACE,
            c.client().binding()
        );
        println!(
            "{count} echo calls of {size} B: min {}, median {}",
            fmt_duration(min),
            fmt_duration(median)
        );
    }
    Ok(())
}

fn check_echo(sent: &[u8], got: Vec<u8>) -> CmdResult {
    if got != sent {
        return Err(format!(
            "the server echoed {} bytes that differ from the {} sent",
            got.len(),
            sent.len()
        )
        .into());
    }
    Ok(())
}

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1000.0)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

fn ls(json: bool) -> CmdResult {
    use ipckit::broker::registry::EntryKind;
    let ns = ipckit::namespace::Namespace::from_env();
    if ipckit::broker::running_pid(&ns).is_none() {
        return Err("no broker is running, so no endpoint is registered (start one with `ipckit broker --daemon`)".into());
    }
    let c = ipckit::broker::BrokerClient::connect(&ns)?;
    let entries = c.list(Some(EntryKind::RpcEndpoint), "")?;
    // Entry names are `UUID/MAJOR.MINOR/PROTSEQ/ENDPOINT`; the value is the binding.
    let rows: Vec<(String, String, String, u32)> = entries
        .iter()
        .map(|e| {
            let mut parts = e.name.splitn(3, '/');
            let uuid = parts.next().unwrap_or_default().to_owned();
            let version = parts.next().unwrap_or_default().to_owned();
            (
                uuid,
                version,
                String::from_utf8_lossy(&e.value).into_owned(),
                e.pid,
            )
        })
        .collect();
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(uuid, version, binding, pid)| {
                serde_json::json!({"interface": uuid, "version": version, "binding": binding, "pid": pid})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no endpoints registered");
        return Ok(());
    }
    println!(
        "{:<36}  {:<7}  {:>7}  BINDING",
        "INTERFACE", "VERSION", "PID"
    );
    for (uuid, version, binding, pid) in rows {
        println!("{uuid:<36}  {version:<7}  {pid:>7}  {binding}");
    }
    Ok(())
}
