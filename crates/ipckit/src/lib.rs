//! ipckit: the nine Windows IPC mechanisms, natively on Linux.
//!
//! Clipboard, COM, Copy Data (`WM_COPYDATA`), DDE, File Mapping, Pipes, Mailslots, Sockets
//! and RPC, with the semantics a Windows programmer relies on: the same names, the same
//! lifetimes, the same error codes, locally and across the network.
//!
//! ```
//! use ipckit::name::Name;
//! use ipckit::namespace::{Location, Namespace};
//!
//! // Every name a Windows program uses is accepted as it is written...
//! let name = Name::parse(r"Local\frame-buffer")?;
//! // ...and lives at a documented place that other programs can open too.
//! let ns = Namespace::at("/run/user/1000/ipckit");
//! match ns.locate(&name)? {
//!     Location::Object { shm_name, .. } => assert!(shm_name.ends_with(".frame-buffer")),
//!     other => unreachable!("{other:?}"),
//! }
//! // Errors carry the code a ported program expects from GetLastError().
//! let err = Name::parse(r"\\.\pipe\..\escape").unwrap_err();
//! assert_eq!(err.win32_code(), 123); // ERROR_INVALID_NAME
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! # Layers
//!
//! - [`sys`]: the OS layer, the only code that makes system calls (Linux now; a Windows
//!   backend can sit beside it).
//! - [`name`] and [`namespace`]: Windows-style names, validated, and where they live.
//! - [`error`]: one error type with matchable kinds and `win32_code()`.
//! - The mechanisms, one module each, arrive on top of these (see the README's status table).
//!
//! # Status
//!
//! | mechanism | status |
//! | --- | --- |
//! | names, namespace folders, errors, OS layer | implemented |
//! | [`mapping`] (File Mapping) and [`sync`] (mutex, event, semaphore, wait for several) | implemented |
//! | [`channel`]: shared-memory message channels (ipckit's own fast local path) | implemented |
//! | [`pipe`]: anonymous and local named pipes, blocking and tokio, shared with chosen users | implemented; network form not yet |
//! | [`mailslot`]: local mailslots, blocking and tokio | implemented; network forms need the broker |
//! | [`rpc`]: typed RPC over `ncalrpc`, `ncacn_np` and `ncacn_ip_tcp` | implemented; TLS and the endpoint mapper not yet |
//! | Sockets, COM, DDE, Copy Data, Clipboard, the broker | not yet |
//!
//! Cargo feature `tokio`: async versions of the blocking calls (channels, pipes and mailslots so far).

// The RPC interfaces the crate itself declares (the broker's) expand to `::ipckit::...` paths.
extern crate self as ipckit;

pub mod broker;
pub mod channel;
pub mod error;
#[doc(hidden)]
pub mod macro_support;
pub mod mailslot;
pub mod mapping;
pub mod name;
pub mod namespace;
pub mod object;
pub mod pipe;
pub mod rpc;
pub mod sync;
pub mod sys;

pub use error::{Error, ErrorKind, Result};
