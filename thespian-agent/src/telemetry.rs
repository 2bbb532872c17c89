//! Traces and logs.
//!
//! **Trace context** is handled by hand rather than through `tracing-opentelemetry`: the agent's fast path
//! (a `null` method) must stay within 10 % of a bare tonic server, and W3C context must propagate even when
//! nothing is exported. So a span is a [`SpanCx`] (trace id, span id, sampled flag: three integers) plus,
//! only when an OTLP endpoint is configured, a real OpenTelemetry SDK span named by its `tracing_name` and
//! exported in batches. With no exporter a span costs two random numbers.
//!
//! **Logs** are JSON lines on stdout (`timestamp`, `level`, `service`, `trace_id`, `span`, `message`, then
//! the event's other fields), written by [`JsonLogLayer`], filtered by `RUST_LOG` (default `info`).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::Context as LayerContext;

/// The W3C trace context of one span: what goes into an outgoing `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanCx {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl SpanCx {
    /// Parses a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`); `None` for anything invalid, as
    /// the spec asks (the request then starts a new trace).
    pub fn parse_traceparent(value: &[u8]) -> Option<SpanCx> {
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = hex_u64(&value[0..2])?;
        // Version ff is invalid; version 00 is exactly 55 bytes; later versions may append `-...`.
        if version == 0xff || (version == 0 && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
            return None;
        }
        let trace_id = (u128::from(hex_u64(&value[3..19])?) << 64) | u128::from(hex_u64(&value[19..35])?);
        let span_id = hex_u64(&value[36..52])?;
        let flags = hex_u64(&value[53..55])?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(SpanCx {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// This context as a `traceparent` header value.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_bytes()).into_owned()
    }

    /// The `traceparent` value's bytes, written without the formatting machinery (once per outgoing
    /// call): `00-<32 hex>-<16 hex>-<2 hex>`, lowercase.
    pub fn traceparent_bytes(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, digit) in out[3..35].iter_mut().enumerate() {
            *digit = HEX[((self.trace_id >> (124 - 4 * i)) & 0xf) as usize];
        }
        for (i, digit) in out[36..52].iter_mut().enumerate() {
            *digit = HEX[((self.span_id >> (60 - 4 * i)) & 0xf) as usize];
        }
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
    }

    /// The trace id as 32 lowercase hex digits (how logs and backends show it).
    pub fn trace_id_hex(&self) -> TraceIdHex {
        TraceIdHex(self.trace_id)
    }
}

/// Displays a trace id as 32 hex digits without allocating.
#[derive(Clone, Copy)]
pub struct TraceIdHex(u128);

impl fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

fn hex_u64(digits: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for &d in digits {
        // Uppercase hex is invalid in traceparent.
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | u64::from(v);
    }
    Some(n)
}

/// Starts spans. Without an exporter it only makes ids; with one it also records SDK spans.
#[derive(Clone, Default)]
pub struct Tracer {
    sdk: Option<(SdkTracerProvider, SdkTracer)>,
}

/// Why telemetry could not start (a bad exporter endpoint).
#[derive(Debug, thiserror::Error)]
#[error("{variable}: cannot export traces to \"{endpoint}\": {message}")]
pub struct TelemetryError {
    pub variable: &'static str,
    pub endpoint: String,
    pub message: String,
}

/// Where spans are exported, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// Neither `OTEL_EXPORTER_OTLP_ENDPOINT` (nor `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) nor
    /// `OTEL_BACKEND_ADDRESS` is set: nothing is exported.
    None,
    /// The standard variables are set: the OTLP exporter reads them itself (endpoint, headers, timeout).
    Standard {
        variable: &'static str,
        endpoint: String,
    },
    /// Legacy Thespian deployments set `OTEL_BACKEND_ADDRESS` (an OTLP/gRPC endpoint like `http://tempo:4317`).
    Legacy { endpoint: String },
}

impl Export {
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Export {
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            if let Some(endpoint) = var(variable).filter(|v| !v.trim().is_empty()) {
                return Export::Standard { variable, endpoint };
            }
        }
        match var("OTEL_BACKEND_ADDRESS").filter(|v| !v.trim().is_empty()) {
            Some(endpoint) => Export::Legacy { endpoint },
            None => Export::None,
        }
    }
}

impl Tracer {
    /// A tracer that only makes ids (propagation without export).
    pub fn ids_only() -> Tracer {
        Tracer { sdk: None }
    }

    /// A tracer that exports over OTLP/gRPC in batches. Must be called inside the tokio runtime (the
    /// exporter's channel lives there). A collector that is down never blocks: the batch queue drops spans.
    pub fn new(export: &Export, service: &str) -> Result<Tracer, TelemetryError> {
        use opentelemetry_otlp::WithExportConfig as _;
        let (variable, endpoint, explicit) = match export {
            Export::None => return Ok(Tracer::ids_only()),
            Export::Standard { variable, endpoint } => (*variable, endpoint, false),
            Export::Legacy { endpoint } => ("OTEL_BACKEND_ADDRESS", endpoint, true),
        };
        let error = |message: String| TelemetryError {
            variable,
            endpoint: endpoint.clone(),
            message,
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(error(
                "expected an http:// URL of an OTLP/gRPC collector, e.g. http://127.0.0.1:4317".into(),
            ));
        }
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if explicit {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let exporter = builder.build().map_err(|e| error(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "thespian-agent");
        Ok(Tracer {
            sdk: Some((provider, tracer)),
        })
    }

    pub fn is_exporting(&self) -> bool {
        self.sdk.is_some()
    }

    /// Starts a span named `name`, child of `parent` (a remote parent from `traceparent`, or a local span),
    /// or the root of a new trace.
    pub fn start(&self, name: &'static str, kind: SpanKind, parent: Option<SpanCx>, remote: bool) -> Span {
        let Some((_, tracer)) = &self.sdk else {
            let cx = SpanCx {
                trace_id: parent.map_or_else(|| fastrand::u128(1..), |p| p.trace_id),
                span_id: fastrand::u64(1..),
                sampled: parent.is_none_or(|p| p.sampled),
            };
            return Span { cx, otel: None };
        };
        let parent_cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(p.trace_id),
                SpanId::from(p.span_id),
                if p.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                remote,
                TraceState::NONE,
            )),
            None => Context::new(),
        };
        let span = tracer
            .span_builder(Cow::Borrowed(name))
            .with_kind(kind)
            .start_with_context(tracer, &parent_cx);
        let sc = span.span_context();
        let cx = SpanCx {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            sampled: sc.is_sampled(),
        };
        Span { cx, otel: Some(span) }
    }

    /// Flushes and stops the exporter, waiting at most `timeout` (a down collector must not hold the exit).
    pub fn shutdown(&self, timeout: Duration) {
        if let Some((provider, _)) = &self.sdk {
            let provider = provider.clone();
            // The SDK's shutdown blocks; keep it off the runtime's threads.
            let handle = std::thread::spawn(move || provider.shutdown_with_timeout(timeout));
            let _ = handle.join();
        }
    }
}

/// One span: its context, and the SDK span when exporting (ended when dropped).
pub struct Span {
    cx: SpanCx,
    otel: Option<opentelemetry_sdk::trace::Span>,
}

impl Span {
    pub fn cx(&self) -> SpanCx {
        self.cx
    }

    /// Adds attributes (built lazily: nothing is built when not exporting).
    pub fn attributes(&mut self, attrs: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(span) = &mut self.otel {
            span.set_attributes(attrs());
        }
    }

    /// Marks the span failed with `message`.
    pub fn fail(&mut self, message: &str) {
        if let Some(span) = &mut self.otel {
            span.set_status(Status::error(message.to_owned()));
        }
    }
}

// ---- logs -----------------------------------------------------------------------------------------

/// Formats events as one JSON object per line on stdout.
pub struct JsonLogLayer {
    /// `,"service":"NAME"`, rendered once.
    service: String,
}

impl JsonLogLayer {
    pub fn new(service: &str) -> JsonLogLayer {
        let mut rendered = String::from(",\"service\":");
        push_json_str(&mut rendered, service);
        JsonLogLayer { service: rendered }
    }

    /// One log line (without the newline) for an event.
    fn render(&self, event: &Event<'_>) -> String {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = String::with_capacity(160 + fields.rest.len() + fields.message.len());
        line.push_str("{\"timestamp\":\"");
        let _ = SystemTime.format_time(&mut Writer::new(&mut line));
        line.push_str("\",\"level\":\"");
        line.push_str(level_str(*event.metadata().level()));
        line.push('"');
        line.push_str(&self.service);
        for (key, value) in [("trace_id", &fields.trace_id), ("span", &fields.span)] {
            if let Some(value) = value {
                let _ = write!(line, ",\"{key}\":");
                push_json_str(&mut line, value);
            }
        }
        line.push_str(",\"message\":");
        push_json_str(&mut line, &fields.message);
        line.push_str(&fields.rest);
        line.push_str(",\"target\":");
        push_json_str(&mut line, event.metadata().target());
        line.push('}');
        line
    }
}

impl<S: Subscriber> Layer<S> for JsonLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut line = self.render(event);
        line.push('\n');
        // One write per line (stdout is line-buffered); a closed stdout must not take the agent down.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

fn level_str(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    trace_id: Option<String>,
    span: Option<String>,
    /// The other fields as `,"key":value` fragments.
    rest: String,
}

impl Fields {
    fn push_key(&mut self, field: &Field) {
        self.rest.push(',');
        push_json_str(&mut self.rest, field.name());
        self.rest.push(':');
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "trace_id" => self.trace_id = Some(value.to_owned()),
            "span" => self.span = Some(value.to_owned()),
            _ => {
                self.push_key(field);
                push_json_str(&mut self.rest, value);
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "trace_id" | "span" => self.record_str(field, &format!("{value:?}")),
            _ => {
                self.push_key(field);
                push_json_str(&mut self.rest, &format!("{value:?}"));
            }
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push_key(field);
        let _ = write!(self.rest, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push_key(field);
        let _ = write!(self.rest, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push_key(field);
        let _ = write!(self.rest, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push_key(field);
        if value.is_finite() {
            let _ = write!(self.rest, "{value}");
        } else {
            push_json_str(&mut self.rest, &value.to_string());
        }
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Installs the JSON log layer as the global subscriber, filtered by `RUST_LOG` (default `info`).
/// Returns the `RUST_LOG` parse error, if any, for the caller to report as bad input.
pub fn init_logs(service: &str, rust_log: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    let filter = match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(directives) => tracing_subscriber::EnvFilter::builder()
            .parse(directives)
            .map_err(|e| format!("RUST_LOG: \"{directives}\" is not a valid filter: {e}"))?,
        None => tracing_subscriber::EnvFilter::new("info"),
    };
    let subscriber = tracing_subscriber::registry().with(JsonLogLayer::new(service).with_filter(filter));
    // Already set (a test harness, or an embedding program): keep theirs.
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_invalid_values() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = SpanCx::parse_traceparent(tp).expect("valid");
        assert_eq!(cx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(cx.span_id, 0x00f067aa0ba902b7);
        assert!(cx.sampled);
        assert_eq!(cx.traceparent().as_bytes(), tp);
        for _ in 0..100 {
            let cx = SpanCx {
                trace_id: fastrand::u128(1..),
                span_id: fastrand::u64(1..),
                sampled: fastrand::bool(),
            };
            let expected = format!(
                "00-{:032x}-{:016x}-{:02x}",
                cx.trace_id,
                cx.span_id,
                u8::from(cx.sampled)
            );
            assert_eq!(cx.traceparent(), expected);
            assert_eq!(SpanCx::parse_traceparent(expected.as_bytes()), Some(cx));
        }
        assert_eq!(cx.trace_id_hex().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");

        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
        ] {
            assert_eq!(
                SpanCx::parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version may carry more fields.
        let future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        assert_eq!(SpanCx::parse_traceparent(future).map(|c| c.sampled), Some(false));
    }

    #[test]
    fn id_only_spans_keep_the_parent_trace() {
        let tracer = Tracer::ids_only();
        let parent = SpanCx {
            trace_id: 7,
            span_id: 9,
            sampled: false,
        };
        let child = tracer.start("child", SpanKind::Internal, Some(parent), true).cx();
        assert_eq!((child.trace_id, child.sampled), (7, false));
        assert_ne!(child.span_id, 9);
        let root = tracer.start("root", SpanKind::Server, None, false).cx();
        assert!(root.trace_id != 0 && root.span_id != 0 && root.sampled);
    }

    #[test]
    fn export_settings_prefer_the_standard_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(Export::from_env(env(&[])), Export::None);
        assert_eq!(
            Export::from_env(env(&[("OTEL_BACKEND_ADDRESS", "http://tempo:4317")])),
            Export::Legacy {
                endpoint: "http://tempo:4317".into()
            }
        );
        assert_eq!(
            Export::from_env(env(&[
                ("OTEL_BACKEND_ADDRESS", "http://a:1"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:2")
            ])),
            Export::Standard {
                variable: "OTEL_EXPORTER_OTLP_ENDPOINT",
                endpoint: "http://b:2".into()
            }
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
        let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }
}
