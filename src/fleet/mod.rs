//! The fleet manifest (`thespian.yaml`): parsing, validation, the call graph, and compilation of each
//! thespian's behaviour into the agent's existing JSON format.
//!
//! Nothing here knows about processes or AWS: targets consume the [`Plan`] this module produces.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cli::TargetKind;

/// What every target deploys: the validated, compiled fleet.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The fleet name (a DNS label): stack, cluster and namespace names derive from it.
    pub fleet: String,
    /// Where the manifest was read from; local state lives in `.thespctl/` beside it.
    pub manifest_path: PathBuf,
    /// `target:` from the manifest, if any (the `--target` flag wins).
    pub target: Option<TargetKind>,
    /// Sorted by name.
    pub thespians: Vec<ThespianPlan>,
    /// The manifest's `aws:` section (ignored by the local target).
    pub aws: Option<AwsSettings>,
}

/// One thespian, ready to deploy.
#[derive(Debug, Clone, Serialize)]
pub struct ThespianPlan {
    pub name: String,
    pub replicas: u32,
    /// The agent's `CONFIG_JSON`: the existing Thespian format, serialised canonically (stable key order,
    /// no whitespace) so that it changes only when the behaviour does.
    pub config_json: String,
    /// Hex SHA-256 of `config_json`: how targets tell a changed thespian from an unchanged one.
    pub config_hash: String,
    /// The thespians this one calls, by name, sorted and deduplicated.
    pub callees: Vec<String>,
}

/// Enough of a manifest to find a deployed fleet (`status`, `down`, `logs`, `probe`), read leniently so a
/// manifest that no longer validates can still be torn down.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRef {
    pub fleet: String,
    pub manifest_path: PathBuf,
    pub target: Option<TargetKind>,
    pub aws: Option<AwsSettings>,
}

/// The manifest's `aws:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// AWS region (the `--region` flag wins).
    pub region: Option<String>,
    /// Container image of the agent, e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com/thespian-agent:1`.
    pub image: Option<String>,
    /// EC2 instance type of the ECS capacity (default `t3.small`).
    pub instance_type: Option<String>,
    /// Number of EC2 instances in the cluster (default 2, one per AZ).
    pub instances: Option<u32>,
    /// OTLP endpoint the agents export traces to (sets `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp_endpoint: Option<String>,
    /// An internet-facing HTTPS load balancer in front of the fleet (optional).
    pub alb: Option<AlbSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlbSettings {
    /// ACM certificate for the HTTPS listener.
    pub certificate_arn: String,
    /// The only address allowed through the ALB's security group (as `IP/32`).
    pub developer_ip: String,
    /// Parent domain: each thespian gets `NAME.DOMAIN`.
    pub domain: String,
    /// Route 53 hosted zone of `domain`.
    pub hosted_zone_id: String,
}

/// A manifest that cannot be used, with where and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("could not read the manifest {}: {source}; pass -f/--file PATH or run from the fleet's directory", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
