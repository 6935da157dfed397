//! Cache updates buffered for a replica not decoded yet hold what they are counted for, not the
//! read buffers they arrived in. Alone in its binary: it measures the whole process's heap.

mod common;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The system allocator, counting (`stats_alloc`): the heap this process holds, in bytes.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

#[pb::remote]
pub trait Cell {
    async fn get(&self) -> Result<u64, ()>;
}

/// Keeps the references it is given.
#[pb::remote]
pub trait Keeper {
    async fn keep(&self, cell: CellRef) -> Result<(), ()>;
}

struct KeeperImpl(std::sync::Mutex<Vec<CellRef>>);

impl Keeper for KeeperImpl {
    async fn keep(&self, cell: CellRef) -> Result<(), ()> {
        self.0.lock().unwrap().push(cell);
        Ok(())
    }
}

/// Sets up a server whose root keeps what it is given, and a raw peer that gives it its object
/// 1, then floods it with `updates` 1-byte `Update`s for `object`, each followed by a 60 KB
/// update for an object the server does not hold (which it drops). Returns how much the heap
/// grew meanwhile, in bytes.
async fn flood_updates(object: u64, updates: u64) -> i64 {
    use pb::proto::message::{Message, RefDesc};
    let (a, mut raw) = pb::transport::memory_pair();
    raw.write_all(&common::HELLO).await.unwrap();
    let keeper = KeeperRef::new(KeeperImpl(Default::default()));
    let server = pb::Connection::establish(
        a,
        &pb::Config::default(),
        pb::Side::Server,
        Some(keeper.into()),
        None,
    )
    .await
    .unwrap();
    let mut hello = [0u8; 20];
    raw.read_exact(&mut hello).await.unwrap();
    // keep(our object 1): the server imports it and its root keeps it.
    raw.write_all(&common::framed(Message::Call {
        id: 1,
        target: 0,
        method: bytes::Bytes::from_static(b"keep"),
        answer: true,
        deadline_ms: None,
        extras: Default::default(),
        refs: vec![RefDesc::Sender(1)],
        payload: bytes::Bytes::from_static(&[0]),
    }))
    .await
    .unwrap();
    let answer = common::read_body(&mut raw).await.unwrap();
    let ok = common::framed(Message::Answer {
        id: 1,
        ok: true,
        refs: vec![],
        payload: bytes::Bytes::new(),
    });
    assert_eq!(answer[..3], ok[4..7], "keep answered");
    assert_eq!(server.stats().tables.imported, 1);

    let filler = common::framed(Message::Update {
        object: 999_999,
        payload: bytes::Bytes::from(vec![7u8; 60_000]),
    });
    let tiny = common::framed(Message::Update {
        object,
        payload: bytes::Bytes::from_static(&[0]),
    });
    let region = Region::new(GLOBAL);
    for _ in 0..updates {
        raw.write_all(&tiny).await.unwrap();
        raw.write_all(&filler).await.unwrap();
    }
    // A ping after them: its pong says the server has handled every update.
    raw.write_all(&common::framed(Message::Ping { nonce: 77 }))
        .await
        .unwrap();
    let pong = common::framed(Message::Pong { nonce: 77 });
    loop {
        let body = common::read_body(&mut raw).await.unwrap();
        if body[..] == pong[4..] {
            break;
        }
    }
    let change = region.change();
    assert!(!server.is_closed(), "{:?}", server.close_reason());
    // `stats_alloc` counts a reallocation's growth in `bytes_allocated` (and a shrink in
    // `bytes_deallocated`) already: `bytes_reallocated` on top would count it twice.
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

/// A hostile raw peer gives the server one reference (which the server's object keeps), then
/// sends 1-byte `Update`s for it, each followed by a 60 KB frame the server drops. The updates
/// are buffered for a replica that is never decoded (the object is no cache), counted in
/// payload bytes against the buffer's limits (4 096 updates and 16 MiB per replica, 64 MiB per
/// connection): here 1 024 bytes. Each must hold about that: a payload kept as a slice of the
/// read buffer it arrived in would keep that whole buffer alive, tens of MiB in all. The
/// control floods the same way with the 1-byte updates naming an object the server does not
/// hold (dropped, not buffered).
#[tokio::test]
async fn buffered_updates_hold_what_they_count_not_whole_read_buffers() {
    const UPDATES: u64 = 1024;
    let control = flood_updates(2, UPDATES).await;
    let held = flood_updates(1, UPDATES).await;
    eprintln!(
        "{UPDATES} updates of 1 byte: heap +{} KiB when buffered, +{} KiB when dropped",
        held / 1024,
        control / 1024
    );
    assert!(
        held < 8 << 20,
        "{UPDATES} buffered updates of 1 byte ({UPDATES} bytes counted against the 16 MiB / \
         64 MiB budgets) hold {} MiB of heap (the same flood of updates not buffered: {} KiB)",
        held >> 20,
        control / 1024
    );
}
