//! File mapping between two processes, guarded by named events and a named mutex.
//!
//! Run: `cargo run -p ipckit --example file_mapping`
//!
//! The parent creates a named mapping and two auto-reset events, starts itself again as the
//! child, writes a request into the shared memory and signals `request`; the child reads it,
//! writes the reply under the mutex and signals `reply`. The same calls a Windows program makes:
//! CreateFileMapping / OpenFileMapping, MapViewOfFile, CreateEvent / SetEvent /
//! WaitForSingleObject, CreateMutex / ReleaseMutex.

use std::process::Command;
use std::time::Duration;

use ipckit::mapping::{FileMapping, ViewAccess};
use ipckit::sync::{Event, Mutex, Options};

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));

fn names(tag: &str) -> (String, String, String, String) {
    (
        format!(r"Local\example-{tag}-data"),
        format!(r"Local\example-{tag}-request"),
        format!(r"Local\example-{tag}-reply"),
        format!(r"Local\example-{tag}-lock"),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2]);
    }
    let tag = std::process::id().to_string();
    let (data, request, reply, lock) = names(&tag);

    let mapping = FileMapping::create(&data, 4096)?;
    let request = Event::create(&Options::named(&request)?, false, false)?;
    let reply = Event::create(&Options::named(&reply)?, false, false)?;
    let lock = Mutex::create(&Options::named(&lock)?, false)?;
    println!(
        "parent: mapping {data} is /dev/shm/{}",
        mapping.os_name().unwrap_or("?")
    );

    let mut child = Command::new(std::env::current_exe()?)
        .args(["child", &tag])
        .spawn()?;
    let view = mapping.map_view(ViewAccess::Write, 0, 0)?;
    {
        let _g = lock.lock()?;
        let msg = b"what is the answer?";
        view.set(0, msg.len() as u32)?;
        view.write(4, msg)?;
    }
    request.set()?;
    reply.wait(TIMEOUT)?;
    let answer = {
        let _g = lock.lock()?;
        let len = view.get::<u32>(0)? as usize;
        let mut buf = vec![0u8; len.min(4092)];
        view.read(4, &mut buf)?;
        String::from_utf8_lossy(&buf).into_owned()
    };
    println!("parent: the child answered {answer:?}");
    child.wait()?;
    Ok(())
}

fn child(tag: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (data, request, reply, lock) = names(tag);
    let mapping = FileMapping::open(&data, ViewAccess::Write)?;
    let request = Event::open(&Options::named(&request)?)?;
    let reply = Event::open(&Options::named(&reply)?)?;
    let lock = Mutex::open(&Options::named(&lock)?)?;
    let view = mapping.map_view(ViewAccess::Write, 0, 0)?;
    request.wait(TIMEOUT)?;
    let _g = lock.lock()?;
    let len = view.get::<u32>(0)? as usize;
    let mut buf = vec![0u8; len.min(4092)];
    view.read(4, &mut buf)?;
    println!("child: got {:?}", String::from_utf8_lossy(&buf));
    let answer = b"42";
    view.set(0, answer.len() as u32)?;
    view.write(4, answer)?;
    drop(_g);
    reply.set()?;
    Ok(())
}
