//! The probe: single-shot and load-mode gRPC requests against a thespian, with HDR latency histograms,
//! coordinated-omission-corrected open-loop scheduling, and pass/fail gates for scripts.

use crate::error::exit;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe is not implemented yet")]
    NotImplemented,
}

impl ProbeError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ProbeError::NotImplemented => exit::FAILED,
        }
    }
}
