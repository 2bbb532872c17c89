//! `THESPIAN_RESOLVE_FILE`: callers follow the file as it changes, and a call that never reached a
//! replica (refused, or cut off by its drain before being sent) is sent to the next one — the guarantees a
//! rolling restart by `thespctl up` rests on. Real agent processes; in-test gRPC servers record who was
//! called.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use thespian_agent::proto::Nothing;
use thespian_agent::proto::thespian_client::ThespianClient;
use thespian_agent::proto::thespian_server::{Thespian, ThespianServer};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

struct Agent {
    addr: SocketAddr,
    child: Child,
}

impl Agent {
    fn spawn(service: &str, config: &str, env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_thespian-agent"));
        cmd.env("SERVICE_NAME", service)
            .env("CONFIG_JSON", config)
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env_remove("THESPIAN_RESOLVE")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_BACKEND_ADDRESS")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start thespian-agent");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("{service} printed no line"));
        let first: Value = serde_json::from_str(&first).expect("first line is JSON");
        let addr = first["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("first line names the address");
        // Keep draining stdout so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Agent { addr, child }
    }

    async fn client(&self) -> ThespianClient<Channel> {
        ThespianClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    async fn exited(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "agent did not exit within {limit:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A callee that counts the calls it answers.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Thespian for Recorder {
    async fn a(&self, _: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(Nothing {}))
    }
    async fn b(&self, _: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.a(Request::new(Nothing {})).await
    }
    async fn c(&self, _: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.a(Request::new(Nothing {})).await
    }
}

impl Recorder {
    async fn start() -> (SocketAddr, Recorder) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let recorder = Recorder::default();
        let service = ThespianServer::new(recorder.clone());
        tokio::spawn(async move {
            let incoming = futures_util::stream::unfold(listener, |l| async move {
                Some((l.accept().await.map(|(s, _)| s), l))
            });
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        (addr, recorder)
    }

    fn count(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A port nothing listens on (bound, then closed).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// As `thespctl up` writes it: a new file renamed over the old one.
fn write_resolve(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write resolve file");
    std::fs::rename(&tmp, path).expect("rename resolve file");
}

/// yorick: A calls `http://gilbert` port 80, method A, with no retries configured.
fn yorick_config() -> String {
    r#"{"grpc_method_a":{"tracing_name":"ask","operations":[{"Action":{"CallService":{
        "tracing_name":"call gilbert","service_address":"http://gilbert","service_port":"80","grpc_method":"A"}}}]}}"#
        .to_string()
}

#[tokio::test]
async fn callers_follow_the_file_when_it_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resolve");
    let (one_addr, one) = Recorder::start().await;
    let (two_addr, two) = Recorder::start().await;
    write_resolve(&file, &format!("gilbert:80={one_addr}"));
    let yorick = Agent::spawn(
        "yorick",
        &yorick_config(),
        &[("THESPIAN_RESOLVE_FILE", file.to_str().expect("utf-8"))],
    );
    let mut client = yorick.client().await;
    for _ in 0..5 {
        client
            .a(Nothing {})
            .await
            .expect("yorick.A via the first gilbert");
    }
    assert_eq!((one.count(), two.count()), (5, 0));

    // The file moves gilbert: within a reload interval or so, calls go to the new address only.
    write_resolve(&file, &format!("gilbert:80={two_addr}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while two.count() == 0 {
        assert!(Instant::now() < deadline, "yorick never followed the file");
        client
            .a(Nothing {})
            .await
            .expect("yorick.A while the file changes");
    }
    let before = one.count();
    for _ in 0..10 {
        client
            .a(Nothing {})
            .await
            .expect("yorick.A via the second gilbert");
    }
    assert_eq!(one.count(), before, "the old address is no longer called");
    assert!(two.count() >= 10);
}

#[tokio::test]
async fn a_refused_endpoint_is_skipped_but_a_fleet_that_is_all_down_still_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resolve");
    let (live_addr, live) = Recorder::start().await;
    write_resolve(
        &file,
        &format!("gilbert:80=127.0.0.1:{},{live_addr}", dead_port()),
    );
    let yorick = Agent::spawn(
        "yorick",
        &yorick_config(),
        &[("THESPIAN_RESOLVE_FILE", file.to_str().expect("utf-8"))],
    );
    let mut client = yorick.client().await;
    // Round-robin puts every other call on the dead endpoint; none of them fails (retries: 0).
    for _ in 0..10 {
        client
            .a(Nothing {})
            .await
            .expect("a refused connection is not a failed call");
    }
    assert_eq!(live.count(), 10);

    // Real failures are not hidden: with nothing alive the call fails, naming the callee.
    write_resolve(&file, &format!("gilbert:80=127.0.0.1:{}", dead_port()));
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match client.a(Nothing {}).await {
            Err(status) => break status,
            Ok(_) => assert!(Instant::now() < deadline, "the file change was never seen"),
        }
    };
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("call gilbert"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_swapped_and_drained_under_load_loses_no_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resolve");
    let gilbert_config = r#"{"grpc_method_a":{"tracing_name":"work","operations":[{"Action":{"Sleep":{"tracing_name":"think","duration_ms":5}}}]}}"#;
    let mut old = Agent::spawn("gilbert", gilbert_config, &[]);
    write_resolve(&file, &format!("gilbert:80={}", old.addr));
    let yorick = Agent::spawn(
        "yorick",
        &yorick_config(),
        &[("THESPIAN_RESOLVE_FILE", file.to_str().expect("utf-8"))],
    );

    // Closed-loop load: 8 callers, each calling yorick.A back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (mut client, stop, ok) = (yorick.client().await, stop.clone(), ok.clone());
        load.spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match client.a(Nothing {}).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(s) => failures.push(format!("{:?}: {}", s.code(), s.message())),
                }
            }
            failures
        });
    }
    let wait_for_more = |n: usize| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::SeqCst) + n;
            let deadline = Instant::now() + Duration::from_secs(10);
            while ok.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    wait_for_more(50).await;

    // The swap, in `thespctl up`'s order: new replica up, file rewritten, old one SIGTERMed at once (no
    // grace for callers to notice: the transparent retry must cover that window).
    let new = Agent::spawn("gilbert", gilbert_config, &[]);
    write_resolve(&file, &format!("gilbert:80={}", new.addr));
    old.sigterm();
    let status = old.exited(Duration::from_secs(15)).await;
    assert!(status.success(), "the old replica drains and exits 0: {status}");
    wait_for_more(200).await;

    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    while let Some(f) = load.join_next().await {
        failures.extend(f.expect("load task"));
    }
    assert!(
        failures.is_empty(),
        "{} calls failed across the swap, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    drop(new);
}
