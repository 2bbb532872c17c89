//! A lean unary gRPC client for the Thespian methods over plaintext HTTP/2 (`http://`), written straight
//! on the `h2` crate. The agent's `CallService` calls use it, and so does `thespctl probe` for plaintext
//! endpoints: one implementation for both.
//!
//! Why not tonic's `Channel` and the generated client: a Thespian fleet, and a probe load run, are
//! CPU-bound on machines they share, and every microsecond the client spends is one the servers do not
//! get. Under a `Channel` each call crosses a buffer task and hyper's dispatcher (a task spawned per
//! request, a body pipe), and the generated client's codec allocates 8 KiB to encode and 8 KiB to decode
//! each empty message. Here a call is: clone the connection handle, queue the headers and the fixed 5-byte
//! body on a new stream (both leave in one write, with whatever else was queued in that pass), await the
//! reply. The result is tonic's own types — `Response<Nothing>` or `Status`, the status and metadata parsed
//! by `tonic::Status::from_header_map` as tonic's client does. The wire format follows gRPC's
//! PROTOCOL-HTTP2.md (requests, responses, trailers-only replies, the HTTP status mapping when
//! `grpc-status` is missing, exactly one message in a unary reply).
//!
//! - [`dial`] opens one connection; [`Client::unary`] makes one call on it.
//! - [`Endpoint`] is one address's connection as the agent uses it: dialled on first use, shared by every
//!   request, dialled again once it has died or received GOAWAY.
//! - [`never_sent`] tells a failure whose request provably never reached the server's application
//!   (nothing to connect to, a connection that could no longer take requests, REFUSED_STREAM, a stream
//!   above the last stream id of the server's GOAWAY), which gRPC's transparent-retry rule allows to send
//!   again. Everything else may have run and must not be sent again behind the caller's back.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Response, Status};

use crate::config::GrpcMethod;
use crate::proto::Nothing;

/// A handle onto one HTTP/2 connection, whose protocol work runs in a task spawned on the runtime that
/// dialled it. Cheap to clone (once per request).
#[derive(Clone, Debug)]
pub struct Connection {
    send: SendRequest<Bytes>,
    /// Set when the connection cannot take new requests any more: its task ended, or opening a stream
    /// failed (a GOAWAY was received, the connection broke).
    closed: Arc<AtomicBool>,
}

impl Connection {
    /// Whether the connection is known to take no new requests (an [`Endpoint`] then dials a new one).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Why dialling failed. The `std::io::Error` at the root tells refused from timed out.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("the address {uri} has no host")]
    NoHost { uri: http::Uri },
    #[error("tcp connect error")]
    Tcp(#[source] std::io::Error),
    #[error("the HTTP/2 handshake failed")]
    Handshake(#[source] h2::Error),
}

/// Opens a TCP connection (TCP_NODELAY: small requests must not wait for Nagle; the connection's own
/// writes are batched by [`Coalesce`](crate::coalesce::Coalesce)) and performs the HTTP/2 handshake,
/// within `timeout` when one is given (without, the caller bounds the whole call). The connection's task
/// is spawned on the current runtime.
pub async fn dial(uri: &http::Uri, timeout: Option<Duration>) -> Result<Connection, DialError> {
    dial_with(uri, timeout, Batching::Coalesce).await
}

/// How a connection's writes are batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// Hold a busy connection's writes for one scheduler pass ([`Coalesce`](crate::coalesce::Coalesce)):
    /// right for the agent, whose requests are started by many independent tasks.
    Coalesce,
    /// Write as soon as the connection task runs: right for a caller that already starts its requests in
    /// batches on one thread (`thespctl probe`'s engine), where holding only delays them (measured with
    /// `bench/probe.sh`: about 1 µs more client CPU per request and a lower rate).
    Immediate,
}

/// [`dial`] with a choice of [`Batching`].
pub async fn dial_with(
    uri: &http::Uri,
    timeout: Option<Duration>,
    batching: Batching,
) -> Result<Connection, DialError> {
    let host = uri.host().ok_or_else(|| DialError::NoHost { uri: uri.clone() })?;
    // `[::1]` in a URI is `::1` to the resolver.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(DialError::Tcp)?;
        tcp.set_nodelay(true).map_err(DialError::Tcp)?;
        let (send, connection) = h2::client::Builder::new()
            // Replies are tiny; a larger window only matters to peers behind slow links.
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 22)
            .handshake::<_, Bytes>(match batching {
                Batching::Coalesce => crate::coalesce::Coalesce::new(tcp),
                Batching::Immediate => crate::coalesce::Coalesce::with_window(tcp, Duration::ZERO),
            })
            .await
            .map_err(DialError::Handshake)?;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        tokio::spawn(async move {
            // Ends when every handle is dropped, or with the connection's error, which the requests on it
            // report themselves.
            let _ = connection.await;
            flag.store(true, Ordering::Relaxed);
        });
        Ok(Connection { send, closed })
    };
    match timeout {
        None => connect.await,
        Some(limit) => match tokio::time::timeout(limit, connect).await {
            Ok(result) => result,
            Err(_) => Err(DialError::Tcp(std::io::Error::from(std::io::ErrorKind::TimedOut))),
        },
    }
}

/// The source of every status for a request that never reached the server's application (see
/// [`never_sent`]).
#[derive(Debug, thiserror::Error)]
pub enum NotSent {
    /// No connection could be made.
    #[error("cannot connect to {uri}")]
    Dial {
        uri: http::Uri,
        #[source]
        source: Arc<DialError>,
    },
    /// The connection could not open a new stream: it received GOAWAY, or it broke.
    #[error("the connection cannot take new requests")]
    Closed(#[source] h2::Error),
    /// The server reset the stream with REFUSED_STREAM, or its GOAWAY named a last stream id below this
    /// stream's: HTTP/2 guarantees it was not processed.
    #[error("the server did not process the request")]
    Unprocessed(#[source] h2::Error),
}

impl NotSent {
    /// An `UNAVAILABLE` status carrying this as its source; the message holds the whole chain of causes.
    pub fn into_status(self) -> Status {
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(&self);
        while let Some(e) = cause {
            message.push_str(": ");
            message.push_str(&e.to_string());
            cause = e.source();
        }
        let mut status = Status::unavailable(message);
        status.set_source(Arc::new(self));
        status
    }
}

/// True when `status` proves its request never reached the server's application, so sending it again
/// (elsewhere, or on a new connection) cannot run it twice: gRPC's transparent-retry rule.
pub fn never_sent(status: &Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<NotSent>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The status of a failed stream, as tonic maps HTTP/2 errors (RST_STREAM reasons per the gRPC spec) —
/// except that a stream the server provably never processed is marked as never sent. In `h2` a stream
/// fails with the remote GOAWAY's error only when its id is above the GOAWAY's last stream id (streams
/// at or below it run to completion, or fail with the connection's I/O error).
fn stream_error(err: h2::Error) -> Status {
    if err.reason() == Some(h2::Reason::REFUSED_STREAM) || (err.is_go_away() && err.is_remote()) {
        return NotSent::Unprocessed(err).into_status();
    }
    Status::from_error(Box::new(err))
}

/// The Thespian methods' paths (`proto/thespian.proto`).
fn path(method: GrpcMethod) -> PathAndQuery {
    PathAndQuery::from_static(match method {
        GrpcMethod::A => "/thespian.Thespian/A",
        GrpcMethod::B => "/thespian.Thespian/B",
        GrpcMethod::C => "/thespian.Thespian/C",
    })
}

const FRAME_HEADER: usize = 5;
/// The request body: one uncompressed gRPC message frame holding the empty `Nothing`.
static EMPTY_MESSAGE: [u8; FRAME_HEADER] = [0; FRAME_HEADER];

/// The three method URIs of one origin (`http://host:port`), built once.
#[derive(Debug)]
struct Uris([http::Uri; 3]);

impl Uris {
    fn new(origin: &http::Uri) -> Result<Uris, http::Error> {
        let uri = |m: GrpcMethod| -> Result<http::Uri, http::Error> {
            let mut parts = origin.clone().into_parts();
            parts.path_and_query = Some(path(m));
            Ok(http::Uri::from_parts(parts)?)
        };
        Ok(Uris([
            uri(GrpcMethod::A)?,
            uri(GrpcMethod::B)?,
            uri(GrpcMethod::C)?,
        ]))
    }
}

/// A client on one connection: a [`Connection`] plus the method URIs. Cheap to clone (once per request).
#[derive(Clone, Debug)]
pub struct Client {
    conn: Connection,
    uris: Arc<Uris>,
}

impl Client {
    /// A client calling `origin` (`http://host:port`; any path is replaced by the method's).
    pub fn new(conn: Connection, origin: &http::Uri) -> Result<Self, http::Error> {
        Ok(Client {
            conn,
            uris: Arc::new(Uris::new(origin)?),
        })
    }

    /// One unary call of `method` carrying `metadata` (`grpc-timeout` included, if any: see
    /// [`grpc_timeout`]; the caller enforces its own deadline). Waits while the server's stream limit is
    /// reached. Every header and trailer of the reply becomes the result's metadata, errors included.
    pub async fn unary(self, method: GrpcMethod, metadata: MetadataMap) -> Result<Response<Nothing>, Status> {
        let Client { conn, uris } = self;
        let Connection { mut send, closed } = conn;
        // Until a stream is open nothing was sent: any failure here is the connection's.
        let connection_failed = |err: h2::Error| {
            closed.store(true, Ordering::Relaxed);
            NotSent::Closed(err).into_status()
        };
        poll_fn(|cx| send.poll_ready(cx))
            .await
            .map_err(connection_failed)?;
        let mut headers = metadata.into_headers();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uris.0[method as usize].clone();
        *request.headers_mut() = headers;
        let (response, mut stream) = send.send_request(request, false).map_err(connection_failed)?;
        stream
            .send_data(Bytes::from_static(&EMPTY_MESSAGE), true)
            .map_err(stream_error)?;

        let (head, mut body) = response.await.map_err(stream_error)?.into_parts();
        let mut headers = head.headers;
        // A trailers-only reply (an error, usually) has its status in the headers.
        if let Some(status) = Status::from_header_map(&headers) {
            return finish(status, headers);
        }
        if head.status != http::StatusCode::OK {
            let status = Status::new(
                code_of_http(head.status),
                format!(
                    "grpc-status header missing, mapped from HTTP status code {}",
                    head.status.as_u16()
                ),
            );
            return finish(status, headers);
        }
        let mut frames = Frames::default();
        while let Some(chunk) = poll_fn(|cx| body.poll_data(cx)).await {
            let chunk = chunk.map_err(stream_error)?;
            // The data is consumed right here: hand the window back at once.
            let _ = body.flow_control().release_capacity(chunk.len());
            frames.feed(&chunk);
        }
        let trailers = poll_fn(|cx| body.poll_trailers(cx)).await.map_err(stream_error)?;
        // The common case, `grpc-status: 0` with the one message, needs no `Status` (whose parsing copies
        // the trailers into its own metadata, which `finish` would replace anyway).
        let ok = trailers
            .as_ref()
            .and_then(|t| t.get(GRPC_STATUS))
            .is_some_and(|v| v.as_bytes() == b"0");
        if let Some(trailers) = &trailers {
            for (name, value) in trailers {
                headers.append(name.clone(), value.clone());
            }
        }
        if ok && frames.messages == 1 && !frames.partial() {
            return Ok(Response::from_parts(
                MetadataMap::from_headers(headers),
                Nothing {},
                tonic::Extensions::new(),
            ));
        }
        let Some(status) = trailers.as_ref().and_then(Status::from_header_map) else {
            let status = Status::unknown(
                "protocol error: missing grpc-status trailer, stream was terminated without a final status",
            );
            return finish(status, headers);
        };
        if status.code() == Code::Ok && frames.messages != 1 {
            let status = Status::internal(format!(
                "a unary reply must hold exactly one complete message, this one held {}{}",
                frames.messages,
                if frames.partial() {
                    " and a partial one"
                } else {
                    ""
                }
            ));
            return finish(status, headers);
        }
        finish(status, headers)
    }
}

/// Counts gRPC message frames (a 5-byte header: compression flag and big-endian length, then the message)
/// across data chunks without copying them. A reply to a unary call must hold exactly one.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; FRAME_HEADER],
    header_len: usize,
    body_left: usize,
    messages: usize,
}

impl Frames {
    fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.body_left > 0 {
                let take = self.body_left.min(chunk.len());
                self.body_left -= take;
                chunk = &chunk[take..];
                if self.body_left == 0 {
                    self.messages += 1;
                }
                continue;
            }
            let take = (FRAME_HEADER - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&chunk[..take]);
            self.header_len += take;
            chunk = &chunk[take..];
            if self.header_len == FRAME_HEADER {
                let [_, a, b, c, d] = self.header;
                self.body_left = u32::from_be_bytes([a, b, c, d]) as usize;
                self.header_len = 0;
                if self.body_left == 0 {
                    self.messages += 1;
                }
            }
        }
    }

    fn partial(&self) -> bool {
        self.header_len > 0 || self.body_left > 0
    }
}

/// The call's result, with every header and trailer of the reply as its metadata (where a Thespian's
/// `x-thespian-service` and `x-thespian-instance` are found, errors included).
fn finish(status: Status, headers: http::HeaderMap) -> Result<Response<Nothing>, Status> {
    let metadata = MetadataMap::from_headers(headers);
    if status.code() == Code::Ok {
        Ok(Response::from_parts(
            metadata,
            Nothing {},
            tonic::Extensions::new(),
        ))
    } else {
        let mut status = status;
        *status.metadata_mut() = metadata;
        Err(status)
    }
}

/// gRPC's mapping of HTTP statuses for replies without `grpc-status` (`doc/http-grpc-status-mapping.md`).
fn code_of_http(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The trailer holding a reply's status code.
const GRPC_STATUS: &str = "grpc-status";

/// The `grpc-timeout` metadata key.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

thread_local! {
    /// The last `grpc-timeout` value built on this thread: consecutive requests almost always carry the
    /// same whole number of milliseconds, so the value is built once and shared.
    static LAST_TIMEOUT: std::cell::RefCell<Option<(u64, AsciiMetadataValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// The `grpc-timeout` value for `remaining`, in whole milliseconds rounded down (so the server's deadline
/// is never later than the caller's). Whole milliseconds repeat from request to request, so HPACK sends
/// the header as a one-byte index instead of a new literal each time (less work on both sides); below one
/// millisecond, microseconds.
pub fn grpc_timeout(remaining: Duration) -> AsciiMetadataValue {
    // The format allows 8 digits.
    let ms = u64::try_from(remaining.as_millis())
        .unwrap_or(u64::MAX)
        .min(99_999_999);
    if ms == 0 {
        let us = remaining.as_micros().max(1);
        return AsciiMetadataValue::try_from(format!("{us}u"))
            .unwrap_or_else(|_| AsciiMetadataValue::from_static("1u"));
    }
    LAST_TIMEOUT.with_borrow_mut(|last| {
        if let Some((cached, value)) = last.as_ref()
            && *cached == ms
        {
            return value.clone();
        }
        let value = AsciiMetadataValue::try_from(format!("{ms}m"))
            .unwrap_or_else(|_| AsciiMetadataValue::from_static("1m"));
        *last = Some((ms, value.clone()));
        value
    })
}

/// One address's connection as a long-lived caller uses it: dialled on first use (not before: a config
/// may name peers that start later), shared by every request, and dialled again on the next request once
/// it has died or received GOAWAY (a restarted peer, a proxy recycling connections).
#[derive(Debug)]
pub struct Endpoint {
    origin: http::Uri,
    uris: Arc<Uris>,
    connect_timeout: Option<Duration>,
    current: RwLock<Option<Connection>>,
    /// One dial at a time; it holds the number of dials that failed, so requests that waited on a dial
    /// that failed share its error instead of dialling again one after the other.
    dialing: tokio::sync::Mutex<Option<Arc<DialError>>>,
    failed_dials: AtomicU64,
}

impl Endpoint {
    /// An endpoint for `origin` (`http://host:port`); nothing is dialled yet. `connect_timeout` bounds a
    /// dial on its own (`None`: only the caller's timeout for the whole call does).
    pub fn new(origin: http::Uri, connect_timeout: Option<Duration>) -> Result<Endpoint, http::Error> {
        Ok(Endpoint {
            uris: Arc::new(Uris::new(&origin)?),
            origin,
            connect_timeout,
            current: RwLock::new(None),
            dialing: tokio::sync::Mutex::new(None),
            failed_dials: AtomicU64::new(0),
        })
    }

    pub fn origin(&self) -> &http::Uri {
        &self.origin
    }

    fn live(&self) -> Option<Client> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some(conn) if !conn.is_closed() => Some(Client {
                conn: conn.clone(),
                uris: self.uris.clone(),
            }),
            _ => None,
        }
    }

    /// A client on the endpoint's connection, dialling it first if there is none or it has closed. A
    /// failed dial is an `UNAVAILABLE` status for which [`never_sent`] holds.
    pub async fn client(&self) -> Result<Client, Status> {
        if let Some(client) = self.live() {
            return Ok(client);
        }
        let failures_before = self.failed_dials.load(Ordering::Acquire);
        let mut last_failure = self.dialing.lock().await;
        // Someone else may have dialled (or failed to) while this request waited.
        if let Some(client) = self.live() {
            return Ok(client);
        }
        if self.failed_dials.load(Ordering::Acquire) != failures_before
            && let Some(err) = &*last_failure
        {
            return Err(self.dial_failed(err.clone()));
        }
        match dial(&self.origin, self.connect_timeout).await {
            Ok(conn) => {
                *last_failure = None;
                let client = Client {
                    conn: conn.clone(),
                    uris: self.uris.clone(),
                };
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(conn);
                Ok(client)
            }
            Err(err) => {
                let err = Arc::new(err);
                *last_failure = Some(err.clone());
                self.failed_dials.fetch_add(1, Ordering::Release);
                Err(self.dial_failed(err))
            }
        }
    }

    fn dial_failed(&self, source: Arc<DialError>) -> Status {
        NotSent::Dial {
            uri: self.origin.clone(),
            source,
        }
        .into_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a scripted HTTP/2 server answers to the one request it accepts.
    enum Reply {
        /// 200, the given data chunks, then trailers with `grpc-status`.
        Normal {
            chunks: Vec<&'static [u8]>,
            status: Option<&'static str>,
        },
        /// Everything in the headers, no body (how servers usually send errors).
        TrailersOnly {
            status: &'static str,
            message: &'static str,
        },
        /// An HTTP status without any gRPC status.
        Http(u16),
        /// RST_STREAM with this reason instead of a reply.
        Reset(h2::Reason),
    }

    /// The request as the server saw it.
    #[derive(Debug)]
    struct Seen {
        method: http::Method,
        path: String,
        headers: http::HeaderMap,
        body: Vec<u8>,
    }

    /// A real HTTP/2 server (the `h2` crate) on 127.0.0.1 that answers one request with `reply`.
    async fn server(reply: Reply) -> (http::Uri, tokio::task::JoinHandle<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            let (request, mut respond) = conn.accept().await.unwrap().unwrap();
            // Keep driving the connection (writing the reply) until the client closes it.
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let (head, mut recv) = request.into_parts();
            let mut body = Vec::new();
            while let Some(chunk) = recv.data().await {
                body.extend_from_slice(&chunk.unwrap());
            }
            let response = |status: u16| http::Response::builder().status(status).body(()).unwrap();
            match reply {
                Reply::Normal { chunks, status } => {
                    let mut r = response(200);
                    r.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    r.headers_mut()
                        .insert("x-thespian-instance", "host:42".parse().unwrap());
                    let mut send = respond.send_response(r, false).unwrap();
                    for chunk in chunks {
                        send.send_data(Bytes::from_static(chunk), false).unwrap();
                    }
                    let mut trailers = http::HeaderMap::new();
                    if let Some(status) = status {
                        trailers.insert("grpc-status", status.parse().unwrap());
                        send.send_trailers(trailers).unwrap();
                    } else {
                        send.send_data(Bytes::new(), true).unwrap();
                    }
                }
                Reply::TrailersOnly { status, message } => {
                    let mut r = response(200);
                    r.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    r.headers_mut().insert("grpc-status", status.parse().unwrap());
                    r.headers_mut().insert("grpc-message", message.parse().unwrap());
                    r.headers_mut()
                        .insert("x-thespian-instance", "host:42".parse().unwrap());
                    respond.send_response(r, true).unwrap();
                }
                Reply::Http(code) => {
                    respond.send_response(response(code), true).unwrap();
                }
                Reply::Reset(reason) => respond.send_reset(reason),
            }
            Seen {
                method: head.method,
                path: head.uri.path().to_string(),
                headers: head.headers,
                body,
            }
        });
        (uri, task)
    }

    async fn call(reply: Reply, method: GrpcMethod) -> (Result<Response<Nothing>, Status>, Seen) {
        let (uri, server) = server(reply).await;
        let conn = dial(&uri, Some(Duration::from_secs(2))).await.unwrap();
        let client = Client::new(conn, &uri).unwrap();
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let result = client.unary(method, metadata).await;
        (result, server.await.unwrap())
    }

    fn instance(metadata: &MetadataMap) -> Option<&str> {
        metadata.get("x-thespian-instance").and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn a_request_is_a_grpc_post_with_one_empty_message() {
        let reply = Reply::Normal {
            chunks: vec![&[0, 0, 0, 0, 0]],
            status: Some("0"),
        };
        let (result, seen) = call(reply, GrpcMethod::B).await;
        let response = result.unwrap();
        assert_eq!(instance(response.metadata()), Some("host:42"));
        assert_eq!(seen.method, http::Method::POST);
        assert_eq!(seen.path, "/thespian.Thespian/B");
        assert_eq!(seen.headers["content-type"], "application/grpc");
        assert_eq!(seen.headers["te"], "trailers");
        assert_eq!(
            seen.headers["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(seen.body, vec![0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn a_message_split_across_data_frames_is_one_message() {
        let reply = Reply::Normal {
            chunks: vec![&[0, 0, 0], &[0, 2, 8], &[1]],
            status: Some("0"),
        };
        assert!(call(reply, GrpcMethod::A).await.0.is_ok());
    }

    #[tokio::test]
    async fn a_trailers_only_error_keeps_its_code_message_and_instance() {
        let reply = Reply::TrailersOnly {
            status: "13",
            message: "%60s%60 failed (failure_chance 0.3)",
        };
        let status = call(reply, GrpcMethod::A).await.0.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "`s` failed (failure_chance 0.3)");
        assert_eq!(instance(status.metadata()), Some("host:42"));
        assert!(!never_sent(&status), "an answer is not a failure to send");
    }

    #[tokio::test]
    async fn an_error_in_the_trailers_keeps_the_instance_from_the_headers() {
        let reply = Reply::Normal {
            chunks: vec![],
            status: Some("14"),
        };
        let status = call(reply, GrpcMethod::A).await.0.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(instance(status.metadata()), Some("host:42"));
        assert!(!never_sent(&status), "an UNAVAILABLE answer may have run");
    }

    #[tokio::test]
    async fn http_statuses_without_grpc_status_map_as_the_spec_says() {
        for (http, code) in [
            (503, Code::Unavailable),
            (404, Code::Unimplemented),
            (500, Code::Unknown),
        ] {
            let status = call(Reply::Http(http), GrpcMethod::A).await.0.unwrap_err();
            assert_eq!(status.code(), code, "HTTP {http}");
            assert!(status.message().contains(&http.to_string()), "{status:?}");
        }
    }

    #[tokio::test]
    async fn a_reply_without_grpc_status_is_unknown() {
        let reply = Reply::Normal {
            chunks: vec![&[0, 0, 0, 0, 0]],
            status: None,
        };
        let status = call(reply, GrpcMethod::A).await.0.unwrap_err();
        assert_eq!(status.code(), Code::Unknown);
        assert!(status.message().contains("missing grpc-status"), "{status:?}");
    }

    #[tokio::test]
    async fn an_ok_reply_must_hold_exactly_one_message() {
        for chunks in [
            vec![],
            vec![&[0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]],
            vec![&[0u8, 0, 0, 0, 3, 1][..]],
        ] {
            let reply = Reply::Normal {
                chunks,
                status: Some("0"),
            };
            let status = call(reply, GrpcMethod::A).await.0.unwrap_err();
            assert_eq!(status.code(), Code::Internal, "{status:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_stream_was_never_processed() {
        let status = call(Reply::Reset(h2::Reason::REFUSED_STREAM), GrpcMethod::A)
            .await
            .0
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(never_sent(&status), "{status:?}");
        let status = call(Reply::Reset(h2::Reason::INTERNAL_ERROR), GrpcMethod::A)
            .await
            .0
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(
            !never_sent(&status),
            "a stream the server worked on is not re-sent"
        );
    }

    #[test]
    fn frames_are_counted_across_chunks() {
        let mut f = Frames::default();
        f.feed(&[0, 0, 0]);
        f.feed(&[0, 0]);
        assert_eq!((f.messages, f.partial()), (1, false));
        f.feed(&[0, 0, 0, 0, 3, 7]);
        assert_eq!((f.messages, f.partial()), (1, true));
        f.feed(&[8, 9, 0, 0, 0, 0, 0]);
        assert_eq!((f.messages, f.partial()), (3, false));
    }

    /// A hand-written HTTP/2 server, for what the `h2` crate's server cannot be made to do on cue: a
    /// GOAWAY whose last stream id is below a stream the client has already sent.
    mod raw {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;

        const DATA: u8 = 0x0;
        const HEADERS: u8 = 0x1;
        const SETTINGS: u8 = 0x4;
        const GOAWAY: u8 = 0x7;
        const END_STREAM: u8 = 0x1;
        const END_HEADERS: u8 = 0x4;
        const ACK: u8 = 0x1;

        fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
            let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
            let mut out = vec![len[1], len[2], len[3], kind, flags];
            out.extend_from_slice(&stream.to_be_bytes());
            out.extend_from_slice(payload);
            out
        }

        /// An HPACK "literal header field without indexing, new name" (no Huffman coding).
        fn literal(name: &str, value: &str) -> Vec<u8> {
            let mut out = vec![0x00, u8::try_from(name.len()).unwrap()];
            out.extend_from_slice(name.as_bytes());
            out.push(u8::try_from(value.len()).unwrap());
            out.extend_from_slice(value.as_bytes());
            out
        }

        /// The next frame's type, flags and stream id (its payload is skipped).
        async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, u8, u32)> {
            let mut head = [0u8; 9];
            tcp.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await.ok()?;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            Some((head[3], head[4], stream))
        }

        /// Waits for the client's streams 1 and 3, then sends GOAWAY with `last_stream_id`. If that is 1,
        /// answers stream 1 with OK and keeps the connection until the client goes; otherwise closes the
        /// connection at once, answering nothing.
        pub async fn goaway_server(listener: tokio::net::TcpListener, last_stream_id: u32) {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 24];
            tcp.read_exact(&mut preface).await.unwrap();
            tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
            let mut streams = Vec::new();
            while streams.len() < 2 {
                let (kind, flags, stream) = read_frame(&mut tcp).await.unwrap();
                if kind == SETTINGS && flags & ACK == 0 {
                    tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
                }
                if kind == HEADERS {
                    streams.push(stream);
                }
            }
            assert_eq!(streams, [1, 3], "the client opened streams 1 and 3");
            let mut goaway = last_stream_id.to_be_bytes().to_vec();
            goaway.extend_from_slice(&[0, 0, 0, 0]); // NO_ERROR
            let mut out = frame(GOAWAY, 0, 0, &goaway);
            if last_stream_id != 1 {
                tcp.write_all(&out).await.unwrap();
                return; // dropping the socket closes the connection
            }
            let mut head = vec![0x88]; // `:status: 200`, static table index 8
            head.extend(literal("content-type", "application/grpc"));
            out.extend(frame(HEADERS, END_HEADERS, 1, &head));
            out.extend(frame(DATA, 0, 1, &[0, 0, 0, 0, 0]));
            out.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &literal("grpc-status", "0"),
            ));
            tcp.write_all(&out).await.unwrap();
            while read_frame(&mut tcp).await.is_some() {}
        }
    }

    /// Two requests on one connection to [`raw::goaway_server`]: stream 1 and stream 3, in that order
    /// (both are opened in their first poll).
    async fn two_streams_then_goaway(
        last_stream_id: u32,
    ) -> (Client, Vec<Result<Response<Nothing>, Status>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let server = tokio::spawn(raw::goaway_server(listener, last_stream_id));
        let client = Client::new(dial(&uri, None).await.unwrap(), &uri).unwrap();
        let (first, second) = tokio::join!(
            client.clone().unary(GrpcMethod::A, MetadataMap::new()),
            client.clone().unary(GrpcMethod::A, MetadataMap::new()),
        );
        if last_stream_id != 1 {
            server.await.unwrap();
        } else {
            server.abort();
        }
        (client, vec![first, second])
    }

    #[tokio::test]
    async fn a_stream_above_the_goaways_last_stream_id_was_never_processed() {
        let (client, results) = two_streams_then_goaway(1).await;
        assert!(
            results[0].is_ok(),
            "stream 1, the last stream id, is answered: {:?}",
            results[0]
        );
        let status = results[1].as_ref().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            never_sent(status),
            "stream 3 is above the last stream id: {status:?}"
        );
        let status = client
            .clone()
            .unary(GrpcMethod::A, MetadataMap::new())
            .await
            .unwrap_err();
        assert!(
            never_sent(&status),
            "a request after the GOAWAY is not sent: {status:?}"
        );
        assert!(
            client.conn.is_closed(),
            "and the connection is marked for an Endpoint to replace"
        );
    }

    #[tokio::test]
    async fn streams_at_or_below_the_last_stream_id_may_have_run() {
        // GOAWAY(last stream id 3), then the connection closes with both streams unanswered: the server
        // may have run them, so neither may be sent again.
        let (_, results) = two_streams_then_goaway(3).await;
        for result in results {
            let status = result.unwrap_err();
            assert!(!never_sent(&status), "{status:?}");
        }
    }

    /// A real tonic server on 127.0.0.1 that answers A, B and C with OK and counts the connections it
    /// accepted. With `goaway_after_one`, each connection is shut down gracefully (GOAWAY) after its first
    /// request: a peer that recycles connections.
    struct Counted {
        uri: http::Uri,
        connections: Arc<AtomicU64>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn counted_server(goaway_after_one: bool) -> Counted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let mut recv = request.into_body();
                        tokio::spawn(async move {
                            while recv.data().await.is_some() {}
                            let head = http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(())
                                .unwrap();
                            let mut send = respond.send_response(head, false).unwrap();
                            send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false)
                                .unwrap();
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            send.send_trailers(trailers).unwrap();
                        });
                        if goaway_after_one {
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
        Counted {
            uri,
            connections,
            task,
        }
    }

    async fn call_endpoint(endpoint: &Endpoint) -> Result<Response<Nothing>, Status> {
        endpoint
            .client()
            .await?
            .unary(GrpcMethod::A, MetadataMap::new())
            .await
    }

    #[tokio::test]
    async fn an_endpoint_dials_on_first_use_and_shares_one_connection() {
        let server = counted_server(false).await;
        let endpoint = Endpoint::new(server.uri.clone(), Some(Duration::from_secs(2))).unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            server.connections.load(Ordering::SeqCst),
            0,
            "nothing is dialled up front"
        );
        let calls = (0..50).map(|_| call_endpoint(&endpoint));
        for result in futures_util::future::join_all(calls).await {
            result.unwrap();
        }
        for _ in 0..5 {
            call_endpoint(&endpoint).await.unwrap();
        }
        assert_eq!(
            server.connections.load(Ordering::SeqCst),
            1,
            "one connection for every request"
        );
    }

    #[tokio::test]
    async fn an_endpoint_dials_again_after_goaway() {
        let server = counted_server(true).await;
        let endpoint = Endpoint::new(server.uri.clone(), Some(Duration::from_secs(2))).unwrap();
        for round in 1..=3u64 {
            call_endpoint(&endpoint).await.unwrap();
            assert_eq!(server.connections.load(Ordering::SeqCst), round);
            // The connection closes once the GOAWAY has arrived and its stream is done; a request sent
            // before that would be refused by the server as above its last stream id (never sent), which
            // is what callers retry. Waiting here keeps the test about redialling.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while endpoint.live().is_some() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the GOAWAY never closed the connection"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_never_sent_and_waiters_share_one_failed_dial() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let uri: http::Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
        let endpoint = Endpoint::new(uri, None).unwrap();
        let calls = (0..10).map(|_| call_endpoint(&endpoint));
        for result in futures_util::future::join_all(calls).await {
            let status = result.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable);
            assert!(never_sent(&status), "{status:?}");
            assert!(
                status.message().contains(&format!("127.0.0.1:{port}")),
                "{status:?}"
            );
            assert!(status.message().contains("tcp connect error"), "{status:?}");
        }
        assert_eq!(
            endpoint.failed_dials.load(Ordering::SeqCst),
            1,
            "one dial for ten waiters"
        );
        // A later request dials again (the peer may have come up).
        let _ = call_endpoint(&endpoint).await;
        assert_eq!(endpoint.failed_dials.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn grpc_timeouts_are_whole_milliseconds_rounded_down() {
        assert_eq!(grpc_timeout(Duration::from_micros(29_999_999)), "29999m");
        assert_eq!(grpc_timeout(Duration::from_millis(250)), "250m");
        assert_eq!(grpc_timeout(Duration::from_millis(250)), "250m", "cached");
        assert_eq!(grpc_timeout(Duration::from_micros(999)), "999u");
        assert_eq!(grpc_timeout(Duration::ZERO), "1u");
        assert_eq!(grpc_timeout(Duration::from_secs(10 * 86_400)), "99999999m");
    }
}
