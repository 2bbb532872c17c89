//! The fleet's call graph, method by method: which method of which thespian calls which.
//!
//! Node ids are `THESPIAN.METHOD` (`gilbert.A`); a call from a `config_file` to a service outside the
//! fleet ends at an external node `ADDRESS:PORT/METHOD` (`http://payments.example.com:443/A`). Everything is
//! sorted, so the same manifest always gives the same graph.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::GrpcMethod;
use super::manifest::{Manifest, Source};

/// The call graph of a valid manifest (JSON form of `thespctl graph --output json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallGraph {
    pub fleet: String,
    /// Sorted by name.
    pub thespians: Vec<GraphThespian>,
    /// Sorted by id: every defined method, then the external endpoints.
    pub nodes: Vec<GraphNode>,
    /// Sorted by (from, to).
    pub edges: Vec<GraphEdge>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphThespian {
    pub name: String,
    pub replicas: u32,
    /// The methods with a behaviour.
    pub methods: Vec<GrpcMethod>,
    /// `methods` or `config_file`.
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GraphNode {
    pub id: String,
    /// `method` (a thespian's method) or `external`.
    pub kind: &'static str,
    /// The thespian (method nodes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thespian: Option<String>,
    /// The method called.
    pub method: GrpcMethod,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    /// How many call steps of `from` call `to` (a method may call the same one twice).
    pub calls: u32,
}

impl CallGraph {
    pub fn of(manifest: &Manifest) -> CallGraph {
        let mut nodes = BTreeSet::new();
        let mut external = BTreeSet::new();
        let mut edges: BTreeMap<(String, String), u32> = BTreeMap::new();
        let mut thespians = Vec::new();
        for t in &manifest.thespians {
            let methods = t.defined_methods();
            for m in &methods {
                nodes.insert(GraphNode {
                    id: format!("{}.{m}", t.name),
                    kind: "method",
                    thespian: Some(t.name.clone()),
                    method: *m,
                });
            }
            for call in &t.calls {
                let key = (
                    format!("{}.{}", t.name, call.from),
                    format!("{}.{}", call.thespian, call.method),
                );
                *edges.entry(key).or_default() += 1;
            }
            for call in &t.external_calls {
                let id = format!("{}:{}/{}", call.address, call.port, call.method);
                external.insert(GraphNode {
                    id: id.clone(),
                    kind: "external",
                    thespian: None,
                    method: call.method,
                });
                *edges
                    .entry((format!("{}.{}", t.name, call.from), id))
                    .or_default() += 1;
            }
            thespians.push(GraphThespian {
                name: t.name.clone(),
                replicas: t.replicas,
                methods,
                source: match t.source {
                    Source::Methods => "methods",
                    Source::ConfigFile(_) => "config_file",
                },
            });
        }
        CallGraph {
            fleet: manifest.fleet.clone(),
            thespians,
            nodes: nodes.into_iter().chain(external).collect(),
            edges: edges
                .into_iter()
                .map(|((from, to), calls)| GraphEdge { from, to, calls })
                .collect(),
        }
    }

    /// Outgoing edges of `id`, sorted by target.
    pub fn callees(&self, id: &str) -> impl Iterator<Item = &GraphEdge> {
        self.edges.iter().filter(move |e| e.from == id)
    }

    /// Method nodes nobody in the fleet calls: where requests enter (what you probe).
    pub fn entry_points(&self) -> Vec<&GraphNode> {
        let called: BTreeSet<&str> = self.edges.iter().map(|e| e.to.as_str()).collect();
        self.nodes
            .iter()
            .filter(|n| n.kind == "method" && !called.contains(n.id.as_str()))
            .collect()
    }

    pub fn node(&self, id: &str) -> Option<&GraphNode> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn edges_count_call_steps_and_entry_points_are_the_uncalled_methods() {
        let checked = super::super::manifest::check(
            Path::new("t.yaml"),
            concat!(
                "fleet: demo\n",
                "thespians:\n",
                "  yorick:\n",
                "    methods:\n",
                "      A: [{call: gilbert.A}, {concurrently: [{call: gilbert.A}, {call: gilbert.B}]}]\n",
                "  gilbert:\n",
                "    replicas: 2\n",
                "    methods: {A: [], B: [], C: []}\n",
            ),
        );
        let graph = CallGraph::of(checked.manifest.as_ref().unwrap());
        let edges: Vec<_> = graph
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str(), e.calls))
            .collect();
        assert_eq!(
            edges,
            [("yorick.A", "gilbert.A", 2), ("yorick.A", "gilbert.B", 1)]
        );
        let entries: Vec<_> = graph.entry_points().iter().map(|n| n.id.as_str()).collect();
        assert_eq!(entries, ["gilbert.C", "yorick.A"]);
        assert_eq!(graph.thespians[0].replicas, 2);
        assert_eq!(graph.nodes.len(), 4);
    }
}
