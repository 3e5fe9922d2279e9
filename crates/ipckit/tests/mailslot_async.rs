//! The mailslots' tokio API between processes (feature `tokio`): an async server reading from
//! writer processes with its read timeouts, and an async writer that waits for room without
//! blocking the runtime.
#![cfg(feature = "tokio")]

use std::time::Duration;

use ipckit::ErrorKind;
use ipckit::mailslot::{MailslotOptions, WriterOptions};
use ipckit::namespace::Namespace;
use ipckit_testkit::{test_case, unique_name};

const T: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn async_server_reads_writer_processes_in_order_with_timeouts() {
    let t = test_case!();
    t.role("writer", |ctx| {
        let w = WriterOptions::new()
            .namespace(Namespace::at(ctx.namespace()))
            .open(ctx.arg(0).unwrap())?;
        ctx.expect("go", T)?;
        for i in 0..200u32 {
            w.write(&i.to_le_bytes())?;
        }
        w.write(b"")?;
        Ok(())
    });
    let name = format!(r"\\.\mailslot\{}", unique_name("async"));
    let ns = Namespace::at(t.namespace());
    runtime().block_on(async {
        let mut s = MailslotOptions::new()
            .namespace(ns)
            .read_timeout(Some(Duration::ZERO))
            .create_async(&name)
            .unwrap();
        let mut buf = [0u8; 16];
        // Empty with timeout 0: ERROR_SEM_TIMEOUT at once; a short timeout too.
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!((e.kind(), e.win32_code()), (ErrorKind::Timeout, 121));
        s.set_read_timeout(Some(Duration::from_millis(20)));
        let e = s.read_message().await.unwrap_err();
        assert_eq!((e.kind(), e.win32_code()), (ErrorKind::Timeout, 121));
        let mut p = t.spawn("writer").arg(&name).start();
        s.set_read_timeout(None);
        p.send_str("go").unwrap();
        // More messages than the kernel queues: the writer waits, the async reads wake.
        for i in 0..200u32 {
            let (n, who) = tokio::time::timeout(T, s.read_from(&mut buf))
                .await
                .expect("no hang")
                .unwrap();
            assert_eq!(&buf[..n], &i.to_le_bytes(), "message {i}");
            assert_eq!(who.pid, p.pid());
        }
        let m = s.read_message().await.unwrap();
        assert!(m.data.is_empty());
        // Too small a buffer keeps the message, as in the blocking API.
        let w = WriterOptions::new()
            .namespace(Namespace::at(t.namespace()))
            .open(&name)
            .unwrap();
        w.write(b"longer than four").unwrap();
        let e = s.read(&mut buf[..4]).await.unwrap_err();
        assert_eq!(e.win32_code(), 122);
        assert_eq!(s.info().unwrap().count, 1);
        assert_eq!(s.read(&mut buf).await.unwrap(), 16);
        assert!(p.wait_timeout(T).unwrap().success(), "{}", p.report());
    });
}

#[test]
fn async_writer_waits_for_room_without_blocking_the_runtime() {
    let t = test_case!();
    t.role("server", |ctx| {
        let mut s = MailslotOptions::new()
            .namespace(Namespace::at(ctx.namespace()))
            .read_timeout(Some(T))
            .create(ctx.arg(0).unwrap())?;
        ctx.send_str("ready")?;
        ctx.expect("drain", T)?;
        for i in 0..100u32 {
            let m = s.read_message()?;
            if m.data != i.to_le_bytes() {
                return Err(format!("message {i} was {:?}", m.data).into());
            }
        }
        ctx.send_str("drained")?;
        ctx.expect("never", T)?;
        Ok(())
    });
    let name = format!(r"\\.\mailslot\{}", unique_name("async-w"));
    let mut peer = t.spawn("server").arg(&name).start();
    peer.expect("ready", T).unwrap();
    let ns = Namespace::at(t.namespace());
    runtime().block_on(async {
        let w = WriterOptions::new()
            .namespace(ns.clone())
            .open_async(&name)
            .unwrap();
        let mut i = 0u32;
        // Fill the queue without waiting.
        loop {
            match w.try_write(&i.to_le_bytes()) {
                Ok(_) => i += 1,
                Err(e) if e.kind() == ErrorKind::Full => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(i > 0);
        // Full: a cancelled write sends nothing, and the runtime keeps running meanwhile.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), w.write(&999u32.to_le_bytes()))
                .await
                .is_err()
        );
        let bounded = WriterOptions::new()
            .namespace(ns.clone())
            .write_timeout(Some(Duration::from_millis(20)))
            .open_async(&name)
            .unwrap();
        let e = bounded.write(b"x").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        peer.send_str("drain").unwrap();
        while i < 100 {
            tokio::time::timeout(T, w.write(&i.to_le_bytes()))
                .await
                .expect("no hang")
                .unwrap();
            i += 1;
        }
        peer.expect("drained", T).unwrap();
        peer.kill().unwrap();
        let e = w.write(b"gone").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PeerGone);
    });
}
