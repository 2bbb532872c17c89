//! The binary frame of the Session Manager data channel (one `ClientMessage` per WebSocket binary frame)
//! and the JSON payloads carried in it: acks, the handshake, flags, `channel_closed`, and the text
//! "open data channel" message.
//!
//! Layout (all integers big-endian; see `docs/tunnel.md` and the protocol note):
//!
//! ```text
//!   0  u32  HeaderLength      always 116 (the offset of PayloadLength)
//!   4  32B  MessageType       ASCII, padded with spaces
//!  36  u32  SchemaVersion     1
//!  40  u64  CreatedDate       epoch milliseconds, non-zero
//!  48  i64  SequenceNumber
//!  56  u64  Flags             bit 0 SYN, bit 1 FIN
//!  64  16B  MessageId         UUID in Java order (bytes 8..16 first, then 0..8)
//!  80  32B  PayloadDigest     SHA-256 of the payload
//! 112  u32  PayloadType
//! 116  u32  PayloadLength
//! 120  ...  Payload           everything after HeaderLength + 4
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// What every writer puts in `HeaderLength`: the offset of `PayloadLength`.
pub const HEADER_LENGTH: u32 = 116;
/// Bytes before the payload: the header plus the `PayloadLength` field.
pub const PAYLOAD_OFFSET: usize = 120;
const MESSAGE_TYPE_LEN: usize = 32;

pub const INPUT_STREAM_DATA: &str = "input_stream_data";
pub const OUTPUT_STREAM_DATA: &str = "output_stream_data";
pub const ACKNOWLEDGE: &str = "acknowledge";
pub const CHANNEL_CLOSED: &str = "channel_closed";
pub const START_PUBLICATION: &str = "start_publication";
pub const PAUSE_PUBLICATION: &str = "pause_publication";

/// Flags of data messages the client sends (the plugin always sends 0).
pub const FLAGS_DATA: u64 = 0;
/// SYN | FIN: what acks and control messages carry.
pub const FLAGS_CONTROL: u64 = 3;

/// The `PayloadType` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadType {
    /// Acks and unsequenced messages carry 0.
    None,
    Output,
    Error,
    Size,
    Parameter,
    HandshakeRequest,
    HandshakeResponse,
    HandshakeComplete,
    EncChallengeRequest,
    EncChallengeResponse,
    Flag,
    StdErr,
    ExitCode,
    Unknown(u32),
}

impl PayloadType {
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => PayloadType::None,
            1 => PayloadType::Output,
            2 => PayloadType::Error,
            3 => PayloadType::Size,
            4 => PayloadType::Parameter,
            5 => PayloadType::HandshakeRequest,
            6 => PayloadType::HandshakeResponse,
            7 => PayloadType::HandshakeComplete,
            8 => PayloadType::EncChallengeRequest,
            9 => PayloadType::EncChallengeResponse,
            10 => PayloadType::Flag,
            11 => PayloadType::StdErr,
            12 => PayloadType::ExitCode,
            other => PayloadType::Unknown(other),
        }
    }

    pub fn as_u32(self) -> u32 {
        match self {
            PayloadType::None => 0,
            PayloadType::Output => 1,
            PayloadType::Error => 2,
            PayloadType::Size => 3,
            PayloadType::Parameter => 4,
            PayloadType::HandshakeRequest => 5,
            PayloadType::HandshakeResponse => 6,
            PayloadType::HandshakeComplete => 7,
            PayloadType::EncChallengeRequest => 8,
            PayloadType::EncChallengeResponse => 9,
            PayloadType::Flag => 10,
            PayloadType::StdErr => 11,
            PayloadType::ExitCode => 12,
            PayloadType::Unknown(v) => v,
        }
    }
}

/// The 4-byte flag values of `PayloadType::Flag` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Client → agent, basic mode: the local connection ended; the agent closes its target connection.
    DisconnectToPort,
    /// Client → agent: end the session.
    TerminateSession,
    /// Agent → client, mux mode: the agent could not dial the target for a new stream.
    ConnectToPortError,
}

impl Flag {
    pub fn as_u32(self) -> u32 {
        match self {
            Flag::DisconnectToPort => 1,
            Flag::TerminateSession => 2,
            Flag::ConnectToPortError => 3,
        }
    }

    pub fn from_payload(payload: &[u8]) -> Option<Flag> {
        let bytes: [u8; 4] = payload.get(..4)?.try_into().ok()?;
        match u32::from_be_bytes(bytes) {
            1 => Some(Flag::DisconnectToPort),
            2 => Some(Flag::TerminateSession),
            3 => Some(Flag::ConnectToPortError),
            _ => None,
        }
    }

    pub fn payload(self) -> Bytes {
        Bytes::copy_from_slice(&self.as_u32().to_be_bytes())
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientMessage {
    pub message_type: String,
    pub schema_version: u32,
    /// Epoch milliseconds.
    pub created_date: u64,
    pub sequence_number: i64,
    pub flags: u64,
    pub message_id: Uuid,
    pub payload_type: PayloadType,
    pub payload: Bytes,
}

/// Why a received frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is shorter than the {PAYLOAD_OFFSET}-byte header")]
    TooShort { len: usize },
    #[error("header length {0} is invalid (writers put {HEADER_LENGTH})")]
    HeaderLength(u32),
    #[error("message type is empty")]
    EmptyType,
    #[error("message type is not ASCII")]
    TypeNotAscii,
    #[error("created date is zero")]
    NoDate,
    #[error("payload digest does not match the payload of a {message_type} message")]
    Digest { message_type: String },
}

impl ClientMessage {
    /// A new message stamped now with a fresh id.
    pub fn new(
        message_type: &str,
        sequence_number: i64,
        flags: u64,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Self {
        ClientMessage {
            message_type: message_type.to_string(),
            schema_version: 1,
            created_date: now_millis(),
            sequence_number,
            flags,
            message_id: Uuid::new_v4(),
            payload_type,
            payload,
        }
    }

    /// Serialises the frame: header length 116, space-padded type, Java-order id, SHA-256 digest.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(PAYLOAD_OFFSET + self.payload.len());
        out.put_u32(HEADER_LENGTH);
        let mut type_field = [b' '; MESSAGE_TYPE_LEN];
        let name = self.message_type.as_bytes();
        let n = name.len().min(MESSAGE_TYPE_LEN);
        type_field[..n].copy_from_slice(&name[..n]);
        out.put_slice(&type_field);
        out.put_u32(self.schema_version);
        out.put_u64(self.created_date);
        out.put_i64(self.sequence_number);
        out.put_u64(self.flags);
        out.put_slice(&uuid_to_java(self.message_id));
        out.put_slice(&Sha256::digest(&self.payload));
        out.put_u32(self.payload_type.as_u32());
        // The payload of our own messages never approaches 4 GiB (they are at most a few KiB).
        out.put_u32(u32::try_from(self.payload.len()).unwrap_or(u32::MAX));
        out.put_slice(&self.payload);
        out.freeze()
    }

    /// Parses and validates a received frame the way the official reader does: the payload is
    /// everything after `HeaderLength + 4` (writers put 116; a reader follows the field, so a longer
    /// header from a newer writer still parses); publication messages are accepted without checks.
    pub fn decode(frame: &Bytes) -> Result<ClientMessage, FrameError> {
        if frame.len() < PAYLOAD_OFFSET {
            return Err(FrameError::TooShort { len: frame.len() });
        }
        let u32_at = |at: usize| u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&frame[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let header_length = u32_at(0);
        let raw_type = &frame[4..4 + MESSAGE_TYPE_LEN];
        if !raw_type.is_ascii() {
            return Err(FrameError::TypeNotAscii);
        }
        let message_type: String = String::from_utf8_lossy(raw_type)
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string();
        let mut id = [0u8; 16];
        id.copy_from_slice(&frame[64..80]);
        let payload_start = usize::try_from(header_length)
            .unwrap_or(usize::MAX)
            .saturating_add(4);
        let msg = ClientMessage {
            schema_version: u32_at(36),
            created_date: u64_at(40),
            sequence_number: u64_at(48) as i64,
            flags: u64_at(56),
            message_id: uuid_from_java(id),
            payload_type: PayloadType::from_u32(u32_at(112)),
            payload: if payload_start <= frame.len() {
                frame.slice(payload_start..)
            } else {
                Bytes::new()
            },
            message_type,
        };
        if msg.message_type == START_PUBLICATION || msg.message_type == PAUSE_PUBLICATION {
            return Ok(msg);
        }
        if header_length < HEADER_LENGTH || payload_start > frame.len() {
            return Err(FrameError::HeaderLength(header_length));
        }
        if msg.message_type.is_empty() {
            return Err(FrameError::EmptyType);
        }
        if msg.created_date == 0 {
            return Err(FrameError::NoDate);
        }
        let payload_length = u32_at(payload_start - 4);
        if payload_length != 0 && Sha256::digest(&msg.payload).as_slice() != &frame[80..112] {
            return Err(FrameError::Digest {
                message_type: msg.message_type,
            });
        }
        Ok(msg)
    }

    /// A sequenced message (`*_stream_data`): the only kind that is acknowledged.
    pub fn is_stream_data(&self) -> bool {
        self.message_type == INPUT_STREAM_DATA || self.message_type == OUTPUT_STREAM_DATA
    }
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
        .max(1)
}

/// Java's `putUuid`: the least significant half (RFC bytes 8..16) first, then the most significant.
pub fn uuid_to_java(id: Uuid) -> [u8; 16] {
    let b = id.as_bytes();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&b[8..]);
    out[8..].copy_from_slice(&b[..8]);
    out
}

pub fn uuid_from_java(b: [u8; 16]) -> Uuid {
    let mut rfc = [0u8; 16];
    rfc[..8].copy_from_slice(&b[8..]);
    rfc[8..].copy_from_slice(&b[..8]);
    Uuid::from_bytes(rfc)
}

/// The payload of an `acknowledge` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(rename = "AcknowledgedMessageType")]
    pub message_type: String,
    #[serde(rename = "AcknowledgedMessageId")]
    pub message_id: String,
    #[serde(rename = "AcknowledgedMessageSequenceNumber")]
    pub sequence_number: i64,
    #[serde(rename = "IsSequentialMessage")]
    pub is_sequential: bool,
}

impl Ack {
    /// The ack frame for a received stream-data message (sequence 0, flags 3, payload type 0).
    pub fn for_message(msg: &ClientMessage) -> ClientMessage {
        let ack = Ack {
            message_type: msg.message_type.clone(),
            message_id: msg.message_id.hyphenated().to_string(),
            sequence_number: msg.sequence_number,
            is_sequential: true,
        };
        // Serialising a struct of strings and integers cannot fail.
        let payload = serde_json::to_vec(&ack).unwrap_or_default();
        ClientMessage::new(
            ACKNOWLEDGE,
            0,
            FLAGS_CONTROL,
            PayloadType::None,
            Bytes::from(payload),
        )
    }
}

/// The agent's HandshakeRequest.
#[derive(Debug, Clone, Deserialize)]
pub struct HandshakeRequest {
    #[serde(rename = "AgentVersion")]
    pub agent_version: String,
    #[serde(rename = "RequestedClientActions", default)]
    pub requested_client_actions: Vec<RequestedClientAction>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestedClientAction {
    #[serde(rename = "ActionType")]
    pub action_type: String,
    #[serde(rename = "ActionParameters", default)]
    pub action_parameters: serde_json::Value,
}

/// Our HandshakeResponse.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeResponse {
    #[serde(rename = "ClientVersion")]
    pub client_version: String,
    #[serde(rename = "ProcessedClientActions")]
    pub processed_client_actions: Vec<ProcessedClientAction>,
    #[serde(rename = "Errors")]
    pub errors: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessedClientAction {
    #[serde(rename = "ActionType")]
    pub action_type: String,
    /// 1 Success, 2 Failed, 3 Unsupported.
    #[serde(rename = "ActionStatus")]
    pub action_status: u32,
    #[serde(rename = "ActionResult")]
    pub action_result: Option<serde_json::Value>,
    #[serde(rename = "Error")]
    pub error: String,
}

pub const ACTION_SUCCESS: u32 = 1;
pub const ACTION_FAILED: u32 = 2;
pub const ACTION_UNSUPPORTED: u32 = 3;

/// The agent's HandshakeComplete.
#[derive(Debug, Clone, Deserialize)]
pub struct HandshakeComplete {
    #[serde(rename = "HandshakeTimeToComplete", default)]
    pub time_to_complete_ns: i64,
    #[serde(rename = "CustomerMessage", default)]
    pub customer_message: String,
}

/// The payload of `channel_closed`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChannelClosed {
    #[serde(rename = "SessionId", default)]
    pub session_id: String,
    #[serde(rename = "Output", default)]
    pub output: String,
}

/// The first (text) frame on every WebSocket connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenDataChannel {
    #[serde(rename = "MessageSchemaVersion")]
    pub message_schema_version: String,
    #[serde(rename = "RequestId")]
    pub request_id: String,
    #[serde(rename = "TokenValue")]
    pub token_value: String,
    #[serde(rename = "ClientId")]
    pub client_id: String,
    #[serde(rename = "ClientVersion")]
    pub client_version: String,
}

/// A dotted version (`3.1.1511.0`) compared numerically, part by part; missing parts count as 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(Vec<u64>);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let parts: Option<Vec<u64>> = s.trim().split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(Version)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let n = self.0.len().max(other.0.len());
        for i in 0..n {
            let a = self.0.get(i).copied().unwrap_or(0);
            let b = other.0.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                std::cmp::Ordering::Equal => continue,
                unequal => return unequal,
            }
        }
        std::cmp::Ordering::Equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_has_the_documented_layout() {
        let id = Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        let mut msg = ClientMessage::new(
            INPUT_STREAM_DATA,
            7,
            FLAGS_DATA,
            PayloadType::Output,
            Bytes::from_static(b"hi"),
        );
        msg.message_id = id;
        msg.created_date = 0x0102_0304_0506_0708;
        let frame = msg.encode();
        assert_eq!(frame.len(), 122);
        assert_eq!(&frame[0..4], &116u32.to_be_bytes());
        assert_eq!(&frame[4..21], b"input_stream_data");
        assert!(
            frame[21..36].iter().all(|&b| b == b' '),
            "type padded with spaces"
        );
        assert_eq!(&frame[36..40], &1u32.to_be_bytes());
        assert_eq!(&frame[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&frame[48..56], &7i64.to_be_bytes());
        assert_eq!(&frame[56..64], &0u64.to_be_bytes());
        // Java order: the second half of the RFC bytes first.
        assert_eq!(
            &frame[64..80],
            &[
                0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
                0x77
            ]
        );
        assert_eq!(&frame[80..112], Sha256::digest(b"hi").as_slice());
        assert_eq!(&frame[112..116], &1u32.to_be_bytes());
        assert_eq!(&frame[116..120], &2u32.to_be_bytes());
        assert_eq!(&frame[120..], b"hi");
        assert_eq!(ClientMessage::decode(&frame).unwrap(), msg);
    }

    #[test]
    fn decode_rejects_what_the_official_reader_rejects() {
        let msg = ClientMessage::new(
            OUTPUT_STREAM_DATA,
            0,
            1,
            PayloadType::Output,
            Bytes::from_static(b"abc"),
        );
        let good = msg.encode();
        let mut bad_digest = good.to_vec();
        bad_digest[121] ^= 1;
        assert!(matches!(
            ClientMessage::decode(&Bytes::from(bad_digest)),
            Err(FrameError::Digest { .. })
        ));
        let mut bad_len = good.to_vec();
        bad_len[3] = 120;
        assert_eq!(
            ClientMessage::decode(&Bytes::from(bad_len)),
            Err(FrameError::HeaderLength(120))
        );
        let mut zero_len = good.to_vec();
        zero_len[..4].fill(0);
        assert_eq!(
            ClientMessage::decode(&Bytes::from(zero_len)),
            Err(FrameError::HeaderLength(0))
        );
        let mut no_date = good.to_vec();
        no_date[40..48].fill(0);
        assert_eq!(
            ClientMessage::decode(&Bytes::from(no_date)),
            Err(FrameError::NoDate)
        );
        assert!(matches!(
            ClientMessage::decode(&good.slice(..100)),
            Err(FrameError::TooShort { len: 100 })
        ));
    }

    #[test]
    fn publication_messages_pass_without_checks_and_nul_padding_is_stripped() {
        let mut frame = vec![0u8; PAYLOAD_OFFSET];
        frame[4..4 + PAUSE_PUBLICATION.len()].copy_from_slice(PAUSE_PUBLICATION.as_bytes());
        let msg = ClientMessage::decode(&Bytes::from(frame)).unwrap();
        assert_eq!(msg.message_type, PAUSE_PUBLICATION);
    }

    #[test]
    fn ack_names_the_message_by_sequence_and_id() {
        let msg = ClientMessage::new(
            OUTPUT_STREAM_DATA,
            42,
            0,
            PayloadType::Output,
            Bytes::from_static(b"x"),
        );
        let ack = Ack::for_message(&msg);
        assert_eq!(ack.message_type, ACKNOWLEDGE);
        assert_eq!(ack.sequence_number, 0);
        assert_eq!(ack.flags, 3);
        assert_eq!(ack.payload_type, PayloadType::None);
        let body: serde_json::Value = serde_json::from_slice(&ack.payload).unwrap();
        assert_eq!(body["AcknowledgedMessageType"], "output_stream_data");
        assert_eq!(body["AcknowledgedMessageSequenceNumber"], 42);
        assert_eq!(
            body["AcknowledgedMessageId"],
            msg.message_id.hyphenated().to_string()
        );
        assert_eq!(body["IsSequentialMessage"], true);
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("3.0.197.0") > v("3.0.196.0"));
        assert!(v("3.0.196.0") <= v("3.0.196.0"));
        assert!(v("3.1.1511.0") < v("3.10.0.0"));
        assert!(v("3.3") > v("3.1.1511.0"));
        assert_eq!(Version::parse("3.x"), None);
    }

    #[test]
    fn flags_round_trip() {
        for f in [
            Flag::DisconnectToPort,
            Flag::TerminateSession,
            Flag::ConnectToPortError,
        ] {
            assert_eq!(Flag::from_payload(&f.payload()), Some(f));
        }
        assert_eq!(Flag::from_payload(&[0, 0, 0, 9]), None);
    }
}
