//! The AWS target end to end: the real `thespctl` binary against moto's server (started by
//! `scripts/test`), checked independently with boto3 from the test venv.
//!
//! Each test uses its own fleet name, so tests run in parallel against one moto without colliding.
//!
//! moto 5.2.5 (pinned in tests/requirements.txt) shapes what can be checked here; see docs/aws.md:
//! - it never starts tasks, so `--wait` cannot complete: tests deploy with `--no-wait`, and test the
//!   wait itself through `--timeout` and Ctrl-C; the rollout logic is unit-tested on recorded ECS output;
//! - it reports stack-level events only and no rollback states: root causes of resource failures are
//!   unit-tested on recorded event streams; here a failure surfaces as an API error of ExecuteChangeSet;
//! - it reports no outputs for stacks deployed through change sets: `up` warns and wires the service
//!   stacks with the values the template contract pins (the tests assert the warning);
//! - a parameter-only change set lists no resource changes, and a CloudFormation update of a task
//!   definition registers a revision without its container definitions: the change is checked through
//!   the stack's parameters and the task definition's physical id;
//! - it cannot delete the environment stack (its route tables have no delete handler), so it answers
//!   DeleteStack with DependencyViolation; and deleting a service stack leaves its ECS service (moto's
//!   ECS models have no CloudFormation delete);
//! - a CloudFormation update of a task definition does not move the ECS service to the new revision.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::thespctl;

// ---------------------------------------------------------------------------------------------------
// Harness

const GILBERT_YORICK: &str = "
thespians:
  gilbert:
    replicas: 2
    methods:
      A:
        - sleep: 10ms
  yorick:
    methods:
      A:
        - sleep: 2ms
        - call: gilbert.A
aws:
  region: us-east-1
  image: registry.example.com/thespian-agent:1
";

/// A fleet with its own name and manifest in a temporary directory.
struct Fleet {
    name: String,
    dir: tempfile::TempDir,
    manifest: PathBuf,
}

impl Fleet {
    /// A fleet named after `test` (plus a random suffix) with `body` as the rest of the manifest.
    fn new(test: &str, body: &str) -> Fleet {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{}-{}", test, &suffix[..6]);
        assert!(name.len() <= 32, "fleet name {name} too long");
        let dir = support::tempdir();
        let manifest = dir.path().join("thespian.yaml");
        let fleet = Fleet { name, dir, manifest };
        fleet.write(body);
        fleet
    }

    fn write(&self, body: &str) {
        std::fs::write(&self.manifest, format!("fleet: {}\n{body}", self.name)).expect("write manifest");
    }

    fn stack(&self, thespian: &str) -> String {
        format!("{}-{thespian}", self.name)
    }

    /// `thespctl SUBCOMMAND --target aws --endpoint-url MOTO --file MANIFEST ARGS…` with the test
    /// credentials `scripts/test` exports, and no instance metadata lookups.
    fn cmd(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut cmd = thespctl();
        cmd.arg(subcommand)
            .args([
                "--target",
                "aws",
                "--endpoint-url",
                &support::moto_url(),
                "--file",
            ])
            .arg(&self.manifest)
            .args(args)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .current_dir(self.dir.path());
        cmd
    }

    fn run(&self, subcommand: &str, args: &[&str]) -> Output {
        self.cmd(subcommand, args).output().expect("run thespctl")
    }

    /// Runs with `-o json`; returns (exit code, parsed stdout, stderr).
    fn json(&self, subcommand: &str, args: &[&str]) -> (i32, Value, String) {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.run(subcommand, &all);
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "thespctl {subcommand} printed no JSON ({e}); exit {code}\nstdout: {}\nstderr: {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (code, value, stderr)
    }

    /// `up --no-wait -o json`, which must succeed.
    fn up(&self) -> Value {
        let (code, report, stderr) = self.json("up", &["--no-wait"]);
        assert_eq!(code, 0, "up failed: {stderr}\n{report:#}");
        report
    }

    /// The compiled `CONFIG_JSON` of each thespian, from `thespctl validate -o json`.
    fn compiled(&self) -> Value {
        let out = thespctl()
            .args(["validate", "-o", "json", "--file"])
            .arg(&self.manifest)
            .output()
            .expect("validate");
        let v: Value = serde_json::from_slice(&out.stdout).expect("validate JSON");
        let mut map = serde_json::Map::new();
        for t in v["thespians"].as_array().expect("thespians") {
            map.insert(t["name"].as_str().expect("name").into(), t["config"].clone());
        }
        Value::Object(map)
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a Python snippet with boto3 clients `cf`, `ecs` on moto; it must print one JSON document.
fn boto(script: &str) -> Value {
    let prelude = "\
import boto3, json, os, sys
kw = dict(endpoint_url=os.environ['MOTO'], region_name='us-east-1')
cf = boto3.client('cloudformation', **kw)
ecs = boto3.client('ecs', **kw)
def stack(name):
    try:
        return cf.describe_stacks(StackName=name)['Stacks'][0]
    except cf.exceptions.ClientError:
        return None
def params(name):
    return {p['ParameterKey']: p.get('ParameterValue') for p in stack(name)['Parameters']}
def resource(name, logical):
    return cf.describe_stack_resource(StackName=name, LogicalResourceId=logical)['StackResourceDetail']['PhysicalResourceId']
def out(v):
    print(json.dumps(v, default=str))
";
    let out = Command::new(support::venv().join("bin/python"))
        .arg("-c")
        .arg(format!("{prelude}\n{script}"))
        .env("MOTO", support::moto_url())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "boto3 script failed:\n{script}\n{}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("boto3 script printed no JSON ({e}): {}", text(&out)))
}

fn actions(report: &Value) -> Vec<(String, String)> {
    report["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .map(|s| {
            (
                s["stack"].as_str().expect("stack").to_string(),
                s["action"].as_str().expect("action").to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// up, plan, status, down

#[test]
fn up_creates_the_environment_and_service_stacks_and_the_ecs_services() {
    let fleet = Fleet::new("create", GILBERT_YORICK);
    let (code, report, stderr) = fleet.json("up", &["--no-wait"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        actions(&report),
        vec![
            (fleet.name.clone(), "create".into()),
            (fleet.stack("gilbert"), "create".into()),
            (fleet.stack("yorick"), "create".into()),
        ]
    );
    assert!(
        report["stacks"]
            .as_array()
            .expect("stacks")
            .iter()
            .all(|s| s["status"] == "CREATE_COMPLETE")
    );
    // moto's gap, made visible rather than hidden: no outputs for change-set stacks.
    assert!(stderr.contains("reports no outputs"), "{stderr}");
    assert_eq!(report["warnings"].as_array().map(Vec::len), Some(1));

    let aws = boto(&format!(
        "
names = ['{f}', '{f}-gilbert', '{f}-yorick']
stacks = {{n: stack(n) for n in names}}
svc = ecs.describe_services(cluster='{f}', services=['gilbert', 'yorick'])['services']
config = {{}}
for s in svc:
    td = ecs.describe_task_definition(taskDefinition=s['taskDefinition'])['taskDefinition']
    env = {{e['name']: e['value'] for e in td['containerDefinitions'][0]['environment']}}
    config[s['serviceName']] = json.loads(env['CONFIG_JSON'])
out({{
  'status': {{n: s['StackStatus'] for n, s in stacks.items()}},
  'tags': {{n: {{t['Key']: t['Value'] for t in s['Tags']}} for n, s in stacks.items()}},
  'desired': {{s['serviceName']: s['desiredCount'] for s in svc}},
  'config': config,
}})",
        f = fleet.name
    ));
    for name in [fleet.name.clone(), fleet.stack("gilbert"), fleet.stack("yorick")] {
        assert_eq!(aws["status"][&name], "CREATE_COMPLETE", "{aws:#}");
        assert_eq!(aws["tags"][&name]["thespctl:fleet"], fleet.name.as_str());
    }
    assert_eq!(aws["tags"][&fleet.name]["thespctl:thespian"], "-");
    assert_eq!(
        aws["tags"][&fleet.stack("gilbert")]["thespctl:thespian"],
        "gilbert"
    );
    assert_eq!(aws["desired"]["gilbert"], 2);
    assert_eq!(aws["desired"]["yorick"], 1);
    // Each task definition carries its thespian's compiled behaviour.
    assert_eq!(aws["config"], fleet.compiled(), "{aws:#}");
}

#[test]
fn a_second_up_reports_no_changes() {
    let fleet = Fleet::new("again", GILBERT_YORICK);
    fleet.up();
    let (code, report, stderr) = fleet.json("up", &["--no-wait"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        actions(&report).iter().all(|(_, a)| a == "no-change"),
        "{report:#}"
    );

    let out = fleet.run("up", &["--no-wait"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("fleet {}: no changes", fleet.name)),
        "{}",
        text(&out)
    );

    // Nothing was updated: no stack has an update time.
    let aws = boto(&format!(
        "out([stack(n).get('LastUpdatedTime') for n in ['{f}', '{f}-gilbert', '{f}-yorick']])",
        f = fleet.name
    ));
    assert_eq!(aws, serde_json::json!([null, null, null]));
}

#[test]
fn changing_one_thespian_updates_only_its_stack() {
    let fleet = Fleet::new("change", GILBERT_YORICK);
    fleet.up();
    let snapshot = |f: &Fleet| {
        boto(&format!(
            "out({{t: {{'td': resource('{f}-' + t, 'TaskDefinition'), 'config': params('{f}-' + t)['ConfigJson'],
                      'events': [e['ResourceStatus'] for e in cf.describe_stack_events(StackName='{f}-' + t)['StackEvents']]}}
                 for t in ['gilbert', 'yorick']}})",
            f = f.name
        ))
    };
    let before = snapshot(&fleet);

    fleet.write(&GILBERT_YORICK.replace("sleep: 10ms", "sleep: 25ms"));
    let compiled = fleet.compiled();

    // plan lists the change and changes nothing.
    let (code, plan, stderr) = fleet.json("plan", &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        actions(&plan),
        vec![
            (fleet.name.clone(), "no-change".into()),
            (fleet.stack("gilbert"), "update".into()),
            (fleet.stack("yorick"), "no-change".into()),
        ]
    );
    assert_eq!(plan["dry_run"], true);
    assert_eq!(
        plan["stacks"][1]["parameters_changed"],
        serde_json::json!(["ConfigJson"])
    );
    let human = fleet.run("plan", &[]);
    let human_out = String::from_utf8_lossy(&human.stdout);
    assert!(
        human_out.contains(&fleet.stack("gilbert")) && human_out.contains("parameters: ConfigJson"),
        "{}",
        text(&human)
    );
    assert_eq!(snapshot(&fleet), before, "plan must not change anything");

    let (code, report, stderr) = fleet.json("up", &["--no-wait"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        actions(&report),
        vec![
            (fleet.name.clone(), "no-change".into()),
            (fleet.stack("gilbert"), "update".into()),
            (fleet.stack("yorick"), "no-change".into()),
        ]
    );
    assert_eq!(report["stacks"][1]["status"], "UPDATE_COMPLETE");

    let after = snapshot(&fleet);
    // gilbert: the new behaviour reached its stack and a new task definition was registered.
    let new_config: Value =
        serde_json::from_str(after["gilbert"]["config"].as_str().expect("config")).expect("JSON");
    assert_eq!(new_config, compiled["gilbert"]);
    assert_ne!(after["gilbert"]["td"], before["gilbert"]["td"]);
    assert_eq!(after["gilbert"]["events"][0], "UPDATE_COMPLETE", "{after:#}");
    // yorick: untouched.
    assert_eq!(after["yorick"], before["yorick"]);
}

#[test]
fn plan_changes_nothing_and_leaves_nothing_behind() {
    let fleet = Fleet::new("plan", GILBERT_YORICK);
    let (code, plan, stderr) = fleet.json("plan", &[]);
    assert_eq!(code, 0, "{stderr}");
    let env = &plan["stacks"][0];
    assert_eq!(env["action"], "create");
    let added: Vec<&str> = env["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] == "add")
        .map(|c| c["logical_id"].as_str().expect("logical id"))
        .collect();
    assert!(added.contains(&"Vpc") && added.contains(&"Cluster"), "{added:?}");
    assert_eq!(plan["stacks"][1]["action"], "create");

    // `up --dry-run` is the same thing.
    let (code, dry, _) = fleet.json("up", &["--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(actions(&dry), actions(&plan));

    // The CREATE change set's stack shell (REVIEW_IN_PROGRESS) was removed again.
    let aws = boto(&format!(
        "out([s['StackName'] for s in cf.describe_stacks()['Stacks'] if s['StackName'].startswith('{f}')])",
        f = fleet.name
    ));
    assert_eq!(aws, serde_json::json!([]));
}

#[test]
fn status_json_shows_stacks_services_and_rollouts() {
    let fleet = Fleet::new("status", GILBERT_YORICK);
    fleet.up();
    let (code, status, stderr) = fleet.json("status", &[]);
    // moto never starts tasks: nothing runs, so the fleet is not healthy (exit 1).
    assert_eq!(code, 1, "{stderr}\n{status:#}");
    assert_eq!(status["fleet"], fleet.name.as_str());
    assert_eq!(status["region"], "us-east-1");
    assert_eq!(status["environment"]["stack"], fleet.name.as_str());
    assert_eq!(status["environment"]["cluster"], fleet.name.as_str());
    let thespians = status["thespians"].as_array().expect("thespians");
    let names: Vec<&str> = thespians
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["gilbert", "yorick"]);
    let gilbert = &thespians[0];
    assert_eq!(gilbert["stack"], fleet.stack("gilbert").as_str());
    assert_eq!(gilbert["stack_status"], "CREATE_COMPLETE");
    assert_eq!(gilbert["service"]["status"], "ACTIVE");
    assert_eq!(gilbert["service"]["desired"], 2);
    assert_eq!(gilbert["service"]["running"], 0);
    assert_eq!(gilbert["service"]["rollout_state"], "IN_PROGRESS");
    assert_eq!(gilbert["service"]["task_definition_revision"], 1);
    assert_eq!(gilbert["tasks"], serde_json::json!([]));
    assert_eq!(thespians[1]["service"]["desired"], 1);

    let out = fleet.run("status", &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("gilbert") && table.contains("0/2") && table.contains("IN_PROGRESS"),
        "{}",
        text(&out)
    );
}

#[test]
fn down_deletes_service_stacks_then_the_environment() {
    let fleet = Fleet::new("down", GILBERT_YORICK);
    fleet.up();

    // No terminal and no --yes: nothing is deleted.
    let out = fleet.run("down", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --yes"),
        "{}",
        text(&out)
    );

    let (code, report, stderr) = fleet.json("down", &["--yes", "--keep-environment"]);
    assert_eq!(code, 0, "{stderr}");
    let mut deleted: Vec<&str> = report["deleted"]
        .as_array()
        .expect("deleted")
        .iter()
        .map(|d| d["stack"].as_str().expect("stack"))
        .collect();
    deleted.sort_unstable();
    assert_eq!(deleted, vec![fleet.stack("gilbert"), fleet.stack("yorick")]);
    assert_eq!(report["kept_environment"], true);
    // (moto deletes the stacks but not the ECS services in them: its ECS models have no CloudFormation
    // delete, so the services themselves cannot be checked here.)
    let aws = boto(&format!(
        "out([s['StackName'] for s in cf.describe_stacks()['Stacks'] if s['StackName'].startswith('{f}')])",
        f = fleet.name
    ));
    assert_eq!(aws, serde_json::json!([fleet.name]));

    // Then the environment. moto 5.2.5 cannot delete it (DependencyViolation on the VPC: its route
    // tables have no delete handler); the failure is reported with its cause, exit 1.
    let out = fleet.run("down", &["--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains(&format!("stack {} failed", fleet.name))
            && stderr.contains("root cause: DependencyViolation"),
        "{}",
        text(&out)
    );
}

#[test]
fn up_deletes_the_stacks_of_removed_thespians() {
    let fleet = Fleet::new("removed", GILBERT_YORICK);
    fleet.up();
    let without_yorick = GILBERT_YORICK.replace(
        "  yorick:\n    methods:\n      A:\n        - sleep: 2ms\n        - call: gilbert.A\n",
        "",
    );
    assert!(!without_yorick.contains("yorick"));
    fleet.write(&without_yorick);

    let (code, plan, stderr) = fleet.json("plan", &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        actions(&plan).contains(&(fleet.stack("yorick"), "delete".into())),
        "{plan:#}"
    );

    let report = fleet.up();
    assert!(
        actions(&report).contains(&(fleet.stack("yorick"), "delete".into())),
        "{report:#}"
    );
    let aws = boto(&format!("out(stack('{}-yorick'))", fleet.name));
    assert!(aws.is_null(), "{aws:#}");
}

#[test]
fn status_and_down_find_stacks_by_tag_not_by_manifest() {
    let fleet = Fleet::new("bytag", GILBERT_YORICK);
    fleet.up();
    // A manifest that no longer names yorick (or anything valid beyond the fleet) still finds it.
    fleet.write(
        "thespians:\n  gilbert:\n    methods:\n      A:\n        - sleep: 1ms\naws:\n  region: us-east-1\n",
    );
    let (_, status, stderr) = fleet.json("status", &[]);
    let names: Vec<&str> = status["thespians"]
        .as_array()
        .unwrap_or_else(|| panic!("{stderr}"))
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["gilbert", "yorick"]);
    let (code, report, stderr) = fleet.json("down", &["--yes", "--keep-environment"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["deleted"].as_array().map(Vec::len), Some(2));
}

#[test]
fn endpoint_environment_variables_reach_every_client() {
    let fleet = Fleet::new("envurl", GILBERT_YORICK);
    // No --endpoint-url: the per-service variables of the AWS SDKs (CloudFormation for up, ECS too for
    // status) point at moto.
    let url = support::moto_url();
    let run = |subcommand: &str, args: &[&str]| {
        thespctl()
            .arg(subcommand)
            .args(["--target", "aws", "--file"])
            .arg(&fleet.manifest)
            .args(args)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL_CLOUDFORMATION", &url)
            .env("AWS_ENDPOINT_URL_ECS", &url)
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .output()
            .expect("run thespctl")
    };
    let out = run("up", &["--no-wait"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run("status", &["-o", "json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(status["thespians"][0]["service"]["desired"], 2, "{}", text(&out));
}

// ---------------------------------------------------------------------------------------------------
// Failures

#[test]
fn a_stack_that_fails_to_deploy_names_its_root_cause() {
    let fleet = Fleet::new("fail", GILBERT_YORICK);
    // A log group left behind by an earlier fleet of the same name: gilbert's stack cannot create its
    // own (moto answers ExecuteChangeSet with ResourceAlreadyExistsException; AWS would fail the
    // LogGroup resource and roll the stack back).
    boto(&format!(
        "
boto3.client('logs', **kw).create_log_group(logGroupName='/thespctl/{f}/gilbert')
out(True)",
        f = fleet.name
    ));
    let out = fleet.run("up", &["--no-wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains(&format!(
            "error: stack {} failed: cloudformation:ExecuteChangeSet failed",
            fleet.stack("gilbert")
        )),
        "{}",
        text(&out)
    );
    // moto answers in the Logs service's JSON, which the CloudFormation client cannot parse: the
    // response itself is quoted.
    assert!(
        stderr.contains("root cause: the service answered HTTP 400")
            && stderr.contains("ResourceAlreadyExistsException"),
        "{}",
        text(&out)
    );
    // yorick deployed regardless.
    assert!(
        !stderr.contains(&format!("stack {} failed", fleet.stack("yorick"))),
        "{}",
        text(&out)
    );
    let aws = boto(&format!("out(stack('{}-yorick')['StackStatus'])", fleet.name));
    assert_eq!(aws, "CREATE_COMPLETE");
}

#[test]
fn a_behaviour_too_large_for_a_parameter_is_refused_before_anything_is_deployed() {
    let steps: String = (0..400)
        .map(|i| format!("        - sleep: {}ms\n", i + 1))
        .collect();
    let body = format!(
        "thespians:\n  chatty:\n    methods:\n      A:\n{steps}aws:\n  region: us-east-1\n  image: registry.example.com/a:1\n"
    );
    let fleet = Fleet::new("large", &body);
    let out = fleet.run("up", &["--no-wait"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("thespian `chatty`") && stderr.contains("4096 bytes"),
        "{}",
        text(&out)
    );
    let aws = boto(&format!(
        "out([s['StackName'] for s in cf.describe_stacks()['Stacks'] if s['StackName'].startswith('{}')])",
        fleet.name
    ));
    assert_eq!(aws, serde_json::json!([]));
}

#[test]
fn a_stack_thespctl_did_not_make_is_left_alone() {
    let fleet = Fleet::new("foreign", GILBERT_YORICK);
    boto(&format!(
        "
cf.create_stack(StackName='{f}-gilbert', TemplateBody=json.dumps({{'Resources': {{'Q': {{'Type': 'AWS::SQS::Queue'}}}}}}))
out(True)",
        f = fleet.name
    ));
    let out = fleet.run("up", &["--no-wait"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "stack `{}` exists but was not made by thespctl",
            fleet.stack("gilbert")
        )),
        "{}",
        text(&out)
    );
    let aws = boto(&format!("out(stack('{}'))", fleet.name));
    assert!(aws.is_null(), "nothing deployed: {aws:#}");
}

#[test]
fn configuration_errors_get_one_sentence_with_the_fix() {
    let fleet = Fleet::new("config", &GILBERT_YORICK.replace("  region: us-east-1\n", ""));
    let home = support::tempdir();
    let bare = |cmd: &mut Command| {
        cmd.env("HOME", home.path())
            .env("AWS_CONFIG_FILE", home.path().join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("credentials"))
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION");
    };

    // No region anywhere.
    let mut cmd = fleet.cmd("status", &[]);
    bare(&mut cmd);
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no AWS region is configured: pass --region"),
        "{}",
        text(&out)
    );

    // A region, but no credentials.
    let mut cmd = fleet.cmd("status", &["--region", "us-east-1"]);
    bare(&mut cmd);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN");
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no AWS credentials were found"),
        "{}",
        text(&out)
    );

    // An endpoint nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let out = thespctl()
        .args([
            "status",
            "--target",
            "aws",
            "--region",
            "us-east-1",
            "--endpoint-url",
        ])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--file")
        .arg(&fleet.manifest)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not reach AWS"),
        "{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------------------
// Waiting for the ECS rollouts (moto never starts tasks, so they never complete)

#[test]
fn waiting_gives_up_at_the_timeout_and_names_what_still_rolls_out() {
    let fleet = Fleet::new("timeout", GILBERT_YORICK);
    let out = fleet.run("up", &["--timeout", "3s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: gave up waiting after"), "{}", text(&out));
    assert!(
        stderr.contains("service gilbert (deployment in progress)")
            && stderr.contains("service yorick (deployment in progress)"),
        "{}",
        text(&out)
    );
    // The stacks themselves are deployed: only the wait gave up.
    let aws = boto(&format!("out(stack('{}-gilbert')['StackStatus'])", fleet.name));
    assert_eq!(aws, "CREATE_COMPLETE");
}

#[test]
fn ctrl_c_while_waiting_exits_130_and_names_what_is_still_running() {
    let fleet = Fleet::new("ctrlc", GILBERT_YORICK);
    let mut child = fleet
        .cmd("up", &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn up");
    let stderr = child.stderr.take().expect("stderr");
    let mut guard = support::KillOnDrop(child);
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    // Readiness: the wait has started once a service's progress line is printed.
    for line in lines.by_ref() {
        let line = line.expect("read stderr");
        let ready = line.starts_with("service gilbert");
        seen.push(line);
        if ready {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.starts_with("service gilbert")),
        "{seen:#?}"
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(guard.0.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = support::wait_timeout(&mut guard.0, Duration::from_secs(20)).expect("exit after Ctrl-C");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let all = format!("{}\n{}", seen.join("\n"), rest.join("\n"));
    assert_eq!(status.code(), Some(130), "{all}");
    assert!(
        all.contains("error: interrupted; still in progress (not cancelled): ")
            && all.contains("service gilbert (deployment in progress)"),
        "{all}"
    );
}
