//! The channel's tokio API between two processes (feature `tokio`).
#![cfg(feature = "tokio")]

use std::time::Duration;

use ipckit::ErrorKind;
use ipckit::channel::Channel;
use ipckit::namespace::Namespace;
use ipckit_testkit::test_case;

const T: Duration = Duration::from_secs(20);

#[test]
fn async_receive_and_send_across_processes_and_cancellation_loses_nothing() {
    let t = test_case!();
    t.role("sender", |ctx| {
        let ns = Namespace::at(ctx.namespace());
        let mut tx = Channel::builder()
            .name(r"Local\async")?
            .namespace(ns)
            .sender()?;
        // Wait for the go, so the receiver's first waits find the channel empty.
        ctx.expect("go", T)?;
        for i in 0..1000u32 {
            tx.send(&i.to_le_bytes())?;
        }
        ctx.expect("done", T)?;
        Ok(())
    });
    let ns = Namespace::at(t.namespace());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut rx = Channel::builder()
            .name(r"Local\async")
            .unwrap()
            .capacity(8)
            .max_message(64)
            .namespace(ns.clone())
            .receiver()
            .unwrap();
        let mut peer = t.spawn("sender").start();
        // Cancelled receives on an empty channel: nothing is taken.
        for _ in 0..3 {
            assert!(
                tokio::time::timeout(Duration::from_millis(20), rx.recv_async())
                    .await
                    .is_err()
            );
        }
        peer.send_str("go").unwrap();
        for i in 0..1000u32 {
            let m = tokio::time::timeout(T, rx.recv_async())
                .await
                .expect("no hang")
                .unwrap();
            assert_eq!(m, i.to_le_bytes(), "message {i}");
        }
        peer.send_str("done").unwrap();
        assert!(peer.wait_timeout(T).unwrap().success());
        // The sender is gone: the async receive says so instead of waiting forever.
        let e = tokio::time::timeout(T, rx.recv_async())
            .await
            .expect("no hang")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PeerGone);
    });
}

#[test]
fn async_send_waits_for_room_without_blocking_the_runtime() {
    let t = test_case!();
    t.role("receiver", |ctx| {
        let ns = Namespace::at(ctx.namespace());
        let mut rx = Channel::builder()
            .name(r"Local\async-tx")?
            .capacity(2)
            .max_message(64)
            .namespace(ns)
            .receiver()?;
        ctx.send_str("ready")?;
        ctx.expect("drain", T)?;
        for i in 0..100u32 {
            let m = rx.recv()?;
            if m != i.to_le_bytes() {
                return Err(format!("message {i} was {m:?}").into());
            }
        }
        Ok(())
    });
    let ns = Namespace::at(t.namespace());
    let mut peer = t.spawn("receiver").start();
    peer.expect("ready", T).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tx = Channel::builder()
            .name(r"Local\async-tx")
            .unwrap()
            .namespace(ns)
            .sender()
            .unwrap();
        tx.send_async(&0u32.to_le_bytes()).await.unwrap();
        tx.send_async(&1u32.to_le_bytes()).await.unwrap();
        // Full: a cancelled send sends nothing, and the runtime keeps running meanwhile.
        assert!(
            tokio::time::timeout(
                Duration::from_millis(20),
                tx.send_async(&99u32.to_le_bytes())
            )
            .await
            .is_err()
        );
        peer.send_str("drain").unwrap();
        for i in 2..100u32 {
            tokio::time::timeout(T, tx.send_async(&i.to_le_bytes()))
                .await
                .expect("no hang")
                .unwrap();
        }
    });
    assert!(peer.wait_timeout(T).unwrap().success(), "{}", peer.stderr());
}
