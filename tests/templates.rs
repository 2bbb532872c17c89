//! The embedded CloudFormation templates: cfn-lint, structure (every defect of the old Thespian templates
//! has a check that is shown to catch it), `thespctl templates show|export`, and real stacks on moto.
//!
//! Run with `THESPCTL_TEST_VENV=/work/venv scripts/test --test templates` (moto + cfn-lint); these tests
//! fail, never skip, without them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use serde_json::{Value, json};

use support::{moto_url, tempdir, thespctl, venv};
use thespctl::target::aws::templates::{
    self, ECS_SERVICE, ENVIRONMENT, EnvironmentAlb, EnvironmentOutputs, EnvironmentParams, ServiceParams,
    ecs_service, environment,
};

// ------------------------------------------------------------------------------------------------ helpers

fn repo_template(file_name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("templates")
        .join(file_name)
}

/// A template as JSON, read by cfn-lint's own loader (the one that understands `!Ref` and friends), so
/// the checks see what CloudFormation sees.
fn decode(path: &Path) -> Value {
    let out = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import json, sys\n\
             from cfnlint.decode import decode\n\
             template, matches = decode(sys.argv[1])\n\
             if matches:\n    sys.exit('\\n'.join(str(m) for m in matches))\n\
             json.dump(template, sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("run the venv's python (THESPCTL_TEST_VENV)");
    assert!(
        out.status.success(),
        "cfn-lint could not load {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("decoded template is JSON")
}

fn decode_text(yaml: &str) -> Value {
    let dir = tempdir();
    let path = dir.path().join("template.yaml");
    std::fs::write(&path, yaml).expect("write template");
    decode(&path)
}

fn resources<'a>(t: &'a Value, kind: &str) -> Vec<(&'a str, &'a Value)> {
    t["Resources"]
        .as_object()
        .map(|r| {
            r.iter()
                .filter(|(_, v)| v["Type"] == kind)
                .map(|(k, v)| (k.as_str(), v))
                .collect()
        })
        .unwrap_or_default()
}

/// The logical id a value refers to: `{"Ref": X}` or `{"Fn::GetAtt": [X, ...]}`.
fn target(v: &Value) -> Option<&str> {
    v.get("Ref")
        .and_then(Value::as_str)
        .or_else(|| v.get("Fn::GetAtt").and_then(|a| a[0].as_str()))
}

/// A tag value as text: a literal, or the template of a `Fn::Sub`.
fn tag(resource: &Value, key: &str) -> Option<String> {
    resource["Properties"]["Tags"]
        .as_array()?
        .iter()
        .find(|t| t["Key"] == key)
        .map(|t| match &t["Value"] {
            Value::String(s) => s.clone(),
            other => other["Fn::Sub"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| other.to_string()),
        })
}

fn walk<'a>(v: &'a Value, path: &mut Vec<String>, visit: &mut dyn FnMut(&[String], &'a Value)) {
    visit(path, v);
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                path.push(k.clone());
                walk(child, path, visit);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(i.to_string());
                walk(child, path, visit);
                path.pop();
            }
        }
        _ => {}
    }
}

// ------------------------------------------------------------------------------------------------ checks
//
// Each check returns what is wrong (empty: nothing). `the_checks_catch_every_defect_of_the_old_templates`
// proves each one fails on the defect it exists for.

/// Old defect: the Route 53 record was not conditional on `UseALB`, so stacks without an ALB failed.
fn route53_records_without_alb_condition(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for kind in ["AWS::Route53::RecordSet", "AWS::Route53::RecordSetGroup"] {
        for (id, r) in resources(t, kind) {
            if r["Condition"] != "UseALB" {
                problems.push(format!("{id}: Route 53 record without Condition UseALB"));
            }
        }
    }
    problems
}

/// Old defect: both private subnets' ACL entries used rule numbers 100/101 and subnet 1's CIDR.
fn network_acl_problems(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let subnet_cidrs: BTreeMap<&str, &Value> = resources(t, "AWS::EC2::Subnet")
        .into_iter()
        .map(|(id, r)| (id, &r["Properties"]["CidrBlock"]))
        .collect();
    // Which subnet a CIDR names: a literal equal to a subnet's, or `!GetAtt Subnet.CidrBlock`.
    let subnet_of = |cidr: &Value| -> Option<String> {
        if let Some(id) = cidr.get("Fn::GetAtt").and_then(|a| a[0].as_str()) {
            return subnet_cidrs.contains_key(id).then(|| id.to_string());
        }
        subnet_cidrs
            .iter()
            .find(|(_, c)| **c == cidr && c.is_string())
            .map(|(id, _)| id.to_string())
    };

    let mut rule_numbers: BTreeMap<(String, bool), Vec<(String, i64)>> = BTreeMap::new();
    let mut named_subnets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, r) in resources(t, "AWS::EC2::NetworkAclEntry") {
        let p = &r["Properties"];
        let acl = target(&p["NetworkAclId"]).unwrap_or("?").to_string();
        let egress = p["Egress"] == true || p["Egress"] == "true";
        let number = p["RuleNumber"]
            .as_i64()
            .or_else(|| p["RuleNumber"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(-1);
        rule_numbers
            .entry((acl.clone(), egress))
            .or_default()
            .push((id.to_string(), number));
        if let Some(subnet) = subnet_of(&p["CidrBlock"]) {
            named_subnets.entry(acl).or_default().insert(subnet);
        }
    }
    for ((acl, egress), entries) in &rule_numbers {
        let mut seen: BTreeMap<i64, &str> = BTreeMap::new();
        for (id, number) in entries {
            if let Some(first) = seen.insert(*number, id) {
                let direction = if *egress { "egress" } else { "ingress" };
                problems.push(format!(
                    "{acl}: {direction} rule number {number} used by {first} and {id}"
                ));
            }
        }
    }
    // An ACL whose entries name subnet CIDRs must name the CIDR of every subnet it is associated with.
    for (_, assoc) in resources(t, "AWS::EC2::SubnetNetworkAclAssociation") {
        let acl = target(&assoc["Properties"]["NetworkAclId"]).unwrap_or("?");
        let subnet = target(&assoc["Properties"]["SubnetId"]).unwrap_or("?");
        if let Some(named) = named_subnets.get(acl)
            && !named.contains(subnet)
        {
            problems.push(format!(
                "{acl} guards {subnet} but its entries name only the CIDRs of {}",
                named.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    problems
}

/// Old defect: public subnet 2 was tagged as subnet 1.
fn subnet_tag_problems(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names: BTreeMap<String, &str> = BTreeMap::new();
    for (id, r) in resources(t, "AWS::EC2::Subnet") {
        let Some(name) = tag(r, "Name") else {
            problems.push(format!("{id}: no Name tag"));
            continue;
        };
        for kind in ["Public", "Private"] {
            if let Some(n) = id.strip_prefix(&format!("{kind}Subnet")) {
                let suffix = format!("-{}-{n}", kind.to_lowercase());
                if !name.ends_with(&suffix) {
                    problems.push(format!("{id}: Name tag {name:?} does not end with {suffix:?}"));
                }
            }
        }
        if let Some(other) = names.insert(name.clone(), id) {
            problems.push(format!("{id} and {other} share the Name tag {name:?}"));
        }
    }
    problems
}

/// Old defect: the ALB health check matched `GrpcCode 12` on `/` instead of a real health check.
fn grpc_health_check_problems(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, r) in resources(t, "AWS::ElasticLoadBalancingV2::TargetGroup") {
        let p = &r["Properties"];
        if p["ProtocolVersion"] != "GRPC" {
            problems.push(format!(
                "{id}: ProtocolVersion is {} (not GRPC)",
                p["ProtocolVersion"]
            ));
        }
        if p["HealthCheckPath"] != "/grpc.health.v1.Health/Check" {
            problems.push(format!("{id}: health check path is {}", p["HealthCheckPath"]));
        }
        if p["Matcher"] != json!({"GrpcCode": "0"}) {
            problems.push(format!("{id}: health check matcher is {}", p["Matcher"]));
        }
    }
    problems
}

/// Old defect: no outputs, so every value was copied by hand. `always` must exist unconditionally (and be
/// exported as `STACK-Name` when `exported`), `with_alb` with `Condition: UseALB`.
fn output_problems(t: &Value, always: &[&str], with_alb: &[&str], exported: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let outputs = &t["Outputs"];
    for name in always {
        let o = &outputs[*name];
        if o.is_null() {
            problems.push(format!("no output {name}"));
            continue;
        }
        if !o["Condition"].is_null() {
            problems.push(format!("output {name} is conditional"));
        }
        if exported && o["Export"]["Name"] != json!({"Fn::Sub": format!("${{AWS::StackName}}-{name}")}) {
            problems.push(format!("output {name} is not exported as STACK-{name}"));
        }
    }
    for name in with_alb {
        let o = &outputs[*name];
        if o.is_null() {
            problems.push(format!("no output {name}"));
        } else if o["Condition"] != "UseALB" {
            problems.push(format!("output {name} is not conditional on UseALB"));
        }
    }
    problems
}

/// What moto 5.2.5's template parser cannot take (see docs/templates.md): `Fn::If` as a list item,
/// `Fn::Base64` of a `Fn::Sub` mapping, `Fn::Cidr`, `Fn::GetAZs` of anything but "", `{{resolve:...}}`,
/// the `!Condition` short tag, `Fn::GetAtt` on a Cloud Map namespace in Outputs, and an exported output
/// that `Fn::GetAtt`s a conditional resource.
fn moto_parser_problems(text: &str, t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    // Outside comments (ours explain why the tag is avoided).
    if text
        .lines()
        .any(|l| l.split('#').next().unwrap_or("").contains("!Condition "))
    {
        problems.push("the !Condition short tag (moto reads it as an unknown function: false)".to_string());
    }
    walk(t, &mut Vec::new(), &mut |path, v| {
        let at = path.join(".");
        if let Value::Array(items) = v {
            for (i, item) in items.iter().enumerate() {
                if item.as_object().is_some_and(|o| o.contains_key("Fn::If")) {
                    problems.push(format!("{at}.{i}: Fn::If as a list item"));
                }
            }
        }
        if let Value::Object(o) = v {
            if o.get("Fn::Base64").is_some_and(|b| b["Fn::Sub"].is_array()) {
                problems.push(format!("{at}: Fn::Base64 of a Fn::Sub mapping"));
            }
            if o.contains_key("Fn::Cidr") {
                problems.push(format!("{at}: Fn::Cidr"));
            }
            if o.get("Fn::GetAZs").is_some_and(|a| a != "") {
                problems.push(format!("{at}: Fn::GetAZs of something other than \"\""));
            }
        }
        if let Value::String(s) = v
            && s.contains("{{resolve:")
        {
            problems.push(format!("{at}: a {{{{resolve:...}}}} reference"));
        }
    });
    let kind_of = |id: &str| t["Resources"][id]["Type"].as_str().unwrap_or("").to_string();
    let conditional = |id: &str| !t["Resources"][id]["Condition"].is_null();
    if let Some(outputs) = t["Outputs"].as_object() {
        for (name, o) in outputs {
            let mut getatts = Vec::new();
            walk(&o["Value"], &mut Vec::new(), &mut |_, v| {
                if let Some(id) = v.get("Fn::GetAtt").and_then(|a| a[0].as_str()) {
                    getatts.push(id.to_string());
                }
            });
            for id in getatts {
                if kind_of(&id).starts_with("AWS::ServiceDiscovery::") {
                    problems.push(format!("output {name}: Fn::GetAtt on {id}, a Cloud Map resource"));
                }
                if !o["Export"].is_null() && conditional(&id) {
                    problems.push(format!("output {name}: exported Fn::GetAtt on conditional {id}"));
                }
            }
        }
    }
    problems
}

/// A parameter's declared names, as a set.
fn parameter_names(t: &Value) -> BTreeSet<String> {
    t["Parameters"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------ cfn-lint

#[test]
fn cfn_lint_passes_both_templates_with_no_errors_and_no_warnings() {
    // `--include-checks I` adds the informational rules too. Nothing is configured off. (Experimental
    // rules are not run: cfn-lint 1.58's only one that fires, I4010, asks for AI-context metadata on
    // every resource, which says nothing about whether the template is right.)
    let out = Command::new(venv().join("bin/cfn-lint"))
        .args(["--include-checks", "I", "--"])
        .arg(repo_template(ENVIRONMENT.file_name))
        .arg(repo_template(ECS_SERVICE.file_name))
        .output()
        .expect("run cfn-lint from THESPCTL_TEST_VENV");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "cfn-lint:\n{report}"
    );
}

#[test]
fn cfn_lint_does_flag_a_broken_template() {
    // The lint test above must be able to fail: an unknown property and a dangling Ref.
    let dir = tempdir();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "Resources:\n  Cluster:\n    Type: AWS::ECS::Cluster\n    Properties:\n      ClusterNam: !Ref Nothing\n",
    )
    .expect("write");
    let out = Command::new(venv().join("bin/cfn-lint"))
        .arg("--")
        .arg(&path)
        .output()
        .expect("run cfn-lint");
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("E3002") || report.contains("E1020"), "{report}");
}

// ------------------------------------------------------------------------------------------------ structure

#[test]
fn the_checks_catch_every_defect_of_the_old_templates() {
    // The defects the issue lists, reproduced in a small template of the old kind.
    let old = decode_text(OLD_DEFECTS);
    assert!(
        route53_records_without_alb_condition(&old)
            .iter()
            .any(|p| p.starts_with("DnsRecord"))
    );
    let acl = network_acl_problems(&old);
    assert!(acl.iter().any(|p| p.contains("rule number 100")), "{acl:?}");
    assert!(acl.iter().any(|p| p.contains("rule number 101")), "{acl:?}");
    assert!(acl.iter().any(|p| p.contains("guards PrivateSubnet2")), "{acl:?}");
    let tags = subnet_tag_problems(&old);
    assert!(tags.iter().any(|p| p.starts_with("PublicSubnet2")), "{tags:?}");
    let health = grpc_health_check_problems(&old);
    assert!(health.iter().any(|p| p.contains("path")), "{health:?}");
    assert!(health.iter().any(|p| p.contains("matcher")), "{health:?}");
    assert!(!output_problems(&old, &["ClusterName"], &["Url"], false).is_empty());
    // And the moto parser traps.
    let moto = moto_parser_problems(OLD_DEFECTS, &old);
    for expected in [
        "!Condition",
        "Fn::If as a list item",
        "Fn::Base64 of a Fn::Sub mapping",
        "Fn::Cidr",
        "Fn::GetAZs",
        "resolve:",
    ] {
        assert!(moto.iter().any(|p| p.contains(expected)), "{expected}: {moto:?}");
    }
}

#[test]
fn no_defect_of_the_old_templates_reappears() {
    for template in templates::ALL {
        let t = decode(&repo_template(template.file_name));
        let mut problems = route53_records_without_alb_condition(&t);
        problems.extend(network_acl_problems(&t));
        problems.extend(subnet_tag_problems(&t));
        problems.extend(grpc_health_check_problems(&t));
        problems.extend(moto_parser_problems(template.body, &t));
        assert!(problems.is_empty(), "{}: {problems:#?}", template.file_name);
    }
    let env = decode(&repo_template(ENVIRONMENT.file_name));
    assert_eq!(
        output_problems(
            &env,
            &environment::output::ALWAYS,
            &environment::output::WITH_ALB,
            true
        ),
        Vec::<String>::new()
    );
    let svc = decode(&repo_template(ECS_SERVICE.file_name));
    use ecs_service::output as o;
    assert_eq!(
        output_problems(
            &svc,
            &[
                o::SERVICE_NAME,
                o::SERVICE_ARN,
                o::TASK_DEFINITION_ARN,
                o::LOG_GROUP_NAME
            ],
            &[o::URL],
            false
        ),
        Vec::<String>::new()
    );
    // The ALB pieces of the service stack exist and are all conditional.
    for id in ["TargetGroup", "ListenerRule", "DnsRecord"] {
        assert_eq!(svc["Resources"][id]["Condition"], "UseALB", "{id}");
    }
}

#[test]
fn the_builders_spell_out_exactly_the_templates_parameters_and_their_defaults() {
    let env = decode(&repo_template(ENVIRONMENT.file_name));
    let built: BTreeSet<String> = EnvironmentParams::new("demo")
        .parameters()
        .expect("valid")
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(built, parameter_names(&env));
    let p = &env["Parameters"];
    assert_eq!(
        p["EcsAmiId"]["Type"],
        "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    );
    assert_eq!(p["EcsAmiId"]["Default"], environment::default::ECS_AMI_PARAMETER);
    assert_eq!(p["InstanceType"]["Default"], environment::default::INSTANCE_TYPE);
    assert_eq!(p["InstanceCount"]["Type"], "Number");
    assert_eq!(
        p["InstanceCount"]["Default"],
        environment::default::INSTANCE_COUNT
    );
    assert_eq!(p["UseALB"]["Default"], "false");
    assert_eq!(p["UseALB"]["AllowedValues"], json!(["true", "false"]));
    assert_eq!(p["CertificateArn"]["Default"], "");
    assert_eq!(p["DeveloperIpAddress"]["Default"], "");

    let svc = decode(&repo_template(ECS_SERVICE.file_name));
    let outputs = EnvironmentOutputs::from_pairs(
        "demo",
        [
            ("ClusterName", "demo"),
            ("NamespaceArn", "arn:ns"),
            ("NamespaceName", "demo.internal"),
            ("VpcId", "vpc-1"),
            ("PrivateSubnets", "subnet-1,subnet-2"),
            ("InstanceSecurityGroupId", "sg-1"),
        ],
    )
    .expect("outputs");
    let built: BTreeSet<String> = ServiceParams::new(&outputs, "demo", "gilbert", "img", "{}", 1)
        .parameters()
        .expect("valid")
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(built, parameter_names(&svc));
    let p = &svc["Parameters"];
    assert_eq!(p["DesiredCount"]["Type"], "Number");
    assert_eq!(p["ListenerRulePriority"]["Type"], "Number");
    assert_eq!(
        p["ContainerMemory"]["Default"],
        ecs_service::default::CONTAINER_MEMORY_MIB
    );
    assert_eq!(
        p["ContainerCpu"]["Default"],
        ecs_service::default::CONTAINER_CPU_UNITS
    );
    assert_eq!(
        p["LogRetentionInDays"]["Default"],
        ecs_service::default::LOG_RETENTION_IN_DAYS
    );
    assert_eq!(p["ConfigJson"]["MaxLength"], templates::PARAMETER_VALUE_MAX_BYTES);
    for alb in [
        "VpcId",
        "ListenerArn",
        "DomainName",
        "HostedZoneId",
        "AlbDnsName",
        "AlbHostedZoneId",
        "OtlpEndpoint",
    ] {
        assert_eq!(p[alb]["Default"], "", "{alb}");
    }
}

#[test]
fn environment_network_capacity_and_access() {
    let t = decode(&repo_template(ENVIRONMENT.file_name));
    let r = &t["Resources"];

    // Two private subnets in two AZs, CIDRs written out.
    assert_eq!(
        r["PrivateSubnet1"]["Properties"]["AvailabilityZone"],
        json!({"Fn::Select": [0, {"Fn::GetAZs": ""}]})
    );
    assert_eq!(
        r["PrivateSubnet2"]["Properties"]["AvailabilityZone"],
        json!({"Fn::Select": [1, {"Fn::GetAZs": ""}]})
    );
    let cidrs: BTreeSet<&str> = resources(&t, "AWS::EC2::Subnet")
        .iter()
        .map(|(_, s)| s["Properties"]["CidrBlock"].as_str().expect("literal CIDR"))
        .collect();
    assert_eq!(cidrs.len(), 4);

    // Egress for the private instances without an ALB: the NAT and its route are unconditional.
    for id in [
        "PublicSubnet1",
        "PublicSubnet2",
        "NatGateway",
        "PrivateDefaultRoute",
        "InternetGateway",
    ] {
        assert!(r[id]["Condition"].is_null(), "{id} must exist without the ALB");
    }
    assert_eq!(
        r["PrivateDefaultRoute"]["Properties"]["NatGatewayId"],
        json!({"Ref": "NatGateway"})
    );
    assert_eq!(
        r["PrivateDefaultRoute"]["Properties"]["DestinationCidrBlock"],
        "0.0.0.0/0"
    );
    for assoc in ["PrivateSubnet1Routes", "PrivateSubnet2Routes"] {
        assert_eq!(
            r[assoc]["Properties"]["RouteTableId"],
            json!({"Ref": "PrivateRouteTable"})
        );
    }
    // The ALB only with UseALB, internet-facing HTTPS, in the public subnets.
    for id in ["LoadBalancer", "Listener", "LoadBalancerSecurityGroup"] {
        assert_eq!(r[id]["Condition"], "UseALB", "{id}");
    }
    assert_eq!(r["LoadBalancer"]["Properties"]["Scheme"], "internet-facing");
    assert_eq!(r["Listener"]["Properties"]["Protocol"], "HTTPS");

    // Nothing admits the world; the ALB admits only DeveloperIpAddress/32, on 443.
    let mut lb_ingress = 0;
    walk(&t["Resources"], &mut Vec::new(), &mut |path, v| {
        if v.get("CidrIp") == Some(&json!("0.0.0.0/0")) {
            assert!(
                path.iter().any(|p| p == "SecurityGroupEgress"),
                "open ingress at {path:?}"
            );
        }
    });
    for (id, ingress) in resources(&t, "AWS::EC2::SecurityGroupIngress") {
        let p = &ingress["Properties"];
        if p["GroupId"] == json!({"Ref": "LoadBalancerSecurityGroup"}) {
            lb_ingress += 1;
            assert_eq!(
                p["CidrIp"],
                json!({"Fn::Sub": "${DeveloperIpAddress}/32"}),
                "{id}"
            );
            assert_eq!(
                (p["FromPort"].clone(), p["ToPort"].clone()),
                (json!(443), json!(443)),
                "{id}"
            );
        }
    }
    assert_eq!(lb_ingress, 1);

    // The cluster is named FleetName; instances join it, run the AMI from the SSM parameter, and carry
    // the Session Manager policy `thespctl tunnel` needs.
    assert_eq!(
        r["Cluster"]["Properties"]["ClusterName"],
        json!({"Ref": "FleetName"})
    );
    let lt = &r["LaunchTemplate"]["Properties"]["LaunchTemplateData"];
    assert_eq!(lt["ImageId"], json!({"Ref": "EcsAmiId"}));
    let user_data = lt["UserData"]["Fn::Base64"]["Fn::Sub"]
        .as_str()
        .expect("Fn::Base64: !Sub string");
    assert!(user_data.contains("ECS_CLUSTER=${Cluster}"), "{user_data}");
    let policies = r["InstanceRole"]["Properties"]["ManagedPolicyArns"].to_string();
    assert!(
        policies.contains("policy/AmazonSSMManagedInstanceCore"),
        "{policies}"
    );
    assert!(
        policies.contains("AmazonEC2ContainerServiceforEC2Role"),
        "{policies}"
    );
    assert_eq!(
        r["AutoScalingGroup"]["Properties"]["VPCZoneIdentifier"],
        json!([{"Ref": "PrivateSubnet1"}, {"Ref": "PrivateSubnet2"}])
    );
    // Service Connect between instances: tasks' dynamic host ports open to the instances' own group.
    let self_ingress = &r["InstanceIngressFromInstances"]["Properties"];
    assert_eq!(
        self_ingress["SourceSecurityGroupId"],
        json!({"Ref": "InstanceSecurityGroup"})
    );
    assert_eq!(
        (self_ingress["FromPort"].clone(), self_ingress["ToPort"].clone()),
        (json!(32768), json!(65535))
    );
    // Rules make UseALB=true without a certificate or an address fail before anything is created.
    let rule = t["Rules"]["LoadBalancerNeedsCertificateAndAddress"].to_string();
    assert!(
        rule.contains("CertificateArn") && rule.contains("DeveloperIpAddress"),
        "{rule}"
    );
}

#[test]
fn service_task_definition_and_service_connect() {
    let t = decode(&repo_template(ECS_SERVICE.file_name));
    let r = &t["Resources"];
    let td = &r["TaskDefinition"]["Properties"];
    assert_eq!(td["NetworkMode"], "bridge");
    assert_eq!(td["RequiresCompatibilities"], json!(["EC2"]));
    let c = &td["ContainerDefinitions"][0];
    assert_eq!(c["Name"], json!({"Ref": "ThespianName"}));
    assert_eq!(c["Memory"], json!({"Ref": "ContainerMemory"}));
    assert_eq!(
        c["PortMappings"],
        json!([{"Name": {"Ref": "ThespianName"}, "ContainerPort": ecs_service::CONTAINER_PORT,
                "HostPort": 0, "Protocol": "tcp", "AppProtocol": "grpc"}])
    );
    assert!(
        c["StopTimeout"].as_u64().expect("StopTimeout") >= 10,
        "the agent drains for 10 s"
    );
    assert_eq!(c["StopTimeout"], ecs_service::STOP_TIMEOUT_SECS);
    // Environment: a whole-list Fn::If; OTEL_EXPORTER_OTLP_ENDPOINT only in the branch where it is set.
    let env = &c["Environment"]["Fn::If"];
    assert_eq!(env[0], "HasOtlpEndpoint");
    let names = |branch: &Value| -> Vec<String> {
        branch
            .as_array()
            .expect("list")
            .iter()
            .map(|kv| kv["Name"].as_str().expect("name").to_string())
            .collect()
    };
    assert_eq!(
        names(&env[1]),
        [
            "PORT",
            "SERVICE_NAME",
            "CONFIG_JSON",
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        ]
    );
    assert_eq!(names(&env[2]), ["PORT", "SERVICE_NAME", "CONFIG_JSON"]);
    assert_eq!(env[2][0]["Value"], ecs_service::CONTAINER_PORT.to_string());
    assert_eq!(env[2][2]["Value"], json!({"Ref": "ConfigJson"}));

    let s = &r["Service"]["Properties"];
    assert_eq!(s["ServiceName"], json!({"Ref": "ThespianName"}));
    assert_eq!(s["DesiredCount"], json!({"Ref": "DesiredCount"}));
    assert_eq!(
        s["DeploymentConfiguration"]["DeploymentCircuitBreaker"],
        json!({"Enable": true, "Rollback": true})
    );
    let sc = &s["ServiceConnectConfiguration"];
    assert_eq!(sc["Namespace"], json!({"Ref": "NamespaceArn"}));
    assert_eq!(
        sc["Services"],
        json!([{"PortName": {"Ref": "ThespianName"}, "DiscoveryName": {"Ref": "ThespianName"},
                "ClientAliases": [{"DnsName": {"Ref": "ThespianName"}, "Port": ecs_service::CLIENT_ALIAS_PORT}]}])
    );
    // The load balancer attachment is a whole-list Fn::If, and the service waits for the listener rule.
    assert_eq!(s["LoadBalancers"]["Fn::If"][0], "UseALB");
    assert_eq!(r["Service"]["DependsOn"], "ListenerRuleReady");
    assert_eq!(
        r["ListenerRuleReady"]["Metadata"]["ListenerRule"],
        json!({"Fn::If": ["UseALB", {"Ref": "ListenerRule"}, "none"]})
    );
    // Least privilege: the execution role may write its own log group and pull images, nothing else.
    let statements = &r["ExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"];
    let actions: BTreeSet<String> = statements
        .as_array()
        .expect("statements")
        .iter()
        .flat_map(|s| match &s["Action"] {
            Value::Array(a) => a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect(),
            other => vec![other.as_str().unwrap_or("").to_string()],
        })
        .collect();
    assert_eq!(
        actions,
        [
            "ecr:BatchCheckLayerAvailability",
            "ecr:BatchGetImage",
            "ecr:GetAuthorizationToken",
            "ecr:GetDownloadUrlForLayer",
            "logs:CreateLogStream",
            "logs:PutLogEvents",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    assert!(r["Service"]["Properties"]["Role"].is_null() && td["TaskRoleArn"].is_null());
}

// ------------------------------------------------------------------------------------------------ the command

#[test]
fn embedded_templates_equal_the_files_and_show_prints_them_verbatim() {
    for template in templates::ALL {
        let file = std::fs::read_to_string(repo_template(template.file_name)).expect("read template");
        assert_eq!(
            template.body, file,
            "{} embedded copy differs",
            template.file_name
        );
        let out = thespctl()
            .args(["templates", "show", template.name])
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            file,
            "show {}",
            template.name
        );
    }
}

#[test]
fn show_json_carries_the_body() {
    let out = thespctl()
        .args(["templates", "show", "ecs_service", "--output", "json"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["name"], "ecs_service");
    assert_eq!(v["file"], "ecs_service.yaml");
    assert_eq!(v["body"], ECS_SERVICE.body);
}

#[test]
fn show_unknown_template_exits_2_and_lists_the_valid_names() {
    let out = thespctl()
        .args(["templates", "show", "service"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("there is no template \"service\"; the templates are: environment, ecs_service"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn export_writes_both_and_never_overwrites_without_force() {
    let dir = tempdir();
    let target = dir.path().join("new/sub");
    let out = thespctl()
        .args(["templates", "export"])
        .arg(&target)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for template in templates::ALL {
        let written = std::fs::read_to_string(target.join(template.file_name)).expect("exported");
        assert_eq!(written, template.body);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("wrote ") && stdout.contains("environment.yaml"),
        "{stdout}"
    );
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(&target).expect("list").count(), 2);

    // A local edit survives a second export without --force; nothing is written at all.
    let edited = target.join("ecs_service.yaml");
    std::fs::write(&edited, "# my edit\n").expect("edit");
    std::fs::remove_file(target.join("environment.yaml")).expect("remove");
    let out = thespctl()
        .args(["templates", "export"])
        .arg(&target)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ecs_service.yaml already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&edited).expect("read"), "# my edit\n");
    assert!(
        !target.join("environment.yaml").exists(),
        "refused export wrote a file"
    );

    // --force overwrites, and says so (JSON form).
    let out = thespctl()
        .args(["templates", "export", "--force", "--output", "json"])
        .arg(&target)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&edited).expect("read"), ECS_SERVICE.body);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let files = v["files"].as_array().expect("files");
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["template"], "environment");
    assert_eq!(files[0]["replaced"], false);
    assert_eq!(files[1]["template"], "ecs_service");
    assert_eq!(files[1]["replaced"], true);
    assert_eq!(files[1]["bytes"], ECS_SERVICE.body.len());
}

#[test]
fn export_into_a_file_is_refused() {
    let dir = tempdir();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "keep me").expect("write");
    let out = thespctl()
        .args(["templates", "export", "--force"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists and is not a directory"));
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
}

// ------------------------------------------------------------------------------------------------ moto

const REGION: &str = "us-east-1";

async fn sdk() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_url())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "thespctl-tests",
        ))
        .load()
        .await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Creates a stack and waits (on its status, bounded) until it is no longer in progress; returns it.
async fn create_stack(
    cfn: &aws_sdk_cloudformation::Client,
    name: &str,
    template: &templates::Template,
    parameters: &templates::Parameters,
) -> aws_sdk_cloudformation::types::Stack {
    cfn.create_stack()
        .stack_name(name)
        .template_body(template.body)
        .set_parameters(Some(templates::to_sdk(parameters)))
        .capabilities(templates::REQUIRED_CAPABILITY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create stack {name}: {e:?}"));
    for _ in 0..300 {
        let stacks = cfn
            .describe_stacks()
            .stack_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("describe {name}: {e:?}"));
        let stack = stacks.stacks()[0].clone();
        let status = stack
            .stack_status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if !status.ends_with("_IN_PROGRESS") {
            assert_eq!(
                status,
                "CREATE_COMPLETE",
                "{name}: {:?}",
                stack.stack_status_reason()
            );
            return stack;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stack {name} still in progress after 30 s");
}

fn outputs(stack: &aws_sdk_cloudformation::types::Stack) -> BTreeMap<String, String> {
    stack
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
        .collect()
}

/// Deletes a stack and checks it is gone. moto 5.2.5 cannot delete the environment's route tables (no
/// delete handler), so DeleteVpc and then DeleteStack answer DependencyViolation although the stack is
/// removed; that one error code is tolerated for the environment (see docs/templates.md), nothing else.
async fn delete_stack(cfn: &aws_sdk_cloudformation::Client, name: &str, environment: bool) {
    if let Err(e) = cfn.delete_stack().stack_name(name).send().await {
        let moto_route_table_gap = environment && e.code() == Some("DependencyViolation");
        assert!(moto_route_table_gap, "delete stack {name}: {e:?}");
    }
    let err = cfn
        .describe_stacks()
        .stack_name(name)
        .send()
        .await
        .expect_err("the deleted stack is still described");
    assert_eq!(err.code(), Some("ValidationError"), "{err:?}");
    assert!(err.message().unwrap_or("").contains("does not exist"), "{err:?}");
}

/// Makes what moto needs before an ALB stack: an ACM certificate (moto checks the listener's) and a
/// Route 53 hosted zone (for the alias record). Fixtures only, made with the venv's boto3 because the
/// workspace has no ACM or Route 53 SDK crate; the stacks themselves go through aws-sdk-cloudformation.
fn alb_fixtures(domain: &str) -> (String, String) {
    let out = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import sys, uuid, boto3\n\
             kw = dict(endpoint_url=sys.argv[1], region_name=sys.argv[2],\n\
                       aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             cert = boto3.client('acm', **kw).request_certificate(DomainName='*.' + sys.argv[3])\n\
             zone = boto3.client('route53', **kw).create_hosted_zone(Name=sys.argv[3], CallerReference=str(uuid.uuid4()))\n\
             print(cert['CertificateArn'])\n\
             print(zone['HostedZone']['Id'].split('/')[-1])",
        ])
        .args([moto_url().as_str(), REGION, domain])
        .output()
        .expect("run the venv's python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let cert = lines.next().expect("certificate ARN").to_string();
    let zone = lines.next().expect("hosted zone id").to_string();
    (cert, zone)
}

#[tokio::test]
async fn moto_preloads_the_ecs_ami_parameter_the_environment_resolves() {
    let sdk = sdk().await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let param = ssm
        .get_parameter()
        .name(environment::default::ECS_AMI_PARAMETER)
        .send()
        .await
        .expect("moto serves the public ECS AMI parameter (else create it here before the stacks)");
    let value = param.parameter().and_then(|p| p.value()).unwrap_or("");
    assert!(value.starts_with("ami-"), "{value}");
}

async fn environment_and_service(with_alb: bool) {
    let sdk = sdk().await;
    let cfn = aws_sdk_cloudformation::Client::new(&sdk);
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    let fleet = unique(if with_alb { "tplalb" } else { "tpl" });

    // The environment.
    let mut env_params = EnvironmentParams::new(&fleet);
    let mut zone = None;
    let domain = format!("{fleet}.example.com");
    if with_alb {
        let (cert, hosted_zone) = alb_fixtures(&domain);
        env_params.alb = Some(EnvironmentAlb {
            certificate_arn: cert,
            developer_ip: "203.0.113.7/32".into(),
        });
        zone = Some(hosted_zone);
    }
    let env_stack = create_stack(
        &cfn,
        &fleet,
        &ENVIRONMENT,
        &env_params.parameters().expect("params"),
    )
    .await;
    let env_outputs = outputs(&env_stack);
    for name in environment::output::ALWAYS {
        assert!(
            env_outputs.contains_key(name),
            "missing output {name}: {env_outputs:?}"
        );
    }
    for name in environment::output::WITH_ALB {
        assert_eq!(
            env_outputs.contains_key(name),
            with_alb,
            "output {name}: {env_outputs:?}"
        );
    }
    let env = EnvironmentOutputs::from_sdk(&fleet, env_stack.outputs()).expect("environment outputs");
    assert_eq!(env.cluster_name, fleet);
    assert_eq!(env.namespace_name, format!("{fleet}.internal"));
    assert_eq!(env.private_subnets.len(), 2);
    assert!(
        env.private_subnets.iter().all(|s| s.starts_with("subnet-")),
        "{env:?}"
    );
    assert!(env.vpc_id.starts_with("vpc-") && env.instance_security_group_id.starts_with("sg-"));
    assert_eq!(env.alb.is_some(), with_alb);
    let exports = cfn.list_exports().send().await.expect("list exports");
    let exported: BTreeSet<&str> = exports.exports().iter().filter_map(|e| e.name()).collect();
    for name in environment::output::ALWAYS {
        assert!(
            exported.contains(format!("{fleet}-{name}").as_str()),
            "export {fleet}-{name}"
        );
    }

    let clusters = ecs
        .describe_clusters()
        .clusters(&fleet)
        .send()
        .await
        .expect("describe clusters");
    assert_eq!(clusters.clusters().len(), 1);
    assert_eq!(clusters.clusters()[0].cluster_name(), Some(fleet.as_str()));
    assert_eq!(clusters.clusters()[0].status(), Some("ACTIVE"));

    // One thespian's service, built from the environment's outputs.
    let config = r#"{"A":[{"sleep":{"duration_ms":5}}],"B":[],"C":[]}"#;
    let mut svc = ServiceParams::new(
        &env,
        &fleet,
        "gilbert",
        "public.ecr.aws/thespian/agent:1",
        config,
        2,
    );
    if with_alb {
        svc.otlp_endpoint = Some("http://collector.example.com:4317".into());
        svc = svc
            .with_alb(
                &fleet,
                &env,
                format!("gilbert.{domain}"),
                zone.clone().expect("zone"),
                7,
            )
            .expect("alb route");
    }
    let svc_name = format!("{fleet}-gilbert");
    let svc_stack = create_stack(&cfn, &svc_name, &ECS_SERVICE, &svc.parameters().expect("params")).await;
    let svc_outputs = outputs(&svc_stack);
    assert_eq!(svc_outputs["ServiceName"], "gilbert");
    assert_eq!(
        svc_outputs["LogGroupName"],
        ecs_service::log_group_name(&fleet, "gilbert")
    );
    assert_eq!(
        svc_outputs.get("Url").cloned(),
        with_alb.then(|| format!("https://gilbert.{domain}"))
    );
    let task_definition_arn = &svc_outputs["TaskDefinitionArn"];

    let services = ecs
        .describe_services()
        .cluster(&fleet)
        .services("gilbert")
        .send()
        .await
        .expect("describe services");
    assert_eq!(services.services().len(), 1, "{services:?}");
    let service = &services.services()[0];
    assert_eq!(service.service_name(), Some("gilbert"));
    assert_eq!(service.service_arn(), Some(svc_outputs["ServiceArn"].as_str()));
    assert_eq!(service.desired_count(), 2);
    assert_eq!(service.launch_type().map(|l| l.as_str()), Some("EC2"));
    assert_eq!(service.task_definition(), Some(task_definition_arn.as_str()));

    let td = ecs
        .describe_task_definition()
        .task_definition(task_definition_arn)
        .send()
        .await
        .expect("describe task definition");
    let td = td.task_definition().expect("task definition");
    assert_eq!(td.network_mode().map(|m| m.as_str()), Some("bridge"));
    assert_eq!(td.family(), Some(format!("{fleet}-gilbert").as_str()));
    let container = &td.container_definitions()[0];
    assert_eq!(container.name(), Some("gilbert"));
    assert_eq!(container.memory(), Some(32));
    assert_eq!(container.stop_timeout(), Some(15));
    let port = &container.port_mappings()[0];
    assert_eq!(
        (port.name(), port.container_port(), port.host_port()),
        (Some("gilbert"), Some(6379), Some(0))
    );
    let env_vars: BTreeMap<&str, &str> = container
        .environment()
        .iter()
        .filter_map(|kv| Some((kv.name()?, kv.value()?)))
        .collect();
    let mut expected = BTreeMap::from([
        ("PORT", "6379"),
        ("SERVICE_NAME", "gilbert"),
        ("CONFIG_JSON", config),
    ]);
    if with_alb {
        expected.insert("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.example.com:4317");
    }
    assert_eq!(env_vars, expected);

    // moto drops load balancers from ECS services, so the ALB pieces are checked as stack resources.
    let resources = cfn
        .describe_stack_resources()
        .stack_name(&svc_name)
        .send()
        .await
        .expect("describe stack resources");
    let created: BTreeMap<&str, &str> = resources
        .stack_resources()
        .iter()
        .filter_map(|r| Some((r.logical_resource_id()?, r.physical_resource_id().unwrap_or(""))))
        .collect();
    for id in ["TargetGroup", "ListenerRule", "DnsRecord"] {
        assert_eq!(created.contains_key(id), with_alb, "{id}: {created:?}");
    }
    if with_alb {
        assert!(created["TargetGroup"].contains(":targetgroup/"), "{created:?}");
        assert_eq!(created["DnsRecord"], format!("gilbert.{domain}"));
    }

    delete_stack(&cfn, &svc_name, false).await;
    delete_stack(&cfn, &fleet, true).await;
}

#[tokio::test]
async fn environment_and_service_stacks_on_moto_without_alb() {
    environment_and_service(false).await;
}

#[tokio::test]
async fn environment_and_service_stacks_on_moto_with_alb() {
    environment_and_service(true).await;
}

// ------------------------------------------------------------------------------------------------ fixture

/// A small template with the defects of the Thespian templates people use today, as the issue lists them,
/// plus each construct moto 5.2.5's parser cannot take. Never deployed: only decoded and checked.
const OLD_DEFECTS: &str = r#"
Parameters:
  UseALB: { Type: String, Default: "false", AllowedValues: ["true", "false"] }
Conditions:
  UseALB: !Equals [!Ref UseALB, "true"]
  Both: !And [!Condition UseALB, !Equals [!Ref "AWS::Region", "eu-west-1"]]
Resources:
  Vpc:
    Type: AWS::EC2::VPC
    Properties: { CidrBlock: 10.0.0.0/16 }
  PrivateSubnet1:
    Type: AWS::EC2::Subnet
    Properties:
      VpcId: !Ref Vpc
      CidrBlock: 10.0.1.0/24
      AvailabilityZone:
        Fn::Select:
          - 0
          - Fn::GetAZs: !Ref "AWS::Region"
      Tags: [{ Key: Name, Value: old-private-1 }]
  PrivateSubnet2:
    Type: AWS::EC2::Subnet
    Properties:
      VpcId: !Ref Vpc
      CidrBlock: !Select [1, !Cidr [10.0.0.0/16, 4, 8]]
      Tags: [{ Key: Name, Value: old-private-2 }]
  PublicSubnet1:
    Type: AWS::EC2::Subnet
    Properties:
      VpcId: !Ref Vpc
      CidrBlock: 10.0.101.0/24
      Tags: [{ Key: Name, Value: old-public-1 }]
  PublicSubnet2:
    Type: AWS::EC2::Subnet
    Properties:
      VpcId: !Ref Vpc
      CidrBlock: 10.0.102.0/24
      Tags: [{ Key: Name, Value: old-public-1 }]
  PrivateAcl1:
    Type: AWS::EC2::NetworkAcl
    Properties: { VpcId: !Ref Vpc }
  PrivateAcl2:
    Type: AWS::EC2::NetworkAcl
    Properties: { VpcId: !Ref Vpc }
  PrivateAcl1Subnet:
    Type: AWS::EC2::SubnetNetworkAclAssociation
    Properties: { SubnetId: !Ref PrivateSubnet1, NetworkAclId: !Ref PrivateAcl1 }
  PrivateAcl2Subnet:
    Type: AWS::EC2::SubnetNetworkAclAssociation
    Properties: { SubnetId: !Ref PrivateSubnet2, NetworkAclId: !Ref PrivateAcl2 }
  Acl1In:
    Type: AWS::EC2::NetworkAclEntry
    Properties: { NetworkAclId: !Ref PrivateAcl1, RuleNumber: 100, Protocol: -1, RuleAction: allow, Egress: false, CidrBlock: 10.0.1.0/24 }
  Acl1InAgain:
    Type: AWS::EC2::NetworkAclEntry
    Properties: { NetworkAclId: !Ref PrivateAcl1, RuleNumber: 100, Protocol: 6, RuleAction: allow, Egress: false, CidrBlock: 0.0.0.0/0, PortRange: { From: 443, To: 443 } }
  Acl1Out:
    Type: AWS::EC2::NetworkAclEntry
    Properties: { NetworkAclId: !Ref PrivateAcl1, RuleNumber: 101, Protocol: -1, RuleAction: allow, Egress: true, CidrBlock: 10.0.1.0/24 }
  Acl1OutAgain:
    Type: AWS::EC2::NetworkAclEntry
    Properties: { NetworkAclId: !Ref PrivateAcl1, RuleNumber: 101, Protocol: -1, RuleAction: allow, Egress: true, CidrBlock: 0.0.0.0/0 }
  Acl2In:
    Type: AWS::EC2::NetworkAclEntry
    Properties: { NetworkAclId: !Ref PrivateAcl2, RuleNumber: 100, Protocol: -1, RuleAction: allow, Egress: false, CidrBlock: 10.0.1.0/24 }
  TargetGroup:
    Type: AWS::ElasticLoadBalancingV2::TargetGroup
    Condition: UseALB
    Properties:
      VpcId: !Ref Vpc
      Protocol: HTTP
      ProtocolVersion: GRPC
      Port: 6379
      HealthCheckPath: /
      Matcher: { GrpcCode: "12" }
  DnsRecord:
    Type: AWS::Route53::RecordSet
    Properties:
      HostedZoneId: Z1
      Name: gilbert.example.com
      Type: A
      AliasTarget: { DNSName: alb.example.com, HostedZoneId: Z2 }
  LaunchTemplate:
    Type: AWS::EC2::LaunchTemplate
    Properties:
      LaunchTemplateData:
        ImageId: "{{resolve:ssm:/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id}}"
        SecurityGroupIds:
          - !If [UseALB, sg-1, !Ref "AWS::NoValue"]
        UserData: !Base64
          Fn::Sub:
            - "ECS_CLUSTER=${C}"
            - { C: demo }
"#;
