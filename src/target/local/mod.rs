//! The local target: every replica an agent process on 127.0.0.1, state in `.thespctl/` beside the manifest.

use serde::Serialize;

use crate::Context;
use crate::cli::Via;
use crate::error::{Result, exit};
use crate::fleet::{FleetRef, Plan};
use crate::target::{DownOptions, Resolved, Target, UpOptions};
use crate::ui::{Report, Ui};

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

/// The local target of one fleet (its state lives beside the manifest).
#[derive(Debug, Clone)]
pub struct LocalTarget {
    pub state_dir: std::path::PathBuf,
}

impl LocalTarget {
    pub fn for_fleet(fleet: &FleetRef) -> Self {
        let dir = fleet
            .manifest_path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        LocalTarget {
            state_dir: dir.join(".thespctl"),
        }
    }
}

/// Placeholder report until the local target lands.
#[derive(Debug, Serialize)]
pub struct Pending;

impl Report for Pending {
    fn render(&self, _ui: &Ui) -> String {
        String::new()
    }
}

impl Target for LocalTarget {
    type UpReport = Pending;
    type StatusReport = Pending;
    type DownReport = Pending;

    async fn up(&self, _plan: &Plan, _opts: &UpOptions, _ctx: &Context) -> Result<Pending> {
        Err(LocalError::NotImplemented.into())
    }

    async fn status(&self, _fleet: &FleetRef, _ctx: &Context) -> Result<Pending> {
        Err(LocalError::NotImplemented.into())
    }

    async fn down(&self, _fleet: &FleetRef, _opts: &DownOptions, _ctx: &Context) -> Result<Pending> {
        Err(LocalError::NotImplemented.into())
    }

    async fn endpoints(
        &self,
        _fleet: &FleetRef,
        _thespian: &str,
        _via: Via,
        _ctx: &Context,
    ) -> Result<Resolved> {
        Err(LocalError::NotImplemented.into())
    }
}
