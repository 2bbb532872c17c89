//! Where a fleet runs. Every target implements the same verbs behind [`Target`], so commands are written
//! once: `local` (processes on 127.0.0.1) and `aws` (CloudFormation + ECS).

pub mod aws;
pub mod local;

use std::time::Duration;

use serde::Serialize;

use crate::Context;
use crate::cli::{TargetKind, Via};
use crate::error::Result;
use crate::fleet::{FleetRef, Plan};
use crate::ui::Report;

/// Options of `up` (and `plan`, which is `up --dry-run`). A target ignores what does not apply to it.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dry_run: bool,
    pub yes: bool,
    pub wait: bool,
    pub timeout: Option<Duration>,
    pub continue_rollback: bool,
    pub parallel: usize,
}

#[derive(Debug, Clone)]
pub struct DownOptions {
    pub yes: bool,
    pub keep_environment: bool,
    pub grace: Duration,
}

/// One address a probe can send requests to.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// `http://127.0.0.1:41001`, or `https://gilbert.example.com` behind an ALB.
    pub uri: String,
    /// Who is behind it, for messages (`gilbert[0]`, `task 3f2a…`).
    pub label: String,
}

/// Something that must stay alive while endpoints are used (a tunnel), and be shut down cleanly after.
pub trait EndpointGuard: Send {
    /// Ends it cleanly (a tunnel terminates its session). Dropping without closing is a best-effort
    /// close that may not finish before the process exits.
    fn close(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

/// The endpoints of a thespian, and whatever must stay alive while they are used (a tunnel).
pub struct Resolved {
    pub endpoints: Vec<Endpoint>,
    /// Kept until the caller is done, then closed with [`Resolved::close`].
    pub guard: Option<Box<dyn EndpointGuard>>,
}

impl Resolved {
    /// Closes the guard, if any (call when done with the endpoints).
    pub async fn close(self) {
        if let Some(guard) = self.guard {
            guard.close().await;
        }
    }
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("endpoints", &self.endpoints)
            .field("guard", &self.guard.is_some())
            .finish()
    }
}

/// The verbs every target implements. Reports are target-specific, but all render as a table or JSON.
#[allow(async_fn_in_trait)] // used with static dispatch only
pub trait Target {
    type UpReport: Report;
    type StatusReport: Report;
    type DownReport: Report;

    /// Brings the running fleet in line with `plan`; with `dry_run`, only reports what would change.
    async fn up(&self, plan: &Plan, opts: &UpOptions, ctx: &Context) -> Result<Self::UpReport>;

    /// What is running now.
    async fn status(&self, fleet: &FleetRef, ctx: &Context) -> Result<Self::StatusReport>;

    /// Stops everything `up` made for this fleet.
    async fn down(&self, fleet: &FleetRef, opts: &DownOptions, ctx: &Context) -> Result<Self::DownReport>;

    /// Addresses at which `thespian` answers gRPC. An unknown name is an error listing the known ones.
    async fn endpoints(&self, fleet: &FleetRef, thespian: &str, via: Via, ctx: &Context) -> Result<Resolved>;
}

/// The endpoints of `thespian` through the target in effect for `fleet` (used by `probe`).
pub async fn endpoints(ctx: &Context, fleet: &FleetRef, thespian: &str, via: Via) -> Result<Resolved> {
    match choose(ctx.global.target, fleet.target) {
        TargetKind::Local => {
            local::LocalTarget::for_fleet(fleet)
                .endpoints(fleet, thespian, via, ctx)
                .await
        }
        TargetKind::Aws => {
            aws::AwsTarget::connect(ctx, fleet)
                .await?
                .endpoints(fleet, thespian, via, ctx)
                .await
        }
    }
}

/// The target to use: the `--target` flag, else the manifest's `target:`, else local.
pub fn choose(flag: Option<TargetKind>, manifest: Option<TargetKind>) -> TargetKind {
    flag.or(manifest).unwrap_or(TargetKind::Local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_manifest_beats_default() {
        assert_eq!(choose(None, None), TargetKind::Local);
        assert_eq!(choose(None, Some(TargetKind::Aws)), TargetKind::Aws);
        assert_eq!(
            choose(Some(TargetKind::Local), Some(TargetKind::Aws)),
            TargetKind::Local
        );
    }
}
