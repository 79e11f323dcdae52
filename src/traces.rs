//! OpenTelemetry traces (`--otlp-endpoint`, OTLP over gRPC, with the
//! official crates): a span per management call, and per sampled decision
//! (`--trace-sample-ratio`: one decision in every 1/ratio). A caller's W3C
//! `traceparent` (gRPC metadata; the headers ext_authz and forward-auth
//! pass) makes the span its child. Attributes name the key, the account,
//! the decision and the scope: never a token, a secret or a path.
//!
//! Off (no endpoint, or ratio 0) a decision pays one load and one branch:
//! nothing is parsed, allocated or counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::authz::Decision;

static TRACES: OnceLock<Traces> = OnceLock::new();

/// The installed tracer and its sampling.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Trace one decision in this many (0: none).
    every: u64,
    seen: AtomicU64,
}

/// Where spans go and how many decisions are traced.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// An OTLP/gRPC collector: http(s)://host:port (4317 by convention).
    pub endpoint: String,
    /// The share of decisions traced, 0 to 1.
    pub sample_ratio: f64,
}

/// Starts exporting spans; call once, inside the runtime.
pub fn install(settings: &TraceSettings) -> Result<(), String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| format!("--otlp-endpoint {}: {error}", settings.endpoint))?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("scopegate")
                .build(),
        )
        .build();
    let every = match settings.sample_ratio {
        ratio if ratio <= 0.0 => 0,
        ratio => (1.0 / ratio.min(1.0)).round().max(1.0) as u64,
    };
    let traces = Traces {
        tracer: provider.tracer("scopegate"),
        provider,
        every,
        seen: AtomicU64::new(0),
    };
    TRACES
        .set(traces)
        .map_err(|_| "traces are installed already".to_owned())
}

/// Sends what is buffered and stops (on a blocking thread: the SDK waits).
pub async fn shutdown() {
    if let Some(traces) = TRACES.get() {
        let provider = traces.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// The tracer, when this decision is one to trace.
#[inline]
pub fn sampled() -> Option<&'static Traces> {
    let traces = TRACES.get()?;
    if traces.every == 0 {
        return None;
    }
    let seen = traces.seen.fetch_add(1, Ordering::Relaxed);
    (seen % traces.every == 0).then_some(traces)
}

/// The tracer for management calls (every one, when traces are on).
pub fn installed() -> Option<&'static Traces> {
    TRACES.get()
}

/// The caller's `traceparent` and `tracestate` headers (HTTP, or gRPC
/// metadata), as text.
pub fn context_of(headers: &http::HeaderMap) -> (Option<String>, Option<String>) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    (header("traceparent"), header("tracestate"))
}

/// The W3C trace context a caller sent (`traceparent`, `tracestate`).
struct Carrier<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The parent a caller's `traceparent` names (none, or one that does not
/// parse: a root span).
fn parent(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    if traceparent.is_none() {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&Carrier {
        traceparent,
        tracestate,
    })
}

impl Traces {
    /// One decision's span: door, key, account, decision, scope.
    pub fn decision(
        &self,
        door: &'static str,
        traceparent: Option<&str>,
        started: SystemTime,
        decision: &Decision,
        scope: Option<&str>,
    ) {
        let mut attributes = vec![
            KeyValue::new("scopegate.door", door),
            KeyValue::new("decision", decision.reason()),
        ];
        if let Some((key_id, account)) = decision.key() {
            attributes.push(KeyValue::new("key_id", key_id.to_string()));
            attributes.push(KeyValue::new("account", account.to_string()));
        }
        if let Some(scope) = scope {
            attributes.push(KeyValue::new("scope", scope.to_owned()));
        }
        self.tracer
            .span_builder(door)
            .with_kind(SpanKind::Server)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent(traceparent, None));
    }

    /// One management call's span: its method (or route) and outcome.
    pub fn call(
        &self,
        name: String,
        (traceparent, tracestate): (Option<&str>, Option<&str>),
        started: SystemTime,
        attributes: Vec<KeyValue>,
    ) {
        // Ends (and is queued for export) when dropped, here.
        self.tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent(traceparent, tracestate));
    }
}

/// A decision being traced: when it started and the parent it names.
pub struct Traced {
    traces: &'static Traces,
    started: SystemTime,
    traceparent: Option<String>,
}

/// Starts tracing this decision if it is sampled; `traceparent` is read
/// only then.
#[inline]
pub fn begin(traceparent: impl FnOnce() -> Option<String>) -> Option<Traced> {
    let traces = sampled()?;
    Some(Traced {
        traces,
        started: SystemTime::now(),
        traceparent: traceparent(),
    })
}

impl Traced {
    /// Ends the decision's span.
    pub fn end(&self, door: &'static str, decision: &Decision, scope: Option<&str>) {
        self.traces.decision(
            door,
            self.traceparent.as_deref(),
            self.started,
            decision,
            scope,
        );
    }
}
