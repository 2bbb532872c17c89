//! When requests start.
//!
//! Open loop: request `i` is due at `t0 + i/R`, whatever happened to earlier requests, and its latency is
//! measured from that due time — so a stalled server shows its stall in the percentiles instead of
//! silently slowing the client down (coordinated omission). Workers share the schedule by striping: with
//! `W` workers, worker `w` owns requests `w, w+W, w+2W, …`.
//!
//! Closed loop: a fixed number of requests in flight, split as evenly as possible across workers.

use std::time::{Duration, Instant};

/// The fixed timetable of an open-loop run.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub t0: Instant,
    /// Nanoseconds between consecutive due times (1e9 / rate).
    interval_ns: f64,
    /// Requests in the whole run.
    pub total: u64,
}

impl Schedule {
    pub fn new(t0: Instant, rate: f64, total: u64) -> Self {
        Schedule {
            t0,
            interval_ns: 1e9 / rate,
            total,
        }
    }

    /// When request `i` is due. Computed from `t0` each time (not accumulated), so rounding never drifts.
    pub fn due(&self, i: u64) -> Instant {
        self.t0 + Duration::from_nanos((i as f64 * self.interval_ns) as u64)
    }

    /// The highest index due at or before `now` (0 when none is due yet).
    pub fn last_due(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.t0).as_nanos() as f64;
        ((since / self.interval_ns) as u64).min(self.total.saturating_sub(1))
    }

    /// The last due time, i.e. the nominal length of the schedule.
    pub fn span(&self) -> Duration {
        self.due(self.total.saturating_sub(1)) - self.t0
    }
}

/// How many requests a rate schedules within `duration`: every `i` with `i/rate < duration`.
pub fn requests_in(rate: f64, duration: Duration) -> u64 {
    let exact = rate * duration.as_secs_f64();
    // `i < exact`; a hair of slack so that 5000/s × 10 s is 50000, not 50001 through float rounding.
    let n = (exact - 1e-9).ceil();
    if n <= 0.0 { 0 } else { n as u64 }
}

/// Splits `total` into `parts` shares that differ by at most one (the first ones get the extra).
pub fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts_u64 = parts as u64;
    (0..parts_u64)
        .map(|p| total / parts_u64 + u64::from(p < total % parts_u64))
        .collect()
}

/// The indices worker `worker` of `workers` owns in a schedule of `total` requests.
pub fn stripe(worker: usize, workers: usize, total: u64) -> impl Iterator<Item = u64> {
    (worker as u64..total).step_by(workers.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_fixed_and_do_not_drift() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 5000.0, 50_000);
        assert_eq!(s.due(0), t0);
        assert_eq!(s.due(1) - t0, Duration::from_micros(200));
        assert_eq!(s.due(49_999) - t0, Duration::from_micros(9_999_800));
        assert_eq!(s.span(), Duration::from_micros(9_999_800));
        assert_eq!(s.last_due(t0), 0);
        assert_eq!(s.last_due(t0 + Duration::from_micros(199)), 0);
        assert_eq!(s.last_due(t0 + Duration::from_micros(200)), 1);
        assert_eq!(s.last_due(t0 + Duration::from_secs(60)), 49_999);
        // A rate whose interval is not a whole number of nanoseconds.
        let s = Schedule::new(t0, 3.0, 4);
        assert_eq!(s.due(3) - t0, Duration::from_secs(1));
    }

    #[test]
    fn a_duration_schedules_rate_times_duration_requests() {
        assert_eq!(requests_in(5000.0, Duration::from_secs(10)), 50_000);
        assert_eq!(requests_in(200.0, Duration::from_secs(3)), 600);
        assert_eq!(requests_in(0.5, Duration::from_secs(1)), 1, "one due at t0");
        assert_eq!(requests_in(3.0, Duration::from_millis(1_001)), 4);
        assert_eq!(requests_in(1.0, Duration::ZERO), 0);
        // Every scheduled request is due before the end; the next one would not be.
        for (rate, ms) in [(7.0, 1_000), (333.3, 2_500), (5000.0, 10_000), (1.0, 1)] {
            let d = Duration::from_millis(ms);
            let n = requests_in(rate, d);
            let s = Schedule::new(Instant::now(), rate, n + 1);
            assert!(s.due(n - 1) - s.t0 < d, "rate {rate} for {ms} ms: {n} requests");
            assert!(
                s.due(n) - s.t0 >= d - Duration::from_nanos(1),
                "rate {rate} for {ms} ms"
            );
        }
    }

    #[test]
    fn split_is_even_and_complete() {
        assert_eq!(split(64, 4), vec![16, 16, 16, 16]);
        assert_eq!(split(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(7, 1), vec![7]);
    }

    #[test]
    fn stripes_cover_every_request_exactly_once() {
        let total = 103;
        let mut all: Vec<u64> = (0..4).flat_map(|w| stripe(w, 4, total)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..total).collect::<Vec<_>>());
        assert_eq!(stripe(1, 4, 10).collect::<Vec<_>>(), vec![1, 5, 9]);
    }
}
