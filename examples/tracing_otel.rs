//! One trace across three nodes, exported to OpenTelemetry: a client (A) calls a front server
//! (B), whose handler calls a store (C). Each call carries the W3C trace context of the span it
//! is made in, and the callee's `pb.call` span is its child, so every span of the request is in
//! one trace, parent to child across both hops.
//!
//! ```text
//! cargo run --example tracing_otel
//! ```
//!
//! The three nodes run in one process, each with its own TCP connections on 127.0.0.1; the
//! trace context travels in the calls, not in the process. The spans are exported to stdout by
//! a small exporter of this example's own (no network, no collector); the program checks the
//! trace it printed and exits 0 only if it is one trace with the right parents.

use std::error::Error;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use pb::trace::{Propagator, TraceParent};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// C: the store.
#[pb::remote]
pub trait Store {
    async fn get(&self, key: String) -> Option<u64>;
}

struct Prices;

impl Store for Prices {
    async fn get(&self, key: String) -> Option<u64> {
        (key == "tea").then_some(3)
    }
}

/// B: the front, which asks the store.
#[pb::remote]
pub trait Front {
    async fn price(&self, item: String) -> Result<u64, String>;
}

struct Shop {
    store: StoreRef,
}

impl Front for Shop {
    async fn price(&self, item: String) -> Result<u64, String> {
        // Made inside B's `pb.call` span for the incoming call: the store's span is its child.
        match self.store.get(item.clone()).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(format!("no price for {item}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// pb's bridge to OpenTelemetry, through `tracing-opentelemetry`.
struct Otel;

impl Propagator for Otel {
    fn current(&self) -> Option<TraceParent> {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            parent_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        })
    }

    fn set_parent(&self, span: &tracing::Span, parent: TraceParent) {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.parent_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        if let Err(e) = span.set_parent(cx) {
            eprintln!("cannot set the caller's trace: {e}");
        }
    }
}

/// Prints each finished span as a line, and keeps it for the check.
#[derive(Debug, Clone, Default)]
struct Stdout(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Stdout {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        for span in &batch {
            let direction = span
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "direction")
                .map(|kv| format!(" {}", kv.value))
                .unwrap_or_default();
            println!(
                "span {}{direction}: trace {} id {} parent {}",
                span.name,
                span.span_context.trace_id(),
                span.span_context.span_id(),
                span.parent_span_id,
            );
        }
        self.0.lock().expect("the span list").extend(batch);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let exported = Stdout::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exported.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tracing_otel")));
    tracing::subscriber::set_global_default(subscriber)?;
    if !pb::trace::set_propagator(Otel) {
        return Err("a propagator was installed already".into());
    }

    // C, then B (which dials C), then A (which dials B).
    let c = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(StoreRef::new(Prices));
    let b_to_c = pb::Client::connect(c.local_addr()).await?;
    let b = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(FrontRef::new(Shop {
            store: b_to_c.root(),
        }));
    let a_to_b = pb::Client::connect(b.local_addr()).await?;
    let front: FrontRef = a_to_b.root();

    let request = tracing::info_span!("request", item = "tea");
    let price = front.price("tea".into()).instrument(request).await?;
    println!("the price of tea: {price}");

    a_to_b.close().await;
    b_to_c.close().await;
    b.shutdown().await;
    c.shutdown().await;
    provider.force_flush()?;

    check(&exported.0.lock().expect("the span list"), price)
}

/// One trace: `request` (A) → `pb.call` out (A) → `pb.call` in (B) → `pb.call` out (B) →
/// `pb.call` in (C).
fn check(spans: &[SpanData], price: u64) -> Result<(), Box<dyn Error>> {
    if price != 3 {
        return Err(format!("expected the price 3, got {price}").into());
    }
    let find = |name: &str, direction: Option<&str>, parent: SpanId| {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && s.parent_span_id == parent
                    && direction.is_none_or(|d| {
                        s.attributes
                            .iter()
                            .any(|kv| kv.key.as_str() == "direction" && kv.value.as_str() == d)
                    })
            })
            .ok_or_else(|| format!("no {name} {direction:?} span whose parent is {parent}"))
    };
    let request = find("request", None, SpanId::INVALID)?;
    let a_out = find("pb.call", Some("out"), request.span_context.span_id())?;
    let b_in = find("pb.call", Some("in"), a_out.span_context.span_id())?;
    let b_out = find("pb.call", Some("out"), b_in.span_context.span_id())?;
    let c_in = find("pb.call", Some("in"), b_out.span_context.span_id())?;
    let trace = request.span_context.trace_id();
    for s in [a_out, b_in, b_out, c_in] {
        if s.span_context.trace_id() != trace {
            return Err(format!("span {} is in another trace", s.span_context.span_id()).into());
        }
    }
    println!("one trace {trace}: request -> A call -> B -> B call -> C");
    Ok(())
}
