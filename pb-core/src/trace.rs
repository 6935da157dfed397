//! Distributed tracing across processes: a call carries the W3C trace context
//! ([`TraceParent`]) of the span it is made in, and the callee's `pb.call` span becomes that
//! span's child, so one trace spans every node a call touches.
//!
//! pb does not depend on a tracing system: a [`Propagator`], installed once per process with
//! [`set_propagator`], is the bridge. It reads the trace context of the current span when a
//! call is made, and gives a received context to the callee's `pb.call` span. With
//! OpenTelemetry (`tracing-opentelemetry`), `current` is the current span's
//! `OpenTelemetrySpanExt::context()` and `set_parent` its `set_parent`; the `tracing_otel`
//! example has one. Without a propagator, calls carry no trace context and cost nothing more.
//!
//! The call's own `pb.call` span (direction `out`) is current when `current` runs, so with a
//! subscriber that records pb's spans the callee's span is the child of the caller's `pb.call`
//! span, itself the child of whatever span made the call.
//!
//! ```
//! use pb::trace::{Propagator, TraceParent};
//!
//! /// Every call belongs to one fixed trace (a real propagator asks the tracing system).
//! struct Fixed;
//!
//! impl Propagator for Fixed {
//!     fn current(&self) -> Option<TraceParent> {
//!         TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     }
//!     fn set_parent(&self, span: &tracing::Span, parent: TraceParent) {
//!         span.in_scope(|| tracing::debug!(%parent, "caller's trace"));
//!     }
//! }
//!
//! assert!(pb::trace::set_propagator(Fixed));
//! // Only one per process.
//! assert!(!pb::trace::set_propagator(Fixed));
//! ```

use std::sync::OnceLock;

pub use pb_proto::message::TraceParent;

/// The bridge between pb's calls and a tracing system's context (see the module's docs).
pub trait Propagator: Send + Sync + 'static {
    /// The trace context of the span current where a call is being made, if there is one.
    fn current(&self) -> Option<TraceParent>;

    /// Make `span`, the callee's `pb.call` span for a call that carried `parent`, a child of
    /// the caller's span.
    fn set_parent(&self, span: &tracing::Span, parent: TraceParent);
}

static PROPAGATOR: OnceLock<Box<dyn Propagator>> = OnceLock::new();

/// Install this process's propagator. Returns `false`, changing nothing, if one was installed
/// already.
pub fn set_propagator(propagator: impl Propagator) -> bool {
    PROPAGATOR.set(Box::new(propagator)).is_ok()
}

/// The context a call made here carries.
#[inline]
pub(crate) fn outgoing() -> Option<TraceParent> {
    PROPAGATOR.get()?.current()
}

/// The callee's span of a call that carried `parent`.
pub(crate) fn incoming(span: &tracing::Span, parent: TraceParent) {
    if let Some(p) = PROPAGATOR.get() {
        p.set_parent(span, parent);
    }
}
