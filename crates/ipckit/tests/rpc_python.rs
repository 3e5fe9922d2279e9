//! The wire document is enough: a Python client written from `docs/protocol/rpc.md` alone
//! (standard library only, `tests/python/rpc_client.py`) calls an ipckit server over TCP in
//! another process.

use std::process::Command;

use ipckit::rpc::{self, Server, ServerOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum MathError {
    DivideByZero,
}

#[rpc::interface(uuid = "3f2b8c10-5a4e-4d6f-9b21-7e0c4a1d2e55", version = "1.2")]
pub trait Calc {
    fn add(&self, a: i64, b: i64) -> i64;
    fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
    fn greet(&self, name: String) -> String;
}

struct Impl;

impl Calc for Impl {
    fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    fn div(&self, a: i64, b: i64) -> Result<i64, MathError> {
        if b == 0 {
            Err(MathError::DivideByZero)
        } else {
            Ok(a / b)
        }
    }
    fn greet(&self, name: String) -> String {
        format!("hello, {name}")
    }
}

#[test]
fn a_python_client_written_from_the_document_calls_over_tcp() {
    let dir = std::env::temp_dir().join(format!("ipckit-rpc-python-{}", std::process::id()));
    let server = Server::new(
        ServerOptions::new().namespace(ipckit::namespace::Namespace::at(&dir)),
        vec![CalcServer::new(Impl)],
    );
    let b = server.listen("ncacn_ip_tcp:127.0.0.1[0]").unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/rpc_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(b.endpoint().unwrap())
        .output()
        .expect("python3 must be installed to run this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "bind 0 1.2",
            "add ok 42",
            "add ok -1000007",
            "div ok 42",
            "div app_error 0",
            "greet ok hello, python",
            "opnum fault 1745",
            "args fault 1783",
            "bind 1717",
        ]
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
