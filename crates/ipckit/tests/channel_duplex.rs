//! Request/response over a channel pair, between two processes.

use std::time::Duration;

use ipckit::channel::{Channel, Requester, Responder};
use ipckit::namespace::Namespace;
use ipckit_testkit::test_case;

const T: Duration = Duration::from_secs(20);

#[test]
fn pipelined_requests_get_their_own_responses() {
    let t = test_case!();
    t.role("server", |ctx| {
        let ns = Namespace::at(ctx.namespace());
        let mut server = Responder::create(
            Channel::builder()
                .name(r"Local\svc")?
                .max_message(1024)
                .namespace(ns),
        )?;
        ctx.send_str("ready")?;
        // Answer in reverse order of arrival within each batch of 8, to exercise correlation.
        loop {
            let mut batch = Vec::new();
            for _ in 0..8 {
                batch.push(server.next_request()?);
            }
            let done = batch.iter().any(|r| r.payload == b"last");
            for r in batch.into_iter().rev() {
                let mut answer = r.payload.clone();
                answer.reverse();
                server.respond(r.id, &answer)?;
            }
            if done {
                return Ok(());
            }
        }
    });
    let ns = Namespace::at(t.namespace());
    let mut server = t.spawn("server").start();
    server.expect("ready", T).unwrap();
    let mut client = Requester::connect(
        Channel::builder()
            .name(r"Local\svc")
            .unwrap()
            .max_message(1024)
            .namespace(ns),
    )
    .unwrap();
    let mut pending = Vec::new();
    for i in 0..63u32 {
        let payload = format!("request {i}").into_bytes();
        pending.push((client.request(&payload).unwrap(), payload));
    }
    pending.push((client.request(b"last").unwrap(), b"last".to_vec()));
    // Collect in request order although they come back in another order.
    for (id, payload) in pending {
        let mut want = payload.clone();
        want.reverse();
        assert_eq!(client.wait_response(id).unwrap(), want);
    }
    assert!(server.wait_timeout(T).unwrap().success());
}
