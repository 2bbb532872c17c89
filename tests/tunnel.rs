//! `thespctl tunnel` against the SSM double (`tests/ssm_double/`, written from the protocol note) and the
//! ECS resolution against moto. The library API (`open_with`) is used where a test steers faults; the
//! binary where the user-facing behaviour is the point (Ctrl-C, `--plugin`, errors, output).

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

mod ssm_double;
mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use ssm_double::{Config, Echo, SsmDouble};
use support::KillOnDrop;
use thespctl::target::aws::tunnel::{self, Options, SessionEvent, Tunnel, TunnelError, TunnelTarget};

const SECRET: &str = "double-secret-key";
const MIB: usize = 1 << 20;

/// The AWS configuration a test client uses: fixed credentials, everything sent to `endpoint`.
async fn sdk_with(endpoint: &str, key: &str, secret: &str, token: Option<&str>) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            key,
            secret,
            token.map(str::to_string),
            None,
            "tests",
        )))
        .load()
        .await
}

async fn sdk(endpoint: &str) -> SdkConfig {
    sdk_with(endpoint, "AKIDTHESPCTLTEST", SECRET, Some("session-token")).await
}

/// The double with an echo target, configured by `f`.
async fn double_with(f: impl FnOnce(&mut Config)) -> (SsmDouble, Echo) {
    let echo = Echo::start().await;
    let mut config = Config::new(echo.addr);
    config.secret_key = Some(SECRET.into());
    f(&mut config);
    (SsmDouble::start(config).await, echo)
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn quick() -> Options {
    Options {
        ping_interval: Duration::from_millis(500),
        dead_after: Duration::from_secs(5),
        ..Options::default()
    }
}

async fn open(double: &SsmDouble, opts: Options) -> Tunnel {
    tunnel::open_with(
        &sdk(&double.api_url).await,
        TunnelTarget::new("i-0123456789abcdef0", 80, None),
        loopback(),
        CancellationToken::new(),
        opts,
    )
    .await
    .expect("open tunnel")
}

/// Deterministic bytes that differ per connection, so crossed streams are caught.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Sends `len` bytes through the tunnel and checks the echo byte for byte. `read_delay` makes a slow reader.
async fn echo_through(addr: SocketAddr, seed: u64, len: usize, read_delay: Option<Duration>) {
    let data = pattern(seed, len);
    let stream = TcpStream::connect(addr).await.expect("connect to the tunnel");
    let (mut rd, mut wr) = stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(16 * 1024) {
            wr.write_all(chunk).await.expect("write to the tunnel");
        }
        wr
    });
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; 8 * 1024];
    while got.len() < len {
        let n = tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf))
            .await
            .expect("echo stalled for 60 s")
            .expect("read from the tunnel");
        assert!(
            n > 0,
            "connection {seed} ended after {} of {len} bytes",
            got.len()
        );
        got.extend_from_slice(&buf[..n]);
        if let Some(d) = read_delay {
            tokio::time::sleep(d).await;
        }
    }
    assert_eq!(got.len(), len);
    assert!(got == data, "connection {seed}: echoed bytes differ");
    let mut wr = writer.await.unwrap();
    wr.shutdown().await.unwrap();
    // After our FIN the echo target closes its side: the stream ends cleanly, nothing extra arrives.
    let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "connection {seed}: unexpected bytes after the echo");
}

fn assert_clean(double: &SsmDouble) {
    let r = double.records();
    assert!(
        r.violations.is_empty(),
        "protocol violations: {:#?}",
        r.violations
    );
    assert!(
        r.signature_errors.is_empty(),
        "bad upgrade signatures: {:#?}",
        r.signature_errors
    );
}

#[tokio::test]
async fn handshake_signed_upgrade_and_an_echo() {
    let (double, _echo) = double_with(|_| {}).await;
    let tunnel = open(&double, quick()).await;
    let d = tunnel.description().clone();
    assert_eq!(d.mode, "mux");
    assert_eq!(d.agent_version, "3.3.1142.0");
    assert_eq!(d.local_address.ip().to_string(), "127.0.0.1");
    echo_through(tunnel.local_addr(), 1, 64 * 1024, None).await;

    let r = double.records();
    let (op, start) = &r.api_calls[0];
    assert_eq!(op, "StartSession");
    assert_eq!(start["Target"], "i-0123456789abcdef0");
    assert_eq!(start["DocumentName"], "AWS-StartPortForwardingSession");
    assert_eq!(start["Parameters"]["portNumber"][0], "80");
    assert_eq!(
        start["Parameters"]["localPortNumber"][0],
        d.local_port.to_string()
    );
    let (_, headers) = &r.upgrades[0];
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.contains("/ssmmessages/aws4_request")),
        "the upgrade is signed for ssmmessages: {headers:?}"
    );
    assert_eq!(r.opens[0]["ClientVersion"], "1.2.764.0");
    let response = &r.handshake_responses[0];
    assert_eq!(response["ClientVersion"], "1.2.764.0");
    assert_eq!(response["ProcessedClientActions"][0]["ActionType"], "SessionType");
    assert_eq!(response["ProcessedClientActions"][0]["ActionStatus"], 1);
    assert_eq!(r.streams, vec![3], "the first smux stream is 3");
    assert_clean(&double);
    tunnel.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_connections_each_echo_a_mebibyte() {
    let (double, echo) = double_with(|_| {}).await;
    let tunnel = open(&double, quick()).await;
    let addr = tunnel.local_addr();
    let tasks: Vec<_> = (0..20)
        .map(|i| tokio::spawn(echo_through(addr, 100 + i, MIB, None)))
        .collect();
    for t in tasks {
        t.await.expect("connection task");
    }
    let r = double.records();
    let mut streams = r.streams.clone();
    streams.sort();
    assert_eq!(
        streams,
        (0..20).map(|i| 3 + 2 * i).collect::<Vec<u32>>(),
        "odd stream ids from 3"
    );
    assert!(
        r.max_open_streams > 1,
        "connections shared the session at the same time"
    );
    assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 20);
    assert_clean(&double);
    tunnel.close().await;
}

#[tokio::test]
async fn reordered_and_duplicated_agent_messages_arrive_in_order() {
    let (double, _echo) = double_with(|_| {}).await;
    let tunnel = open(&double, quick()).await;
    double
        .controls()
        .reorder
        .store(true, std::sync::atomic::Ordering::SeqCst);
    double
        .controls()
        .duplicate
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let addr = tunnel.local_addr();
    let tasks: Vec<_> = (0..4)
        .map(|i| tokio::spawn(echo_through(addr, 200 + i, 256 * 1024, None)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let r = double.records();
    assert!(
        r.agent_reordered > 10,
        "the double reordered messages: {}",
        r.agent_reordered
    );
    assert!(
        r.agent_duplicated > 10,
        "the double duplicated messages: {}",
        r.agent_duplicated
    );
    assert!(
        r.client_reacks >= r.agent_duplicated,
        "every duplicate was acked again ({} re-acks for {} duplicates)",
        r.client_reacks,
        r.agent_duplicated
    );
    assert_clean(&double);
    tunnel.close().await;
}

#[tokio::test]
async fn a_lost_ack_is_repaired_by_retransmission() {
    let (double, _echo) = double_with(|_| {}).await;
    let tunnel = open(&double, quick()).await;
    // Client seq 0 is the HandshakeResponse; seq 5 is application data of the transfer below.
    double.drop_ack_of(5);
    echo_through(tunnel.local_addr(), 300, 64 * 1024, None).await;
    double
        .wait_for("the retransmitted seq 5", Duration::from_secs(10), |r| {
            r.client_duplicates.contains(&5)
        })
        .await;
    let r = double.records();
    assert_eq!(r.acks_dropped, vec![5]);
    assert_clean(&double);
    tunnel.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_dropped_mid_transfer_is_resumed_without_losing_connections() {
    let (double, _echo) = double_with(|c| c.resend_interval = Duration::from_millis(10)).await;
    let tunnel = open(&double, quick()).await;
    let addr = tunnel.local_addr();
    let tasks: Vec<_> = (0..4)
        .map(|i| tokio::spawn(echo_through(addr, 400 + i, MIB, None)))
        .collect();
    // Mid-transfer: once the agent has sent a quarter of the echoes back.
    let controls = double.controls();
    while controls.output_bytes.load(std::sync::atomic::Ordering::SeqCst) < MIB {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    double.drop_connections();
    for t in tasks {
        t.await.expect("a connection was lost across the resume");
    }
    let r = double.records();
    assert!(
        r.api_calls.iter().any(|(op, _)| op == "ResumeSession"),
        "ResumeSession was called: {:?}",
        r.api_calls.iter().map(|(op, _)| op).collect::<Vec<_>>()
    );
    assert!(r.opens.len() >= 2, "a second open-data-channel message");
    assert_ne!(
        r.opens[0]["TokenValue"], r.opens[1]["TokenValue"],
        "the new token was used"
    );
    assert_eq!(
        r.opens[0]["ClientId"], r.opens[1]["ClientId"],
        "same client id across reconnects"
    );
    assert_eq!(
        r.streams.len(),
        4,
        "no stream was reopened: the smux session survived"
    );
    let mut events = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(50), tunnel.next_event()).await {
        events.push(e);
    }
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SessionEvent::Reconnected { .. })),
        "{events:?}"
    );
    assert_clean(&double);
    tunnel.close().await;
}

#[tokio::test]
async fn the_routine_close_1000_is_resumed() {
    let (double, _echo) = double_with(|_| {}).await;
    let tunnel = open(&double, quick()).await;
    // An open connection across the close carries on.
    let stream = TcpStream::connect(tunnel.local_addr()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    rd.read_exact(&mut buf).await.unwrap();
    double.close_connections(1000, "Bye");
    loop {
        match tunnel.next_event().await {
            Some(SessionEvent::Reconnected { .. }) => break,
            Some(_) => continue,
            None => panic!("the session ended instead of resuming"),
        }
    }
    wr.write_all(b"after!").await.unwrap();
    rd.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    echo_through(tunnel.local_addr(), 500, 32 * 1024, None).await;
    assert_clean(&double);
    tunnel.close().await;
}

#[tokio::test]
async fn a_slow_local_reader_gets_backpressure_not_truncation() {
    // A fast agent resend tick so that the refused backlog drains quickly once the reader is back.
    let (double, _echo) = double_with(|c| c.resend_interval = Duration::from_millis(1)).await;
    // A small receive buffer so the stalled reader below makes the client refuse (leave unacked).
    let opts = Options {
        receive_buffer: 8 * 1024,
        ..quick()
    };
    let tunnel = open(&double, opts).await;
    // More than the kernel buffers of the local connection absorb (loopback send buffers autotune
    // up to tcp_wmem's 4 MiB) plus our own bounded queues, so the session itself must push back.
    let len = 6 * MIB;
    let data = pattern(600, len);
    // The local application: a small socket receive buffer, and it does not read at first.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(tunnel.local_addr()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr
    });
    // Stalled until the client had to leave agent messages unacked (bounded wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tunnel.stats().refused == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backpressure: {:?}",
            tunnel.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(60), rd.read_exact(&mut got))
        .await
        .expect("echo stalled")
        .unwrap();
    assert!(got == data, "echoed bytes differ");
    drop(writer.await.unwrap());
    let stats = tunnel.stats();
    assert!(stats.refused > 0, "{stats:?}");
    let r = double.records();
    assert!(
        r.agent_retransmits > 0,
        "the agent retransmitted what the full client refused"
    );
    assert_clean(&double);
    tunnel.close().await;
}

#[tokio::test]
async fn a_gateway_that_stops_reading_backs_writes_up_without_loss() {
    let (double, _echo) = double_with(|_| {}).await;
    let tunnel = open(&double, quick()).await;
    let addr = tunnel.local_addr();
    let transfer = tokio::spawn(echo_through(addr, 700, 2 * MIB, None));
    while double
        .controls()
        .input_bytes
        .load(std::sync::atomic::Ordering::SeqCst)
        < 256 * 1024
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    double.pause_reading(Duration::from_millis(1500));
    transfer.await.expect("transfer across the pause");
    assert_clean(&double);
    tunnel.close().await;
}

#[tokio::test]
async fn basic_mode_with_an_old_agent_serves_connections_one_at_a_time() {
    let (double, echo) = double_with(|c| c.agent_version = "3.0.196.0".into()).await;
    let tunnel = open(&double, quick()).await;
    assert_eq!(tunnel.description().mode, "basic");
    let addr = tunnel.local_addr();
    // Started together: the later ones wait in the backlog and are served in turn, none refused.
    let tasks: Vec<_> = (0..3)
        .map(|i| tokio::spawn(echo_through(addr, 800 + i, 64 * 1024, None)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    double
        .wait_for("three DisconnectToPort flags", Duration::from_secs(10), |r| {
            r.flags.iter().filter(|(_, f)| *f == 1).count() == 3
        })
        .await;
    let r = double.records();
    assert!(r.streams.is_empty(), "no smux in basic mode");
    assert!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    assert_clean(&double);
    tunnel.close().await;
}

#[tokio::test]
async fn an_agent_that_wants_smux_keepalive_gets_it() {
    let (double, _echo) = double_with(|c| {
        c.agent_version = "3.1.1511.0".into();
        // The double flags a client silent for 3 of its intervals (1.5 s): generous for a loaded CI.
        c.smux_keepalive_interval = Duration::from_millis(500);
    })
    .await;
    let opts = Options {
        smux_keepalive_interval: Duration::from_millis(100),
        smux_keepalive_timeout: Duration::from_secs(3),
        ..quick()
    };
    let tunnel = open(&double, opts).await;
    assert_eq!(tunnel.description().mode, "mux");
    double
        .wait_for("client smux NOPs", Duration::from_secs(10), |r| {
            r.client_nops >= 5
        })
        .await;
    echo_through(tunnel.local_addr(), 900, 16 * 1024, None).await;
    assert_clean(&double);
    tunnel.close().await;
}

#[tokio::test]
async fn close_sends_the_terminate_flag_then_calls_the_api() {
    let (double, _echo) = double_with(|_| {}).await;
    let tunnel = open(&double, quick()).await;
    let id = tunnel.session_id().to_string();
    let closed = tunnel.close().await;
    assert!(closed.flag_acked, "the agent acked the TerminateSession flag");
    assert!(closed.api_terminated);
    let r = double.records();
    assert_eq!(r.flags, vec![(id.clone(), 2)]);
    let last = r.api_calls.last().unwrap();
    assert_eq!(last.0, "TerminateSession");
    assert_eq!(last.1["SessionId"], id.as_str());
    assert_eq!(double.active_sessions(), 0);
}

#[tokio::test]
async fn a_dropped_tunnel_still_terminates_its_session() {
    let (double, _echo) = double_with(|_| {}).await;
    let tunnel = open(&double, quick()).await;
    let id = tunnel.session_id().to_string();
    drop(tunnel);
    double
        .wait_for("TerminateSession after the drop", Duration::from_secs(10), |r| {
            r.api_calls
                .iter()
                .any(|(op, b)| op == "TerminateSession" && b["SessionId"] == id.as_str())
        })
        .await;
    assert!(
        double.records().flags.contains(&(id, 2)),
        "the flag went in band too"
    );
}

#[tokio::test]
async fn channel_closed_by_the_service_ends_the_tunnel_with_its_output() {
    let (double, _echo) = double_with(|_| {}).await;
    let tunnel = open(&double, quick()).await;
    double.close_session(tunnel.session_id(), "Session idle timeout reached.");
    match tokio::time::timeout(Duration::from_secs(10), tunnel.ended())
        .await
        .unwrap()
    {
        Some(TunnelError::SessionClosed { output, .. }) => {
            assert_eq!(output, "Session idle timeout reached.")
        }
        other => panic!("{other:?}"),
    }
    tunnel.close().await;
}

#[tokio::test]
async fn open_errors_are_classified_and_leave_no_session() {
    let (double, _echo) = double_with(|c| c.not_connected = vec!["i-offline".into()]).await;
    let err = tunnel::open(
        &sdk(&double.api_url).await,
        TunnelTarget::new("i-offline", 80, None),
        loopback(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TunnelError::TargetNotConnected { .. }), "{err:?}");
    assert!(err.to_string().contains("AmazonSSMManagedInstanceCore"), "{err}");
    assert_eq!(err.exit_code(), 2);

    let (denied, _echo2) = double_with(|c| c.deny_start = true).await;
    let err = tunnel::open(
        &sdk(&denied.api_url).await,
        TunnelTarget::new("i-0123", 80, None),
        loopback(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            TunnelError::AccessDenied {
                operation: "StartSession",
                ..
            }
        ),
        "{err:?}"
    );

    // A busy local port fails before any session is started.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let before = double.records().api_calls.len();
    let err = tunnel::open(
        &sdk(&double.api_url).await,
        TunnelTarget::new("i-0123", 80, None),
        busy.local_addr().unwrap(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TunnelError::LocalPortInUse { .. }), "{err:?}");
    assert!(err.to_string().contains("--local-port"), "{err}");
    assert_eq!(
        double.records().api_calls.len(),
        before,
        "no StartSession for a busy port"
    );
}

// ---------------------------------------------------------------------------------------------------
// The binary.

/// `thespctl tunnel` with test credentials pointed at `endpoint`.
fn tunnel_cmd(endpoint: &str) -> std::process::Command {
    let mut cmd = support::thespctl();
    cmd.arg("tunnel")
        .arg("--endpoint-url")
        .arg(endpoint)
        .arg("--region")
        .arg("us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDTHESPCTLTEST")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_SESSION_TOKEN", "session-token")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_SSM")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    cmd
}

/// `thespctl tunnel ARGS…` against the double, stdout piped (its first line is the readiness signal).
fn spawn_tunnel(double: &SsmDouble, args: &[&str], stderr: Stdio) -> KillOnDrop {
    KillOnDrop(
        tunnel_cmd(&double.api_url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// The first line the child prints on stdout (piped): `tunnel`'s readiness signal.
async fn first_line(child: &mut KillOnDrop) -> String {
    let stdout = child.0.stdout.take().expect("stdout piped");
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap()
}

/// Ctrl-C (SIGINT) to the child; its exit status and everything it wrote on stderr (piped).
async fn interrupt(mut child: KillOnDrop) -> (std::process::ExitStatus, String) {
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    tokio::task::spawn_blocking(move || {
        let status = support::wait_timeout(&mut child.0, Duration::from_secs(20)).expect("exit after Ctrl-C");
        let mut err = String::new();
        child.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status, err)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_terminates_the_session_in_band_and_by_api_then_exits_0() {
    let (double, _echo) = double_with(|_| {}).await;
    let mut child = spawn_tunnel(
        &double,
        &[
            "--instance",
            "i-0123456789abcdef0",
            "--remote-port",
            "8080",
            "--output",
            "json",
        ],
        Stdio::piped(),
    );
    // Readiness: the JSON line is printed once the tunnel forwards.
    let line = first_line(&mut child).await;
    let facts: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(facts["instance_id"], "i-0123456789abcdef0");
    assert_eq!(facts["remote_port"], 8080);
    assert_eq!(facts["mode"], "mux");
    let addr: SocketAddr = facts["local_address"].as_str().unwrap().parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "loopback only by default");
    echo_through(addr, 1000, 128 * 1024, None).await;

    let status = interrupt(child).await;
    assert_eq!(status.0.code(), Some(0), "stderr: {}", status.1);
    let r = double.records();
    let id = facts["session_id"].as_str().unwrap();
    assert!(
        r.flags.contains(&(id.to_string(), 2)),
        "TerminateSession flag: {:?}",
        r.flags
    );
    assert!(
        r.api_calls
            .iter()
            .any(|(op, b)| op == "TerminateSession" && b["SessionId"] == id),
        "TerminateSession API call"
    );
    assert_clean(&double);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_human_output_names_the_forwarding_and_the_close() {
    let (double, _echo) = double_with(|_| {}).await;
    let mut child = spawn_tunnel(
        &double,
        &[
            "--instance",
            "i-0123456789abcdef0",
            "--remote-port",
            "5432",
            "--remote-host",
            "db.internal",
        ],
        Stdio::piped(),
    );
    let line = first_line(&mut child).await;
    let rest = line
        .strip_prefix("forwarding 127.0.0.1:")
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        rest.trim_end()
            .ends_with(" → db.internal:5432 via i-0123456789abcdef0"),
        "{line:?}"
    );
    let (status, err) = interrupt(child).await;
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("press Ctrl-C to stop"), "{err}");
    assert!(
        err.contains("terminated (agent confirmed; TerminateSession called)"),
        "{err}"
    );
    let r = double.records();
    assert_eq!(
        r.api_calls[0].1["DocumentName"],
        "AWS-StartPortForwardingSessionToRemoteHost"
    );
}

#[tokio::test]
async fn the_binary_explains_an_instance_that_is_not_connected() {
    let (double, _echo) = double_with(|c| c.not_connected = vec!["i-offline".into()]).await;
    let out = tokio::task::spawn_blocking(move || {
        tunnel_cmd(&double.api_url)
            .args(["--instance", "i-offline", "--remote-port", "80"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("error: instance i-offline is not connected to Session Manager"),
        "{err}"
    );
    assert!(err.contains("AmazonSSMManagedInstanceCore"), "{err}");
}

/// A fake `session-manager-plugin` that records its argv (one per line) and the response variable.
fn fake_plugin(dir: &std::path::Path) {
    let script = format!(
        r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo 1.2.764.0; exit 0; fi
printf '%s\n' "$@" > "{dir}/argv.txt"
printf '%s' "$AWS_SSM_START_SESSION_RESPONSE" > "{dir}/env.json"
"#,
        dir = dir.display()
    );
    let path = dir.join("session-manager-plugin");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn plugin_hand_off_passes_the_response_by_environment_and_argv_like_the_aws_cli() {
    let (double, _echo) = double_with(|_| {}).await;
    let dir = support::tempdir();
    fake_plugin(dir.path());
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let api = double.api_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        tunnel_cmd(&api)
            .args([
                "--plugin",
                "--instance",
                "i-0123",
                "--remote-port",
                "5432",
                "--remote-host",
                "db.internal",
            ])
            .env("PATH", path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let argv: Vec<String> = std::fs::read_to_string(dir.path().join("argv.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(argv.len(), 6, "{argv:?}");
    assert_eq!(argv[0], "AWS_SSM_START_SESSION_RESPONSE");
    assert_eq!(argv[1], "us-east-1");
    assert_eq!(argv[2], "StartSession");
    assert_eq!(argv[3], "", "no profile");
    let request: serde_json::Value = serde_json::from_str(&argv[4]).unwrap();
    assert_eq!(request["Target"], "i-0123");
    assert_eq!(
        request["DocumentName"],
        "AWS-StartPortForwardingSessionToRemoteHost"
    );
    assert_eq!(request["Parameters"]["host"][0], "db.internal");
    assert_eq!(request["Parameters"]["portNumber"][0], "5432");
    assert_eq!(argv[5], double.api_url, "the SSM endpoint in use");
    let response: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("env.json")).unwrap()).unwrap();
    let r = double.records();
    let started = r.api_calls.iter().find(|(op, _)| op == "StartSession").unwrap();
    assert_eq!(started.1["Target"], "i-0123");
    let id = response["SessionId"].as_str().unwrap();
    assert!(response["TokenValue"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(response["StreamUrl"].as_str().unwrap().contains(id));
    assert!(
        !argv
            .iter()
            .any(|a| a.contains(response["TokenValue"].as_str().unwrap())),
        "the token stays out of argv"
    );
    assert!(
        r.api_calls
            .iter()
            .any(|(op, b)| op == "TerminateSession" && b["SessionId"] == id),
        "backstop TerminateSession"
    );
}

#[tokio::test]
async fn a_missing_plugin_is_a_clear_error_and_starts_no_session() {
    let (double, _echo) = double_with(|_| {}).await;
    let empty = support::tempdir();
    let api = double.api_url.clone();
    let path = empty.path().display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        tunnel_cmd(&api)
            .args(["--plugin", "--instance", "i-0123", "--remote-port", "80"])
            .env("PATH", path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("session-manager-plugin was not found on PATH"),
        "{err}"
    );
    assert!(
        double
            .records()
            .api_calls
            .iter()
            .all(|(op, _)| op != "StartSession"),
        "nothing may dangle"
    );
}

// ---------------------------------------------------------------------------------------------------
// ECS resolution against moto.

const MOTO_SETUP: &str = r#"
import boto3, json, sys
url, cluster = sys.argv[1], sys.argv[2]
kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
ec2 = boto3.client("ec2", **kw)
ecs = boto3.client("ecs", **kw)
ami = ec2.describe_images()["Images"][0]["ImageId"]
ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2, InstanceType="t3.small")["Instances"]]
ecs.create_cluster(clusterName=cluster)
instance_of = {}
for iid in ids:
    doc = json.dumps({"instanceId": iid, "region": "us-east-1", "accountId": "123456789012"})
    ci = ecs.register_container_instance(cluster=cluster, instanceIdentityDocument=doc)["containerInstance"]
    instance_of[ci["containerInstanceArn"]] = iid
ecs.register_task_definition(family=cluster + "-gilbert", networkMode="bridge",
    containerDefinitions=[{"name": "gilbert", "image": "thespian-agent", "memory": 128,
                           "portMappings": [{"containerPort": 50051, "hostPort": 0}]}])
tasks = {}
for t in ecs.run_task(cluster=cluster, taskDefinition=cluster + "-gilbert", count=4, startedBy="ecs-svc/thespctl")["tasks"]:
    ci = t["containerInstanceArn"]
    tasks[t["taskArn"]] = {"container_instance": ci, "instance": instance_of[ci]}
print(json.dumps(tasks))
"#;

/// moto advances an ECS task's status on every DescribeTasks (RUNNING → DEACTIVATING → …); hold it at
/// RUNNING for this test and restore the default afterwards.
struct HoldTasksRunning(String);

impl HoldTasksRunning {
    fn new(moto: &str) -> Self {
        let body =
            r#"{"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}}"#;
        post(&format!("{moto}/moto-api/state-manager/set-transition"), body);
        HoldTasksRunning(moto.to_string())
    }
}

impl Drop for HoldTasksRunning {
    fn drop(&mut self) {
        post(
            &format!("{}/moto-api/state-manager/unset-transition", self.0),
            r#"{"model_name": "ecs::task"}"#,
        );
    }
}

fn post(url: &str, body: &str) {
    let status = std::process::Command::new(support::venv().join("bin/python"))
        .args([
            "-c",
            "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method='POST'))",
            url,
            body,
        ])
        .status()
        .unwrap();
    assert!(status.success(), "POST {url}");
}

#[tokio::test]
async fn ecs_resolution_finds_the_task_instance_chain_in_moto() {
    use thespctl::target::aws::tunnel::resolve;
    let moto = support::moto_url();
    let _hold = HoldTasksRunning::new(&moto);
    let cluster = format!("tunnel-{}", fastrand::u32(..));
    let out = std::process::Command::new(support::venv().join("bin/python"))
        .args(["-c", MOTO_SETUP, &moto, &cluster])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let chain: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let config = sdk_with(&moto, "testing", "testing", None).await;
    let ecs = aws_sdk_ecs::Client::new(&config);

    let placed = chain.as_object().unwrap().len() as u32;
    assert!(placed >= 2, "moto placed {placed} task(s): {chain}");
    let mut running: Vec<String> = Vec::new();
    for replica in 0..placed {
        let task = resolve::resolve_task(&ecs, &cluster, "gilbert", Some(replica))
            .await
            .unwrap();
        let expected = &chain[&task.task_arn];
        assert_eq!(
            task.container_instance_arn,
            expected["container_instance"].as_str().unwrap()
        );
        assert_eq!(task.instance_id, expected["instance"].as_str().unwrap());
        assert_eq!(task.task_id, resolve::task_id(&task.task_arn));
        // moto records no network bindings: the missing host port is reported, not guessed.
        assert_eq!(task.host_port, None);
        let err = resolve::require_host_port(&task).unwrap_err();
        assert!(err.to_string().contains("has no TCP host port binding"), "{err}");
        running.push(task.task_id);
    }
    let mut sorted = running.clone();
    sorted.sort();
    assert_eq!(running, sorted, "replicas are indexed in task-id order");
    match resolve::resolve_task(&ecs, &cluster, "gilbert", Some(4)).await {
        Err(TunnelError::InvalidReplica {
            replica,
            running: listed,
            ..
        }) => {
            assert_eq!(replica, 4);
            assert_eq!(listed, running);
        }
        other => panic!("{other:?}"),
    }
    // The public entry point `probe --via tunnel` uses stops at the same place, before StartSession.
    match tunnel::open_to_service(
        &config,
        &cluster,
        "gilbert",
        Some(0),
        loopback(),
        CancellationToken::new(),
    )
    .await
    {
        Err(TunnelError::NoHostPort { task_id, service }) => {
            assert_eq!(task_id, running[0]);
            assert_eq!(service, "gilbert");
        }
        other => panic!("{other:?}"),
    }
    match resolve::resolve_task(&ecs, "no-such-cluster-for-tunnel", "gilbert", None).await {
        Err(TunnelError::ClusterNotFound { cluster }) => assert_eq!(cluster, "no-such-cluster-for-tunnel"),
        other => panic!("{other:?}"),
    }

    // The binary, cluster named by the manifest's fleet: NAME resolution ends in the clear no-host-port
    // error (exit 2), before any session.
    let dir = support::tempdir();
    let manifest = dir.path().join("thespian.yaml");
    std::fs::write(
        &manifest,
        format!("fleet: {cluster}\naws:\n  region: us-east-1\n"),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        tunnel_cmd(&moto)
            .args(["gilbert", "--replica", "1", "-f"])
            .arg(&manifest)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "task {} of gilbert has no TCP host port binding",
            running[1]
        )),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Benchmarks (ignored; run by bench/tunnel.sh with a release build). They print figures, they assert
// only correctness: speed goals live in docs/benchmarks.md, not in tests.

/// user + system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// The real binary forwarding to the double; returns the child and its local address.
async fn spawn_binary_tunnel(double: &SsmDouble) -> (KillOnDrop, SocketAddr) {
    let mut child = spawn_tunnel(
        double,
        &[
            "--instance",
            "i-0bench",
            "--remote-port",
            "80",
            "--output",
            "json",
        ],
        Stdio::inherit(),
    );
    let line = first_line(&mut child).await;
    let facts: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = facts["local_address"].as_str().unwrap().parse().unwrap();
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: bench/tunnel.sh"]
async fn bench_twenty_connections_by_one_mebibyte() {
    let (double, _echo) = double_with(|_| {}).await;
    let (child, addr) = spawn_binary_tunnel(&double).await;
    echo_through(addr, 1, 64 * 1024, None).await; // warm-up
    let runs: usize = std::env::var("THESPCTL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for run in 1..=runs {
        let cpu_before = cpu_seconds(child.0.id());
        let self_before = cpu_seconds(std::process::id());
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|i| tokio::spawn(echo_through(addr, 1000 * run as u64 + i, MIB, None)))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let r = double.records();
        let client_cpu = cpu_seconds(child.0.id()) - cpu_before;
        let rest_cpu = cpu_seconds(std::process::id()) - self_before;
        let mb_each_way = 20.0 * MIB as f64 / 1e6;
        println!(
            "BENCH run {run}: 20 x 1 MiB echoed in {secs:.2} s: {:.1} MB/s each way ({:.1} MB/s both ways); \
             thespctl CPU {client_cpu:.2} s = {:.1} ms per MB carried (both ways); double+echo+load CPU {rest_cpu:.2} s; \
             so far: agent retransmits {}, client retransmits seen {}, client messages the agent could not take {}",
            mb_each_way / secs,
            2.0 * mb_each_way / secs,
            1000.0 * client_cpu / (2.0 * mb_each_way),
            r.agent_retransmits,
            r.client_duplicates.len(),
            r.not_ready,
        );
    }
    assert_clean(&double);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: bench/tunnel.sh (10 minutes)"]
async fn bench_a_session_idle_for_ten_minutes_still_forwards() {
    let idle: u64 = std::env::var("THESPCTL_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let (double, _echo) = double_with(|_| {}).await;
    let (_child, addr) = spawn_binary_tunnel(&double).await;
    // A connection open across the idle period, and a new one after it.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    rd.read_exact(&mut buf).await.unwrap();
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(idle)).await; // the idleness is what is measured
    wr.write_all(b"after!").await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), rd.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"after!");
    echo_through(addr, 2, 256 * 1024, None).await;
    let r = double.records();
    println!(
        "BENCH idle: after {:.0} s idle the open connection and a new one forwarded; WebSocket connections used: {}, ResumeSession calls: {}",
        started.elapsed().as_secs_f64(),
        r.opens.len(),
        r.api_calls.iter().filter(|(op, _)| op == "ResumeSession").count()
    );
    assert_clean(&double);
}
