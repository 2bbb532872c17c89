//! The agent side of the double, from the protocol note's agent rules:
//!
//! - its own sequence (HandshakeRequest is seq 0 with flags 1), 1024-byte Output payloads, a resend tick
//!   that looks only at the oldest unacked message (RTO from RTT, TCP gains, capped at 1 s);
//! - client messages: in order → process and ack, ahead → ack and buffer, behind → ack again; a message the
//!   port handler cannot take yet is left unacked (the client must retransmit);
//! - the handshake, then mux (an smux v1 server that dials the target per stream, Flag 3 when it cannot)
//!   or basic mode (one target connection, DisconnectToPort, redial on the next data);
//! - TerminateSession (flag or API) and `channel_closed`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::wire::{self, Frame};
use super::{Session, Shared};

pub enum Input {
    Connected {
        conn: u64,
        tx: mpsc::UnboundedSender<WsOut>,
        client_version: String,
    },
    Disconnected {
        conn: u64,
    },
    Frame(Frame),
    ApiTerminate,
    ServiceClose(String),
}

pub enum WsOut {
    Frame(Vec<u8>),
    Close(u16, String),
}

enum PortOut {
    Bytes(Vec<u8>),
    Flag(u32),
}

enum BasicIn {
    Data(Vec<u8>),
    Disconnect,
}

enum Port {
    Mux(mpsc::Sender<Vec<u8>>),
    Basic(mpsc::Sender<BasicIn>),
}

struct Sent {
    frame: Vec<u8>,
    first: Instant,
    last: Instant,
    resent: bool,
}

#[derive(PartialEq)]
enum Phase {
    AwaitingClient,
    RequestSent,
    Ready,
}

const PAYLOAD: usize = 1024;
const BUFFER_CAP: usize = 100_000;

fn version(s: &str) -> Vec<u64> {
    s.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

fn newer(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (version(a), version(b));
    let n = x.len().max(y.len());
    x.resize(n, 0);
    y.resize(n, 0);
    x > y
}

struct Agent {
    shared: Arc<Shared>,
    session: Arc<Session>,
    document: String,
    params: serde_json::Value,
    link: Option<(u64, mpsc::UnboundedSender<WsOut>)>,
    client_version: String,
    expected: i64,
    buffer: BTreeMap<i64, Frame>,
    next_seq: i64,
    unacked: BTreeMap<i64, Sent>,
    srtt: Option<f64>,
    rttvar: f64,
    rto: Duration,
    phase: Phase,
    port: Option<Port>,
    out_tx: mpsc::Sender<PortOut>,
    out_rx: mpsc::Receiver<PortOut>,
    held: Option<Vec<u8>>,
    sent_count: u64,
    keepalive: bool,
    last_client_smux: Arc<std::sync::Mutex<Instant>>,
    done: bool,
}

fn param(params: &serde_json::Value, key: &str) -> Option<String> {
    params[key][0].as_str().map(str::to_string)
}

pub async fn run(
    shared: Arc<Shared>,
    session: Arc<Session>,
    document: String,
    params: serde_json::Value,
    mut rx: mpsc::UnboundedReceiver<Input>,
) {
    let (out_tx, out_rx) = mpsc::channel(1024);
    let mut agent = Agent {
        shared: shared.clone(),
        session,
        document,
        params,
        link: None,
        client_version: String::new(),
        expected: 0,
        buffer: BTreeMap::new(),
        next_seq: 0,
        unacked: BTreeMap::new(),
        srtt: None,
        rttvar: 0.0,
        rto: Duration::from_millis(200),
        phase: Phase::AwaitingClient,
        port: None,
        out_tx,
        out_rx,
        held: None,
        sent_count: 0,
        keepalive: false,
        last_client_smux: Arc::new(std::sync::Mutex::new(Instant::now())),
        done: false,
    };
    let mut resend = tokio::time::interval(shared.config.resend_interval);
    let ka = shared.config.smux_keepalive_interval;
    let mut nop = tokio::time::interval_at(tokio::time::Instant::now() + ka, ka);
    while !agent.done {
        let can_send =
            agent.phase == Phase::Ready && agent.link.is_some() && agent.unacked.len() < BUFFER_CAP;
        tokio::select! {
            input = rx.recv() => match input {
                Some(i) => agent.on_input(i),
                None => return,
            },
            out = agent.out_rx.recv(), if can_send => {
                if let Some(out) = out {
                    agent.on_port_out(out);
                }
            }
            _ = resend.tick() => {
                agent.drain();
                agent.resend_oldest();
            }
            _ = nop.tick(), if agent.keepalive && agent.phase == Phase::Ready => {
                let silent = agent.last_client_smux.lock().unwrap().elapsed();
                if silent > ka * 3 {
                    shared.violation(format!("smux keepalive is on but the client sent nothing for {silent:?}"));
                    *agent.last_client_smux.lock().unwrap() = Instant::now();
                }
                agent.send_data(1, &[1, 3, 0, 0, 0, 0, 0, 0]);
            }
        }
    }
}

impl Agent {
    fn transmit(&mut self, frame: Vec<u8>) {
        if let Some((_, tx)) = &self.link {
            let _ = tx.send(WsOut::Frame(frame));
        }
    }

    /// Sends a sequenced agent message, with the reorder/duplicate faults applied to first transmissions.
    fn send_data(&mut self, payload_type: u32, payload: &[u8]) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let flags = if seq == 0 { 1 } else { 0 };
        let (frame, _) = wire::build("output_stream_data", seq, flags, payload_type, payload);
        let now = Instant::now();
        self.unacked.insert(
            seq,
            Sent {
                frame: frame.clone(),
                first: now,
                last: now,
                resent: false,
            },
        );
        if payload_type == 1 {
            self.shared
                .controls
                .output_bytes
                .fetch_add(payload.len(), Ordering::SeqCst);
        }
        self.sent_count += 1;
        let c = &self.shared.controls;
        if c.reorder.load(Ordering::SeqCst) && self.held.is_none() && self.sent_count % 5 == 4 {
            self.held = Some(frame);
            self.shared.record(|r| r.agent_reordered += 1);
            return;
        }
        let dup = c.duplicate.load(Ordering::SeqCst) && self.sent_count % 7 == 3;
        if dup {
            self.transmit(frame.clone());
            self.shared.record(|r| r.agent_duplicated += 1);
        }
        self.transmit(frame);
        if let Some(h) = self.held.take() {
            self.transmit(h);
        }
    }

    fn on_port_out(&mut self, first: PortOut) {
        let mut buf = Vec::new();
        let mut flag = None;
        match first {
            PortOut::Bytes(b) => buf = b,
            PortOut::Flag(f) => flag = Some(f),
        }
        // Like the agent reading its smux socket pair 1024 bytes at a time: whatever is queued is
        // coalesced, then cut into 1024-byte payloads.
        while flag.is_none() && buf.len() < PAYLOAD {
            match self.out_rx.try_recv() {
                Ok(PortOut::Bytes(b)) => buf.extend_from_slice(&b),
                Ok(PortOut::Flag(f)) => flag = Some(f),
                Err(_) => break,
            }
        }
        for chunk in buf.chunks(PAYLOAD) {
            self.send_data(1, chunk);
        }
        if let Some(f) = flag {
            self.send_data(10, &f.to_be_bytes());
        }
    }

    fn resend_oldest(&mut self) {
        if self.link.is_none() {
            return;
        }
        if let Some(h) = self.held.take() {
            self.transmit(h);
        }
        let rto = self.rto;
        let Some((_, sent)) = self.unacked.iter_mut().next() else {
            return;
        };
        if sent.last.elapsed() < rto {
            return;
        }
        sent.last = Instant::now();
        sent.resent = true;
        let frame = sent.frame.clone();
        self.shared.record(|r| r.agent_retransmits += 1);
        self.transmit(frame);
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Connected {
                conn,
                tx,
                client_version,
            } => {
                self.link = Some((conn, tx));
                self.client_version = client_version;
                if self.phase == Phase::AwaitingClient {
                    self.send_handshake_request();
                }
            }
            Input::Disconnected { conn } => {
                if self.link.as_ref().is_some_and(|(c, _)| *c == conn) {
                    self.link = None;
                }
            }
            Input::Frame(f) => self.on_frame(f),
            Input::ApiTerminate => self.end(""),
            Input::ServiceClose(output) => self.end(&output),
        }
    }

    fn send_handshake_request(&mut self) {
        let mut props = serde_json::json!({
            "portNumber": param(&self.params, "portNumber").unwrap_or_else(|| "80".into()),
            "type": "LocalPortForwarding",
            "localPortNumber": param(&self.params, "localPortNumber").unwrap_or_default(),
        });
        if self.document.ends_with("ToRemoteHost") {
            props["host"] = serde_json::json!(param(&self.params, "host").unwrap_or_default());
        }
        let body = serde_json::json!({
            "AgentVersion": self.shared.config.agent_version,
            "RequestedClientActions": [{
                "ActionType": "SessionType",
                "ActionParameters": {"SessionType": "Port", "Properties": props}
            }]
        });
        self.send_data(5, body.to_string().as_bytes());
        self.phase = Phase::RequestSent;
    }

    fn on_frame(&mut self, f: Frame) {
        match f.kind.as_str() {
            "acknowledge" => self.on_ack(&f),
            "input_stream_data" => self.on_client_data(f),
            other => self.shared.violation(format!("client sent a {other} message")),
        }
    }

    fn on_ack(&mut self, f: &Frame) {
        if f.flags != 3 || f.seq != 0 || f.payload_type != 0 {
            self.shared.violation(format!(
                "ack with flags {} seq {} payload type {} (expected 3, 0, 0)",
                f.flags, f.seq, f.payload_type
            ));
        }
        let body: serde_json::Value = serde_json::from_slice(&f.payload).unwrap_or_default();
        if body["AcknowledgedMessageType"] != "output_stream_data" || body["IsSequentialMessage"] != true {
            self.shared.violation(format!("malformed ack payload {body}"));
        }
        let Some(seq) = body["AcknowledgedMessageSequenceNumber"].as_i64() else {
            return;
        };
        match self.unacked.remove(&seq) {
            Some(sent) => {
                if !sent.resent {
                    let rtt = sent.first.elapsed().as_secs_f64();
                    match self.srtt {
                        None => {
                            self.srtt = Some(rtt);
                            self.rttvar = rtt / 2.0;
                        }
                        Some(s) => {
                            self.rttvar = 0.75 * self.rttvar + 0.25 * (s - rtt).abs();
                            self.srtt = Some(0.875 * s + 0.125 * rtt);
                        }
                    }
                    let rto = self.srtt.unwrap_or(rtt) + (4.0 * self.rttvar).max(0.010);
                    self.rto = Duration::from_secs_f64(rto.min(1.0));
                }
            }
            None if seq < self.next_seq => self.shared.record(|r| r.client_reacks += 1),
            None => self
                .shared
                .violation(format!("ack of agent seq {seq}, never sent")),
        }
    }

    fn ack(&mut self, f: &Frame) {
        let c = &self.shared.controls;
        if c.drop_ack_of.load(Ordering::SeqCst) == f.seq as u64 {
            c.drop_ack_of.store(u64::MAX, Ordering::SeqCst);
            self.shared.record(|r| r.acks_dropped.push(f.seq));
            return;
        }
        self.shared.record(|r| r.acks_sent += 1);
        self.transmit(wire::ack_of(f));
    }

    fn on_client_data(&mut self, f: Frame) {
        if f.flags != 0 {
            self.shared.violation(format!(
                "client data seq {} with flags {} (clients send 0)",
                f.seq, f.flags
            ));
        }
        if f.seq < self.expected || self.buffer.contains_key(&f.seq) {
            self.shared.record(|r| r.client_duplicates.push(f.seq));
            self.ack(&f);
            return;
        }
        if f.seq > self.expected {
            if self.buffer.len() < BUFFER_CAP {
                self.ack(&f);
                self.buffer.insert(f.seq, f);
            }
            return;
        }
        if !self.process(&f) {
            self.shared.record(|r| r.not_ready += 1);
            return;
        }
        self.ack(&f);
        self.expected += 1;
        self.drain();
    }

    /// Processes buffered (already acked) messages that are now in order. Also run on every resend
    /// tick: a buffered message the handler could not take must not wait for more client traffic.
    fn drain(&mut self) {
        while let Some(next) = self.buffer.remove(&self.expected) {
            if !self.process(&next) {
                self.buffer.insert(next.seq, next);
                break;
            }
            self.expected += 1;
        }
    }

    /// Hands a client message to the session logic; false when the handler cannot take it yet.
    fn process(&mut self, f: &Frame) -> bool {
        match f.payload_type {
            6 => {
                if self.phase != Phase::RequestSent {
                    self.shared.violation("HandshakeResponse outside the handshake");
                    return true;
                }
                if f.seq != 0 {
                    self.shared
                        .violation(format!("HandshakeResponse has client seq {} (must be 0)", f.seq));
                }
                let body: serde_json::Value = serde_json::from_slice(&f.payload).unwrap_or_default();
                self.shared.record(|r| r.handshake_responses.push(body.clone()));
                let client_version = body["ClientVersion"].as_str().unwrap_or_default().to_string();
                let ok = body["ProcessedClientActions"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["ActionType"] == "SessionType" && x["ActionStatus"] == 1)
                });
                if !ok {
                    self.end("handshake failed");
                    return true;
                }
                self.start_port(&client_version);
                let complete = serde_json::json!({
                    "HandshakeTimeToComplete": 1_500_000,
                    "CustomerMessage": self.shared.config.customer_message,
                });
                self.send_data(7, complete.to_string().as_bytes());
                self.phase = Phase::Ready;
                true
            }
            1 => {
                if self.phase != Phase::Ready {
                    self.shared.violation(format!(
                        "client sent application data (seq {}) before HandshakeComplete",
                        f.seq
                    ));
                    return true;
                }
                let accepted = match &self.port {
                    Some(Port::Mux(tx)) => tx.try_send(f.payload.clone()).is_ok(),
                    Some(Port::Basic(tx)) => tx.try_send(BasicIn::Data(f.payload.clone())).is_ok(),
                    None => false,
                };
                if accepted {
                    self.shared
                        .controls
                        .input_bytes
                        .fetch_add(f.payload.len(), Ordering::SeqCst);
                }
                accepted
            }
            10 => {
                let value = f
                    .payload
                    .get(..4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                let id = self.session.id.clone();
                self.shared.record(|r| r.flags.push((id, value)));
                match value {
                    1 => match &self.port {
                        Some(Port::Basic(tx)) => tx.try_send(BasicIn::Disconnect).is_ok(),
                        _ => {
                            self.shared.violation("DisconnectToPort in mux mode");
                            true
                        }
                    },
                    2 => {
                        // Ack first (the client waits for it), then cancel the session.
                        self.ack(f);
                        self.end("");
                        true
                    }
                    other => {
                        self.shared.violation(format!("unknown flag {other}"));
                        true
                    }
                }
            }
            other => {
                self.shared
                    .violation(format!("client payload type {other} in a port session"));
                true
            }
        }
    }

    fn start_port(&mut self, client_version: &str) {
        let local_pf = true;
        let agent_can_mux = newer(&self.shared.config.agent_version, "3.0.196.0");
        let client_mux = !newer("1.1.70", client_version);
        if !newer(client_version, "1.2.763.0") {
            self.shared
                .violation(format!("ClientVersion {client_version} is below 1.2.764.0"));
        }
        let target = if self.shared.config.dial_port_number {
            let port = param(&self.params, "portNumber").and_then(|p| p.parse::<u16>().ok());
            match port {
                Some(port) => std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                None => {
                    self.shared.violation(format!(
                        "StartSession without a valid portNumber: {}",
                        self.params
                    ));
                    self.shared.config.target
                }
            }
        } else {
            self.shared.config.target
        };
        if local_pf && agent_can_mux && client_mux {
            self.keepalive = !newer(&self.shared.config.agent_version, "3.1.1511.0")
                || !newer(client_version, "1.2.331.0");
            let (tx, rx) = mpsc::channel(4096);
            tokio::spawn(smux_server(
                self.shared.clone(),
                target,
                rx,
                self.out_tx.clone(),
                self.last_client_smux.clone(),
            ));
            self.port = Some(Port::Mux(tx));
        } else {
            let (tx, rx) = mpsc::channel(4096);
            tokio::spawn(basic_port(self.shared.clone(), target, rx, self.out_tx.clone()));
            self.port = Some(Port::Basic(tx));
        }
    }

    /// Cancels the session: `channel_closed` to the client, then the socket closes.
    fn end(&mut self, output: &str) {
        if self.done {
            return;
        }
        self.done = true;
        self.session.terminated.store(true, Ordering::SeqCst);
        let id = self.session.id.clone();
        self.shared.record(|r| r.sessions_closed.push(id.clone()));
        let body = serde_json::json!({
            "MessageId": uuid::Uuid::new_v4().to_string(),
            "CreatedDate": "2026-01-01T00:00:00.000Z",
            "DestinationId": self.session.target,
            "SessionId": id,
            "MessageType": "channel_closed",
            "SchemaVersion": 1,
            "Output": output,
        });
        let (frame, _) = wire::build("channel_closed", 0, 3, 0, body.to_string().as_bytes());
        self.transmit(frame);
        if let Some((_, tx)) = &self.link {
            let _ = tx.send(WsOut::Close(1000, "session terminated".into()));
        }
        self.port = None;
    }
}

fn smux_frame(cmd: u8, sid: u32, data: &[u8]) -> Vec<u8> {
    let mut f = vec![1, cmd];
    f.extend_from_slice(&(data.len() as u16).to_le_bytes());
    f.extend_from_slice(&sid.to_le_bytes());
    f.extend_from_slice(data);
    f
}

/// The agent's smux v1 server over the client's Output bytes.
async fn smux_server(
    shared: Arc<Shared>,
    target: std::net::SocketAddr,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    to_agent: mpsc::Sender<PortOut>,
    last_client: Arc<std::sync::Mutex<Instant>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut streams: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut next_expected_sid = 3u32;
    let open = Arc::new(AtomicUsize::new(0));
    while let Some(chunk) = from_client.recv().await {
        buf.extend_from_slice(&chunk);
        loop {
            if buf.len() < 8 {
                break;
            }
            if buf[0] != 1 {
                shared.violation(format!("smux frame with version {}", buf[0]));
                return;
            }
            let len = u16::from_le_bytes([buf[2], buf[3]]) as usize;
            if buf.len() < 8 + len {
                break;
            }
            let cmd = buf[1];
            let sid = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let data: Vec<u8> = buf[8..8 + len].to_vec();
            buf.drain(..8 + len);
            *last_client.lock().unwrap() = Instant::now();
            match cmd {
                0 => {
                    if sid != next_expected_sid {
                        shared.violation(format!("smux SYN for stream {sid}, expected {next_expected_sid}"));
                    }
                    next_expected_sid = sid.wrapping_add(2);
                    let (tx, rx) = mpsc::channel(64);
                    streams.insert(sid, tx);
                    let n = open.fetch_add(1, Ordering::SeqCst) + 1;
                    shared.record(|r| {
                        r.streams.push(sid);
                        r.max_open_streams = r.max_open_streams.max(n);
                    });
                    tokio::spawn(smux_stream(
                        shared.clone(),
                        target,
                        sid,
                        rx,
                        to_agent.clone(),
                        open.clone(),
                    ));
                }
                1 => {
                    streams.remove(&sid);
                }
                2 => {
                    // Waiting here is smux v1's head-of-line blocking.
                    if let Some(tx) = streams.get(&sid) {
                        let _ = tx.send(data).await;
                    }
                }
                3 => shared.record(|r| r.client_nops += 1),
                other => {
                    shared.violation(format!("smux command {other}"));
                    return;
                }
            }
        }
    }
}

async fn smux_stream(
    shared: Arc<Shared>,
    target: std::net::SocketAddr,
    sid: u32,
    mut rx: mpsc::Receiver<Vec<u8>>,
    to_agent: mpsc::Sender<PortOut>,
    open: Arc<AtomicUsize>,
) {
    shared.record(|r| r.dials += 1);
    let tcp = match TcpStream::connect(target).await {
        Ok(t) => t,
        Err(_) => {
            let _ = to_agent.send(PortOut::Flag(3)).await;
            let _ = to_agent.send(PortOut::Bytes(smux_frame(1, sid, &[]))).await;
            open.fetch_sub(1, Ordering::SeqCst);
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.into_split();
    let up = async move {
        while let Some(data) = rx.recv().await {
            if wr.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_agent
                        .send(PortOut::Bytes(smux_frame(2, sid, &buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = to_agent.send(PortOut::Bytes(smux_frame(1, sid, &[]))).await;
    };
    tokio::join!(up, down);
    open.fetch_sub(1, Ordering::SeqCst);
}

/// Basic mode: one target connection, dialled after the handshake and again after DisconnectToPort
/// (or after the target closed) when the next data arrives.
async fn basic_port(
    shared: Arc<Shared>,
    target: std::net::SocketAddr,
    mut rx: mpsc::Receiver<BasicIn>,
    to_agent: mpsc::Sender<PortOut>,
) {
    let dial = |shared: &Arc<Shared>| {
        let shared = shared.clone();
        let to_agent = to_agent.clone();
        async move {
            shared.record(|r| r.dials += 1);
            let tcp = TcpStream::connect(target).await.ok()?;
            let (mut rd, wr) = tcp.into_split();
            let dead = Arc::new(AtomicBool::new(false));
            let d = dead.clone();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; PAYLOAD];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if to_agent.send(PortOut::Bytes(buf[..n].to_vec())).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                d.store(true, Ordering::SeqCst);
            });
            Some((wr, reader, dead))
        }
    };
    let mut conn = dial(&shared).await;
    while let Some(input) = rx.recv().await {
        match input {
            BasicIn::Data(d) => {
                if conn
                    .as_ref()
                    .is_none_or(|(_, _, dead)| dead.load(Ordering::SeqCst))
                {
                    if let Some((_, r, _)) = conn.take() {
                        r.abort();
                    }
                    conn = dial(&shared).await;
                }
                if let Some((wr, _, _)) = conn.as_mut()
                    && wr.write_all(&d).await.is_err()
                {
                    conn = None;
                }
            }
            BasicIn::Disconnect => {
                if let Some((mut wr, reader, _)) = conn.take() {
                    let _ = wr.shutdown().await;
                    reader.abort();
                }
            }
        }
    }
}
