//! The baseline of `bench/agent.sh`: a bare tonic server whose `thespian.Thespian` methods answer at once.
//! No health, reflection, metadata, tracing or logging; tokio's default runtime and tonic's default socket
//! options.
//!
//! `PORT=0 cargo run --release -p thespian-agent --example noop` prints `{"address":"127.0.0.1:PORT"}`
//! first, like the agent.

use thespian_agent::proto::Nothing;
use thespian_agent::proto::thespian_server::{Thespian, ThespianServer};
use tonic::{Request, Response, Status};

struct Noop;

#[tonic::async_trait]
impl Thespian for Noop {
    async fn a(&self, _: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        Ok(Response::new(Nothing {}))
    }
    async fn b(&self, _: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        Ok(Response::new(Nothing {}))
    }
    async fn c(&self, _: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        Ok(Response::new(Nothing {}))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("{{\"address\":\"{}\"}}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(ThespianServer::new(Noop))
        // TCP_NODELAY as `Server::serve(addr)` sets it by default (and as the agent does): with Nagle on,
        // small responses get batched, which saves CPU under load but is not how tonic runs out of the box.
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
