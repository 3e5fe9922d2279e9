//! The broker's registry: named entries tied to the connection that registered them, change
//! notifications, and the RPC endpoint mapper. A state machine with no I/O: the broker's driver
//! feeds it connections, requests and disconnections, and delivers the notifications it returns.
//!
//! ```
//! use ipckit::broker::registry::{ConnId, EntryKind, Limits, Registry};
//! use ipckit::pipe::PeerIdentity;
//!
//! let mut reg = Registry::new(Limits::default());
//! let (server, watcher) = (ConnId(1), ConnId(2));
//! let me = PeerIdentity { pid: 10, uid: 1000, gid: 1000 };
//! reg.connect(server, me)?;
//! reg.connect(watcher, PeerIdentity { pid: 11, ..me })?;
//! reg.watch(watcher, Some(EntryKind::DdeService), "")?;
//!
//! // A DDE server announces its service; the watcher hears of it.
//! let notes = reg.register(server, EntryKind::DdeService, "Excel", b"pipe=excel".to_vec(), true)?;
//! assert_eq!(notes.len(), 1);
//! assert_eq!(notes[0].to, watcher);
//! assert_eq!(reg.lookup(EntryKind::DdeService, "excel").unwrap().owner.pid, 10);
//!
//! // The server's process dies: its connection closes, its entries vanish at once.
//! let notes = reg.disconnect(server);
//! assert_eq!(notes.len(), 1);
//! assert!(reg.lookup(EntryKind::DdeService, "Excel").is_none());
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use crate::pipe::PeerIdentity;
use crate::rpc::{Binding, InterfaceId};
use crate::{Error, ErrorKind, Result};

/// A broker client connection, numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What an entry names. Windows keeps each of these in a different system service; the broker
/// keeps them in one registry with one lifetime rule.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum EntryKind {
    /// An RPC server's endpoint (the endpoint mapper's database, `ept_map`).
    RpcEndpoint,
    /// A message window (Copy Data's `FindWindow` targets).
    Window,
    /// A DDE service name (`DdeNameService`).
    DdeService,
    /// A COM class object (`CoRegisterClassObject`).
    ComClass,
    /// A running object (the Running Object Table, `IRunningObjectTable::Register`).
    RunningObject,
    /// A live named object another mechanism wants `ipckit ls` to show.
    NamedObject,
}

impl EntryKind {
    /// Every kind.
    pub const ALL: [EntryKind; 6] = [
        EntryKind::RpcEndpoint,
        EntryKind::Window,
        EntryKind::DdeService,
        EntryKind::ComClass,
        EntryKind::RunningObject,
        EntryKind::NamedObject,
    ];

    /// Whether names of this kind compare without regard to case, as Windows compares them
    /// (window class names, DDE service names, COM ProgIDs and monikers are case-insensitive;
    /// RPC endpoint keys and ipckit's object names are taken as they are).
    pub fn case_insensitive(self) -> bool {
        matches!(
            self,
            EntryKind::Window
                | EntryKind::DdeService
                | EntryKind::ComClass
                | EntryKind::RunningObject
        )
    }

    /// The kind's name in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::RpcEndpoint => "rpc-endpoint",
            EntryKind::Window => "window",
            EntryKind::DdeService => "dde-service",
            EntryKind::ComClass => "com-class",
            EntryKind::RunningObject => "running-object",
            EntryKind::NamedObject => "named-object",
        }
    }
}

/// Bounds on what clients may make the broker keep: every request is checked against them
/// before anything is stored, so no client can exhaust the broker for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest name, in bytes.
    pub max_name: usize,
    /// Largest value, in bytes.
    pub max_value: usize,
    /// Entries one connection may hold.
    pub max_entries_per_conn: usize,
    /// Entries in all.
    pub max_entries: usize,
    /// Watches one connection may hold.
    pub max_watches_per_conn: usize,
    /// Connections at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_name: 1024,
            max_value: 64 * 1024,
            max_entries_per_conn: 10_000,
            max_entries: 1_000_000,
            max_watches_per_conn: 64,
            max_connections: 4096,
        }
    }
}

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it names.
    pub kind: EntryKind,
    /// The name as registered (its case kept).
    pub name: String,
    /// Opaque data for whoever looks it up (a binding, a pipe name, a window's address).
    pub value: Vec<u8>,
    /// The registering connection.
    pub conn: ConnId,
    /// The registering process.
    pub owner: PeerIdentity,
    /// When it was registered.
    pub since: SystemTime,
}

/// A change a watcher asked to hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An entry appeared.
    Added(Entry),
    /// An entry went (unregistered, or its owner disconnected or died).
    Removed {
        /// Its kind.
        kind: EntryKind,
        /// Its name as registered.
        name: String,
        /// Its owner's connection.
        conn: ConnId,
    },
}

/// A notification for connection `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The watcher.
    pub to: ConnId,
    /// What changed.
    pub change: Change,
}

/// A watch: one kind (or all) and a name prefix (compared like the kind's names).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watch {
    kind: Option<EntryKind>,
    prefix: String,
}

#[derive(Debug)]
struct Conn {
    peer: PeerIdentity,
    since: SystemTime,
    entries: BTreeSet<(EntryKind, String)>,
    watches: Vec<Watch>,
}

/// What `ipckit broker --status` shows of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The connection.
    pub conn: ConnId,
    /// Its process.
    pub peer: PeerIdentity,
    /// How long it has been connected.
    pub age: Duration,
    /// Entries it holds.
    pub entries: usize,
    /// Watches it holds.
    pub watches: usize,
}

/// The registry (see the module docs).
#[derive(Debug)]
pub struct Registry {
    limits: Limits,
    /// Keyed by kind and folded name (see [`EntryKind::case_insensitive`]).
    entries: BTreeMap<(EntryKind, String), Entry>,
    conns: HashMap<ConnId, Conn>,
}

/// The key under which `name` of `kind` is stored.
fn fold(kind: EntryKind, name: &str) -> String {
    if kind.case_insensitive() {
        name.to_lowercase()
    } else {
        name.to_owned()
    }
}

fn too_large(what: &str, len: usize, max: usize) -> Error {
    Error::with_message(
        ErrorKind::InvalidParameter,
        format!("{what} of {len} bytes exceeds the broker's limit of {max}"),
    )
}

fn quota(what: &str, max: usize) -> Error {
    Error::with_message(
        ErrorKind::QuotaExceeded,
        format!("{what}: the broker's limit of {max} is reached"),
    )
}

fn unknown_conn(conn: ConnId) -> Error {
    Error::with_message(
        ErrorKind::InvalidParameter,
        format!("connection {} is not connected", conn.0),
    )
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: Limits) -> Registry {
        Registry {
            limits,
            entries: BTreeMap::new(),
            conns: HashMap::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A client connected ([`ErrorKind::QuotaExceeded`] past `max_connections`; the driver then
    /// closes the connection).
    pub fn connect(&mut self, conn: ConnId, peer: PeerIdentity) -> Result<()> {
        if self.conns.contains_key(&conn) {
            return Err(Error::with_message(
                ErrorKind::AlreadyExists,
                format!("connection {} is already connected", conn.0),
            ));
        }
        if self.conns.len() >= self.limits.max_connections {
            return Err(quota("connections", self.limits.max_connections));
        }
        self.conns.insert(
            conn,
            Conn {
                peer,
                since: SystemTime::now(),
                entries: BTreeSet::new(),
                watches: Vec::new(),
            },
        );
        Ok(())
    }

    /// A client's connection closed (the client left, or its process died): its entries go at
    /// once, and their watchers hear of it.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Notification> {
        let Some(c) = self.conns.remove(&conn) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for key in c.entries {
            if let Some(e) = self.entries.remove(&key) {
                self.notify_removed(&e, &mut out);
            }
        }
        out
    }

    /// Registers `name` of `kind` for `conn`. With `exclusive`, an existing entry of that name
    /// (held by anyone) makes it fail with [`ErrorKind::AlreadyExists`]; without, the caller's
    /// own entry of that name is replaced (another connection's still makes it fail).
    pub fn register(
        &mut self,
        conn: ConnId,
        kind: EntryKind,
        name: &str,
        value: Vec<u8>,
        exclusive: bool,
    ) -> Result<Vec<Notification>> {
        self.check_name(name)?;
        if value.len() > self.limits.max_value {
            return Err(too_large("a value", value.len(), self.limits.max_value));
        }
        let c = self.conns.get(&conn).ok_or_else(|| unknown_conn(conn))?;
        let key = (kind, fold(kind, name));
        let mut out = Vec::new();
        match self.entries.get(&key) {
            Some(e) if exclusive || e.conn != conn => {
                return Err(Error::with_message(
                    ErrorKind::AlreadyExists,
                    format!(
                        "{} {name:?} is already registered by process {}",
                        kind.as_str(),
                        e.owner.pid
                    ),
                ));
            }
            Some(_) => {
                let old = self.entries.remove(&key).expect("just seen");
                self.notify_removed(&old, &mut out);
            }
            None => {
                if c.entries.len() >= self.limits.max_entries_per_conn {
                    return Err(quota(
                        "entries of one connection",
                        self.limits.max_entries_per_conn,
                    ));
                }
                if self.entries.len() >= self.limits.max_entries {
                    return Err(quota("entries", self.limits.max_entries));
                }
            }
        }
        let entry = Entry {
            kind,
            name: name.to_owned(),
            value,
            conn,
            owner: c.peer,
            since: SystemTime::now(),
        };
        self.conns
            .get_mut(&conn)
            .expect("checked")
            .entries
            .insert(key.clone());
        self.notify(&entry, &mut out, |e| Change::Added(e.clone()));
        self.entries.insert(key, entry);
        Ok(out)
    }

    /// Removes `conn`'s entry `name` of `kind` ([`ErrorKind::NotFound`] if it holds none: another
    /// connection's entry cannot be removed).
    pub fn unregister(
        &mut self,
        conn: ConnId,
        kind: EntryKind,
        name: &str,
    ) -> Result<Vec<Notification>> {
        let key = (kind, fold(kind, name));
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or_else(|| unknown_conn(conn))?;
        if !c.entries.remove(&key) {
            return Err(Error::with_message(
                ErrorKind::NotFound,
                format!("this connection holds no {} {name:?}", kind.as_str()),
            ));
        }
        let mut out = Vec::new();
        if let Some(e) = self.entries.remove(&key) {
            self.notify_removed(&e, &mut out);
        }
        Ok(out)
    }

    /// The entry `name` of `kind`.
    pub fn lookup(&self, kind: EntryKind, name: &str) -> Option<&Entry> {
        self.entries.get(&(kind, fold(kind, name)))
    }

    /// Entries of `kind` (or all kinds) whose name starts with `prefix` (compared like the
    /// kind's names), in name order.
    pub fn list<'a>(
        &'a self,
        kind: Option<EntryKind>,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        let kinds: Vec<EntryKind> = kind.map_or_else(|| EntryKind::ALL.to_vec(), |k| vec![k]);
        kinds.into_iter().flat_map(move |k| {
            let p = fold(k, prefix);
            self.entries
                .range((k, p.clone())..)
                .take_while(move |((kk, name), _)| *kk == k && name.starts_with(&p))
                .map(|(_, e)| e)
        })
    }

    /// Asks for notifications of changes to entries of `kind` (or all kinds) whose name starts
    /// with `prefix`.
    pub fn watch(&mut self, conn: ConnId, kind: Option<EntryKind>, prefix: &str) -> Result<()> {
        self.check_name_len(prefix)?;
        let max = self.limits.max_watches_per_conn;
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or_else(|| unknown_conn(conn))?;
        if c.watches.len() >= max {
            return Err(quota("watches of one connection", max));
        }
        c.watches.push(Watch {
            kind,
            prefix: prefix.to_owned(),
        });
        Ok(())
    }

    /// Drops every watch of `conn`.
    pub fn unwatch_all(&mut self, conn: ConnId) -> Result<()> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or_else(|| unknown_conn(conn))?;
        c.watches.clear();
        Ok(())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The connections, for `--status`.
    pub fn connections(&self) -> Vec<ConnInfo> {
        let now = SystemTime::now();
        let mut v: Vec<ConnInfo> = self
            .conns
            .iter()
            .map(|(&conn, c)| ConnInfo {
                conn,
                peer: c.peer,
                age: now.duration_since(c.since).unwrap_or_default(),
                entries: c.entries.len(),
                watches: c.watches.len(),
            })
            .collect();
        v.sort_by_key(|c| c.conn);
        v
    }

    // --- the endpoint mapper ---

    /// Registers `binding` as an endpoint of `interface` (Windows: `RpcEpRegister`). The entry
    /// is an [`EntryKind::RpcEndpoint`] named by [`endpoint_key`], whose value is the binding.
    pub fn epm_register(
        &mut self,
        conn: ConnId,
        interface: &InterfaceId,
        binding: &Binding,
    ) -> Result<Vec<Notification>> {
        if binding.endpoint().is_none() {
            return Err(Error::with_message(
                ErrorKind::InvalidParameter,
                format!("{binding}: an endpoint mapper entry needs an endpoint"),
            ));
        }
        let key = endpoint_key(interface, binding);
        self.register(
            conn,
            EntryKind::RpcEndpoint,
            &key,
            binding.to_string().into_bytes(),
            false,
        )
    }

    /// Resolves a binding without endpoint for `interface` (Windows: the endpoint mapper's
    /// `ept_map`): among the registered endpoints of the interface's UUID with the same major
    /// version, a minor version at least the client's, and the binding's protocol sequence, the
    /// most recently registered. `None` when there is none (`EPT_S_NOT_REGISTERED`, 1753).
    pub fn epm_resolve(&self, interface: &InterfaceId, binding: &Binding) -> Option<Binding> {
        let prefix = format!("{}/{}.", interface.uuid, interface.major);
        self.list(Some(EntryKind::RpcEndpoint), &prefix)
            .filter_map(|e| {
                let rest = &e.name[prefix.len()..];
                let mut parts = rest.splitn(3, '/');
                let (minor, protseq) = (parts.next()?, parts.next()?);
                let minor: u16 = minor.parse().ok()?;
                let b = Binding::parse(std::str::from_utf8(&e.value).ok()?).ok()?;
                (minor >= interface.minor && protseq == binding.protseq().to_string())
                    .then_some((e.since, b))
            })
            .max_by_key(|(since, _)| *since)
            .map(|(_, b)| b)
    }

    fn check_name_len(&self, name: &str) -> Result<()> {
        if name.len() > self.limits.max_name {
            return Err(too_large("a name", name.len(), self.limits.max_name));
        }
        Ok(())
    }

    fn check_name(&self, name: &str) -> Result<()> {
        self.check_name_len(name)?;
        if name.is_empty() || name.contains('\0') {
            return Err(Error::with_message(
                ErrorKind::InvalidName,
                "a registry name must be non-empty and contain no NUL",
            ));
        }
        Ok(())
    }

    fn notify_removed(&self, e: &Entry, out: &mut Vec<Notification>) {
        self.notify(e, out, |e| Change::Removed {
            kind: e.kind,
            name: e.name.clone(),
            conn: e.conn,
        });
    }

    /// Adds a notification for every connection with a watch that covers `e`.
    fn notify(&self, e: &Entry, out: &mut Vec<Notification>, change: impl Fn(&Entry) -> Change) {
        let folded = fold(e.kind, &e.name);
        let mut to: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.watches.iter().any(|w| {
                    w.kind.is_none_or(|k| k == e.kind)
                        && folded.starts_with(&fold(e.kind, &w.prefix))
                })
            })
            .map(|(&id, _)| id)
            .collect();
        to.sort();
        out.extend(to.into_iter().map(|to| Notification {
            to,
            change: change(e),
        }));
    }
}

/// The registry name of an endpoint mapper entry: `UUID/MAJOR.MINOR/PROTSEQ/ENDPOINT`.
pub fn endpoint_key(interface: &InterfaceId, binding: &Binding) -> String {
    format!(
        "{}/{}.{}/{}/{}",
        interface.uuid,
        interface.major,
        interface.minor,
        binding.protseq(),
        binding.endpoint().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::Uuid;
    use proptest::prelude::*;

    fn peer(pid: u32) -> PeerIdentity {
        PeerIdentity {
            pid,
            uid: 1000,
            gid: 1000,
        }
    }

    #[test]
    fn names_compare_like_windows_per_kind() {
        let mut r = Registry::new(Limits::default());
        r.connect(ConnId(1), peer(1)).unwrap();
        r.register(ConnId(1), EntryKind::Window, "MyWnd", vec![], true)
            .unwrap();
        assert!(r.lookup(EntryKind::Window, "mywnd").is_some());
        r.register(ConnId(1), EntryKind::NamedObject, "Obj", vec![], true)
            .unwrap();
        assert!(r.lookup(EntryKind::NamedObject, "obj").is_none());
        // Same name, other kind: independent.
        r.register(ConnId(1), EntryKind::DdeService, "MyWnd", vec![], true)
            .unwrap();
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn conflicts_replacement_and_foreign_entries() {
        let mut r = Registry::new(Limits::default());
        r.connect(ConnId(1), peer(1)).unwrap();
        r.connect(ConnId(2), peer(2)).unwrap();
        r.register(ConnId(1), EntryKind::ComClass, "A", b"1".to_vec(), true)
            .unwrap();
        let e = r
            .register(ConnId(2), EntryKind::ComClass, "a", vec![], false)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        let e = r
            .register(ConnId(1), EntryKind::ComClass, "A", vec![], true)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        r.register(ConnId(1), EntryKind::ComClass, "A", b"2".to_vec(), false)
            .unwrap();
        assert_eq!(r.lookup(EntryKind::ComClass, "A").unwrap().value, b"2");
        let e = r
            .unregister(ConnId(2), EntryKind::ComClass, "A")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn limits_refuse_before_storing() {
        let limits = Limits {
            max_name: 8,
            max_value: 4,
            max_entries_per_conn: 2,
            max_entries: 3,
            max_watches_per_conn: 1,
            max_connections: 3,
        };
        let mut r = Registry::new(limits);
        for i in 1..=3 {
            r.connect(ConnId(i), peer(i as u32)).unwrap();
        }
        assert_eq!(
            r.connect(ConnId(4), peer(4)).unwrap_err().kind(),
            ErrorKind::QuotaExceeded
        );
        let k = EntryKind::NamedObject;
        assert_eq!(
            r.register(ConnId(1), k, "123456789", vec![], true)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidParameter
        );
        assert_eq!(
            r.register(ConnId(1), k, "a", vec![0; 5], true)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidParameter
        );
        for bad in ["", "a\0b"] {
            assert_eq!(
                r.register(ConnId(1), k, bad, vec![], true)
                    .unwrap_err()
                    .kind(),
                ErrorKind::InvalidName
            );
        }
        r.register(ConnId(1), k, "a", vec![], true).unwrap();
        r.register(ConnId(1), k, "b", vec![], true).unwrap();
        assert_eq!(
            r.register(ConnId(1), k, "c", vec![], true)
                .unwrap_err()
                .kind(),
            ErrorKind::QuotaExceeded
        );
        r.register(ConnId(2), k, "c", vec![], true).unwrap();
        assert_eq!(
            r.register(ConnId(2), k, "d", vec![], true)
                .unwrap_err()
                .kind(),
            ErrorKind::QuotaExceeded
        );
        r.watch(ConnId(3), None, "").unwrap();
        assert_eq!(
            r.watch(ConnId(3), None, "x").unwrap_err().kind(),
            ErrorKind::QuotaExceeded
        );
        assert_eq!(r.len(), 3);
        // Nothing was stored for the refused requests, and an unknown connection is refused.
        assert_eq!(
            r.register(ConnId(9), k, "z", vec![], true)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidParameter
        );
    }

    #[test]
    fn endpoint_mapper_follows_rpc_version_rules() {
        let mut r = Registry::new(Limits::default());
        r.connect(ConnId(1), peer(1)).unwrap();
        r.connect(ConnId(2), peer(2)).unwrap();
        let uuid = Uuid::parse("12345678-1234-1234-1234-123456789abc").unwrap();
        let v = |major, minor| InterfaceId::new(uuid, major, minor);
        let tcp = Binding::parse("ncacn_ip_tcp:127.0.0.1[4747]").unwrap();
        let local = Binding::parse("ncalrpc:[calc]").unwrap();
        r.epm_register(ConnId(1), &v(1, 2), &tcp).unwrap();
        r.epm_register(ConnId(2), &v(1, 0), &local).unwrap();
        let want_tcp = Binding::parse("ncacn_ip_tcp:127.0.0.1").unwrap();
        let want_local = Binding::parse("ncalrpc:").unwrap();
        assert_eq!(r.epm_resolve(&v(1, 1), &want_tcp), Some(tcp.clone()));
        assert_eq!(r.epm_resolve(&v(1, 3), &want_tcp), None); // server minor too old
        assert_eq!(r.epm_resolve(&v(2, 0), &want_tcp), None); // major differs
        assert_eq!(r.epm_resolve(&v(1, 0), &want_local), Some(local));
        assert_eq!(r.epm_resolve(&v(1, 1), &want_local), None);
        assert!(
            r.epm_register(ConnId(1), &v(1, 0), &want_tcp).is_err(),
            "no endpoint"
        );
        r.disconnect(ConnId(1));
        assert_eq!(r.epm_resolve(&v(1, 0), &want_tcp), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Connect(u64),
        Disconnect(u64),
        Register(u64, EntryKind, u8, bool),
        Unregister(u64, EntryKind, u8),
        Watch(u64, Option<EntryKind>, u8),
    }

    fn kind() -> impl Strategy<Value = EntryKind> {
        prop::sample::select(EntryKind::ALL.to_vec())
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u64).prop_map(Op::Connect),
            (0..4u64).prop_map(Op::Disconnect),
            (0..4u64, kind(), 0..6u8, any::<bool>())
                .prop_map(|(c, k, n, x)| Op::Register(c, k, n, x)),
            (0..4u64, kind(), 0..6u8).prop_map(|(c, k, n)| Op::Unregister(c, k, n)),
            (0..4u64, prop::option::of(kind()), 0..3u8).prop_map(|(c, k, p)| Op::Watch(c, k, p)),
        ]
    }

    /// Names "Aa0".."Aa5" with mixed case, so case-insensitive kinds collide where they should.
    fn name(n: u8) -> String {
        if n.is_multiple_of(2) {
            format!("Aa{}", n / 2)
        } else {
            format!("aA{}", n / 2)
        }
    }

    proptest! {
        /// Against a simple model: every entry belongs to a connected connection, a
        /// disconnection removes exactly its entries, and every watcher hears of every change it
        /// covers, once.
        #[test]
        fn registry_follows_its_model(ops in prop::collection::vec(op(), 1..80)) {
            let mut r = Registry::new(Limits::default());
            // model: (kind, folded name) -> owner
            let mut model: BTreeMap<(EntryKind, String), u64> = BTreeMap::new();
            let mut connected: BTreeSet<u64> = BTreeSet::new();
            let mut watches: BTreeMap<u64, Vec<(Option<EntryKind>, String)>> = BTreeMap::new();
            let expect_to = |watches: &BTreeMap<u64, Vec<(Option<EntryKind>, String)>>, k: EntryKind, folded: &str| {
                watches.iter().filter(|(_, ws)| ws.iter().any(|(wk, p)| wk.is_none_or(|x| x == k) && folded.starts_with(&fold(k, p))))
                    .map(|(&c, _)| ConnId(c)).collect::<Vec<_>>()
            };
            for op in ops {
                match op {
                    Op::Connect(c) => {
                        let res = r.connect(ConnId(c), peer(c as u32));
                        prop_assert_eq!(res.is_ok(), connected.insert(c));
                    }
                    Op::Disconnect(c) => {
                        let notes = r.disconnect(ConnId(c));
                        let gone: Vec<_> = model.iter().filter(|(_, o)| **o == c).map(|(k, _)| k.clone()).collect();
                        connected.remove(&c);
                        watches.remove(&c);
                        let mut expected = 0;
                        for key in &gone {
                            model.remove(key);
                            expected += expect_to(&watches, key.0, &key.1).len();
                        }
                        prop_assert_eq!(notes.len(), expected);
                        let all_removals_to_others = notes
                            .iter()
                            .all(|n| matches!(n.change, Change::Removed { .. }) && n.to != ConnId(c));
                        prop_assert!(all_removals_to_others);
                    }
                    Op::Register(c, k, n, exclusive) => {
                        let nm = name(n);
                        let key = (k, fold(k, &nm));
                        let res = r.register(ConnId(c), k, &nm, vec![n], exclusive);
                        let ok = connected.contains(&c) && match model.get(&key) {
                            None => true,
                            Some(&o) => !exclusive && o == c,
                        };
                        prop_assert_eq!(res.is_ok(), ok, "{:?}", res);
                        if let Ok(notes) = res {
                            let replaced = model.insert(key.clone(), c).is_some();
                            let per = expect_to(&watches, k, &key.1).len();
                            prop_assert_eq!(notes.len(), per * (1 + usize::from(replaced)));
                        }
                    }
                    Op::Unregister(c, k, n) => {
                        let nm = name(n);
                        let key = (k, fold(k, &nm));
                        let res = r.unregister(ConnId(c), k, &nm);
                        let ok = connected.contains(&c) && model.get(&key) == Some(&c);
                        prop_assert_eq!(res.is_ok(), ok);
                        if let Ok(notes) = res {
                            model.remove(&key);
                            prop_assert_eq!(notes.len(), expect_to(&watches, k, &key.1).len());
                        }
                    }
                    Op::Watch(c, k, p) => {
                        let prefix = ["", "a", "Aa1"][p as usize].to_owned();
                        let res = r.watch(ConnId(c), k, &prefix);
                        prop_assert_eq!(res.is_ok(), connected.contains(&c));
                        if res.is_ok() {
                            watches.entry(c).or_default().push((k, prefix));
                        }
                    }
                }
                prop_assert_eq!(r.len(), model.len());
                for ((k, folded), owner) in &model {
                    let e = r.lookup(*k, folded).unwrap();
                    prop_assert_eq!(e.conn, ConnId(*owner));
                    prop_assert!(connected.contains(owner));
                }
                let listed = r.list(None, "").count();
                prop_assert_eq!(listed, model.len());
            }
        }
    }
}
