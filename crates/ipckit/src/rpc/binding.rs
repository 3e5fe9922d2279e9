//! String bindings: `[objuuid@]protseq:address[endpoint,option=value,...]`.
//!
//! Windows counterparts: `RpcStringBindingCompose` ([`Binding::compose`] and
//! `Binding::to_string`), `RpcStringBindingParse` ([`Binding::parse`]) and
//! `RpcBindingFromStringBinding` (which [`crate::rpc::Client::connect`] runs on a parsed binding).
//!
//! ```
//! use ipckit::rpc::{Binding, Protseq};
//!
//! let b = Binding::parse("ncacn_ip_tcp:127.0.0.1[4747]")?;
//! assert_eq!(b.protseq(), Protseq::Tcp);
//! assert_eq!((b.address(), b.endpoint()), ("127.0.0.1", Some("4747")));
//! let local = Binding::parse("ncalrpc:[calc]")?;
//! assert_eq!(local.endpoint(), Some("calc"));
//! let np = Binding::parse(r"ncacn_np:\\.[\pipe\calc]")?;
//! assert_eq!(np.to_string(), r"ncacn_np:\\.[\pipe\calc]");
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! A binding without endpoint (`ncacn_ip_tcp:host`) is *dynamic*: on Windows the endpoint mapper
//! supplies the endpoint on the first call. ipckit resolves bindings through a chain of
//! [`Resolver`]s; the broker's endpoint mapper will be one of them. Until it exists, resolving a
//! dynamic binding fails with [`ErrorKind::NoEndpoint`] (`EPT_S_NOT_REGISTERED`, 1753).

use std::fmt;

use super::Uuid;
use crate::error::{Error, ErrorKind, Result};

/// Longest string binding accepted, in bytes.
pub const MAX_BINDING_LEN: usize = 1024;
/// `RPC_S_INVALID_STRING_BINDING`.
const INVALID_STRING_BINDING: u32 = 1700;
/// `RPC_S_PROTSEQ_NOT_SUPPORTED`.
const PROTSEQ_NOT_SUPPORTED: u32 = 1703;
/// `RPC_S_INVALID_ENDPOINT_FORMAT`.
const INVALID_ENDPOINT_FORMAT: u32 = 1706;

/// A protocol sequence, the carrier of a binding.
///
/// Windows counterpart: the `protseq` strings of `RpcServerUseProtseqEp` and string bindings.
/// Only the three sequences ipckit carries are accepted; others (`ncadg_ip_udp`, `ncacn_http`,
/// ...) give `RPC_S_PROTSEQ_NOT_SUPPORTED` (1703).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protseq {
    /// `ncalrpc`: local RPC. ipckit carries it over a Unix stream socket in the user's private
    /// runtime folder (`RUNTIME/rpc/`, mode 0700).
    Local,
    /// `ncacn_np`: RPC over ipckit named pipes (`\\.\pipe\name`).
    NamedPipe,
    /// `ncacn_ip_tcp`: RPC over TCP.
    Tcp,
}

impl Protseq {
    /// The Windows name of the sequence.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protseq::Local => "ncalrpc",
            Protseq::NamedPipe => "ncacn_np",
            Protseq::Tcp => "ncacn_ip_tcp",
        }
    }

    /// Parses a protocol sequence name (case-insensitive, as on Windows).
    pub fn parse(s: &str) -> Result<Protseq> {
        match s.to_ascii_lowercase().as_str() {
            "ncalrpc" => Ok(Protseq::Local),
            "ncacn_np" => Ok(Protseq::NamedPipe),
            "ncacn_ip_tcp" => Ok(Protseq::Tcp),
            _ => Err(Error::with_message(
                ErrorKind::Unsupported,
                format!(
                    "protocol sequence {s:?} is not supported (ncalrpc, ncacn_np, ncacn_ip_tcp are)"
                ),
            )
            .with_win32_code(PROTSEQ_NOT_SUPPORTED)),
        }
    }
}

impl fmt::Display for Protseq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed string binding.
///
/// Windows counterpart: the string binding of `RpcStringBindingCompose` /
/// `RpcStringBindingParse` and the binding handle `RpcBindingFromStringBinding` makes from it
/// (a binding here holds no connection; [`crate::rpc::Client`] is the connected handle).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    object: Option<Uuid>,
    protseq: Protseq,
    address: String,
    endpoint: Option<String>,
    options: Vec<(String, String)>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::with_message(ErrorKind::InvalidParameter, msg.into())
        .with_win32_code(INVALID_STRING_BINDING)
}

fn bad_endpoint(msg: impl Into<String>) -> Error {
    Error::with_message(ErrorKind::InvalidParameter, msg.into())
        .with_win32_code(INVALID_ENDPOINT_FORMAT)
}

/// Characters that cannot appear inside a binding's parts (they delimit them).
fn clean(s: &str) -> bool {
    !s.chars()
        .any(|c| matches!(c, '[' | ']' | ',' | '=' | '@') || c.is_control())
}

impl Binding {
    /// Parses `[objuuid@]protseq:address[endpoint,option=value,...]` (`RpcStringBindingParse`).
    ///
    /// The endpoint may also be given as the option `endpoint=...`. Errors:
    /// `RPC_S_INVALID_STRING_BINDING` (1700) for bad syntax, `RPC_S_PROTSEQ_NOT_SUPPORTED` (1703),
    /// `RPC_S_INVALID_ENDPOINT_FORMAT` (1706) for an endpoint the sequence cannot use.
    pub fn parse(s: &str) -> Result<Binding> {
        if s.len() > MAX_BINDING_LEN {
            return Err(invalid(format!(
                "string binding longer than {MAX_BINDING_LEN} bytes"
            )));
        }
        let (object, rest) = match s.split_once('@') {
            Some((u, rest)) => (
                Some(Uuid::parse(u).map_err(|_| invalid(format!("bad object UUID {u:?}")))?),
                rest,
            ),
            None => (None, s),
        };
        let (protseq, rest) = rest.split_once(':').ok_or_else(|| {
            invalid(format!(
                "{s:?} has no protocol sequence (protseq:address[endpoint])"
            ))
        })?;
        let protseq = Protseq::parse(protseq)?;
        let (address, bracket) = match rest.find('[') {
            Some(i) => {
                let inner = rest[i + 1..].strip_suffix(']').ok_or_else(|| {
                    invalid(format!("{s:?}: the endpoint part must end with ']'"))
                })?;
                (&rest[..i], Some(inner))
            }
            None => (rest, None),
        };
        if !clean(address) {
            return Err(invalid(format!("{s:?}: bad network address {address:?}")));
        }
        let mut endpoint = None;
        let mut options = Vec::new();
        if let Some(inner) = bracket {
            for (idx, item) in inner.split(',').enumerate() {
                match item.split_once('=') {
                    Some((k, v)) => {
                        if k.is_empty() || !clean(k) || !clean(v) {
                            return Err(invalid(format!("{s:?}: bad option {item:?}")));
                        }
                        if k.eq_ignore_ascii_case("endpoint") {
                            if endpoint.is_some() {
                                return Err(invalid(format!("{s:?}: two endpoints")));
                            }
                            endpoint = Some(v.to_owned());
                        } else {
                            options.push((k.to_owned(), v.to_owned()));
                        }
                    }
                    None if idx == 0 => {
                        if !clean(item) {
                            return Err(invalid(format!("{s:?}: bad endpoint {item:?}")));
                        }
                        if !item.is_empty() {
                            endpoint = Some(item.to_owned());
                        }
                    }
                    None => return Err(invalid(format!("{s:?}: option {item:?} has no '='"))),
                }
            }
        }
        let b = Binding {
            object,
            protseq,
            address: address.to_owned(),
            endpoint,
            options,
        };
        b.validate()?;
        Ok(b)
    }

    /// Builds a binding from its parts (`RpcStringBindingCompose`), validating them as
    /// [`Binding::parse`] does.
    pub fn compose(
        object: Option<Uuid>,
        protseq: Protseq,
        address: &str,
        endpoint: Option<&str>,
        options: &[(&str, &str)],
    ) -> Result<Binding> {
        let parts_clean = clean(address)
            && endpoint.is_none_or(|e| clean(e) && !e.is_empty())
            && options.iter().all(|(k, v)| {
                !k.is_empty() && clean(k) && clean(v) && !k.eq_ignore_ascii_case("endpoint")
            });
        if !parts_clean {
            return Err(invalid(
                "a binding part contains a delimiter ([ ] , = @) or a control character",
            ));
        }
        let b = Binding {
            object,
            protseq,
            address: address.to_owned(),
            endpoint: endpoint.map(str::to_owned),
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        if b.to_string().len() > MAX_BINDING_LEN {
            return Err(invalid(format!(
                "string binding longer than {MAX_BINDING_LEN} bytes"
            )));
        }
        b.validate()?;
        Ok(b)
    }

    fn validate(&self) -> Result<()> {
        let Some(ep) = &self.endpoint else {
            return Ok(());
        };
        match self.protseq {
            Protseq::Local => {
                if ep.len() > 128 || ep.contains(['/', '\\']) || ep == "." || ep == ".." {
                    return Err(bad_endpoint(format!(
                        "ncalrpc endpoint {ep:?}: at most 128 bytes, no '/' or '\\'"
                    )));
                }
                if !self.address.is_empty() {
                    return Err(invalid("ncalrpc bindings have no network address"));
                }
            }
            Protseq::NamedPipe => {
                let ok = ep.len() > 6 && ep[..6].eq_ignore_ascii_case("\\pipe\\");
                if !ok {
                    return Err(bad_endpoint(format!(
                        "ncacn_np endpoint {ep:?} must be \\pipe\\NAME"
                    )));
                }
                crate::name::PipeName::parse(&format!("\\\\.{ep}"))
                    .map_err(|e| bad_endpoint(format!("ncacn_np endpoint {ep:?}: {e}")))?;
            }
            Protseq::Tcp => {
                // Port 0 lets a server take any free port (clients cannot reach it).
                if ep.parse::<u16>().is_err() {
                    return Err(bad_endpoint(format!(
                        "ncacn_ip_tcp endpoint {ep:?} must be a port number 0-65535"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The object UUID, if the binding names one.
    pub fn object(&self) -> Option<Uuid> {
        self.object
    }
    /// The protocol sequence.
    pub fn protseq(&self) -> Protseq {
        self.protseq
    }
    /// The network address (host name, IP address, `\\host` for pipes; empty for `ncalrpc`).
    pub fn address(&self) -> &str {
        &self.address
    }
    /// The endpoint (`ncalrpc` name, `\pipe\name`, TCP port); `None` for a dynamic binding.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
    /// The options after the endpoint, in order.
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }
    /// The value of option `key` (case-insensitive).
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The same binding with `endpoint` filled in (what an endpoint mapper does).
    pub fn with_endpoint(&self, endpoint: &str) -> Result<Binding> {
        let mut b = self.clone();
        b.endpoint = Some(endpoint.to_owned());
        if !clean(endpoint) || endpoint.is_empty() {
            return Err(bad_endpoint(format!("bad endpoint {endpoint:?}")));
        }
        b.validate()?;
        Ok(b)
    }

    /// Whether the binding names a server on this machine (always for `ncalrpc`; `\\.`, empty,
    /// `localhost` or a loopback address otherwise).
    pub fn is_local(&self) -> bool {
        let a = self.address.trim_start_matches('\\');
        match self.protseq {
            Protseq::Local => true,
            Protseq::NamedPipe => a.is_empty() || a == "." || a.eq_ignore_ascii_case("localhost"),
            Protseq::Tcp => {
                a.is_empty()
                    || a.eq_ignore_ascii_case("localhost")
                    || a.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

impl std::str::FromStr for Binding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Binding> {
        Binding::parse(s)
    }
}

impl fmt::Display for Binding {
    /// The string binding, as `RpcStringBindingCompose` writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.object {
            write!(f, "{o}@")?;
        }
        write!(f, "{}:{}", self.protseq, self.address)?;
        if self.endpoint.is_some() || !self.options.is_empty() {
            f.write_str("[")?;
            let mut first = true;
            if let Some(ep) = &self.endpoint {
                f.write_str(ep)?;
                first = false;
            }
            for (k, v) in &self.options {
                if !first {
                    f.write_str(",")?;
                }
                write!(f, "{k}={v}")?;
                first = false;
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

/// Turns a binding into one with an endpoint: the hook for dynamic endpoints.
///
/// Windows counterpart: the endpoint mapper (`ept_map` on port 135), which
/// `RpcBindingFromStringBinding` handles consult on the first call when the binding has no
/// endpoint. ipckit's session broker provides one ([`crate::broker::EndpointMapper`]);
/// [`resolve`] runs a chain of resolvers.
pub trait Resolver: Send + Sync {
    /// The binding with an endpoint, `Ok(None)` when this resolver does not know it.
    fn resolve(&self, binding: &Binding, interface: &super::InterfaceId)
    -> Result<Option<Binding>>;
}

/// Resolves `binding` for `interface`: a binding with an endpoint is returned as it is; a
/// dynamic one goes through `resolvers` in order (the RPC client passes the session broker's
/// [`EndpointMapper`](crate::broker::EndpointMapper)). With none that knows it, the error is
/// [`ErrorKind::NoEndpoint`] (`EPT_S_NOT_REGISTERED`, 1753).
pub fn resolve(
    binding: &Binding,
    interface: &super::InterfaceId,
    resolvers: &[&dyn Resolver],
) -> Result<Binding> {
    if binding.endpoint().is_some() {
        return Ok(binding.clone());
    }
    for r in resolvers {
        if let Some(b) = r.resolve(binding, interface)? {
            if b.endpoint().is_none() {
                return Err(Error::with_message(
                    ErrorKind::NoEndpoint,
                    "a resolver returned a binding without endpoint",
                ));
            }
            return Ok(b);
        }
    }
    Err(Error::with_message(
        ErrorKind::NoEndpoint,
        format!(
            "{binding} has no endpoint and the endpoint mapper knows none for {interface}: \
             is the server running and registered with the session broker (`ipckit broker \
             --status`)? Or give the endpoint in brackets, e.g. {binding}[NAME]"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn windows_examples() {
        let b = Binding::parse("ncacn_ip_tcp:192.168.1.5[4747]").unwrap();
        assert_eq!(b.address(), "192.168.1.5");
        assert_eq!(b.endpoint(), Some("4747"));
        assert!(!b.is_local());
        let b = Binding::parse(r"ncacn_np:\\server[\pipe\calc]").unwrap();
        assert_eq!(b.address(), r"\\server");
        assert!(!b.is_local());
        let b = Binding::parse("NCALRPC:[calc,Security=Impersonation Dynamic False]").unwrap();
        assert_eq!(b.protseq(), Protseq::Local);
        assert_eq!(b.option("security"), Some("Impersonation Dynamic False"));
        let b = Binding::parse(
            "6b29fc40-ca47-1067-b31d-00dd010662da@ncacn_ip_tcp:host[endpoint=80,x=y]",
        )
        .unwrap();
        assert_eq!(b.endpoint(), Some("80"));
        assert_eq!(
            b.to_string(),
            "6b29fc40-ca47-1067-b31d-00dd010662da@ncacn_ip_tcp:host[80,x=y]"
        );
        assert!(
            Binding::parse("ncacn_ip_tcp:host")
                .unwrap()
                .endpoint()
                .is_none()
        );
    }

    #[test]
    fn refusals_carry_the_rpc_codes() {
        let code = |s: &str| Binding::parse(s).unwrap_err().win32_code();
        assert_eq!(code("ncadg_ip_udp:host[5]"), 1703);
        assert_eq!(code("no-colon"), 1700);
        assert_eq!(code("ncalrpc:[calc"), 1700);
        assert_eq!(code("ncalrpc:[a,b]"), 1700);
        assert_eq!(code("ncacn_ip_tcp:h[65536]"), 1706);
        assert_eq!(code("ncacn_ip_tcp:h[http]"), 1706);
        assert_eq!(code("ncalrpc:[../x]"), 1706);
        assert_eq!(code(r"ncacn_np:[\mailslot\x]"), 1706);
        assert_eq!(code("zzz@ncalrpc:[x]"), 1700);
        assert_eq!(code(&format!("ncalrpc:[{}]", "a".repeat(2000))), 1700);
    }

    #[test]
    fn dynamic_bindings_need_the_mapper() {
        let b = Binding::parse("ncacn_ip_tcp:localhost").unwrap();
        let iface = super::super::InterfaceId::new(Uuid::from_u128(1), 1, 0);
        let e = resolve(&b, &iface, &[]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoEndpoint);
        assert_eq!(e.win32_code(), 1753);
        struct Fixed;
        impl Resolver for Fixed {
            fn resolve(
                &self,
                b: &Binding,
                _: &super::super::InterfaceId,
            ) -> Result<Option<Binding>> {
                b.with_endpoint("4747").map(Some)
            }
        }
        assert_eq!(
            resolve(&b, &iface, &[&Fixed]).unwrap().endpoint(),
            Some("4747")
        );
    }

    fn part() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_. -]{0,12}"
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = Binding::parse(&s);
        }

        #[test]
        fn parse_never_panics_near_valid(
            p in prop::sample::select(vec!["ncalrpc", "ncacn_np", "ncacn_ip_tcp", "x"]),
            tail in "[\\[\\]@,=:a-z0-9\\\\]{0,20}",
        ) {
            let _ = Binding::parse(&format!("{p}:{tail}"));
        }

        #[test]
        fn compose_then_parse_round_trips(
            obj in proptest::option::of(any::<u128>()),
            kind in 0..3u8,
            addr in "[a-z0-9.]{0,12}",
            name in "[a-zA-Z0-9_-]{1,20}",
            port in 1..=65535u16,
            opts in proptest::collection::vec(("[a-z]{1,6}", part()), 0..3),
        ) {
            let (protseq, addr, ep) = match kind {
                0 => (Protseq::Local, String::new(), name.clone()),
                1 => (Protseq::NamedPipe, format!("\\\\{addr}"), format!("\\pipe\\{name}")),
                _ => (Protseq::Tcp, addr, port.to_string()),
            };
            let opts: Vec<(&str, &str)> = opts
                .iter()
                .filter(|(k, _)| k != "endpoint")
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let b = Binding::compose(obj.map(Uuid::from_u128), protseq, &addr, Some(&ep), &opts).unwrap();
            let again = Binding::parse(&b.to_string()).unwrap();
            prop_assert_eq!(again, b);
        }
    }
}
