//! The gRPC server: `thespian.Thespian`, health, reflection, response metadata and the drain on SIGTERM.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::behavior::{Behavior, BuildError, HOPS_HEADER, Incoming, MAX_HOPS, SERVICE_HEADER, keys};
use crate::coalesce::Coalesce;
use crate::config::GrpcMethod;
use crate::env::Settings;
use crate::proto::thespian_server::{Thespian, ThespianServer};
use crate::proto::{self, Nothing};
use crate::telemetry::{SpanCx, TelemetryError, Tracer};

/// Response metadata: which process answered (ECS task id, else `hostname:pid`).
pub const INSTANCE_HEADER: &str = "x-thespian-instance";
/// The service names health answers for (besides the server as a whole, `""`).
pub const THESPIAN_SERVICE: &str = "thespian.Thespian";

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Binding failed: the port is taken, or the address is not this machine's.
    #[error("PORT/BIND_ADDR: cannot listen on {addr}: {source}{}", bind_hint(.source))]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error("the reflection service could not load the descriptors: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("could not start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process holds that port: choose another PORT, or PORT=0 for a free one)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (BIND_ADDR is not an address of this machine)",
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges: choose a higher PORT)",
        _ => "",
    }
}

impl RunError {
    /// Exit code: 2 for bad input (an address or endpoint that cannot work), 1 for failures at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Telemetry(_) | RunError::Build(_) | RunError::Bind { .. } => 2,
            RunError::Serve(_) | RunError::Reflection(_) | RunError::Runtime(_) => 1,
        }
    }
}

/// The `thespian.Thespian` service.
struct Agent {
    behavior: Behavior,
}

impl Agent {
    async fn handle(
        &self,
        method: GrpcMethod,
        request: Request<Nothing>,
    ) -> Result<Response<Nothing>, Status> {
        let md = request.metadata();
        let hops = match md.get(&*keys::HOPS) {
            None => 0,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| {
                    Status::invalid_argument(format!("{HOPS_HEADER}: expected a number of hops, got {v:?}"))
                })?,
        };
        if hops > MAX_HOPS {
            let message = format!(
                "refused: this request has travelled {hops} hops (the limit is {MAX_HOPS}); a call cycle is likely \
                 (a CallService chain that leads back to a Thespian it came from)"
            );
            match md
                .get(&*keys::TRACEPARENT)
                .and_then(|v| SpanCx::parse_traceparent(v.as_bytes()))
            {
                Some(cx) => {
                    tracing::warn!(trace_id = %cx.trace_id_hex(), method = method.as_str(), hops, "{message}")
                }
                None => tracing::warn!(method = method.as_str(), hops, "{message}"),
            }
            return Err(Status::failed_precondition(message));
        }
        // Fast path: a `null` method with nothing to export does no work at all.
        if self.behavior.is_null(method) && !self.behavior.tracer().is_exporting() {
            tracing::debug!(method = method.as_str(), "answered OK");
            return Ok(Response::new(Nothing {}));
        }
        let incoming = Incoming {
            parent: md
                .get(&*keys::TRACEPARENT)
                .and_then(|v| SpanCx::parse_traceparent(v.as_bytes())),
            tracestate: md.get(&*keys::TRACESTATE).cloned(),
            deadline: grpc_timeout(md).map(|d| Instant::now() + d),
            hops,
        };
        match self.behavior.act(method, &incoming).await {
            Ok(()) => Ok(Response::new(Nothing {})),
            Err(failure) => Err(Status::new(failure.code, failure.message)),
        }
    }
}

#[tonic::async_trait]
impl Thespian for Agent {
    async fn a(&self, request: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.handle(GrpcMethod::A, request).await
    }
    async fn b(&self, request: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.handle(GrpcMethod::B, request).await
    }
    async fn c(&self, request: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.handle(GrpcMethod::C, request).await
    }
}

/// The `grpc-timeout` header (`<up to 8 digits><H|M|S|m|u|n>`), the caller's deadline.
fn grpc_timeout(md: &MetadataMap) -> Option<Duration> {
    let value = md.get(&*keys::GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc.health.v1.Health`: SERVING while up, NOT_SERVING once draining. A `Watch` stream sends the
/// NOT_SERVING update and then ends, so watchers do not hold the drain open.
struct HealthService {
    serving: watch::Receiver<bool>,
}

fn health_status(known: bool, serving: bool) -> HealthCheckResponse {
    let status = match (known, serving) {
        (false, _) => ServingStatus::ServiceUnknown,
        (true, true) => ServingStatus::Serving,
        (true, false) => ServingStatus::NotServing,
    };
    HealthCheckResponse {
        status: status as i32,
    }
}

fn known_service(name: &str) -> bool {
    name.is_empty() || name == THESPIAN_SERVICE
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        if !known_service(service) {
            return Err(Status::not_found(format!(
                "unknown service \"{service}\"; ask for \"\" or \"{THESPIAN_SERVICE}\""
            )));
        }
        Ok(Response::new(health_status(true, *self.serving.borrow())))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        let known = known_service(&request.get_ref().service);
        let rx = self.serving.clone();
        // State: the receiver and whether the first (current) status was sent. Ends after NOT_SERVING.
        let stream = futures_util::stream::unfold(Some((rx, false)), move |state| async move {
            let (mut rx, sent_first) = state?;
            if sent_first && rx.changed().await.is_err() {
                return None;
            }
            let serving = *rx.borrow_and_update();
            let next = if serving { Some((rx, true)) } else { None };
            Some((Ok(health_status(known, serving)), next))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Runs the agent until SIGTERM/SIGINT, then drains. The first log line states the bound address.
pub async fn run(settings: Settings) -> Result<(), RunError> {
    let tracer = Tracer::new(&settings.export, &settings.service)?;
    let (instance, instance_warning) =
        crate::instance::instance_id(settings.ecs_metadata_uri.as_deref()).await;
    let behavior = Behavior::with_resolver(&settings.config, settings.resolve.clone(), tracer.clone())?;

    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .map_err(|source| RunError::Bind {
            addr: settings.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Bind {
        addr: settings.bind,
        source,
    })?;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(RunError::Reflection)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(RunError::Reflection)?;

    // Signal handlers go in before the readiness line, so a SIGTERM right after it always drains.
    let signals = Signals::new().map_err(RunError::Runtime)?;

    let (serving_tx, serving_rx) = watch::channel(true);
    let metadata = ResponseMetadata::new(&settings.service, &instance);
    let stop = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(tower::util::MapResponseLayer::new(move |res| metadata.apply(res)))
        .add_service(ThespianServer::new(Agent { behavior }))
        .add_service(HealthServer::new(HealthService { serving: serving_rx }))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            // Each connection's writes are batched (see `coalesce`).
            futures_util::StreamExt::map(TcpIncoming::from(listener).with_nodelay(Some(true)), |accepted| {
                accepted.map(Coalesce::new)
            }),
            stop.clone().cancelled_owned(),
        );

    // The readiness signal: the first stdout line, with the bound address as a top-level field.
    tracing::info!(address = %addr, instance = %instance, "listening on {addr}");
    if let Some(warning) = instance_warning {
        tracing::warn!("{warning}");
    }

    tokio::pin!(server);
    let signal = tokio::select! {
        result = &mut server => {
            // The server stopped without being asked to.
            tracer.shutdown(Duration::from_secs(1));
            return result.map_err(RunError::Serve);
        }
        signal = signals.recv() => signal,
    };

    let grace = settings.shutdown_grace;
    tracing::info!(
        signal,
        grace_ms = grace.as_millis() as u64,
        "draining: health is NOT_SERVING, new connections are refused"
    );
    let _ = serving_tx.send(false);
    stop.cancel();
    let result = match tokio::time::timeout(grace, &mut server).await {
        Ok(result) => {
            tracing::info!("drained: every in-flight request finished");
            result.map_err(RunError::Serve)
        }
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "SHUTDOWN_GRACE_MS ran out with connections still open; exiting without them"
            );
            Ok(())
        }
    };
    tracer.shutdown(Duration::from_secs(2));
    result
}

/// SIGTERM and SIGINT, registered up front.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Adds `x-thespian-service` and `x-thespian-instance` to every response (including errors, health and
/// reflection). The values are built once; each response clones two shared buffers.
#[derive(Clone)]
struct ResponseMetadata {
    service: Arc<http::HeaderValue>,
    instance: Arc<http::HeaderValue>,
}

impl ResponseMetadata {
    fn new(service: &str, instance: &str) -> ResponseMetadata {
        // gRPC metadata is printable ASCII: anything else is sent escaped (`gilb\u{eb}rt`).
        let value = |s: &str| {
            http::HeaderValue::from_str(&s.escape_default().to_string())
                .unwrap_or(http::HeaderValue::from_static("invalid"))
        };
        ResponseMetadata {
            service: Arc::new(value(service)),
            instance: Arc::new(value(instance)),
        }
    }

    fn apply<B>(&self, mut res: http::Response<B>) -> http::Response<B> {
        let headers = res.headers_mut();
        headers.insert(SERVICE_HEADER, (*self.service).clone());
        headers.insert(INSTANCE_HEADER, (*self.instance).clone());
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let md = |v: &'static str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", tonic::metadata::MetadataValue::from_static(v));
            m
        };
        assert_eq!(grpc_timeout(&md("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&md("3S")), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout(&md("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(
            grpc_timeout(&md("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "5x", "-5m"] {
            assert_eq!(grpc_timeout(&md(bad)), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }
}
