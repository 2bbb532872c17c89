//! `up` and `plan` on AWS: the environment stack, then the service stacks in parallel, then the ECS
//! rollouts — every stack through a change set, watched through its events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_smithy_types::DateTime;
use futures_util::StreamExt;
use futures_util::stream;

use super::AwsTarget;
use super::cfn::{Cfn, ENV_THESPIAN, Pacer, StackInfo, StackSpec, token};
use super::changes::changed_parameters;
use super::ecs::{Ecs, Rollout, RolloutWatch, first_stopped};
use super::error::{AwsError, Failure};
use super::events::{OpKind, Operation, Slice, operation};
use super::params;
use super::report::{ServiceReport, StackAction, StackReport, UpReport};
use super::templates::{ECS_SERVICE, EnvironmentOutputs, ecs_service};
use crate::Context;
use crate::error::{Error, Result};
use crate::fleet::Plan;
use crate::target::UpOptions;
use crate::ui::aws::{Line, Progress};

/// How many pages of events to read back when looking for the start of an operation.
const MAX_EVENT_PAGES: usize = 5;

/// Why a wait stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Cancelled,
    TimedOut,
}

/// The result of one stack's part of `up`.
enum Outcome {
    Done {
        report: StackReport,
        /// The stack at the end (with outputs), when it was read.
        stack: Option<StackInfo>,
        /// Server time of the operation's first event: ECS events before it are older deployments'.
        started: Option<DateTime>,
    },
    Failed {
        report: StackReport,
        failure: Failure,
    },
    /// Ctrl-C or `--timeout`; `running` says whether a CloudFormation operation carries on.
    Stopped {
        report: StackReport,
        stop: Stop,
        running: bool,
    },
    /// An error that is not this stack's alone (credentials, permissions, configuration).
    Abort(AwsError),
}

/// What to do with a stack, decided from its status before anything is deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    Create,
    Update,
    /// ROLLBACK_COMPLETE / ROLLBACK_FAILED / DELETE_FAILED / CREATE_FAILED: delete, then create.
    Recreate(String),
    /// UPDATE_ROLLBACK_FAILED.
    ContinueRollback,
    /// Another operation is in progress: wait for it, then decide again.
    Wait(String),
}

pub(super) fn decide(existing: Option<&StackInfo>) -> Decision {
    let Some(stack) = existing else {
        return Decision::Create;
    };
    match stack.status.as_str() {
        // A stack made by a change set that was never executed (a `plan` interrupted, a failed
        // create) has no resources: a CREATE change set reuses it.
        "REVIEW_IN_PROGRESS" | "DELETE_COMPLETE" => Decision::Create,
        "ROLLBACK_COMPLETE" | "ROLLBACK_FAILED" | "DELETE_FAILED" | "CREATE_FAILED" => {
            Decision::Recreate(stack.status.clone())
        }
        "UPDATE_ROLLBACK_FAILED" => Decision::ContinueRollback,
        s if s.ends_with("_IN_PROGRESS") => Decision::Wait(s.to_string()),
        _ => Decision::Update,
    }
}

/// Which stack operation to watch.
pub(super) struct WatchSpec<'x> {
    /// The stack ARN (works after deletion).
    pub stack_id: &'x str,
    /// The stack name, for messages.
    pub label: &'x str,
    pub kind: OpKind,
    /// The newest event before our call.
    pub cursor: Option<&'x str>,
    /// The `ClientRequestToken` we sent.
    pub token: Option<&'x str>,
}

/// One `up` (or `plan`) run.
pub(super) struct Run<'a> {
    pub cfn: Cfn,
    pub ecs: Ecs,
    pub ctx: &'a Context,
    /// `plan` / `up --dry-run`.
    pub dry_run: bool,
    /// Read each deployed stack back (its outputs) for the ECS wait.
    pub wait: bool,
    pub started: Instant,
    pub deadline: Option<Instant>,
    pub progress: Progress,
    /// Stacks being watched right now: the steady polling interval grows with it.
    active: AtomicUsize,
}

impl<'a> Run<'a> {
    pub fn new(
        target: &AwsTarget,
        ctx: &'a Context,
        dry_run: bool,
        wait: bool,
        timeout: Option<Duration>,
        names: &[String],
    ) -> Self {
        let started = Instant::now();
        Run {
            cfn: target.cfn(ctx),
            ecs: target.ecs(ctx),
            ctx,
            dry_run,
            wait,
            started,
            deadline: timeout.map(|t| started + t),
            progress: Progress::new(&ctx.ui, names),
            active: AtomicUsize::new(0),
        }
    }

    /// Sleeps for `delay`, unless Ctrl-C or the deadline comes first.
    pub async fn pause(&self, delay: Duration) -> Option<Stop> {
        if self.ctx.cancel.is_cancelled() {
            return Some(Stop::Cancelled);
        }
        let now = Instant::now();
        let (wake, stop_at_wake) = match self.deadline {
            Some(d) if d <= now + delay => (d, true),
            _ => (now + delay, false),
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => stop_at_wake.then_some(Stop::TimedOut),
            () = self.ctx.cancel.cancelled() => Some(Stop::Cancelled),
        }
    }

    /// The delay before poll number `polls + 1`: quick at first (moto and small stacks finish fast),
    /// then every 2 s, stretched when many stacks are watched at once (at most 10 s).
    fn poll_interval(&self, polls: u32) -> Duration {
        match polls {
            0 => Duration::ZERO,
            1 => Duration::from_millis(500),
            2 => Duration::from_secs(1),
            _ => {
                let active = u32::try_from(self.active.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
                (Duration::from_millis(250) * active).clamp(Duration::from_secs(2), Duration::from_secs(10))
            }
        }
    }

    /// Watches a stack's events until the operation ends: the terminal status and the operation's
    /// events, or why the wait stopped.
    pub async fn watch(
        &self,
        w: WatchSpec<'_>,
        line: &Line,
        pacer: &mut Pacer,
    ) -> std::result::Result<std::result::Result<(String, Operation), Stop>, AwsError> {
        self.active.fetch_add(1, Ordering::Relaxed);
        let result = self.watch_inner(&w, line, pacer).await;
        self.active.fetch_sub(1, Ordering::Relaxed);
        result
    }

    async fn watch_inner(
        &self,
        w: &WatchSpec<'_>,
        line: &Line,
        pacer: &mut Pacer,
    ) -> std::result::Result<std::result::Result<(String, Operation), Stop>, AwsError> {
        let slice = Slice {
            after_event: w.cursor,
            token: w.token,
        };
        let mut polls = 0;
        loop {
            if let Some(stop) = self.pause(self.poll_interval(polls)).await {
                return Ok(Err(stop));
            }
            polls += 1;
            let mut events = Vec::new();
            let mut next = None;
            let mut pages = 0;
            let op = loop {
                if !pacer.ready(&self.ctx.cancel).await {
                    return Ok(Err(Stop::Cancelled));
                }
                let (page, more) = self.cfn.events_page(w.stack_id, w.label, next).await?;
                events.extend(page);
                pages += 1;
                let op = operation(&events, w.kind, &slice);
                if op.found_start || more.is_none() || pages >= MAX_EVENT_PAGES {
                    break op;
                }
                next = more;
            };
            if let Some(latest) = op.latest() {
                line.set(&latest.short());
            }
            if let Some(status) = op.terminal_status() {
                return Ok(Ok((status.to_string(), op)));
            }
        }
    }

    /// The id of the newest event of a stack: events up to it belong to earlier operations.
    pub async fn cursor(
        &self,
        stack_id: &str,
        label: &str,
        pacer: &mut Pacer,
    ) -> std::result::Result<Option<String>, AwsError> {
        if !pacer.ready(&self.ctx.cancel).await {
            return Ok(None);
        }
        let (events, _) = self.cfn.events_page(stack_id, label, None).await?;
        Ok(events.first().map(|e| e.id.clone()))
    }
}

/// `up` / `plan`.
pub(super) async fn up(target: &AwsTarget, plan: &Plan, opts: &UpOptions, ctx: &Context) -> Result<UpReport> {
    let aws = params::check_plan(plan)?;
    for t in [super::templates::ENVIRONMENT, ECS_SERVICE] {
        if t.body.len() > params::TEMPLATE_BODY_LIMIT {
            return Err(AwsError::TemplateTooLarge {
                name: t.name,
                bytes: t.body.len(),
                limit: params::TEMPLATE_BODY_LIMIT,
            }
            .into());
        }
    }
    let env_spec = params::env_spec(plan, aws)?;
    let env_name = env_spec.name.clone();

    // Find what exists: by tag (for removed thespians) and by name (to refuse foreign stacks).
    let cfn = target.cfn(ctx);
    let all = cfn.all_stacks().await?;
    let wanted: BTreeMap<String, Option<&str>> = std::iter::once((env_name.clone(), None))
        .chain(plan.thespians.iter().map(|t| {
            (
                params::service_stack_name(&plan.fleet, &t.name),
                Some(t.name.as_str()),
            )
        }))
        .collect();
    let mut existing: BTreeMap<String, StackInfo> = BTreeMap::new();
    let mut removed: Vec<StackInfo> = Vec::new();
    for stack in all {
        let ours = stack.fleet() == Some(plan.fleet.as_str());
        if let Some(thespian) = wanted.get(&stack.name) {
            let tag_ok = ours && stack.thespian() == Some(thespian.unwrap_or(ENV_THESPIAN));
            if !tag_ok {
                return Err(AwsError::ForeignStack {
                    stack: stack.name,
                    fleet: plan.fleet.clone(),
                }
                .into());
            }
            existing.insert(stack.name.clone(), stack);
        } else if ours && stack.thespian().is_some_and(|t| t != ENV_THESPIAN) {
            removed.push(stack);
        }
    }

    // Decide per stack, and settle what needs the user's say before touching anything.
    let decisions: BTreeMap<String, Decision> = wanted
        .keys()
        .map(|name| (name.clone(), decide(existing.get(name))))
        .collect();
    if !opts.dry_run {
        let blocked: Vec<&String> = decisions
            .iter()
            .filter(|(_, d)| **d == Decision::ContinueRollback)
            .map(|(n, _)| n)
            .collect();
        if let (Some(stack), false) = (blocked.first(), opts.continue_rollback) {
            return Err(AwsError::NeedsContinueRollback {
                stack: (*stack).clone(),
            }
            .into());
        }
        let recreate: Vec<String> = decisions
            .iter()
            .filter_map(|(n, d)| match d {
                Decision::Recreate(status) => Some(format!("stack `{n}` is {status}")),
                _ => None,
            })
            .collect();
        if !recreate.is_empty() && !opts.yes {
            super::confirm_or_stop(
                ctx,
                "Delete and recreate these stacks (their resources are deleted first)?",
                &recreate,
                || format!("{} and must be deleted and recreated", recreate.join(", ")),
            )
            .await?;
        }
    }

    let mut names: Vec<String> = wanted.keys().cloned().collect();
    names.extend(removed.iter().map(|s| s.name.clone()));
    names.extend(plan.thespians.iter().map(|t| format!("service {}", t.name)));
    let run = Run::new(target, ctx, opts.dry_run, opts.wait, opts.timeout, &names);
    let mut report = UpReport {
        fleet: plan.fleet.clone(),
        region: target.region.clone(),
        dry_run: opts.dry_run,
        stacks: Vec::new(),
        services: Vec::new(),
        warnings: Vec::new(),
    };

    // 1. The environment stack.
    let env_existing = existing.get(&env_name).cloned();
    let env_line = run.progress.line(&env_name, "queued");
    let env_decision = decisions.get(&env_name).cloned().unwrap_or(Decision::Create);
    let env_outcome = deploy_stack(&run, &env_spec, env_existing, env_decision, &env_line, true).await;
    let env_stack = match env_outcome {
        Outcome::Done { report: r, stack, .. } => {
            report.stacks.push(r);
            stack
        }
        Outcome::Failed { failure, .. } => {
            return Err(AwsError::Failed {
                failures: vec![failure],
            }
            .into());
        }
        Outcome::Stopped { stop, running, .. } => {
            let still = if running {
                vec![format!("stack {env_name}")]
            } else {
                vec![]
            };
            return Err(stopped(stop, &run, still));
        }
        Outcome::Abort(e) => return Err(e.into()),
    };

    // The service stacks' wiring: the environment's outputs (none yet in a dry run of a new fleet).
    let env_outputs: Option<EnvironmentOutputs> = match &env_stack {
        // Only a stack whose last operation completed (or rolled back to a completed state) has outputs:
        // a plan against a stack stuck in ROLLBACK_COMPLETE has none to offer.
        Some(stack)
            if matches!(
                stack.status.as_str(),
                "CREATE_COMPLETE"
                    | "UPDATE_COMPLETE"
                    | "UPDATE_ROLLBACK_COMPLETE"
                    | "IMPORT_COMPLETE"
                    | "IMPORT_ROLLBACK_COMPLETE"
            ) =>
        {
            let (outputs, warning) =
                params::env_outputs(stack, &plan.fleet, aws.alb.is_some(), target.custom_endpoint)?;
            if let Some(w) = warning {
                run.progress.warn(&w);
                report.warnings.push(w);
            }
            Some(outputs)
        }
        _ => None,
    };

    // 2. The service stacks, in parallel.
    let priorities = params::listener_priorities(
        &plan.thespians.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        &existing
            .values()
            .filter_map(|s| {
                let p = s
                    .parameters
                    .get(ecs_service::param::LISTENER_RULE_PRIORITY)?
                    .parse()
                    .ok()?;
                Some((s.thespian()?.to_string(), p))
            })
            .collect(),
    );
    let mut jobs = Vec::new();
    for t in &plan.thespians {
        let name = params::service_stack_name(&plan.fleet, &t.name);
        let spec = match &env_outputs {
            Some(env) => Some(StackSpec {
                name: name.clone(),
                thespian: Some(t.name.clone()),
                template: ECS_SERVICE.body.to_string(),
                parameters: params::service_parameters(
                    plan,
                    aws,
                    t,
                    &env_name,
                    env,
                    priorities.get(&t.name).copied().unwrap_or(1),
                )?,
                tags: params::tags(&plan.fleet, Some(&t.name)),
            }),
            None => None,
        };
        let decision = decisions.get(&name).cloned().unwrap_or(Decision::Create);
        jobs.push((t.name.clone(), name, spec, decision));
    }
    let outcomes: Vec<(String, Outcome)> = stream::iter(jobs)
        .map(|(thespian, name, spec, decision)| {
            let run = &run;
            let existing = existing.get(&name).cloned();
            async move {
                let line = run.progress.line(&name, "queued");
                let outcome = match spec {
                    Some(spec) => deploy_stack(run, &spec, existing, decision, &line, false).await,
                    // Dry run of a new fleet: no environment outputs to plan service stacks against.
                    None => {
                        line.finish(true, "would create");
                        Outcome::Done {
                            report: StackReport {
                                stack: name.clone(),
                                thespian: Some(thespian.clone()),
                                action: StackAction::Create,
                                status: None,
                                elapsed_ms: None,
                                parameters_changed: vec![],
                                changes: vec![],
                                note: Some(
                                    "resources are listed once the environment stack is deployed".into(),
                                ),
                            },
                            stack: None,
                            started: None,
                        }
                    }
                };
                (thespian, outcome)
            }
        })
        .buffer_unordered(opts.parallel.max(1))
        .collect()
        .await;

    let mut by_thespian: BTreeMap<String, Outcome> = outcomes.into_iter().collect();
    let mut failures = Vec::new();
    let mut still_running = Vec::new();
    let mut stop: Option<Stop> = None;
    let mut waits = Vec::new();
    for t in &plan.thespians {
        match by_thespian.remove(&t.name) {
            Some(Outcome::Done {
                report: r,
                stack,
                started,
            }) => {
                if !opts.dry_run {
                    let target_td = stack
                        .as_ref()
                        .and_then(|s| s.outputs.get(ecs_service::output::TASK_DEFINITION_ARN).cloned());
                    waits.push((t.name.clone(), target_td, started));
                }
                report.stacks.push(r);
            }
            Some(Outcome::Failed { report: r, failure }) => {
                report.stacks.push(r);
                failures.push(failure);
            }
            Some(Outcome::Stopped {
                report: r,
                stop: s,
                running,
            }) => {
                if running {
                    still_running.push(format!("stack {}", r.stack));
                }
                report.stacks.push(r);
                stop = Some(stop.unwrap_or(s));
            }
            Some(Outcome::Abort(e)) => return Err(e.into()),
            None => {}
        }
    }
    if let Some(s) = stop {
        return Err(stopped(s, &run, still_running));
    }

    // 3. Stacks of thespians no longer in the manifest.
    if !removed.is_empty() {
        if opts.dry_run {
            for s in &removed {
                report.stacks.push(StackReport {
                    stack: s.name.clone(),
                    thespian: s.thespian().map(str::to_owned),
                    action: StackAction::Delete,
                    status: Some(s.status.clone()),
                    elapsed_ms: None,
                    parameters_changed: vec![],
                    changes: vec![],
                    note: Some("the thespian is no longer in the manifest".into()),
                });
            }
        } else if failures.is_empty() {
            let deleted = super::down::delete_stacks(&run, &removed, opts.parallel).await;
            for d in deleted {
                match d {
                    super::down::Deleted::Done(r) => report.stacks.push(StackReport {
                        stack: r.stack,
                        thespian: r.thespian,
                        action: StackAction::Delete,
                        status: Some(r.status),
                        elapsed_ms: Some(r.elapsed_ms),
                        parameters_changed: vec![],
                        changes: vec![],
                        note: Some("the thespian is no longer in the manifest".into()),
                    }),
                    super::down::Deleted::Failed(f) => failures.push(f),
                    super::down::Deleted::Stopped {
                        stack,
                        stop: s,
                        running,
                    } => {
                        if running {
                            still_running.push(format!("stack {stack}"));
                        }
                        stop = Some(stop.unwrap_or(s));
                    }
                    super::down::Deleted::Abort(e) => return Err(e.into()),
                }
            }
            if let Some(s) = stop {
                return Err(stopped(s, &run, still_running));
            }
        } else {
            let w = format!(
                "stacks of removed thespians were not deleted because a deployment failed: {}",
                removed
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            run.progress.warn(&w);
            report.warnings.push(w);
        }
    }

    if !failures.is_empty() {
        return Err(AwsError::Failed { failures }.into());
    }

    // 4. The ECS rollouts.
    if opts.wait && !opts.dry_run && !waits.is_empty() {
        let cluster = env_outputs
            .as_ref()
            .map(|e| e.cluster_name.clone())
            .unwrap_or_else(|| plan.fleet.clone());
        let results = wait_services(&run, &cluster, waits).await?;
        let mut failures = Vec::new();
        for r in results {
            match r {
                Ok(s) => report.services.push(s),
                Err(f) => failures.push(f),
            }
        }
        if !failures.is_empty() {
            return Err(AwsError::Failed { failures }.into());
        }
    }
    Ok(report)
}

/// The error for a wait stopped by Ctrl-C (exit 130) or by `--timeout` (exit 1).
pub(super) fn stopped(stop: Stop, run: &Run<'_>, still_running: Vec<String>) -> Error {
    match stop {
        Stop::Cancelled => Error::Interrupted { still_running },
        Stop::TimedOut => AwsError::Timeout {
            waited: run.started.elapsed(),
            still_running,
        }
        .into(),
    }
}

fn stack_report(spec: &StackSpec, action: StackAction) -> StackReport {
    StackReport {
        stack: spec.name.clone(),
        thespian: spec.thespian.clone(),
        action,
        status: None,
        elapsed_ms: None,
        parameters_changed: vec![],
        changes: vec![],
        note: None,
    }
}

/// Whether an error is about the run rather than one stack (so the whole `up` stops).
fn is_abort(e: &AwsError) -> bool {
    e.exit_code() == crate::error::exit::USAGE
}

fn error_failure(stack: &str, e: &AwsError) -> Failure {
    let causes = crate::error::causes(e)
        .map(|c| c.to_string().trim().to_string())
        .collect();
    // The subject is said once, by the failure.
    let summary = match e {
        AwsError::Api { operation, .. } => format!("{operation} failed"),
        other => other.to_string(),
    };
    Failure {
        subject: format!("stack {stack}"),
        summary,
        causes,
    }
}

/// The root cause of a failed operation, as lines.
pub(super) fn op_failure(stack: &str, status: &str, op: &Operation) -> Failure {
    Failure {
        subject: format!("stack {stack}"),
        summary: status.to_string(),
        causes: op.root_cause().iter().map(|e| e.describe()).collect(),
    }
}

/// Deploys (or plans) one stack.
async fn deploy_stack(
    run: &Run<'_>,
    spec: &StackSpec,
    existing: Option<StackInfo>,
    decision: Decision,
    line: &Line,
    want_outputs: bool,
) -> Outcome {
    match deploy_stack_inner(run, spec, existing, decision, line, want_outputs).await {
        Ok(outcome) => outcome,
        Err(e) if is_abort(&e) => {
            line.finish(false, &e.to_string());
            Outcome::Abort(e)
        }
        Err(e) => {
            line.finish(false, &e.to_string());
            let failure = error_failure(&spec.name, &e);
            let mut report = stack_report(spec, StackAction::Update);
            report.note = Some(e.to_string());
            Outcome::Failed { report, failure }
        }
    }
}

async fn deploy_stack_inner(
    run: &Run<'_>,
    spec: &StackSpec,
    mut existing: Option<StackInfo>,
    mut decision: Decision,
    line: &Line,
    want_outputs: bool,
) -> std::result::Result<Outcome, AwsError> {
    let started = Instant::now();
    let mut pacer = Pacer::default();
    let label = spec.name.as_str();
    let elapsed = |started: Instant| u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

    // Queued behind --parallel when Ctrl-C came: start nothing new.
    if run.ctx.cancel.is_cancelled() {
        line.abandon("not started");
        return Ok(Outcome::Stopped {
            report: stack_report(spec, StackAction::Update),
            stop: Stop::Cancelled,
            running: false,
        });
    }
    if run.dry_run {
        return plan_stack(run, spec, existing, decision, line).await;
    }

    // Another operation in progress: wait for it, then decide again.
    if let Decision::Wait(status) = &decision {
        line.set(&format!("waiting for the operation in progress ({status})"));
        let stack_id = existing.as_ref().map(|s| s.id.clone()).unwrap_or_default();
        loop {
            if let Some(stop) = run.pause(Duration::from_secs(2)).await {
                let mut report = stack_report(spec, StackAction::Update);
                report.status = Some(status.clone());
                line.abandon(&format!("stopped waiting ({status})"));
                return Ok(Outcome::Stopped {
                    report,
                    stop,
                    running: true,
                });
            }
            if !pacer.ready(&run.ctx.cancel).await {
                continue;
            }
            let now = run.cfn.describe(&stack_id, label).await?;
            match now {
                Some(s) if s.status.ends_with("_IN_PROGRESS") && s.status != "REVIEW_IN_PROGRESS" => {
                    line.set(&format!("waiting for the operation in progress ({})", s.status));
                }
                other => {
                    decision = decide(other.as_ref());
                    existing = other;
                    break;
                }
            }
        }
        if matches!(decision, Decision::Recreate(_) | Decision::ContinueRollback) {
            let status = existing.as_ref().map(|s| s.status.clone()).unwrap_or_default();
            let failure = Failure {
                subject: format!("stack {}", spec.name),
                summary: format!(
                    "it ended in {status} while thespctl waited; run `thespctl up` again to recover it"
                ),
                causes: vec![],
            };
            line.finish(false, &status);
            return Ok(Outcome::Failed {
                report: stack_report(spec, StackAction::Update),
                failure,
            });
        }
    }

    // Stuck after a failed create: delete, then create.
    let mut action = match decision {
        Decision::Create => StackAction::Create,
        Decision::Recreate(_) => StackAction::Recreate,
        Decision::ContinueRollback => StackAction::ContinueRollback,
        _ => StackAction::Update,
    };
    if let (Decision::Recreate(status), Some(stack)) = (&decision, &existing) {
        line.set(&format!("deleting ({status})"));
        let recovery = Recovery::Delete;
        if let Some(outcome) = recover(run, spec, action, &stack.id, recovery, line, &mut pacer).await? {
            return Ok(outcome);
        }
        existing = None;
    }

    // UPDATE_ROLLBACK_FAILED: finish the rollback first.
    if let (Decision::ContinueRollback, Some(stack)) = (&decision, &existing) {
        line.set("continuing the rollback");
        let recovery = Recovery::ContinueRollback;
        if let Some(outcome) = recover(run, spec, action, &stack.id, recovery, line, &mut pacer).await? {
            return Ok(outcome);
        }
    }

    // The change set.
    let create = existing.as_ref().is_none_or(|s| s.status == "REVIEW_IN_PROGRESS");
    let change_set = match make_change_set(run, spec, create, line).await? {
        Err(stop) => {
            return Ok(Outcome::Stopped {
                report: stack_report(spec, action),
                stop,
                running: false,
            });
        }
        Ok(cs) => cs,
    };
    let parameters_changed = existing
        .as_ref()
        .map(|s| changed_parameters(&s.parameters, &spec.parameters))
        .unwrap_or_default();
    if change_set.info.has_no_changes() {
        let _ = run.cfn.delete_change_set(&change_set.id, label).await;
        let status = existing.as_ref().map(|s| s.status.clone());
        line.finish(true, "no changes");
        let mut report = stack_report(spec, StackAction::NoChange);
        report.status = status;
        report.elapsed_ms = Some(elapsed(started));
        return Ok(Outcome::Done {
            report,
            stack: existing,
            started: None,
        });
    }
    if change_set.info.status == "FAILED" {
        let report = stack_report(spec, action);
        return Ok(change_set_failed(run, spec, &change_set, create, line, report).await);
    }

    // Execute and watch.
    let cursor = if create {
        None
    } else {
        run.cursor(&change_set.stack_id, label, &mut pacer).await?
    };
    if run.ctx.cancel.is_cancelled() {
        let _ = run.cfn.delete_change_set(&change_set.id, label).await;
        return Ok(Outcome::Stopped {
            report: stack_report(spec, action),
            stop: Stop::Cancelled,
            running: false,
        });
    }
    let tok = token("thespctl-up");
    line.set("executing change set");
    run.cfn.execute_change_set(&change_set.id, label, &tok).await?;
    if action == StackAction::Create && !create {
        action = StackAction::Update;
    }
    let (status, op) = match run
        .watch(
            WatchSpec {
                stack_id: &change_set.stack_id,
                label,
                kind: OpKind::Deploy,
                cursor: cursor.as_deref(),
                token: Some(&tok),
            },
            line,
            &mut pacer,
        )
        .await?
    {
        Err(stop) => {
            line.abandon("still in progress");
            let mut report = stack_report(spec, action);
            report.elapsed_ms = Some(elapsed(started));
            return Ok(Outcome::Stopped {
                report,
                stop,
                running: true,
            });
        }
        Ok(done) => done,
    };
    let mut report = stack_report(spec, action);
    report.status = Some(status.clone());
    report.elapsed_ms = Some(elapsed(started));
    report.parameters_changed = parameters_changed;
    if !OpKind::Deploy.succeeded(&status) {
        line.finish(false, &status);
        return Ok(Outcome::Failed {
            failure: op_failure(&spec.name, &status, &op),
            report,
        });
    }
    line.finish(true, &status);
    let stack = if want_outputs || run.wait {
        if pacer.ready(&run.ctx.cancel).await {
            run.cfn.describe(&change_set.stack_id, label).await?
        } else {
            None
        }
    } else {
        None
    };
    Ok(Outcome::Done {
        report,
        stack,
        started: op.started_at(),
    })
}

/// A recovery operation `up` runs before its change set.
#[derive(Clone, Copy)]
enum Recovery {
    /// Delete a stack stuck after a failed create (`ROLLBACK_COMPLETE` and the like), then create it.
    Delete,
    /// Finish the rollback of a stack in `UPDATE_ROLLBACK_FAILED`, then update it.
    ContinueRollback,
}

impl Recovery {
    fn kind(self) -> OpKind {
        match self {
            Recovery::Delete => OpKind::Delete,
            Recovery::ContinueRollback => OpKind::ContinueRollback,
        }
    }

    /// What the stack's line says when the wait stops with the operation still running.
    fn in_progress(self) -> &'static str {
        match self {
            Recovery::Delete => "deleting (still in progress)",
            Recovery::ContinueRollback => "continuing the rollback (still in progress)",
        }
    }
}

/// Starts a recovery operation on `stack_id` and watches it to its end: `None` when it succeeded (go on
/// with the change set), else the stack's outcome.
async fn recover(
    run: &Run<'_>,
    spec: &StackSpec,
    action: StackAction,
    stack_id: &str,
    recovery: Recovery,
    line: &Line,
    pacer: &mut Pacer,
) -> std::result::Result<Option<Outcome>, AwsError> {
    let label = spec.name.as_str();
    let cursor = run.cursor(stack_id, label, pacer).await?;
    let tok = match recovery {
        Recovery::Delete => {
            let tok = token("thespctl-delete");
            run.cfn.delete_stack(stack_id, label, &tok).await?;
            tok
        }
        Recovery::ContinueRollback => {
            let tok = token("thespctl-rollback");
            run.cfn.continue_update_rollback(stack_id, label, &tok).await?;
            tok
        }
    };
    let watch = WatchSpec {
        stack_id,
        label,
        kind: recovery.kind(),
        cursor: cursor.as_deref(),
        token: Some(&tok),
    };
    match run.watch(watch, line, pacer).await? {
        Err(stop) => {
            line.abandon(recovery.in_progress());
            Ok(Some(Outcome::Stopped {
                report: stack_report(spec, action),
                stop,
                running: true,
            }))
        }
        Ok((status, op)) if !recovery.kind().succeeded(&status) => {
            line.finish(false, &status);
            let mut report = stack_report(spec, action);
            report.status = Some(status.clone());
            Ok(Some(Outcome::Failed {
                report,
                failure: op_failure(&spec.name, &status, &op),
            }))
        }
        Ok(_) => Ok(None),
    }
}

struct ChangeSet {
    id: String,
    stack_id: String,
    info: super::cfn::ChangeSetInfo,
}

/// Creates a change set and waits until CloudFormation has computed it.
async fn make_change_set(
    run: &Run<'_>,
    spec: &StackSpec,
    create: bool,
    line: &Line,
) -> std::result::Result<std::result::Result<ChangeSet, Stop>, AwsError> {
    let label = spec.name.as_str();
    line.set("creating change set");
    let name = token("thespctl");
    let (id, stack_id) = run
        .cfn
        .create_change_set(spec, create, &name, &token("thespctl-cs"))
        .await?;
    let mut polls = 0;
    loop {
        if let Some(stop) = run.pause(run.poll_interval(polls)).await {
            // Our own artefacts, not an operation: remove them (a new stack's shell too).
            let _ = run.cfn.delete_change_set(&id, label).await;
            if create {
                let _ = run
                    .cfn
                    .delete_stack(&stack_id, label, &token("thespctl-cleanup"))
                    .await;
            }
            return Ok(Err(stop));
        }
        polls += 1;
        let info = run.cfn.describe_change_set(&id, label, run.dry_run).await?;
        if info.is_settled() {
            return Ok(Ok(ChangeSet { id, stack_id, info }));
        }
        line.set(&format!("change set {}", info.status));
    }
}

/// A change set CloudFormation could not create (a template or parameter error): cleans up the stack it
/// left behind if this run made it, and reports the reason (`up` and `plan` alike).
async fn change_set_failed(
    run: &Run<'_>,
    spec: &StackSpec,
    change_set: &ChangeSet,
    made_here: bool,
    line: &Line,
    mut report: StackReport,
) -> Outcome {
    let reason = change_set
        .info
        .status_reason
        .as_deref()
        .unwrap_or_default()
        .trim()
        .to_string();
    cleanup_failed_create(run, spec, change_set, made_here).await;
    line.finish(false, "change set failed");
    report.note = Some(reason.clone());
    Outcome::Failed {
        report,
        failure: Failure {
            subject: format!("stack {}", spec.name),
            summary: "its change set failed".into(),
            causes: vec![reason],
        },
    }
}

/// A failed or planned CREATE change set leaves a stack in REVIEW_IN_PROGRESS with no resources:
/// remove it so that nothing of a `plan` stays behind.
async fn cleanup_failed_create(run: &Run<'_>, spec: &StackSpec, change_set: &ChangeSet, create: bool) {
    let _ = run.cfn.delete_change_set(&change_set.id, &spec.name).await;
    if create {
        let _ = run
            .cfn
            .delete_stack(&change_set.stack_id, &spec.name, &token("thespctl-cleanup"))
            .await;
    }
}

/// `plan`: the change set's resource changes, then the change set is deleted.
async fn plan_stack(
    run: &Run<'_>,
    spec: &StackSpec,
    existing: Option<StackInfo>,
    decision: Decision,
    line: &Line,
) -> std::result::Result<Outcome, AwsError> {
    let mut report = stack_report(spec, StackAction::Update);
    report.status = existing.as_ref().map(|s| s.status.clone());
    match &decision {
        Decision::Recreate(status) => {
            report.action = StackAction::Recreate;
            report.note = Some(format!(
                "the stack is {status}: `up` deletes and recreates it (after confirmation, or with --yes)"
            ));
            line.finish(true, "would recreate");
            return Ok(Outcome::Done {
                report,
                stack: existing,
                started: None,
            });
        }
        Decision::ContinueRollback => {
            report.action = StackAction::ContinueRollback;
            report.note = Some("the stack is UPDATE_ROLLBACK_FAILED: `up --continue-rollback` resumes the rollback, then updates".into());
            line.finish(true, "needs --continue-rollback");
            return Ok(Outcome::Done {
                report,
                stack: existing,
                started: None,
            });
        }
        Decision::Wait(status) => {
            report.note = Some(format!(
                "an operation is in progress ({status}); `up` waits for it, and the changes are listed once it ends"
            ));
            line.finish(true, "operation in progress");
            return Ok(Outcome::Done {
                report,
                stack: existing,
                started: None,
            });
        }
        Decision::Create | Decision::Update => {}
    }
    let create = decision == Decision::Create;
    let change_set = match make_change_set(run, spec, create, line).await? {
        Err(stop) => {
            return Ok(Outcome::Stopped {
                report,
                stop,
                running: false,
            });
        }
        Ok(cs) => cs,
    };
    // Only a stack this plan created (not one left in REVIEW_IN_PROGRESS before) is removed again.
    let made_here = existing.is_none();
    report.parameters_changed = existing
        .as_ref()
        .map(|s| changed_parameters(&s.parameters, &spec.parameters))
        .unwrap_or_default();
    if change_set.info.has_no_changes() {
        let _ = run.cfn.delete_change_set(&change_set.id, &spec.name).await;
        report.action = StackAction::NoChange;
        report.parameters_changed.clear();
        line.finish(true, "no changes");
        return Ok(Outcome::Done {
            report,
            stack: existing,
            started: None,
        });
    }
    if change_set.info.status == "FAILED" {
        return Ok(change_set_failed(run, spec, &change_set, made_here, line, report).await);
    }
    report.action = if create {
        StackAction::Create
    } else {
        StackAction::Update
    };
    report.changes = change_set.info.changes.clone();
    if report.changes.is_empty() {
        report.note = Some("CloudFormation reported changes but listed no resource changes".into());
    }
    cleanup_failed_create(run, spec, &change_set, made_here).await;
    line.finish(true, &format!("would {}", report.action.word()));
    Ok(Outcome::Done {
        report,
        stack: existing,
        started: None,
    })
}

/// Waits for each service's rollout (`thespian`, the task definition its stack registered, the server
/// time its stack operation started).
async fn wait_services(
    run: &Run<'_>,
    cluster: &str,
    items: Vec<(String, Option<String>, Option<DateTime>)>,
) -> Result<Vec<std::result::Result<ServiceReport, Failure>>> {
    struct Item {
        thespian: String,
        watch: RolloutWatch,
        line: Line,
        result: Option<std::result::Result<ServiceReport, Failure>>,
    }
    let now = DateTime::from(std::time::SystemTime::now());
    let mut pending: Vec<Item> = items
        .into_iter()
        .map(|(thespian, target, since)| Item {
            line: run
                .progress
                .line(&format!("service {thespian}"), "waiting for the deployment"),
            watch: RolloutWatch::new(target, since.unwrap_or(now)),
            thespian,
            result: None,
        })
        .collect();
    let mut polls = 0;
    let delays = [0u64, 1_000, 2_000, 3_000];
    loop {
        let delay = Duration::from_millis(delays.get(polls).copied().unwrap_or(5_000));
        if let Some(stop) = run.pause(delay).await {
            let still: Vec<String> = pending
                .iter()
                .filter(|i| i.result.is_none())
                .map(|i| {
                    i.line.abandon("still rolling out");
                    format!("service {} (deployment in progress)", i.thespian)
                })
                .collect();
            return Err(stopped(stop, run, still));
        }
        polls += 1;
        let names: Vec<String> = pending
            .iter()
            .filter(|i| i.result.is_none())
            .map(|i| i.thespian.clone())
            .collect();
        if names.is_empty() {
            break;
        }
        let services = run.ecs.services(cluster, &names).await?;
        for item in pending.iter_mut().filter(|i| i.result.is_none()) {
            let Some(service) = services.iter().find(|s| s.name == item.thespian) else {
                item.line.set("no such ECS service yet");
                continue;
            };
            match item.watch.assess(service) {
                Rollout::Done => {
                    let primary = service.deployments.iter().find(|d| d.status == "PRIMARY");
                    item.line.finish(
                        true,
                        &format!(
                            "deployment completed, {}/{} running",
                            service.running, service.desired
                        ),
                    );
                    item.result = Some(Ok(ServiceReport {
                        thespian: item.thespian.clone(),
                        service: service.name.clone(),
                        deployment: item.watch.deployment().map(str::to_owned),
                        rollout_state: "COMPLETED".into(),
                        desired: service.desired,
                        running: service.running,
                        task_definition: primary.and_then(|d| d.task_definition.clone()),
                        elapsed_ms: u64::try_from(item.line.elapsed().as_millis()).unwrap_or(u64::MAX),
                    }));
                }
                Rollout::Waiting {
                    progress,
                    latest_event,
                } => {
                    let text = match latest_event {
                        Some(e) => format!("{progress} — {e}"),
                        None => progress,
                    };
                    item.line.set(&text);
                }
                Rollout::Failed { summary, mut events } => {
                    item.line.finish(false, &summary);
                    let td = item
                        .watch
                        .target_task_definition
                        .clone()
                        .or_else(|| service.task_definition.clone());
                    if let Ok(tasks) = run
                        .ecs
                        .tasks(cluster, &service.name, aws_sdk_ecs::types::DesiredStatus::Stopped)
                        .await
                        && let Some(task) = first_stopped(&tasks, td.as_deref(), Some(item.watch.since))
                    {
                        events.push(format!("first failing {}", task.stopped_summary()));
                    }
                    item.result = Some(Err(Failure {
                        subject: format!("service {}", item.thespian),
                        summary,
                        causes: events,
                    }));
                }
            }
        }
    }
    Ok(pending.into_iter().filter_map(|i| i.result).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(status: &str) -> StackInfo {
        StackInfo {
            status: status.into(),
            ..StackInfo::default()
        }
    }

    #[test]
    fn a_failed_operation_is_reported_with_its_root_cause() {
        let path = format!(
            "{}/tests/fixtures/aws/cfn-describe-stack-events-update-failed-update-rollback-complete.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let events =
            super::super::events::fixtures::stack_events(&std::fs::read_to_string(path).expect("fixture"));
        let op = operation(&events, OpKind::Deploy, &Slice::default());
        let status = op.terminal_status().expect("terminal").to_string();
        let error = AwsError::Failed {
            failures: vec![op_failure("demo-gilbert", &status, &op)],
        };
        assert_eq!(
            error.to_string(),
            "stack demo-gilbert failed: UPDATE_ROLLBACK_COMPLETE\n    root cause: AuthGrant (Custom::Authn_Grant) \
             CREATE_FAILED: Failed to create resource. 404: No resource with identifier https://authn-cr-failure.com"
        );
        assert_eq!(error.exit_code(), crate::error::exit::FAILED);
    }

    #[test]
    fn several_failures_are_listed_each_with_its_causes() {
        let error = AwsError::Failed {
            failures: vec![
                Failure {
                    subject: "stack demo-a".into(),
                    summary: "ROLLBACK_COMPLETE".into(),
                    causes: vec!["TaskDefinition (AWS::ECS::TaskDefinition) CREATE_FAILED: no".into()],
                },
                Failure {
                    subject: "service b".into(),
                    summary: "deployment ecs-svc/1 is gone".into(),
                    causes: vec![
                        "(service b) deployment failed: tasks failed to start.".into(),
                        "first failing task x stopped: Essential container in task exited".into(),
                    ],
                },
            ],
        };
        let text = error.to_string();
        assert!(text.starts_with("2 deployments failed\n  stack demo-a failed: ROLLBACK_COMPLETE\n    root cause: TaskDefinition"), "{text}");
        assert!(text.contains("\n  service b failed: deployment ecs-svc/1 is gone\n    root cause: (service b) deployment failed"), "{text}");
        assert!(
            text.ends_with("\n    then: first failing task x stopped: Essential container in task exited"),
            "{text}"
        );
    }

    #[test]
    fn decisions_follow_the_stack_status() {
        assert_eq!(decide(None), Decision::Create);
        assert_eq!(decide(Some(&stack("REVIEW_IN_PROGRESS"))), Decision::Create);
        assert_eq!(decide(Some(&stack("CREATE_COMPLETE"))), Decision::Update);
        assert_eq!(decide(Some(&stack("UPDATE_ROLLBACK_COMPLETE"))), Decision::Update);
        assert_eq!(
            decide(Some(&stack("ROLLBACK_COMPLETE"))),
            Decision::Recreate("ROLLBACK_COMPLETE".into())
        );
        assert_eq!(
            decide(Some(&stack("DELETE_FAILED"))),
            Decision::Recreate("DELETE_FAILED".into())
        );
        assert_eq!(
            decide(Some(&stack("UPDATE_ROLLBACK_FAILED"))),
            Decision::ContinueRollback
        );
        assert_eq!(
            decide(Some(&stack("UPDATE_IN_PROGRESS"))),
            Decision::Wait("UPDATE_IN_PROGRESS".into())
        );
        assert_eq!(
            decide(Some(&stack("UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS"))),
            Decision::Wait("UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS".into())
        );
    }
}
