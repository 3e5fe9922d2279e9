//! The one error type of ipckit.
//!
//! Every fallible ipckit call returns [`Result<T>`]. An [`Error`] has a
//! [`kind`](Error::kind) that callers match on and a [`win32_code`](Error::win32_code)
//! that a program ported from Windows can compare with the code `GetLastError()`
//! (or the `HRESULT`) would have given it.
//!
//! ```
//! use ipckit::{Error, ErrorKind};
//!
//! let err = Error::new(ErrorKind::PipeBusy);
//! assert_eq!(err.kind(), ErrorKind::PipeBusy);
//! assert_eq!(err.win32_code(), 231); // ERROR_PIPE_BUSY
//! ```
//!
//! Creating an error allocates only when it carries a message or an OS error,
//! so "would block" style results on hot paths stay allocation-free.

use std::borrow::Cow;
use std::fmt;
use std::io;

/// `Result<T, ipckit::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a caller can match on it.
///
/// Each kind names the Windows code a ported program would expect; see
/// [`ErrorKind::win32_code`]. The enum is non-exhaustive: later mechanisms add kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No object of that name exists. Windows: `ERROR_FILE_NOT_FOUND` (2).
    NotFound,
    /// The caller may not use the object, or its folder is unsafe. Windows: `ERROR_ACCESS_DENIED` (5).
    AccessDenied,
    /// The name is malformed. Windows: `ERROR_INVALID_NAME` (123).
    InvalidName,
    /// An argument is out of range (zero size, misaligned offset, ...). Windows: `ERROR_INVALID_PARAMETER` (87).
    InvalidParameter,
    /// The object already exists. Windows: `ERROR_ALREADY_EXISTS` (183).
    AlreadyExists,
    /// The name belongs to an object of another kind (a mutex where an event was asked for).
    /// Windows: `ERROR_INVALID_HANDLE` (6), what `OpenEvent` returns for a mutex's name.
    WrongKind,
    /// Every instance of a named pipe is busy. Windows: `ERROR_PIPE_BUSY` (231).
    PipeBusy,
    /// Reading from a pipe whose writer is gone. Windows: `ERROR_BROKEN_PIPE` (109).
    BrokenPipe,
    /// Writing to a pipe whose reader is gone. Windows: `ERROR_NO_DATA` (232).
    NoData,
    /// The message did not fit the buffer; the rest follows on the next read.
    /// Windows: `ERROR_MORE_DATA` (234).
    MoreData,
    /// The buffer is too small for the next message, which stays queued.
    /// Windows: `ERROR_INSUFFICIENT_BUFFER` (122).
    InsufficientBuffer,
    /// A message is larger than the receiver accepts. Windows has no single code;
    /// ipckit reports `ERROR_INVALID_PARAMETER` (87), as `WriteFile` on a mailslot does.
    MessageTooLarge,
    /// A wait ran out of time. Windows: `WAIT_TIMEOUT` (258); some calls report
    /// `ERROR_SEM_TIMEOUT` (121) instead, which [`Error::win32_code`] then gives.
    Timeout,
    /// A mutex's owner died while holding it. Windows: `WAIT_ABANDONED` (0x80) as a wait
    /// result; as an error code `ERROR_ABANDONED_WAIT_0` (735).
    Abandoned,
    /// Releasing a mutex the caller does not own. Windows: `ERROR_NOT_OWNER` (288).
    NotOwner,
    /// Releasing a semaphore past its maximum. Windows: `ERROR_TOO_MANY_POSTS` (298).
    TooManyPosts,
    /// A bounded queue is full and the caller asked not to wait. Windows: `ERROR_BUSY` (170).
    Full,
    /// A service's per-client or total limit is reached (the broker's registrations, watches,
    /// connections). Windows: `ERROR_NOT_ENOUGH_QUOTA` (1816).
    QuotaExceeded,
    /// The peer process ended or went away. Windows: `ERROR_BROKEN_PIPE` (109).
    PeerGone,
    /// The peer broke the protocol (garbage, truncated or oversized frames).
    /// Windows: `RPC_S_PROTOCOL_ERROR` (1728).
    Protocol,
    /// The server cannot be reached. Windows: `RPC_S_SERVER_UNAVAILABLE` (1722).
    ServerUnavailable,
    /// The RPC server does not offer the interface, or not in a compatible version (major
    /// versions differ, or the server's minor version is lower than the client's).
    /// Windows: `RPC_S_UNKNOWN_IF` (1717).
    UnknownInterface,
    /// The RPC interface has no procedure with that number. Windows:
    /// `RPC_S_PROCNUM_OUT_OF_RANGE` (1745).
    ProcNumOutOfRange,
    /// The remote procedure call failed (the server ended it with a fault, or the connection
    /// broke while the call was in flight). Windows: `RPC_S_CALL_FAILED` (1726).
    CallFailed,
    /// The remote procedure call was cancelled. Windows: `RPC_S_CALL_CANCELLED` (1818).
    CallCancelled,
    /// A binding has no endpoint and no endpoint mapper could supply one. Windows:
    /// `EPT_S_NOT_REGISTERED` (1753).
    NoEndpoint,
    /// The call needs the network gateway of the broker, which is not configured or not
    /// built yet. Windows: `ERROR_BAD_NETPATH` (53).
    NeedsGateway,
    /// The object does not support this operation. Windows: `E_NOINTERFACE` (0x80004002).
    NoInterface,
    /// No server is registered for the class. Windows: `REGDB_E_CLASSNOTREG` (0x80040154).
    ClassNotRegistered,
    /// The object's server disconnected. Windows: `RPC_E_DISCONNECTED` (0x80010108).
    Disconnected,
    /// No DDE server answered the conversation request.
    /// Windows: `DMLERR_NO_CONV_ESTABLISHED` (0x400A).
    NoConversation,
    /// Not supported on this platform or in this build. Windows: `ERROR_NOT_SUPPORTED` (50).
    Unsupported,
    /// The OS ran out of a resource (memory, descriptors, space).
    /// Windows: `ERROR_NOT_ENOUGH_MEMORY` (8).
    OutOfResources,
    /// Any other OS error; [`Error::os_error`] has the details. Windows: `ERROR_GEN_FAILURE` (31).
    Other,
}

impl ErrorKind {
    /// The Windows code a ported program would expect for this kind.
    pub const fn win32_code(self) -> u32 {
        match self {
            ErrorKind::NotFound => 2,
            ErrorKind::AccessDenied => 5,
            ErrorKind::InvalidName => 123,
            ErrorKind::InvalidParameter | ErrorKind::MessageTooLarge => 87,
            ErrorKind::AlreadyExists => 183,
            ErrorKind::WrongKind => 6,
            ErrorKind::PipeBusy => 231,
            ErrorKind::BrokenPipe | ErrorKind::PeerGone => 109,
            ErrorKind::NoData => 232,
            ErrorKind::MoreData => 234,
            ErrorKind::InsufficientBuffer => 122,
            ErrorKind::Timeout => 258,
            ErrorKind::Abandoned => 735,
            ErrorKind::NotOwner => 288,
            ErrorKind::TooManyPosts => 298,
            ErrorKind::Full => 170,
            ErrorKind::QuotaExceeded => 1816,
            ErrorKind::Protocol => 1728,
            ErrorKind::ServerUnavailable => 1722,
            ErrorKind::UnknownInterface => 1717,
            ErrorKind::ProcNumOutOfRange => 1745,
            ErrorKind::CallFailed => 1726,
            ErrorKind::CallCancelled => 1818,
            ErrorKind::NoEndpoint => 1753,
            ErrorKind::NeedsGateway => 53,
            ErrorKind::NoInterface => 0x8000_4002,
            ErrorKind::ClassNotRegistered => 0x8004_0154,
            ErrorKind::Disconnected => 0x8001_0108,
            ErrorKind::NoConversation => 0x400A,
            ErrorKind::Unsupported => 50,
            ErrorKind::OutOfResources => 8,
            ErrorKind::Other => 31,
        }
    }

    /// A short description, used when the error carries no message of its own.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AccessDenied => "access denied",
            ErrorKind::InvalidName => "invalid name",
            ErrorKind::InvalidParameter => "invalid parameter",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::WrongKind => "name belongs to an object of another kind",
            ErrorKind::PipeBusy => "all pipe instances are busy",
            ErrorKind::BrokenPipe => "broken pipe",
            ErrorKind::NoData => "the pipe is being closed",
            ErrorKind::MoreData => "more data is available",
            ErrorKind::InsufficientBuffer => "buffer too small",
            ErrorKind::MessageTooLarge => "message too large",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Abandoned => "mutex abandoned by its owner",
            ErrorKind::NotOwner => "not the owner",
            ErrorKind::TooManyPosts => "too many posts",
            ErrorKind::Full => "queue full",
            ErrorKind::QuotaExceeded => "quota exceeded",
            ErrorKind::PeerGone => "peer gone",
            ErrorKind::Protocol => "protocol violation",
            ErrorKind::ServerUnavailable => "server unavailable",
            ErrorKind::UnknownInterface => "unknown interface",
            ErrorKind::ProcNumOutOfRange => "procedure number out of range",
            ErrorKind::CallFailed => "the remote procedure call failed",
            ErrorKind::CallCancelled => "the remote procedure call was cancelled",
            ErrorKind::NoEndpoint => "no endpoint for the binding",
            ErrorKind::NeedsGateway => "needs the broker's network gateway",
            ErrorKind::NoInterface => "no such interface",
            ErrorKind::ClassNotRegistered => "class not registered",
            ErrorKind::Disconnected => "object disconnected from its clients",
            ErrorKind::NoConversation => "no conversation established",
            ErrorKind::Unsupported => "not supported",
            ErrorKind::OutOfResources => "out of resources",
            ErrorKind::Other => "operating system error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every ipckit call.
///
/// Windows counterpart: the code from `GetLastError()` or an `HRESULT`, which
/// [`win32_code`](Error::win32_code) reproduces. Unlike a bare code, it also says
/// what was being done and, where the OS failed, keeps the OS error as its source.
pub struct Error {
    kind: ErrorKind,
    /// A code that overrides the kind's default (e.g. `ERROR_SEM_TIMEOUT`).
    code: Option<u32>,
    detail: Option<Box<Detail>>,
}

struct Detail {
    message: Cow<'static, str>,
    source: Option<io::Error>,
}

impl Error {
    /// An error of `kind` with no further detail. Does not allocate.
    pub const fn new(kind: ErrorKind) -> Self {
        Error {
            kind,
            code: None,
            detail: None,
        }
    }

    /// An error of `kind` with a message saying what happened.
    pub fn with_message(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            code: None,
            detail: Some(Box::new(Detail {
                message: message.into(),
                source: None,
            })),
        }
    }

    /// An error from the OS, classified by its errno, with what was being done.
    pub fn from_io(context: impl Into<Cow<'static, str>>, source: io::Error) -> Self {
        Error {
            kind: kind_of_io(&source),
            code: None,
            detail: Some(Box::new(Detail {
                message: context.into(),
                source: Some(source),
            })),
        }
    }

    /// Replaces the Windows code this error reports (for calls whose Windows
    /// counterpart reports a code other than the kind's default).
    #[must_use]
    pub const fn with_win32_code(mut self, code: u32) -> Self {
        self.code = Some(code);
        self
    }

    /// What went wrong.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The Windows error code (or `HRESULT`, as `u32`) a ported program would expect.
    pub fn win32_code(&self) -> u32 {
        self.code.unwrap_or(self.kind.win32_code())
    }

    /// The OS error behind this error, if the OS reported one.
    pub fn os_error(&self) -> Option<&io::Error> {
        self.detail.as_ref().and_then(|d| d.source.as_ref())
    }

    /// The message, if the error carries one.
    pub fn message(&self) -> Option<&str> {
        self.detail.as_ref().map(|d| &*d.message)
    }
}

/// Classifies an OS error by its errno first (precise), then by `io::ErrorKind`.
fn kind_of_io(e: &io::Error) -> ErrorKind {
    use rustix::io::Errno;
    if let Some(raw) = e.raw_os_error() {
        let errno = Errno::from_raw_os_error(raw);
        return match errno {
            Errno::NOENT => ErrorKind::NotFound,
            Errno::ACCESS | Errno::PERM => ErrorKind::AccessDenied,
            Errno::EXIST => ErrorKind::AlreadyExists,
            Errno::NAMETOOLONG | Errno::LOOP => ErrorKind::InvalidName,
            Errno::INVAL => ErrorKind::InvalidParameter,
            Errno::PIPE => ErrorKind::NoData,
            Errno::CONNRESET => ErrorKind::BrokenPipe,
            Errno::CONNREFUSED => ErrorKind::ServerUnavailable,
            Errno::TIMEDOUT | Errno::AGAIN => ErrorKind::Timeout,
            Errno::NOMEM | Errno::NOSPC | Errno::MFILE | Errno::NFILE | Errno::NOBUFS => {
                ErrorKind::OutOfResources
            }
            Errno::NOSYS | Errno::OPNOTSUPP => ErrorKind::Unsupported,
            Errno::MSGSIZE => ErrorKind::MessageTooLarge,
            _ => ErrorKind::Other,
        };
    }
    match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::AccessDenied,
        io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        io::ErrorKind::BrokenPipe => ErrorKind::NoData,
        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => ErrorKind::BrokenPipe,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
        io::ErrorKind::InvalidInput => ErrorKind::InvalidParameter,
        io::ErrorKind::InvalidData => ErrorKind::Protocol,
        io::ErrorKind::OutOfMemory => ErrorKind::OutOfResources,
        io::ErrorKind::Unsupported => ErrorKind::Unsupported,
        _ => ErrorKind::Other,
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error {
            kind: kind_of_io(&e),
            code: None,
            detail: Some(Box::new(Detail {
                message: Cow::Borrowed(""),
                source: Some(e),
            })),
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        io::Error::from(e).into()
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match e.kind {
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::AccessDenied => io::ErrorKind::PermissionDenied,
            ErrorKind::AlreadyExists => io::ErrorKind::AlreadyExists,
            ErrorKind::InvalidName | ErrorKind::InvalidParameter => io::ErrorKind::InvalidInput,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::BrokenPipe | ErrorKind::PeerGone => io::ErrorKind::BrokenPipe,
            ErrorKind::NoData => io::ErrorKind::BrokenPipe,
            ErrorKind::Protocol => io::ErrorKind::InvalidData,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::OutOfResources => io::ErrorKind::OutOfMemory,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => {
                if d.message.is_empty() {
                    f.write_str(self.kind.as_str())?;
                } else {
                    f.write_str(&d.message)?;
                }
                if let Some(src) = &d.source {
                    write!(f, ": {src}")?;
                }
            }
            None => f.write_str(self.kind.as_str())?,
        }
        write!(f, " (win32 {})", self.win32_code())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.kind)
            .field("win32_code", &self.win32_code());
        if let Some(d) = &self.detail {
            if !d.message.is_empty() {
                s.field("message", &d.message);
            }
            if let Some(src) = &d.source {
                s.field("source", src);
            }
        }
        s.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.detail
            .as_ref()?
            .source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_spec_table() {
        let table = [
            (ErrorKind::NotFound, 2),
            (ErrorKind::AccessDenied, 5),
            (ErrorKind::BrokenPipe, 109),
            (ErrorKind::InvalidName, 123),
            (ErrorKind::AlreadyExists, 183),
            (ErrorKind::PipeBusy, 231),
            (ErrorKind::NoData, 232),
            (ErrorKind::MoreData, 234),
            (ErrorKind::Timeout, 258),
            (ErrorKind::NotOwner, 288),
            (ErrorKind::TooManyPosts, 298),
            (ErrorKind::ServerUnavailable, 1722),
            (ErrorKind::UnknownInterface, 1717),
            (ErrorKind::CallFailed, 1726),
            (ErrorKind::ProcNumOutOfRange, 1745),
            (ErrorKind::NoEndpoint, 1753),
            (ErrorKind::CallCancelled, 1818),
            (ErrorKind::NoInterface, 0x8000_4002),
            (ErrorKind::ClassNotRegistered, 0x8004_0154),
            (ErrorKind::Disconnected, 0x8001_0108),
            (ErrorKind::NoConversation, 0x400A),
        ];
        for (kind, code) in table {
            assert_eq!(Error::new(kind).win32_code(), code, "{kind:?}");
        }
    }

    #[test]
    fn override_code_wins() {
        let e = Error::new(ErrorKind::Timeout).with_win32_code(121);
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.win32_code(), 121);
    }

    #[test]
    fn io_errors_are_classified_by_errno() {
        let cases = [
            (rustix::io::Errno::NOENT, ErrorKind::NotFound),
            (rustix::io::Errno::EXIST, ErrorKind::AlreadyExists),
            (rustix::io::Errno::ACCESS, ErrorKind::AccessDenied),
            (rustix::io::Errno::PIPE, ErrorKind::NoData),
            (rustix::io::Errno::NOMEM, ErrorKind::OutOfResources),
            (rustix::io::Errno::IO, ErrorKind::Other),
        ];
        for (errno, kind) in cases {
            let e = Error::from_io("doing it", io::Error::from(errno));
            assert_eq!(e.kind(), kind, "{errno:?}");
            assert!(e.os_error().is_some());
            assert!(e.to_string().starts_with("doing it: "), "{e}");
        }
    }

    #[test]
    fn display_names_the_code_and_message() {
        let e = Error::with_message(
            ErrorKind::InvalidName,
            "pipe names start with \\\\.\\pipe\\",
        );
        assert_eq!(
            e.to_string(),
            "pipe names start with \\\\.\\pipe\\ (win32 123)"
        );
        assert_eq!(
            Error::new(ErrorKind::PipeBusy).to_string(),
            "all pipe instances are busy (win32 231)"
        );
    }

    #[test]
    fn error_is_small() {
        assert!(std::mem::size_of::<Error>() <= 24);
        assert!(std::mem::size_of::<Result<()>>() <= 24);
    }
}
