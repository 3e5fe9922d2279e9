//! The async (tokio) RPC client.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::InterfaceId;
use super::client::{CallError, Client, ClientOptions, decode_reply, encode};
use crate::error::{Error, ErrorKind, Result};

/// An async RPC client (feature `tokio`).
///
/// Windows counterpart: asynchronous RPC (`RpcAsyncInitializeHandle`, `RpcAsyncCompleteCall`,
/// `RpcAsyncCancelCall`). Calls run on tokio's blocking threads over a shared [`Client`], so
/// many may be in flight at once; the client's timeout ([`ClientOptions::timeout`]) cancels a
/// call on the server. Difference: dropping the future does not cancel the call on the server
/// (it finishes and its answer is discarded); use a timeout for that.
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

    /// Calls `opnum` with `args` and decodes the result (see [`Client::call`]).
    pub async fn call<A: Serialize, T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        opnum: u16,
        args: &A,
    ) -> std::result::Result<T, CallError<E>> {
        let bytes = encode(args)?;
        let c = self.inner.clone();
        let reply = tokio::task::spawn_blocking(move || c.call_raw(opnum, &bytes, false))
            .await
            .map_err(join_error)??;
        decode_reply(&reply)
    }

    /// Sends a one-way call.
    pub async fn call_oneway<A: Serialize>(&self, opnum: u16, args: &A) -> Result<()> {
        let bytes = encode(args)?;
        let c = self.inner.clone();
        tokio::task::spawn_blocking(move || c.call_raw(opnum, &bytes, true).map(|_| ()))
            .await
            .map_err(join_error)?
    }
}
