//! `down` on the local target: stop every replica, callers before callees, and remove the state.

use std::time::Instant;

use futures_util::future::join_all;

use super::process::{self, StopOutcome};
use super::report::{DownReport, StoppedReplica};
use super::state::StateDir;
use super::{LocalError, LocalTarget};
use crate::Context;
use crate::fleet::FleetRef;
use crate::target::DownOptions;

pub async fn down(
    target: &LocalTarget,
    fleet: &FleetRef,
    opts: &DownOptions,
    ctx: &Context,
) -> Result<DownReport, LocalError> {
    let begun = Instant::now();
    let dir = StateDir::new(target.state_dir.clone());
    let mut report = DownReport {
        fleet: fleet.fleet.clone(),
        target: "local",
        state_dir: dir.root.clone(),
        nothing_running: true,
        replicas: Vec::new(),
        logs_dir: dir.logs_dir(),
        elapsed_ms: 0,
    };
    // Nothing was ever started here: say so without creating `.thespctl/`.
    if !dir.state_file().exists() {
        return Ok(report);
    }
    let _lock = dir.lock_for(ctx).await?;
    let Some(state) = dir.load()? else {
        return Ok(report);
    };
    // The state, not the manifest, is the truth about what runs: a renamed fleet is still stopped.
    report.fleet.clone_from(&state.fleet);

    // Callers first: a caller draining its in-flight requests may still call its callees, which are
    // stopped only once it has gone. Not cancellable: a half-done `down` would leave orphans.
    for wave in state.stop_waves() {
        let stops = wave
            .iter()
            .flat_map(|name| state.thespians[name].replicas.iter())
            .map(|r| async move {
                let outcome = process::stop(r.pid, r.start_time, opts.grace).await;
                StoppedReplica {
                    thespian: r.thespian.clone(),
                    index: r.index,
                    pid: r.pid,
                    outcome,
                }
            });
        report.replicas.extend(join_all(stops).await);
    }
    report.nothing_running = report
        .replicas
        .iter()
        .all(|r| matches!(r.outcome, StopOutcome::NotRunning | StopOutcome::ForeignPid));
    dir.remove()?;
    report.elapsed_ms = u64::try_from(begun.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}
