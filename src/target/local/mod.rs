//! The local target: every replica an agent process (`thespctl agent`) on 127.0.0.1, state in
//! `.thespctl/` beside the manifest.
//!
//! - [`state`]: the state file, the lock, the log paths;
//! - [`diff`]: what `up` must do (pure);
//! - [`up`]: doing it — parallel starts, rolling replacement, the resolve file kept current;
//! - [`process`]: spawning detached agents, pid + start-time identity, SIGTERM → grace → SIGKILL;
//! - [`health`]: gRPC health checks; [`resolve`]: the resolve file agents read;
//! - [`status`], [`down`], [`logs`]: the other verbs; [`report`]: what they return.

pub mod diff;
pub mod down;
pub mod health;
pub mod logs;
pub mod process;
pub mod report;
pub mod resolve;
pub mod state;
pub mod status;
pub mod up;

use std::path::PathBuf;

use crate::Context;
use crate::cli::Via;
use crate::error::{Error, Result, exit};
use crate::fleet::{FleetRef, Plan};
use crate::target::{DownOptions, Endpoint, Resolved, Target, UpOptions};

pub use report::{DownReport, StatusReport, UpReport};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("could not {action} {}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the local state {} is not valid JSON; if no agents started from here are running, delete it",
        .path.display()
    )]
    CorruptState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "the local state {} has format version {found}, which this thespctl (version {}) does not know; \
         use the thespctl that wrote it to run `thespctl down`",
        .path.display(), state::STATE_VERSION
    )]
    StateVersion { path: PathBuf, found: u32 },

    #[error(
        "{} already runs fleet `{running}` (from {}); run `thespctl down -f {}` before starting fleet \
         `{requested}` from the same directory",
        .dir.display(), .manifest.display(), .manifest.display()
    )]
    OtherFleet {
        dir: PathBuf,
        running: String,
        manifest: PathBuf,
        requested: String,
    },

    #[error("nothing is running for fleet `{fleet}` (no state in {}); run `thespctl up` first", .dir.display())]
    NothingRunning { fleet: String, dir: PathBuf },

    #[error("unknown thespian `{name}`; the fleet has: {}", .known.join(", "))]
    UnknownThespian { name: String, known: Vec<String> },

    #[error(
        "{name} has no replica {replica}; it has {}",
        .known.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    )]
    UnknownReplica {
        name: String,
        replica: u32,
        known: Vec<u32>,
    },

    #[error(
        "no replica of {name} is running; run `thespctl up` to restart it (`thespctl logs {name}` shows why it stopped)"
    )]
    NoLiveReplicas { name: String },

    #[error("there are no logs in {}; run `thespctl up` first", .dir.display())]
    NoLogs { dir: PathBuf },

    #[error(
        "{} did not come up:\n  {}\nreplicas that did come up keep running (see `thespctl status`); fix the cause and run `thespctl up` again",
        if .failures.len() == 1 { "a replica".to_string() } else { format!("{} replicas", .failures.len()) },
        .failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    StartFailed { failures: Vec<report::ReplicaFailure> },

    #[error("interrupted")]
    Interrupted,
}

impl LocalError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LocalError::OtherFleet { .. }
            | LocalError::NothingRunning { .. }
            | LocalError::UnknownThespian { .. }
            | LocalError::UnknownReplica { .. }
            | LocalError::NoLiveReplicas { .. }
            | LocalError::NoLogs { .. }
            | LocalError::StateVersion { .. } => exit::USAGE,
            LocalError::Io { .. } | LocalError::CorruptState { .. } | LocalError::StartFailed { .. } => {
                exit::FAILED
            }
            LocalError::Interrupted => exit::INTERRUPTED,
        }
    }
}

/// Ctrl-C maps to the top-level [`Error::Interrupted`] (exit 130). Locally nothing carries on without us:
/// the fleet is left as the state file records it.
fn lift(e: LocalError) -> Error {
    match e {
        LocalError::Interrupted => Error::Interrupted {
            still_running: Vec::new(),
        },
        other => Error::Local(other),
    }
}

/// The local target of one fleet (its state lives beside the manifest).
#[derive(Debug, Clone)]
pub struct LocalTarget {
    pub state_dir: PathBuf,
}

impl LocalTarget {
    pub fn for_fleet(fleet: &FleetRef) -> Self {
        Self::beside(&fleet.manifest_path)
    }

    pub fn for_plan(plan: &Plan) -> Self {
        Self::beside(&plan.manifest_path)
    }

    /// `.thespctl/` in the manifest's directory, as an absolute path: log paths recorded in the state
    /// must stay valid from any working directory.
    pub fn beside(manifest: &std::path::Path) -> Self {
        let dir = manifest
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
            .join(".thespctl");
        LocalTarget {
            state_dir: std::path::absolute(&dir).unwrap_or(dir),
        }
    }

    pub fn state(&self) -> state::StateDir {
        state::StateDir::new(self.state_dir.clone())
    }
}

impl Target for LocalTarget {
    type UpReport = UpReport;
    type StatusReport = StatusReport;
    type DownReport = DownReport;

    async fn up(&self, plan: &Plan, opts: &UpOptions, ctx: &Context) -> Result<UpReport> {
        up::up(self, plan, opts, ctx).await.map_err(lift)
    }

    async fn status(&self, fleet: &FleetRef, _ctx: &Context) -> Result<StatusReport> {
        status::status(self, fleet).await.map_err(lift)
    }

    async fn down(&self, fleet: &FleetRef, opts: &DownOptions, ctx: &Context) -> Result<DownReport> {
        down::down(self, fleet, opts, ctx).await.map_err(lift)
    }

    /// The live replicas of `thespian`, as `http://127.0.0.1:PORT` labelled `gilbert[0]`. `via` does not
    /// apply locally (every replica is reached directly).
    async fn endpoints(
        &self,
        fleet: &FleetRef,
        thespian: &str,
        _via: Via,
        _ctx: &Context,
    ) -> Result<Resolved> {
        endpoints(self, fleet, thespian).map_err(lift)
    }
}

fn endpoints(target: &LocalTarget, fleet: &FleetRef, thespian: &str) -> Result<Resolved, LocalError> {
    let dir = target.state();
    let nothing = || LocalError::NothingRunning {
        fleet: fleet.fleet.clone(),
        dir: dir.root.clone(),
    };
    let state = dir.load()?.ok_or_else(nothing)?;
    if state.is_empty() {
        return Err(nothing());
    }
    let Some(t) = state.thespians.get(thespian) else {
        return Err(LocalError::UnknownThespian {
            name: thespian.to_string(),
            known: state.thespians.keys().cloned().collect(),
        });
    };
    let endpoints: Vec<Endpoint> = t
        .replicas
        .iter()
        .filter(|r| process::liveness(r.pid, r.start_time) == process::Liveness::Running)
        .map(|r| Endpoint {
            uri: format!("http://{}", r.address()),
            label: r.label(),
        })
        .collect();
    if endpoints.is_empty() {
        return Err(LocalError::NoLiveReplicas {
            name: thespian.to_string(),
        });
    }
    Ok(Resolved {
        endpoints,
        guard: None,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::target::local::state::{ReplicaRecord, State};

    fn fleet(dir: &Path) -> FleetRef {
        FleetRef {
            fleet: "demo".into(),
            manifest_path: dir.join("thespian.yaml"),
            target: None,
            aws: None,
        }
    }

    #[test]
    fn the_state_lives_beside_the_manifest() {
        let t = LocalTarget::beside(Path::new("/srv/fleet/thespian.yaml"));
        assert_eq!(t.state_dir, Path::new("/srv/fleet/.thespctl"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            LocalTarget::beside(Path::new("thespian.yaml")).state_dir,
            cwd.join(".thespctl")
        );
    }

    #[test]
    fn endpoints_are_live_replicas_and_errors_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(dir.path());
        let target = LocalTarget::for_fleet(&f);
        let err = endpoints(&target, &f, "gilbert").unwrap_err();
        assert!(err.to_string().contains("run `thespctl up` first"), "{err}");
        assert_eq!(err.exit_code(), exit::USAGE);

        let sd = target.state();
        sd.create().unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let my_start = process::read_stat(me).unwrap().start_time;
        let mut state = State::new("demo", &f.manifest_path);
        for (index, pid, start_time) in [(0, me, my_start), (1, me, my_start + 1)] {
            state.put(ReplicaRecord {
                thespian: "gilbert".into(),
                index,
                pid,
                start_time,
                port: 41_000 + u16::try_from(index).unwrap(),
                config_hash: "h".into(),
                log: "l".into(),
                started_at_ms: 0,
            });
        }
        sd.save(&state).unwrap();
        // Replica 1's pid is "reused" (start time differs): not an endpoint.
        let got = endpoints(&target, &f, "gilbert").unwrap();
        assert_eq!(got.endpoints.len(), 1);
        assert_eq!(got.endpoints[0].uri, "http://127.0.0.1:41000");
        assert_eq!(got.endpoints[0].label, "gilbert[0]");

        let err = endpoints(&target, &f, "yorick").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown thespian `yorick`; the fleet has: gilbert"
        );
        assert_eq!(err.exit_code(), exit::USAGE);
    }
}
