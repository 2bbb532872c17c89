//! A small in-process Thespian server for the engine's unit tests: real tonic over real HTTP/2 on
//! 127.0.0.1, with behaviour the tests control exactly (fixed delay, every k-th request failing, a stall
//! switch). The black-box tests in `tests/probe.rs` run against real agents.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thespian_agent::proto::Nothing;
use thespian_agent::proto::thespian_server::{Thespian, ThespianServer};
use tokio::sync::{oneshot, watch};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct Behaviour {
    pub instance: String,
    pub delay: Duration,
    /// Every `k`-th request (1-based) fails with INTERNAL.
    pub fail_every: Option<u64>,
}

impl Behaviour {
    pub fn ok(instance: &str, delay_ms: u64) -> Self {
        Behaviour {
            instance: instance.to_string(),
            delay: Duration::from_millis(delay_ms),
            fail_every: None,
        }
    }
}

/// What the server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: &'static str,
    pub traceparent: Option<String>,
    pub grpc_timeout: Option<String>,
}

struct Svc {
    behaviour: Behaviour,
    count: AtomicU64,
    stalled: watch::Receiver<bool>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Svc {
    async fn act(
        &self,
        method: &'static str,
        request: Request<Nothing>,
    ) -> Result<Response<Nothing>, Status> {
        let header = |k: &str| {
            request
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        self.seen.lock().unwrap().push(Seen {
            method,
            traceparent: header("traceparent"),
            grpc_timeout: header("grpc-timeout"),
        });
        let mut stalled = self.stalled.clone();
        let _ = stalled.wait_for(|s| !*s).await;
        tokio::time::sleep(self.behaviour.delay).await;
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let instance: MetadataValue<_> = self.behaviour.instance.parse().unwrap();
        if self.behaviour.fail_every.is_some_and(|k| n.is_multiple_of(k)) {
            let mut status = Status::internal("action failed");
            status.metadata_mut().insert("x-thespian-instance", instance);
            return Err(status);
        }
        let mut reply = Response::new(Nothing {});
        reply.metadata_mut().insert("x-thespian-instance", instance);
        Ok(reply)
    }
}

#[tonic::async_trait]
impl Thespian for Svc {
    async fn a(&self, request: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.act("A", request).await
    }
    async fn b(&self, request: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.act("B", request).await
    }
    async fn c(&self, request: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.act("C", request).await
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stall: watch::Sender<bool>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(behaviour: Behaviour) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stall, stalled) = watch::channel(false);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = Svc {
            behaviour,
            count: AtomicU64::new(0),
            stalled,
            seen: seen.clone(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(ThespianServer::new(svc))
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
                    let _ = rx.await;
                })
                .await;
        });
        TestServer {
            addr,
            seen,
            stall,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Requests wait (without being answered) while stalled.
    pub fn set_stalled(&self, stalled: bool) {
        let _ = self.stall.send(stalled);
    }

    /// Graceful shutdown: stops accepting, finishes what is in flight, closes the listener.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
