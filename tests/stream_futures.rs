//! `pb::stream::Stream` is a `futures_core::Stream`: read through the trait alone (as
//! `StreamExt` and other adapters do; the workspace has no futures-util, so the loop here is
//! written by hand), fused after its end, and cancel-safe: a `next` dropped mid-pull loses no
//! item; items sent before the producer's failure all arrive before it. Over the in-memory
//! transport with virtual time.

mod common;

use std::pin::Pin;
use std::time::Duration;

use futures_core::{FusedStream, Stream as _};
use pb::stream::{self, Stream};

#[pb::remote]
pub trait Numbers {
    /// `0..n`, one item every `gap_ms` milliseconds.
    async fn count(&self, n: u32, gap_ms: u64) -> Result<Stream<u32>, ()>;
}

struct Counter;

impl Numbers for Counter {
    async fn count(&self, n: u32, gap_ms: u64) -> Result<Stream<u32>, ()> {
        let (tx, rx) = stream::channel(2);
        tokio::spawn(async move {
            for i in 0..n {
                tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                if tx.send(i).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// The next item of any `futures_core::Stream`, through `poll_next` only (what
/// `StreamExt::next` does).
async fn next_of<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

/// Every item of any `futures_core::Stream` (what `StreamExt::collect` does).
async fn collect_all<S: futures_core::Stream + Unpin>(mut s: S) -> Vec<S::Item> {
    let mut all = Vec::new();
    while let Some(item) = next_of(&mut s).await {
        all.push(item);
    }
    all
}

#[tokio::test(start_paused = true)]
async fn a_remote_stream_is_read_through_futures_core_and_ends_fused() {
    let (_server, client) = common::memory_pair(NumbersRef::new(Counter)).await;
    let numbers: NumbersRef = client.root();

    let all = collect_all(numbers.count(5, 1).await.unwrap()).await;
    let all: Vec<u32> = all.into_iter().map(Result::unwrap).collect();
    assert_eq!(all, [0, 1, 2, 3, 4]);

    let mut s = numbers.count(2, 1).await.unwrap();
    assert!(!s.is_terminated());
    assert_eq!(next_of(&mut s).await, Some(Ok(0)));
    assert_eq!(next_of(&mut s).await, Some(Ok(1)));
    assert_eq!(next_of(&mut s).await, None);
    assert!(s.is_terminated());
    assert_eq!(s.size_hint(), (0, Some(0)));
    // Polled again after its end, it stays ended (and calls nobody).
    assert_eq!(next_of(&mut s).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_next_dropped_mid_pull_loses_no_item() {
    let (_server, client) = common::memory_pair(NumbersRef::new(Counter)).await;
    let numbers: NumbersRef = client.root();
    let mut s = numbers.count(4, 10).await.unwrap();
    let mut got = Vec::new();
    loop {
        // Each item takes 10 ms to come: a 3 ms timeout drops `next` while its pull is out.
        match tokio::time::timeout(Duration::from_millis(3), s.next()).await {
            Err(_elapsed) => continue,
            Ok(None) => break,
            Ok(Some(item)) => got.push(item.unwrap()),
        }
    }
    assert_eq!(got, [0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_local_stream_is_a_futures_core_stream_too_and_keeps_items_before_a_failure() {
    let (tx, rx) = stream::channel::<String>(4);
    tokio::spawn(async move {
        for w in ["a", "b", "c"] {
            tx.send(w.to_owned()).await.unwrap();
        }
        tx.fail("no more").await.unwrap();
    });
    let all = collect_all(rx).await;
    assert_eq!(all.len(), 4);
    assert_eq!(all[..3], [Ok("a".into()), Ok("b".into()), Ok("c".into())]);
    assert_eq!(all[3], Err(pb::CallError::Remote("no more".to_owned())));
}

/// `pb::deadline::with_timeout` around `next` bounds the wait for one item, as
/// `tokio::time::timeout` does above: an item that does not come in time is an error for that
/// `next`, and the stream goes on. (Or, if the stream must end there, it must not then look like
/// a complete stream: no `None` after fewer items than the producer sent.)
#[tokio::test(start_paused = true)]
async fn a_deadline_on_one_next_does_not_end_the_stream_as_if_it_were_complete() {
    let (_server, client) = common::memory_pair(NumbersRef::new(Counter)).await;
    let numbers: NumbersRef = client.root();
    let mut s = numbers.count(4, 10).await.unwrap();
    let mut got = Vec::new();
    let mut expired = 0;
    loop {
        // Each item takes 10 ms to come: a 3 ms deadline passes while its pull is out.
        match pb::deadline::with_timeout(Duration::from_millis(3), s.next()).await {
            Some(Err(pb::CallError::DeadlineExceeded)) => {
                expired += 1;
                assert!(expired < 100, "no item ever came");
            }
            None => break,
            Some(item) => got.push(item.unwrap()),
        }
    }
    assert!(expired > 0, "the deadline passed at least once");
    assert_eq!(
        got,
        [0, 1, 2, 3],
        "the stream ended after {expired} deadlines"
    );
}

/// A wait for an item cut short by a deadline and resumed under another: the pull goes on, and
/// the later deadline is the one that counts for the wait.
#[tokio::test(start_paused = true)]
async fn a_wait_resumed_under_another_deadline_is_bound_by_that_one() {
    let (_server, client) = common::memory_pair(NumbersRef::new(Counter)).await;
    let numbers: NumbersRef = client.root();
    // Items every 10 ms.
    let mut s = numbers.count(2, 10).await.unwrap();
    // Under a 50 ms deadline, given up after 5 ms: the pull is kept, with that deadline's timer.
    tokio::select! {
        _ = pb::deadline::with_timeout(Duration::from_millis(50), s.next()) => {
            panic!("no item within 5 ms")
        }
        () = tokio::time::sleep(Duration::from_millis(5)) => {}
    }
    // Resumed under a 2 ms deadline: it passes before the item comes.
    let early = pb::deadline::with_timeout(Duration::from_millis(2), s.next()).await;
    assert!(
        matches!(early, Some(Err(pb::CallError::DeadlineExceeded))),
        "{early:?}"
    );
    // And under an hour: the items, then the end.
    let hour = Duration::from_secs(3600);
    let mut got = Vec::new();
    while let Some(item) = pb::deadline::with_timeout(hour, s.next()).await {
        got.push(item.unwrap());
    }
    assert_eq!(got, [0, 1]);
}
