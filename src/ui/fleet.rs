//! Rendering of the fleet reports: `validate` (diagnostics and a summary) and `graph` (tree, Mermaid,
//! Graphviz dot, or JSON).
//!
//! Diagnostics go to stderr as `error: FILE:LINE:COLUMN: message` (like a compiler); the summary and the
//! graph go to stdout. With `--output json`, one JSON document on stdout and nothing else.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::{Report, Style, Ui};
use crate::cli::GraphFormat;
use crate::fleet::graph::CallGraph;
use crate::fleet::{Checked, Diagnostic, GrpcMethod, Source};

/// `thespctl validate`'s result (its JSON form is public interface: see docs/manifest.md).
#[derive(Debug, Clone, Serialize)]
pub struct ValidateReport {
    /// The fleet name, when it could be read (null otherwise).
    pub fleet: Option<String>,
    /// The manifest file as named on the command line.
    pub file: PathBuf,
    pub valid: bool,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    /// The compiled thespians (empty when the manifest is not valid).
    pub thespians: Vec<ThespianSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThespianSummary {
    pub name: String,
    pub replicas: u32,
    /// `methods` or `config_file`.
    pub source: &'static str,
    /// The config file, for `source: config_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
    /// The methods with a behaviour.
    pub methods: Vec<GrpcMethod>,
    /// The thespians it calls, sorted.
    pub callees: Vec<String>,
    /// Hex SHA-256 of the compiled `CONFIG_JSON` (what `up` compares to decide a restart).
    pub config_hash: String,
    /// The compiled `CONFIG_JSON` itself (the agent's format), to see what the methods syntax became.
    pub config: serde_json::Value,
}

impl ValidateReport {
    pub fn new(checked: &Checked) -> Self {
        let thespians = checked
            .manifest
            .as_ref()
            .map(|m| {
                let plan = m.plan();
                m.thespians
                    .iter()
                    .zip(plan.thespians)
                    .map(|(t, p)| ThespianSummary {
                        name: p.name,
                        replicas: p.replicas,
                        source: match t.source {
                            Source::Methods => "methods",
                            Source::ConfigFile(_) => "config_file",
                        },
                        config_file: match &t.source {
                            Source::ConfigFile(path) => Some(path.clone()),
                            Source::Methods => None,
                        },
                        methods: t.defined_methods(),
                        callees: p.callees,
                        config_hash: p.config_hash,
                        config: serde_json::from_str(&p.config_json).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ValidateReport {
            fleet: checked.fleet.clone(),
            file: checked.path.clone(),
            valid: checked.manifest.is_some(),
            errors: checked.errors.clone(),
            warnings: checked.warnings.clone(),
            thespians,
        }
    }
}

/// Prints a validation: diagnostics on stderr, the summary on stdout (or one JSON document).
pub fn validation(ui: &Ui, report: &ValidateReport) {
    if ui.is_json() {
        ui.json_line(report);
        return;
    }
    for w in &report.warnings {
        ui.warn(w);
    }
    for e in &report.errors {
        eprintln!("{} {e}", ui.paint("error:", Style::Red));
    }
    if report.valid {
        ui.emit(report);
    } else {
        eprintln!(
            "{} {}: {}{}; fix the manifest and run `thespctl validate` again",
            ui.paint("error:", Style::Red),
            report.file.display(),
            plural(report.errors.len(), "error"),
            if report.warnings.is_empty() {
                String::new()
            } else {
                format!(", {}", plural(report.warnings.len(), "warning"))
            }
        );
    }
}

impl Report for ValidateReport {
    fn render(&self, ui: &Ui) -> String {
        let replicas: u32 = self.thespians.iter().map(|t| t.replicas).sum();
        let calls: usize = self.thespians.iter().map(|t| t.callees.len()).sum();
        let mut line = format!(
            "{} {}: fleet `{}` is valid: {}, {}, {} between thespians",
            ui.paint("ok", Style::Green),
            self.file.display(),
            self.fleet.as_deref().unwrap_or_default(),
            plural(self.thespians.len(), "thespian"),
            plural(replicas as usize, "replica"),
            plural(calls, "link"),
        );
        if !self.warnings.is_empty() {
            let _ = write!(line, " ({})", plural(self.warnings.len(), "warning"));
        }
        line
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `thespctl graph`: the graph in the chosen notation on stdout (JSON with `--output json`), warnings on
/// stderr.
pub fn graph(ui: &Ui, graph: &CallGraph, format: GraphFormat, warnings: &[Diagnostic]) {
    for w in warnings {
        ui.warn(w);
    }
    if ui.is_json() {
        ui.json_line(graph);
        return;
    }
    let text = match format {
        GraphFormat::Tree => tree(graph),
        GraphFormat::Mermaid => mermaid(graph),
        GraphFormat::Dot => dot(graph),
    };
    print!("{text}");
}

/// One tree per entry point (a method nobody calls). A subtree already drawn is not drawn again: its
/// root is marked `(*)`.
pub fn tree(graph: &CallGraph) -> String {
    let mut out = String::new();
    let mut expanded = BTreeSet::new();
    let mut repeated = false;
    for entry in graph.entry_points() {
        out.push_str(&entry.id);
        out.push('\n');
        expanded.insert(entry.id.clone());
        tree_children(graph, &entry.id, "", &mut expanded, &mut repeated, &mut out);
    }
    if repeated {
        out.push_str("(*) called from several places; its calls are shown above\n");
    }
    out
}

fn tree_children(
    graph: &CallGraph,
    id: &str,
    prefix: &str,
    expanded: &mut BTreeSet<String>,
    repeated: &mut bool,
    out: &mut String,
) {
    let edges: Vec<_> = graph.callees(id).collect();
    for (i, edge) in edges.iter().enumerate() {
        let last = i + 1 == edges.len();
        let (branch, indent) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        let times = if edge.calls > 1 {
            format!(" ×{}", edge.calls)
        } else {
            String::new()
        };
        let external = graph.node(&edge.to).is_some_and(|n| n.kind == "external");
        let has_children = graph.callees(&edge.to).next().is_some();
        let seen = !expanded.insert(edge.to.clone());
        let mark = if external {
            " (external)"
        } else if seen && has_children {
            *repeated = true;
            " (*)"
        } else {
            ""
        };
        let _ = writeln!(out, "{prefix}{branch}{}{times}{mark}", edge.to);
        // A valid manifest has no cycles, so the recursion ends; `seen` keeps shared subtrees drawn once.
        if !seen {
            tree_children(
                graph,
                &edge.to,
                &format!("{prefix}{indent}"),
                expanded,
                repeated,
                out,
            );
        }
    }
}

/// A Mermaid flowchart: one subgraph per thespian (with its replicas), an edge per caller → callee.
pub fn mermaid(graph: &CallGraph) -> String {
    // Mermaid ids: letters, digits, underscores. Names never contain `_`, so `a-b.A` → `a_b_A` is unique.
    let id = |s: &str| {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    };
    let mut out = String::from("flowchart LR\n");
    for t in &graph.thespians {
        // `t_` keeps a thespian called `end` (or `graph`, `style`…) from reading as a Mermaid keyword.
        let _ = writeln!(
            out,
            "  subgraph t_{}[\"{} ({})\"]",
            id(&t.name),
            t.name,
            replicas(t.replicas)
        );
        for m in &t.methods {
            let _ = writeln!(out, "    {}[\"{}.{m}\"]", id(&format!("{}.{m}", t.name)), t.name);
        }
        out.push_str("  end\n");
    }
    for n in graph.nodes.iter().filter(|n| n.kind == "external") {
        let _ = writeln!(out, "  ext_{}[/\"{}\"/]", id(&n.id), n.id.replace('"', "#quot;"));
    }
    for e in &graph.edges {
        let to = match graph.node(&e.to) {
            Some(n) if n.kind == "external" => format!("ext_{}", id(&e.to)),
            _ => id(&e.to),
        };
        let label = if e.calls > 1 {
            format!("|\"×{}\"|", e.calls)
        } else {
            String::new()
        };
        let _ = writeln!(out, "  {} -->{label} {to}", id(&e.from));
    }
    out
}

/// Graphviz dot: one cluster per thespian, an edge per caller → callee.
pub fn dot(graph: &CallGraph) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = format!(
        "digraph {} {{\n  rankdir=LR;\n  node [shape=box, style=rounded];\n",
        quote(&graph.fleet)
    );
    for t in &graph.thespians {
        let _ = writeln!(
            out,
            "  subgraph {} {{\n    label={};",
            quote(&format!("cluster_{}", t.name)),
            quote(&format!("{} ({})", t.name, replicas(t.replicas)))
        );
        for m in &t.methods {
            let _ = writeln!(out, "    {};", quote(&format!("{}.{m}", t.name)));
        }
        out.push_str("  }\n");
    }
    for n in graph.nodes.iter().filter(|n| n.kind == "external") {
        let _ = writeln!(out, "  {} [shape=parallelogram, style=dashed];", quote(&n.id));
    }
    for e in &graph.edges {
        let label = if e.calls > 1 {
            format!(" [label={}]", quote(&format!("×{}", e.calls)))
        } else {
            String::new()
        };
        let _ = writeln!(out, "  {} -> {}{label};", quote(&e.from), quote(&e.to));
    }
    out.push_str("}\n");
    out
}

fn replicas(n: u32) -> String {
    plural(n as usize, "replica")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn graph_of(text: &str) -> CallGraph {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thespian.yaml");
        std::fs::write(&path, text).unwrap();
        crate::fleet::load_manifest(Path::new(&path)).unwrap().graph()
    }

    const DIAMOND: &str = concat!(
        "fleet: shop\n",
        "thespians:\n",
        "  web: {methods: {A: [{call: cart.A}, {call: search.A}, {call: search.A}]}}\n",
        "  cart: {methods: {A: [{call: db.A}]}}\n",
        "  search: {methods: {A: [{call: db.A}]}}\n",
        "  db: {replicas: 2, methods: {A: [{call: disk.A}], B: []}}\n",
        "  disk: {methods: {A: []}}\n",
    );

    #[test]
    fn the_tree_draws_shared_subtrees_once() {
        assert_eq!(
            tree(&graph_of(DIAMOND)),
            concat!(
                "db.B\n",
                "web.A\n",
                "├── cart.A\n",
                "│   └── db.A\n",
                "│       └── disk.A\n",
                "└── search.A ×2\n",
                "    └── db.A (*)\n",
                "(*) called from several places; its calls are shown above\n",
            )
        );
    }

    #[test]
    fn mermaid_and_dot_are_deterministic_and_name_every_edge() {
        let g = graph_of(DIAMOND);
        let m = mermaid(&g);
        assert!(m.starts_with("flowchart LR\n"), "{m}");
        assert!(
            m.contains(
                "  subgraph t_db[\"db (2 replicas)\"]\n    db_A[\"db.A\"]\n    db_B[\"db.B\"]\n  end\n"
            ),
            "{m}"
        );
        assert!(m.contains("  web_A -->|\"×2\"| search_A\n"), "{m}");
        assert_eq!(m.matches("-->").count(), 5, "{m}");
        let d = dot(&g);
        assert!(d.starts_with("digraph \"shop\" {\n"), "{d}");
        assert!(
            d.contains("  subgraph \"cluster_db\" {\n    label=\"db (2 replicas)\";\n"),
            "{d}"
        );
        assert!(d.contains("  \"web.A\" -> \"search.A\" [label=\"×2\"];\n"), "{d}");
        assert!(d.ends_with("}\n"));
        assert_eq!(mermaid(&graph_of(DIAMOND)), m);
        assert_eq!(dot(&graph_of(DIAMOND)), d);
    }

    #[test]
    fn hyphenated_names_make_valid_mermaid_ids() {
        let g = graph_of(
            "fleet: f\nthespians:\n  front-end: {methods: {A: [{call: end.B}]}}\n  end: {methods: {B: []}}\n",
        );
        let m = mermaid(&g);
        assert!(m.contains("  front_end_A --> end_B\n"), "{m}");
        assert!(m.contains("  subgraph t_end[\"end (1 replica)\"]\n"), "{m}");
    }
}
