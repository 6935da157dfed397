//! The driver's unit tests.

//! Two connections' states wired together by hand: no sockets, no sleeps, every frame moved
//! explicitly.

use super::*;
use crate::object::{BoxFuture, Dispatch, Interface, encode_result};

struct Counter;
static COUNTER: Interface = Interface {
    name: "Counter",
    methods: &["add", "spawn"],
};

impl Dispatch for Counter {
    fn interface(&self) -> &'static Interface {
        &COUNTER
    }
    fn dispatch(self: Arc<Self>, mut call: IncomingCall) -> BoxFuture<Reply> {
        Box::pin(async move {
            match call.method() {
                "add" => {
                    let (a, b): (u32, u32) = call.decode_args()?;
                    encode_result::<u32, ()>(call.caller(), Ok(a + b))
                }
                // Returns a reference to a new object.
                "spawn" => {
                    encode_result::<ObjectRef, ()>(call.caller(), Ok(ObjectRef::local(Counter)))
                }
                _ => call.no_such_method(&COUNTER),
            }
        })
    }
}

/// Move every queued frame from `from` to `to`; returns how many moved.
fn pump(from: &Arc<ConnShared>, to: &Arc<ConnShared>, buf: &mut BytesMut) -> usize {
    let decoder = FrameDecoder::new(1 << 20);
    let mut chunks = Vec::new();
    from.take_transmit(&mut chunks);
    for chunk in chunks {
        buf.extend_from_slice(&chunk);
    }
    let mut n = 0;
    let mut wakers = Vec::new();
    while let Ok(Some(frame)) = decoder.decode(buf) {
        to.handle_frame(frame.into(), &mut wakers, None)
            .expect("valid frame");
        n += 1;
    }
    n
}

async fn run_until<T>(
    a: &Arc<ConnShared>,
    b: &Arc<ConnShared>,
    task: tokio::task::JoinHandle<T>,
) -> T {
    let (mut ab, mut ba) = (BytesMut::new(), BytesMut::new());
    for _ in 0..1000 {
        if task.is_finished() {
            return task.await.expect("task");
        }
        pump(a, b, &mut ab);
        pump(b, a, &mut ba);
        tokio::task::yield_now().await;
    }
    panic!("did not finish");
}

#[tokio::test]
async fn two_brokers_without_sockets() {
    let config = Config::default();
    let client = ConnShared::new(&config, Side::Client, None, None);
    let server = ConnShared::new(&config, Side::Server, None, Some(ObjectRef::local(Counter)));
    let root = client.root_ref();

    let call = tokio::spawn({
        let root = root.clone();
        async move { root.call::<_, u32, ()>("add", &(40u32, 2u32)).await }
    });
    assert_eq!(run_until(&client, &server, call).await, Ok(42));

    // A returned reference is imported, callable, and released when dropped.
    let spawned = tokio::spawn({
        let root = root.clone();
        async move { root.call::<_, ObjectRef, ()>("spawn", &()).await }
    });
    let child = run_until(&client, &server, spawned).await.expect("spawn");
    assert_eq!(server.table_stats().exported, 1);
    assert_eq!(client.table_stats().imported, 1);
    let call = tokio::spawn({
        let child = child.clone();
        async move { child.call::<_, u32, ()>("add", &(1u32, 1u32)).await }
    });
    assert_eq!(run_until(&client, &server, call).await, Ok(2));
    drop(child);
    assert_eq!(client.table_stats().imported, 0);
    let (mut ab, mut ba) = (BytesMut::new(), BytesMut::new());
    assert_eq!(pump(&client, &server, &mut ab), 1, "one release frame");
    assert_eq!(pump(&server, &client, &mut ba), 0);
    assert_eq!(server.table_stats().exported, 0);

    // Losing the connection fails what is pending, at once.
    let hanging = tokio::spawn({
        let root = root.clone();
        async move { root.call::<_, u32, ()>("add", &(1u32, 1u32)).await }
    });
    tokio::task::yield_now().await;
    client.close(CloseReason::Local);
    assert_eq!(
        hanging.await.expect("task"),
        Err(crate::CallError::Disconnected)
    );
}

/// Hands out the same object every time.
struct Holder(ObjectRef);
static HOLDER: Interface = Interface {
    name: "Holder",
    methods: &["get"],
};

impl Dispatch for Holder {
    fn interface(&self) -> &'static Interface {
        &HOLDER
    }
    fn dispatch(self: Arc<Self>, call: IncomingCall) -> BoxFuture<Reply> {
        Box::pin(async move {
            match call.method() {
                "get" => encode_result::<ObjectRef, ()>(call.caller(), Ok(self.0.clone())),
                _ => call.no_such_method(&HOLDER),
            }
        })
    }
}

#[tokio::test]
async fn a_release_that_crosses_a_new_send_does_not_free_the_object() {
    let config = Config::default();
    let freed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    struct Flag(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    struct Tracked(#[allow(dead_code)] Flag);
    impl Dispatch for Tracked {
        fn interface(&self) -> &'static Interface {
            &COUNTER
        }
        fn dispatch(self: Arc<Self>, call: IncomingCall) -> BoxFuture<Reply> {
            Box::pin(async move { encode_result::<u8, ()>(call.caller(), Ok(1)) })
        }
    }
    let object = ObjectRef::local(Tracked(Flag(freed.clone())));
    let client = ConnShared::new(&config, Side::Client, None, None);
    let server = ConnShared::new(
        &config,
        Side::Server,
        None,
        Some(ObjectRef::local(Holder(object))),
    );
    let root = client.root_ref();
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());

    // First send: the client holds the object once.
    let get = tokio::spawn({
        let root = root.clone();
        async move { root.call::<_, ObjectRef, ()>("get", &()).await }
    });
    let first = run_until(&client, &server, get).await.expect("get");
    assert_eq!(server.table_stats().exported, 1);

    // The client asks again; the server answers (count 2), but the answer is still in
    // flight when the client drops its first handle and its release (count 1) goes out.
    let again = tokio::spawn({
        let root = root.clone();
        async move { root.call::<_, ObjectRef, ()>("get", &()).await }
    });
    tokio::task::yield_now().await;
    assert_eq!(pump(&client, &server, &mut to_server), 1, "the call");
    tokio::task::yield_now().await; // the server's handler runs and queues the answer
    drop(first);
    assert_eq!(
        pump(&client, &server, &mut to_server),
        1,
        "the release crosses the answer"
    );
    assert_eq!(
        server.table_stats().exported,
        1,
        "count 2 - 1: still exported"
    );
    assert!(
        !freed.load(Ordering::SeqCst),
        "not freed while the peer holds it"
    );
    assert_eq!(
        pump(&server, &client, &mut to_client),
        1,
        "the answer arrives"
    );
    let second = run_until(&client, &server, again).await.expect("get");

    // The new handle works, and dropping it frees the object.
    let call = tokio::spawn({
        let second = second.clone();
        async move { second.call::<_, u8, ()>("ping", &()).await }
    });
    assert_eq!(run_until(&client, &server, call).await, Ok(1));
    drop(second);
    drop(root);
    pump(&client, &server, &mut to_server);
    assert_eq!(server.table_stats().exported, 0);
    assert_eq!(client.table_stats().imported, 0);
    drop(server);
    assert!(freed.load(Ordering::SeqCst));
}

#[test]
fn an_ended_connections_read_buffer_is_kept_for_the_next_one() {
    let rbuf = read_buffer();
    let at = rbuf.as_ptr();
    recycle_read_buffer(rbuf);
    let again = read_buffer();
    assert_eq!(again.as_ptr(), at, "the same allocation, not a new one");
    assert!(again.is_empty() && again.capacity() >= MIN_READ);
}

#[test]
fn a_read_buffer_a_frame_still_holds_or_a_large_one_is_not_kept() {
    let mut rbuf = read_buffer();
    rbuf.put_slice(b"frame");
    let frame = rbuf.split_to(5).freeze();
    recycle_read_buffer(rbuf);
    let mut next = read_buffer();
    next.put_slice(b"XXXXX");
    assert_eq!(
        &frame[..],
        b"frame",
        "a new buffer, not the one the frame is in"
    );
    let large = BytesMut::with_capacity(64 * 1024);
    recycle_read_buffer(large);
    assert_eq!(read_buffer().capacity(), MIN_READ);
}

/// A call frame body with request id `id` (what `Held` reads of it).
fn held_call(id: u64) -> Frame {
    let mut body = BytesMut::new();
    let flags = (true, None, &pb_proto::message::CallExtras::default());
    pb_proto::message::encode_call_frame_head(&mut body, 0, id, 0, b"m", flags, &[]);
    let body = FrameDecoder::new(1 << 20)
        .decode(&mut body)
        .expect("a frame")
        .expect("whole");
    Frame::from(body)
}

#[test]
fn held_frames_give_up_a_cancelled_call_in_place_and_keep_their_order() {
    let mut held = super::reader::Held::default();
    assert!(held.pop().is_none());
    for id in 1..=4 {
        held.push(held_call(id));
    }
    assert_eq!((held.len(), held.calls), (4, 4));
    // The second and third are cancelled while held: they leave empty places.
    assert!(held.take_call(2).is_some());
    assert!(held.take_call(3).is_some());
    assert!(held.take_call(3).is_none(), "taken once");
    assert!(held.holds_call(1) && !held.holds_call(2));
    assert_eq!((held.len(), held.calls), (2, 2));
    let (first, read_at) = held.pop().expect("the first");
    assert_eq!(pb_proto::message::call_id(&first.body), Some(1));
    // Put back in front (still at the cap), then taken in order, past the empty places.
    held.push_front(first, read_at);
    assert!(held.holds_call(1));
    let order: Vec<_> = std::iter::from_fn(|| held.pop())
        .map(|(f, _)| pb_proto::message::call_id(&f.body))
        .collect();
    assert_eq!(order, [Some(1), Some(4)]);
    assert!(held.is_empty());
    // The last one held, cancelled: nothing is left, and what comes next is in place.
    held.push(held_call(5));
    assert!(held.take_call(5).is_some());
    assert!(held.is_empty());
    held.push(held_call(6));
    assert!(held.holds_call(6));
    assert_eq!(
        held.pop()
            .and_then(|(f, _)| pb_proto::message::call_id(&f.body)),
        Some(6)
    );
    assert_eq!((held.len(), held.calls, held.bytes), (0, 0, 0));
}

/// A cancel frame body for request id `id`.
fn held_cancel(id: u64) -> Frame {
    let mut body = BytesMut::new();
    pb_proto::message::Message::Cancel { id }.encode(&mut body);
    Frame::from(body.freeze())
}

#[test]
fn held_frames_drop_their_empty_places_and_free_the_cancels_of_calls_gone() {
    let mut held = super::reader::Held::default();
    held.push(held_call(1));
    // Many calls taken out of line behind the first leave no place behind for good.
    for id in 2..500 {
        held.push(held_call(id));
        assert!(held.take_call(id).is_some());
    }
    assert_eq!(held.len(), 1);
    // Cancels held in line: of the held call (it stays), and of calls not held (they go).
    held.push(held_cancel(1));
    held.push(held_cancel(7));
    held.push(held_call(600));
    held.push(held_cancel(8));
    let freed: Vec<_> = held
        .take_free_cancels()
        .iter()
        .map(|(f, _)| pb_proto::message::cancelled_id(&f.body))
        .collect();
    assert_eq!(freed, [Some(7), Some(8)]);
    assert!(held.take_free_cancels().is_empty());
    let order: Vec<_> = std::iter::from_fn(|| held.pop())
        .map(|(f, _)| {
            (
                pb_proto::message::call_id(&f.body),
                pb_proto::message::cancelled_id(&f.body),
            )
        })
        .collect();
    assert_eq!(order, [(Some(1), None), (None, Some(1)), (Some(600), None)]);
    assert!(held.is_empty());
}
