//! The agent's behaviour format (`CONFIG_JSON`): the one contract between thespctl and the agent.
//!
//! This is the existing Thespian JSON format plus the agent's backward-compatible extensions
//! (`CallService.timeout_ms`, `retries`, `failure_chance`). It is a private copy of the model while the
//! agent crate's own `thespian_agent::config::Config` is being built; once that lands, this module should
//! become a re-export of it (the JSON both produce is the same).
//!
//! Serialisation is canonical: fields in declaration order, no whitespace, absent optionals omitted, so
//! the same behaviour always gives the same bytes (and the same `config_hash`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole agent configuration: one optional behaviour per gRPC method.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Older configs carry the service name; the agent takes it from `SERVICE_NAME` instead.
    #[serde(default, skip_serializing)]
    pub service_name: Option<serde_json::Value>,
    #[serde(default)]
    pub grpc_method_a: Option<Function>,
    #[serde(default)]
    pub grpc_method_b: Option<Function>,
    #[serde(default)]
    pub grpc_method_c: Option<Function>,
}

impl Config {
    pub fn method(&self, method: GrpcMethod) -> Option<&Function> {
        match method {
            GrpcMethod::A => self.grpc_method_a.as_ref(),
            GrpcMethod::B => self.grpc_method_b.as_ref(),
            GrpcMethod::C => self.grpc_method_c.as_ref(),
        }
    }

    pub fn set_method(&mut self, method: GrpcMethod, function: Option<Function>) {
        match method {
            GrpcMethod::A => self.grpc_method_a = function,
            GrpcMethod::B => self.grpc_method_b = function,
            GrpcMethod::C => self.grpc_method_c = function,
        }
    }

    /// The JSON key of a method (`grpc_method_a`), for JSON paths in messages.
    pub fn key(method: GrpcMethod) -> &'static str {
        match method {
            GrpcMethod::A => "grpc_method_a",
            GrpcMethod::B => "grpc_method_b",
            GrpcMethod::C => "grpc_method_c",
        }
    }

    /// The canonical `CONFIG_JSON` text.
    pub fn to_json(&self) -> String {
        // Plain structs, strings and numbers (no maps with non-string keys, finite floats only):
        // serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
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
#[serde(deny_unknown_fields)]
pub enum Operation {
    Action(Action),
    /// All run at once; the operation waits for all and fails if any failed.
    ConcurrentActions(Vec<Action>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_chance: Option<Chance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing_name: Option<String>,
    /// `http://gilbert` for a thespian of the fleet (the ECS Service Connect alias).
    pub service_address: String,
    /// A port number as a string (`"80"`), as the existing format has it.
    pub service_port: Port,
    pub grpc_method: GrpcMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_chance: Option<Chance>,
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
        match s {
            "A" => Some(GrpcMethod::A),
            "B" => Some(GrpcMethod::B),
            "C" => Some(GrpcMethod::C),
            _ => None,
        }
    }
}

impl fmt::Display for GrpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A probability in [0, 1]; anything else is rejected while parsing, with its JSON path.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Chance(f64);

impl Chance {
    pub fn new(p: f64) -> Option<Chance> {
        (p.is_finite() && (0.0..=1.0).contains(&p)).then_some(Chance(p))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Chance {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let p = f64::deserialize(deserializer)?;
        Chance::new(p).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                "failure_chance must be between 0 and 1 (0.1 = 10% of calls fail), got {p}"
            ))
        })
    }
}

/// `service_port`: written as a string in the existing format; a bare number is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        let invalid = |shown: &dyn fmt::Display| {
            serde::de::Error::custom(format_args!(
                "service_port must be a port number between 1 and 65535 (e.g. \"80\"), got {shown}"
            ))
        };
        let raw = Raw::deserialize(deserializer)
            .map_err(|_| invalid(&"something that is neither a string nor a number"))?;
        let number = match &raw {
            Raw::Text(s) => s.trim().parse::<u16>().ok(),
            Raw::Number(n) => u16::try_from(*n).ok(),
        };
        match number {
            Some(port) if port > 0 => Ok(Port(port)),
            _ => Err(match raw {
                Raw::Text(s) => invalid(&format_args!("{s:?}")),
                Raw::Number(n) => invalid(&n),
            }),
        }
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
        let config: Config = serde_json::from_str(EXISTING).unwrap();
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
        let again: Config = serde_json::from_str(&json).unwrap();
        assert_eq!(again.to_json(), json);
    }

    #[test]
    fn out_of_range_chances_ports_and_unknown_keys_are_rejected() {
        let bad_chance = r#"{"grpc_method_a":{"tracing_name":"x","operations":[{"Action":{"Sleep":{"tracing_name":"s","duration_ms":1,"failure_chance":1.5}}}]}}"#;
        let err = serde_json::from_str::<Config>(bad_chance).unwrap_err();
        assert!(err.to_string().contains("between 0 and 1"), "{err}");
        let bad_port = r#"{"grpc_method_a":{"tracing_name":"x","operations":[{"Action":{"CallService":{"service_address":"h","service_port":"http","grpc_method":"A"}}}]}}"#;
        let err = serde_json::from_str::<Config>(bad_port).unwrap_err();
        assert!(err.to_string().contains("service_port"), "{err}");
        let unknown = r#"{"grpc_method_d": null}"#;
        let err = serde_json::from_str::<Config>(unknown).unwrap_err();
        assert!(err.to_string().contains("grpc_method_d"), "{err}");
    }

    #[test]
    fn a_numeric_port_is_accepted_and_written_as_a_string() {
        let json = r#"{"grpc_method_a":{"tracing_name":"x","operations":[{"Action":{"CallService":{"service_address":"h","service_port":8080,"grpc_method":"B"}}}]}}"#;
        let config: Config = serde_json::from_str(json).unwrap();
        assert!(config.to_json().contains(r#""service_port":"8080""#));
    }
}
