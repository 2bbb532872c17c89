//! The request engine: one request (single shot), or a load run in closed or open loop.
//!
//! A load run has one worker task per connection. Each worker drives its requests concurrently as a
//! `FuturesUnordered` on a clone of its connection's client and records into its own [`Recorder`]; the
//! recorders are merged when the workers end. Nothing on the per-request path takes a lock or touches
//! memory shared with other workers, except two relaxed counters for the progress bar.
//!
//! **Closed loop** (`--concurrency N`): N requests in flight at all times, split across the workers; a
//! new request starts when one finishes. Latency counts from the moment a request is sent.
//!
//! **Open loop** (`--rate R`): request `i` is due at `t0 + i/R` (see [`schedule`](super::schedule)) and
//! latency counts from that due time. Its deadline is due time + `--timeout`. At most `--max-in-flight`
//! requests are outstanding: when the cap is reached, due requests wait and start as soon as a slot frees
//! (their latency still counting from their due time); a request whose deadline passes while it waits is
//! recorded as `DEADLINE_EXCEEDED` with latency = `--timeout`, without being sent. Nothing scheduled is
//! ever dropped: an open-loop run always accounts for exactly its scheduled number of requests.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use thespian_agent::proto::Nothing;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

use crate::cli::Method;
use crate::probe::ProbeError;
use crate::probe::conn::{Client, Pool, never_sent};
use crate::probe::schedule::{self, Schedule};
use crate::probe::stats::{Recorder, Sample};
use crate::probe::trace::{TRACEPARENT, TraceParent};

/// Metadata the agent sets on every reply (and error status): which instance answered.
pub const INSTANCE_HEADER: &str = "x-thespian-instance";

/// What the workers share.
pub struct Shared {
    pub pool: Pool,
    pub method: Method,
    pub timeout: Duration,
    pub progress: Progress,
}

/// Counters for the progress display (relaxed atomics: read approximately, every few hundred ms).
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub failed: AtomicU64,
}

/// A snapshot for the progress display.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub done: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

/// How requests are paced in a load run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    Closed { concurrency: u32 },
    Open { rate: f64, max_in_flight: u32 },
}

/// A load run: pacing plus when to stop (whichever of `requests` and `duration` comes first).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadPlan {
    pub pacing: Pacing,
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
}

/// The run length when neither `-n` nor `--duration` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

impl LoadPlan {
    /// Worker tasks (and connections) the run uses: one per connection, but never more than requests
    /// that can be in flight in a closed loop.
    pub fn workers(&self, connections: usize) -> usize {
        let connections = connections.max(1);
        match self.pacing {
            Pacing::Closed { concurrency } => connections.min(concurrency.max(1) as usize),
            Pacing::Open { .. } => connections,
        }
    }

    /// The number of requests the run will send, when it is known in advance.
    pub fn total(&self) -> Option<u64> {
        match self.pacing {
            Pacing::Open { rate, .. } => Some(self.open_total(rate)),
            Pacing::Closed { .. } => match self.duration {
                Some(_) => None,
                None => self.requests,
            },
        }
    }

    fn open_total(&self, rate: f64) -> u64 {
        let by_time = schedule::requests_in(rate, self.duration.unwrap_or(DEFAULT_DURATION));
        match (self.requests, self.duration) {
            (Some(n), Some(_)) => n.min(by_time),
            (Some(n), None) => n,
            (None, _) => by_time,
        }
    }

    /// The end of the run in a closed loop with a duration (or without `-n`: the default duration).
    fn closed_end(&self, t0: Instant) -> Option<Instant> {
        match (self.requests, self.duration) {
            (_, Some(d)) => Some(t0 + d),
            (Some(_), None) => None,
            (None, None) => Some(t0 + DEFAULT_DURATION),
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunResult {
    pub recorder: Recorder,
    /// From the start of the run to the last reply (or to Ctrl-C).
    pub elapsed: Duration,
    pub interrupted: bool,
    pub workers: usize,
}

/// One request as it ended.
struct Outcome {
    origin: Instant,
    end: Instant,
    trace: TraceParent,
    result: Result<Response<Nothing>, Status>,
    retries: u64,
}

/// Sends one request with the trace header and the deadline (as `grpc-timeout`, and enforced here too, so
/// a server that cannot answer at all — stopped, partitioned — still yields `DEADLINE_EXCEEDED` on time).
async fn call(
    mut client: Client,
    method: Method,
    trace: &TraceParent,
    deadline: Instant,
) -> Result<Response<Nothing>, Status> {
    let mut request = Request::new(Nothing {});
    request.metadata_mut().insert(TRACEPARENT, trace.metadata_value());
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    let reply = async move {
        match method {
            Method::A => client.a(request).await,
            Method::B => client.b(request).await,
            Method::C => client.c(request).await,
        }
    };
    match tokio::time::timeout_at(deadline.into(), reply).await {
        // A server that enforces grpc-timeout may answer at the deadline itself; tonic servers say
        // CANCELLED then. For the caller the deadline passed, as gRPC clients report it.
        Err(_) => Err(Status::deadline_exceeded(
            "no reply before the deadline (--timeout)",
        )),
        Ok(Err(status)) if status.code() == Code::Cancelled && Instant::now() >= deadline => {
            let mut late = Status::deadline_exceeded(format!(
                "the server gave up at the deadline (--timeout): {}",
                status.message()
            ));
            *late.metadata_mut() = status.metadata().clone();
            Err(late)
        }
        Ok(result) => result,
    }
}

/// Backoff between attempts of a request that could not reach any server.
fn retry_backoff(attempt: u64) -> Duration {
    Duration::from_millis(5u64.saturating_mul(1 << attempt.min(6)).min(250))
}

/// One request on `slot`, re-sent (transparently, as gRPC clients do) while the connection cannot be
/// established and the deadline allows; see [`conn`](super::conn).
async fn request(
    shared: &Shared,
    slot: usize,
    origin: Instant,
    deadline: Instant,
    trace: TraceParent,
) -> Outcome {
    let mut retries = 0;
    loop {
        let (client, generation) = shared.pool.client(slot);
        let result = call(client, shared.method, &trace, deadline).await;
        if let Err(status) = &result
            && never_sent(status)
        {
            let backoff = retry_backoff(retries);
            if Instant::now() + backoff < deadline {
                retries += 1;
                shared.pool.replace(slot, generation).await;
                tokio::time::sleep(backoff).await;
                continue;
            }
        }
        return Outcome {
            origin,
            end: Instant::now(),
            trace,
            result,
            retries,
        };
    }
}

fn record(rec: &mut Recorder, progress: &Progress, outcome: &Outcome) {
    let (code, metadata, message) = match &outcome.result {
        Ok(reply) => (Code::Ok, reply.metadata(), ""),
        Err(status) => (status.code(), status.metadata(), status.message()),
    };
    rec.retried += outcome.retries;
    rec.record(&Sample {
        code,
        latency: outcome.end.saturating_duration_since(outcome.origin),
        instance: metadata.get(INSTANCE_HEADER).map(|v| v.as_bytes()),
        trace: Some(outcome.trace),
        message,
    });
    progress.done.fetch_add(1, Ordering::Relaxed);
    if code != Code::Ok {
        progress.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The single-shot result: the one request in full.
#[derive(Debug)]
pub struct Shot {
    pub code: Code,
    pub message: String,
    pub latency: Duration,
    pub instance: Option<String>,
    pub trace: TraceParent,
    /// The URI the request went to.
    pub uri: String,
    pub recorder: Recorder,
}

/// Sends one request on the pool's first connection.
pub async fn single_shot(shared: &Shared) -> Shot {
    let trace = TraceParent::random();
    let start = Instant::now();
    let outcome = request(shared, 0, start, start + shared.timeout, trace).await;
    let mut recorder = Recorder::new();
    record(&mut recorder, &shared.progress, &outcome);
    let (code, metadata, message) = match &outcome.result {
        Ok(reply) => (Code::Ok, reply.metadata(), String::new()),
        Err(status) => (status.code(), status.metadata(), status.message().to_string()),
    };
    Shot {
        code,
        message,
        latency: outcome.end - outcome.origin,
        instance: metadata
            .get(INSTANCE_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        trace,
        uri: shared.pool.uri(0).to_string(),
        recorder,
    }
}

/// Runs a load plan until it is done or `cancel` fires. `on_tick` is called every `tick` with progress.
pub async fn run_load(
    shared: Arc<Shared>,
    plan: LoadPlan,
    cancel: CancellationToken,
    tick: Duration,
    mut on_tick: impl FnMut(Tick),
) -> Result<RunResult, ProbeError> {
    let workers = plan.workers(shared.pool.len());
    let t0 = Instant::now();
    let stop = cancel.child_token();
    let mut handles = Vec::with_capacity(workers);
    match plan.pacing {
        Pacing::Closed { concurrency } => {
            let budget = Arc::new(Budget {
                limit: plan.requests,
                claimed: AtomicU64::new(0),
                end: plan.closed_end(t0),
            });
            for (w, slots) in schedule::split(u64::from(concurrency), workers)
                .into_iter()
                .enumerate()
            {
                let worker = closed_worker(shared.clone(), w, slots as usize, budget.clone(), stop.clone());
                handles.push(tokio::spawn(worker));
            }
        }
        Pacing::Open { rate, max_in_flight } => {
            let sched = Schedule::new(t0, rate, plan.open_total(rate));
            for (w, cap) in schedule::split(u64::from(max_in_flight), workers)
                .into_iter()
                .enumerate()
            {
                let worker = open_worker(
                    shared.clone(),
                    w,
                    workers,
                    sched,
                    (cap as usize).max(1),
                    stop.clone(),
                );
                handles.push(tokio::spawn(worker));
            }
        }
    }

    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut all = futures_util::future::join_all(handles);
    let joined = loop {
        tokio::select! {
            joined = &mut all => break joined,
            _ = ticker.tick() => on_tick(Tick {
                done: shared.progress.done.load(Ordering::Relaxed),
                failed: shared.progress.failed.load(Ordering::Relaxed),
                elapsed: t0.elapsed(),
            }),
        }
    };

    let mut recorder = Recorder::new();
    let mut last_end = t0;
    let mut interrupted = false;
    for result in joined {
        let w = result.map_err(|source| ProbeError::Worker { source })?;
        recorder.merge(w.recorder);
        last_end = last_end.max(w.last_end);
        interrupted |= w.interrupted;
    }
    let elapsed = if interrupted { t0.elapsed() } else { last_end - t0 };
    Ok(RunResult {
        recorder,
        elapsed,
        interrupted,
        workers,
    })
}

struct WorkerResult {
    recorder: Recorder,
    last_end: Instant,
    interrupted: bool,
}

/// The closed loop's shared request budget: `-n` tickets and/or an end time.
struct Budget {
    limit: Option<u64>,
    claimed: AtomicU64,
    end: Option<Instant>,
}

impl Budget {
    fn claim(&self) -> bool {
        if self.end.is_some_and(|end| Instant::now() >= end) {
            return false;
        }
        match self.limit {
            Some(limit) => self.claimed.fetch_add(1, Ordering::Relaxed) < limit,
            None => true,
        }
    }
}

/// Waits for the next finished request, or for cancellation (`None`).
async fn next_or_cancel<F: Future<Output = Outcome>>(
    inflight: &mut FuturesUnordered<F>,
    cancel: &CancellationToken,
) -> Option<Outcome> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        outcome = inflight.next() => outcome,
    }
}

async fn closed_worker(
    shared: Arc<Shared>,
    slot: usize,
    slots: usize,
    budget: Arc<Budget>,
    cancel: CancellationToken,
) -> WorkerResult {
    let shared = &*shared;
    let mut rec = Recorder::new();
    let mut last_end = Instant::now();
    let mut interrupted = false;
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < slots && budget.claim() {
            let now = Instant::now();
            inflight.push(request(
                shared,
                slot,
                now,
                now + shared.timeout,
                TraceParent::random(),
            ));
        }
        if inflight.is_empty() {
            break;
        }
        match next_or_cancel(&mut inflight, &cancel).await {
            Some(outcome) => {
                last_end = outcome.end;
                record(&mut rec, &shared.progress, &outcome);
            }
            None => {
                // Ctrl-C: requests still in flight are abandoned and not counted.
                interrupted = true;
                break;
            }
        }
    }
    WorkerResult {
        recorder: rec,
        last_end,
        interrupted,
    }
}

async fn open_worker(
    shared: Arc<Shared>,
    slot: usize,
    workers: usize,
    sched: Schedule,
    cap: usize,
    cancel: CancellationToken,
) -> WorkerResult {
    let shared = &*shared;
    let step = workers as u64;
    let mut rec = Recorder::new();
    let mut last_end = sched.t0;
    let mut interrupted = false;
    let mut inflight = FuturesUnordered::new();
    let mut next = slot as u64;
    // Requests up to this index were due while the in-flight cap was reached (they start late).
    let mut blocked_through: Option<u64> = None;
    loop {
        let now = Instant::now();
        while next < sched.total {
            let due = sched.due(next);
            if due > now {
                break;
            }
            let deadline = due + shared.timeout;
            if deadline <= now {
                // Its deadline passed while it waited for a free slot: it can only fail, so it fails
                // now, as its caller would have seen it, without being sent.
                rec.expired += 1;
                rec.delayed += 1;
                rec.record(&Sample {
                    code: Code::DeadlineExceeded,
                    latency: shared.timeout,
                    instance: None,
                    trace: None,
                    message: "deadline passed before the request could be sent (--max-in-flight reached)",
                });
                shared.progress.done.fetch_add(1, Ordering::Relaxed);
                shared.progress.failed.fetch_add(1, Ordering::Relaxed);
                next += step;
                continue;
            }
            if inflight.len() >= cap {
                blocked_through = Some(sched.last_due(now));
                break;
            }
            if blocked_through.is_some_and(|b| next <= b) {
                rec.delayed += 1;
            }
            rec.record_start_lag(now - due);
            inflight.push(request(shared, slot, due, deadline, TraceParent::random()));
            next += step;
        }
        if next >= sched.total && inflight.is_empty() {
            break;
        }
        let wake = (next < sched.total && inflight.len() < cap).then(|| sched.due(next));
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                interrupted = true;
                break;
            }
            Some(outcome) = inflight.next(), if !inflight.is_empty() => {
                last_end = outcome.end;
                record(&mut rec, &shared.progress, &outcome);
            }
            () = tokio::time::sleep_until(wake.unwrap_or(now).into()), if wake.is_some() => {}
        }
    }
    WorkerResult {
        recorder: rec,
        last_end,
        interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::conn::{Refresh, parse_address};
    use crate::probe::stats::Summary;
    use crate::probe::testserver::{Behaviour, TestServer};
    use crate::target::Endpoint;

    async fn shared(
        addresses: &[String],
        connections: usize,
        timeout_ms: u64,
        refresh: Option<Refresh>,
    ) -> Arc<Shared> {
        let endpoints = addresses.iter().map(|a| parse_address(a).unwrap()).collect();
        let pool = Pool::connect(endpoints, connections, Duration::from_secs(2), refresh)
            .await
            .unwrap();
        Arc::new(Shared {
            pool,
            method: Method::A,
            timeout: Duration::from_millis(timeout_ms),
            progress: Progress::default(),
        })
    }

    async fn run(shared: Arc<Shared>, plan: LoadPlan) -> (Summary, RunResult) {
        let result = run_load(
            shared,
            plan,
            CancellationToken::new(),
            Duration::from_millis(50),
            |_| {},
        )
        .await
        .unwrap();
        (result.recorder.summary(), result)
    }

    fn closed(concurrency: u32, requests: Option<u64>, duration_ms: Option<u64>) -> LoadPlan {
        LoadPlan {
            pacing: Pacing::Closed { concurrency },
            requests,
            duration: duration_ms.map(Duration::from_millis),
        }
    }

    fn open(rate: f64, max_in_flight: u32, requests: Option<u64>, duration_ms: Option<u64>) -> LoadPlan {
        LoadPlan {
            pacing: Pacing::Open { rate, max_in_flight },
            requests,
            duration: duration_ms.map(Duration::from_millis),
        }
    }

    #[tokio::test]
    async fn single_shot_reports_code_instance_and_the_trace_it_sent() {
        let server = TestServer::start(Behaviour::ok("gilbert-0", 5)).await;
        let shared = shared(&[server.address()], 1, 2_000, None).await;
        let shot = single_shot(&shared).await;
        assert_eq!(shot.code, Code::Ok);
        assert_eq!(shot.instance.as_deref(), Some("gilbert-0"));
        assert!(shot.latency >= Duration::from_millis(5), "{:?}", shot.latency);
        assert_eq!(shot.uri, format!("http://{}", server.addr));
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "A");
        assert_eq!(
            seen[0].traceparent.as_deref(),
            Some(shot.trace.to_string().as_str())
        );
        // The deadline travels as grpc-timeout (a little under 2 s by the time it is encoded).
        let timeout = seen[0].grpc_timeout.clone().expect("grpc-timeout sent");
        assert!(
            timeout.ends_with('u') || timeout.ends_with('m') || timeout.ends_with('n'),
            "{timeout}"
        );
    }

    #[tokio::test]
    async fn a_failed_action_is_internal_and_still_names_the_instance() {
        let server = TestServer::start(Behaviour {
            fail_every: Some(1),
            ..Behaviour::ok("gilbert-1", 0)
        })
        .await;
        let shared = shared(&[server.address()], 1, 2_000, None).await;
        let shot = single_shot(&shared).await;
        assert_eq!(shot.code, Code::Internal);
        assert_eq!(shot.message, "action failed");
        assert_eq!(shot.instance.as_deref(), Some("gilbert-1"));
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_yields_deadline_exceeded_on_time() {
        let server = TestServer::start(Behaviour::ok("slow", 0)).await;
        server.set_stalled(true);
        let shared = shared(&[server.address()], 1, 150, None).await;
        let shot = single_shot(&shared).await;
        assert_eq!(shot.code, Code::DeadlineExceeded);
        assert!(shot.latency >= Duration::from_millis(150), "{:?}", shot.latency);
        assert!(shot.latency < Duration::from_millis(400), "{:?}", shot.latency);
    }

    #[tokio::test]
    async fn every_request_carries_a_fresh_traceparent() {
        let server = TestServer::start(Behaviour::ok("g", 0)).await;
        let shared = shared(&[server.address()], 2, 2_000, None).await;
        let (summary, _) = run(shared, closed(4, Some(100), None)).await;
        assert_eq!(summary.requests, 100);
        let seen = server.seen();
        let ids: std::collections::HashSet<_> = seen.iter().map(|s| s.traceparent.clone().unwrap()).collect();
        assert_eq!(ids.len(), 100);
    }

    #[tokio::test]
    async fn closed_loop_sends_exactly_n_and_counts_codes() {
        // Every 4th request fails: exactly 25 of 100.
        let server = TestServer::start(Behaviour {
            fail_every: Some(4),
            ..Behaviour::ok("g-0", 1)
        })
        .await;
        let shared = shared(&[server.address()], 4, 2_000, None).await;
        let (summary, result) = run(shared, closed(8, Some(100), None)).await;
        assert_eq!(summary.requests, 100);
        assert_eq!(summary.ok, 75);
        assert_eq!(summary.errors.get("INTERNAL"), Some(&25));
        assert_eq!(summary.instances.get("g-0"), Some(&100));
        assert_eq!(result.workers, 4);
        assert!(!result.interrupted);
        assert_eq!(
            server.seen().len(),
            100,
            "the server saw exactly the requests counted"
        );
    }

    #[tokio::test]
    async fn closed_loop_keeps_concurrency_in_flight() {
        // 8 in flight against a 20 ms server for 300 ms: about 8 × 15 = 120 requests, far more than the
        // 15 a sequential client would manage.
        let server = TestServer::start(Behaviour::ok("g", 20)).await;
        let shared = shared(&[server.address()], 2, 2_000, None).await;
        let (summary, result) = run(shared, closed(8, None, Some(300))).await;
        assert!(summary.requests >= 60, "{}", summary.requests);
        assert!(summary.requests <= 8 * 16, "{}", summary.requests);
        let l = summary.latency.unwrap();
        assert!(l.p50 >= 20.0 && l.p50 < 100.0, "p50 {}", l.p50);
        assert!(result.elapsed >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn connections_spread_requests_over_every_endpoint() {
        let a = TestServer::start(Behaviour::ok("a", 1)).await;
        let b = TestServer::start(Behaviour::ok("b", 1)).await;
        let shared = shared(&[a.address(), b.address()], 4, 2_000, None).await;
        let (summary, _) = run(shared, open(400.0, 100, Some(200), None)).await;
        // Open loop stripes requests evenly over the 4 connections, 2 per endpoint.
        assert_eq!(summary.instances.get("a"), Some(&100));
        assert_eq!(summary.instances.get("b"), Some(&100));
    }

    #[tokio::test]
    async fn open_loop_sends_the_whole_schedule_on_time() {
        let server = TestServer::start(Behaviour::ok("g", 2)).await;
        let shared = shared(&[server.address()], 2, 2_000, None).await;
        let (summary, result) = run(shared, open(500.0, 1_000, None, Some(400))).await;
        assert_eq!(summary.requests, 200);
        assert_eq!(summary.ok, 200);
        assert_eq!(summary.delayed, 0);
        // The schedule spans 398 ms; the run ends with the last reply.
        assert!(
            result.elapsed >= Duration::from_millis(398),
            "{:?}",
            result.elapsed
        );
        assert!(
            result.elapsed < Duration::from_millis(1_000),
            "{:?}",
            result.elapsed
        );
        let lag = summary.start_lag.unwrap();
        assert!(
            lag.p50 < 5.0,
            "requests started {} ms late at the median",
            lag.p50
        );
    }

    #[tokio::test]
    async fn open_loop_shows_a_stall_that_closed_loop_would_hide() {
        let server = TestServer::start(Behaviour::ok("g", 1)).await;
        let shared = shared(&[server.address()], 2, 5_000, None).await;
        let stall = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            server.set_stalled(true);
            tokio::time::sleep(Duration::from_millis(400)).await;
            server.set_stalled(false);
        };
        let ((summary, _), ()) = tokio::join!(run(shared, open(200.0, 1_000, None, Some(1_000))), stall);
        // Nothing dropped: the 80 requests due during the stall were sent and waited.
        assert_eq!(summary.requests, 200);
        assert_eq!(summary.ok, 200);
        let l = summary.latency.unwrap();
        // The first request due in the stall waited ~400 ms; ≥ 10 % of requests waited over 100 ms.
        assert!(l.max >= 380.0, "max {}", l.max);
        assert!(l.p90 >= 100.0, "p90 {}", l.p90);
        assert!(l.p50 < 50.0, "p50 {}", l.p50);
    }

    #[tokio::test]
    async fn the_in_flight_cap_delays_requests_but_never_drops_them() {
        // 2 in flight at most, 50 ms per request, 200 due per second for 300 ms: the cap binds at once.
        let server = TestServer::start(Behaviour::ok("g", 50)).await;
        let shared = shared(&[server.address()], 1, 5_000, None).await;
        let (summary, _) = run(shared, open(200.0, 2, None, Some(300))).await;
        assert_eq!(
            summary.requests, 60,
            "every scheduled request is accounted for: {summary:?}"
        );
        assert_eq!(summary.ok, 60);
        assert!(summary.delayed >= 50, "{}", summary.delayed);
        assert_eq!(summary.expired, 0);
        // 60 requests, 2 at a time, 50 ms each: the last one finishes ~1.5 s after t0 but was due at
        // 295 ms, and its latency says so.
        assert!(summary.latency.unwrap().max >= 1_000.0, "{:?}", summary.latency);
        assert_eq!(server.seen().len(), 60);
    }

    #[tokio::test]
    async fn requests_whose_deadline_passes_while_waiting_are_failed_not_dropped() {
        // A server that never answers, one request in flight at most, 5 due per millisecond: each sent
        // request holds the slot until its deadline, and most due requests run out of time waiting.
        let server = TestServer::start(Behaviour::ok("g", 0)).await;
        server.set_stalled(true);
        let shared = shared(&[server.address()], 1, 50, None).await;
        let (summary, _) = run(shared, open(5_000.0, 1, None, Some(200))).await;
        assert_eq!(summary.requests, 1_000, "{summary:?}");
        assert_eq!(
            summary.errors.get("DEADLINE_EXCEEDED"),
            Some(&1_000),
            "{summary:?}"
        );
        assert!(summary.expired > 500, "{summary:?}");
        assert_eq!(
            server.seen().len() as u64,
            1_000 - summary.expired,
            "expired requests are not sent"
        );
        let l = summary.latency.unwrap();
        assert!(l.p50 >= 50.0 && l.max < 150.0, "{l:?}");
    }

    #[tokio::test]
    async fn cancellation_stops_the_run_with_partial_results() {
        let server = TestServer::start(Behaviour::ok("g", 5)).await;
        let shared = shared(&[server.address()], 2, 2_000, None).await;
        let cancel = CancellationToken::new();
        let stopper = {
            let cancel = cancel.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                cancel.cancel();
            }
        };
        let started = Instant::now();
        let (result, ()) = tokio::join!(
            run_load(
                shared,
                open(200.0, 100, None, Some(10_000)),
                cancel,
                Duration::from_millis(50),
                |_| {}
            ),
            stopper
        );
        let result = result.unwrap();
        assert!(result.interrupted);
        assert!(started.elapsed() < Duration::from_secs(2));
        let requests = result.recorder.requests();
        assert!((20..=60).contains(&requests), "{requests}");
    }

    #[tokio::test]
    async fn progress_ticks_while_the_run_goes() {
        let server = TestServer::start(Behaviour::ok("g", 1)).await;
        let shared = shared(&[server.address()], 1, 2_000, None).await;
        let mut ticks = Vec::new();
        let result = run_load(
            shared,
            open(200.0, 100, None, Some(300)),
            CancellationToken::new(),
            Duration::from_millis(50),
            |t| ticks.push(t),
        )
        .await
        .unwrap();
        assert!(ticks.len() >= 4, "{}", ticks.len());
        assert!(ticks.windows(2).all(|w| w[0].done <= w[1].done));
        assert!(ticks.last().unwrap().done <= result.recorder.requests());
    }

    #[tokio::test]
    async fn a_replica_replaced_mid_run_costs_no_request() {
        // The pool starts on `old`; when `old` shuts down, re-resolution names `new` (as `thespctl up`
        // does when it replaces a replica on a new port), and requests that could not connect go there.
        let old = TestServer::start(Behaviour::ok("old", 1)).await;
        let new = TestServer::start(Behaviour::ok("new", 1)).await;
        let new_endpoint = Endpoint {
            uri: format!("http://{}", new.addr),
            label: "new".into(),
        };
        let refresh: Refresh = Box::new(move || {
            let list = vec![new_endpoint.clone()];
            Box::pin(async move { Some(list) })
        });
        let shared = shared(&[old.address()], 2, 2_000, Some(refresh)).await;
        let stop_old = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            old.stop().await;
        };
        let ((summary, _), ()) = tokio::join!(run(shared, open(200.0, 100, None, Some(500))), stop_old);
        assert_eq!(summary.requests, 100);
        assert_eq!(summary.ok, 100, "errors: {:?}", summary.first_errors);
        assert!(summary.instances.get("old").is_some_and(|n| *n > 0));
        assert!(summary.instances.get("new").is_some_and(|n| *n > 0));
        assert!(summary.retried > 0);
    }
}
