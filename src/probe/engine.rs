//! The request engine: one request (single shot), or a load run in closed or open loop.
//!
//! A load run has one worker per connection. Workers run on dedicated engine threads (`--threads`, each a
//! single-threaded tokio runtime that also drives its connections, like h2load's threads): a request, its
//! HTTP/2 stream and its reply are handled on one thread, and requests started in one pass of a worker
//! leave in one write. Each worker drives its requests concurrently as a `FuturesUnordered` and records
//! into its own [`Recorder`]; the recorders are merged when the run ends. Nothing on the per-request path
//! takes a contended lock; two relaxed counters feed the progress bar.
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
use thespian_agent::client::{GRPC_TIMEOUT, grpc_timeout};
use thespian_agent::config::GrpcMethod;
use thespian_agent::proto::Nothing;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

use crate::cli::Method;
use crate::probe::ProbeError;
use crate::probe::conn::{Client, Pool, Refresh, never_sent};
use crate::probe::schedule::{self, Schedule};
use crate::probe::stats::{Recorder, Sample};
use crate::probe::trace::{TRACEPARENT, TraceParent};
use crate::target::Endpoint;

/// Metadata the agent sets on every reply (and error status): which instance answered.
pub const INSTANCE_HEADER: &str = "x-thespian-instance";

/// What the requests of one engine thread (or of a single shot) share.
pub struct Shared {
    pub pool: Pool,
    pub method: Method,
    pub timeout: Duration,
    pub progress: Arc<Progress>,
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
    /// Workers (and connections) the run uses: one per connection, but never more than requests that
    /// can be in flight in a closed loop.
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

/// The agent crate's name for a method.
fn grpc_method(method: Method) -> GrpcMethod {
    match method {
        Method::A => GrpcMethod::A,
        Method::B => GrpcMethod::B,
        Method::C => GrpcMethod::C,
    }
}

/// Sends one request with the trace header and the deadline (as `grpc-timeout`, and enforced here too, so
/// a server that cannot answer at all — stopped, partitioned — still yields `DEADLINE_EXCEEDED` on time).
async fn call(
    client: Client,
    method: Method,
    trace: &TraceParent,
    deadline: Instant,
) -> Result<Response<Nothing>, Status> {
    let mut request = Request::new(Nothing {});
    let metadata = request.metadata_mut();
    metadata.insert(TRACEPARENT, trace.metadata_value());
    metadata.insert(
        GRPC_TIMEOUT,
        grpc_timeout(deadline.saturating_duration_since(Instant::now())),
    );
    let reply = async move {
        match (client, method) {
            (Client::H2(client), method) => client.unary(grpc_method(method), request.into_parts().0).await,
            (Client::Tls(mut client), Method::A) => client.a(request).await,
            (Client::Tls(mut client), Method::B) => client.b(request).await,
            (Client::Tls(mut client), Method::C) => client.c(request).await,
        }
    };
    match tokio::time::timeout_at(deadline.into(), reply).await {
        Err(_) => Err(Status::deadline_exceeded(
            "no reply before the deadline (--timeout)",
        )),
        // A server (or tonic's channel) that enforces grpc-timeout may answer at the deadline itself;
        // tonic says CANCELLED then. For the caller the deadline passed, as gRPC clients report it.
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

/// One request on local slot `slot`, re-sent (transparently, as gRPC clients do) while it cannot reach a
/// server and the deadline allows; see [`conn`](super::conn).
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

/// Where and how a load run connects.
pub struct LoadTarget {
    pub endpoints: Vec<Endpoint>,
    /// Connections requested (the run may use fewer: see [`LoadPlan::workers`]).
    pub connections: usize,
    /// Engine threads requested (never more than connections).
    pub threads: usize,
    pub connect_timeout: Duration,
    pub refresh: Option<Refresh>,
    pub method: Method,
    pub timeout: Duration,
}

/// The `-n` budget the closed-loop workers of every engine thread claim requests from.
struct Budget {
    limit: Option<u64>,
    claimed: AtomicU64,
}

impl Budget {
    fn claim(&self, end: Option<Instant>) -> bool {
        if end.is_some_and(|end| Instant::now() >= end) {
            return false;
        }
        match self.limit {
            Some(limit) => self.claimed.fetch_add(1, Ordering::Relaxed) < limit,
            None => true,
        }
    }
}

/// What one engine thread (or worker) hands back.
#[derive(Debug)]
struct Partial {
    recorder: Recorder,
    last_end: Instant,
    interrupted: bool,
}

/// A load run whose connections are all established, waiting for [`Prepared::run`].
pub struct Prepared {
    workers: usize,
    threads: usize,
    progress: Arc<Progress>,
    go: Vec<oneshot::Sender<Instant>>,
    done: Vec<oneshot::Receiver<Partial>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("workers", &self.workers)
            .field("threads", &self.threads)
            .finish()
    }
}

/// Starts the engine threads and opens every connection of a load run. Returns once all are
/// established (or with the first connection error). Dropping the result stops the threads.
pub async fn prepare(
    target: LoadTarget,
    plan: LoadPlan,
    cancel: CancellationToken,
) -> Result<Prepared, ProbeError> {
    let workers = plan.workers(target.connections);
    let threads = target.threads.clamp(1, workers);
    let progress = Arc::new(Progress::default());
    let budget = Arc::new(Budget {
        limit: plan.requests,
        claimed: AtomicU64::new(0),
    });
    // Per worker: its share of the concurrency (closed) or of the in-flight cap (open).
    let shares = Arc::new(match plan.pacing {
        Pacing::Closed { concurrency } => schedule::split(u64::from(concurrency), workers),
        Pacing::Open { max_in_flight, .. } => schedule::split(u64::from(max_in_flight), workers),
    });
    let endpoints = Arc::new(target.endpoints);
    let refresh = target.refresh.map(Arc::new);

    let mut go = Vec::with_capacity(threads);
    let mut done = Vec::with_capacity(threads);
    let mut ready = Vec::with_capacity(threads);
    for t in 0..threads {
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), ProbeError>>();
        let (go_tx, go_rx) = oneshot::channel::<Instant>();
        let (done_tx, done_rx) = oneshot::channel::<Partial>();
        let thread = EngineThread {
            slots: (t..workers).step_by(threads).collect(),
            workers,
            endpoints: endpoints.clone(),
            connect_timeout: target.connect_timeout,
            refresh: refresh.clone(),
            method: target.method,
            timeout: target.timeout,
            plan,
            shares: shares.clone(),
            budget: budget.clone(),
            progress: progress.clone(),
            cancel: cancel.clone(),
        };
        std::thread::Builder::new()
            .name(format!("probe-{t}"))
            .spawn(move || thread.run(ready_tx, go_rx, done_tx))
            .map_err(|source| ProbeError::Threads { source })?;
        ready.push(ready_rx);
        go.push(go_tx);
        done.push(done_rx);
    }
    for r in ready {
        match r.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ProbeError::Worker {
                    what: "an engine thread stopped while connecting".into(),
                });
            }
        }
    }
    Ok(Prepared {
        workers,
        threads,
        progress,
        go,
        done,
    })
}

impl Prepared {
    /// Connections (and workers) of the run.
    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs the load until it is done or the cancellation token fires; `on_tick` is called every `tick`.
    pub async fn run(self, tick: Duration, mut on_tick: impl FnMut(Tick)) -> Result<RunResult, ProbeError> {
        let t0 = Instant::now();
        for go in self.go {
            // A thread that is gone shows up below as a missing result.
            let _ = go.send(t0);
        }
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut all = futures_util::future::join_all(self.done);
        let joined = loop {
            tokio::select! {
                joined = &mut all => break joined,
                _ = ticker.tick() => on_tick(Tick {
                    done: self.progress.done.load(Ordering::Relaxed),
                    failed: self.progress.failed.load(Ordering::Relaxed),
                    elapsed: t0.elapsed(),
                }),
            }
        };
        let mut recorder = Recorder::new();
        let mut last_end = t0;
        let mut interrupted = false;
        for partial in joined {
            let partial = partial.map_err(|_| ProbeError::Worker {
                what: "an engine thread ended without its results".into(),
            })?;
            recorder.merge(partial.recorder);
            last_end = last_end.max(partial.last_end);
            interrupted |= partial.interrupted;
        }
        Ok(RunResult {
            recorder,
            elapsed: if interrupted { t0.elapsed() } else { last_end - t0 },
            interrupted,
            workers: self.workers,
        })
    }
}

/// One engine thread: a single-threaded runtime with some of the run's connections and their workers.
struct EngineThread {
    /// The global indices of this thread's connections (= its workers).
    slots: Vec<usize>,
    workers: usize,
    endpoints: Arc<Vec<Endpoint>>,
    connect_timeout: Duration,
    refresh: Option<Arc<Refresh>>,
    method: Method,
    timeout: Duration,
    plan: LoadPlan,
    shares: Arc<Vec<u64>>,
    budget: Arc<Budget>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
}

impl EngineThread {
    fn run(
        self,
        ready: oneshot::Sender<Result<(), ProbeError>>,
        go: oneshot::Receiver<Instant>,
        done: oneshot::Sender<Partial>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(source) => {
                let _ = ready.send(Err(ProbeError::Threads { source }));
                return;
            }
        };
        runtime.block_on(async move {
            let connect = Pool::connect(
                self.endpoints.to_vec(),
                &self.slots,
                self.connect_timeout,
                self.refresh.clone(),
            );
            let pool = match connect.await {
                Ok(pool) => pool,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            if ready.send(Ok(())).is_err() {
                return; // the probe gave up (another connection failed, or Ctrl-C)
            }
            let Ok(t0) = go.await else {
                return;
            };
            let shared = Arc::new(Shared {
                pool,
                method: self.method,
                timeout: self.timeout,
                progress: self.progress.clone(),
            });
            let mut tasks = Vec::with_capacity(self.slots.len());
            for (local, &global) in self.slots.iter().enumerate() {
                let share = self.shares[global] as usize;
                let cancel = self.cancel.clone();
                let task = match self.plan.pacing {
                    Pacing::Closed { .. } => tokio::spawn(closed_worker(
                        shared.clone(),
                        local,
                        share,
                        self.budget.clone(),
                        self.plan.closed_end(t0),
                        cancel,
                    )),
                    Pacing::Open { rate, .. } => {
                        let sched = Schedule::new(t0, rate, self.plan.open_total(rate));
                        tokio::spawn(open_worker(
                            shared.clone(),
                            local,
                            global,
                            self.workers,
                            sched,
                            share.max(1),
                            cancel,
                        ))
                    }
                };
                tasks.push(task);
            }
            let mut merged = Partial {
                recorder: Recorder::new(),
                last_end: t0,
                interrupted: false,
            };
            for task in tasks {
                // A worker that panicked loses its results; the missing `done` reports it.
                let Ok(partial) = task.await else {
                    return;
                };
                merged.recorder.merge(partial.recorder);
                merged.last_end = merged.last_end.max(partial.last_end);
                merged.interrupted |= partial.interrupted;
            }
            let _ = done.send(merged);
        });
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
    end: Option<Instant>,
    cancel: CancellationToken,
) -> Partial {
    let shared = &*shared;
    let mut rec = Recorder::new();
    let mut last_end = Instant::now();
    let mut interrupted = false;
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < slots && budget.claim(end) {
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
    Partial {
        recorder: rec,
        last_end,
        interrupted,
    }
}

async fn open_worker(
    shared: Arc<Shared>,
    slot: usize,
    worker: usize,
    workers: usize,
    sched: Schedule,
    cap: usize,
    cancel: CancellationToken,
) -> Partial {
    let shared = &*shared;
    let step = workers as u64;
    let mut rec = Recorder::new();
    let mut last_end = sched.t0;
    let mut interrupted = false;
    let mut inflight = FuturesUnordered::new();
    let mut next = worker as u64;
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
    Partial {
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

    async fn single(address: &str, timeout_ms: u64) -> Shared {
        let endpoint = parse_address(address).unwrap();
        let pool = Pool::connect(vec![endpoint], &[0], Duration::from_secs(2), None)
            .await
            .unwrap();
        Shared {
            pool,
            method: Method::A,
            timeout: Duration::from_millis(timeout_ms),
            progress: Arc::default(),
        }
    }

    fn target(
        addresses: &[String],
        connections: usize,
        timeout_ms: u64,
        refresh: Option<Refresh>,
    ) -> LoadTarget {
        LoadTarget {
            endpoints: addresses.iter().map(|a| parse_address(a).unwrap()).collect(),
            connections,
            threads: 1,
            connect_timeout: Duration::from_secs(2),
            refresh,
            method: Method::A,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    async fn load_with(
        target: LoadTarget,
        plan: LoadPlan,
        cancel: CancellationToken,
        on_tick: impl FnMut(Tick),
    ) -> (Summary, RunResult) {
        let prepared = prepare(target, plan, cancel).await.unwrap();
        let result = prepared.run(Duration::from_millis(50), on_tick).await.unwrap();
        (result.recorder.summary(), result)
    }

    async fn load(target: LoadTarget, plan: LoadPlan) -> (Summary, RunResult) {
        load_with(target, plan, CancellationToken::new(), |_| {}).await
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
        let shared = single(&server.address(), 2_000).await;
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
        let shared = single(&server.address(), 2_000).await;
        let shot = single_shot(&shared).await;
        assert_eq!(shot.code, Code::Internal);
        assert_eq!(shot.message, "action failed");
        assert_eq!(shot.instance.as_deref(), Some("gilbert-1"));
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_yields_deadline_exceeded_on_time() {
        let server = TestServer::start(Behaviour::ok("slow", 0)).await;
        server.set_stalled(true);
        let shared = single(&server.address(), 150).await;
        let shot = single_shot(&shared).await;
        assert_eq!(shot.code, Code::DeadlineExceeded);
        assert!(shot.latency >= Duration::from_millis(150), "{:?}", shot.latency);
        assert!(shot.latency < Duration::from_millis(400), "{:?}", shot.latency);
    }

    #[tokio::test]
    async fn every_request_carries_a_fresh_traceparent() {
        let server = TestServer::start(Behaviour::ok("g", 0)).await;
        let target = target(&[server.address()], 2, 2_000, None);
        let (summary, _) = load(target, closed(4, Some(100), None)).await;
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
        let target = target(&[server.address()], 4, 2_000, None);
        let (summary, result) = load(target, closed(8, Some(100), None)).await;
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
        let target = target(&[server.address()], 2, 2_000, None);
        let (summary, result) = load(target, closed(8, None, Some(300))).await;
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
        let mut target = target(&[a.address(), b.address()], 4, 2_000, None);
        target.threads = 2;
        let (summary, _) = load(target, open(400.0, 100, Some(200), None)).await;
        // Open loop stripes requests evenly over the 4 connections, 2 per endpoint, whichever of the 2
        // engine threads drives them.
        assert_eq!(summary.instances.get("a"), Some(&100));
        assert_eq!(summary.instances.get("b"), Some(&100));
    }

    #[tokio::test]
    async fn open_loop_sends_the_whole_schedule_on_time() {
        let server = TestServer::start(Behaviour::ok("g", 2)).await;
        let target = target(&[server.address()], 2, 2_000, None);
        let (summary, result) = load(target, open(500.0, 1_000, None, Some(400))).await;
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
        let target = target(&[server.address()], 2, 5_000, None);
        let stall = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            server.set_stalled(true);
            tokio::time::sleep(Duration::from_millis(400)).await;
            server.set_stalled(false);
        };
        let ((summary, _), ()) = tokio::join!(load(target, open(200.0, 1_000, None, Some(1_000))), stall);
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
        let target = target(&[server.address()], 1, 5_000, None);
        let (summary, _) = load(target, open(200.0, 2, None, Some(300))).await;
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
        let target = target(&[server.address()], 1, 50, None);
        let (summary, _) = load(target, open(5_000.0, 1, None, Some(200))).await;
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
        let target = target(&[server.address()], 2, 2_000, None);
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
            load_with(target, open(200.0, 100, None, Some(10_000)), cancel, |_| {}),
            stopper
        );
        let (summary, result) = result;
        assert!(result.interrupted);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!((20..=60).contains(&summary.requests), "{}", summary.requests);
    }

    #[tokio::test]
    async fn progress_ticks_while_the_run_goes() {
        let server = TestServer::start(Behaviour::ok("g", 1)).await;
        let target = target(&[server.address()], 1, 2_000, None);
        let mut ticks = Vec::new();
        let (summary, _) = load_with(
            target,
            open(200.0, 100, None, Some(300)),
            CancellationToken::new(),
            |t| ticks.push(t),
        )
        .await;
        assert!(ticks.len() >= 4, "{}", ticks.len());
        assert!(ticks.windows(2).all(|w| w[0].done <= w[1].done));
        assert!(ticks.last().unwrap().done <= summary.requests);
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
        let target = target(&[old.address()], 2, 2_000, Some(refresh));
        let stop_old = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            old.stop().await;
        };
        let ((summary, _), ()) = tokio::join!(load(target, open(200.0, 100, None, Some(500))), stop_old);
        assert_eq!(summary.requests, 100);
        assert_eq!(summary.ok, 100, "errors: {:?}", summary.first_errors);
        assert!(summary.instances.get("old").is_some_and(|n| *n > 0));
        assert!(summary.instances.get("new").is_some_and(|n| *n > 0));
        assert!(summary.retried > 0);
    }

    #[tokio::test]
    async fn a_load_run_reports_an_unreachable_endpoint_before_measuring() {
        let up = TestServer::start(Behaviour::ok("up", 0)).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = target(&[up.address(), format!("127.0.0.1:{port}")], 4, 2_000, None);
        let err = prepare(target, closed(4, Some(10), None), CancellationToken::new())
            .await
            .expect_err("a refused endpoint fails the run");
        assert!(matches!(err, ProbeError::Connect { .. }), "{err:?}");
        assert!(up.seen().is_empty(), "nothing was sent");
    }
}
