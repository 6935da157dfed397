//! Streams of items of any total size, with backpressure (PB's pagers, done right).
//!
//! [`channel`] makes a [`Sender`] and a [`Stream`]. The stream can be consumed here or passed to
//! a peer in an argument or an answer; the peer then pulls batches from it. The producer's
//! `send` waits while the channel is full, and the consumer pulls one batch at a time, so neither
//! side ever holds more than the channel's capacity plus one batch, whatever the total size.
//! Batches travel as ordinary answers, frame by frame, so small calls on the same connection
//! interleave with a large stream instead of waiting behind it.
//!
//! For bytes, stream [`Chunk`]s: they encode as raw bytes rather than as a sequence of numbers.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::{Mutex, mpsc};

use crate::object::{
    BoxFuture, CallError, Dispatch, IncomingCall, Interface, ObjectRef, RefInner, Reply,
    encode_result,
};

/// Items a consumer asks for in one pull.
const PULL_BATCH: u32 = 8;

/// Make a stream whose producer may run `capacity` items ahead of its consumer.
pub fn channel<T: Item>(capacity: usize) -> (Sender<T>, Stream<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let source = Arc::new(Source { rx: Mutex::new(rx) });
    (
        Sender { tx },
        Stream {
            inner: Kind::Local(source),
            buffer: VecDeque::new(),
        },
    )
}

/// What a stream may carry.
pub trait Item: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Item for T {}

/// The producing end of a stream. Dropping it ends the stream.
pub struct Sender<T> {
    tx: mpsc::Sender<Result<T, String>>,
}

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
    rx: Mutex<mpsc::Receiver<Result<T, String>>>,
}

static SOURCE: Interface = Interface {
    name: "Stream",
    methods: &["pull"],
};

impl<T> Source<T> {
    /// Up to `max` items: waits for the first, then takes what is ready. Empty at the end.
    async fn pull(&self, max: u32) -> Result<Vec<T>, String> {
        let mut rx = self.rx.lock().await;
        let mut batch = Vec::new();
        match rx.recv().await {
            None => return Ok(batch),
            Some(item) => batch.push(item?),
        }
        while batch.len() < max.clamp(1, 1024) as usize {
            match rx.try_recv() {
                Ok(item) => batch.push(item?),
                Err(_) => break,
            }
        }
        Ok(batch)
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
            let (max,): (u32,) = call.decode_args()?;
            let batch = self.pull(max).await;
            encode_result(call.caller(), batch)
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

/// The consuming end of a stream: here, or on a peer it was sent to.
pub struct Stream<T> {
    inner: Kind<T>,
    buffer: VecDeque<T>,
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
            .finish()
    }
}

impl<T: Item> Stream<T> {
    /// The next item; `None` at the end. A lost connection or the producer's `fail` is an
    /// error, after which the stream is over.
    pub async fn next(&mut self) -> Option<Result<T, CallError<String>>> {
        if let Some(item) = self.buffer.pop_front() {
            return Some(Ok(item));
        }
        let batch = match &self.inner {
            Kind::Done => return None,
            Kind::Local(source) => source.pull(PULL_BATCH).await.map_err(CallError::Remote),
            Kind::Remote(r) => r.call::<_, Vec<T>, String>("pull", &(PULL_BATCH,)).await,
        };
        match batch {
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
        }
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

impl<T: Item> Serialize for Stream<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.inner {
            Kind::Local(source) if self.buffer.is_empty() => {
                ObjectRef::from_arc(source.clone()).serialize(s)
            }
            Kind::Remote(r) if self.buffer.is_empty() => r.serialize(s),
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
