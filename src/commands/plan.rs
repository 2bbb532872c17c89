//! `thespctl plan`: what `up` would change, without changing anything (`up --dry-run`).

use crate::Context;
use crate::cli::PlanArgs;
use crate::error::Result;
use crate::target::UpOptions;

pub async fn run(_args: &PlanArgs, ctx: &Context) -> Result<u8> {
    let plan = crate::fleet::load_plan(&ctx.global.file)?;
    let opts = UpOptions {
        dry_run: true,
        yes: false,
        wait: false,
        timeout: None,
        continue_rollback: false,
        parallel: 8,
    };
    super::up::deploy(&plan, &opts, ctx).await
}
