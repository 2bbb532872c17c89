//! The client half of smux v1 (github.com/xtaci/smux, the multiplexer the agent runs) over the session's
//! Output byte stream, so that many local TCP connections share one Session Manager session.
//!
//! The concatenation of all Output payloads in each direction is one smux byte stream: frame boundaries
//! have nothing to do with message boundaries, so inbound bytes are re-framed here. A frame is
//! `version u8 = 1 | cmd u8 | length u16 LE | stream id u32 LE | data`; commands are SYN 0, FIN 1,
//! PSH 2, NOP 3. Client streams are odd and start at 3.
//!
//! smux v1 has no per-stream flow control: a stream whose local reader is slow holds up the demultiplexer
//! (bounded per-stream queues), which stops the session from accepting more Output messages, which stops
//! the acks, which makes the agent hold back. Nothing is dropped; the cost is head-of-line blocking, as
//! in the agent's own smux.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::session::OutItem;

pub const VERSION: u8 = 1;
pub const CMD_SYN: u8 = 0;
pub const CMD_FIN: u8 = 1;
pub const CMD_PSH: u8 = 2;
pub const CMD_NOP: u8 = 3;
pub const HEADER_LEN: usize = 8;

/// smux keepalive as xtaci's defaults (used only with agents that expect it: AgentVersion ≤ 3.1.1511.0).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames queued per stream before the demultiplexer waits for the local writer.
const STREAM_QUEUE: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmuxError {
    #[error("smux frame with version {0} (only version 1 is spoken)")]
    Version(u8),
    #[error("smux frame with unknown command {0}")]
    Command(u8),
    #[error("no smux data from the agent for {}s (keepalive timeout)", .0.as_secs())]
    KeepaliveTimeout(Duration),
}

/// One smux frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub cmd: u8,
    pub stream_id: u32,
    pub data: Bytes,
}

/// Encodes one frame. `data` must be at most 65 535 bytes (callers chunk below that).
pub fn encode(cmd: u8, stream_id: u32, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + data.len());
    out.put_u8(VERSION);
    out.put_u8(cmd);
    out.put_u16_le(u16::try_from(data.len()).unwrap_or(u16::MAX));
    out.put_u32_le(stream_id);
    out.put_slice(&data[..data.len().min(usize::from(u16::MAX))]);
    out.freeze()
}

/// Re-frames the inbound byte stream.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SmuxError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let version = self.buf[0];
        if version != VERSION {
            return Err(SmuxError::Version(version));
        }
        let cmd = self.buf[1];
        if cmd > CMD_NOP {
            return Err(SmuxError::Command(cmd));
        }
        let len = usize::from(u16::from_le_bytes([self.buf[2], self.buf[3]]));
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let stream_id = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        self.buf.advance(HEADER_LEN);
        let data = self.buf.split_to(len).freeze();
        Ok(Some(Frame { cmd, stream_id, data }))
    }
}

/// The smux client: opens streams and routes inbound frames to them.
#[derive(Debug)]
pub struct Client {
    streams: Mutex<Streams>,
    opening: tokio::sync::Mutex<()>,
    out: mpsc::Sender<OutItem>,
    /// Largest PSH data per frame, chosen so one frame fills one Output message.
    pub max_data: usize,
}

#[derive(Debug)]
struct Streams {
    next_id: u32,
    routes: HashMap<u32, mpsc::Sender<Bytes>>,
}

impl Client {
    /// `out` carries encoded frames to the session (each becomes one Output message); `max_data` is the
    /// data size per PSH frame.
    pub fn new(out: mpsc::Sender<OutItem>, max_data: usize) -> Arc<Client> {
        Arc::new(Client {
            streams: Mutex::new(Streams {
                // Bumped by 2 before use, so the first stream is 3, as xtaci's client numbers them.
                next_id: 1,
                routes: HashMap::new(),
            }),
            opening: tokio::sync::Mutex::new(()),
            out,
            max_data: max_data.clamp(1, usize::from(u16::MAX)),
        })
    }

    /// Opens a stream (sends SYN). Fails only when the session is gone.
    pub async fn open(self: &Arc<Self>) -> Option<(StreamReader, StreamWriter)> {
        // SYNs go out in stream-id order even when connections open at the same moment.
        let _ordered = self.opening.lock().await;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let id = {
            let mut s = self.streams.lock().ok()?;
            s.next_id = s.next_id.wrapping_add(2);
            let id = s.next_id;
            s.routes.insert(id, tx);
            id
        };
        let reader = StreamReader {
            id,
            rx,
            client: self.clone(),
        };
        self.out
            .send(OutItem::Data(encode(CMD_SYN, id, &[])))
            .await
            .ok()?;
        let writer = StreamWriter {
            id,
            client: self.clone(),
            fin_sent: false,
        };
        Some((reader, writer))
    }

    pub fn open_streams(&self) -> usize {
        self.streams.lock().map(|s| s.routes.len()).unwrap_or(0)
    }

    fn route(&self, id: u32) -> Option<mpsc::Sender<Bytes>> {
        self.streams.lock().ok()?.routes.get(&id).cloned()
    }

    fn forget(&self, id: u32) {
        if let Ok(mut s) = self.streams.lock() {
            s.routes.remove(&id);
        }
    }

    /// Reads the inbound byte stream until it ends, delivering PSH data to streams and ending streams on
    /// FIN. With `keepalive` = (interval, timeout), sends NOPs every interval and fails after `timeout`
    /// without inbound bytes (xtaci's defaults are 10 s and 30 s).
    pub async fn run(
        self: Arc<Self>,
        mut inbound: mpsc::Receiver<Bytes>,
        keepalive: Option<(Duration, Duration)>,
    ) -> Result<(), SmuxError> {
        let mut decoder = Decoder::default();
        let (interval, timeout) = keepalive.unwrap_or((KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT));
        let mut nop = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut last_inbound = Instant::now();
        loop {
            let chunk = tokio::select! {
                chunk = inbound.recv() => chunk,
                _ = nop.tick(), if keepalive.is_some() => {
                    if last_inbound.elapsed() > timeout {
                        return Err(SmuxError::KeepaliveTimeout(timeout));
                    }
                    if self.out.send(OutItem::Data(encode(CMD_NOP, 0, &[]))).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            };
            let Some(chunk) = chunk else { return Ok(()) };
            decoder.push(&chunk);
            while let Some(frame) = decoder.next_frame()? {
                match frame.cmd {
                    CMD_PSH => {
                        if let Some(route) = self.route(frame.stream_id) {
                            // Waiting here is the backpressure: see the module comment. A stream whose
                            // local side is gone has dropped its receiver; its data is discarded.
                            if route.send(frame.data).await.is_err() {
                                self.forget(frame.stream_id);
                            }
                        }
                    }
                    CMD_FIN => self.forget(frame.stream_id),
                    // The agent never opens streams towards the client; NOPs only prove liveness.
                    _ => {}
                }
            }
            // Time spent blocked on a slow local reader does not count as agent silence.
            last_inbound = Instant::now();
        }
    }
}

/// The receiving half: data the agent sent on this stream.
#[derive(Debug)]
pub struct StreamReader {
    pub id: u32,
    rx: mpsc::Receiver<Bytes>,
    client: Arc<Client>,
}

impl StreamReader {
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        // Later data for this stream is discarded by the demultiplexer.
        self.client.forget(self.id);
    }
}

/// The sending half: PSH frames, then FIN.
#[derive(Debug)]
pub struct StreamWriter {
    pub id: u32,
    client: Arc<Client>,
    fin_sent: bool,
}

impl StreamWriter {
    pub fn max_data(&self) -> usize {
        self.client.max_data
    }

    /// Sends `data` as PSH frames; waits while the session's send window is full.
    pub async fn send(&mut self, data: &[u8]) -> bool {
        for chunk in data.chunks(self.client.max_data) {
            if self
                .client
                .out
                .send(OutItem::Data(encode(CMD_PSH, self.id, chunk)))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Half-closes the stream towards the agent.
    pub async fn fin(&mut self) {
        if !self.fin_sent {
            self.fin_sent = true;
            let _ = self
                .client
                .out
                .send(OutItem::Data(encode(CMD_FIN, self.id, &[])))
                .await;
        }
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.fin_sent {
            // Best effort when the task ends without an orderly FIN (an error): never block in Drop.
            let _ = self
                .client
                .out
                .try_send(OutItem::Data(encode(CMD_FIN, self.id, &[])));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_little_endian_with_version_1() {
        let f = encode(CMD_PSH, 3, b"abc");
        assert_eq!(&f[..], &[1, 2, 3, 0, 3, 0, 0, 0, b'a', b'b', b'c']);
    }

    #[test]
    fn decoder_reframes_across_chunk_boundaries_and_shared_chunks() {
        let mut all = Vec::new();
        all.extend_from_slice(&encode(CMD_SYN, 3, &[]));
        all.extend_from_slice(&encode(CMD_PSH, 3, b"hello"));
        all.extend_from_slice(&encode(CMD_FIN, 3, &[]));
        let mut d = Decoder::default();
        let mut frames = Vec::new();
        for byte in &all {
            d.push(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1].data, Bytes::from_static(b"hello"));
        assert_eq!(frames[2].cmd, CMD_FIN);
    }

    #[test]
    fn a_bad_version_is_fatal() {
        let mut d = Decoder::default();
        d.push(&[2, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(SmuxError::Version(2)));
    }

    #[tokio::test]
    async fn client_streams_are_odd_from_3_and_data_is_routed() {
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let client = Client::new(out_tx, 1016);
        let a = client.open().await.unwrap();
        let (mut b_read, _b_write) = client.open().await.unwrap();
        assert_eq!((a.0.id, b_read.id), (3, 5));
        match out_rx.recv().await.unwrap() {
            OutItem::Data(frame) => assert_eq!(frame, encode(CMD_SYN, 3, &[])),
            other => panic!("{other:?}"),
        }
        let (in_tx, in_rx) = mpsc::channel(16);
        let runner = tokio::spawn(client.clone().run(in_rx, None));
        let mut wire = encode(CMD_PSH, 5, b"to-b").to_vec();
        wire.extend_from_slice(&encode(CMD_FIN, 5, &[]));
        in_tx.send(Bytes::from(wire)).await.unwrap();
        assert_eq!(b_read.recv().await.unwrap(), Bytes::from_static(b"to-b"));
        assert_eq!(b_read.recv().await, None, "FIN ends the stream");
        drop(in_tx);
        runner.await.unwrap().unwrap();
        drop(a);
    }
}
