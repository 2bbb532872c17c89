//! Black-box tests of the fleet manifest: `thespctl validate` and `thespctl graph` on the shipped examples
//! and on a table of broken manifests.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{tempdir, thespctl};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_in(dir: &Path, args: &[&str]) -> Run {
    let out = thespctl()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run thespctl");
    Run {
        code: out.status.code().expect("thespctl exited by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(args: &[&str]) -> Run {
    run_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

/// Every `examples/*/thespian.yaml`, so a new example is covered without touching this file.
fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("examples/ exists")
        .map(|e| e.expect("read examples/").path().join("thespian.yaml"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
}

// ---------------------------------------------------------------------------------------------------
// The examples

#[test]
fn every_example_validates_and_compiles() {
    let examples = examples();
    assert!(
        examples.len() >= 3,
        "expected at least three examples, found {examples:?}"
    );
    for path in &examples {
        let shown = path.display().to_string();
        let text = run(&["validate", "-f", &shown]);
        assert_eq!(text.code, 0, "{shown}: {}", text.stderr);
        assert!(text.stdout.contains("is valid"), "{shown}: {}", text.stdout);
        assert!(
            !text.stderr.contains("warning"),
            "examples carry no warnings: {}",
            text.stderr
        );

        let doc = json(&run(&["validate", "-f", &shown, "--output", "json"]).stdout);
        assert_eq!(doc["valid"], true, "{shown}");
        assert_eq!(doc["errors"], Value::Array(vec![]), "{shown}");
        for t in doc["thespians"].as_array().expect("thespians") {
            // The compiled config is the agent's format: three method keys, each null or a function.
            let config = &t["config"];
            for key in ["grpc_method_a", "grpc_method_b", "grpc_method_c"] {
                let method = &config[key];
                assert!(
                    method.is_null()
                        || (method["tracing_name"].is_string() && method["operations"].is_array()),
                    "{shown}: {}.{key} = {method}",
                    t["name"]
                );
            }
            assert_eq!(t["config_hash"].as_str().map(str::len), Some(64));
        }

        // The library entry point the targets use agrees with the command.
        let plan = thespctl::fleet::load_plan(path).unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(plan.fleet, doc["fleet"].as_str().expect("fleet name"));
        assert_eq!(
            plan.thespians.len(),
            doc["thespians"].as_array().map_or(0, Vec::len)
        );
        for (p, t) in plan
            .thespians
            .iter()
            .zip(doc["thespians"].as_array().into_iter().flatten())
        {
            assert_eq!(p.name, t["name"].as_str().unwrap_or_default());
            assert_eq!(json(&p.config_json), t["config"], "{shown}: {}", p.name);
            assert_eq!(p.config_hash, t["config_hash"].as_str().unwrap_or_default());
        }
    }
}

fn example(name: &str) -> String {
    format!("examples/{name}/thespian.yaml")
}

fn thespian<'d>(doc: &'d Value, name: &str) -> &'d Value {
    doc["thespians"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no thespian {name} in {doc}"))
}

#[test]
fn gilbert_yorick_is_yorick_calling_two_gilberts() {
    let doc = json(&run(&["validate", "-f", &example("gilbert-yorick"), "-o", "json"]).stdout);
    let gilbert = thespian(&doc, "gilbert");
    assert_eq!(gilbert["replicas"], 2);
    let yorick = thespian(&doc, "yorick");
    assert_eq!(yorick["callees"], serde_json::json!(["gilbert"]));
    let call = &yorick["config"]["grpc_method_a"]["operations"][1]["Action"]["CallService"];
    assert_eq!(call["service_address"], "http://gilbert");
    assert_eq!(call["service_port"], "80");
    assert_eq!(call["grpc_method"], "A");
    assert_eq!(call["tracing_name"], "call gilbert.A");
    assert_eq!(yorick["config"]["grpc_method_a"]["tracing_name"], "yorick.A");
}

#[test]
fn the_shop_has_fan_out_failures_and_concurrency() {
    let doc = json(&run(&["validate", "-f", &example("shop"), "-o", "json"]).stdout);
    let thespians = doc["thespians"].as_array().expect("thespians");
    assert!(thespians.len() >= 6, "{} thespians", thespians.len());
    let text = doc.to_string();
    assert!(
        text.contains("\"ConcurrentActions\""),
        "no concurrency in the shop"
    );
    assert!(
        text.contains("\"failure_chance\""),
        "no failure chances in the shop"
    );
    let fan_out = thespians
        .iter()
        .filter_map(|t| t["callees"].as_array())
        .map(Vec::len)
        .max();
    assert!(fan_out >= Some(3), "the widest fan-out is {fan_out:?}");
    assert!(thespians.iter().any(|t| t["replicas"].as_u64() > Some(1)));
}

#[test]
fn a_config_file_is_used_unchanged_and_its_calls_count() {
    let doc = json(&run(&["validate", "-f", &example("legacy-config"), "-o", "json"]).stdout);
    let yorick = thespian(&doc, "yorick");
    assert_eq!(yorick["source"], "config_file");
    assert!(
        yorick["config_file"]
            .as_str()
            .is_some_and(|p| p.ends_with("yorick.json"))
    );
    assert_eq!(yorick["callees"], serde_json::json!(["gilbert", "horatio"]));
    // Same behaviour as the file: re-read it and compare (service_name is dropped: SERVICE_NAME wins).
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/legacy-config/yorick.json");
    let mut original = json(&std::fs::read_to_string(file).expect("read yorick.json"));
    original
        .as_object_mut()
        .expect("an object")
        .remove("service_name");
    assert_eq!(yorick["config"], original);
}

// ---------------------------------------------------------------------------------------------------
// Bad manifests: exit 2, and a message naming file, line, column and what to do

struct Bad {
    name: &'static str,
    manifest: &'static str,
    /// Other files beside the manifest (config files).
    files: &'static [(&'static str, &'static str)],
    /// Fragments that must all appear on stderr.
    expect: &'static [&'static str],
}

const BAD: &[Bad] = &[
    Bad {
        name: "YAML syntax",
        manifest: "fleet: demo\nthespians:\n  gilbert: {methods: {A: [}\n",
        files: &[],
        expect: &["thespian.yaml:3:", "invalid YAML"],
    },
    Bad {
        name: "empty file",
        manifest: "",
        files: &[],
        expect: &["thespian.yaml: the manifest is empty"],
    },
    Bad {
        name: "no fleet",
        manifest: "thespians:\n  gilbert: {methods: {A: []}}\n",
        files: &[],
        expect: &["thespian.yaml:1:1: the manifest has no `fleet:`"],
    },
    Bad {
        name: "fleet name",
        manifest: "fleet: My_Fleet\nthespians:\n  gilbert: {methods: {A: []}}\n",
        files: &[],
        expect: &[
            "thespian.yaml:1:8: fleet name `My_Fleet` is not valid",
            "try `my-fleet`",
        ],
    },
    Bad {
        name: "fleet name too long",
        manifest: "fleet: a-fleet-name-that-is-far-too-long-for-stacks\nthespians:\n  g: {methods: {A: []}}\n",
        files: &[],
        expect: &["thespian.yaml:1:8:", "the limit is 32"],
    },
    Bad {
        name: "thespian name",
        manifest: "fleet: demo\nthespians:\n  Gilbert: {methods: {A: []}}\n",
        files: &[],
        expect: &[
            "thespian.yaml:3:3: thespian name `Gilbert` is not valid",
            "try `gilbert`",
        ],
    },
    Bad {
        name: "unknown top-level key",
        manifest: "fleet: demo\nthespian:\n  gilbert: {methods: {A: []}}\n",
        files: &[],
        expect: &["thespian.yaml:2:1: unknown key `thespian` in the manifest; did you mean `thespians`?"],
    },
    Bad {
        name: "unknown thespian key",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    replica: 2\n    methods: {A: []}\n",
        files: &[],
        expect: &["thespian.yaml:4:5: unknown key `replica` in thespian `gilbert`; did you mean `replicas`?"],
    },
    Bad {
        name: "zero replicas",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    replicas: 0\n    methods: {A: []}\n",
        files: &[],
        expect: &[
            "thespian.yaml:4:15: replicas must be at least 1",
            "remove it from the manifest",
        ],
    },
    Bad {
        name: "absurd replicas",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    replicas: 5000\n    methods: {A: []}\n",
        files: &[],
        expect: &["thespian.yaml:4:15: replicas must be a whole number from 1 to 100"],
    },
    Bad {
        name: "methods and config_file",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    methods: {A: []}\n    config_file: g.json\n",
        files: &[],
        expect: &["thespian.yaml:5:5: thespian `gilbert` has both `methods:` and `config_file:`"],
    },
    Bad {
        name: "unknown callee",
        manifest: "fleet: demo\nthespians:\n  gilbert: {methods: {A: []}}\n  yorick:\n    methods:\n      A:\n        - call: gilbret.A\n",
        files: &[],
        expect: &["thespian.yaml:7:17: yorick.A calls unknown thespian `gilbret`; did you mean `gilbert`?"],
    },
    Bad {
        name: "two-thespian cycle",
        manifest: "fleet: demo\nthespians:\n  yorick:\n    methods:\n      A: [{call: gilbert.B}]\n  gilbert:\n    methods:\n      B: [{call: yorick.A}]\n",
        files: &[],
        expect: &["thespian.yaml:5:18: call cycle: yorick.A → gilbert.B → yorick.A"],
    },
    Bad {
        name: "every cycle",
        manifest: concat!(
            "fleet: demo\n",
            "thespians:\n",
            "  a: {methods: {A: [{call: b.A}, {call: c.A}]}}\n",
            "  b: {methods: {A: [{call: c.A}]}}\n",
            "  c: {methods: {A: [{call: a.A}], B: [{call: c.B}]}}\n",
        ),
        files: &[],
        expect: &[
            "call cycle: a.A → b.A → c.A → a.A",
            "call cycle: a.A → c.A → a.A",
            "thespian.yaml:5:46: call cycle: c.B → c.B",
        ],
    },
    Bad {
        name: "failure chance out of range",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    methods:\n      A:\n        - sleep: {ms: 20, fail: 1.5}\n        - sleep: {ms: 20, fail: 150%}\n",
        files: &[],
        expect: &[
            "thespian.yaml:6:33: fail is the chance that this step fails: a number between 0 and 1",
            "found 1.5",
            "thespian.yaml:7:33:",
            "found `150%`",
        ],
    },
    Bad {
        name: "call to an undefined method",
        manifest: "fleet: demo\nthespians:\n  gilbert: {methods: {A: [], B: ~}}\n  yorick: {methods: {A: [{call: gilbert.B}]}}\n",
        files: &[],
        expect: &[
            "thespian.yaml:4:33: yorick.A calls gilbert.B, but gilbert does not define B (it defines `A`)",
            "`B: []` answers OK at once",
        ],
    },
    Bad {
        name: "step typo",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    methods:\n      A:\n        - slep: 20ms\n",
        files: &[],
        expect: &["thespian.yaml:6:11: unknown key `slep` in a step; did you mean `sleep`?"],
    },
    Bad {
        name: "bad duration",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    methods:\n      A:\n        - sleep: twenty\n",
        files: &[],
        expect: &["thespian.yaml:6:18: sleep must be a duration such as `20ms`"],
    },
    Bad {
        name: "lower-case method",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    methods:\n      a: []\n",
        files: &[],
        expect: &["thespian.yaml:5:7: method names are upper case: write `A`"],
    },
    Bad {
        name: "missing config file",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    config_file: configs/gilbert.json\n",
        files: &[],
        expect: &["thespian.yaml:4:18: config_file `configs/gilbert.json` not found"],
    },
    Bad {
        name: "config file that does not parse",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    config_file: gilbert.json\n",
        files: &[(
            "gilbert.json",
            "{\n  \"grpc_method_a\": {\n    \"tracing_name\": \"a\",\n    \"operations\": [\n      {\"Action\": {\"Sleep\": {\"tracing_name\": \"s\", \"duration_ms\": \"ten\"}}}\n    ]\n  }\n}\n",
        )],
        expect: &[
            "gilbert.json:5:",
            "grpc_method_a.operations[0].Action.Sleep.duration_ms: invalid type",
        ],
    },
    Bad {
        name: "config file with a failure chance out of range",
        manifest: "fleet: demo\nthespians:\n  gilbert:\n    config_file: gilbert.json\n",
        files: &[(
            "gilbert.json",
            "{\"grpc_method_a\": {\"tracing_name\": \"a\", \"operations\": [\n  {\"Action\": {\"Sleep\": {\"tracing_name\": \"s\", \"duration_ms\": 1, \"failure_chance\": 2}}}]}}\n",
        )],
        expect: &[
            "gilbert.json:2:",
            "grpc_method_a.operations[0].Action.Sleep.failure_chance: ",
            "between 0 and 1, got 2",
        ],
    },
    Bad {
        name: "aws settings",
        manifest: "fleet: demo\nthespians:\n  g: {methods: {A: []}}\naws:\n  regoin: eu-west-1\n  alb:\n    certificate_arn: arn:aws:acm:eu-west-1:123456789012:certificate/x\n    developer_ip: my laptop\n    domain: thespians.example.com\n    hosted_zone_id: Z0123456789\n",
        files: &[],
        expect: &[
            "thespian.yaml:5:3: unknown key `regoin` in the aws section; did you mean `region`?",
            "thespian.yaml:8:19: aws.alb.developer_ip `my laptop` is not valid",
            "IPv4 address",
        ],
    },
    Bad {
        name: "target",
        manifest: "fleet: demo\ntarget: kubernetes\nthespians:\n  g: {methods: {A: []}}\n",
        files: &[],
        expect: &["thespian.yaml:2:9: target must be `local` or `aws`, found `kubernetes`"],
    },
];

fn write_case(case: &Bad) -> tempfile::TempDir {
    let dir = tempdir();
    std::fs::write(dir.path().join("thespian.yaml"), case.manifest).expect("write manifest");
    for (name, text) in case.files {
        std::fs::write(dir.path().join(name), text).expect("write config file");
    }
    dir
}

#[test]
fn bad_manifests_exit_2_with_the_place_and_the_fix() {
    let mut failures = Vec::new();
    for case in BAD {
        let dir = write_case(case);
        let out = run_in(dir.path(), &["validate"]);
        if out.code != 2 {
            failures.push(format!(
                "{}: exit {} (want 2)\n{}",
                case.name, out.code, out.stderr
            ));
        }
        for fragment in case.expect {
            if !out.stderr.contains(fragment) {
                failures.push(format!(
                    "{}: stderr lacks {fragment:?}:\n{}",
                    case.name, out.stderr
                ));
            }
        }
        if out.stderr.contains("panicked") {
            failures.push(format!("{}: panicked:\n{}", case.name, out.stderr));
        }
        // `up` validates with the same code: graph (which needs a valid manifest) fails the same way.
        let graph = run_in(dir.path(), &["graph"]);
        if graph.code != 2 || !case.expect.iter().all(|f| graph.stderr.contains(f)) {
            failures.push(format!(
                "{}: graph exit {}:\n{}",
                case.name, graph.code, graph.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_error_is_reported_in_one_run() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("thespian.yaml"),
        concat!(
            "fleet: Demo\n",
            "thespians:\n",
            "  yorick:\n",
            "    replicas: 0\n",
            "    methods:\n",
            "      A: [{call: gilbret.A}, {sleep: {ms: 1, fail: 2}}]\n",
            "  gilbert: {methods: {A: [{call: yorick.A}]}, extra: 1}\n",
        ),
    )
    .expect("write manifest");
    let out = run_in(dir.path(), &["validate", "--output", "json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.is_empty(),
        "JSON mode keeps stderr quiet: {}",
        out.stderr
    );
    let doc = json(&out.stdout);
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["fleet"], Value::Null);
    assert_eq!(doc["thespians"], serde_json::json!([]));
    let errors = doc["errors"].as_array().expect("errors");
    let places: Vec<(u64, u64)> = errors
        .iter()
        .map(|e| (e["line"].as_u64().unwrap_or(0), e["column"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(
        places,
        [(1, 8), (4, 15), (6, 18), (6, 52), (7, 47)],
        "{errors:#?}"
    );
    for e in errors {
        assert_eq!(e["path"], "thespian.yaml");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(e["at"].is_string());
    }
    assert_eq!(errors[2]["at"], "thespians.yorick.methods.A[0].call");
}

#[test]
fn warnings_do_not_fail_validation() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("thespian.yaml"),
        "fleet: demo\nthespians:\n  yorick:\n    config_file: yorick.json\n  gilbert: {methods: {A: []}}\n",
    )
    .expect("write manifest");
    std::fs::write(
        dir.path().join("yorick.json"),
        r#"{"grpc_method_a": {"tracing_name": "y", "operations": [
            {"Action": {"CallService": {"service_address": "http://gilbret", "service_port": "80", "grpc_method": "A"}}},
            {"Action": {"CallService": {"service_address": "http://api.example.com", "service_port": "8080", "grpc_method": "B"}}}
        ]}}"#,
    )
    .expect("write config");
    let out = run_in(dir.path(), &["validate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "warning: yorick.json: grpc_method_a.operations[0].Action.CallService: yorick.A calls http://gilbret:80, \
             which is not a thespian of this fleet (did you mean `gilbert`?)"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("warning:").count(),
        1,
        "http://api.example.com:8080 is external: {}",
        out.stderr
    );
    assert!(out.stdout.contains("(1 warning)"), "{}", out.stdout);
    let doc = json(&run_in(dir.path(), &["validate", "-o", "json"]).stdout);
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["warnings"].as_array().map(Vec::len), Some(1));
    // The unknown name is an external call, so it is not a callee of the fleet.
    assert_eq!(thespian(&doc, "yorick")["callees"], serde_json::json!([]));

    let graph = json(&run_in(dir.path(), &["graph", "-o", "json"]).stdout);
    let external: Vec<&str> = graph["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["kind"] == "external")
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(external, ["http://api.example.com:8080/B", "http://gilbret:80/A"]);
}

#[test]
fn a_missing_manifest_is_bad_input() {
    let dir = tempdir();
    let out = run_in(dir.path(), &["validate"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("could not read the manifest thespian.yaml; pass -f/--file PATH"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------------
// graph

#[test]
fn graph_tree_of_the_pair() {
    let out = run(&["graph", "-f", &example("gilbert-yorick")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "gilbert.B\nyorick.A\n└── gilbert.A\n");
}

#[test]
fn graph_formats_are_deterministic_and_complete() {
    let shop = example("shop");
    let doc = json(&run(&["graph", "-f", &shop, "--output", "json"]).stdout);
    let edges = doc["edges"].as_array().expect("edges");
    let nodes = doc["nodes"].as_array().expect("nodes");
    assert!(edges.len() >= 10, "{edges:#?}");
    assert!(
        edges
            .iter()
            .any(|e| e["from"] == "frontend.A" && e["to"] == "catalog.A")
    );
    assert!(edges.iter().all(|e| e["calls"].as_u64() >= Some(1)));
    // Every edge joins two nodes of the graph.
    for e in edges {
        for end in ["from", "to"] {
            assert!(
                nodes.iter().any(|n| n["id"] == e[end]),
                "{} is not a node",
                e[end]
            );
        }
    }
    let mut sorted = edges.clone();
    sorted.sort_by_key(|e| (e["from"].to_string(), e["to"].to_string()));
    assert_eq!(&sorted, edges, "edges are sorted");

    for format in ["tree", "mermaid", "dot"] {
        let first = run(&["graph", "-f", &shop, "--format", format]);
        assert_eq!(first.code, 0, "{format}: {}", first.stderr);
        let second = run(&["graph", "-f", &shop, "--format", format]);
        assert_eq!(
            first.stdout, second.stdout,
            "{format} output changes between runs"
        );
        // Every edge is drawn.
        for e in edges {
            let (from, to) = (
                e["from"].as_str().unwrap_or_default(),
                e["to"].as_str().unwrap_or_default(),
            );
            let drawn = match format {
                "dot" => first.stdout.contains(&format!("\"{from}\" -> \"{to}\"")),
                "mermaid" => {
                    let id = |s: &str| s.replace(['.', '-'], "_");
                    first.stdout.lines().any(|l| {
                        l.trim_start().starts_with(&format!("{} -->", id(from)))
                            && l.ends_with(&format!(" {}", id(to)))
                    })
                }
                _ => first.stdout.contains(to),
            };
            assert!(drawn, "{format}: edge {from} → {to} missing:\n{}", first.stdout);
        }
    }
    let mermaid = run(&["graph", "-f", &shop, "--format", "mermaid"]).stdout;
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(
        mermaid.contains("subgraph t_frontend[\"frontend (2 replicas)\"]"),
        "{mermaid}"
    );
    let dot = run(&["graph", "-f", &shop, "--format", "dot"]).stdout;
    assert!(dot.starts_with("digraph \"shop\" {"), "{dot}");
}
