//! The manifest model and its reading: `thespian.yaml` → [`Manifest`], with every problem collected.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::agent_config::{Action, Config, ConfigExt, Function, GrpcMethod, Operation};
use super::diag::{Diagnostic, Diags, join, list};
use super::syntax::{CallSite, SERVICE_PORT, compile_methods};
use super::yaml::{self, Node, Value, quote};
use super::{AlbSettings, AwsSettings, config_file, validate};
use crate::cli::TargetKind;

/// The longest fleet name: it prefixes every stack (`FLEET-THESPIAN`, ≤ 128 characters) and names the
/// ECS cluster and Cloud Map namespace; 32 leaves room for a 63-character thespian and a suffix.
pub const MAX_FLEET_NAME: usize = 32;
/// The longest thespian name: it is a DNS label (`http://NAME`, `NAME.DOMAIN` behind the ALB).
pub const MAX_THESPIAN_NAME: usize = 63;
/// The most replicas of one thespian: more is a typo (and a laptop-melting local fleet).
pub const MAX_REPLICAS: i64 = 100;
/// The most EC2 instances `aws.instances` may ask for.
pub const MAX_INSTANCES: i64 = 20;

const TOP_KEYS: [&str; 4] = ["fleet", "target", "thespians", "aws"];
const THESPIAN_KEYS: [&str; 3] = ["replicas", "methods", "config_file"];
const AWS_KEYS: [&str; 6] = [
    "region",
    "image",
    "instance_type",
    "instances",
    "otlp_endpoint",
    "alb",
];
const ALB_KEYS: [&str; 4] = ["certificate_arn", "developer_ip", "domain", "hosted_zone_id"];

/// A valid manifest: names checked, behaviours compiled, calls resolved, no cycles.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file as the user named it.
    pub path: PathBuf,
    pub fleet: String,
    pub target: Option<TargetKind>,
    pub aws: Option<AwsSettings>,
    /// Sorted by name.
    pub thespians: Vec<Thespian>,
    /// Problems that do not stop the fleet from working (see docs/manifest.md).
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone)]
pub struct Thespian {
    pub name: String,
    pub replicas: u32,
    pub source: Source,
    /// The compiled behaviour (what the agent gets as `CONFIG_JSON`).
    pub config: Config,
    /// Calls to thespians of this fleet, in document order.
    pub calls: Vec<CallSite>,
    /// Calls to anything else (config files only).
    pub external_calls: Vec<ExternalCall>,
}

impl Thespian {
    /// The methods with a behaviour (not `null`).
    pub fn defined_methods(&self) -> Vec<GrpcMethod> {
        GrpcMethod::ALL
            .into_iter()
            .filter(|m| self.config.method(*m).is_some())
            .collect()
    }
}

/// Where a thespian's behaviour comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum Source {
    /// The manifest's `methods:` syntax.
    Methods,
    /// An existing-format JSON config (the path as resolved against the manifest's directory).
    ConfigFile(PathBuf),
}

/// A call from a config file to an address outside the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalCall {
    pub from: GrpcMethod,
    pub address: String,
    pub port: u16,
    pub method: GrpcMethod,
}

/// The outcome of reading a manifest: the manifest when valid, and every problem found.
#[derive(Debug)]
pub struct Checked {
    pub path: PathBuf,
    /// The fleet name, when it could be read (even from an otherwise invalid manifest).
    pub fleet: Option<String>,
    pub manifest: Option<Manifest>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

/// A thespian as far as it could be read: validation still knows its name and declared methods when its
/// body is broken, so callers of a broken thespian do not also get "unknown thespian", and calls out of
/// a broken thespian are still checked.
#[derive(Debug)]
pub(super) struct Draft {
    pub name: String,
    pub pos: yaml::Pos,
    pub replicas: Option<u32>,
    /// `None` when the behaviour did not compile.
    pub behaviour: Option<Behaviour>,
}

#[derive(Debug)]
pub(super) struct Behaviour {
    pub source: Source,
    /// Deployable only when the manifest has no errors at all.
    pub config: Config,
    pub calls: Vec<CallSite>,
    pub external_calls: Vec<ExternalCall>,
    /// The methods with a behaviour (even a broken one): what callers may call.
    pub declared: Vec<GrpcMethod>,
}

/// Reads the manifest text (`path` is used for messages and to resolve `config_file:`).
pub fn check(path: &Path, text: &str) -> Checked {
    let mut diags = Diags::new(path);
    let mut checked = Checked {
        path: path.to_path_buf(),
        fleet: None,
        manifest: None,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let doc = match yaml::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            diags.error(e.pos, "", format!("invalid YAML: {}", e.message));
            checked.errors = diags.errors;
            return checked;
        }
    };
    let Some(top) = top_level(&doc, &mut diags) else {
        checked.errors = diags.errors;
        return checked;
    };

    let fleet = match top.get("fleet") {
        Some(node) => fleet_name(node, &mut diags),
        None => {
            diags.error(
                doc.pos,
                "",
                "the manifest has no `fleet:`; add `fleet: NAME` (lowercase letters, digits, hyphens) on its \
                 first line",
            );
            None
        }
    };
    let target = top.get("target").and_then(|node| target(node, &mut diags));
    let aws = top.get("aws").and_then(|node| aws_settings(node, &mut diags));
    let mut drafts = match top.get("thespians") {
        Some(node) => thespians(node, path, &mut diags),
        None => {
            diags.error(
                doc.pos,
                "",
                "the manifest has no `thespians:`; add at least one thespian (see examples/gilbert-yorick)",
            );
            Vec::new()
        }
    };
    validate::fleet(&mut drafts, &mut diags);

    checked.fleet = fleet.clone();
    if !diags.has_errors()
        && let Some(fleet) = fleet
    {
        let thespians = drafts
            .into_iter()
            .filter_map(|d| {
                let b = d.behaviour?;
                Some(Thespian {
                    name: d.name,
                    replicas: d.replicas?,
                    source: b.source,
                    config: b.config,
                    calls: b.calls,
                    external_calls: b.external_calls,
                })
            })
            .collect();
        checked.manifest = Some(Manifest {
            path: path.to_path_buf(),
            fleet,
            target,
            aws,
            thespians,
            warnings: Vec::new(),
        });
    }
    let manifest_path = path.to_path_buf();
    let order = |d: &Diagnostic| {
        (
            d.path != manifest_path,
            d.path.clone(),
            d.line.unwrap_or(u32::MAX),
            d.column.unwrap_or(u32::MAX),
        )
    };
    diags.errors.sort_by_key(order);
    diags.warnings.sort_by_key(order);
    if let Some(m) = &mut checked.manifest {
        m.warnings = diags.warnings.clone();
    }
    checked.errors = diags.errors;
    checked.warnings = diags.warnings;
    checked
}

/// What `down`/`status` need, read leniently: `fleet:` must be there and valid; `target:` and `aws:` are
/// taken when well-formed and ignored otherwise. Everything else may be broken.
pub fn lenient(
    path: &Path,
    text: &str,
) -> Result<(String, Option<TargetKind>, Option<AwsSettings>), Diagnostic> {
    let mut diags = Diags::new(path);
    let first_error = |diags: Diags| {
        diags.errors.into_iter().next().unwrap_or_else(|| Diagnostic {
            path: path.to_path_buf(),
            line: None,
            column: None,
            at: String::new(),
            message: "the manifest names no fleet".to_owned(),
        })
    };
    let doc = match yaml::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            diags.error(e.pos, "", format!("invalid YAML: {}", e.message));
            return Err(first_error(diags));
        }
    };
    let fleet = match doc.get("fleet") {
        Some(node) => fleet_name(node, &mut diags),
        None => {
            diags.error(doc.pos, "", "the manifest has no `fleet:`; add `fleet: NAME`");
            None
        }
    };
    let Some(fleet) = fleet else {
        return Err(first_error(diags));
    };
    let mut ignored = Diags::new(path);
    let target = doc.get("target").and_then(|node| target(node, &mut ignored));
    let aws = doc.get("aws").and_then(|node| aws_settings(node, &mut ignored));
    Ok((fleet, target, aws))
}

fn top_level<'n>(doc: &'n Node, diags: &mut Diags) -> Option<super::diag::Fields<'n>> {
    if doc.is_null() {
        diags.error(
            None,
            "",
            "the manifest is empty; it needs `fleet: NAME` and `thespians:` (see examples/gilbert-yorick)",
        );
        return None;
    }
    diags.mapping(doc, "", "the manifest", &TOP_KEYS)
}

/// Why `name` cannot name a fleet or thespian, if it cannot.
pub fn name_problem(name: &str, max: usize) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".to_owned());
    }
    if name.len() > max {
        return Some(format!(
            "it is {} characters long; the limit is {max}",
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some("it must start with a lowercase letter".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!(
            "`{}` is not allowed: use lowercase letters, digits and hyphens",
            bad.escape_debug()
        ));
    }
    if name.ends_with('-') {
        return Some("it must not end with a hyphen".to_owned());
    }
    None
}

/// A valid name close to `name` (lowercased, other characters turned into hyphens), if there is one.
fn fixed_name(name: &str, max: usize) -> Option<String> {
    let mut fixed = String::new();
    for c in name.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            fixed.push(c);
        } else if !fixed.is_empty() && !fixed.ends_with('-') {
            fixed.push('-');
        }
    }
    let fixed = fixed.trim_start_matches(|c: char| !c.is_ascii_lowercase());
    let mut fixed: String = fixed.chars().take(max).collect();
    while fixed.ends_with('-') {
        fixed.pop();
    }
    (name_problem(&fixed, max).is_none() && fixed != name).then_some(fixed)
}

fn name_message(what: &str, name: &str, max: usize, why: &str) -> String {
    let mut message = format!("{what} name `{}` is not valid: {why}", quote(name));
    if let Some(fixed) = fixed_name(name, max) {
        message.push_str(&format!("; try `{fixed}`"));
    }
    message
}

fn fleet_name(node: &Node, diags: &mut Diags) -> Option<String> {
    let Some(name) = node.as_str() else {
        diags.error(
            node.pos,
            "fleet",
            format!(
                "fleet must be a name (lowercase letters, digits, hyphens), found {}",
                node.kind()
            ),
        );
        return None;
    };
    if let Some(why) = name_problem(name, MAX_FLEET_NAME) {
        let why = format!(
            "{why} (the fleet name becomes CloudFormation stack, ECS cluster and Cloud Map namespace names: \
             1-{MAX_FLEET_NAME} lowercase letters, digits and hyphens, starting with a letter)"
        );
        diags.error(
            node.pos,
            "fleet",
            name_message("fleet", name, MAX_FLEET_NAME, &why),
        );
        return None;
    }
    Some(name.to_owned())
}

fn target(node: &Node, diags: &mut Diags) -> Option<TargetKind> {
    match node.as_str() {
        Some("local") => Some(TargetKind::Local),
        Some("aws") => Some(TargetKind::Aws),
        _ => {
            let shown = node
                .as_str()
                .map_or_else(|| node.kind().to_owned(), |s| format!("`{}`", quote(s)));
            diags.error(
                node.pos,
                "target",
                format!("target must be `local` or `aws`, found {shown}"),
            );
            None
        }
    }
}

fn thespians(node: &Node, manifest: &Path, diags: &mut Diags) -> Vec<Draft> {
    let Some(entries) = node.as_map() else {
        diags.error(
            node.pos,
            "thespians",
            format!(
                "thespians must be a mapping of thespian name to its definition, found {}",
                node.kind()
            ),
        );
        return Vec::new();
    };
    if entries.is_empty() {
        diags.error(
            node.pos,
            "thespians",
            "the fleet has no thespians; add at least one under `thespians:`",
        );
    }
    let mut drafts: BTreeMap<String, Draft> = BTreeMap::new();
    for (key, body) in entries {
        let at = join("thespians", &key.name);
        if let Some(why) = name_problem(&key.name, MAX_THESPIAN_NAME) {
            let why = format!(
                "{why} (a thespian name is a DNS label, `http://NAME` inside the fleet: 1-{MAX_THESPIAN_NAME} \
                 lowercase letters, digits and hyphens, starting with a letter)"
            );
            diags.error(
                key.pos,
                &at,
                name_message("thespian", &key.name, MAX_THESPIAN_NAME, &why),
            );
        }
        let (replicas, behaviour) = thespian(&key.name, key.pos, body, &at, manifest, diags);
        drafts.insert(
            key.name.clone(),
            Draft {
                name: key.name.clone(),
                pos: key.pos,
                replicas,
                behaviour,
            },
        );
    }
    drafts.into_values().collect()
}

fn thespian(
    name: &str,
    key_pos: yaml::Pos,
    body: &Node,
    at: &str,
    manifest: &Path,
    diags: &mut Diags,
) -> (Option<u32>, Option<Behaviour>) {
    if body.is_null() {
        diags.error(
            key_pos,
            at,
            format!(
                "thespian `{name}` has no definition; give it `methods:` (see docs/manifest.md) or \
                 `config_file: PATH`"
            ),
        );
        return (None, None);
    }
    let what = format!("thespian `{name}`");
    let Some(fields) = diags.mapping(body, at, &what, &THESPIAN_KEYS) else {
        return (None, None);
    };
    let replicas = match fields.get("replicas") {
        None => Some(1),
        Some(node) => match node.value {
            Value::Int(n) if (1..=MAX_REPLICAS).contains(&n) => u32::try_from(n).ok(),
            Value::Int(0) => {
                diags.error(
                    node.pos,
                    &join(at, "replicas"),
                    "replicas must be at least 1; to stop a thespian, remove it from the manifest",
                );
                None
            }
            _ => {
                diags.error(
                    node.pos,
                    &join(at, "replicas"),
                    format!("replicas must be a whole number from 1 to {MAX_REPLICAS}"),
                );
                None
            }
        },
    };
    let behaviour = match (fields.get("methods"), fields.get("config_file")) {
        (Some(methods), None) => {
            compile_methods(name, methods, &join(at, "methods"), diags).map(|compiled| Behaviour {
                source: Source::Methods,
                config: compiled.config,
                calls: compiled.calls,
                external_calls: Vec::new(),
                declared: compiled.declared,
            })
        }
        (None, Some(file)) => config_file_behaviour(file, &join(at, "config_file"), manifest, diags),
        (Some(_), Some(_)) => {
            let key = fields.key("config_file").map_or(body.pos, |k| k.pos);
            diags.error(
                key,
                at,
                format!("thespian `{name}` has both `methods:` and `config_file:`; keep one of them"),
            );
            None
        }
        (None, None) => {
            diags.error(
                body.pos,
                at,
                format!(
                    "thespian `{name}` has no behaviour; add `methods:` (e.g. `methods: {{A: [{{sleep: 10ms}}]}}`) \
                     or `config_file: PATH`"
                ),
            );
            None
        }
    };
    (replicas, behaviour)
}

fn config_file_behaviour(node: &Node, at: &str, manifest: &Path, diags: &mut Diags) -> Option<Behaviour> {
    let Some(relative) = node.as_str().filter(|s| !s.trim().is_empty()) else {
        diags.error(
            node.pos,
            at,
            format!(
                "config_file must be the path of a JSON config (relative to the manifest), found {}",
                node.kind()
            ),
        );
        return None;
    };
    let path = manifest.parent().unwrap_or(Path::new("")).join(relative);
    if !path.is_file() {
        diags.error(
            node.pos,
            at,
            format!(
                "config_file `{}` not found (looked for {}); paths are relative to the manifest's directory",
                quote(relative),
                path.display()
            ),
        );
        return None;
    }
    let mut file_diags = Diags::new(&path);
    let config = config_file::load(&path, &mut file_diags);
    diags.absorb(file_diags);
    let config = config?;
    let (calls, external_calls) = config_calls(&config, &path);
    let declared = GrpcMethod::ALL
        .into_iter()
        .filter(|m| config.method(*m).is_some())
        .collect();
    Some(Behaviour {
        source: Source::ConfigFile(path),
        config,
        calls,
        external_calls,
        declared,
    })
}

/// The calls of an existing-format config: `http://NAME` (or `NAME`) on port 80 is a call to thespian
/// NAME (the Service Connect alias thespctl itself generates); any other address is external.
fn config_calls(config: &Config, file: &Path) -> (Vec<CallSite>, Vec<ExternalCall>) {
    let mut calls = Vec::new();
    let mut external = Vec::new();
    for from in GrpcMethod::ALL {
        if let Some(function) = config.method(from) {
            let at = Config::key(from).to_owned();
            walk_function(function, &at, &mut |call, at| {
                let service = &call.service_address;
                let host = service
                    .strip_prefix("http://")
                    .unwrap_or(service)
                    .trim_end_matches('/');
                if call.service_port == SERVICE_PORT && name_problem(host, MAX_THESPIAN_NAME).is_none() {
                    calls.push(CallSite {
                        from,
                        thespian: host.to_owned(),
                        method: call.grpc_method,
                        file: file.to_path_buf(),
                        pos: None,
                        at: at.to_owned(),
                    });
                } else {
                    external.push(ExternalCall {
                        from,
                        address: service.clone(),
                        port: call.service_port,
                        method: call.grpc_method,
                    });
                }
            });
        }
    }
    (calls, external)
}

fn walk_function(
    function: &Function,
    at: &str,
    visit: &mut dyn FnMut(&super::agent_config::CallService, &str),
) {
    for (i, op) in function.operations.iter().enumerate() {
        match op {
            Operation::Action(action) => walk_action(action, &format!("{at}.operations[{i}].Action"), visit),
            Operation::ConcurrentActions(actions) => {
                for (j, action) in actions.iter().enumerate() {
                    walk_action(
                        action,
                        &format!("{at}.operations[{i}].ConcurrentActions[{j}]"),
                        visit,
                    );
                }
            }
        }
    }
}

fn walk_action(action: &Action, at: &str, visit: &mut dyn FnMut(&super::agent_config::CallService, &str)) {
    match action {
        Action::Sleep(_) => {}
        Action::Function(f) => walk_function(f, &format!("{at}.Function"), visit),
        Action::CallService(call) => visit(call, &format!("{at}.CallService")),
    }
}

/// The `aws:` section. Well-formed fields are kept even when others are not (the lenient reader uses
/// what it can); `alb` only when all of it is valid.
fn aws_settings(node: &Node, diags: &mut Diags) -> Option<AwsSettings> {
    // `aws:` with everything under it commented out means "no settings", not a mistake.
    if node.is_null() {
        return None;
    }
    let fields = diags.mapping(node, "aws", "the aws section", &AWS_KEYS)?;
    let mut aws = AwsSettings::default();
    let text = |key: &str, what: &str, check: &dyn Fn(&str) -> bool, diags: &mut Diags| -> Option<String> {
        let node = fields.get(key)?;
        let at = join("aws", key);
        match node.as_str() {
            Some(s) if check(s) => Some(s.to_owned()),
            Some(s) => {
                diags.error(
                    node.pos,
                    &at,
                    format!("aws.{key} `{}` is not valid: {what}", quote(s)),
                );
                None
            }
            None => {
                diags.error(node.pos, &at, format!("aws.{key} must be a string: {what}"));
                None
            }
        }
    };
    aws.region = text(
        "region",
        "expected an AWS region such as `eu-west-1`",
        &is_region,
        diags,
    );
    aws.image = text(
        "image",
        "expected a container image reference such as \
         `123456789012.dkr.ecr.eu-west-1.amazonaws.com/thespian-agent:1`",
        &|s| !s.is_empty() && !s.chars().any(char::is_whitespace),
        diags,
    );
    aws.instance_type = text(
        "instance_type",
        "expected an EC2 instance type such as `t3.small`",
        &is_instance_type,
        diags,
    );
    aws.otlp_endpoint = text(
        "otlp_endpoint",
        "expected an http:// or https:// URL such as `http://collector:4317`",
        &|s| (s.starts_with("http://") || s.starts_with("https://")) && !s.chars().any(char::is_whitespace),
        diags,
    );
    if let Some(node) = fields.get("instances") {
        match node.value {
            Value::Int(n) if (1..=MAX_INSTANCES).contains(&n) => aws.instances = u32::try_from(n).ok(),
            _ => diags.error(
                node.pos,
                "aws.instances",
                format!("aws.instances must be a whole number from 1 to {MAX_INSTANCES} (EC2 instances in the cluster)"),
            ),
        }
    }
    if let Some(node) = fields.get("alb") {
        aws.alb = alb_settings(node, diags);
    }
    Some(aws)
}

fn alb_settings(node: &Node, diags: &mut Diags) -> Option<AlbSettings> {
    let fields = diags.mapping(node, "aws.alb", "aws.alb", &ALB_KEYS)?;
    let errors = diags.errors.len();
    let missing: Vec<&str> = ALB_KEYS
        .iter()
        .copied()
        .filter(|k| fields.get(k).is_none())
        .collect();
    if !missing.is_empty() {
        diags.error(
            node.pos,
            "aws.alb",
            format!(
                "aws.alb is missing {}; an HTTPS load balancer needs all of {}",
                list(&missing),
                list(&ALB_KEYS)
            ),
        );
    }
    let mut get = |key: &str, what: &str, check: &dyn Fn(&str) -> Result<(), String>| -> String {
        let Some(node) = fields.get(key) else {
            return String::new();
        };
        let at = join("aws.alb", key);
        match node.as_str() {
            Some(s) => match check(s) {
                Ok(()) => return s.to_owned(),
                Err(why) => diags.error(
                    node.pos,
                    &at,
                    format!("aws.alb.{key} `{}` is not valid: {why}", quote(s)),
                ),
            },
            None => diags.error(node.pos, &at, format!("aws.alb.{key} must be a string: {what}")),
        }
        String::new()
    };
    let alb = AlbSettings {
        certificate_arn: get("certificate_arn", "an ACM certificate ARN", &|s| {
            if s.starts_with("arn:") && s.contains(":acm:") && s.contains(":certificate/") {
                Ok(())
            } else {
                Err("expected an ACM certificate ARN (arn:aws:acm:REGION:ACCOUNT:certificate/ID)".to_owned())
            }
        }),
        developer_ip: get("developer_ip", "an IPv4 address", &developer_ip),
        domain: get("domain", "a DNS domain such as `thespians.example.com`", &|s| {
            if is_domain(s) {
                Ok(())
            } else {
                Err("expected a DNS domain such as `thespians.example.com`".to_owned())
            }
        }),
        hosted_zone_id: get("hosted_zone_id", "a Route 53 hosted zone id", &|s| {
            if let Some(id) = s.strip_prefix("/hostedzone/") {
                Err(format!("write the bare id `{id}`"))
            } else if s.starts_with('Z')
                && s.len() <= 32
                && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            {
                Ok(())
            } else {
                Err("expected a Route 53 hosted zone id such as `Z0123456789ABCDEFGHIJ`".to_owned())
            }
        }),
    };
    (diags.errors.len() == errors).then_some(alb)
}

fn developer_ip(s: &str) -> Result<(), String> {
    if let Some(address) = s.strip_suffix("/32")
        && address.parse::<Ipv4Addr>().is_ok()
    {
        return Err(format!(
            "write the bare address `{address}`; thespctl allows exactly it (as {s})"
        ));
    }
    match s.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => Ok(()),
        Ok(std::net::IpAddr::V6(_)) => {
            Err("the ALB rule takes an IPv4 address (e.g. 203.0.113.7)".to_owned())
        }
        Err(_) => Err("expected an IPv4 address such as 203.0.113.7 (your public address)".to_owned()),
    }
}

fn is_region(s: &str) -> bool {
    // `eu-west-1`, `us-gov-east-1`, `ap-southeast-2`: letters-…-digits.
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

fn is_instance_type(s: &str) -> bool {
    let Some((family, size)) = s.split_once('.') else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    ok(family) && ok(size)
}

fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    s.len() <= 253
        && s.split('.').count() >= 2
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        check(Path::new("t.yaml"), text)
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn names_follow_dns_label_rules_and_suggest_a_fix() {
        assert_eq!(name_problem("gilbert-2", 63), None);
        assert!(name_problem("Gilbert", 63).is_some());
        assert!(name_problem("2nd", 63).is_some());
        assert!(name_problem("a-", 63).is_some());
        assert!(name_problem("a_b", 63).unwrap().contains("`_`"));
        assert!(
            name_problem(&"a".repeat(33), MAX_FLEET_NAME)
                .unwrap()
                .contains("limit is 32")
        );
        assert_eq!(fixed_name("My_Fleet", 32).as_deref(), Some("my-fleet"));
        assert_eq!(fixed_name("-x-", 32).as_deref(), Some("x"));
        assert_eq!(fixed_name("42", 32), None);
    }

    #[test]
    fn a_good_manifest_gives_sorted_thespians_and_no_diagnostics() {
        let checked = check(
            Path::new("t.yaml"),
            "fleet: demo\ntarget: local\nthespians:\n  yorick:\n    methods:\n      A: [{call: gilbert.A}]\n  gilbert:\n    replicas: 2\n    methods: {A: [{sleep: 20ms}]}\n",
        );
        assert!(checked.errors.is_empty(), "{:?}", checked.errors);
        let m = checked.manifest.unwrap();
        assert_eq!(m.fleet, "demo");
        assert_eq!(m.target, Some(TargetKind::Local));
        let names: Vec<_> = m
            .thespians
            .iter()
            .map(|t| (t.name.as_str(), t.replicas))
            .collect();
        assert_eq!(names, [("gilbert", 2), ("yorick", 1)]);
        assert_eq!(m.thespians[1].calls[0].thespian, "gilbert");
    }

    #[test]
    fn all_top_level_problems_are_reported_at_once() {
        let e = errors("fleet: Demo_1\ntarget: gcp\nthespianz: {}\naws: {region: mars}\n");
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(
            e[0].starts_with("t.yaml:1:1: the manifest has no `thespians:`"),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("t.yaml:1:8: fleet name `Demo_1` is not valid"),
            "{}",
            e[1]
        );
        assert!(e[1].contains("try `demo-1`"), "{}", e[1]);
        assert!(
            e[2].starts_with("t.yaml:2:9: target must be `local` or `aws`, found `gcp`"),
            "{}",
            e[2]
        );
        assert!(
            e[3].starts_with(
                "t.yaml:3:1: unknown key `thespianz` in the manifest; did you mean `thespians`?"
            ),
            "{}",
            e[3]
        );
        assert!(
            e[4].starts_with("t.yaml:4:15: aws.region `mars` is not valid"),
            "{}",
            e[4]
        );
    }

    #[test]
    fn thespian_bodies_are_checked() {
        let e = errors(concat!(
            "fleet: f\n",
            "thespians:\n",
            "  a: {replicas: 0, methods: {A: []}}\n",
            "  b: {replica: 2, methods: {A: []}}\n",
            "  c: {methods: {A: []}, config_file: c.json}\n",
            "  d:\n",
            "  e: {replicas: 1000}\n",
            "  F: {methods: {A: []}}\n",
        ));
        let want = [
            "t.yaml:3:17: replicas must be at least 1",
            "t.yaml:4:7: unknown key `replica` in thespian `b`; did you mean `replicas`?",
            "t.yaml:5:25: thespian `c` has both `methods:` and `config_file:`",
            "t.yaml:6:3: thespian `d` has no definition",
            "t.yaml:7:6: thespian `e` has no behaviour",
            "t.yaml:7:17: replicas must be a whole number from 1 to 100",
            "t.yaml:8:3: thespian name `F` is not valid",
        ];
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "got: {got}\nwant: {want}…");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn aws_settings_are_validated() {
        let e = errors(concat!(
            "fleet: f\n",
            "thespians: {a: {methods: {A: []}}}\n",
            "aws:\n",
            "  region: eu-west-1\n",
            "  instance_type: t3small\n",
            "  instances: 0\n",
            "  alb:\n",
            "    certificate_arn: arn:aws:acm:eu-west-1:123456789012:certificate/abc\n",
            "    developer_ip: 2001:db8::1\n",
            "    domain: example\n",
            "    hosted_zone_id: /hostedzone/Z123\n",
        ));
        let want = [
            "t.yaml:5:18: aws.instance_type `t3small` is not valid",
            "t.yaml:6:14: aws.instances must be a whole number from 1 to 20",
            "t.yaml:9:19: aws.alb.developer_ip `2001:db8::1` is not valid: the ALB rule takes an IPv4 address",
            "t.yaml:10:13: aws.alb.domain `example` is not valid",
            "t.yaml:11:21: aws.alb.hosted_zone_id `/hostedzone/Z123` is not valid: write the bare id `Z123`",
        ];
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "got: {got}\nwant: {want}…");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
        let e =
            errors("fleet: f\nthespians: {a: {methods: {A: []}}}\naws: {alb: {developer_ip: 1.2.3.4/32}}\n");
        assert!(
            e[0].contains("is missing `certificate_arn`, `domain`, `hosted_zone_id`"),
            "{e:?}"
        );
        assert!(e[1].contains("write the bare address `1.2.3.4`"), "{e:?}");
    }

    #[test]
    fn an_empty_aws_section_is_no_settings() {
        let checked = check(
            Path::new("t.yaml"),
            "fleet: f\nthespians: {a: {methods: {A: []}}}\naws:\n",
        );
        assert!(checked.errors.is_empty(), "{:?}", checked.errors);
        assert_eq!(checked.manifest.unwrap().aws, None);
    }

    #[test]
    fn the_lenient_reader_needs_only_the_fleet_name() {
        let (fleet, target, aws) = lenient(
            Path::new("t.yaml"),
            "fleet: demo\ntarget: aws\naws: {region: eu-west-1, instances: lots}\nthespians: {broken: 1}\n",
        )
        .unwrap();
        assert_eq!(fleet, "demo");
        assert_eq!(target, Some(TargetKind::Aws));
        assert_eq!(aws.and_then(|a| a.region).as_deref(), Some("eu-west-1"));
        let (_, target, _) = lenient(Path::new("t.yaml"), "fleet: demo\ntarget: moon\n").unwrap();
        assert_eq!(target, None);
        let err = lenient(Path::new("t.yaml"), "thespians: {}\n").unwrap_err();
        assert!(err.message.contains("no `fleet:`"), "{err}");
        let err = lenient(Path::new("t.yaml"), "fleet: [x\n").unwrap_err();
        assert!(err.message.contains("invalid YAML"), "{err}");
    }
}
