//! thespctl: the control plane of Thespian fleets.
//!
//! The one-way flow: `thespian.yaml` → [`fleet`] (validated model, compiled to the agent's JSON) →
//! a [`target`] (local processes or AWS) → a report rendered by [`ui`]. `probe` and `tunnel` ask the
//! target for endpoints and talk gRPC to them with the agent's generated client.

pub mod cli;
pub mod commands;
pub mod error;
pub mod fleet;
pub mod probe;
pub mod target;
pub mod ui;

use tokio_util::sync::CancellationToken;

use crate::cli::GlobalArgs;
use crate::ui::Ui;

/// What every command gets: the global flags, the UI, and the Ctrl-C token every wait loop must watch.
#[derive(Debug, Clone)]
pub struct Context {
    pub global: GlobalArgs,
    pub ui: Ui,
    /// Cancelled on the first Ctrl-C. Long waits stop, say what is still running, and return
    /// [`error::Error::Interrupted`] (exit 130). A second Ctrl-C exits at once.
    pub cancel: CancellationToken,
}
