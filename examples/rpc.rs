//! A typed RPC interface served by one process and called by another.
//!
//! Run: `cargo run -p ipckit --example rpc`
//!
//! The interface is a trait with `#[rpc::interface]` (MIDL's IDL interface). The parent serves
//! it on `ncalrpc:[example-PID]` (RpcServerUseProtseqEp, RpcServerRegisterIf, RpcServerListen)
//! and starts itself as the client, which binds (RpcBindingFromStringBinding), makes typed
//! calls, gets a typed application error, keeps state in a context handle, and asks who the
//! server thinks it is (RpcImpersonateClient's question, answered by the kernel). The parent
//! then stops the server gracefully (RpcMgmtStopServerListening).

use std::process::Command;
use std::sync::Mutex;

use ipckit::rpc::{self, CallContext, CallError, ContextHandle, Server, ServerOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShopError {
    OutOfStock { item: String },
}

#[rpc::interface(uuid = "0c8f5b2a-7d1e-4f63-a9c4-2e5b8d7f1a30", version = "1.0")]
pub trait Shop {
    /// The price of `item` in cents.
    fn price(&self, item: String) -> Result<u64, ShopError>;
    /// Opens a basket (a context handle: freed by a rundown if the client dies).
    fn open_basket(&self, ctx: &CallContext) -> ContextHandle;
    /// Adds `item` to a basket and returns the basket's total.
    fn add(&self, ctx: &CallContext, basket: ContextHandle, item: String) -> Result<u64, String>;
    /// The caller's pid as the kernel reported it to the server.
    fn caller_pid(&self, ctx: &CallContext) -> Option<u32>;
}

struct ShopImpl {
    log: Mutex<Vec<String>>,
}

fn price_of(item: &str) -> Option<u64> {
    match item {
        "apple" => Some(40),
        "bread" => Some(250),
        _ => None,
    }
}

impl Shop for ShopImpl {
    fn price(&self, item: String) -> Result<u64, ShopError> {
        price_of(&item).ok_or(ShopError::OutOfStock { item })
    }
    fn open_basket(&self, ctx: &CallContext) -> ContextHandle {
        ctx.open_context(0u64, |_| {})
    }
    fn add(&self, ctx: &CallContext, basket: ContextHandle, item: String) -> Result<u64, String> {
        let p = price_of(&item).ok_or_else(|| format!("no {item}"))?;
        self.log.lock().unwrap().push(item);
        ctx.with_context(basket, |total: &mut u64| {
            *total += p;
            *total
        })
        .map_err(|e| e.to_string())
    }
    fn caller_pid(&self, ctx: &CallContext) -> Option<u32> {
        ctx.caller().pid
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        return client(&args[2]);
    }

    let shop = ShopServer::new(ShopImpl {
        log: Mutex::new(Vec::new()),
    });
    let server = Server::new(ServerOptions::new(), vec![shop]);
    let binding = server.listen(&format!("ncalrpc:[example-{}]", std::process::id()))?;
    println!("server: listening on {binding}");
    let status = Command::new(std::env::current_exe()?)
        .args(["client", &binding.to_string()])
        .status()?;
    assert!(status.success(), "client failed: {status}");
    server.stop();
    println!("server: stopped");
    Ok(())
}

fn client(binding: &str) -> Result<(), Box<dyn std::error::Error>> {
    let shop = ShopClient::connect(binding)?;
    println!("client: apple costs {} cents", shop.price("apple".into())?);
    match shop.price("caviar".into()) {
        Err(CallError::App(ShopError::OutOfStock { item })) => {
            println!("client: out of stock: {item} (a typed error from the server)")
        }
        other => panic!("unexpected {other:?}"),
    }
    let basket = shop.open_basket()?;
    shop.add(basket, "apple".into())?;
    let total = shop.add(basket, "bread".into())?;
    assert_eq!(total, 290);
    println!("client: basket total {total} cents");
    let pid = shop.caller_pid()?;
    assert_eq!(pid, Some(std::process::id()));
    println!("client: the server sees pid {}", std::process::id());
    // Timing one small call over ncalrpc.
    let t0 = std::time::Instant::now();
    let n = 1000;
    for _ in 0..n {
        shop.price("apple".into())?;
    }
    println!(
        "client: {n} calls, {:.1} µs each",
        t0.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}
