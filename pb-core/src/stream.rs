//! Streams of items of any total size, with backpressure (PB's pagers, done right).
//!
//! [`channel`] makes a [`Sender`] and a [`Stream`]. The stream can be consumed here or passed to
//! a peer in an argument or an answer; the peer then pulls batches from it. The producer's
//! `send` waits while the channel is full, and the consumer pulls one batch at a time, so neither
//! side ever holds more than the channel's capacity plus one batch, whatever the total size.
//! Batches travel as ordinary answers, frame by frame, so small calls on the same connection
//! interleave with a large stream instead of waiting behind it; a batch holds as many of the
//! ready items (up to 8) as fit in one frame the consumer accepts.
//!
//! For bytes, stream [`Chunk`]s: they encode as raw bytes rather than as a sequence of numbers.
//!
//! A [`Stream`] is a [`futures_core::Stream`], so the adapters of `futures`' `StreamExt` and
//! `tokio-stream` (`map`, `filter`, `take`, `forward`, ...) apply to it.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use crate::link::Connection;
use crate::object::{
    BoxFuture, CallError, Dispatch, IncomingCall, Interface, ObjectRef, RefInner, Reply,
    encode_result,
};

/// Items a consumer asks for in one pull.
const PULL_BATCH: u32 = 8;

/// Make a stream whose producer may run `capacity` items ahead of its consumer.
pub fn channel<T: Item>(capacity: usize) -> (Sender<T>, Stream<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let panicked = Arc::new(AtomicBool::new(false));
    let source = Arc::new(Source {
        rx: Mutex::new(Pulled {
            rx,
            next: VecDeque::new(),
            failed: None,
            panicked: panicked.clone(),
        }),
    });
    (
        Sender { tx, panicked },
        Stream {
            inner: Kind::Local(source),
            buffer: VecDeque::new(),
            pulling: std::sync::Mutex::new(Pulling::default()),
        },
    )
}

/// What a stream may carry.
pub trait Item: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Item for T {}

/// The producing end of a stream. Dropping it ends the stream; dropped as its task panics, it
/// fails the stream instead (a stream cut short never looks like a shorter complete one).
pub struct Sender<T> {
    tx: mpsc::Sender<Result<T, String>>,
    /// Set when the sender is dropped while its thread panics.
    panicked: Arc<AtomicBool>,
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.panicked.store(true, Ordering::Release);
        }
    }
}

/// What a stream whose producer panicked fails with.
const PANICKED: &str = "the stream's producer panicked";

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("buffered", &self.buffered())
            .finish()
    }
}

/// The consumer went away: the stream was dropped, or its connection was lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stream's consumer is gone")]
pub struct Closed;

impl<T> Sender<T> {
    /// Send one item, waiting while the consumer is `capacity` items behind.
    pub async fn send(&self, item: T) -> Result<(), Closed> {
        self.tx.send(Ok(item)).await.map_err(|_| Closed)
    }

    /// End the stream with an error the consumer will see.
    pub async fn fail(self, reason: impl Into<String>) -> Result<(), Closed> {
        self.tx.send(Err(reason.into())).await.map_err(|_| Closed)
    }

    /// Items sent and not yet taken by the consumer (at most the capacity).
    pub fn buffered(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Completes when the consumer is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The producer's side, exported to the consumer's peer.
struct Source<T> {
    rx: Mutex<Pulled<T>>,
}

/// The channel, the items of a batch that did not fit in the consumer's frame (they start the
/// next), and a failure that arrived behind items of the batch being taken: it is the answer to
/// the next pull, so that the items before it are not lost.
struct Pulled<T> {
    rx: mpsc::Receiver<Result<T, String>>,
    next: VecDeque<Taken<T>>,
    failed: Option<String>,
    /// The sender was dropped as its task panicked: the channel's end is a failure.
    panicked: Arc<AtomicBool>,
}

/// An item taken from the channel, and its encoding as a batch of its own once one was made
/// (to see whether it fits the consumer's frame): kept with the item when it waits for the
/// next pull, so that no item is encoded again and again while the items before it leave.
struct Taken<T> {
    item: T,
    alone: Option<Reply>,
}

impl<T> Taken<T> {
    fn new(item: T) -> Self {
        Taken { item, alone: None }
    }
}

/// What an answer to a pull takes besides its items' encodings, at most: the answer's
/// envelope, the result's tag and the vector's length.
const ANSWER_OVERHEAD: usize = 64;

/// What each reference an item carries adds to an answer's envelope, at most.
const REF_OVERHEAD: usize = 11;

static SOURCE: Interface = Interface {
    name: "Stream",
    methods: &["pull"],
};

impl<T> Source<T> {
    /// Up to `max` items: those put back first, else waits for one, then takes what is ready.
    /// Empty at the end.
    async fn pull(&self, max: u32) -> Result<Vec<Taken<T>>, String> {
        let max = max.clamp(1, 1024) as usize;
        let mut pulled = self.rx.lock().await;
        let mut batch = Vec::new();
        while batch.len() < max
            && let Some(item) = pulled.next.pop_front()
        {
            batch.push(item);
        }
        if batch.is_empty() {
            if let Some(reason) = pulled.failed.take() {
                return Err(reason);
            }
            match pulled.rx.recv().await {
                None if pulled.panicked.load(Ordering::Acquire) => return Err(PANICKED.into()),
                None => return Ok(batch),
                Some(item) => batch.push(Taken::new(item?)),
            }
        }
        while batch.len() < max {
            match pulled.rx.try_recv() {
                Ok(Ok(item)) => batch.push(Taken::new(item)),
                Ok(Err(reason)) => {
                    pulled.failed = Some(reason);
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// The answer to a pull of `batch` within what the consumer takes (`fits`, given a
    /// payload's length and its references): the longest run of items from the first that
    /// fits; the rest go back to start the next pull. An item too large alone is the answer
    /// (it fails, the limit named). Each item is encoded once, or twice when its batch has
    /// others: alone, to see its size (kept with it if it waits), and in the batch, unless
    /// its batch is only itself; a whole batch is encoded at once, with only its first item
    /// seen alone, when that one shows the batch fits with room to spare.
    async fn fitting(
        &self,
        mut batch: Vec<Taken<T>>,
        whole: impl Fn(&[Taken<T>]) -> Reply,
        fits: impl Fn(usize, usize) -> bool,
        caller: &crate::object::link::Caller,
    ) -> Reply
    where
        T: Item,
    {
        let alone = |t: &mut Taken<T>| -> Reply {
            t.alone.take().unwrap_or_else(|| {
                encode_result(caller, Ok::<_, &str>(std::slice::from_ref(&t.item)))
            })
        };
        let Some(first) = batch.first_mut() else {
            return whole(&batch);
        };
        let first = alone(first);
        let (mut bytes, mut refs) = match &first {
            Ok(o) if batch.len() > 1 && fits(o.payload.len(), o.refs.len()) => {
                (o.payload.len(), o.refs.len())
            }
            // Alone, too large, or not encodable: that is the answer.
            _ => {
                let rest = batch.split_off(1);
                self.put_back(rest).await;
                return first;
            }
        };
        let n = batch.len();
        // Items like the first would fill half the room at most: the batch at once.
        if fits(bytes.saturating_mul(2 * n), refs.saturating_mul(2 * n)) {
            let reply = whole(&batch);
            if let Ok(o) = &reply
                && fits(o.payload.len(), o.refs.len())
            {
                return reply;
            }
        }
        let mut take = 1;
        while let Some(t) = batch.get_mut(take) {
            let next = alone(t);
            let fit = match &next {
                Ok(o) => fits(bytes + o.payload.len(), refs + o.refs.len()),
                Err(_) => false,
            };
            if let Ok(o) = &next {
                (bytes, refs) = (bytes + o.payload.len(), refs + o.refs.len());
            }
            // Kept for when it leaves (alone, if it is first then).
            t.alone = Some(next);
            if !fit {
                break;
            }
            take += 1;
        }
        let rest = batch.split_off(take);
        self.put_back(rest).await;
        match take {
            1 => first,
            _ => whole(&batch),
        }
    }

    /// Items of a batch that did not fit: they start the next one, in order.
    async fn put_back(&self, items: Vec<Taken<T>>) {
        let mut pulled = self.rx.lock().await;
        for item in items.into_iter().rev() {
            pulled.next.push_front(item);
        }
    }
}

impl<T: Item> Dispatch for Source<T> {
    fn interface(&self) -> &'static Interface {
        &SOURCE
    }

    fn dispatch(self: Arc<Self>, mut call: IncomingCall) -> BoxFuture<Reply> {
        Box::pin(async move {
            if call.method() != "pull" {
                return call.no_such_method(&SOURCE);
            }
            // The consumer says what it takes (its frame and references per message): a
            // stream handed on by a third party answers it through that party, which passes
            // the answer on unchanged. A consumer from before that says nothing.
            let (max, takes) = match call.decode_args::<(u32, u64, u64)>() {
                Ok((max, bytes, refs)) => (max, Some((bytes, refs))),
                Err(_) => (call.decode_args::<(u32,)>()?.0, None),
            };
            let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
            // The largest answer the consumer takes, and the most references it may carry,
            // within what the connection the pull came in on takes (the Twisted PB dialect
            // has no frames, nor a limit on references).
            let connection = call.caller().connection();
            let frame = connection
                .map_or(usize::MAX, Connection::peer_max_frame_len)
                .min(takes.map_or(usize::MAX, |(bytes, _)| as_usize(bytes)));
            let room = match frame {
                usize::MAX => usize::MAX,
                frame => frame.saturating_sub(ANSWER_OVERHEAD),
            };
            let max_refs = connection
                .map_or(usize::MAX, Connection::peer_max_refs_per_message)
                .min(takes.map_or(usize::MAX, |(_, refs)| as_usize(refs)));
            let batch = match self.pull(max).await {
                Ok(batch) => batch,
                Err(reason) => return encode_result(call.caller(), Err::<(), _>(reason)),
            };
            let whole = |items: &[Taken<T>]| {
                let items: Vec<&T> = items.iter().map(|t| &t.item).collect();
                encode_result(call.caller(), Ok::<_, &str>(items))
            };
            // No limit to keep within (the Twisted PB dialect): the batch as it is.
            if room == usize::MAX && max_refs == usize::MAX {
                return whole(&batch);
            }
            let fits = |payload: usize, refs: usize| {
                refs <= max_refs && payload.saturating_add(refs * REF_OVERHEAD) <= room
            };
            self.fitting(batch, whole, fits, call.caller()).await
        })
    }

    fn as_any(self: Arc<Self>) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(self)
    }
}

enum Kind<T> {
    Local(Arc<Source<T>>),
    Remote(ObjectRef),
    Done,
}

/// A batch being pulled: owned, so that it lives in the stream between polls.
type Pull<T> = BoxFuture<Result<Vec<T>, CallError<String>>>;

/// Pull a batch from the source `r` on a peer, saying what our end of its connection takes in
/// one message (its frame, its references), so that a batch answered through a third party
/// still fits here. A source from before that takes only the batch's length: asked again so.
async fn pull_remote<T: Item>(r: ObjectRef) -> Result<Vec<T>, CallError<String>> {
    let takes = match &r.0 {
        RefInner::Remote(imported) => imported.conn.own_limits(),
        RefInner::Local(_) => None,
    };
    let Some(takes) = takes else {
        return r.call("pull", &(PULL_BATCH,)).await;
    };
    let args = (
        PULL_BATCH,
        takes.max_frame_len as u64,
        takes.max_refs_per_message as u64,
    );
    match r.call("pull", &args).await {
        Err(CallError::BadArguments(_)) => r.call("pull", &(PULL_BATCH,)).await,
        pulled => pulled,
    }
}

/// The consuming end of a stream: here, or on a peer it was sent to.
///
/// Read it with [`Stream::next`], or through any [`futures_core::Stream`] adapter:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::pin::Pin;
/// use std::task::{Context, Poll};
///
/// let (tx, mut rx) = pb::stream::channel::<u32>(4);
/// tokio::spawn(async move {
///     for i in 0..3 {
///         tx.send(i).await.unwrap();
///     }
/// });
/// // `futures::StreamExt::next(&mut rx)` does the same as this poll.
/// let next = std::future::poll_fn(|cx: &mut Context<'_>| {
///     futures_core::Stream::poll_next(Pin::new(&mut rx), cx)
/// });
/// assert_eq!(next.await, Some(Ok(0)));
/// # }
/// ```
///
/// A pull that is under way when the future of [`Stream::next`] (or of an adapter) is dropped
/// is kept, and the next call resumes it: no item is lost by a `select!` or a timeout. A
/// deadline ([`crate::deadline`]) bounds the wait in the same way: the pull itself carries
/// none.
pub struct Stream<T> {
    inner: Kind<T>,
    buffer: VecDeque<T>,
    /// The batch being pulled, if a poll left one under way, and the deadline the wait for it
    /// is bound by. Reached only through `&mut self` (`Mutex::get_mut`, no locking): the mutex
    /// is there so that a stream stays `Sync`, as the future inside is not.
    pulling: std::sync::Mutex<Pulling<T>>,
}

/// A pull under way, and the timer of the deadline its wait is bound by.
struct Pulling<T> {
    pull: Option<Pull<T>>,
    wait: Option<(Instant, Pin<Box<tokio::time::Sleep>>)>,
}

impl<T> Default for Pulling<T> {
    fn default() -> Self {
        Pulling {
            pull: None,
            wait: None,
        }
    }
}

impl<T> fmt::Debug for Stream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Kind::Local(_) => "local",
            Kind::Remote(_) => "remote",
            Kind::Done => "done",
        };
        f.debug_struct("Stream")
            .field("kind", &kind)
            .field("buffered", &self.buffer.len())
            .field("pulling", &self.is_pulling())
            .finish()
    }
}

impl<T: Item> Stream<T> {
    /// The next item; `None` at the end. A lost connection or the producer's `fail` is an
    /// error, after which the stream is over.
    ///
    /// Under a deadline ([`crate::deadline::with_timeout`]), an item that does not come in time
    /// is [`CallError::DeadlineExceeded`] for this call only: the stream goes on, and the next
    /// call resumes the pull under way.
    ///
    /// Cancel-safe: dropping the future loses no item (see the type's docs).
    pub async fn next(&mut self) -> Option<Result<T, CallError<String>>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, CallError<String>>>> {
        if let Some(item) = self.buffer.pop_front() {
            return Poll::Ready(Some(Ok(item)));
        }
        let deadline = crate::deadline::current();
        let pulling = self.pulling.get_mut().unwrap_or_else(|p| p.into_inner());
        let pull = match &mut pulling.pull {
            Some(pull) => pull,
            None => {
                let pull: Pull<T> = match &self.inner {
                    Kind::Done => return Poll::Ready(None),
                    Kind::Local(source) => {
                        let source = source.clone();
                        Box::pin(async move {
                            let batch = source.pull(PULL_BATCH).await;
                            batch
                                .map(|b| b.into_iter().map(|t| t.item).collect())
                                .map_err(CallError::Remote)
                        })
                    }
                    // The pull carries no deadline: one that passes bounds the wait for it
                    // (below), and the pull goes on, where a call cut short by it would be
                    // cancelled with its items, or leave them in an answer nobody reads.
                    Kind::Remote(r) => {
                        let r = r.clone();
                        Box::pin(crate::deadline::without(pull_remote(r)))
                    }
                };
                pulling.pull.insert(pull)
            }
        };
        let Poll::Ready(batch) = pull.as_mut().poll(cx) else {
            let Some(d) = deadline else {
                pulling.wait = None;
                return Poll::Pending;
            };
            let (at, timer) = pulling
                .wait
                .get_or_insert_with(|| (d, Box::pin(tokio::time::sleep_until(d))));
            if *at != d {
                *at = d;
                timer.as_mut().reset(d);
            }
            ready!(timer.as_mut().poll(cx));
            pulling.wait = None;
            return Poll::Ready(Some(Err(CallError::DeadlineExceeded)));
        };
        *pulling = Pulling::default();
        Poll::Ready(match batch {
            Ok(batch) if batch.is_empty() => {
                self.inner = Kind::Done;
                None
            }
            Ok(batch) => {
                self.buffer.extend(batch);
                self.buffer.pop_front().map(Ok)
            }
            Err(e) => {
                self.inner = Kind::Done;
                Some(Err(e))
            }
        })
    }

    /// Items pulled and not yet returned by [`Stream::next`] (at most one batch).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Read the whole stream into a vector (for streams known to be small).
    pub async fn collect(mut self) -> Result<Vec<T>, CallError<String>> {
        let mut all = Vec::new();
        while let Some(item) = self.next().await {
            all.push(item?);
        }
        Ok(all)
    }
}

impl<T> Stream<T> {
    fn is_pulling(&self) -> bool {
        let pulling = self.pulling.lock().unwrap_or_else(|p| p.into_inner());
        pulling.pull.is_some()
    }
}

// Nothing in a stream is pinned in place (the pull under way is boxed).
impl<T> Unpin for Stream<T> {}

/// Items as [`Stream::next`] returns them; after `None` (the end, or after an error), always
/// `None`.
impl<T: Item> futures_core::Stream for Stream<T> {
    type Item = Result<T, CallError<String>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.inner {
            Kind::Done => (self.buffer.len(), Some(self.buffer.len())),
            _ => (self.buffer.len(), None),
        }
    }
}

impl<T: Item> futures_core::FusedStream for Stream<T> {
    fn is_terminated(&self) -> bool {
        matches!(self.inner, Kind::Done) && self.buffer.is_empty()
    }
}

impl<T: Item> Serialize for Stream<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let untouched = self.buffer.is_empty() && !self.is_pulling();
        match &self.inner {
            Kind::Local(source) if untouched => ObjectRef::from_arc(source.clone()).serialize(s),
            Kind::Remote(r) if untouched => r.serialize(s),
            _ => Err(serde::ser::Error::custom(
                "a stream that was partly read cannot be sent",
            )),
        }
    }
}

impl<'de, T: Item> Deserialize<'de> for Stream<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = ObjectRef::deserialize(d)?;
        let inner = match &r.0 {
            RefInner::Remote(_) => Kind::Remote(r),
            RefInner::Local(object) => match object
                .clone()
                .as_any()
                .and_then(|a| a.downcast::<Source<T>>().ok())
            {
                Some(source) => Kind::Local(source),
                None => {
                    return Err(serde::de::Error::custom(
                        "a local object that is not a stream of this type",
                    ));
                }
            },
        };
        Ok(Stream {
            inner,
            buffer: VecDeque::new(),
            pulling: std::sync::Mutex::new(Pulling::default()),
        })
    }
}

/// A chunk of bytes: encoded as raw bytes, and cheap to clone.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Chunk(pub Bytes);

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Chunk({} bytes)", self.0.len())
    }
}

impl From<Bytes> for Chunk {
    fn from(b: Bytes) -> Chunk {
        Chunk(b)
    }
}

impl From<Vec<u8>> for Chunk {
    fn from(v: Vec<u8>) -> Chunk {
        Chunk(Bytes::from(v))
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Chunk {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Chunk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Chunk;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Chunk, E> {
                Ok(Chunk(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Chunk, E> {
                Ok(Chunk(Bytes::from(v)))
            }
        }
        d.deserialize_bytes(V)
    }
}
