//! A whole server connection fed arbitrary bytes in arbitrary chunks (as h2's `fuzz_e2e`):
//! `Connection::establish` over an in-memory duplex, with the fuzzer choosing the byte stream
//! and the size of every write. Small limits put every table limit within reach. The
//! connection must never panic or hang: when the input ends it closes, and every task ends.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pb_core::{
    BoxFuture, Config, Connection, Dispatch, IncomingCall, Interface, ObjectRef, Reply, Side,
    encode_result,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Value {
    Leaf,
    Int(i64),
    Text(String),
    Node(Box<Value>),
    List(Vec<Value>),
}

struct Root;
static ROOT: Interface = Interface {
    name: "Root",
    methods: &["add", "spawn", "keep", "deep", "back"],
};

impl Dispatch for Root {
    fn interface(&self) -> &'static Interface {
        &ROOT
    }
    fn dispatch(self: Arc<Self>, mut call: IncomingCall) -> BoxFuture<Reply> {
        Box::pin(async move {
            match call.method() {
                "add" => {
                    let (a, b): (u32, u32) = call.decode_args()?;
                    encode_result::<u32, ()>(call.caller(), Ok(a.wrapping_add(b)))
                }
                "spawn" => {
                    encode_result::<ObjectRef, ()>(call.caller(), Ok(ObjectRef::local(Root)))
                }
                "keep" => {
                    let (refs,): (Vec<ObjectRef>,) = call.decode_args()?;
                    encode_result::<Vec<ObjectRef>, ()>(call.caller(), Ok(refs))
                }
                "deep" => {
                    let (v,): (Value,) = call.decode_args()?;
                    encode_result::<Value, ()>(call.caller(), Ok(v))
                }
                // Calls back into an object the peer gave us; its answer may never come.
                "back" => {
                    let (r,): (ObjectRef,) = call.decode_args()?;
                    let got = r.call::<_, u8, ()>("x", &(1u8,)).await.ok();
                    encode_result::<Option<u8>, ()>(call.caller(), Ok(got))
                }
                _ => call.no_such_method(&ROOT),
            }
        })
    }
}

fn config() -> Config {
    let mut c = Config::default();
    c.limits.max_frame_len = 64 * 1024;
    c.limits.max_pending_calls = 4;
    c.limits.max_in_flight_calls = 4;
    c.limits.max_exports = 8;
    c.limits.max_imports = 8;
    c.limits.max_depth = 16;
    c.limits.message.max_refs_per_message = 16;
    c.limits.message.max_release_entries = 16;
    c
}

const HELLO: [u8; 20] = [
    0, 0, 0, 16, b'P', b'B', b'R', b'S', 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, c0, c1, c2, c3], stream)) = data.split_first_chunk::<5>() else {
        return;
    };
    let sizes = [c0, c1, c2, c3].map(|c| usize::from(c % 64) + 1);
    RUNTIME.with(|rt| {
        rt.block_on(async move {
            let (server_io, client_io) = tokio::io::duplex(1 << 16);
            let server = tokio::spawn(async move {
                let conn = Connection::establish(
                    server_io,
                    &config(),
                    Side::Server,
                    Some(ObjectRef::local(Root)),
                    None,
                )
                .await;
                if let Ok(conn) = conn {
                    conn.closed().await;
                }
            });
            let (mut rd, mut wr) = tokio::io::split(client_io);
            // Read and discard whatever the server sends, so its writer never blocks.
            let drain = tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
            let mut input = Vec::with_capacity(HELLO.len() + stream.len());
            if flags & 1 == 1 {
                input.extend_from_slice(&HELLO);
            }
            input.extend_from_slice(stream);
            let mut rest = &input[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                if wr.write_all(chunk).await.is_err() {
                    break;
                }
                rest = tail;
                i += 1;
                // Let the server see this chunk alone (a partial frame, often).
                for _ in 0..=(flags >> 1) % 4 {
                    tokio::task::yield_now().await;
                }
            }
            let _ = wr.shutdown().await;
            drop(wr);
            // EOF: the connection must close and every task end.
            let _ = server.await;
            let _ = drain.await;
            // Let the last handler tasks see the close, so that none carries over to the next input.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        })
    });
});

thread_local! {
    // One runtime for all inputs: building one per input would dominate the run time.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}
