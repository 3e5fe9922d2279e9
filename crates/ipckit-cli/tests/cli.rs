//! The `ipckit` binary, run as a user runs it: each command is a real process started through
//! the test kit (so it dies with the test and works in the test's private namespace).

use std::time::Duration;

mod common;

use common::*;
use ipckit_testkit::{TestCase, test_case, wait_for};

#[test]
fn help_lists_the_subcommands() {
    let t = test_case!();
    let out = ok(&t, &["--help"]);
    for cmd in [
        "ls", "tour", "bench", "where", "shm", "event", "mutex", "sem", "chan", "pipe",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from:\n{out}"
        );
    }
}

#[test]
fn ls_is_empty_in_a_fresh_namespace() {
    let t = test_case!();
    assert!(ok(&t, &["ls"]).contains("no live objects"));
    let json: serde_json::Value = serde_json::from_str(&ok(&t, &["ls", "--json"])).unwrap();
    assert_eq!(json, serde_json::json!([]));
    // The runtime folder was created private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(t.namespace())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn ls_refuses_a_runtime_folder_others_can_write() {
    let t = test_case!();
    use std::os::unix::fs::PermissionsExt;
    let unsafe_dir = t.namespace().join("shared");
    std::fs::create_dir(&unsafe_dir).unwrap();
    std::fs::set_permissions(&unsafe_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut c = ipckit(&["ls"]);
    c.env("IPCKIT_RUNTIME_DIR", &unsafe_dir);
    let o = t.command(c).start().wait_output_timeout(T).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("writable by other users"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("IPCKIT_RUNTIME_DIR"),
        "the error names the fix: {}",
        stderr(&o)
    );
}

#[test]
fn where_maps_names_and_refuses_bad_ones() {
    let t = test_case!();
    let out = ok(&t, &["where", r"\\.\pipe\App\Ctl", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "pipe");
    assert!(
        v["path"].as_str().unwrap().ends_with("/pipe/app%5Cctl"),
        "{v}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&t, &["where", r"Global\x", "--json"])).unwrap();
    assert!(
        v["shm_name"]
            .as_str()
            .unwrap()
            .starts_with("ipckit.global."),
        "{v}"
    );
    let o = run(&t, &["where", r"\\.\pipe\..\etc"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("win32 123"), "{}", stderr(&o));
}

#[test]
fn tour_reports_all_nine_mechanisms() {
    let t = test_case!();
    let out = ok(&t, &["tour", "--no-measure"]);
    for m in [
        "Clipboard",
        "COM",
        "Copy Data",
        "DDE",
        "File Mapping",
        "Pipes",
        "Mailslots",
        "Sockets",
        "RPC",
    ] {
        assert!(out.contains(m), "{m} missing:\n{out}");
    }
    assert!(out.contains("of 9 mechanisms available"), "{out}");
}

#[test]
fn shm_lives_while_held_and_shows_in_ls() {
    let t = test_case!();
    let mut holder = start(
        &t,
        &["shm", "create", r"Local\cli-shm", "--size", "8k", "--hold"],
        "created mapping",
    );
    ok(
        &t,
        &["shm", "write", r"Local\cli-shm", "hello from the shell"],
    );
    assert_eq!(
        ok(&t, &["shm", "read", r"Local\cli-shm"]),
        "hello from the shell"
    );
    assert_eq!(
        ok(
            &t,
            &[
                "shm",
                "read",
                r"Local\cli-shm",
                "--offset",
                "6",
                "--len",
                "4"
            ]
        ),
        "from"
    );

    let ls: serde_json::Value = serde_json::from_str(&ok(&t, &["ls", "--json"])).unwrap();
    let entry = &ls.as_array().unwrap()[0];
    assert_eq!(entry["kind"], "mapping");
    assert_eq!(entry["name"], r"Local\cli-shm");
    assert_eq!(entry["size"], 8192);
    assert_eq!(entry["holders"], serde_json::json!([holder.pid()]));
    let shm_path = entry["os_name"].as_str().unwrap().to_owned();
    assert!(std::path::Path::new(&shm_path).exists(), "{shm_path}");

    holder.kill().unwrap();
    // With its only holder killed, the mapping is gone: not listed, not openable, no file left.
    let ls: serde_json::Value = serde_json::from_str(&ok(&t, &["ls", "--json"])).unwrap();
    assert_eq!(ls, serde_json::json!([]));
    assert!(
        !std::path::Path::new(&shm_path).exists(),
        "{shm_path} left behind"
    );
    let o = run(&t, &["shm", "read", r"Local\cli-shm"]);
    assert!(stderr(&o).contains("win32 2"), "{}", stderr(&o));
}

#[test]
fn shm_rejects_bad_input() {
    let t = test_case!();
    let o = run(&t, &["shm", "create", "x", "--size", "0"]);
    assert!(stderr(&o).contains("win32 87"), "{}", stderr(&o));
    let o = run(&t, &["shm", "create", "x", "--size", "lots"]);
    assert!(!o.status.success());
    let o = run(&t, &["shm", "create", "a/b", "--size", "4k"]);
    assert!(stderr(&o).contains("win32 123"), "{}", stderr(&o));
    let _holder = start(
        &t,
        &["shm", "create", "small", "--size", "16", "--hold"],
        "created mapping",
    );
    let o = run(
        &t,
        &[
            "shm",
            "write",
            "small",
            "--offset",
            "10",
            "more than six bytes",
        ],
    );
    assert!(stderr(&o).contains("win32 87"), "{}", stderr(&o));
    assert_eq!(
        ok(&t, &["shm", "read", "small"]),
        "",
        "a refused write changes nothing"
    );
}

#[test]
fn mutex_abandoned_by_a_killed_holder() {
    let t = test_case!();
    let mut holder = start(&t, &["mutex", "hold", "cli-mutex"], "acquired");
    let o = run(&t, &["mutex", "try", "cli-mutex", "--timeout", "50"]);
    assert_eq!((o.status.code(), stdout(&o).trim()), (Some(2), "timeout"));
    // A waiter holds the mutex object open (as a second handle would on Windows) ...
    let mut waiter = t
        .command(ipckit(&["mutex", "try", "cli-mutex", "--timeout", "20000"]))
        .start();
    let holders = || {
        let ls: serde_json::Value = serde_json::from_str(&ok(&t, &["ls", "--json"])).unwrap();
        ls[0]["holders"].as_array().map_or(0, |h| h.len())
    };
    assert!(
        wait_for(T, || holders() == 2),
        "the waiter did not open the mutex"
    );
    // ... so when the owner is killed, the mutex survives, abandoned, and the waiter gets it.
    holder.kill().unwrap();
    let o = waiter.wait_output_timeout(T).unwrap();
    assert_eq!(stdout(&o).trim(), "abandoned", "{}", stderr(&o));
    // With every holder gone, the mutex is gone too: a new one is simply acquired.
    assert_eq!(
        ok(&t, &["mutex", "try", "cli-mutex", "--timeout", "10000"]).trim(),
        "acquired"
    );
}

#[test]
fn event_and_semaphore_from_the_shell() {
    let t = test_case!();
    let _ev = start(
        &t,
        &["event", "create", "cli-ev", "--manual"],
        "created manual-reset event",
    );
    let o = run(&t, &["event", "wait", "cli-ev", "--timeout", "10"]);
    assert_eq!((o.status.code(), stdout(&o).trim()), (Some(2), "timeout"));
    ok(&t, &["event", "set", "cli-ev"]);
    assert_eq!(
        ok(&t, &["event", "wait", "cli-ev", "--timeout", "10000"]).trim(),
        "signaled"
    );
    ok(&t, &["event", "reset", "cli-ev"]);
    let o = run(&t, &["event", "wait", "cli-ev", "--timeout", "10"]);
    assert_eq!(o.status.code(), Some(2));

    let _sem = start(
        &t,
        &["sem", "create", "cli-sem", "--initial", "1", "--max", "2"],
        "created semaphore",
    );
    assert_eq!(ok(&t, &["sem", "release", "cli-sem"]).trim(), "1");
    let o = run(&t, &["sem", "release", "cli-sem"]);
    assert!(stderr(&o).contains("win32 298"), "{}", stderr(&o));
    assert_eq!(
        ok(&t, &["sem", "wait", "cli-sem", "--timeout", "10000"]).trim(),
        "signaled"
    );
    assert_eq!(
        ok(&t, &["sem", "wait", "cli-sem", "--timeout", "10000"]).trim(),
        "signaled"
    );
    let o = run(&t, &["sem", "wait", "cli-sem", "--timeout", "10"]);
    assert_eq!(o.status.code(), Some(2));
    // A name belongs to one kind of object.
    let o = run(&t, &["event", "set", "cli-sem"]);
    assert!(stderr(&o).contains("win32 6"), "{}", stderr(&o));
}

#[test]
fn chan_send_and_follow() {
    let t = test_case!();
    // A sender needs the receiver's channel.
    let o = run(&t, &["chan", "send", "cli-chan", "early"]);
    assert!(stderr(&o).contains("win32 2"), "{}", stderr(&o));
    let mut rx = t
        .command(ipckit(&["chan", "recv", "cli-chan", "--follow"]))
        .start();
    assert!(
        wait_for(T, || rx.stderr().contains("receiving on cli-chan")),
        "{}",
        rx.report()
    );
    ok(&t, &["chan", "send", "cli-chan", "first"]);
    ok(&t, &["chan", "send", "cli-chan", "second"]);
    assert!(
        wait_for(T, || rx.stdout() == "first\nsecond\n"),
        "{}",
        rx.report()
    );
    let ls: serde_json::Value = serde_json::from_str(&ok(&t, &["ls", "--json"])).unwrap();
    assert_eq!(ls[0]["kind"], "channel");
    assert_eq!(ls[0]["details"]["receiver"], rx.pid());
    assert_eq!(ls[0]["details"]["depth"], 0);
    rx.kill().unwrap();
    let ls: serde_json::Value = serde_json::from_str(&ok(&t, &["ls", "--json"])).unwrap();
    assert_eq!(ls, serde_json::json!([]));
}

#[test]
fn bench_prints_json_lines() {
    let t = test_case!();
    let mut c = ipckit(&["bench", "--quick", "--json", "unix-stream", "memcpy"]);
    // A handful of iterations: this checks the output, not the numbers.
    c.env("IPCKIT_BENCH_TINY", "1");
    let o = t
        .command(c)
        .start()
        .wait_output_timeout(Duration::from_secs(60))
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<_> = stdout(&o).lines().map(str::to_owned).collect();
    assert!(lines.len() >= 4, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        for k in [
            "mechanism",
            "case",
            "metric",
            "value",
            "unit",
            "baseline",
            "ratio",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing in {line}");
        }
        assert_eq!(keys.len(), 7, "{line}");
        assert!(v["value"].as_f64().unwrap() > 0.0, "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"unix-stream\"")));
}

/// `ipckit ls --json`, parsed.
fn ls_json(t: &TestCase) -> serde_json::Value {
    serde_json::from_str(&ok(t, &["ls", "--json"])).unwrap()
}

#[test]
fn pipe_serve_call_send_cat_and_ls() {
    use std::io::Write;
    let t = test_case!();
    // No such pipe: FILE_NOT_FOUND.
    let o = run(&t, &["pipe", "send", "cli-missing", "x"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("win32 2"), "{}", stderr(&o));

    let mut server = t
        .command(ipckit(&[
            "pipe",
            "serve",
            "cli-pipe",
            "--message",
            "--instances",
            "1",
            "--echo",
        ]))
        .start();
    assert!(
        wait_for(T, || server.stderr().contains(r"serving \\.\pipe\cli-pipe")),
        "{}",
        server.report()
    );
    assert_eq!(ok(&t, &["pipe", "call", "cli-pipe", "hello"]), "hello");
    assert_eq!(ok(&t, &["pipe", "send", r"\\.\pipe\CLI-PIPE", "hi"]), "hi");

    let ls = ls_json(&t);
    assert_eq!(ls[0]["kind"], "pipe", "{ls}");
    assert_eq!(ls[0]["name"], r"\\.\pipe\cli-pipe");
    assert_eq!(ls[0]["holders"], serde_json::json!([server.pid()]));
    assert_eq!(
        ls[0]["details"],
        serde_json::json!({
            "mode": "message",
            "instances": 1,
            "max_instances": 1,
            "free": 1,
            "servers": [server.pid()],
        })
    );
    assert!(
        ok(&t, &["ls"]).contains("message, instances 1/1, free 1"),
        "{}",
        ok(&t, &["ls"])
    );

    // A client holds the only instance (its stdin stays open).
    let mut cat = t.command(ipckit(&["pipe", "cat", "cli-pipe"])).start();
    cat.stdin().unwrap().write_all(b"ping").unwrap();
    cat.stdin().unwrap().flush().unwrap();
    assert!(wait_for(T, || cat.stdout() == "ping"), "{}", cat.report());
    assert_eq!(ls_json(&t)[0]["details"]["free"], 0);
    // CreateFile without waiting: ERROR_PIPE_BUSY.
    let o = run(&t, &["pipe", "send", "cli-pipe", "x"]);
    assert!(stderr(&o).contains("win32 231"), "{}", stderr(&o));
    // CallNamedPipe waits (the pipe's default timeout, or --timeout) for a free instance, then
    // fails with ERROR_SEM_TIMEOUT.
    let o = run(&t, &["pipe", "call", "cli-pipe", "x"]);
    assert!(stderr(&o).contains("win32 121"), "{}", stderr(&o));
    let o = run(&t, &["pipe", "call", "cli-pipe", "x", "--timeout", "100"]);
    assert!(stderr(&o).contains("win32 121"), "{}", stderr(&o));

    // The client leaves: the instance serves the next one.
    cat.close_input();
    assert!(cat.wait_timeout(T).unwrap().success(), "{}", cat.report());
    let o = run(
        &t,
        &["pipe", "call", "cli-pipe", "again", "--timeout", "5000"],
    );
    assert_eq!(stdout(&o), "again", "{}", stderr(&o));

    // With its server killed, the pipe is gone.
    server.kill().unwrap();
    assert_eq!(ls_json(&t), serde_json::json!([]));
    let o = run(&t, &["pipe", "call", "cli-pipe", "x"]);
    assert!(stderr(&o).contains("win32 2"), "{}", stderr(&o));
}

#[test]
fn pipe_serve_exec_runs_a_command_per_client() {
    use std::io::Write;
    let t = test_case!();
    let mut server = t
        .command(ipckit(&[
            "pipe",
            "serve",
            "cli-exec",
            "--instances",
            "2",
            "--exec",
            r#"while read l; do echo "got $l"; done"#,
        ]))
        .start();
    assert!(
        wait_for(T, || server.stderr().contains("serving")),
        "{}",
        server.report()
    );
    let ls = ls_json(&t);
    assert_eq!(ls[0]["details"]["mode"], "byte", "{ls}");
    assert_eq!(ls[0]["details"]["instances"], 2, "{ls}");
    for word in ["one", "two"] {
        let mut cat = t
            .command(ipckit(&["pipe", "cat", "cli-exec", "--linger", "2000"]))
            .start();
        let stdin = cat.stdin().unwrap();
        stdin.write_all(format!("{word}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        let want = format!("got {word}\n");
        assert!(wait_for(T, || cat.stdout() == want), "{}", cat.report());
        cat.close_input();
        assert!(cat.wait_timeout(T).unwrap().success(), "{}", cat.report());
    }
    server.kill().unwrap();

    // A server SIGKILLed while a client's command runs leaves no command behind (this one
    // would live on: it does not stop at the end of its input).
    let mut server = t
        .command(ipckit(&[
            "pipe",
            "serve",
            "cli-exec-2",
            "--exec",
            r#"read l; echo "got $l"; exec sleep 1000"#,
        ]))
        .start();
    assert!(
        wait_for(T, || server.stderr().contains("serving")),
        "{}",
        server.report()
    );
    let mut cat = t
        .command(ipckit(&["pipe", "cat", "cli-exec-2", "--linger", "2000"]))
        .start();
    let stdin = cat.stdin().unwrap();
    stdin.write_all(b"three\n").unwrap();
    stdin.flush().unwrap();
    assert!(
        wait_for(T, || cat.stdout() == "got three\n"),
        "{}",
        cat.report()
    );
    // The command runs as a child of one of the server's threads.
    let commands: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .flat_map(|tid| {
            std::fs::read_to_string(format!("/proc/{}/task/{tid}/children", server.pid()))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    assert_eq!(commands.len(), 1, "one command runs: {commands:?}");
    server.kill().unwrap();
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    };
    let orphan = !wait_for(T, || gone(commands[0]));
    if orphan {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &commands[0].to_string()])
            .status();
    }
    assert!(!orphan, "the command outlived the server");
}
