//! `tonic-unix`, `tonic-tcp`: gRPC with the tonic crate (HTTP/2, protobuf) over a Unix socket
//! and TCP loopback; see [`crate::rpc`] for the cases.
//!
//! No `.proto` file and no protoc: the three messages are written by hand with
//! `#[derive(prost::Message)]`, the client is tonic's generic `tonic::client::Grpc` with
//! `tonic_prost::ProstCodec`, and the server is a hand-written service that routes on the path
//! (`/bench.Bench/Null`, `/Bulk`, `/Quit`) to `tonic::server::Grpc::unary`, which is what
//! tonic-build would generate. Both sides run a current-thread tokio runtime; the harness
//! blocks on each call. The bulk argument is a protobuf `bytes` field (`Vec<u8>`, cloned per
//! call as for the others).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::runtime::Runtime;
use tonic::body::Body;
use tonic::codegen::http::{self, uri::PathAndQuery};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::rpc::{RpcCaller, RpcSystem};

/// A `u64`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Num {
    /// The value.
    #[prost(uint64, tag = "1")]
    pub x: u64,
}

/// A byte string.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Blob {
    /// The bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

/// Nothing.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

const NULL: &str = "/bench.Bench/Null";
const BULK: &str = "/bench.Bench/Bulk";
const QUIT: &str = "/bench.Bench/Quit";

struct NullSvc;
impl UnaryService<Num> for NullSvc {
    type Response = Num;
    type Future = Ready<Result<Response<Num>, Status>>;
    fn call(&mut self, r: Request<Num>) -> Self::Future {
        ready(Ok(Response::new(r.into_inner())))
    }
}

struct BulkSvc;
impl UnaryService<Blob> for BulkSvc {
    type Response = Num;
    type Future = Ready<Result<Response<Num>, Status>>;
    fn call(&mut self, r: Request<Blob>) -> Self::Future {
        let x = r.into_inner().data.len() as u64;
        ready(Ok(Response::new(Num { x })))
    }
}

struct QuitSvc(Arc<AtomicBool>);
impl UnaryService<Empty> for QuitSvc {
    type Response = Empty;
    type Future = Ready<Result<Response<Empty>, Status>>;
    fn call(&mut self, _: Request<Empty>) -> Self::Future {
        self.0.store(true, Ordering::Release);
        ready(Ok(Response::new(Empty {})))
    }
}

/// The server: routes the three methods (what tonic-build generates for a service).
#[derive(Clone)]
struct BenchGrpc {
    stop: Arc<AtomicBool>,
}

impl NamedService for BenchGrpc {
    const NAME: &'static str = "bench.Bench";
}

type BoxFut =
    Pin<Box<dyn std::future::Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl tower::Service<http::Request<Body>> for BenchGrpc {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> BoxFut {
        let stop = self.stop.clone();
        Box::pin(async move {
            Ok(match req.uri().path() {
                NULL => {
                    let mut g = tonic::server::Grpc::new(ProstCodec::<Num, Num>::default());
                    g.unary(NullSvc, req).await
                }
                BULK => {
                    let mut g = tonic::server::Grpc::new(ProstCodec::<Num, Blob>::default());
                    g.unary(BulkSvc, req).await
                }
                QUIT => {
                    let mut g = tonic::server::Grpc::new(ProstCodec::<Empty, Empty>::default());
                    g.unary(QuitSvc(stop), req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// Which carrier.
pub use crate::rpc::SocketCarrier as Carrier;

/// A `tonic-*` benchmark.
#[derive(Debug, Clone, Copy)]
pub struct Tonic(pub Carrier);

use crate::rpc::{current_thread_runtime as runtime, io_other as other};

/// The client: tonic's generic gRPC client on its own current-thread runtime.
#[derive(Debug)]
pub struct Caller {
    rt: Runtime,
    g: tonic::client::Grpc<Channel>,
}

impl Caller {
    fn unary<A, B>(&mut self, path: &'static str, a: A) -> io::Result<B>
    where
        A: prost::Message + Send + Sync + 'static,
        B: prost::Message + Default + Send + Sync + 'static,
    {
        let g = &mut self.g;
        self.rt.block_on(async move {
            g.ready().await.map_err(other)?;
            let r = g
                .unary(
                    Request::new(a),
                    PathAndQuery::from_static(path),
                    ProstCodec::<A, B>::default(),
                )
                .await
                .map_err(other)?;
            Ok(r.into_inner())
        })
    }
}

impl RpcCaller for Caller {
    fn null(&mut self, x: u64) -> io::Result<u64> {
        self.unary::<Num, Num>(NULL, Num { x }).map(|n| n.x)
    }
    fn bulk(&mut self, data: &Arc<Vec<u8>>) -> io::Result<u64> {
        self.unary::<Blob, Num>(
            BULK,
            Blob {
                data: data.to_vec(),
            },
        )
        .map(|n| n.x)
    }
    fn quit(&mut self) -> io::Result<()> {
        self.unary::<Empty, Empty>(QUIT, Empty {}).map(|_| ())
    }
}

impl RpcSystem for Tonic {
    type Caller = Caller;

    fn address(&self, dir: &Path) -> io::Result<String> {
        self.0.address(dir, "tonic.sock")
    }

    fn serve(&self, addr: &str, alive: &dyn Fn() -> io::Result<()>) -> io::Result<()> {
        let rt = runtime()?;
        let stop = Arc::new(AtomicBool::new(false));
        let svc = BenchGrpc { stop: stop.clone() };
        rt.block_on(async {
            let quit = async {
                while !stop.load(Ordering::Acquire) {
                    if alive().is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            };
            let mut server = tonic::transport::Server::builder();
            let router = server.add_service(svc);
            match self.0 {
                Carrier::Unix => {
                    let l = tokio::net::UnixListener::bind(addr)?;
                    let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                    router
                        .serve_with_incoming_shutdown(incoming, quit)
                        .await
                        .map_err(other)?;
                }
                Carrier::Tcp => {
                    let l = tokio::net::TcpListener::bind(addr).await?;
                    let incoming =
                        tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true));
                    router
                        .serve_with_incoming_shutdown(incoming, quit)
                        .await
                        .map_err(other)?;
                }
            }
            alive()
        })
    }

    fn connect(&self, addr: &str) -> io::Result<Option<Caller>> {
        let rt = runtime()?;
        let channel = match self.0 {
            Carrier::Unix => {
                if !Path::new(addr).exists() {
                    return Ok(None);
                }
                let path = PathBuf::from(addr);
                // The URI is not used: the connector dials the socket.
                let ep = Endpoint::from_static("http://[::1]:50051");
                rt.block_on(ep.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                })))
            }
            Carrier::Tcp => {
                if std::net::TcpStream::connect(addr).is_err() {
                    return Ok(None);
                }
                let ep = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(other)?
                    .tcp_nodelay(true);
                rt.block_on(ep.connect())
            }
        }
        .map_err(other)?;
        Ok(Some(Caller {
            rt,
            g: tonic::client::Grpc::new(channel),
        }))
    }
}
