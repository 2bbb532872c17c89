//! The local target: every replica an agent process on 127.0.0.1, state in `.thespctl/` beside the manifest.

use crate::error::exit;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the local target is not implemented yet")]
    NotImplemented,
}

impl LocalError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LocalError::NotImplemented => exit::FAILED,
        }
    }
}
