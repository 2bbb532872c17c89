//! Agent processes: starting them detached, knowing them again by pid *and* start time, stopping them.
//!
//! Every signal we send is preceded by a check that the pid still belongs to the process we started (same
//! start time in `/proc/<pid>/stat`): after a reboot or a crash the pid in the state file may name a
//! stranger, and a stranger is never signalled.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `Z` (zombie: exited, not yet reaped), ...
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3) come fields 4..; the start time is field 22, the 19th after the state.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

pub fn read_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Our process, running.
    Running,
    /// Exited (or a zombie waiting to be reaped): nothing to stop.
    Gone,
    /// The pid now belongs to another process: not ours, never to be signalled.
    Reused,
}

pub fn liveness(pid: i32, start_time: u64) -> Liveness {
    if pid <= 0 {
        return Liveness::Gone;
    }
    match read_stat(pid) {
        None => Liveness::Gone,
        Some(stat) if stat.start_time != start_time => Liveness::Reused,
        Some(stat) if stat.state == 'Z' || stat.state == 'X' => Liveness::Gone,
        Some(_) => Liveness::Running,
    }
}

/// Sends `signal` if, and only if, `pid` is still the process that started at `start_time`.
/// Returns what was found; only [`Liveness::Running`] means a signal was sent.
pub fn signal_if_ours(pid: i32, start_time: u64, signal: Signal) -> Liveness {
    let found = liveness(pid, start_time);
    if found == Liveness::Running {
        // ESRCH here means it exited between the check and the signal: gone, which is what we wanted.
        if kill(Pid::from_raw(pid), signal).is_err() {
            return Liveness::Gone;
        }
    }
    found
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// Exited after SIGTERM, within the grace period (it drained its in-flight requests).
    Drained,
    /// Still running after the grace period: SIGKILLed.
    Killed,
    /// Was not running (already exited).
    NotRunning,
    /// The pid belongs to another process now: left alone.
    ForeignPid,
}

/// SIGTERM, wait up to `grace` for the exit, then SIGKILL (re-checking the identity first) and wait for
/// that too. Not cancellable on purpose: once asked to stop, a replica is seen through to its end, so a
/// Ctrl-C never leaves a half-stopped process behind.
pub async fn stop(pid: i32, start_time: u64, grace: Duration) -> StopOutcome {
    match signal_if_ours(pid, start_time, Signal::SIGTERM) {
        Liveness::Gone => return StopOutcome::NotRunning,
        Liveness::Reused => return StopOutcome::ForeignPid,
        Liveness::Running => {}
    }
    if wait_gone(pid, start_time, grace).await {
        return StopOutcome::Drained;
    }
    if signal_if_ours(pid, start_time, Signal::SIGKILL) != Liveness::Running {
        return StopOutcome::Drained;
    }
    // SIGKILL cannot be ignored; the wait only covers the kernel tearing the process down.
    wait_gone(pid, start_time, Duration::from_secs(5)).await;
    StopOutcome::Killed
}

/// Polls until the process is gone (or a zombie), up to `limit`. Returns whether it went. Our agents are
/// usually not our children (the `up` that started them has exited), so there is no exit status to
/// wait on; `/proc` is the only signal.
pub async fn wait_gone(pid: i32, start_time: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut delay = Duration::from_millis(1);
    loop {
        if liveness(pid, start_time) != Liveness::Running {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// How to start one replica.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub thespian: String,
    pub index: u32,
    pub config_json: String,
    pub resolve_file: PathBuf,
    pub log: PathBuf,
}

/// A replica process we started in this run (our child until we let go of it).
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub pid: i32,
    pub start_time: u64,
    pub log: PathBuf,
}

/// Starts `thespctl agent` for one replica: detached in its own process group (Ctrl-C in the terminal
/// that ran `up` does not reach it, and it outlives `up`), stdin closed, stdout and stderr appended to its
/// log file, listening on a free port of 127.0.0.1.
pub fn spawn_agent(spec: &AgentSpec) -> std::io::Result<Spawned> {
    let exe = std::env::current_exe()?;
    let log = File::options().create(true).append(true).open(&spec.log)?;
    let log_err = log.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.arg("agent")
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("SERVICE_NAME", &spec.thespian)
        .env("CONFIG_JSON", &spec.config_json)
        .env("THESPIAN_RESOLVE_FILE", &spec.resolve_file)
        // Whatever the user's shell has set must not override what the manifest says.
        .env_remove("CONFIG_FILE")
        .env_remove("THESPIAN_RESOLVE")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    let child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // The child cannot have been reaped (we have not waited), so its stat exists, zombie or not.
    let start_time = read_stat(pid).map(|s| s.start_time).unwrap_or(0);
    Ok(Spawned {
        child,
        pid,
        start_time,
        log: spec.log.clone(),
    })
}

/// Why a new replica did not come up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFailure {
    Exited(String),
    NoAddress(Duration),
    Unhealthy { waited: Duration, last: String },
    Interrupted,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFailure::Exited(status) => write!(f, "the agent exited during start-up ({status})"),
            StartFailure::NoAddress(waited) => write!(
                f,
                "the agent printed no listening address within {}",
                humantime::format_duration(*waited)
            ),
            StartFailure::Unhealthy { waited, last } => write!(
                f,
                "its health check did not report SERVING within {} (last answer: {last})",
                humantime::format_duration(*waited)
            ),
            StartFailure::Interrupted => write!(f, "interrupted"),
        }
    }
}

pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!(
            "killed by {}",
            Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
        ),
        _ => status.to_string(),
    }
}

/// Waits for the agent's first log line naming its bound address (the agent's readiness signal:
/// it prints it once listening). The log file is fresh for this process, so the first such line is its own.
pub async fn wait_for_address(
    spawned: &mut Spawned,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<SocketAddr, StartFailure> {
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut file =
        File::open(&spawned.log).map_err(|e| StartFailure::Exited(format!("cannot read its log: {e}")))?;
    let mut delay = Duration::from_millis(1);
    loop {
        // Read what was appended since last time; the address line is near the start.
        let _ = file.read_to_end(&mut buf);
        if let Some(addr) = find_address(&buf) {
            return Ok(addr);
        }
        if let Ok(Some(status)) = spawned.child.try_wait() {
            // It may have printed the line and exited at once; one last look before giving up.
            let _ = file.read_to_end(&mut buf);
            return match find_address(&buf) {
                Some(addr) => Ok(addr),
                None => Err(StartFailure::Exited(describe_exit(status))),
            };
        }
        if Instant::now() >= deadline {
            return Err(StartFailure::NoAddress(started.elapsed()));
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(StartFailure::Interrupted),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_millis(25));
    }
}

/// The first complete line that is a JSON object with an `address` (top level, or under `fields` as
/// tracing's JSON formatter nests event fields).
pub fn find_address(log: &[u8]) -> Option<SocketAddr> {
    let complete = &log[..log.iter().rposition(|&b| b == b'\n')? + 1];
    complete.split(|&b| b == b'\n').find_map(|line| {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        let addr = v.get("address").or_else(|| v.get("fields")?.get("address"))?;
        addr.as_str()?.parse().ok()
    })
}

/// The last `n` lines of a log, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(text) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text =
            "4242 (thespctl (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 5 0 987654 1000 50";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                start_time: 987_654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn our_own_process_is_running_and_a_wrong_start_time_is_someone_else() {
        let me = i32::try_from(std::process::id()).unwrap();
        let stat = read_stat(me).unwrap();
        assert_eq!(liveness(me, stat.start_time), Liveness::Running);
        assert_eq!(liveness(me, stat.start_time + 1), Liveness::Reused);
        assert_eq!(liveness(0, 0), Liveness::Gone);
    }

    #[test]
    fn the_address_line_is_found_only_once_complete() {
        let log = b"warning: something\n{\"timestamp\":\"t\",\"fields\":{\"message\":\"listening\",\"address\":\"127.0.0.1:4100\"}}\n";
        assert_eq!(find_address(log), Some("127.0.0.1:4100".parse().unwrap()));
        assert_eq!(find_address(b"{\"address\":\"127.0.0.1:4100\"}"), None);
        assert_eq!(
            find_address(b"{\"address\":\"127.0.0.1:4101\",\"level\":\"INFO\"}\n"),
            Some("127.0.0.1:4101".parse().unwrap())
        );
        assert_eq!(find_address(b"{\"message\":\"no address\"}\n"), None);
    }

    fn sleeper(args: &[&str]) -> (Child, i32, u64) {
        let child = Command::new("sh").args(args).process_group(0).spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let start = read_stat(pid).unwrap().start_time;
        (child, pid, start)
    }

    #[tokio::test]
    async fn stop_drains_a_process_that_honours_sigterm() {
        let (mut child, pid, start) = sleeper(&["-c", "exec sleep 30"]);
        let outcome = stop(pid, start, Duration::from_secs(5)).await;
        assert_eq!(outcome, StopOutcome::Drained);
        assert!(!child.wait().unwrap().success());
    }

    #[tokio::test]
    async fn stop_kills_a_process_that_ignores_sigterm_after_the_grace() {
        // `trap '' TERM` makes the shell ignore SIGTERM; the loop keeps it alive.
        let (mut child, pid, start) = sleeper(&["-c", "trap '' TERM; while :; do sleep 0.05; done"]);
        // Wait until the trap is installed: the shell's signal mask shows SIGTERM ignored.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sigterm_ignored(pid) {
            assert!(Instant::now() < deadline, "shell never ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(5));
        }
        let begun = Instant::now();
        let outcome = stop(pid, start, Duration::from_millis(300)).await;
        assert_eq!(outcome, StopOutcome::Killed);
        assert!(begun.elapsed() >= Duration::from_millis(300));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(9));
    }

    fn sigterm_ignored(pid: i32) -> bool {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return false;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
    }

    #[tokio::test]
    async fn a_foreign_pid_is_never_signalled() {
        let (mut child, pid, start) = sleeper(&["-c", "exec sleep 30"]);
        // The state claims a different start time: the pid is someone else's now.
        assert_eq!(
            stop(pid, start + 1, Duration::from_millis(50)).await,
            StopOutcome::ForeignPid
        );
        assert_eq!(
            child.try_wait().unwrap(),
            None,
            "the stranger must still be running"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // A zombie or a vanished pid is simply not running.
        assert_eq!(
            stop(pid, start, Duration::from_millis(50)).await,
            StopOutcome::NotRunning
        );
    }
}
