//! Sequencing, acknowledgement and retransmission of `*_stream_data` messages, without I/O.
//!
//! [`Outbound`] numbers what we send (one counter per session, never reset by a reconnect), keeps every
//! message until its ack, and says what to retransmit when. [`Inbound`] decides, per received message,
//! whether to ack it (accepted or duplicate) or leave it unacked (no room: the agent retransmits later,
//! which is how a slow local reader slows the session down instead of losing data), and hands accepted
//! payloads to the application strictly in order.
//!
//! Differences from the official plugin, on purpose: retransmission uses Karn's rule (no RTT samples
//! from retransmitted messages) and exponential backoff; the send window is bounded instead of dropping
//! the oldest unacked message when full; duplicates are acked again (as the agent does), so a lost ack
//! is repaired by the peer's next retransmission.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::message::{ClientMessage, FLAGS_DATA, PayloadType};

/// Retransmission timeout bounds. The computed RTO stays within [MIN_RTO, MAX_RTO]; backoff after a
/// timeout may double it up to MAX_BACKOFF_RTO.
pub const INITIAL_RTO: Duration = Duration::from_millis(200);
pub const MIN_RTO: Duration = Duration::from_millis(100);
pub const MAX_RTO: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF_RTO: Duration = Duration::from_secs(4);

/// TCP-style RTT estimator (RFC 6298 gains: 1/8 for SRTT, 1/4 for RTTVAR) with Karn's rule applied by
/// the caller and exponential backoff on timeouts.
#[derive(Debug, Clone)]
pub struct RtoEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
}

impl Default for RtoEstimator {
    fn default() -> Self {
        RtoEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            rto: INITIAL_RTO,
        }
    }
}

impl RtoEstimator {
    pub fn rto(&self) -> Duration {
        self.rto
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// A fresh RTT sample (from a message sent exactly once). Also ends any backoff.
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(rtt);
        let rto = srtt + (self.rttvar * 4).max(Duration::from_millis(10));
        self.rto = rto.clamp(MIN_RTO, MAX_RTO);
    }

    /// A retransmission timeout fired: back off.
    pub fn backoff(&mut self) {
        self.rto = (self.rto * 2).min(MAX_BACKOFF_RTO);
    }
}

#[derive(Debug)]
struct Pending {
    frame: Bytes,
    first_sent: Instant,
    last_sent: Instant,
    retransmits: u32,
}

/// Our side of the sequence: unacked messages and their timers.
#[derive(Debug)]
pub struct Outbound {
    message_type: &'static str,
    next_seq: i64,
    unacked: BTreeMap<i64, Pending>,
    /// (deadline base = last send time, seq) in send order; stale entries are skipped lazily.
    timers: VecDeque<(Instant, i64)>,
    rto: RtoEstimator,
    window: usize,
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// It acknowledged an outstanding message.
    Acked,
    /// Nothing outstanding has that sequence number (a duplicate ack, or one for a message of a previous
    /// session).
    Unknown,
}

impl Outbound {
    /// `message_type` is what this side sends (`input_stream_data` for a client); `window` bounds the
    /// number of unacked messages.
    pub fn new(message_type: &'static str, window: usize) -> Self {
        Outbound {
            message_type,
            next_seq: 0,
            unacked: BTreeMap::new(),
            timers: VecDeque::new(),
            rto: RtoEstimator::default(),
            window: window.max(1),
        }
    }

    /// Room for another message in the send window.
    pub fn has_room(&self) -> bool {
        self.unacked.len() < self.window
    }

    pub fn in_flight(&self) -> usize {
        self.unacked.len()
    }

    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    pub fn rto(&self) -> &RtoEstimator {
        &self.rto
    }

    /// Numbers and records a new message; returns the frame to send now.
    pub fn push(&mut self, payload_type: PayloadType, payload: Bytes, now: Instant) -> (i64, Bytes) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = ClientMessage::new(self.message_type, seq, FLAGS_DATA, payload_type, payload).encode();
        self.unacked.insert(
            seq,
            Pending {
                frame: frame.clone(),
                first_sent: now,
                last_sent: now,
                retransmits: 0,
            },
        );
        self.timers.push_back((now, seq));
        (seq, frame)
    }

    /// An ack for `seq` arrived.
    pub fn on_ack(&mut self, seq: i64, now: Instant) -> AckOutcome {
        match self.unacked.remove(&seq) {
            Some(p) => {
                // Karn's rule: an ack of a retransmitted message cannot tell which copy it answers.
                if p.retransmits == 0 {
                    self.rto.sample(now.saturating_duration_since(p.first_sent));
                }
                AckOutcome::Acked
            }
            None => AckOutcome::Unknown,
        }
    }

    fn clean_timers(&mut self) {
        while let Some(&(sent, seq)) = self.timers.front() {
            match self.unacked.get(&seq) {
                Some(p) if p.last_sent == sent => break,
                _ => {
                    self.timers.pop_front();
                }
            }
        }
    }

    /// When the earliest retransmission is due, if anything is outstanding.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.clean_timers();
        self.timers.front().map(|&(sent, _)| sent + self.rto.rto())
    }

    /// The frames whose RTO has passed, marked as resent now (at most `limit`, oldest first). Backs the
    /// RTO off once when anything was due. Returns the largest retransmit count among them too.
    pub fn due(&mut self, now: Instant, limit: usize) -> (Vec<Bytes>, u32) {
        let rto = self.rto.rto();
        let mut out = Vec::new();
        let mut worst = 0;
        while out.len() < limit {
            self.clean_timers();
            let Some(&(sent, seq)) = self.timers.front() else {
                break;
            };
            if sent + rto > now {
                break;
            }
            self.timers.pop_front();
            if let Some(p) = self.unacked.get_mut(&seq) {
                p.last_sent = now;
                p.retransmits += 1;
                worst = worst.max(p.retransmits);
                out.push(p.frame.clone());
                self.timers.push_back((now, seq));
            }
        }
        if !out.is_empty() {
            self.rto.backoff();
        }
        (out, worst)
    }

    /// Every unacked frame in sequence order, marked as resent now: after a reconnect.
    pub fn resend_all(&mut self, now: Instant) -> Vec<Bytes> {
        self.timers.clear();
        let mut out = Vec::with_capacity(self.unacked.len());
        for (&seq, p) in self.unacked.iter_mut() {
            p.last_sent = now;
            p.retransmits += 1;
            out.push(p.frame.clone());
            self.timers.push_back((now, seq));
        }
        out
    }

    /// Is `seq` still waiting for its ack?
    pub fn is_unacked(&self, seq: i64) -> bool {
        self.unacked.contains_key(&seq)
    }
}

/// One accepted message waiting for the application.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub seq: i64,
    pub payload_type: PayloadType,
    pub payload: Bytes,
}

/// What to do with a received stream-data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stored for delivery: ack it.
    Accepted,
    /// Already seen (delivered or stored): ack it again and drop it.
    Duplicate,
    /// No room: leave it unacked so the sender retransmits it later.
    Refused,
}

/// The peer's side of the sequence, as we receive it.
#[derive(Debug)]
pub struct Inbound {
    /// The next sequence number to hand to the application.
    expected: i64,
    /// Accepted (acked) messages not yet handed over, keyed by sequence number (all ≥ `expected`).
    store: BTreeMap<i64, Delivered>,
    stored_bytes: usize,
    max_bytes: usize,
    max_messages: usize,
}

impl Inbound {
    pub fn new(max_bytes: usize, max_messages: usize) -> Self {
        Inbound {
            expected: 0,
            store: BTreeMap::new(),
            stored_bytes: 0,
            max_bytes,
            max_messages: max_messages.max(1),
        }
    }

    pub fn expected(&self) -> i64 {
        self.expected
    }

    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }

    /// Offers a received message. The next expected message is always accepted (so a full buffer of
    /// out-of-order messages can never block progress); others only while there is room.
    pub fn offer(&mut self, seq: i64, payload_type: PayloadType, payload: Bytes) -> Verdict {
        if seq < self.expected || self.store.contains_key(&seq) {
            return Verdict::Duplicate;
        }
        let full =
            self.stored_bytes + payload.len() > self.max_bytes || self.store.len() >= self.max_messages;
        if full && seq != self.expected {
            return Verdict::Refused;
        }
        self.stored_bytes += payload.len();
        self.store.insert(
            seq,
            Delivered {
                seq,
                payload_type,
                payload,
            },
        );
        Verdict::Accepted
    }

    /// Is the next in-order message here?
    pub fn has_ready(&self) -> bool {
        self.store
            .first_key_value()
            .is_some_and(|(&seq, _)| seq == self.expected)
    }

    /// The next in-order message, if it has arrived, without taking it.
    pub fn peek_ready(&self) -> Option<&Delivered> {
        self.store
            .first_key_value()
            .filter(|(seq, _)| **seq == self.expected)
            .map(|(_, d)| d)
    }

    /// Takes the next in-order message, if it has arrived.
    pub fn pop_ready(&mut self) -> Option<Delivered> {
        if !self.has_ready() {
            return None;
        }
        let (_, d) = self.store.pop_first()?;
        self.expected += 1;
        self.stored_bytes -= d.payload.len();
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::aws::tunnel::message::INPUT_STREAM_DATA;

    fn p(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    #[test]
    fn inbound_delivers_in_order_buffers_gaps_and_flags_duplicates() {
        let mut inb = Inbound::new(1 << 20, 100);
        assert_eq!(inb.offer(1, PayloadType::Output, p(b"b")), Verdict::Accepted);
        assert!(!inb.has_ready(), "seq 0 is missing");
        assert_eq!(inb.offer(1, PayloadType::Output, p(b"b")), Verdict::Duplicate);
        assert_eq!(inb.offer(0, PayloadType::Output, p(b"a")), Verdict::Accepted);
        assert_eq!(inb.pop_ready().unwrap().payload, p(b"a"));
        assert_eq!(inb.pop_ready().unwrap().payload, p(b"b"));
        assert_eq!(inb.pop_ready(), None);
        assert_eq!(inb.offer(0, PayloadType::Output, p(b"a")), Verdict::Duplicate);
        assert_eq!(inb.expected(), 2);
        assert_eq!(inb.stored_bytes(), 0);
    }

    #[test]
    fn inbound_refuses_when_full_but_always_takes_the_next_expected() {
        let mut inb = Inbound::new(4, 100);
        assert_eq!(inb.offer(1, PayloadType::Output, p(b"1234")), Verdict::Accepted);
        assert_eq!(inb.offer(2, PayloadType::Output, p(b"5")), Verdict::Refused);
        assert_eq!(
            inb.offer(0, PayloadType::Output, p(b"0")),
            Verdict::Accepted,
            "progress"
        );
        assert_eq!(
            inb.offer(2, PayloadType::Output, p(b"5")),
            Verdict::Refused,
            "still full"
        );
        inb.pop_ready();
        inb.pop_ready();
        assert_eq!(inb.offer(2, PayloadType::Output, p(b"5")), Verdict::Accepted);
    }

    #[test]
    fn outbound_numbers_from_zero_and_acks_by_sequence() {
        let now = Instant::now();
        let mut out = Outbound::new(INPUT_STREAM_DATA, 2);
        let (s0, f0) = out.push(PayloadType::HandshakeResponse, p(b"{}"), now);
        let (s1, _) = out.push(PayloadType::Output, p(b"x"), now);
        assert_eq!((s0, s1), (0, 1));
        assert!(!out.has_room());
        let m = ClientMessage::decode(&f0).unwrap();
        assert_eq!(m.sequence_number, 0);
        assert_eq!(m.flags, 0);
        assert_eq!(out.on_ack(1, now + Duration::from_millis(5)), AckOutcome::Acked);
        assert_eq!(out.on_ack(1, now), AckOutcome::Unknown);
        assert!(out.has_room());
        assert!(out.is_unacked(0));
    }

    #[test]
    fn retransmits_after_rto_with_backoff_and_karn() {
        let t0 = Instant::now();
        let mut out = Outbound::new(INPUT_STREAM_DATA, 10);
        out.push(PayloadType::Output, p(b"a"), t0);
        out.push(PayloadType::Output, p(b"b"), t0);
        assert_eq!(out.next_deadline(), Some(t0 + INITIAL_RTO));
        assert!(out.due(t0 + Duration::from_millis(199), 10).0.is_empty());
        let (frames, worst) = out.due(t0 + INITIAL_RTO, 10);
        assert_eq!(frames.len(), 2);
        assert_eq!(worst, 1);
        assert_eq!(out.rto().rto(), INITIAL_RTO * 2, "backed off");
        // An ack of a retransmitted message gives no RTT sample (Karn): the RTO stays backed off.
        out.on_ack(0, t0 + Duration::from_millis(210));
        assert_eq!(out.rto().rto(), INITIAL_RTO * 2);
        assert_eq!(out.rto().srtt(), None);
        // A clean sample resets it from the estimate.
        let t1 = t0 + Duration::from_secs(1);
        let (s, _) = out.push(PayloadType::Output, p(b"c"), t1);
        out.on_ack(s, t1 + Duration::from_millis(20));
        assert_eq!(out.rto().srtt(), Some(Duration::from_millis(20)));
        assert_eq!(
            out.rto().rto(),
            MIN_RTO,
            "20 ms + 4·10 ms, clamped up to the floor"
        );
    }

    #[test]
    fn resend_all_returns_unacked_in_order() {
        let t0 = Instant::now();
        let mut out = Outbound::new(INPUT_STREAM_DATA, 10);
        for _ in 0..4 {
            out.push(PayloadType::Output, p(b"z"), t0);
        }
        out.on_ack(1, t0);
        let seqs: Vec<i64> = out
            .resend_all(t0)
            .iter()
            .map(|f| ClientMessage::decode(f).unwrap().sequence_number)
            .collect();
        assert_eq!(seqs, vec![0, 2, 3]);
    }

    #[test]
    fn rto_estimate_follows_rtt() {
        let mut e = RtoEstimator::default();
        for _ in 0..20 {
            e.sample(Duration::from_millis(300));
        }
        let rto = e.rto();
        assert!(
            rto >= Duration::from_millis(300) && rto <= Duration::from_millis(320),
            "{rto:?}"
        );
        e.backoff();
        e.backoff();
        e.backoff();
        assert!(e.rto() <= MAX_BACKOFF_RTO);
    }
}
