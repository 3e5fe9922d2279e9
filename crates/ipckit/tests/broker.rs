//! The session broker across processes: registrations tied to their process (gone when it is
//! SIGKILLed), watchers told, the endpoint mapper resolving dynamic bindings, many clients at
//! once, bad requests refused without harm to others. The broker runs embedded in the test
//! process; `ipckit broker` itself (daemon, one per user, autostart, restart) is tested in the
//! CLI's tests.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{become_nobody, ctx_ns, ns_of};
use ipckit::ErrorKind;
use ipckit::broker::registry::{EntryKind, Limits};
use ipckit::broker::{BrokerClient, BrokerServer, ChangeInfo, EndpointMapper, StartError};
use ipckit::rpc::{self, Binding, ClientOptions, InterfaceId, Server, ServerOptions, Uuid};
use ipckit_testkit::{RoleCtx, RoleResult, TestCase, test_case, wait_for};

const T: Duration = Duration::from_secs(20);

/// Registers `arg(0)` entries named `arg(1)-K` (one client each), says "registered", then holds.
fn registrar(ctx: &mut RoleCtx) -> RoleResult {
    let ns = ctx_ns(ctx);
    let n: usize = ctx.arg(0).ok_or("count")?.parse()?;
    let prefix = ctx.arg(1).ok_or("prefix")?.to_owned();
    let mut clients = Vec::new();
    for k in 0..n {
        let c = BrokerClient::connect(&ns)?;
        c.register(
            EntryKind::NamedObject,
            &format!("{prefix}-{k}"),
            format!("v{k}").as_bytes(),
            true,
        )?;
        clients.push(c);
    }
    ctx.send_str("registered")?;
    // Held until the test kills us.
    loop {
        std::thread::park();
    }
}

/// Registers the endpoint `arg(0)` for the test interface, says "registered", then holds.
fn epm_server(ctx: &mut RoleCtx) -> RoleResult {
    let ns = ctx_ns(ctx);
    let c = BrokerClient::connect(&ns)?;
    c.register_endpoint(iface(1, 2), &Binding::parse(ctx.arg(0).ok_or("binding")?)?)?;
    ctx.send_str("registered")?;
    loop {
        std::thread::park();
    }
}

/// A small interface for the dynamic-endpoint test.
#[rpc::interface(uuid = "a1b2c3d4-0000-4000-8000-0000000000e1", version = "1.0")]
pub trait Echo {
    /// The argument back, and the server's pid.
    fn echo(&self, s: String) -> (String, u32);
}

struct EchoImpl;

impl Echo for EchoImpl {
    fn echo(&self, s: String) -> (String, u32) {
        (s, std::process::id())
    }
}

/// Serves `Echo` on a dynamic endpoint of protocol sequence `arg(0)`, registers it with the
/// endpoint mapper, says "ready", then serves until killed.
fn dynamic_server(ctx: &mut RoleCtx) -> RoleResult {
    let ns = ctx_ns(ctx);
    let server = Server::new(
        ServerOptions::new().namespace(ns.clone()),
        vec![EchoServer::new(EchoImpl)],
    );
    let binding = server.listen(ctx.arg(0).ok_or("protseq")?)?;
    let broker = BrokerClient::connect(&ns)?;
    broker.register_endpoint(EchoClient::INTERFACE, &binding)?;
    ctx.send_str("ready")?;
    loop {
        std::thread::park();
    }
}

fn iface(major: u16, minor: u16) -> InterfaceId {
    InterfaceId::new(
        Uuid::parse("5b0f1a2c-7d3e-4f60-8a91-b2c3d4e5f607").unwrap(),
        major,
        minor,
    )
}

fn start(t: &TestCase) -> BrokerServer {
    match BrokerServer::start(&ns_of(t), Limits::default()) {
        Ok(b) => b,
        Err(StartError::Running(p)) => panic!("a broker already runs (pid {p:?})"),
        Err(StartError::Failed(e)) => panic!("broker: {e}"),
    }
}

#[test]
fn registrations_vanish_when_their_process_is_killed_and_watchers_hear_of_it() {
    let t = test_case!();
    t.role("registrar", registrar);
    let _broker = start(&t);
    let ns = ns_of(&t);
    let watcher = BrokerClient::connect(&ns).unwrap();
    watcher.watch(Some(EntryKind::NamedObject), "svc").unwrap();

    let mut p = t.spawn("registrar").args(["2", "svc"]).start();
    p.expect("registered", T).unwrap();
    let e = watcher
        .lookup(EntryKind::NamedObject, "svc-1")
        .unwrap()
        .expect("registered");
    assert_eq!((e.pid, e.value.as_slice()), (p.pid(), &b"v1"[..]));
    assert_eq!(watcher.list(None, "svc-").unwrap().len(), 2);
    // Someone else's name cannot be taken.
    let other = BrokerClient::connect(&ns).unwrap();
    let err = other
        .register(EntryKind::NamedObject, "svc-0", b"x", false)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(err.win32_code(), 183);

    let mut added = 0;
    while added < 2 {
        for c in watcher.changes(T).unwrap() {
            assert!(
                matches!(c, ChangeInfo::Added(ref e) if e.name.starts_with("svc-")),
                "{c:?}"
            );
            added += 1;
        }
    }
    p.kill().unwrap();
    let mut removed = Vec::new();
    while removed.len() < 2 {
        let changes = watcher.changes(T).unwrap();
        assert!(!changes.is_empty(), "no removal within {T:?}");
        for c in changes {
            match c {
                ChangeInfo::Removed { kind, name } => {
                    assert_eq!(kind, EntryKind::NamedObject);
                    removed.push(name);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    removed.sort();
    assert_eq!(removed, ["svc-0", "svc-1"]);
    assert!(watcher.list(None, "svc").unwrap().is_empty());
    // The name is free again.
    other
        .register(EntryKind::NamedObject, "svc-0", b"x", true)
        .unwrap();
}

#[test]
fn one_broker_per_namespace() {
    let t = test_case!();
    let _broker = start(&t);
    match BrokerServer::start(&ns_of(&t), Limits::default()) {
        Err(StartError::Running(pid)) => assert_eq!(pid, Some(std::process::id())),
        other => panic!("a second broker started: {:?}", other.map(|_| ())),
    }
    assert_eq!(
        ipckit::broker::running_pid(&ns_of(&t)),
        Some(std::process::id())
    );
}

#[test]
fn without_a_broker_clients_get_server_unavailable_naming_the_fix() {
    let t = test_case!();
    let err = BrokerClient::connect(&ns_of(&t)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerUnavailable);
    assert_eq!(err.win32_code(), 1722);
    assert!(err.to_string().contains("ipckit broker"), "{err}");
    assert_eq!(ipckit::broker::running_pid(&ns_of(&t)), None);
}

#[test]
fn the_endpoint_mapper_resolves_dynamic_bindings_until_the_server_dies() {
    let t = test_case!();
    t.role("epm-server", epm_server);
    let _broker = start(&t);
    let ns = ns_of(&t);
    let mut s = t
        .spawn("epm-server")
        .arg("ncacn_ip_tcp:127.0.0.1[4747]")
        .start();
    s.expect("registered", T).unwrap();
    let mapper = EndpointMapper::new(&ns);
    let dynamic = Binding::parse("ncacn_ip_tcp:127.0.0.1").unwrap();
    let resolved = rpc::binding::resolve(&dynamic, &iface(1, 1), &[&mapper]).unwrap();
    assert_eq!(resolved.endpoint(), Some("4747"));
    // Version rules: the server offers 1.2.
    for (major, minor) in [(1, 3), (2, 0)] {
        let err = rpc::binding::resolve(&dynamic, &iface(major, minor), &[&mapper]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoEndpoint, "v{major}.{minor}");
        assert_eq!(err.win32_code(), 1753);
    }
    // Another protocol sequence has no endpoint.
    let local = Binding::parse("ncalrpc:").unwrap();
    assert_eq!(
        rpc::binding::resolve(&local, &iface(1, 0), &[&mapper])
            .unwrap_err()
            .kind(),
        ErrorKind::NoEndpoint
    );
    s.kill().unwrap();
    let gone = wait_for(T, || {
        rpc::binding::resolve(&dynamic, &iface(1, 1), &[&mapper]).is_err()
    });
    assert!(gone, "the dead server's endpoint is still resolved");
}

#[test]
fn two_hundred_clients_at_once_and_all_gone_with_their_processes() {
    let t = test_case!();
    t.role("registrar", registrar);
    let _broker = start(&t);
    let ns = ns_of(&t);
    let mut peers: Vec<_> = (0..4)
        .map(|i| {
            t.spawn("registrar")
                .args(["50".to_owned(), format!("p{i}")])
                .start()
        })
        .collect();
    for p in &mut peers {
        p.expect("registered", T).unwrap();
    }
    let c = BrokerClient::connect(&ns).unwrap();
    let all = c.list(Some(EntryKind::NamedObject), "p").unwrap();
    assert_eq!(all.len(), 200);
    for (i, p) in peers.iter().enumerate() {
        for k in 0..50 {
            let e = c
                .lookup(EntryKind::NamedObject, &format!("p{i}-{k}"))
                .unwrap()
                .unwrap();
            assert_eq!((e.pid, e.value), (p.pid(), format!("v{k}").into_bytes()));
        }
    }
    let status = c.status().unwrap();
    assert_eq!(status.entries, 200);
    assert!(status.clients.len() >= 201, "{}", status.clients.len());
    for p in &mut peers {
        p.kill().unwrap();
    }
    assert!(
        wait_for(T, || c.list(None, "").unwrap().is_empty()),
        "registrations of killed clients remain"
    );
}

#[test]
fn bad_requests_are_refused_and_garbage_harms_no_other_client() {
    let t = test_case!();
    let _broker = start(&t);
    let ns = ns_of(&t);
    let c = BrokerClient::connect(&ns).unwrap();
    c.register(EntryKind::Window, "main", b"1", true).unwrap();
    let long = "x".repeat(Limits::default().max_name + 1);
    assert_eq!(
        c.register(EntryKind::Window, &long, b"", true)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidParameter
    );
    let big = vec![0u8; Limits::default().max_value + 1];
    assert_eq!(
        c.register(EntryKind::Window, "big", &big, true)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidParameter
    );
    assert_eq!(
        c.register(EntryKind::Window, "", b"", true)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidName
    );
    assert_eq!(
        c.unregister(EntryKind::Window, "nobody")
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    // Raw garbage on the broker's socket.
    let sock = ns.runtime_dir().join("rpc").join("ipckit-broker");
    for junk in [
        &b"\xff\xff\xff\xff garbage"[..],
        &[0u8; 4096][..],
        &[1, 0, 0, 0][..],
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("the broker's socket");
        // The broker may close the connection before it read everything.
        let _ = s.write_all(junk);
    }
    // The first client still works, its entry intact.
    assert_eq!(
        c.lookup(EntryKind::Window, "MAIN").unwrap().unwrap().value,
        b"1"
    );
    c.register(EntryKind::Window, "second", b"2", true).unwrap();
    assert_eq!(c.list(Some(EntryKind::Window), "").unwrap().len(), 2);
}

#[test]
fn clients_reach_servers_on_dynamic_endpoints_through_the_endpoint_mapper() {
    let t = test_case!();
    t.role("dynamic-server", dynamic_server);
    let ns = ns_of(&t);
    let opts = ClientOptions::new().namespace(ns.clone());
    // Without a broker there is no endpoint mapper: no endpoint.
    let err = EchoClient::connect_with(&opts, "ncalrpc:").unwrap_err();
    assert_eq!(err.win32_code(), 1753, "{err}");
    let _broker = start(&t);
    for protseq in ["ncalrpc:", "ncacn_ip_tcp:127.0.0.1", "ncacn_np:"] {
        let mut s = t.spawn("dynamic-server").arg(protseq).start();
        s.expect("ready", T).unwrap();
        let c = EchoClient::connect_with(&opts, protseq).unwrap();
        assert_eq!(c.echo("hi".into()).unwrap(), ("hi".to_owned(), s.pid()));
        drop(c);
        s.kill().unwrap();
        // Its endpoint goes with it.
        assert!(
            wait_for(T, || matches!(
                EchoClient::connect_with(&opts, protseq),
                Err(e) if e.win32_code() == 1753
            )),
            "{protseq}: the dead server's endpoint is still resolved"
        );
    }
}

/// The broker's socket is private to its user: a process of another user (uid 65534, no
/// capabilities) cannot connect. Needs root to switch users (CI runs as root).
#[test]
fn other_users_cannot_reach_the_broker() {
    let t = test_case!();
    t.role("intruder", |ctx| {
        let sock = ctx_ns(ctx).runtime_dir().join("rpc").join("ipckit-broker");
        become_nobody(ctx)?;
        match std::os::unix::net::UnixStream::connect(&sock) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            other => return Err(format!("connected or other error: {other:?}").into()),
        }
        let err = BrokerClient::connect(&ctx_ns(ctx)).map(|_| ()).unwrap_err();
        ctx.send_str(&format!("refused {}", err.win32_code()))?;
        Ok(())
    });
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test switches users and needs root"
    );
    let _broker = start(&t);
    let mut p = t.spawn("intruder").start();
    p.expect("refused 1722", T).unwrap();
    assert!(p.wait_timeout(T).unwrap().success());
    // The broker's own user still gets in.
    BrokerClient::connect(&ns_of(&t)).unwrap();
}
