//! Rendering of the probe reports (tables and JSON), the start line and the progress bar.

use indicatif::{ProgressBar, ProgressStyle};

use crate::probe::engine::{LoadPlan, Pacing, Tick};
use crate::probe::gates::{Gate, Verdict};
use crate::probe::report::{LatencyFrom, Mode, ProbeReport, RunInfo};
use crate::ui::{Report, Style, Ui};

/// Latency for people, always in milliseconds so columns compare at a glance: `0.41 ms`, `20.3 ms`,
/// `1021 ms`.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

fn fmt_rate(rate: f64) -> String {
    if rate >= 100.0 || rate.fract() == 0.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

/// What a load run is about to do, on stderr (not in JSON mode). Printed once the connections are up,
/// right before the first request.
pub fn announce(ui: &Ui, info: &RunInfo, plan: &LoadPlan, threads: usize) {
    let pacing = match plan.pacing {
        Pacing::Closed { concurrency } => format!("closed loop, {concurrency} in flight"),
        Pacing::Open { rate, .. } => format!("open loop, {} req/s", fmt_rate(rate)),
    };
    let length = match (plan.total(), plan.duration) {
        (Some(n), Some(d)) => format!("{n} requests over {}", humantime::format_duration(d)),
        (Some(n), None) => format!("{n} requests"),
        (None, Some(d)) => format!("for {}", humantime::format_duration(d)),
        (None, None) => format!(
            "for {}",
            humantime::format_duration(crate::probe::engine::DEFAULT_DURATION)
        ),
    };
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    ui.info(format!(
        "probing {} ({:?}): {pacing}, {length}, {} to {}, {}",
        info.target,
        info.method,
        plural(info.connections, "connection", "connections"),
        plural(info.endpoints.len(), "address", "addresses"),
        plural(threads, "thread", "threads"),
    ));
}

/// The progress bar of a load run (hidden unless stderr is a terminal): requests when their number is
/// known, elapsed time otherwise.
pub fn progress(ui: &Ui, plan: &LoadPlan) -> ProgressBar {
    match plan.total() {
        Some(total) => ui.progress_bar(total),
        None => {
            let run = plan.duration.unwrap_or(crate::probe::engine::DEFAULT_DURATION);
            let bar = ui.progress_bar(u64::try_from(run.as_millis()).unwrap_or(u64::MAX));
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            {
                bar.set_style(style);
            }
            bar
        }
    }
}

/// Updates the progress bar from a tick of the engine.
pub fn tick(bar: &ProgressBar, plan: &LoadPlan, t: Tick) {
    if bar.is_hidden() {
        return;
    }
    match plan.total() {
        Some(_) => bar.set_position(t.done),
        None => bar.set_position(u64::try_from(t.elapsed.as_millis()).unwrap_or(u64::MAX)),
    }
    let secs = t.elapsed.as_secs_f64().max(1e-3);
    bar.set_message(format!(
        "{} requests · {:.0} req/s · {} failed",
        t.done,
        t.done as f64 / secs,
        t.failed
    ));
}

fn verdict_line(ui: &Ui, v: &Verdict, report: &ProbeReport) -> String {
    let (what, measured, op, limit) = match v.gate {
        Gate::MaxErrorRate => (
            "error rate",
            v.measured
                .map_or("nothing measured".into(), |r| format!("{:.2} %", r * 100.0)),
            if v.passed { "≤" } else { ">" },
            format!("{} {}", v.gate.flag(), v.limit),
        ),
        Gate::MaxP99 => (
            "p99 latency",
            v.measured.map_or("nothing measured".into(), fmt_ms),
            if v.passed { "≤" } else { ">" },
            format!("{} {}", v.gate.flag(), fmt_ms(v.limit)),
        ),
    };
    let detail = match v.gate {
        Gate::MaxErrorRate if report.requests > 0 => format!(
            " ({} of {} requests failed)",
            report.requests - report.ok,
            report.requests
        ),
        _ => String::new(),
    };
    if v.passed {
        format!(
            "{} {what} {measured} {op} {limit}",
            ui.paint("gate passed:", Style::Green)
        )
    } else {
        format!(
            "{} {what} {measured} {op} {limit}{detail}",
            ui.paint("gate FAILED:", Style::Red)
        )
    }
}

fn code_style(code: &str) -> Style {
    if code == "OK" { Style::Green } else { Style::Red }
}

fn render_single(report: &ProbeReport, ui: &Ui) -> String {
    let Some(shot) = &report.shot else {
        return String::new();
    };
    let mut lines = Vec::new();
    let mut status = ui.paint(shot.code, code_style(shot.code));
    if !shot.message.is_empty() {
        status.push_str(&format!(" — {}", shot.message));
    }
    lines.push(format!("status     {status}"));
    if let Some(l) = report.latency_ms {
        lines.push(format!("latency    {}", fmt_ms(l.max)));
    }
    lines.push(format!(
        "instance   {}",
        shot.instance
            .as_deref()
            .unwrap_or("(the reply named no instance)")
    ));
    lines.push(format!("trace id   {}", shot.trace_id));
    lines.push(format!("address    {}", shot.address));
    if report.retried > 0 {
        lines.push(format!(
            "retried    {} time(s): the connection could not be established",
            report.retried
        ));
    }
    for v in report
        .gates
        .iter()
        .filter(|v| !v.passed || v.gate != Gate::MaxErrorRate)
    {
        lines.push(verdict_line(ui, v, report));
    }
    lines.join("\n")
}

fn render_load(report: &ProbeReport, ui: &Ui) -> String {
    let mut out = Vec::new();
    let pacing = match (report.mode, report.concurrency, &report.open_loop) {
        (Mode::OpenLoop, _, Some(o)) => format!("open loop at {} req/s", fmt_rate(o.rate)),
        (_, Some(c), _) => format!("closed loop, {c} in flight"),
        _ => String::new(),
    };
    out.push(format!(
        "{} ({:?}) · {pacing} · {} requests in {:.1} s · {:.1} req/s · {} connection{}",
        ui.paint(&report.target, Style::Bold),
        report.method,
        report.requests,
        report.duration_s,
        report.rps,
        report.connections,
        if report.connections == 1 { "" } else { "s" },
    ));
    if report.interrupted {
        out.push(ui.paint(
            "interrupted by Ctrl-C: partial results (requests still in flight were not counted)",
            Style::Yellow,
        ));
    }
    let from = match report.latency_from {
        LatencyFrom::Scheduled => "latency (from scheduled start)",
        LatencyFrom::Sent => "latency",
    };
    match report.latency_ms {
        Some(l) => out.push(format!(
            "{from}: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt_ms(l.p50),
            fmt_ms(l.p90),
            fmt_ms(l.p99),
            fmt_ms(l.p999),
            fmt_ms(l.max)
        )),
        None => out.push(format!("{from}: no request finished")),
    }

    let mut codes = ui.table(&["status", "requests", "share"]);
    if report.ok > 0 || report.errors.is_empty() {
        codes.add_row(vec![
            ui.paint("OK", Style::Green),
            report.ok.to_string(),
            percent(report.ok, report.requests),
        ]);
    }
    for (code, n) in &report.errors {
        codes.add_row(vec![
            ui.paint(code, Style::Red),
            n.to_string(),
            percent(*n, report.requests),
        ]);
    }
    out.push(String::new());
    out.push(codes.to_string());

    if !report.instances.is_empty() {
        let answered: u64 = report.instances.values().sum();
        let mut instances = ui.table(&["instance", "requests", "share"]);
        for (id, n) in &report.instances {
            instances.add_row(vec![id.clone(), n.to_string(), percent(*n, answered)]);
        }
        out.push(String::new());
        out.push(instances.to_string());
    }

    out.push(String::new());
    if let Some(s) = &report.slowest {
        out.push(format!(
            "slowest: {} {}{}{}",
            fmt_ms(s.latency_ms),
            s.code,
            s.instance
                .as_ref()
                .map(|i| format!(" from {i}"))
                .unwrap_or_default(),
            s.trace_id
                .as_ref()
                .map(|t| format!(", trace {t}"))
                .unwrap_or_default(),
        ));
    }
    for (code, e) in &report.first_errors {
        out.push(format!(
            "first {code}: {}{}",
            if e.message.is_empty() {
                "(no message)"
            } else {
                &e.message
            },
            e.trace_id
                .as_ref()
                .map(|t| format!(" (trace {t})"))
                .unwrap_or_default(),
        ));
    }
    if let Some(o) = &report.open_loop {
        let lag = o
            .start_lag_ms
            .map(|l| {
                format!(
                    "sent p99 {} / max {} after their due time",
                    fmt_ms(l.p99),
                    fmt_ms(l.max)
                )
            })
            .unwrap_or_else(|| "none sent".to_string());
        if o.delayed == 0 {
            out.push(format!(
                "schedule: {lag}; none held back by --max-in-flight {}",
                o.max_in_flight
            ));
        } else {
            out.push(format!(
                "schedule: {lag}; {} held back because --max-in-flight {} were outstanding, {} of them expired unsent",
                o.delayed, o.max_in_flight, o.expired
            ));
        }
    }
    if report.retried > 0 {
        out.push(format!(
            "retried: {} attempt(s) re-sent after a connection could not be established",
            report.retried
        ));
    }
    for v in &report.gates {
        out.push(verdict_line(ui, v, report));
    }
    out.join("\n")
}

impl Report for ProbeReport {
    fn render(&self, ui: &Ui) -> String {
        match self.mode {
            Mode::Single => render_single(self, ui),
            Mode::ClosedLoop | Mode::OpenLoop => render_load(self, ui),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Method, OutputFormat};
    use crate::probe::engine::RunResult;
    use crate::probe::gates::Gates;
    use crate::probe::report::RunInfo;
    use crate::probe::stats::{Recorder, Sample};
    use crate::probe::trace::TraceParent;
    use std::time::Duration;
    use tonic::Code;

    fn report(codes: &[(Code, u64)], gates: Gates) -> ProbeReport {
        let mut rec = Recorder::new();
        for &(code, n) in codes {
            for i in 0..n {
                rec.record(&Sample {
                    code,
                    latency: Duration::from_millis(20 + i % 3),
                    instance: Some(if i % 2 == 0 { b"gilbert-0" } else { b"gilbert-1" }),
                    trace: Some(TraceParent::random()),
                    message: if code == Code::Ok { "" } else { "action s failed" },
                });
            }
        }
        ProbeReport::load(
            RunInfo {
                target: "gilbert".into(),
                method: Method::A,
                endpoints: vec![],
                connections: 4,
                gates,
            },
            Pacing::Open {
                rate: 200.0,
                max_in_flight: 10_000,
            },
            RunResult {
                recorder: rec,
                elapsed: Duration::from_secs(10),
                interrupted: false,
                workers: 4,
            },
        )
    }

    #[test]
    fn json_has_the_stable_keys() {
        let r = report(&[(Code::Ok, 1400), (Code::Internal, 600)], Gates::default());
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "target",
            "method",
            "requests",
            "ok",
            "errors",
            "latency_ms",
            "rps",
            "instances",
        ] {
            assert!(v.get(key).is_some(), "missing {key}: {v}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"][key].is_number(), "latency_ms.{key}: {v}");
        }
        assert_eq!(v["target"], "gilbert");
        assert_eq!(v["method"], "A");
        assert_eq!(v["requests"], 2000);
        assert_eq!(v["ok"], 1400);
        assert_eq!(v["errors"]["INTERNAL"], 600);
        assert_eq!(v["instances"]["gilbert-0"], 1000);
        assert_eq!(v["rps"], 200.0);
        assert_eq!(v["mode"], "open_loop");
        assert_eq!(v["latency_from"], "scheduled");
        assert_eq!(v["passed"], false);
        assert_eq!(v["gates"][0]["gate"], "max_error_rate");
        assert_eq!(v["gates"][0]["measured"], 0.3);
        assert!(v.get("code").is_none(), "single-shot keys only in single shot");
    }

    #[test]
    fn the_table_says_which_gate_failed_and_by_how_much() {
        let r = report(
            &[(Code::Ok, 1400), (Code::Internal, 600)],
            Gates {
                max_error_rate: 0.25,
                max_p99: Some(Duration::from_millis(250)),
            },
        );
        let text = r.render(&Ui::plain(OutputFormat::Table));
        assert!(
            text.contains(
                "gate FAILED: error rate 30.00 % > --max-error-rate 0.25 (600 of 2000 requests failed)"
            ),
            "{text}"
        );
        assert!(text.contains("gate passed: p99 latency"), "{text}");
        assert!(
            text.contains("latency (from scheduled start): p50 21.0 ms"),
            "{text}"
        );
        assert!(text.contains("INTERNAL"), "{text}");
        assert!(text.contains("30.0 %"), "{text}");
        assert!(text.contains("gilbert-1"), "{text}");
        assert!(text.contains("first INTERNAL: action s failed (trace "), "{text}");
    }

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        assert_eq!(fmt_ms(0.4123), "0.41 ms");
        assert_eq!(fmt_ms(20.31), "20.3 ms");
        assert_eq!(fmt_ms(1021.4), "1021 ms");
    }
}
