//! `config_file:` thespians: a config in the agent's existing JSON format, used unchanged.
//!
//! Parse errors name the file, the JSON path and the line and column. Like the agent's `CONFIG_FILE`,
//! `//` and `/* */` comments are accepted.

use std::path::Path;

use super::agent_config::Config;
use super::diag::Diags;
use super::yaml::Pos;

/// Reads and parses `path`; problems go into `diags` (whose file is `path`). `None` when unusable.
pub fn load(path: &Path, diags: &mut Diags) -> Option<Config> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            diags.error(
                None,
                "",
                format!("could not read the config file: {e}; fix `config_file:` or create the file"),
            );
            return None;
        }
    };
    parse(&text, diags)
}

/// Parses the text of a config file (see [`load`]).
pub fn parse(text: &str, diags: &mut Diags) -> Option<Config> {
    match Config::from_json(text) {
        Ok(mut config) => {
            // The agent names itself from SERVICE_NAME; a stale name in the file must not change the hash.
            config.service_name = None;
            Some(config)
        }
        Err(err) => {
            let pos = (err.line > 0).then(|| Pos {
                line: u32::try_from(err.line).unwrap_or(u32::MAX),
                column: u32::try_from(err.column).unwrap_or(u32::MAX),
            });
            let message = if err.path.is_empty() {
                // Deeper errors name the field and what it expects; at the top, say what the file is.
                format!(
                    "{}; the file must be a Thespian agent config: a JSON object with grpc_method_a, \
                     grpc_method_b, grpc_method_c (each null or {{\"tracing_name\", \"operations\"}})",
                    err.message
                )
            } else {
                format!("{}: {}", err.path, err.message)
            };
            diags.error(pos, &err.path, message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_errors(text: &str) -> Vec<String> {
        let mut diags = Diags::new("gilbert.json");
        let config = parse(text, &mut diags);
        assert!(config.is_none() == diags.has_errors());
        diags.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn errors_give_json_path_line_and_column() {
        let text = "{\n  \"grpc_method_a\": {\n    \"tracing_name\": \"a\",\n    \"operations\": [\n      {\"Action\": {\"Sleep\": {\"tracing_name\": \"s\", \"duration_ms\": \"ten\"}}}\n    ]\n  }\n}\n";
        let errors = parse_errors(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert!(e.starts_with("gilbert.json:5:"), "{e}");
        assert!(
            e.contains("grpc_method_a.operations[0].Action.Sleep.duration_ms: invalid type"),
            "{e}"
        );
        assert!(!e.contains(" at line "), "{e}");
    }

    #[test]
    fn commented_configs_parse() {
        let text = "// gilbert answers after 10 ms\n{\"grpc_method_a\": {\"tracing_name\": \"a\", \"operations\": [\n  {\"Action\": {\"Sleep\": {\"tracing_name\": \"s\", \"duration_ms\": 10}}} // think\n]}}";
        let mut diags = Diags::new("g.json");
        let config = parse(text, &mut diags).expect("parses");
        assert!(config.grpc_method_a.is_some());
    }

    #[test]
    fn trailing_garbage_and_empty_files_are_errors() {
        assert_eq!(parse_errors("{} x").len(), 1);
        let e = parse_errors("");
        assert!(e[0].contains("EOF"), "{e:?}");
    }
}
