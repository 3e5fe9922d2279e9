//! A named pipe between two processes, in message mode, and an anonymous pipe into a child.
//!
//! Run: `cargo run -p ipckit --example pipes`
//!
//! The parent creates `\\.\pipe\example-PID` (CreateNamedPipe, message mode) and starts itself
//! again as the client; the child connects (CreateFile), switches to message read mode
//! (SetNamedPipeHandleState) and makes one TransactNamedPipe call. The parent learns who the client
//! is (GetNamedPipeClientProcessId) and answers. The child's stdout is an anonymous pipe
//! (CreatePipe + STARTUPINFO.hStdOutput) that the parent reads to the end.

use std::io::Read;
use std::process::{Command, Stdio};

use ipckit::pipe::{ClientOptions, PipeWait, ReadMode, ServerOptions, anonymous_pipe};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        let mut client = ClientOptions::new()
            .wait(PipeWait::Default)
            .connect(&args[2])?;
        client.set_read_mode(ReadMode::Message)?;
        let mut reply = [0u8; 64];
        let n = client.transact(b"hello, server", &mut reply)?;
        println!(
            "client: server {} said {:?}",
            client.server_process_id(),
            String::from_utf8_lossy(&reply[..n])
        );
        return Ok(());
    }

    let name = format!(r"\\.\pipe\example-{}", std::process::id());
    let mut server = ServerOptions::message().create(&name)?;
    let (mut out, writer) = anonymous_pipe()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["client", &name]).stdout(Stdio::from(writer));
    let mut child = cmd.spawn()?;
    drop(cmd); // the parent's copy of the write end

    server.connect()?;
    let who = server.client().expect("connected");
    let request = server.read_message()?;
    println!(
        "server: pid {} (uid {}) asked {:?}",
        who.pid,
        who.uid,
        String::from_utf8_lossy(&request)
    );
    server.write(b"hello, client")?;

    let mut printed = String::new();
    out.read_to_string(&mut printed)?;
    child.wait()?;
    print!("from the child's stdout: {printed}");
    Ok(())
}
