//! Transports: any `AsyncRead + AsyncWrite` byte stream carries a connection. This module has
//! the two that need help: TCP (with the socket options pb wants) and an in-memory pipe for
//! tests and examples; and [`PerAddress`] and [`permits`], the counts of connections (in all
//! and per source address) that servers keep.

mod per_address;

pub use self::per_address::{AddressSlot, PerAddress};

use std::io;
use std::net::SocketAddr;

use tokio::io::DuplexStream;
use tokio::net::{TcpStream, ToSocketAddrs};

/// A semaphore of `n` permits, as servers count their connections (or logins waiting) with:
/// `n` is taken as at most [`Semaphore::MAX_PERMITS`](tokio::sync::Semaphore::MAX_PERMITS)
/// (about 2⁶¹), so that a limit of `usize::MAX` means no limit rather than a panic.
pub fn permits(n: usize) -> tokio::sync::Semaphore {
    tokio::sync::Semaphore::new(n.min(tokio::sync::Semaphore::MAX_PERMITS))
}

/// Buffer size of each direction of an in-memory pipe.
const MEMORY_PIPE_BUFFER: usize = 256 * 1024;

/// Two connected in-memory byte streams: what is written to one is read from the other.
pub fn memory_pair() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(MEMORY_PIPE_BUFFER)
}

/// Connect a TCP stream to `addr` with pb's socket options (no Nagle delay).
pub async fn tcp_connect(addr: impl ToSocketAddrs) -> io::Result<(TcpStream, SocketAddr)> {
    // As `TcpStream::connect` does: each resolved address in turn, the last error if none
    // answers. Keeping the address that answered spares asking the socket for it.
    let mut last = None;
    for peer in tokio::net::lookup_host(addr).await? {
        match TcpStream::connect(peer).await {
            Ok(stream) => {
                prepare_tcp(&stream)?;
                return Ok((stream, peer));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

/// Apply pb's socket options to an accepted or connected TCP stream.
pub fn prepare_tcp(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)
}
