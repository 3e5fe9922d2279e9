//! `ipckit mailslot serve / write / info` and the mailslot rows of `ipckit ls`, run as a user
//! runs them: each command is a real process in the test's private namespace.

use ipckit::mailslot::MailslotOptions;
use ipckit::namespace::Namespace;
mod common;

use common::*;
use ipckit_testkit::{test_case, wait_for};

#[test]
fn serve_prints_messages_as_they_arrive_and_write_enforces_the_maximum() {
    let t = test_case!();
    let mut srv = t
        .command(ipckit(&[
            "mailslot",
            "serve",
            "inbox",
            "--max-size",
            "100",
            "--timeout",
            "50",
            "--json",
            "--count",
            "3",
        ]))
        .start();
    assert!(
        wait_for(T, || srv.stderr().contains("serving")),
        "{}",
        srv.report()
    );
    ok(&t, &["mailslot", "write", "inbox", "hello"]);
    ok(&t, &["mailslot", "write", r"\\.\mailslot\INBOX", ""]);
    let e = fails(&t, &["mailslot", "write", "inbox", &"x".repeat(101)]);
    assert!(e.contains("win32 87"), "{e}");
    let info = ok(&t, &["mailslot", "info", "inbox", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["max_message_size"], 100);
    assert_eq!(info["read_timeout_ms"], 50);
    assert_eq!(info["server_pid"], srv.pid());
    ok(&t, &["mailslot", "write", "inbox", "bye\nnow"]);
    let out = srv.wait_output_timeout(T).unwrap();
    assert!(out.status.success(), "{}", srv.report());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["text"], "hello");
    assert_eq!(lines[0]["size"], 5);
    assert_eq!(lines[1]["size"], 0);
    assert_eq!(lines[2]["bytes"], serde_json::json!(b"bye\nnow"));
    // The writer was a separate process.
    assert_ne!(lines[0]["sender"]["pid"], srv.pid());
    assert_ne!(lines[0]["sender"]["pid"], std::process::id());
    // The mailslot is gone with its server.
    let e = fails(&t, &["mailslot", "write", "inbox", "late"]);
    assert!(e.contains("win32 2"), "{e}");
}

#[test]
fn plain_serve_prints_one_line_per_message() {
    let t = test_case!();
    let mut srv = t
        .command(ipckit(&["mailslot", "serve", "lines", "--count", "2"]))
        .start();
    assert!(
        wait_for(T, || srv.stderr().contains("serving")),
        "{}",
        srv.report()
    );
    ok(&t, &["mailslot", "write", "lines", "one"]);
    ok(&t, &["mailslot", "write", "lines", "two\tthree"]);
    let out = srv.wait_output_timeout(T).unwrap();
    assert!(out.status.success(), "{}", srv.report());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\\tthree\n");
}

#[test]
fn info_and_ls_show_the_queued_count() {
    let t = test_case!();
    let _s = MailslotOptions::new()
        .namespace(Namespace::at(t.namespace()))
        .create(r"\\.\mailslot\queue")
        .unwrap();
    for m in ["a", "b", "c"] {
        ok(&t, &["mailslot", "write", "queue", m]);
    }
    let info = ok(&t, &["mailslot", "info", "queue"]);
    assert!(info.contains("queued            3"), "{info}");
    assert!(info.contains("forever"), "{info}");
    let ls: serde_json::Value = serde_json::from_str(&ok(&t, &["ls", "--json"])).unwrap();
    let row = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "mailslot")
        .unwrap_or_else(|| panic!("no mailslot row in {ls}"));
    assert_eq!(row["name"], r"\\.\mailslot\queue");
    assert_eq!(row["details"]["queued"], 3);
    assert_eq!(row["holders"], serde_json::json!([std::process::id()]));
    let table = ok(&t, &["ls"]);
    assert!(table.contains("queued 3"), "{table}");

    let e = fails(&t, &["mailslot", "info", "nothing"]);
    assert!(e.contains("no mailslot"), "{e}");
    let e = fails(&t, &["mailslot", "write", r"\\*\mailslot\queue", "x"]);
    assert!(e.contains("gateway") && e.contains("win32 53"), "{e}");
}
