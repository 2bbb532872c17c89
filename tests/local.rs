//! The local target end to end: the real `thespctl` binary starting real agents on 127.0.0.1, checked with
//! real gRPC clients and by pid. Every test's fleet lives in a temporary directory and is torn down by a
//! Drop guard (`thespctl down`, then SIGKILL by pid + start time for anything left), so nothing leaks even
//! when an assertion fails.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::thespctl;
use thespian_agent::proto::Nothing;
use thespian_agent::proto::thespian_client::ThespianClient;

// ---------------------------------------------------------------------------------------------------
// Harness

/// A fleet in a temporary directory. Dropping it stops everything it started.
struct Fleet {
    dir: tempfile::TempDir,
    manifest: PathBuf,
    /// Every (pid, start time) this test has seen in the state: killed on drop if still running.
    seen: Mutex<BTreeSet<(i32, u64)>>,
}

impl Fleet {
    /// A copy of `examples/NAME/` (manifest and any config files it points at).
    fn example(name: &str) -> Fleet {
        let dir = support::example_copy(name);
        let manifest = dir.path().join("thespian.yaml");
        assert!(manifest.exists(), "examples/{name} has no thespian.yaml");
        Fleet {
            dir,
            manifest,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".thespctl")
    }

    /// `thespctl SUBCOMMAND --file MANIFEST ARGS…`, with per-request debug logs from the agents (they
    /// inherit the environment of the `up` that starts them): the logs are how tests see who served what.
    fn cmd(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut cmd = thespctl();
        cmd.arg(subcommand)
            .arg("--file")
            .arg(&self.manifest)
            .args(args)
            .env("RUST_LOG", "info,thespian_agent=debug")
            .current_dir(self.dir.path());
        cmd
    }

    fn run(&self, subcommand: &str, args: &[&str]) -> Output {
        let out = self.cmd(subcommand, args).output().expect("run thespctl");
        self.remember();
        out
    }

    /// Runs with `-o json` and returns (exit code, parsed stdout).
    fn json(&self, subcommand: &str, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.run(subcommand, &all);
        let code = out.status.code().unwrap_or(-1);
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "thespctl {subcommand} printed no JSON ({e}); exit {code}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, value)
    }

    /// `up` that must succeed; returns its JSON report.
    fn up(&self) -> Value {
        let (code, report) = self.json("up", &[]);
        assert_eq!(code, 0, "up failed: {report}");
        report
    }

    fn status(&self) -> (i32, Value) {
        self.json("status", &[])
    }

    /// The recorded replicas: thespian → [(index, pid, start time, port)].
    fn replicas(&self) -> BTreeMap<String, Vec<Replica>> {
        let Ok(text) = std::fs::read_to_string(self.state_dir().join("state.json")) else {
            return BTreeMap::new();
        };
        let state: Value = serde_json::from_str(&text).expect("state.json is JSON");
        let mut out = BTreeMap::new();
        for (name, t) in state["thespians"].as_object().expect("thespians") {
            let list: Vec<Replica> = t["replicas"]
                .as_array()
                .expect("replicas")
                .iter()
                .map(|r| Replica {
                    index: r["index"].as_u64().expect("index") as u32,
                    pid: r["pid"].as_i64().expect("pid") as i32,
                    start_time: r["start_time"].as_u64().expect("start_time"),
                    port: r["port"].as_u64().expect("port") as u16,
                })
                .collect();
            out.insert(name.clone(), list);
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.extend(out.values().flatten().map(|r| (r.pid, r.start_time)));
        out
    }

    fn remember(&self) {
        let _ = self.replicas();
    }

    fn pids(&self, thespian: &str) -> Vec<i32> {
        self.replicas()[thespian].iter().map(|r| r.pid).collect()
    }

    fn addr(&self, thespian: &str, index: usize) -> String {
        format!("127.0.0.1:{}", self.replicas()[thespian][index].port)
    }

    fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.manifest).expect("read manifest");
        assert!(text.contains(from), "manifest has no {from:?}:\n{text}");
        std::fs::write(&self.manifest, text.replacen(from, to, 1)).expect("write manifest");
    }

    fn log(&self, thespian: &str, index: u32) -> String {
        std::fs::read_to_string(
            self.state_dir()
                .join("logs")
                .join(format!("{thespian}-{index}.log")),
        )
        .unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.remember();
        let _ = self.cmd("down", &["--grace", "2s"]).output();
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &(pid, start) in seen.iter() {
            if running(pid, start) {
                eprintln!("test harness: killing leftover agent {pid}");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replica {
    index: u32,
    pid: i32,
    start_time: u64,
    port: u16,
}

/// `/proc/<pid>/stat`: (state, start time), if the process exists.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// Our process, still running (a zombie has exited: it only waits for init to reap it).
fn running(pid: i32, start_time: u64) -> bool {
    matches!(stat(pid), Some((s, t)) if t == start_time && s != 'Z' && s != 'X')
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One `thespian.Thespian/A` call; the `x-thespian-service` and `x-thespian-instance` of the answer.
async fn call_a(
    client: &mut ThespianClient<tonic::transport::Channel>,
) -> Result<(String, String), tonic::Status> {
    let reply = client.a(Nothing {}).await?;
    let md = reply.metadata();
    let get = |k: &str| {
        md.get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    Ok((get("x-thespian-service"), get("x-thespian-instance")))
}

async fn client(addr: &str) -> ThespianClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    ThespianClient::new(channel)
}

/// Requests each gilbert replica answered, from its debug log ("answered" lines).
fn answered(fleet: &Fleet, thespian: &str, index: u32) -> usize {
    fleet
        .log(thespian, index)
        .lines()
        .filter(|l| l.contains("answered"))
        .count()
}

fn statuses(report: &Value) -> BTreeMap<String, String> {
    report["thespians"]
        .as_array()
        .expect("thespians")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().expect("name").to_string(),
                t["status"].as_str().expect("status").to_string(),
            )
        })
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------------
// The end-to-end flow

#[test]
fn up_probe_change_and_down_leaves_nothing() {
    let fleet = Fleet::example("gilbert-yorick");
    let report = fleet.up();
    assert_eq!(
        statuses(&report),
        BTreeMap::from([
            ("gilbert".into(), "started".into()),
            ("yorick".into(), "started".into())
        ])
    );
    let gilbert = report["thespians"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "gilbert")
        .unwrap();
    assert_eq!(gilbert["replicas"], 2);
    assert_eq!(gilbert["addresses"].as_array().unwrap().len(), 2);
    let (code, status) = fleet.status();
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["healthy"], true);
    // The state knows who calls whom (down stops yorick before gilbert).
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(fleet.state_dir().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(
        state["thespians"]["yorick"]["callees"],
        serde_json::json!(["gilbert"])
    );

    // `probe yorick`: OK, and answered by yorick's process (the instance id ends in its pid).
    let (code, single) = fleet.json("probe", &["yorick"]);
    assert_eq!(code, 0, "{single}");
    assert_eq!(single["ok"], 1, "{single}");
    let instance = single["instance"].as_str().expect("instance").to_string();
    assert!(
        instance.ends_with(&format!(":{}", fleet.pids("yorick")[0])),
        "probe yorick was answered by {instance}, not yorick's process"
    );

    // yorick's calls spread over both gilbert replicas (each replica logs the requests it answers).
    let (code, load) = fleet.json("probe", &["yorick", "-n", "40", "-c", "4"]);
    assert_eq!(code, 0, "{load}");
    assert_eq!(
        (load["requests"].as_u64(), load["ok"].as_u64()),
        (Some(40), Some(40)),
        "{load}"
    );
    let spread = (answered(&fleet, "gilbert", 0), answered(&fleet, "gilbert", 1));
    assert!(
        spread.0 >= 5 && spread.1 >= 5,
        "yorick's 40 calls were not spread over gilbert: {spread:?}"
    );
    assert_eq!(
        spread.0 + spread.1,
        41,
        "every yorick call (40 + the single shot) reached exactly one gilbert: {spread:?}"
    );
    // And a probe of gilbert itself is answered by both of its processes.
    let (code, direct) = fleet.json("probe", &["gilbert", "-n", "20", "-c", "4"]);
    assert_eq!(code, 0, "{direct}");
    let instances: BTreeSet<String> = direct["instances"]
        .as_object()
        .expect("instances")
        .keys()
        .cloned()
        .collect();
    let expected: BTreeSet<String> = fleet
        .pids("gilbert")
        .iter()
        .map(|pid| {
            let any = instances
                .iter()
                .next()
                .map_or("", |i| i.rsplit_once(':').map_or("", |(h, _)| h));
            format!("{any}:{pid}")
        })
        .collect();
    assert_eq!(instances, expected, "gilbert's two replicas both answer");

    // A second `up` with nothing changed restarts nothing.
    let before = fleet.replicas();
    let again = fleet.up();
    assert!(statuses(&again).values().all(|s| s == "up_to_date"), "{again}");
    assert_eq!(fleet.replicas(), before);

    // Change gilbert: only gilbert restarts; yorick keeps its process.
    fleet.edit("- sleep: 10ms", "- sleep: 12ms");
    let (code, plan) = fleet.json("plan", &[]);
    assert_eq!(code, 0);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(statuses(&plan)["gilbert"], "restarted");
    assert_eq!(fleet.replicas(), before, "plan must not change anything");
    let changed = fleet.up();
    assert_eq!(statuses(&changed)["gilbert"], "restarted");
    assert_eq!(statuses(&changed)["yorick"], "up_to_date");
    let after = fleet.replicas();
    assert_eq!(after["yorick"], before["yorick"], "yorick must not restart");
    for (old, new) in before["gilbert"].iter().zip(&after["gilbert"]) {
        assert_ne!(old.pid, new.pid, "gilbert[{}] was not restarted", old.index);
        assert!(
            !running(old.pid, old.start_time),
            "old gilbert[{}] still runs",
            old.index
        );
    }
    // The restarted gilbert is reached through yorick (callers learnt the new addresses).
    let (code, after_restart) = fleet.json("probe", &["yorick", "-n", "10"]);
    assert_eq!(code, 0, "{after_restart}");
    assert_eq!(after_restart["ok"], 10, "{after_restart}");

    // down: every process gone, checked by pid.
    let (code, down) = fleet.json("down", &[]);
    assert_eq!(code, 0, "{down}");
    assert_eq!(down["nothing_running"], false);
    assert!(
        down["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "drained"),
        "{down}"
    );
    for r in after.values().flatten() {
        assert!(!running(r.pid, r.start_time), "pid {} survived down", r.pid);
    }
    assert!(!fleet.state_dir().join("state.json").exists());
    assert!(
        fleet.state_dir().join("logs/gilbert-0.log").exists(),
        "logs are kept after down"
    );

    // Idempotent: nothing running is not an error.
    let out = fleet.run("down", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("not running"), "{}", stdout(&out));
    let (code, status) = fleet.status();
    assert_eq!((code, &status["running"]), (1, &Value::Bool(false)));
}

/// `probe --rate` against yorick while `up` replaces both gilbert replicas: zero failed requests.
#[test]
fn a_rolling_restart_under_probe_load_fails_no_request() {
    let fleet = Fleet::example("gilbert-yorick");
    fleet.up();
    let before = fleet.replicas();
    fleet.edit("- sleep: 10ms", "- sleep: 11ms");

    // Open loop, 200 requests/s for 4 s, through yorick (every request calls gilbert).
    let probe = fleet
        .cmd(
            "probe",
            &["yorick", "--rate", "200", "--duration", "4s", "-o", "json"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start probe");
    let mut probe = KillOnDrop(Some(probe));
    // Readiness: the probe's requests are reaching yorick (it logs each one it answers).
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered(&fleet, "yorick", 0) < 20 {
        assert!(
            Instant::now() < deadline,
            "the probe's requests never reached yorick"
        );
        assert!(probe.running(), "probe ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = fleet.up();
    assert!(
        probe.running(),
        "the probe ended before `up` did: the load did not cover the restart"
    );
    let out = probe.output();
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("probe printed no JSON ({e}): {}", stderr(&out)));
    assert_eq!(out.status.code(), Some(0), "{result}");

    assert_eq!(statuses(&report)["gilbert"], "restarted");
    let after = fleet.replicas();
    assert_eq!(after["yorick"], before["yorick"]);
    assert!(
        before["gilbert"]
            .iter()
            .zip(&after["gilbert"])
            .all(|(a, b)| a.pid != b.pid)
    );
    assert_eq!(
        result["errors"],
        serde_json::json!({}),
        "failed requests during the rolling restart: {result}"
    );
    assert_eq!(result["ok"], result["requests"], "{result}");
    assert!(
        result["requests"].as_u64().unwrap() >= 600,
        "too few requests for a 4 s run at 200/s: {result}"
    );
    // The new gilbert replicas took the traffic after the swap.
    assert!(answered(&fleet, "gilbert", 0) > 0 && answered(&fleet, "gilbert", 1) > 0);
}

/// A child process killed if the test fails before waiting for it.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn running(&mut self) -> bool {
        self.0.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn output(mut self) -> Output {
        self.0
            .take()
            .expect("child")
            .wait_with_output()
            .expect("child output")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_dead_replica_is_reported_by_status_and_restarted_by_up() {
    let fleet = Fleet::example("gilbert-yorick");
    fleet.up();
    let before = fleet.replicas();
    let victim = before["gilbert"][1];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill gilbert[1]");
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(victim.pid, victim.start_time) {
        assert!(Instant::now() < deadline, "SIGKILLed agent did not die");
        std::thread::sleep(Duration::from_millis(10));
    }

    let (code, status) = fleet.status();
    assert_eq!(code, 1, "status must fail when a replica is dead: {status}");
    assert_eq!(status["healthy"], false);
    let g = status["thespians"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "gilbert")
        .unwrap();
    assert_eq!(g["replicas"][0]["health"], "serving");
    assert_eq!(g["replicas"][1]["health"], "dead");
    let table = fleet.run("status", &[]);
    assert!(stdout(&table).contains("dead"), "{}", stdout(&table));

    let report = fleet.up();
    assert_eq!(statuses(&report)["gilbert"], "restarted");
    assert_eq!(statuses(&report)["yorick"], "up_to_date");
    let g = report["thespians"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "gilbert")
        .unwrap();
    assert!(
        g["detail"]
            .as_str()
            .unwrap()
            .contains("replica 1 was not running"),
        "{g}"
    );
    let after = fleet.replicas();
    assert_eq!(
        after["gilbert"][0], before["gilbert"][0],
        "the live replica is left alone"
    );
    assert_ne!(after["gilbert"][1].pid, victim.pid);
    assert_eq!(after["yorick"], before["yorick"]);
    assert_eq!(fleet.status().0, 0);
    // The dead process's log is kept beside the new one.
    assert!(fleet.state_dir().join("logs/gilbert-1.prev.log").exists());
}

#[test]
fn scaling_changes_only_the_replica_count() {
    let fleet = Fleet::example("gilbert-yorick");
    fleet.up();
    let before = fleet.replicas();
    fleet.edit("replicas: 2", "replicas: 3");
    let report = fleet.up();
    assert_eq!(statuses(&report)["gilbert"], "scaled");
    let after = fleet.replicas();
    assert_eq!(
        after["gilbert"][..2],
        before["gilbert"][..],
        "existing replicas untouched"
    );
    assert_eq!(after["gilbert"].len(), 3);
    let resolve = std::fs::read_to_string(fleet.state_dir().join("resolve")).unwrap();
    assert_eq!(
        resolve.matches("127.0.0.1:").count(),
        4,
        "3 gilbert + 1 yorick endpoints: {resolve}"
    );

    fleet.edit("replicas: 3", "replicas: 1");
    let report = fleet.up();
    assert_eq!(statuses(&report)["gilbert"], "scaled");
    let shrunk = fleet.replicas();
    assert_eq!(shrunk["gilbert"], after["gilbert"][..1]);
    for gone in &after["gilbert"][1..] {
        assert!(
            !running(gone.pid, gone.start_time),
            "gilbert[{}] still runs",
            gone.index
        );
    }
}

#[test]
fn a_removed_thespian_is_stopped() {
    let fleet = Fleet::example("gilbert-yorick");
    fleet.up();
    let before = fleet.replicas();
    // yorick is the only caller of gilbert, so yorick can go; the manifest stays valid.
    let text = std::fs::read_to_string(&fleet.manifest).unwrap();
    let cut = text.find("\n  yorick:").expect("yorick in the manifest");
    std::fs::write(&fleet.manifest, &text[..cut + 1]).unwrap();
    let report = fleet.up();
    assert_eq!(statuses(&report)["yorick"], "stopped");
    assert_eq!(statuses(&report)["gilbert"], "up_to_date");
    let y = before["yorick"][0];
    assert!(!running(y.pid, y.start_time));
    assert!(!fleet.replicas().contains_key("yorick"));
}

// ---------------------------------------------------------------------------------------------------
// Safety: stale state, foreign pids, concurrency

/// A stale state whose pid now belongs to another program: `status` says dead, `down` and `up` never
/// signal it.
#[test]
fn a_reused_pid_in_stale_state_is_never_signalled() {
    let fleet = Fleet::example("gilbert-yorick");
    let mut stranger = Command::new("sleep").arg("60").spawn().expect("spawn sleep");
    let pid = stranger.id() as i32;
    let (_, real_start) = stat(pid).expect("stat sleep");
    let state = serde_json::json!({
        "version": 1,
        "fleet": "gilbert-yorick",
        "manifest": fleet.manifest,
        "thespians": {"gilbert": {"callees": [], "replicas": [{
            "thespian": "gilbert", "index": 0, "pid": pid, "start_time": real_start + 1, "port": 1,
            "config_hash": "stale", "log": fleet.state_dir().join("logs/gilbert-0.log"), "started_at_ms": 0
        }]}}
    });
    std::fs::create_dir_all(fleet.state_dir().join("logs")).unwrap();
    std::fs::write(fleet.state_dir().join("state.json"), state.to_string()).unwrap();

    let (code, status) = fleet.status();
    assert_eq!(code, 1);
    assert_eq!(status["thespians"][0]["replicas"][0]["health"], "dead");

    let (code, down) = fleet.json("down", &[]);
    assert_eq!(code, 0, "{down}");
    assert_eq!(down["replicas"][0]["outcome"], "foreign_pid");
    assert_eq!(down["nothing_running"], true);
    assert_eq!(
        stranger.try_wait().unwrap(),
        None,
        "down signalled a process that is not ours"
    );

    // Same for up: the stale record is dropped and a fresh replica started, the stranger untouched.
    std::fs::write(fleet.state_dir().join("state.json"), state.to_string()).unwrap();
    let report = fleet.up();
    assert_eq!(statuses(&report)["gilbert"], "restarted");
    assert_ne!(fleet.pids("gilbert")[0], pid);
    assert_eq!(
        stranger.try_wait().unwrap(),
        None,
        "up signalled a process that is not ours"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

#[test]
fn two_concurrent_ups_do_not_corrupt_the_state() {
    let fleet = Fleet::example("gilbert-yorick");
    let a = fleet
        .cmd("up", &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = fleet
        .cmd("up", &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    // The second waited for the first and found everything up to date: exactly 3 agents exist.
    let replicas = fleet.replicas();
    assert_eq!(replicas.values().map(Vec::len).sum::<usize>(), 3);
    assert!(replicas.values().flatten().all(|r| running(r.pid, r.start_time)));
    let agents = count_agents_in(fleet.dir.path());
    assert_eq!(
        agents, 3,
        "expected 3 agent processes for this fleet, found {agents}"
    );
    assert_eq!(fleet.status().0, 0);
}

/// Agent processes whose resolve file is in `dir`, found through /proc (the environment of each process).
fn count_agents_in(dir: &Path) -> usize {
    let needle = format!(
        "THESPIAN_RESOLVE_FILE={}",
        dir.join(".thespctl").join("resolve").display()
    );
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(stat(*pid), Some((s, _)) if s != 'Z'))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .count()
}

/// While another `up`/`down` holds the directory's lock, `up` waits and says so; Ctrl-C ends the wait with
/// 130 and starts nothing.
#[test]
fn ctrl_c_while_waiting_for_the_lock_exits_130_and_starts_nothing() {
    let fleet = Fleet::example("gilbert-yorick");
    std::fs::create_dir_all(fleet.state_dir()).unwrap();
    let lock = std::fs::File::create(fleet.state_dir().join("lock")).unwrap();
    lock.lock().unwrap();

    let mut up = fleet
        .cmd("up", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_lines = std::io::BufReader::new(up.stderr.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    stderr_lines.read_line(&mut line).unwrap();
    assert!(line.contains("waiting for another thespctl up/down"), "{line}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = support::wait_timeout(&mut up, Duration::from_secs(10)).expect("up exits on Ctrl-C");
    assert_eq!(status.code(), Some(130));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr_lines, &mut rest).unwrap();
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(fleet.replicas().is_empty());
    assert_eq!(count_agents_in(fleet.dir.path()), 0);
    drop(lock);
}

#[test]
fn another_fleet_in_the_same_directory_is_refused() {
    let fleet = Fleet::example("gilbert-yorick");
    fleet.up();
    fleet.edit("fleet: gilbert-yorick", "fleet: other");
    let out = fleet.run("up", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already runs fleet `gilbert-yorick`"),
        "{}",
        stderr(&out)
    );
    // down (with the renamed manifest) still stops what the state records.
    let (code, down) = fleet.json("down", &[]);
    assert_eq!(code, 0);
    assert_eq!(down["fleet"], "gilbert-yorick");
    assert_eq!(down["nothing_running"], false);
}

#[test]
fn a_replica_that_cannot_start_is_reported_with_its_log() {
    let fleet = Fleet::example("gilbert-yorick");
    // A THESPIAN_RESOLVE_FILE the agent cannot use is not possible to provoke from a manifest (it is
    // validated first), so break the agent through its environment: an invalid SHUTDOWN_GRACE_MS.
    let out = fleet
        .cmd("up", &["--timeout", "5s"])
        .env("SHUTDOWN_GRACE_MS", "soon")
        .output()
        .unwrap();
    fleet.remember();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("did not come up") && err.contains("exited during start-up"),
        "{err}"
    );
    assert!(err.contains("SHUTDOWN_GRACE_MS"), "the log tail is quoted: {err}");
    assert!(
        err.contains("gilbert-0.log") || err.contains("yorick-0.log"),
        "{err}"
    );
    // Nothing half-started is left running.
    assert_eq!(count_agents_in(fleet.dir.path()), 0);
}

// ---------------------------------------------------------------------------------------------------
// logs

#[test]
fn logs_print_follow_and_name_unknown_thespians() {
    let fleet = Fleet::example("gilbert-yorick");
    fleet.up();

    let out = fleet.run("logs", &["gilbert"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l.starts_with("gilbert[0] | "))
            && text.lines().any(|l| l.starts_with("gilbert[1] | ")),
        "{text}"
    );

    let out = fleet.run("logs", &["gilbert", "--replica", "1", "-n", "1"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    assert!(!stdout(&out).contains(" | "), "a single replica is not prefixed");

    let out = fleet.run("logs", &["hamlet"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown thespian `hamlet`; the fleet has: gilbert, yorick"),
        "{}",
        stderr(&out)
    );

    // -f: a request to yorick shows up as a new line; Ctrl-C ends it with 130.
    let mut follow = fleet
        .cmd("logs", &["yorick", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(lines).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let yorick = fleet.addr("yorick", 0);
    let rt = runtime();
    // The follower may start after the first call; keep calling until the request's line arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    'wait: loop {
        rt.block_on(async { call_a(&mut client(&yorick).await).await.expect("yorick.A") });
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            if line.contains("answered") {
                break 'wait;
            }
        }
        assert!(
            Instant::now() < deadline,
            "logs -f printed no line for the request"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follow.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = support::wait_timeout(&mut follow, Duration::from_secs(5)).expect("logs -f exits on Ctrl-C");
    assert_eq!(status.code(), Some(130));
}

// ---------------------------------------------------------------------------------------------------
// Every example runs

#[test]
fn every_example_comes_up_healthy_and_goes_down() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names: Vec<String> = std::fs::read_dir(&examples)
        .expect("examples/")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("thespian.yaml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.len() >= 2,
        "expected at least two examples, found {names:?}"
    );
    for name in names {
        let fleet = Fleet::example(&name);
        let report = fleet.up();
        assert!(
            statuses(&report).values().all(|s| s == "started"),
            "{name}: {report}"
        );
        let (code, status) = fleet.status();
        assert_eq!(code, 0, "{name}: {status}");
        let all = fleet.replicas();
        let (code, _) = fleet.json("down", &[]);
        assert_eq!(code, 0, "{name}");
        for r in all.values().flatten() {
            assert!(
                !running(r.pid, r.start_time),
                "{name}: pid {} survived down",
                r.pid
            );
        }
    }
}
