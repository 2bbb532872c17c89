//! What the AWS target's commands return: plain data, serialised as the stable JSON documented in
//! `docs/aws.md` and rendered for people by `ui::aws`.

use serde::Serialize;

use super::changes::ResourceChange;
use super::ecs::TaskStatus;

/// `up` and `plan` (`up --dry-run`).
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub fleet: String,
    pub region: String,
    /// `plan` / `up --dry-run`: nothing was changed; `action` says what `up` would do.
    pub dry_run: bool,
    /// The environment stack first, then the service stacks by thespian, then stacks to delete.
    pub stacks: Vec<StackReport>,
    /// The ECS services waited for (empty with `--no-wait` and in a dry run).
    pub services: Vec<ServiceReport>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StackReport {
    pub stack: String,
    /// `null` for the environment stack.
    pub thespian: Option<String>,
    pub action: StackAction,
    /// The stack status at the end (the current one in a dry run; `null` for a stack that does not
    /// exist).
    pub status: Option<String>,
    /// How long this stack's operation took (`null` in a dry run).
    pub elapsed_ms: Option<u64>,
    /// Parameters whose values change, by name (values are not shown).
    pub parameters_changed: Vec<String>,
    /// The change set's resource changes (dry run only; empty otherwise).
    pub changes: Vec<ResourceChange>,
    /// Anything else worth saying (why a stack is recreated, why changes are not listed).
    pub note: Option<String>,
}

/// What happens (or would happen) to a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StackAction {
    Create,
    Update,
    /// The change set had nothing to do.
    NoChange,
    /// Stuck in ROLLBACK_COMPLETE (or ROLLBACK_FAILED, DELETE_FAILED): deleted, then created.
    Recreate,
    /// UPDATE_ROLLBACK_FAILED: `ContinueUpdateRollback`, then an update.
    ContinueRollback,
    /// The thespian is no longer in the manifest.
    Delete,
}

impl StackAction {
    pub fn word(self) -> &'static str {
        match self {
            StackAction::Create => "create",
            StackAction::Update => "update",
            StackAction::NoChange => "no change",
            StackAction::Recreate => "recreate",
            StackAction::ContinueRollback => "continue rollback",
            StackAction::Delete => "delete",
        }
    }
}

/// One ECS service after `up` waited for its deployment.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub thespian: String,
    pub service: String,
    /// The deployment followed (`ecs-svc/…`).
    pub deployment: Option<String>,
    /// `COMPLETED` once waited for.
    pub rollout_state: String,
    pub desired: i32,
    pub running: i32,
    /// The task definition ARN the service runs.
    pub task_definition: Option<String>,
    pub elapsed_ms: u64,
}

/// `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub fleet: String,
    pub region: String,
    pub environment: Option<EnvironmentStatus>,
    /// Sorted by name.
    pub thespians: Vec<ThespianStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentStatus {
    pub stack: String,
    pub stack_status: String,
    pub cluster: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThespianStatus {
    pub name: String,
    pub stack: String,
    pub stack_status: String,
    /// `null` when ECS has no such service (the stack failed before creating it, or it was deleted).
    pub service: Option<ServiceStatus>,
    /// Running and pending tasks (desired status RUNNING), by task id.
    pub tasks: Vec<TaskStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `ACTIVE`, `DRAINING`, `INACTIVE`.
    pub status: String,
    pub desired: i32,
    pub running: i32,
    pub pending: i32,
    /// The PRIMARY deployment's `rolloutState` (`IN_PROGRESS`, `COMPLETED`, `FAILED`), if any.
    pub rollout_state: Option<String>,
    pub rollout_reason: Option<String>,
    /// Deployments other than the PRIMARY one still present (a rollout in progress).
    pub other_deployments: usize,
    pub task_definition: Option<String>,
    pub task_definition_revision: Option<u32>,
    /// The newest service event (placement trouble shows here).
    pub latest_event: Option<String>,
}

impl ThespianStatus {
    /// Healthy: the stack is settled and not failed, and as many tasks run as are desired.
    pub fn healthy(&self) -> bool {
        let stack_ok = super::events::is_terminal(&self.stack_status)
            && !super::events::is_failed_state(&self.stack_status);
        stack_ok
            && self.service.as_ref().is_some_and(|s| {
                s.status == "ACTIVE" && s.running == s.desired && s.rollout_state.as_deref() != Some("FAILED")
            })
    }
}

/// `down`.
#[derive(Debug, Clone, Serialize)]
pub struct DownReport {
    pub fleet: String,
    pub region: String,
    pub deleted: Vec<DeletedStack>,
    /// `--keep-environment`: the environment stack was left in place.
    pub kept_environment: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeletedStack {
    pub stack: String,
    pub thespian: Option<String>,
    /// `DELETE_COMPLETE`.
    pub status: String,
    pub elapsed_ms: u64,
}
