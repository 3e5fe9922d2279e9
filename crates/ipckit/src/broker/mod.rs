//! The session broker: the per-user service that plays the parts of the Windows services a
//! mechanism cannot do without (the object manager's names for `ipckit ls`, the RPC endpoint
//! mapper, the window and DDE service lists, the COM class table).
//!
//! Status: the broker's core, [`registry`], is here: a state machine with no I/O that holds
//! the registrations, ties each to the connection that made it (a process that dies loses its
//! entries at once), notifies watchers and answers the endpoint mapper. The process around it
//! (`ipckit broker`, autostart, the embedded mode and the RPC interface clients use) is not
//! built yet; see the README's status table.
//!
//! Mechanisms that the file system and the kernel serve alone (file mappings, sync objects,
//! channels, local pipes, local mailslots) never need the broker.

pub mod registry;
mod service;

pub use service::{
    BINDING, BrokerApi, BrokerApiClient, BrokerClient, BrokerFault, BrokerServer, ChangeInfo,
    ClientInfo, ENDPOINT, EndpointMapper, EntryInfo, LOCK_FILE, START_TIMEOUT, StartError,
    StatusInfo, broker_binary, running_pid, socket_path,
};
