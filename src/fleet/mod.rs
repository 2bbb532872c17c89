//! The fleet manifest (`thespian.yaml`): parsing, validation, the call graph, and compilation of each
//! thespian's behaviour into the agent's existing JSON format.
//!
//! Nothing here knows about processes or AWS: targets consume the [`Plan`] this module produces.
//!
//! - [`load_plan`]: read + validate + compile (`up`, `plan`, the AWS target).
//! - [`load_ref`]: the fleet name, target and `aws:` only, read leniently (`down`, `status`, `logs`, `probe`).
//! - [`load_manifest`]: the validated [`Manifest`] (`graph`); [`check`]: every problem, for `validate`.
//!
//! The format is documented for users in `docs/manifest.md`.

mod agent_config;
mod config_file;
mod diag;
pub mod graph;
mod manifest;
mod syntax;
mod validate;
mod yaml;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli::TargetKind;

pub use agent_config::GrpcMethod;
pub use diag::Diagnostic;
pub use manifest::{
    Checked, ExternalCall, MAX_FLEET_NAME, MAX_REPLICAS, MAX_THESPIAN_NAME, Manifest, Source, Thespian,
};
pub use syntax::CallSite;

/// Reads, validates and compiles the manifest at `path`: what `up` deploys.
pub fn load_plan(path: &Path) -> Result<Plan, ManifestError> {
    Ok(load_manifest(path)?.plan())
}

/// Reads and validates the manifest at `path`; any error makes it [`ManifestError::Invalid`] with every
/// problem found.
pub fn load_manifest(path: &Path) -> Result<Manifest, ManifestError> {
    let checked = check(path)?;
    match checked.manifest {
        Some(manifest) => Ok(manifest),
        None => Err(ManifestError::Invalid {
            path: checked.path,
            errors: checked.errors,
        }),
    }
}

/// Reads the manifest at `path` and reports every problem (errors and warnings) instead of failing on
/// them; fails only when the file cannot be read. `validate` renders this.
pub fn check(path: &Path) -> Result<Checked, ManifestError> {
    let text = read(path)?;
    Ok(manifest::check(path, &text))
}

/// The fleet name, `target:` and `aws:` of the manifest at `path`, read leniently so that a manifest that
/// no longer validates can still be torn down: only `fleet:` must be present and valid; `target:` and
/// `aws:` are used when well-formed and ignored otherwise.
pub fn load_ref(path: &Path) -> Result<FleetRef, ManifestError> {
    let text = read(path)?;
    let (fleet, target, aws) = manifest::lenient(path, &text).map_err(|e| ManifestError::Invalid {
        path: path.to_path_buf(),
        errors: vec![e],
    })?;
    Ok(FleetRef {
        fleet,
        manifest_path: absolute(path),
        target,
        aws,
    })
}

fn read(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Absolute (not canonical: symlinks stay as the user named them), so targets need not care about the
/// working directory.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

impl Manifest {
    /// The deployable form: each thespian's behaviour as the agent's canonical `CONFIG_JSON`.
    pub fn plan(&self) -> Plan {
        let thespians = self
            .thespians
            .iter()
            .map(|t| {
                let config_json = t.config.to_json();
                let config_hash = sha256_hex(config_json.as_bytes());
                let mut callees: Vec<String> = t.calls.iter().map(|c| c.thespian.clone()).collect();
                callees.sort();
                callees.dedup();
                ThespianPlan {
                    name: t.name.clone(),
                    replicas: t.replicas,
                    config_json,
                    config_hash,
                    callees,
                }
            })
            .collect();
        Plan {
            fleet: self.fleet.clone(),
            manifest_path: absolute(&self.path),
            target: self.target,
            thespians,
            aws: self.aws.clone(),
            warnings: self.warnings.clone(),
        }
    }

    /// The method-level call graph.
    pub fn graph(&self) -> graph::CallGraph {
        graph::CallGraph::of(self)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest.iter() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

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
    /// Problems that do not stop the fleet from working; `up` should show them (`ui.warn`).
    pub warnings: Vec<Diagnostic>,
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
    #[error("could not read the manifest {}; pass -f/--file PATH or run from the fleet's directory", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Every problem found, each with file, line and column where known.
    #[error("{}", invalid_message(.path, .errors))]
    Invalid { path: PathBuf, errors: Vec<Diagnostic> },
}

fn invalid_message(path: &Path, errors: &[Diagnostic]) -> String {
    match errors {
        [one] => one.to_string(),
        _ => {
            let mut message = format!(
                "{} is not a valid fleet manifest ({} errors):",
                path.display(),
                errors.len()
            );
            for e in errors {
                let _ = write!(message, "\n  {e}");
            }
            message
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_plan_has_canonical_config_hashes_and_callees() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "thespian.yaml",
            "fleet: demo\nthespians:\n  yorick:\n    methods:\n      A: [{call: gilbert.A}, {call: gilbert.B}]\n  gilbert:\n    replicas: 2\n    methods: {A: [{sleep: 20ms}], B: []}\n",
        );
        let plan = load_plan(&path).unwrap();
        assert_eq!(plan.fleet, "demo");
        assert!(plan.manifest_path.is_absolute());
        let gilbert = &plan.thespians[0];
        assert_eq!((gilbert.name.as_str(), gilbert.replicas), ("gilbert", 2));
        assert_eq!(
            gilbert.config_json,
            r#"{"grpc_method_a":{"tracing_name":"gilbert.A","operations":[{"Action":{"Sleep":{"tracing_name":"sleep 20ms","duration_ms":20}}}]},"grpc_method_b":{"tracing_name":"gilbert.B","operations":[]},"grpc_method_c":null}"#
        );
        assert_eq!(gilbert.config_hash, sha256_hex(gilbert.config_json.as_bytes()));
        assert_eq!(gilbert.config_hash.len(), 64);
        assert_eq!(plan.thespians[1].callees, ["gilbert"]);

        // Reformatting the manifest changes nothing; changing behaviour changes only that thespian.
        let reformatted = write(
            dir.path(),
            "b.yaml",
            "fleet: demo\nthespians:\n  gilbert:\n    replicas: 2\n    methods:\n      B: []\n      A:\n        - sleep: 20\n  yorick:\n    methods: {A: [{call: {thespian: gilbert}}, {call: gilbert.B}]}\n",
        );
        let again = load_plan(&reformatted).unwrap();
        assert_eq!(again.thespians[0].config_hash, gilbert.config_hash);
        assert_eq!(again.thespians[1].config_hash, plan.thespians[1].config_hash);
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn invalid_manifests_list_every_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "t.yaml",
            "fleet: Bad\nthespians: {a: {replicas: 0, methods: {}}}\n",
        );
        let err = load_plan(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("is not a valid fleet manifest (2 errors):"),
            "{text}"
        );
        assert!(text.contains("t.yaml:1:8: fleet name `Bad`"), "{text}");
        assert!(
            text.contains("t.yaml:2:27: replicas must be at least 1"),
            "{text}"
        );
        let missing = load_plan(&dir.path().join("nope.yaml")).unwrap_err();
        assert!(matches!(missing, ManifestError::Read { .. }), "{missing}");
    }

    #[test]
    fn load_ref_survives_a_broken_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "t.yaml",
            "fleet: demo\ntarget: aws\nthespians: {a: {replicas: 0}}\n",
        );
        assert!(load_plan(&path).is_err());
        let r = load_ref(&path).unwrap();
        assert_eq!((r.fleet.as_str(), r.target), ("demo", Some(TargetKind::Aws)));
        assert!(r.manifest_path.is_absolute());
    }
}
