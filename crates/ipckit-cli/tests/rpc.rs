//! `ipckit rpc serve-demo / ping / add`, run as a user runs them: the server and each client
//! are separate processes in the test's private namespace.

mod common;

use common::*;
use ipckit_testkit::{TestCase, test_case, unique_name};

/// Starts `ipckit rpc serve-demo` on a local endpoint, a named pipe and TCP port 0, and
/// returns it with the three bindings it printed.
fn serve(t: &TestCase) -> (ipckit_testkit::Peer, Vec<String>) {
    let lrpc = format!("ncalrpc:[{}]", unique_name("demo"));
    let np = format!(r"ncacn_np:\\.[\pipe\{}]", unique_name("demo"));
    let srv = start(
        t,
        &["rpc", "serve-demo", &lrpc, &np, "ncacn_ip_tcp:127.0.0.1[0]"],
        "serving",
    );
    let bindings: Vec<String> = srv
        .stdout()
        .lines()
        .filter_map(|l| l.strip_prefix("listening on ").map(str::to_owned))
        .collect();
    assert_eq!(bindings.len(), 3, "{}", srv.stdout());
    assert_eq!(bindings[0], lrpc);
    assert_eq!(bindings[1], np);
    assert!(
        bindings[2].starts_with("ncacn_ip_tcp:127.0.0.1[") && !bindings[2].ends_with("[0]"),
        "the chosen port is printed: {}",
        bindings[2]
    );
    (srv, bindings)
}

#[test]
fn ping_times_echo_calls_over_each_protocol_sequence() {
    let t = test_case!();
    let (mut srv, bindings) = serve(&t);
    for b in &bindings {
        let out = ok(
            &t,
            &["rpc", "ping", b, "--count", "20", "--size", "70k", "--json"],
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["binding"], b.as_str(), "{out}");
        assert_eq!(v["server_version"], "1.0");
        assert_eq!(v["count"], 20);
        assert_eq!(v["size"], 70 * 1024);
        let min = v["min_ns"].as_u64().unwrap();
        let median = v["median_ns"].as_u64().unwrap();
        assert!(0 < min && min <= median, "{out}");
        let seen = v["seen_as"].as_str().unwrap();
        if b.starts_with("ncacn_ip_tcp") {
            assert!(
                seen.starts_with("ncacn_ip_tcp address 127.0.0.1:"),
                "{seen}"
            );
        } else {
            // The server sees the client process (not itself, not the test) and our uid.
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata("/proc/self").unwrap().uid();
            assert!(seen.contains(&format!(" uid {uid} ")), "{seen}");
            let pid: u32 = seen
                .split(" pid ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_ne!(pid, srv.pid());
            assert_ne!(pid, std::process::id());
        }
    }
    // The text form, and a typed call.
    let text = ok(&t, &["rpc", "ping", &bindings[0], "--count", "5"]);
    assert!(text.contains("5 echo calls of 0 B: min "), "{text}");
    assert!(text.contains("median "), "{text}");
    assert_eq!(
        ok(&t, &["rpc", "add", &bindings[1], "-40", "82"]).trim(),
        "42"
    );
    // The server is still up after all those clients came and went.
    assert_eq!(ok(&t, &["rpc", "add", &bindings[2], "1", "2"]).trim(), "3");
    srv.kill().unwrap();
}

#[test]
fn clean_errors_when_nothing_listens_or_the_server_dies() {
    let t = test_case!();
    let e = fails(&t, &["rpc", "ping", "ncalrpc:[nobody-here]"]);
    assert!(e.contains("win32 1722"), "{e}");
    let e = fails(&t, &["rpc", "ping", r"ncacn_np:\\.[\pipe\nobody-here]"]);
    assert!(e.contains("win32 1722"), "{e}");
    let e = fails(&t, &["rpc", "ping", "ncacn_ip_tcp:127.0.0.1"]);
    assert!(e.contains("win32 1753"), "{e}");
    let e = fails(&t, &["rpc", "ping", "bogus"]);
    assert!(e.starts_with("ipckit: error: "), "{e}");

    // A server killed with SIGKILL: the next client gets 1722, not a hang.
    let (mut srv, bindings) = serve(&t);
    ok(&t, &["rpc", "ping", &bindings[0], "--count", "1"]);
    srv.kill().unwrap();
    for b in &bindings[..2] {
        let e = fails(&t, &["rpc", "ping", b]);
        assert!(e.contains("win32 1722"), "{b}: {e}");
    }
}

#[test]
fn help_lists_rpc() {
    let t = test_case!();
    let out = ok(&t, &["rpc", "--help"]);
    for cmd in ["serve-demo", "ping", "add"] {
        assert!(out.contains(cmd), "{cmd} missing from:\n{out}");
    }
}

#[test]
fn tour_measures_an_rpc_call_between_two_processes() {
    let t = test_case!();
    let out = t
        .command(ipckit(&["tour"]))
        .env("IPCKIT_BENCH_TINY", "1")
        .start()
        .wait_output_timeout(std::time::Duration::from_secs(120))
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let line = text
        .lines()
        .find(|l| l.contains("RPC "))
        .unwrap_or_else(|| panic!("no RPC line:\n{text}"));
    assert!(line.contains(" ok "), "{line}");
    assert!(line.contains("ncalrpc typed null call "), "{line}");
    assert!(!line.contains('?'), "a measurement is missing: {line}");
    assert!(line.contains("x a raw socket exchange"), "{line}");
}

#[test]
fn ls_shows_live_ncalrpc_endpoints_and_forgets_dead_ones() {
    let t = test_case!();
    let (mut srv, bindings) = serve(&t);
    let endpoints = |t: &TestCase| -> Vec<serde_json::Value> {
        let ls: serde_json::Value = serde_json::from_str(&ok(t, &["ls", "--json"])).unwrap();
        ls.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "ncalrpc")
            .cloned()
            .collect()
    };
    let rows = endpoints(&t);
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Endpoints are case-insensitive: shown lower-cased.
    assert_eq!(rows[0]["name"], bindings[0].to_lowercase(), "{rows:?}");
    assert_eq!(rows[0]["holders"][0], srv.pid());
    assert!(ok(&t, &["ls"]).contains(&bindings[0].to_lowercase()));
    // Killed, its socket file stays behind; ls finds nobody listening and removes it.
    srv.kill().unwrap();
    assert!(endpoints(&t).is_empty());
    let rpc_dir = t.namespace().join("rpc");
    assert_eq!(std::fs::read_dir(rpc_dir).unwrap().count(), 0);
}
