//! A native AWS Session Manager port-forwarding client (the data channel of `session-manager-plugin`).

use crate::error::exit;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnels are not implemented yet")]
    NotImplemented,
}

impl TunnelError {
    pub fn exit_code(&self) -> u8 {
        match self {
            TunnelError::NotImplemented => exit::FAILED,
        }
    }
}
