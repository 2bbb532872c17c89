//! `status` on the local target: the recorded replicas, each with a live health check.

use std::time::{Duration, SystemTime};

use futures_util::future::join_all;

use super::health::{self, Health};
use super::process::{self, Liveness};
use super::report::{ReplicaStatus, StatusReport, ThespianStatus};
use super::state::StateDir;
use super::{LocalError, LocalTarget};
use crate::fleet::FleetRef;

/// A replica that does not answer within this is reported unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn status(target: &LocalTarget, fleet: &FleetRef) -> Result<StatusReport, LocalError> {
    let dir = StateDir::new(target.state_dir.clone());
    let state = dir.load()?;
    let mut report = StatusReport {
        fleet: fleet.fleet.clone(),
        target: "local",
        state_dir: dir.root.clone(),
        running: false,
        healthy: false,
        thespians: Vec::new(),
    };
    let Some(state) = state else {
        return Ok(report);
    };
    report.fleet.clone_from(&state.fleet);
    report.running = !state.is_empty();

    let checks = state.thespians.iter().map(|(name, t)| async move {
        let replicas = join_all(t.replicas.iter().map(|r| async move {
            let (health, detail) = match process::liveness(r.pid, r.start_time) {
                Liveness::Running => {
                    let (h, reason) = health::check(r.address(), CHECK_TIMEOUT).await;
                    let detail = (h != Health::Serving).then_some(reason);
                    (h, detail)
                }
                Liveness::Gone => (Health::Dead, Some(format!("process {} has exited", r.pid))),
                Liveness::Reused => (
                    Health::Dead,
                    Some(format!(
                        "process {} has exited (the pid now belongs to another program)",
                        r.pid
                    )),
                ),
            };
            let uptime = if health == Health::Dead {
                Duration::ZERO
            } else {
                SystemTime::now()
                    .duration_since(r.started_at())
                    .unwrap_or_default()
            };
            ReplicaStatus {
                index: r.index,
                pid: r.pid,
                address: r.address().to_string(),
                health,
                health_detail: detail,
                uptime_ms: u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX),
                started_at: humantime::format_rfc3339_seconds(r.started_at()).to_string(),
                log: r.log.clone(),
            }
        }))
        .await;
        ThespianStatus {
            name: name.clone(),
            replicas,
        }
    });
    report.thespians = join_all(checks).await;
    report.healthy = report.running
        && report
            .thespians
            .iter()
            .flat_map(|t| &t.replicas)
            .all(|r| r.health == Health::Serving);
    Ok(report)
}
