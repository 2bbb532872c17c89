//! Rendering of the local reports (tables and JSON) and of log lines.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use super::{Report, Style, Ui, human_duration};
use crate::error::exit;
use crate::target::local::diff::Change;
use crate::target::local::health::Health;
use crate::target::local::logs::LogSource;
use crate::target::local::process::StopOutcome;
use crate::target::local::report::{DownReport, StatusReport, UpReport};

fn change_cell(ui: &Ui, change: Change, dry_run: bool) -> String {
    let text = if dry_run {
        match change {
            Change::Started => "would start",
            Change::Restarted => "would restart",
            Change::Scaled => "would scale",
            Change::UpToDate => "up to date",
            Change::Stopped => "would stop",
        }
    } else {
        change.as_str()
    };
    let style = match change {
        Change::UpToDate => Style::Dim,
        Change::Stopped => Style::Yellow,
        _ => Style::Green,
    };
    ui.paint(text, style)
}

impl Report for UpReport {
    fn render(&self, ui: &Ui) -> String {
        let mut table = ui.table(&["THESPIAN", "REPLICAS", "ADDRESSES", "STATUS", "DETAIL"]);
        for t in &self.thespians {
            table.add_row(vec![
                t.name.clone(),
                t.replicas.to_string(),
                t.addresses.join("\n"),
                change_cell(ui, t.status, self.dry_run),
                t.detail.clone(),
            ]);
        }
        let changed = self
            .thespians
            .iter()
            .filter(|t| t.status != Change::UpToDate)
            .count();
        let summary = if self.dry_run {
            if changed == 0 {
                format!(
                    "fleet {}: up to date, `thespctl up` would change nothing",
                    self.fleet
                )
            } else {
                format!(
                    "fleet {}: `thespctl up` would change {changed} thespian(s); nothing was changed",
                    self.fleet
                )
            }
        } else if changed == 0 {
            format!("fleet {} is up to date", self.fleet)
        } else {
            format!(
                "fleet {} is up ({} in {})",
                self.fleet,
                plural(changed, "thespian changed", "thespians changed"),
                human_duration(Duration::from_millis(self.elapsed_ms))
            )
        };
        format!("{table}\n{summary}")
    }
}

fn health_cell(ui: &Ui, health: &Health) -> String {
    let style = match health {
        Health::Serving => Style::Green,
        Health::NotServing | Health::Unknown => Style::Yellow,
        Health::Unreachable | Health::Dead => Style::Red,
    };
    ui.paint(health.as_str(), style)
}

impl Report for StatusReport {
    fn render(&self, ui: &Ui) -> String {
        if !self.running {
            return format!(
                "fleet {} is not running (run `thespctl up` to start it)",
                self.fleet
            );
        }
        let mut table = ui.table(&["THESPIAN", "REPLICA", "PID", "ADDRESS", "HEALTH", "UPTIME"]);
        let mut notes = Vec::new();
        for t in &self.thespians {
            for r in &t.replicas {
                table.add_row(vec![
                    t.name.clone(),
                    r.index.to_string(),
                    r.pid.to_string(),
                    r.address.clone(),
                    health_cell(ui, &r.health),
                    if r.health == Health::Dead {
                        "-".to_string()
                    } else {
                        human_duration(Duration::from_millis(r.uptime_ms))
                    },
                ]);
                if let Some(detail) = &r.health_detail {
                    notes.push(format!("{}[{}]: {detail}", t.name, r.index));
                }
            }
        }
        let mut out = table.to_string();
        for note in &notes {
            out.push('\n');
            out.push_str(note);
        }
        out.push('\n');
        if self.healthy {
            out.push_str(&format!("fleet {}: every replica is serving", self.fleet));
        } else {
            out.push_str(&format!(
                "fleet {}: {} not serving; `thespctl up` restarts dead replicas, `thespctl logs NAME` shows why",
                self.fleet,
                plural(notes.len(), "replica", "replicas")
            ));
        }
        out
    }

    /// 0 when every replica is serving; 1 when any is not, or nothing runs.
    fn exit_code(&self) -> u8 {
        if self.healthy { exit::OK } else { exit::FAILED }
    }
}

impl Report for DownReport {
    fn render(&self, ui: &Ui) -> String {
        if self.nothing_running {
            return format!("fleet {} is not running: nothing to stop", self.fleet);
        }
        let mut table = ui.table(&["THESPIAN", "REPLICA", "PID", "OUTCOME"]);
        for r in &self.replicas {
            let outcome = match r.outcome {
                StopOutcome::Drained => ui.paint("stopped", Style::Green),
                StopOutcome::Killed => ui.paint("killed after the grace period", Style::Yellow),
                StopOutcome::NotRunning => ui.paint("was not running", Style::Dim),
                StopOutcome::ForeignPid => ui.paint(
                    "exited earlier (pid reused by another program, left alone)",
                    Style::Dim,
                ),
            };
            table.add_row(vec![
                r.thespian.clone(),
                r.index.to_string(),
                r.pid.to_string(),
                outcome,
            ]);
        }
        let stopped = self
            .replicas
            .iter()
            .filter(|r| matches!(r.outcome, StopOutcome::Drained | StopOutcome::Killed))
            .count();
        format!(
            "{table}\nfleet {} is down: {} stopped in {} (logs kept in {})",
            self.fleet,
            plural(stopped, "replica", "replicas"),
            human_duration(Duration::from_millis(self.elapsed_ms)),
            self.logs_dir.display()
        )
    }
}

/// Progress of `up`: a bar on a terminal; elsewhere one plain line on stderr per finished step (nothing in
/// JSON mode, where stderr stays quiet).
#[derive(Debug, Clone)]
pub struct UpProgress {
    ui: Ui,
    bar: indicatif::ProgressBar,
}

impl UpProgress {
    pub fn new(ui: &Ui, steps: u64) -> Self {
        UpProgress {
            ui: ui.clone(),
            bar: ui.progress_bar(steps),
        }
    }

    /// A step begins (`starting gilbert[0]`).
    pub fn begin(&self, what: String) {
        self.bar.set_message(what);
    }

    /// A step is done (`gilbert[0] serving at 127.0.0.1:41001`).
    pub fn done(&self, line: String) {
        self.bar.inc(1);
        if !self.ui.interactive {
            self.ui.info(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// One log line as `thespctl logs` prints it: prefixed with the replica when several are shown; in JSON
/// mode one NDJSON object `{thespian, replica, line}` per line.
pub fn log_line(ui: &Ui, source: &LogSource, prefixed: bool, line: &str) {
    #[derive(Serialize)]
    struct Line<'a> {
        thespian: &'a str,
        replica: u32,
        line: &'a str,
    }
    if ui.is_json() {
        ui.json_line(&Line {
            thespian: &source.thespian,
            replica: source.index,
            line,
        });
        return;
    }
    let mut out = std::io::stdout().lock();
    // A closed pipe (`thespctl logs x | head`) is not an error worth reporting.
    let _ = if prefixed {
        writeln!(
            out,
            "{} {line}",
            ui.paint(&format!("{} |", source.label()), Style::Dim)
        )
    } else {
        writeln!(out, "{line}")
    };
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::cli::OutputFormat;
    use crate::target::local::report::{ReplicaStatus, ThespianOutcome, ThespianStatus};

    #[test]
    fn up_table_shows_status_and_plan_says_would() {
        let mut report = UpReport {
            fleet: "demo".into(),
            target: "local",
            dry_run: false,
            state_dir: PathBuf::from(".thespctl"),
            elapsed_ms: 812,
            thespians: vec![ThespianOutcome {
                name: "gilbert".into(),
                status: Change::Restarted,
                detail: "config changed".into(),
                replicas: 2,
                addresses: vec!["127.0.0.1:41001".into(), "127.0.0.1:41002".into()],
                started: vec![],
                replaced: vec![0, 1],
                stopped: vec![],
            }],
        };
        let ui = Ui::plain(OutputFormat::Table);
        let text = report.render(&ui);
        assert!(
            text.contains("restarted") && text.contains("127.0.0.1:41002"),
            "{text}"
        );
        assert!(
            text.contains("fleet demo is up (1 thespian changed in 812 ms)"),
            "{text}"
        );
        report.dry_run = true;
        let text = report.render(&ui);
        assert!(
            text.contains("would restart") && text.contains("nothing was changed"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["thespians"][0]["status"], "restarted");
        assert_eq!(json["thespians"][0]["replaced"], serde_json::json!([0, 1]));
    }

    #[test]
    fn status_exit_code_follows_health() {
        let replica = |health| ReplicaStatus {
            index: 0,
            pid: 7,
            address: "127.0.0.1:1".into(),
            health,
            health_detail: None,
            uptime_ms: 1_000,
            started_at: "2026-01-01T00:00:00Z".into(),
            log: PathBuf::from("l"),
        };
        let mut report = StatusReport {
            fleet: "demo".into(),
            target: "local",
            state_dir: PathBuf::from(".thespctl"),
            running: true,
            healthy: true,
            thespians: vec![ThespianStatus {
                name: "gilbert".into(),
                replicas: vec![replica(Health::Serving)],
            }],
        };
        assert_eq!(report.exit_code(), exit::OK);
        report.healthy = false;
        report.thespians[0].replicas[0] = replica(Health::Dead);
        assert_eq!(report.exit_code(), exit::FAILED);
        assert!(report.render(&Ui::plain(OutputFormat::Table)).contains("dead"));
        assert_eq!(
            serde_json::to_value(&report).unwrap()["thespians"][0]["replicas"][0]["health"],
            "dead"
        );
    }
}
