//! The AWS target: an environment stack and one ECS service stack per thespian, through change sets.
//! AWS SDK types stay inside this module.
//!
//! - [`deploy`]: `up` / `plan` — change sets, stuck states, parallel service stacks, ECS rollouts.
//! - [`down`]: deletes the fleet's stacks, found by tag.
//! - [`status`]: stacks, services, tasks, instances, host ports.
//! - [`events`], [`changes`], [`ecs`]: the pure logic (operation slicing and root cause, change set
//!   summaries, rollout and circuit-breaker detection), tested on recorded AWS output.
//! - [`cfn`], [`error`], [`config`]: the API calls, error classification and backoff, the `SdkConfig`.

pub mod cfn;
pub mod changes;
pub mod config;
mod deploy;
mod down;
pub mod ecs;
pub mod error;
pub mod events;
pub mod params;
pub mod report;
mod status;
pub mod templates;
pub mod tunnel;

use aws_config::SdkConfig;

pub use error::AwsError;
use report::{DownReport, StatusReport, UpReport};

use crate::Context;
use crate::cli::Via;
use crate::error::Result;
use crate::fleet::{FleetRef, Plan};
use crate::target::{DownOptions, Endpoint, Resolved, Target, UpOptions};

/// Asks on the terminal before a destructive step. No, Ctrl-C, or no terminal to ask on (then `refusal`
/// says what needed confirming, and the error says to pass `--yes`) stop the command before it acts.
async fn confirm_or_stop(
    ctx: &Context,
    question: &str,
    details: &[String],
    refusal: impl FnOnce() -> String,
) -> Result<()> {
    use crate::ui::aws::{Confirm, confirm};
    match confirm(&ctx.ui, question, details, &ctx.cancel).await {
        Confirm::Yes => Ok(()),
        Confirm::No => Err(AwsError::Declined.into()),
        Confirm::Interrupted => Err(crate::error::Error::Interrupted {
            still_running: vec![],
        }),
        Confirm::NoTerminal => Err(AwsError::NeedsConfirmation { what: refusal() }.into()),
    }
}

/// The AWS target of one fleet.
#[derive(Debug, Clone)]
pub struct AwsTarget {
    pub sdk: SdkConfig,
    pub region: String,
    /// `--profile` / `AWS_PROFILE`, for messages.
    pub profile: Option<String>,
    /// CloudFormation calls go to an overridden endpoint (`--endpoint-url`, `AWS_ENDPOINT_URL[_CLOUDFORMATION]`),
    /// i.e. an emulator such as moto rather than AWS: only then are emulator gaps tolerated.
    pub custom_endpoint: bool,
    cfn: aws_sdk_cloudformation::Client,
    ecs: aws_sdk_ecs::Client,
}

impl AwsTarget {
    /// Loads the AWS configuration for `fleet` (region from the flags, else the manifest, else the
    /// profile/environment) and makes the clients. Fails when no region is configured.
    pub async fn connect(ctx: &Context, fleet: &FleetRef) -> Result<Self> {
        let region = fleet.aws.as_ref().and_then(|a| a.region.as_deref());
        let sdk = config::load_checked(&ctx.global, region).await?;
        Ok(AwsTarget::with_config(sdk, ctx.global.profile.clone()))
    }

    /// A target on an explicit `SdkConfig` (which must have a region).
    pub fn with_config(sdk: SdkConfig, profile: Option<String>) -> Self {
        let custom_endpoint = sdk.endpoint_url().is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_CLOUDFORMATION").is_some_and(|v| !v.is_empty());
        AwsTarget {
            region: config::region_of(&sdk).unwrap_or_default(),
            profile,
            custom_endpoint,
            cfn: aws_sdk_cloudformation::Client::new(&sdk),
            ecs: aws_sdk_ecs::Client::new(&sdk),
            sdk,
        }
    }

    pub(crate) fn cfn(&self, ctx: &Context) -> cfn::Cfn {
        cfn::Cfn {
            client: self.cfn.clone(),
            region: self.region.clone(),
            profile: self.profile.clone(),
            cancel: ctx.cancel.clone(),
            backoff: error::Backoff::default(),
        }
    }

    pub(crate) fn ecs(&self, ctx: &Context) -> ecs::Ecs {
        ecs::Ecs {
            client: self.ecs.clone(),
            region: self.region.clone(),
            profile: self.profile.clone(),
            cancel: ctx.cancel.clone(),
        }
    }
}

impl Target for AwsTarget {
    type UpReport = UpReport;
    type StatusReport = StatusReport;
    type DownReport = DownReport;

    async fn up(&self, plan: &Plan, opts: &UpOptions, ctx: &Context) -> Result<UpReport> {
        deploy::up(self, plan, opts, ctx).await
    }

    async fn status(&self, fleet: &FleetRef, ctx: &Context) -> Result<StatusReport> {
        status::status(self, fleet, ctx).await
    }

    async fn down(&self, fleet: &FleetRef, opts: &DownOptions, ctx: &Context) -> Result<DownReport> {
        down::down(self, fleet, opts, ctx).await
    }

    /// `--via alb`: `https://NAME.DOMAIN` from the manifest's `aws.alb`; `--via tunnel`: a Session
    /// Manager tunnel to a running task; `--via auto`: the ALB when the fleet has one, else a tunnel.
    async fn endpoints(&self, fleet: &FleetRef, thespian: &str, via: Via, ctx: &Context) -> Result<Resolved> {
        let (_, services) = down::fleet_stacks(self, &fleet.fleet, ctx).await?;
        let known: Vec<String> = services
            .iter()
            .filter_map(|s| s.thespian().map(str::to_owned))
            .collect();
        if !known.iter().any(|k| k == thespian) {
            return Err(AwsError::UnknownThespian {
                name: thespian.to_string(),
                fleet: fleet.fleet.clone(),
                known,
            }
            .into());
        }
        let alb = fleet.aws.as_ref().and_then(|a| a.alb.as_ref());
        let use_alb = match via {
            Via::Direct => return Err(AwsError::ViaDirect.into()),
            Via::Alb => true,
            Via::Tunnel => false,
            Via::Auto => alb.is_some(),
        };
        if use_alb {
            let alb = alb.ok_or_else(|| AwsError::NoAlb {
                fleet: fleet.fleet.clone(),
            })?;
            return Ok(Resolved {
                endpoints: vec![Endpoint {
                    uri: format!("https://{thespian}.{}", alb.domain),
                    label: format!("{thespian} (ALB)"),
                }],
                guard: None,
            });
        }
        // A Session Manager tunnel to one running task of the service (ECS cluster = fleet name, service =
        // thespian name, as the templates define them), on a free loopback port, for this run only.
        //
        // The tunnel lives on its own token, not a child of Ctrl-C: on Ctrl-C the probe stops its load,
        // reports what it measured and only then closes the tunnel through the guard, so in-flight
        // requests end as the probe decides rather than as UNAVAILABLE. Ctrl-C while the tunnel is still
        // being opened does abort the opening, through the same token, so the opener cleans up after
        // itself (a started session is terminated) instead of being dropped half-way.
        let bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let life = tokio_util::sync::CancellationToken::new();
        let opening = tunnel::open_to_service(&self.sdk, &fleet.fleet, thespian, None, bind, life.clone());
        tokio::pin!(opening);
        let tunnel = tokio::select! {
            t = &mut opening => t?,
            _ = ctx.cancel.cancelled() => {
                life.cancel();
                opening.await?
            }
        };
        let d = tunnel.description();
        let label = format!(
            "{thespian} via tunnel (task {}, {}:{})",
            d.task_id.as_deref().unwrap_or("?"),
            d.instance_id,
            d.remote_port
        );
        Ok(Resolved {
            endpoints: vec![Endpoint {
                uri: format!("http://{}", tunnel.local_addr()),
                label,
            }],
            guard: Some(Box::new(tunnel)),
        })
    }
}

impl crate::target::EndpointGuard for tunnel::Tunnel {
    fn close(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            // How it ended (flag acknowledged, API backstop) matters to `tunnel`, not to a probe.
            let _ = (*self).close().await;
        })
    }
}
