//! Diagnostics: what is wrong with a manifest, where (file, line, column, key path) and what to do.
//!
//! Checks never stop at the first problem: they push into [`Diags`] and carry on, so `validate` can list
//! everything at once.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::yaml::{Key, Node, Pos};

/// One problem found in a manifest or in a config file it points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file the problem is in, as the user named it (the manifest, or a `config_file`).
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
    /// Where in the document: a YAML key path (`thespians.yorick.methods.A[1].call`) or a JSON path
    /// (`grpc_method_a.operations[0].Action.Sleep`); empty for the document as a whole.
    pub at: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, ":{line}:{column}")?,
            (Some(line), None) => write!(f, ":{line}")?,
            // Without a position the key path is the only pointer into the file.
            _ if !self.at.is_empty() => write!(f, ": {}", self.at)?,
            _ => {}
        }
        write!(f, ": {}", self.message)
    }
}

/// Collects errors and warnings for one file.
#[derive(Debug)]
pub struct Diags {
    file: PathBuf,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Diags {
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Diags {
            file: file.into(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    fn make(&self, pos: Option<Pos>, at: &str, message: String) -> Diagnostic {
        Diagnostic {
            path: self.file.clone(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            at: at.to_owned(),
            message,
        }
    }

    pub fn error(&mut self, pos: impl Into<Option<Pos>>, at: &str, message: impl Into<String>) {
        let d = self.make(pos.into(), at, message.into());
        self.errors.push(d);
    }

    /// An error in another file than this collector's (a call written in a `config_file`).
    pub fn error_in(&mut self, file: &Path, pos: Option<Pos>, at: &str, message: impl Into<String>) {
        let mut d = self.make(pos, at, message.into());
        d.path = file.to_path_buf();
        self.errors.push(d);
    }

    pub fn warn_in(&mut self, file: &Path, pos: Option<Pos>, at: &str, message: impl Into<String>) {
        let mut d = self.make(pos, at, message.into());
        d.path = file.to_path_buf();
        self.warnings.push(d);
    }

    /// Takes over the diagnostics of another file (a `config_file`).
    pub fn absorb(&mut self, other: Diags) {
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
    }

    /// The entries of a mapping node, after reporting every key not in `allowed` (with the closest valid
    /// key as a suggestion). `None`, with an error, when the node is not a mapping.
    pub fn mapping<'n>(
        &mut self,
        node: &'n Node,
        at: &str,
        what: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n>> {
        let Some(entries) = node.as_map() else {
            self.error(
                node.pos,
                at,
                format!(
                    "{what} must be a mapping with the keys {}, found {}",
                    list(allowed),
                    node.kind()
                ),
            );
            return None;
        };
        for (key, _) in entries {
            if !allowed.contains(&key.name.as_str()) {
                self.error(
                    key.pos,
                    &join(at, &key.name),
                    unknown_key(&key.name, what, allowed),
                );
            }
        }
        Some(Fields { entries })
    }
}

/// The entries of a checked mapping.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'n> {
    pub entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
    }

    pub fn key(&self, key: &str) -> Option<&'n Key> {
        self.entries.iter().find(|(k, _)| k.name == key).map(|(k, _)| k)
    }
}

/// `unknown key `replica` in thespian `gilbert`; did you mean `replicas`? (valid keys: …)`
pub fn unknown_key(key: &str, what: &str, allowed: &[&str]) -> String {
    let mut message = format!("unknown key `{}` in {what}", super::yaml::quote(key));
    if let Some(best) = suggest(key, allowed.iter().copied()) {
        message.push_str(&format!("; did you mean `{best}`?"));
    }
    message.push_str(&format!(" (valid keys: {})", list(allowed)));
    message
}

/// `a, b, c` with backticks.
pub fn list<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `parent.child`, or `child` at the top.
pub fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

/// The candidate closest to `word` by edit distance, when close enough to be a plausible typo. Ties go
/// to the candidate listed first, so suggestions are deterministic.
pub fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        if candidate == word {
            continue;
        }
        let distance = levenshtein(&lower, &candidate.to_lowercase());
        // A third of the word, at least one edit: `replica` → `replicas`, `gilbret` → `gilbert`. Words of
        // one or two letters only match up to case (`a` → `A`), or anything would match.
        let len = word.chars().count();
        let limit = if len < 3 { 0 } else { (len / 3).max(1) };
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_and_case_but_not_strangers() {
        let keys = ["replicas", "methods", "config_file"];
        assert_eq!(suggest("replica", keys), Some("replicas"));
        assert_eq!(suggest("method", keys), Some("methods"));
        assert_eq!(suggest("configfile", keys), Some("config_file"));
        assert_eq!(suggest("image", keys), None);
        assert_eq!(suggest("a", ["A", "B", "C"]), Some("A"));
        assert_eq!(suggest("d", ["A", "B", "C"]), None);
        assert_eq!(suggest("gilbret", ["gilbert", "yorick"]), Some("gilbert"));
        assert_eq!(suggest("zzz", ["gilbert", "yorick"]), None);
    }

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }

    #[test]
    fn diagnostics_print_file_line_column() {
        let mut d = Diags::new("fleet/thespian.yaml");
        d.error(Pos { line: 3, column: 5 }, "thespians.x", "bad");
        d.error(None, "grpc_method_a.operations[0]", "worse");
        assert_eq!(d.errors[0].to_string(), "fleet/thespian.yaml:3:5: bad");
        assert_eq!(
            d.errors[1].to_string(),
            "fleet/thespian.yaml: grpc_method_a.operations[0]: worse"
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_valid_ones() {
        let m = unknown_key("replica", "thespian `gilbert`", &["replicas", "methods"]);
        assert_eq!(
            m,
            "unknown key `replica` in thespian `gilbert`; did you mean `replicas`? (valid keys: `replicas`, `methods`)"
        );
    }
}
