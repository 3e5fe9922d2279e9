//! The blocking RPC client: one connection, calls from any number of threads at once.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::link::{self, Link};
use super::proto::{ClientEvent, ClientProto, Decoder, Reply};
use super::{Binding, InterfaceId, binding};
use crate::error::{Error, ErrorKind, Result};
use crate::namespace::Namespace;

/// `RPC_S_CALL_CANCELLED`, the code of a call whose time ran out.
const CALL_CANCELLED: u32 = 1818;

/// How long an async call that waits alone looks for its answer itself before a pump reads
/// for it (feature `tokio`).
#[cfg(feature = "tokio")]
const ASYNC_SPIN: Duration = Duration::from_micros(20);

/// Settings of a [`Client`].
///
/// Windows counterpart: the binding handle's options (`RpcMgmtSetComTimeout`,
/// `RpcBindingSetOption(RPC_C_OPT_CALL_TIMEOUT)`).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    timeout: Option<Duration>,
    connect_timeout: Duration,
    max_body: u32,
    namespace: Option<Namespace>,
    local_shm: bool,
    #[cfg(feature = "tls")]
    tls: Option<super::TlsClientConfig>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: None,
            connect_timeout: Duration::from_secs(10),
            max_body: 16 << 20,
            namespace: None,
            local_shm: true,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ClientOptions {
    /// Defaults: no call timeout, 10 s to connect, replies up to 16 MiB.
    pub fn new() -> ClientOptions {
        ClientOptions::default()
    }
    /// Every call waits at most `t` for its answer; then it is cancelled on the server and
    /// fails with [`ErrorKind::Timeout`] (win32 `RPC_S_CALL_CANCELLED`, 1818).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// How long connecting may take (TCP and its TLS handshake; pipe instances busy).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Largest reply body accepted (bigger ones fail that call with
    /// [`ErrorKind::MessageTooLarge`]; at most 64 MiB).
    pub fn max_message_size(mut self, bytes: u32) -> Self {
        self.max_body = bytes.clamp(64, super::proto::MAX_BODY_LIMIT);
        self
    }
    /// The namespace of `ncalrpc` and `ncacn_np` endpoints (default: the user's).
    pub fn namespace(mut self, ns: Namespace) -> Self {
        self.namespace = Some(ns);
        self
    }
    /// Whether an `ncalrpc` connection asks the server to move to shared memory (default: yes).
    /// Over shared memory a call makes no system call while both ends run on different CPUs,
    /// and a single futex wake-up otherwise; the server may decline, and then the connection
    /// stays on its Unix socket (as it does with `false`). Wire details: `docs/protocol/rpc.md`
    /// section 1.2.
    ///
    /// Windows has no such switch (`ncalrpc` is ALPC there, the kernel's fast local path).
    pub fn local_shared_memory(mut self, yes: bool) -> Self {
        self.local_shm = yes;
        self
    }
    /// Speaks TLS (1.2 or 1.3, rustls) on `ncacn_ip_tcp` connections, verifying the server as
    /// `tls` says (feature `tls`); other carriers ignore it. The handshake counts against the
    /// [`connect_timeout`](Self::connect_timeout); a failed one (a server without TLS, a
    /// certificate not trusted) fails [`connect`](Self::connect) with
    /// [`ErrorKind::ServerUnavailable`] (1722). A client certificate the server refuses fails
    /// it with 1722 too, or, with TLS 1.3 (where the client hears of it after its handshake),
    /// with [`ErrorKind::AccessDenied`] (5).
    ///
    /// Windows counterpart: `RpcBindingSetAuthInfo` with an Schannel credential.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: super::TlsClientConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connects to `binding` and binds to `interface`
    /// (`RpcBindingFromStringBinding` and the first call's bind).
    ///
    /// A binding without endpoint (`ncalrpc:`, `ncacn_ip_tcp:host`) is resolved through the
    /// session broker's endpoint mapper ([`crate::broker::EndpointMapper`]), as Windows resolves
    /// it through `ept_map` on the first call; the broker is not started for it.
    ///
    /// Errors: [`ErrorKind::ServerUnavailable`] (1722) when nobody listens there (or, for a
    /// binding without endpoint, no broker runs), [`ErrorKind::UnknownInterface`] (1717) when
    /// the server does not offer the interface in a compatible version,
    /// [`ErrorKind::NoEndpoint`] (1753) when the endpoint mapper knows no endpoint for it.
    pub fn connect(&self, binding: &str, interface: InterfaceId) -> Result<Client> {
        let b = Binding::parse(binding)?;
        let ns = self.namespace.clone().unwrap_or_else(Namespace::from_env);
        let b = if b.endpoint().is_some() {
            b
        } else {
            let mapper = crate::broker::EndpointMapper::new(&ns);
            binding::resolve(&b, &interface, &[&mapper])?
        };
        #[cfg(feature = "tls")]
        let tls = self.tls.as_ref();
        #[cfg(not(feature = "tls"))]
        let tls = None;
        let link = link::connect(&b, &ns, self.connect_timeout, tls, self.local_shm)?;
        let mut proto = ClientProto::new(interface, self.max_body);
        let bind = proto.bind();
        link.send(&[&bind]).map_err(|e| lost(&b, e, false))?;
        let mut dec = Decoder::new(self.max_body);
        let deadline = Instant::now() + self.connect_timeout;
        let (major, minor) = loop {
            if let Some(f) = dec.next_frame()? {
                match proto.on_frame(f)? {
                    ClientEvent::Bound { major, minor, .. } => break (major, minor),
                    _ => return Err(Error::with_message(ErrorKind::Protocol, "no bind-ack")),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut timed_out = false;
            let n = dec.fill(|buf| {
                link.recv(buf, Some(left)).map(|n| {
                    timed_out = n.is_none();
                    n.unwrap_or(0)
                })
            })?;
            if timed_out {
                return Err(Error::with_message(
                    ErrorKind::ServerUnavailable,
                    format!("{b}: no answer to the bind"),
                ));
            }
            if n == 0 {
                return Err(lost(&b, Error::new(ErrorKind::BrokenPipe), false));
            }
        };
        Ok(Client {
            shared: Arc::new(Shared {
                link,
                binding: b,
                server_version: (major, minor),
                timeout: self.timeout,
                state: Mutex::new(State {
                    proto,
                    decoder: Some(dec),
                    done: HashMap::new(),
                    dead: None,
                    #[cfg(feature = "tokio")]
                    cancellable: 0,
                    #[cfg(feature = "tokio")]
                    pump: false,
                    answers: 0,
                }),
                cv: Condvar::new(),
                #[cfg(feature = "tokio")]
                notify: tokio::sync::Notify::new(),
            }),
        })
    }
}

struct State {
    proto: ClientProto,
    /// `None` while a caller thread is reading for everyone.
    decoder: Option<Decoder>,
    done: HashMap<u32, Result<Reply>>,
    dead: Option<(ErrorKind, String)>,
    /// Calls of an [`AsyncClient`](super::AsyncClient) waiting (a pump reads for them while
    /// no blocking caller does).
    #[cfg(feature = "tokio")]
    cancellable: usize,
    /// A blocking task reads the connection for the async calls.
    #[cfg(feature = "tokio")]
    pump: bool,
    /// Answers received so far (the pump stops after delivering some).
    answers: u64,
}

struct Shared {
    link: Box<dyn Link>,
    binding: Binding,
    server_version: (u16, u16),
    timeout: Option<Duration>,
    state: Mutex<State>,
    cv: Condvar,
    /// Wakes the calls of an [`AsyncClient`](super::AsyncClient) (feature `tokio`).
    #[cfg(feature = "tokio")]
    notify: tokio::sync::Notify,
}

/// A connected, bound RPC client. Cheap to clone (clones share the connection); calls from
/// several threads run concurrently on the one connection.
///
/// Windows counterpart: a binding handle from `RpcBindingFromStringBinding`, bound to one
/// interface, with the client stub's `NdrClientCall`. The typed clients that
/// `#[ipckit::rpc::interface]` generates wrap it.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("binding", &self.shared.binding.to_string())
            .finish()
    }
}

fn lost(b: &Binding, e: Error, in_call: bool) -> Error {
    if in_call {
        Error::with_message(
            ErrorKind::CallFailed,
            format!("{b}: the connection was lost during the call ({e})"),
        )
    } else {
        Error::with_message(
            ErrorKind::ServerUnavailable,
            format!("{b}: the server is gone ({e})"),
        )
    }
}

impl Client {
    /// [`ClientOptions::connect`] with default options.
    pub fn connect(binding: &str, interface: InterfaceId) -> Result<Client> {
        ClientOptions::new().connect(binding, interface)
    }

    /// The binding this client is connected to.
    pub fn binding(&self) -> &Binding {
        &self.shared.binding
    }

    /// The server's version of the interface (major, minor), from the bind.
    pub fn server_version(&self) -> (u16, u16) {
        self.shared.server_version
    }

    /// The call timeout of [`ClientOptions::timeout`].
    #[cfg(feature = "tokio")]
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.shared.timeout
    }

    /// Calls procedure `opnum` with encoded `args`; the reply's encoded body.
    /// One-way calls return an empty reply as soon as the request is sent.
    pub fn call_raw(&self, opnum: u16, args: &[u8], oneway: bool) -> Result<Reply> {
        self.call_raw_timeout(opnum, args, oneway, self.shared.timeout)
    }

    /// [`call_raw`](Self::call_raw) with its own timeout (`None`: wait for ever).
    pub fn call_raw_timeout(
        &self,
        opnum: u16,
        args: &[u8],
        oneway: bool,
        timeout: Option<Duration>,
    ) -> Result<Reply> {
        // The deadline runs from before the request goes out, so that it never falls after the
        // server's (which runs from the request's arrival).
        let began = Instant::now();
        let id = self.start(opnum, args, oneway, timeout)?;
        if oneway {
            return Ok(Reply::empty());
        }
        self.wait(id, opnum, timeout, began)
    }

    /// Sends a request; its call id (for [`wait`](Self::wait) or [`cancel`](Self::cancel)).
    pub(crate) fn start(
        &self,
        opnum: u16,
        args: &[u8],
        oneway: bool,
        timeout: Option<Duration>,
    ) -> Result<u32> {
        let sh = &*self.shared;
        let (id, head) = {
            let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((kind, msg)) = &st.dead {
                return Err(Error::with_message(*kind, msg.clone()));
            }
            st.proto.request(opnum, args, oneway, timeout)?
        };
        if let Err(e) = sh.link.send(&[&head, args]) {
            let err = lost(&sh.binding, e, false);
            self.kill(&err);
            return Err(err);
        }
        Ok(id)
    }

    /// Gives up on call `id`: the server is told (its method sees
    /// [`CallContext::is_cancelled`](super::CallContext::is_cancelled)) and a late answer is
    /// dropped. Nobody may wait for the call any more.
    #[cfg(feature = "tokio")]
    pub(crate) fn cancel(&self, id: u32) {
        let sh = &*self.shared;
        let frame = {
            let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
            // Answered but not taken: nobody will take it now.
            st.done.remove(&id);
            st.proto.cancel(id)
        };
        if let Some(c) = frame {
            let _ = sh.link.send(&[&c]);
        }
    }

    /// Counts an async call in (`+1`) or out (`-1`): while any waits, a pump reads for them.
    #[cfg(feature = "tokio")]
    pub(crate) fn async_calls(&self, delta: isize) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.cancellable = st.cancellable.saturating_add_signed(delta);
    }

    /// Awaits the answer to call `id` of an async caller (counted in with
    /// [`async_calls`](Self::async_calls)) without holding a thread: whoever reads the
    /// connection wakes it; if nobody does, a pump (one blocking task per connection) is
    /// started. At most `timeout`, then the call is cancelled.
    #[cfg(feature = "tokio")]
    pub(crate) async fn wait_async(
        &self,
        id: u32,
        opnum: u16,
        timeout: Option<Duration>,
        began: Instant,
    ) -> Result<Reply> {
        let sh = &*self.shared;
        let deadline = timeout.map(|t| tokio::time::Instant::from_std(began) + t);
        let mut spin_until = Some(Instant::now() + ASYNC_SPIN);
        let mut spun = false;
        loop {
            // An answer that arrives after the deadline is too late, as for a blocking call
            // whose time ran out first.
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                self.cancel(id);
                return Err(timed_out(opnum, timeout));
            }
            let woken = sh.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(r) = st.done.remove(&id) {
                    return r;
                }
                if let Some((_, msg)) = &st.dead {
                    return Err(Error::with_message(
                        ErrorKind::CallFailed,
                        format!("the connection was lost during the call: {msg}"),
                    ));
                }
                if !st.pump && st.decoder.is_some() {
                    // The only async call, and its answer may be close: look for it from this
                    // task for a moment before handing the reading to a pump (a thread hop
                    // each way).
                    if st.cancellable == 1 && spin_until.is_some_and(|t| Instant::now() < t) {
                        if let Some(dec) = st.decoder.take() {
                            drop(self.read_some(st, dec, Some(Duration::ZERO)));
                        }
                        spun = true;
                    } else {
                        spin_until = None;
                        st.pump = true;
                        let c = self.clone();
                        tokio::task::spawn_blocking(move || c.pump());
                    }
                }
            }
            if std::mem::take(&mut spun) {
                tokio::task::yield_now().await;
                continue;
            }
            match deadline {
                None => woken.await,
                Some(d) => {
                    let _ = tokio::time::timeout_at(d, woken).await;
                }
            }
        }
    }

    /// Reads the connection while async calls wait and no blocking caller reads it.
    #[cfg(feature = "tokio")]
    fn pump(&self) {
        /// How long one read waits before the pump looks whether it is still needed.
        const SLICE: Duration = Duration::from_millis(100);
        let sh = &*self.shared;
        let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.cancellable == 0 || st.dead.is_some() {
                break;
            }
            // A blocking caller reads: it wakes the async waiters when it gives the reading
            // back, and they start a pump again if still needed.
            let Some(dec) = st.decoder.take() else { break };
            let before = st.answers;
            st = self.read_some(st, dec, Some(SLICE));
            // Answers came: their callers take over (and look for the next ones themselves
            // for a moment, a pump only if they must wait longer).
            if st.answers != before {
                break;
            }
        }
        st.pump = false;
        drop(st);
        self.wake_all();
    }

    /// Waits for the answer to call `id` (at most `timeout` from `began`, then cancels it).
    pub(crate) fn wait(
        &self,
        id: u32,
        opnum: u16,
        timeout: Option<Duration>,
        began: Instant,
    ) -> Result<Reply> {
        let sh = &*self.shared;
        let deadline = timeout.map(|t| began + t);
        let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = st.done.remove(&id) {
                return r;
            }
            if let Some((_, msg)) = &st.dead {
                return Err(Error::with_message(
                    ErrorKind::CallFailed,
                    format!("the connection was lost during the call: {msg}"),
                ));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                let cancel = st.proto.cancel(id);
                drop(st);
                if let Some(c) = cancel {
                    let _ = sh.link.send(&[&c]);
                }
                return Err(timed_out(opnum, timeout));
            }
            match st.decoder.take() {
                Some(dec) => st = self.read_some(st, dec, left),
                None => {
                    st = match left {
                        Some(l) => {
                            sh.cv
                                .wait_timeout(st, l)
                                .unwrap_or_else(|e| e.into_inner())
                                .0
                        }
                        None => sh.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                    };
                }
            }
        }
    }

    /// Reads what arrives within `left` with the decoder taken from `st`, records the answers
    /// and gives the decoder back, waking every waiter.
    fn read_some<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        mut dec: Decoder,
        left: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        let sh = &*self.shared;
        drop(st);
        let mut timed_out = false;
        let r = dec.fill(|buf| {
            sh.link.recv(buf, left).map(|n| {
                timed_out = n.is_none();
                n.unwrap_or(0)
            })
        });
        let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(0) if timed_out => {}
            Ok(0) => Self::die(&mut st, &sh.binding, Error::new(ErrorKind::BrokenPipe)),
            Err(e) => Self::die(&mut st, &sh.binding, e),
            Ok(_) => loop {
                match dec.next_frame() {
                    Ok(None) => break,
                    Ok(Some(f)) => match st.proto.on_frame(f) {
                        Ok(ClientEvent::Reply { call_id, result }) => {
                            st.done.insert(call_id, result);
                            st.answers += 1;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            Self::die(&mut st, &sh.binding, e);
                            break;
                        }
                    },
                    Err(e) => {
                        Self::die(&mut st, &sh.binding, e);
                        break;
                    }
                }
            },
        }
        st.decoder = Some(dec);
        self.wake_all();
        st
    }

    /// Wakes the blocking and the async waiters.
    fn wake_all(&self) {
        self.shared.cv.notify_all();
        #[cfg(feature = "tokio")]
        self.shared.notify.notify_waiters();
    }

    fn die(st: &mut State, b: &Binding, e: Error) {
        if st.dead.is_none() {
            let kind = if e.kind() == ErrorKind::Protocol {
                ErrorKind::Protocol
            } else {
                ErrorKind::ServerUnavailable
            };
            st.dead = Some((kind, format!("{b}: connection ended ({e})")));
            st.proto.drain_pending();
        }
    }

    fn kill(&self, e: &Error) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.dead.is_none() {
            st.dead = Some((e.kind(), e.to_string()));
        }
        drop(st);
        self.wake_all();
    }

    /// Calls `opnum` with `args` encoded by postcard and decodes the result (or the
    /// application error `E`). What the generated clients use.
    pub fn call<A: Serialize, T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        opnum: u16,
        args: &A,
    ) -> std::result::Result<T, CallError<E>> {
        let reply = with_encoded(args, |bytes| self.call_raw(opnum, bytes, false))??;
        decode_reply(&reply)
    }

    /// Sends a one-way call (`[maybe]`): no answer, no result.
    pub fn call_oneway<A: Serialize>(&self, opnum: u16, args: &A) -> Result<()> {
        with_encoded(args, |bytes| self.call_raw(opnum, bytes, true).map(|_| ()))?
    }
}

/// Largest encoding buffer a thread keeps for its next call.
const KEEP_ENCODED: usize = 2 << 20;

thread_local! {
    /// The buffer this thread's last call encoded its arguments in: calls reuse it rather than
    /// allocate (a fresh buffer of a megabyte or more is also a fresh mapping whose pages
    /// fault in one by one).
    static ENCODED: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on the encoding of `args`, in this thread's reusable buffer.
fn with_encoded<A: Serialize + ?Sized, R>(args: &A, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
    let mut buf = ENCODED.with(|b| b.take());
    buf.clear();
    let buf = postcard::to_extend(args, buf).map_err(|e| {
        Error::with_message(ErrorKind::InvalidParameter, format!("cannot encode: {e}"))
    })?;
    let r = f(&buf);
    if buf.capacity() <= KEEP_ENCODED {
        ENCODED.with(|b| b.set(buf));
    }
    Ok(r)
}

/// The error of call `opnum` whose `timeout` ran out (it was cancelled on the server).
fn timed_out(opnum: u16, timeout: Option<Duration>) -> Error {
    Error::with_message(
        ErrorKind::Timeout,
        format!(
            "call {opnum} got no answer within {:?}",
            timeout.unwrap_or_default()
        ),
    )
    .with_win32_code(CALL_CANCELLED)
}

/// Encodes a value as RPC arguments or results (postcard).
pub fn encode<A: Serialize + ?Sized>(v: &A) -> Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| {
        Error::with_message(ErrorKind::InvalidParameter, format!("cannot encode: {e}"))
    })
}

/// Decodes RPC arguments or results (postcard); bad bytes give [`ErrorKind::Protocol`] with
/// `RPC_X_BAD_STUB_DATA` (1783).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| {
        Error::with_message(ErrorKind::Protocol, format!("cannot decode: {e}"))
            .with_win32_code(1783)
    })
}

/// Decodes a reply: the result, or the application error.
pub fn decode_reply<T: DeserializeOwned, E: DeserializeOwned>(
    reply: &Reply,
) -> std::result::Result<T, CallError<E>> {
    if reply.app_error {
        Err(CallError::App(decode(reply.body())?))
    } else {
        Ok(decode(reply.body())?)
    }
}

/// The error of a call to a method that has an application error type `E`.
///
/// Windows counterpart: an application exception raised by the server routine
/// (`RpcRaiseException` with the application's code) versus an RPC runtime failure
/// (`RPC_S_*` codes); ipckit keeps them apart as two variants.
#[derive(Debug)]
pub enum CallError<E> {
    /// The method returned this error.
    App(E),
    /// The call did not complete: connection, protocol, server fault (its status in
    /// `win32_code()`).
    Rpc(Error),
}

impl<E> From<Error> for CallError<E> {
    fn from(e: Error) -> Self {
        CallError::Rpc(e)
    }
}

impl<E: std::fmt::Debug> std::fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::App(e) => write!(f, "the method failed: {e:?}"),
            CallError::Rpc(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::fmt::Debug> std::error::Error for CallError<E> {}

impl CallError<()> {
    /// The RPC failure of a method without application error type (an application error is
    /// impossible there; a server that sends one anyway breaks the protocol).
    pub fn into_error(self) -> Error {
        match self {
            CallError::Rpc(e) => e,
            CallError::App(()) => Error::with_message(
                ErrorKind::Protocol,
                "an application error from a method that has none",
            ),
        }
    }
}

impl<E> CallError<E> {
    /// The application error, if that is what it is.
    pub fn app(self) -> Option<E> {
        match self {
            CallError::App(e) => Some(e),
            CallError::Rpc(_) => None,
        }
    }
    /// The RPC failure, if that is what it is.
    pub fn rpc(&self) -> Option<&Error> {
        match self {
            CallError::Rpc(e) => Some(e),
            CallError::App(_) => None,
        }
    }
}
