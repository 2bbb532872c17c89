//! The AWS target: an environment stack and one ECS service stack per thespian, through change sets.
//! AWS SDK types stay inside this module.

pub mod tunnel;

use crate::error::exit;

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("the aws target is not implemented yet")]
    NotImplemented,
}

impl AwsError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AwsError::NotImplemented => exit::FAILED,
        }
    }
}
