//! `thespctl down`: stop the fleet and remove what `up` made.

use crate::Context;
use crate::cli::{DownArgs, TargetKind};
use crate::error::Result;
use crate::fleet::{FleetRef, ManifestError};
use crate::target::aws::AwsTarget;
use crate::target::local::LocalTarget;
use crate::target::{DownOptions, Target, choose};

use super::up::emit;

pub async fn run(args: &DownArgs, ctx: &Context) -> Result<u8> {
    let fleet = match crate::fleet::load_ref(&ctx.global.file) {
        Ok(fleet) => fleet,
        Err(e) => local_fleet_without_manifest(ctx, e)?,
    };
    let opts = DownOptions {
        yes: args.yes,
        keep_environment: args.keep_environment,
        grace: args.grace,
    };
    match choose(ctx.global.target, fleet.target) {
        TargetKind::Local => {
            let report = LocalTarget::for_fleet(&fleet).down(&fleet, &opts, ctx).await?;
            Ok(emit(ctx, &report))
        }
        TargetKind::Aws => {
            let target = AwsTarget::connect(ctx, &fleet).await?;
            let report = target.down(&fleet, &opts, ctx).await?;
            Ok(emit(ctx, &report))
        }
    }
}

/// A deleted manifest must not make a running local fleet unstoppable: when the manifest is gone but
/// `.thespctl/` beside where it was records a fleet, that fleet is the one to stop.
fn local_fleet_without_manifest(ctx: &Context, err: ManifestError) -> Result<FleetRef> {
    let missing =
        matches!(&err, ManifestError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
    if !missing || ctx.global.target == Some(TargetKind::Aws) {
        return Err(err.into());
    }
    let target = LocalTarget::beside(&ctx.global.file);
    match target.state().load() {
        Ok(Some(state)) => Ok(FleetRef {
            fleet: state.fleet,
            manifest_path: ctx.global.file.clone(),
            target: Some(TargetKind::Local),
            aws: None,
        }),
        _ => Err(err.into()),
    }
}
