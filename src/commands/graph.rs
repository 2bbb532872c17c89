//! `thespctl graph`: the fleet's call graph, method by method.

use crate::Context;
use crate::cli::GraphArgs;
use crate::error::{Result, exit};
use crate::fleet;
use crate::ui::fleet::graph;

/// Draws the graph of a valid manifest; an invalid one fails with its errors (exit 2).
pub async fn run(args: &GraphArgs, ctx: &Context) -> Result<u8> {
    let manifest = fleet::load_manifest(&ctx.global.file)?;
    graph(&ctx.ui, &manifest.graph(), args.format, &manifest.warnings);
    Ok(exit::OK)
}
