//! The probe: single-shot and load-mode gRPC requests against a thespian, with HDR latency histograms,
//! coordinated-omission-corrected open-loop scheduling, and pass/fail gates for scripts.
//!
//! - [`conn`]: `--address` parsing, the pool of HTTP/2 connections spread over the endpoints, recovery
//!   when a replica moves.
//! - [`engine`]: the request path, the closed- and open-loop workers.
//! - [`schedule`]: the open-loop timetable and how work is split between workers.
//! - [`stats`]: per-worker recorders (HDR histogram, codes, instances), merged at the end.
//! - [`gates`]: `--max-error-rate`, `--max-p99`.
//! - [`report`]: the published result (stable JSON keys).
//! - [`trace`]: the W3C `traceparent` each request carries.

pub mod conn;
pub mod engine;
pub mod gates;
pub mod report;
pub mod schedule;
pub mod stats;
#[cfg(test)]
mod testserver;
pub mod trace;

use crate::error::exit;

pub use conn::ConnectProblem;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `--address` that is neither `HOST:PORT` nor an http(s) URL.
    #[error(
        "--address {address}: {reason}; expected HOST:PORT (e.g. 127.0.0.1:50051) or an http:// or https:// URL"
    )]
    BadAddress { address: String, reason: String },

    /// A flag value that cannot work.
    #[error("{flag} {value}: {reason}")]
    BadFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },

    /// The target resolved the thespian to no address at all.
    #[error("nothing to probe: {thespian} has no running replica; start the fleet with `thespctl up`")]
    NoReplicas { thespian: String },

    /// The pool was given no endpoint (a caller bug surfaced as a clear error rather than a panic).
    #[error("nothing to probe: no address was given")]
    NoEndpoints,

    /// An endpoint the target reported is not a usable URI.
    #[error("{} is not a usable gRPC address", place(.label, .uri))]
    BadEndpoint {
        label: String,
        uri: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The connection could not be established before any request was sent.
    #[error(
        "could not connect to {}: {problem}; check that the thespian is running there (`thespctl status` lists the fleet's addresses)",
        place(.label, .uri)
    )]
    Connect {
        label: String,
        uri: String,
        problem: ConnectProblem,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A load thread or worker ended abnormally (a bug: the results would be incomplete).
    #[error("a probe worker failed ({what}); the results would be incomplete")]
    Worker { what: String },

    /// The load threads could not be started.
    #[error("could not start the probe's load threads")]
    Threads {
        #[source]
        source: std::io::Error,
    },
}

/// `gilbert[0] (http://127.0.0.1:41001)`, or just the URI when the label adds nothing.
fn place(label: &str, uri: &str) -> String {
    if uri.contains(label) {
        uri.to_string()
    } else {
        format!("{label} ({uri})")
    }
}

impl ProbeError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ProbeError::BadAddress { .. }
            | ProbeError::BadFlag { .. }
            | ProbeError::NoReplicas { .. }
            | ProbeError::NoEndpoints
            | ProbeError::BadEndpoint { .. }
            | ProbeError::Connect { .. } => exit::USAGE,
            ProbeError::Worker { .. } | ProbeError::Threads { .. } => exit::FAILED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_do_not_repeat_themselves() {
        assert_eq!(
            place("127.0.0.1:5000", "http://127.0.0.1:5000"),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            place("gilbert[0]", "http://127.0.0.1:5000"),
            "gilbert[0] (http://127.0.0.1:5000)"
        );
    }

    #[test]
    fn usage_and_resolution_errors_exit_2() {
        let e = ProbeError::NoReplicas {
            thespian: "gilbert".into(),
        };
        assert_eq!(e.exit_code(), exit::USAGE);
        assert!(e.to_string().contains("gilbert"));
        assert!(e.to_string().contains("thespctl up"));
        let e = ProbeError::BadFlag {
            flag: "--rate",
            value: "0".into(),
            reason: "must be more than 0".into(),
        };
        assert_eq!(e.to_string(), "--rate 0: must be more than 0");
        assert_eq!(e.exit_code(), exit::USAGE);
    }
}
