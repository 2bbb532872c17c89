//! A native AWS Session Manager port-forwarding client (the data channel of `session-manager-plugin`),
//! used by `thespctl tunnel` and `thespctl probe --via tunnel`.
//!
//! - [`message`]: the binary frame and its JSON payloads;
//! - [`channel`]: sequencing, acks, retransmission, reordering, backpressure (no I/O);
//! - [`smux`]: the smux v1 client that multiplexes local connections over one session;
//! - [`session`]: WebSocket, open message, handshake, pings, resume;
//! - [`forward`]: the local listener and the mux/basic port logic;
//! - [`resolve`]: ECS service → task → container instance → EC2 instance + host port;
//! - [`plugin`]: the `--plugin` hand-off to the official client.

pub mod channel;
pub mod forward;
pub mod message;
pub mod plugin;
pub mod resolve;
pub mod session;
pub mod smux;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::exit;

pub use resolve::ResolvedTask;
pub use session::{Options, SessionEvent, StatsSnapshot};

/// `AWS-StartPortForwardingSession`: forward to a port on the instance itself.
pub const DOCUMENT_PORT: &str = "AWS-StartPortForwardingSession";
/// `AWS-StartPortForwardingSessionToRemoteHost`: forward to `host:port` as seen from the instance.
pub const DOCUMENT_REMOTE_HOST: &str = "AWS-StartPortForwardingSessionToRemoteHost";

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(
        "instance {target} is not connected to Session Manager: its instance profile needs the \
         AmazonSSMManagedInstanceCore policy, and its SSM agent must reach the ssm, ssmmessages and \
         ec2messages endpoints (check `aws ssm describe-instance-information`)"
    )]
    TargetNotConnected { target: String },

    #[error(
        "access denied calling {operation}: your AWS identity needs {permission} (see docs/tunnel.md for \
         the IAM policy)"
    )]
    AccessDenied {
        operation: &'static str,
        permission: &'static str,
        #[source]
        source: ApiSource,
    },

    #[error("Session Manager rejected the document {document}: it does not exist in this region or account")]
    InvalidDocument { document: String },

    #[error("AWS call {operation} failed")]
    Api {
        operation: &'static str,
        #[source]
        source: ApiSource,
    },

    #[error(
        "ECS cluster {cluster} does not exist (the cluster is named after the fleet): run `thespctl up` or check --region/--profile"
    )]
    ClusterNotFound { cluster: String },

    #[error(
        "ECS service {service} does not exist in cluster {cluster}: check the thespian name or run `thespctl up`"
    )]
    ServiceNotFound { cluster: String, service: String },

    #[error(
        "no running task of {service} in ECS cluster {cluster}: check `thespctl status` and the service's events"
    )]
    NoRunningTask { cluster: String, service: String },

    #[error(
        "--replica {replica} does not exist: {service} has {} running task(s): {}",
        .running.len(),
        list_replicas(.running)
    )]
    InvalidReplica {
        replica: u32,
        service: String,
        running: Vec<String>,
    },

    #[error(
        "task {task_id} of {service} has no TCP host port binding: the tunnel needs bridge networking \
         with a host port (awsvpc/Fargate tasks are not reachable this way)"
    )]
    NoHostPort { task_id: String, service: String },

    #[error(
        "task {task_id} runs on no EC2 container instance (Fargate?): Session Manager port forwarding needs one"
    )]
    NoContainerInstance { task_id: String },

    #[error("local address {addr} is already in use: pick another --local-port (0 picks a free one)")]
    LocalPortInUse {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("could not listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("could not open the Session Manager data channel {url}: {reason}")]
    Connect { url: String, reason: String },

    #[error("session {session_id}: the agent did not complete the handshake within {}s", .waited.as_secs())]
    HandshakeTimeout { session_id: String, waited: Duration },

    #[error("session {session_id}: handshake failed: {reason}")]
    Handshake { session_id: String, reason: String },

    #[error("session {session_id} was closed by Session Manager{}", closed_suffix(.output))]
    SessionClosed { session_id: String, output: String },

    #[error("session {session_id} has expired or been terminated; open a new tunnel")]
    SessionExpired { session_id: String },

    #[error(
        "session {session_id}: the WebSocket dropped and could not be resumed after {attempts} attempt(s): \
         {last_error}"
    )]
    ResumeFailed {
        session_id: String,
        attempts: u32,
        last_error: String,
    },

    #[error(
        "session {session_id}: the agent stopped acknowledging (a message was resent {retransmits} times)"
    )]
    Unresponsive { session_id: String, retransmits: u32 },

    #[error("session {session_id}: smux protocol error")]
    Smux {
        session_id: String,
        #[source]
        source: smux::SmuxError,
    },

    #[error("no AWS region: pass --region, set aws.region in the manifest, or configure a profile region")]
    NoRegion,

    #[error(
        "session-manager-plugin was not found on PATH: install it \
         (https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html) \
         or drop --plugin to use the built-in client"
    )]
    PluginMissing,

    #[error("could not run {}", .path.display())]
    PluginSpawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("session-manager-plugin exited with {status}")]
    PluginFailed { status: std::process::ExitStatus },

    #[error("{message}")]
    Usage { message: String },

    #[error("interrupted while opening the tunnel")]
    Cancelled,
}

/// The underlying SDK error, rendered with its full context.
#[derive(Debug)]
pub struct ApiSource {
    pub code: Option<String>,
    pub detail: String,
}

impl std::fmt::Display for ApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for ApiSource {}

fn list_replicas(running: &[String]) -> String {
    running
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{i} = task {id}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn closed_suffix(output: &str) -> String {
    let output = output.trim();
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}

impl TunnelError {
    pub fn exit_code(&self) -> u8 {
        match self {
            TunnelError::TargetNotConnected { .. }
            | TunnelError::AccessDenied { .. }
            | TunnelError::InvalidDocument { .. }
            | TunnelError::ClusterNotFound { .. }
            | TunnelError::ServiceNotFound { .. }
            | TunnelError::NoRunningTask { .. }
            | TunnelError::InvalidReplica { .. }
            | TunnelError::NoHostPort { .. }
            | TunnelError::NoContainerInstance { .. }
            | TunnelError::LocalPortInUse { .. }
            | TunnelError::NoRegion
            | TunnelError::PluginMissing
            | TunnelError::Usage { .. } => exit::USAGE,
            TunnelError::Cancelled => exit::INTERRUPTED,
            _ => exit::FAILED,
        }
    }
}

/// The permission a failed operation needs, for the AccessDenied message.
fn permission_for(operation: &'static str) -> &'static str {
    match operation {
        "StartSession" => "ssm:StartSession on the instance and on the document",
        "ResumeSession" => "ssm:ResumeSession",
        "TerminateSession" => "ssm:TerminateSession",
        "ListTasks" => "ecs:ListTasks",
        "DescribeTasks" => "ecs:DescribeTasks",
        "DescribeContainerInstances" => "ecs:DescribeContainerInstances",
        _ => "the matching permission",
    }
}

/// Maps an SDK error by its code (never by its message).
pub(crate) fn api_error<E, R>(operation: &'static str, e: SdkError<E, R>) -> TunnelError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = e.code().map(str::to_string);
    let source = ApiSource {
        code: code.clone(),
        detail: DisplayErrorContext(&e).to_string(),
    };
    match code.as_deref() {
        Some("AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation") => {
            TunnelError::AccessDenied {
                operation,
                permission: permission_for(operation),
                source,
            }
        }
        _ => TunnelError::Api { operation, source },
    }
}

/// What a tunnel goes to: an instance, a document, and the port (and host, for the remote-host document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelTarget {
    pub instance: String,
    pub document: String,
    pub port: u16,
    pub host: Option<String>,
}

impl TunnelTarget {
    /// The port-forwarding document that fits: to the instance's own port, or to `host` through it.
    pub fn new(instance: impl Into<String>, port: u16, host: Option<String>) -> Self {
        TunnelTarget {
            instance: instance.into(),
            document: if host.is_some() {
                DOCUMENT_REMOTE_HOST
            } else {
                DOCUMENT_PORT
            }
            .to_string(),
            port,
            host,
        }
    }

    /// The StartSession `Parameters` (every value is a list of strings).
    pub fn parameters(&self, local_port: u16) -> Vec<(String, Vec<String>)> {
        let mut params = vec![
            ("portNumber".to_string(), vec![self.port.to_string()]),
            ("localPortNumber".to_string(), vec![local_port.to_string()]),
        ];
        if let Some(host) = &self.host {
            params.push(("host".to_string(), vec![host.clone()]));
        }
        params
    }

    /// The StartSession request as JSON (what `--plugin` passes to the plugin).
    pub fn request_json(&self, local_port: u16) -> serde_json::Value {
        let params: serde_json::Map<String, serde_json::Value> = self
            .parameters(local_port)
            .into_iter()
            .map(|(k, v)| (k, serde_json::json!(v)))
            .collect();
        serde_json::json!({
            "Target": self.instance,
            "DocumentName": self.document,
            "Parameters": params,
        })
    }
}

/// The facts of an open tunnel (also the `--output json` line of `thespctl tunnel`).
#[derive(Debug, Clone, Serialize)]
pub struct TunnelDescription {
    /// `127.0.0.1:P`, where local clients connect.
    pub local_address: SocketAddr,
    pub local_port: u16,
    /// The thespian (ECS service), when the tunnel was opened by name.
    pub thespian: Option<String>,
    pub cluster: Option<String>,
    pub task_id: Option<String>,
    pub task_arn: Option<String>,
    /// The EC2 instance (Session Manager target).
    pub instance_id: String,
    /// The port forwarded to on the instance (the task's host port), or on `remote_host`.
    pub remote_port: u16,
    pub remote_host: Option<String>,
    pub document: String,
    pub session_id: String,
    pub agent_version: String,
    /// `mux` (many connections at once) or `basic` (one at a time, old agents).
    pub mode: &'static str,
}

/// An open tunnel: a local listener forwarding through one Session Manager session.
pub struct Tunnel {
    description: TunnelDescription,
    ssm: aws_sdk_ssm::Client,
    terminate: mpsc::Sender<()>,
    session: Mutex<Option<JoinHandle<session::SessionEnd>>>,
    forward: Option<JoinHandle<Result<(), smux::SmuxError>>>,
    stop_forward: CancellationToken,
    events: Mutex<mpsc::Receiver<SessionEvent>>,
    closed: bool,
    watcher: Option<JoinHandle<()>>,
    /// Set by [`Tunnel::ended`] when it saw our own termination finish.
    flag_acked: std::sync::Mutex<Option<bool>>,
    /// An smux protocol failure that ended the session.
    port_failure: Arc<std::sync::Mutex<Option<smux::SmuxError>>>,
    stats: Arc<session::Stats>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("description", &self.description)
            .finish()
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closed {
    pub session_id: String,
    /// The agent acknowledged the in-band TerminateSession flag.
    pub flag_acked: bool,
    /// `ssm:TerminateSession` (the backstop) succeeded.
    pub api_terminated: bool,
}

impl Tunnel {
    /// Where local clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.description.local_address
    }

    /// Task, instance, host port, session and mode.
    pub fn description(&self) -> &TunnelDescription {
        &self.description
    }

    pub fn session_id(&self) -> &str {
        &self.description.session_id
    }

    /// Message counters of the session so far (sent, received, retransmitted, refused, resumes).
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The next thing worth telling the user (reconnects, agent warnings); `None` once the session ended.
    pub async fn next_event(&self) -> Option<SessionEvent> {
        self.events.lock().await.recv().await
    }

    /// Resolves when the session ends: `Some(error)` when it ended by itself (closed by the service, or
    /// failed), `None` when we terminated it (the cancel token fired). Cancel-safe.
    pub async fn ended(&self) -> Option<TunnelError> {
        let mut guard = self.session.lock().await;
        let task = guard.as_mut()?;
        let end = task.await;
        *guard = None;
        let session_id = self.description.session_id.clone();
        match end {
            Ok(session::SessionEnd::Failed(e)) => Some(e),
            Ok(session::SessionEnd::Closed { output }) => {
                Some(TunnelError::SessionClosed { session_id, output })
            }
            Ok(session::SessionEnd::Terminated { acked }) => {
                if let Ok(mut a) = self.flag_acked.lock() {
                    *a = Some(acked);
                }
                let failure = self.port_failure.lock().ok().and_then(|mut f| f.take());
                failure.map(|source| TunnelError::Smux { session_id, source })
            }
            Err(_) => Some(TunnelError::SessionExpired { session_id }),
        }
    }

    /// Ends the tunnel: stops accepting, sends the TerminateSession flag in band, waits briefly for its
    /// ack, then calls `ssm:TerminateSession` as a backstop.
    pub async fn close(mut self) -> Closed {
        self.closed = true;
        let mut closed = close_parts(
            &self.description.session_id,
            &self.ssm,
            &self.terminate,
            &self.stop_forward,
            self.session.lock().await.take(),
            self.forward.take(),
        )
        .await;
        if let Ok(Some(acked)) = self.flag_acked.lock().map(|a| *a) {
            closed.flag_acked |= acked;
        }
        closed
    }
}

async fn close_parts(
    session_id: &str,
    ssm: &aws_sdk_ssm::Client,
    terminate: &mpsc::Sender<()>,
    stop_forward: &CancellationToken,
    session: Option<JoinHandle<session::SessionEnd>>,
    forward: Option<JoinHandle<Result<(), smux::SmuxError>>>,
) -> Closed {
    stop_forward.cancel();
    let _ = terminate.try_send(());
    let mut flag_acked = false;
    if let Some(task) = session {
        // The actor waits at most `close_ack_wait` for the ack; this bounds a stuck socket too.
        if let Ok(Ok(session::SessionEnd::Terminated { acked })) =
            tokio::time::timeout(Duration::from_secs(5), task).await
        {
            flag_acked = acked;
        }
    }
    if let Some(f) = forward {
        f.abort();
    }
    let api_terminated = tokio::time::timeout(
        Duration::from_secs(10),
        ssm.terminate_session().session_id(session_id).send(),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    Closed {
        session_id: session_id.to_string(),
        flag_acked,
        api_terminated,
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        if self.closed {
            return;
        }
        // Best effort: a dropped tunnel still ends its session (in band, then the API).
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let session_id = self.description.session_id.clone();
        let ssm = self.ssm.clone();
        let terminate = self.terminate.clone();
        let stop = self.stop_forward.clone();
        let session = self.session.try_lock().ok().and_then(|mut g| g.take());
        let forward = self.forward.take();
        handle.spawn(async move {
            close_parts(&session_id, &ssm, &terminate, &stop, session, forward).await;
        });
    }
}

/// Opens a tunnel to `target`, listening on `bind` (port 0 picks a free port). `cancel` aborts the
/// opening and, once open, closes the tunnel (in band, then the API) when it fires.
pub async fn open(
    sdk: &SdkConfig,
    target: TunnelTarget,
    bind: SocketAddr,
    cancel: CancellationToken,
) -> Result<Tunnel, TunnelError> {
    open_with(sdk, target, bind, cancel, Options::default()).await
}

/// Binds the local listener; "address in use" gets its own error.
pub async fn listen(bind: SocketAddr) -> Result<TcpListener, TunnelError> {
    TcpListener::bind(bind).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            TunnelError::LocalPortInUse { addr: bind, source }
        } else {
            TunnelError::Listen { addr: bind, source }
        }
    })
}

/// Starts a session with StartSession and returns what the data channel needs.
pub async fn start_session(
    ssm: &aws_sdk_ssm::Client,
    target: &TunnelTarget,
    local_port: u16,
) -> Result<session::Started, TunnelError> {
    let mut request = ssm
        .start_session()
        .target(&target.instance)
        .document_name(&target.document);
    for (k, v) in target.parameters(local_port) {
        request = request.parameters(k, v);
    }
    let out = request.send().await.map_err(|e| {
        use aws_sdk_ssm::operation::start_session::StartSessionError;
        match e.as_service_error() {
            Some(StartSessionError::TargetNotConnected(_)) => TunnelError::TargetNotConnected {
                target: target.instance.clone(),
            },
            Some(StartSessionError::InvalidDocument(_)) => TunnelError::InvalidDocument {
                document: target.document.clone(),
            },
            _ => api_error("StartSession", e),
        }
    })?;
    Ok(session::Started {
        session_id: out.session_id().unwrap_or_default().to_string(),
        token_value: out.token_value().unwrap_or_default().to_string(),
        stream_url: out.stream_url().unwrap_or_default().to_string(),
    })
}

/// [`open`] with explicit tunables.
pub async fn open_with(
    sdk: &SdkConfig,
    target: TunnelTarget,
    bind: SocketAddr,
    cancel: CancellationToken,
    opts: Options,
) -> Result<Tunnel, TunnelError> {
    if sdk.region().is_none() {
        return Err(TunnelError::NoRegion);
    }
    // Listen first: a busy port fails before any session exists.
    let listener = listen(bind).await?;
    let local_address = listener
        .local_addr()
        .map_err(|source| TunnelError::Listen { addr: bind, source })?;
    let ssm = aws_sdk_ssm::Client::new(sdk);
    // Not raced against `cancel`: an abandoned StartSession could leave a session we cannot name. A
    // cancel that arrives meanwhile is seen by `session::start`, and the session is terminated below.
    let started = start_session(&ssm, &target, local_address.port()).await?;
    let signer = session::Signer::from_sdk(sdk);
    let handle = match session::start(ssm.clone(), signer, started.clone(), opts.clone(), &cancel).await {
        Ok(h) => h,
        Err(e) => {
            // Nothing may dangle: the session exists even though its data channel does not.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                ssm.terminate_session().session_id(&started.session_id).send(),
            )
            .await;
            return Err(e);
        }
    };
    let session::SessionHandle {
        session_id,
        handshake,
        out,
        inbound,
        events,
        terminate,
        task,
        stats,
    } = handle;
    let stop_forward = CancellationToken::new();
    let port_failure: Arc<std::sync::Mutex<Option<smux::SmuxError>>> = Arc::default();
    let forward = if handshake.mux {
        let mux = forward::serve_mux(
            listener,
            out,
            inbound,
            opts.max_payload,
            handshake
                .keepalive
                .then_some((opts.smux_keepalive_interval, opts.smux_keepalive_timeout)),
            stop_forward.clone(),
        );
        let (failure, terminate) = (port_failure.clone(), terminate.clone());
        tokio::spawn(async move {
            let result = mux.await;
            if let Err(e) = &result {
                // A broken smux stream cannot be repaired: end the session and say why.
                if let Ok(mut f) = failure.lock() {
                    *f = Some(e.clone());
                }
                let _ = terminate.try_send(());
            }
            result
        })
    } else {
        let stop = stop_forward.clone();
        tokio::spawn(async move {
            forward::serve_basic(listener, out, inbound, opts.max_payload, stop).await;
            Ok(())
        })
    };
    let description = TunnelDescription {
        local_address,
        local_port: local_address.port(),
        thespian: None,
        cluster: None,
        task_id: None,
        task_arn: None,
        instance_id: target.instance.clone(),
        remote_port: target.port,
        remote_host: target.host.clone(),
        document: target.document.clone(),
        session_id,
        agent_version: handshake.agent_version.clone(),
        mode: if handshake.mux { "mux" } else { "basic" },
    };
    // Once open, the caller's token closes the tunnel.
    let watcher = {
        let terminate = terminate.clone();
        let stop = stop_forward.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            stop.cancel();
            let _ = terminate.try_send(());
        })
    };
    Ok(Tunnel {
        description,
        ssm,
        terminate,
        session: Mutex::new(Some(task)),
        forward: Some(forward),
        stop_forward,
        events: Mutex::new(events),
        closed: false,
        watcher: Some(watcher),
        flag_acked: std::sync::Mutex::new(None),
        port_failure,
        stats,
    })
}

/// Resolves the ECS task of `service` in `cluster` (the cluster is named after the fleet, the service
/// after the thespian) and opens a tunnel to its host port.
pub async fn open_to_service(
    sdk: &SdkConfig,
    cluster: &str,
    service: &str,
    replica: Option<u32>,
    bind: SocketAddr,
    cancel: CancellationToken,
) -> Result<Tunnel, TunnelError> {
    open_to_service_with(sdk, cluster, service, replica, bind, cancel, Options::default()).await
}

/// [`open_to_service`] with explicit tunables.
pub async fn open_to_service_with(
    sdk: &SdkConfig,
    cluster: &str,
    service: &str,
    replica: Option<u32>,
    bind: SocketAddr,
    cancel: CancellationToken,
    opts: Options,
) -> Result<Tunnel, TunnelError> {
    let ecs = aws_sdk_ecs::Client::new(sdk);
    let task = tokio::select! {
        t = resolve::resolve_task(&ecs, cluster, service, replica) => t?,
        _ = cancel.cancelled() => return Err(TunnelError::Cancelled),
    };
    let host_port = resolve::require_host_port(&task)?;
    let target = TunnelTarget::new(task.instance_id.clone(), host_port, None);
    let mut tunnel = open_with(sdk, target, bind, cancel, opts).await?;
    tunnel.description.thespian = Some(service.to_string());
    tunnel.description.cluster = Some(cluster.to_string());
    tunnel.description.task_id = Some(task.task_id);
    tunnel.description.task_arn = Some(task.task_arn);
    Ok(tunnel)
}

/// The SSM endpoint URL the SDK uses (for the plugin's own ResumeSession/TerminateSession calls), with the
/// SDK's precedence: an explicit `--endpoint-url`, then `AWS_ENDPOINT_URL_SSM`, then `AWS_ENDPOINT_URL` (or
/// the profile's `endpoint_url`), then the regional endpoint.
pub async fn ssm_endpoint(sdk: &SdkConfig, explicit: Option<&str>) -> Result<String, TunnelError> {
    use aws_sdk_ssm::config::endpoint::{Params, ResolveEndpoint};
    if let Some(url) = explicit {
        return Ok(url.to_string());
    }
    if let Ok(url) = std::env::var("AWS_ENDPOINT_URL_SSM")
        && !url.is_empty()
    {
        return Ok(url);
    }
    if let Some(url) = sdk.endpoint_url() {
        return Ok(url.to_string());
    }
    let region = sdk.region().ok_or(TunnelError::NoRegion)?.to_string();
    let params = Params::builder()
        .region(region)
        .build()
        .map_err(|e| TunnelError::Usage {
            message: e.to_string(),
        })?;
    let endpoint = aws_sdk_ssm::config::endpoint::DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map_err(|e| TunnelError::Usage {
            message: e.to_string(),
        })?;
    Ok(endpoint.url().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_follow_the_documents() {
        let t = TunnelTarget::new("i-0abc", 32768, None);
        assert_eq!(t.document, DOCUMENT_PORT);
        let json = t.request_json(4000);
        assert_eq!(json["Target"], "i-0abc");
        assert_eq!(json["Parameters"]["portNumber"][0], "32768");
        assert_eq!(json["Parameters"]["localPortNumber"][0], "4000");
        let r = TunnelTarget::new("i-0abc", 5432, Some("db.internal".into()));
        assert_eq!(r.document, DOCUMENT_REMOTE_HOST);
        assert_eq!(r.request_json(0)["Parameters"]["host"][0], "db.internal");
    }

    #[tokio::test]
    async fn the_plugin_gets_the_ssm_endpoint_the_sdk_would_use() {
        let sdk = SdkConfig::builder()
            .region(aws_config::Region::new("eu-west-1"))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        assert_eq!(
            ssm_endpoint(&sdk, Some("http://127.0.0.1:5000")).await.unwrap(),
            "http://127.0.0.1:5000",
            "--endpoint-url wins"
        );
        if std::env::var_os("AWS_ENDPOINT_URL_SSM").is_none() {
            assert_eq!(
                ssm_endpoint(&sdk, None).await.unwrap(),
                "https://ssm.eu-west-1.amazonaws.com"
            );
        }
    }

    #[test]
    fn invalid_replica_lists_the_running_tasks() {
        let e = TunnelError::InvalidReplica {
            replica: 3,
            service: "gilbert".into(),
            running: vec!["aa".into(), "bb".into()],
        };
        assert_eq!(
            e.to_string(),
            "--replica 3 does not exist: gilbert has 2 running task(s): 0 = task aa, 1 = task bb"
        );
        assert_eq!(e.exit_code(), exit::USAGE);
    }
}
