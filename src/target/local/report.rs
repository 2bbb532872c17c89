//! What the local target's verbs return. Rendered by `ui::local`; the JSON form (field names and value
//! spellings) is public interface, documented in `docs/local.md`.

use std::path::PathBuf;

use serde::Serialize;

use super::diff::Change;
use super::health::Health;
use super::process::StopOutcome;

/// `up` (and `plan`, with `dry_run: true`).
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub fleet: String,
    pub target: &'static str,
    pub dry_run: bool,
    pub state_dir: PathBuf,
    pub elapsed_ms: u64,
    pub thespians: Vec<ThespianOutcome>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThespianOutcome {
    pub name: String,
    /// `started`, `restarted`, `scaled`, `up_to_date`, `stopped` (for `plan`: what `up` would do).
    pub status: Change,
    /// Why, for people (`config changed; 2 → 3 replicas`); empty when there is nothing to say.
    pub detail: String,
    /// Replica count after `up`.
    pub replicas: u32,
    /// `127.0.0.1:PORT` of each replica, in index order (for `plan`: what runs now).
    pub addresses: Vec<String>,
    /// Replica indices started from nothing (new, or replacing a dead process).
    pub started: Vec<u32>,
    /// Replica indices replaced by a rolling restart.
    pub replaced: Vec<u32>,
    /// Replica indices stopped.
    pub stopped: Vec<u32>,
}

/// A replica that `up` could not bring up.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaFailure {
    /// `gilbert[1]`
    pub replica: String,
    pub reason: String,
    pub log: Option<PathBuf>,
    pub log_tail: String,
}

impl ReplicaFailure {
    /// A thespian left alone because a callee it needs did not come up.
    pub fn skipped(thespian: &str, callee: &str) -> Self {
        ReplicaFailure {
            replica: thespian.to_string(),
            reason: format!("not updated, because its callee {callee} did not start"),
            log: None,
            log_tail: String::new(),
        }
    }
}

impl std::fmt::Display for ReplicaFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.replica, self.reason)?;
        if let Some(log) = &self.log {
            write!(f, "\n    log: {}", log.display())?;
            if !self.log_tail.is_empty() {
                write!(f, " (last lines below)")?;
                for line in self.log_tail.lines() {
                    write!(f, "\n    | {line}")?;
                }
            }
        }
        Ok(())
    }
}

/// `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub fleet: String,
    pub target: &'static str,
    pub state_dir: PathBuf,
    /// Some replica is recorded as started (false: nothing was started here, or `down` ran).
    pub running: bool,
    /// Every recorded replica answers SERVING (false when nothing runs).
    pub healthy: bool,
    pub thespians: Vec<ThespianStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThespianStatus {
    pub name: String,
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    pub index: u32,
    pub pid: i32,
    /// `127.0.0.1:PORT`
    pub address: String,
    /// `serving`, `not_serving`, `unknown`, `unreachable`, `dead`.
    pub health: Health,
    /// Why it is not serving, when it is not (`connection refused`, `process 4242 exited`).
    pub health_detail: Option<String>,
    /// Milliseconds since it started (0 when dead).
    pub uptime_ms: u64,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub log: PathBuf,
}

/// `down`.
#[derive(Debug, Clone, Serialize)]
pub struct DownReport {
    pub fleet: String,
    pub target: &'static str,
    pub state_dir: PathBuf,
    /// There was nothing to stop (no state, or every recorded process had already exited).
    pub nothing_running: bool,
    pub replicas: Vec<StoppedReplica>,
    /// Logs are kept for post-mortems; `rm -r` the state directory to drop them.
    pub logs_dir: PathBuf,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoppedReplica {
    pub thespian: String,
    pub index: u32,
    pub pid: i32,
    /// `drained`, `killed`, `not_running`, `foreign_pid`.
    pub outcome: StopOutcome,
}
