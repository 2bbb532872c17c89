//! The probe's lean HTTP/2 transport for plaintext (`http://`) endpoints.
//!
//! The generated `ThespianClient` and tonic's `Grpc` do all of gRPC (framing, metadata, status from
//! headers or trailers); only the transport underneath is ours: one `h2` connection per slot, and per
//! request a stream whose headers and 5-byte body are queued together. tonic's `Channel` puts a buffer
//! task and hyper's dispatcher (a spawned task per request, a body pipe) between the caller and `h2`;
//! at tens of thousands of requests per second those hops, and the one-write-per-request they cause,
//! cost more CPU than the server spends answering — and on a shared machine CPU is throughput. TLS
//! endpoints keep using tonic's `Channel` (see [`conn`](super::conn)).
//!
//! Errors that mean "this request never reached the server" (no connection, a closing connection, a
//! stream refused or above a GOAWAY's last stream id) carry a [`tonic::ConnectError`] as their source,
//! so the engine can re-send them safely.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;
use h2::client::SendRequest;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

/// A client connection: a cheap handle (clone it per request) onto one HTTP/2 connection, whose
/// protocol work runs in a task spawned on the runtime that dialled it.
#[derive(Debug)]
pub struct H2Conn {
    send: SendRequest<Bytes>,
    /// Set by `poll_ready` when the connection cannot take requests, returned by `call`: the generated
    /// client turns readiness errors into a bare `UNKNOWN` without their cause, and the engine needs the
    /// cause to know the request was never sent.
    unusable: Option<h2::Error>,
}

impl Clone for H2Conn {
    fn clone(&self) -> Self {
        H2Conn {
            send: self.send.clone(),
            unusable: None,
        }
    }
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
        Ok(H2Conn { send, unusable: None })
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

/// The status of a failed stream, as tonic maps HTTP/2 errors — except that a stream the server never
/// processed (refused, or above the last stream id of its GOAWAY) is marked as never sent.
fn stream_error(err: h2::Error) -> Status {
    if err.reason() == Some(h2::Reason::REFUSED_STREAM) || (err.is_go_away() && err.is_remote()) {
        return not_sent(err);
    }
    Status::from_error(Box::new(err))
}

impl tower::Service<http::Request<tonic::body::Body>> for H2Conn {
    type Response = http::Response<H2Body>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Pending while the server's stream limit is reached; an error once the connection is closing,
        // which `call` reports.
        if let Err(err) = ready!(self.send.poll_ready(cx)) {
            self.unusable = Some(err);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(err) = self.unusable.take() {
            return Box::pin(std::future::ready(Err(not_sent(err))));
        }
        let (head, body) = request.into_parts();
        let started = self.send.send_request(http::Request::from_parts(head, ()), false);
        Box::pin(async move {
            let (response, mut stream) = started.map_err(not_sent)?;
            // Polled right away by the caller, so the body is queued with the headers and both leave
            // in the same write.
            send_body(body, &mut stream).await?;
            let response = response.await.map_err(stream_error)?;
            Ok(response.map(|recv| H2Body {
                recv,
                data_done: false,
            }))
        })
    }
}

/// Copies the (unary, already encoded) request body into the stream, ending it with the last frame.
async fn send_body(body: tonic::body::Body, stream: &mut SendStream<Bytes>) -> Result<(), Status> {
    let mut body = pin!(body);
    let mut held: Option<Bytes> = None;
    loop {
        match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if let Some(previous) = held.replace(data) {
                        stream.send_data(previous, false).map_err(stream_error)?;
                    }
                }
                Err(frame) => {
                    if let Some(previous) = held.take() {
                        stream.send_data(previous, false).map_err(stream_error)?;
                    }
                    if let Ok(trailers) = frame.into_trailers() {
                        stream.send_trailers(trailers).map_err(stream_error)?;
                        return Ok(());
                    }
                }
            },
            Some(Err(status)) => return Err(status),
            None => {
                return stream
                    .send_data(held.take().unwrap_or_default(), true)
                    .map_err(stream_error);
            }
        }
    }
}

/// A response body: the stream's data, then its trailers (where gRPC puts the status).
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Hand the window back at once: the data is consumed by the caller right away.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
