//! The async (tokio) RPC client: calls that are cancelled on the server when their future is
//! dropped.
//!
//! ```
//! use std::time::Duration;
//! use ipckit::rpc::{self, CallContext, ClientOptions, Server, ServerOptions};
//!
//! #[rpc::interface(uuid = "0f6d1f3e-2c4b-4a59-8e7d-5b1a9c3e7f20")]
//! pub trait Slow {
//!     /// Waits until the caller gives up; says whether it saw that.
//!     async fn wait(&self, ctx: &CallContext) -> bool;
//! }
//! struct Impl;
//! impl Slow for Impl {
//!     async fn wait(&self, ctx: &CallContext) -> bool {
//!         ctx.cancelled().await;
//!         true
//!     }
//! }
//!
//! # fn main() -> ipckit::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("ipckit-doc-asynch-{}", std::process::id()));
//! # let ns = ipckit::namespace::Namespace::at(&dir);
//! let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
//! // Async methods run on this runtime.
//! let opts = ServerOptions::new().namespace(ns.clone()).runtime(rt.handle().clone());
//! let server = Server::new(opts, vec![SlowServer::new(Impl)]);
//! let b = server.listen("ncalrpc:[doc-async]")?.to_string();
//! rt.block_on(async {
//!     let c = SlowAsyncClient::connect_with(&ClientOptions::new().namespace(ns), &b).await?;
//!     // Giving up drops the call's future: the call is cancelled on the server.
//!     let r = tokio::time::timeout(Duration::from_millis(50), c.wait()).await;
//!     assert!(r.is_err());
//!     Ok::<(), ipckit::Error>(())
//! })?;
//! server.stop(); // RpcMgmtStopServerListening + RpcMgmtWaitServerListen
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::InterfaceId;
use super::client::{CallError, Client, ClientOptions, decode_reply};
use super::proto::{Reply, pool};
use crate::error::{Error, ErrorKind, Result};

/// An async RPC client (feature `tokio`).
///
/// Windows counterpart: asynchronous RPC (`RpcAsyncInitializeHandle`, `RpcAsyncCompleteCall`,
/// and `RpcAsyncCancelCall` with `fAbort = TRUE`). Many calls may be in flight at once on the
/// one connection. Dropping a call's future before its answer (a `tokio::time::timeout`, a
/// `select!` that took another branch, an aborted task) cancels the call: the server is sent
/// the protocol's cancel frame, the method sees
/// [`CallContext::is_cancelled`](super::CallContext::is_cancelled), and the connection goes on
/// serving the client's other calls. The client's timeout ([`ClientOptions::timeout`]) cancels
/// in the same way. A waiting call holds no thread: a call waiting alone first looks for its
/// answer itself for up to 20 µs (yielding to the runtime between looks: a fast answer then
/// costs no thread hop), then one blocking task per connection reads (or a blocking call of
/// the [`Client`] sharing it does) and wakes the waiting calls.
/// Requests up to 64 KiB are sent from the calling task; larger ones from a blocking task.
/// Difference: there is no separate cancel call (dropping the future is it).
#[derive(Debug, Clone)]
pub struct AsyncClient {
    inner: Client,
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::with_message(
        ErrorKind::CallFailed,
        format!("the call's task failed: {e}"),
    )
}

/// Requests up to this size are sent from the calling task (a send that short does not wait
/// for the server in practice); larger ones from a blocking task.
const INLINE_SEND: usize = 64 * 1024;

/// Where a call of an [`AsyncClient`] stands, shared by its future and the task sending it.
enum Slot {
    /// Not sent yet.
    Unsent,
    /// Sent with this id, answer awaited.
    Sent(u32),
    /// The future was dropped: cancel (or do not send).
    Abandoned,
    /// Answered.
    Done,
}

/// Cancels the call when the future holding it is dropped before the answer, and counts it
/// out of the connection's waiting async calls.
struct CancelOnDrop {
    client: Client,
    slot: Arc<Mutex<Slot>>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let mut s = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match *s {
            Slot::Sent(id) => {
                *s = Slot::Abandoned;
                drop(s);
                tracing::debug!("rpc: call {id} dropped by its caller: cancelling it");
                self.client.cancel(id);
            }
            Slot::Unsent => *s = Slot::Abandoned,
            Slot::Abandoned | Slot::Done => {}
        }
        self.client.async_calls(-1);
    }
}

impl AsyncClient {
    /// Connects and binds (see [`ClientOptions::connect`]).
    pub async fn connect(
        opts: &ClientOptions,
        binding: &str,
        iface: InterfaceId,
    ) -> Result<AsyncClient> {
        let opts = opts.clone();
        let binding = binding.to_owned();
        let inner = tokio::task::spawn_blocking(move || opts.connect(&binding, iface))
            .await
            .map_err(join_error)??;
        Ok(AsyncClient { inner })
    }

    /// The blocking client underneath (sharing the connection).
    pub fn blocking(&self) -> &Client {
        &self.inner
    }

    /// Calls `opnum` with encoded `args`; the reply's encoded body (see [`Client::call_raw`]).
    /// Dropping the future before it completes cancels the call on the server.
    pub async fn call_raw(&self, opnum: u16, args: Vec<u8>) -> Result<Reply> {
        let c = &self.inner;
        let timeout = c.timeout();
        // The deadline runs from before the request goes out, so that it never falls after the
        // server's (which runs from the request's arrival).
        let began = std::time::Instant::now();
        let slot = Arc::new(Mutex::new(Slot::Unsent));
        c.async_calls(1);
        let _guard = CancelOnDrop {
            client: c.clone(),
            slot: slot.clone(),
        };
        if args.len() <= INLINE_SEND {
            let id = c.start(opnum, &args, false, timeout);
            pool::give(args);
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Slot::Sent(id?);
        } else {
            let (c, slot) = (c.clone(), slot.clone());
            tokio::task::spawn_blocking(move || {
                let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
                if matches!(*s, Slot::Abandoned) {
                    return Ok(());
                }
                // Sent under the slot's lock: a drop meanwhile waits for the id, then
                // cancels the call.
                let id = c.start(opnum, &args, false, timeout);
                pool::give(args);
                *s = Slot::Sent(id?);
                Ok::<(), Error>(())
            })
            .await
            .map_err(join_error)??;
        }
        let Slot::Sent(id) = *slot.lock().unwrap_or_else(|e| e.into_inner()) else {
            return Err(Error::with_message(
                ErrorKind::CallFailed,
                "the call was not sent",
            ));
        };
        let r = c.wait_async(id, opnum, timeout, began).await;
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Slot::Done;
        r
    }

    /// Calls `opnum` with `args` and decodes the result (see [`Client::call`]). Dropping the
    /// future before it completes cancels the call on the server.
    pub async fn call<A: Serialize, T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        opnum: u16,
        args: &A,
    ) -> std::result::Result<T, CallError<E>> {
        let bytes = encode_pooled(args)?;
        let reply = self.call_raw(opnum, bytes).await?;
        decode_reply(&reply)
    }

    /// Sends a one-way call.
    pub async fn call_oneway<A: Serialize>(&self, opnum: u16, args: &A) -> Result<()> {
        let bytes = encode_pooled(args)?;
        if bytes.len() <= INLINE_SEND {
            let r = self.inner.call_raw(opnum, &bytes, true).map(|_| ());
            pool::give(bytes);
            return r;
        }
        let c = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let r = c.call_raw(opnum, &bytes, true).map(|_| ());
            pool::give(bytes);
            r
        })
        .await
        .map_err(join_error)?
    }
}

/// Encodes `args` into a kept large buffer if there is one (given back once the request is
/// out): a fresh buffer of a megabyte is a fresh mapping whose pages fault in one by one.
fn encode_pooled<A: Serialize + ?Sized>(args: &A) -> Result<Vec<u8>> {
    let mut buf = pool::take(0).unwrap_or_default();
    buf.clear();
    postcard::to_extend(args, buf).map_err(|e| {
        Error::with_message(ErrorKind::InvalidParameter, format!("cannot encode: {e}"))
    })
}
