//! RPC: typed remote procedure calls between processes, as MS-RPC (DCE/RPC) offers them.
//!
//! ```
//! use ipckit::rpc::{Binding, InterfaceId, Uuid};
//!
//! let calc = InterfaceId::new(Uuid::parse("6b29fc40-ca47-1067-b31d-00dd010662da")?, 1, 0);
//! let b = Binding::parse("ncalrpc:[calc]")?;
//! assert_eq!(b.endpoint(), Some("calc"));
//! assert_eq!(calc.to_string(), "6b29fc40-ca47-1067-b31d-00dd010662da v1.0");
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! Carriers: `ncalrpc` (a Unix socket in the user's private folder, over which client and server
//! agree to move the connection onto a pair of shared-memory channels, see
//! [`ClientOptions::local_shared_memory`]), `ncacn_np` (ipckit named pipes) and `ncacn_ip_tcp`
//! (TCP). With the feature `tls`, `ncacn_ip_tcp` can speak TLS 1.2/1.3
//! (rustls): `ServerOptions::tls` with a `TlsServerConfig`, `ClientOptions::tls` with a
//! `TlsClientConfig` (a pinned server certificate or a CA), and the client's certificate in
//! [`Caller::peer_certificate`]. The wire format is in `docs/protocol/rpc.md`.

#[cfg(feature = "tokio")]
mod asynch;
pub mod binding;
mod client;
mod context;
mod link;
pub mod proto;
mod server;
mod shm;
#[cfg(feature = "tls")]
mod tls;
mod uuid;

pub use binding::{Binding, Protseq, Resolver};
pub use client::{CallError, Client, ClientOptions, decode, decode_reply, encode};
pub use context::{CallContext, Caller, ContextHandle};
pub(crate) use link::lrpc_component as link_component;
pub use link::{LocalEndpoint, local_endpoints};
pub use proto::{Outcome, Reply};
pub use server::{CallFuture, Dispatch, Server, ServerOptions, outcome};
pub use uuid::Uuid;

#[cfg(feature = "tls")]
pub use server::{MAX_TLS_HANDSHAKES, TLS_HANDSHAKE_TIMEOUT};
#[cfg(feature = "tls")]
pub use tls::{TlsClientConfig, TlsServerConfig, pem_certificates, pem_private_key};

#[cfg(feature = "tokio")]
pub use asynch::AsyncClient;
pub use ipckit_macros::interface;

/// Expands its input only when ipckit's `tokio` feature is on (used by the code that
/// `#[interface]` generates for the async client).
#[cfg(feature = "tokio")]
#[doc(hidden)]
#[macro_export]
macro_rules! __rpc_if_tokio {
    ($($t:tt)*) => { $($t)* };
}

/// Expands its input only when ipckit's `tokio` feature is on (used by the code that
/// `#[interface]` generates for the async client).
#[cfg(not(feature = "tokio"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __rpc_if_tokio {
    ($($t:tt)*) => {};
}

use std::fmt;

/// An interface's identity: its UUID and version.
///
/// Windows counterpart: `RPC_IF_ID` (the `uuid` and `version` attributes of an IDL
/// interface). A client binds only if the major versions are equal and the server's minor
/// version is at least the client's; otherwise the bind fails with `RPC_S_UNKNOWN_IF` (1717).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InterfaceId {
    /// The interface UUID.
    pub uuid: Uuid,
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

impl InterfaceId {
    /// An interface id.
    pub const fn new(uuid: Uuid, major: u16, minor: u16) -> InterfaceId {
        InterfaceId { uuid, major, minor }
    }
}

impl fmt::Display for InterfaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}.{}", self.uuid, self.major, self.minor)
    }
}
