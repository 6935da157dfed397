//! Transports: any `AsyncRead + AsyncWrite` byte stream carries a connection. This module has
//! the two that need help: TCP (with the socket options pb wants) and an in-memory pipe for
//! tests and examples.

use std::io;
use std::net::SocketAddr;

use tokio::io::DuplexStream;
use tokio::net::{TcpStream, ToSocketAddrs};

/// Buffer size of each direction of an in-memory pipe.
const MEMORY_PIPE_BUFFER: usize = 256 * 1024;

/// Two connected in-memory byte streams: what is written to one is read from the other.
pub fn memory_pair() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(MEMORY_PIPE_BUFFER)
}

/// Connect a TCP stream to `addr` with pb's socket options (no Nagle delay).
pub async fn tcp_connect(addr: impl ToSocketAddrs) -> io::Result<(TcpStream, SocketAddr)> {
    let stream = TcpStream::connect(addr).await?;
    prepare_tcp(&stream)?;
    let peer = stream.peer_addr()?;
    Ok((stream, peer))
}

/// Apply pb's socket options to an accepted or connected TCP stream.
pub fn prepare_tcp(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)
}
