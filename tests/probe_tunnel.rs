//! `thespctl probe NAME --target aws --via tunnel` (and `--via auto` without an ALB) end to end: the real
//! `thespctl` binary resolves the thespian through CloudFormation and ECS, opens a Session Manager tunnel
//! with its native client, sends real gRPC requests through it to a real thespian agent, and closes it.
//!
//! What plays which part:
//! - **CloudFormation and ECS: moto** (started by `scripts/test`). Each test deploys its own fleet with
//!   `thespctl up --target aws --no-wait` (environment stack: cluster, auto scaling group and its EC2
//!   instances; one service stack per thespian: task definition and ECS service).
//! - **What the ECS agent and scheduler would do, done by hand in moto**: moto never starts a service's
//!   tasks, so the test registers the fleet's auto-scaling instances as container instances of the
//!   fleet's cluster (the ECS agent's RegisterContainerInstance) and places the service's tasks with
//!   `run-task` (the service's task definition, `startedBy` its deployment, `group: service:NAME`). moto
//!   advances a task's status on every DescribeTasks; [`HoldTasksRunning`] holds them RUNNING through
//!   moto's global state manager, reference-counted across the tests of this binary.
//! - **The containers: real agents** (`thespctl agent` on 127.0.0.1, port 0), one per placed task, run with
//!   the `CONFIG_JSON` and `SERVICE_NAME` of the task definition the stack registered in moto.
//! - **SSM: the protocol double** (`tests/ssm_double/`, `AWS_ENDPOINT_URL_SSM`): StartSession, the signed
//!   WebSocket upgrade, the data channel and smux; its agent side dials `127.0.0.1:<portNumber>`, the
//!   port the client asked for, as the SSM agent does on the instance (`dial_port_number`).
//!
//! **Bridging moto's gap: the host port.** ECS reports a bridge-mode task's dynamic host port in
//! `DescribeTasks` as `containers[].networkBindings[].hostPort`; moto 5.2.5 reports no network bindings
//! at all. [`EcsPassThrough`] sits in front of moto's ECS endpoint (`AWS_ENDPOINT_URL_ECS`): it forwards
//! every request to moto byte for byte and returns moto's answer unchanged, except that a
//! `DescribeTasks` answer gets, for each RUNNING task this test placed, the one binding ECS would report
//! for that task's container — `{bindIP 0.0.0.0, containerPort <the task definition's>, hostPort <that
//! task's agent's port>, protocol tcp}` — and is re-serialised with it. Should moto ever report bindings
//! itself, the pass-through leaves them and the test fails saying the gap fill is obsolete. Everything else — ListTasks, the task list and statuses,
//! the container instance ARN, DescribeContainerInstances and the EC2 instance id — comes from moto. So
//! the chain the test proves is: the stacks found by tag (moto) → ListTasks / DescribeTasks (moto, plus
//! the filled binding) → the task's container instance → its EC2 instance (moto) → StartSession with
//! that instance and host port (double) → the double's agent dials that port → the agent of that task.
//! A wrong task, instance or port anywhere shows: each task has its own agent, told apart by the
//! `x-thespian-instance` it answers with.
//!
//! Besides the single shot, the load run, `--via auto` and the two input errors, the tests check that the
//! session is closed both ways whatever the outcome: after Ctrl-C in a load run (partial results, exit
//! 130) and when the task's agent does not answer.
//!
//! moto 5.2.5 also ignores ListTasks' `serviceName` filter (it lists every task of the cluster). The fleets
//! that reach an agent therefore have tasks of one service only, and the "no running task" case is a
//! fleet where no task was placed.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

mod ssm_double;
mod support;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use ssm_double::{Config, SsmDouble};
use support::Agent;

/// The credentials every process of a test signs with; the double checks the upgrade's signature with
/// the same secret. moto accepts any.
const KEY: &str = "testing";
const SECRET: &str = "testing";
const TOKEN: &str = "testing";

const GILBERT: &str = "
thespians:
  gilbert:
    methods:
      A:
        - sleep: 1ms
aws:
  region: us-east-1
  image: registry.example.com/thespian-agent:1
";

const GILBERT_YORICK: &str = "
thespians:
  gilbert:
    methods:
      A:
        - sleep: 1ms
  yorick:
    methods:
      A:
        - sleep: 1ms
        - call: gilbert.A
aws:
  region: us-east-1
  image: registry.example.com/thespian-agent:1
";

// ---------------------------------------------------------------------------------------------------
// Harness: fleets in moto, tasks placed by hand, agents.

/// Runs blocking work (a child process) off the runtime that serves the double and the pass-through.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fleet with its own name (and so its own stacks and ECS cluster) and manifest.
struct Fleet {
    name: String,
    dir: tempfile::TempDir,
    manifest: PathBuf,
}

impl Fleet {
    fn new(test: &str, body: &str) -> Fleet {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{test}-{}", &suffix[..6]);
        let dir = support::tempdir();
        let manifest = dir.path().join("thespian.yaml");
        std::fs::write(&manifest, format!("fleet: {name}\n{body}")).unwrap();
        Fleet { name, dir, manifest }
    }

    /// `thespctl up --target aws --no-wait` against moto; must succeed.
    async fn up(&self) {
        let mut cmd = support::thespctl();
        cmd.args(["up", "--target", "aws", "--no-wait", "--endpoint-url"])
            .arg(support::moto_url())
            .arg("--file")
            .arg(&self.manifest)
            .envs(credentials())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .current_dir(self.dir.path());
        let out = blocking(move || cmd.output().unwrap()).await;
        assert_eq!(out.status.code(), Some(0), "up failed: {}", text(&out));
    }

    /// `thespctl probe ARGS… --target aws` the way a user on AWS runs it, with the endpoints of this
    /// test: CloudFormation (and anything else) at moto, ECS at the pass-through, SSM at the double.
    fn probe(&self, ecs: &EcsPassThrough, ssm: &SsmDouble, args: &[&str]) -> Command {
        let mut cmd = support::thespctl();
        cmd.arg("probe")
            .args(args)
            .args(["--target", "aws", "--file"])
            .arg(&self.manifest)
            .envs(credentials())
            .env("AWS_ENDPOINT_URL", support::moto_url())
            .env("AWS_ENDPOINT_URL_ECS", &ecs.url)
            .env("AWS_ENDPOINT_URL_SSM", &ssm.api_url)
            .env_remove("AWS_ENDPOINT_URL_CLOUDFORMATION")
            .env_remove("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .current_dir(self.dir.path());
        cmd
    }
}

fn credentials() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_SESSION_TOKEN", TOKEN),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ]
}

/// Runs a Python snippet with boto3 against moto; it must print one JSON document.
fn boto(script: &str, args: &[&str]) -> Value {
    let out = Command::new(support::venv().join("bin/python"))
        .arg("-c")
        .arg(script)
        .arg(support::moto_url())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 script failed:\n{script}\n{}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("boto3 script printed no JSON ({e}): {}", text(&out)))
}

/// What the ECS agent and the service scheduler would do, in moto: the fleet's auto-scaling instances
/// join the cluster, and `count` tasks of the service's task definition are placed on them. Prints the
/// task → container instance → EC2 instance chain moto recorded, and the task definition's container.
const PLACE_TASKS: &str = r#"
import boto3, json, sys
url, cluster, service, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
cf = boto3.client("cloudformation", **kw)
asg = boto3.client("autoscaling", **kw)
ecs = boto3.client("ecs", **kw)
group = next(r["PhysicalResourceId"] for r in cf.list_stack_resources(StackName=cluster)["StackResourceSummaries"]
             if r.get("LogicalResourceId") == "AutoScalingGroup")
instances = [i["InstanceId"] for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]["Instances"]]
assert instances, "the fleet's auto scaling group has no instances"
instance_of = {}
for iid in instances:
    doc = json.dumps({"instanceId": iid, "region": "us-east-1", "accountId": "123456789012"})
    ci = ecs.register_container_instance(cluster=cluster, instanceIdentityDocument=doc)["containerInstance"]
    instance_of[ci["containerInstanceArn"]] = iid
svc = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
container = td["containerDefinitions"][0]
tasks = []
if count:
    primary = next(d for d in svc["deployments"] if d["status"] == "PRIMARY")
    placed = ecs.run_task(cluster=cluster, taskDefinition=svc["taskDefinition"], count=count, launchType="EC2",
                          startedBy=primary["id"], group="service:" + service)
    assert not placed["failures"], placed["failures"]
    for t in placed["tasks"]:
        tasks.append({"task_arn": t["taskArn"], "container_instance_arn": t["containerInstanceArn"],
                      "instance_id": instance_of[t["containerInstanceArn"]]})
print(json.dumps({
    "task_definition": svc["taskDefinition"],
    "network_mode": td.get("networkMode"),
    "container": container["name"],
    "port_mappings": container.get("portMappings", []),
    "environment": {e["name"]: e["value"] for e in container.get("environment", [])},
    "instances": instances,
    "tasks": tasks,
}))
"#;

/// One placed task and the real agent standing in for its container.
struct Task {
    task_arn: String,
    task_id: String,
    instance_id: String,
    agent: Agent,
}

impl Task {
    /// The agent's `x-thespian-instance` (`hostname:pid` off ECS) ends with its pid.
    fn answers_as(&self, instance: &str) -> bool {
        instance.ends_with(&format!(":{}", self.agent.child.id()))
    }
}

/// The service's placed tasks in task-id order (how `--replica` indexes them; the default is the first),
/// each with its agent, and the bindings ECS would report for them.
struct Placement {
    tasks: Vec<Task>,
    bindings: HashMap<String, Binding>,
}

/// Places `count` tasks of `service` in the fleet and starts one real agent per task, configured as the
/// task definition says.
async fn place(fleet: &Fleet, service: &str, count: usize) -> Placement {
    let (cluster, svc) = (fleet.name.clone(), service.to_string());
    let placed = blocking(move || boto(PLACE_TASKS, &[&cluster, &svc, &count.to_string()])).await;
    assert_eq!(placed["network_mode"], "bridge", "{placed}");
    let container = placed["container"].as_str().unwrap().to_string();
    assert_eq!(container, service, "the container is named after the thespian");
    let mapping = &placed["port_mappings"][0];
    assert_eq!(mapping["hostPort"], 0, "a dynamic host port: {placed}");
    let container_port = u16::try_from(mapping["containerPort"].as_u64().unwrap()).unwrap();
    let env = &placed["environment"];
    let config = env["CONFIG_JSON"].as_str().unwrap().to_string();
    assert_eq!(env["SERVICE_NAME"], service);
    let mut tasks = Vec::new();
    for t in placed["tasks"].as_array().unwrap() {
        let task_arn = t["task_arn"].as_str().unwrap().to_string();
        let svc = service.to_string();
        let config = config.clone();
        tasks.push(Task {
            task_id: task_arn.rsplit('/').next().unwrap().to_string(),
            task_arn,
            instance_id: t["instance_id"].as_str().unwrap().to_string(),
            agent: blocking(move || Agent::spawn(&svc, &config)).await,
        });
    }
    assert_eq!(tasks.len(), count, "moto placed {placed}");
    tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let bindings = tasks
        .iter()
        .map(|t| {
            let binding = Binding {
                container: container.clone(),
                container_port,
                host_port: t.agent.addr.port(),
            };
            (t.task_arn.clone(), binding)
        })
        .collect();
    Placement { tasks, bindings }
}

/// moto advances an ECS task's status on every DescribeTasks (RUNNING → DEACTIVATING → …) unless its
/// global state manager holds it. The tests of this binary run in parallel against one moto, so the hold
/// is reference-counted: set by the first test that needs it, unset when the last one is done (another
/// test binary runs at another time).
struct HoldTasksRunning;

static HOLDERS: Mutex<usize> = Mutex::new(0);

impl HoldTasksRunning {
    fn new() -> HoldTasksRunning {
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        if *holders == 0 {
            moto_post(
                "set-transition",
                r#"{"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}}"#,
            );
        }
        *holders += 1;
        HoldTasksRunning
    }
}

impl Drop for HoldTasksRunning {
    fn drop(&mut self) {
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        *holders -= 1;
        if *holders == 0 {
            moto_post("unset-transition", r#"{"model_name": "ecs::task"}"#);
        }
    }
}

fn moto_post(action: &str, body: &str) {
    let url = format!("{}/moto-api/state-manager/{action}", support::moto_url());
    let status = Command::new(support::venv().join("bin/python"))
        .args([
            "-c",
            "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method='POST'))",
            &url,
            body,
        ])
        .status()
        .unwrap();
    assert!(status.success(), "POST {url}");
}

/// The SSM double for a test: its agent dials the port StartSession asked for, on this machine.
async fn ssm_double() -> SsmDouble {
    // `target` is unused with `dial_port_number`: the discard port, should it ever be dialled.
    let mut config = Config::new("127.0.0.1:9".parse().unwrap());
    config.dial_port_number = true;
    config.secret_key = Some(SECRET.into());
    SsmDouble::start(config).await
}

// ---------------------------------------------------------------------------------------------------
// The ECS pass-through: moto's answers, plus the network bindings moto 5.2.5 does not report.

/// The binding ECS reports for a RUNNING bridge-mode task: its container, the task definition's
/// container port, the dynamic host port Docker picked.
#[derive(Debug, Clone)]
struct Binding {
    container: String,
    container_port: u16,
    host_port: u16,
}

/// An HTTP/1.1 pass-through in front of moto's ECS endpoint; see the top of the file. Stops when dropped.
struct EcsPassThrough {
    url: String,
    state: Arc<PassState>,
    stop: CancellationToken,
}

#[derive(Default)]
struct PassState {
    moto: String,
    bindings: HashMap<String, Binding>,
    /// ECS operations forwarded (`X-Amz-Target` without its prefix), in order.
    operations: Mutex<Vec<String>>,
    /// Task ARNs a binding was added for, one entry per DescribeTasks answer that carried the task.
    filled: Mutex<Vec<String>>,
    /// Anything unexpected (must stay empty).
    problems: Mutex<Vec<String>>,
}

impl PassState {
    fn problem(&self, p: String) {
        eprintln!("ecs pass-through: {p}");
        self.problems.lock().unwrap().push(p);
    }
}

impl Drop for EcsPassThrough {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl EcsPassThrough {
    async fn start(bindings: HashMap<String, Binding>) -> EcsPassThrough {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let moto = support::moto_url();
        let state = Arc::new(PassState {
            moto: moto
                .strip_prefix("http://")
                .unwrap_or(&moto)
                .trim_end_matches('/')
                .to_string(),
            bindings,
            ..PassState::default()
        });
        let stop = CancellationToken::new();
        let (s, st) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    a = listener.accept() => match a { Ok((stream, _)) => stream, Err(_) => continue },
                    _ = st.cancelled() => return,
                };
                let (s, st) = (s.clone(), st.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(stream, s) => {}
                        _ = st.cancelled() => {}
                    }
                });
            }
        });
        EcsPassThrough { url, state, stop }
    }

    fn operations(&self) -> Vec<String> {
        self.state.operations.lock().unwrap().clone()
    }

    fn filled(&self) -> Vec<String> {
        self.state.filled.lock().unwrap().clone()
    }

    fn problems(&self) -> Vec<String> {
        self.state.problems.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 message: the start line and headers (raw, without the blank line) and the body.
struct Message {
    head: String,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n\r\n", self.head).into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Reads one message. The body is `Content-Length` long; without one, a request has none and a response
/// runs to the end of the connection. `None`: the peer closed before a message began.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>, response: bool) -> Option<Message> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut message = Message {
        head,
        body: Vec::new(),
    };
    assert!(
        message.header("transfer-encoding").is_none(),
        "the pass-through handles Content-Length bodies only: {}",
        message.head
    );
    let length = message
        .header("content-length")
        .map(|v| v.parse::<usize>().unwrap());
    loop {
        if length.is_some_and(|l| buf.len() >= l) || (length.is_none() && !response) {
            break;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) if length.is_none() => break,
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let take = length.unwrap_or(buf.len());
    message.body = buf.drain(..take).collect();
    Some(message)
}

/// Serves one client connection: each request goes to moto on a connection of its own, unchanged; the
/// answer comes back unchanged but for the filled bindings.
async fn serve(mut client: TcpStream, state: Arc<PassState>) {
    let mut buf = Vec::new();
    while let Some(request) = read_message(&mut client, &mut buf, false).await {
        let target = request.header("x-amz-target").unwrap_or_default();
        let operation = target.rsplit('.').next().unwrap_or_default().to_string();
        state.operations.lock().unwrap().push(operation.clone());
        let Ok(mut upstream) = TcpStream::connect(&state.moto).await else {
            state.problem(format!("moto at {} refused {operation}", state.moto));
            return;
        };
        if upstream.write_all(&request.bytes()).await.is_err() {
            state.problem(format!("could not send {operation} to moto"));
            return;
        }
        let Some(mut response) = read_message(&mut upstream, &mut Vec::new(), true).await else {
            state.problem(format!("moto sent no answer to {operation}"));
            return;
        };
        if operation == "DescribeTasks" && response.head.starts_with("HTTP/1.1 200") {
            let mut doc: Value = serde_json::from_slice(&response.body).unwrap();
            let filled = fill_network_bindings(&mut doc, &state.bindings);
            for f in filled {
                match f {
                    Ok(arn) => state.filled.lock().unwrap().push(arn),
                    Err(p) => state.problem(p),
                }
            }
            response.body = serde_json::to_vec(&doc).unwrap();
            response.head = response
                .head
                .lines()
                .map(|line| match line.split_once(':') {
                    Some((k, _)) if k.trim().eq_ignore_ascii_case("content-length") => {
                        format!("{k}: {}", response.body.len())
                    }
                    _ => line.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\r\n");
        }
        let close = response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if client.write_all(&response.bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Adds to a DescribeTasks answer the binding ECS reports for each RUNNING task with a known binding
/// (moto 5.2.5 reports none). Returns the task ARNs filled, or what went wrong for one: a task of ours
/// whose container is missing, or a moto that reports bindings itself (then this gap fill is obsolete).
fn fill_network_bindings(
    doc: &mut Value,
    bindings: &HashMap<String, Binding>,
) -> Vec<Result<String, String>> {
    let mut out = Vec::new();
    let Some(tasks) = doc.get_mut("tasks").and_then(Value::as_array_mut) else {
        return out;
    };
    for task in tasks {
        let arn = task["taskArn"].as_str().unwrap_or_default().to_string();
        let Some(binding) = bindings.get(&arn) else {
            continue;
        };
        // ECS reports bindings once the container runs; a pending or stopped task has none.
        if task["lastStatus"] != "RUNNING" {
            continue;
        }
        let container = task["containers"].as_array_mut().and_then(|cs| {
            cs.iter_mut()
                .find(|c| c["name"].as_str() == Some(binding.container.as_str()))
        });
        let Some(container) = container else {
            out.push(Err(format!("task {arn} has no container {}", binding.container)));
            continue;
        };
        if container
            .get("networkBindings")
            .and_then(Value::as_array)
            .is_some_and(|b| !b.is_empty())
        {
            out.push(Err(format!(
                "moto reports networkBindings for {arn} itself ({}): the pass-through's gap fill is obsolete",
                container["networkBindings"]
            )));
            continue;
        }
        container["networkBindings"] = serde_json::json!([{
            "bindIP": "0.0.0.0",
            "containerPort": binding.container_port,
            "hostPort": binding.host_port,
            "protocol": "tcp",
        }]);
        out.push(Ok(arn));
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Assertions shared by the tests.

/// Runs a probe command with `--output json`; returns the exit code, the document and stderr.
async fn probe_json(mut cmd: Command) -> (i32, Value, String) {
    let out = blocking(move || cmd.arg("--output").arg("json").output().unwrap()).await;
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("probe printed no JSON document ({e}): {}", text(&out)));
    (
        out.status.code().unwrap(),
        doc,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The probe opened exactly one session, to `task`'s instance and host port, for the local port it
/// listened on; its streams went to that agent; and when the probe ended it closed the session both
/// ways: the TerminateSession flag in band (acknowledged by the agent) and the TerminateSession API.
fn assert_one_session_to(double: &SsmDouble, task: &Task, local_port: u16) -> ssm_double::Records {
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
    let started: Vec<&Value> = r
        .api_calls
        .iter()
        .filter(|(op, _)| op == "StartSession")
        .map(|(_, body)| body)
        .collect();
    assert_eq!(started.len(), 1, "one session per probe: {:?}", r.api_calls);
    let start = started[0];
    assert_eq!(start["Target"], task.instance_id.as_str(), "{start}");
    assert_eq!(start["DocumentName"], "AWS-StartPortForwardingSession");
    assert_eq!(
        start["Parameters"]["portNumber"][0],
        task.agent.addr.port().to_string(),
        "the task's host port"
    );
    assert_eq!(start["Parameters"]["localPortNumber"][0], local_port.to_string());
    let id = r.sessions_started[0].clone();
    assert_eq!(r.handshake_responses.len(), 1, "one handshake");
    assert!(
        r.flags.contains(&(id.clone(), 2)),
        "the TerminateSession flag in band: {:?}",
        r.flags
    );
    assert!(
        r.api_calls
            .iter()
            .any(|(op, body)| op == "TerminateSession" && body["SessionId"] == id.as_str()),
        "the TerminateSession API call: {:?}",
        r.api_calls
    );
    assert_eq!(r.sessions_closed, vec![id], "the agent side ended the session");
    assert_eq!(double.active_sessions(), 0);
    r
}

/// The ECS side: the chain was resolved through the pass-through (so through moto), and the binding
/// was filled for `task` only where moto's own answer lacked it.
fn assert_resolved_through_ecs(ecs: &EcsPassThrough, task: &Task) {
    assert!(ecs.problems().is_empty(), "{:#?}", ecs.problems());
    let ops = ecs.operations();
    for op in ["ListTasks", "DescribeTasks", "DescribeContainerInstances"] {
        assert!(ops.iter().any(|o| o == op), "{op} went to ECS: {ops:?}");
    }
    assert!(
        ecs.filled().contains(&task.task_arn),
        "the binding of {} was filled: {:?}",
        task.task_arn,
        ecs.filled()
    );
}

/// The local tunnel port the probe sent to, from its `http://127.0.0.1:P` endpoint.
fn local_port(uri: &str) -> u16 {
    let addr: SocketAddr = uri.strip_prefix("http://").unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback(), "{uri}");
    addr.port()
}

// ---------------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_shot_through_a_tunnel_reaches_the_first_task_s_agent_and_closes_the_session() {
    let _hold = HoldTasksRunning::new();
    let fleet = Fleet::new("ptun-single", GILBERT);
    fleet.up().await;
    // Two tasks, two agents: the tunnel must take the first task in task-id order (the default replica),
    // its instance and its host port, and reach that task's agent, not the other one.
    let placement = place(&fleet, "gilbert", 2).await;
    let ecs = EcsPassThrough::start(placement.bindings.clone()).await;
    let double = ssm_double().await;

    let cmd = fleet.probe(&ecs, &double, &["gilbert", "--via", "tunnel"]);
    let (code, doc, stderr) = probe_json(cmd).await;
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert_eq!(doc["mode"], "single", "{doc}");
    assert_eq!(doc["code"], "OK", "{doc}");
    assert_eq!((doc["requests"].as_u64(), doc["ok"].as_u64()), (Some(1), Some(1)));
    let (first, second) = (&placement.tasks[0], &placement.tasks[1]);
    let instance = doc["instance"].as_str().unwrap();
    assert!(
        first.answers_as(instance) && !second.answers_as(instance),
        "answered by {instance}; task {} has agent pid {}, task {} has {}",
        first.task_id,
        first.agent.child.id(),
        second.task_id,
        second.agent.child.id()
    );
    let label = doc["endpoints"][0]["label"].as_str().unwrap();
    assert_eq!(
        label,
        format!(
            "gilbert via tunnel (task {}, {}:{})",
            first.task_id,
            first.instance_id,
            first.agent.addr.port()
        )
    );

    let r = assert_one_session_to(&double, first, local_port(doc["address"].as_str().unwrap()));
    assert_eq!(r.streams, vec![3], "one connection, one smux stream");
    assert_eq!(r.dials, 1);
    assert_resolved_through_ecs(&ecs, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_run_through_a_tunnel_shares_one_session_over_concurrent_smux_streams() {
    let _hold = HoldTasksRunning::new();
    let fleet = Fleet::new("ptun-load", GILBERT);
    fleet.up().await;
    let placement = place(&fleet, "gilbert", 1).await;
    let task = &placement.tasks[0];
    let ecs = EcsPassThrough::start(placement.bindings.clone()).await;
    let double = ssm_double().await;

    let cmd = fleet.probe(
        &ecs,
        &double,
        &[
            "gilbert",
            "--via",
            "tunnel",
            "-n",
            "300",
            "--concurrency",
            "12",
            "--connections",
            "6",
        ],
    );
    let (code, doc, stderr) = probe_json(cmd).await;
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert_eq!(doc["mode"], "closed_loop", "{doc}");
    assert_eq!(doc["concurrency"], 12);
    assert_eq!(doc["connections"], 6);
    assert_eq!(
        (doc["requests"].as_u64(), doc["ok"].as_u64()),
        (Some(300), Some(300)),
        "{doc}"
    );
    assert_eq!(doc["errors"], serde_json::json!({}));
    let instances = doc["instances"].as_object().unwrap();
    assert_eq!(instances.len(), 1, "{doc}");
    let (instance, answered) = instances.iter().next().unwrap();
    assert!(task.answers_as(instance), "{instance}");
    assert_eq!(answered, 300);

    let endpoints = doc["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "one tunnel: {doc}");
    let r = assert_one_session_to(&double, task, local_port(endpoints[0]["uri"].as_str().unwrap()));
    // Six HTTP/2 connections, each a TCP connection to the tunnel: six smux streams of the one session,
    // all open at once (the probe connects them all before the first request), each dialling the agent.
    let mut streams = r.streams.clone();
    streams.sort_unstable();
    assert_eq!(streams, vec![3, 5, 7, 9, 11, 13]);
    assert_eq!(r.max_open_streams, 6);
    assert_eq!(r.dials, 6);
    assert_resolved_through_ecs(&ecs, task);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_auto_without_an_alb_takes_the_tunnel() {
    let _hold = HoldTasksRunning::new();
    let fleet = Fleet::new("ptun-auto", GILBERT);
    fleet.up().await;
    let placement = place(&fleet, "gilbert", 1).await;
    let task = &placement.tasks[0];
    let ecs = EcsPassThrough::start(placement.bindings.clone()).await;
    let double = ssm_double().await;

    // The human output this time.
    let mut cmd = fleet.probe(&ecs, &double, &["gilbert", "--via", "auto"]);
    let out = blocking(move || cmd.output().unwrap()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .unwrap_or_else(|| panic!("no `{name}` line: {stdout}"))
            .to_string()
    };
    assert_eq!(field("status"), "OK", "{stdout}");
    assert!(task.answers_as(&field("instance")), "{stdout}");
    assert_one_session_to(&double, task, local_port(&field("address")));
    assert_resolved_through_ecs(&ecs, task);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_thespian_and_a_service_without_a_running_task_are_clear_errors() {
    let fleet = Fleet::new("ptun-errors", GILBERT_YORICK);
    fleet.up().await;
    // The cluster has its instances, but no task was placed.
    let placement = place(&fleet, "yorick", 0).await;
    let ecs = EcsPassThrough::start(placement.bindings).await;
    let double = ssm_double().await;

    let mut cmd = fleet.probe(&ecs, &double, &["gilbret", "--via", "tunnel"]);
    let out = blocking(move || cmd.output().unwrap()).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "no thespian `gilbret` in fleet `{}` on AWS; deployed: ",
            fleet.name
        )) && stderr.contains("gilbert")
            && stderr.contains("yorick"),
        "{stderr}"
    );
    assert!(
        ecs.operations().is_empty(),
        "an unknown name stops at the stacks: {:?}",
        ecs.operations()
    );

    let mut cmd = fleet.probe(&ecs, &double, &["yorick", "--via", "tunnel"]);
    let out = blocking(move || cmd.output().unwrap()).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "no running task of yorick in ECS cluster {}",
            fleet.name
        )),
        "{stderr}"
    );
    assert_eq!(ecs.operations(), vec!["ListTasks"]);
    assert!(ecs.problems().is_empty(), "{:#?}", ecs.problems());
    assert!(
        double.records().api_calls.is_empty(),
        "no session is started for either: {:?}",
        double.records().api_calls
    );
}

#[test]
fn the_gap_fill_adds_only_the_missing_binding_of_a_running_task_of_ours() {
    let binding = Binding {
        container: "gilbert".into(),
        container_port: 6379,
        host_port: 41234,
    };
    let bindings = HashMap::from([("arn:task/a".to_string(), binding)]);
    let mut doc = serde_json::json!({"tasks": [
        {"taskArn": "arn:task/a", "lastStatus": "RUNNING", "containers": [{"name": "gilbert"}]},
        {"taskArn": "arn:task/b", "lastStatus": "RUNNING", "containers": [{"name": "gilbert"}]},
    ], "failures": []});
    let filled = fill_network_bindings(&mut doc, &bindings);
    assert_eq!(filled, vec![Ok("arn:task/a".to_string())]);
    assert_eq!(
        doc["tasks"][0]["containers"][0]["networkBindings"],
        serde_json::json!([{"bindIP": "0.0.0.0", "containerPort": 6379, "hostPort": 41234, "protocol": "tcp"}])
    );
    assert!(
        doc["tasks"][1]["containers"][0].get("networkBindings").is_none(),
        "not ours"
    );

    let mut pending = serde_json::json!({"tasks": [
        {"taskArn": "arn:task/a", "lastStatus": "PENDING", "containers": [{"name": "gilbert"}]}]});
    assert!(fill_network_bindings(&mut pending, &bindings).is_empty());
    assert!(
        pending["tasks"][0]["containers"][0]
            .get("networkBindings")
            .is_none()
    );

    // Should moto ever report bindings itself, the test says so instead of overwriting them.
    let mut reported = serde_json::json!({"tasks": [
        {"taskArn": "arn:task/a", "lastStatus": "RUNNING", "containers": [
            {"name": "gilbert", "networkBindings": [{"hostPort": 32768}]}]}]});
    let filled = fill_network_bindings(&mut reported, &bindings);
    assert!(
        matches!(&filled[..], [Err(e)] if e.contains("obsolete")),
        "{filled:?}"
    );
    assert_eq!(
        reported["tasks"][0]["containers"][0]["networkBindings"][0]["hostPort"],
        32768
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_a_load_run_prints_the_partial_results_and_still_closes_the_session() {
    let _hold = HoldTasksRunning::new();
    let fleet = Fleet::new("ptun-ctrlc", GILBERT);
    fleet.up().await;
    let placement = place(&fleet, "gilbert", 1).await;
    let task = &placement.tasks[0];
    let ecs = EcsPassThrough::start(placement.bindings.clone()).await;
    let double = ssm_double().await;

    let mut cmd = fleet.probe(
        &ecs,
        &double,
        &[
            "gilbert",
            "--via",
            "tunnel",
            "--duration",
            "60s",
            "-c",
            "4",
            "-o",
            "json",
        ],
    );
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut child = support::KillOnDrop(child);
    // Readiness: requests flowing through the session (a few hundred client messages acknowledged by
    // the agent side, far more than setting up the connections takes).
    double
        .wait_for("requests through the session", Duration::from_secs(30), |r| {
            r.acks_sent > 300
        })
        .await;
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGINT).unwrap();
    let out = blocking(move || {
        let status = support::wait_timeout(&mut child.0, Duration::from_secs(20)).expect("exit after Ctrl-C");
        let (mut stdout, mut stderr) = (String::new(), String::new());
        child
            .0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        child
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stdout, stderr)
    })
    .await;
    let (status, stdout, stderr) = out;
    assert_eq!(status.code(), Some(130), "{stdout}\n{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(doc["interrupted"], true, "{doc}");
    let requests = doc["requests"].as_u64().unwrap();
    assert!(requests > 0, "{doc}");
    // In-flight requests are abandoned, not counted: closing the tunnel must not show up as failures.
    assert_eq!(doc["ok"].as_u64(), Some(requests), "{doc}");
    let instances = doc["instances"].as_object().unwrap();
    assert!(instances.keys().all(|i| task.answers_as(i)), "{doc}");
    let uri = doc["endpoints"][0]["uri"].as_str().unwrap();
    assert_one_session_to(&double, task, local_port(uri));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_agent_does_not_answer_fails_the_probe_and_the_session_is_still_closed() {
    let _hold = HoldTasksRunning::new();
    let fleet = Fleet::new("ptun-dead", GILBERT);
    fleet.up().await;
    let mut placement = place(&fleet, "gilbert", 1).await;
    let ecs = EcsPassThrough::start(placement.bindings.clone()).await;
    let double = ssm_double().await;
    // The task is RUNNING in ECS, but nothing listens on its host port any more.
    let task = &mut placement.tasks[0];
    task.agent.child.kill().unwrap();
    task.agent.child.wait().unwrap();
    let task = &placement.tasks[0];

    let cmd = fleet.probe(&ecs, &double, &["gilbert", "--via", "tunnel", "--timeout", "2s"]);
    let (code, doc, stderr) = probe_json(cmd).await;
    assert!(code == 1 || code == 2, "exit {code}: {doc}\n{stderr}");
    assert_ne!(doc["code"], "OK", "{doc}");
    assert_eq!(doc["ok"], 0, "{doc}");
    assert!(doc["instance"].is_null(), "nobody answered: {doc}");
    let r = assert_one_session_to(&double, task, local_port(doc["address"].as_str().unwrap()));
    // Once per connection attempt: the probe re-connects a request that never reached a server until its
    // deadline, so how many attempts fit depends on when the broken stream is noticed.
    assert!(
        r.dials >= 1,
        "the agent side tried the host port: {doc}\n{stderr}"
    );
}
