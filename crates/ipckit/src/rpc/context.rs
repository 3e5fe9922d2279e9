//! What a server method knows about its call: the caller, the deadline, cancellation, and the
//! connection's context handles.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Protseq;
use crate::error::{Error, ErrorKind, Result};

/// Who made a call.
///
/// Windows counterpart: what `RpcBindingInqAuthClient`, `I_RpcBindingInqLocalClientPID` and
/// `RpcImpersonateClient` reveal. ipckit does not impersonate (a Linux process cannot take on
/// another user's identity without privileges); it gives the identity for the method to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The carrier.
    pub protseq: Protseq,
    /// Process id, on local carriers (`ncalrpc`, `ncacn_np`): the kernel's record, unforgeable.
    pub pid: Option<u32>,
    /// Effective user id, on local carriers.
    pub uid: Option<u32>,
    /// Effective group id, on local carriers.
    pub gid: Option<u32>,
    /// The client's address, over TCP.
    pub address: Option<SocketAddr>,
    /// The DER of the client's TLS certificate (its leaf), over `ncacn_ip_tcp` with TLS
    /// (feature `tls`) when the client presented one; the server's `TlsServerConfig` decides
    /// which it accepts. `None` on every
    /// other carrier. Windows: what `RpcBindingInqAuthClient` gives for Schannel (the
    /// client's certificate context).
    pub peer_certificate: Option<Vec<u8>>,
}

impl Caller {
    /// The SHA-256 fingerprint of [`peer_certificate`](Self::peer_certificate), in lower-case
    /// hex (64 digits): a short, stable name for the client's certificate.
    pub fn peer_certificate_sha256(&self) -> Option<String> {
        use sha2::Digest;
        use std::fmt::Write;
        self.peer_certificate.as_ref().map(|der| {
            sha2::Sha256::digest(der)
                .iter()
                .fold(String::with_capacity(64), |mut s, b| {
                    let _ = write!(s, "{b:02x}");
                    s
                })
        })
    }
}

/// A context handle: server-side state that a client holds by reference.
///
/// Windows counterpart: an IDL `context_handle` (`void*` on the server, an opaque 20-byte
/// handle on the client). The state lives in the server connection's table; when the client
/// disconnects or dies with handles still open, the server runs each one's *rundown* (the
/// `_rundown` routine of MIDL), which [`CallContext::open_context`] takes as a closure.
/// A handle is valid only on the connection that created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContextHandle(pub u64);

type Rundown = Box<dyn FnOnce(Box<dyn Any + Send>) + Send>;

struct Slot {
    value: Arc<Mutex<Option<Box<dyn Any + Send>>>>,
    rundown: Option<Rundown>,
}

/// The context handles of one connection. Dropped (and the rundowns run) when the connection
/// ended and no call of it is running any more.
#[derive(Default)]
pub(crate) struct ContextTable {
    next: AtomicU64,
    slots: Mutex<HashMap<u64, Slot>>,
}

impl std::fmt::Debug for ContextTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.slots.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("ContextTable").field("open", &n).finish()
    }
}

impl Drop for ContextTable {
    fn drop(&mut self) {
        let slots = std::mem::take(self.slots.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (_, slot) in slots {
            let value = slot.value.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let (Some(v), Some(r)) = (value, slot.rundown) {
                r(v);
            }
        }
    }
}

fn bad_handle() -> Error {
    // ERROR_INVALID_HANDLE, as RPC_X_SS_CONTEXT_MISMATCH (6) is numbered.
    Error::with_message(
        ErrorKind::WrongKind,
        "no such context handle on this connection",
    )
}

/// One call, as its server method sees it.
///
/// Windows counterpart: the binding handle a server routine receives (`RpcBindingInq*`,
/// `RpcServerTestCancel`, `RpcImpersonateClient`) together with the context handles of the
/// connection.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub(crate) caller: Arc<Caller>,
    pub(crate) call_id: u32,
    pub(crate) opnum: u16,
    pub(crate) deadline: Option<Instant>,
    pub(crate) cancelled: Arc<CancelFlag>,
    pub(crate) contexts: Arc<ContextTable>,
}

/// Set when the client cancels a call; wakes the call's [`CallContext::cancelled`] futures.
#[derive(Debug, Default)]
pub(crate) struct CancelFlag {
    set: AtomicBool,
    #[cfg(feature = "tokio")]
    notify: tokio::sync::Notify,
}

impl CancelFlag {
    pub(crate) fn cancel(&self) {
        self.set.store(true, Ordering::Release);
        #[cfg(feature = "tokio")]
        self.notify.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }
}

impl CallContext {
    /// A context for calling a dispatcher directly (tests, in-process use).
    pub fn local(caller: Caller) -> CallContext {
        CallContext {
            caller: Arc::new(caller),
            call_id: 0,
            opnum: 0,
            deadline: None,
            cancelled: Arc::default(),
            contexts: Arc::default(),
        }
    }

    /// Who called. Windows: `RpcBindingInqAuthClient`, `I_RpcBindingInqLocalClientPID`.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }
    /// The call id on its connection.
    pub fn call_id(&self) -> u32 {
        self.call_id
    }
    /// The procedure number.
    pub fn opnum(&self) -> u16 {
        self.opnum
    }
    /// When the call's time runs out (the client's timeout or the server's, whichever is
    /// sooner); after it the answer is no longer awaited.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    /// Whether the client cancelled the call (or gave up waiting). Windows:
    /// `RpcServerTestCancel`. A long method should check it and return early.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_set() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Completes when [`is_cancelled`](Self::is_cancelled) becomes true: the client cancelled
    /// the call (gave up on it, dropped its async call, timed out) or the deadline passed. For
    /// async procedures (feature `tokio`; needs the runtime's time driver), e.g. raced with the
    /// work in `tokio::select!`.
    ///
    /// Windows counterpart: an asynchronous server routine learns of `RpcAsyncCancelCall` by
    /// polling `RpcServerTestCancel`. Difference: no polling here; the future wakes as soon as
    /// the connection's reader receives the cancel, or exactly at the deadline.
    #[cfg(feature = "tokio")]
    pub async fn cancelled(&self) {
        loop {
            let woken = self.cancelled.notify.notified();
            tokio::pin!(woken);
            // Registered before looking, so that a cancel in between still wakes us.
            woken.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            match self.deadline {
                Some(d) => {
                    let _ = tokio::time::timeout_at(d.into(), woken).await;
                }
                None => woken.await,
            }
        }
    }

    /// Opens a context handle holding `value`; `rundown` gets the value back if the client
    /// goes away without closing the handle.
    pub fn open_context<T: Send + 'static>(
        &self,
        value: T,
        rundown: impl FnOnce(T) + Send + 'static,
    ) -> ContextHandle {
        let id = self.contexts.next.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = Slot {
            value: Arc::new(Mutex::new(Some(Box::new(value)))),
            rundown: Some(Box::new(move |b: Box<dyn Any + Send>| {
                if let Ok(v) = b.downcast::<T>() {
                    rundown(*v);
                }
            })),
        };
        self.contexts
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, slot);
        ContextHandle(id)
    }

    /// Runs `f` on a handle's value. [`ErrorKind::WrongKind`] (win32 6) if the handle is not
    /// open on this connection or holds another type.
    pub fn with_context<T: 'static, R>(
        &self,
        h: ContextHandle,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R> {
        let value = {
            let slots = self
                .contexts
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            slots.get(&h.0).ok_or_else(bad_handle)?.value.clone()
        };
        let mut guard = value.lock().unwrap_or_else(|e| e.into_inner());
        let v = guard
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .ok_or_else(bad_handle)?;
        Ok(f(v))
    }

    /// Closes a handle and returns its value (no rundown). Windows: the server routine that
    /// sets the context handle to `NULL`.
    pub fn close_context<T: 'static>(&self, h: ContextHandle) -> Result<T> {
        let slot = {
            let mut slots = self
                .contexts
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let is_t = slots.get(&h.0).is_some_and(|s| {
                s.value
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_some_and(|b| b.is::<T>())
            });
            if !is_t {
                return Err(bad_handle());
            }
            slots.remove(&h.0).ok_or_else(bad_handle)?
        };
        let b = slot
            .value
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(bad_handle)?;
        b.downcast::<T>().map(|b| *b).map_err(|_| bad_handle())
    }

    /// Context handles open on this connection.
    pub fn open_contexts(&self) -> usize {
        self.contexts
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn rundown_runs_for_handles_left_open() {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let ctx = CallContext::local(Caller {
            protseq: Protseq::Local,
            pid: None,
            uid: None,
            gid: None,
            address: None,
            peer_certificate: None,
        });
        let a = ctx.open_context(5u32, |v| {
            RUN.fetch_add(v as usize, Ordering::SeqCst);
        });
        let b = ctx.open_context(7u32, |v| {
            RUN.fetch_add(v as usize, Ordering::SeqCst);
        });
        assert_eq!(ctx.with_context(a, |v: &mut u32| *v).unwrap(), 5);
        assert!(ctx.with_context(a, |_: &mut String| ()).is_err());
        assert_eq!(ctx.close_context::<u32>(b).unwrap(), 7);
        assert!(ctx.close_context::<u32>(b).is_err());
        drop(ctx);
        assert_eq!(RUN.load(Ordering::SeqCst), 5);
    }
}
