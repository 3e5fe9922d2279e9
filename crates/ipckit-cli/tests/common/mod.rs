//! Helpers shared by the CLI tests: run `ipckit` as a user runs it, each command a real process
//! started through the test kit (so it dies with the test and works in the test's private
//! namespace).
#![allow(dead_code)] // each test file uses its own subset

use std::process::{Command, Output};
use std::time::Duration;

use ipckit_testkit::{Peer, TestCase, wait_for};

pub const T: Duration = Duration::from_secs(20);

pub fn ipckit(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ipckit"));
    c.args(args);
    c
}

/// Runs `ipckit ARGS` to completion in the test's namespace.
pub fn run(t: &TestCase, args: &[&str]) -> Output {
    t.command(ipckit(args))
        .start()
        .wait_output_timeout(T)
        .expect("ipckit finished")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn ok(t: &TestCase, args: &[&str]) -> String {
    let o = run(t, args);
    assert!(
        o.status.success(),
        "ipckit {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Starts a long-running `ipckit ARGS` and waits until its stdout contains `ready`.
pub fn start(t: &TestCase, args: &[&str], ready: &str) -> Peer {
    let mut p = t.command(ipckit(args)).start();
    assert!(
        wait_for(T, || p.stdout().contains(ready)),
        "ipckit {args:?} did not print {ready:?}: {}",
        p.report()
    );
    p
}

/// Runs `ipckit ARGS`, which must fail, and returns its stderr.
pub fn fails(t: &TestCase, args: &[&str]) -> String {
    let o = run(t, args);
    assert!(!o.status.success(), "ipckit {args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}
