//! What a probe measures: an HDR latency histogram, counts by gRPC code and by answering instance, and
//! samples worth showing (the slowest request, the first error of each code), all with their trace ids.
//!
//! Every load worker records into its own [`Recorder`] (no locks, no shared cache lines on the hot path);
//! the recorders are merged once at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::Code;

use crate::probe::trace::TraceParent;

/// Latencies are recorded in microseconds, from 1 µs to one hour, with 3 significant digits
/// (0.1 % error at every percentile).
const HIST_LOW_US: u64 = 1;
const HIST_HIGH_US: u64 = 3_600_000_000;
const HIST_SIGFIG: u8 = 3;

/// Codes 0..=16 of the gRPC spec.
const CODES: usize = 17;

/// The gRPC status code name, as in the spec and in `grpcurl` output (`DEADLINE_EXCEEDED`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (checked by a unit test): this cannot fail.
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One finished request, as the worker saw it.
#[derive(Debug)]
pub struct Sample<'a> {
    pub code: Code,
    /// From the latency origin (scheduled start in open loop, actual start in closed loop) to the reply.
    pub latency: Duration,
    /// `x-thespian-instance` of the reply (also read from error statuses), if any.
    pub instance: Option<&'a [u8]>,
    /// `None` for a request that was never sent (its deadline passed while it waited to start).
    pub trace: Option<TraceParent>,
    /// The status message of a failure.
    pub message: &'a str,
}

/// A request worth showing in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notable {
    pub code: &'static str,
    pub latency_ms: f64,
    /// The trace id the request carried: search for it in the tracing backend (`None`: never sent).
    pub trace_id: Option<String>,
    pub instance: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone)]
struct NotableRaw {
    code: Code,
    latency: Duration,
    trace: Option<TraceParent>,
    instance: Option<Vec<u8>>,
    message: String,
}

impl NotableRaw {
    fn of(s: &Sample<'_>) -> Self {
        NotableRaw {
            code: s.code,
            latency: s.latency,
            trace: s.trace,
            instance: s.instance.map(<[u8]>::to_vec),
            message: s.message.to_string(),
        }
    }

    fn publish(&self) -> Notable {
        Notable {
            code: code_name(self.code),
            latency_ms: ms(self.latency),
            trace_id: self.trace.as_ref().map(TraceParent::trace_id_hex),
            instance: self
                .instance
                .as_deref()
                .map(|i| String::from_utf8_lossy(i).into_owned()),
            message: self.message.clone(),
        }
    }
}

/// Per-worker measurements.
#[derive(Debug)]
pub struct Recorder {
    latency: Histogram<u64>,
    /// How late open-loop requests started against their schedule (timer resolution, client saturation,
    /// or the in-flight cap); empty in closed loop.
    start_lag: Histogram<u64>,
    codes: [u64; CODES],
    /// Answering instance → requests. A linear scan: a probe sees a handful of instances, and comparing
    /// bytes avoids allocating a `String` per request.
    instances: Vec<(Vec<u8>, u64)>,
    slowest: Option<NotableRaw>,
    first_errors: Vec<NotableRaw>,
    /// Requests re-sent after a connection failure that happened before they reached the server.
    pub retried: u64,
    /// Open loop: requests that started later than scheduled because the in-flight cap was reached.
    pub delayed: u64,
    /// Open loop: requests whose deadline passed while they waited for the in-flight cap (never sent).
    pub expired: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            latency: new_histogram(),
            start_lag: new_histogram(),
            codes: [0; CODES],
            instances: Vec::new(),
            slowest: None,
            first_errors: Vec::new(),
            retried: 0,
            delayed: 0,
            expired: 0,
        }
    }

    pub fn record(&mut self, s: &Sample<'_>) {
        self.latency.saturating_record(micros(s.latency));
        self.codes[s.code as usize] += 1;
        if let Some(instance) = s.instance {
            match self
                .instances
                .iter_mut()
                .find(|(id, _)| id.as_slice() == instance)
            {
                Some((_, n)) => *n += 1,
                None => self.instances.push((instance.to_vec(), 1)),
            }
        }
        if self.slowest.as_ref().is_none_or(|w| s.latency > w.latency) {
            self.slowest = Some(NotableRaw::of(s));
        }
        if s.code != Code::Ok && !self.first_errors.iter().any(|e| e.code == s.code) {
            self.first_errors.push(NotableRaw::of(s));
        }
    }

    pub fn record_start_lag(&mut self, lag: Duration) {
        self.start_lag.saturating_record(micros(lag));
    }

    pub fn requests(&self) -> u64 {
        self.codes.iter().sum()
    }

    /// Folds another worker's measurements into this one.
    pub fn merge(&mut self, other: Recorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.start_lag.add(&other.start_lag);
        for (mine, theirs) in self.codes.iter_mut().zip(other.codes) {
            *mine += theirs;
        }
        for (id, n) in other.instances {
            match self.instances.iter_mut().find(|(mine, _)| *mine == id) {
                Some((_, m)) => *m += n,
                None => self.instances.push((id, n)),
            }
        }
        if let Some(theirs) = other.slowest
            && self.slowest.as_ref().is_none_or(|w| theirs.latency > w.latency)
        {
            self.slowest = Some(theirs);
        }
        for e in other.first_errors {
            if !self.first_errors.iter().any(|mine| mine.code == e.code) {
                self.first_errors.push(e);
            }
        }
        self.retried += other.retried;
        self.delayed += other.delayed;
        self.expired += other.expired;
    }

    /// The results in their published form.
    pub fn summary(&self) -> Summary {
        let requests = self.requests();
        let ok = self.codes[Code::Ok as usize];
        let errors = (1..CODES)
            .filter(|&c| self.codes[c] > 0)
            .map(|c| (code_name(Code::from_i32(c as i32)).to_string(), self.codes[c]))
            .collect();
        let instances = self
            .instances
            .iter()
            .map(|(id, n)| (String::from_utf8_lossy(id).into_owned(), *n))
            .collect();
        let mut first_errors: Vec<&NotableRaw> = self.first_errors.iter().collect();
        first_errors.sort_by_key(|e| code_name(e.code));
        Summary {
            requests,
            ok,
            errors,
            latency: Percentiles::of(&self.latency, self.slowest.as_ref().map(|s| s.latency)),
            start_lag: Percentiles::of(&self.start_lag, None),
            instances,
            slowest: self.slowest.as_ref().map(NotableRaw::publish),
            first_errors: first_errors
                .into_iter()
                .map(|e| (code_name(e.code).to_string(), e.publish()))
                .collect(),
            retried: self.retried,
            delayed: self.delayed,
            expired: self.expired,
        }
    }
}

/// Milliseconds with microsecond precision, for JSON and tables.
pub fn ms(d: Duration) -> f64 {
    (micros(d) as f64) / 1_000.0
}

/// Latency percentiles in milliseconds: the stable `latency_ms` object of the JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// `exact_max`, when known, replaces the histogram's bucket-rounded maximum.
    fn of(h: &Histogram<u64>, exact_max: Option<Duration>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let at = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
        Some(Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: exact_max.map_or_else(|| h.max() as f64 / 1_000.0, ms),
        })
    }
}

/// Merged measurements of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    /// Non-OK code name → count; codes that never occurred are absent.
    pub errors: BTreeMap<String, u64>,
    /// `None` when no request finished.
    pub latency: Option<Percentiles>,
    pub start_lag: Option<Percentiles>,
    pub instances: BTreeMap<String, u64>,
    pub slowest: Option<Notable>,
    /// The first failure of each code, with its message and trace id.
    pub first_errors: BTreeMap<String, Notable>,
    pub retried: u64,
    pub delayed: u64,
    pub expired: u64,
}

impl Summary {
    pub fn failed(&self) -> u64 {
        self.requests - self.ok
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failed() as f64 / self.requests as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(code: Code, ms: u64, instance: Option<&'static str>) -> Sample<'static> {
        Sample {
            code,
            latency: Duration::from_millis(ms),
            instance: instance.map(str::as_bytes),
            trace: Some(TraceParent {
                trace_id: u128::from(ms),
                span_id: 1,
            }),
            message: if code == Code::Ok { "" } else { "boom" },
        }
    }

    #[test]
    fn histogram_bounds_are_accepted() {
        assert!(Histogram::<u64>::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG).is_ok());
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut r = Recorder::new();
        // 1..=1000 ms, once each: pN is N% of the way up.
        for v in 1..=1000 {
            r.record(&sample(Code::Ok, v, Some("gilbert-0")));
        }
        let s = r.summary();
        let l = s.latency.unwrap();
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(l.p50, 500.0), "p50 {}", l.p50);
        assert!(close(l.p90, 900.0), "p90 {}", l.p90);
        assert!(close(l.p99, 990.0), "p99 {}", l.p99);
        assert!(close(l.p999, 999.0), "p999 {}", l.p999);
        assert_eq!(l.max, 1000.0, "max is exact, not bucket-rounded");
        assert_eq!(s.requests, 1000);
        assert_eq!(s.ok, 1000);
        assert!(s.errors.is_empty());
        assert_eq!(s.instances.get("gilbert-0"), Some(&1000));
    }

    #[test]
    fn codes_instances_and_notables_merge_across_workers() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.record(&sample(Code::Ok, 10, Some("g-0")));
        a.record(&sample(Code::Internal, 12, Some("g-0")));
        a.record(&sample(Code::Internal, 30, Some("g-1")));
        b.record(&sample(Code::Ok, 11, Some("g-1")));
        b.record(&sample(Code::Unavailable, 1, None));
        b.record(&sample(Code::DeadlineExceeded, 900, None));
        b.retried = 2;
        a.merge(b);
        let s = a.summary();
        assert_eq!(s.requests, 6);
        assert_eq!(s.ok, 2);
        assert_eq!(s.failed(), 4);
        assert_eq!(s.ok + s.errors.values().sum::<u64>(), s.requests);
        assert_eq!(
            s.errors,
            BTreeMap::from([
                ("DEADLINE_EXCEEDED".to_string(), 1),
                ("INTERNAL".to_string(), 2),
                ("UNAVAILABLE".to_string(), 1),
            ])
        );
        // Requests without an instance (no reply) are not attributed to anyone.
        assert_eq!(
            s.instances,
            BTreeMap::from([("g-0".to_string(), 2), ("g-1".to_string(), 2)])
        );
        let slowest = s.slowest.clone().unwrap();
        assert_eq!(slowest.code, "DEADLINE_EXCEEDED");
        assert_eq!(slowest.latency_ms, 900.0);
        assert_eq!(slowest.trace_id, Some(format!("{:032x}", 900)));
        // The first INTERNAL is the 12 ms one, recorded before the 30 ms one.
        assert_eq!(s.first_errors["INTERNAL"].latency_ms, 12.0);
        assert_eq!(s.first_errors["INTERNAL"].message, "boom");
        assert_eq!(s.retried, 2);
        assert!((s.error_rate() - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn an_empty_run_has_no_latency_and_no_error_rate() {
        let s = Recorder::new().summary();
        assert_eq!(s.requests, 0);
        assert_eq!(s.latency, None);
        assert_eq!(s.error_rate(), 0.0);
        assert_eq!(s.slowest, None);
    }

    #[test]
    fn every_code_has_its_spec_name() {
        let names: Vec<&str> = (0..17).map(|c| code_name(Code::from_i32(c))).collect();
        assert_eq!(names[0], "OK");
        assert_eq!(names[4], "DEADLINE_EXCEEDED");
        assert_eq!(names[13], "INTERNAL");
        assert_eq!(names[14], "UNAVAILABLE");
        assert_eq!(names[16], "UNAUTHENTICATED");
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), 17);
    }

    #[test]
    fn latencies_beyond_an_hour_saturate_instead_of_failing() {
        let mut r = Recorder::new();
        r.record(&sample(Code::Ok, 5 * 3_600_000, None));
        assert_eq!(r.requests(), 1);
        assert!(r.summary().latency.unwrap().p50 >= 3_590_000.0);
    }
}
