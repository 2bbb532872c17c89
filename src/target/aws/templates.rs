//! The embedded CloudFormation templates, the names they share with the AWS target, and a typed builder
//! for their parameters.
//!
//! Two templates (see `docs/templates.md` for what each creates):
//! - [`ENVIRONMENT`]: one stack per fleet (VPC, ECS cluster on EC2, Cloud Map namespace, optional ALB).
//!   Its [`environment::output`]s feed every service stack; read them with [`EnvironmentOutputs`].
//! - [`ECS_SERVICE`]: one stack per thespian (task definition, ECS service with Service Connect, optional
//!   target group, listener rule and Route 53 alias). Build its parameters with [`ServiceParams`].
//!
//! Names fixed by the templates: the ECS cluster is named exactly the fleet name; the ECS service, its
//! container, its Service Connect port name and discovery name are exactly the thespian name, reached by
//! other thespians as `http://NAME:80`; the agent listens on [`ecs_service::CONTAINER_PORT`] inside the
//! container, published on a dynamic host port (bridge networking).
//!
//! Both templates create IAM roles without custom names: deploying them needs [`REQUIRED_CAPABILITY`].

use std::net::Ipv4Addr;

use aws_sdk_cloudformation::types::{Output, Parameter};

/// One embedded template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    /// What `thespctl templates show NAME` accepts.
    pub name: &'static str,
    /// The file name under `templates/` and in `thespctl templates export DIR`.
    pub file_name: &'static str,
    /// The YAML, byte for byte as in the repository.
    pub body: &'static str,
}

/// The environment stack of a fleet.
pub const ENVIRONMENT: Template = Template {
    name: "environment",
    file_name: "environment.yaml",
    body: include_str!("../../../templates/environment.yaml"),
};

/// The service stack of one thespian.
pub const ECS_SERVICE: Template = Template {
    name: "ecs_service",
    file_name: "ecs_service.yaml",
    body: include_str!("../../../templates/ecs_service.yaml"),
};

/// Every embedded template, in deployment order.
pub const ALL: [Template; 2] = [ENVIRONMENT, ECS_SERVICE];

/// The capability `CreateStack`/`CreateChangeSet` must acknowledge for both templates.
pub const REQUIRED_CAPABILITY: aws_sdk_cloudformation::types::Capability =
    aws_sdk_cloudformation::types::Capability::CapabilityIam;

/// CloudFormation's limit on one parameter value, in bytes (it applies to `CONFIG_JSON`).
pub const PARAMETER_VALUE_MAX_BYTES: usize = 4096;

/// The template called `name` (`environment`, `ecs_service`; the file name with `.yaml` works too).
pub fn find(name: &str) -> Option<Template> {
    ALL.into_iter().find(|t| t.name == name || t.file_name == name)
}

/// The names [`find`] accepts, for error messages.
pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|t| t.name).collect()
}

/// Names of the environment template's parameters and outputs.
pub mod environment {
    /// Parameter names of `environment.yaml`.
    pub mod param {
        pub const FLEET_NAME: &str = "FleetName";
        pub const ECS_AMI_ID: &str = "EcsAmiId";
        pub const INSTANCE_TYPE: &str = "InstanceType";
        pub const INSTANCE_COUNT: &str = "InstanceCount";
        pub const USE_ALB: &str = "UseALB";
        pub const CERTIFICATE_ARN: &str = "CertificateArn";
        pub const DEVELOPER_IP_ADDRESS: &str = "DeveloperIpAddress";
    }

    /// Output names of `environment.yaml`. The first six exist always and are exported as
    /// `STACK-Output`; the ALB ones only when `UseALB` is `true`, and are not exported.
    pub mod output {
        pub const CLUSTER_NAME: &str = "ClusterName";
        pub const NAMESPACE_ARN: &str = "NamespaceArn";
        pub const NAMESPACE_NAME: &str = "NamespaceName";
        pub const VPC_ID: &str = "VpcId";
        pub const PRIVATE_SUBNETS: &str = "PrivateSubnets";
        pub const INSTANCE_SECURITY_GROUP_ID: &str = "InstanceSecurityGroupId";
        pub const LISTENER_ARN: &str = "ListenerArn";
        pub const ALB_DNS_NAME: &str = "AlbDnsName";
        pub const ALB_HOSTED_ZONE_ID: &str = "AlbHostedZoneId";

        /// Present whatever `UseALB` says.
        pub const ALWAYS: [&str; 6] = [
            CLUSTER_NAME,
            NAMESPACE_ARN,
            NAMESPACE_NAME,
            VPC_ID,
            PRIVATE_SUBNETS,
            INSTANCE_SECURITY_GROUP_ID,
        ];
        /// Present only when `UseALB` is `true`.
        pub const WITH_ALB: [&str; 3] = [LISTENER_ARN, ALB_DNS_NAME, ALB_HOSTED_ZONE_ID];
    }

    /// The template's defaults (a test checks they match the YAML).
    pub mod default {
        pub const ECS_AMI_PARAMETER: &str =
            "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id";
        pub const INSTANCE_TYPE: &str = "t3.small";
        pub const INSTANCE_COUNT: u32 = 2;
    }

    /// The Cloud Map namespace of fleet `fleet`: `FLEET.internal` (`.internal` is the top-level domain
    /// ICANN reserves for private use; `.local` belongs to mDNS).
    pub fn namespace_name(fleet: &str) -> String {
        format!("{fleet}.internal")
    }
}

/// Names of the service template's parameters and outputs, and the numbers it fixes.
pub mod ecs_service {
    /// Parameter names of `ecs_service.yaml`.
    pub mod param {
        pub const FLEET_NAME: &str = "FleetName";
        pub const THESPIAN_NAME: &str = "ThespianName";
        pub const IMAGE: &str = "Image";
        pub const DESIRED_COUNT: &str = "DesiredCount";
        pub const CONFIG_JSON: &str = "ConfigJson";
        pub const OTLP_ENDPOINT: &str = "OtlpEndpoint";
        pub const CLUSTER_NAME: &str = "ClusterName";
        pub const NAMESPACE_ARN: &str = "NamespaceArn";
        pub const CONTAINER_MEMORY: &str = "ContainerMemory";
        pub const CONTAINER_CPU: &str = "ContainerCpu";
        pub const LOG_RETENTION_IN_DAYS: &str = "LogRetentionInDays";
        pub const USE_ALB: &str = "UseALB";
        pub const VPC_ID: &str = "VpcId";
        pub const LISTENER_ARN: &str = "ListenerArn";
        pub const LISTENER_RULE_PRIORITY: &str = "ListenerRulePriority";
        pub const DOMAIN_NAME: &str = "DomainName";
        pub const HOSTED_ZONE_ID: &str = "HostedZoneId";
        pub const ALB_DNS_NAME: &str = "AlbDnsName";
        pub const ALB_HOSTED_ZONE_ID: &str = "AlbHostedZoneId";
    }

    /// Output names of `ecs_service.yaml` (`Url` only when `UseALB` is `true`).
    pub mod output {
        pub const SERVICE_NAME: &str = "ServiceName";
        pub const SERVICE_ARN: &str = "ServiceArn";
        pub const TASK_DEFINITION_ARN: &str = "TaskDefinitionArn";
        pub const LOG_GROUP_NAME: &str = "LogGroupName";
        pub const URL: &str = "Url";
    }

    /// The template's defaults (a test checks they match the YAML).
    pub mod default {
        pub const CONTAINER_MEMORY_MIB: u32 = 32;
        pub const CONTAINER_CPU_UNITS: u32 = 128;
        pub const LOG_RETENTION_IN_DAYS: u32 = 14;
    }

    /// The agent's `PORT` inside the container (its default); published on a dynamic host port.
    pub const CONTAINER_PORT: u16 = 6379;
    /// The Service Connect client alias port: other thespians call `http://NAME:80`.
    pub const CLIENT_ALIAS_PORT: u16 = 80;
    /// Seconds between SIGTERM and SIGKILL (the agent drains for up to 10 s).
    pub const STOP_TIMEOUT_SECS: u32 = 15;

    /// The log group the template creates for `thespian` of `fleet` (also the `LogGroupName` output).
    /// Streams are `thespian/NAME/TASK_ID` (the agent) and `service-connect/...` (its proxy).
    pub fn log_group_name(fleet: &str, thespian: &str) -> String {
        format!("/thespctl/{fleet}/{thespian}")
    }
}

/// A parameter value the templates would reject (or CloudFormation would, less clearly), or an
/// environment stack without the outputs a service stack needs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParameterError {
    #[error(
        "the {what} name {value:?} is not a DNS label; use 1 to 63 lowercase letters, digits and inner hyphens, starting with a letter"
    )]
    InvalidName { what: &'static str, value: String },

    #[error(
        "the behaviour of thespian {thespian:?} is {bytes} bytes as CONFIG_JSON, over CloudFormation's {max}-byte limit for a parameter value; simplify its behaviour tree"
    )]
    ConfigJsonTooLarge {
        thespian: String,
        bytes: usize,
        max: usize,
    },

    #[error("{what} is empty; {hint}")]
    Empty { what: &'static str, hint: &'static str },

    #[error(
        "the ALB developer address {value:?} is not an IPv4 address; give one address such as 203.0.113.7 (a /32 suffix is fine)"
    )]
    InvalidDeveloperIp { value: String },

    #[error("{what} is {value}; it must be between {min} and {max}")]
    OutOfRange {
        what: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },

    #[error(
        "the environment stack {stack} has no output {output}; was it created by this version of thespctl? run `thespctl up` to update it"
    )]
    MissingOutput { stack: String, output: &'static str },

    #[error(
        "the environment stack {stack} has no load balancer (it was deployed without `aws.alb`); add `alb:` to the manifest and run `thespctl up`"
    )]
    NoLoadBalancer { stack: String },
}

/// `(name, value)` pairs in a fixed order, converted for the SDK by [`to_sdk`].
pub type Parameters = Vec<(&'static str, String)>;

/// The SDK form of [`Parameters`].
pub fn to_sdk(parameters: &Parameters) -> Vec<Parameter> {
    parameters
        .iter()
        .map(|(k, v)| Parameter::builder().parameter_key(*k).parameter_value(v).build())
        .collect()
}

/// Parameters of the environment stack. Every template parameter is spelt out (defaults too), so a
/// stack's parameters depend only on thespctl's input and an unchanged fleet makes an empty change set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentParams {
    pub fleet_name: String,
    /// The public SSM parameter naming the ECS-optimised AMI (not an AMI id).
    pub ecs_ami_parameter: String,
    pub instance_type: String,
    pub instance_count: u32,
    pub alb: Option<EnvironmentAlb>,
}

/// The environment's optional HTTPS load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentAlb {
    /// ACM certificate of the HTTPS listener.
    pub certificate_arn: String,
    /// The only address the load balancer admits, with or without a `/32` suffix.
    pub developer_ip: String,
}

impl EnvironmentParams {
    /// The template's defaults for fleet `fleet_name`, without a load balancer.
    pub fn new(fleet_name: impl Into<String>) -> Self {
        EnvironmentParams {
            fleet_name: fleet_name.into(),
            ecs_ami_parameter: environment::default::ECS_AMI_PARAMETER.to_string(),
            instance_type: environment::default::INSTANCE_TYPE.to_string(),
            instance_count: environment::default::INSTANCE_COUNT,
            alb: None,
        }
    }

    /// Checks every value against the template's constraints and returns the parameters.
    pub fn parameters(&self) -> Result<Parameters, ParameterError> {
        use environment::param as p;
        check_dns_label("fleet", &self.fleet_name)?;
        check_range("the instance count", self.instance_count, 1, 20)?;
        if self.instance_type.trim().is_empty() {
            return Err(ParameterError::Empty {
                what: "the instance type",
                hint: "set aws.instance_type (e.g. t3.small) or leave it out",
            });
        }
        let (use_alb, certificate_arn, developer_ip) = match &self.alb {
            None => ("false", String::new(), String::new()),
            Some(alb) => {
                if alb.certificate_arn.trim().is_empty() {
                    return Err(ParameterError::Empty {
                        what: "aws.alb.certificate_arn",
                        hint: "give the ACM certificate of the HTTPS listener",
                    });
                }
                (
                    "true",
                    alb.certificate_arn.clone(),
                    developer_ip(&alb.developer_ip)?,
                )
            }
        };
        Ok(vec![
            (p::FLEET_NAME, self.fleet_name.clone()),
            (p::ECS_AMI_ID, self.ecs_ami_parameter.clone()),
            (p::INSTANCE_TYPE, self.instance_type.clone()),
            (p::INSTANCE_COUNT, self.instance_count.to_string()),
            (p::USE_ALB, use_alb.to_string()),
            (p::CERTIFICATE_ARN, certificate_arn),
            (p::DEVELOPER_IP_ADDRESS, developer_ip),
        ])
    }
}

/// `203.0.113.7` or `203.0.113.7/32` → `203.0.113.7` (the template appends the `/32`).
fn developer_ip(value: &str) -> Result<String, ParameterError> {
    let trimmed = value.trim();
    let address = trimmed.strip_suffix("/32").unwrap_or(trimmed);
    address
        .parse::<Ipv4Addr>()
        .map(|ip| ip.to_string())
        .map_err(|_| ParameterError::InvalidDeveloperIp {
            value: value.to_string(),
        })
}

/// What a service stack needs from the environment stack, read from its outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentOutputs {
    pub cluster_name: String,
    pub namespace_arn: String,
    pub namespace_name: String,
    pub vpc_id: String,
    pub private_subnets: Vec<String>,
    pub instance_security_group_id: String,
    /// Present when the environment has a load balancer.
    pub alb: Option<AlbOutputs>,
}

/// The environment's load balancer, as its outputs describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlbOutputs {
    pub listener_arn: String,
    pub dns_name: String,
    pub hosted_zone_id: String,
}

impl EnvironmentOutputs {
    /// Reads the outputs of the environment stack `stack` from `(key, value)` pairs. The ALB outputs
    /// count only when all three are present.
    pub fn from_pairs<'a>(
        stack: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ParameterError> {
        use environment::output as o;
        let map: std::collections::HashMap<&str, &str> = pairs.into_iter().collect();
        let get = |output: &'static str| -> Result<String, ParameterError> {
            map.get(output)
                .map(|v| v.to_string())
                .ok_or_else(|| ParameterError::MissingOutput {
                    stack: stack.to_string(),
                    output,
                })
        };
        let alb = match (
            map.get(o::LISTENER_ARN),
            map.get(o::ALB_DNS_NAME),
            map.get(o::ALB_HOSTED_ZONE_ID),
        ) {
            (Some(listener), Some(dns), Some(zone)) => Some(AlbOutputs {
                listener_arn: listener.to_string(),
                dns_name: dns.to_string(),
                hosted_zone_id: zone.to_string(),
            }),
            _ => None,
        };
        Ok(EnvironmentOutputs {
            cluster_name: get(o::CLUSTER_NAME)?,
            namespace_arn: get(o::NAMESPACE_ARN)?,
            namespace_name: get(o::NAMESPACE_NAME)?,
            vpc_id: get(o::VPC_ID)?,
            private_subnets: get(o::PRIVATE_SUBNETS)?
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            instance_security_group_id: get(o::INSTANCE_SECURITY_GROUP_ID)?,
            alb,
        })
    }

    /// Reads the outputs of `DescribeStacks` for the environment stack `stack`.
    pub fn from_sdk(stack: &str, outputs: &[Output]) -> Result<Self, ParameterError> {
        Self::from_pairs(
            stack,
            outputs
                .iter()
                .filter_map(|o| Some((o.output_key()?, o.output_value()?))),
        )
    }
}

/// Parameters of one thespian's service stack. Like [`EnvironmentParams`], every parameter is spelt out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceParams {
    pub fleet_name: String,
    pub thespian_name: String,
    pub image: String,
    pub desired_count: u32,
    /// The agent's `CONFIG_JSON`; at most [`PARAMETER_VALUE_MAX_BYTES`].
    pub config_json: String,
    /// Sets `OTEL_EXPORTER_OTLP_ENDPOINT` in the container when present.
    pub otlp_endpoint: Option<String>,
    pub cluster_name: String,
    pub namespace_arn: String,
    pub container_memory_mib: u32,
    pub container_cpu_units: u32,
    pub log_retention_in_days: u32,
    pub alb: Option<ServiceAlb>,
}

/// This thespian's route through the environment's load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAlb {
    pub vpc_id: String,
    pub listener_arn: String,
    /// Unique on the listener (1–50000): two rules with one priority fail the second stack.
    pub rule_priority: u32,
    /// This thespian's host name, e.g. `gilbert.thespians.example.com`.
    pub domain_name: String,
    /// The Route 53 hosted zone that holds `domain_name`.
    pub hosted_zone_id: String,
    pub alb_dns_name: String,
    pub alb_hosted_zone_id: String,
}

/// Retention periods CloudWatch Logs accepts that the template allows.
const LOG_RETENTION_DAYS: [u32; 12] = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365];

impl ServiceParams {
    /// The service of `thespian` in the environment described by `env`, with the template's defaults
    /// and no load balancer route.
    pub fn new(
        env: &EnvironmentOutputs,
        fleet_name: impl Into<String>,
        thespian_name: impl Into<String>,
        image: impl Into<String>,
        config_json: impl Into<String>,
        desired_count: u32,
    ) -> Self {
        ServiceParams {
            fleet_name: fleet_name.into(),
            thespian_name: thespian_name.into(),
            image: image.into(),
            desired_count,
            config_json: config_json.into(),
            otlp_endpoint: None,
            cluster_name: env.cluster_name.clone(),
            namespace_arn: env.namespace_arn.clone(),
            container_memory_mib: ecs_service::default::CONTAINER_MEMORY_MIB,
            container_cpu_units: ecs_service::default::CONTAINER_CPU_UNITS,
            log_retention_in_days: ecs_service::default::LOG_RETENTION_IN_DAYS,
            alb: None,
        }
    }

    /// Routes `https://domain_name` to this thespian through the environment's load balancer.
    /// `env_stack` names the environment stack in the error when `env` has no load balancer.
    pub fn with_alb(
        mut self,
        env_stack: &str,
        env: &EnvironmentOutputs,
        domain_name: impl Into<String>,
        hosted_zone_id: impl Into<String>,
        rule_priority: u32,
    ) -> Result<Self, ParameterError> {
        let alb = env.alb.as_ref().ok_or_else(|| ParameterError::NoLoadBalancer {
            stack: env_stack.to_string(),
        })?;
        self.alb = Some(ServiceAlb {
            vpc_id: env.vpc_id.clone(),
            listener_arn: alb.listener_arn.clone(),
            rule_priority,
            domain_name: domain_name.into(),
            hosted_zone_id: hosted_zone_id.into(),
            alb_dns_name: alb.dns_name.clone(),
            alb_hosted_zone_id: alb.hosted_zone_id.clone(),
        });
        Ok(self)
    }

    /// Checks every value against the template's constraints (CONFIG_JSON's size first among them)
    /// and returns the parameters.
    pub fn parameters(&self) -> Result<Parameters, ParameterError> {
        use ecs_service::param as p;
        check_dns_label("fleet", &self.fleet_name)?;
        check_dns_label("thespian", &self.thespian_name)?;
        if self.config_json.len() > PARAMETER_VALUE_MAX_BYTES {
            return Err(ParameterError::ConfigJsonTooLarge {
                thespian: self.thespian_name.clone(),
                bytes: self.config_json.len(),
                max: PARAMETER_VALUE_MAX_BYTES,
            });
        }
        if self.image.trim().is_empty() {
            return Err(ParameterError::Empty {
                what: "aws.image",
                hint: "give the agent's container image, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/thespian-agent:1",
            });
        }
        for (what, value) in [
            ("the environment's ClusterName", &self.cluster_name),
            ("the environment's NamespaceArn", &self.namespace_arn),
        ] {
            if value.is_empty() {
                return Err(ParameterError::Empty {
                    what,
                    hint: "run `thespctl up` to update the environment stack",
                });
            }
        }
        check_range(
            "the container memory (MiB)",
            self.container_memory_mib,
            6,
            u32::MAX,
        )?;
        if !LOG_RETENTION_DAYS.contains(&self.log_retention_in_days) {
            return Err(ParameterError::OutOfRange {
                what: "the log retention (days)",
                value: self.log_retention_in_days,
                min: 1,
                max: 365,
            });
        }
        let empty = ServiceAlb {
            vpc_id: String::new(),
            listener_arn: String::new(),
            rule_priority: 1,
            domain_name: String::new(),
            hosted_zone_id: String::new(),
            alb_dns_name: String::new(),
            alb_hosted_zone_id: String::new(),
        };
        let alb = match &self.alb {
            None => &empty,
            Some(alb) => {
                check_range("the listener rule priority", alb.rule_priority, 1, 50_000)?;
                for (what, value) in [
                    ("the environment's VpcId", &alb.vpc_id),
                    ("the environment's ListenerArn", &alb.listener_arn),
                    ("the thespian's domain name", &alb.domain_name),
                    ("aws.alb.hosted_zone_id", &alb.hosted_zone_id),
                    ("the environment's AlbDnsName", &alb.alb_dns_name),
                    ("the environment's AlbHostedZoneId", &alb.alb_hosted_zone_id),
                ] {
                    if value.trim().is_empty() {
                        return Err(ParameterError::Empty {
                            what,
                            hint: "a load balancer route needs every aws.alb setting and an environment deployed with them",
                        });
                    }
                }
                alb
            }
        };
        Ok(vec![
            (p::FLEET_NAME, self.fleet_name.clone()),
            (p::THESPIAN_NAME, self.thespian_name.clone()),
            (p::IMAGE, self.image.clone()),
            (p::DESIRED_COUNT, self.desired_count.to_string()),
            (p::CONFIG_JSON, self.config_json.clone()),
            (p::OTLP_ENDPOINT, self.otlp_endpoint.clone().unwrap_or_default()),
            (p::CLUSTER_NAME, self.cluster_name.clone()),
            (p::NAMESPACE_ARN, self.namespace_arn.clone()),
            (p::CONTAINER_MEMORY, self.container_memory_mib.to_string()),
            (p::CONTAINER_CPU, self.container_cpu_units.to_string()),
            (p::LOG_RETENTION_IN_DAYS, self.log_retention_in_days.to_string()),
            (p::USE_ALB, self.alb.is_some().to_string()),
            (p::VPC_ID, alb.vpc_id.clone()),
            (p::LISTENER_ARN, alb.listener_arn.clone()),
            (p::LISTENER_RULE_PRIORITY, alb.rule_priority.to_string()),
            (p::DOMAIN_NAME, alb.domain_name.clone()),
            (p::HOSTED_ZONE_ID, alb.hosted_zone_id.clone()),
            (p::ALB_DNS_NAME, alb.alb_dns_name.clone()),
            (p::ALB_HOSTED_ZONE_ID, alb.alb_hosted_zone_id.clone()),
        ])
    }
}

/// The templates' `AllowedPattern` for fleet and thespian names: a DNS label.
fn check_dns_label(what: &'static str, value: &str) -> Result<(), ParameterError> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ParameterError::InvalidName {
            what,
            value: value.to_string(),
        })
    }
}

fn check_range(what: &'static str, value: u32, min: u32, max: u32) -> Result<(), ParameterError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ParameterError::OutOfRange {
            what,
            value,
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_outputs(alb: bool) -> EnvironmentOutputs {
        let mut pairs = vec![
            ("ClusterName", "demo"),
            (
                "NamespaceArn",
                "arn:aws:servicediscovery:eu-west-1:123456789012:namespace/ns-abc",
            ),
            ("NamespaceName", "demo.internal"),
            ("VpcId", "vpc-0123456789abcdef0"),
            ("PrivateSubnets", "subnet-1,subnet-2"),
            ("InstanceSecurityGroupId", "sg-1"),
        ];
        if alb {
            pairs.extend([
                (
                    "ListenerArn",
                    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/x/y/z",
                ),
                ("AlbDnsName", "x-1.eu-west-1.elb.amazonaws.com"),
                ("AlbHostedZoneId", "Z32O12XQLNTSW2"),
            ]);
        }
        EnvironmentOutputs::from_pairs("demo", pairs).expect("outputs")
    }

    fn value<'a>(params: &'a Parameters, key: &str) -> &'a str {
        params
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no parameter {key}"))
    }

    #[test]
    fn find_accepts_names_and_file_names() {
        assert_eq!(find("environment"), Some(ENVIRONMENT));
        assert_eq!(find("ecs_service.yaml"), Some(ECS_SERVICE));
        assert_eq!(find("service"), None);
        assert_eq!(names(), vec!["environment", "ecs_service"]);
    }

    #[test]
    fn every_named_parameter_and_output_is_in_its_template() {
        use ecs_service::{output as so, param as sp};
        use environment::{output as eo, param as ep};
        let env_names = [
            ep::FLEET_NAME,
            ep::ECS_AMI_ID,
            ep::INSTANCE_TYPE,
            ep::INSTANCE_COUNT,
            ep::USE_ALB,
            ep::CERTIFICATE_ARN,
            ep::DEVELOPER_IP_ADDRESS,
        ];
        for name in env_names
            .iter()
            .chain(eo::ALWAYS.iter())
            .chain(eo::WITH_ALB.iter())
        {
            assert!(ENVIRONMENT.body.contains(&format!("\n  {name}:\n")), "{name}");
        }
        let svc_names = [
            sp::FLEET_NAME,
            sp::THESPIAN_NAME,
            sp::IMAGE,
            sp::DESIRED_COUNT,
            sp::CONFIG_JSON,
            sp::OTLP_ENDPOINT,
            sp::CLUSTER_NAME,
            sp::NAMESPACE_ARN,
            sp::CONTAINER_MEMORY,
            sp::CONTAINER_CPU,
            sp::LOG_RETENTION_IN_DAYS,
            sp::USE_ALB,
            sp::VPC_ID,
            sp::LISTENER_ARN,
            sp::LISTENER_RULE_PRIORITY,
            sp::DOMAIN_NAME,
            sp::HOSTED_ZONE_ID,
            sp::ALB_DNS_NAME,
            sp::ALB_HOSTED_ZONE_ID,
            so::SERVICE_NAME,
            so::SERVICE_ARN,
            so::TASK_DEFINITION_ARN,
            so::LOG_GROUP_NAME,
            so::URL,
        ];
        for name in svc_names {
            assert!(ECS_SERVICE.body.contains(&format!("\n  {name}:\n")), "{name}");
        }
    }

    #[test]
    fn environment_parameters_spell_out_every_default() {
        let params = EnvironmentParams::new("demo").parameters().expect("valid");
        assert_eq!(params.len(), 7);
        assert_eq!(value(&params, "FleetName"), "demo");
        assert_eq!(
            value(&params, "EcsAmiId"),
            environment::default::ECS_AMI_PARAMETER
        );
        assert_eq!(value(&params, "InstanceCount"), "2");
        assert_eq!(value(&params, "UseALB"), "false");
        assert_eq!(value(&params, "CertificateArn"), "");
        assert_eq!(value(&params, "DeveloperIpAddress"), "");
    }

    #[test]
    fn environment_alb_strips_the_slash_32_and_rejects_non_addresses() {
        let mut env = EnvironmentParams::new("demo");
        env.alb = Some(EnvironmentAlb {
            certificate_arn: "arn:aws:acm:eu-west-1:123456789012:certificate/abc".into(),
            developer_ip: " 203.0.113.7/32 ".into(),
        });
        let params = env.parameters().expect("valid");
        assert_eq!(value(&params, "UseALB"), "true");
        assert_eq!(value(&params, "DeveloperIpAddress"), "203.0.113.7");

        for bad in ["", "203.0.113.0/24", "example.com", "2001:db8::1"] {
            env.alb.as_mut().expect("alb").developer_ip = bad.into();
            assert_eq!(
                env.parameters(),
                Err(ParameterError::InvalidDeveloperIp { value: bad.into() }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in ["", "Demo", "1demo", "demo-", "de_mo", &"a".repeat(64)] {
            assert!(
                matches!(
                    EnvironmentParams::new(bad).parameters(),
                    Err(ParameterError::InvalidName { what: "fleet", .. })
                ),
                "{bad:?}"
            );
        }
        for good in ["a", "demo-2", &"a".repeat(63)] {
            assert!(EnvironmentParams::new(good).parameters().is_ok(), "{good:?}");
        }
    }

    #[test]
    fn outputs_without_alb_and_missing_ones() {
        let env = env_outputs(false);
        assert_eq!(env.private_subnets, vec!["subnet-1", "subnet-2"]);
        assert_eq!(env.alb, None);
        assert!(env_outputs(true).alb.is_some());

        let err = EnvironmentOutputs::from_pairs("demo", [("ClusterName", "demo")]).unwrap_err();
        assert_eq!(
            err,
            ParameterError::MissingOutput {
                stack: "demo".into(),
                output: "NamespaceArn"
            }
        );
        assert!(
            err.to_string()
                .contains("environment stack demo has no output NamespaceArn")
        );
    }

    #[test]
    fn service_parameters_without_alb() {
        let env = env_outputs(false);
        let svc = ServiceParams::new(&env, "demo", "gilbert", "img:1", r#"{"A":[]}"#, 3);
        let params = svc.parameters().expect("valid");
        assert_eq!(params.len(), 19);
        assert_eq!(value(&params, "ThespianName"), "gilbert");
        assert_eq!(value(&params, "DesiredCount"), "3");
        assert_eq!(value(&params, "ClusterName"), "demo");
        assert_eq!(value(&params, "UseALB"), "false");
        assert_eq!(value(&params, "VpcId"), "");
        assert_eq!(value(&params, "ListenerRulePriority"), "1");
        assert_eq!(value(&params, "OtlpEndpoint"), "");
        assert_eq!(value(&params, "ContainerMemory"), "32");
        assert_eq!(to_sdk(&params).len(), 19);
    }

    #[test]
    fn service_alb_needs_an_environment_alb() {
        let svc = ServiceParams::new(&env_outputs(false), "demo", "gilbert", "img:1", "{}", 1);
        assert_eq!(
            svc.with_alb("demo", &env_outputs(false), "gilbert.example.com", "Z1", 5),
            Err(ParameterError::NoLoadBalancer { stack: "demo".into() })
        );
        let env = env_outputs(true);
        let svc = ServiceParams::new(&env, "demo", "gilbert", "img:1", "{}", 1)
            .with_alb("demo", &env, "gilbert.example.com", "Z1", 5)
            .expect("alb");
        let params = svc.parameters().expect("valid");
        assert_eq!(value(&params, "UseALB"), "true");
        assert_eq!(value(&params, "VpcId"), "vpc-0123456789abcdef0");
        assert_eq!(value(&params, "ListenerRulePriority"), "5");
        assert_eq!(value(&params, "AlbHostedZoneId"), "Z32O12XQLNTSW2");

        let mut bad = svc.clone();
        bad.alb.as_mut().expect("alb").hosted_zone_id = String::new();
        assert!(matches!(
            bad.parameters(),
            Err(ParameterError::Empty {
                what: "aws.alb.hosted_zone_id",
                ..
            })
        ));
        let mut bad = svc;
        bad.alb.as_mut().expect("alb").rule_priority = 0;
        assert!(matches!(bad.parameters(), Err(ParameterError::OutOfRange { .. })));
    }

    #[test]
    fn config_json_over_4096_bytes_is_refused_before_cloudformation_sees_it() {
        let env = env_outputs(false);
        // Multi-byte characters: the limit is in bytes, not characters.
        let at_limit = format!("\"{}\"", "é".repeat((PARAMETER_VALUE_MAX_BYTES - 2) / 2));
        assert_eq!(at_limit.len(), PARAMETER_VALUE_MAX_BYTES);
        let svc = ServiceParams::new(&env, "demo", "gilbert", "img:1", at_limit.clone(), 1);
        assert!(svc.parameters().is_ok());

        let over = format!("{at_limit} ");
        let err = ServiceParams::new(&env, "demo", "gilbert", "img:1", over, 1)
            .parameters()
            .unwrap_err();
        assert_eq!(
            err,
            ParameterError::ConfigJsonTooLarge {
                thespian: "gilbert".into(),
                bytes: 4097,
                max: 4096
            }
        );
        assert!(err.to_string().contains("thespian \"gilbert\""));
    }

    #[test]
    fn service_rejects_empty_image_and_bad_retention() {
        let env = env_outputs(false);
        let mut svc = ServiceParams::new(&env, "demo", "gilbert", " ", "{}", 1);
        assert!(matches!(
            svc.parameters(),
            Err(ParameterError::Empty {
                what: "aws.image",
                ..
            })
        ));
        svc.image = "img:1".into();
        svc.log_retention_in_days = 2;
        assert!(matches!(svc.parameters(), Err(ParameterError::OutOfRange { .. })));
    }

    #[test]
    fn derived_names() {
        assert_eq!(environment::namespace_name("demo"), "demo.internal");
        assert_eq!(
            ecs_service::log_group_name("demo", "gilbert"),
            "/thespctl/demo/gilbert"
        );
        assert!(
            ECS_SERVICE
                .body
                .contains("LogGroupName: !Sub \"/thespctl/${FleetName}/${ThespianName}\"")
        );
        assert!(ENVIRONMENT.body.contains("Name: !Sub \"${FleetName}.internal\""));
    }
}
