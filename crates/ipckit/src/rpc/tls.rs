//! TLS on `ncacn_ip_tcp` connections (feature `tls`): TLS 1.2 and 1.3 through rustls with the
//! ring provider.
//!
//! ```
//! use ipckit::rpc::{TlsClientConfig, TlsServerConfig};
//!
//! // A self-signed server certificate (rcgen here; any DER certificate and PKCS#8 key do).
//! let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
//! let cert = server.cert.der().to_vec();
//! let key = server.signing_key.serialize_der();
//! let on_server = TlsServerConfig::new(vec![cert.clone()], key)?;
//! // The client trusts exactly that certificate.
//! let on_client = TlsClientConfig::pinned(cert)?;
//! # let _ = (on_server, on_client);
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! Windows counterpart: none in `rpcrt4` itself (Windows protects `ncacn_ip_tcp` with an
//! authentication service, `RpcBindingSetAuthInfo` with `RPC_C_AUTHN_GSS_NEGOTIATE` or
//! Schannel); ipckit uses TLS instead, and gives the client's certificate to the methods in
//! [`super::Caller::peer_certificate`].

use std::fmt;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::link::Link;
use crate::error::{Error, ErrorKind, Result};
use crate::sys::socket;

/// Bytes read from the socket at once (a TLS record is at most about 16.5 KiB).
const READ_CHUNK: usize = 18 * 1024;
/// At most this many received bytes wait for rustls to take them (it takes them as soon as
/// its reader is emptied, so only a misbehaving peer comes near).
const MAX_UNPROCESSED: usize = 256 * 1024;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad_config(what: &str, e: impl fmt::Display) -> Error {
    Error::with_message(ErrorKind::InvalidParameter, format!("{what}: {e}"))
}

fn certs(ders: Vec<Vec<u8>>) -> Vec<CertificateDer<'static>> {
    ders.into_iter().map(CertificateDer::from).collect()
}

/// The certificates of a PEM text (every `CERTIFICATE` section, in order), as DER for
/// [`TlsServerConfig`] and [`TlsClientConfig`] (feature `tls`).
///
/// Errors: [`ErrorKind::InvalidParameter`] when a section is damaged or there is none.
///
/// Windows counterpart: `CryptStringToBinary` with `CRYPT_STRING_BASE64HEADER`, as
/// certificates are imported into a store.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_config("bad PEM certificate", e))?;
    if certs.is_empty() {
        return Err(bad_config("PEM", "no CERTIFICATE section"));
    }
    Ok(certs)
}

/// The private key of a PEM text (the first `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE
/// KEY` section), as DER for [`TlsServerConfig::new`] and
/// [`TlsClientConfig::client_certificate`] (feature `tls`).
///
/// Errors: [`ErrorKind::InvalidParameter`] when there is no readable key.
///
/// Windows counterpart: `CryptDecodeObjectEx` of a PEM-decoded key blob.
pub fn pem_private_key(pem: &[u8]) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let k = PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad_config("bad PEM key", e))?;
    Ok(k.secret_der().to_vec())
}

fn key(der: Vec<u8>) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::try_from(der).map_err(|e| bad_config("not a PKCS#8, PKCS#1 or SEC1 key", e))
}

fn roots(ders: &[Vec<u8>]) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for d in ders {
        store
            .add(CertificateDer::from(d.clone()))
            .map_err(|e| bad_config("bad CA certificate", e))?;
    }
    Ok(store)
}

/// Accepts exactly the certificates it holds (compared byte for byte), as a self-signed
/// deployment trusts its peers; the handshake signatures are still checked.
#[derive(Debug)]
struct Pinned {
    certs: Vec<Vec<u8>>,
    algs: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn new(certs: Vec<Vec<u8>>) -> Pinned {
        Pinned {
            certs,
            algs: provider().signature_verification_algorithms,
        }
    }
    fn check(&self, end_entity: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        if self.certs.iter().any(|c| c[..] == end_entity[..]) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The server side of TLS on `ncacn_ip_tcp` ([`super::ServerOptions::tls`]): the server's
/// certificate chain and key, and which client certificates it requires, if any.
///
/// Windows counterpart: the server's authentication registration
/// (`RpcServerRegisterAuthInfo`, with an Schannel credential for TLS). Difference: TLS
/// replaces the RPC authentication services; the client's identity is its certificate
/// ([`super::Caller::peer_certificate`]), not a Windows account.
#[derive(Clone)]
pub struct TlsServerConfig {
    config: Arc<rustls::ServerConfig>,
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
}

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerConfig")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsServerConfig {
    /// A server certificate chain (DER, the server's own certificate first) and its private
    /// key (DER: PKCS#8, PKCS#1 or SEC1); clients need no certificate.
    ///
    /// Errors: [`ErrorKind::InvalidParameter`] when the key is not readable or does not suit
    /// the certificate.
    pub fn new(cert_chain: Vec<Vec<u8>>, private_key: Vec<u8>) -> Result<TlsServerConfig> {
        let config = Self::build(&cert_chain, &private_key, None)?;
        Ok(TlsServerConfig {
            config,
            chain: cert_chain,
            key: private_key,
        })
    }

    /// Requires every client to present one of these certificates (DER, compared byte for
    /// byte: the self-signed way); a client without one, or with another, fails the handshake.
    pub fn require_client_certificates(self, pinned: Vec<Vec<u8>>) -> Result<TlsServerConfig> {
        let v: Arc<dyn ClientCertVerifier> = Arc::new(Pinned::new(pinned));
        self.with_verifier(v)
    }

    /// Requires every client to present a certificate issued by one of these CA certificates
    /// (DER), verified as webpki verifies client certificates (chain, validity dates, usage).
    pub fn require_client_ca(self, ca_certs: Vec<Vec<u8>>) -> Result<TlsServerConfig> {
        let v =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&ca_certs)?), provider())
                .build()
                .map_err(|e| bad_config("bad client CA", e))?;
        self.with_verifier(v)
    }

    fn with_verifier(self, v: Arc<dyn ClientCertVerifier>) -> Result<TlsServerConfig> {
        let config = Self::build(&self.chain, &self.key, Some(v))?;
        Ok(TlsServerConfig { config, ..self })
    }

    fn build(
        chain: &[Vec<u8>],
        key_der: &[u8],
        clients: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Result<Arc<rustls::ServerConfig>> {
        let b = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad_config("TLS", e))?;
        let b = match clients {
            Some(v) => b.with_client_cert_verifier(v),
            None => b.with_no_client_auth(),
        };
        let config = b
            .with_single_cert(certs(chain.to_vec()), key(key_der.to_vec())?)
            .map_err(|e| bad_config("bad server certificate or key", e))?;
        Ok(Arc::new(config))
    }
}

#[derive(Clone)]
enum Trust {
    Pinned(Vec<u8>),
    Ca(Vec<Vec<u8>>),
}

/// The client side of TLS on `ncacn_ip_tcp` ([`super::ClientOptions::tls`]): how the server's
/// certificate is verified, and the client's own certificate if the server asks for one.
///
/// Windows counterpart: `RpcBindingSetAuthInfo` with an Schannel credential. Difference:
/// ipckit verifies either a pinned certificate or a CA chain with the server's name; there is
/// no system certificate store.
#[derive(Clone)]
pub struct TlsClientConfig {
    config: Arc<rustls::ClientConfig>,
    trust: Trust,
    server_name: Option<String>,
    identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientConfig")
            .field("pinned", &matches!(self.trust, Trust::Pinned(_)))
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl TlsClientConfig {
    /// Trusts exactly this server certificate (DER, compared byte for byte, as for a
    /// self-signed server); its names and dates are not checked.
    pub fn pinned(server_cert: Vec<u8>) -> Result<TlsClientConfig> {
        Self::make(Trust::Pinned(server_cert), None, None)
    }

    /// Trusts servers whose certificate chains to one of these CA certificates (DER) and
    /// names the server: [`server_name`](Self::server_name), or else the binding's host.
    pub fn ca(ca_certs: Vec<Vec<u8>>) -> Result<TlsClientConfig> {
        Self::make(Trust::Ca(ca_certs), None, None)
    }

    /// The name the server's certificate must carry (and the SNI sent), instead of the
    /// binding's host.
    pub fn server_name(self, name: &str) -> Result<TlsClientConfig> {
        ServerName::try_from(name.to_owned())
            .map_err(|e| bad_config(&format!("bad server name {name:?}"), e))?;
        Self::make(self.trust, Some(name.to_owned()), self.identity)
    }

    /// Presents this certificate chain (DER, the client's own first) with its private key
    /// (DER) when the server asks for a client certificate.
    pub fn client_certificate(
        self,
        cert_chain: Vec<Vec<u8>>,
        private_key: Vec<u8>,
    ) -> Result<TlsClientConfig> {
        Self::make(
            self.trust,
            self.server_name,
            Some((cert_chain, private_key)),
        )
    }

    fn make(
        trust: Trust,
        server_name: Option<String>,
        identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    ) -> Result<TlsClientConfig> {
        let b = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad_config("TLS", e))?;
        let b = match &trust {
            Trust::Pinned(c) => b
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned::new(vec![c.clone()]))),
            Trust::Ca(c) => b.with_root_certificates(roots(c)?),
        };
        let config = match &identity {
            Some((chain, k)) => b
                .with_client_auth_cert(certs(chain.clone()), key(k.clone())?)
                .map_err(|e| bad_config("bad client certificate or key", e))?,
            None => b.with_no_client_auth(),
        };
        Ok(TlsClientConfig {
            config: Arc::new(config),
            trust,
            server_name,
            identity,
        })
    }
}

/// A TLS connection over a connected TCP socket. Sends and receives run at the same time from
/// different threads: the TLS state is locked only to encrypt or decrypt, never while the
/// socket blocks.
pub(crate) struct TlsLink {
    fd: OwnedFd,
    state: Mutex<State>,
    send_lock: Mutex<()>,
}

struct State {
    conn: rustls::Connection,
    /// Bytes received and not yet taken by rustls (it takes them as its buffers allow).
    raw: Vec<u8>,
}

fn tls_failed(e: rustls::Error) -> Error {
    use rustls::AlertDescription as A;
    match e {
        // With TLS 1.3 a client learns that the server refused its certificate (or its lack of
        // one) only from the alert that answers its first data: an access refusal. (After the
        // handshake, a decrypt error can only be the server failing the client's certificate
        // signature.)
        rustls::Error::AlertReceived(
            a @ (A::CertificateRequired
            | A::DecryptError
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied),
        ) => Error::with_message(
            ErrorKind::AccessDenied,
            format!("TLS: the peer refused our certificate or its absence (alert {a:?})"),
        ),
        e => Error::with_message(ErrorKind::Protocol, format!("TLS: {e}")),
    }
}

impl State {
    /// Gives rustls what it will take of the received bytes and processes them.
    fn pump(&mut self) -> Result<()> {
        while !self.raw.is_empty() {
            let mut rest = &self.raw[..];
            let n = match self.conn.read_tls(&mut rest) {
                Ok(n) => n,
                // Its plaintext buffer is full: the reader takes some first.
                Err(_) => break,
            };
            self.raw.drain(..n);
            self.conn.process_new_packets().map_err(tls_failed)?;
            if n == 0 {
                break;
            }
        }
        if self.raw.len() > MAX_UNPROCESSED {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                "TLS: the peer sends faster than its records can be processed",
            ));
        }
        Ok(())
    }

    /// The records rustls has ready to send.
    fn outgoing(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }
}

impl TlsLink {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the handshake on `fd` until `deadline`; on failure the alert goes out first.
    fn handshake(conn: rustls::Connection, fd: OwnedFd, deadline: Instant) -> Result<TlsLink> {
        let mut st = State {
            conn,
            raw: Vec::new(),
        };
        let mut out = Vec::new();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            st.outgoing(&mut out);
            if !out.is_empty() {
                socket::send_all(&fd, &[&out])?;
                out.clear();
            }
            if !st.conn.is_handshaking() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if socket::wait_readable(&[fd.as_fd()], Some(left))?.is_none() {
                return Err(Error::with_message(
                    ErrorKind::Timeout,
                    "the TLS handshake did not finish in time",
                ));
            }
            let n = socket::recv(&fd, &mut buf, true)?.unwrap_or(0);
            if n == 0 {
                return Err(Error::with_message(
                    ErrorKind::BrokenPipe,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
            st.raw.extend_from_slice(&buf[..n]);
            if let Err(e) = st.pump() {
                st.outgoing(&mut out);
                let _ = socket::send_all(&fd, &[&out]);
                return Err(e);
            }
        }
        Ok(TlsLink {
            fd,
            state: Mutex::new(st),
            send_lock: Mutex::new(()),
        })
    }

    /// The DER of the peer's leaf certificate, if it presented one.
    fn peer_certificate(&self) -> Option<Vec<u8>> {
        let st = self.lock();
        st.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
    }

    fn send_bytes(&self, mut data: &[u8]) -> Result<()> {
        let mut out = Vec::new();
        while !data.is_empty() {
            {
                let mut st = self.lock();
                let n = st.conn.writer().write(data).map_err(Error::from)?;
                if n == 0 {
                    return Err(Error::with_message(
                        ErrorKind::BrokenPipe,
                        "the TLS connection takes no more data",
                    ));
                }
                data = &data[n..];
                st.outgoing(&mut out);
            }
            if !out.is_empty() {
                socket::send_all(&self.fd, &[&out])?;
                out.clear();
            }
        }
        Ok(())
    }
}

impl Link for TlsLink {
    fn send(&self, parts: &[&[u8]]) -> Result<()> {
        let _g = self.send_lock.lock().unwrap_or_else(|e| e.into_inner());
        if parts.len() > 1 && parts.iter().map(|x| x.len()).sum::<usize>() <= 16 * 1024 {
            self.send_bytes(&parts.concat())
        } else {
            parts.iter().try_for_each(|p| self.send_bytes(p))
        }
    }

    fn recv(&self, buf: &mut [u8], timeout: Option<std::time::Duration>) -> Result<Option<usize>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            {
                let mut st = self.lock();
                st.pump()?;
                match st.conn.reader().read(buf) {
                    Ok(n) => return Ok(Some(n)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // The peer ended without close_notify: the end all the same.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Ok(Some(0));
                    }
                    Err(e) => return Err(Error::from(e)),
                }
                // Answers rustls owes the peer (key updates), if no send is under way.
                if st.conn.wants_write()
                    && let Ok(_g) = self.send_lock.try_lock()
                {
                    let mut out = Vec::new();
                    st.outgoing(&mut out);
                    socket::send_all(&self.fd, &[&out])?;
                }
            }
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if socket::wait_readable(&[self.fd.as_fd()], Some(left))?.is_none() {
                    return Ok(None);
                }
            }
            let n = socket::recv(&self.fd, &mut chunk, true)?.unwrap_or(0);
            if n == 0 {
                return Ok(Some(0));
            }
            self.lock().raw.extend_from_slice(&chunk[..n]);
        }
    }

    fn shutdown(&self) {
        if let Ok(_g) = self.send_lock.try_lock()
            && let Ok(mut st) = self.state.try_lock()
        {
            st.conn.send_close_notify();
            let mut out = Vec::new();
            st.outgoing(&mut out);
            let _ = socket::send_all(&self.fd, &[&out]);
        }
        socket::shutdown(&self.fd, true, true);
    }
}

/// The client's handshake on a connected socket, bounded by `deadline`. `host` names the
/// server when the configuration does not.
pub(crate) fn connect(
    cfg: &TlsClientConfig,
    fd: OwnedFd,
    host: &str,
    deadline: Instant,
) -> Result<TlsLink> {
    let name = cfg.server_name.clone().unwrap_or_else(|| {
        if host.is_empty() {
            "localhost".to_owned()
        } else {
            host.to_owned()
        }
    });
    let name = ServerName::try_from(name).map_err(|e| bad_config("bad server name", e))?;
    let conn = rustls::ClientConnection::new(cfg.config.clone(), name)
        .map_err(|e| bad_config("TLS", e))?;
    TlsLink::handshake(rustls::Connection::Client(conn), fd, deadline)
}

/// The server's handshake on an accepted socket, bounded by `deadline`: the link and the DER
/// of the client's certificate.
pub(crate) fn accept(
    cfg: &TlsServerConfig,
    fd: OwnedFd,
    deadline: Instant,
) -> Result<(TlsLink, Option<Vec<u8>>)> {
    let conn =
        rustls::ServerConnection::new(cfg.config.clone()).map_err(|e| bad_config("TLS", e))?;
    let link = TlsLink::handshake(rustls::Connection::Server(conn), fd, deadline)?;
    let cert = link.peer_certificate();
    Ok((link, cert))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn server_config() -> TlsServerConfig {
        // A fixed test key would do as well; rcgen is a dev-dependency.
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        TlsServerConfig::new(vec![ck.cert.der().to_vec()], ck.signing_key.serialize_der()).unwrap()
    }

    /// The first flight of a real client: a ClientHello to mutate.
    fn client_hello() -> Vec<u8> {
        let cfg = TlsClientConfig::pinned(vec![1, 2, 3]).unwrap();
        let mut c = rustls::ClientConnection::new(
            cfg.config.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        out
    }

    /// The server's handshake on `bytes` from a peer that then stops sending.
    fn accept_bytes(cfg: &TlsServerConfig, bytes: &[u8]) -> Result<(TlsLink, Option<Vec<u8>>)> {
        let (ours, theirs) = socket::stream_pair().unwrap();
        socket::send_all(&theirs, &[bytes]).unwrap();
        socket::shutdown(&theirs, false, true);
        accept(cfg, ours, Instant::now() + Duration::from_secs(5))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Hostile bytes in place of a handshake end it with an error, never a panic or a hang.
        #[test]
        fn hostile_handshakes_fail_cleanly(
            junk in proptest::collection::vec(any::<u8>(), 0..4096),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
            mutate in any::<bool>(),
        ) {
            let cfg = server_config();
            let bytes = if mutate {
                let mut h = client_hello();
                for (at, x) in flips {
                    let n = h.len();
                    h[at % n] ^= x;
                }
                let keep = cut % (h.len() + 1);
                h.truncate(keep);
                h
            } else {
                junk
            };
            // A client that stops after its first flight cannot finish a handshake.
            prop_assert!(accept_bytes(&cfg, &bytes).is_err());
        }
    }
}
