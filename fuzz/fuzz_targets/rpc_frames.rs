//! Hostile bytes into the RPC frame decoder and both protocol state machines.
//!
//! The input is split into chunks (as a socket would deliver them) by its first byte; every
//! frame the decoder yields goes to a server state machine (bound to one interface) and to a
//! client state machine. Nothing may panic, allocate beyond the decoder's bound, or loop.

#![no_main]

use ipckit::rpc::InterfaceId;
use ipckit::rpc::Uuid;
use ipckit::rpc::proto::{ClientProto, Decoder, ServerProto};
use libfuzzer_sys::fuzz_target;

const MAX_BODY: u32 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let iface = InterfaceId::new(Uuid::from_u128(0x5e0b_7a91_3c2d_4f18_b6e4_9a1d_0c7f_2b83), 1, 0);
    let mut server = ServerProto::new(vec![(iface, 4)], MAX_BODY, 8);
    let mut client = ClientProto::new(iface, MAX_BODY);
    let _ = client.bind();
    let mut dec = Decoder::new(MAX_BODY);
    for piece in rest.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    let _ = server.on_frame(f.clone());
                    let _ = client.on_frame(f);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
