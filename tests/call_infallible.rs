//! Methods that cannot fail return their value itself (`-> T`, or nothing), locally and over
//! the wire; their stubs' error is `CallError<pb::Never>`.

mod common;

use pb::{CallError, Never};

#[pb::remote]
trait Counter {
    async fn next(&self) -> u64;
    async fn reset(&self);
    async fn fallible(&self, fail: bool) -> Result<u64, String>;
}

#[derive(Default)]
struct CounterImpl(std::sync::atomic::AtomicU64);

impl Counter for CounterImpl {
    async fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }
    async fn reset(&self) {
        self.0.store(0, std::sync::atomic::Ordering::SeqCst);
    }
    async fn fallible(&self, fail: bool) -> Result<u64, String> {
        if fail { Err("no".into()) } else { Ok(1) }
    }
}

#[tokio::test]
async fn infallible_methods_answer_over_the_wire_and_locally() {
    let (_server, client) = common::memory_pair(CounterRef::new(CounterImpl::default())).await;
    let remote: CounterRef = client.root();
    let local = CounterRef::new(CounterImpl::default());
    for counter in [remote, local] {
        let first: Result<u64, CallError<Never>> = counter.next().await;
        assert_eq!(first, Ok(1));
        assert_eq!(counter.next().await, Ok(2));
        assert_eq!(counter.reset().await, Ok(()));
        assert_eq!(counter.next().await, Ok(1));
        // Fallible methods beside them are unchanged.
        assert_eq!(
            counter.fallible(true).await,
            Err(CallError::Remote("no".to_string()))
        );
    }
}

#[tokio::test]
async fn an_infallible_method_still_reports_the_systems_failures() {
    let (server, client) = common::memory_pair(CounterRef::new(CounterImpl::default())).await;
    let counter: CounterRef = client.root();
    server.abort();
    client.closed().await;
    assert_eq!(counter.next().await, Err(CallError::Disconnected));
}
