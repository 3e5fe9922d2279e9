//! Request/response over a pair of channels, with correlation ids.
//!
//! ```
//! use ipckit::channel::{Channel, Requester, Responder};
//! # let dir = std::env::temp_dir().join(format!("ipckit-doc-duplex-{}", std::process::id()));
//! # let ns = ipckit::namespace::Namespace::at(&dir);
//!
//! // The server: NAME.req is its receiver, NAME.rsp its sender.
//! let mut server = Responder::create(Channel::builder().name(r"Local\calc")?.namespace(ns.clone()))?;
//! // A client (normally another process).
//! let mut client = Requester::connect(Channel::builder().name(r"Local\calc")?.namespace(ns.clone()))?;
//!
//! let id = client.request(b"2+2")?;
//! let req = server.next_request()?;
//! assert_eq!(req.payload, b"2+2");
//! server.respond(req.id, b"4")?;
//! assert_eq!(client.wait_response(id)?, b"4");
//! # drop((client, server)); let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! Each message carries an 8-byte little-endian correlation id before its payload. A requester
//! may have many requests in flight; responses that arrive for other ids are kept until asked
//! for. One requester talks to one responder (the channels are single-producer); several clients
//! each use a pair of their own.

use std::collections::HashMap;

use super::{ChannelBuilder, Receiver, Sender};
use crate::error::{Error, ErrorKind, Result};
use crate::name::ObjectName;

const ID_LEN: usize = 8;

fn pair_names(builder: &ChannelBuilder) -> Result<(String, String)> {
    let name: &ObjectName = builder.name.as_ref().ok_or_else(|| {
        Error::with_message(
            ErrorKind::InvalidName,
            "a request/response pair needs a name",
        )
    })?;
    Ok((format!("{name}.req"), format!("{name}.rsp")))
}

fn with_room(builder: ChannelBuilder) -> ChannelBuilder {
    let max = builder.geometry.max_message.saturating_add(ID_LEN as u32);
    builder.max_message(max)
}

fn split(msg: &[u8]) -> Result<(u64, &[u8])> {
    if msg.len() < ID_LEN {
        return Err(Error::with_message(
            ErrorKind::Protocol,
            "message shorter than its correlation id",
        ));
    }
    let (id, payload) = msg.split_at(ID_LEN);
    Ok((u64::from_le_bytes(id.try_into().expect("8 bytes")), payload))
}

fn send_with_id(tx: &mut Sender, id: u64, payload: &[u8]) -> Result<()> {
    let mut slot = tx.reserve(ID_LEN + payload.len())?;
    slot.write(0, &id.to_le_bytes())?;
    slot.write(ID_LEN, payload)?;
    slot.commit();
    Ok(())
}

/// One request as the responder receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The correlation id to answer with.
    pub id: u64,
    /// The request's bytes.
    pub payload: Vec<u8>,
}

/// The client side: sends requests on `NAME.req`, receives responses on `NAME.rsp`.
#[derive(Debug)]
pub struct Requester {
    tx: Sender,
    rx: Receiver,
    next_id: u64,
    early: HashMap<u64, Vec<u8>>,
}

impl Requester {
    /// Connects to the pair `builder`'s name names (creating the channels if the responder has
    /// not yet; their geometry comes from `builder`, with 8 bytes added for the id).
    pub fn connect(builder: ChannelBuilder) -> Result<Requester> {
        let (req, rsp) = pair_names(&builder)?;
        let builder = with_room(builder);
        let tx = builder.clone().name(&req)?.sender()?;
        let rx = builder.name(&rsp)?.receiver()?;
        Ok(Requester {
            tx,
            rx,
            next_id: 1,
            early: HashMap::new(),
        })
    }

    /// Sends a request and returns its correlation id.
    pub fn request(&mut self, payload: &[u8]) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        send_with_id(&mut self.tx, id, payload)?;
        Ok(id)
    }

    /// Waits for the response to request `id`; responses to other requests that arrive first are
    /// kept for their own `wait_response`.
    pub fn wait_response(&mut self, id: u64) -> Result<Vec<u8>> {
        if let Some(r) = self.early.remove(&id) {
            return Ok(r);
        }
        loop {
            let msg = self.rx.recv_borrow()?;
            let mut head = [0u8; ID_LEN];
            if msg.len() < ID_LEN {
                return Err(Error::with_message(
                    ErrorKind::Protocol,
                    "response shorter than its correlation id",
                ));
            }
            msg.read(0, &mut head)?;
            let got = u64::from_le_bytes(head);
            let mut payload = vec![0u8; msg.len() - ID_LEN];
            msg.read(ID_LEN, &mut payload)?;
            drop(msg);
            if got == id {
                return Ok(payload);
            }
            if got == 0 || got >= self.next_id {
                return Err(Error::with_message(
                    ErrorKind::Protocol,
                    format!("response to unknown request {got}"),
                ));
            }
            self.early.insert(got, payload);
        }
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let id = self.request(payload)?;
        self.wait_response(id)
    }
}

/// The server side: receives requests on `NAME.req`, answers on `NAME.rsp`.
#[derive(Debug)]
pub struct Responder {
    rx: Receiver,
    tx: Sender,
}

impl Responder {
    /// Creates (or opens) the pair `builder`'s name names and attaches to it.
    pub fn create(builder: ChannelBuilder) -> Result<Responder> {
        let (req, rsp) = pair_names(&builder)?;
        let builder = with_room(builder);
        let rx = builder.clone().name(&req)?.receiver()?;
        let tx = builder.name(&rsp)?.sender()?;
        Ok(Responder { rx, tx })
    }

    /// Waits for the next request.
    pub fn next_request(&mut self) -> Result<Request> {
        let msg = self.rx.recv()?;
        let (id, payload) = split(&msg)?;
        Ok(Request {
            id,
            payload: payload.to_vec(),
        })
    }

    /// Answers request `id`.
    pub fn respond(&mut self, id: u64, payload: &[u8]) -> Result<()> {
        send_with_id(&mut self.tx, id, payload)
    }
}
