//! Runs the RPC benchmarks (server in a peer process, client in the harness) with the tiny
//! plan and checks that every system answers every case, with its ratio to the raw floor of
//! its carrier (never the timings).

use std::collections::BTreeSet;
use std::process::Command;

#[test]
fn every_rpc_system_answers_every_case() {
    let out = Command::new(env!("CARGO_BIN_EXE_ipckit-bench"))
        .env("IPCKIT_BENCH_TINY", "1")
        .env_remove("IPCKIT_BENCH_PEER")
        .args(["--quick", "--json", "ipckit-rpc", "tarpc", "tonic"])
        .output()
        .expect("run ipckit-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ipckit-bench failed: {stderr}");
    let mut seen = BTreeSet::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let mech = v["mechanism"].as_str().unwrap().to_owned();
        let case = v["case"].as_str().unwrap();
        let (kind, _placement) = case.split_once('/').unwrap();
        let metric = v["metric"].as_str().unwrap();
        match (kind, metric) {
            ("null-call", "median" | "p99") => assert_eq!(v["unit"], "ns", "{line}"),
            ("arg-1MiB", "throughput") => assert_eq!(v["unit"], "MiB/s", "{line}"),
            _ => panic!("unexpected record {line}"),
        }
        assert!(v["value"].as_f64().unwrap() > 0.0, "{line}");
        let expected_base = match mech.as_str() {
            "rpc-unix-stream" | "rpc-tcp-loopback" => None,
            "ipckit-rpc-ncalrpc" | "ipckit-rpc-ncalrpc-socket" | "ipckit-rpc-ncalrpc-async" => {
                Some("rpc-unix-stream")
            }
            "ipckit-rpc-np" | "tarpc-unix" | "tonic-unix" => Some("rpc-unix-stream"),
            "ipckit-rpc-tcp" | "tarpc-tcp" | "tonic-tcp" => Some("rpc-tcp-loopback"),
            other => panic!("unexpected mechanism {other}"),
        };
        assert_eq!(v["baseline"].as_str(), expected_base, "{line}");
        assert_eq!(v["ratio"].is_number(), expected_base.is_some(), "{line}");
        seen.insert((mech, kind.to_owned(), metric.to_owned()));
    }
    let mechs: BTreeSet<&str> = seen.iter().map(|(m, _, _)| m.as_str()).collect();
    assert_eq!(
        mechs,
        BTreeSet::from([
            "ipckit-rpc-ncalrpc",
            "ipckit-rpc-ncalrpc-async",
            "ipckit-rpc-ncalrpc-socket",
            "ipckit-rpc-np",
            "ipckit-rpc-tcp",
            "rpc-tcp-loopback",
            "rpc-unix-stream",
            "tarpc-tcp",
            "tarpc-unix",
            "tonic-tcp",
            "tonic-unix",
        ])
    );
    assert_eq!(seen.len(), mechs.len() * 3, "{seen:?}");
}
