//! Black-box tests of `thespctl probe` against real agents (`thespctl agent` processes on 127.0.0.1).
//!
//! Statistical assertions use bounds derived from the behaviour configured (binomial sigma for failure
//! rates, the configured sleep as the floor of latency), never timings of the test machine.

// Helpers outside #[test] functions unwrap too: a panic there is a test failure with its message.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use support::{Agent, thespctl};

/// An agent config whose method A sleeps `ms` and fails with probability `failure_chance`.
fn sleep_config(ms: u64, failure_chance: f64) -> String {
    format!(
        r#"{{"grpc_method_a":{{"tracing_name":"a","operations":[{{"Action":{{"Sleep":{{"tracing_name":"s","duration_ms":{ms},"failure_chance":{failure_chance}}}}}}}]}},"grpc_method_b":null,"grpc_method_c":null}}"#
    )
}

fn probe(args: &[&str]) -> Output {
    thespctl()
        .arg("probe")
        .args(args)
        .output()
        .expect("run thespctl probe")
}

/// Runs the probe with `--output json`; returns the exit code and the parsed document.
fn probe_json(args: &[&str]) -> (i32, Value) {
    let out = thespctl()
        .arg("probe")
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("run thespctl probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}"));
    (out.status.code().expect("exit code"), doc)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The stable keys are there and agree with each other.
fn check_consistent(doc: &Value) {
    for key in [
        "target",
        "method",
        "requests",
        "ok",
        "errors",
        "latency_ms",
        "rps",
        "instances",
    ] {
        assert!(doc.get(key).is_some(), "missing key {key}: {doc}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(doc["latency_ms"][key].is_number(), "latency_ms.{key}: {doc}");
    }
    let l = &doc["latency_ms"];
    let p = |k: &str| l[k].as_f64().unwrap();
    assert!(
        p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("p999"),
        "{l}"
    );
    assert!(p("p999") <= p("max") * 1.001 + 0.001, "{l}");
    let requests = doc["requests"].as_u64().unwrap();
    let ok = doc["ok"].as_u64().unwrap();
    let errors: u64 = doc["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(ok + errors, requests, "ok + sum(errors) = requests: {doc}");
    let answered: u64 = doc["instances"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(answered <= requests, "{doc}");
    assert!(doc["rps"].as_f64().unwrap() > 0.0, "{doc}");
}

/// The agent's instance id (`hostname:pid`) ends with its pid.
fn instance_of(agent: &Agent) -> String {
    format!(":{}", agent.child.id())
}

#[test]
fn single_shot_reports_status_latency_instance_and_trace_id() {
    let agent = Agent::spawn("gilbert", &sleep_config(5, 0.0));
    let addr = agent.addr.to_string();

    let (code, doc) = probe_json(&["--address", &addr]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["mode"], "single");
    assert_eq!(doc["code"], "OK");
    assert_eq!(doc["requests"], 1);
    assert_eq!(doc["ok"], 1);
    assert!(
        doc["instance"].as_str().unwrap().ends_with(&instance_of(&agent)),
        "{doc}"
    );
    assert!(doc["latency_ms"]["max"].as_f64().unwrap() >= 5.0, "{doc}");
    let trace_id = doc["trace_id"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32);
    assert!(
        trace_id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let traceparent = doc["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );
    assert!(traceparent.ends_with("-01"), "{traceparent}");
    assert_eq!(traceparent.len(), 55);
    check_consistent(&doc);

    // A fresh trace per probe.
    let (_, again) = probe_json(&["--address", &addr]);
    assert_ne!(again["trace_id"], doc["trace_id"]);

    let out = probe(&["--address", &addr, "--method", "A"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("status     OK"), "{stdout}");
    assert!(stdout.contains("trace id   "), "{stdout}");
    assert!(stdout.contains(&instance_of(&agent)), "{stdout}");
}

#[test]
fn single_shot_failure_exits_1_and_still_names_the_instance() {
    let agent = Agent::spawn("gilbert", &sleep_config(0, 1.0));
    let addr = agent.addr.to_string();
    let (code, doc) = probe_json(&["--address", &addr]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["code"], "INTERNAL");
    assert_eq!(doc["errors"]["INTERNAL"], 1);
    assert!(
        doc["instance"].as_str().unwrap().ends_with(&instance_of(&agent)),
        "{doc}"
    );
    assert_eq!(doc["passed"], false);

    let out = probe(&["--address", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("status     INTERNAL"), "{stdout}");
    assert!(
        stdout.contains("gate FAILED: error rate 100.00 % > --max-error-rate 0"),
        "{stdout}"
    );

    // Scripts that accept failures say so.
    let (code, _) = probe_json(&["--address", &addr, "--max-error-rate", "1"]);
    assert_eq!(code, 0);
}

#[test]
fn a_20ms_sleep_gives_a_p50_of_about_20ms() {
    let agent = Agent::spawn("gilbert", &sleep_config(20, 0.0));
    let addr = agent.addr.to_string();
    let (code, doc) = probe_json(&["--address", &addr, "-n", "200", "--concurrency", "4"]);
    assert_eq!(code, 0, "{doc}");
    check_consistent(&doc);
    assert_eq!(doc["requests"], 200);
    assert_eq!(doc["mode"], "closed_loop");
    let p50 = doc["latency_ms"]["p50"].as_f64().unwrap();
    // Never below the sleep; a few ms above it on a quiet machine, allowing for a busy one.
    assert!((20.0..40.0).contains(&p50), "p50 {p50} ms: {doc}");
    assert!(doc["latency_ms"]["p99"].as_f64().unwrap() >= 20.0);
}

#[test]
fn failure_chance_0_3_fails_30_percent_within_binomial_bounds() {
    let agent = Agent::spawn("gilbert", &sleep_config(1, 0.3));
    let addr = agent.addr.to_string();
    let n = 2000.0_f64;
    let (code, doc) = probe_json(&[
        "--address",
        &addr,
        "-n",
        "2000",
        "-c",
        "32",
        "--max-error-rate",
        "0.5",
    ]);
    assert_eq!(code, 0, "gate 0.5 passes: {doc}");
    check_consistent(&doc);
    assert_eq!(doc["requests"], 2000);
    let internal = doc["errors"]["INTERNAL"].as_f64().unwrap_or(0.0);
    let sigma = (n * 0.3 * 0.7).sqrt(); // ≈ 20.5
    assert!(
        (internal - n * 0.3).abs() <= 5.0 * sigma,
        "{internal} INTERNAL of 2000, expected 600 ± {:.0}: {doc}",
        5.0 * sigma
    );
    assert_eq!(
        doc["errors"].as_object().unwrap().len(),
        1,
        "only INTERNAL: {doc}"
    );
    let rate = doc["error_rate"].as_f64().unwrap();
    assert!((rate - internal / n).abs() < 1e-9);
}

#[test]
fn failure_chance_0_gives_no_errors() {
    let agent = Agent::spawn("gilbert", &sleep_config(1, 0.0));
    let (code, doc) = probe_json(&["--address", &agent.addr.to_string(), "-n", "500", "-c", "8"]);
    assert_eq!(code, 0, "{doc}");
    check_consistent(&doc);
    assert_eq!(doc["requests"], 500);
    assert_eq!(doc["ok"], 500);
    assert_eq!(doc["errors"], serde_json::json!({}));
    assert_eq!(doc["instances"].as_object().unwrap().len(), 1);
}

#[test]
fn gates_give_the_documented_exit_codes() {
    let agent = Agent::spawn("gilbert", &sleep_config(20, 0.0));
    let flaky = Agent::spawn("flaky", &sleep_config(0, 0.5));
    let addr = agent.addr.to_string();
    let flaky_addr = flaky.addr.to_string();

    // p99 gate: met, then missed (20 ms sleeps can never be under 5 ms).
    let (code, doc) = probe_json(&["--address", &addr, "-n", "20", "--max-p99", "5s"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["gates"][1]["gate"], "max_p99");
    assert_eq!(doc["gates"][1]["passed"], true);
    let (code, doc) = probe_json(&["--address", &addr, "-n", "20", "--max-p99", "5ms"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["passed"], false);
    assert_eq!(doc["gates"][1]["passed"], false);
    assert!(doc["gates"][1]["measured"].as_f64().unwrap() >= 20.0);
    let out = probe(&["--address", &addr, "-n", "20", "--max-p99", "5ms"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("gate FAILED: p99 latency "), "{stdout}");
    assert!(stdout.contains("> --max-p99 5.00 ms"), "{stdout}");

    // Error-rate gate: default 0 fails on any error; a generous limit passes.
    let (code, doc) = probe_json(&["--address", &flaky_addr, "-n", "200", "-c", "8"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["gates"][0]["gate"], "max_error_rate");
    assert_eq!(doc["gates"][0]["passed"], false);
    let (code, _) = probe_json(&[
        "--address",
        &flaky_addr,
        "-n",
        "200",
        "-c",
        "8",
        "--max-error-rate",
        "0.9",
    ]);
    assert_eq!(code, 0);

    // Usage errors: exit 2 before anything is sent, with the flag named.
    for (args, expected) in [
        (vec!["--address", &addr, "--rate", "0"], "--rate 0: must be"),
        (
            vec!["--address", &addr, "--max-error-rate", "2"],
            "--max-error-rate 2: must be a fraction",
        ),
        (
            vec!["--address", &addr, "--via", "tunnel"],
            "--via tunnel: applies to a thespian resolved by name",
        ),
        (vec!["--address", "127.0.0.1"], "--address 127.0.0.1: no port"),
        (
            vec!["--address", &addr, "--max-p99", "soon"],
            "expected a duration",
        ),
    ] {
        let out = probe(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn a_refused_connection_is_a_clear_error_with_exit_2() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    for args in [
        vec!["--address", addr.as_str()],
        vec!["--address", addr.as_str(), "-n", "10"],
    ] {
        let out = probe(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with(&format!(
                "error: could not connect to http://{addr}: connection refused"
            )),
            "{stderr}"
        );
        assert!(stderr.contains("thespctl status"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn two_agents_behind_two_addresses_both_serve() {
    let a = Agent::spawn("gilbert", &sleep_config(1, 0.0));
    let b = Agent::spawn("gilbert", &sleep_config(1, 0.0));
    let (code, doc) = probe_json(&[
        "--address",
        &a.addr.to_string(),
        "--address",
        &b.addr.to_string(),
        "--rate",
        "400",
        "-n",
        "200",
    ]);
    assert_eq!(code, 0, "{doc}");
    check_consistent(&doc);
    let instances = doc["instances"].as_object().unwrap();
    assert_eq!(instances.len(), 2, "{doc}");
    // 4 connections, 2 per address, requests striped over connections: an even split.
    for agent in [&a, &b] {
        let (_, n) = instances
            .iter()
            .find(|(id, _)| id.ends_with(&instance_of(agent)))
            .unwrap_or_else(|| panic!("no requests answered by {}: {doc}", agent.addr));
        assert_eq!(n, 100, "{doc}");
    }
    assert_eq!(doc["connections"], 4);
    assert_eq!(doc["endpoints"].as_array().unwrap().len(), 2);
}

/// A running probe, killed if the test fails before it exits.
struct Running(Option<Child>);

impl Running {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.as_ref().expect("running").id() as i32)
    }

    fn finish(mut self) -> Output {
        self.0
            .take()
            .expect("running")
            .wait_with_output()
            .expect("wait for probe")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a load probe (table output) and waits for its start line on stderr: the connections are up
/// and the first request is about to go. Returns the process and the rest of stderr (read in a thread).
fn start_load_probe(args: &[&str]) -> (Running, std::sync::mpsc::Receiver<String>) {
    let mut child = thespctl()
        .arg("probe")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start thespctl probe");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("probe start line");
    assert!(
        first.starts_with("probing "),
        "unexpected first stderr line: {first}"
    );
    (Running(Some(child)), rx)
}

/// `p99 1021 ms` → 1021.0 from the latency line of the table output.
fn latency_field(stdout: &str, field: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("latency"))
        .unwrap_or_else(|| panic!("no latency line:\n{stdout}"));
    let after = line
        .split(&format!(" {field} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    let value = after.split_whitespace().next().unwrap();
    value
        .parse()
        .unwrap_or_else(|_| panic!("{field} value {value} in {line}"))
}

#[test]
fn open_loop_shows_a_stalled_server_in_p99_and_max() {
    // A 1 s stall (SIGSTOP … SIGCONT) in the middle of a 4 s open-loop run at 200 requests/s. The 200
    // requests due during the stall keep their scheduled start times, so ~20 of them (2.5 % of 800)
    // see ≥ 900 ms: p99 must show it. A closed-loop tool would have sent one request and waited.
    let agent = Agent::spawn("gilbert", &sleep_config(2, 0.0));
    let addr = agent.addr.to_string();
    let (probe, _stderr) = start_load_probe(&["--address", &addr, "--rate", "200", "--duration", "4s"]);
    let pid = Pid::from_raw(agent.child.id() as i32);
    // The stall is the experiment: 1 s into the run, for 1 s.
    std::thread::sleep(Duration::from_secs(1));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP agent");
    std::thread::sleep(Duration::from_secs(1));
    kill(pid, Signal::SIGCONT).expect("SIGCONT agent");
    let out = probe.finish();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("· 800 requests in"),
        "nothing dropped during the stall:\n{stdout}"
    );
    assert!(stdout.contains("latency (from scheduled start)"), "{stdout}");
    let p99 = latency_field(&stdout, "p99");
    let max = latency_field(&stdout, "max");
    let p50 = latency_field(&stdout, "p50");
    assert!(max >= 900.0, "max {max} ms:\n{stdout}");
    assert!(p99 >= 900.0, "p99 {p99} ms:\n{stdout}");
    assert!(
        p50 < 500.0,
        "most requests were not in the stall: p50 {p50}:\n{stdout}"
    );
}

#[test]
fn ctrl_c_stops_a_load_run_prints_partial_results_and_exits_130() {
    let agent = Agent::spawn("gilbert", &sleep_config(2, 0.0));
    let addr = agent.addr.to_string();
    let (probe, stderr) = start_load_probe(&["--address", &addr, "--rate", "100", "--duration", "60s"]);
    std::thread::sleep(Duration::from_millis(500));
    kill(probe.pid(), Signal::SIGINT).expect("SIGINT probe");
    let started = std::time::Instant::now();
    let out = probe.finish();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the probe stopped promptly"
    );
    assert_eq!(out.status.code(), Some(130));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("interrupted by Ctrl-C: partial results"),
        "{stdout}"
    );
    assert!(stdout.contains("latency (from scheduled start): p50"), "{stdout}");
    // The rest of stderr, read by the thread until the pipe closed.
    let stderr: Vec<String> = stderr.iter().collect();
    assert!(stderr.iter().any(|l| l == "error: interrupted"), "{stderr:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Probing by name through the local target.

/// A copy of `examples/gilbert-yorick` in a temporary directory. Dropping it runs `down`, then kills any
/// agent of its state that is somehow still running (checked by pid and start time).
struct LocalFleet {
    dir: tempfile::TempDir,
    manifest: std::path::PathBuf,
}

impl LocalFleet {
    fn new() -> LocalFleet {
        let dir = support::example_copy("gilbert-yorick");
        let manifest = dir.path().join("thespian.yaml");
        LocalFleet { dir, manifest }
    }

    /// `thespctl SUBCOMMAND --file MANIFEST ARGS…`; agents started by `up` log every request they answer.
    fn cmd(&self, subcommand: &str, args: &[&str]) -> std::process::Command {
        let mut cmd = thespctl();
        cmd.arg(subcommand)
            .arg("--file")
            .arg(&self.manifest)
            .args(args)
            .env("RUST_LOG", "info,thespian_agent=debug")
            .current_dir(self.dir.path());
        cmd
    }

    fn up(&self) {
        let out = self.cmd("up", &[]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "up failed: {}", text(&out.stderr));
    }

    fn probe_json(&self, args: &[&str]) -> (i32, Value) {
        let out = self.cmd("probe", args).args(["-o", "json"]).output().unwrap();
        let doc = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}\n{}", text(&out.stdout), text(&out.stderr)));
        (out.status.code().unwrap(), doc)
    }

    /// (thespian, pid, start time) of every replica in the state file.
    fn replicas(&self) -> Vec<(String, i32, u64)> {
        let Ok(text) = std::fs::read_to_string(self.dir.path().join(".thespctl/state.json")) else {
            return Vec::new();
        };
        let state: Value = serde_json::from_str(&text).unwrap();
        let mut out = Vec::new();
        for (name, t) in state["thespians"].as_object().unwrap() {
            for r in t["replicas"].as_array().unwrap() {
                out.push((
                    name.clone(),
                    r["pid"].as_i64().unwrap() as i32,
                    r["start_time"].as_u64().unwrap(),
                ));
            }
        }
        out
    }

    fn pids(&self, thespian: &str) -> Vec<i32> {
        self.replicas()
            .into_iter()
            .filter(|r| r.0 == thespian)
            .map(|r| r.1)
            .collect()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(".thespctl/logs").join(name)).unwrap_or_default()
    }
}

/// The start time (field 22 of /proc/PID/stat) of a live process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        let agents = self.replicas();
        let _ = self.cmd("down", &["--grace", "2s"]).output();
        for (_, pid, started) in agents {
            if start_time(pid) == Some(started) {
                eprintln!("test harness: killing leftover agent {pid}");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

#[test]
fn a_name_resolves_through_the_local_fleet_and_spreads_over_its_replicas() {
    let fleet = LocalFleet::new();

    // Nothing running yet: a resolution error, exit 2, saying what to do.
    let out = fleet.cmd("probe", &["gilbert"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("nothing is running") && stderr.contains("thespctl up"),
        "{stderr}"
    );

    fleet.up();
    let (code, doc) = fleet.probe_json(&["gilbert", "--rate", "400", "-n", "400"]);
    assert_eq!(code, 0, "{doc}");
    check_consistent(&doc);
    assert_eq!(doc["target"], "gilbert");
    assert_eq!(doc["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(doc["connections"], 4, "2 per replica");
    let instances = doc["instances"].as_object().unwrap();
    assert_eq!(instances.len(), 2, "both gilbert replicas answered: {doc}");
    assert!(instances.values().all(|n| n == 200), "an even split: {doc}");

    // yorick calls gilbert: one request, answered by yorick.
    let (code, doc) = fleet.probe_json(&["yorick"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["code"], "OK");
    let yorick = fleet.pids("yorick");
    assert_eq!(yorick.len(), 1);
    let instance = doc["instance"].as_str().unwrap();
    assert!(instance.ends_with(&format!(":{}", yorick[0])), "{doc}");

    // An unknown name lists the known ones.
    let out = fleet.cmd("probe", &["gilbret"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown thespian `gilbret`"), "{stderr}");
    assert!(stderr.contains("gilbert, yorick"), "{stderr}");
}

#[test]
fn probing_a_fleet_that_is_not_up_is_bad_input_that_says_to_run_up() {
    let fleet = LocalFleet::new();
    let out = fleet.cmd("probe", &["yorick"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("nothing is running for fleet `gilbert-yorick`"),
        "{stderr}"
    );
    assert!(stderr.contains("run `thespctl up` first"), "{stderr}");
    assert!(
        !fleet.dir.path().join(".thespctl/state.json").exists(),
        "a probe must not create fleet state"
    );
}

#[test]
fn replacing_replicas_during_an_open_loop_run_fails_no_request() {
    let fleet = LocalFleet::new();
    fleet.up();
    let before = fleet.pids("gilbert");

    // 200 requests/s for 4 s straight at gilbert, while `up` replaces both gilbert replicas (new ports:
    // the probe must find them through the target, and re-send what could not reach the old ones).
    let probe = fleet
        .cmd(
            "probe",
            &["gilbert", "--rate", "200", "--duration", "4s", "-o", "json"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let probe = Running(Some(probe));
    // Readiness: a request has reached gilbert (each agent logs the requests it answers).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !fleet.log("gilbert-0.log").contains("answered") {
        assert!(
            std::time::Instant::now() < deadline,
            "no request reached gilbert within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text_before = std::fs::read_to_string(&fleet.manifest).unwrap();
    std::fs::write(
        &fleet.manifest,
        text_before.replacen("- sleep: 10ms", "- sleep: 11ms", 1),
    )
    .unwrap();
    fleet.up();
    let after = fleet.pids("gilbert");
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "up replaced both gilbert replicas"
    );

    let out = probe.finish();
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", text(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{doc}");
    check_consistent(&doc);
    assert_eq!(
        doc["requests"], 800,
        "every scheduled request accounted for: {doc}"
    );
    assert_eq!(doc["errors"], serde_json::json!({}), "no request failed: {doc}");
    // Old and new replicas both answered.
    assert_eq!(doc["instances"].as_object().unwrap().len(), 4, "{doc}");
    eprintln!(
        "attempts re-sent after a connection could not be made: {}",
        doc["retried"]
    );
}
