//! The agent's behaviour format (`CONFIG_JSON`): the one contract between thespctl and the agent.
//!
//! This is the existing Thespian JSON format plus the agent's backward-compatible extensions
//! (`CallService.timeout_ms`, `retries`, `failure_chance`). It is a private copy of the model while the
//! agent crate's `thespian_agent::config::Config` is not yet on `main`; it mirrors that type's API
//! (`Config::from_json`, `ConfigError`, `to_json`, field types) and its validation rules, so that switching
//! to it is a swap of this module's body for a re-export.
//!
//! Serialisation is canonical: fields in declaration order, no whitespace, absent optionals omitted, so
//! the same behaviour always gives the same bytes (and the same `config_hash`).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A whole agent configuration: one optional behaviour per gRPC method.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Older configs carry the service name; the agent takes it from `SERVICE_NAME` instead. thespctl
    /// clears it before serialising, so it never reaches `CONFIG_JSON`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default)]
    pub grpc_method_a: Option<Function>,
    #[serde(default)]
    pub grpc_method_b: Option<Function>,
    #[serde(default)]
    pub grpc_method_c: Option<Function>,
}

/// A named sequence of operations (a span of its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub tracing_name: String,
    pub operations: Vec<Operation>,
}

/// Operations of a function run in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    Action(Action),
    /// All run at once; the operation waits for all and fails if any failed.
    ConcurrentActions(Vec<Action>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    Sleep(Sleep),
    Function(Function),
    CallService(CallService),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    pub tracing_name: String,
    pub duration_ms: u64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_probability"
    )]
    pub failure_chance: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing_name: Option<String>,
    /// `http://gilbert` for a thespian of the fleet (the ECS Service Connect alias), or a bare host.
    #[serde(deserialize_with = "de_address")]
    pub service_address: String,
    /// Written as a string (`"80"`), as the existing format has it; a JSON number is accepted too.
    #[serde(serialize_with = "ser_port", deserialize_with = "de_port")]
    pub service_port: u16,
    pub grpc_method: GrpcMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_probability"
    )]
    pub failure_chance: Option<f64>,
}

impl CallService {
    /// The host of `service_address`, without the `http://` scheme.
    pub fn host(&self) -> &str {
        self.service_address
            .strip_prefix("http://")
            .unwrap_or(&self.service_address)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GrpcMethod {
    A,
    B,
    C,
}

impl GrpcMethod {
    pub const ALL: [GrpcMethod; 3] = [GrpcMethod::A, GrpcMethod::B, GrpcMethod::C];

    pub fn as_str(self) -> &'static str {
        match self {
            GrpcMethod::A => "A",
            GrpcMethod::B => "B",
            GrpcMethod::C => "C",
        }
    }

    pub fn parse(s: &str) -> Option<GrpcMethod> {
        GrpcMethod::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for GrpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An invalid config: where (JSON path, line, column) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message} at line {line} column {column}", if .path.is_empty() { String::new() } else { format!("{}: ", .path) })]
pub struct ConfigError {
    /// Dotted JSON path of the offending value; empty when the text is not JSON at all.
    pub path: String,
    /// What is wrong, without the position.
    pub message: String,
    pub line: usize,
    pub column: usize,
}

impl ConfigError {
    fn new(path: String, err: &serde_json::Error) -> ConfigError {
        // serde_json's Display is "MESSAGE at line L column C"; the position is reported apart.
        let full = err.to_string();
        let suffix = format!(" at line {} column {}", err.line(), err.column());
        ConfigError {
            path: if path == "." { String::new() } else { path },
            message: full.strip_suffix(&suffix).unwrap_or(&full).to_owned(),
            line: err.line(),
            column: err.column(),
        }
    }
}

impl Config {
    /// Parses and validates a config in the existing format. `//` and `/* */` comments are accepted (as
    /// the agent's `CONFIG_FILE` accepts them); positions in errors still point into the text as written.
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        let text = blank_comments(text);
        let mut de = serde_json::Deserializer::from_str(&text);
        let config: Config = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| ConfigError::new(e.path().to_string(), e.inner()))?;
        de.end().map_err(|e| ConfigError::new(String::new(), &e))?;
        Ok(config)
    }

    /// The canonical `CONFIG_JSON` text.
    pub fn to_json(&self) -> String {
        // Plain structs, strings and finite numbers: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn method(&self, method: GrpcMethod) -> Option<&Function> {
        match method {
            GrpcMethod::A => self.grpc_method_a.as_ref(),
            GrpcMethod::B => self.grpc_method_b.as_ref(),
            GrpcMethod::C => self.grpc_method_c.as_ref(),
        }
    }
}

/// What thespctl needs of the agent's config beyond the agent's own API.
pub trait ConfigExt {
    fn set_method(&mut self, method: GrpcMethod, function: Option<Function>);
    /// The JSON key of a method (`grpc_method_a`), for messages.
    fn key(method: GrpcMethod) -> &'static str;
}

impl ConfigExt for Config {
    fn set_method(&mut self, method: GrpcMethod, function: Option<Function>) {
        match method {
            GrpcMethod::A => self.grpc_method_a = function,
            GrpcMethod::B => self.grpc_method_b = function,
            GrpcMethod::C => self.grpc_method_c = function,
        }
    }

    fn key(method: GrpcMethod) -> &'static str {
        match method {
            GrpcMethod::A => "grpc_method_a",
            GrpcMethod::B => "grpc_method_b",
            GrpcMethod::C => "grpc_method_c",
        }
    }
}

/// Replaces `// …` and `/* … */` comments outside strings with spaces (newlines kept), so lines and
/// columns of everything else stay true.
fn blank_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    let mut escaped = false;
    let blank = |c: char| {
        if c == '\n' || c == '\r' || c == '\t' {
            c
        } else {
            ' '
        }
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                out.push(' ');
                while let Some(&next) = chars.peek() {
                    if next == '\n' {
                        break;
                    }
                    chars.next();
                    out.push(blank(next));
                }
            }
            ('/', Some('*')) => {
                chars.next();
                out.push_str("  ");
                let mut previous = ' ';
                for next in chars.by_ref() {
                    out.push(blank(next));
                    if previous == '*' && next == '/' {
                        break;
                    }
                    previous = next;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn de_probability<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<f64>::deserialize(d)? {
        Some(p) if !(0.0..=1.0).contains(&p) => Err(de::Error::custom(format!(
            "failure_chance must be a probability between 0 and 1, got {p}"
        ))),
        other => Ok(other),
    }
}

fn ser_port<S: Serializer>(port: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(port)
}

fn de_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    struct PortVisitor;
    impl Visitor<'_> for PortVisitor {
        type Value = u16;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number between 1 and 65535 (as a string like \"80\" or a number)")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
            u16::try_from(v)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| E::custom(format!("expected a port number between 1 and 65535, got {v}")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
            Err(E::custom(format!(
                "expected a port number between 1 and 65535, got {v}"
            )))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u16, E> {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| E::custom(format!("expected a port number between 1 and 65535, got {v:?}")))
        }
    }
    d.deserialize_any(PortVisitor)
}

/// `http://HOST` or a bare `HOST`: the agent speaks plaintext gRPC, and the port is `service_port`.
fn de_address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let address = String::deserialize(d)?;
    let host = address.strip_prefix("http://").unwrap_or(&address);
    let problem = if address.starts_with("https://") {
        Some("https is not supported (the agent calls other Thespians over plaintext gRPC); use http://")
    } else if host.is_empty() {
        Some("expected http://HOST, e.g. \"http://gilbert\"")
    } else if host.contains("://") {
        Some("unsupported scheme; expected http://HOST")
    } else if host.contains(['/', '?', '#', ' ', '@']) {
        Some("expected http://HOST with no path, user or spaces")
    } else if !host.starts_with('[') && host.matches(':').count() == 1 || host.contains("]:") {
        Some("put the port in service_port, not in service_address")
    } else {
        None
    };
    match problem {
        Some(why) => Err(de::Error::custom(format!("{address:?}: {why}"))),
        None => Ok(address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXISTING: &str = r#"{
        "service_name": "yorick",
        "grpc_method_a": {
            "tracing_name": "yorick A",
            "operations": [
                {"Action": {"Sleep": {"tracing_name": "think", "duration_ms": 10, "failure_chance": 0.1}}},
                {"ConcurrentActions": [
                    {"CallService": {"service_address": "http://gilbert", "service_port": "80", "grpc_method": "A"}},
                    {"Function": {"tracing_name": "inner", "operations": []}}
                ]}
            ]
        },
        "grpc_method_b": null
    }"#;

    #[test]
    fn the_existing_format_round_trips_canonically() {
        let mut config = Config::from_json(EXISTING).unwrap();
        assert_eq!(config.service_name.as_deref(), Some("yorick"));
        config.service_name = None;
        let json = config.to_json();
        assert_eq!(
            json,
            concat!(
                r#"{"grpc_method_a":{"tracing_name":"yorick A","operations":["#,
                r#"{"Action":{"Sleep":{"tracing_name":"think","duration_ms":10,"failure_chance":0.1}}},"#,
                r#"{"ConcurrentActions":[{"CallService":{"service_address":"http://gilbert","service_port":"80","grpc_method":"A"}},"#,
                r#"{"Function":{"tracing_name":"inner","operations":[]}}]}]},"#,
                r#""grpc_method_b":null,"grpc_method_c":null}"#
            )
        );
        assert_eq!(Config::from_json(&json).unwrap().to_json(), json);
    }

    fn error(text: &str) -> ConfigError {
        Config::from_json(text).unwrap_err()
    }

    #[test]
    fn out_of_range_values_and_unknown_keys_are_rejected_with_path_and_position() {
        let sleep = |extra: &str| {
            format!(
                r#"{{"grpc_method_a":{{"tracing_name":"x","operations":[{{"Action":{{"Sleep":{{"tracing_name":"s","duration_ms":1{extra}}}}}}}]}}}}"#
            )
        };
        let e = error(&sleep(r#","failure_chance":1.5"#));
        assert_eq!(e.path, "grpc_method_a.operations[0].Action.Sleep.failure_chance");
        assert!(e.message.contains("between 0 and 1"), "{e}");
        assert_eq!(e.line, 1);
        let e = error(&sleep(r#","colour":"red""#));
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        let e = error(r#"{"grpc_method_d": null}"#);
        assert!(e.message.contains("grpc_method_d"), "{e}");
        let e = error("{} x");
        assert_eq!((e.path.as_str(), e.line, e.column), ("", 1, 4));
        assert!(error("").message.contains("EOF"));
    }

    #[test]
    fn addresses_and_ports_follow_the_agents_rules() {
        let call = |address: &str, port: &str| {
            format!(
                r#"{{"grpc_method_a":{{"tracing_name":"x","operations":[{{"Action":{{"CallService":{{"service_address":"{address}","service_port":{port},"grpc_method":"A"}}}}}}]}}}}"#
            )
        };
        for good in [
            ("http://gilbert", "\"80\""),
            ("gilbert", "80"),
            ("http://10.0.0.1", "\"6379\""),
        ] {
            assert!(Config::from_json(&call(good.0, good.1)).is_ok(), "{good:?}");
        }
        let numeric = Config::from_json(&call("gilbert", "8080")).unwrap();
        assert!(numeric.to_json().contains(r#""service_port":"8080""#));
        for (address, port, why) in [
            ("https://api.example.com", "\"443\"", "https is not supported"),
            ("http://gilbert:80", "\"80\"", "put the port in service_port"),
            ("http://gilbert/x", "\"80\"", "no path"),
            ("http://", "\"80\"", "expected http://HOST"),
            ("gilbert", "\"http\"", "port number"),
            ("gilbert", "0", "port number"),
        ] {
            let e = error(&call(address, port));
            assert!(e.message.contains(why), "{address} {port}: {e}");
        }
    }

    #[test]
    fn comments_are_blanked_without_moving_positions() {
        let text =
            "{ // a \"comment\"\n  /* block\n  comment */ \"x\": \"http://not-a-comment\" // trailing\n}";
        let blanked = blank_comments(text);
        assert_eq!(blanked.chars().count(), text.chars().count());
        assert_eq!(blanked.lines().count(), text.lines().count());
        assert!(blanked.contains("\"http://not-a-comment\""));
        assert!(!blanked.contains("trailing") && !blanked.contains("block"));
        let config = "// gilbert\n{\"grpc_method_a\": /* soon */ null}";
        assert!(Config::from_json(config).is_ok());
    }
}
