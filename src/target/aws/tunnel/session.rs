//! One Session Manager session: the WebSocket to the stream URL (SigV4-signed upgrade, open-data-channel
//! message), the handshake, acks and retransmission ([`super::channel`]), pings, and resume after the
//! socket drops. Everything runs in one task (the "actor") that owns the sequence state; the port logic
//! talks to it through bounded channels:
//!
//! - [`OutItem`]s in: application bytes and flags, taken only after HandshakeComplete and only while the
//!   send window has room (so a slow agent slows the local reader down, nothing is dropped);
//! - Output payloads out, in order: a message is acked only once it has been taken into a bounded buffer,
//!   so a slow local writer makes us stop acking and the agent holds back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::TunnelError;
use super::channel::{AckOutcome, Inbound, Outbound, Verdict};
use super::message::{
    ACKNOWLEDGE, ACTION_FAILED, ACTION_SUCCESS, ACTION_UNSUPPORTED, Ack, CHANNEL_CLOSED, ChannelClosed,
    ClientMessage, Flag, HandshakeComplete, HandshakeRequest, HandshakeResponse, INPUT_STREAM_DATA,
    OUTPUT_STREAM_DATA, OpenDataChannel, PAUSE_PUBLICATION, PayloadType, ProcessedClientAction,
    START_PUBLICATION, Version,
};

/// The plugin version we claim. The agent decides behaviour from it (mux from 1.1.70, smux keepalive off
/// above 1.2.331.0), and AWS names 1.2.764.0 as the minimum supported plugin: it is also the first release
/// that signs the WebSocket upgrade, as we do. Claiming more would promise features we do not implement.
pub const CLIENT_VERSION: &str = "1.2.764.0";

/// Agents above this version speak smux on LocalPortForwarding sessions.
const MUX_MIN_EXCLUSIVE: &str = "3.0.196.0";
/// Agents up to this version keep smux keepalive on whatever the client says.
const KEEPALIVE_MAX_INCLUSIVE: &str = "3.1.1511.0";
/// Agents above this version understand the in-band TerminateSession flag in basic mode.
const TERMINATE_FLAG_MIN_EXCLUSIVE: &str = "2.3.722.0";

/// Tunables of a session. The defaults are what `thespctl tunnel` uses; tests shorten the timers.
#[derive(Debug, Clone)]
pub struct Options {
    /// WebSocket ping interval (the plugin pings every 5 min and never checks the reply).
    pub ping_interval: Duration,
    /// Declare the socket dead (and resume) when nothing at all arrived for this long.
    pub dead_after: Duration,
    /// How long the agent's handshake may take after the socket opened.
    pub handshake_timeout: Duration,
    /// Largest payload per Output message we send. The plugin sends 1024; the gateway is known to
    /// accept that, so we keep it.
    pub max_payload: usize,
    /// Unacked messages we allow in flight.
    pub window: usize,
    /// Bytes of received-but-undelivered data we accept (and ack) before refusing more.
    pub receive_buffer: usize,
    /// How long `close` waits for the ack of the TerminateSession flag.
    pub close_ack_wait: Duration,
    /// How long to keep trying to resume a dropped socket before giving up.
    pub resume_budget: Duration,
    /// Give up when one message has been retransmitted this many times without an ack.
    pub max_retransmits: u32,
    /// smux keepalive (old agents only): NOP interval, and how long the agent may stay silent.
    pub smux_keepalive_interval: Duration,
    pub smux_keepalive_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ping_interval: Duration::from_secs(30),
            dead_after: Duration::from_secs(75),
            handshake_timeout: Duration::from_secs(30),
            max_payload: 1024,
            window: 1024,
            receive_buffer: 4 << 20,
            close_ack_wait: Duration::from_secs(2),
            resume_budget: Duration::from_secs(120),
            max_retransmits: 150,
            smux_keepalive_interval: super::smux::KEEPALIVE_INTERVAL,
            smux_keepalive_timeout: super::smux::KEEPALIVE_TIMEOUT,
        }
    }
}

/// Counters of one session, for tests, benchmarks and curious users.
#[derive(Debug, Default)]
pub struct Stats {
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    retransmitted: AtomicU64,
    refused: AtomicU64,
    duplicates: AtomicU64,
    resumes: AtomicU64,
}

/// A copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Sequenced messages we sent (first transmissions).
    pub messages_sent: u64,
    /// Sequenced messages received (every copy).
    pub messages_received: u64,
    /// Our messages sent again (timeouts and resumes).
    pub retransmitted: u64,
    /// Agent messages left unacked because the local side was not keeping up (backpressure).
    pub refused: u64,
    /// Agent messages received again (acked again).
    pub duplicates: u64,
    /// WebSocket reconnects (ResumeSession).
    pub resumes: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            messages_sent: get(&self.messages_sent),
            messages_received: get(&self.messages_received),
            retransmitted: get(&self.retransmitted),
            refused: get(&self.refused),
            duplicates: get(&self.duplicates),
            resumes: get(&self.resumes),
        }
    }

    fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What StartSession returned.
#[derive(Debug, Clone)]
pub struct Started {
    pub session_id: String,
    pub token_value: String,
    pub stream_url: String,
}

/// The outcome of the handshake: the agent and the port mode both sides chose.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub agent_version: String,
    /// smux multiplexing (else basic mode, one TCP connection at a time).
    pub mux: bool,
    /// smux keepalive NOPs (old agents only).
    pub keepalive: bool,
    /// The document's `properties` with parameters filled in.
    pub properties: serde_json::Value,
    pub customer_message: String,
    /// Whether the in-band TerminateSession flag is understood.
    pub terminate_flag: bool,
}

/// Bytes or a flag to send, in order.
#[derive(Debug)]
pub enum OutItem {
    Data(Bytes),
    /// A flag; the sender is told when the agent acknowledged it.
    Flag(Flag, Option<oneshot::Sender<()>>),
}

/// Something the user may want to hear about while the tunnel runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The WebSocket dropped; resuming.
    Reconnecting { reason: String },
    /// Resumed after this many attempts.
    Reconnected { attempts: u32 },
    /// Flag 3: the agent could not connect to the port for a new connection.
    AgentCouldNotConnect,
    /// The agent's CustomerMessage from the handshake.
    AgentMessage(String),
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// We terminated it; `acked` says whether the agent confirmed the in-band flag.
    Terminated {
        acked: bool,
    },
    /// The service sent `channel_closed` (terminated elsewhere, timed out, agent gone).
    Closed {
        output: String,
    },
    Failed(TunnelError),
}

/// The running session, as the port logic sees it.
#[derive(Debug)]
pub struct SessionHandle {
    pub session_id: String,
    pub handshake: Handshake,
    pub out: mpsc::Sender<OutItem>,
    pub inbound: mpsc::Receiver<Bytes>,
    pub events: mpsc::Receiver<SessionEvent>,
    pub terminate: mpsc::Sender<()>,
    pub task: JoinHandle<SessionEnd>,
    pub stats: Arc<Stats>,
}

/// SigV4 for the WebSocket upgrade (service `ssmmessages`).
#[derive(Debug, Clone)]
pub struct Signer {
    pub credentials: SharedCredentialsProvider,
    pub region: String,
}

impl Signer {
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Option<Signer> {
        Some(Signer {
            credentials: sdk.credentials_provider()?,
            region: sdk.region()?.to_string(),
        })
    }

    /// The `Authorization`, `X-Amz-Date` (and `X-Amz-Security-Token`) headers for `GET url`.
    pub async fn headers(&self, url: &str) -> Result<Vec<(String, String)>, String> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        use aws_sigv4::sign::v4;
        let creds = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| e.to_string())?;
        let identity = creds.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ssmmessages")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let request = SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(&[]))
            .map_err(|e| e.to_string())?;
        let (instructions, _signature) = sign(request, &params).map_err(|e| e.to_string())?.into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

/// A presigned URL carries its signature in `X-Amz-*` query parameters: then we add no headers.
pub fn is_presigned(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|kv| kv.len() > 6 && kv[..6].eq_ignore_ascii_case("x-amz-"))
    })
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum ConnEvent {
    Msg(ClientMessage),
    /// Anything that proves the socket is alive without carrying a message (pong, ping, text).
    Alive,
    Closed(String),
}

/// Bytes queued for the writer above which we stop taking new application data (acks still go).
const WRITE_QUEUE_LIMIT: usize = 512 * 1024;

/// One WebSocket connection: a reader task and a writer task, so the actor never blocks on the socket.
/// It keeps reading (and acking or refusing) even while the gateway is slow to take our writes.
struct Conn {
    writer_tx: mpsc::UnboundedSender<Message>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    events: mpsc::Receiver<ConnEvent>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Conn {
    fn new(sink: SplitSink<Ws, Message>, stream: SplitStream<Ws>, dead_after: Duration) -> Conn {
        let (tx, rx) = mpsc::channel(1024);
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        let reader = tokio::spawn(read_loop(stream, tx.clone()));
        let writer = tokio::spawn(write_loop(
            sink,
            writer_rx,
            queued.clone(),
            drained.clone(),
            tx,
            dead_after,
        ));
        Conn {
            writer_tx,
            queued,
            drained,
            events: rx,
            reader,
            writer,
        }
    }

    /// Queues a frame for the writer. Fails when the writer has stopped (the socket is gone).
    fn send(&self, msg: Message) -> Step {
        let len = msg.len();
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.writer_tx
            .send(msg)
            .map_err(|_| Served::Lost("the WebSocket writer stopped".into()))
    }

    fn binary(&self, frame: Bytes) -> Step {
        self.send(Message::Binary(frame))
    }

    fn congested(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= WRITE_QUEUE_LIMIT
    }

    /// Sends a close frame and gives the writer a moment to deliver it.
    async fn close(mut self) {
        let _ = self.writer_tx.send(Message::Close(None));
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.writer_tx, tx));
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut self.writer).await;
    }
}

/// Feeds queued frames to the socket and flushes once per batch; reports a failed or blocked write.
async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    events: mpsc::Sender<ConnEvent>,
    dead_after: Duration,
) {
    let fail = |reason: String| {
        let events = events.clone();
        async move {
            let _ = events.send(ConnEvent::Closed(reason)).await;
        }
    };
    while let Some(first) = rx.recv().await {
        let mut batch = first.len();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match tokio::time::timeout(dead_after, sink.feed(msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return fail(format!("WebSocket write failed: {e}")).await,
                Err(_) => {
                    return fail(format!("WebSocket write blocked for {}s", dead_after.as_secs())).await;
                }
            }
            if batch < 256 * 1024
                && let Ok(m) = rx.try_recv()
            {
                batch += m.len();
                next = Some(m);
            }
        }
        match tokio::time::timeout(dead_after, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fail(format!("WebSocket write failed: {e}")).await,
            Err(_) => return fail(format!("WebSocket write blocked for {}s", dead_after.as_secs())).await,
        }
        queued.fetch_sub(batch, Ordering::Relaxed);
        drained.notify_one();
    }
    let _ = sink.close().await;
}

/// Dials the stream URL, signs the upgrade (unless presigned), and sends the open-data-channel message.
async fn connect(
    url: &str,
    token: &str,
    client_id: &str,
    signer: Option<&Signer>,
    timeout: Duration,
    dead_after: Duration,
) -> Result<Conn, TunnelError> {
    let connect_error = |reason: String| TunnelError::Connect {
        url: redact_url(url),
        reason,
    };
    let mut request = url
        .into_client_request()
        .map_err(|e| connect_error(e.to_string()))?;
    if let Some(signer) = signer.filter(|_| !is_presigned(url)) {
        match signer.headers(url).await {
            Ok(headers) => {
                for (name, value) in headers {
                    if let (Ok(n), Ok(v)) = (
                        http::HeaderName::try_from(name.as_str()),
                        http::HeaderValue::try_from(value.as_str()),
                    ) {
                        request.headers_mut().insert(n, v);
                    }
                }
            }
            // As the plugin: an unsigned upgrade may still be accepted; the gateway says if not.
            Err(e) => tracing::warn!("could not sign the WebSocket upgrade, dialling unsigned: {e}"),
        }
    }
    let dial = tokio_tungstenite::connect_async_with_config(request, None, true);
    let (ws, _response) = tokio::time::timeout(timeout, dial)
        .await
        .map_err(|_| connect_error(format!("no answer within {}s", timeout.as_secs())))?
        .map_err(|e| connect_error(describe_ws_error(&e)))?;
    let (mut sink, stream) = ws.split();
    let open = OpenDataChannel {
        message_schema_version: "1.0".into(),
        request_id: Uuid::new_v4().hyphenated().to_string(),
        token_value: token.to_string(),
        client_id: client_id.to_string(),
        client_version: CLIENT_VERSION.into(),
    };
    let text = serde_json::to_string(&open).unwrap_or_default();
    tokio::time::timeout(timeout, sink.send(Message::text(text)))
        .await
        .map_err(|_| connect_error("the open-data-channel message could not be sent in time".into()))?
        .map_err(|e| connect_error(describe_ws_error(&e)))?;
    Ok(Conn::new(sink, stream, dead_after))
}

fn describe_ws_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => {
            format!("the gateway refused the upgrade with HTTP {}", response.status())
        }
        other => other.to_string(),
    }
}

/// The stream URL without its query (which may hold a presigned signature).
pub fn redact_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

/// Decodes frames on their own task, so digest checks run beside the actor.
async fn read_loop(mut stream: SplitStream<Ws>, tx: mpsc::Sender<ConnEvent>) {
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(Message::Binary(frame)) => match ClientMessage::decode(&frame) {
                Ok(msg) => ConnEvent::Msg(msg),
                Err(e) => {
                    // Never acked, so the agent sends it again.
                    tracing::warn!("dropping a malformed frame from the gateway: {e}");
                    ConnEvent::Alive
                }
            },
            Ok(Message::Close(frame)) => {
                let reason = match frame {
                    Some(f) => format!(
                        "the gateway closed the WebSocket ({} {})",
                        u16::from(f.code),
                        f.reason
                    ),
                    None => "the gateway closed the WebSocket".into(),
                };
                let _ = tx.send(ConnEvent::Closed(reason)).await;
                return;
            }
            Ok(_) => ConnEvent::Alive,
            Err(e) => {
                let _ = tx.send(ConnEvent::Closed(format!("WebSocket error: {e}"))).await;
                return;
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
    let _ = tx.send(ConnEvent::Closed("the WebSocket ended".into())).await;
}

/// Opens the first WebSocket, starts the actor and waits for the handshake.
pub async fn start(
    ssm: aws_sdk_ssm::Client,
    signer: Option<Signer>,
    started: Started,
    opts: Options,
    cancel: &CancellationToken,
) -> Result<SessionHandle, TunnelError> {
    let client_id = Uuid::new_v4().hyphenated().to_string();
    let conn = tokio::select! {
        c = connect(&started.stream_url, &started.token_value, &client_id, signer.as_ref(), opts.handshake_timeout, opts.dead_after) => c?,
        _ = cancel.cancelled() => return Err(TunnelError::Cancelled),
    };
    let (out_tx, out_rx) = mpsc::channel(64);
    let (app_tx, app_rx) = mpsc::channel(256);
    let (events_tx, events_rx) = mpsc::channel(64);
    let (terminate_tx, terminate_rx) = mpsc::channel(1);
    let (handshake_tx, handshake_rx) = oneshot::channel();
    let mut ping = tokio::time::interval_at(Instant::now() + opts.ping_interval, opts.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let actor = Actor {
        ssm,
        signer,
        session_id: started.session_id.clone(),
        stream_url: started.stream_url.clone(),
        client_id,
        outbound: Outbound::new(INPUT_STREAM_DATA, opts.window),
        inbound: Inbound::new(opts.receive_buffer, opts.window.max(1024) * 4),
        opts: opts.clone(),
        agent: None,
        handshake: None,
        handshake_tx: Some(handshake_tx),
        paused: false,
        deliver_blocked: false,
        pending: std::collections::VecDeque::new(),
        flag_waiters: HashMap::new(),
        app_tx,
        out_rx,
        terminate_rx,
        events_tx,
        last_rx: Instant::now(),
        ping,
        stats: Arc::default(),
    };
    let stats = actor.stats.clone();
    let mut task = tokio::spawn(actor.run(conn));
    let session_id = started.session_id.clone();
    let handshake = tokio::select! {
        h = handshake_rx => h.ok(),
        _ = tokio::time::sleep(opts.handshake_timeout) => {
            task.abort();
            return Err(TunnelError::HandshakeTimeout { session_id, waited: opts.handshake_timeout });
        }
        _ = cancel.cancelled() => {
            task.abort();
            return Err(TunnelError::Cancelled);
        }
        end = &mut task => {
            return Err(match end {
                Ok(SessionEnd::Failed(e)) => e,
                Ok(SessionEnd::Closed { output }) => TunnelError::SessionClosed { session_id, output },
                Ok(SessionEnd::Terminated { .. }) | Err(_) => TunnelError::HandshakeTimeout { session_id, waited: opts.handshake_timeout },
            });
        }
    };
    let Some(handshake) = handshake else {
        return Err(match task.await {
            Ok(SessionEnd::Failed(e)) => e,
            Ok(SessionEnd::Closed { output }) => TunnelError::SessionClosed { session_id, output },
            _ => TunnelError::HandshakeTimeout {
                session_id,
                waited: opts.handshake_timeout,
            },
        });
    };
    Ok(SessionHandle {
        session_id: started.session_id,
        handshake,
        out: out_tx,
        inbound: app_rx,
        events: events_rx,
        terminate: terminate_tx,
        task,
        stats,
    })
}

/// What the agent told us in its HandshakeRequest (kept until HandshakeComplete).
struct AgentInfo {
    version: String,
    properties: serde_json::Value,
}

struct Actor {
    ssm: aws_sdk_ssm::Client,
    signer: Option<Signer>,
    session_id: String,
    stream_url: String,
    client_id: String,
    outbound: Outbound,
    inbound: Inbound,
    opts: Options,
    agent: Option<AgentInfo>,
    handshake: Option<Handshake>,
    handshake_tx: Option<oneshot::Sender<Handshake>>,
    /// `pause_publication`: the agent is not connected; hold new data until it is.
    paused: bool,
    /// The application queue was full when an in-order Output message was ready.
    deliver_blocked: bool,
    /// Chunks of an item larger than one message, waiting for window room.
    pending: std::collections::VecDeque<(PayloadType, Bytes, Option<oneshot::Sender<()>>)>,
    flag_waiters: HashMap<i64, oneshot::Sender<()>>,
    app_tx: mpsc::Sender<Bytes>,
    out_rx: mpsc::Receiver<OutItem>,
    terminate_rx: mpsc::Receiver<()>,
    events_tx: mpsc::Sender<SessionEvent>,
    last_rx: Instant,
    ping: tokio::time::Interval,
    stats: Arc<Stats>,
}

/// Why `serve` returned.
enum Served {
    Lost(String),
    End(SessionEnd),
}

type Step = Result<(), Served>;

impl Actor {
    async fn run(mut self, mut conn: Conn) -> SessionEnd {
        loop {
            match self.serve(&mut conn).await {
                Served::End(end) => {
                    conn.close().await;
                    return end;
                }
                Served::Lost(reason) => {
                    tracing::info!(session = %self.session_id, "data channel lost: {reason}");
                    let _ = self.events_tx.try_send(SessionEvent::Reconnecting { reason });
                    drop(conn);
                    match self.reconnect().await {
                        Ok((c, attempts)) => {
                            conn = c;
                            let _ = self.events_tx.try_send(SessionEvent::Reconnected { attempts });
                        }
                        Err(end) => return end,
                    }
                }
            }
        }
    }

    /// ResumeSession → dial → open message with the new token, with backoff, within the resume budget.
    /// Then every unacked message is sent again, with its old sequence number.
    async fn reconnect(&mut self) -> Result<(Conn, u32), SessionEnd> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100 + fastrand::u64(0..100));
        let mut attempts = 0u32;
        let mut last_error;
        loop {
            attempts += 1;
            let attempt = async {
                let out = self
                    .ssm
                    .resume_session()
                    .session_id(&self.session_id)
                    .send()
                    .await
                    .map_err(|e| classify_resume(&self.session_id, e))?;
                let token = out.token_value().unwrap_or_default().to_string();
                if token.is_empty() {
                    // The plugin's reading too: an empty token means the session timed out.
                    return Err(Err(TunnelError::SessionExpired {
                        session_id: self.session_id.clone(),
                    }));
                }
                if let Some(url) = out.stream_url().filter(|u| !u.is_empty()) {
                    self.stream_url = url.to_string();
                }
                connect(
                    &self.stream_url,
                    &token,
                    &self.client_id,
                    self.signer.as_ref(),
                    self.opts.handshake_timeout,
                    self.opts.dead_after,
                )
                .await
                .map_err(Ok)
            };
            let result = tokio::select! {
                r = attempt => r,
                _ = self.terminate_rx.recv() => return Err(SessionEnd::Terminated { acked: false }),
            };
            match result {
                Ok(conn) => {
                    self.last_rx = Instant::now();
                    self.ping.reset();
                    let mut sent = Ok(());
                    Stats::bump(&self.stats.resumes, 1);
                    for frame in self.outbound.resend_all(Instant::now()) {
                        Stats::bump(&self.stats.retransmitted, 1);
                        sent = sent.and_then(|()| conn.binary(frame));
                    }
                    match sent {
                        Ok(()) => return Ok((conn, attempts)),
                        Err(_) => last_error = "the new WebSocket failed at once".to_string(),
                    }
                }
                // Retryable: the socket or the API call failed for now.
                Err(Ok(e)) => last_error = crate::error::one_line(&e),
                // Final: the session is gone.
                Err(Err(e)) => return Err(SessionEnd::Failed(e)),
            }
            if started.elapsed() + delay > self.opts.resume_budget {
                return Err(SessionEnd::Failed(TunnelError::ResumeFailed {
                    session_id: self.session_id.clone(),
                    attempts,
                    last_error,
                }));
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.terminate_rx.recv() => return Err(SessionEnd::Terminated { acked: false }),
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn serve(&mut self, conn: &mut Conn) -> Served {
        loop {
            if let Err(s) = self.step(conn).await {
                return s;
            }
        }
    }

    async fn step(&mut self, conn: &mut Conn) -> Step {
        self.send_pending(conn)?;
        let congested = conn.congested();
        let can_take = self.handshake.is_some()
            && !self.paused
            && !congested
            && self.pending.is_empty()
            && self.outbound.has_room();
        let deadline = if self.paused {
            None
        } else {
            self.outbound.next_deadline()
        };
        let blocked_tx = if self.deliver_blocked {
            Some(self.app_tx.clone())
        } else {
            None
        };
        let drained = conn.drained.clone();
        tokio::select! {
            ev = conn.events.recv() => {
                let Some(ev) = ev else { return Err(Served::Lost("the WebSocket reader stopped".into())) };
                self.handle_event(conn, ev)?;
                for _ in 0..256 {
                    match conn.events.try_recv() {
                        Ok(ev) => self.handle_event(conn, ev)?,
                        Err(_) => break,
                    }
                }
            }
            item = self.out_rx.recv(), if can_take => {
                match item {
                    Some(item) => self.take_item(item),
                    // The port logic is gone (the tunnel was dropped): end the session.
                    None => return self.terminate(conn).await,
                }
                while self.pending.is_empty() && self.outbound.has_room() && !conn.congested() {
                    match self.out_rx.try_recv() {
                        Ok(item) => {
                            self.take_item(item);
                            self.send_pending(conn)?;
                        }
                        Err(_) => break,
                    }
                }
            }
            _ = drained.notified(), if congested => {}
            permit = async { blocked_tx?.reserve_owned().await.ok() }, if self.deliver_blocked => {
                self.deliver_blocked = false;
                if let Some(permit) = permit
                    && let Some(d) = self.inbound.pop_ready()
                {
                    permit.send(d.payload);
                }
                self.drain_inbound(conn)?;
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => {
                let (frames, worst) = self.outbound.due(Instant::now(), 256);
                if worst > self.opts.max_retransmits {
                    return Err(Served::End(SessionEnd::Failed(TunnelError::Unresponsive {
                        session_id: self.session_id.clone(),
                        retransmits: worst,
                    })));
                }
                Stats::bump(&self.stats.retransmitted, frames.len() as u64);
                for frame in frames {
                    conn.binary(frame)?;
                }
            }
            _ = self.ping.tick() => {
                let silent = self.last_rx.elapsed();
                if silent > self.opts.dead_after {
                    return Err(Served::Lost(format!("nothing received for {}s", silent.as_secs())));
                }
                conn.send(Message::Ping(Bytes::from_static(b"keepalive")))?;
            }
            _ = self.terminate_rx.recv() => return self.terminate(conn).await,
        }
        Ok(())
    }

    fn take_item(&mut self, item: OutItem) {
        match item {
            OutItem::Data(bytes) => {
                let max = self.opts.max_payload.max(1);
                let mut rest = bytes;
                while rest.len() > max {
                    let chunk = rest.split_to(max);
                    self.pending.push_back((PayloadType::Output, chunk, None));
                }
                if !rest.is_empty() {
                    self.pending.push_back((PayloadType::Output, rest, None));
                }
            }
            OutItem::Flag(flag, waiter) => {
                self.pending
                    .push_back((PayloadType::Flag, flag.payload(), waiter))
            }
        }
    }

    fn send_pending(&mut self, conn: &Conn) -> Step {
        while !self.paused && self.outbound.has_room() {
            let Some((payload_type, payload, waiter)) = self.pending.pop_front() else {
                break;
            };
            let (seq, frame) = self.outbound.push(payload_type, payload, Instant::now());
            Stats::bump(&self.stats.messages_sent, 1);
            if let Some(w) = waiter {
                self.flag_waiters.insert(seq, w);
            }
            conn.binary(frame)?;
        }
        Ok(())
    }

    fn handle_event(&mut self, conn: &Conn, ev: ConnEvent) -> Step {
        self.last_rx = Instant::now();
        match ev {
            ConnEvent::Alive => Ok(()),
            ConnEvent::Closed(reason) => Err(Served::Lost(reason)),
            ConnEvent::Msg(msg) => self.handle_message(conn, msg),
        }
    }

    fn handle_message(&mut self, conn: &Conn, msg: ClientMessage) -> Step {
        match msg.message_type.as_str() {
            ACKNOWLEDGE => {
                self.paused = false;
                let Ok(ack) = serde_json::from_slice::<Ack>(&msg.payload) else {
                    tracing::warn!("ignoring an acknowledge message with an unreadable payload");
                    return Ok(());
                };
                if self.outbound.on_ack(ack.sequence_number, Instant::now()) == AckOutcome::Acked
                    && let Some(w) = self.flag_waiters.remove(&ack.sequence_number)
                {
                    let _ = w.send(());
                }
                Ok(())
            }
            OUTPUT_STREAM_DATA => {
                self.paused = false;
                Stats::bump(&self.stats.messages_received, 1);
                let verdict = self
                    .inbound
                    .offer(msg.sequence_number, msg.payload_type, msg.payload.clone());
                match verdict {
                    Verdict::Refused => Stats::bump(&self.stats.refused, 1),
                    Verdict::Duplicate => Stats::bump(&self.stats.duplicates, 1),
                    Verdict::Accepted => {}
                }
                match verdict {
                    Verdict::Accepted => conn.binary(Ack::for_message(&msg).encode())?,
                    // Re-acked, so a lost ack is repaired by the agent's next retransmission. Skipped
                    // while our writes are backed up: the agent will ask again.
                    Verdict::Duplicate if !conn.congested() => {
                        conn.binary(Ack::for_message(&msg).encode())?
                    }
                    Verdict::Duplicate | Verdict::Refused => {}
                }
                self.drain_inbound(conn)
            }
            CHANNEL_CLOSED => {
                let closed: ChannelClosed = serde_json::from_slice(&msg.payload).unwrap_or_default();
                Err(Served::End(SessionEnd::Closed {
                    output: closed.output,
                }))
            }
            PAUSE_PUBLICATION => {
                self.paused = true;
                Ok(())
            }
            START_PUBLICATION => {
                self.paused = false;
                Ok(())
            }
            other => {
                tracing::debug!("ignoring a {other} message");
                Ok(())
            }
        }
    }

    /// Hands in-order messages over: Output to the application (while its queue has room), the rest
    /// (handshake, flags) handled here.
    fn drain_inbound(&mut self, conn: &Conn) -> Step {
        while !self.deliver_blocked {
            let Some(next_type) = self.inbound.peek_ready().map(|d| d.payload_type) else {
                break;
            };
            if next_type == PayloadType::Output {
                match self.app_tx.try_reserve() {
                    Ok(permit) => {
                        if let Some(d) = self.inbound.pop_ready() {
                            permit.send(d.payload);
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(())) => self.deliver_blocked = true,
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        // The port logic is gone; the session is ending anyway.
                        self.inbound.pop_ready();
                    }
                }
                continue;
            }
            let Some(d) = self.inbound.pop_ready() else { break };
            match d.payload_type {
                PayloadType::HandshakeRequest => self.on_handshake_request(conn, &d.payload)?,
                PayloadType::HandshakeComplete => self.on_handshake_complete(&d.payload),
                PayloadType::Flag => {
                    if Flag::from_payload(&d.payload) == Some(Flag::ConnectToPortError) {
                        let _ = self.events_tx.try_send(SessionEvent::AgentCouldNotConnect);
                    }
                }
                other => tracing::debug!("ignoring an agent message of payload type {other:?}"),
            }
        }
        Ok(())
    }

    fn on_handshake_request(&mut self, conn: &Conn, payload: &[u8]) -> Step {
        let request: HandshakeRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                return Err(Served::End(SessionEnd::Failed(TunnelError::Handshake {
                    session_id: self.session_id.clone(),
                    reason: format!("unreadable HandshakeRequest: {e}"),
                })));
            }
        };
        let mut processed = Vec::new();
        let mut properties = serde_json::Value::Null;
        let mut failure = None;
        for action in &request.requested_client_actions {
            let status = if action.action_type == "SessionType" {
                let session_type = action
                    .action_parameters
                    .get("SessionType")
                    .and_then(|v| v.as_str());
                if session_type == Some("Port") {
                    properties = action
                        .action_parameters
                        .get("Properties")
                        .cloned()
                        .unwrap_or_default();
                    ACTION_SUCCESS
                } else {
                    failure = Some(format!(
                        "the agent started a {} session, not a port-forwarding one",
                        session_type.unwrap_or("(unnamed)")
                    ));
                    ACTION_FAILED
                }
            } else {
                ACTION_UNSUPPORTED
            };
            processed.push(ProcessedClientAction {
                action_type: action.action_type.clone(),
                action_status: status,
                action_result: None,
                error: if status == ACTION_SUCCESS {
                    String::new()
                } else {
                    format!("{} is not supported by thespctl", action.action_type)
                },
            });
        }
        let response = HandshakeResponse {
            client_version: CLIENT_VERSION.into(),
            processed_client_actions: processed,
            errors: None,
        };
        let body = serde_json::to_vec(&response).unwrap_or_default();
        let (_, frame) =
            self.outbound
                .push(PayloadType::HandshakeResponse, Bytes::from(body), Instant::now());
        conn.binary(frame)?;
        if let Some(reason) = failure {
            return Err(Served::End(SessionEnd::Failed(TunnelError::Handshake {
                session_id: self.session_id.clone(),
                reason,
            })));
        }
        self.agent = Some(AgentInfo {
            version: request.agent_version,
            properties,
        });
        Ok(())
    }

    fn on_handshake_complete(&mut self, payload: &[u8]) {
        let complete: HandshakeComplete = serde_json::from_slice(payload).unwrap_or(HandshakeComplete {
            time_to_complete_ns: 0,
            customer_message: String::new(),
        });
        let agent = self.agent.take().unwrap_or(AgentInfo {
            version: String::new(),
            properties: serde_json::Value::Null,
        });
        let handshake = decide_mode(&agent.version, agent.properties, complete.customer_message);
        if !handshake.customer_message.is_empty() {
            let _ = self
                .events_tx
                .try_send(SessionEvent::AgentMessage(handshake.customer_message.clone()));
        }
        self.handshake = Some(handshake.clone());
        if let Some(tx) = self.handshake_tx.take() {
            let _ = tx.send(handshake);
        }
    }

    /// In-band TerminateSession (when the agent understands it), a short wait for its ack, then done.
    async fn terminate(&mut self, conn: &mut Conn) -> Step {
        let flag_ok = self.handshake.as_ref().is_some_and(|h| h.terminate_flag);
        if !flag_ok {
            return Err(Served::End(SessionEnd::Terminated { acked: false }));
        }
        // The flag jumps the queue of application data: the user asked to stop.
        let (seq, frame) = self.outbound.push(
            PayloadType::Flag,
            Flag::TerminateSession.payload(),
            Instant::now(),
        );
        if conn.binary(frame).is_err() {
            return Err(Served::End(SessionEnd::Terminated { acked: false }));
        }
        let deadline = Instant::now() + self.opts.close_ack_wait;
        while self.outbound.is_unacked(seq) {
            let ev = tokio::select! {
                ev = conn.events.recv() => ev,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match ev {
                Some(ConnEvent::Msg(msg)) if msg.message_type == ACKNOWLEDGE => {
                    if let Ok(ack) = serde_json::from_slice::<Ack>(&msg.payload) {
                        self.outbound.on_ack(ack.sequence_number, Instant::now());
                    }
                }
                Some(ConnEvent::Msg(msg)) if msg.message_type == CHANNEL_CLOSED => break,
                None | Some(ConnEvent::Closed(_)) => break,
                Some(_) => {}
            }
        }
        Err(Served::End(SessionEnd::Terminated {
            acked: !self.outbound.is_unacked(seq),
        }))
    }
}

/// Mode selection from the agent's side of the handshake (the protocol note, §8.1).
pub fn decide_mode(
    agent_version: &str,
    properties: serde_json::Value,
    customer_message: String,
) -> Handshake {
    let version = Version::parse(agent_version);
    let above = |limit: &str| match (&version, Version::parse(limit)) {
        (Some(v), Some(l)) => *v > l,
        _ => false,
    };
    let local_port_forwarding =
        properties.get("type").and_then(|t| t.as_str()) == Some("LocalPortForwarding");
    let mux = local_port_forwarding && above(MUX_MIN_EXCLUSIVE);
    Handshake {
        agent_version: agent_version.to_string(),
        mux,
        keepalive: mux && !above(KEEPALIVE_MAX_INCLUSIVE),
        terminate_flag: mux || above(TERMINATE_FLAG_MIN_EXCLUSIVE),
        properties,
        customer_message,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// ResumeSession errors: `Ok(_)` may be retried, `Err(_)` ends the session.
fn classify_resume<E, R>(session_id: &str, e: SdkError<E, R>) -> Result<TunnelError, TunnelError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let final_codes = [
        "DoesNotExistException",
        "AccessDeniedException",
        "InvalidSessionId",
    ];
    let code = e.code().map(str::to_string);
    let err = super::api_error("ResumeSession", e);
    match code {
        Some(c) if final_codes.contains(&c.as_str()) => Err(match c.as_str() {
            "DoesNotExistException" => TunnelError::SessionExpired {
                session_id: session_id.to_string(),
            },
            _ => err,
        }),
        _ => Ok(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_follows_the_agent_version_as_the_plugin_decides() {
        let props = serde_json::json!({"type": "LocalPortForwarding", "portNumber": "80"});
        let new = decide_mode("3.3.1142.0", props.clone(), String::new());
        assert!(new.mux && !new.keepalive && new.terminate_flag);
        let mid = decide_mode("3.1.1511.0", props.clone(), String::new());
        assert!(
            mid.mux && mid.keepalive,
            "keepalive up to and including 3.1.1511.0"
        );
        let edge = decide_mode("3.0.196.0", props.clone(), String::new());
        assert!(!edge.mux, "mux only above 3.0.196.0");
        assert!(edge.terminate_flag);
        let ancient = decide_mode("2.3.722.0", props, String::new());
        assert!(!ancient.mux && !ancient.terminate_flag);
        let ssh = decide_mode(
            "3.3.1142.0",
            serde_json::json!({"portNumber": "22"}),
            String::new(),
        );
        assert!(!ssh.mux, "no type: not LocalPortForwarding");
    }

    #[test]
    fn presigned_urls_are_recognised_by_their_query() {
        assert!(is_presigned(
            "wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe&X-Amz-Signature=ab"
        ));
        assert!(!is_presigned(
            "wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe"
        ));
        assert_eq!(redact_url("wss://h/p?X-Amz-Signature=secret"), "wss://h/p");
    }

    #[tokio::test]
    async fn the_upgrade_is_signed_for_ssmmessages() {
        let creds =
            aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", Some("tok".into()), None, "test");
        let signer = Signer {
            credentials: SharedCredentialsProvider::new(creds),
            region: "eu-west-1".into(),
        };
        let headers = signer
            .headers("wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe")
            .await
            .unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let auth = get("authorization").unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/eu-west-1/ssmmessages/aws4_request"), "{auth}");
        assert!(get("x-amz-date").is_some());
        assert_eq!(get("x-amz-security-token").as_deref(), Some("tok"));
    }
}
