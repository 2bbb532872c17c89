//! A protocol-faithful double of AWS Session Manager for port forwarding, written from the protocol note
//! (`ssm-session-protocol.md`), sharing no code with the client under test:
//!
//! - an HTTP server speaking the SSM API (`StartSession`, `ResumeSession`, `TerminateSession`, awsJson 1.1,
//!   `X-Amz-Target: AmazonSSM.*`), for `--endpoint-url` / `AWS_ENDPOINT_URL_SSM`;
//! - the WebSocket gateway (`ws://127.0.0.1:…/v1/data-channel/<id>`): checks the SigV4-signed upgrade and
//!   the open-data-channel message, validates every frame strictly (header length 116, space padding,
//!   Java-order ids, digest, flags);
//! - the agent ([`agent`]): handshake, acks / retransmission / reordering by the agent's rules, the smux
//!   server dialling a target, basic mode with DisconnectToPort, TerminateSession, `channel_closed`;
//! - fault injection ([`Controls`]): reorder and duplicate agent messages, drop an ack, drop or close the
//!   socket, pause reading, an old AgentVersion.
//!
//! Used by `tests/tunnel.rs` and by its benchmark tests (`bench/tunnel.sh`).
#![allow(dead_code)]
// Test support: a broken invariant here should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

pub mod agent;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

/// How the double behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// What the agent claims in its HandshakeRequest.
    pub agent_version: String,
    /// Where the agent dials for the instance's ports (an echo server, typically). Every port maps here,
    /// unless `dial_port_number` is set.
    pub target: SocketAddr,
    /// Dial `127.0.0.1:<portNumber>` from the session's parameters instead of `target`, as the real agent
    /// does for `AWS-StartPortForwardingSession` (the port on the instance itself): a test whose instance
    /// is this machine then reaches whatever listens on the port the client asked for.
    pub dial_port_number: bool,
    /// Instances that answer StartSession with TargetNotConnected.
    pub not_connected: Vec<String>,
    /// StartSession answers AccessDeniedException.
    pub deny_start: bool,
    /// The secret key the client signs with; the upgrade's SigV4 signature is checked against it.
    pub secret_key: Option<String>,
    pub region: String,
    /// The agent's resend tick (100 ms in the real agent; shorter ticks speed up tests of recovery).
    pub resend_interval: Duration,
    /// smux keepalive of the agent, when the agent/client versions turn it on.
    pub smux_keepalive_interval: Duration,
    pub customer_message: String,
}

impl Config {
    pub fn new(target: SocketAddr) -> Self {
        Config {
            agent_version: "3.3.1142.0".into(),
            target,
            dial_port_number: false,
            not_connected: Vec::new(),
            deny_start: false,
            secret_key: None,
            region: "us-east-1".into(),
            resend_interval: Duration::from_millis(100),
            smux_keepalive_interval: Duration::from_secs(10),
            customer_message: String::new(),
        }
    }
}

/// What the double saw, for assertions.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// (operation, request body) for every API call.
    pub api_calls: Vec<(String, serde_json::Value)>,
    /// The ids of the sessions StartSession started, in order.
    pub sessions_started: Vec<String>,
    /// Upgrade requests: (path and query, headers).
    pub upgrades: Vec<(String, Vec<(String, String)>)>,
    /// SigV4 verdicts of the upgrades (`None`: no secret configured to check against).
    pub signature_errors: Vec<String>,
    /// Open-data-channel messages.
    pub opens: Vec<serde_json::Value>,
    /// Protocol rules the client broke (must stay empty).
    pub violations: Vec<String>,
    pub handshake_responses: Vec<serde_json::Value>,
    /// Flags the agent received: (session id, flag value).
    pub flags: Vec<(String, u32)>,
    /// Client sequence numbers that arrived again after being accepted (retransmissions seen).
    pub client_duplicates: Vec<i64>,
    /// Acks the agent deliberately did not send.
    pub acks_dropped: Vec<i64>,
    /// Acks from the client for agent messages that had been acked already (re-acks of duplicates).
    pub client_reacks: usize,
    /// Agent messages sent again by its resend loop.
    pub agent_retransmits: usize,
    /// Agent messages deliberately sent out of order / twice.
    pub agent_reordered: usize,
    pub agent_duplicated: usize,
    /// smux streams the agent accepted.
    pub streams: Vec<u32>,
    pub max_open_streams: usize,
    /// TCP dials of the target by the agent.
    pub dials: usize,
    /// smux NOPs received from the client.
    pub client_nops: usize,
    /// Client messages the agent could not take yet (handler not ready) and left unacked.
    pub not_ready: usize,
    /// Client data messages whose ack the agent sent.
    pub acks_sent: usize,
    /// Agent messages the client did not ack in time (retransmitted because of a refusal or loss).
    pub sessions_closed: Vec<String>,
}

/// Faults the tests switch on and off while the double runs.
#[derive(Debug, Default)]
pub struct Controls {
    pub reorder: AtomicBool,
    pub duplicate: AtomicBool,
    /// Drop the ack of this client sequence number once (u64::MAX: none).
    pub drop_ack_of: AtomicU64,
    /// Readers sleep until this instant (epoch ms) before reading the next frame.
    pub pause_reading_until_ms: AtomicU64,
    /// Output payload bytes the agent has sent (first transmissions).
    pub output_bytes: AtomicUsize,
    /// Client Output payload bytes the agent accepted.
    pub input_bytes: AtomicUsize,
}

pub(crate) struct Session {
    pub id: String,
    pub token: Mutex<String>,
    pub target: String,
    pub client_id: Mutex<Option<String>>,
    pub to_agent: mpsc::UnboundedSender<agent::Input>,
    pub terminated: AtomicBool,
}

pub(crate) struct Shared {
    pub config: Config,
    pub records: Mutex<Records>,
    pub controls: Controls,
    pub sessions: Mutex<HashMap<String, Arc<Session>>>,
    pub connections: Mutex<Vec<(CancellationToken, mpsc::UnboundedSender<agent::WsOut>)>>,
    pub ws_addr: SocketAddr,
    pub next_conn: AtomicU64,
}

impl Shared {
    pub fn record<F: FnOnce(&mut Records)>(&self, f: F) {
        f(&mut self.records.lock().unwrap());
    }
    pub fn violation(&self, v: impl Into<String>) {
        let v = v.into();
        eprintln!("ssm double: protocol violation: {v}");
        self.record(|r| r.violations.push(v));
    }
}

/// The running double. Dropping it stops everything.
pub struct SsmDouble {
    pub api_url: String,
    pub ws_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for SsmDouble {
    fn drop(&mut self) {
        self.stop.cancel();
        for (c, _) in self.shared.connections.lock().unwrap().drain(..) {
            c.cancel();
        }
    }
}

impl SsmDouble {
    pub async fn start(config: Config) -> SsmDouble {
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared = Arc::new(Shared {
            config,
            records: Mutex::new(Records::default()),
            controls: Controls {
                drop_ack_of: AtomicU64::new(u64::MAX),
                ..Controls::default()
            },
            sessions: Mutex::new(HashMap::new()),
            connections: Mutex::new(Vec::new()),
            ws_addr: ws.local_addr().unwrap(),
            next_conn: AtomicU64::new(1),
        });
        let stop = CancellationToken::new();
        let api_url = format!("http://{}", api.local_addr().unwrap());
        tokio::spawn(serve_api(api, shared.clone(), stop.clone()));
        tokio::spawn(serve_ws(ws, shared.clone(), stop.clone()));
        SsmDouble {
            api_url,
            ws_addr: shared.ws_addr,
            shared,
            stop,
        }
    }

    pub fn records(&self) -> Records {
        self.shared.records.lock().unwrap().clone()
    }

    pub fn controls(&self) -> &Controls {
        &self.shared.controls
    }

    /// Drops every client WebSocket at once, without a close frame (a network failure).
    pub fn drop_connections(&self) {
        for (c, _) in self.shared.connections.lock().unwrap().drain(..) {
            c.cancel();
        }
    }

    /// Closes every client WebSocket with a close frame (e.g. 1000 "Bye", the routine hourly close).
    pub fn close_connections(&self, code: u16, reason: &str) {
        for (_, tx) in self.shared.connections.lock().unwrap().drain(..) {
            let _ = tx.send(agent::WsOut::Close(code, reason.to_string()));
        }
    }

    /// Stops reading client frames for `d` (the client's writes back up).
    pub fn pause_reading(&self, d: Duration) {
        let until = now_ms() + d.as_millis() as u64;
        self.shared
            .controls
            .pause_reading_until_ms
            .store(until, Ordering::SeqCst);
    }

    /// The agent will not ack client message `seq` the first time it arrives.
    pub fn drop_ack_of(&self, seq: i64) {
        self.shared
            .controls
            .drop_ack_of
            .store(seq as u64, Ordering::SeqCst);
    }

    pub fn active_sessions(&self) -> usize {
        self.shared
            .sessions
            .lock()
            .unwrap()
            .values()
            .filter(|s| !s.terminated.load(Ordering::SeqCst))
            .count()
    }

    /// Ends a session from the service side (as an idle timeout would): `channel_closed` to the client.
    pub fn close_session(&self, id: &str, output: &str) {
        if let Some(s) = self.shared.sessions.lock().unwrap().get(id) {
            let _ = s.to_agent.send(agent::Input::ServiceClose(output.to_string()));
        }
    }

    /// Waits (polling the records, bounded) until `pred` holds; panics with the records otherwise.
    pub async fn wait_for<F: Fn(&Records) -> bool>(&self, what: &str, limit: Duration, pred: F) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if pred(&self.records()) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "ssm double: timed out waiting for {what}; records: {:#?}",
                    self.records()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------------
// The SSM API (awsJson 1.1 over HTTP/1.1, keep-alive).

async fn serve_api(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_http_conn(stream, shared) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn serve_http_conn(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut headers = Vec::new();
        for line in head.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let len: usize = get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let body_start = head_end + 4;
        while buf.len() < body_start + len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[body_start..body_start + len].to_vec();
        buf.drain(..body_start + len);
        let target = get("x-amz-target").unwrap_or_default();
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let (status, reply) = handle_api(&shared, &target, &request, get("authorization").is_some()).await;
        let text = reply.to_string();
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nx-amzn-requestid: {}\r\n\r\n{text}",
            text.len(),
            uuid::Uuid::new_v4()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn api_error(code: &str, message: &str) -> (&'static str, serde_json::Value) {
    (
        "400 Bad Request",
        serde_json::json!({"__type": code, "message": message}),
    )
}

async fn handle_api(
    shared: &Arc<Shared>,
    target: &str,
    request: &serde_json::Value,
    signed: bool,
) -> (&'static str, serde_json::Value) {
    let operation = target.strip_prefix("AmazonSSM.").unwrap_or(target).to_string();
    shared.record(|r| r.api_calls.push((operation.clone(), request.clone())));
    if !signed {
        return api_error("MissingAuthenticationTokenException", "request is not signed");
    }
    match operation.as_str() {
        "StartSession" => {
            let instance = request["Target"].as_str().unwrap_or_default().to_string();
            if shared.config.deny_start {
                return api_error(
                    "AccessDeniedException",
                    "User is not authorized to perform: ssm:StartSession",
                );
            }
            if shared.config.not_connected.contains(&instance) {
                return api_error("TargetNotConnected", &format!("{instance} is not connected."));
            }
            let document = request["DocumentName"].as_str().unwrap_or_default();
            if !document.starts_with("AWS-StartPortForwardingSession") {
                return api_error("InvalidDocument", "document not found");
            }
            let id = format!("thespctl-test-{}", uuid::Uuid::new_v4().simple());
            let token = uuid::Uuid::new_v4().to_string();
            let (tx, rx) = mpsc::unbounded_channel();
            let session = Arc::new(Session {
                id: id.clone(),
                token: Mutex::new(token.clone()),
                target: instance,
                client_id: Mutex::new(None),
                to_agent: tx,
                terminated: AtomicBool::new(false),
            });
            shared
                .sessions
                .lock()
                .unwrap()
                .insert(id.clone(), session.clone());
            shared.record(|r| r.sessions_started.push(id.clone()));
            tokio::spawn(agent::run(
                shared.clone(),
                session,
                document.to_string(),
                request["Parameters"].clone(),
                rx,
            ));
            (
                "200 OK",
                serde_json::json!({
                    "SessionId": id,
                    "TokenValue": token,
                    "StreamUrl": format!("ws://{}/v1/data-channel/{id}?role=publish_subscribe", shared.ws_addr),
                }),
            )
        }
        "ResumeSession" => {
            let id = request["SessionId"].as_str().unwrap_or_default();
            let session = shared.sessions.lock().unwrap().get(id).cloned();
            match session {
                Some(s) if !s.terminated.load(Ordering::SeqCst) => {
                    let token = uuid::Uuid::new_v4().to_string();
                    *s.token.lock().unwrap() = token.clone();
                    (
                        "200 OK",
                        serde_json::json!({
                            "SessionId": id,
                            "TokenValue": token,
                            "StreamUrl": format!("ws://{}/v1/data-channel/{id}?role=publish_subscribe", shared.ws_addr),
                        }),
                    )
                }
                _ => api_error("DoesNotExistException", &format!("Session {id} does not exist")),
            }
        }
        "TerminateSession" => {
            let id = request["SessionId"].as_str().unwrap_or_default();
            if let Some(s) = shared.sessions.lock().unwrap().get(id) {
                let _ = s.to_agent.send(agent::Input::ApiTerminate);
                s.terminated.store(true, Ordering::SeqCst);
            }
            ("200 OK", serde_json::json!({"SessionId": id}))
        }
        other => api_error(
            "UnknownOperationException",
            &format!("{other} is not implemented by the double"),
        ),
    }
}

// ---------------------------------------------------------------------------------------------------
// The WebSocket gateway.

async fn serve_ws(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_ws_conn(stream, shared.clone(), stop.child_token()));
    }
}

async fn serve_ws_conn(stream: TcpStream, shared: Arc<Shared>, stop: CancellationToken) {
    let mut seen: Option<(String, Vec<(String, String)>)> = None;
    let callback = |req: &Request, resp: Response| {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        seen = Some((path, headers));
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let Some((path, headers)) = seen else { return };
    if let Some(secret) = &shared.config.secret_key
        && let Err(e) = wire::verify_sigv4(&path, &headers, secret, &shared.config.region)
    {
        shared.record(|r| r.signature_errors.push(e));
    }
    shared.record(|r| r.upgrades.push((path.clone(), headers)));
    let id = path
        .split('?')
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let Some(session) = shared.sessions.lock().unwrap().get(&id).cloned() else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    // The first frame must be the open-data-channel text message with the current token.
    let first = tokio::time::timeout(Duration::from_secs(10), source.next()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        shared.violation("the first frame was not the open-data-channel text message");
        return;
    };
    let open: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    shared.record(|r| r.opens.push(open.clone()));
    let current = session.token.lock().unwrap().clone();
    if open["TokenValue"].as_str() != Some(current.as_str()) {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "invalid token".into(),
            })))
            .await;
        shared.violation("open-data-channel message with a stale or wrong token");
        return;
    }
    if open["MessageSchemaVersion"] != "1.0"
        || open["RequestId"]
            .as_str()
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .is_none()
    {
        shared.violation(format!("malformed open-data-channel message: {open}"));
    }
    let client_id = open["ClientId"].as_str().unwrap_or_default().to_string();
    {
        let mut known = session.client_id.lock().unwrap();
        match known.as_ref() {
            Some(k) if *k != client_id => shared.violation("ClientId changed across reconnects"),
            _ => *known = Some(client_id),
        }
    }
    let conn_id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<agent::WsOut>();
    shared
        .connections
        .lock()
        .unwrap()
        .push((stop.clone(), out_tx.clone()));
    let _ = session.to_agent.send(agent::Input::Connected {
        conn: conn_id,
        tx: out_tx,
        client_version: open["ClientVersion"].as_str().unwrap_or_default().to_string(),
    });
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                i = out_rx.recv() => i,
                _ = writer_stop.cancelled() => None,
            };
            match item {
                Some(agent::WsOut::Frame(f)) => {
                    if sink.feed(Message::binary(f)).await.is_err() {
                        break;
                    }
                    // Batch what is already queued into one flush.
                    let mut n = 0;
                    while n < 256 {
                        match out_rx.try_recv() {
                            Ok(agent::WsOut::Frame(f)) => {
                                if sink.feed(Message::binary(f)).await.is_err() {
                                    return;
                                }
                                n += 1;
                            }
                            Ok(agent::WsOut::Close(code, reason)) => {
                                let _ = sink.flush().await;
                                let _ = sink
                                    .send(Message::Close(Some(CloseFrame {
                                        code: CloseCode::from(code),
                                        reason: reason.into(),
                                    })))
                                    .await;
                                writer_stop.cancel();
                                return;
                            }
                            Err(_) => break,
                        }
                    }
                    if sink.flush().await.is_err() {
                        break;
                    }
                }
                Some(agent::WsOut::Close(code, reason)) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        })))
                        .await;
                    writer_stop.cancel();
                    break;
                }
                None => break,
            }
        }
    });
    loop {
        let pause = shared.controls.pause_reading_until_ms.load(Ordering::SeqCst);
        let now = now_ms();
        if pause > now {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(pause - now)) => {}
                _ = stop.cancelled() => break,
            }
            continue;
        }
        let msg = tokio::select! {
            m = source.next() => m,
            _ = stop.cancelled() => break,
        };
        match msg {
            Some(Ok(Message::Binary(frame))) => match wire::parse_strict(&frame) {
                Ok((f, problems)) => {
                    for p in problems {
                        shared.violation(format!("{} seq {}: {p}", f.kind, f.seq));
                    }
                    let _ = session.to_agent.send(agent::Input::Frame(f));
                }
                Err(e) => shared.violation(e),
            },
            Some(Ok(Message::Text(t))) => shared.violation(format!("unexpected text frame after open: {t}")),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    stop.cancel();
    let _ = writer.await;
    let _ = session
        .to_agent
        .send(agent::Input::Disconnected { conn: conn_id });
}

// ---------------------------------------------------------------------------------------------------
// Targets.

/// A TCP echo server (half-close aware) for the agent to dial; counts its connections.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (count, s) = (accepted.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = s.cancelled() => return,
                };
                count.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut r, &mut w) => { let _ = w.shutdown().await; }
                        _ = s.cancelled() => {}
                    }
                });
            }
        });
        Echo { addr, accepted, stop }
    }
}
