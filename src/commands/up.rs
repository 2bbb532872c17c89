//! `thespctl up`: bring the fleet in line with the manifest, on the target in effect.

use crate::Context;
use crate::cli::{TargetKind, UpArgs};
use crate::error::Result;
use crate::fleet::{FleetRef, Plan};
use crate::target::aws::AwsTarget;
use crate::target::local::LocalTarget;
use crate::target::{Target, UpOptions, choose};
use crate::ui::Report;

pub async fn run(args: &UpArgs, ctx: &Context) -> Result<u8> {
    let plan = crate::fleet::load_plan(&ctx.global.file)?;
    let opts = UpOptions {
        dry_run: args.dry_run,
        yes: args.yes,
        wait: args.wait(),
        timeout: args.timeout,
        continue_rollback: args.continue_rollback,
        parallel: usize::from(args.parallel),
    };
    deploy(&plan, &opts, ctx).await
}

/// `up` and `plan` (which is `up` with `dry_run`) on whichever target the flag or manifest chooses.
pub async fn deploy(plan: &Plan, opts: &UpOptions, ctx: &Context) -> Result<u8> {
    // Problems that do not stop the fleet from working (an unused method, say) are said once, up front.
    for warning in &plan.warnings {
        ctx.ui.warn(warning);
    }
    match choose(ctx.global.target, plan.target) {
        TargetKind::Local => {
            let report = LocalTarget::for_plan(plan).up(plan, opts, ctx).await?;
            Ok(emit(ctx, &report))
        }
        TargetKind::Aws => {
            let target = AwsTarget::connect(ctx, &fleet_ref(plan)).await?;
            let report = target.up(plan, opts, ctx).await?;
            Ok(emit(ctx, &report))
        }
    }
}

/// Prints a report and returns the exit code it stands for.
pub fn emit<R: Report>(ctx: &Context, report: &R) -> u8 {
    ctx.ui.emit(report);
    report.exit_code()
}

/// The part of a plan that finds a deployed fleet.
pub fn fleet_ref(plan: &Plan) -> FleetRef {
    FleetRef {
        fleet: plan.fleet.clone(),
        manifest_path: plan.manifest_path.clone(),
        target: plan.target,
        aws: plan.aws.clone(),
    }
}
