//! Shared helpers of the black-box tests: the `thespctl` binary, real agent processes, moto.
//!
//! Each test file includes this with `mod support;`; not every file uses every helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `thespctl` binary under test.
pub fn thespctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thespctl"));
    // Tests read plain output and must never reach real AWS.
    cmd.env("NO_COLOR", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("THESPCTL_TARGET");
    cmd
}

/// A real agent process (`thespctl agent`) on 127.0.0.1 with a free port, killed when dropped.
pub struct Agent {
    pub addr: SocketAddr,
    pub child: Child,
    /// stdout lines after the first, collected by a background thread.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts an agent with `CONFIG_JSON = config` and waits for its "listening" line (the readiness
    /// signal: the first stdout line names the bound address).
    pub fn spawn(service: &str, config: &str) -> Agent {
        Agent::spawn_with(service, config, &[])
    }

    pub fn spawn_with(service: &str, config: &str, env: &[(&str, &str)]) -> Agent {
        let mut cmd = thespctl();
        cmd.arg("agent")
            .env("SERVICE_NAME", service)
            .env("CONFIG_JSON", config)
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_BACKEND_ADDRESS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start thespctl agent");
        let stdout = child.stdout.take().expect("agent stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .expect("agent printed no line before exiting")
            .expect("read agent stdout");
        let addr =
            listening_address(&first).unwrap_or_else(|| panic!("first agent line names no address: {first}"));
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().expect("log sink").push(line);
            }
        });
        Agent { addr, child, logs }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM and waits for the exit status (the agent drains first).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM agent");
        wait_timeout(&mut self.child, Duration::from_secs(20))
            .expect("agent did not exit within 20 s of SIGTERM")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bound address from the agent's first log line: a JSON object with an `address` field.
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let addr = v
        .get("address")
        .or_else(|| v.get("fields").and_then(|f| f.get("address")))?;
    addr.as_str()?.parse().ok()
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The moto server started by `scripts/test`. Tests that need AWS fail loudly without it rather than
/// passing vacuously.
pub fn moto_url() -> String {
    std::env::var("THESPCTL_TEST_MOTO_URL")
        .expect("THESPCTL_TEST_MOTO_URL is not set: run the suite with scripts/test, which starts moto")
}

/// The Python venv made by `scripts/test` (grpcio, cfn-lint, moto).
pub fn venv() -> PathBuf {
    PathBuf::from(
        std::env::var("THESPCTL_TEST_VENV")
            .expect("THESPCTL_TEST_VENV is not set: run the suite with scripts/test"),
    )
}

/// A child process killed (and reaped) when the test ends, whatever happens.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh directory holding a copy of `examples/NAME/` (the manifest and any config files it points at),
/// removed when dropped.
pub fn example_copy(name: &str) -> tempfile::TempDir {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let dir = tempdir();
    copy_tree(&src, dir.path());
    dir
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let read = std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    for entry in read {
        let entry = entry.expect("dir entry");
        // A developer who ran an example has its `.thespctl/` there: copying it would hand the test the
        // state (pids, ports) of a fleet that is not its own.
        if entry.file_name() == ".thespctl" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A fresh directory for a test fleet (removed when dropped).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("thespctl-test-")
        .tempdir()
        .expect("tempdir")
}
