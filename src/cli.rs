//! The command line: every flag's `///` comment is its `--help` text.
//!
//! Names here are public interface (scripts depend on them): add freely, rename nothing.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "thespctl",
    version,
    about = "Stand up, probe and roll out fleets of simulated gRPC microservices (Thespians)",
    long_about = "Stand up, probe and roll out fleets of simulated gRPC microservices (Thespians).\n\n\
        Runs a fleet as local processes on 127.0.0.1 (the default target) or on AWS ECS \
        (`--target aws`).\n\nExit codes: 0 success; 1 the command ran and failed (a probe gate, a \
        failed deployment); 2 bad input (manifest, flags, unknown thespian, AWS configuration); \
        130 interrupted by Ctrl-C."
)]
pub struct Cli {
    /// Fleet manifest to read [default: thespian.yaml]; also accepted after the subcommand
    #[arg(short = 'f', long = "file", value_name = "PATH", env = "THESPCTL_FILE")]
    pub file: Option<PathBuf>,

    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The manifest path in effect: `-f/--file` after the subcommand, else before it, else
    /// `thespian.yaml`. (Not a global clap flag: `logs -f` means `--follow`, as in `tail -f`.)
    #[arg(skip = PathBuf::from(DEFAULT_MANIFEST))]
    pub file: PathBuf,

    /// Where the fleet runs; overrides `target:` in the manifest [default: local]
    #[arg(long, global = true, value_enum, env = "THESPCTL_TARGET")]
    pub target: Option<TargetKind>,

    /// Output format: human-readable tables, or stable JSON for scripts
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// AWS profile to use (as in ~/.aws/config); default: the standard AWS credential chain
    #[arg(long, global = true, env = "AWS_PROFILE")]
    pub profile: Option<String>,

    /// AWS region; overrides the manifest's `aws.region` and the profile's region
    #[arg(long, global = true)]
    pub region: Option<String>,

    /// Send every AWS API call to this endpoint (e.g. a local moto server); AWS_ENDPOINT_URL and
    /// AWS_ENDPOINT_URL_<SERVICE> are honoured too
    #[arg(long, global = true)]
    pub endpoint_url: Option<String>,
}

pub const DEFAULT_MANIFEST: &str = "thespian.yaml";

impl Cli {
    /// Parses argv and settles the manifest path (see [`GlobalArgs::file`]).
    pub fn parse_args() -> Self {
        let mut cli = <Cli as Parser>::parse();
        cli.resolve_manifest_path();
        cli
    }

    pub fn resolve_manifest_path(&mut self) {
        let after = match &self.command {
            Command::Up(a) => a.manifest.file.clone(),
            Command::Plan(a) => a.manifest.file.clone(),
            Command::Status(a) => a.manifest.file.clone(),
            Command::Down(a) => a.manifest.file.clone(),
            Command::Validate(a) => a.manifest.file.clone(),
            Command::Graph(a) => a.manifest.file.clone(),
            Command::Probe(a) => a.manifest.file.clone(),
            Command::Tunnel(a) => a.manifest.file.clone(),
            Command::Logs(a) => a.file.clone(),
            Command::Templates(_) | Command::Agent => None,
        };
        if let Some(path) = after.or_else(|| self.file.clone()) {
            self.global.file = path;
        }
    }
}

/// `-f/--file` after a subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct ManifestFile {
    /// Fleet manifest to read [default: thespian.yaml]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Agents as processes on 127.0.0.1 (no cloud account needed)
    Local,
    /// CloudFormation stacks and ECS services in an AWS account
    Aws,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables and progress for people
    Table,
    /// One JSON document (or NDJSON lines for streams) with stable keys
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy the fleet (or bring it up to date with the manifest)
    Up(UpArgs),
    /// Show what `up` would change, per stack or thespian, without changing anything
    Plan(PlanArgs),
    /// Show the running fleet: replicas, addresses, health
    Status(StatusArgs),
    /// Stop the fleet and remove what `up` made
    Down(DownArgs),
    /// Show a local replica's logs
    Logs(LogsArgs),
    /// Check the manifest (names, callees, call cycles, failure chances, config files)
    Validate(ValidateArgs),
    /// Print the fleet's call graph
    Graph(GraphArgs),
    /// Send gRPC requests to a thespian and report status codes, latency and which instance answered
    Probe(ProbeArgs),
    /// Forward a local port to a thespian on ECS through AWS Session Manager (no plugin needed)
    Tunnel(TunnelArgs),
    /// Print or export the embedded CloudFormation templates
    Templates(TemplatesArgs),
    /// Run the embedded Thespian agent (configured by PORT, SERVICE_NAME, CONFIG_JSON, ...)
    #[command(hide = true)]
    Agent,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub manifest: ManifestFile,

    /// Show the plan (change sets on AWS) and exit without changing anything
    #[arg(long)]
    pub dry_run: bool,

    /// Answer yes to confirmations (deleting a stack stuck in ROLLBACK_COMPLETE, for example)
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Wait for every service's deployment to complete (AWS) [default]
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,

    /// Return once the stacks are deployed, without waiting for the ECS deployments
    #[arg(long)]
    pub no_wait: bool,

    /// Give up waiting after this long (e.g. 30m, 90s); the deployment itself carries on
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Recover a stack stuck in UPDATE_ROLLBACK_FAILED by continuing its rollback first
    #[arg(long)]
    pub continue_rollback: bool,

    /// How many service stacks to deploy at once (describe calls stay at ≤ 2 per stack per second)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
}

impl UpArgs {
    pub fn wait(&self) -> bool {
        !self.no_wait
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub manifest: ManifestFile,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub manifest: ManifestFile,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub manifest: ManifestFile,

    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// AWS: delete the service stacks but keep the environment stack (VPC, cluster, ALB)
    #[arg(long)]
    pub keep_environment: bool,

    /// Local: how long replicas get to drain after SIGTERM before they are killed
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Fleet manifest to read [default: thespian.yaml] (`-f` is --follow here)
    #[arg(long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// The thespian whose logs to show
    pub name: String,

    /// Keep printing new lines as they are written
    #[arg(long, short = 'f')]
    pub follow: bool,

    /// Only this replica (0-based); default: all replicas, each line prefixed with its replica
    #[arg(long)]
    pub replica: Option<u32>,

    /// Start with the last N lines of each log
    #[arg(long, short = 'n')]
    pub lines: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub manifest: ManifestFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// An indented tree per entry method
    Tree,
    /// Mermaid flowchart (renders in GitHub markdown)
    Mermaid,
    /// Graphviz dot
    Dot,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    #[command(flatten)]
    pub manifest: ManifestFile,

    /// Graph notation
    #[arg(long, value_enum, default_value_t = GraphFormat::Tree)]
    pub format: GraphFormat,
}

/// A method of `thespian.Thespian`, spelt as in the proto (`A`); `--method a` is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Method {
    #[value(name = "A")]
    A,
    #[value(name = "B")]
    B,
    #[value(name = "C")]
    C,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Pick the ALB when the fleet has one, else a Session Manager tunnel (AWS); direct locally
    Auto,
    /// The addresses the target reports (local processes)
    Direct,
    /// The fleet's HTTPS load balancer
    Alb,
    /// A Session Manager tunnel opened for the duration of the probe
    Tunnel,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub manifest: ManifestFile,

    /// The thespian to probe (resolved through the target); optional with --address
    #[arg(required_unless_present = "address")]
    pub name: Option<String>,

    /// Probe this HOST:PORT (any Thespian anywhere) instead of resolving NAME
    #[arg(long)]
    pub address: Vec<String>,

    /// Method to call
    #[arg(long, short = 'm', value_enum, ignore_case = true, default_value_t = Method::A)]
    pub method: Method,

    /// Per-request deadline (sent to the server as grpc-timeout and enforced by the probe too); also the
    /// connect timeout
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Load mode: send this many requests in total
    #[arg(short = 'n', long = "requests")]
    pub requests: Option<u64>,

    /// Load mode: keep sending for this long (e.g. 30s)
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Closed loop: this many requests in flight at all times
    #[arg(long, short = 'c', conflicts_with = "rate")]
    pub concurrency: Option<u32>,

    /// Open loop: start this many requests per second on a fixed schedule; latency counts from the
    /// scheduled start, so a stalled server cannot hide its stall (coordinated omission corrected)
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,

    /// HTTP/2 connections to open, spread across the resolved replicas [default: 2 per replica, at least 4]
    #[arg(long)]
    pub connections: Option<u32>,

    /// Load mode: client threads, each driving its share of the connections (like h2load -t) [default:
    /// one per CPU, at most one per connection]
    #[arg(long)]
    pub threads: Option<u32>,

    /// Open loop: at most this many requests outstanding. A request due while the cap is reached starts
    /// as soon as one finishes (its latency still counts from its due time); one whose deadline passes
    /// while it waits counts as DEADLINE_EXCEEDED. Nothing scheduled is dropped [default: 10000]
    #[arg(long, requires = "rate")]
    pub max_in_flight: Option<u32>,

    /// Gate: fail (exit 1) when more than this fraction of requests fail (0 = any error fails)
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,

    /// Gate: fail (exit 1) when the 99th-percentile latency exceeds this (e.g. 250ms)
    #[arg(long, value_parser = parse_duration)]
    pub max_p99: Option<Duration>,

    /// How to reach the thespian on AWS
    #[arg(long, value_enum, default_value_t = Via::Auto)]
    pub via: Via,
}

#[derive(Debug, Args)]
pub struct TunnelArgs {
    #[command(flatten)]
    pub manifest: ManifestFile,

    /// The thespian to reach (an ECS service of the fleet); optional with --instance
    #[arg(required_unless_present = "instance")]
    pub name: Option<String>,

    /// Local port to listen on (0 = any free port)
    #[arg(long, default_value_t = 0)]
    pub local_port: u16,

    /// Local address to listen on; anything but loopback exposes the tunnel to your network
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,

    /// Which running task of the service (0-based, in task-id order)
    #[arg(long)]
    pub replica: Option<u32>,

    /// Low-level form: the EC2 instance (or managed node) to open the session to
    #[arg(long, requires = "remote_port")]
    pub instance: Option<String>,

    /// Low-level form: the port on the instance (or on --remote-host) to forward to
    #[arg(long)]
    pub remote_port: Option<u16>,

    /// Forward to this host as seen from the instance (AWS-StartPortForwardingSessionToRemoteHost)
    #[arg(long, requires = "instance")]
    pub remote_host: Option<String>,

    /// Hand the data channel to an installed session-manager-plugin instead of the native client
    #[arg(long)]
    pub plugin: bool,

    /// ECS cluster of NAME [default: the fleet name from the manifest, as `thespctl up` names it]
    #[arg(long, conflicts_with = "instance")]
    pub cluster: Option<String>,
}

#[derive(Debug, Args)]
pub struct TemplatesArgs {
    #[command(subcommand)]
    pub command: TemplatesCommand,
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Print one template (environment or ecs_service)
    Show {
        /// Template name: `environment` or `ecs_service`
        name: String,
    },
    /// Write every template into DIR (created if missing)
    Export {
        /// Directory to write into
        dir: PathBuf,
        /// Overwrite files that already exist
        #[arg(long)]
        force: bool,
    },
}

/// Parses human durations such as `250ms`, `10s`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected a duration such as 250ms, 10s or 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn manifest_path_after_the_subcommand_wins() {
        let parse = |args: &[&str]| {
            let mut cli = Cli::try_parse_from(args).unwrap();
            cli.resolve_manifest_path();
            cli.global.file
        };
        assert_eq!(parse(&["thespctl", "status"]), PathBuf::from("thespian.yaml"));
        assert_eq!(
            parse(&["thespctl", "-f", "a.yaml", "status"]),
            PathBuf::from("a.yaml")
        );
        assert_eq!(
            parse(&["thespctl", "-f", "a.yaml", "up", "-f", "b.yaml"]),
            PathBuf::from("b.yaml")
        );
        assert_eq!(
            parse(&["thespctl", "logs", "gilbert", "-f", "--file", "c.yaml"]),
            PathBuf::from("c.yaml")
        );
    }

    #[test]
    fn durations_parse_and_errors_say_what_is_expected() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        let err = parse_duration("ten").unwrap_err();
        assert!(err.contains("expected a duration"), "{err}");
    }
}
