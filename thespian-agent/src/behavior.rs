//! The executor: acts out a method's behaviour tree for one request.
//!
//! The config is compiled once into a tree of steps whose names are `&'static str` (the config lives as
//! long as the process, so span names are never copied per request) and whose calls point straight at a
//! shared [`Target`]: one lazily dialled HTTP/2 connection per endpoint ([`client::Endpoint`]), used by
//! every request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, MetadataMap, MetadataValue};

use crate::client;
use crate::config::{self, Action, Config, GrpcMethod, Operation};
use crate::resolve::{ResolveMap, Resolver};
use crate::telemetry::{Span, SpanCx, Tracer};

/// Requests that arrive having travelled more hops than this are refused (`FAILED_PRECONDITION`).
pub const MAX_HOPS: u32 = 16;
/// Request metadata: how many Thespian hops the request has travelled.
pub const HOPS_HEADER: &str = "x-thespian-hops";
/// The metadata keys read or written on every request, parsed once (a key given as a `&str` is parsed
/// and validated on each lookup or insert).
pub(crate) mod keys {
    use std::sync::LazyLock;

    use tonic::metadata::AsciiMetadataKey;

    pub static TRACEPARENT: LazyLock<AsciiMetadataKey> =
        LazyLock::new(|| AsciiMetadataKey::from_static("traceparent"));
    pub static TRACESTATE: LazyLock<AsciiMetadataKey> =
        LazyLock::new(|| AsciiMetadataKey::from_static("tracestate"));
    pub static HOPS: LazyLock<AsciiMetadataKey> =
        LazyLock::new(|| AsciiMetadataKey::from_static(super::HOPS_HEADER));
    pub static GRPC_TIMEOUT: LazyLock<AsciiMetadataKey> =
        LazyLock::new(|| AsciiMetadataKey::from_static(crate::client::GRPC_TIMEOUT));
}
/// Response metadata set by every Thespian; it marks a failure as already logged by the callee.
pub const SERVICE_HEADER: &str = "x-thespian-service";
/// Error messages are capped so a failure that travels up a long chain cannot grow without bound.
const MAX_MESSAGE_LEN: usize = 1024;

/// What a request brings in: trace parent, deadline and hop count.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub parent: Option<SpanCx>,
    pub tracestate: Option<AsciiMetadataValue>,
    pub deadline: Option<Instant>,
    pub hops: u32,
}

/// Why a method did not answer OK: the gRPC code and a message naming the `tracing_name` that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    fn internal(mut message: String) -> Failure {
        if message.len() > MAX_MESSAGE_LEN {
            let mut cut = MAX_MESSAGE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        Failure {
            code: Code::Internal,
            message,
        }
    }
}

/// A config compiled for execution.
pub struct Behavior {
    methods: [Option<Func>; 3],
    tracer: Tracer,
}

/// A call target could not be set up from the config.
#[derive(Debug, thiserror::Error)]
#[error("CallService `{name}`: \"{uri}\" is not a usable address: {message}")]
pub struct BuildError {
    pub name: String,
    pub uri: String,
    pub message: String,
}

struct Func {
    name: &'static str,
    ops: Vec<Op>,
}

enum Op {
    One(Step),
    All(Vec<Step>),
}

enum Step {
    Sleep {
        name: &'static str,
        duration: Duration,
        failure_chance: f64,
    },
    Func(Func),
    Call(Call),
}

struct Call {
    name: &'static str,
    target: Arc<Target>,
    method: GrpcMethod,
    timeout: Duration,
    retries: u32,
    failure_chance: f64,
}

/// Where a `service_address`/`service_port` pair goes: its own address, or the endpoints the resolver
/// maps it to (used round-robin). With a `THESPIAN_RESOLVE_FILE` the endpoints follow the file: they are
/// rebuilt when it changes, keeping the connections of endpoints that stay.
pub struct Target {
    /// `http://gilbert:80`, for messages.
    label: String,
    host: String,
    port: u16,
    resolver: Resolver,
    /// The endpoints, and the resolver generation they were built from.
    endpoints: RwLock<(u64, Arc<[Arc<TargetEndpoint>]>)>,
    next: AtomicUsize,
}

struct TargetEndpoint {
    authority: String,
    endpoint: client::Endpoint,
}

impl Target {
    /// The endpoints in effect, re-resolved first if the resolver has changed.
    fn current(&self) -> Arc<[Arc<TargetEndpoint>]> {
        self.resolver.refresh(false);
        let generation = self.resolver.generation();
        {
            let cached = self.endpoints.read().unwrap_or_else(PoisonError::into_inner);
            if cached.0 == generation {
                return cached.1.clone();
            }
        }
        let mut cached = self.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        if cached.0 != generation {
            let map = self.resolver.map();
            let rebuilt = endpoints_for(&self.host, self.port, &map, &cached.1).unwrap_or_else(|e| {
                tracing::warn!("{}: {}; keeping the previous endpoints", self.label, e.message);
                cached.1.to_vec()
            });
            *cached = (generation, rebuilt.into());
        }
        cached.1.clone()
    }

    fn pick(&self) -> Arc<TargetEndpoint> {
        let endpoints = self.current();
        let i = if endpoints.len() == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        endpoints[i % endpoints.len()].clone()
    }

    /// Whether a send that never reached its endpoint is tried again elsewhere. Only when the endpoints
    /// follow a file: its writer (`thespctl up`) swaps replicas under traffic and promises the file lists
    /// live ones; a fixed `THESPIAN_RESOLVE` keeps its documented behaviour (a dead endpoint fails).
    fn retries_unsent(&self) -> bool {
        matches!(self.resolver, Resolver::File(_))
    }

    /// After a call that never reached its endpoint: re-read the resolver now, so the next pick sees a
    /// replica that was swapped out already gone.
    fn refresh_now(&self) {
        self.resolver.refresh(true);
    }
}

/// The endpoints `host`:`port` resolves to in `map` (or its own address), reusing the entries of
/// `previous` that stay, so their connections carry on.
fn endpoints_for(
    host: &str,
    port: u16,
    map: &ResolveMap,
    previous: &[Arc<TargetEndpoint>],
) -> Result<Vec<Arc<TargetEndpoint>>, BuildError> {
    let own = [format!("{host}:{port}")];
    let authorities = map.lookup(host, port).unwrap_or(&own);
    let mut endpoints = Vec::with_capacity(authorities.len());
    for authority in authorities {
        if let Some(kept) = previous.iter().find(|e| e.authority == *authority) {
            endpoints.push(kept.clone());
            continue;
        }
        let uri = format!("http://{authority}");
        let bad = |message: String| BuildError {
            name: format!("{host}:{port}"),
            uri: uri.clone(),
            message,
        };
        let origin: http::Uri = uri
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        // No connect timeout of its own: the call's timeout bounds connecting and calling together.
        let endpoint = client::Endpoint::new(origin, None).map_err(|e| bad(e.to_string()))?;
        endpoints.push(Arc::new(TargetEndpoint {
            authority: authority.clone(),
            endpoint,
        }));
    }
    Ok(endpoints)
}

/// Names live as long as the process (the config never changes), so they are leaked once at start-up
/// and span names are borrowed, never copied, per request.
fn leak(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}

struct Compiler {
    resolver: Resolver,
    targets: Vec<((String, u16), Arc<Target>)>,
}

impl Compiler {
    fn function(&mut self, f: &config::Function) -> Result<Func, BuildError> {
        let mut ops = Vec::with_capacity(f.operations.len());
        for op in &f.operations {
            ops.push(match op {
                Operation::Action(a) => Op::One(self.step(a)?),
                Operation::ConcurrentActions(actions) => {
                    Op::All(actions.iter().map(|a| self.step(a)).collect::<Result<_, _>>()?)
                }
            });
        }
        Ok(Func {
            name: leak(&f.tracing_name),
            ops,
        })
    }

    fn step(&mut self, action: &Action) -> Result<Step, BuildError> {
        Ok(match action {
            Action::Sleep(s) => Step::Sleep {
                name: leak(&s.tracing_name),
                duration: Duration::from_millis(s.duration_ms),
                failure_chance: s.failure_chance.unwrap_or(0.0),
            },
            Action::Function(f) => Step::Func(self.function(f)?),
            Action::CallService(c) => Step::Call(Call {
                name: leak(&c.display_name()),
                target: self.target(c)?,
                method: c.grpc_method,
                timeout: c.timeout(),
                retries: c.retries.unwrap_or(0),
                failure_chance: c.failure_chance.unwrap_or(0.0),
            }),
        })
    }

    /// One `Target` per distinct host/port, so calls from different actions share channels.
    fn target(&mut self, c: &config::CallService) -> Result<Arc<Target>, BuildError> {
        let key = (c.host().to_ascii_lowercase(), c.service_port);
        if let Some((_, t)) = self.targets.iter().find(|(k, _)| *k == key) {
            return Ok(t.clone());
        }
        let endpoints =
            endpoints_for(c.host(), c.service_port, &self.resolver.map(), &[]).map_err(|e| BuildError {
                name: c.display_name().into_owned(),
                ..e
            })?;
        let target = Arc::new(Target {
            label: format!("http://{}:{}", c.host(), c.service_port),
            host: c.host().to_owned(),
            port: c.service_port,
            endpoints: RwLock::new((self.resolver.generation(), endpoints.into())),
            resolver: self.resolver.clone(),
            next: AtomicUsize::new(0),
        });
        self.targets.push((key, target.clone()));
        Ok(target)
    }
}

type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'a>>;

impl Behavior {
    pub fn new(config: &Config, resolve: &ResolveMap, tracer: Tracer) -> Result<Behavior, BuildError> {
        Self::with_resolver(config, Resolver::Fixed(Arc::new(resolve.clone())), tracer)
    }

    /// Like [`Behavior::new`], with calls resolved through `resolver` (a file that can change at run time).
    pub fn with_resolver(
        config: &Config,
        resolver: Resolver,
        tracer: Tracer,
    ) -> Result<Behavior, BuildError> {
        let mut compiler = Compiler {
            resolver,
            targets: Vec::new(),
        };
        let mut methods = [None, None, None];
        for (slot, method) in methods.iter_mut().zip(GrpcMethod::ALL) {
            if let Some(f) = config.method(method) {
                *slot = Some(compiler.function(f)?);
            }
        }
        Ok(Behavior { methods, tracer })
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// Whether `method` answers OK at once (its config is `null`).
    pub fn is_null(&self, method: GrpcMethod) -> bool {
        self.methods[method as usize].is_none()
    }

    /// Acts out `method` for one request.
    pub async fn act(&self, method: GrpcMethod, incoming: &Incoming) -> Result<(), Failure> {
        let Some(func) = &self.methods[method as usize] else {
            // Still a span per request when exporting, named after the RPC.
            let _span = self
                .tracer
                .start(rpc_name(method), SpanKind::Server, incoming.parent, true);
            return Ok(());
        };
        let mut span = self
            .tracer
            .start(func.name, SpanKind::Server, incoming.parent, true);
        span.attributes(|| {
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "thespian.Thespian"),
                KeyValue::new("rpc.method", method.as_str()),
                KeyValue::new("thespian.hops", i64::from(incoming.hops)),
            ]
        });
        let result = self.ops(&func.ops, span.cx(), incoming).await;
        match &result {
            Ok(()) => {
                tracing::debug!(trace_id = %span.cx().trace_id_hex(), span = func.name, method = method.as_str(), "answered OK")
            }
            Err(f) => {
                span.fail(&f.message);
                tracing::debug!(trace_id = %span.cx().trace_id_hex(), span = func.name, method = method.as_str(), code = ?f.code, "answered with an error");
            }
        }
        result
    }

    async fn ops(&self, ops: &[Op], parent: SpanCx, incoming: &Incoming) -> Result<(), Failure> {
        for op in ops {
            match op {
                Op::One(step) => self.step(step, parent, incoming).await?,
                Op::All(steps) => {
                    // Wait for all of them (no cancelling siblings), then report the first failure.
                    let results =
                        futures_util::future::join_all(steps.iter().map(|s| self.step(s, parent, incoming)))
                            .await;
                    results.into_iter().collect::<Result<Vec<()>, Failure>>()?;
                }
            }
        }
        Ok(())
    }

    fn step<'a>(&'a self, step: &'a Step, parent: SpanCx, incoming: &'a Incoming) -> StepFuture<'a> {
        match step {
            Step::Sleep {
                name,
                duration,
                failure_chance,
            } => Box::pin(self.sleep(name, *duration, *failure_chance, parent)),
            Step::Func(f) => Box::pin(async move {
                let mut span = self.tracer.start(f.name, SpanKind::Internal, Some(parent), false);
                let result = self.ops(&f.ops, span.cx(), incoming).await;
                if let Err(failure) = &result {
                    span.fail(&failure.message);
                }
                result
            }),
            Step::Call(call) => Box::pin(self.call(call, parent, incoming)),
        }
    }

    async fn sleep(
        &self,
        name: &'static str,
        duration: Duration,
        failure_chance: f64,
        parent: SpanCx,
    ) -> Result<(), Failure> {
        let mut span = self.tracer.start(name, SpanKind::Internal, Some(parent), false);
        span.attributes(|| vec![KeyValue::new("thespian.duration_ms", duration.as_millis() as i64)]);
        crate::timer::sleep(duration).await;
        if roll(failure_chance) {
            let message = format!("`{name}` failed (failure_chance {failure_chance})");
            return Err(fail_here(&mut span, name, message));
        }
        Ok(())
    }

    async fn call(&self, call: &Call, parent: SpanCx, incoming: &Incoming) -> Result<(), Failure> {
        let name = call.name;
        let mut span = self.tracer.start(name, SpanKind::Client, Some(parent), false);
        span.attributes(|| {
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "thespian.Thespian"),
                KeyValue::new("rpc.method", call.method.as_str()),
                KeyValue::new("server.address", call.target.label.clone()),
            ]
        });
        if roll(call.failure_chance) {
            let message = format!(
                "`{name}` failed (failure_chance {}): the call was not sent",
                call.failure_chance
            );
            return Err(fail_here(&mut span, name, message));
        }
        let mut traceparent = match AsciiMetadataValue::try_from(&span.cx().traceparent_bytes()[..]) {
            Ok(v) => v,
            Err(_) => unreachable_traceparent(),
        };
        // Never indexed: every call's value is new, so adding it to the HPACK tables would only evict
        // headers that do repeat (both peers save the work).
        traceparent.set_sensitive(true);
        let hops = MetadataValue::from(incoming.hops + 1);
        let mut attempt = 0;
        // Sends that never reached a callee (see `never_reached`): retried at once on the next endpoint,
        // outside `retries`, at most once per endpoint plus one.
        let mut unsent = 0;
        loop {
            let endpoint = call.target.pick();
            let remaining = incoming
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()));
            let (limit, by_deadline) = match remaining {
                Some(r) if r < call.timeout => (r, true),
                _ => (call.timeout, false),
            };
            if limit.is_zero() {
                let message = format!(
                    "`{name}` failed: the caller's deadline ran out before calling {}",
                    call.target.label
                );
                return Err(fail_here(&mut span, name, message));
            }
            let mut md = MetadataMap::with_capacity(4);
            md.insert(&*keys::TRACEPARENT, traceparent.clone());
            if let Some(state) = &incoming.tracestate {
                md.insert(&*keys::TRACESTATE, state.clone());
            }
            md.insert(&*keys::HOPS, hops.clone());
            md.insert(&*keys::GRPC_TIMEOUT, client::grpc_timeout(limit));
            // The callee enforces the `grpc-timeout` it receives (a tonic server answers CANCELLED when it
            // expires); this timeout also covers connecting, and whichever fires first wins.
            let send = async {
                let client = endpoint.endpoint.client().await?;
                client.unary(call.method, md).await
            };
            let outcome = tokio::time::timeout(limit, send).await;
            // A send that never reached the callee (see `client::never_sent`: a replica swapped out under
            // us): the next endpoint at once, after re-reading the resolve file.
            if let Ok(Err(status)) = &outcome
                && call.target.retries_unsent()
                && unsent <= call.target.current().len()
                && client::never_sent(status)
            {
                tracing::debug!(trace_id = %span.cx().trace_id_hex(), span = name, endpoint = %endpoint.authority, "not sent ({}); trying the next endpoint", status.message());
                unsent += 1;
                call.target.refresh_now();
                continue;
            }
            // A CANCELLED that no Thespian answered (no service metadata) is the callee's server giving up
            // at the `grpc-timeout` we sent: a timeout (a cancelled incoming request drops this future
            // instead).
            let outcome = match outcome {
                Ok(Err(status))
                    if status.code() == Code::Cancelled
                        && status.metadata().get(SERVICE_HEADER).is_none() =>
                {
                    None
                }
                Ok(result) => Some(result),
                Err(_elapsed) => None,
            };
            let (failure, logged_by_callee) = match outcome {
                Some(Ok(_)) => return Ok(()),
                Some(Err(status)) if status.code() == Code::FailedPrecondition => {
                    // The hop limit (or another precondition) at the callee: retrying cannot help, and
                    // the caller up the chain should see the same refusal, not a pile of INTERNALs.
                    tracing::debug!(trace_id = %span.cx().trace_id_hex(), span = name, "refused downstream: {}", status.message());
                    span.fail(status.message());
                    return Err(Failure {
                        code: Code::FailedPrecondition,
                        message: status.message().to_owned(),
                    });
                }
                Some(Err(status)) => match status
                    .metadata()
                    .get(SERVICE_HEADER)
                    .and_then(|v| v.to_str().ok())
                {
                    Some(callee) => (
                        format!(
                            "`{name}` failed: {callee} answered {:?}: {}",
                            status.code(),
                            status.message()
                        ),
                        true,
                    ),
                    None => (
                        format!(
                            "`{name}` failed: {} ({}) {:?}: {}",
                            call.target.label,
                            endpoint.authority,
                            status.code(),
                            status.message()
                        ),
                        false,
                    ),
                },
                None if by_deadline => (
                    format!(
                        "`{name}` failed: the caller's deadline ran out after {} ms calling {}",
                        limit.as_millis(),
                        call.target.label
                    ),
                    false,
                ),
                None => (
                    format!(
                        "`{name}` timed out after {} ms calling {} ({})",
                        limit.as_millis(),
                        call.target.label,
                        endpoint.authority
                    ),
                    false,
                ),
            };
            if attempt >= call.retries || by_deadline {
                let message = if attempt > 0 {
                    format!("{failure} (after {} attempts)", attempt + 1)
                } else {
                    failure
                };
                if logged_by_callee {
                    // The callee logged the failure where it happened; here it is only context.
                    tracing::debug!(trace_id = %span.cx().trace_id_hex(), span = name, "{message}");
                    span.fail(&message);
                    return Err(Failure::internal(message));
                }
                return Err(fail_here(&mut span, name, message));
            }
            tracing::debug!(trace_id = %span.cx().trace_id_hex(), span = name, attempt, "retrying: {failure}");
            attempt += 1;
            // A short, growing, jittered pause so retries against a down peer do not spin.
            let pause = Duration::from_millis((25u64 << attempt.min(5)) + fastrand::u64(0..25));
            let pause = remaining.map_or(pause, |r| pause.min(r));
            tokio::time::sleep(pause).await;
        }
    }
}

/// `traceparent` is built from hex digits and dashes only, so it is always valid ASCII metadata.
#[cold]
fn unreachable_traceparent() -> AsciiMetadataValue {
    AsciiMetadataValue::from_static("00-00000000000000000000000000000000-0000000000000000-00")
}

fn roll(chance: f64) -> bool {
    chance > 0.0 && fastrand::f64() < chance
}

/// A failure that originates here: logged once (at warn, with the trace id), recorded on the span.
fn fail_here(span: &mut Span, name: &'static str, message: String) -> Failure {
    tracing::warn!(trace_id = %span.cx().trace_id_hex(), span = name, "{message}");
    span.fail(&message);
    Failure::internal(message)
}

pub fn rpc_name(method: GrpcMethod) -> &'static str {
    match method {
        GrpcMethod::A => "thespian.Thespian/A",
        GrpcMethod::B => "thespian.Thespian/B",
        GrpcMethod::C => "thespian.Thespian/C",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behavior(json: &str, resolve: &str) -> Behavior {
        let config = Config::from_json(json).expect("config");
        let resolve = ResolveMap::parse(resolve).expect("resolve");
        Behavior::new(&config, &resolve, Tracer::ids_only()).expect("behavior")
    }

    #[test]
    fn calls_to_the_same_service_share_one_target_and_resolve_round_robin() {
        let call = |name: &str| {
            format!(
                r#"{{"Action":{{"CallService":{{"tracing_name":"{name}","service_address":"http://Gilbert","service_port":"80","grpc_method":"A"}}}}}}"#
            )
        };
        let json = format!(
            r#"{{"grpc_method_a":{{"tracing_name":"f","operations":[{},{}]}}}}"#,
            call("one"),
            call("two")
        );
        let b = behavior(&json, "gilbert:80=127.0.0.1:1,127.0.0.1:2");
        let Some(f) = &b.methods[0] else {
            panic!("method a")
        };
        let (Op::One(Step::Call(one)), Op::One(Step::Call(two))) = (&f.ops[0], &f.ops[1]) else {
            panic!("calls")
        };
        assert!(Arc::ptr_eq(&one.target, &two.target));
        let picks: Vec<String> = (0..4).map(|_| one.target.pick().authority.clone()).collect();
        assert_eq!(
            picks,
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"]
        );
        assert_eq!(one.target.label, "http://Gilbert:80");
        assert!(b.is_null(GrpcMethod::B));
    }

    #[test]
    fn unresolved_addresses_are_called_directly() {
        let json = r#"{"grpc_method_a":{"tracing_name":"f","operations":[{"Action":{"CallService":{"service_address":"http://127.0.0.1","service_port":"6379","grpc_method":"B"}}}]}}"#;
        let b = behavior(json, "gilbert:80=127.0.0.1:1");
        let Some(f) = &b.methods[0] else {
            panic!("method a")
        };
        let Op::One(Step::Call(call)) = &f.ops[0] else {
            panic!("call")
        };
        assert_eq!(call.name, "127.0.0.1:6379/B");
        assert_eq!(call.target.pick().authority, "127.0.0.1:6379");
        assert_eq!(call.timeout, config::DEFAULT_CALL_TIMEOUT);
    }

    #[tokio::test]
    async fn failures_name_the_action_and_concurrent_steps_all_finish() {
        let json = r#"{"grpc_method_a":{"tracing_name":"f","operations":[{"ConcurrentActions":[
            {"Sleep":{"tracing_name":"quick","duration_ms":1,"failure_chance":1.0}},
            {"Function":{"tracing_name":"inner","operations":[{"Action":{"Sleep":{"tracing_name":"slow","duration_ms":30}}}]}}]}]}}"#;
        let b = behavior(json, "");
        let started = Instant::now();
        let failure = b
            .act(GrpcMethod::A, &Incoming::default())
            .await
            .expect_err("fails");
        assert!(
            started.elapsed() >= Duration::from_millis(30),
            "waited for the slow sibling"
        );
        assert_eq!(failure.code, Code::Internal);
        assert_eq!(failure.message, "`quick` failed (failure_chance 1)");
        assert_eq!(b.act(GrpcMethod::C, &Incoming::default()).await, Ok(()));
    }

    #[test]
    fn long_messages_are_capped() {
        let f = Failure::internal("é".repeat(2000));
        assert!(f.message.len() <= MAX_MESSAGE_LEN + '…'.len_utf8());
    }
}
