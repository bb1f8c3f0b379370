//! An institution that acknowledges every `Deliver` at once and does nothing else, served by tonic or by hyper alone: what tonic's service stack costs a unary call.
//!
//! `cargo run --release -p bcss-sim --example bare_institution -- tonic|hyper ADDRESS`, plain
//! HTTP/2 on ADDRESS, until interrupted. Drive it with `bcss-hub load --target institution
//! --address ADDRESS --tls off`, and read the server's CPU per call from its process (as
//! `benches/compare.sh` does). Both answer the generator's call the same way: an empty
//! `DeliveryAck` and `grpc-status: 0`. The hyper one reads the request's body to its end and
//! answers whatever the path, with none of tonic's routing, codec or layers: the floor a
//! server on hyper could reach for a call, before any work of its own.

use std::convert::Infallible;
use std::net::SocketAddr;

use bcss_proto::hub::view::v1::DeliveryView;
use bcss_proto::institution::v1::{AnswerReply, AnswerRequest, DeliveryAck};
use bcss_proto::institution_receiving::institution_server::{Institution, InstitutionServer};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::{Request, Response, Status, Streaming};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_institution tonic|hyper ADDRESS";
    let server = args.next().ok_or(usage)?;
    let address: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!("{server} serving on {address}");
    match server.as_str() {
        "tonic" => {
            tonic::transport::Server::builder()
                .add_service(InstitutionServer::new(Acknowledges))
                // Nagle's algorithm off, as on the hyper side and in the hub's servers.
                .serve_with_incoming(bcss_gateway::server::accepted(listener))
                .await?;
        }
        "hyper" => loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(
                        TokioIo::new(stream),
                        hyper::service::service_fn(acknowledge),
                    )
                    .await;
                if let Err(error) = served {
                    eprintln!("connection ended: {error}");
                }
            });
        },
        _ => return Err(usage.into()),
    }
    Ok(())
}

/// An empty gRPC message, then the trailers.
type Acknowledgement = StreamBody<
    futures_util::stream::Iter<std::array::IntoIter<Result<Frame<Bytes>, Infallible>, 2>>,
>;

/// Reads the call's body to its end, then answers one empty gRPC message and `grpc-status: 0`.
async fn acknowledge(
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Acknowledgement>, hyper::Error> {
    request.into_body().collect().await?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    // An empty message: not compressed, length 0.
    let frames = [
        Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    Ok(hyper::Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .expect("a static header is valid"))
}

/// tonic's side: the same answer, through the generated service.
struct Acknowledges;

#[tonic::async_trait]
impl Institution for Acknowledges {
    async fn deliver(
        &self,
        _request: Request<DeliveryView>,
    ) -> Result<Response<DeliveryAck>, Status> {
        Ok(Response::new(DeliveryAck::default()))
    }

    type DeliverStreamStream = futures_util::stream::Empty<Result<DeliveryAck, Status>>;

    async fn deliver_stream(
        &self,
        _request: Request<Streaming<DeliveryView>>,
    ) -> Result<Response<Self::DeliverStreamStream>, Status> {
        Err(Status::unimplemented("Deliver only"))
    }

    async fn answer(
        &self,
        _request: Request<AnswerRequest>,
    ) -> Result<Response<AnswerReply>, Status> {
        Err(Status::unimplemented("Deliver only"))
    }
}
