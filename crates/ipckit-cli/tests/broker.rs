//! `ipckit broker` as a user runs it: `--daemon` starts one per user, `--status` reports it, a
//! library call starts it when absent (autostart), and after the broker is SIGKILLed and comes
//! back, servers register again and clients reconnect by themselves.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ipckit::broker::registry::EntryKind;
use ipckit::broker::{BrokerClient, running_pid};
use ipckit::namespace::Namespace;
use ipckit_testkit::{RoleCtx, RoleResult, TestCase, test_case, wait_for};

/// SIGKILLs the namespace's broker when dropped (it runs in its own process group, outside the
/// test kit's reach).
struct KillBroker(Namespace);

impl Drop for KillBroker {
    fn drop(&mut self) {
        // Also the brokers a client started on its own while the test ran.
        for _ in 0..50 {
            match running_pid(&self.0) {
                Some(pid) => kill(pid),
                None => return,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn kill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

fn ns(t: &TestCase) -> Namespace {
    Namespace::at(t.namespace())
}

fn daemon_pid(t: &TestCase) -> u32 {
    let out = ok(t, &["broker", "--daemon"]);
    out.split("pid ")
        .nth(1)
        .and_then(|s| s.trim_end_matches([')', '\n']).parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"))
}

#[test]
fn daemon_is_one_per_user_and_status_reports_it() {
    let t = test_case!();
    let _guard = KillBroker(ns(&t));
    let err = fails(&t, &["broker", "--status"]);
    assert!(err.contains("ipckit broker --daemon"), "{err}");

    let pid = daemon_pid(&t);
    assert_eq!(running_pid(&ns(&t)), Some(pid));
    // A second start reports the running one and succeeds.
    assert_eq!(daemon_pid(&t), pid);
    let fg = ok(&t, &["broker"]);
    assert!(fg.contains(&format!("already running (pid {pid})")), "{fg}");

    let status: serde_json::Value =
        serde_json::from_str(&ok(&t, &["broker", "--status", "--json"])).unwrap();
    assert_eq!(status["pid"], pid);
    assert_eq!(status["entries"], 0);
    let text = ok(&t, &["broker", "--status"]);
    assert!(text.contains(&format!("pid       {pid}")), "{text}");

    // Killed, it is gone; started again, it is a new process.
    kill(pid);
    assert!(wait_for(T, || running_pid(&ns(&t)).is_none()));
    fails(&t, &["broker", "--status"]);
    let again = daemon_pid(&t);
    assert_ne!(again, pid);
}

#[test]
fn a_library_call_starts_the_broker_when_absent() {
    let t = test_case!();
    let _guard = KillBroker(ns(&t));
    assert!(running_pid(&ns(&t)).is_none());
    // The test binary lives in target/*/deps, the `ipckit` binary one folder up: autostart
    // finds it there.
    let c = BrokerClient::connect_or_start(&ns(&t)).expect("autostart");
    let pid = c.status().unwrap().pid;
    assert_ne!(pid, std::process::id());
    assert_eq!(running_pid(&ns(&t)), Some(pid));
    c.register(EntryKind::DdeService, "Excel", b"x", true)
        .unwrap();
    let listed = ok(&t, &["broker", "--status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(status["entries"], 1);
    // `ipckit ls` shows what the broker holds beside the folders' objects.
    let ls: serde_json::Value = serde_json::from_str(&ok(&t, &["ls", "--json"])).unwrap();
    let rows = ls.as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["kind"] == "dde-service")
        .unwrap_or_else(|| panic!("no broker row in {ls}"));
    assert_eq!(row["name"], "Excel");
    assert_eq!(row["holders"][0], std::process::id());
    assert!(ok(&t, &["ls"]).contains("dde-service"));
}

/// A server: registers `arg(0)` and keeps it registered across broker restarts.
fn server(ctx: &mut RoleCtx) -> RoleResult {
    let ns = Namespace::at(ctx.namespace());
    let c = Arc::new(BrokerClient::connect(&ns)?);
    c.register(
        EntryKind::ComClass,
        ctx.arg(0).ok_or("name")?,
        b"server",
        true,
    )?;
    c.keep_alive(Duration::from_millis(20));
    ctx.send_str("registered")?;
    loop {
        std::thread::park();
    }
}

#[test]
fn after_the_broker_is_killed_servers_register_again_by_themselves() {
    let t = test_case!();
    t.role("server", server);
    let _guard = KillBroker(ns(&t));
    let first = daemon_pid(&t);
    let mut s = t.spawn("server").arg("Calc.Application").start();
    s.expect("registered", T).unwrap();
    let lookup = || {
        BrokerClient::connect(&ns(&t))
            .ok()
            .and_then(|c| c.lookup(EntryKind::ComClass, "calc.application").ok())
            .flatten()
    };
    assert_eq!(lookup().map(|e| e.pid), Some(s.pid()));

    kill(first);
    // The server's keeper notices, starts a broker (or finds the one started meanwhile) and
    // registers again.
    assert!(
        wait_for(T, || lookup().is_some_and(|e| e.pid == s.pid())),
        "the server did not register again: {}",
        s.report()
    );
    let second = running_pid(&ns(&t)).expect("a broker runs again");
    assert_ne!(second, first);
    // `--daemon` finds it rather than starting another.
    assert_eq!(daemon_pid(&t), second);
}

#[test]
fn clients_reconnect_by_themselves_after_the_broker_is_killed() {
    let t = test_case!();
    let _guard = KillBroker(ns(&t));
    let c = BrokerClient::connect_or_start(&ns(&t)).expect("autostart");
    c.register(EntryKind::Window, "Main", b"w", true).unwrap();
    c.watch(Some(EntryKind::Window), "").unwrap();
    let first = c.status().unwrap().pid;
    kill(first);
    assert!(wait_for(T, || running_pid(&ns(&t)) != Some(first)));
    // The next call finds the broker gone, starts one, registers again and answers.
    let e = c
        .lookup(EntryKind::Window, "main")
        .unwrap()
        .expect("registered again");
    assert_eq!(e.pid, std::process::id());
    let second = c.status().unwrap().pid;
    assert_ne!(second, first);
    // Its watch was made again too: a change reaches it.
    let other = BrokerClient::connect(&ns(&t)).unwrap();
    other
        .register(EntryKind::Window, "Other", b"", true)
        .unwrap();
    let mut seen = false;
    for _ in 0..10 {
        if c.changes(T)
            .unwrap()
            .iter()
            .any(|ch| matches!(ch, ipckit::broker::ChangeInfo::Added(e) if e.name == "Other"))
        {
            seen = true;
            break;
        }
    }
    assert!(seen, "the watch was not made again");
}

#[test]
fn install_user_unit_writes_a_systemd_unit() {
    let t = test_case!();
    let home = t.namespace().join("home");
    let mut cmd = ipckit(&["broker", "--install-user-unit"]);
    cmd.env("XDG_CONFIG_HOME", &home);
    let out = t.command(cmd).start().wait_output_timeout(T).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(home.join("systemd/user/ipckit-broker.service")).unwrap();
    assert!(unit.contains("broker\n"), "{unit}");
    assert!(unit.contains("ExecStart=/"), "{unit}");
    assert!(unit.contains("WantedBy=default.target"), "{unit}");
    assert!(unit.contains("Requires=ipckit-broker.socket"), "{unit}");
    let socket = std::fs::read_to_string(home.join("systemd/user/ipckit-broker.socket")).unwrap();
    let path = ipckit::broker::socket_path(&ns(&t));
    assert!(
        socket.contains(&format!("ListenStream={}\n", path.display())),
        "{socket}"
    );
    assert!(socket.contains("SocketMode=0600"), "{socket}");
}

/// A listening Unix socket at the broker's endpoint, as systemd's socket unit makes it.
fn activation_socket(t: &TestCase) -> std::os::unix::net::UnixListener {
    let path = ipckit::broker::socket_path(&ns(t));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for d in [
        path.parent().unwrap(),
        path.parent().unwrap().parent().unwrap(),
    ] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::os::unix::net::UnixListener::bind(&path).unwrap()
}

#[test]
fn a_socket_activated_broker_serves_the_socket_it_is_handed() {
    let t = test_case!();
    let _guard = KillBroker(ns(&t));
    let listener = activation_socket(&t);
    // What systemd does: the socket as descriptor 3, LISTEN_PID naming the service's process
    // (the shell execs the broker, keeping its pid), LISTEN_FDS=1.
    // A plain child (the test kit's peers re-execute the test binary, which would not pass
    // the socket on), dying with this thread.
    let mut cmd = std::process::Command::new("sh");
    let fd = std::os::fd::OwnedFd::from(listener.try_clone().unwrap());
    let n = ipckit::sys::fd::inherit_in_child(&mut cmd, fd);
    cmd.arg("-c")
        .arg(format!(
            r#"exec 3<&{n} {n}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" broker"#
        ))
        .arg(env!("CARGO_BIN_EXE_ipckit"))
        .env("IPCKIT_RUNTIME_DIR", t.namespace())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    ipckit::sys::process::die_with_parent(&mut cmd);
    let mut broker = cmd.spawn().unwrap();
    drop(cmd);
    // Clients reach it on the handed socket: the broker answers with its own pid.
    let mut status = serde_json::Value::Null;
    assert!(
        wait_for(T, || {
            let o = run(&t, &["broker", "--status", "--json"]);
            status = serde_json::from_str(&stdout(&o)).unwrap_or_default();
            o.status.success()
        }),
        "the socket-activated broker does not answer"
    );
    assert_eq!(status["pid"], broker.id(), "{status}");
    ok(&t, &["rpc", "ls"]);
    broker.kill().unwrap();
    broker.wait().unwrap();
    // The socket file is the socket unit's: it stays for the next activation.
    assert!(ipckit::broker::socket_path(&ns(&t)).exists());
    drop(listener);
}

#[test]
fn a_demo_server_on_a_dynamic_endpoint_is_found_through_the_endpoint_mapper() {
    let t = test_case!();
    let _guard = KillBroker(ns(&t));
    // No broker yet: serve-demo starts one to register its dynamic endpoint.
    let mut srv = start(&t, &["rpc", "serve-demo", "ncalrpc:"], "serving");
    assert!(
        srv.stdout().contains("registered with the endpoint mapper"),
        "{}",
        srv.report()
    );
    // Resolved through the broker, then called (ok() asserts success).
    ok(&t, &["rpc", "ping", "ncalrpc:", "--count", "3"]);
    let ls: serde_json::Value = serde_json::from_str(&ok(&t, &["ls", "--json"])).unwrap();
    let endpoint = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "rpc-endpoint")
        .unwrap_or_else(|| panic!("no endpoint row in {ls}"));
    assert_eq!(endpoint["holders"][0], srv.pid());
    let eps: serde_json::Value = serde_json::from_str(&ok(&t, &["rpc", "ls", "--json"])).unwrap();
    let ep = &eps.as_array().unwrap()[0];
    assert_eq!(ep["pid"], srv.pid());
    assert!(
        ep["binding"].as_str().unwrap().starts_with("ncalrpc:[dyn-"),
        "{eps}"
    );
    assert!(ok(&t, &["rpc", "ls"]).contains("ncalrpc:[dyn-"));
    srv.kill().unwrap();
    assert!(
        wait_for(T, || {
            let o = run(&t, &["rpc", "ping", "ncalrpc:", "--count", "1"]);
            !o.status.success() && stderr(&o).contains("win32 1753")
        }),
        "the dead server's endpoint is still resolved"
    );
}
