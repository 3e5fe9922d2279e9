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

pub mod binding;
pub mod proto;
mod uuid;

pub use binding::{Binding, Protseq, Resolver};
pub use uuid::Uuid;

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
