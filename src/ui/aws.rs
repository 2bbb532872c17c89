//! Rendering of the aws reports (tables and JSON), the live progress of stacks and services, and the
//! confirmation prompt.
//!
//! Progress: one line per stack or service. On a terminal each line is a spinner showing the latest
//! event and the elapsed time; otherwise a plain line is printed whenever a stack's latest event
//! changes (`STACK  EVENT  (ELAPSED)`). In JSON mode nothing is printed on stderr.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Report, Style, Ui, human_duration};
use crate::error::exit;
use crate::target::aws::report::{DownReport, StackAction, StatusReport, UpReport};

/// The progress display of one command: a set of lines.
pub struct Progress {
    ui: Ui,
    multi: Option<MultiProgress>,
    /// Width of the name column in plain mode, so lines align.
    width: usize,
}

impl Progress {
    /// `names` are the lines to come (for alignment); more may be added.
    pub fn new(ui: &Ui, names: &[String]) -> Progress {
        let multi = (ui.interactive && !ui.is_json())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            ui: ui.clone(),
            multi,
            width: names.iter().map(String::len).max().unwrap_or(0),
        }
    }

    /// A new line named `name`, showing `text`.
    pub fn line(&self, name: &str, text: &str) -> Line {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new_spinner());
            if let Ok(style) = ProgressStyle::with_template(&format!(
                "{{spinner}} {{prefix:{w}.bold}}  {{wide_msg}} {{elapsed:>4}}",
                w = self.width
            )) {
                bar.set_style(style);
            }
            bar.set_prefix(name.to_string());
            bar.set_message(text.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let line = Line {
            ui: self.ui.clone(),
            bar,
            name: name.to_string(),
            width: self.width,
            started: Instant::now(),
            last: Mutex::new(String::new()),
        };
        if line.bar.is_none() {
            // Plain mode prints changes only: the starting text is not news.
            *line
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = text.to_string();
        }
        line
    }

    /// A message above the progress lines (stderr; not in JSON mode).
    pub fn note(&self, message: impl std::fmt::Display) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(message.to_string());
            }
            None => self.ui.info(message),
        }
    }

    /// A warning above the progress lines (every output mode).
    pub fn warn(&self, message: impl std::fmt::Display) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(format!("{} {message}", self.ui.paint("warning:", Style::Yellow)));
            }
            None => self.ui.warn(message),
        }
    }
}

/// One stack's (or service's) progress line.
pub struct Line {
    ui: Ui,
    bar: Option<ProgressBar>,
    name: String,
    width: usize,
    started: Instant,
    last: Mutex<String>,
}

impl Line {
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Shows `text` as the latest state (plain mode prints it when it changed).
    pub fn set(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_string());
            return;
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != text {
            last.clear();
            last.push_str(text);
            self.ui.info(format!(
                "{:w$}  {text}  ({})",
                self.name,
                human_duration(self.elapsed()),
                w = self.width
            ));
        }
    }

    /// Ends the line with `text`, marked as success or failure.
    pub fn finish(&self, ok: bool, text: &str) {
        let mark = if ok {
            self.ui.paint("✓", Style::Green)
        } else {
            self.ui.paint("✗", Style::Red)
        };
        match &self.bar {
            Some(bar) => {
                if let Ok(style) = ProgressStyle::with_template(&format!(
                    "{mark} {{prefix:{w}.bold}}  {{wide_msg}} {{elapsed:>4}}",
                    w = self.width
                )) {
                    bar.set_style(style);
                }
                bar.finish_with_message(text.to_string());
            }
            None => self.set(text),
        }
    }

    /// Ends the line, leaving its last text (an interrupted wait).
    pub fn abandon(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.abandon_with_message(text.to_string()),
            None => self.set(text),
        }
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar
            && !bar.is_finished()
        {
            bar.abandon();
        }
    }
}

/// Why a confirmation could not be asked.
#[derive(Debug, PartialEq, Eq)]
pub enum Confirm {
    Yes,
    No,
    /// stdin or stderr is not a terminal: the caller says to pass `--yes`.
    NoTerminal,
    /// Ctrl-C while asking.
    Interrupted,
}

/// Asks `question` (with `details`, one per line, above it) on the terminal; anything but `y`/`yes` is
/// no. Never asks without a terminal.
pub async fn confirm(
    ui: &Ui,
    question: &str,
    details: &[String],
    cancel: &tokio_util::sync::CancellationToken,
) -> Confirm {
    if !(ui.interactive && std::io::stdin().is_terminal()) {
        return Confirm::NoTerminal;
    }
    for d in details {
        eprintln!("  {d}");
    }
    eprint!("{question} [y/N] ");
    let read = tokio::task::spawn_blocking(|| {
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).map(|_| answer)
    });
    tokio::select! {
        answer = read => match answer {
            Ok(Ok(a)) if matches!(a.trim().to_ascii_lowercase().as_str(), "y" | "yes") => Confirm::Yes,
            _ => Confirm::No,
        },
        () = cancel.cancelled() => {
            eprintln!();
            Confirm::Interrupted
        }
    }
}

fn ms(d: Option<u64>) -> String {
    d.map(|ms| human_duration(Duration::from_millis(ms)))
        .unwrap_or_default()
}

impl Report for UpReport {
    fn render(&self, ui: &Ui) -> String {
        let mut table = ui.table(&["STACK", "ACTION", "STATUS", "TIME", "DETAILS"]);
        for s in &self.stacks {
            let mut details: Vec<String> = Vec::new();
            if !s.parameters_changed.is_empty() {
                details.push(format!("parameters: {}", s.parameters_changed.join(", ")));
            }
            for c in &s.changes {
                let mut line = format!(
                    "{} {} ({}): {}",
                    c.action.mark(),
                    c.logical_id,
                    c.resource_type,
                    c.action.word()
                );
                if !c.caused_by.is_empty() {
                    line.push_str(&format!(" ← {}", c.caused_by.join(", ")));
                }
                details.push(line);
            }
            if let Some(note) = &s.note {
                details.push(note.clone());
            }
            let action = match s.action {
                StackAction::NoChange => ui.paint(s.action.word(), Style::Dim),
                StackAction::Delete | StackAction::Recreate => ui.paint(s.action.word(), Style::Yellow),
                _ => s.action.word().to_string(),
            };
            table.add_row(vec![
                s.stack.clone(),
                action,
                s.status.clone().unwrap_or_else(|| "-".into()),
                ms(s.elapsed_ms),
                details.join("\n"),
            ]);
        }
        let mut out = table.to_string();
        if !self.services.is_empty() {
            let mut services = ui.table(&[
                "SERVICE",
                "DEPLOYMENT",
                "ROLLOUT",
                "RUNNING",
                "TASK DEFINITION",
                "TIME",
            ]);
            for s in &self.services {
                services.add_row(vec![
                    s.service.clone(),
                    s.deployment.clone().unwrap_or_default(),
                    s.rollout_state.clone(),
                    format!("{}/{}", s.running, s.desired),
                    s.task_definition
                        .as_deref()
                        .map(crate::target::aws::ecs::task_definition_name)
                        .unwrap_or_default()
                        .to_string(),
                    ms(Some(s.elapsed_ms)),
                ]);
            }
            out.push_str("\n\n");
            out.push_str(&services.to_string());
        }
        let changed = self
            .stacks
            .iter()
            .filter(|s| s.action != StackAction::NoChange)
            .count();
        let summary = if self.dry_run {
            if changed == 0 {
                format!("fleet {}: no changes", self.fleet)
            } else {
                format!(
                    "fleet {}: {changed} of {} stacks would change (nothing was changed)",
                    self.fleet,
                    self.stacks.len()
                )
            }
        } else if changed == 0 {
            format!("fleet {}: no changes", self.fleet)
        } else {
            format!(
                "fleet {}: {changed} of {} stacks changed",
                self.fleet,
                self.stacks.len()
            )
        };
        out.push('\n');
        out.push_str(&summary);
        out
    }
}

impl Report for StatusReport {
    fn render(&self, ui: &Ui) -> String {
        let mut out = String::new();
        if let Some(env) = &self.environment {
            out.push_str(&format!(
                "fleet {} in {}: environment stack {} {}, cluster {}\n",
                self.fleet, self.region, env.stack, env.stack_status, env.cluster
            ));
        } else {
            out.push_str(&format!(
                "fleet {} in {}: no environment stack\n",
                self.fleet, self.region
            ));
        }
        let mut table = ui.table(&[
            "THESPIAN",
            "STACK STATUS",
            "SERVICE",
            "RUNNING",
            "PENDING",
            "ROLLOUT",
            "TASK DEF",
            "TASKS",
        ]);
        for t in &self.thespians {
            let (service, running, pending, rollout, revision) = match &t.service {
                Some(s) => (
                    s.status.clone(),
                    format!("{}/{}", s.running, s.desired),
                    s.pending.to_string(),
                    s.rollout_state.clone().unwrap_or_else(|| "-".into()),
                    s.task_definition_revision
                        .map(|r| format!(":{r}"))
                        .unwrap_or_else(|| "-".into()),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            };
            let tasks: Vec<String> = t
                .tasks
                .iter()
                .map(|task| {
                    format!(
                        "{} {} {} {}",
                        short_id(&task.task_id),
                        task.last_status.as_deref().unwrap_or("?"),
                        task.ec2_instance_id.as_deref().unwrap_or("?"),
                        task.host_port
                            .map(|p| format!(":{p}"))
                            .unwrap_or_else(|| ":?".into())
                    )
                })
                .collect();
            let mut stack_status = t.stack_status.clone();
            if !t.healthy() {
                stack_status = ui.paint(&stack_status, Style::Yellow);
            }
            table.add_row(vec![
                t.name.clone(),
                stack_status,
                service,
                running,
                pending,
                rollout,
                revision,
                if tasks.is_empty() {
                    "-".into()
                } else {
                    tasks.join("\n")
                },
            ]);
        }
        out.push_str(&table.to_string());
        for t in &self.thespians {
            if let Some(event) = t.service.as_ref().and_then(|s| s.latest_event.as_ref())
                && !t.healthy()
            {
                out.push_str(&format!("\n{}: {}", t.name, event));
            }
        }
        out
    }

    fn exit_code(&self) -> u8 {
        if self.thespians.iter().all(|t| t.healthy()) {
            exit::OK
        } else {
            exit::FAILED
        }
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl Report for DownReport {
    fn render(&self, ui: &Ui) -> String {
        if self.deleted.is_empty() {
            return if self.kept_environment {
                format!(
                    "fleet {}: no service stacks to delete in {}; the environment stack was kept (--keep-environment)",
                    self.fleet, self.region
                )
            } else {
                format!("fleet {}: nothing deployed in {}", self.fleet, self.region)
            };
        }
        let mut table = ui.table(&["STACK", "THESPIAN", "STATUS", "TIME"]);
        for d in &self.deleted {
            table.add_row(vec![
                d.stack.clone(),
                d.thespian.clone().unwrap_or_else(|| "(environment)".into()),
                d.status.clone(),
                ms(Some(d.elapsed_ms)),
            ]);
        }
        let mut out = table.to_string();
        if self.kept_environment {
            out.push_str("\nthe environment stack was kept (--keep-environment)");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::OutputFormat;
    use crate::target::aws::changes::{ChangeAction, ResourceChange};
    use crate::target::aws::report::StackReport;

    fn stack(name: &str, action: StackAction) -> StackReport {
        StackReport {
            stack: name.into(),
            thespian: None,
            action,
            status: Some("UPDATE_COMPLETE".into()),
            elapsed_ms: None,
            parameters_changed: vec![],
            changes: vec![],
            note: None,
        }
    }

    #[test]
    fn plans_list_resource_changes_with_their_marks() {
        let mut gilbert = stack("demo-gilbert", StackAction::Update);
        gilbert.parameters_changed = vec!["ConfigJson".into()];
        gilbert.changes = vec![ResourceChange {
            action: ChangeAction::Replace,
            logical_id: "TaskDefinition".into(),
            resource_type: "AWS::ECS::TaskDefinition".into(),
            targets: vec!["Properties.ContainerDefinitions".into()],
            caused_by: vec!["ConfigJson".into()],
        }];
        let report = UpReport {
            fleet: "demo".into(),
            region: "eu-west-1".into(),
            dry_run: true,
            stacks: vec![stack("demo", StackAction::NoChange), gilbert],
            services: vec![],
            warnings: vec![],
        };
        let text = report.render(&Ui::plain(OutputFormat::Table));
        assert!(
            text.contains("! TaskDefinition (AWS::ECS::TaskDefinition): replace ← ConfigJson"),
            "{text}"
        );
        assert!(text.contains("parameters: ConfigJson"), "{text}");
        assert!(text.contains("no change"), "{text}");
        assert!(
            text.ends_with("fleet demo: 1 of 2 stacks would change (nothing was changed)"),
            "{text}"
        );
        // JSON is stable: kebab-case actions.
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["stacks"][0]["action"], "no-change");
        assert_eq!(json["stacks"][1]["changes"][0]["action"], "replace");
    }

    #[test]
    fn plain_lines_are_printed_only_when_the_text_changes() {
        let ui = Ui::plain(OutputFormat::Table);
        let progress = Progress::new(&ui, &["demo-gilbert".into()]);
        let line = progress.line("demo-gilbert", "queued");
        assert_eq!(*line.last.lock().expect("lock"), "queued");
        line.set("UPDATE_IN_PROGRESS");
        line.set("UPDATE_IN_PROGRESS");
        assert_eq!(*line.last.lock().expect("lock"), "UPDATE_IN_PROGRESS");
        line.finish(true, "UPDATE_COMPLETE");
        assert_eq!(*line.last.lock().expect("lock"), "UPDATE_COMPLETE");
    }

    #[tokio::test]
    async fn confirmation_is_never_asked_without_a_terminal() {
        let ui = Ui::plain(OutputFormat::Table);
        let cancel = tokio_util::sync::CancellationToken::new();
        assert_eq!(confirm(&ui, "delete?", &[], &cancel).await, Confirm::NoTerminal);
    }
}
