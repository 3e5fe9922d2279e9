//! Runs the `ipckit-bench` binary in JSON mode on two fast mechanisms with
//! the tiny plan and checks the shape of every line (never the timings).

use std::collections::BTreeSet;
use std::process::Command;

const KEYS: [&str; 7] = [
    "mechanism",
    "case",
    "metric",
    "value",
    "unit",
    "baseline",
    "ratio",
];

fn bench() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipckit-bench"));
    cmd.env("IPCKIT_BENCH_TINY", "1")
        .env_remove("IPCKIT_BENCH_PEER");
    cmd
}

#[test]
fn quick_json_emits_only_well_formed_records() {
    let out = bench()
        .args(["--quick", "--json", "unix-stream", "pipe"])
        .output()
        .expect("run ipckit-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ipckit-bench failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    assert!(!stdout.trim().is_empty(), "no output; stderr: {stderr}");

    let mut mechanisms = BTreeSet::new();
    let mut placements = BTreeSet::new();
    let mut metrics = BTreeSet::new();
    for line in stdout.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, KEYS.into_iter().collect(), "keys of {line}");

        let value = obj["value"].as_f64().expect("numeric value");
        assert!(value.is_finite() && value > 0.0, "value of {line}");
        for key in ["mechanism", "case", "metric", "unit"] {
            assert!(
                obj[key].as_str().is_some_and(|s| !s.is_empty()),
                "{key} of {line}"
            );
        }
        // Raw baselines are not compared with anything.
        assert!(
            obj["baseline"].is_null() && obj["ratio"].is_null(),
            "{line}"
        );

        let unit = obj["unit"].as_str().unwrap();
        let metric = obj["metric"].as_str().unwrap();
        let expected_unit = match metric {
            "median" | "p99" => "ns",
            "throughput" => "MiB/s",
            "rate" => "msg/s",
            other => panic!("unexpected metric {other}"),
        };
        assert_eq!(unit, expected_unit, "{line}");

        mechanisms.insert(obj["mechanism"].as_str().unwrap().to_owned());
        metrics.insert(metric.to_owned());
        let case = obj["case"].as_str().unwrap();
        let (_, placement) = case.rsplit_once('/').expect("case has a placement");
        placements.insert(placement.to_owned());
    }

    assert_eq!(
        mechanisms,
        ["pipe", "unix-stream"]
            .map(str::to_owned)
            .into_iter()
            .collect()
    );
    assert_eq!(
        metrics,
        ["median", "p99", "rate", "throughput"]
            .map(str::to_owned)
            .into_iter()
            .collect()
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut expected = vec!["same-core".to_owned()];
    if cpus > 1 {
        expected.push("cross-core".to_owned());
    }
    assert_eq!(placements, expected.into_iter().collect());
}

/// The channel benchmarks and iceoryx2 run their zero-copy round trips and
/// are compared with their raw baselines from the same run.
#[test]
fn channel_and_iceoryx2_records_carry_their_baselines() {
    let out = bench()
        .args(["--quick", "--json", "ipckit-chan", "iceoryx2"])
        .output()
        .expect("run ipckit-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ipckit-bench failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");

    let mut cases: BTreeSet<(String, String)> = BTreeSet::new();
    for line in stdout.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, KEYS.into_iter().collect(), "keys of {line}");
        let value = obj["value"].as_f64().expect("numeric value");
        assert!(value.is_finite() && value > 0.0, "value of {line}");
        let mechanism = obj["mechanism"].as_str().unwrap().to_owned();
        let case = obj["case"].as_str().unwrap();
        let (case, _placement) = case.rsplit_once('/').expect("case has a placement");
        let expected_baseline = match mechanism.as_str() {
            "shm-futex" | "shm-spin" | "shm-spinpark" => None,
            "ipckit-chan" => Some("shm-spinpark"),
            "ipckit-chan-sleep" => Some("shm-futex"),
            "ipckit-chan-spin" | "iceoryx2" => Some("shm-spin"),
            other => panic!("unexpected mechanism {other}"),
        };
        assert_eq!(obj["baseline"].as_str(), expected_baseline, "{line}");
        // Every case of these benchmarks exists in its baseline too.
        assert_eq!(
            obj["ratio"].as_f64().is_some(),
            expected_baseline.is_some(),
            "{line}"
        );
        cases.insert((mechanism, case.to_owned()));
    }
    let has = |m: &str, c: &str| cases.contains(&(m.to_owned(), c.to_owned()));
    for m in ["ipckit-chan", "ipckit-chan-spin", "shm-futex", "iceoryx2"] {
        for c in ["rtt-64B", "rtt-zc-64B", "rtt-zc-4KiB"] {
            assert!(has(m, c), "{m} {c} missing");
        }
    }
    assert!(has("ipckit-chan", "stream-64KiB") && has("ipckit-chan", "stream-64B"));
    // iceoryx2 is measured in round trips only.
    assert!(
        !cases
            .iter()
            .any(|(m, c)| m == "iceoryx2" && c.starts_with("stream"))
    );
}

#[test]
fn unknown_mechanism_is_rejected_with_the_valid_names() {
    let out = bench()
        .args(["--json", "no-such-thing"])
        .output()
        .expect("run ipckit-bench");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-thing"), "{stderr}");
    assert!(
        stderr.contains("unix-seqpacket") && stderr.contains("shm-spin"),
        "{stderr}"
    );
}

#[test]
fn peer_role_without_a_harness_fails_cleanly() {
    // A peer whose recorded parent is not its parent exits at once instead
    // of waiting for a rendezvous.
    let out = bench()
        .env("IPCKIT_BENCH_PEER", "unix-stream")
        .env("IPCKIT_BENCH_PARENT", "1")
        .output()
        .expect("run ipckit-bench");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}
