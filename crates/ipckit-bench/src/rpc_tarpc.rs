//! `tarpc-unix`, `tarpc-tcp`: the tarpc crate (serde transport, bincode, length-delimited
//! frames) over a Unix socket and TCP loopback; see [`crate::rpc`] for the cases.
//!
//! The service is `#[tarpc::service]` with the same three methods as ipckit's benchmark
//! interface. Both sides run a current-thread tokio runtime (the lowest latency tokio offers
//! one connection): the server spawns each request as a task, as tarpc's own examples do; the
//! harness blocks on each call. The bulk argument is a `Vec<u8>` passed by value (cloned per
//! call, as for ipckit).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::Either;
use futures::prelude::*;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context};
use tokio::runtime::Runtime;

use crate::rpc::{RpcCaller, RpcSystem};

/// The benchmark service.
#[tarpc::service]
pub trait BenchSvc {
    /// Answers `x`.
    async fn null(x: u64) -> u64;
    /// Answers the argument's length.
    async fn bulk(data: Vec<u8>) -> u64;
    /// Lets the server process exit.
    async fn quit();
}

#[derive(Clone)]
struct Srv(Arc<AtomicBool>);

impl BenchSvc for Srv {
    async fn null(self, _: context::Context, x: u64) -> u64 {
        x
    }
    async fn bulk(self, _: context::Context, data: Vec<u8>) -> u64 {
        data.len() as u64
    }
    async fn quit(self, _: context::Context) {
        self.0.store(true, Ordering::Release);
    }
}

/// Which carrier.
pub use crate::rpc::SocketCarrier as Carrier;

/// A `tarpc-*` benchmark.
#[derive(Debug, Clone, Copy)]
pub struct Tarpc(pub Carrier);

use crate::rpc::{current_thread_runtime as runtime, io_other as other};

/// The client: a tarpc client on its own current-thread runtime.
#[derive(Debug)]
pub struct Caller {
    rt: Runtime,
    c: BenchSvcClient,
}

impl RpcCaller for Caller {
    fn null(&mut self, x: u64) -> io::Result<u64> {
        self.rt
            .block_on(self.c.null(context::current(), x))
            .map_err(other)
    }
    fn bulk(&mut self, data: &Arc<Vec<u8>>) -> io::Result<u64> {
        self.rt
            .block_on(self.c.bulk(context::current(), data.to_vec()))
            .map_err(other)
    }
    fn quit(&mut self) -> io::Result<()> {
        self.rt
            .block_on(self.c.quit(context::current()))
            .map_err(other)
    }
}

/// Serves every connection from `incoming` until `stop` is set or `alive` fails.
async fn serve_all<S, T>(
    incoming: S,
    stop: Arc<AtomicBool>,
    alive: &dyn Fn() -> io::Result<()>,
) -> io::Result<()>
where
    S: Stream<Item = io::Result<T>>,
    T: tarpc::Transport<tarpc::Response<BenchSvcResponse>, tarpc::ClientMessage<BenchSvcRequest>>
        + Send
        + 'static,
{
    let srv = Srv(stop.clone());
    let accept = incoming
        .filter_map(|r| future::ready(r.ok()))
        .map(BaseChannel::with_defaults)
        .for_each(move |ch| {
            let srv = srv.clone();
            tokio::spawn(ch.execute(srv.serve()).for_each(|call| async {
                tokio::spawn(call);
            }));
            future::ready(())
        });
    let quit = async {
        while !stop.load(Ordering::Acquire) {
            alive()?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    };
    tokio::select! {
        () = accept => Err(io::Error::other("the listener ended")),
        r = quit => r,
    }
}

impl RpcSystem for Tarpc {
    type Caller = Caller;

    fn address(&self, dir: &Path) -> io::Result<String> {
        self.0.address(dir, "tarpc.sock")
    }

    fn serve(&self, addr: &str, alive: &dyn Fn() -> io::Result<()>) -> io::Result<()> {
        let rt = runtime()?;
        let stop = Arc::new(AtomicBool::new(false));
        rt.block_on(async {
            match self.0 {
                Carrier::Unix => {
                    let incoming =
                        tarpc::serde_transport::unix::listen(addr, Bincode::default).await?;
                    serve_all(incoming, stop, alive).await
                }
                Carrier::Tcp => {
                    let incoming =
                        tarpc::serde_transport::tcp::listen(addr, Bincode::default).await?;
                    // Answers are written as soon as they are ready (no Nagle delay).
                    let incoming = incoming.map(|t| {
                        let t = t?;
                        t.get_ref().set_nodelay(true)?;
                        Ok(t)
                    });
                    serve_all(incoming, stop, alive).await
                }
            }
        })
    }

    fn connect(&self, addr: &str) -> io::Result<Option<Caller>> {
        let rt = runtime()?;
        let transport = rt.block_on(async {
            match self.0 {
                Carrier::Unix => tarpc::serde_transport::unix::connect(addr, Bincode::default)
                    .await
                    .map(Either::Left),
                Carrier::Tcp => {
                    let t = tarpc::serde_transport::tcp::connect(addr, Bincode::default).await?;
                    t.get_ref().set_nodelay(true)?;
                    Ok(Either::Right(t))
                }
            }
        });
        let transport = match crate::rpc::not_yet(transport)? {
            Some(t) => t,
            None => return Ok(None),
        };
        let c = {
            let _guard = rt.enter();
            match transport {
                Either::Left(t) => BenchSvcClient::new(client::Config::default(), t).spawn(),
                Either::Right(t) => BenchSvcClient::new(client::Config::default(), t).spawn(),
            }
        };
        Ok(Some(Caller { rt, c }))
    }
}
