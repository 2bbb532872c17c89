//! One file per subcommand. Each loads what it needs, calls the target or engine, and hands the result
//! to the UI; none of them prints directly.

pub mod down;
pub mod graph;
pub mod logs;
pub mod plan;
pub mod probe;
pub mod status;
pub mod templates;
pub mod tunnel;
pub mod up;
pub mod validate;

use crate::Context;
use crate::cli::Command;
use crate::error::{Error, Result};

/// Runs one subcommand and returns its exit code.
pub async fn run(command: &Command, ctx: &Context) -> Result<u8> {
    match command {
        Command::Up(args) => up::run(args, ctx).await,
        Command::Plan(args) => plan::run(args, ctx).await,
        Command::Status(args) => status::run(args, ctx).await,
        Command::Down(args) => down::run(args, ctx).await,
        Command::Logs(args) => logs::run(args, ctx).await,
        Command::Validate(args) => validate::run(args, ctx).await,
        Command::Graph(args) => graph::run(args, ctx).await,
        Command::Probe(args) => probe::run(args, ctx).await,
        Command::Tunnel(args) => tunnel::run(args, ctx).await,
        Command::Templates(args) => templates::run(args, ctx).await,
        // `main` runs the agent before any runtime of ours exists.
        Command::Agent => Err(Error::usage("the agent runs from main")),
    }
}
