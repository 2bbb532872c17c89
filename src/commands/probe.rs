//! `thespctl probe`: resolve the thespian, open the connections, run one request or a load run, judge
//! the gates. Exit codes: 0 every gate passed; 1 the probe ran and a gate failed (a single shot that
//! was not OK fails the default `--max-error-rate 0`); 2 bad flags, unknown thespian, nothing running,
//! connection refused; 130 Ctrl-C (partial results are printed first).

use std::sync::Arc;
use std::time::Duration;

use crate::Context;
use crate::cli::{ProbeArgs, Via};
use crate::error::{Error, Result, exit};
use crate::probe::ProbeError;
use crate::probe::conn::{Pool, Refresh, parse_address};
use crate::probe::engine::{self, LoadPlan, LoadTarget, Pacing, Shared};
use crate::probe::gates::Gates;
use crate::probe::report::{ProbeReport, RunInfo};
use crate::target::{Endpoint, EndpointGuard};
use crate::ui;

/// `--max-in-flight` when not given: far above what a healthy run needs (rate × latency), low enough
/// that a long stall cannot exhaust memory or file descriptors.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 10_000;

/// How often the progress bar is refreshed.
const TICK: Duration = Duration::from_millis(200);

/// The validated flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub timeout: Duration,
    /// `None`: single shot.
    pub load: Option<LoadPlan>,
    pub connections: Option<u32>,
    /// Engine threads of a load run.
    pub threads: usize,
    pub gates: Gates,
}

fn bad(flag: &'static str, value: impl ToString, reason: &str) -> ProbeError {
    ProbeError::BadFlag {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

impl Options {
    pub fn from_args(args: &ProbeArgs) -> Result<Options, ProbeError> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if args.timeout.is_zero() {
            return Err(bad("--timeout", show(args.timeout), "must be more than 0"));
        }
        if args.requests == Some(0) {
            return Err(bad("-n/--requests", 0, "must be at least 1"));
        }
        if let Some(d) = args.duration.filter(|d| d.is_zero()) {
            return Err(bad("--duration", show(d), "must be more than 0"));
        }
        if args.concurrency == Some(0) {
            return Err(bad("--concurrency", 0, "must be at least 1"));
        }
        if let Some(rate) = args.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(bad(
                "--rate",
                rate,
                "must be a number of requests per second above 0",
            ));
        }
        if args.connections == Some(0) {
            return Err(bad("--connections", 0, "must be at least 1"));
        }
        if args.threads == Some(0) {
            return Err(bad("--threads", 0, "must be at least 1"));
        }
        if args.max_in_flight == Some(0) {
            return Err(bad("--max-in-flight", 0, "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&args.max_error_rate) {
            return Err(bad(
                "--max-error-rate",
                args.max_error_rate,
                "must be a fraction from 0 to 1 (0.05 = 5 %)",
            ));
        }
        if let Some(d) = args.max_p99.filter(|d| d.is_zero()) {
            return Err(bad("--max-p99", show(d), "must be more than 0"));
        }
        if !args.address.is_empty() && matches!(args.via, Via::Alb | Via::Tunnel) {
            return Err(bad(
                "--via",
                format!("{:?}", args.via).to_lowercase(),
                "applies to a thespian resolved by name; --address is probed directly",
            ));
        }
        let load_mode = args.requests.is_some()
            || args.duration.is_some()
            || args.concurrency.is_some()
            || args.rate.is_some();
        let load = load_mode.then(|| LoadPlan {
            pacing: match args.rate {
                Some(rate) => Pacing::Open {
                    rate,
                    max_in_flight: args.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
                },
                None => Pacing::Closed {
                    concurrency: args.concurrency.unwrap_or(1),
                },
            },
            requests: args.requests,
            duration: args.duration,
        });
        Ok(Options {
            timeout: args.timeout,
            load,
            connections: args.connections,
            // One per CPU by default (the engine never runs more threads than connections): on a 2-CPU
            // machine shared with the agent, two threads reach ~1.2x the rate of one (docs/benchmarks.md).
            threads: args.threads.map_or_else(
                || std::thread::available_parallelism().map_or(1, usize::from),
                |t| t as usize,
            ),
            gates: Gates {
                max_error_rate: args.max_error_rate,
                max_p99: args.max_p99,
            },
        })
    }
}

/// Where the requests go.
struct Resolution {
    target: String,
    endpoints: Vec<Endpoint>,
    /// Keeps a tunnel open for the whole probe; `run` closes it at the end.
    guard: Option<Box<dyn EndpointGuard>>,
    refresh: Option<Refresh>,
}

async fn resolve(args: &ProbeArgs, ctx: &Context) -> Result<Resolution> {
    if !args.address.is_empty() {
        let endpoints = args
            .address
            .iter()
            .map(|a| parse_address(a))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Resolution {
            target: args.name.clone().unwrap_or_else(|| args.address.join(",")),
            endpoints,
            guard: None,
            refresh: None,
        });
    }
    let Some(name) = args.name.clone() else {
        return Err(Error::usage(
            "say what to probe: a thespian NAME, or --address HOST:PORT",
        ));
    };
    let fleet = crate::fleet::load_ref(&ctx.global.file)?;
    let resolved = crate::target::endpoints(ctx, &fleet, &name, args.via).await?;
    if resolved.endpoints.is_empty() {
        resolved.close().await;
        return Err(ProbeError::NoReplicas { thespian: name }.into());
    }
    // Direct addresses (no tunnel to keep open) can be looked up again when a replica moves mid-run.
    let refresh = resolved.guard.is_none().then(|| {
        let (ctx, via, name) = (ctx.clone(), args.via, name.clone());
        let refresh: Refresh = Box::new(move || {
            let (ctx, fleet, name) = (ctx.clone(), fleet.clone(), name.clone());
            Box::pin(async move {
                let resolved = crate::target::endpoints(&ctx, &fleet, &name, via).await.ok()?;
                let endpoints = resolved.endpoints.clone();
                // Nothing to keep open for direct addresses; close whatever came anyway.
                resolved.close().await;
                Some(endpoints)
            })
        });
        refresh
    });
    Ok(Resolution {
        target: name,
        endpoints: resolved.endpoints,
        guard: resolved.guard,
        refresh,
    })
}

/// Connections for a run: `--connections`, else 2 per replica and at least 4.
fn connections(requested: Option<u32>, endpoints: usize) -> usize {
    requested.map_or_else(|| (2 * endpoints).max(4), |c| c as usize)
}

pub async fn run(args: &ProbeArgs, ctx: &Context) -> Result<u8> {
    let options = Options::from_args(args)?;
    let mut resolution = resolve(args, ctx).await?;
    let guard = resolution.guard.take();
    let result = probe(args, options, resolution, ctx).await;
    // A tunnel stays open for the whole probe and is closed cleanly whatever the outcome.
    if let Some(guard) = guard {
        guard.close().await;
    }
    result
}

async fn probe(args: &ProbeArgs, options: Options, resolution: Resolution, ctx: &Context) -> Result<u8> {
    let interrupted = || Error::Interrupted {
        still_running: vec![],
    };
    if resolution.endpoints.is_empty() {
        return Err(ProbeError::NoEndpoints.into());
    }
    let mut info = RunInfo {
        target: resolution.target,
        method: args.method,
        endpoints: resolution.endpoints.clone(),
        connections: 1,
        gates: options.gates,
    };

    let Some(plan) = options.load else {
        // One request, to one replica picked at random (as a load balancer would).
        let mut endpoints = resolution.endpoints;
        let first = fastrand::usize(..endpoints.len());
        endpoints.rotate_left(first);
        let connect = Pool::connect(endpoints, &[0], options.timeout, resolution.refresh.map(Arc::new));
        let pool = tokio::select! {
            () = ctx.cancel.cancelled() => return Err(interrupted()),
            pool = connect => pool?,
        };
        let shared = Shared {
            pool,
            method: args.method,
            timeout: options.timeout,
            progress: Arc::default(),
        };
        let shot = tokio::select! {
            () = ctx.cancel.cancelled() => return Err(interrupted()),
            shot = engine::single_shot(&shared) => shot,
        };
        let report = ProbeReport::single(info, shot);
        ctx.ui.emit(&report);
        return Ok(if report.passed { exit::OK } else { exit::FAILED });
    };

    let target = LoadTarget {
        connections: connections(options.connections, resolution.endpoints.len()),
        endpoints: resolution.endpoints,
        threads: options.threads,
        connect_timeout: options.timeout,
        refresh: resolution.refresh,
        method: args.method,
        timeout: options.timeout,
    };
    let prepared = tokio::select! {
        () = ctx.cancel.cancelled() => return Err(interrupted()),
        prepared = engine::prepare(target, plan, ctx.cancel.clone()) => prepared?,
    };
    info.connections = prepared.workers();
    ui::probe::announce(&ctx.ui, &info, &plan, prepared.threads());
    let bar = ui::probe::progress(&ctx.ui, &plan);
    let run = prepared.run(TICK, |t| ui::probe::tick(&bar, &plan, t)).await?;
    bar.finish_and_clear();
    let report = ProbeReport::load(info, plan.pacing, run);
    ctx.ui.emit(&report);
    if report.interrupted {
        return Err(interrupted());
    }
    Ok(if report.passed { exit::OK } else { exit::FAILED })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn options(args: &[&str]) -> Result<Options, ProbeError> {
        let mut argv = vec!["thespctl", "probe"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Probe(probe) = cli.command else {
            unreachable!()
        };
        Options::from_args(&probe)
    }

    #[test]
    fn no_load_flag_means_a_single_shot() {
        let o = options(&["gilbert"]).unwrap();
        assert_eq!(o.load, None);
        assert_eq!(o.timeout, Duration::from_secs(10));
        assert_eq!(o.gates, Gates::default());
    }

    #[test]
    fn load_flags_choose_the_loop() {
        let o = options(&["gilbert", "-n", "100"]).unwrap();
        assert_eq!(o.load.unwrap().pacing, Pacing::Closed { concurrency: 1 });
        let o = options(&["gilbert", "-c", "64", "--duration", "10s"]).unwrap();
        let plan = o.load.unwrap();
        assert_eq!(plan.pacing, Pacing::Closed { concurrency: 64 });
        assert_eq!(plan.duration, Some(Duration::from_secs(10)));
        let o = options(&["gilbert", "--rate", "5000", "--duration", "10s"]).unwrap();
        let plan = o.load.unwrap();
        assert_eq!(
            plan.pacing,
            Pacing::Open {
                rate: 5000.0,
                max_in_flight: DEFAULT_MAX_IN_FLIGHT
            }
        );
        assert_eq!(plan.total(), Some(50_000));
        let o = options(&["gilbert", "--rate", "10", "--max-in-flight", "3"]).unwrap();
        assert_eq!(
            o.load.unwrap().pacing,
            Pacing::Open {
                rate: 10.0,
                max_in_flight: 3
            }
        );
    }

    #[test]
    fn nonsense_values_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (&["g", "--rate", "0"][..], "--rate"),
            (&["g", "--rate", "NaN"][..], "--rate"),
            (&["g", "-c", "0"][..], "--concurrency"),
            (&["g", "-n", "0"][..], "-n/--requests"),
            (&["g", "--duration", "0s"][..], "--duration"),
            (&["g", "--timeout", "0s"][..], "--timeout"),
            (&["g", "--connections", "0"][..], "--connections"),
            (&["g", "--max-error-rate", "1.5"][..], "--max-error-rate"),
            (&["g", "--max-error-rate=-0.1"][..], "--max-error-rate"),
            (&["g", "--max-p99", "0ms"][..], "--max-p99"),
            (&["--address", "127.0.0.1:1", "--via", "tunnel"][..], "--via"),
        ] {
            let err = options(args).unwrap_err();
            assert!(err.to_string().starts_with(flag), "{args:?}: {err}");
            assert_eq!(err.exit_code(), exit::USAGE);
        }
    }

    #[test]
    fn clap_rejects_what_cannot_be_combined() {
        assert!(Cli::try_parse_from(["thespctl", "probe", "g", "-c", "2", "--rate", "5"]).is_err());
        assert!(Cli::try_parse_from(["thespctl", "probe", "g", "--max-in-flight", "5"]).is_err());
        assert!(
            Cli::try_parse_from(["thespctl", "probe"]).is_err(),
            "NAME or --address"
        );
        assert!(Cli::try_parse_from(["thespctl", "probe", "--address", "127.0.0.1:1"]).is_ok());
    }

    #[test]
    fn default_connections_are_two_per_replica_and_at_least_four() {
        assert_eq!(connections(None, 1), 4);
        assert_eq!(connections(None, 3), 6);
        assert_eq!(connections(Some(1), 3), 1);
    }
}
