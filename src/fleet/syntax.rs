//! The `methods:` authoring syntax, compiled to the agent's behaviour tree.
//!
//! ```yaml
//! methods:
//!   A:                                   # a method is a list of steps, run in order
//!     - sleep: 20ms                      # or 20 (milliseconds), or {ms: 20, fail: 0.1, name: db}
//!     - call: gilbert.B                  # or {thespian: gilbert, method: B, timeout: 2s, retries: 1, fail: 5%, name: …}
//!     - concurrently:                    # all at once; waits for all, fails if any fails
//!         - call: gilbert.A
//!         - sleep: {ms: 10, fail: 0.05}
//!     - function:                        # a named group of steps (a span of its own)
//!         name: checkout
//!         steps: [{sleep: 5ms}]
//!   B: []                                # defined, does nothing: answers OK at once
//!   C:                                   # or {name: "custom span name", steps: [...]}
//! ```
//!
//! Generated span names: the method `yorick.A`, `sleep 20ms`, `call gilbert.B`; `name:` overrides them.
//! A call to thespian `gilbert` compiles to `service_address: http://gilbert`, `service_port: "80"`: the
//! ECS Service Connect alias, which the local target maps with `THESPIAN_RESOLVE`.

use std::path::PathBuf;
use std::time::Duration;

use super::agent_config::{Action, CallService, Config, ConfigExt, Function, GrpcMethod, Operation, Sleep};
use super::diag::{Diags, join, list, unknown_key};
use super::yaml::{Node, Pos, Value, quote};

/// The longest sleep or call timeout accepted: anything longer is a typo, not a simulation.
pub const MAX_DURATION: Duration = Duration::from_secs(3_600);
/// The most retries a call may ask for.
pub const MAX_RETRIES: i64 = 10;
/// The port of every thespian's Service Connect alias.
pub const SERVICE_PORT: u16 = 80;

const STEP_KINDS: [&str; 4] = ["sleep", "call", "concurrently", "function"];

/// A call from one of this thespian's methods to a thespian of the fleet, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSite {
    /// The calling method.
    pub from: GrpcMethod,
    /// The callee thespian (not yet checked to exist).
    pub thespian: String,
    pub method: GrpcMethod,
    /// The file holding the call (the manifest, or a `config_file`).
    pub file: PathBuf,
    pub pos: Option<Pos>,
    /// Key path (YAML) or JSON path of the call.
    pub at: String,
}

/// A short scalar as written, for examples in messages.
fn scalar_text(node: &Node) -> Option<String> {
    let text = match &node.value {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        _ => return None,
    };
    (text.len() <= 40 && !text.contains(['{', '}', ',', '\n'])).then_some(text)
}

/// The service address a call to `thespian` compiles to.
pub fn service_address(thespian: &str) -> String {
    format!("http://{thespian}")
}

/// A thespian's compiled `methods:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// Only deployable when no error was reported: broken steps are left out.
    pub config: Config,
    /// Every call whose target could be read, even in an otherwise broken step, so that callees are
    /// checked in the same run.
    pub calls: Vec<CallSite>,
    /// The methods written with a behaviour (not null), broken or not.
    pub declared: Vec<GrpcMethod>,
}

/// Compiles a thespian's `methods:` mapping. Problems go into `diags`. `None` when `methods` is not even
/// a mapping (nothing is known about the thespian's methods).
pub fn compile_methods(thespian: &str, node: &Node, at: &str, diags: &mut Diags) -> Option<Compiled> {
    let mut compiled = Compiled {
        config: Config::default(),
        calls: Vec::new(),
        declared: Vec::new(),
    };
    let Some(entries) = node.as_map() else {
        diags.error(
            node.pos,
            at,
            format!(
                "methods must be a mapping of method name (A, B, C) to a list of steps, found {}",
                node.kind()
            ),
        );
        return None;
    };
    for (key, value) in entries {
        let at = join(at, &key.name);
        let Some(method) = GrpcMethod::parse(&key.name) else {
            let upper = key.name.to_uppercase();
            let message = if GrpcMethod::parse(&upper).is_some() {
                format!("method names are upper case: write `{upper}`, not `{}`", key.name)
            } else {
                unknown_key(
                    &key.name,
                    "methods (a Thespian has exactly the methods A, B and C)",
                    &["A", "B", "C"],
                )
            };
            diags.error(key.pos, &at, message);
            continue;
        };
        if !value.is_null() {
            compiled.declared.push(method);
        }
        let mut compiler = Compiler {
            thespian,
            from: method,
            diags,
            calls: &mut compiled.calls,
        };
        let function = compiler.method(value, &at);
        compiled.config.set_method(method, function);
    }
    compiled.declared.sort();
    compiled.declared.dedup();
    Some(compiled)
}

struct Compiler<'a> {
    thespian: &'a str,
    from: GrpcMethod,
    diags: &'a mut Diags,
    calls: &'a mut Vec<CallSite>,
}

impl Compiler<'_> {
    /// A method: null (undefined), a list of steps, or `{name, steps}`.
    fn method(&mut self, node: &Node, at: &str) -> Option<Function> {
        let default_name = format!("{}.{}", self.thespian, self.from);
        match &node.value {
            Value::Null => None,
            Value::Seq(_) => Some(Function {
                tracing_name: default_name,
                operations: self.steps(node, at),
            }),
            Value::Map(entries) if entries.iter().any(|(k, _)| STEP_KINDS.contains(&k.name.as_str())) => {
                self.diags.error(
                    node.pos,
                    at,
                    format!(
                        "a method is a list of steps: write each step on its own `- ` line under `{}:` \
                         (e.g. `- sleep: 20ms`)",
                        self.from
                    ),
                );
                None
            }
            Value::Map(_) => {
                let what = format!("method {default_name}");
                let fields = self.diags.mapping(node, at, &what, &["name", "steps"])?;
                let name = fields
                    .get("name")
                    .and_then(|n| self.name(n, &join(at, "name")))
                    .unwrap_or(default_name);
                let operations = match fields.get("steps") {
                    Some(steps) => self.steps(steps, &join(at, "steps")),
                    None => {
                        self.diags.error(
                            node.pos,
                            at,
                            format!("{what} has no `steps:`; add a list of steps (`steps: []` for none)"),
                        );
                        Vec::new()
                    }
                };
                Some(Function {
                    tracing_name: name,
                    operations,
                })
            }
            _ => {
                self.diags.error(
                    node.pos,
                    at,
                    format!(
                        "method {default_name} must be a list of steps (or `[]` to answer OK at once), found {}",
                        node.kind()
                    ),
                );
                None
            }
        }
    }

    fn steps(&mut self, node: &Node, at: &str) -> Vec<Operation> {
        let Value::Seq(items) = &node.value else {
            self.diags.error(
                node.pos,
                at,
                format!(
                    "steps must be a list (each step on its own `- ` line), found {}",
                    node.kind()
                ),
            );
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.step(item, &format!("{at}[{i}]")))
            .collect()
    }

    /// One step: a mapping with exactly one of `sleep`, `call`, `concurrently`, `function`.
    fn step(&mut self, node: &Node, at: &str) -> Option<Operation> {
        let (kind, value, kind_at) = self.step_kind(node, at)?;
        match kind {
            "concurrently" => self
                .concurrently(value, &kind_at)
                .map(Operation::ConcurrentActions),
            _ => self.action(kind, value, &kind_at).map(Operation::Action),
        }
    }

    /// An action inside `concurrently:`. A nested `concurrently` becomes a function of its own (the agent's
    /// format has no concurrent block inside a concurrent block; the behaviour is the same).
    fn concurrent_action(&mut self, node: &Node, at: &str) -> Option<Action> {
        let (kind, value, kind_at) = self.step_kind(node, at)?;
        match kind {
            "concurrently" => self.concurrently(value, &kind_at).map(|actions| {
                Action::Function(Function {
                    tracing_name: "concurrently".to_owned(),
                    operations: vec![Operation::ConcurrentActions(actions)],
                })
            }),
            _ => self.action(kind, value, &kind_at),
        }
    }

    fn step_kind<'n>(&mut self, node: &'n Node, at: &str) -> Option<(&'static str, &'n Node, String)> {
        let Some(entries) = node.as_map() else {
            let hint = match node.as_str() {
                Some(text) if text.starts_with("sleep") || text.starts_with("call") => {
                    format!(
                        "; write `{}: …` with a colon",
                        text.split_whitespace().next().unwrap_or(text)
                    )
                }
                _ => String::new(),
            };
            self.diags.error(
                node.pos,
                at,
                format!(
                    "a step must be one of {} (e.g. `- sleep: 20ms`), found {}{hint}",
                    list(&STEP_KINDS),
                    node.kind()
                ),
            );
            return None;
        };
        let kinds: Vec<_> = entries
            .iter()
            .filter_map(|(k, v)| STEP_KINDS.iter().find(|s| **s == k.name).map(|s| (*s, k, v)))
            .collect();
        for (key, option_value) in entries {
            if STEP_KINDS.contains(&key.name.as_str()) {
                continue;
            }
            let message = match (kinds.first(), key.name.as_str()) {
                // `- sleep: 20ms\n  fail: 0.1`: options belong inside the step.
                (
                    Some((kind, _, value)),
                    option @ ("fail" | "name" | "ms" | "timeout" | "retries" | "method" | "steps"),
                ) => {
                    let example = match (*kind, scalar_text(value), scalar_text(option_value)) {
                        ("sleep", Some(ms), Some(v)) => format!("sleep: {{ms: {ms}, {option}: {v}}}"),
                        _ => format!("{kind}: {{…, {option}: …}}"),
                    };
                    format!(
                        "`{option}` belongs inside the `{kind}` step: write `{example}` (a step has exactly \
                         one of {})",
                        list(&STEP_KINDS)
                    )
                }
                _ => unknown_key(&key.name, "a step", &STEP_KINDS),
            };
            self.diags.error(key.pos, &join(at, &key.name), message);
        }
        match kinds.as_slice() {
            [(kind, key, value)] => Some((kind, value, join(at, &key.name))),
            [] => {
                if entries.is_empty() {
                    self.diags.error(
                        node.pos,
                        at,
                        format!("empty step; a step is one of {}", list(&STEP_KINDS)),
                    );
                }
                None
            }
            [_, (_, second, _), ..] => {
                self.diags.error(
                    second.pos,
                    &join(at, &second.name),
                    format!(
                        "a step does one thing; start a new step with `- {}:` (on its own line)",
                        second.name
                    ),
                );
                None
            }
        }
    }

    fn concurrently(&mut self, node: &Node, at: &str) -> Option<Vec<Action>> {
        let Value::Seq(items) = &node.value else {
            self.diags.error(
                node.pos,
                at,
                format!(
                    "concurrently takes a list of steps to run at once, found {}",
                    node.kind()
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.diags.error(
                node.pos,
                at,
                "concurrently needs at least one step; remove it or add steps",
            );
            return None;
        }
        let errors = self.diags.errors.len();
        let actions: Vec<Action> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.concurrent_action(item, &format!("{at}[{i}]")))
            .collect();
        (self.diags.errors.len() == errors).then_some(actions)
    }

    fn action(&mut self, kind: &str, node: &Node, at: &str) -> Option<Action> {
        match kind {
            "sleep" => self.sleep(node, at).map(Action::Sleep),
            "call" => self.call(node, at).map(Action::CallService),
            _ => self.function(node, at).map(Action::Function),
        }
    }

    /// `sleep: 20ms` | `sleep: 20` | `sleep: {ms: 20, fail: 0.1, name: …}`
    fn sleep(&mut self, node: &Node, at: &str) -> Option<Sleep> {
        let (ms, fail, name) = match &node.value {
            Value::Map(_) => {
                let fields = self.diags.mapping(node, at, "sleep", &["ms", "fail", "name"])?;
                let ms = match fields.get("ms") {
                    Some(ms) => self.duration_ms(ms, &join(at, "ms"), "sleep", true),
                    None => {
                        self.diags.error(
                            node.pos,
                            at,
                            "sleep needs `ms:` (how long, e.g. `ms: 20` or `ms: 1.5s`)",
                        );
                        None
                    }
                };
                let fail = fields.get("fail").map(|f| self.chance(f, &join(at, "fail")));
                let name = fields.get("name").map(|n| self.name(n, &join(at, "name")));
                (ms, fail, name)
            }
            _ => (self.duration_ms(node, at, "sleep", true), None, None),
        };
        let ms = ms?;
        Some(Sleep {
            tracing_name: name.flatten().unwrap_or_else(|| format!("sleep {ms}ms")),
            duration_ms: ms,
            failure_chance: fail.flatten(),
        })
    }

    /// `call: gilbert.B` | `call: gilbert` (method A) | `call: {thespian, method, timeout, retries, fail, name}`
    fn call(&mut self, node: &Node, at: &str) -> Option<CallService> {
        let mut call = CallService {
            tracing_name: None,
            service_address: String::new(),
            service_port: SERVICE_PORT,
            grpc_method: GrpcMethod::A,
            timeout_ms: None,
            retries: None,
            failure_chance: None,
        };
        let errors = self.diags.errors.len();
        let (thespian, method) = match &node.value {
            Value::Str(target) => match self.call_target(target, node.pos, at) {
                Some((thespian, method)) => (Some(thespian), Some(method)),
                None => (None, None),
            },
            Value::Map(_) => {
                let allowed = ["thespian", "method", "timeout", "retries", "fail", "name"];
                let fields = self.diags.mapping(node, at, "call", &allowed)?;
                let thespian = match fields.get("thespian") {
                    Some(t) => match t.as_str() {
                        Some(name) => Some(name.to_owned()),
                        None => {
                            self.diags.error(
                                t.pos,
                                &join(at, "thespian"),
                                format!("thespian must be a thespian's name, found {}", t.kind()),
                            );
                            None
                        }
                    },
                    None => {
                        self.diags.error(
                            node.pos,
                            at,
                            "call needs `thespian:` (the name of the thespian to call)",
                        );
                        None
                    }
                };
                let method = match fields.get("method") {
                    Some(m) => self.method_name(m, &join(at, "method")),
                    None => Some(GrpcMethod::A),
                };
                if let Some(t) = fields.get("timeout") {
                    call.timeout_ms = self.duration_ms(t, &join(at, "timeout"), "timeout", false);
                }
                if let Some(r) = fields.get("retries") {
                    call.retries = self.retries(r, &join(at, "retries"));
                }
                if let Some(f) = fields.get("fail") {
                    call.failure_chance = self.chance(f, &join(at, "fail"));
                }
                if let Some(n) = fields.get("name") {
                    call.tracing_name = self.name(n, &join(at, "name"));
                }
                (thespian, method)
            }
            _ => {
                self.diags.error(
                    node.pos,
                    at,
                    format!(
                        "call takes `THESPIAN.METHOD` (e.g. `call: gilbert.A`) or a mapping \
                         {{thespian, method, timeout, retries, fail, name}}, found {}",
                        node.kind()
                    ),
                );
                return None;
            }
        };
        let (thespian, method) = (thespian?, method?);
        // Recorded even when an option is broken: the callee gets checked in the same run.
        self.calls.push(CallSite {
            from: self.from,
            thespian: thespian.clone(),
            method,
            file: self.diags.file().to_path_buf(),
            pos: Some(node.pos),
            at: at.to_owned(),
        });
        if self.diags.errors.len() != errors {
            return None;
        }
        call.tracing_name
            .get_or_insert_with(|| format!("call {thespian}.{method}"));
        call.service_address = service_address(&thespian);
        call.grpc_method = method;
        Some(call)
    }

    fn call_target(&mut self, target: &str, pos: Pos, at: &str) -> Option<(String, GrpcMethod)> {
        let (thespian, method) = match target.rsplit_once('.') {
            Some((thespian, method)) => (thespian, method),
            None => (target, "A"),
        };
        let method = match GrpcMethod::parse(method) {
            Some(m) => m,
            None => {
                let upper = method.to_uppercase();
                let hint = if GrpcMethod::parse(&upper).is_some() {
                    format!("; method names are upper case: `{thespian}.{upper}`")
                } else {
                    String::new()
                };
                self.diags.error(
                    pos,
                    at,
                    format!(
                        "cannot call `{}`: write THESPIAN.METHOD with METHOD one of A, B, C \
                         (e.g. `gilbert.A`){hint}",
                        quote(target)
                    ),
                );
                return None;
            }
        };
        if thespian.is_empty() {
            self.diags
                .error(pos, at, "call names no thespian; write `call: gilbert.A`");
            return None;
        }
        Some((thespian.to_owned(), method))
    }

    fn method_name(&mut self, node: &Node, at: &str) -> Option<GrpcMethod> {
        let parsed = node.as_str().and_then(GrpcMethod::parse);
        if parsed.is_none() {
            let shown = node
                .as_str()
                .map_or_else(|| node.kind().to_owned(), |s| format!("`{}`", quote(s)));
            self.diags
                .error(node.pos, at, format!("method must be A, B or C, found {shown}"));
        }
        parsed
    }

    /// `function: {name: checkout, steps: [...]}`
    fn function(&mut self, node: &Node, at: &str) -> Option<Function> {
        let fields = self.diags.mapping(node, at, "function", &["name", "steps"])?;
        let errors = self.diags.errors.len();
        let name = match fields.get("name") {
            Some(n) => self.name(n, &join(at, "name")),
            None => {
                self.diags.error(
                    node.pos,
                    at,
                    "function needs `name:` (its span name, e.g. `name: checkout`)",
                );
                None
            }
        };
        let operations = match fields.get("steps") {
            Some(steps) => self.steps(steps, &join(at, "steps")),
            None => {
                self.diags
                    .error(node.pos, at, "function needs `steps:` (a list of steps)");
                Vec::new()
            }
        };
        (self.diags.errors.len() == errors).then_some(Function {
            tracing_name: name?,
            operations,
        })
    }

    fn name(&mut self, node: &Node, at: &str) -> Option<String> {
        match node.as_str() {
            Some(name) if !name.trim().is_empty() && !name.chars().any(char::is_control) => {
                Some(name.to_owned())
            }
            Some(_) => {
                self.diags.error(
                    node.pos,
                    at,
                    "name must not be empty or contain control characters",
                );
                None
            }
            None => {
                self.diags.error(
                    node.pos,
                    at,
                    format!("name must be a string (the span name), found {}", node.kind()),
                );
                None
            }
        }
    }

    /// A duration: an integer (milliseconds) or a string such as `20ms`, `1.5s`, `1m`. Whole milliseconds
    /// only; sleeps may be 0, timeouts may not.
    fn duration_ms(&mut self, node: &Node, at: &str, what: &str, zero_ok: bool) -> Option<u64> {
        let example = if what == "sleep" { "20ms" } else { "2s" };
        let duration = match &node.value {
            Value::Int(ms) if *ms >= 0 => Some(Duration::from_millis(ms.unsigned_abs())),
            Value::Str(text) => humantime::parse_duration(text.trim()).ok(),
            _ => None,
        };
        let Some(duration) = duration else {
            let shown = node.as_str().map_or_else(
                || match &node.value {
                    Value::Int(n) => n.to_string(),
                    Value::Float(f) => f.to_string(),
                    _ => node.kind().to_owned(),
                },
                |s| format!("`{}`", quote(s)),
            );
            self.diags.error(
                node.pos,
                at,
                format!(
                    "{what} must be a duration such as `{example}`, `1.5s` or a whole number of milliseconds, \
                     found {shown}"
                ),
            );
            return None;
        };
        if duration.subsec_nanos() % 1_000_000 != 0 {
            self.diags.error(
                node.pos,
                at,
                format!("{what} must be a whole number of milliseconds, got {duration:?}"),
            );
            return None;
        }
        if duration > MAX_DURATION {
            self.diags.error(
                node.pos,
                at,
                format!(
                    "{what} of {} is longer than the 1h limit; use milliseconds or seconds (e.g. `{example}`)",
                    humantime::format_duration(duration)
                ),
            );
            return None;
        }
        if duration.is_zero() && !zero_ok {
            self.diags
                .error(node.pos, at, format!("{what} must be longer than 0"));
            return None;
        }
        u64::try_from(duration.as_millis()).ok()
    }

    /// A failure chance: a number in [0, 1] or a percentage string (`5%`).
    fn chance(&mut self, node: &Node, at: &str) -> Option<f64> {
        let p = match &node.value {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::Str(s) => s
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .map(|percent| percent / 100.0),
            _ => None,
        };
        let chance = p.filter(|p| p.is_finite() && (0.0..=1.0).contains(p));
        if chance.is_none() {
            let shown = match (&node.value, p) {
                (Value::Str(s), _) => format!("`{}`", quote(s)),
                (_, Some(p)) => p.to_string(),
                _ => node.kind().to_owned(),
            };
            self.diags.error(
                node.pos,
                at,
                format!(
                    "fail is the chance that this step fails: a number between 0 and 1 (0.1 = 10%) or a \
                     percentage (`10%`), found {shown}"
                ),
            );
        }
        chance
    }

    fn retries(&mut self, node: &Node, at: &str) -> Option<u32> {
        match node.value {
            Value::Int(n) if (0..=MAX_RETRIES).contains(&n) => u32::try_from(n).ok(),
            _ => {
                self.diags.error(
                    node.pos,
                    at,
                    format!("retries must be a whole number from 0 to {MAX_RETRIES}"),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::yaml;

    fn compile(yaml_text: &str) -> (Config, Vec<CallSite>, Vec<String>) {
        let node = yaml::parse(yaml_text).expect("valid YAML");
        let mut diags = Diags::new("m.yaml");
        let compiled =
            compile_methods("yorick", &node, "thespians.yorick.methods", &mut diags).expect("a mapping");
        let (config, calls) = (compiled.config, compiled.calls);
        diags.errors.sort_by_key(|d| (d.line, d.column));
        let errors = diags.errors.iter().map(ToString::to_string).collect();
        (config, calls, errors)
    }

    fn compile_ok(yaml_text: &str) -> (Config, Vec<CallSite>) {
        let (config, calls, errors) = compile(yaml_text);
        assert!(errors.is_empty(), "{errors:#?}");
        (config, calls)
    }

    #[test]
    fn short_forms_compile_with_meaningful_names() {
        let (config, calls) =
            compile_ok("A:\n  - sleep: 20ms\n  - sleep: 5\n  - call: gilbert.B\n  - call: gilbert\nB: []\n");
        assert_eq!(
            config.to_json(),
            concat!(
                r#"{"grpc_method_a":{"tracing_name":"yorick.A","operations":["#,
                r#"{"Action":{"Sleep":{"tracing_name":"sleep 20ms","duration_ms":20}}},"#,
                r#"{"Action":{"Sleep":{"tracing_name":"sleep 5ms","duration_ms":5}}},"#,
                r#"{"Action":{"CallService":{"tracing_name":"call gilbert.B","service_address":"http://gilbert","service_port":"80","grpc_method":"B"}}},"#,
                r#"{"Action":{"CallService":{"tracing_name":"call gilbert.A","service_address":"http://gilbert","service_port":"80","grpc_method":"A"}}}]},"#,
                r#""grpc_method_b":{"tracing_name":"yorick.B","operations":[]},"grpc_method_c":null}"#
            )
        );
        let targets: Vec<_> = calls
            .iter()
            .map(|c| (c.from, c.thespian.as_str(), c.method, c.at.as_str()))
            .collect();
        assert_eq!(
            targets,
            [
                (
                    GrpcMethod::A,
                    "gilbert",
                    GrpcMethod::B,
                    "thespians.yorick.methods.A[2].call"
                ),
                (
                    GrpcMethod::A,
                    "gilbert",
                    GrpcMethod::A,
                    "thespians.yorick.methods.A[3].call"
                ),
            ]
        );
        assert_eq!(calls[0].pos, Some(Pos { line: 4, column: 11 }));
    }

    #[test]
    fn long_forms_carry_options_and_names() {
        let (config, _) = compile_ok(concat!(
            "A:\n",
            "  name: yorick front door\n",
            "  steps:\n",
            "    - sleep: {ms: 1.5s, fail: 0.25, name: db}\n",
            "    - call: {thespian: gilbert, method: C, timeout: 2s, retries: 1, fail: 5%, name: ask gilbert}\n",
            "    - function: {name: checkout, steps: [{sleep: 1}]}\n",
        ));
        assert_eq!(
            config.to_json(),
            concat!(
                r#"{"grpc_method_a":{"tracing_name":"yorick front door","operations":["#,
                r#"{"Action":{"Sleep":{"tracing_name":"db","duration_ms":1500,"failure_chance":0.25}}},"#,
                r#"{"Action":{"CallService":{"tracing_name":"ask gilbert","service_address":"http://gilbert","service_port":"80","grpc_method":"C","timeout_ms":2000,"retries":1,"failure_chance":0.05}}},"#,
                r#"{"Action":{"Function":{"tracing_name":"checkout","operations":[{"Action":{"Sleep":{"tracing_name":"sleep 1ms","duration_ms":1}}}]}}}]},"#,
                r#""grpc_method_b":null,"grpc_method_c":null}"#
            )
        );
    }

    #[test]
    fn concurrently_compiles_to_concurrent_actions_and_nests_through_a_function() {
        let (config, calls) = compile_ok(concat!(
            "A:\n",
            "  - concurrently:\n",
            "      - call: gilbert.A\n",
            "      - concurrently: [{sleep: 1}, {sleep: 2}]\n",
        ));
        assert_eq!(
            config.to_json(),
            concat!(
                r#"{"grpc_method_a":{"tracing_name":"yorick.A","operations":[{"ConcurrentActions":["#,
                r#"{"CallService":{"tracing_name":"call gilbert.A","service_address":"http://gilbert","service_port":"80","grpc_method":"A"}},"#,
                r#"{"Function":{"tracing_name":"concurrently","operations":[{"ConcurrentActions":["#,
                r#"{"Sleep":{"tracing_name":"sleep 1ms","duration_ms":1}},{"Sleep":{"tracing_name":"sleep 2ms","duration_ms":2}}]}]}}]}]},"#,
                r#""grpc_method_b":null,"grpc_method_c":null}"#
            )
        );
        assert_eq!(calls[0].at, "thespians.yorick.methods.A[0].concurrently[0].call");
    }

    #[test]
    fn every_mistake_is_reported_with_its_position() {
        let (_, calls, errors) = compile(concat!(
            "A:\n",
            "  - sleep: 20ms\n",
            "    fail: 0.1\n",
            "  - sleep: {ms: 20, fail: 1.5}\n",
            "  - call: gilbert.a\n",
            "  - slep: 3\n",
            "  - sleep: 0.5\n",
            "  - call: {method: B}\n",
            "  - function: {steps: []}\n",
            "  - sleep: 2h\n",
            "  - call: {thespian: g, retries: 11, timeout: 0}\n",
            "  - concurrently: []\n",
            "a: []\n",
            "B: {sleep: 1}\n",
        ));
        let expected = [
            "m.yaml:3:5: `fail` belongs inside the `sleep` step: write `sleep: {ms: 20ms, fail: 0.1}`",
            "m.yaml:4:27: fail is the chance that this step fails",
            "m.yaml:5:11: cannot call `gilbert.a`",
            "m.yaml:6:5: unknown key `slep` in a step; did you mean `sleep`?",
            "m.yaml:7:12: sleep must be a duration such as `20ms`",
            "m.yaml:8:11: call needs `thespian:`",
            "m.yaml:9:15: function needs `name:`",
            "m.yaml:10:12: sleep of 2h is longer than the 1h limit",
            "m.yaml:11:34: retries must be a whole number from 0 to 10",
            "m.yaml:11:47: timeout must be longer than 0",
            "m.yaml:12:19: concurrently needs at least one step",
            "m.yaml:13:1: method names are upper case: write `A`",
            "m.yaml:14:4: a method is a list of steps",
        ];
        for (got, want) in errors.iter().zip(expected) {
            assert!(got.starts_with(want), "got: {got}\nwant: {want}…");
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        // Calls whose target could be read are kept for the fleet-wide checks, even from broken steps.
        let targets: Vec<_> = calls.iter().map(|c| c.thespian.as_str()).collect();
        assert_eq!(targets, ["g"]);
    }

    #[test]
    fn a_null_method_is_undefined_and_an_empty_one_answers_ok() {
        let (config, _) = compile_ok("A:\nB: []\nC: ~\n");
        assert!(config.grpc_method_a.is_none());
        assert_eq!(config.grpc_method_b.map(|f| f.operations.len()), Some(0));
        assert!(config.grpc_method_c.is_none());
    }
}
