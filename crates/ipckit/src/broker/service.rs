//! The broker as an RPC service: its interface, the server side around the [`Registry`], the
//! embedded mode, and the client with autostart and automatic re-registration.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::registry::{Change, ConnId, Entry, EntryKind, Limits, Registry};
use crate::namespace::Namespace;
use crate::pipe::PeerIdentity;
use crate::rpc::{
    self, Binding, CallContext, CallError, ClientOptions, ContextHandle, InterfaceId, Server,
    ServerOptions, Uuid,
};
use crate::sys::file::{try_lock_exclusive, unlock};
use crate::{Error, ErrorKind, Result};

/// The `ncalrpc` endpoint the broker listens on (a socket in the user's private runtime folder).
pub const ENDPOINT: &str = "ipckit-broker";
/// The binding of [`ENDPOINT`].
pub const BINDING: &str = "ncalrpc:[ipckit-broker]";
/// The file whose lock makes the broker one per user (and names its pid).
pub const LOCK_FILE: &str = "broker.lock";
/// How long a client waits for a broker it started.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Changes queued for one watcher before the oldest are dropped (the watcher is told, and
/// lists again).
const MAX_QUEUED_CHANGES: usize = 10_000;
/// Longest a `changes` call waits.
const MAX_CHANGES_WAIT: Duration = Duration::from_secs(30);

/// An entry as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// What it names.
    pub kind: EntryKind,
    /// Its name as registered.
    pub name: String,
    /// Its value.
    pub value: Vec<u8>,
    /// The registering process.
    pub pid: u32,
    /// The registering user.
    pub uid: u32,
    /// Milliseconds since it was registered.
    pub age_ms: u64,
}

impl EntryInfo {
    fn of(e: &Entry) -> EntryInfo {
        EntryInfo {
            kind: e.kind,
            name: e.name.clone(),
            value: e.value.clone(),
            pid: e.owner.pid,
            uid: e.owner.uid,
            age_ms: SystemTime::now()
                .duration_since(e.since)
                .unwrap_or_default()
                .as_millis() as u64,
        }
    }
}

/// A change, as watchers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeInfo {
    /// An entry appeared.
    Added(EntryInfo),
    /// An entry went.
    Removed {
        /// Its kind.
        kind: EntryKind,
        /// Its name.
        name: String,
    },
    /// Changes were dropped because the watcher fell behind: list again.
    Overflow,
}

/// One connection, as `ipckit broker --status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The client's process.
    pub pid: u32,
    /// Its entries.
    pub entries: u64,
    /// Its watches.
    pub watches: u64,
}

/// `ipckit broker --status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The broker's pid.
    pub pid: u32,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Its version.
    pub version: String,
    /// Entries held.
    pub entries: u64,
    /// Connected clients (with a session).
    pub clients: Vec<ClientInfo>,
}

/// A refusal, carried as the RPC call's typed application error; [`BrokerFault::into_error`]
/// turns it back into the [`ErrorKind`] the broker gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerFault {
    /// The Windows code of the error kind.
    pub code: u32,
    /// The message.
    pub message: String,
}

impl From<Error> for BrokerFault {
    fn from(e: Error) -> BrokerFault {
        BrokerFault {
            code: e.win32_code(),
            message: e.to_string(),
        }
    }
}

impl BrokerFault {
    /// The error the broker meant.
    pub fn into_error(self) -> Error {
        let kind = match self.code {
            2 => ErrorKind::NotFound,
            123 => ErrorKind::InvalidName,
            183 => ErrorKind::AlreadyExists,
            1816 => ErrorKind::QuotaExceeded,
            6 => ErrorKind::WrongKind,
            _ => ErrorKind::InvalidParameter,
        };
        Error::with_message(kind, format!("broker: {}", self.message))
    }
}

/// The broker's RPC interface. Windows has no single counterpart: it stands for the object
/// manager's name table, the endpoint mapper (`ept_map`, `ept_insert`), the window list, the
/// DDE name service and the COM class table, which Windows keeps in the kernel and in system
/// services.
#[rpc::interface(uuid = "0d5e8c6a-3b1f-4a7e-9c2d-5f6b7a8e9d01", version = "1.0")]
pub trait BrokerApi {
    /// Opens this connection's session: every registration is tied to it and vanishes when
    /// the connection closes or its process dies (the session's rundown).
    fn hello(&self, ctx: &CallContext) -> Result<ContextHandle, BrokerFault>;
    /// Registers an entry for the session.
    fn register(
        &self,
        ctx: &CallContext,
        session: ContextHandle,
        kind: EntryKind,
        name: String,
        value: Vec<u8>,
        exclusive: bool,
    ) -> Result<(), BrokerFault>;
    /// Removes one of the session's entries.
    fn unregister(
        &self,
        ctx: &CallContext,
        session: ContextHandle,
        kind: EntryKind,
        name: String,
    ) -> Result<(), BrokerFault>;
    /// One entry.
    fn lookup(&self, kind: EntryKind, name: String) -> Option<EntryInfo>;
    /// Entries of a kind (or all) whose name starts with `prefix`.
    fn list(&self, kind: Option<EntryKind>, prefix: String) -> Vec<EntryInfo>;
    /// Asks for change notifications, which [`changes`](BrokerApi::changes) delivers.
    fn watch(
        &self,
        ctx: &CallContext,
        session: ContextHandle,
        kind: Option<EntryKind>,
        prefix: String,
    ) -> Result<(), BrokerFault>;
    /// The session's pending changes, waiting up to `wait_ms` for one.
    fn changes(
        &self,
        ctx: &CallContext,
        session: ContextHandle,
        wait_ms: u32,
    ) -> Result<Vec<ChangeInfo>, BrokerFault>;
    /// Registers an RPC endpoint (`RpcEpRegister`).
    fn epm_register(
        &self,
        ctx: &CallContext,
        session: ContextHandle,
        uuid: String,
        major: u16,
        minor: u16,
        binding: String,
    ) -> Result<(), BrokerFault>;
    /// Resolves a dynamic binding (`ept_map`).
    fn epm_resolve(&self, uuid: String, major: u16, minor: u16, binding: String) -> Option<String>;
    /// The broker's state.
    fn status(&self) -> StatusInfo;
}

/// The broker's state behind its interface.
struct State {
    registry: Mutex<Core>,
    changed: Condvar,
    started: Instant,
    next_conn: std::sync::atomic::AtomicU64,
}

struct Core {
    reg: Registry,
    queues: HashMap<ConnId, VecDeque<ChangeInfo>>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `notes` for their watchers and wakes waiting `changes` calls.
    fn deliver(&self, core: &mut Core, notes: Vec<super::registry::Notification>) {
        if notes.is_empty() {
            return;
        }
        for n in notes {
            let q = core.queues.entry(n.to).or_default();
            if q.len() >= MAX_QUEUED_CHANGES {
                q.clear();
                q.push_back(ChangeInfo::Overflow);
            }
            q.push_back(match n.change {
                Change::Added(e) => ChangeInfo::Added(EntryInfo::of(&e)),
                Change::Removed { kind, name, .. } => ChangeInfo::Removed { kind, name },
            });
        }
        self.changed.notify_all();
    }

    fn disconnect(&self, conn: ConnId) {
        let mut core = self.lock();
        let notes = core.reg.disconnect(conn);
        core.queues.remove(&conn);
        self.deliver(&mut core, notes);
    }
}

/// The service object the RPC server dispatches to.
#[derive(Clone)]
struct Service(Arc<State>);

impl Service {
    fn conn(&self, ctx: &CallContext, session: ContextHandle) -> Result<ConnId, BrokerFault> {
        ctx.with_context(session, |c: &mut ConnId| *c)
            .map_err(BrokerFault::from)
    }
}

impl BrokerApi for Service {
    fn hello(&self, ctx: &CallContext) -> Result<ContextHandle, BrokerFault> {
        let c = ctx.caller();
        let peer = PeerIdentity {
            pid: c.pid.unwrap_or(0),
            uid: c.uid.unwrap_or(u32::MAX),
            gid: c.gid.unwrap_or(u32::MAX),
        };
        let conn = ConnId(self.0.next_conn.fetch_add(1, Ordering::Relaxed) + 1);
        self.0.lock().reg.connect(conn, peer)?;
        let state = self.0.clone();
        Ok(ctx.open_context(conn, move |conn| state.disconnect(conn)))
    }

    fn register(
        &self,
        ctx: &CallContext,
        session: ContextHandle,
        kind: EntryKind,
        name: String,
        value: Vec<u8>,
        exclusive: bool,
    ) -> Result<(), BrokerFault> {
        let conn = self.conn(ctx, session)?;
        let mut core = self.0.lock();
        let notes = core.reg.register(conn, kind, &name, value, exclusive)?;
        self.0.deliver(&mut core, notes);
        Ok(())
    }

    fn unregister(
        &self,
        ctx: &CallContext,
        session: ContextHandle,
        kind: EntryKind,
        name: String,
    ) -> Result<(), BrokerFault> {
        let conn = self.conn(ctx, session)?;
        let mut core = self.0.lock();
        let notes = core.reg.unregister(conn, kind, &name)?;
        self.0.deliver(&mut core, notes);
        Ok(())
    }

    fn lookup(&self, kind: EntryKind, name: String) -> Option<EntryInfo> {
        self.0.lock().reg.lookup(kind, &name).map(EntryInfo::of)
    }

    fn list(&self, kind: Option<EntryKind>, prefix: String) -> Vec<EntryInfo> {
        let core = self.0.lock();
        core.reg.list(kind, &prefix).map(EntryInfo::of).collect()
    }

    fn watch(
        &self,
        ctx: &CallContext,
        session: ContextHandle,
        kind: Option<EntryKind>,
        prefix: String,
    ) -> Result<(), BrokerFault> {
        let conn = self.conn(ctx, session)?;
        self.0.lock().reg.watch(conn, kind, &prefix)?;
        Ok(())
    }

    fn changes(
        &self,
        ctx: &CallContext,
        session: ContextHandle,
        wait_ms: u32,
    ) -> Result<Vec<ChangeInfo>, BrokerFault> {
        let conn = self.conn(ctx, session)?;
        let until =
            Instant::now() + Duration::from_millis(u64::from(wait_ms)).min(MAX_CHANGES_WAIT);
        let mut core = self.0.lock();
        loop {
            if let Some(q) = core.queues.get_mut(&conn)
                && !q.is_empty()
            {
                return Ok(q.drain(..).collect());
            }
            let now = Instant::now();
            if now >= until || ctx.is_cancelled() {
                return Ok(Vec::new());
            }
            // Wake at least every 100 ms to notice a cancelled call.
            let slice = (until - now).min(Duration::from_millis(100));
            core = self
                .0
                .changed
                .wait_timeout(core, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn epm_register(
        &self,
        ctx: &CallContext,
        session: ContextHandle,
        uuid: String,
        major: u16,
        minor: u16,
        binding: String,
    ) -> Result<(), BrokerFault> {
        let conn = self.conn(ctx, session)?;
        let iface = InterfaceId::new(Uuid::parse(&uuid)?, major, minor);
        let binding = Binding::parse(&binding)?;
        let mut core = self.0.lock();
        let notes = core.reg.epm_register(conn, &iface, &binding)?;
        self.0.deliver(&mut core, notes);
        Ok(())
    }

    fn epm_resolve(&self, uuid: String, major: u16, minor: u16, binding: String) -> Option<String> {
        let iface = InterfaceId::new(Uuid::parse(&uuid).ok()?, major, minor);
        let binding = Binding::parse(&binding).ok()?;
        self.0
            .lock()
            .reg
            .epm_resolve(&iface, &binding)
            .map(|b| b.to_string())
    }

    fn status(&self) -> StatusInfo {
        let core = self.0.lock();
        StatusInfo {
            pid: std::process::id(),
            uptime_ms: self.0.started.elapsed().as_millis() as u64,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            entries: core.reg.len() as u64,
            clients: core
                .reg
                .connections()
                .into_iter()
                .map(|c| ClientInfo {
                    pid: c.peer.pid,
                    entries: c.entries as u64,
                    watches: c.watches as u64,
                })
                .collect(),
        }
    }
}

/// A running broker: in this process (the embedded mode, for tests and single-program use), or
/// the body of `ipckit broker`. One per user: it holds `RUNTIME/broker.lock`. Stops on drop.
pub struct BrokerServer {
    server: Server,
    _lock: std::fs::File,
}

impl std::fmt::Debug for BrokerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerServer").finish_non_exhaustive()
    }
}

/// Why [`BrokerServer::start`] did not start one.
#[derive(Debug)]
pub enum StartError {
    /// A broker already runs for this user (its pid, if it wrote one).
    Running(Option<u32>),
    /// Something else failed.
    Failed(Error),
}

impl From<Error> for StartError {
    fn from(e: Error) -> StartError {
        StartError::Failed(e)
    }
}

fn lock_path(ns: &Namespace) -> Result<PathBuf> {
    let root = ns.folder_root()?;
    Ok(root.path().join(LOCK_FILE))
}

/// The pid of the running broker, if one runs (it holds the lock).
pub fn running_pid(ns: &Namespace) -> Option<u32> {
    let path = lock_path(ns).ok()?;
    let f = std::fs::OpenOptions::new().read(true).open(&path).ok()?;
    if try_lock_exclusive(&f).ok()? {
        let _ = unlock(&f); // nobody held it: no broker
        return None;
    }
    std::fs::read_to_string(&path).ok()?.trim().parse().ok()
}

/// The broker's socket file in `ns` (`RUNTIME/rpc/ipckit-broker`): where a systemd socket unit
/// listens for it (see `ipckit broker --install-user-unit`).
pub fn socket_path(ns: &Namespace) -> std::path::PathBuf {
    let endpoint = crate::rpc::Binding::parse(BINDING)
        .ok()
        .and_then(|b| b.endpoint().map(str::to_owned))
        .unwrap_or_default();
    ns.runtime_dir()
        .join("rpc")
        .join(crate::rpc::link_component(&endpoint))
}

/// The listening socket systemd passed to this process (socket activation, `sd_listen_fds(3)`:
/// `LISTEN_PID` is this process and `LISTEN_FDS` at least 1, the socket is descriptor 3).
fn activation_socket() -> Option<std::os::fd::OwnedFd> {
    let for_me = std::env::var("LISTEN_PID").ok()?.parse::<u32>().ok()? == std::process::id();
    let count: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if !for_me || count == 0 {
        return None;
    }
    match crate::sys::fd::claim_inherited(3) {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!("broker: LISTEN_FDS is set but descriptor 3 is unusable: {e}");
            None
        }
    }
}

impl BrokerServer {
    /// Starts a broker for `ns` with `limits`, listening on [`BINDING`] (on the socket systemd
    /// passes, when the broker was socket-activated: see `ipckit broker --install-user-unit`).
    pub fn start(ns: &Namespace, limits: Limits) -> std::result::Result<BrokerServer, StartError> {
        let path = lock_path(ns)?;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::from_io("broker lock file", e))?;
        if !try_lock_exclusive(&f)? {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(StartError::Running(pid));
        }
        {
            use std::io::{Seek, Write};
            f.set_len(0)
                .map_err(|e| Error::from_io("broker lock file", e))?;
            f.seek(std::io::SeekFrom::Start(0))
                .map_err(|e| Error::from_io("broker lock file", e))?;
            write!(f, "{}", std::process::id())
                .map_err(|e| Error::from_io("broker lock file", e))?;
        }
        let state = Arc::new(State {
            registry: Mutex::new(Core {
                reg: Registry::new(limits),
                queues: HashMap::new(),
            }),
            changed: Condvar::new(),
            started: Instant::now(),
            next_conn: std::sync::atomic::AtomicU64::new(0),
        });
        // Broker calls are rare and its clients many: every connection stays on its socket
        // (shared memory would cost each one four more descriptors and two objects).
        let opts = ServerOptions::new()
            .namespace(ns.clone())
            .local_shared_memory(false)
            .max_calls(limits.max_connections.max(64) * 2);
        let server = Server::new(opts, vec![BrokerApiServer::new(Service(state))]);
        match activation_socket() {
            Some(fd) => server.listen_inherited(BINDING, fd)?,
            None => server.listen(BINDING)?,
        };
        Ok(BrokerServer { server, _lock: f })
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.server.connections()
    }
}

impl Drop for BrokerServer {
    fn drop(&mut self) {
        self.server.stop();
    }
}

/// Where autostart finds the `ipckit` binary: `IPCKIT_BROKER`, then an `ipckit` beside the
/// current executable (or one directory up, for test binaries in `target/*/deps`), then `PATH`.
pub fn broker_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IPCKIT_BROKER") {
        return Some(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let cand = dir.join("ipckit");
            if cand.is_file() {
                return Some(cand);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("ipckit"))
            .find(|p| p.is_file())
    })
}

fn unavailable(why: String) -> Error {
    Error::with_message(ErrorKind::ServerUnavailable, why)
}

/// Starts `BIN broker --daemon` for `ns` and waits until it answers.
fn autostart(ns: &Namespace, bin: &Path) -> Result<()> {
    let status = Command::new(bin)
        .args(["broker", "--daemon"])
        .env("IPCKIT_RUNTIME_DIR", ns.runtime_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| {
            unavailable(format!(
                "the broker is not running and {} could not be started ({e}); \
                 run `ipckit broker --daemon` or set IPCKIT_BROKER to the ipckit binary",
                bin.display()
            ))
        })?;
    if !status.success() {
        return Err(unavailable(format!(
            "the broker is not running and `{} broker --daemon` failed ({status}); \
             run `ipckit broker` to see why",
            bin.display()
        )));
    }
    Ok(())
}

/// A connection to the broker, with a session. Registrations made through it are tied to it:
/// they go when it is dropped or its process dies. When the broker is gone (killed, restarted),
/// the next call reconnects by itself — finding or starting a broker — and makes every
/// registration and watch of this client again before it proceeds; [`BrokerClient::keep_alive`]
/// does so at once from a thread, for servers that make no calls.
pub struct BrokerClient {
    ns: Namespace,
    inner: Mutex<Link>,
    /// What to make again after a reconnection.
    regs: Mutex<Vec<Registration>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerClient").finish_non_exhaustive()
    }
}

struct Link {
    client: Arc<BrokerApiClient>,
    session: ContextHandle,
}

#[derive(Clone)]
enum Registration {
    Entry {
        kind: EntryKind,
        name: String,
        value: Vec<u8>,
        exclusive: bool,
    },
    Endpoint {
        iface: InterfaceId,
        binding: String,
    },
    Watch {
        kind: Option<EntryKind>,
        prefix: String,
    },
}

/// Whether `e` says the broker's connection is gone (it died or restarted).
fn broker_gone(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ServerUnavailable | ErrorKind::CallFailed
    )
}

fn call<T>(r: std::result::Result<T, CallError<BrokerFault>>) -> Result<T> {
    r.map_err(|e| match e {
        CallError::App(f) => f.into_error(),
        CallError::Rpc(e) => e,
    })
}

fn open_link(ns: &Namespace) -> Result<Link> {
    let opts = ClientOptions::new()
        .namespace(ns.clone())
        .local_shared_memory(false)
        .connect_timeout(Duration::from_secs(2));
    let client = BrokerApiClient::connect_with(&opts, BINDING)?;
    let session = call(client.hello())?;
    Ok(Link {
        client: Arc::new(client),
        session,
    })
}

impl BrokerClient {
    /// Connects to the running broker of `ns` ([`ErrorKind::ServerUnavailable`], 1722, when none
    /// runs).
    pub fn connect(ns: &Namespace) -> Result<BrokerClient> {
        let link = open_link(ns).map_err(|e| {
            unavailable(format!(
                "no broker answers for {} ({e}); start one with `ipckit broker --daemon`",
                ns.runtime_dir().display()
            ))
        })?;
        Ok(BrokerClient {
            ns: ns.clone(),
            inner: Mutex::new(link),
            regs: Mutex::new(Vec::new()),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Connects, starting the broker first when none runs (the binary from [`broker_binary`]),
    /// and waiting for it at most [`START_TIMEOUT`].
    pub fn connect_or_start(ns: &Namespace) -> Result<BrokerClient> {
        if let Ok(c) = BrokerClient::connect(ns) {
            return Ok(c);
        }
        let bin = broker_binary().ok_or_else(|| {
            unavailable(
                "the broker is not running and no `ipckit` binary was found to start it: \
                 install ipckit on PATH, set IPCKIT_BROKER to its path, or run \
                 `ipckit broker --daemon`"
                    .to_owned(),
            )
        })?;
        autostart(ns, &bin)?;
        let until = Instant::now() + START_TIMEOUT;
        loop {
            match BrokerClient::connect(ns) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= until => {
                    return Err(unavailable(format!(
                        "started {} but the broker did not answer within {:?} ({e})",
                        bin.display(),
                        START_TIMEOUT
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn link(&self) -> (Arc<BrokerApiClient>, ContextHandle) {
        let l = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (l.client.clone(), l.session)
    }

    /// Runs `f` on the link; when the broker is gone (its connection failed), reconnects —
    /// starting or finding a new broker and registering again — and runs `f` once more.
    fn retry<T>(&self, f: impl Fn(&BrokerApiClient, ContextHandle) -> Result<T>) -> Result<T> {
        let (c, s) = self.link();
        match f(&c, s) {
            Err(e) if broker_gone(&e) => {
                self.reconnect()?;
                let (c, s) = self.link();
                f(&c, s)
            }
            r => r,
        }
    }

    fn remember(&self, r: Registration) {
        self.regs.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }

    fn apply(&self, r: &Registration) -> Result<()> {
        self.retry(|c, s| self.apply_on(c, s, r))
    }

    fn apply_on(&self, c: &BrokerApiClient, s: ContextHandle, r: &Registration) -> Result<()> {
        match r {
            Registration::Entry {
                kind,
                name,
                value,
                exclusive,
            } => call(c.register(s, *kind, name.clone(), value.clone(), *exclusive)),
            Registration::Endpoint { iface, binding } => call(c.epm_register(
                s,
                iface.uuid.to_string(),
                iface.major,
                iface.minor,
                binding.clone(),
            )),
            Registration::Watch { kind, prefix } => call(c.watch(s, *kind, prefix.clone())),
        }
    }

    /// Registers `name` of `kind` with `value` for as long as this client lives.
    pub fn register(
        &self,
        kind: EntryKind,
        name: &str,
        value: &[u8],
        exclusive: bool,
    ) -> Result<()> {
        let r = Registration::Entry {
            kind,
            name: name.to_owned(),
            value: value.to_vec(),
            exclusive,
        };
        self.apply(&r)?;
        self.remember(r);
        Ok(())
    }

    /// Removes this client's entry.
    pub fn unregister(&self, kind: EntryKind, name: &str) -> Result<()> {
        self.retry(|c, s| call(c.unregister(s, kind, name.to_owned())))?;
        self.regs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| !matches!(r, Registration::Entry { kind: k, name: n, .. } if *k == kind && n == name));
        Ok(())
    }

    /// One entry.
    pub fn lookup(&self, kind: EntryKind, name: &str) -> Result<Option<EntryInfo>> {
        self.retry(|c, _| c.lookup(kind, name.to_owned()))
    }

    /// Entries of `kind` (or all) whose name starts with `prefix`.
    pub fn list(&self, kind: Option<EntryKind>, prefix: &str) -> Result<Vec<EntryInfo>> {
        self.retry(|c, _| c.list(kind, prefix.to_owned()))
    }

    /// Asks for change notifications; [`changes`](Self::changes) returns them.
    pub fn watch(&self, kind: Option<EntryKind>, prefix: &str) -> Result<()> {
        let r = Registration::Watch {
            kind,
            prefix: prefix.to_owned(),
        };
        self.apply(&r)?;
        self.remember(r);
        Ok(())
    }

    /// Pending changes, waiting up to `wait` for the first. After the broker restarted, the
    /// changes meanwhile are unknown: the answer is then [`ChangeInfo::Overflow`] (list again).
    pub fn changes(&self, wait: Duration) -> Result<Vec<ChangeInfo>> {
        let (c, s) = self.link();
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        match call(c.changes(s, ms)) {
            Err(e) if broker_gone(&e) => {
                self.reconnect()?;
                Ok(vec![ChangeInfo::Overflow])
            }
            r => r,
        }
    }

    /// Registers an RPC endpoint with the endpoint mapper (`RpcEpRegister`).
    pub fn register_endpoint(&self, iface: InterfaceId, binding: &Binding) -> Result<()> {
        let r = Registration::Endpoint {
            iface,
            binding: binding.to_string(),
        };
        self.apply(&r)?;
        self.remember(r);
        Ok(())
    }

    /// The broker's state.
    pub fn status(&self) -> Result<StatusInfo> {
        self.retry(|c, _| c.status())
    }

    /// Opens a new connection (starting the broker if needed) and makes every registration
    /// and watch of this client again: what a client does after the broker restarted.
    pub fn reconnect(&self) -> Result<()> {
        let fresh = BrokerClient::connect_or_start(&self.ns)?;
        let link = {
            let l = fresh.inner.lock().unwrap_or_else(|e| e.into_inner());
            Link {
                client: l.client.clone(),
                session: l.session,
            }
        };
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = link;
        let regs = self.regs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for r in &regs {
            self.apply(r)?;
        }
        Ok(())
    }

    /// Starts a thread that notices a broker restart (its connection breaks) and then
    /// reconnects and registers again, retrying every `retry` until it succeeds. Returns at
    /// once; the thread ends when the client is dropped.
    pub fn keep_alive(self: &Arc<Self>, retry: Duration) {
        let me = Arc::downgrade(self);
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(c) = me.upgrade() else { return };
                let (client, _) = c.link();
                // Not `c.status()`, which would reconnect by itself.
                let alive = client.status().is_ok();
                if alive {
                    drop(c);
                    std::thread::sleep(retry);
                    continue;
                }
                if c.reconnect().is_err() {
                    drop(c);
                    std::thread::sleep(retry);
                }
            }
        });
    }
}

impl Drop for BrokerClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The endpoint mapper as an RPC [`rpc::Resolver`]: resolves dynamic bindings through the
/// broker (without starting it).
#[derive(Debug)]
pub struct EndpointMapper {
    ns: Namespace,
}

impl EndpointMapper {
    /// The endpoint mapper of `ns`'s broker.
    pub fn new(ns: &Namespace) -> EndpointMapper {
        EndpointMapper { ns: ns.clone() }
    }
}

impl rpc::Resolver for EndpointMapper {
    /// No broker running means no endpoint known: `Ok(None)`, which the caller reports as
    /// `EPT_S_NOT_REGISTERED` (1753).
    fn resolve(&self, binding: &Binding, interface: &InterfaceId) -> Result<Option<Binding>> {
        if running_pid(&self.ns).is_none() {
            return Ok(None);
        }
        let c = BrokerClient::connect(&self.ns)?;
        let (client, _) = c.link();
        let found = client.epm_resolve(
            interface.uuid.to_string(),
            interface.major,
            interface.minor,
            binding.to_string(),
        )?;
        found.map(|s| Binding::parse(&s)).transpose()
    }
}
