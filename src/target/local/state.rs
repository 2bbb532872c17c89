//! `.thespctl/` beside the manifest: the state file (what we started), the resolve file (where each
//! thespian answers), the per-replica logs, and the lock that serialises `up` and `down`.
//!
//! The state is written atomically (a temporary file renamed over the old one), so a reader — `status`,
//! `probe`, `logs`, which take no lock — always sees either the old or the new document, never half of one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::LocalError;

/// Bumped when the state document changes incompatibly; an unknown version is refused, not guessed at.
pub const STATE_VERSION: u32 = 1;

/// The files of one fleet's local state.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> Self {
        StateDir { root }
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn resolve_file(&self) -> PathBuf {
        self.root.join("resolve")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// `logs/<thespian>-<index>.log`: the log of the replica's current process.
    pub fn log_file(&self, thespian: &str, index: u32) -> PathBuf {
        self.logs_dir().join(format!("{thespian}-{index}.log"))
    }

    /// `logs/<thespian>-<index>.prev.log`: the log of the process it replaced (kept for post-mortems: why
    /// did the old one die?). The old process keeps writing here while it drains.
    pub fn prev_log_file(&self, thespian: &str, index: u32) -> PathBuf {
        self.logs_dir().join(format!("{thespian}-{index}.prev.log"))
    }

    /// Creates `.thespctl/` and `logs/` if missing.
    pub fn create(&self) -> Result<(), LocalError> {
        let logs = self.logs_dir();
        std::fs::create_dir_all(&logs).map_err(|source| LocalError::Io {
            action: "create the state directory",
            path: logs,
            source,
        })
    }

    /// The recorded state, or `None` when nothing was ever started from here (or `down` removed it).
    pub fn load(&self) -> Result<Option<State>, LocalError> {
        let path = self.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LocalError::Io {
                    action: "read the local state",
                    path,
                    source,
                });
            }
        };
        let state: State = serde_json::from_str(&text).map_err(|source| LocalError::CorruptState {
            path: path.clone(),
            source,
        })?;
        if state.version != STATE_VERSION {
            return Err(LocalError::StateVersion {
                path,
                found: state.version,
            });
        }
        Ok(Some(state))
    }

    /// Writes the state atomically. No fsync: the state describes processes, and a power loss that could
    /// lose the rename loses the processes too (the next `up` then finds them dead and starts new ones).
    pub fn save(&self, state: &State) -> Result<(), LocalError> {
        let json = serde_json::to_vec_pretty(state).map_err(|source| LocalError::CorruptState {
            path: self.state_file(),
            source,
        })?;
        write_atomic(&self.state_file(), &json)
    }

    /// Removes the state and resolve files (what `down` leaves behind: the logs and the lock file).
    pub fn remove(&self) -> Result<(), LocalError> {
        for path in [self.state_file(), self.resolve_file()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LocalError::Io {
                        action: "remove",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// [`StateDir::lock`] for a command: says on stderr why it waits, and stops waiting on Ctrl-C.
    pub async fn lock_for(&self, ctx: &crate::Context) -> Result<LockGuard, LocalError> {
        self.lock(&ctx.cancel, || {
            ctx.ui.info(format!(
                "waiting for another thespctl up/down on {} to finish…",
                self.root.display()
            ));
        })
        .await
    }

    /// Takes the directory's exclusive lock (an `flock` held until the guard drops), waiting while another
    /// `up` or `down` holds it. `on_wait` is called once if we have to wait, so the user knows why.
    pub async fn lock(
        &self,
        cancel: &CancellationToken,
        on_wait: impl FnOnce(),
    ) -> Result<LockGuard, LocalError> {
        self.create()?;
        let path = self.lock_file();
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LocalError::Io {
                action: "open the lock file",
                path: path.clone(),
                source,
            })?;
        let mut on_wait = Some(on_wait);
        let mut delay = Duration::from_millis(10);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(LockGuard { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if let Some(f) = on_wait.take() {
                        f();
                    }
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(LocalError::Io {
                        action: "lock",
                        path,
                        source,
                    });
                }
            }
            // flock has no async form; polling keeps the wait cancellable with Ctrl-C.
            tokio::select! {
                () = cancel.cancelled() => return Err(LocalError::Interrupted),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }
}

/// Holds the state directory's lock; released when dropped (or when the process dies: `flock` locks
/// never outlive their holder, so a crashed `up` cannot wedge the directory).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LocalError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| LocalError::Io { action, path, source }
    };
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("replace", path))
}

/// What `up` started, as recorded in `.thespctl/state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub fleet: String,
    /// The manifest the fleet was started from (absolute), for messages.
    pub manifest: PathBuf,
    pub thespians: BTreeMap<String, ThespianState>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThespianState {
    /// Whom it calls: `down` stops callers before callees so that draining requests can still make their calls.
    pub callees: Vec<String>,
    /// Sorted by index.
    pub replicas: Vec<ReplicaRecord>,
}

/// One running agent process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub thespian: String,
    pub index: u32,
    pub pid: i32,
    /// The process start time from `/proc/<pid>/stat` (clock ticks since boot). A pid alone can be reused
    /// by an unrelated process after ours died; pid + start time cannot, so we never signal a stranger.
    pub start_time: u64,
    pub port: u16,
    /// `config_hash` of the plan this replica runs: a different hash in the manifest means "restart".
    pub config_hash: String,
    pub log: PathBuf,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
}

impl ReplicaRecord {
    pub fn address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `gilbert[0]`
    pub fn label(&self) -> String {
        format!("{}[{}]", self.thespian, self.index)
    }

    pub fn started_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.started_at_ms)
    }
}

impl State {
    pub fn new(fleet: &str, manifest: &Path) -> Self {
        State {
            version: STATE_VERSION,
            fleet: fleet.to_string(),
            manifest: manifest.to_path_buf(),
            thespians: BTreeMap::new(),
        }
    }

    pub fn replicas(&self) -> impl Iterator<Item = &ReplicaRecord> {
        self.thespians.values().flat_map(|t| t.replicas.iter())
    }

    pub fn is_empty(&self) -> bool {
        self.replicas().next().is_none()
    }

    pub fn replica(&self, thespian: &str, index: u32) -> Option<&ReplicaRecord> {
        self.thespians
            .get(thespian)?
            .replicas
            .iter()
            .find(|r| r.index == index)
    }

    /// Records `record`, replacing whatever had its thespian and index.
    pub fn put(&mut self, record: ReplicaRecord) {
        let t = self.thespians.entry(record.thespian.clone()).or_default();
        t.replicas.retain(|r| r.index != record.index);
        t.replicas.push(record);
        t.replicas.sort_by_key(|r| r.index);
    }

    /// Forgets one replica; a thespian left with none is forgotten too.
    pub fn remove(&mut self, thespian: &str, index: u32) {
        if let Some(t) = self.thespians.get_mut(thespian) {
            t.replicas.retain(|r| r.index != index);
            if t.replicas.is_empty() {
                self.thespians.remove(thespian);
            }
        }
    }

    /// Stop order for `down`: waves of thespians, each wave called by no thespian of a later wave, so a
    /// caller drains (its in-flight requests still making their calls) before its callees stop. A cycle,
    /// which the manifest validation forbids, would just put the rest in one last wave.
    pub fn stop_waves(&self) -> Vec<Vec<String>> {
        let mut remaining: Vec<&String> = self.thespians.keys().collect();
        let mut waves = Vec::new();
        while !remaining.is_empty() {
            let called = |name: &String| {
                remaining
                    .iter()
                    .any(|caller| *caller != name && self.thespians[*caller].callees.contains(name))
            };
            let (wave, rest): (Vec<&String>, Vec<&String>) = remaining.iter().partition(|name| !called(name));
            if wave.is_empty() {
                waves.push(rest.into_iter().cloned().collect());
                break;
            }
            waves.push(wave.into_iter().cloned().collect());
            remaining = rest;
        }
        waves
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(thespian: &str, index: u32, pid: i32) -> ReplicaRecord {
        ReplicaRecord {
            thespian: thespian.into(),
            index,
            pid,
            start_time: 1,
            port: 40_000 + u16::try_from(index).unwrap_or(0),
            config_hash: "h".into(),
            log: PathBuf::from(format!("{thespian}-{index}.log")),
            started_at_ms: 0,
        }
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join(".thespctl"));
        sd.create().unwrap();
        assert_eq!(sd.load().unwrap(), None);
        let mut state = State::new("demo", Path::new("/x/thespian.yaml"));
        state.put(record("gilbert", 1, 11));
        state.put(record("gilbert", 0, 10));
        sd.save(&state).unwrap();
        let loaded = sd.load().unwrap().unwrap();
        assert_eq!(loaded, state);
        let indices: Vec<u32> = loaded.thespians["gilbert"]
            .replicas
            .iter()
            .map(|r| r.index)
            .collect();
        assert_eq!(indices, [0, 1]);
        let names: Vec<_> = std::fs::read_dir(&sd.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }

    #[test]
    fn a_corrupt_or_future_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().to_path_buf());
        std::fs::write(sd.state_file(), "{not json").unwrap();
        let err = sd.load().unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
        let mut state = State::new("demo", Path::new("m"));
        state.version = 99;
        std::fs::write(sd.state_file(), serde_json::to_string(&state).unwrap()).unwrap();
        let err = sd.load().unwrap_err().to_string();
        assert!(err.contains("version 99"), "{err}");
    }

    #[test]
    fn put_replaces_and_remove_forgets_empty_thespians() {
        let mut state = State::new("demo", Path::new("m"));
        state.put(record("gilbert", 0, 10));
        state.put(record("gilbert", 0, 20));
        assert_eq!(state.replicas().count(), 1);
        assert_eq!(state.replica("gilbert", 0).unwrap().pid, 20);
        state.remove("gilbert", 0);
        assert!(state.thespians.is_empty());
        assert!(state.is_empty());
    }

    #[test]
    fn callers_stop_before_their_callees() {
        let mut state = State::new("demo", Path::new("m"));
        for (name, callees) in [
            ("yorick", vec!["gilbert", "hamlet"]),
            ("hamlet", vec!["gilbert"]),
            ("gilbert", vec![]),
            ("loner", vec![]),
        ] {
            state.put(record(name, 0, 1));
            state.thespians.get_mut(name).unwrap().callees = callees.into_iter().map(String::from).collect();
        }
        assert_eq!(
            state.stop_waves(),
            vec![
                vec!["loner".to_string(), "yorick".into()],
                vec!["hamlet".into()],
                vec!["gilbert".into()]
            ]
        );
    }

    #[tokio::test]
    async fn the_lock_is_exclusive_and_waiting_is_cancellable() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join(".thespctl"));
        let cancel = CancellationToken::new();
        let held = sd.lock(&cancel, || {}).await.unwrap();
        let waited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = waited.clone();
        let second = {
            let sd = sd.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                sd.lock(&cancel, move || {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst)
                })
                .await
            })
        };
        // The second locker reports that it waits; then Ctrl-C ends its wait with Interrupted.
        while !waited.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
        assert!(matches!(second.await.unwrap(), Err(LocalError::Interrupted)));
        drop(held);
        let again = sd
            .lock(&CancellationToken::new(), || panic!("lock was released"))
            .await;
        assert!(again.is_ok());
    }
}
