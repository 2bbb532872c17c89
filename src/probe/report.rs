//! The published result of a probe: what `--output json` prints and what the table shows.
//!
//! Stable keys (scripts rely on them; never renamed): `target`, `method`, `requests`, `ok`,
//! `errors: {CODE: n}`, `latency_ms: {p50, p90, p99, p999, max}`, `rps`, `instances: {id: n}`.
//! Everything else is added information; see `docs/probe.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::cli::Method;
use crate::probe::engine::{Pacing, RunResult, Shot};
use crate::probe::gates::{Gates, Verdict};
use crate::probe::stats::{Notable, Percentiles, Summary, code_name};
use crate::target::Endpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One request (no load flag given).
    Single,
    /// `--concurrency`: a fixed number of requests in flight.
    ClosedLoop,
    /// `--rate`: requests on a fixed schedule.
    OpenLoop,
}

/// Where latency is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyFrom {
    /// When the request was sent (single shot, closed loop).
    Sent,
    /// When the request was due on the open-loop schedule (coordinated omission corrected).
    Scheduled,
}

/// Open-loop bookkeeping: did the client keep to the schedule?
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenLoop {
    /// The scheduled rate (requests per second).
    pub rate: f64,
    pub max_in_flight: u32,
    /// Requests that started late because `max_in_flight` requests were outstanding.
    pub delayed: u64,
    /// Of those, requests whose deadline passed before they could be sent (counted as DEADLINE_EXCEEDED).
    pub expired: u64,
    /// How late requests were sent relative to their due time (timer resolution, client saturation).
    pub start_lag_ms: Option<Percentiles>,
}

/// The single-shot details.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShotDetails {
    /// The gRPC status code name (`OK`, `INTERNAL`, ...).
    pub code: &'static str,
    /// The status message of a failure (empty on OK).
    pub message: String,
    /// The instance that answered (`x-thespian-instance`), when the reply named one.
    pub instance: Option<String>,
    /// The trace id sent in `traceparent`: find the request in the tracing backend with it.
    pub trace_id: String,
    pub traceparent: String,
    /// The URI the request was sent to.
    pub address: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    // --- stable keys ---
    /// The thespian name, or the `--address` values.
    pub target: String,
    pub method: Method,
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// `null` only when no request finished (Ctrl-C before the first reply).
    pub latency_ms: Option<Percentiles>,
    /// Finished requests per second of the run.
    pub rps: f64,
    pub instances: BTreeMap<String, u64>,

    // --- added information ---
    pub mode: Mode,
    pub latency_from: LatencyFrom,
    /// Closed loop: requests in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<OpenLoop>,
    /// Wall time of the run in seconds (first request to last reply).
    pub duration_s: f64,
    /// HTTP/2 connections used.
    pub connections: usize,
    /// The addresses the thespian resolved to.
    pub endpoints: Vec<Endpoint>,
    /// Failed requests / requests.
    pub error_rate: f64,
    /// Requests sent again because their connection could not be established (never reached a server).
    pub retried: u64,
    /// The slowest request, with its trace id.
    pub slowest: Option<Notable>,
    /// The first failure of each code, with its message and trace id.
    pub first_errors: BTreeMap<String, Notable>,
    pub gates: Vec<Verdict>,
    /// Every gate passed (the exit code is 0 exactly when this is true and the run was not interrupted).
    pub passed: bool,
    /// Ctrl-C stopped the run: the numbers cover what finished before it.
    pub interrupted: bool,
    /// Single shot only: `code`, `message`, `instance`, `trace_id`, `traceparent`, `address`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub shot: Option<ShotDetails>,
}

/// What the report needs to know about the run besides its measurements.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub target: String,
    pub method: Method,
    pub endpoints: Vec<Endpoint>,
    pub connections: usize,
    pub gates: Gates,
}

impl ProbeReport {
    fn new(info: RunInfo, summary: Summary, elapsed: Duration, mode: Mode) -> Self {
        let gates = info.gates.evaluate(&summary);
        let passed = gates.iter().all(|g| g.passed);
        let secs = elapsed.as_secs_f64();
        ProbeReport {
            target: info.target,
            method: info.method,
            requests: summary.requests,
            ok: summary.ok,
            errors: summary.errors.clone(),
            latency_ms: summary.latency,
            rps: if secs > 0.0 {
                summary.requests as f64 / secs
            } else {
                0.0
            },
            instances: summary.instances.clone(),
            mode,
            latency_from: if mode == Mode::OpenLoop {
                LatencyFrom::Scheduled
            } else {
                LatencyFrom::Sent
            },
            concurrency: None,
            open_loop: None,
            duration_s: secs,
            connections: info.connections,
            endpoints: info.endpoints,
            error_rate: summary.error_rate(),
            retried: summary.retried,
            slowest: summary.slowest.clone(),
            first_errors: summary.first_errors.clone(),
            gates,
            passed,
            interrupted: false,
            shot: None,
        }
    }

    pub fn single(info: RunInfo, shot: Shot) -> Self {
        let summary = shot.recorder.summary();
        let mut report = ProbeReport::new(info, summary, shot.latency, Mode::Single);
        report.shot = Some(ShotDetails {
            code: code_name(shot.code),
            message: shot.message,
            instance: shot.instance,
            trace_id: shot.trace.trace_id_hex(),
            traceparent: shot.trace.to_string(),
            address: shot.uri,
        });
        report
    }

    pub fn load(mut info: RunInfo, pacing: Pacing, run: RunResult) -> Self {
        info.connections = run.workers;
        let summary = run.recorder.summary();
        let (mode, concurrency, open_loop) = match pacing {
            Pacing::Closed { concurrency } => (Mode::ClosedLoop, Some(concurrency), None),
            Pacing::Open { rate, max_in_flight } => (
                Mode::OpenLoop,
                None,
                Some(OpenLoop {
                    rate,
                    max_in_flight,
                    delayed: summary.delayed,
                    expired: summary.expired,
                    start_lag_ms: summary.start_lag,
                }),
            ),
        };
        let mut report = ProbeReport::new(info, summary, run.elapsed, mode);
        report.concurrency = concurrency;
        report.open_loop = open_loop;
        report.interrupted = run.interrupted;
        report
    }

    /// The failed gates, for messages.
    pub fn failed_gates(&self) -> impl Iterator<Item = &Verdict> {
        self.gates.iter().filter(|g| !g.passed)
    }
}
