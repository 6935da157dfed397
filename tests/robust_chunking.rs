//! Property tests: messages and whole calls survive arbitrary read and write chunking.

mod common;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use common::*;
use pb::proto::frame::{FrameDecoder, encode_frame};
use pb::proto::message::{
    CallExtras, FaultKind, Message, MessageLimits, RefDesc, Signature, TraceParent,
};
use pb::{Config, Connection, Side};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

fn ref_desc() -> impl Strategy<Value = RefDesc> {
    prop_oneof![
        any::<u64>().prop_map(RefDesc::Sender),
        any::<u64>().prop_map(RefDesc::Receiver)
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            "[a-z_]{0,40}",
            any::<bool>(),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(ref_desc(), 0..8),
            bytes(300),
            (any::<Option<(u32, u32)>>(), any::<bool>()),
        )
            .prop_map(
                |(id, target, method, answer, deadline_ms, refs, payload, (signature, traced))| {
                    Message::Call {
                        id,
                        target,
                        method: Bytes::from(method),
                        answer,
                        deadline_ms,
                        extras: CallExtras {
                            signature: signature
                                .map(|(params, result)| Signature { params, result }),
                            trace: traced
                                .then(|| {
                                    TraceParent::parse(
                                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                    )
                                })
                                .flatten(),
                        },
                        refs,
                        payload,
                    }
                },
            ),
        (
            any::<u64>(),
            any::<bool>(),
            proptest::collection::vec(ref_desc(), 0..8),
            bytes(300)
        )
            .prop_map(|(id, ok, refs, payload)| Message::Answer {
                id,
                ok,
                refs,
                payload
            }),
        (any::<u64>(), 1u8..=9, ".{0,100}").prop_map(|(id, k, message)| Message::Fault {
            id,
            kind: [
                FaultKind::NoSuchObject,
                FaultKind::NoSuchMethod,
                FaultKind::BadArguments,
                FaultKind::BadAnswer,
                FaultKind::LimitExceeded,
                FaultKind::Internal,
                FaultKind::ShuttingDown,
                FaultKind::Refused,
                FaultKind::Disconnected,
            ][usize::from(k - 1)],
            message,
        }),
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..20).prop_map(Message::Release),
        any::<u64>().prop_map(|id| Message::Cancel { id }),
        Just(Message::Goodbye),
        (any::<u64>(), bytes(300))
            .prop_map(|(object, payload)| Message::Update { object, payload }),
        any::<u64>().prop_map(|object| Message::Revoked { object }),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
    ]
}

proptest! {
    #[test]
    fn messages_round_trip_under_any_chunking(
        msgs in proptest::collection::vec(message(), 1..30),
        chunks in proptest::collection::vec(1usize..50, 1..20),
    ) {
        let mut stream = BytesMut::new();
        for m in &msgs {
            let mut body = BytesMut::new();
            m.encode(&mut body);
            encode_frame(&body, &mut stream);
        }
        let decoder = FrameDecoder::new(1 << 20);
        let limits = MessageLimits::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = chunks[i % chunks.len()].min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            i += 1;
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                got.push(Message::decode(frame, &limits).unwrap());
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, msgs);
    }
}

/// A transport that reads and writes at most a few bytes at a time, cycling through sizes the
/// test chose.
struct Chunked {
    inner: DuplexStream,
    sizes: Vec<usize>,
    next: usize,
}

impl Chunked {
    fn take(&mut self) -> usize {
        let n = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        n
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.take().min(buf.remaining());
        let mut small = vec![0u8; n];
        let mut rb = ReadBuf::new(&mut small);
        match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(rb.filled());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Chunked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.take().min(buf.len());
        Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn calls_round_trip_under_any_chunking(
        server_sizes in proptest::collection::vec(1usize..40, 1..8),
        client_sizes in proptest::collection::vec(1usize..40, 1..8),
        blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..8),
        texts in proptest::collection::vec(".{0,50}", 1..8),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async move {
            let (a, b) = pb::transport::memory_pair();
            let a = Chunked { inner: a, sizes: server_sizes, next: 0 };
            let b = Chunked { inner: b, sizes: client_sizes, next: 0 };
            let config = Config::default();
            let root = KitchenRef::new(KitchenImpl::default());
            let (_server, client) = tokio::try_join!(
                Connection::establish(a, &config, Side::Server, Some(root.into()), None),
                Connection::establish(b, &config, Side::Client, None, None),
            )
            .unwrap();
            let k: KitchenRef = client.root();
            // Concurrent calls, so frames of different calls share reads and writes.
            let mut calls = Vec::new();
            for blob in &blobs {
                let k = k.clone();
                let blob = blob.clone();
                calls.push(tokio::spawn(async move {
                    let mut want = blob.clone();
                    want.reverse();
                    assert_eq!(k.reverse(blob).await, Ok(want));
                }));
            }
            for text in &texts {
                let k = k.clone();
                let text = text.clone();
                calls.push(tokio::spawn(async move {
                    assert_eq!(k.shout(text.clone()).await, Ok(text.to_uppercase()));
                }));
            }
            for c in calls {
                c.await.unwrap();
            }
        });
    }
}
