//! Fleet-wide checks, once every thespian has been read: callees exist and define the method called, and
//! no method reaches itself through calls (a cycle).
//!
//! Decisions (documented in docs/manifest.md):
//! - A call to a method the callee does not define is an **error**, although the agent would answer it
//!   with OK at once: a silent no-op where the author expected work makes traces lie. `B: []` defines a
//!   method that does nothing on purpose.
//! - In a `config_file`, `http://NAME` on port 80 is a call to thespian NAME. When NAME is not a thespian
//!   of the fleet it is a **warning** (the call is kept as an external one), because existing configs may
//!   call services that live outside the fleet.
//! - Cycles are errors: a request would bounce until the agents' hop limit refuses it.

use std::collections::{BTreeMap, BTreeSet};

use super::agent_config::{Config, ConfigExt, GrpcMethod};
use super::diag::{Diags, list, suggest};
use super::manifest::{Draft, ExternalCall, Source};
use super::syntax::CallSite;

/// The most cycles reported: beyond that the fleet needs rethinking, not a longer list.
const MAX_CYCLES: usize = 20;
/// Bound on the cycle search (a dense knot of calls has exponentially many cycles).
const MAX_SEARCH_STEPS: usize = 200_000;

/// A method of a thespian: a node of the call graph.
pub type MethodId = (String, GrpcMethod);

pub fn display(id: &MethodId) -> String {
    format!("{}.{}", id.0, id.1)
}

pub(super) fn fleet(drafts: &mut [Draft], diags: &mut Diags) {
    // `None`: the thespian exists but its behaviour did not compile (its own errors are reported).
    let defined: BTreeMap<String, Option<(Vec<GrpcMethod>, Source)>> = drafts
        .iter()
        .map(|d| {
            let methods = d
                .behaviour
                .as_ref()
                .map(|b| (b.declared.clone(), b.source.clone()));
            (d.name.clone(), methods)
        })
        .collect();
    let names: Vec<&str> = defined.keys().map(String::as_str).collect();

    for draft in drafts.iter_mut() {
        let Some(behaviour) = draft.behaviour.as_mut() else {
            continue;
        };
        let mut kept = Vec::new();
        for site in std::mem::take(&mut behaviour.calls) {
            let caller = format!("{}.{}", draft.name, site.from);
            let in_config_file = site.file != diags.file();
            match defined.get(&site.thespian) {
                None if in_config_file => {
                    let mut message = format!(
                        "{caller} calls http://{}:80, which is not a thespian of this fleet",
                        site.thespian
                    );
                    if let Some(best) = suggest(&site.thespian, names.iter().copied()) {
                        message.push_str(&format!(" (did you mean `{best}`?)"));
                    }
                    message.push_str("; it is left as a call to an external service");
                    diags.warn_in(&site.file, site.pos, &site.at, message);
                    behaviour.external_calls.push(ExternalCall {
                        from: site.from,
                        address: format!("http://{}", site.thespian),
                        port: 80,
                        method: site.method,
                    });
                }
                None => {
                    let mut message = format!("{caller} calls unknown thespian `{}`", site.thespian);
                    match suggest(&site.thespian, names.iter().copied()) {
                        Some(best) => message.push_str(&format!("; did you mean `{best}`?")),
                        None => message.push_str("; add it under `thespians:` or fix the name"),
                    }
                    message.push_str(&format!(" (thespians: {})", list(&names)));
                    diags.error_in(&site.file, site.pos, &site.at, message);
                }
                // Broken callee: its own errors say why; whether it defines the method is unknown.
                Some(None) => kept.push(site),
                Some(Some((methods, source))) => {
                    if !methods.contains(&site.method) {
                        let how = match source {
                            Source::Methods => format!(
                                "define `{}:` in {}'s methods (`{}: []` answers OK at once)",
                                site.method, site.thespian, site.method
                            ),
                            Source::ConfigFile(path) => {
                                format!("define `{}` in {}", Config::key(site.method), path.display())
                            }
                        };
                        let others = if methods.is_empty() {
                            format!("{} defines no method", site.thespian)
                        } else {
                            let shown: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
                            format!("it defines {}", list(&shown))
                        };
                        diags.error_in(
                            &site.file,
                            site.pos,
                            &site.at,
                            format!(
                                "{caller} calls {}.{}, but {} does not define {} ({others}); {how}, or call \
                                 a defined method",
                                site.thespian, site.method, site.thespian, site.method
                            ),
                        );
                    }
                    kept.push(site);
                }
            }
        }
        behaviour.calls = kept;
    }

    report_cycles(drafts, diags);
}

/// Every elementary cycle of the method-level call graph, as an error at the call that starts it.
fn report_cycles(drafts: &[Draft], diags: &mut Diags) {
    let mut edges: BTreeMap<MethodId, BTreeMap<MethodId, &CallSite>> = BTreeMap::new();
    let existing: BTreeSet<MethodId> = drafts
        .iter()
        .filter_map(|d| Some((d, d.behaviour.as_ref()?)))
        .flat_map(|(d, b)| b.declared.iter().map(|m| (d.name.clone(), *m)))
        .collect();
    for draft in drafts {
        let Some(b) = &draft.behaviour else { continue };
        for site in &b.calls {
            let from = (draft.name.clone(), site.from);
            let to = (site.thespian.clone(), site.method);
            if existing.contains(&to) {
                // The first call site of an edge is where the cycle is reported.
                edges.entry(from).or_default().entry(to).or_insert(site);
            }
        }
    }
    let adjacency: BTreeMap<MethodId, Vec<MethodId>> = edges
        .iter()
        .map(|(from, tos)| (from.clone(), tos.keys().cloned().collect()))
        .collect();
    let mut search = find_cycles(&adjacency, MAX_CYCLES);
    // Print each cycle from the thespian written first in the manifest (usually the client), so
    // `yorick.A → gilbert.B → yorick.A` reads the way the author thinks of the fleet.
    let written: BTreeMap<&str, _> = drafts.iter().map(|d| (d.name.as_str(), d.pos)).collect();
    let rank = |id: &MethodId| (written.get(id.0.as_str()).copied(), id.1);
    for cycle in &mut search.cycles {
        if let Some(first) = (0..cycle.len()).min_by_key(|i| rank(&cycle[*i])) {
            cycle.rotate_left(first);
        }
    }
    search
        .cycles
        .sort_by(|a, b| a.iter().map(rank).cmp(b.iter().map(rank)));
    for cycle in &search.cycles {
        let site = edges[&cycle[0]][&cycle[1 % cycle.len()]];
        let mut path: Vec<String> = cycle.iter().map(display).collect();
        path.push(display(&cycle[0]));
        diags.error_in(
            &site.file,
            site.pos,
            &site.at,
            format!(
                "call cycle: {}; a request would go round until the agents' 16-hop limit refuses it \
                 (FAILED_PRECONDITION); remove one of these calls",
                path.join(" → ")
            ),
        );
    }
    if search.truncated {
        diags.error(
            None,
            "thespians",
            format!(
                "more call cycles than the {} listed above; untangle those first and run validate again",
                search.cycles.len()
            ),
        );
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct CycleSearch {
    /// Each cycle starts at its smallest node; cycles are sorted.
    pub cycles: Vec<Vec<MethodId>>,
    /// The search stopped early (too many cycles or steps).
    pub truncated: bool,
}

/// Finds the elementary cycles of a graph, deterministically: within each strongly connected component,
/// for each start node in order, the simple paths through larger nodes that return to it.
pub fn find_cycles(adjacency: &BTreeMap<MethodId, Vec<MethodId>>, limit: usize) -> CycleSearch {
    let component = strongly_connected(adjacency);
    let mut search = CycleSearch::default();
    let mut steps = 0usize;
    for start in adjacency.keys() {
        let mut path = vec![start.clone()];
        // Iterative DFS: (node, index of the next successor to try).
        let mut stack: Vec<(MethodId, usize)> = vec![(start.clone(), 0)];
        while let Some((node, next)) = stack.last_mut() {
            steps += 1;
            if steps > MAX_SEARCH_STEPS || search.cycles.len() >= limit {
                search.truncated = true;
                return search;
            }
            let successors = adjacency.get(node).map(Vec::as_slice).unwrap_or_default();
            let Some(succ) = successors.get(*next) else {
                stack.pop();
                path.pop();
                continue;
            };
            *next += 1;
            if succ == start {
                search.cycles.push(path.clone());
            } else if succ > start && component.get(succ) == component.get(start) && !path.contains(succ) {
                path.push(succ.clone());
                stack.push((succ.clone(), 0));
            }
        }
    }
    search
}

/// Tarjan's algorithm: the component index of every node.
fn strongly_connected(adjacency: &BTreeMap<MethodId, Vec<MethodId>>) -> BTreeMap<MethodId, usize> {
    struct State<'g> {
        adjacency: &'g BTreeMap<MethodId, Vec<MethodId>>,
        index: BTreeMap<&'g MethodId, usize>,
        low: BTreeMap<&'g MethodId, usize>,
        on_stack: BTreeSet<&'g MethodId>,
        stack: Vec<&'g MethodId>,
        component: BTreeMap<MethodId, usize>,
        components: usize,
    }
    // Recursion depth is bounded by the number of methods in the fleet (3 per thespian).
    fn visit<'g>(s: &mut State<'g>, v: &'g MethodId) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.adjacency.get(v).map(Vec::as_slice).unwrap_or_default() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                s.component.insert(w.clone(), s.components);
                if w == v {
                    break;
                }
            }
            s.components += 1;
        }
    }
    let mut state = State {
        adjacency,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on_stack: BTreeSet::new(),
        stack: Vec::new(),
        component: BTreeMap::new(),
        components: 0,
    };
    for v in adjacency.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.component
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn id(s: &str) -> MethodId {
        let (t, m) = s.split_once('.').unwrap();
        (t.to_owned(), GrpcMethod::parse(m).unwrap())
    }

    fn graph(edges: &[(&str, &str)]) -> BTreeMap<MethodId, Vec<MethodId>> {
        let mut g: BTreeMap<MethodId, Vec<MethodId>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(id(a)).or_default().push(id(b));
        }
        for v in g.values_mut() {
            v.sort();
        }
        g
    }

    fn shown(search: &CycleSearch) -> Vec<String> {
        search
            .cycles
            .iter()
            .map(|c| c.iter().map(display).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[test]
    fn finds_every_elementary_cycle_once_in_a_fixed_order() {
        let g = graph(&[
            ("a.A", "b.A"),
            ("b.A", "a.A"),
            ("b.A", "c.A"),
            ("c.A", "a.A"),
            ("c.B", "c.B"),
            ("d.A", "a.A"),
        ]);
        let search = find_cycles(&g, 100);
        assert_eq!(shown(&search), ["a.A b.A", "a.A b.A c.A", "c.B"]);
        assert!(!search.truncated);
        // The same graph built in another order gives the same answer.
        let g2 = graph(&[
            ("d.A", "a.A"),
            ("c.B", "c.B"),
            ("c.A", "a.A"),
            ("b.A", "c.A"),
            ("b.A", "a.A"),
            ("a.A", "b.A"),
        ]);
        assert_eq!(find_cycles(&g2, 100), search);
    }

    #[test]
    fn a_dag_has_no_cycles_and_a_clique_is_cut_short() {
        let dag = graph(&[("a.A", "b.A"), ("a.A", "c.A"), ("b.A", "d.A"), ("c.A", "d.A")]);
        assert_eq!(find_cycles(&dag, 100), CycleSearch::default());
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let mut edges = Vec::new();
        for x in names {
            for y in names {
                if x != y {
                    edges.push((format!("{x}.A"), format!("{y}.A")));
                }
            }
        }
        let edges: Vec<(&str, &str)> = edges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let search = find_cycles(&graph(&edges), 20);
        assert_eq!(search.cycles.len(), 20);
        assert!(search.truncated);
    }

    fn check(text: &str) -> super::super::manifest::Checked {
        super::super::manifest::check(Path::new("t.yaml"), text)
    }

    #[test]
    fn unknown_callees_undefined_methods_and_cycles_are_errors_at_the_call() {
        let checked = check(concat!(
            "fleet: f\n",
            "thespians:\n",
            "  yorick:\n",
            "    methods:\n",
            "      A: [{call: gilbret.A}, {call: gilbert.B}, {call: gilbert.C}]\n",
            "  gilbert:\n",
            "    methods:\n",
            "      A: []\n",
            "      B: [{call: yorick.A}]\n",
        ));
        let errors: Vec<String> = checked.errors.iter().map(ToString::to_string).collect();
        let want = [
            "t.yaml:5:18: yorick.A calls unknown thespian `gilbret`; did you mean `gilbert`? (thespians: `gilbert`, `yorick`)",
            "t.yaml:5:37: call cycle: yorick.A → gilbert.B → yorick.A;",
            "t.yaml:5:56: yorick.A calls gilbert.C, but gilbert does not define C (it defines `A`, `B`); define `C:` in gilbert's methods (`C: []` answers OK at once)",
        ];
        for (got, want) in errors.iter().zip(want) {
            assert!(got.starts_with(want), "got: {got}\nwant: {want}…");
        }
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
    }

    #[test]
    fn a_self_call_is_a_cycle() {
        let checked = check("fleet: f\nthespians:\n  solo:\n    methods: {A: [{call: solo.A}]}\n");
        assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
        assert!(
            checked.errors[0]
                .message
                .starts_with("call cycle: solo.A → solo.A;")
        );
    }

    #[test]
    fn a_broken_callee_is_known_but_not_second_guessed() {
        let checked = check(concat!(
            "fleet: f\n",
            "thespians:\n",
            "  yorick: {methods: {A: [{call: gilbert.B}]}}\n",
            "  gilbert: {methods: 3}\n",
        ));
        assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
        assert!(checked.errors[0].message.starts_with("methods must be a mapping"));
    }

    #[test]
    fn errors_inside_thespians_do_not_hide_fleet_errors() {
        let checked = check(concat!(
            "fleet: f\n",
            "thespians:\n",
            "  yorick: {methods: {A: [{call: {thespian: gilbert, method: B, retries: -1}}]}}\n",
            "  gilbert: {methods: {A: [{sleep: forever}, {call: yorick.A}]}}\n",
        ));
        let errors: Vec<String> = checked.errors.iter().map(|e| e.message.clone()).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].starts_with("yorick.A calls gilbert.B, but gilbert does not define B"));
        assert!(errors[1].starts_with("retries must be"));
        assert!(errors[2].starts_with("sleep must be a duration"));
    }
}
