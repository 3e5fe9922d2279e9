//! `ipckit pipe cat` while it waits (a real `ipckit` process connected to a real server, its
//! CPU time read from `/proc`), and `pipe serve --exec` ending a connection when its command
//! ends.

use std::io::Write;
use std::time::Duration;

mod common;

use common::*;
use ipckit_testkit::{TestCase, test_case, wait_for};

/// The CPU time (user + system, in clock ticks) `pid` has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    // After the command: state is field 3 of proc(5), utime 14 and stime 15.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// How much CPU time `pid` uses over `span` of doing nothing visible.
fn ticks_over(pid: u32, span: Duration) -> u64 {
    let before = cpu_ticks(pid);
    std::thread::sleep(span);
    cpu_ticks(pid) - before
}

/// A process that only waits uses at most this many ticks (10 ms each at the usual 100 Hz) in
/// three seconds: the odd tick charged to it when it wakes, not a copy loop that wakes every
/// millisecond (which costs tens of milliseconds a second).
const IDLE_TICKS: u64 = 1;

fn serve(t: &TestCase, name: &str, args: &[&str]) -> ipckit_testkit::Peer {
    let mut all = vec!["pipe", "serve", name];
    all.extend_from_slice(args);
    let mut server = t.command(ipckit(&all)).start();
    assert!(
        wait_for(T, || server.stderr().contains("serving")),
        "{}",
        server.report()
    );
    server
}

#[test]
fn pipe_cat_sleeps_while_it_waits() {
    let t = test_case!();
    let mut server = serve(&t, "cli-idle", &["--message", "--echo"]);
    let mut cat = t
        .command(ipckit(&["pipe", "cat", "cli-idle", "--linger", "600000"]))
        .start();
    let stdin = cat.stdin().unwrap();
    stdin.write_all(b"ping").unwrap();
    stdin.flush().unwrap();
    assert!(wait_for(T, || cat.stdout() == "ping"), "{}", cat.report());

    // Waiting for its input and for the pipe: asleep.
    let busy = ticks_over(cat.pid(), Duration::from_secs(3));
    assert!(
        busy <= IDLE_TICKS,
        "cat used {busy} ticks of CPU while it waited"
    );

    // Its input ended; it waits (--linger) for more from the pipe: asleep too.
    cat.close_input();
    let busy = ticks_over(cat.pid(), Duration::from_secs(3));
    assert!(
        busy <= IDLE_TICKS,
        "cat used {busy} ticks of CPU while it lingered"
    );
    assert!(cat.is_alive(), "cat left before --linger ran out");

    // The server going away ends it at once, well before the linger runs out.
    server.kill().unwrap();
    assert!(cat.wait_timeout(T).unwrap().success(), "{}", cat.report());
    assert_eq!(cat.stdout(), "ping");
}

#[test]
fn pipe_serve_exec_ends_the_connection_when_the_command_ends() {
    let t = test_case!();
    let _server = serve(
        &t,
        "cli-exec-once",
        &["--message", "--exec", r#"read l; echo "got $l""#],
    );
    for word in ["one", "two"] {
        // The client's input stays open: the command's end ends the connection, and cat.
        let mut cat = t
            .command(ipckit(&[
                "pipe",
                "cat",
                "cli-exec-once",
                "--linger",
                "600000",
            ]))
            .start();
        let stdin = cat.stdin().unwrap();
        stdin.write_all(format!("{word}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        assert!(cat.wait_timeout(T).unwrap().success(), "{}", cat.report());
        assert_eq!(cat.stdout(), format!("got {word}\n"));
    }
}
