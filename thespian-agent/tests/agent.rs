//! Black-box tests of the `thespian-agent` binary: real processes on 127.0.0.1 (PORT=0, readiness from the
//! first stdout line), called with the generated tonic client; in-test gRPC servers stand in for a callee
//! that records what it received and for an OTLP collector.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::Value;
use thespian_agent::proto::Nothing;
use thespian_agent::proto::thespian_client::ThespianClient;
use thespian_agent::proto::thespian_server::{Thespian, ThespianServer};
use tokio::sync::{Semaphore, mpsc};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

// ---- agent processes ------------------------------------------------------------------------------

/// The lines so far, and whether stdout has closed.
type LogState = Mutex<(Vec<String>, bool)>;

/// Collected stdout lines of an agent, with a condition variable to wait for one.
#[derive(Clone, Default)]
struct Logs(Arc<(LogState, Condvar)>);

impl Logs {
    fn push(&self, line: String) {
        let (lock, cv) = &*self.0;
        lock.lock().expect("logs").0.push(line);
        cv.notify_all();
    }

    fn close(&self) {
        let (lock, cv) = &*self.0;
        lock.lock().expect("logs").1 = true;
        cv.notify_all();
    }

    /// Waits (up to `limit`) for a line matching `pred`; the agent writes it before answering, so this
    /// only waits for the reader thread.
    fn wait_for(&self, limit: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + limit;
        let mut guard = lock.lock().expect("logs");
        loop {
            if let Some(v) = guard
                .0
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| pred(v))
            {
                return Some(v);
            }
            let now = Instant::now();
            if guard.1 || now >= deadline {
                return None;
            }
            guard = cv.wait_timeout(guard, deadline - now).expect("logs").0;
        }
    }

    fn all(&self) -> Vec<Value> {
        let (lock, _) = &*self.0;
        lock.lock()
            .expect("logs")
            .0
            .iter()
            .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
            .collect()
    }
}

struct Agent {
    addr: SocketAddr,
    child: Child,
    logs: Logs,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn agent_command(service: &str, config: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thespian-agent"));
    cmd.env("SERVICE_NAME", service)
        .env("CONFIG_JSON", config)
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1");
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_BACKEND_ADDRESS",
        "THESPIAN_RESOLVE",
        "CONFIG_FILE",
        "RUST_LOG",
        "ECS_CONTAINER_METADATA_URI_V4",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Agent {
    fn spawn(service: &str, config: &str, env: &[(&str, &str)]) -> Agent {
        let mut child = agent_command(service, config, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start thespian-agent");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = match lines.next() {
            Some(Ok(line)) => line,
            _ => {
                let status = child.wait().expect("wait");
                panic!("{service} exited ({status}) before its first line");
            }
        };
        let first_json: Value =
            serde_json::from_str(&first).unwrap_or_else(|e| panic!("first line is not JSON ({e}): {first}"));
        let addr: SocketAddr = first_json["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("first line has no top-level address: {first}"));
        assert_eq!(first_json["service"], service, "{first}");
        assert_eq!(first_json["level"], "INFO", "{first}");
        let logs = Logs::default();
        logs.push(first);
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.push(line);
            }
            sink.close();
        });
        Agent {
            addr,
            child,
            logs,
            reader: Some(reader),
        }
    }

    fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self) -> ThespianClient<Channel> {
        ThespianClient::connect(self.uri())
            .await
            .expect("connect to agent")
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    fn sigterm(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// Waits for the exit (after a SIGTERM) and for the last log line.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "agent did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().expect("log reader");
        }
        status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (for the one test that must know a port before starting an agent).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .expect("hostname")
        .into_string()
        .expect("utf-8 hostname")
}

fn sleep_action(name: &str, ms: u64, failure_chance: f64) -> String {
    format!(r#"{{"Sleep":{{"tracing_name":"{name}","duration_ms":{ms},"failure_chance":{failure_chance}}}}}"#)
}

fn call_action(name: &str, host: &str, port: u16, method: &str, extra: &str) -> String {
    format!(
        r#"{{"CallService":{{"tracing_name":"{name}","service_address":"http://{host}","service_port":"{port}","grpc_method":"{method}"{extra}}}}}"#
    )
}

/// A method config `{"tracing_name": name, "operations": [{"Action": a}, ...]}`.
fn function(name: &str, actions: &[String]) -> String {
    let ops: Vec<String> = actions.iter().map(|a| format!(r#"{{"Action":{a}}}"#)).collect();
    format!(r#"{{"tracing_name":"{name}","operations":[{}]}}"#, ops.join(","))
}

fn config(a: Option<&str>, b: Option<&str>, c: Option<&str>) -> String {
    format!(
        r#"{{"grpc_method_a":{},"grpc_method_b":{},"grpc_method_c":{}}}"#,
        a.unwrap_or("null"),
        b.unwrap_or("null"),
        c.unwrap_or("null")
    )
}

fn header<'a>(md: &'a MetadataMap, key: &str) -> Option<&'a str> {
    md.get(key).and_then(|v| v.to_str().ok())
}

// ---- an in-test callee that records requests ------------------------------------------------------

/// A `thespian.Thespian` server that records each request's method and metadata and, when `hold` is
/// set, answers only after `release` adds a permit.
struct Recorder {
    seen: mpsc::UnboundedSender<(&'static str, MetadataMap)>,
    hold: Option<Arc<Semaphore>>,
}

impl Recorder {
    async fn answer(
        &self,
        method: &'static str,
        request: Request<Nothing>,
    ) -> Result<Response<Nothing>, Status> {
        let _ = self.seen.send((method, request.metadata().clone()));
        if let Some(hold) = &self.hold {
            hold.acquire()
                .await
                .map_err(|_| Status::unavailable("closed"))?
                .forget();
        }
        Ok(Response::new(Nothing {}))
    }
}

#[tonic::async_trait]
impl Thespian for Recorder {
    async fn a(&self, r: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.answer("A", r).await
    }
    async fn b(&self, r: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.answer("B", r).await
    }
    async fn c(&self, r: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        self.answer("C", r).await
    }
}

struct RecorderHandle {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<(&'static str, MetadataMap)>,
    release: Arc<Semaphore>,
}

async fn start_recorder(hold: bool) -> RecorderHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind recorder");
    let addr = listener.local_addr().expect("addr");
    let (tx, seen) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let recorder = Recorder {
        seen: tx,
        hold: hold.then(|| release.clone()),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ThespianServer::new(recorder))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    RecorderHandle { addr, seen, release }
}

async fn next_seen(r: &mut RecorderHandle) -> (&'static str, MetadataMap) {
    tokio::time::timeout(Duration::from_secs(10), r.seen.recv())
        .await
        .expect("the recorder got no request within 10 s")
        .expect("recorder channel open")
}

// ---- tests ----------------------------------------------------------------------------------------

#[tokio::test]
async fn null_methods_answer_ok_with_service_and_instance_metadata() {
    let agent = Agent::spawn("gilbert", &config(None, None, None), &[]);
    let mut client = agent.client().await;
    let instance = format!("{}:{}", hostname(), agent.child.id());
    for method in ["A", "B", "C"] {
        let response = match method {
            "A" => client.a(Nothing {}).await,
            "B" => client.b(Nothing {}).await,
            _ => client.c(Nothing {}).await,
        }
        .unwrap_or_else(|s| panic!("{method}: {s}"));
        assert_eq!(
            header(response.metadata(), "x-thespian-service"),
            Some("gilbert"),
            "{method}"
        );
        assert_eq!(
            header(response.metadata(), "x-thespian-instance"),
            Some(instance.as_str()),
            "{method}"
        );
    }
}

#[tokio::test]
async fn failure_chance_one_fails_naming_the_action_and_zero_never_fails() {
    let a = function(
        "do_a_barrel_roll",
        &[
            sleep_action("listen_to_peppy", 1, 0.0),
            sleep_action("press R", 1, 1.0),
        ],
    );
    let b = function("steady", &[sleep_action("hold course", 0, 0.0)]);
    let mut agent = Agent::spawn("starfox", &config(Some(&a), Some(&b), None), &[]);
    let mut client = agent.client().await;

    let status = client
        .a(Nothing {})
        .await
        .expect_err("failure_chance 1.0 always fails");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "`press R` failed (failure_chance 1)");
    assert_eq!(
        header(status.metadata(), "x-thespian-service"),
        Some("starfox"),
        "errors carry metadata too"
    );
    for _ in 0..50 {
        client
            .b(Nothing {})
            .await
            .expect("failure_chance 0.0 never fails");
    }

    // Logged once, where it happened, as a JSON line with the trace id and the span's name.
    let line = agent
        .logs
        .wait_for(Duration::from_secs(5), |v| v["level"] == "WARN")
        .expect("a WARN line for the failure");
    assert_eq!(line["service"], "starfox");
    assert_eq!(line["span"], "press R");
    assert_eq!(line["message"], "`press R` failed (failure_chance 1)");
    let trace_id = line["trace_id"].as_str().expect("trace_id");
    assert!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{trace_id}"
    );
    assert!(
        line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );

    agent.sigterm();
    // Off the test's runtime thread: the client's connection task must keep running to close cleanly.
    let (status, agent) =
        tokio::task::spawn_blocking(move || (agent.wait_exit(Duration::from_secs(10)), agent))
            .await
            .expect("join");
    assert!(status.success());
    let failures = agent
        .logs
        .all()
        .into_iter()
        .filter(|v| v["message"].as_str().is_some_and(|m| m.contains("press R")))
        .count();
    assert_eq!(failures, 1, "the failure is logged exactly once");
}

#[tokio::test]
async fn concurrent_actions_overlap_sequences_add_up_and_functions_nest() {
    let concurrent = format!(
        r#"{{"tracing_name":"all at once","operations":[{{"ConcurrentActions":[{},{},{}]}}]}}"#,
        sleep_action("one", 200, 0.0),
        sleep_action("two", 200, 0.0),
        sleep_action("three", 200, 0.0)
    );
    let inner = format!(
        r#"{{"Function":{}}}"#,
        function("inner", &[sleep_action("deep", 1, 1.0)])
    );
    let outer = format!(
        r#"{{"Function":{}}}"#,
        function("outer", &[sleep_action("shallow", 1, 0.0), inner])
    );
    let nested = function("nest", &[outer]);
    let sequence = function(
        "one after another",
        &[sleep_action("first", 100, 0.0), sleep_action("second", 100, 0.0)],
    );
    let agent = Agent::spawn(
        "timing",
        &config(Some(&concurrent), Some(&nested), Some(&sequence)),
        &[],
    );
    let mut client = agent.client().await;
    client.c(Nothing {}).await.expect("warm-up connection");

    let started = Instant::now();
    client.a(Nothing {}).await.expect("concurrent sleeps");
    let concurrent_time = started.elapsed();
    assert!(
        concurrent_time >= Duration::from_millis(200) && concurrent_time < Duration::from_millis(550),
        "three 200 ms sleeps in ConcurrentActions took {concurrent_time:?} (sequential would be 600 ms)"
    );

    let started = Instant::now();
    client.c(Nothing {}).await.expect("sequential sleeps");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "operations run one after another"
    );

    let status = client.b(Nothing {}).await.expect_err("the innermost sleep fails");
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("`deep` failed"), "{status:?}");
}

#[tokio::test]
async fn calls_carry_the_trace_the_deadline_and_the_hop_count() {
    let mut recorder = start_recorder(false).await;
    let resolve = format!("recorder:80={}", recorder.addr);
    let a = function(
        "engage",
        &[call_action("interface with starfox", "recorder", 80, "B", "")],
    );
    let yorick = Agent::spawn(
        "yorick",
        &config(Some(&a), None, None),
        &[("THESPIAN_RESOLVE", &resolve)],
    );
    let mut client = yorick.client().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = Request::new(Nothing {});
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .expect("ascii"),
    );
    request
        .metadata_mut()
        .insert("x-thespian-hops", "3".parse().expect("ascii"));
    request.set_timeout(Duration::from_secs(5));
    client.a(request).await.expect("call through yorick");

    let (method, md) = next_seen(&mut recorder).await;
    assert_eq!(method, "B");
    let traceparent = header(&md, "traceparent").expect("traceparent sent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace_id, "01"),
        "same trace, still sampled"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the parent is yorick's call span, not the caller's span"
    );
    assert_eq!(header(&md, "x-thespian-hops"), Some("4"));
    let timeout = header(&md, "grpc-timeout").expect("the caller's deadline is passed on");
    let (digits, unit) = timeout.split_at(timeout.len() - 1);
    let nanos: u64 = digits.parse::<u64>().expect("digits")
        * match unit {
            "S" => 1_000_000_000,
            "m" => 1_000_000,
            "u" => 1_000,
            "n" => 1,
            other => panic!("unit {other}"),
        };
    assert!(
        nanos > 0 && nanos <= 5_000_000_000,
        "grpc-timeout {timeout} is within the caller's 5 s"
    );

    // Without an incoming trace, yorick starts one and still propagates it.
    client.a(Nothing {}).await.expect("call without traceparent");
    let (_, md) = next_seen(&mut recorder).await;
    let traceparent = header(&md, "traceparent").expect("traceparent sent");
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    assert!(!traceparent.contains(trace_id));
    assert_eq!(header(&md, "x-thespian-hops"), Some("1"));
}

#[tokio::test]
async fn gilbert_sees_the_trace_id_of_yoricks_request() {
    let gilbert = Agent::spawn(
        "gilbert",
        &config(
            Some(&function("be called", &[sleep_action("think", 1, 0.0)])),
            None,
            None,
        ),
        &[("RUST_LOG", "debug")],
    );
    let resolve = format!("gilbert:80={}", gilbert.addr);
    let a = function(
        "engage fun subroutine",
        &[call_action("interface with gilbert", "gilbert", 80, "A", "")],
    );
    let yorick = Agent::spawn(
        "yorick",
        &config(Some(&a), None, None),
        &[("THESPIAN_RESOLVE", &resolve), ("RUST_LOG", "debug")],
    );
    yorick
        .client()
        .await
        .a(Nothing {})
        .await
        .expect("yorick -> gilbert");

    let answered = |v: &Value| v["message"] == "answered OK";
    let at_yorick = yorick
        .logs
        .wait_for(Duration::from_secs(5), answered)
        .expect("yorick's debug line");
    let at_gilbert = gilbert
        .logs
        .wait_for(Duration::from_secs(5), answered)
        .expect("gilbert's debug line");
    assert_eq!(at_yorick["span"], "engage fun subroutine");
    assert_eq!(at_gilbert["span"], "be called");
    assert!(at_yorick["trace_id"].is_string());
    assert_eq!(
        at_gilbert["trace_id"], at_yorick["trace_id"],
        "one trace across the hop"
    );
}

#[tokio::test]
async fn calls_time_out_and_retries_move_on_to_the_next_endpoint() {
    let slow = Agent::spawn(
        "slow",
        &config(
            Some(&function("ponder", &[sleep_action("long thought", 2000, 0.0)])),
            None,
            None,
        ),
        &[],
    );
    let fast = Agent::spawn("fast", &config(None, None, None), &[]);
    let dead = free_port();

    let impatient = function(
        "impatient",
        &[call_action("ask slow", "slow", 80, "A", r#","timeout_ms":200"#)],
    );
    let with_retry = function(
        "persistent",
        &[call_action(
            "ask twice",
            "pool",
            80,
            "A",
            r#","retries":1,"timeout_ms":5000"#,
        )],
    );
    let no_retry = function(
        "hasty",
        &[call_action("ask once", "pool", 80, "A", r#","timeout_ms":5000"#)],
    );
    let resolve = format!("slow:80={};pool:80=127.0.0.1:{dead},{}", slow.addr, fast.addr);
    let yorick = Agent::spawn(
        "yorick",
        &config(Some(&impatient), Some(&with_retry), Some(&no_retry)),
        &[("THESPIAN_RESOLVE", &resolve)],
    );
    let mut client = yorick.client().await;

    let started = Instant::now();
    let status = client.a(Nothing {}).await.expect_err("times out");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "gave up after the timeout, not the 2 s sleep"
    );
    assert_eq!(status.code(), Code::Internal);
    assert!(
        status
            .message()
            .starts_with("`ask slow` timed out after 200 ms calling http://slow:80"),
        "{status:?}"
    );

    // Round-robin over [dead, fast]: without retries every other call hits the dead endpoint...
    let mut failures = Vec::new();
    for _ in 0..10 {
        if let Err(s) = client.c(Nothing {}).await {
            failures.push(s);
        }
    }
    assert_eq!(failures.len(), 5, "{failures:?}");
    assert!(
        failures[0].message().contains(&format!("127.0.0.1:{dead}")),
        "{:?}",
        failures[0]
    );
    // ... with one retry the second attempt goes to the live endpoint.
    for _ in 0..10 {
        client
            .b(Nothing {})
            .await
            .expect("a retry reaches the live endpoint");
    }
}

#[tokio::test]
async fn a_two_agent_cycle_is_stopped_by_the_hop_limit() {
    let pong_port = free_port();
    let ping_config = config(
        Some(&function("ping", &[call_action("to pong", "pong", 80, "A", "")])),
        None,
        None,
    );
    let ping = Agent::spawn(
        "ping",
        &ping_config,
        &[("THESPIAN_RESOLVE", &format!("pong:80=127.0.0.1:{pong_port}"))],
    );
    let pong_config = config(
        Some(&function("pong", &[call_action("to ping", "ping", 80, "A", "")])),
        None,
        None,
    );
    let pong_port_text = pong_port.to_string();
    let pong = Agent::spawn(
        "pong",
        &pong_config,
        &[
            ("PORT", &pong_port_text),
            ("THESPIAN_RESOLVE", &format!("ping:80={}", ping.addr)),
        ],
    );

    let mut request = Request::new(Nothing {});
    request.set_timeout(Duration::from_secs(20));
    let status = ping
        .client()
        .await
        .a(request)
        .await
        .expect_err("the cycle ends in a refusal");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("travelled 17 hops"), "{status:?}");
    assert!(status.message().contains("a call cycle is likely"), "{status:?}");
    // Hops 0, 2, 4, ... reach ping; the odd 17th reaches pong, which refuses and says so once.
    let refused = pong
        .logs
        .wait_for(Duration::from_secs(5), |v| v["level"] == "WARN")
        .expect("pong warns");
    assert_eq!(refused["hops"], 17);
    assert!(
        refused["trace_id"].is_string(),
        "the refusal names the trace: {refused}"
    );
}

#[tokio::test]
async fn health_and_reflection_work_without_a_proto_file() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Request;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Response;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as V1AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as V1AlphaResponse;

    let agent = Agent::spawn("gilbert", &config(None, None, None), &[]);
    let channel = Channel::from_shared(agent.uri())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "thespian.Thespian"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("check");
        assert_eq!(
            answer.into_inner().status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);

    // Each reflection version lists itself; both are served (v1alpha is asked below).
    let expected = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "thespian.Thespian",
    ];

    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1Request::ListServices(String::new())),
    };
    let mut stream = V1::new(channel.clone())
        .server_reflection_info(tokio_stream_once(request))
        .await
        .expect("v1 reflection")
        .into_inner();
    let Some(V1Response::ListServicesResponse(list)) = stream
        .message()
        .await
        .expect("v1 answer")
        .and_then(|m| m.message_response)
    else {
        panic!("v1: no service list")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, expected);

    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1AlphaRequest::FileContainingSymbol("thespian.Thespian".into())),
    };
    let mut stream = V1Alpha::new(channel)
        .server_reflection_info(tokio_stream_once(request))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let Some(V1AlphaResponse::FileDescriptorResponse(files)) = stream
        .message()
        .await
        .expect("v1alpha answer")
        .and_then(|m| m.message_response)
    else {
        panic!("v1alpha: no file descriptor")
    };
    let file: prost_types_shim::FileDescriptorProto =
        prost::Message::decode(files.file_descriptor_proto[0].as_slice()).expect("descriptor");
    assert_eq!(file.package.as_deref(), Some("thespian"));
    let methods: Vec<String> = file.service[0]
        .method
        .iter()
        .filter_map(|m| m.name.clone())
        .collect();
    assert_eq!(methods, ["A", "B", "C"]);
}

/// A one-message request stream.
fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::iter([item])
}

/// Just enough of `google.protobuf.FileDescriptorProto` to read the package and the method names.
mod prost_types_shim {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorProto {
        #[prost(string, optional, tag = "2")]
        pub package: Option<String>,
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<ServiceDescriptorProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServiceDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<MethodDescriptorProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MethodDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
    }
}

#[tokio::test]
async fn sigterm_drains_the_request_in_flight_then_exits_zero() {
    let mut recorder = start_recorder(true).await;
    let a = function(
        "wait for the callee",
        &[call_action("slow callee", "callee", 80, "A", "")],
    );
    let mut agent = Agent::spawn(
        "drainer",
        &config(Some(&a), None, None),
        &[("THESPIAN_RESOLVE", &format!("callee:80={}", recorder.addr))],
    );

    let health_channel = Channel::from_shared(agent.uri())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut watch = HealthClient::new(health_channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("watch message")
        .expect("a first status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let mut client = agent.client().await;
    let in_flight = tokio::spawn(async move { client.a(Nothing {}).await });
    next_seen(&mut recorder).await; // the agent's request is now waiting on the callee

    agent.sigterm();
    let update = watch
        .message()
        .await
        .expect("watch message")
        .expect("a status update");
    assert_eq!(
        update.status,
        ServingStatus::NotServing as i32,
        "health flips when draining"
    );
    assert!(
        watch.message().await.expect("watch").is_none(),
        "the watch stream ends so it cannot hold the drain"
    );

    // New connections are refused (the listener closes right after the health flip).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(agent.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting connections 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "still draining the request in flight"
    );

    recorder.release.add_permits(1);
    in_flight
        .await
        .expect("task")
        .expect("the in-flight request still succeeds");
    let status = tokio::task::spawn_blocking(move || {
        let status = agent.wait_exit(Duration::from_secs(10));
        (status, agent)
    })
    .await
    .expect("join");
    assert_eq!(status.0.code(), Some(0));
    assert!(
        status
            .1
            .logs
            .all()
            .iter()
            .any(|v| v["message"] == "drained: every in-flight request finished")
    );
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let mut recorder = start_recorder(true).await;
    let a = function(
        "wait forever",
        &[call_action("stuck callee", "callee", 80, "A", "")],
    );
    let mut agent = Agent::spawn(
        "stuck",
        &config(Some(&a), None, None),
        &[
            ("THESPIAN_RESOLVE", &format!("callee:80={}", recorder.addr)),
            ("SHUTDOWN_GRACE_MS", "300"),
        ],
    );
    let mut client = agent.client().await;
    let in_flight = tokio::spawn(async move { client.a(Nothing {}).await });
    next_seen(&mut recorder).await;
    let signalled = Instant::now();
    agent.sigterm();
    let (status, agent) =
        tokio::task::spawn_blocking(move || (agent.wait_exit(Duration::from_secs(10)), agent))
            .await
            .expect("join");
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() >= Duration::from_millis(300),
        "waited for the grace period"
    );
    assert!(
        in_flight.await.expect("task").is_err(),
        "the abandoned request fails"
    );
    assert!(agent.logs.all().iter().any(|v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("SHUTDOWN_GRACE_MS ran out"))
    }));
}

#[test]
fn bad_input_exits_2_with_one_message_naming_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let commented = dir.path().join("bad.jsonc");
    std::fs::write(
        &commented,
        "// gilbert, see http://example\n{\n  \"grpc_method_a\": {\n    \"tracing_name\": \"a\", // the name\n    \"operations\": [\n      {\"Action\": {\"Sleep\": {\"tracing_name\": \"x\", \"duration_ms\": 1}}},\n      {\"Action\": {\"Sleep\": {\"tracing_name\": \"y\",\n        \"duration_ms\": \"ten\"}}}\n    ]\n  }\n}\n",
    )
    .expect("write");
    let commented = commented.to_str().expect("utf-8 path");
    let missing = dir.path().join("missing.json");
    let missing = missing.to_str().expect("utf-8 path");
    let good = "{}";
    let sleep = |extra: &str| {
        config(
            Some(&format!(
                r#"{{"tracing_name":"f","operations":[{{"Action":{{"Sleep":{{"tracing_name":"s","duration_ms":1{extra}}}}}}}]}}"#
            )),
            None,
            None,
        )
    };
    let call = |method: &str| {
        config(
            None,
            Some(&function("f", &[call_action("c", "g", 80, method, "")])),
            None,
        )
    };
    let bad_chance = sleep(r#","failure_chance":1.5"#);
    let unknown_key = sleep(r#","colour":"red""#);
    let bad_method = call("D");

    // (case, env overrides ("" removes the variable), expected text in the one stderr line)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        ("no service name", vec![("SERVICE_NAME", "")], "SERVICE_NAME is not set".into()),
        ("port not a number", vec![("PORT", "eighty")], "PORT: \"eighty\" is not a port number".into()),
        ("port too big", vec![("PORT", "65536")], "PORT: \"65536\"".into()),
        ("bind address", vec![("BIND_ADDR", "localhost")], "BIND_ADDR: \"localhost\" is not an IP address".into()),
        ("no config", vec![("CONFIG_JSON", "")], "neither CONFIG_JSON nor CONFIG_FILE is set".into()),
        ("two configs", vec![("CONFIG_FILE", missing)], "both CONFIG_JSON and CONFIG_FILE are set".into()),
        ("json syntax", vec![("CONFIG_JSON", "{\"grpc_method_a\": ")], "CONFIG_JSON: grpc_method_a: EOF while parsing a value at line 1 column 18".into()),
        ("failure chance", vec![("CONFIG_JSON", &bad_chance)], "CONFIG_JSON: grpc_method_a.operations[0].Action.Sleep.failure_chance: failure_chance must be a probability between 0 and 1, got 1.5 at line 1 column".into()),
        ("unknown key", vec![("CONFIG_JSON", &unknown_key)], "CONFIG_JSON: grpc_method_a.operations[0].Action.Sleep.colour: unknown field `colour`".into()),
        ("unknown grpc_method", vec![("CONFIG_JSON", &bad_method)], "CONFIG_JSON: grpc_method_b.operations[0].Action.CallService.grpc_method: unknown variant `D`, expected one of `A`, `B`, `C`".into()),
        ("config file missing", vec![("CONFIG_JSON", ""), ("CONFIG_FILE", missing)], format!("CONFIG_FILE: cannot read {missing}")),
        ("config file with comments", vec![("CONFIG_JSON", ""), ("CONFIG_FILE", commented)], format!("CONFIG_FILE {commented}: grpc_method_a.operations[1].Action.Sleep.duration_ms: invalid type: string \"ten\", expected an integer at line 8 column 28")),
        ("resolve", vec![("THESPIAN_RESOLVE", "gilbert:80")], "THESPIAN_RESOLVE: entry \"gilbert:80\": expected NAME:PORT=HOST:PORT".into()),
        ("resolve port", vec![("THESPIAN_RESOLVE", "gilbert:80=127.0.0.1:x")], "THESPIAN_RESOLVE: entry \"gilbert:80=127.0.0.1:x\": endpoint \"127.0.0.1:x\": port \"x\"".into()),
        ("grace", vec![("SHUTDOWN_GRACE_MS", "soon")], "SHUTDOWN_GRACE_MS: \"soon\"".into()),
        ("log filter", vec![("RUST_LOG", "debug,h2=nope")], "RUST_LOG: \"debug,h2=nope\" is not a valid filter".into()),
        ("otlp endpoint", vec![("OTEL_BACKEND_ADDRESS", "tempo:4317")], "OTEL_BACKEND_ADDRESS: cannot export traces to \"tempo:4317\"".into()),
    ];
    for (case, overrides, expected) in cases {
        let mut cmd = agent_command("gilbert", good, &[]);
        for (k, v) in overrides {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let out = cmd.output().expect("run agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{case}: one message, got {stderr}");
        assert!(lines[0].starts_with("error: "), "{case}: {stderr}");
        assert!(
            lines[0].contains(&expected),
            "{case}: expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{case}");
    }
}

#[test]
fn a_port_in_use_is_a_clear_error_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = agent_command("gilbert", "{}", &[("PORT", &port.to_string())])
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("another process holds that port"), "{stderr}");
}

#[tokio::test]
async fn a_config_file_with_comments_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gilbert.jsonc");
    std::fs::write(
        &path,
        "// gilbert answers A after a short think\n{\n  \"service_name\": \"ignored\", // SERVICE_NAME wins\n  \"grpc_method_a\": {\"tracing_name\": \"see http://gilbert\", \"operations\": [\n    /* one step */ {\"Action\": {\"Sleep\": {\"tracing_name\": \"think\", \"duration_ms\": 1}}}\n  ]},\n  \"grpc_method_b\": null, \"grpc_method_c\": null\n}\n",
    )
    .expect("write");
    let agent = Agent::spawn("gilbert", "", &[("CONFIG_FILE", path.to_str().expect("path"))]);
    // CONFIG_JSON is set to "" by the helper; remove it by giving the file alone.
    let response = agent.client().await.a(Nothing {}).await.expect("A");
    assert_eq!(header(response.metadata(), "x-thespian-service"), Some("gilbert"));
}

#[tokio::test]
async fn the_ecs_task_id_is_the_instance_id() {
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("addr").port();
    let requested = Arc::new(Mutex::new(String::new()));
    let seen = requested.clone();
    let metadata = std::thread::spawn(move || {
        let (mut stream, _) = server.accept().expect("accept");
        let mut buf = [0u8; 2048];
        let n = stream.read(&mut buf).expect("read");
        *seen.lock().expect("seen") = String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let body = r#"{"Cluster":"thespians","TaskARN":"arn:aws:ecs:eu-west-1:123456789012:task/thespians/0123456789abcdef0123456789abcdef"}"#;
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    });
    let uri = format!("http://127.0.0.1:{port}/v4/0123456789abcdef0123456789abcdef-3822082590");
    let agent = Agent::spawn("gilbert", "{}", &[("ECS_CONTAINER_METADATA_URI_V4", &uri)]);
    metadata.join().expect("metadata server");
    assert_eq!(
        *requested.lock().expect("seen"),
        "GET /v4/0123456789abcdef0123456789abcdef-3822082590/task HTTP/1.1"
    );
    let response = agent.client().await.a(Nothing {}).await.expect("A");
    assert_eq!(
        header(response.metadata(), "x-thespian-instance"),
        Some("0123456789abcdef0123456789abcdef")
    );
}

// ---- OTLP export ----------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Collector {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.requests.lock().expect("requests").push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An exported span, flattened: (service.name, span name, trace id, span id, parent span id, kind).
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    kind: i32,
}

impl Collector {
    fn spans(&self) -> Vec<Exported> {
        let mut out = Vec::new();
        for request in self.requests.lock().expect("requests").iter() {
            for rs in &request.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                            Some(s.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(Exported {
                            service: service.clone(),
                            name: s.name.clone(),
                            trace_id: s.trace_id.clone(),
                            span_id: s.span_id.clone(),
                            parent: s.parent_span_id.clone(),
                            kind: s.kind,
                        });
                    }
                }
            }
        }
        out
    }
}

#[tokio::test]
async fn spans_are_exported_over_otlp_named_by_their_tracing_name() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let collector = Collector::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let gilbert_a = format!(
        r#"{{"tracing_name":"do_a_barrel_roll","operations":[{{"Action":{}}},{{"ConcurrentActions":[{},{{"Function":{}}}]}}]}}"#,
        sleep_action("listen_to_peppy", 1, 0.0),
        sleep_action("press L", 1, 0.0),
        function("unplug controller", &[sleep_action("yank", 1, 0.0)])
    );
    let mut gilbert = Agent::spawn(
        "gilbert",
        &config(Some(&gilbert_a), None, None),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let yorick_a = function(
        "engage fun subroutine",
        &[call_action("interface with starfox", "gilbert", 80, "A", "")],
    );
    let mut yorick = Agent::spawn(
        "yorick",
        &config(Some(&yorick_a), None, None),
        &[
            ("OTEL_BACKEND_ADDRESS", &endpoint),
            ("THESPIAN_RESOLVE", &format!("gilbert:80={}", gilbert.addr)),
        ],
    );
    yorick
        .client()
        .await
        .a(Nothing {})
        .await
        .expect("yorick -> gilbert");

    // Shutdown flushes the batch: no waiting on the export interval.
    yorick.sigterm();
    gilbert.sigterm();
    let (y, g) = tokio::task::spawn_blocking(move || {
        (
            yorick.wait_exit(Duration::from_secs(15)),
            gilbert.wait_exit(Duration::from_secs(15)),
        )
    })
    .await
    .expect("join");
    assert!(y.success() && g.success());

    let spans = collector.spans();
    let by_name: HashMap<&str, &Exported> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    for name in [
        "engage fun subroutine",
        "interface with starfox",
        "do_a_barrel_roll",
        "listen_to_peppy",
        "press L",
        "unplug controller",
        "yank",
    ] {
        assert!(by_name.contains_key(name), "no span named {name:?} in {spans:#?}");
    }
    let trace = &by_name["engage fun subroutine"].trace_id;
    assert!(
        spans.iter().all(|s| &s.trace_id == trace),
        "one trace across both agents: {spans:#?}"
    );
    assert_eq!(by_name["engage fun subroutine"].service, "yorick");
    assert_eq!(by_name["do_a_barrel_roll"].service, "gilbert");
    assert_eq!(
        by_name["interface with starfox"].parent,
        by_name["engage fun subroutine"].span_id
    );
    assert_eq!(
        by_name["do_a_barrel_roll"].parent,
        by_name["interface with starfox"].span_id
    );
    assert_eq!(by_name["yank"].parent, by_name["unplug controller"].span_id);
    assert_eq!(by_name["press L"].parent, by_name["do_a_barrel_roll"].span_id);
    // SpanKind: 2 = server, 3 = client.
    assert_eq!(
        (
            by_name["do_a_barrel_roll"].kind,
            by_name["interface with starfox"].kind
        ),
        (2, 3)
    );
}

#[tokio::test]
async fn a_down_collector_never_blocks_requests() {
    let dead = free_port();
    let a = function("work", &[sleep_action("step", 0, 0.0)]);
    let mut agent = Agent::spawn(
        "gilbert",
        &config(Some(&a), None, None),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://127.0.0.1:{dead}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ],
    );
    let mut client = agent.client().await;
    let started = Instant::now();
    for _ in 0..200 {
        client
            .a(Nothing {})
            .await
            .expect("answers while the collector is down");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    agent.sigterm();
    let status = tokio::task::spawn_blocking(move || agent.wait_exit(Duration::from_secs(10)))
        .await
        .expect("join");
    assert!(status.success());
}

// ---- an independent client ------------------------------------------------------------------------

#[test]
fn python_grpcio_speaks_to_the_agent() {
    let venv = std::env::var("THESPCTL_TEST_VENV").expect(
        "THESPCTL_TEST_VENV is not set: run the suite with scripts/test, which makes the Python venv with grpcio",
    );
    let python = std::path::Path::new(&venv).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test to create the venv",
        python.display()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop.py");
    let b = function("stumble", &[sleep_action("trip over the cable", 1, 1.0)]);
    let c = function("walk", &[sleep_action("step", 1, 0.0)]);
    let agent = Agent::spawn("gilbert", &config(None, Some(&b), Some(&c)), &[]);

    let out = Command::new(&python)
        .arg(script)
        .arg(agent.addr.to_string())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "interop.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("interop.py prints JSON");
    let instance = format!("{}:{}", hostname(), agent.child.id());
    for method in ["A", "C"] {
        assert_eq!(result["methods"][method]["code"], "OK", "{result}");
        assert_eq!(result["methods"][method]["response_bytes"], 0);
        assert_eq!(result["methods"][method]["service"], "gilbert");
        assert_eq!(result["methods"][method]["instance"], instance.as_str());
    }
    assert_eq!(result["methods"]["B"]["code"], "INTERNAL");
    assert_eq!(
        result["methods"]["B"]["details"],
        "`trip over the cable` failed (failure_chance 1)"
    );
    assert_eq!(result["health"][""], "SERVING");
    assert_eq!(result["health"]["thespian.Thespian"], "SERVING");
    for version in ["v1", "v1alpha"] {
        let services = &result["reflection"][version]["services"];
        assert!(
            services
                .as_array()
                .is_some_and(|s| s.iter().any(|n| n == "thespian.Thespian")),
            "{version}: {result}"
        );
        assert!(
            services
                .as_array()
                .is_some_and(|s| s.iter().any(|n| n == "grpc.health.v1.Health")),
            "{version}: {result}"
        );
        assert_eq!(
            result["reflection"][version]["thespian_methods"],
            serde_json::json!(["A", "B", "C"]),
            "{version}"
        );
    }
}
