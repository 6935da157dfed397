//! Send a file of any size over pb as a stream of chunks, with backpressure:
//! `cargo run --example file_transfer [-- PATH]`.
//!
//! Without a path it makes a 64 MiB file of test data. A server and a client run in one process
//! over TCP on 127.0.0.1: the client streams the file to the server, which writes it to a new
//! file and answers with its size and a checksum; the client checks both and exits 0.

use pb::stream::{self, Chunk, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHUNK: usize = 256 * 1024;

#[pb::remote]
pub trait Store {
    /// Write the stream to a new file; returns (bytes written, checksum, where).
    async fn put(&self, name: String, data: Stream<Chunk>) -> Result<(u64, u64, String), String>;
}

struct DiskStore {
    dir: std::path::PathBuf,
}

/// FNV-1a, enough to tell the two copies apart if they differ.
fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

impl Store for DiskStore {
    async fn put(
        &self,
        name: String,
        mut data: Stream<Chunk>,
    ) -> Result<(u64, u64, String), String> {
        let safe: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        let path = self.dir.join(format!("received-{safe}"));
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| e.to_string())?;
        let (mut bytes, mut sum) = (0u64, FNV_START);
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            sum = fnv(sum, &chunk);
            bytes += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        file.flush().await.map_err(|e| e.to_string())?;
        Ok((bytes, sum, path.display().to_string()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("pb-file-transfer-{}", std::process::id()));
    tokio::fs::create_dir_all(&dir).await?;
    let path = match std::env::args().nth(1) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let p = dir.join("sample.bin");
            let mut f = tokio::fs::File::create(&p).await?;
            let block: Vec<u8> = (0..1024 * 1024u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect();
            for _ in 0..64 {
                f.write_all(&block).await?;
            }
            f.flush().await?;
            p
        }
    };
    let size = tokio::fs::metadata(&path).await?.len();
    println!("sending {} ({size} bytes)", path.display());

    let server = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(StoreRef::new(DiskStore { dir: dir.clone() }));
    let conn = pb::Client::connect(server.local_addr()).await?;
    let store: StoreRef = conn.root();

    // The producer reads the file chunk by chunk; `send` waits while the server is 8 chunks
    // behind, so memory stays bounded whatever the file's size.
    let (tx, rx) = stream::channel(8);
    let reader = tokio::spawn({
        let path = path.clone();
        async move {
            let mut file = tokio::fs::File::open(&path).await?;
            let mut sum = FNV_START;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                sum = fnv(sum, &buf);
                if tx.send(Chunk::from(buf)).await.is_err() {
                    return Err(std::io::Error::other("the server stopped reading"));
                }
            }
            Ok::<u64, std::io::Error>(sum)
        }
    });
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_string();
    let (written, their_sum, at) = store.put(name, rx).await?;
    let our_sum = reader.await??;
    println!("the server wrote {written} bytes to {at}");
    println!("checksums: sent {our_sum:016x}, written {their_sum:016x}");
    conn.close().await;
    server.shutdown().await;
    tokio::fs::remove_dir_all(&dir).await?;
    if written != size || our_sum != their_sum {
        return Err("the copy differs from the original".into());
    }
    println!("ok");
    Ok(())
}
