//! W3C Trace Context (`traceparent`) for every probe request, so any single request can be looked up in
//! a tracing backend: the agent continues the trace it receives.

use std::fmt;

use tonic::metadata::AsciiMetadataValue;

/// The `traceparent` metadata key (W3C Trace Context, level 1).
pub const TRACEPARENT: &str = "traceparent";

/// A fresh trace: random 16-byte trace id, random 8-byte parent span id, sampled.
///
/// Kept as integers (not strings) so the hot path of a load run formats it once, into the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";
/// `00-` + 32 hex + `-` + 16 hex + `-01`.
const HEADER_LEN: usize = 55;

impl TraceParent {
    /// A new random trace. All-zero ids are invalid in W3C Trace Context, so they are never produced.
    pub fn random() -> Self {
        TraceParent {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
        }
    }

    /// The trace id as 32 lowercase hex digits (how tracing backends display and search it).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The header value `00-<trace id>-<span id>-01` (version 00, flags: sampled).
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..3].copy_from_slice(b"00-");
        hex_into(&mut out[3..35], self.trace_id.to_be_bytes().as_slice());
        out[35] = b'-';
        hex_into(&mut out[36..52], self.span_id.to_be_bytes().as_slice());
        out[52..].copy_from_slice(b"-01");
        out
    }

    /// The header as gRPC metadata, marked "never indexed": every request's value is new, so adding it
    /// to the HPACK tables would only evict headers that do repeat (both peers save the work).
    pub fn metadata_value(&self) -> AsciiMetadataValue {
        // The header is built from hex digits and dashes only, which are always valid ASCII metadata.
        let mut value = AsciiMetadataValue::try_from(self.header().as_slice()).unwrap_or_else(|_| {
            AsciiMetadataValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
        });
        value.set_sensitive(true);
        value
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-01", self.trace_id, self.span_id)
    }
}

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_has_the_w3c_shape() {
        let tp = TraceParent {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x00f067aa0ba902b7,
        };
        let header = tp.header();
        assert_eq!(
            std::str::from_utf8(&header).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(tp.to_string().as_bytes(), header.as_slice());
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.metadata_value().to_str().unwrap(), tp.to_string());
    }

    #[test]
    fn small_ids_are_zero_padded() {
        let tp = TraceParent {
            trace_id: 1,
            span_id: 2,
        };
        assert_eq!(
            tp.to_string(),
            "00-00000000000000000000000000000001-0000000000000002-01"
        );
        assert_eq!(tp.header().as_slice(), tp.to_string().as_bytes());
    }

    #[test]
    fn random_traces_are_fresh_and_valid() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let tp = TraceParent::random();
            assert_ne!(tp.trace_id, 0);
            assert_ne!(tp.span_id, 0);
            assert!(seen.insert(tp.trace_id), "trace id repeated");
            let header = tp.header();
            assert!(header.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-'));
            assert!(!header.iter().any(u8::is_ascii_uppercase));
        }
    }
}
