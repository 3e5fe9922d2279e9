//! `ipckit-rpc-*`: ipckit RPC (`ipckit::rpc`) over its three carriers, through the typed client
//! and server that `#[rpc::interface]` generates; see [`crate::rpc`] for the cases.
//!
//! | benchmark | binding | baseline |
//! |---|---|---|
//! | `ipckit-rpc-ncalrpc` | `ncalrpc:[bench]` in a private namespace (moved to shared memory) | `rpc-unix-stream` |
//! | `ipckit-rpc-ncalrpc-socket` | the same, kept on the Unix socket (`local_shared_memory(false)`) | `rpc-unix-stream` |
//! | `ipckit-rpc-ncalrpc-async` | `ncalrpc` (shared memory) with the async client on a current-thread runtime and `async fn` methods on a one-worker runtime, as tarpc and tonic run | `rpc-unix-stream` |
//! | `ipckit-rpc-np` | `ncacn_np:\\.[\pipe\bench]` in a private namespace | `rpc-unix-stream` |
//! | `ipckit-rpc-tcp` | `ncacn_ip_tcp:127.0.0.1[PORT]` | `rpc-tcp-loopback` |
//!
//! The bulk argument is a `Vec<u8>` (the typed stub takes it by value, so each call clones the
//! 1 MiB buffer, as it does for the other RPC crates).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ipckit::namespace::Namespace;
use ipckit::rpc::{self, ClientOptions, Server, ServerOptions};

use crate::peer::invalid;
use crate::rpc::{RpcCaller, RpcSystem, free_tcp_port, wait_quit};

/// The benchmark interface.
#[rpc::interface(uuid = "5e0b7a91-3c2d-4f18-b6e4-9a1d0c7f2b83", version = "1.0")]
pub trait BenchIf {
    /// Answers `x`.
    fn null(&self, x: u64) -> u64;
    /// Answers the argument's length.
    fn bulk(&self, data: Vec<u8>) -> u64;
    /// Lets the server process exit.
    fn quit(&self);
}

/// The benchmark interface with `async fn` methods (served on a tokio runtime).
#[rpc::interface(uuid = "5e0b7a91-3c2d-4f18-b6e4-9a1d0c7f2b84", version = "1.0")]
pub trait BenchAsyncIf {
    /// Answers `x`.
    async fn null(&self, x: u64) -> u64;
    /// Answers the argument's length.
    async fn bulk(&self, data: Vec<u8>) -> u64;
    /// Lets the server process exit.
    async fn quit(&self);
}

struct Impl {
    stop: Arc<AtomicBool>,
}

struct AsyncImpl {
    stop: Arc<AtomicBool>,
}

impl BenchAsyncIf for AsyncImpl {
    async fn null(&self, x: u64) -> u64 {
        x
    }
    async fn bulk(&self, data: Vec<u8>) -> u64 {
        data.len() as u64
    }
    async fn quit(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl BenchIf for Impl {
    fn null(&self, x: u64) -> u64 {
        x
    }
    fn bulk(&self, data: Vec<u8>) -> u64 {
        data.len() as u64
    }
    fn quit(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Which carrier.
#[derive(Debug, Clone, Copy)]
pub enum Carrier {
    /// `ncalrpc` (shared memory).
    Local,
    /// `ncalrpc` kept on its Unix socket.
    LocalSocket,
    /// `ncalrpc` (shared memory), async client and `async fn` methods.
    LocalAsync,
    /// `ncacn_np`.
    NamedPipe,
    /// `ncacn_ip_tcp` on loopback.
    Tcp,
}

/// An `ipckit-rpc-*` benchmark.
#[derive(Debug, Clone, Copy)]
pub struct IpckitRpc(pub Carrier);

/// `DIR|BINDING`: the namespace directory (empty for TCP) and the string binding.
fn split(addr: &str) -> io::Result<(Option<Namespace>, &str)> {
    let (dir, binding) = addr
        .split_once('|')
        .ok_or_else(|| invalid(format!("bad address {addr}")))?;
    Ok(((!dir.is_empty()).then(|| Namespace::at(dir)), binding))
}

fn io_err(e: ipckit::Error) -> io::Error {
    e.into()
}

/// The client: the blocking typed client, or the async one on a current-thread runtime.
#[derive(Debug)]
pub enum Caller {
    /// `BenchIfClient`.
    Blocking(BenchIfClient),
    /// `BenchAsyncIfAsyncClient` and its runtime.
    Async(tokio::runtime::Runtime, BenchAsyncIfAsyncClient),
}

impl RpcCaller for Caller {
    fn null(&mut self, x: u64) -> io::Result<u64> {
        match self {
            Caller::Blocking(c) => c.null(x).map_err(io_err),
            Caller::Async(rt, c) => rt.block_on(c.null(x)).map_err(io_err),
        }
    }
    fn bulk(&mut self, data: &Arc<Vec<u8>>) -> io::Result<u64> {
        match self {
            Caller::Blocking(c) => c.bulk(data.to_vec()).map_err(io_err),
            Caller::Async(rt, c) => rt.block_on(c.bulk(data.to_vec())).map_err(io_err),
        }
    }
    fn quit(&mut self) -> io::Result<()> {
        match self {
            Caller::Blocking(c) => c.quit().map_err(io_err),
            Caller::Async(rt, c) => rt.block_on(c.quit()).map_err(io_err),
        }
    }
}

impl RpcSystem for IpckitRpc {
    type Caller = Caller;

    fn address(&self, dir: &Path) -> io::Result<String> {
        let dir = crate::raw::path_arg(dir)?;
        Ok(match self.0 {
            Carrier::Local | Carrier::LocalSocket | Carrier::LocalAsync => {
                format!("{dir}|ncalrpc:[bench]")
            }
            Carrier::NamedPipe => format!(r"{dir}|ncacn_np:\\.[\pipe\bench]"),
            Carrier::Tcp => format!("|ncacn_ip_tcp:127.0.0.1[{}]", free_tcp_port()?),
        })
    }

    fn serve(&self, addr: &str, alive: &dyn Fn() -> io::Result<()>) -> io::Result<()> {
        let (ns, binding) = split(addr)?;
        let mut opts = ServerOptions::new();
        if let Some(ns) = ns {
            opts = opts.namespace(ns);
        }
        let stop = Arc::new(AtomicBool::new(false));
        // The async methods run on a one-worker runtime (kept alive until the server stopped).
        let mut rt = None;
        let dispatch = if matches!(self.0, Carrier::LocalAsync) {
            let r = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            opts = opts.runtime(r.handle().clone());
            rt = Some(r);
            BenchAsyncIfServer::new(AsyncImpl { stop: stop.clone() })
        } else {
            BenchIfServer::new(Impl { stop: stop.clone() })
        };
        let server = Server::new(opts, vec![dispatch]);
        server.listen(binding).map_err(io_err)?;
        let r = wait_quit(&stop, alive);
        server.stop();
        drop(rt);
        r
    }

    fn connect(&self, addr: &str) -> io::Result<Option<Caller>> {
        let (ns, binding) = split(addr)?;
        let mut opts =
            ClientOptions::new().local_shared_memory(!matches!(self.0, Carrier::LocalSocket));
        if let Some(ns) = ns {
            opts = opts.namespace(ns);
        }
        let r = if matches!(self.0, Carrier::LocalAsync) {
            let rt = crate::rpc::current_thread_runtime()?;
            rt.block_on(BenchAsyncIfAsyncClient::connect_with(&opts, binding))
                .map(|c| Caller::Async(rt, c))
        } else {
            BenchIfClient::connect_with(&opts, binding).map(Caller::Blocking)
        };
        match r {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.kind() == ipckit::ErrorKind::ServerUnavailable => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }
}
