//! `config_file:` thespians: a config in the agent's existing JSON format, used unchanged.
//!
//! Parse errors name the file, the JSON path and the line and column. Like the agent's `CONFIG_FILE`,
//! `//` line comments are accepted.

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
    let json = strip_line_comments(text);
    let mut deserializer = serde_json::Deserializer::from_str(&json);
    let result = serde_path_to_error::deserialize::<_, Config>(&mut deserializer)
        .map_err(|err| (err.path().to_string(), err.into_inner()))
        // Trailing characters after the document are an error too.
        .and_then(|config| {
            deserializer
                .end()
                .map(|()| config)
                .map_err(|e| (String::new(), e))
        });
    match result {
        Ok(config) => Some(config),
        Err((at, inner)) => {
            let pos = (inner.line() > 0).then(|| Pos {
                line: u32::try_from(inner.line()).unwrap_or(u32::MAX),
                column: u32::try_from(inner.column()).unwrap_or(u32::MAX),
            });
            let at = if at == "." { String::new() } else { at };
            let mut message = without_position(&inner);
            if at.is_empty() {
                // Deeper errors name the field and what it expects; at the top, say what the file is.
                message.push_str(
                    "; the file must be a Thespian agent config: a JSON object with grpc_method_a, \
                     grpc_method_b, grpc_method_c (each null or {\"tracing_name\", \"operations\"})",
                );
            } else {
                message = format!("{at}: {message}");
            }
            diags.error(pos, &at, message);
            None
        }
    }
}

/// serde_json's message without its " at line L column C" suffix (we print `file:line:column`).
fn without_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// Replaces `// …` comments outside strings with spaces, so line and column numbers stay true.
fn strip_line_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    let mut escaped = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if c == '/' && chars.peek() == Some(&'/') {
            out.push(' ');
            while let Some(&next) = chars.peek() {
                if next == '\n' {
                    break;
                }
                chars.next();
                out.push(if next == '\t' { '\t' } else { ' ' });
            }
        } else {
            out.push(c);
        }
    }
    out
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
    fn comments_are_blanked_without_moving_positions() {
        let text = "{ // a comment with \"quotes\"\n  \"x\": \"http://not-a-comment\" // trailing\n}";
        let stripped = strip_line_comments(text);
        assert_eq!(stripped.len(), text.len());
        assert_eq!(stripped.lines().count(), 3);
        assert!(stripped.contains("\"http://not-a-comment\""));
        assert!(!stripped.contains("trailing"));
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
