//! `thespctl validate`: every problem of the manifest, or a one-line summary.

use crate::Context;
use crate::cli::ValidateArgs;
use crate::error::{Result, exit};
use crate::fleet;
use crate::ui::fleet::{ValidateReport, validation};

/// Exit 0 when the manifest is valid (warnings allowed), 2 when it has errors or cannot be read.
pub async fn run(_args: &ValidateArgs, ctx: &Context) -> Result<u8> {
    let checked = fleet::check(&ctx.global.file)?;
    let report = ValidateReport::new(&checked);
    validation(&ctx.ui, &report);
    Ok(if report.valid { exit::OK } else { exit::USAGE })
}
