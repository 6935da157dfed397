//! A call carries the W3C trace context its propagator reads where the call is made, and the
//! callee's propagator gets it with the callee's `pb.call` span; without a context, nothing is
//! carried. (The `tracing_otel` example does the same with OpenTelemetry across three nodes.)

mod common;

use std::cell::Cell;
use std::sync::Mutex;

use common::*;
use pb::trace::{Propagator, TraceParent};

thread_local! {
    /// The context of "the current span", as this test's tracing system sees it.
    static CURRENT: Cell<Option<TraceParent>> = const { Cell::new(None) };
}

/// What callees were given.
static RECEIVED: Mutex<Vec<TraceParent>> = Mutex::new(Vec::new());

struct Recorder;

impl Propagator for Recorder {
    fn current(&self) -> Option<TraceParent> {
        CURRENT.with(Cell::get)
    }

    fn set_parent(&self, _span: &tracing::Span, parent: TraceParent) {
        RECEIVED.lock().unwrap().push(parent);
    }
}

fn received() -> Vec<TraceParent> {
    std::mem::take(&mut *RECEIVED.lock().unwrap())
}

#[tokio::test]
async fn a_call_carries_the_callers_trace_context_to_the_callee() {
    assert!(pb::trace::set_propagator(Recorder));
    let (_server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = client.root();

    // No context where the call is made: none travels.
    assert_eq!(k.add(1, 2).await, Ok(3));
    assert_eq!(received(), vec![]);

    // A context: the callee gets exactly it.
    let ctx = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .expect("a valid traceparent");
    CURRENT.with(|c| c.set(Some(ctx)));
    assert_eq!(k.add(2, 2).await, Ok(4));
    // A dynamic call carries it too.
    let root = client.root_ref();
    let sum: i64 = root
        .call::<_, i64, TestError>("add", &(3i64, 4i64))
        .await
        .expect("a dynamic call");
    assert_eq!(sum, 7);
    // A one-way call carries it too (it used to carry none).
    root.send("add", &(3i64, 4i64)).expect("a one-way call");
    CURRENT.with(|c| c.set(None));
    // Calls are handled in order: once this one is answered, the one-way call has run.
    assert_eq!(k.add(0, 0).await, Ok(0));
    assert_eq!(received(), vec![ctx, ctx, ctx]);
}
