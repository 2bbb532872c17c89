//! The only place that prints. Commands return data; this module renders it as a table for people or as
//! stable JSON for scripts, and owns progress bars and colour.
//!
//! Rules: results go to stdout, progress and warnings to stderr. Progress bars and colour only when the
//! stream is a terminal; `NO_COLOR` (any non-empty value) turns colour off.

pub mod aws;
pub mod fleet;
pub mod local;
pub mod probe;
pub mod tunnel;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use comfy_table::{ContentArrangement, LineStyle, Table, TableStyle};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::OutputFormat;

/// Something a command produced: rendered as a table/text for people, or as JSON.
pub trait Report: Serialize {
    /// The human rendering (without trailing newline).
    fn render(&self, ui: &Ui) -> String;

    /// The exit code when this report is the command's result: a report can describe a failure that is
    /// not an error (`status` of a fleet with a dead replica exits 1).
    fn exit_code(&self) -> u8 {
        crate::error::exit::OK
    }
}

#[derive(Debug, Clone)]
pub struct Ui {
    pub output: OutputFormat,
    /// stderr is a terminal: progress bars and spinners are drawn.
    pub interactive: bool,
    /// stdout is a terminal, the output is a table and NO_COLOR is not set.
    pub color: bool,
}

impl Ui {
    pub fn new(output: OutputFormat) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let interactive = std::io::stderr().is_terminal();
        let color = !no_color && output == OutputFormat::Table && std::io::stdout().is_terminal();
        Ui {
            output,
            interactive,
            color,
        }
    }

    /// A UI for tests and pipes: plain text, no progress, no colour.
    pub fn plain(output: OutputFormat) -> Self {
        Ui {
            output,
            interactive: false,
            color: false,
        }
    }

    pub fn is_json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// Prints a command's result on stdout in the chosen format.
    pub fn emit<R: Report>(&self, report: &R) {
        match self.output {
            OutputFormat::Json => self.json_line(report),
            OutputFormat::Table => {
                let text = report.render(self);
                if !text.is_empty() {
                    println!("{text}");
                }
            }
        }
    }

    /// Prints one JSON document on one line (the NDJSON form, also fine for a single document).
    pub fn json_line<T: Serialize + ?Sized>(&self, value: &T) {
        // Serialising our own report types cannot fail (no maps with non-string keys, no I/O).
        match serde_json::to_string(value) {
            Ok(line) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Err(e) => eprintln!("error: could not serialise output as JSON: {e}"),
        }
    }

    /// A table in the house style: no borders or row rules, the header underlined, fits the terminal width.
    pub fn table(&self, header: &[&str]) -> Table {
        let mut table = Table::new();
        table.load_style(TABLE_STYLE);
        table.set_content_arrangement(ContentArrangement::Dynamic);
        if !self.color {
            table.force_no_tty();
        }
        table.set_header(header.iter().copied());
        table
    }

    /// A status line for people on stderr (never in JSON mode, where stdout is for machines and stderr stays quiet).
    pub fn info(&self, message: impl std::fmt::Display) {
        if !self.is_json() {
            eprintln!("{message}");
        }
    }

    /// A warning on stderr, in every output mode.
    pub fn warn(&self, message: impl std::fmt::Display) {
        eprintln!("{} {message}", self.paint("warning:", Style::Yellow));
    }

    /// A progress bar of `len` steps on stderr; hidden unless stderr is a terminal.
    pub fn progress_bar(&self, len: u64) -> ProgressBar {
        if !self.interactive {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
        {
            bar.set_style(style);
        }
        bar
    }

    /// A spinner with a message on stderr; hidden unless stderr is a terminal.
    pub fn spinner(&self, message: impl Into<String>) -> ProgressBar {
        if !self.interactive {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed:>4}") {
            bar.set_style(style);
        }
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// Colours `text` when colour is on; returns it unchanged otherwise.
    pub fn paint(&self, text: &str, style: Style) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match style {
            Style::Red => "31",
            Style::Green => "32",
            Style::Yellow => "33",
            Style::Bold => "1",
            Style::Dim => "2",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// Only the header is underlined: rules between rows double the height of a table and make a multi-line
/// cell (several addresses) harder, not easier, to read.
const TABLE_STYLE: TableStyle = TableStyle::new().header_separator(LineStyle::none().fill('─').junction(' '));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Red,
    Green,
    Yellow,
    Bold,
    Dim,
}

/// `1.2 s`, `340 ms`, `2m05s`: compact durations for tables.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        let secs = d.as_secs();
        if secs < 3_600 {
            format!("{}m{:02}s", secs / 60, secs % 60)
        } else {
            format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_compact() {
        assert_eq!(human_duration(Duration::from_millis(340)), "340 ms");
        assert_eq!(human_duration(Duration::from_millis(1_250)), "1.2 s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(3_725)), "1h02m");
    }

    #[test]
    fn plain_ui_never_colours() {
        let ui = Ui::plain(OutputFormat::Table);
        assert_eq!(ui.paint("ok", Style::Green), "ok");
    }
}
