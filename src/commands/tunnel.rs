//! `thespctl tunnel`: forward a local port to a thespian's ECS task (or to an instance's port) through
//! Session Manager, natively or through an installed `session-manager-plugin` (`--plugin`).
//!
//! Runs until Ctrl-C, which terminates the session cleanly (TerminateSession flag in band, then the
//! `ssm:TerminateSession` API) and exits 0: stopping is what the user asked for.

use std::net::SocketAddr;

use crate::Context;
use crate::cli::TunnelArgs;
use crate::error::{Error, Result};
use crate::fleet::{self, FleetRef};
use crate::target::aws::config;
use crate::target::aws::tunnel::{
    self, Tunnel, TunnelError, TunnelTarget, plugin, resolve, session::Started,
};
use crate::ui::tunnel as ui_tunnel;

/// Where the tunnel goes: a thespian by name (ECS cluster + service) or an instance port.
enum Destination {
    Service { cluster: String, service: String },
    Instance(TunnelTarget),
}

pub async fn run(args: &TunnelArgs, ctx: &Context) -> Result<u8> {
    // The manifest names the cluster (the fleet) and the region; `--instance` and `--cluster` work
    // without one.
    let fleet = if args.instance.is_none() && args.cluster.is_none() {
        Some(fleet::load_ref(&ctx.global.file)?)
    } else {
        fleet::load_ref(&ctx.global.file).ok()
    };
    let destination = destination(args, fleet.as_ref())?;
    let bind = SocketAddr::new(args.bind, args.local_port);
    if args.plugin && !args.bind.is_loopback() {
        return Err(Error::usage(
            "--bind cannot be used with --plugin: session-manager-plugin always listens on localhost",
        ));
    }
    let manifest_region = fleet
        .as_ref()
        .and_then(|f| f.aws.as_ref())
        .and_then(|a| a.region.as_deref());
    let sdk = config::load(&ctx.global, manifest_region).await;
    if args.plugin {
        return run_plugin(args, ctx, &sdk, destination).await;
    }
    let opened = match destination {
        Destination::Service { cluster, service } => {
            tunnel::open_to_service(&sdk, &cluster, &service, args.replica, bind, ctx.cancel.clone()).await
        }
        Destination::Instance(target) => tunnel::open(&sdk, target, bind, ctx.cancel.clone()).await,
    };
    let tunnel = match opened {
        Ok(t) => t,
        Err(TunnelError::Cancelled) => {
            return Err(Error::Interrupted {
                still_running: vec![],
            });
        }
        Err(e) => return Err(e.into()),
    };
    ctx.ui.emit(&ui_tunnel::Forwarding(tunnel.description()));
    ctx.ui.info("press Ctrl-C to stop");
    let failure = serve(&tunnel, ctx).await;
    let closed = tunnel.close().await;
    ui_tunnel::closed(&ctx.ui, &closed);
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(crate::error::exit::OK),
    }
}

/// Reports events until the session ends by itself (an error) or Ctrl-C (None).
async fn serve(tunnel: &Tunnel, ctx: &Context) -> Option<TunnelError> {
    loop {
        tokio::select! {
            event = tunnel.next_event() => match event {
                Some(event) => ui_tunnel::event(&ctx.ui, &event),
                None => return tunnel.ended().await,
            },
            end = tunnel.ended() => return end,
            _ = ctx.cancel.cancelled() => return None,
        }
    }
}

fn destination(args: &TunnelArgs, fleet: Option<&FleetRef>) -> Result<Destination> {
    if let Some(instance) = &args.instance {
        let Some(port) = args.remote_port else {
            return Err(Error::usage(
                "--instance needs --remote-port N (the port on the instance)",
            ));
        };
        if args.replica.is_some() {
            return Err(Error::usage(
                "--replica picks a task of NAME; it cannot be used with --instance",
            ));
        }
        return Ok(Destination::Instance(TunnelTarget::new(
            instance.clone(),
            port,
            args.remote_host.clone(),
        )));
    }
    if args.remote_port.is_some() || args.remote_host.is_some() {
        return Err(Error::usage(
            "--remote-port and --remote-host go with --instance; with NAME the task's host port is found for you",
        ));
    }
    let Some(service) = args.name.clone() else {
        return Err(Error::usage(
            "name a thespian (NAME) or give --instance and --remote-port",
        ));
    };
    // The ECS cluster is named exactly after the fleet, the service after the thespian.
    let Some(cluster) = args.cluster.clone().or_else(|| fleet.map(|f| f.fleet.clone())) else {
        return Err(Error::usage(
            "no fleet manifest to name the ECS cluster: pass -f/--file PATH or --cluster CLUSTER",
        ));
    };
    Ok(Destination::Service { cluster, service })
}

/// `--plugin`: resolve as usual, start the session, hand it to session-manager-plugin.
async fn run_plugin(
    args: &TunnelArgs,
    ctx: &Context,
    sdk: &aws_config::SdkConfig,
    destination: Destination,
) -> Result<u8> {
    // Before any session exists: a missing plugin must leave nothing behind.
    let installed = plugin::find().await?;
    let region = sdk.region().ok_or(TunnelError::NoRegion)?.to_string();
    let (target, task) = match destination {
        Destination::Instance(target) => (target, None),
        Destination::Service { cluster, service } => {
            let ecs = aws_sdk_ecs::Client::new(sdk);
            let task = resolve::resolve_task(&ecs, &cluster, &service, args.replica).await?;
            let port = resolve::require_host_port(&task)?;
            (
                TunnelTarget::new(task.instance_id.clone(), port, None),
                Some(task),
            )
        }
    };
    let ssm = aws_sdk_ssm::Client::new(sdk);
    let started: Started = tunnel::start_session(&ssm, &target, args.local_port).await?;
    let handoff = plugin::Handoff {
        region,
        profile: ctx.global.profile.clone(),
        request: target.request_json(args.local_port),
        ssm_endpoint: tunnel::ssm_endpoint(sdk, ctx.global.endpoint_url.as_deref()).await?,
    };
    let mut report = ui_tunnel::PluginHandoff::new(
        &started.session_id,
        &installed.path.display().to_string(),
        installed.version.clone(),
        &target,
    );
    report.local_port = args.local_port;
    if let Some(task) = &task {
        report.thespian = Some(task.service.clone());
        report.task_id = Some(task.task_id.clone());
    }
    ctx.ui.emit(&report);
    let status = plugin::run(&installed, &started, &handoff, &ctx.cancel).await;
    // Backstop, as the AWS CLI does when the plugin cannot run: never leave a session dangling.
    let _ = ssm
        .terminate_session()
        .session_id(&started.session_id)
        .send()
        .await;
    let status = status?;
    if !status.success() && !ctx.cancel.is_cancelled() {
        return Err(TunnelError::PluginFailed { status }.into());
    }
    Ok(crate::error::exit::OK)
}
