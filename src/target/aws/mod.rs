//! The AWS target: an environment stack and one ECS service stack per thespian, through change sets.
//! AWS SDK types stay inside this module.

pub mod config;
pub mod templates;
pub mod tunnel;

use aws_config::SdkConfig;
use serde::Serialize;

use crate::Context;
use crate::cli::Via;
use crate::error::{Result, exit};
use crate::fleet::{FleetRef, Plan};
use crate::target::{DownOptions, Resolved, Target, UpOptions};
use crate::ui::{Report, Ui};

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

/// The AWS target of one fleet.
#[derive(Debug, Clone)]
pub struct AwsTarget {
    pub sdk: SdkConfig,
}

impl AwsTarget {
    /// Loads the AWS configuration for `fleet` (region from the flags, else the manifest).
    pub async fn connect(ctx: &Context, fleet: &FleetRef) -> Result<Self> {
        let region = fleet.aws.as_ref().and_then(|a| a.region.as_deref());
        Ok(AwsTarget {
            sdk: config::load(&ctx.global, region).await,
        })
    }
}

/// Placeholder report until the AWS target lands.
#[derive(Debug, Serialize)]
pub struct Pending;

impl Report for Pending {
    fn render(&self, _ui: &Ui) -> String {
        String::new()
    }
}

impl Target for AwsTarget {
    type UpReport = Pending;
    type StatusReport = Pending;
    type DownReport = Pending;

    async fn up(&self, _plan: &Plan, _opts: &UpOptions, _ctx: &Context) -> Result<Pending> {
        Err(AwsError::NotImplemented.into())
    }

    async fn status(&self, _fleet: &FleetRef, _ctx: &Context) -> Result<Pending> {
        Err(AwsError::NotImplemented.into())
    }

    async fn down(&self, _fleet: &FleetRef, _opts: &DownOptions, _ctx: &Context) -> Result<Pending> {
        Err(AwsError::NotImplemented.into())
    }

    async fn endpoints(
        &self,
        _fleet: &FleetRef,
        _thespian: &str,
        _via: Via,
        _ctx: &Context,
    ) -> Result<Resolved> {
        Err(AwsError::NotImplemented.into())
    }
}
