//! Starting a connection: the hello (ours queued or written, the peer's read and checked, its
//! limits taken in), the accepting and dialing paths, and the tasks that run a connection.

use super::*;

/// A hello as a whole frame, on the stack (it is copied into the output anyway).
pub(super) struct HelloFrame {
    pub(super) buf: [u8; HEADER_LEN + HELLO_WINDOW_LEN],
    pub(super) len: usize,
}

impl HelloFrame {
    pub(super) fn as_slice(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&self.buf)
    }
}

/// Our hello as a whole frame.
pub(super) fn hello_frame(ours: &Hello) -> HelloFrame {
    let mut buf = [0u8; HEADER_LEN + HELLO_WINDOW_LEN];
    let body = ours.encoded_len();
    let mut out = &mut buf[..];
    out.put_u32(body as u32);
    ours.encode(&mut out);
    HelloFrame {
        buf,
        len: HEADER_LEN + body,
    }
}

/// The most read buffers a thread keeps for its next connections, and the largest it keeps.
const SPARE_READ_BUFFERS: usize = 4;
const SPARE_READ_CAPACITY: usize = 4 * MIN_READ;

thread_local! {
    /// Read buffers of connections that ended on this thread, for the next ones: a buffer of a
    /// few kilobytes is too large for the allocator's per-thread cache, and costs more to
    /// allocate and free than the rest of a connection's allocations together.
    static SPARE_READ: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A new connection's read buffer, with room for [`MIN_READ`] bytes (the room the reader keeps
/// before each read anyway).
pub(super) fn read_buffer() -> BytesMut {
    SPARE_READ
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(MIN_READ))
}

/// Keep an ended connection's read buffer for the next one, if it is small and no frame still
/// holds a part of it.
pub(super) fn recycle_read_buffer(mut rbuf: BytesMut) {
    rbuf.clear();
    if rbuf.try_reclaim(MIN_READ) && rbuf.capacity() <= SPARE_READ_CAPACITY {
        SPARE_READ.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_READ_BUFFERS {
                spare.push(rbuf);
            }
        });
    }
}

/// Read the peer's hello into `rbuf` and check it against ours; what follows it stays in
/// `rbuf`.
pub(super) async fn read_hello<R: AsyncRead + Unpin>(
    io: &mut R,
    rbuf: &mut BytesMut,
    ours: &Hello,
) -> Result<Hello, ConnectError> {
    loop {
        if let Some(theirs) = take_hello(rbuf, ours)? {
            return Ok(theirs);
        }
        if io.read_buf(rbuf).await? == 0 {
            return Err(ConnectError::Closed);
        }
    }
}

/// Check the peer's hello at the front of `rbuf` against ours and take it out: `None` while
/// more bytes are needed to tell.
pub(super) fn take_hello(
    rbuf: &mut BytesMut,
    ours: &Hello,
) -> Result<Option<Hello>, HandshakeError> {
    // Check the header and then the magic as soon as each is in, so a non-pb peer is told
    // apart early; the body may be incomplete until then: never index into it.
    let Some(&[l0, l1, l2, l3]) = rbuf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    // Report the four bytes where the magic should be, or the first four if even the header
    // is not a hello's.
    let bad_magic = |at: usize| {
        let mut magic = [0u8; 4];
        for (m, b) in magic.iter_mut().zip(rbuf.iter().skip(at)) {
            *m = *b;
        }
        HandshakeError::BadMagic { magic }
    };
    if !(HELLO_LEN..=HELLO_MAX_LEN).contains(&len) {
        return Err(bad_magic(0));
    }
    if rbuf
        .get(HEADER_LEN..HEADER_LEN + 4)
        .is_some_and(|m| m != crate::handshake::MAGIC)
    {
        return Err(bad_magic(HEADER_LEN));
    }
    let Some(body) = rbuf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let theirs = Hello::decode(body)?;
    let _features = ours.negotiate(&theirs)?;
    bytes::Buf::advance(rbuf, HEADER_LEN + len);
    Ok(Some(theirs))
}

/// What a connection's reader and writer tasks start with.
pub(super) struct Tasks {
    /// Bytes read after the peer's hello (or before it, with `check`).
    pub(super) rbuf: BytesMut,
    pub(super) decoder: FrameDecoder,
    pub(super) timers: Timers,
    pub(super) span: tracing::Span,
    /// Our hello, when the reader has to check the peer's before any frame.
    pub(super) check: Option<Hello>,
    pub(super) handshake_timeout: Duration,
    /// Spawn the reader, or return it.
    pub(super) spawn: bool,
}

impl Tasks {
    pub(super) fn start<R: AsyncRead + Send + Unpin + 'static>(
        self,
        shared: &Arc<ConnShared>,
        rd: R,
        wr: Box<dyn AsyncWrite + Send + Unpin>,
    ) -> Option<ConnectionReader> {
        *shared.lock_out() = Some(Output {
            wr,
            queue: Vec::new(),
            first: 0,
            tail: BytesMut::new(),
            writer_waiting: false,
        });
        let Tasks {
            rbuf,
            decoder,
            timers,
            span,
            check,
            handshake_timeout,
            spawn,
        } = self;
        let check = check.map(|ours| (ours, handshake_timeout));
        let reader = run_reader(
            shared.clone(),
            rd,
            rbuf,
            decoder,
            timers,
            check,
            span.clone(),
        );
        shared.wake_writer.prepare(shared, span);
        if spawn {
            tokio::spawn(reader);
            None
        } else {
            Some(reader)
        }
    }
}

/// A connection's reader, for the caller to run (see [`Connection::establish_with_reader`]).
pub type ConnectionReader = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

impl ConnShared {
    /// Whether split frames go both ways with the peer whose hello is `theirs`: both offer
    /// [`Features::TAILS`].
    pub(super) fn split_frames(&self, theirs: &Hello) -> bool {
        self.features
            .intersect(theirs.features)
            .contains(Features::TAILS)
    }

    /// The peer's hello arrived: from now on what we send is held to the limits it carries.
    /// Returns whether that queued output (see [`Broker::set_peer_limits`]).
    pub(super) fn peer_hello(&self, theirs: &Hello) -> bool {
        let queued = {
            let mut broker = self.lock();
            broker.set_split_frames(self.split_frames(theirs));
            broker.set_peer_limits(theirs.limits)
        };
        self.peer_known.store(true, Ordering::Release);
        self.peer_hello.notify_waiters();
        queued
    }
}

impl Connection {
    /// Run the handshake over `io` and start the connection's tasks.
    ///
    /// Waits for the peer's hello (at most `Config::handshake_timeout`): a refused hello is this
    /// function's error. The dialing side ([`Side::Client`]) sends its hello first; the
    /// accepting side answers once the dialer's has arrived (every pb dialer sends its hello
    /// without waiting), in the same write as its first answer, and sends it even when it
    /// refuses the dialer's, so that both sides can tell why. `root` is the object the peer
    /// reaches as its root (`None` to serve nothing). A dialing side that wants its first call
    /// to leave at once uses [`Connection::dial`].
    pub async fn establish<T>(
        io: T,
        config: &Config,
        side: Side,
        root: Option<ObjectRef>,
        peer_addr: Option<SocketAddr>,
    ) -> Result<Connection, ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let established = Self::handshake(io, config, side, root, peer_addr, true).await?;
        Ok(established.0)
    }

    /// As [`Connection::establish`], but the connection's reader is returned instead of
    /// spawned: the connection reads from the peer (and so answers its calls, and notices
    /// that it closed) only while the caller runs it. It completes once the connection has
    /// closed. A server runs it in the task it already has for the connection, which spares a
    /// task per connection. Our hello (a server's answer to the dialer's) does not wait for
    /// the reader to run: it is written before this returns, unless the peer sent a frame with
    /// its hello (as [`Connection::dial`] does), which the reader's first batch answers, our
    /// hello in the same write.
    ///
    /// ```
    /// use pb::{Config, Connection, Side};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), pb::ConnectError> {
    /// let (a, b) = pb::transport::memory_pair();
    /// let config = Config::default();
    /// let (server, client) = tokio::join!(
    ///     Connection::establish_with_reader(a, &config, Side::Server, None, None),
    ///     Connection::establish(b, &config, Side::Client, None, None),
    /// );
    /// let ((server, reader), client) = (server?, client?);
    /// // The task that accepted the connection runs its reader until the connection ends.
    /// let serving = tokio::spawn(reader);
    /// client.close().await;
    /// serving.await.expect("the reader ends once the peer has closed");
    /// assert!(server.close_reason().is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn establish_with_reader<T>(
        io: T,
        config: &Config,
        side: Side,
        root: Option<ObjectRef>,
        peer_addr: Option<SocketAddr>,
    ) -> Result<(Connection, ConnectionReader), ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (conn, reader) = Self::handshake(io, config, side, root, peer_addr, false).await?;
        // Without a reader to spawn, `start` hands it back (always, for a transport it split).
        Ok((
            conn,
            reader.unwrap_or_else(|| Box::pin(std::future::ready(()))),
        ))
    }

    /// `establish`, spawning the reader or handing it back.
    pub(super) async fn handshake<T>(
        mut io: T,
        config: &Config,
        side: Side,
        root: Option<ObjectRef>,
        peer_addr: Option<SocketAddr>,
        spawn: bool,
    ) -> Result<(Connection, Option<ConnectionReader>), ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let plain = Hello::ours(config.features);
        let ours = plain.with_limits(config.limits.receive());
        let mut rbuf = read_buffer();
        let exchange = async {
            if side == Side::Client {
                io.write_all(hello_frame(&ours).as_slice()).await?;
                io.flush().await?;
            }
            read_hello(&mut io, &mut rbuf, &ours).await
        };
        let theirs = match tokio::time::timeout(config.handshake_timeout, exchange).await {
            Ok(Ok(theirs)) => theirs,
            Ok(Err(e)) => {
                if side == Side::Server {
                    // The hello every build reads, so that the dialer can tell why.
                    let _ = io.write_all(hello_frame(&plain).as_slice()).await;
                    let _ = io.flush().await;
                }
                let _ = io.shutdown().await;
                return Err(e);
            }
            Err(_) => return Err(ConnectError::Timeout(config.handshake_timeout)),
        };
        // Our limits go only to a dialer whose hello carried its own: builds from before
        // limits were carried refuse a hello longer than 16 bytes.
        let answer =
            (side == Side::Server).then_some(if theirs.limits.is_some() { ours } else { plain });
        Ok(Connection::start(
            io,
            config,
            side,
            root,
            peer_addr,
            rbuf,
            (answer, Some(theirs)),
            None,
            spawn,
        ))
    }

    /// Start a connection as the side that dialed, without waiting for the peer's hello.
    ///
    /// Our hello is queued as the connection's first bytes and the connection is returned at
    /// once, so the first call leaves with the hello, in the same write: connecting and one
    /// call cost one round trip, not two. The reader checks the peer's hello before any other
    /// frame. If the peer refuses ours or sends a bad one (another protocol version, not pb at
    /// all), the connection closes with [`CloseReason::Handshake`], and calls made before or
    /// after fail with [`CallError::Handshake`](crate::CallError::Handshake), which names the
    /// handshake error; a peer that sends no hello within `Config::handshake_timeout` closes it
    /// with [`CloseReason::IdleTimeout`]. [`Connection::closed`] and
    /// [`Connection::close_reason`] report it too.
    ///
    /// The peer's side is unchanged: any peer that runs [`Connection::establish`] accepts a
    /// dialed connection. The error is only an `Err` of this function if the transport fails
    /// while the hello is written.
    pub async fn dial<T>(
        io: T,
        config: &Config,
        root: Option<ObjectRef>,
        peer_addr: Option<SocketAddr>,
    ) -> Result<Connection, ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let ours = Hello::ours(config.features).with_limits(config.limits.receive());
        let rbuf = read_buffer();
        let (conn, _) = Connection::start(
            io,
            config,
            Side::Client,
            root,
            peer_addr,
            rbuf,
            (Some(ours), None),
            Some(ours),
            true,
        );
        Ok(conn)
    }

    /// Start the connection's tasks. `send` is our hello, queued as the first bytes, if it is
    /// still to be sent, and `theirs` the peer's, if it has arrived; with `check`, the reader
    /// checks the peer's before any frame. Without `spawn`, the reader is returned for the
    /// caller to run.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start<T>(
        io: T,
        config: &Config,
        side: Side,
        root: Option<ObjectRef>,
        peer_addr: Option<SocketAddr>,
        rbuf: BytesMut,
        (send, theirs): (Option<Hello>, Option<Hello>),
        check: Option<Hello>,
        spawn: bool,
    ) -> (Connection, Option<ConnectionReader>)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let shared = ConnShared::new(config, side, peer_addr, root);
        if let Some(ours) = &send {
            shared.lock().queue_raw(hello_frame(ours).as_slice());
        }
        if let Some(theirs) = &theirs {
            shared.peer_hello(theirs);
        }
        let mut decoder = FrameDecoder::new(config.limits.receive().max_frame_len);
        if let Some(theirs) = &theirs {
            decoder.accept_tails(shared.split_frames(theirs));
        }
        // A frame that came with the peer's hello (a dialer's first call) is answered by the
        // reader's first batch, which our hello then leaves with.
        let frame_waiting = rbuf.get(..HEADER_LEN).is_some_and(|h| {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            rbuf.len() - HEADER_LEN >= len
        });
        let timers = Timers {
            keepalive: config.keepalive_interval,
            idle: config.idle_timeout,
            hello: None,
        };
        let span = tracing::debug_span!(
            "pb.connection",
            connection = shared.id,
            side = ?side,
            peer = ?peer_addr,
        );
        let tasks = Tasks {
            rbuf,
            decoder,
            timers,
            span,
            check,
            handshake_timeout: config.handshake_timeout,
            spawn,
        };
        // TCP splits into owned halves; any other transport goes through `tokio::io::split`,
        // whose halves share a lock taken on every read and write.
        let mut io = Some(io);
        let tcp = (&mut io as &mut dyn Any)
            .downcast_mut::<Option<tokio::net::TcpStream>>()
            .and_then(Option::take);
        let mut reader = None;
        if let Some(tcp) = tcp {
            let (rd, wr) = tcp.into_split();
            reader = tasks.start(&shared, rd, Box::new(wr));
        } else if let Some(io) = io {
            let (rd, wr) = tokio::io::split(io);
            reader = tasks.start(&shared, rd, Box::new(wr));
        }
        // A reader handed back runs when its caller gets to it, maybe only after waiting for
        // the peer, which may be waiting for our hello: unless a frame already came with the
        // peer's (then the peer does not wait for ours), it leaves now, not with the reader's
        // first batch.
        if reader.is_some() && send.is_some() && !frame_waiting {
            shared.flush_now();
        }
        tracing::debug!(
            connection = shared.id,
            ?side,
            ?peer_addr,
            "connection established"
        );
        (Connection::new(shared), reader)
    }
}
