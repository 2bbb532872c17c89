//! The probe's lean gRPC client for plaintext (`http://`) endpoints: unary calls of the Thespian methods
//! straight over an `h2` connection.
//!
//! Why not tonic's `Channel` and the generated client (which TLS endpoints still use): a load run is
//! CPU-bound on the machine it shares with the agents, and every microsecond the client spends is one the
//! server does not get. Under a `Channel` each call crosses a buffer task and hyper's dispatcher (a task
//! spawned per request, a body pipe), and the generated client's codec allocates 8 KiB to encode and 8 KiB
//! to decode each empty message. Here a call is: clone the connection handle, queue the headers and the
//! fixed 5-byte body on a new stream (both leave in the same write as the other requests started in that
//! pass), await the reply. The result is tonic's own types — `Response<Nothing>` or `Status`, with the
//! status and metadata parsed by `tonic::Status::from_header_map`, as tonic's client does — so the engine
//! treats both clients alike. The wire format follows gRPC's PROTOCOL-HTTP2.md (requests, responses,
//! trailers-only replies, HTTP status mapping when `grpc-status` is missing).
//!
//! Errors that mean "this request never reached the server" (no connection, a closing connection, a
//! stream refused or above a GOAWAY's last stream id) carry a [`tonic::ConnectError`] as their source,
//! so the engine can re-send them safely.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::PathAndQuery;
use thespian_agent::proto::Nothing;
use tonic::metadata::MetadataMap;
use tonic::{Code, Response, Status};

use crate::cli::Method;

/// A handle onto one HTTP/2 connection, whose protocol work runs in a task spawned on the runtime that
/// dialled it. Cheap to clone (once per request).
#[derive(Clone, Debug)]
pub struct H2Conn {
    send: SendRequest<Bytes>,
}

/// Why dialling failed. The `std::io::Error` at the root tells refused from timed out.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("the address has no host")]
    NoHost,
    #[error("tcp connect error")]
    Tcp(#[source] std::io::Error),
    #[error("the HTTP/2 handshake failed")]
    Handshake(#[source] h2::Error),
}

/// Opens a TCP connection (TCP_NODELAY: small requests must not wait for Nagle) and performs the HTTP/2
/// handshake, within `timeout`.
pub async fn dial(uri: &http::Uri, timeout: Duration) -> Result<H2Conn, DialError> {
    let host = uri.host().ok_or(DialError::NoHost)?;
    // `[::1]` in a URI is `::1` to the resolver.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(80);
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(DialError::Tcp)?;
        tcp.set_nodelay(true).map_err(DialError::Tcp)?;
        let (send, connection) = h2::client::Builder::new()
            // Replies are tiny; a larger window only matters to agents behind slow links.
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 22)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(DialError::Handshake)?;
        tokio::spawn(async move {
            // Ends when every handle is dropped, or with the connection's error, which the requests on it
            // report themselves.
            let _ = connection.await;
        });
        Ok(H2Conn { send })
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(DialError::Tcp(std::io::Error::from(std::io::ErrorKind::TimedOut))),
    }
}

/// A status for a request that never reached the server (safe to send again).
fn not_sent(err: h2::Error) -> Status {
    let mut status = Status::unavailable(format!("the connection cannot take requests: {err}"));
    status.set_source(Arc::new(tonic::ConnectError(Box::new(err))));
    status
}

/// The status of a failed stream, as tonic maps HTTP/2 errors (RST_STREAM reasons per the gRPC spec) —
/// except that a stream the server never processed (refused, or above the last stream id of its GOAWAY)
/// is marked as never sent.
fn stream_error(err: h2::Error) -> Status {
    if err.reason() == Some(h2::Reason::REFUSED_STREAM) || (err.is_go_away() && err.is_remote()) {
        return not_sent(err);
    }
    Status::from_error(Box::new(err))
}

/// The Thespian methods' paths (`proto/thespian.proto`).
fn path(method: Method) -> PathAndQuery {
    PathAndQuery::from_static(match method {
        Method::A => "/thespian.Thespian/A",
        Method::B => "/thespian.Thespian/B",
        Method::C => "/thespian.Thespian/C",
    })
}

const FRAME_HEADER: usize = 5;
/// The request body: one uncompressed gRPC message frame holding the empty `Nothing`.
static EMPTY_MESSAGE: [u8; FRAME_HEADER] = [0; FRAME_HEADER];

/// A plaintext client: an [`H2Conn`] plus the method URIs, built once.
#[derive(Clone, Debug)]
pub struct H2Client {
    conn: H2Conn,
    uris: Arc<[http::Uri; 3]>,
}

impl H2Client {
    pub fn new(conn: H2Conn, origin: &http::Uri) -> Result<Self, http::Error> {
        let uri = |m: Method| -> Result<http::Uri, http::Error> {
            let mut parts = origin.clone().into_parts();
            parts.path_and_query = Some(path(m));
            Ok(http::Uri::from_parts(parts)?)
        };
        Ok(H2Client {
            conn,
            uris: Arc::new([uri(Method::A)?, uri(Method::B)?, uri(Method::C)?]),
        })
    }

    /// One unary call of `method` carrying `metadata`. Waits while the server's stream limit is reached.
    pub async fn unary(self, method: Method, metadata: MetadataMap) -> Result<Response<Nothing>, Status> {
        let H2Client { conn, uris } = self;
        let mut send = conn.send;
        poll_fn(|cx| send.poll_ready(cx)).await.map_err(not_sent)?;
        let mut headers = metadata.into_headers();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uris[method as usize].clone();
        *request.headers_mut() = headers;
        let (response, mut stream) = send.send_request(request, false).map_err(not_sent)?;
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
        if let Some(trailers) = &trailers {
            for (name, value) in trailers {
                headers.append(name.clone(), value.clone());
            }
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

/// The call's result, with every header and trailer of the reply as its metadata (where the agent's
/// `x-thespian-instance` is found, errors included).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::conn::never_sent;

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

    async fn call(reply: Reply, method: Method) -> (Result<Response<Nothing>, Status>, Seen) {
        let (uri, server) = server(reply).await;
        let conn = dial(&uri, Duration::from_secs(2)).await.unwrap();
        let client = H2Client::new(conn, &uri).unwrap();
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
        let (result, seen) = call(reply, Method::B).await;
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
        assert!(call(reply, Method::A).await.0.is_ok());
    }

    #[tokio::test]
    async fn a_trailers_only_error_keeps_its_code_message_and_instance() {
        let reply = Reply::TrailersOnly {
            status: "13",
            message: "%60s%60 failed (failure_chance 0.3)",
        };
        let status = call(reply, Method::A).await.0.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "`s` failed (failure_chance 0.3)");
        assert_eq!(instance(status.metadata()), Some("host:42"));
    }

    #[tokio::test]
    async fn an_error_in_the_trailers_keeps_the_instance_from_the_headers() {
        let reply = Reply::Normal {
            chunks: vec![],
            status: Some("14"),
        };
        let status = call(reply, Method::A).await.0.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(instance(status.metadata()), Some("host:42"));
    }

    #[tokio::test]
    async fn http_statuses_without_grpc_status_map_as_the_spec_says() {
        for (http, code) in [
            (503, Code::Unavailable),
            (404, Code::Unimplemented),
            (500, Code::Unknown),
        ] {
            let status = call(Reply::Http(http), Method::A).await.0.unwrap_err();
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
        let status = call(reply, Method::A).await.0.unwrap_err();
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
            let status = call(reply, Method::A).await.0.unwrap_err();
            assert_eq!(status.code(), Code::Internal, "{status:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_stream_was_never_processed() {
        let status = call(Reply::Reset(h2::Reason::REFUSED_STREAM), Method::A)
            .await
            .0
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(never_sent(&status), "{status:?}");
        let status = call(Reply::Reset(h2::Reason::INTERNAL_ERROR), Method::A)
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
}
