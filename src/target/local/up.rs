//! `up` on the local target: bring the running replicas in line with the plan.
//!
//! The rules that make a rolling restart invisible to callers:
//! - the resolve file lists exactly the replicas that are healthy and not being stopped; it is rewritten
//!   (atomically, with the state) at every step, so callers move to a new replica as soon as it is healthy;
//! - a replica is replaced new-first: start the new one, wait for SERVING, swap it into the resolve file,
//!   then SIGTERM the old one, which drains its in-flight requests;
//! - a thespian that is serving traffic waits for the callees that this `up` starts from nothing, so its
//!   new replicas never call a name the resolve file does not know yet;
//! - removed thespians stop last, after every caller that might still call them has been replaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::diff::{Change, ThespianDiff, diff};
use super::health::{WaitFailure, wait_serving};
use super::process::{self, AgentSpec, StartFailure, log_tail};
use super::report::{ReplicaFailure, ThespianOutcome, UpReport};
use super::state::{ReplicaRecord, State, StateDir, now_ms};
use super::{LocalError, LocalTarget, resolve};
use crate::Context;
use crate::fleet::Plan;
use crate::ui::local::UpProgress;

/// How long a new replica gets to print its address and report SERVING (`up --timeout` overrides).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a replaced or removed replica gets to drain after SIGTERM before it is killed.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// How long a replica taken out of the resolve file keeps serving before its SIGTERM: two and a half of
/// the agents' reload intervals, so every caller has re-read the file and stopped sending it new requests.
/// Without it, a caller could still open a stream to the old replica as it closes its connections; that
/// stream fails with a broken pipe, which cannot be told apart from a request the replica had received,
/// so it is not retried. (Measured: 20 of ~500 requests under a loaded machine.) The drain runs in the
/// background, so a rollout is longer by one settle time, not one per replica.
pub const SETTLE: Duration =
    Duration::from_millis(thespian_agent::resolve::RELOAD_INTERVAL.as_millis() as u64 * 5 / 2);

/// Lines of a failed replica's log quoted in the error.
const TAIL_LINES: usize = 12;

pub async fn up(
    target: &LocalTarget,
    plan: &Plan,
    opts: &crate::target::UpOptions,
    ctx: &Context,
) -> Result<UpReport, LocalError> {
    let begun = Instant::now();
    let dir = StateDir::new(target.state_dir.clone());
    let manifest = std::path::absolute(&plan.manifest_path).unwrap_or_else(|_| plan.manifest_path.clone());

    if opts.dry_run {
        let state = dir.load()?.unwrap_or_else(|| State::new(&plan.fleet, &manifest));
        let state = same_fleet_or_empty(&dir, state, plan, &manifest)?;
        let diffs = diff(plan, &state, is_running);
        return Ok(report(plan, &dir, &diffs, &state, true, begun));
    }

    let _lock = dir.lock_for(ctx).await?;
    let state = dir.load()?.unwrap_or_else(|| State::new(&plan.fleet, &manifest));
    let mut state = same_fleet_or_empty(&dir, state, plan, &manifest)?;
    let diffs = diff(plan, &state, is_running);

    // Records of dead processes go at once; callees are refreshed for `down`'s stop order. This first
    // commit also creates the resolve file before any agent is told its path.
    state.fleet = plan.fleet.clone();
    state.manifest = manifest;
    for d in &diffs {
        for &i in &d.forget {
            state.remove(&d.name, i);
        }
        if let Some(t) = state.thespians.get_mut(&d.name)
            && d.change != Change::Stopped
        {
            t.callees = d.callees.clone();
        }
    }
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        state: Mutex::new(state),
    });
    shared.commit(|_| {})?;

    let steps: u64 = diffs
        .iter()
        .map(|d| (d.start.len() + d.replace.len() + d.stop.len()) as u64)
        .sum();
    let bar = UpProgress::new(&ctx.ui, steps);
    let deadline_after = opts.timeout.unwrap_or(DEFAULT_START_TIMEOUT);
    let run = Run {
        shared: shared.clone(),
        cancel: ctx.cancel.clone(),
        timeout: deadline_after,
        bar: bar.clone(),
        drains: Mutex::new(Vec::new()),
    };

    // Completion of each planned thespian, for callers that must wait for a callee started from nothing.
    let mut done_tx = HashMap::new();
    let mut done_rx = HashMap::new();
    for d in &diffs {
        let (tx, rx) = watch::channel(None::<bool>);
        done_tx.insert(d.name.clone(), tx);
        done_rx.insert(d.name.clone(), rx);
    }
    let fresh: Vec<&str> = diffs
        .iter()
        .filter(|d| !d.serving)
        .map(|d| d.name.as_str())
        .collect();

    let planned = diffs.iter().filter(|d| d.change != Change::Stopped).map(|d| {
        let waits: Vec<(String, watch::Receiver<Option<bool>>)> = if d.serving {
            d.callees
                .iter()
                .filter(|c| fresh.contains(&c.as_str()) && **c != d.name)
                .filter_map(|c| Some((c.clone(), done_rx.get(c)?.clone())))
                .collect()
        } else {
            Vec::new()
        };
        let tx = done_tx.remove(&d.name);
        let run = &run;
        async move {
            let result = run.thespian(d, waits).await;
            if let Some(tx) = tx {
                let _ = tx.send(Some(result.is_empty()));
            }
            result
        }
    });
    let mut failures: Vec<ReplicaFailure> = join_all(planned).await.into_iter().flatten().collect();

    // Removed thespians last: every caller of theirs has been replaced by now — unless a replacement
    // failed, in which case an old caller may still call them, and they stay until the next `up`.
    if !ctx.cancel.is_cancelled() && failures.is_empty() {
        for d in diffs.iter().filter(|d| d.change == Change::Stopped) {
            failures.extend(run.thespian(d, Vec::new()).await);
        }
    }

    // Replaced replicas drain in the background while the rollout goes on; `up` returns only once they
    // are gone, so it never leaves a process it stopped half-way.
    let drains = std::mem::take(
        &mut *run
            .drains
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    join_all(drains).await;
    bar.finish();

    if ctx.cancel.is_cancelled() {
        ctx.ui.warn(format!(
            "up was interrupted; nothing was left half-started, and the replicas recorded in {} keep \
             running: `thespctl status` shows them, `thespctl up` finishes the job",
            dir.state_file().display()
        ));
        return Err(LocalError::Interrupted);
    }
    if !failures.is_empty() {
        return Err(LocalError::StartFailed { failures });
    }
    let state = shared.snapshot();
    Ok(report(plan, &dir, &diffs, &state, false, begun))
}

fn is_running(r: &ReplicaRecord) -> bool {
    process::liveness(r.pid, r.start_time) == process::Liveness::Running
}

/// The directory holds one fleet. Another fleet's state with live replicas is refused (its processes
/// would be orphaned); one with nothing running is simply replaced.
fn same_fleet_or_empty(
    dir: &StateDir,
    state: State,
    plan: &Plan,
    manifest: &std::path::Path,
) -> Result<State, LocalError> {
    if state.fleet == plan.fleet {
        return Ok(state);
    }
    if state.replicas().any(is_running) {
        return Err(LocalError::OtherFleet {
            dir: dir.root.clone(),
            running: state.fleet,
            manifest: state.manifest,
            requested: plan.fleet.clone(),
        });
    }
    Ok(State::new(&plan.fleet, manifest))
}

/// The state shared by the concurrent per-thespian tasks. Every change is written through at once.
struct Shared {
    dir: StateDir,
    state: Mutex<State>,
}

impl Shared {
    /// Applies `change` and writes the state, then the resolve file (both atomically).
    fn commit(&self, change: impl FnOnce(&mut State)) -> Result<(), LocalError> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut state);
        self.dir.save(&state)?;
        resolve::write(&self.dir.resolve_file(), &state)
    }

    fn snapshot(&self) -> State {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replica(&self, thespian: &str, index: u32) -> Option<ReplicaRecord> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replica(thespian, index)
            .cloned()
    }
}

struct Run {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    timeout: Duration,
    bar: UpProgress,
    drains: Mutex<Vec<tokio::task::JoinHandle<process::StopOutcome>>>,
}

impl Run {
    /// Does everything `d` asks of one thespian; returns the replicas that failed.
    async fn thespian(
        &self,
        d: &ThespianDiff,
        waits: Vec<(String, watch::Receiver<Option<bool>>)>,
    ) -> Vec<ReplicaFailure> {
        if d.is_noop() {
            return Vec::new();
        }
        for (callee, mut rx) in waits {
            let ok = tokio::select! {
                r = rx.wait_for(Option::is_some) => r.map(|v| *v == Some(true)).unwrap_or(false),
                () = self.cancel.cancelled() => return Vec::new(),
            };
            if !ok {
                return vec![ReplicaFailure::skipped(&d.name, &callee)];
            }
        }

        // Extras first (no point in rolling a replica that is going away), then new replicas in parallel,
        // then the rolling replacement, one replica at a time.
        for &i in &d.stop {
            self.retire(&d.name, i);
        }
        let starts = d.start.iter().map(|&i| self.start(d, i));
        let mut failures: Vec<ReplicaFailure> = join_all(starts)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        for &i in &d.replace {
            if self.cancel.is_cancelled() || !failures.is_empty() {
                break;
            }
            let old = self.shared.replica(&d.name, i);
            match self.start(d, i).await {
                // `start` swapped the new one in; now the old one drains.
                Ok(()) => {
                    if let Some(old) = old {
                        self.drain(old);
                    }
                }
                Err(f) => failures.push(f),
            }
        }
        failures
    }

    /// Takes replica `i` out of the resolve file and the state, then stops it in the background.
    fn retire(&self, thespian: &str, index: u32) {
        let Some(old) = self.shared.replica(thespian, index) else {
            return;
        };
        // A failed write leaves the record in place, so the next `up` or `down` still finds the process.
        if self.shared.commit(|s| s.remove(thespian, index)).is_ok() {
            self.drain(old);
        }
    }

    fn drain(&self, old: ReplicaRecord) {
        self.bar
            .begin(format!("stopping {} (pid {})", old.label(), old.pid));
        let bar = self.bar.clone();
        // Spawned, not just queued: the settle time and the SIGTERM run while the rollout carries on.
        let fut = tokio::spawn(async move {
            tokio::time::sleep(SETTLE).await;
            let outcome = process::stop(old.pid, old.start_time, DRAIN_GRACE).await;
            let how = match outcome {
                process::StopOutcome::Drained => "stopped",
                process::StopOutcome::Killed => "killed after the drain grace period",
                process::StopOutcome::NotRunning | process::StopOutcome::ForeignPid => "already gone",
            };
            bar.done(format!("{} (pid {}) {how}", old.label(), old.pid));
            outcome
        });
        self.drains
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(fut);
    }

    /// Starts replica `index` of `d`, waits until it is SERVING, and records it (replacing whatever held
    /// that index). A replica that fails is killed: it never served anything and is not in the state.
    async fn start(&self, d: &ThespianDiff, index: u32) -> Result<(), ReplicaFailure> {
        let dir = &self.shared.dir;
        let label = format!("{}[{index}]", d.name);
        self.bar.begin(format!("starting {label}"));
        let log = dir.log_file(&d.name, index);
        // The running process (if any) keeps writing to its file under the new name while it drains.
        if log.exists() {
            let _ = std::fs::rename(&log, dir.prev_log_file(&d.name, index));
        }
        let spec = AgentSpec {
            thespian: d.name.clone(),
            index,
            config_json: d.config_json.clone(),
            resolve_file: std::path::absolute(dir.resolve_file()).unwrap_or_else(|_| dir.resolve_file()),
            log: log.clone(),
        };
        let fail = |reason: String| ReplicaFailure {
            replica: label.clone(),
            reason,
            log: Some(log.clone()),
            log_tail: log_tail(&log, TAIL_LINES),
        };
        let mut spawned =
            process::spawn_agent(&spec).map_err(|e| fail(format!("could not start the agent: {e}")))?;
        let deadline = Instant::now() + self.timeout;

        let ready = match process::wait_for_address(&mut spawned, deadline, &self.cancel).await {
            Ok(addr) => {
                let child = &mut spawned.child;
                wait_serving(addr, deadline, &self.cancel, || match child.try_wait() {
                    Ok(Some(status)) => Err(process::describe_exit(status)),
                    _ => Ok(()),
                })
                .await
                .map(|()| addr)
                .map_err(|e| match e {
                    WaitFailure::Timeout(last) => StartFailure::Unhealthy {
                        waited: self.timeout,
                        last,
                    },
                    WaitFailure::Exited(status) => StartFailure::Exited(status),
                    WaitFailure::Interrupted => StartFailure::Interrupted,
                })
            }
            Err(e) => Err(e),
        };
        let addr = match ready {
            Ok(addr) => addr,
            Err(e) => {
                let _ = spawned.child.kill();
                let _ = spawned.child.wait();
                return Err(fail(e.to_string()));
            }
        };
        let record = ReplicaRecord {
            thespian: d.name.clone(),
            index,
            pid: spawned.pid,
            start_time: spawned.start_time,
            port: addr.port(),
            config_hash: d.config_hash.clone(),
            log: log.clone(),
            started_at_ms: now_ms(),
        };
        let recorded = self.shared.commit(|s| {
            s.put(record);
            // A thespian new to the state needs its callees too (`down`'s stop order).
            if let Some(t) = s.thespians.get_mut(&d.name) {
                t.callees.clone_from(&d.callees);
            }
        });
        if let Err(e) = recorded {
            // Unrecorded, it would be an orphan: stop it rather than leave it running.
            let _ = spawned.child.kill();
            let _ = spawned.child.wait();
            return Err(fail(e.to_string()));
        }
        self.bar
            .done(format!("{label} (pid {}) serving at {addr}", spawned.pid));
        // The child is deliberately not waited for: it outlives `up`.
        drop(spawned);
        Ok(())
    }
}

fn report(
    plan: &Plan,
    dir: &StateDir,
    diffs: &[ThespianDiff],
    state: &State,
    dry_run: bool,
    begun: Instant,
) -> UpReport {
    let thespians = diffs
        .iter()
        .map(|d| {
            let addresses = state
                .thespians
                .get(&d.name)
                .map(|t| t.replicas.iter().map(|r| r.address().to_string()).collect())
                .unwrap_or_default();
            let mut started = d.start.clone();
            started.sort_unstable();
            ThespianOutcome {
                name: d.name.clone(),
                status: d.change,
                detail: d.reasons.join("; "),
                replicas: d.desired,
                addresses,
                started,
                replaced: d.replace.clone(),
                stopped: d.stop.clone(),
            }
        })
        .collect();
    UpReport {
        fleet: plan.fleet.clone(),
        target: "local",
        dry_run,
        state_dir: dir.root.clone(),
        elapsed_ms: u64::try_from(begun.elapsed().as_millis()).unwrap_or(u64::MAX),
        thespians,
    }
}
