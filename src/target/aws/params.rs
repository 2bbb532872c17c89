//! From a [`Plan`] to what CloudFormation gets: stack names, tags and template parameters, following
//! the contract with the templates (`templates/environment.yaml`, `templates/ecs_service.yaml`).

use std::collections::{BTreeMap, BTreeSet};

use super::cfn::{ENV_THESPIAN, StackInfo, StackSpec, TAG_FLEET, TAG_THESPIAN};
use super::error::AwsError;
use super::templates::{
    ENVIRONMENT, EnvironmentAlb, EnvironmentOutputs, EnvironmentParams, PARAMETER_VALUE_MAX_BYTES,
    Parameters, ServiceParams, environment,
};
use crate::fleet::{AwsSettings, Plan, ThespianPlan};

/// CloudFormation's limit on one parameter value, in bytes.
pub const PARAMETER_LIMIT: usize = PARAMETER_VALUE_MAX_BYTES;
/// CloudFormation's limit on an inline `TemplateBody`, in bytes.
pub const TEMPLATE_BODY_LIMIT: usize = 51_200;

/// The environment stack: the fleet name.
pub fn env_stack_name(fleet: &str) -> String {
    fleet.to_string()
}

/// A thespian's service stack: `FLEET-NAME`.
pub fn service_stack_name(fleet: &str, thespian: &str) -> String {
    format!("{fleet}-{thespian}")
}

/// CloudFormation stack names: a letter, then letters, digits and hyphens, at most 128 characters.
pub fn check_stack_name(name: &str) -> Result<(), AwsError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(AwsError::StackName {
            stack: name.to_string(),
        })
    }
}

pub fn tags(fleet: &str, thespian: Option<&str>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TAG_FLEET.to_string(), fleet.to_string()),
        (
            TAG_THESPIAN.to_string(),
            thespian.unwrap_or(ENV_THESPIAN).to_string(),
        ),
    ])
}

/// Checks what the AWS target needs from the manifest before anything is deployed: the `aws:` section
/// with an image, names CloudFormation accepts, behaviours small enough for a parameter.
pub fn check_plan(plan: &Plan) -> Result<&AwsSettings, AwsError> {
    let manifest = plan.manifest_path.display().to_string();
    let aws = plan.aws.as_ref().ok_or_else(|| AwsError::NoImage {
        manifest: manifest.clone(),
    })?;
    if aws.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        return Err(AwsError::NoImage { manifest });
    }
    check_stack_name(&env_stack_name(&plan.fleet))?;
    for t in &plan.thespians {
        check_stack_name(&service_stack_name(&plan.fleet, &t.name))?;
        if t.config_json.len() > PARAMETER_LIMIT {
            return Err(AwsError::ConfigTooLarge {
                thespian: t.name.clone(),
                bytes: t.config_json.len(),
                limit: PARAMETER_LIMIT,
            });
        }
    }
    Ok(aws)
}

fn to_map(parameters: Parameters) -> BTreeMap<String, String> {
    parameters.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The environment stack's parameters, through the templates' checked builder (every parameter spelt
/// out, so the stack depends only on the manifest).
pub fn env_parameters(plan: &Plan, aws: &AwsSettings) -> Result<BTreeMap<String, String>, AwsError> {
    let mut params = EnvironmentParams::new(&plan.fleet);
    if let Some(t) = &aws.instance_type {
        params.instance_type = t.clone();
    }
    if let Some(n) = aws.instances {
        params.instance_count = n;
    }
    params.alb = aws.alb.as_ref().map(|alb| EnvironmentAlb {
        certificate_arn: alb.certificate_arn.clone(),
        developer_ip: alb.developer_ip.clone(),
    });
    Ok(to_map(params.parameters()?))
}

pub fn env_spec(plan: &Plan, aws: &AwsSettings) -> Result<StackSpec, AwsError> {
    Ok(StackSpec {
        name: env_stack_name(&plan.fleet),
        thespian: None,
        template: ENVIRONMENT.body.to_string(),
        parameters: env_parameters(plan, aws)?,
        tags: tags(&plan.fleet, None),
    })
}

/// Reads the environment stack's outputs.
///
/// Against an emulator only (`custom_endpoint`: CloudFormation calls go to an overridden endpoint), a
/// stack that reports **no outputs at all** gets a warning instead of an error, and the values the
/// template contract pins: `ClusterName` is the fleet name, and `NamespaceArn` is reported as unknown
/// (`…:namespace/unknown`). This is for moto 5.2.5, which never reports the outputs of stacks deployed
/// through change sets (nor does it model Cloud Map namespaces or Service Connect). Real CloudFormation
/// always reports the declared outputs of a completed stack, so against AWS missing outputs are an error,
/// as they are with an ALB, and as a stack that reports outputs but lacks one is.
pub fn env_outputs(
    stack: &StackInfo,
    fleet: &str,
    use_alb: bool,
    custom_endpoint: bool,
) -> Result<(EnvironmentOutputs, Option<String>), AwsError> {
    if stack.outputs.is_empty() && !use_alb && custom_endpoint {
        // arn:PARTITION:cloudformation:REGION:ACCOUNT:stack/NAME/ID
        let arn: Vec<&str> = stack.id.split(':').collect();
        let (partition, region, account) = match arn.as_slice() {
            [_, partition, _, region, account, ..] => (*partition, *region, *account),
            _ => ("aws", "", ""),
        };
        let outputs = EnvironmentOutputs {
            cluster_name: fleet.to_string(),
            namespace_arn: format!("arn:{partition}:servicediscovery:{region}:{account}:namespace/unknown"),
            namespace_name: environment::namespace_name(fleet),
            vpc_id: String::new(),
            private_subnets: Vec::new(),
            instance_security_group_id: String::new(),
            alb: None,
        };
        let warning = format!(
            "the environment stack `{}` reports no outputs (moto does not report the outputs of stacks deployed \
             through change sets; AWS always does): service stacks get ClusterName={fleet} and an unknown \
             NamespaceArn, so Service Connect cannot work",
            stack.name
        );
        return Ok((outputs, Some(warning)));
    }
    let outputs = EnvironmentOutputs::from_pairs(
        &stack.name,
        stack.outputs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    Ok((outputs, None))
}

/// A service stack's parameters, through the templates' checked builder.
pub fn service_parameters(
    plan: &Plan,
    aws: &AwsSettings,
    thespian: &ThespianPlan,
    env_stack: &str,
    env: &EnvironmentOutputs,
    priority: u32,
) -> Result<BTreeMap<String, String>, AwsError> {
    let mut params = ServiceParams::new(
        env,
        &plan.fleet,
        &thespian.name,
        aws.image.clone().unwrap_or_default(),
        &thespian.config_json,
        thespian.replicas,
    );
    params.otlp_endpoint = aws.otlp_endpoint.clone();
    if let Some(alb) = &aws.alb {
        params = params.with_alb(
            env_stack,
            env,
            format!("{}.{}", thespian.name, alb.domain),
            &alb.hosted_zone_id,
            priority,
        )?;
    }
    Ok(to_map(params.parameters()?))
}

/// ALB listener rule priorities: unique per listener and stable, so adding a thespian never renumbers
/// (and briefly collides with) the others. A deployed stack keeps its priority; a new thespian gets a
/// priority derived from its name, probing upwards past any in use.
pub fn listener_priorities(thespians: &[String], deployed: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
    const MAX: u32 = 50_000;
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let mut out = BTreeMap::new();
    for name in thespians {
        if let Some(p) = deployed.get(name)
            && used.insert(*p)
        {
            out.insert(name.clone(), *p);
        }
    }
    for name in thespians {
        if out.contains_key(name) {
            continue;
        }
        let mut p = 1 + fnv1a(name) % (MAX - 1);
        while used.contains(&p) {
            p = if p >= MAX { 1 } else { p + 1 };
        }
        used.insert(p);
        out.insert(name.clone(), p);
    }
    out
}

fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fleet::AlbSettings;

    pub fn thespian(name: &str, config: &str) -> ThespianPlan {
        ThespianPlan {
            name: name.into(),
            replicas: 2,
            config_json: config.into(),
            config_hash: format!("hash-of-{config}"),
            callees: vec![],
        }
    }

    pub fn plan(fleet: &str, thespians: Vec<ThespianPlan>) -> Plan {
        Plan {
            fleet: fleet.into(),
            manifest_path: "/tmp/thespian.yaml".into(),
            target: None,
            thespians,
            warnings: vec![],
            aws: Some(AwsSettings {
                region: Some("eu-west-1".into()),
                image: Some("registry/agent:1".into()),
                ..AwsSettings::default()
            }),
        }
    }

    #[test]
    fn stack_names_and_tags() {
        assert_eq!(env_stack_name("demo"), "demo");
        assert_eq!(service_stack_name("demo", "gilbert"), "demo-gilbert");
        assert!(check_stack_name("demo-gilbert").is_ok());
        let err = check_stack_name("1demo").expect_err("starts with a digit");
        assert!(err.to_string().contains("1demo"));
        assert!(check_stack_name(&"a".repeat(129)).is_err());
        assert_eq!(tags("demo", None)["thespctl:thespian"], "-");
        assert_eq!(tags("demo", Some("gilbert"))["thespctl:fleet"], "demo");
    }

    #[test]
    fn a_behaviour_over_the_parameter_limit_is_refused_by_name() {
        let big = "x".repeat(PARAMETER_LIMIT + 1);
        let p = plan("demo", vec![thespian("gilbert", "{}"), thespian("yorick", &big)]);
        let err = check_plan(&p).expect_err("too large");
        let text = err.to_string();
        assert!(
            text.contains("`yorick`") && text.contains("4097 bytes") && text.contains("4096"),
            "{text}"
        );
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        // Exactly at the limit is fine.
        let p = plan("demo", vec![thespian("gilbert", &"x".repeat(PARAMETER_LIMIT))]);
        assert!(check_plan(&p).is_ok());
    }

    #[test]
    fn an_image_is_required() {
        let mut p = plan("demo", vec![thespian("gilbert", "{}")]);
        p.aws.as_mut().expect("aws").image = None;
        let text = check_plan(&p).expect_err("no image").to_string();
        assert!(
            text.contains("aws.image") && text.contains("/tmp/thespian.yaml"),
            "{text}"
        );
        p.aws = None;
        assert!(check_plan(&p).is_err());
    }

    #[test]
    fn parameters_follow_the_template_contract() {
        let mut p = plan("demo", vec![thespian("gilbert", "{\"a\":1}")]);
        let aws = p.aws.clone().expect("aws");
        let env = env_parameters(&p, &aws).expect("env parameters");
        assert_eq!(env["FleetName"], "demo");
        assert_eq!(env["UseALB"], "false");

        let outputs = EnvironmentOutputs {
            cluster_name: "demo".into(),
            namespace_arn: "arn:aws:servicediscovery:eu-west-1:123456789012:namespace/ns-1".into(),
            namespace_name: "demo.internal".into(),
            vpc_id: "vpc-1".into(),
            private_subnets: vec!["subnet-1".into()],
            instance_security_group_id: "sg-1".into(),
            alb: None,
        };
        let svc =
            service_parameters(&p, &aws, &p.thespians[0], "demo", &outputs, 1).expect("service parameters");
        assert_eq!(svc["ThespianName"], "gilbert");
        assert_eq!(svc["DesiredCount"], "2");
        assert_eq!(svc["ConfigJson"], "{\"a\":1}");
        assert_eq!(svc["ClusterName"], "demo");
        assert_eq!(svc["UseALB"], "false");

        // With an ALB in the manifest but not in the environment's outputs: the templates' error.
        p.aws.as_mut().expect("aws").alb = Some(AlbSettings {
            certificate_arn: "arn:cert".into(),
            developer_ip: "203.0.113.7".into(),
            domain: "example.com".into(),
            hosted_zone_id: "Z123".into(),
        });
        let aws = p.aws.clone().expect("aws");
        let env = env_parameters(&p, &aws).expect("env parameters");
        assert_eq!(env["UseALB"], "true");
        assert_eq!(env["CertificateArn"], "arn:cert");
        let err =
            service_parameters(&p, &aws, &p.thespians[0], "demo", &outputs, 7).expect_err("no ALB outputs");
        assert!(err.to_string().contains("no load balancer"), "{err}");
    }

    #[test]
    fn outputs_missing_entirely_warn_only_with_an_emulator_and_a_missing_one_is_an_error() {
        let mut stack = StackInfo {
            id: "arn:aws:cloudformation:us-east-1:123456789012:stack/demo/0a1b".into(),
            name: "demo".into(),
            ..StackInfo::default()
        };
        assert!(
            env_outputs(&stack, "demo", false, false).is_err(),
            "against AWS, missing outputs are an error"
        );
        let (out, warning) = env_outputs(&stack, "demo", false, true).expect("lenient with an emulator");
        assert_eq!(out.cluster_name, "demo");
        assert_eq!(
            out.namespace_arn,
            "arn:aws:servicediscovery:us-east-1:123456789012:namespace/unknown"
        );
        assert!(warning.expect("a warning").contains("no outputs"));
        assert!(
            env_outputs(&stack, "demo", true, true).is_err(),
            "an ALB cannot be wired without outputs"
        );

        stack.outputs.insert("ClusterName".into(), "demo".into());
        let err = env_outputs(&stack, "demo", false, true).expect_err("NamespaceArn missing");
        assert!(err.to_string().contains("NamespaceArn"), "{err}");
    }

    #[test]
    fn listener_priorities_are_stable_and_unique() {
        let names: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
        let first = listener_priorities(&names, &BTreeMap::new());
        let unique: BTreeSet<u32> = first.values().copied().collect();
        assert_eq!(unique.len(), names.len());
        assert!(unique.iter().all(|p| (1..=50_000).contains(p)));

        // Adding a thespian keeps everyone else's priority.
        let mut more = names.clone();
        more.insert(0, "newcomer".into());
        let second = listener_priorities(&more, &first);
        for n in &names {
            assert_eq!(first[n], second[n], "{n}");
        }
        // A deployed priority wins, and a clash with it is probed past.
        let deployed = BTreeMap::from([("a".to_string(), 5u32)]);
        let p = listener_priorities(&["a".into(), "b".into()], &deployed);
        assert_eq!(p["a"], 5);
        assert_ne!(p["b"], 5);
    }
}
