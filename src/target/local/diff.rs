//! What `up` has to do: the manifest's plan compared with what runs. Pure, so every case is unit-tested
//! without starting a process.

use std::collections::BTreeSet;

use serde::Serialize;

use super::state::{ReplicaRecord, State};
use crate::fleet::Plan;

/// The outcome for one thespian, as `up` reports it (and `plan` predicts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Nothing of it ran: all replicas started.
    Started,
    /// Replicas replaced: its configuration changed (rolling, one at a time) or a replica had died.
    Restarted,
    /// Only the replica count changed: replicas added or removed, the others untouched.
    Scaled,
    /// Running as the manifest says: nothing done.
    UpToDate,
    /// No longer in the manifest: all replicas stopped.
    Stopped,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Started => "started",
            Change::Restarted => "restarted",
            Change::Scaled => "scaled",
            Change::UpToDate => "up to date",
            Change::Stopped => "stopped",
        }
    }
}

/// What to do to one thespian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThespianDiff {
    pub name: String,
    pub change: Change,
    /// Why, for people: `config changed`, `replica 1 was not running`, `2 → 3 replicas`.
    pub reasons: Vec<String>,
    /// Replica count after `up` (0 when stopped).
    pub desired: u32,
    /// Running and current: left alone.
    pub keep: Vec<u32>,
    /// Missing or dead: start (no old process to replace).
    pub start: Vec<u32>,
    /// Running an old configuration: replace one at a time, each new one healthy before the old stops.
    pub replace: Vec<u32>,
    /// Running but no longer wanted: stop.
    pub stop: Vec<u32>,
    /// Recorded but not running (or the pid is a stranger's now): drop from the state, signal nothing.
    pub forget: Vec<u32>,
    /// Some replica was running before `up`: callers may be sending it traffic right now.
    pub serving: bool,
    /// From the plan (empty for a removed thespian).
    pub config_json: String,
    pub config_hash: String,
    pub callees: Vec<String>,
}

impl ThespianDiff {
    pub fn is_noop(&self) -> bool {
        self.start.is_empty() && self.replace.is_empty() && self.stop.is_empty() && self.forget.is_empty()
    }
}

/// Compares `plan` with `state`; `running` says whether a recorded replica's process is still ours and
/// alive. Thespians of the plan come first (sorted, as in the plan), then removed ones (sorted).
pub fn diff(plan: &Plan, state: &State, running: impl Fn(&ReplicaRecord) -> bool) -> Vec<ThespianDiff> {
    let mut out = Vec::new();
    for t in &plan.thespians {
        let records: &[ReplicaRecord] = state.thespians.get(&t.name).map_or(&[], |s| &s.replicas);
        let mut d = ThespianDiff {
            name: t.name.clone(),
            change: Change::UpToDate,
            reasons: Vec::new(),
            desired: t.replicas,
            keep: Vec::new(),
            start: Vec::new(),
            replace: Vec::new(),
            stop: Vec::new(),
            forget: Vec::new(),
            serving: records.iter().any(&running),
            config_json: t.config_json.clone(),
            config_hash: t.config_hash.clone(),
            callees: t.callees.clone(),
        };
        let mut dead = Vec::new();
        for index in 0..t.replicas {
            match records.iter().find(|r| r.index == index) {
                Some(r) if running(r) && r.config_hash == t.config_hash => d.keep.push(index),
                Some(r) if running(r) => d.replace.push(index),
                Some(_) => {
                    d.forget.push(index);
                    d.start.push(index);
                    dead.push(index);
                }
                None => d.start.push(index),
            }
        }
        for r in records.iter().filter(|r| r.index >= t.replicas) {
            if running(r) {
                d.stop.push(r.index);
            } else {
                d.forget.push(r.index);
            }
        }
        d.forget.sort_unstable();

        let before = u32::try_from(records.len()).unwrap_or(u32::MAX);
        if records.is_empty() {
            d.change = Change::Started;
        } else {
            if !d.replace.is_empty() {
                d.change = Change::Restarted;
                d.reasons.push("config changed".into());
            }
            if !dead.is_empty() {
                d.change = Change::Restarted;
                d.reasons.push(not_running(&dead));
            }
            if before != t.replicas {
                if d.change == Change::UpToDate {
                    d.change = Change::Scaled;
                }
                d.reasons.push(format!("{before} → {} replicas", t.replicas));
            }
        }
        out.push(d);
    }

    let planned: BTreeSet<&str> = plan.thespians.iter().map(|t| t.name.as_str()).collect();
    for (name, t) in state
        .thespians
        .iter()
        .filter(|(n, _)| !planned.contains(n.as_str()))
    {
        let (stop, forget): (Vec<&ReplicaRecord>, Vec<&ReplicaRecord>) =
            t.replicas.iter().partition(|r| running(r));
        let mut reasons = vec!["removed from the manifest".to_string()];
        if stop.is_empty() {
            reasons.push("was not running".into());
        }
        out.push(ThespianDiff {
            name: name.clone(),
            change: Change::Stopped,
            reasons,
            desired: 0,
            keep: Vec::new(),
            start: Vec::new(),
            replace: Vec::new(),
            serving: !stop.is_empty(),
            stop: stop.iter().map(|r| r.index).collect(),
            forget: forget.iter().map(|r| r.index).collect(),
            config_json: String::new(),
            config_hash: String::new(),
            callees: t.callees.clone(),
        });
    }
    out
}

fn not_running(indices: &[u32]) -> String {
    let list: Vec<String> = indices.iter().map(u32::to_string).collect();
    if indices.len() == 1 {
        format!("replica {} was not running", list[0])
    } else {
        format!("replicas {} were not running", list.join(", "))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::fleet::ThespianPlan;

    pub(crate) fn plan(thespians: &[(&str, u32, &str, &[&str])]) -> Plan {
        Plan {
            fleet: "demo".into(),
            manifest_path: PathBuf::from("/tmp/demo/thespian.yaml"),
            target: None,
            thespians: thespians
                .iter()
                .map(|(name, replicas, hash, callees)| ThespianPlan {
                    name: (*name).into(),
                    replicas: *replicas,
                    config_json: format!("{{\"config\":\"{hash}\"}}"),
                    config_hash: (*hash).into(),
                    callees: callees.iter().map(|c| (*c).to_string()).collect(),
                })
                .collect(),
            aws: None,
            warnings: Vec::new(),
        }
    }

    fn state(records: &[(&str, u32, &str, i32)]) -> State {
        let mut s = State::new("demo", Path::new("/tmp/demo/thespian.yaml"));
        for (name, index, hash, pid) in records {
            s.put(ReplicaRecord {
                thespian: (*name).into(),
                index: *index,
                pid: *pid,
                start_time: 1,
                port: 1,
                config_hash: (*hash).into(),
                log: "l".into(),
                started_at_ms: 0,
            });
        }
        s
    }

    /// In these tests a negative pid stands for a dead process.
    fn alive(r: &ReplicaRecord) -> bool {
        r.pid > 0
    }

    fn only<'a>(diffs: &'a [ThespianDiff], name: &str) -> &'a ThespianDiff {
        diffs.iter().find(|d| d.name == name).unwrap()
    }

    #[test]
    fn a_fresh_fleet_starts_everything() {
        let d = diff(
            &plan(&[("gilbert", 2, "g", &[]), ("yorick", 1, "y", &["gilbert"])]),
            &state(&[]),
            alive,
        );
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].change, Change::Started);
        assert_eq!(d[0].start, [0, 1]);
        assert!(!d[0].serving);
        assert_eq!(d[1].callees, ["gilbert"]);
    }

    #[test]
    fn an_unchanged_fleet_is_up_to_date_and_does_nothing() {
        let d = diff(
            &plan(&[("gilbert", 2, "g", &[]), ("yorick", 1, "y", &["gilbert"])]),
            &state(&[
                ("gilbert", 0, "g", 10),
                ("gilbert", 1, "g", 11),
                ("yorick", 0, "y", 12),
            ]),
            alive,
        );
        assert!(
            d.iter().all(|t| t.change == Change::UpToDate && t.is_noop()),
            "{d:?}"
        );
        assert_eq!(only(&d, "gilbert").keep, [0, 1]);
    }

    #[test]
    fn a_changed_config_replaces_only_that_thespian() {
        let d = diff(
            &plan(&[("gilbert", 2, "g2", &[]), ("yorick", 1, "y", &["gilbert"])]),
            &state(&[
                ("gilbert", 0, "g", 10),
                ("gilbert", 1, "g", 11),
                ("yorick", 0, "y", 12),
            ]),
            alive,
        );
        let g = only(&d, "gilbert");
        assert_eq!(
            (g.change, g.replace.as_slice(), g.reasons.as_slice()),
            (
                Change::Restarted,
                &[0, 1][..],
                &["config changed".to_string()][..]
            )
        );
        assert!(g.serving);
        assert!(only(&d, "yorick").is_noop());
    }

    #[test]
    fn scaling_adds_or_removes_replicas_without_touching_the_rest() {
        let running = state(&[("gilbert", 0, "g", 10), ("gilbert", 1, "g", 11)]);
        let up = diff(&plan(&[("gilbert", 3, "g", &[])]), &running, alive);
        assert_eq!(
            (up[0].change, up[0].keep.clone(), up[0].start.clone()),
            (Change::Scaled, vec![0, 1], vec![2])
        );
        assert_eq!(up[0].reasons, ["2 → 3 replicas"]);
        let down = diff(&plan(&[("gilbert", 1, "g", &[])]), &running, alive);
        assert_eq!(
            (down[0].change, down[0].keep.clone(), down[0].stop.clone()),
            (Change::Scaled, vec![0], vec![1])
        );
    }

    #[test]
    fn a_dead_replica_is_restarted_and_its_record_forgotten() {
        let d = diff(
            &plan(&[("gilbert", 2, "g", &[])]),
            &state(&[("gilbert", 0, "g", 10), ("gilbert", 1, "g", -1)]),
            alive,
        );
        assert_eq!(d[0].change, Change::Restarted);
        assert_eq!(
            (d[0].keep.clone(), d[0].start.clone(), d[0].forget.clone()),
            (vec![0], vec![1], vec![1])
        );
        assert_eq!(d[0].reasons, ["replica 1 was not running"]);
    }

    #[test]
    fn a_removed_thespian_is_stopped_and_dead_extras_are_only_forgotten() {
        let d = diff(
            &plan(&[("gilbert", 1, "g", &[])]),
            &state(&[
                ("gilbert", 0, "g", 10),
                ("gilbert", 1, "g", -1),
                ("hamlet", 0, "h", 20),
                ("hamlet", 1, "h", -2),
            ]),
            alive,
        );
        let g = only(&d, "gilbert");
        assert_eq!(
            (g.change, g.stop.is_empty(), g.forget.clone()),
            (Change::Scaled, true, vec![1])
        );
        let h = only(&d, "hamlet");
        assert_eq!(
            (h.change, h.stop.clone(), h.forget.clone(), h.desired),
            (Change::Stopped, vec![0], vec![1], 0)
        );
    }

    #[test]
    fn config_change_and_scale_down_together_stop_the_extra_and_roll_the_rest() {
        let d = diff(
            &plan(&[("gilbert", 1, "g2", &[])]),
            &state(&[("gilbert", 0, "g", 10), ("gilbert", 1, "g", 11)]),
            alive,
        );
        assert_eq!(
            (d[0].change, d[0].replace.clone(), d[0].stop.clone()),
            (Change::Restarted, vec![0], vec![1])
        );
        assert_eq!(d[0].reasons, ["config changed", "2 → 1 replicas"]);
    }
}
