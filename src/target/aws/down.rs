//! `down` on AWS: the service stacks in parallel, then the environment stack — found by their tags,
//! not by the manifest, so thespians removed from it are deleted too.

use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream;

use super::AwsTarget;
use super::cfn::{ENV_THESPIAN, Pacer, StackInfo, token};
use super::deploy::{Run, Stop, WatchSpec, op_failure, stopped};
use super::error::{AwsError, Failure};
use super::events::OpKind;
use super::report::{DeletedStack, DownReport};
use crate::Context;
use crate::error::Result;
use crate::fleet::FleetRef;
use crate::target::DownOptions;

/// How many stacks `down` deletes at once.
const DOWN_PARALLEL: usize = 8;

pub(super) enum Deleted {
    Done(DeletedStack),
    Failed(Failure),
    Stopped {
        stack: String,
        stop: Stop,
        running: bool,
    },
    Abort(AwsError),
}

/// The stacks tagged with `fleet`: the environment stack and the service stacks (sorted by name).
pub(super) async fn fleet_stacks(
    target: &AwsTarget,
    fleet: &str,
    ctx: &Context,
) -> Result<(Option<StackInfo>, Vec<StackInfo>)> {
    let mut env = None;
    let mut services = Vec::new();
    for stack in target.cfn(ctx).all_stacks().await? {
        if stack.fleet() != Some(fleet) {
            continue;
        }
        match stack.thespian() {
            Some(ENV_THESPIAN) => env = Some(stack),
            Some(_) => services.push(stack),
            None => {}
        }
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((env, services))
}

pub(super) async fn down(
    target: &AwsTarget,
    fleet: &FleetRef,
    opts: &DownOptions,
    ctx: &Context,
) -> Result<DownReport> {
    let (env, services) = fleet_stacks(target, &fleet.fleet, ctx).await?;
    let mut report = DownReport {
        fleet: fleet.fleet.clone(),
        region: target.region.clone(),
        deleted: Vec::new(),
        kept_environment: opts.keep_environment && env.is_some(),
    };
    let env = env.filter(|_| !opts.keep_environment);
    if env.is_none() && services.is_empty() {
        return Ok(report);
    }

    let doomed: Vec<String> = services
        .iter()
        .chain(env.iter())
        .map(|s| match s.thespian() {
            Some(ENV_THESPIAN) | None => format!("{} (environment: VPC, cluster, instances)", s.name),
            Some(t) => format!("{} (thespian {t})", s.name),
        })
        .collect();
    if !opts.yes {
        let question = format!(
            "Delete these {} stacks of fleet {} in {}?",
            doomed.len(),
            fleet.fleet,
            target.region
        );
        super::confirm_or_stop(ctx, &question, &doomed, || {
            format!(
                "`down` would delete {} stacks ({})",
                doomed.len(),
                doomed.join(", ")
            )
        })
        .await?;
    }

    let names: Vec<String> = services
        .iter()
        .chain(env.iter())
        .map(|s| s.name.clone())
        .collect();
    let run = Run::new(target, ctx, false, false, None, &names);
    let mut outcome = Outcomes::default();
    outcome.collect(delete_stacks(&run, &services, DOWN_PARALLEL).await, &mut report)?;
    // The environment goes only once nothing runs in its cluster any more.
    let services_gone = outcome.failures.is_empty() && outcome.stop.is_none();
    if let (Some(env), true) = (&env, services_gone) {
        outcome.collect(
            delete_stacks(&run, std::slice::from_ref(env), 1).await,
            &mut report,
        )?;
    }
    if let Some(s) = outcome.stop {
        return Err(stopped(s, &run, outcome.still_running));
    }
    if !outcome.failures.is_empty() {
        return Err(AwsError::Failed {
            failures: outcome.failures,
        }
        .into());
    }
    Ok(report)
}

/// What a batch of deletions left to report.
#[derive(Default)]
pub(super) struct Outcomes {
    pub failures: Vec<Failure>,
    pub still_running: Vec<String>,
    pub stop: Option<Stop>,
}

impl Outcomes {
    /// Files each result; stops at an error that concerns the whole run.
    pub fn collect(&mut self, results: Vec<Deleted>, report: &mut DownReport) -> Result<()> {
        for r in results {
            match r {
                Deleted::Done(d) => report.deleted.push(d),
                Deleted::Failed(f) => self.failures.push(f),
                Deleted::Stopped { stack, stop, running } => {
                    if running {
                        self.still_running.push(format!("stack {stack}"));
                    }
                    self.stop = Some(self.stop.unwrap_or(stop));
                }
                Deleted::Abort(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Deletes `stacks`, `parallel` at a time, watching each until it is gone.
pub(super) async fn delete_stacks(run: &Run<'_>, stacks: &[StackInfo], parallel: usize) -> Vec<Deleted> {
    stream::iter(stacks)
        .map(|s| delete_one(run, s))
        .buffer_unordered(parallel.max(1))
        .collect()
        .await
}

async fn delete_one(run: &Run<'_>, stack: &StackInfo) -> Deleted {
    let line = run.progress.line(&stack.name, "deleting");
    if run.ctx.cancel.is_cancelled() {
        line.abandon("not started");
        return Deleted::Stopped {
            stack: stack.name.clone(),
            stop: Stop::Cancelled,
            running: false,
        };
    }
    let started = Instant::now();
    let mut pacer = Pacer::default();
    let label = stack.name.as_str();
    let watched = async {
        // Already being deleted (an earlier interrupted `down`): just watch.
        let (cursor, tok) = if stack.status == "DELETE_IN_PROGRESS" {
            (None, None)
        } else {
            let cursor = run.cursor(&stack.id, label, &mut pacer).await?;
            let tok = token("thespctl-down");
            run.cfn.delete_stack(&stack.id, label, &tok).await?;
            (cursor, Some(tok))
        };
        run.watch(
            WatchSpec {
                stack_id: &stack.id,
                label,
                kind: OpKind::Delete,
                cursor: cursor.as_deref(),
                token: tok.as_deref(),
            },
            &line,
            &mut pacer,
        )
        .await
    };
    match watched.await {
        Err(e) if e.exit_code() == crate::error::exit::USAGE => {
            line.finish(false, &e.to_string());
            Deleted::Abort(e)
        }
        Err(e) => {
            line.finish(false, &e.to_string());
            Deleted::Failed(Failure {
                subject: format!("stack {}", stack.name),
                summary: e.to_string(),
                causes: std::error::Error::source(&e)
                    .map(|s| vec![s.to_string()])
                    .unwrap_or_default(),
            })
        }
        Ok(Err(s)) => {
            line.abandon("still deleting");
            Deleted::Stopped {
                stack: stack.name.clone(),
                stop: s,
                running: true,
            }
        }
        Ok(Ok((status, op))) => {
            if OpKind::Delete.succeeded(&status) {
                line.finish(true, &status);
                Deleted::Done(DeletedStack {
                    stack: stack.name.clone(),
                    thespian: stack.thespian().filter(|t| *t != ENV_THESPIAN).map(str::to_owned),
                    status,
                    elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                })
            } else {
                line.finish(false, &status);
                Deleted::Failed(op_failure(&stack.name, &status, &op))
            }
        }
    }
}
