//! The behaviour config: the existing Thespian JSON format, accepted exactly, plus optional extensions.
//!
//! ```json
//! {"grpc_method_a": {"tracing_name": "do_a_barrel_roll", "operations": [
//!     {"Action": {"Sleep": {"tracing_name": "listen_to_peppy", "duration_ms": 1000}}},
//!     {"ConcurrentActions": [{"Sleep": {"tracing_name": "press L", "duration_ms": 20, "failure_chance": 0.1}},
//!                            {"CallService": {"tracing_name": "ask gilbert", "service_address": "http://gilbert",
//!                                             "service_port": "80", "grpc_method": "A"}}]}]},
//!  "grpc_method_b": null, "grpc_method_c": null}
//! ```
//!
//! Validation happens while parsing (inside the serde visitors), so every error carries the JSON path and
//! the line/column serde_json was at: `grpc_method_a.operations[1].Action.Sleep.duration_ms: invalid type:
//! string "ten", expected an integer at line 7 column 25`. The model serialises back to exactly the
//! existing format: extension fields are omitted when unset and `service_port` is written as a string.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Default timeout of one `CallService` attempt when `timeout_ms` is not given.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(30_000);

/// A whole behaviour config: what each of the methods `A`, `B` and `C` acts out (`None`: answer OK at once).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Older configs carry the service name here; it is accepted and ignored in favour of `SERVICE_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default)]
    pub grpc_method_a: Option<Function>,
    #[serde(default)]
    pub grpc_method_b: Option<Function>,
    #[serde(default)]
    pub grpc_method_c: Option<Function>,
}

/// A named sequence of operations; the unit a method (or a nested `Function` action) acts out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub tracing_name: String,
    pub operations: Vec<Operation>,
}

/// One step of a function: a single action, or several run concurrently (the step waits for all of them
/// and fails if any failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    Action(Action),
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
    #[serde(deserialize_with = "de_millis")]
    pub duration_ms: u64,
    /// Probability in [0, 1] that the sleep fails (the method then answers `INTERNAL`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_probability"
    )]
    pub failure_chance: Option<f64>,
}

/// A unary call to method `grpc_method` of the Thespian at `service_address`:`service_port`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing_name: Option<String>,
    /// `http://HOST` (or a bare `HOST`); `THESPIAN_RESOLVE` may map `HOST:PORT` to local endpoints.
    #[serde(deserialize_with = "de_address")]
    pub service_address: String,
    /// Written as a string (`"80"`) like existing configs; a JSON number is accepted too.
    #[serde(serialize_with = "ser_port", deserialize_with = "de_port")]
    pub service_port: u16,
    pub grpc_method: GrpcMethod,
    /// Extension: timeout of one attempt in milliseconds (default 30 000).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_millis"
    )]
    pub timeout_ms: Option<u64>,
    /// Extension: extra attempts after a failed one (default 0).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_retries"
    )]
    pub retries: Option<u32>,
    /// Extension: probability in [0, 1] that the call fails without being sent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_probability"
    )]
    pub failure_chance: Option<f64>,
}

/// A method of `thespian.Thespian`.
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

    /// `"A"`, `"B"` or `"C"` (exactly, as in the JSON format).
    pub fn parse(s: &str) -> Option<GrpcMethod> {
        GrpcMethod::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for GrpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Config {
    /// Parses and validates a config. `//` line comments and `/* */` block comments are allowed (they are
    /// blanked out, so line/column in errors still point into the text as written).
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        let text = strip_comments(text);
        let mut de = serde_json::Deserializer::from_str(&text);
        let config: Config =
            serde_path_to_error::deserialize(&mut de).map_err(ConfigError::from_path_error)?;
        de.end()
            .map_err(|e| ConfigError::from_json_error(String::new(), &e))?;
        Ok(config)
    }

    /// The config as compact JSON in the existing format (what `CONFIG_JSON` holds).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Config has only string keys, so it always serialises")
    }

    /// The function method `method` acts out (`None`: the method answers OK at once).
    pub fn method(&self, method: GrpcMethod) -> Option<&Function> {
        match method {
            GrpcMethod::A => self.grpc_method_a.as_ref(),
            GrpcMethod::B => self.grpc_method_b.as_ref(),
            GrpcMethod::C => self.grpc_method_c.as_ref(),
        }
    }
}

impl CallService {
    /// The host part of `service_address` (scheme stripped), the key `THESPIAN_RESOLVE` maps.
    pub fn host(&self) -> &str {
        self.service_address
            .strip_prefix("http://")
            .unwrap_or(&self.service_address)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_CALL_TIMEOUT)
    }

    /// The span and error-message name: `tracing_name`, else `HOST:PORT/METHOD`.
    pub fn display_name(&self) -> Cow<'_, str> {
        match &self.tracing_name {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(format!(
                "{}:{}/{}",
                self.host(),
                self.service_port,
                self.grpc_method
            )),
        }
    }
}

/// An invalid config: where (JSON path, line, column) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message} at line {line} column {column}", path_prefix(.path))]
pub struct ConfigError {
    /// Dotted JSON path of the offending value (`grpc_method_a.operations[1].Action.Sleep.duration_ms`);
    /// empty when the text is not JSON at all.
    pub path: String,
    pub message: String,
    pub line: usize,
    pub column: usize,
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl ConfigError {
    fn from_path_error(err: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::from_json_error(path, err.inner())
    }

    fn from_json_error(path: String, err: &serde_json::Error) -> ConfigError {
        // serde_json's Display is "MESSAGE at line L column C"; keep the message, report the position apart.
        let full = err.to_string();
        let suffix = format!(" at line {} column {}", err.line(), err.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        ConfigError {
            path,
            message,
            line: err.line(),
            column: err.column(),
        }
    }
}

/// Blanks out `//` and `/* */` comments outside strings. Every comment byte becomes a space (newlines are
/// kept), so byte offsets, lines and columns of everything else are unchanged.
pub fn strip_comments(text: &str) -> Cow<'_, str> {
    if !text.contains('/') {
        return Cow::Borrowed(text);
    }
    let mut out = text.as_bytes().to_vec();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1, // skip the escaped byte (an escaped quote does not end the string)
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match (b, bytes.get(i + 1)) {
            (b'"', _) => {
                in_string = true;
                i += 1;
            }
            (b'/', Some(b'/')) => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    if bytes[i] != b'\r' {
                        out[i] = b' ';
                    }
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                let start = i;
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                let end = (i + 2).min(bytes.len());
                for byte in &mut out[start..end] {
                    if *byte != b'\n' && *byte != b'\r' {
                        *byte = b' ';
                    }
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    // Only ASCII bytes were replaced, and each multi-byte character inside a comment was replaced whole.
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(text),
    }
}

// ---- validating (de)serialisers -------------------------------------------------------------------

/// Milliseconds: a non-negative JSON integer.
struct Millis;

impl Visitor<'_> for Millis {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("expected a non-negative integer, got {v}")))
    }
}

fn de_millis<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_u64(Millis)
}

fn de_opt_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct OptMillis;
    impl<'de> Visitor<'de> for OptMillis {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            de_millis(d).map(Some)
        }
    }
    d.deserialize_option(OptMillis)
}

fn de_opt_retries<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match de_opt_millis(d)? {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("retries must be at most {}, got {n}", u32::MAX))),
    }
}

fn de_probability<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let value = Option::<f64>::deserialize(d)?;
    match value {
        Some(p) if !(0.0..=1.0).contains(&p) => Err(de::Error::custom(format!(
            "failure_chance must be a probability between 0 and 1, got {p}"
        ))),
        other => Ok(other),
    }
}

fn de_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    struct Port;
    impl Visitor<'_> for Port {
        type Value = u16;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number between 1 and 65535 (as a string like \"80\" or a number)")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
            match u16::try_from(v) {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(E::custom(format!(
                    "expected a port number between 1 and 65535, got {v}"
                ))),
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
            Err(E::custom(format!(
                "expected a port number between 1 and 65535, got {v}"
            )))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u16, E> {
            match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(E::custom(format!(
                    "expected a port number between 1 and 65535, got \"{v}\""
                ))),
            }
        }
    }
    d.deserialize_any(Port)
}

fn ser_port<S: Serializer>(port: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(port)
}

fn de_address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let address = String::deserialize(d)?;
    check_address(&address).map_err(de::Error::custom)?;
    Ok(address)
}

/// `http://HOST` or `HOST`: no TLS (the agent speaks plaintext gRPC; TLS is the mesh's job), no port (that is
/// `service_port`), no path.
fn check_address(address: &str) -> Result<(), String> {
    if address.starts_with("https://") {
        return Err(format!(
            "\"{address}\": https is not supported (the agent calls other Thespians over plaintext gRPC); use http://"
        ));
    }
    let host = address.strip_prefix("http://").unwrap_or(address);
    if host.is_empty() {
        return Err(format!(
            "\"{address}\": expected http://HOST, e.g. \"http://gilbert\""
        ));
    }
    if host.contains("://") {
        return Err(format!("\"{address}\": unsupported scheme; expected http://HOST"));
    }
    if host.contains(['/', '?', '#', ' ', '@']) {
        return Err(format!(
            "\"{address}\": expected http://HOST with no path, user or spaces"
        ));
    }
    // `HOST:PORT` or a bracketed IPv6 address with a port: the port belongs in `service_port`.
    let bare_ipv6 = !host.starts_with('[') && host.matches(':').count() > 1;
    if !bare_ipv6 && (host.rsplit_once(']').map_or(host, |(_, rest)| rest)).contains(':') {
        return Err(format!(
            "\"{address}\": put the port in service_port, not in service_address"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARFOX: &str = r#"{"service_name":"starfox_simulator","grpc_method_a":{"tracing_name":"barrel roll","operations":[{"Action":{"Sleep":{"tracing_name":"listen","duration_ms":1000}}},{"ConcurrentActions":[{"Sleep":{"tracing_name":"press L","duration_ms":2000}},{"Sleep":{"tracing_name":"press R","duration_ms":1500,"failure_chance":0.1}},{"Function":{"tracing_name":"unplug","operations":[{"Action":{"Sleep":{"tracing_name":"yank","duration_ms":1000,"failure_chance":0.1}}}]}}]}]},"grpc_method_b":null,"grpc_method_c":null}"#;
    const CALLER: &str = r#"{"grpc_method_a":{"tracing_name":"fun","operations":[{"ConcurrentActions":[{"Sleep":{"tracing_name":"eyes","duration_ms":2000}},{"CallService":{"tracing_name":"play","service_address":"http://127.0.0.1","service_port":"6379","grpc_method":"A"}}]}]},"grpc_method_b":null,"grpc_method_c":null}"#;

    #[test]
    fn existing_configs_round_trip_byte_for_byte() {
        for text in [STARFOX, CALLER] {
            let config = Config::from_json(text).expect("parses");
            assert_eq!(config.to_json(), text);
        }
    }

    #[test]
    fn existing_config_shape_is_understood() {
        let config = Config::from_json(CALLER).expect("parses");
        let f = config.method(GrpcMethod::A).expect("method a");
        let Operation::ConcurrentActions(actions) = &f.operations[0] else {
            panic!("concurrent")
        };
        let Action::CallService(call) = &actions[1] else {
            panic!("call")
        };
        assert_eq!(
            (call.host(), call.service_port, call.grpc_method),
            ("127.0.0.1", 6379, GrpcMethod::A)
        );
        assert_eq!(call.timeout(), DEFAULT_CALL_TIMEOUT);
        assert!(config.method(GrpcMethod::B).is_none());
    }

    #[test]
    fn extensions_and_numeric_port_are_accepted_and_written_back_as_strings() {
        let text = r#"{"grpc_method_b":{"tracing_name":"f","operations":[{"Action":{"CallService":{"service_address":"gilbert","service_port":80,"grpc_method":"C","timeout_ms":250,"retries":2,"failure_chance":0.5}}}]}}"#;
        let config = Config::from_json(text).expect("parses");
        let json = config.to_json();
        assert!(json.contains(r#""service_port":"80""#), "{json}");
        assert!(
            json.contains(r#""timeout_ms":250,"retries":2,"failure_chance":0.5"#),
            "{json}"
        );
        assert!(
            json.starts_with(r#"{"grpc_method_a":null,"grpc_method_b":{"#),
            "{json}"
        );
        assert_eq!(Config::from_json(&json).expect("reparses"), config);
    }

    #[test]
    fn errors_name_path_line_and_column() {
        let text = "{\n  \"grpc_method_a\": {\n    \"tracing_name\": \"a\",\n    \"operations\": [\n      {\"Action\": {\"Sleep\": {\"tracing_name\": \"x\", \"duration_ms\": 1}}},\n      {\"Action\": {\"Sleep\": {\"tracing_name\": \"y\",\n                             \"duration_ms\": \"ten\"}}}\n    ]\n  }\n}";
        let err = Config::from_json(text).expect_err("rejects");
        assert_eq!(err.path, "grpc_method_a.operations[1].Action.Sleep.duration_ms");
        assert_eq!((err.line, err.column), (7, 49));
        assert_eq!(
            err.to_string(),
            "grpc_method_a.operations[1].Action.Sleep.duration_ms: invalid type: string \"ten\", expected an integer at line 7 column 49"
        );
    }

    #[test]
    fn invalid_values_are_rejected_with_their_path() {
        let sleep = |extra: &str| {
            format!(
                r#"{{"grpc_method_a":{{"tracing_name":"f","operations":[{{"Action":{{"Sleep":{{"tracing_name":"s","duration_ms":5{extra}}}}}}}]}}}}"#
            )
        };
        let call = |fields: &str| {
            format!(
                r#"{{"grpc_method_c":{{"tracing_name":"f","operations":[{{"Action":{{"CallService":{{{fields}}}}}}}]}}}}"#
            )
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (
                sleep(r#","failure_chance":1.5"#),
                "grpc_method_a.operations[0].Action.Sleep.failure_chance",
                "between 0 and 1, got 1.5",
            ),
            (
                sleep(r#","failure_chance":-0.1"#),
                "grpc_method_a.operations[0].Action.Sleep.failure_chance",
                "got -0.1",
            ),
            (
                sleep(r#","colour":"red""#),
                "grpc_method_a.operations[0].Action.Sleep.colour",
                "unknown field `colour`",
            ),
            (
                r#"{"grpc_method_d":null}"#.into(),
                "grpc_method_d",
                "unknown field `grpc_method_d`",
            ),
            (
                r#"{"grpc_method_a":{"tracing_name":"f","operations":[{"Act":{}}]}}"#.into(),
                "grpc_method_a.operations[0]",
                "unknown variant `Act`",
            ),
            (
                call(r#""service_address":"http://g","service_port":"80","grpc_method":"D""#),
                "grpc_method_c.operations[0].Action.CallService.grpc_method",
                "unknown variant `D`, expected one of `A`, `B`, `C`",
            ),
            (
                call(r#""service_address":"http://g","service_port":"eighty","grpc_method":"A""#),
                "grpc_method_c.operations[0].Action.CallService.service_port",
                "got \"eighty\"",
            ),
            (
                call(r#""service_address":"http://g","service_port":"0","grpc_method":"A""#),
                "grpc_method_c.operations[0].Action.CallService.service_port",
                "between 1 and 65535",
            ),
            (
                call(r#""service_address":"https://g","service_port":"443","grpc_method":"A""#),
                "grpc_method_c.operations[0].Action.CallService.service_address",
                "https is not supported",
            ),
            (
                call(r#""service_address":"http://g:80","service_port":"80","grpc_method":"A""#),
                "grpc_method_c.operations[0].Action.CallService.service_address",
                "put the port in service_port",
            ),
            (
                call(r#""service_address":"http://g","service_port":"80","grpc_method":"A","timeout_ms":-1"#),
                "grpc_method_c.operations[0].Action.CallService.timeout_ms",
                "non-negative integer, got -1",
            ),
            (
                call(r#""service_address":"http://g","service_port":"80""#),
                "grpc_method_c.operations[0].Action.CallService",
                "missing field `grpc_method`",
            ),
        ];
        for (text, path, message) in cases {
            let err = Config::from_json(&text).expect_err(&text);
            assert_eq!(err.path, path, "{text}: {err}");
            assert!(err.message.contains(message), "{text}: {err}");
        }
    }

    #[test]
    fn syntax_errors_have_no_path_but_a_position() {
        let err = Config::from_json("{\"grpc_method_a\": nul}").expect_err("rejects");
        assert_eq!((err.path.as_str(), err.line), ("grpc_method_a", 1));
        let err = Config::from_json("{} trailing").expect_err("rejects");
        assert_eq!(err.to_string(), "trailing characters at line 1 column 4");
    }

    #[test]
    fn comments_are_blanked_without_moving_anything() {
        let text = "// fleet config\n{\"grpc_method_a\": {\"tracing_name\": \"see http://gilbert // not a comment\", /* block\n é */ \"operations\": []}} // end";
        let stripped = strip_comments(text);
        assert_eq!(stripped.len(), text.len());
        assert_eq!(stripped.lines().count(), text.lines().count());
        let config = Config::from_json(text).expect("parses");
        assert_eq!(
            config.grpc_method_a.expect("a").tracing_name,
            "see http://gilbert // not a comment"
        );

        let err = Config::from_json("// x\n{\"grpc_method_a\": {\"tracing_name\": 1}}").expect_err("rejects");
        assert_eq!((err.line, err.column), (2, 36), "{err}");
        // An escaped quote does not end a string, so `//` after it is still inside the string.
        let config = Config::from_json(r#"{"grpc_method_a":{"tracing_name":"a\"//b","operations":[]}}"#)
            .expect("parses");
        assert_eq!(config.grpc_method_a.expect("a").tracing_name, "a\"//b");
    }

    #[test]
    fn empty_object_means_every_method_answers_at_once() {
        assert_eq!(Config::from_json("{}").expect("parses"), Config::default());
    }
}
