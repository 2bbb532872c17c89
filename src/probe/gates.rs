//! Pass/fail gates for scripts: `--max-error-rate` and `--max-p99`. A probe that ran and failed a gate
//! exits 1; the report says which gate, its limit and the measured value.

use std::time::Duration;

use serde::Serialize;

use crate::probe::stats::{Summary, ms};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gates {
    /// Largest acceptable fraction of failed requests, in [0, 1]; 0 means any failure fails.
    pub max_error_rate: f64,
    pub max_p99: Option<Duration>,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            max_error_rate: 0.0,
            max_p99: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// `--max-error-rate`: failed requests / requests.
    MaxErrorRate,
    /// `--max-p99`: 99th-percentile latency in milliseconds.
    MaxP99,
}

impl Gate {
    pub fn flag(self) -> &'static str {
        match self {
            Gate::MaxErrorRate => "--max-error-rate",
            Gate::MaxP99 => "--max-p99",
        }
    }
}

/// One gate's verdict. `limit` and `measured` are a fraction for the error rate, milliseconds for p99.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    pub gate: Gate,
    pub limit: f64,
    /// `None` when nothing was measured (no request finished): the gate then fails.
    pub measured: Option<f64>,
    pub passed: bool,
}

impl Gates {
    pub fn evaluate(&self, summary: &Summary) -> Vec<Verdict> {
        let measured_rate = (summary.requests > 0).then(|| summary.error_rate());
        let mut verdicts = vec![Verdict {
            gate: Gate::MaxErrorRate,
            limit: self.max_error_rate,
            measured: measured_rate,
            passed: measured_rate.is_some_and(|r| r <= self.max_error_rate),
        }];
        if let Some(max_p99) = self.max_p99 {
            let limit = ms(max_p99);
            let p99 = summary.latency.map(|l| l.p99);
            verdicts.push(Verdict {
                gate: Gate::MaxP99,
                limit,
                measured: p99,
                passed: p99.is_some_and(|p| p <= limit),
            });
        }
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::stats::Recorder;
    use crate::probe::stats::Sample;
    use crate::probe::trace::TraceParent;
    use tonic::Code;

    fn summary(ok: u64, internal: u64, latency_ms: u64) -> Summary {
        let mut r = Recorder::new();
        let trace = TraceParent::random();
        for i in 0..ok + internal {
            r.record(&Sample {
                code: if i < ok { Code::Ok } else { Code::Internal },
                latency: Duration::from_millis(latency_ms),
                instance: None,
                trace: Some(trace),
                message: "",
            });
        }
        r.summary()
    }

    #[test]
    fn default_gate_fails_on_any_error() {
        let gates = Gates::default();
        assert!(gates.evaluate(&summary(100, 0, 5)).iter().all(|v| v.passed));
        let v = gates.evaluate(&summary(99, 1, 5));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].gate, Gate::MaxErrorRate);
        assert!(!v[0].passed);
        assert_eq!(v[0].measured, Some(0.01));
    }

    #[test]
    fn error_rate_at_the_limit_passes_above_fails() {
        let gates = Gates {
            max_error_rate: 0.3,
            max_p99: None,
        };
        assert!(gates.evaluate(&summary(70, 30, 5))[0].passed);
        assert!(!gates.evaluate(&summary(69, 31, 5))[0].passed);
    }

    #[test]
    fn p99_gate_compares_milliseconds() {
        let gates = Gates {
            max_error_rate: 0.0,
            max_p99: Some(Duration::from_millis(250)),
        };
        let fast = gates.evaluate(&summary(100, 0, 200));
        assert_eq!(fast[1].gate, Gate::MaxP99);
        assert_eq!(fast[1].limit, 250.0);
        assert!(fast[1].passed);
        let slow = gates.evaluate(&summary(100, 0, 300));
        assert!(!slow[1].passed);
        assert!(slow[1].measured.unwrap() >= 299.0);
        assert!(slow[0].passed, "the error-rate gate is judged on its own");
    }

    #[test]
    fn nothing_measured_never_passes() {
        let gates = Gates {
            max_error_rate: 1.0,
            max_p99: Some(Duration::from_secs(1)),
        };
        let v = gates.evaluate(&summary(0, 0, 0));
        assert!(v.iter().all(|v| !v.passed && v.measured.is_none()));
    }
}
