//! TLS on `ncacn_ip_tcp` across real processes (feature `tls`): calls to a server with a
//! pinned self-signed certificate, of every size; a client pinning another certificate, and a
//! plaintext client, fail cleanly while a stalled handshake and the refused clients do not
//! disturb the others; a server requiring client certificates refuses clients without the
//! right one and shows the accepted certificate to its methods; the same with a certificate
//! authority on both sides (server name and client chain checked).
#![cfg(feature = "tls")]

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::ensure;
use ipckit::ErrorKind;
use ipckit::rpc::{
    self, CallContext, Caller, ClientOptions, Protseq, Server, ServerOptions, TlsClientConfig,
    TlsServerConfig,
};
use ipckit_testkit::{RoleCtx, test_case};

/// Upper bound for anything that must happen eventually.
const T: Duration = Duration::from_secs(30);

#[rpc::interface(uuid = "9d0e4c3a-71b2-4f5e-8a66-2c1d0b9e7f41", version = "1.0")]
pub trait Echo {
    /// a + b.
    fn add(&self, a: i64, b: i64) -> i64;
    /// The bytes back, reversed.
    fn reverse(&self, data: Vec<u8>) -> Vec<u8>;
    /// The caller's certificate as the server sees it, and its fingerprint.
    fn whoami(&self, ctx: &CallContext) -> (Option<Vec<u8>>, Option<String>);
}

struct EchoImpl;

impl Echo for EchoImpl {
    fn add(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    fn reverse(&self, mut data: Vec<u8>) -> Vec<u8> {
        data.reverse();
        data
    }
    fn whoami(&self, ctx: &CallContext) -> (Option<Vec<u8>>, Option<String>) {
        let c = ctx.caller();
        (c.peer_certificate.clone(), c.peer_certificate_sha256())
    }
}

/// Writes a self-signed certificate and its key as `DIR/NAME.der` and `DIR/NAME.key`.
fn make_cert(dir: &Path, name: &str) -> (Vec<u8>, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = ck.cert.der().to_vec();
    let key = ck.signing_key.serialize_der();
    std::fs::write(dir.join(format!("{name}.der")), &cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &key).unwrap();
    (cert, key)
}

fn read(ctx: &RoleCtx, name: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(ctx.namespace().join(name))
}

/// The options of a client: args are the binding, the pinned certificate's name and the
/// client certificate's name (`-`: none).
fn opts(ctx: &RoleCtx) -> Result<ClientOptions, Box<dyn std::error::Error>> {
    let pin = ctx.arg(1).unwrap();
    let mut tls = TlsClientConfig::pinned(read(ctx, &format!("{pin}.der"))?)?;
    let me = ctx.arg(2).unwrap_or("-");
    if me != "-" {
        tls = tls.client_certificate(
            vec![read(ctx, &format!("{me}.der"))?],
            read(ctx, &format!("{me}.key"))?,
        )?;
    }
    Ok(ClientOptions::new()
        .connect_timeout(Duration::from_secs(10))
        .tls(tls))
}

fn outcome<V>(r: ipckit::Result<V>) -> String {
    match r {
        Ok(_) => "connected".to_owned(),
        Err(e) => format!("{:?}:{}", e.kind(), e.win32_code()),
    }
}

fn refused(report: &str) -> bool {
    report == format!("{:?}:1722", ErrorKind::ServerUnavailable)
        || report.starts_with(&format!("{:?}:", ErrorKind::Protocol))
}

/// A client whose certificate the server refused: the handshake fails (1722), or, with TLS 1.3
/// where the client hears of it only after its handshake, access is denied (5).
fn certificate_refused(report: &str) -> bool {
    report == format!("{:?}:1722", ErrorKind::ServerUnavailable)
        || report == format!("{:?}:5", ErrorKind::AccessDenied)
}

fn roles(t: &ipckit_testkit::TestCase) {
    t.role("client", |ctx| {
        let c = EchoClient::connect_with(&opts(ctx)?, ctx.arg(0).unwrap())?;
        ensure(c.add(40, 2)? == 42, "add")?;
        // Boundaries: empty, small, one TLS record and one over, over 64 KiB, 2 MiB.
        for (i, len) in [0usize, 1, 16_384, 16_385, 65_537, 2 << 20]
            .into_iter()
            .enumerate()
        {
            let data = common::pattern(len, i as u64);
            let mut want = data.clone();
            want.reverse();
            ensure(c.reverse(data)? == want, format!("reverse {len}"))?;
        }
        // Calls from several threads at once on the one connection.
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4i64)
                .map(|k| {
                    let c = c.clone();
                    s.spawn(move || (0..50i64).all(|i| c.add(i, k).ok() == Some(i + k)))
                })
                .collect();
            let all = hs.into_iter().all(|h| h.join().unwrap_or(false));
            ensure(all, "concurrent calls")
        })?;
        let (der, fp) = c.whoami()?;
        match ctx.arg(2) {
            Some(me) if me != "-" => {
                ensure(
                    der.as_deref() == Some(&read(ctx, &format!("{me}.der"))?[..]),
                    "the server sees my certificate",
                )?;
                ctx.send_str(&format!("fp {}", fp.unwrap_or_default()))?;
            }
            _ => {
                ensure(der.is_none() && fp.is_none(), "no client certificate")?;
                ctx.send_str("fp none")?;
            }
        }
        ctx.send_str("ok")?;
        Ok(())
    });
    t.role("refused", |ctx| {
        let r = opts(ctx)?.connect(ctx.arg(0).unwrap(), EchoClient::INTERFACE);
        ctx.send_str(&outcome(r))?;
        Ok(())
    });
    // A client trusting the CA in `ca.der`: args are the binding, the server name to expect
    // and the client certificate's name.
    t.role("ca", |ctx| {
        let me = ctx.arg(2).unwrap();
        let tls = TlsClientConfig::ca(vec![read(ctx, "ca.der")?])?
            .server_name(ctx.arg(1).unwrap())?
            .client_certificate(
                vec![read(ctx, &format!("{me}.der"))?],
                read(ctx, &format!("{me}.key"))?,
            )?;
        let r = EchoClient::connect_with(&ClientOptions::new().tls(tls), ctx.arg(0).unwrap());
        let report = match r {
            Ok(c) => {
                ensure(c.add(1, 2)? == 3, "add")?;
                format!("fp {}", c.whoami()?.1.unwrap_or_default())
            }
            Err(e) => outcome::<()>(Err(e)),
        };
        ctx.send_str(&report)?;
        Ok(())
    });
    t.role("plain", |ctx| {
        let r = ClientOptions::new()
            .connect_timeout(Duration::from_secs(10))
            .connect(ctx.arg(0).unwrap(), EchoClient::INTERFACE);
        ctx.send_str(&outcome(r))?;
        Ok(())
    });
}

#[test]
fn pinned_server_certificate_wrong_pins_and_plaintext_clients() {
    let t = test_case!();
    roles(&t);
    let dir = t.namespace().to_owned();
    let (cert, key) = make_cert(&dir, "server");
    make_cert(&dir, "other");
    let server = Server::new(
        ServerOptions::new().tls(TlsServerConfig::new(vec![cert], key).unwrap()),
        vec![EchoServer::new(EchoImpl)],
    );
    let b = server
        .listen("ncacn_ip_tcp:127.0.0.1[0]")
        .unwrap()
        .to_string();
    // A client that connects and never says anything: its handshake waits on its own thread.
    let port = b.split('[').nth(1).unwrap().trim_end_matches(']');
    let stalled = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();

    let mut good = t.spawn("client").arg(&b).arg("server").arg("-").start();
    let mut wrong = t.spawn("refused").arg(&b).arg("other").arg("-").start();
    let mut plain = t.spawn("plain").arg(&b).start();
    let report = wrong.recv_str_timeout(T).unwrap();
    assert!(refused(&report), "wrong pin: {report}");
    let report = plain.recv_str_timeout(T).unwrap();
    assert!(refused(&report), "plaintext client: {report}");
    assert_eq!(good.recv_str_timeout(T).unwrap(), "fp none");
    good.expect("ok", T).unwrap();
    for p in [&mut good, &mut wrong, &mut plain] {
        assert!(p.wait_timeout(T).unwrap().success());
    }
    // After the refused clients, others still get in (the stalled one still waiting).
    let mut again = t.spawn("client").arg(&b).arg("server").arg("-").start();
    assert_eq!(again.recv_str_timeout(T).unwrap(), "fp none");
    again.expect("ok", T).unwrap();
    assert!(again.wait_timeout(T).unwrap().success());
    drop(stalled);
    server.stop();
}

#[test]
fn client_certificates_are_required_and_reach_the_method() {
    let t = test_case!();
    roles(&t);
    let dir = t.namespace().to_owned();
    let (cert, key) = make_cert(&dir, "server");
    let (client_cert, _) = make_cert(&dir, "alice");
    make_cert(&dir, "mallory");
    let tls = TlsServerConfig::new(vec![cert], key)
        .unwrap()
        .require_client_certificates(vec![client_cert.clone()])
        .unwrap();
    let server = Server::new(
        ServerOptions::new().tls(tls),
        vec![EchoServer::new(EchoImpl)],
    );
    let b = server
        .listen("ncacn_ip_tcp:127.0.0.1[0]")
        .unwrap()
        .to_string();

    let mut none = t.spawn("refused").arg(&b).arg("server").arg("-").start();
    let report = none.recv_str_timeout(T).unwrap();
    assert!(
        certificate_refused(&report),
        "no client certificate: {report}"
    );
    let mut other = t
        .spawn("refused")
        .arg(&b)
        .arg("server")
        .arg("mallory")
        .start();
    let report = other.recv_str_timeout(T).unwrap();
    assert!(
        certificate_refused(&report),
        "another client certificate: {report}"
    );

    let mut alice = t.spawn("client").arg(&b).arg("server").arg("alice").start();
    let want = Caller {
        protseq: Protseq::Tcp,
        pid: None,
        uid: None,
        gid: None,
        address: None,
        peer_certificate: Some(client_cert),
    }
    .peer_certificate_sha256()
    .unwrap();
    assert_eq!(want.len(), 64);
    assert_eq!(alice.recv_str_timeout(T).unwrap(), format!("fp {want}"));
    alice.expect("ok", T).unwrap();
    for p in [&mut none, &mut other, &mut alice] {
        assert!(p.wait_timeout(T).unwrap().success());
    }
    server.stop();
}

#[test]
fn a_tls_client_to_a_plaintext_server_fails_cleanly() {
    let t = test_case!();
    roles(&t);
    let dir = t.namespace().to_owned();
    make_cert(&dir, "server");
    let server = Server::new(ServerOptions::new(), vec![EchoServer::new(EchoImpl)]);
    let b = server
        .listen("ncacn_ip_tcp:127.0.0.1[0]")
        .unwrap()
        .to_string();
    let mut p = t.spawn("refused").arg(&b).arg("server").arg("-").start();
    let report = p.recv_str_timeout(T).unwrap();
    assert!(refused(&report), "TLS client, plaintext server: {report}");
    assert!(p.wait_timeout(T).unwrap().success());
    // The plaintext server goes on serving plaintext clients.
    let mut plain = t.spawn("plain").arg(&b).start();
    assert_eq!(plain.recv_str_timeout(T).unwrap(), "connected");
    assert!(plain.wait_timeout(T).unwrap().success());
    server.stop();
}

/// A CA certificate and its issuer, written as `DIR/ca.der`.
fn make_ca(dir: &Path) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.der"), ca.der()).unwrap();
    ca
}

/// A certificate for `localhost` issued by `ca`, written as `DIR/NAME.der` and `DIR/NAME.key`.
fn issue(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: &Path,
    name: &str,
) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = p.signed_by(&key, ca).unwrap().der().to_vec();
    let key = key.serialize_der();
    std::fs::write(dir.join(format!("{name}.der")), &cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &key).unwrap();
    (cert, key)
}

#[test]
fn a_certificate_authority_on_both_sides() {
    let t = test_case!();
    roles(&t);
    let dir = t.namespace().to_owned();
    let ca = make_ca(&dir);
    let (cert, key) = issue(&ca, &dir, "server");
    let (bob, _) = issue(&ca, &dir, "bob");
    // Self-signed, not from the CA.
    make_cert(&dir, "eve");
    let tls = TlsServerConfig::new(vec![cert], key)
        .unwrap()
        .require_client_ca(vec![ca.der().to_vec()])
        .unwrap();
    let server = Server::new(
        ServerOptions::new().tls(tls),
        vec![EchoServer::new(EchoImpl)],
    );
    let b = server
        .listen("ncacn_ip_tcp:127.0.0.1[0]")
        .unwrap()
        .to_string();

    let mut good = t.spawn("ca").arg(&b).arg("localhost").arg("bob").start();
    let want = Caller {
        protseq: Protseq::Tcp,
        pid: None,
        uid: None,
        gid: None,
        address: None,
        peer_certificate: Some(bob),
    }
    .peer_certificate_sha256()
    .unwrap();
    assert_eq!(good.recv_str_timeout(T).unwrap(), format!("fp {want}"));
    // The server's certificate does not name this host.
    let mut misnamed = t
        .spawn("ca")
        .arg(&b)
        .arg("elsewhere.example")
        .arg("bob")
        .start();
    let report = misnamed.recv_str_timeout(T).unwrap();
    assert!(refused(&report), "wrong server name: {report}");
    // A client certificate the CA did not issue.
    let mut eve = t.spawn("ca").arg(&b).arg("localhost").arg("eve").start();
    let report = eve.recv_str_timeout(T).unwrap();
    assert!(
        certificate_refused(&report),
        "client certificate from elsewhere: {report}"
    );
    for p in [&mut good, &mut misnamed, &mut eve] {
        assert!(p.wait_timeout(T).unwrap().success());
    }
    server.stop();
}

/// Threads of this process running a TLS handshake.
fn handshake_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == "ipckit-rpc-tls")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn stalled_handshakes_are_capped_and_ended_by_stop() {
    let t = test_case!();
    // The server runs in a child, whose threads are all its own: it reports how many handshake
    // threads it has.
    t.role("server", |ctx| {
        let cert = read(ctx, "srv.der")?;
        let key = read(ctx, "srv.key")?;
        let server = Server::new(
            ServerOptions::new().tls(TlsServerConfig::new(vec![cert], key)?),
            vec![EchoServer::new(EchoImpl)],
        );
        let b = server.listen("ncacn_ip_tcp:127.0.0.1[0]")?;
        ctx.send_str(b.endpoint().unwrap())?;
        ctx.expect("count", T)?;
        let full = ipckit_testkit::wait_for(T, || handshake_threads() >= rpc::MAX_TLS_HANDSHAKES);
        ensure(full, format!("{} handshake threads", handshake_threads()))?;
        // Let the connections beyond the cap arrive too.
        std::thread::sleep(Duration::from_millis(300));
        ctx.send_str(&handshake_threads().to_string())?;
        ctx.expect("stop", T)?;
        server.stop();
        ctx.send_str(&handshake_threads().to_string())?;
        Ok(())
    });
    make_cert(t.namespace(), "srv");
    let mut p = t.spawn("server").start();
    let port = p.recv_str_timeout(T).unwrap();
    // Silent clients: connected, never a byte of handshake.
    let n = rpc::MAX_TLS_HANDSHAKES + 20;
    let streams: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(format!("127.0.0.1:{port}")).unwrap())
        .collect();
    p.send_str("count").unwrap();
    let count: usize = p.recv_str_timeout(T).unwrap().parse().unwrap();
    assert_eq!(count, rpc::MAX_TLS_HANDSHAKES);
    p.send_str("stop").unwrap();
    // Once stop has returned, no handshake thread is left.
    assert_eq!(p.recv_str_timeout(T).unwrap(), "0");
    p.wait_timeout(T).unwrap();
    // And every silent client was closed by the server (those over the cap at once).
    for mut s in streams {
        s.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(
            std::io::Read::read(&mut s, &mut buf),
            Ok(0) | Err(_)
        ));
    }
}

/// A PEM section (RFC 7468) of `der`.
fn pem(label: &str, der: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for c in der.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                b64.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn pem_certificates_and_keys_are_read() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = pem("CERTIFICATE", ck.cert.der());
    let two = format!("{cert}{cert}");
    let certs = rpc::pem_certificates(two.as_bytes()).unwrap();
    assert_eq!(certs, vec![ck.cert.der().to_vec(), ck.cert.der().to_vec()]);
    let key_pem = pem("PRIVATE KEY", &ck.signing_key.serialize_der());
    let key = rpc::pem_private_key(key_pem.as_bytes()).unwrap();
    assert_eq!(key, ck.signing_key.serialize_der());
    assert!(TlsServerConfig::new(certs, key).is_ok());
    for bad in [
        &b""[..],
        b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    ] {
        assert_eq!(
            rpc::pem_certificates(bad).unwrap_err().kind(),
            ErrorKind::InvalidParameter
        );
        assert_eq!(
            rpc::pem_private_key(bad).unwrap_err().kind(),
            ErrorKind::InvalidParameter
        );
    }
}
