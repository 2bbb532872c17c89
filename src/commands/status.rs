//! `thespctl status`: what runs now. Exit 0 when everything is healthy, 1 when not (see the target's
//! report for what "healthy" means there).

use crate::Context;
use crate::cli::{StatusArgs, TargetKind};
use crate::error::Result;
use crate::target::aws::AwsTarget;
use crate::target::local::LocalTarget;
use crate::target::{Target, choose};

use super::up::emit;

pub async fn run(_args: &StatusArgs, ctx: &Context) -> Result<u8> {
    let fleet = crate::fleet::load_ref(&ctx.global.file)?;
    match choose(ctx.global.target, fleet.target) {
        TargetKind::Local => {
            let report = LocalTarget::for_fleet(&fleet).status(&fleet, ctx).await?;
            Ok(emit(ctx, &report))
        }
        TargetKind::Aws => {
            let target = AwsTarget::connect(ctx, &fleet).await?;
            let report = target.status(&fleet, ctx).await?;
            Ok(emit(ctx, &report))
        }
    }
}
