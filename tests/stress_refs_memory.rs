//! Stress: reference churn does not grow the process's memory. Ignored by default (it is slow
//! in debug builds); CI runs it on its own in release mode:
//! `cargo test --release --test stress_refs_memory -- --ignored`.

mod common;

#[pb::remote]
pub trait Cell {
    async fn get(&self) -> Result<u64, ()>;
}

struct Value(u64);

impl Cell for Value {
    async fn get(&self) -> Result<u64, ()> {
        Ok(self.0)
    }
}

#[pb::remote]
pub trait Factory {
    async fn make(&self, v: u64) -> Result<CellRef, ()>;
    async fn read(&self, cell: CellRef) -> Result<u64, ()>;
}

struct FactoryImpl;

impl Factory for FactoryImpl {
    async fn make(&self, v: u64) -> Result<CellRef, ()> {
        Ok(CellRef::new(Value(v)))
    }
    async fn read(&self, cell: CellRef) -> Result<u64, ()> {
        cell.get().await.map_err(|_| ())
    }
}

/// Resident set size in KiB, from /proc.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("rss field");
    pages * 4
}

async fn churn(f: &FactoryRef, n: u64) {
    for i in 0..n {
        let cell = f.make(i).await.unwrap();
        assert_eq!(cell.get().await, Ok(i));
        drop(cell);
        assert_eq!(f.read(CellRef::new(Value(i))).await, Ok(i));
    }
}

#[tokio::test]
#[ignore = "stress test, run on its own in release mode"]
async fn reference_churn_keeps_memory_flat() {
    let (server, client) = common::memory_pair(FactoryRef::new(FactoryImpl)).await;
    let f: FactoryRef = client.root();
    // Warm up allocator pools and table capacities.
    churn(&f, 20_000).await;
    let before = rss_kib();
    churn(&f, 200_000).await;
    assert!(
        common::settle(|| server.stats().tables.exported + client.stats().tables.exported == 0)
            .await
    );
    let after = rss_kib();
    println!("rss before {before} KiB, after 400 000 more reference cycles {after} KiB");
    // A leak of even 16 bytes per cycle would add over 6 MiB.
    assert!(
        after < before + 4096,
        "rss grew from {before} KiB to {after} KiB"
    );
}
