//! Windows-style names: parsing, validation and the encoding that maps them to OS names.
//!
//! ipckit takes the names a Windows program uses, and this module is the one place
//! that reads them. Parsing does no I/O; [`crate::namespace::Namespace`] turns a
//! parsed name into a path or a POSIX shared-memory name.
//!
//! ```
//! use ipckit::name::{Name, ObjectName, PipeName, Scope, Server};
//!
//! let pipe = PipeName::parse(r"\\.\pipe\MyApp\Control")?;
//! assert_eq!(pipe.server(), &Server::Local);
//! assert_eq!(pipe.name(), r"MyApp\Control");
//! // Pipe names are case-insensitive, as on Windows.
//! assert_eq!(pipe, PipeName::parse(r"\\.\PIPE\myapp\control")?);
//!
//! let obj = ObjectName::parse(r"Global\ready")?;
//! assert_eq!(obj.scope(), Scope::Global);
//! assert_eq!(obj.name(), "ready");
//!
//! // Anything that could escape the namespace folders is refused before it reaches the file system.
//! assert_eq!(PipeName::parse(r"\\.\pipe\..\..\etc").unwrap_err().kind(), ipckit::ErrorKind::InvalidName);
//!
//! assert!(matches!(Name::parse(r"\\*\mailslot\news")?, Name::Mailslot(_)));
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! # The forms
//!
//! | Windows form | type | notes |
//! | --- | --- | --- |
//! | `\\.\pipe\NAME` | [`PipeName`] with [`Server::Local`] | NAME may contain `\` (pseudo-folders); case-insensitive; whole string ≤ 256 UTF-16 units |
//! | `\\HOST\pipe\NAME` | [`PipeName`] with [`Server::Remote`] | carried by the broker's network gateway |
//! | `\\.\mailslot\[path\]NAME` | [`MailslotName`] with [`MailslotTarget::Local`] | case-insensitive; ≤ 260 units (`MAX_PATH`) |
//! | `\\HOST\mailslot\NAME`, `\\DOMAIN\mailslot\NAME` | [`MailslotTarget::Remote`] | a host or a domain: the two are told apart only when sending |
//! | `\\*\mailslot\NAME` | [`MailslotTarget::Broadcast`] | every host of the primary domain |
//! | `NAME`, `Local\NAME`, `Global\NAME` | [`ObjectName`] | file mappings, mutexes, events, semaphores; case-sensitive; no further `\`; ≤ 260 units |
//!
//! Refused with [`ErrorKind::InvalidName`]: empty names or components, NUL and other
//! control characters, `/`, `.` and `..` components, over-long names, unknown prefixes
//! (`Session\1\x`, `global\x`), malformed host names.
//!
//! # Differences from Windows
//! - Windows allows `/` and control characters in object names; ipckit refuses them so that
//!   no name can mean two things to the file system.
//! - `Session\N\` prefixes (another logon session's namespace) are not supported.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};

/// Longest pipe name, the whole string included, in UTF-16 units (Windows: 256).
pub const MAX_PIPE_NAME: usize = 256;
/// Longest mailslot or kernel-object name in UTF-16 units (Windows: `MAX_PATH`, 260).
pub const MAX_PATH: usize = 260;
/// Longest host or domain name in a UNC name.
pub const MAX_HOST: usize = 255;

/// Which machine a pipe name refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Server {
    /// `\\.\`: this machine.
    Local,
    /// `\\HOST\`: another machine (or this one by its network name), reached through
    /// the broker's gateway. The host is kept lower-case.
    Remote(String),
}

/// Where a mailslot name sends to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MailslotTarget {
    /// `\\.\mailslot\...`: this machine. The only form a mailslot can be created with.
    Local,
    /// `\\HOST\mailslot\...` or `\\DOMAIN\mailslot\...`: one host, or every host of a
    /// domain (the broker's configuration says which). Kept lower-case.
    Remote(String),
    /// `\\*\mailslot\...`: every host of the primary domain.
    Broadcast,
}

/// The namespace a kernel object lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `Local\` or no prefix: this user's session. Windows: the session namespace.
    Local,
    /// `Global\`: machine-wide, shared with other users who are given access.
    Global,
}

/// A named pipe's name. Windows counterpart: the `lpName` of `CreateNamedPipe` / `CreateFile`.
///
/// Equality and hashing ignore case, as Windows does; [`name`](PipeName::name) keeps the
/// spelling it was created with.
#[derive(Debug, Clone)]
pub struct PipeName {
    server: Server,
    name: String,
    key: String,
}

/// A mailslot's name. Windows counterpart: the `lpName` of `CreateMailslot` / `CreateFile`.
///
/// Equality ignores case, as on Windows.
#[derive(Debug, Clone)]
pub struct MailslotName {
    target: MailslotTarget,
    name: String,
    key: String,
}

/// A kernel object's name: file mapping, mutex, event or semaphore (one shared namespace).
/// Windows counterpart: the `lpName` of `CreateFileMapping`, `CreateMutex`, `CreateEvent`,
/// `CreateSemaphore`. Case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectName {
    scope: Scope,
    name: String,
}

/// Any name ipckit takes, told apart by its form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Name {
    /// `\\SERVER\pipe\NAME`
    Pipe(PipeName),
    /// `\\TARGET\mailslot\NAME`
    Mailslot(MailslotName),
    /// `[Local\|Global\]NAME`
    Object(ObjectName),
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::with_message(ErrorKind::InvalidName, msg.into())
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Checks one component of a pipe or mailslot path, or a whole object name.
fn check_component(c: &str, what: &str) -> Result<()> {
    if c.is_empty() {
        return Err(invalid(format!("{what}: empty name or empty component")));
    }
    if c == "." || c == ".." {
        return Err(invalid(format!("{what}: `{c}` components are not allowed")));
    }
    if let Some(bad) = c.chars().find(|&ch| ch == '/' || ch.is_control()) {
        return Err(invalid(format!("{what}: character {bad:?} is not allowed")));
    }
    Ok(())
}

/// Splits `\\SERVER\KIND\REST`, returning (server, kind, rest).
fn split_unc(s: &str) -> Option<(&str, &str, &str)> {
    let body = s.strip_prefix(r"\\")?;
    let (server, after) = body.split_once('\\')?;
    let (kind, rest) = after.split_once('\\')?;
    Some((server, kind, rest))
}

fn check_host(host: &str) -> Result<String> {
    if host.is_empty() || host.len() > MAX_HOST {
        return Err(invalid("host name must have 1 to 255 characters"));
    }
    if host.starts_with(['.', '-']) || host.ends_with('-') {
        return Err(invalid(format!("host name {host:?} is malformed")));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(invalid(format!(
            "host name {host:?} may only contain letters, digits, `.`, `-` and `_`"
        )));
    }
    Ok(host.to_ascii_lowercase())
}

fn check_path(rest: &str, what: &str) -> Result<()> {
    if rest.is_empty() {
        return Err(invalid(format!(
            "{what}: the name after the prefix is empty"
        )));
    }
    rest.split('\\').try_for_each(|c| check_component(c, what))
}

/// Windows compares these names case-insensitively; this is the folded form.
fn fold_case(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

impl PipeName {
    /// Parses `\\.\pipe\NAME` or `\\HOST\pipe\NAME`.
    pub fn parse(s: &str) -> Result<Self> {
        const WHAT: &str = "pipe name";
        let (server, kind, rest) = split_unc(s)
            .ok_or_else(|| invalid(format!(r"pipe names look like \\.\pipe\NAME, not {s:?}")))?;
        if !kind.eq_ignore_ascii_case("pipe") {
            return Err(invalid(format!(
                r"pipe names look like \\.\pipe\NAME, not {s:?}"
            )));
        }
        if utf16_len(s) > MAX_PIPE_NAME {
            return Err(invalid(format!(
                "pipe name longer than {MAX_PIPE_NAME} characters"
            )));
        }
        check_path(rest, WHAT)?;
        let server = if server == "." {
            Server::Local
        } else {
            Server::Remote(check_host(server)?)
        };
        Ok(PipeName {
            server,
            key: fold_case(rest),
            name: rest.to_owned(),
        })
    }

    /// A local pipe `\\.\pipe\NAME` from its NAME part.
    pub fn local(name: &str) -> Result<Self> {
        Self::parse(&format!(r"\\.\pipe\{name}"))
    }

    /// The machine the name refers to.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The NAME part, as spelled when parsed (may contain `\`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a `\\.\` name.
    pub fn is_local(&self) -> bool {
        self.server == Server::Local
    }

    /// The case-folded NAME part: what two spellings of one pipe share.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl PartialEq for PipeName {
    fn eq(&self, other: &Self) -> bool {
        self.server == other.server && self.key == other.key
    }
}
impl Eq for PipeName {}
impl std::hash::Hash for PipeName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.server.hash(state);
        self.key.hash(state);
    }
}

impl fmt::Display for PipeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server {
            Server::Local => write!(f, r"\\.\pipe\{}", self.name),
            Server::Remote(h) => write!(f, r"\\{h}\pipe\{}", self.name),
        }
    }
}

impl MailslotName {
    /// Parses `\\.\mailslot\[path\]NAME`, `\\HOST\mailslot\NAME`, `\\DOMAIN\mailslot\NAME`
    /// or `\\*\mailslot\NAME`.
    pub fn parse(s: &str) -> Result<Self> {
        const WHAT: &str = "mailslot name";
        let (target, kind, rest) = split_unc(s).ok_or_else(|| {
            invalid(format!(
                r"mailslot names look like \\.\mailslot\NAME, not {s:?}"
            ))
        })?;
        if !kind.eq_ignore_ascii_case("mailslot") {
            return Err(invalid(format!(
                r"mailslot names look like \\.\mailslot\NAME, not {s:?}"
            )));
        }
        if utf16_len(s) > MAX_PATH {
            return Err(invalid(format!(
                "mailslot name longer than {MAX_PATH} characters"
            )));
        }
        check_path(rest, WHAT)?;
        let target = match target {
            "." => MailslotTarget::Local,
            "*" => MailslotTarget::Broadcast,
            host => MailslotTarget::Remote(check_host(host)?),
        };
        Ok(MailslotName {
            target,
            key: fold_case(rest),
            name: rest.to_owned(),
        })
    }

    /// A local mailslot `\\.\mailslot\NAME` from its NAME part.
    pub fn local(name: &str) -> Result<Self> {
        Self::parse(&format!(r"\\.\mailslot\{name}"))
    }

    /// Where the name sends to.
    pub fn target(&self) -> &MailslotTarget {
        &self.target
    }

    /// The `[path\]NAME` part, as spelled when parsed.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a `\\.\` name (the only form `CreateMailslot` accepts).
    pub fn is_local(&self) -> bool {
        self.target == MailslotTarget::Local
    }

    /// The case-folded NAME part.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl PartialEq for MailslotName {
    fn eq(&self, other: &Self) -> bool {
        self.target == other.target && self.key == other.key
    }
}
impl Eq for MailslotName {}
impl std::hash::Hash for MailslotName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.target.hash(state);
        self.key.hash(state);
    }
}

impl fmt::Display for MailslotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            MailslotTarget::Local => write!(f, r"\\.\mailslot\{}", self.name),
            MailslotTarget::Remote(h) => write!(f, r"\\{h}\mailslot\{}", self.name),
            MailslotTarget::Broadcast => write!(f, r"\\*\mailslot\{}", self.name),
        }
    }
}

impl ObjectName {
    /// Parses `NAME`, `Local\NAME` or `Global\NAME`. The prefixes are case-sensitive,
    /// as they are for `CreateMutex` and friends.
    pub fn parse(s: &str) -> Result<Self> {
        const WHAT: &str = "object name";
        if utf16_len(s) > MAX_PATH {
            return Err(invalid(format!(
                "object name longer than {MAX_PATH} characters"
            )));
        }
        let (scope, name) = if let Some(n) = s.strip_prefix(r"Local\") {
            (Scope::Local, n)
        } else if let Some(n) = s.strip_prefix(r"Global\") {
            (Scope::Global, n)
        } else {
            (Scope::Local, s)
        };
        if let Some((prefix, _)) = name.split_once('\\') {
            return Err(invalid(format!(
                r"object names are NAME, Local\NAME or Global\NAME; unknown prefix {prefix:?}\"
            )));
        }
        check_component(name, WHAT)?;
        Ok(ObjectName {
            scope,
            name: name.to_owned(),
        })
    }

    /// An object in this user's session (`Local\NAME`).
    pub fn local(name: &str) -> Result<Self> {
        Self::parse(&format!(r"Local\{name}"))
    }

    /// The namespace of the object.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The name without its prefix.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope {
            Scope::Local => write!(f, r"Local\{}", self.name),
            Scope::Global => write!(f, r"Global\{}", self.name),
        }
    }
}

impl Name {
    /// Parses any name: `\\...\pipe\...`, `\\...\mailslot\...`, else a kernel object name.
    pub fn parse(s: &str) -> Result<Self> {
        if s.starts_with(r"\\") {
            match split_unc(s) {
                Some((_, kind, _)) if kind.eq_ignore_ascii_case("pipe") => {
                    PipeName::parse(s).map(Name::Pipe)
                }
                Some((_, kind, _)) if kind.eq_ignore_ascii_case("mailslot") => {
                    MailslotName::parse(s).map(Name::Mailslot)
                }
                _ => Err(invalid(format!(
                    r"{s:?}: names starting with \\ must be \\SERVER\pipe\NAME or \\SERVER\mailslot\NAME"
                ))),
            }
        } else {
            ObjectName::parse(s).map(Name::Object)
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Pipe(n) => n.fmt(f),
            Name::Mailslot(n) => n.fmt(f),
            Name::Object(n) => n.fmt(f),
        }
    }
}

impl std::str::FromStr for Name {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Name::parse(s)
    }
}
impl std::str::FromStr for PipeName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        PipeName::parse(s)
    }
}
impl std::str::FromStr for MailslotName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        MailslotName::parse(s)
    }
}
impl std::str::FromStr for ObjectName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ObjectName::parse(s)
    }
}

/// The reversible encoding of a validated name into one OS file-name component.
///
/// Bytes `A-Z a-z 0-9 . _ -` stand for themselves (but a leading `.` does not); every other
/// byte of the UTF-8 form (including `\`, `%`, `~` and spaces) becomes `%XX` (upper-case hex).
/// An encoded component never starts with `.`, so dot-files in ipckit's folders are its own. When the result
/// would be longer than `limit` bytes, the component is instead `~` followed by the first
/// 32 hex digits of the SHA-256 of the name: `~` never appears in an encoded name, so the
/// two forms cannot collide, and the result never contains `/` or NUL, is never `.` or
/// `..` and is at most `max(limit, 33)` bytes long.
pub fn encode_component(name: &str, limit: usize) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        // A leading `.` is escaped: dot-files are reserved for ipckit's own bookkeeping.
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(
                char::from_digit(u32::from(b >> 4), 16)
                    .unwrap()
                    .to_ascii_uppercase(),
            );
            out.push(
                char::from_digit(u32::from(b & 15), 16)
                    .unwrap()
                    .to_ascii_uppercase(),
            );
        }
    }
    if out.len() > limit || out.is_empty() {
        hashed_component(name)
    } else {
        out
    }
}

fn hashed_component(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let mut out = String::with_capacity(33);
    out.push('~');
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Reverses [`encode_component`]. Returns `None` for a hashed (`~...`) component or
/// anything that is not an encoding.
pub fn decode_component(component: &str) -> Option<String> {
    if component.starts_with('~') {
        return None;
    }
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = component.get(i + 1..i + 3)?;
                if hex.bytes().any(|b| b.is_ascii_lowercase()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && i > 0) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(r: Result<impl fmt::Debug>) -> ErrorKind {
        r.unwrap_err().kind()
    }

    #[test]
    fn pipe_forms() {
        let p = PipeName::parse(r"\\.\pipe\a\b c").unwrap();
        assert!(p.is_local());
        assert_eq!(p.name(), r"a\b c");
        assert_eq!(p.to_string(), r"\\.\pipe\a\b c");
        let r = PipeName::parse(r"\\Server-1.corp\Pipe\x").unwrap();
        assert_eq!(r.server(), &Server::Remote("server-1.corp".into()));
        assert_eq!(r.to_string(), r"\\server-1.corp\pipe\x");
        assert_eq!(
            PipeName::parse(r"\\.\pipe\ABC").unwrap(),
            PipeName::parse(r"\\.\pipe\abc").unwrap()
        );
    }

    #[test]
    fn pipe_rejections() {
        for bad in [
            "",
            r"\\.\pipe\",
            r"\\.\pipe",
            r"\.\pipe\x",
            r"\\.\pipes\x",
            r"\\.\pipe\a\\b",
            r"\\.\pipe\a\",
            r"\\.\pipe\..",
            r"\\.\pipe\a\..\b",
            r"\\.\pipe\.",
            r"\\.\pipe\a/b",
            "\\\\.\\pipe\\a\0b",
            "\\\\.\\pipe\\a\nb",
            r"\\\pipe\x",
            r"\\bad host\pipe\x",
            r"\\..\pipe\x",
            r"\\*\pipe\x",
        ] {
            assert_eq!(
                kind(PipeName::parse(bad)),
                ErrorKind::InvalidName,
                "{bad:?}"
            );
        }
        let long = format!(r"\\.\pipe\{}", "x".repeat(MAX_PIPE_NAME - 9));
        assert!(PipeName::parse(&long).is_ok());
        let too_long = format!(r"\\.\pipe\{}", "x".repeat(MAX_PIPE_NAME - 8));
        assert_eq!(kind(PipeName::parse(&too_long)), ErrorKind::InvalidName);
    }

    #[test]
    fn mailslot_forms() {
        let l = MailslotName::parse(r"\\.\mailslot\app\inbox").unwrap();
        assert_eq!(l.target(), &MailslotTarget::Local);
        assert_eq!(l.name(), r"app\inbox");
        let b = MailslotName::parse(r"\\*\mailslot\news").unwrap();
        assert_eq!(b.target(), &MailslotTarget::Broadcast);
        assert_eq!(b.to_string(), r"\\*\mailslot\news");
        let d = MailslotName::parse(r"\\WORKGROUP\MAILSLOT\news").unwrap();
        assert_eq!(d.target(), &MailslotTarget::Remote("workgroup".into()));
        assert_eq!(
            kind(MailslotName::parse(r"\\.\mailslot\")),
            ErrorKind::InvalidName
        );
        assert_eq!(
            kind(MailslotName::parse(r"\\.\pipe\x")),
            ErrorKind::InvalidName
        );
    }

    #[test]
    fn object_forms() {
        assert_eq!(
            ObjectName::parse("x").unwrap(),
            ObjectName::parse(r"Local\x").unwrap()
        );
        let g = ObjectName::parse(r"Global\x y").unwrap();
        assert_eq!((g.scope(), g.name()), (Scope::Global, "x y"));
        assert_ne!(
            ObjectName::parse("X").unwrap(),
            ObjectName::parse("x").unwrap()
        );
        for bad in [
            "",
            r"Local\",
            r"Global\",
            r"global\x",
            r"Session\1\x",
            r"a\b",
            r"Local\a\b",
            "..",
            r"Local\..",
            ".",
            "a/b",
            "a\0",
        ] {
            assert_eq!(
                kind(ObjectName::parse(bad)),
                ErrorKind::InvalidName,
                "{bad:?}"
            );
        }
        assert!(ObjectName::parse(&"x".repeat(MAX_PATH)).is_ok());
        assert_eq!(
            kind(ObjectName::parse(&"x".repeat(MAX_PATH + 1))),
            ErrorKind::InvalidName
        );
    }

    #[test]
    fn any_name() {
        assert!(matches!(Name::parse(r"\\.\pipe\x").unwrap(), Name::Pipe(_)));
        assert!(matches!(
            Name::parse(r"\\.\mailslot\x").unwrap(),
            Name::Mailslot(_)
        ));
        assert!(matches!(Name::parse("x").unwrap(), Name::Object(_)));
        assert_eq!(kind(Name::parse(r"\\.\foo\x")), ErrorKind::InvalidName);
    }

    #[test]
    fn encoding() {
        assert_eq!(encode_component(r"a\B c%~", 64), "a%5CB%20c%25%7E");
        assert_eq!(
            decode_component("a%5CB%20c%25%7E").as_deref(),
            Some(r"a\B c%~")
        );
        let h = encode_component(&"x".repeat(100), 64);
        assert!(h.starts_with('~') && h.len() == 33, "{h}");
        assert_eq!(decode_component(&h), None);
        assert_eq!(decode_component("a/b"), None);
        assert_eq!(decode_component("%5c"), None);
    }
}
