//! Two pb AMP connections over an in-memory duplex stream: calls both ways, the error model,
//! no-answer commands, StartTLS, limits and disconnects.

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

mod common;

use common::tls_configs;

use std::sync::{Arc, Mutex};

use pb::amp::{
    AmpBox, AmpCallError, AmpConfig, AmpConnection, AmpProtocolError, BoxCodecConfig,
    BoxCodecError, DisconnectReason, Locator, RemoteError, rustls,
};
use tokio::sync::oneshot;

#[derive(pb::AmpCommand, Clone)]
#[amp(response = SumResult)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(pb::AmpFields, Debug, PartialEq)]
struct SumResult {
    total: i64,
}

#[derive(pb::AmpCommand)]
#[amp(response = SumResult, errors = MathError)]
struct Divide {
    numerator: i64,
    denominator: i64,
}

#[derive(pb::AmpError, Debug, PartialEq)]
enum MathError {
    #[amp(code = "ZERO_DIVISION")]
    ZeroDivision(String),
    #[amp(code = "NEGATIVE", description = "negative numbers are not allowed")]
    Negative,
    #[amp(code = "MELTDOWN", fatal)]
    Meltdown(String),
}

#[derive(pb::AmpCommand)]
#[amp(requires_answer = false)]
struct Log {
    line: String,
}

#[derive(pb::AmpCommand)]
#[amp(response = Lines)]
struct GetLog {}

#[derive(pb::AmpFields, Debug, PartialEq)]
struct Lines {
    lines: Vec<String>,
}

#[derive(pb::AmpCommand)]
struct Wait {}

fn pair(
    server: impl FnOnce(&AmpConnection) -> Locator,
    client: Locator,
) -> (AmpConnection, AmpConnection) {
    pair_with(AmpConfig::default(), server, AmpConfig::default(), client)
}

fn pair_with(
    server_config: AmpConfig,
    server: impl FnOnce(&AmpConnection) -> Locator,
    client_config: AmpConfig,
    client: Locator,
) -> (AmpConnection, AmpConnection) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = AmpConnection::spawn_with(a, server_config, server);
    let client = AmpConnection::spawn(b, client_config, client);
    (server, client)
}

fn math() -> Locator {
    Locator::new()
        .respond(|Sum { a, b }| async move { Ok(SumResult { total: a + b }) })
        .respond(
            |Divide {
                 numerator,
                 denominator,
             }| async move {
                match denominator {
                    0 => Err(MathError::ZeroDivision("division by zero".into())),
                    d if d < 0 => Err(MathError::Negative),
                    _ if numerator == 666 => Err(MathError::Meltdown("core breach".into())),
                    d => Ok(SumResult {
                        total: numerator / d,
                    }),
                }
            },
        )
}

#[tokio::test]
async fn declared_errors_keep_the_connection() {
    let (_server, client) = pair(|_| math(), Locator::new());
    assert_eq!(
        client
            .call(&Divide {
                numerator: 1,
                denominator: 0
            })
            .await,
        Err(AmpCallError::Declared(MathError::ZeroDivision(
            "division by zero".into()
        )))
    );
    let negative = client
        .call(&Divide {
            numerator: 1,
            denominator: -1,
        })
        .await
        .unwrap_err();
    assert_eq!(negative, AmpCallError::Declared(MathError::Negative));
    assert_eq!(
        client
            .call(&Divide {
                numerator: 9,
                denominator: 3
            })
            .await,
        Ok(SumResult { total: 3 })
    );
}

#[tokio::test]
async fn fatal_errors_arrive_then_close() {
    let (server, client) = pair(|_| math(), Locator::new());
    assert_eq!(
        client
            .call(&Divide {
                numerator: 666,
                denominator: 1
            })
            .await,
        Err(AmpCallError::Declared(MathError::Meltdown(
            "core breach".into()
        )))
    );
    assert_eq!(client.closed().await, DisconnectReason::PeerClosed);
    assert_eq!(server.closed().await, DisconnectReason::LocalClosed);
    assert!(matches!(
        client.call(&Sum { a: 1, b: 1 }).await,
        Err(AmpCallError::Disconnected(_))
    ));
}

#[tokio::test]
async fn both_sides_call_each_other() {
    #[derive(pb::AmpCommand)]
    #[amp(response = SumResult)]
    struct AskBack {
        a: i64,
    }
    let (server, client) = pair(
        |conn| {
            let conn = conn.clone();
            Locator::new().respond(move |AskBack { a }| {
                let conn = conn.clone();
                async move {
                    let r = conn.call(&Sum { a, b: 100 }).await.expect("client answers");
                    Ok(SumResult { total: r.total * 2 })
                }
            })
        },
        math(),
    );
    assert_eq!(client.call(&AskBack { a: 1 }).await.unwrap().total, 202);
    assert_eq!(server.call(&Sum { a: 2, b: 3 }).await.unwrap().total, 5);
}

#[tokio::test]
async fn unhandled_commands_keep_the_connection() {
    let (_server, client) = pair(|_| math(), Locator::new());
    match client.call_raw("Nope", AmpBox::new()).await {
        Err(AmpCallError::Unhandled { description }) => {
            assert_eq!(description, "Unhandled Command: b'Nope'")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.call(&Sum { a: 1, b: 2 }).await.unwrap().total, 3);
}

#[tokio::test]
async fn bad_arguments_are_unknown_and_close() {
    let (server, client) = pair(|_| math(), Locator::new());
    let mut args = AmpBox::new();
    args.insert("a", "1");
    match client.call_raw("Sum", args).await {
        Err(AmpCallError::Remote { code, description }) => {
            assert_eq!(code, "UNKNOWN");
            assert_eq!(description, "Unknown Error");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        server.closed().await,
        DisconnectReason::Protocol(AmpProtocolError::ResponderFailed(..))
    ));
    assert_eq!(client.closed().await, DisconnectReason::PeerClosed);
}

#[tokio::test]
async fn a_panicking_responder_is_unknown_and_closes() {
    // In its future, and in the closure that makes the future (which used to unwind the
    // driver itself: no `UNKNOWN`, and a close reason of `LocalClosed`).
    for in_closure in [false, true] {
        let (server, client) = pair(
            |_| {
                Locator::new().respond(move |Sum { .. }| {
                    if in_closure {
                        panic!("responder bug, before its future");
                    }
                    async move {
                        if true {
                            panic!("responder bug");
                        }
                        Ok(SumResult { total: 0 })
                    }
                })
            },
            Locator::new(),
        );
        match client.call(&Sum { a: 1, b: 1 }).await {
            Err(AmpCallError::Remote { code, .. }) => assert_eq!(code, "UNKNOWN"),
            other => panic!("{other:?}"),
        }
        assert_eq!(client.closed().await, DisconnectReason::PeerClosed);
        match server.closed().await {
            DisconnectReason::Protocol(AmpProtocolError::ResponderFailed(name, why)) => {
                assert_eq!(&name[..], b"Sum");
                assert!(why.contains("responder bug"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn raw_responders_and_raw_calls() {
    let (_server, client) = pair(
        |_| {
            Locator::new().respond_raw("Echo", |args: AmpBox| async move {
                if args.contains_key("fail") {
                    Err(RemoteError::new("NOPE", "asked to fail"))
                } else {
                    Ok(args)
                }
            })
        },
        Locator::new(),
    );
    let mut args = AmpBox::new();
    args.insert("x", "1");
    assert_eq!(client.call_raw("Echo", args.clone()).await.unwrap(), args);
    args.insert("fail", "");
    assert_eq!(
        client.call_raw("Echo", args).await,
        Err(AmpCallError::Remote {
            code: "NOPE".into(),
            description: "asked to fail".into()
        })
    );
}

/// A server that keeps what `keep` makes of each `Log` line and gives the list back on
/// `GetLog`, and a client of it.
fn logging_pair(
    keep: impl Fn(String) -> String + Send + Sync + 'static,
) -> (AmpConnection, AmpConnection) {
    let log = Arc::new(Mutex::new(Vec::new()));
    pair(
        |_| {
            let writer = Arc::clone(&log);
            Locator::new()
                .respond(move |Log { line }| {
                    writer.lock().unwrap().push(keep(line));
                    async { Ok(()) }
                })
                .respond(move |GetLog {}| {
                    let lines = log.lock().unwrap().clone();
                    async move { Ok(Lines { lines }) }
                })
        },
        Locator::new(),
    )
}

#[tokio::test]
async fn no_answer_commands_run_in_arrival_order() {
    let (_server, client) = logging_pair(|line| line);
    let want: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
    for line in &want {
        client.send(&Log { line: line.clone() }).await.unwrap();
    }
    assert_eq!(client.call(&GetLog {}).await.unwrap().lines, want);
}

/// More queued at once than the output may hold (256 KiB): the driver takes what fits, puts
/// the rest back ahead of anything newer, and takes it once the output drains. Nothing is
/// lost and the order holds.
#[tokio::test]
async fn requests_queued_past_the_output_limit_wait_their_turn_in_order() {
    // Each line kept as its first byte and length (all of them would not fit in one AMP value).
    let summary = |line: &str| format!("{}{}", &line[..1], line.len());
    let (_server, client) = logging_pair(move |line| summary(&line));
    // 20 lines of 60 000 bytes, queued by 20 tasks before the driver runs: 1.2 MB.
    let want: Vec<String> = (0..20u8)
        .map(|i| char::from(b'a' + i).to_string().repeat(60_000))
        .collect();
    let sends: Vec<_> = want
        .iter()
        .map(|line| {
            let client = client.clone();
            let line = line.clone();
            tokio::spawn(async move { client.send(&Log { line }).await })
        })
        .collect();
    for send in sends {
        send.await.unwrap().unwrap();
    }
    let kept: Vec<String> = want.iter().map(|line| summary(line)).collect();
    assert_eq!(client.call(&GetLog {}).await.unwrap().lines, kept);
}

#[tokio::test]
async fn a_failing_no_answer_command_closes_like_twisted() {
    let (server, client) = pair(|_| math(), Locator::new());
    client.send_raw("Nope", AmpBox::new()).await.unwrap();
    assert!(matches!(
        server.closed().await,
        DisconnectReason::Protocol(AmpProtocolError::FailedWithoutAnswer(_))
    ));
    assert_eq!(client.closed().await, DisconnectReason::PeerClosed);
}

#[tokio::test]
async fn a_failing_no_answer_command_can_be_tolerated() {
    let (_server, client) = pair_with(
        AmpConfig::default().close_on_failed_no_answer(false),
        |_| math(),
        AmpConfig::default(),
        Locator::new(),
    );
    client.send_raw("Nope", AmpBox::new()).await.unwrap();
    assert_eq!(client.call(&Sum { a: 1, b: 1 }).await.unwrap().total, 2);
}

/// A box of `keys` pairs of `value_len`-byte values: each pair within AMP's limits.
fn wide_box(keys: usize, value_len: usize) -> AmpBox {
    (0..keys)
        .map(|i| (format!("k{i:04}"), vec![b'x'; value_len]))
        .collect()
}

#[tokio::test]
async fn a_box_over_the_peers_limits_fails_alone_and_is_never_sent() {
    let (server, client) = pair(
        |_| {
            Locator::new()
                .respond_raw("Echo", |args: AmpBox| async move { Ok(args) })
                // An answer of 20 values of 60 000 bytes: 1.2 MB, over a pb peer's 1 MiB.
                .respond_raw("Wide", |_| async move { Ok(wide_box(20, 60_000)) })
        },
        Locator::new(),
    );
    // Calls over the peer's limits (the default of `send_limits`) fail alone, before anything
    // is sent: more keys than 1 024 (the two special keys count), more bytes than 1 MiB.
    assert_eq!(
        client.call_raw("Echo", wide_box(1023, 1)).await,
        Err(AmpCallError::Encode(BoxCodecError::TooManyKeys {
            max: 1024
        }))
    );
    assert_eq!(
        client.call_raw("Echo", wide_box(20, 60_000)).await,
        Err(AmpCallError::Encode(BoxCodecError::BoxTooLarge {
            max: 1024 * 1024
        }))
    );
    // Just within both: sent and answered (compared, not printed: they are large).
    for within in [wide_box(1022, 1), wide_box(17, 60_000)] {
        let echoed = client.call_raw("Echo", within.clone()).await;
        assert!(echoed.as_ref().is_ok_and(|b| *b == within), "echo failed");
    }
    assert!(!client.is_closed() && !server.is_closed());
    // An answer over them is a responder's failure, as Twisted treats one: `UNKNOWN`, and the
    // answering side closes; the peer never receives a box it would refuse.
    match client.call_raw("Wide", AmpBox::new()).await {
        Err(AmpCallError::Remote { code, .. }) => assert_eq!(&code[..], b"UNKNOWN"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        server.closed().await,
        DisconnectReason::Protocol(AmpProtocolError::ResponderFailed(..))
    ));
}

#[tokio::test]
async fn send_limits_can_be_raised_for_a_peer_that_accepts_more() {
    let wide = BoxCodecConfig::default().max_box_bytes(2 * 1024 * 1024);
    let config = AmpConfig::default().codec(wide).send_limits(wide);
    let (_server, client) = pair_with(
        config.clone(),
        |_| Locator::new().respond_raw("Echo", |args: AmpBox| async move { Ok(args) }),
        config,
        Locator::new(),
    );
    let big = wide_box(20, 60_000);
    let echoed = client.call_raw("Echo", big.clone()).await;
    assert!(echoed.as_ref().is_ok_and(|b| *b == big), "echo failed");
}

#[tokio::test]
async fn outstanding_asks_are_capped() {
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel::<oneshot::Sender<()>>();
    let (_server, client) = pair_with(
        AmpConfig::default(),
        move |_| {
            Locator::new().respond(move |Wait {}| {
                let (tx, rx) = oneshot::channel();
                let _ = held_tx.send(tx);
                async move {
                    let _ = rx.await;
                    Ok(())
                }
            })
        },
        AmpConfig::default().max_outstanding(2),
        Locator::new(),
    );
    let first = tokio::spawn({
        let c = client.clone();
        async move { c.call(&Wait {}).await }
    });
    let second = tokio::spawn({
        let c = client.clone();
        async move { c.call(&Wait {}).await }
    });
    // Both asks are outstanding once the server holds both of them.
    let release = [held.recv().await.unwrap(), held.recv().await.unwrap()];
    assert_eq!(
        client.call(&Wait {}).await,
        Err(AmpCallError::TooManyOutstanding { max: 2 })
    );
    for tx in release {
        let _ = tx.send(());
    }
    assert_eq!(first.await.unwrap(), Ok(()));
    assert_eq!(second.await.unwrap(), Ok(()));
    assert_eq!(
        client.call(&Sum { a: 1, b: 1 }).await.unwrap_err(),
        AmpCallError::Unhandled {
            description: "Unhandled Command: b'Sum'".into()
        }
    );
}

#[tokio::test]
async fn pending_calls_fail_when_the_connection_closes() {
    let (arrived_tx, arrived) = oneshot::channel();
    let arrived_tx = Mutex::new(Some(arrived_tx));
    let (server, client) = pair(
        move |_| {
            Locator::new().respond(move |Wait {}| {
                if let Some(tx) = arrived_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                std::future::pending()
            })
        },
        Locator::new(),
    );
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.call(&Wait {}).await }
    });
    // Close from the server once the ask is in; its answer can then never come.
    arrived.await.unwrap();
    server.close();
    assert!(matches!(
        call.await.unwrap(),
        Err(AmpCallError::Disconnected(DisconnectReason::PeerClosed))
    ));
}

#[tokio::test(start_paused = true)]
async fn more_calls_than_the_queue_holds_and_abandoned_ones_leave_the_others_answered() {
    let (_server, client) = pair(|_| math(), Locator::new());
    let mut calls = tokio::task::JoinSet::new();
    // Started in one scheduler tick: most wait for room in the connection's queue.
    for i in 0..500 {
        let c = client.clone();
        calls.spawn(async move { (i, c.call(&Sum { a: i, b: 1 }).await) });
    }
    // Calls given up on once queued: their answers come to nobody.
    for i in 0..100 {
        let sum = Sum { a: i, b: 2 };
        let call = client.call(&sum);
        assert!(
            tokio::time::timeout(std::time::Duration::ZERO, call)
                .await
                .is_err()
        );
    }
    while let Some(done) = calls.join_next().await {
        let (i, answer) = done.unwrap();
        assert_eq!(answer.unwrap().total, i + 1);
    }
    assert_eq!(client.call(&Sum { a: 2, b: 2 }).await.unwrap().total, 4);
}

#[tokio::test]
async fn dropping_every_handle_of_a_pure_client_closes_it() {
    let (server, client) = pair(|_| math(), Locator::new());
    assert_eq!(client.call(&Sum { a: 1, b: 1 }).await.unwrap().total, 2);
    drop(client);
    assert_eq!(server.closed().await, DisconnectReason::PeerClosed);
}

#[tokio::test]
async fn oversized_values_are_refused_locally() {
    #[derive(pb::AmpCommand)]
    #[amp(response = Echoed)]
    struct Echo {
        s: pb::amp::Bytes,
    }
    #[derive(pb::AmpFields)]
    struct Echoed {
        s: pb::amp::Bytes,
    }
    let (_server, client) = pair(
        |_| Locator::new().respond(|Echo { s }| async move { Ok(Echoed { s }) }),
        Locator::new(),
    );
    let max = pb::amp::Bytes::from(vec![7u8; 65535]);
    assert_eq!(client.call(&Echo { s: max.clone() }).await.unwrap().s, max);
    assert!(matches!(
        client
            .call(&Echo {
                s: vec![7u8; 65536].into()
            })
            .await,
        Err(AmpCallError::Arguments(_))
    ));
    let mut long_key = AmpBox::new();
    long_key.insert(vec![b'k'; 256], "v");
    assert!(matches!(
        client.call_raw("Echo", long_key).await,
        Err(AmpCallError::Encode(pb::amp::BoxCodecError::KeyTooLong {
            len: 256
        }))
    ));
    assert_eq!(client.call(&Echo { s: "ok".into() }).await.unwrap().s, "ok");
}

#[tokio::test]
async fn start_tls_between_pb_peers() {
    let (server_tls, client_tls) = tls_configs();
    let (server, client) = pair_with(
        AmpConfig::default().tls_server(server_tls),
        |_| math(),
        AmpConfig::default(),
        math(),
    );
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // A call queued while the switch is under way goes over TLS afterwards.
    let (tls, early) = tokio::join!(
        client.start_tls(Arc::clone(&client_tls), name.clone()),
        client.call(&Sum { a: 1, b: 2 })
    );
    tls.unwrap();
    assert_eq!(early.unwrap().total, 3);
    assert_eq!(client.call(&Sum { a: 40, b: 2 }).await.unwrap().total, 42);
    assert_eq!(server.call(&Sum { a: 4, b: 2 }).await.unwrap().total, 6);
    assert_eq!(
        client.start_tls(client_tls, name).await,
        Err(AmpCallError::OnlyOneTls)
    );
}

#[tokio::test]
async fn start_tls_without_a_server_config_is_tls_error() {
    let (_, client_tls) = tls_configs();
    let (_server, client) = pair(|_| math(), Locator::new());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert_eq!(
        client.start_tls(client_tls, name).await,
        Err(AmpCallError::Remote {
            code: "TLS_ERROR".into(),
            description: "TLS not available".into()
        })
    );
    assert_eq!(client.call(&Sum { a: 1, b: 1 }).await.unwrap().total, 2);
}

/// Over transports that buffer (a `BufWriter` in front of a pipe far smaller than what is
/// written), a flush often cannot finish at once: the driver flushes right after a write when
/// it can and later when it cannot, and every answer still arrives.
#[tokio::test]
async fn answers_arrive_over_transports_whose_flush_has_to_wait() {
    let (a, b) = tokio::io::duplex(256);
    let server = AmpConnection::spawn(
        tokio::io::BufWriter::with_capacity(64 * 1024, a),
        AmpConfig::default(),
        math(),
    );
    let client = AmpConnection::spawn(
        tokio::io::BufWriter::with_capacity(64 * 1024, b),
        AmpConfig::default(),
        Locator::new(),
    );
    // Sequential calls: each answer is written and flushed on its own.
    for i in 0..50 {
        assert_eq!(client.call(&Sum { a: i, b: 1 }).await.unwrap().total, i + 1);
    }
    // Many at once: their boxes and answers fill the pipe many times over.
    let calls = (0..400).map(|i| {
        let client = client.clone();
        tokio::spawn(async move { client.call(&Sum { a: i, b: i }).await })
    });
    for (i, call) in calls.collect::<Vec<_>>().into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap().total, 2 * i as i64);
    }
    drop(server);
}

/// Where a [`Failing`] transport fails.
#[derive(Clone, Copy, Debug)]
enum Fails {
    /// Writes go through and flushes fail: a broken link found on flush.
    Flush,
    /// Writes fail: a broken link found on write.
    Write,
    /// Writes write nothing.
    WriteZero,
    /// A write waits once (its waker woken at once), then fails, or then writes nothing: the
    /// failure is met by a write made after a wait rather than at once.
    AfterWait(bool),
}

/// A transport that fails where `.1` says (`.2`: whether a write has waited yet).
struct Failing<S>(S, Fails, bool);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Failing<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Failing<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.1 {
            Fails::Flush => std::pin::Pin::new(&mut self.0).poll_write(cx, buf),
            Fails::Write => std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Fails::WriteZero => std::task::Poll::Ready(Ok(0)),
            Fails::AfterWait(_) if !self.2 => {
                self.2 = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            Fails::AfterWait(zero) => std::task::Poll::Ready(if zero {
                Ok(0)
            } else {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.1 {
            Fails::Flush => std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            _ => std::pin::Pin::new(&mut self.0).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A write that fails or writes nothing, or a flush that fails right after a write, ends the
/// connection with the error, and the call whose request it was fails as disconnected rather
/// than waiting for an answer.
#[tokio::test]
async fn a_write_or_flush_that_fails_closes_the_connection_with_the_error() {
    for (fails, error) in [
        (Fails::Flush, "broken pipe"),
        (Fails::Write, "broken pipe"),
        (Fails::WriteZero, "write returned zero"),
        (Fails::AfterWait(false), "broken pipe"),
        (Fails::AfterWait(true), "write returned zero"),
    ] {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let _server = AmpConnection::spawn(a, AmpConfig::default(), math());
        let client = AmpConnection::spawn(
            Failing(b, fails, false),
            AmpConfig::default(),
            Locator::new(),
        );
        let call = client.call(&Sum { a: 1, b: 2 }).await;
        assert!(
            matches!(
                call,
                Err(AmpCallError::Disconnected(DisconnectReason::Io(_)))
            ),
            "{fails:?}: {call:?}"
        );
        let closed = client.closed().await;
        assert!(
            matches!(&closed, DisconnectReason::Io(e) if e.contains(error)),
            "{fails:?}: {closed:?}"
        );
    }
}

#[derive(pb::AmpCommand)]
#[amp(response = SumResult)]
struct CallMeBack {
    a: i64,
    b: i64,
}

/// The peer ends its input while a responder waits on the responder's own call to it: that
/// call fails at once (`Disconnected`), as Twisted fails all outgoing calls when the connection
/// is lost, and the connection closes. It used to stay open for good (its idle timer reset by
/// the running responder), the responder waiting for an answer that could not come.
#[tokio::test(start_paused = true)]
async fn a_responder_calling_back_a_peer_that_went_away_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server_io, mut peer) = tokio::io::duplex(64 * 1024);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let server = AmpConnection::spawn_with(server_io, AmpConfig::default(), move |conn| {
        let conn = conn.clone();
        Locator::new().respond(move |CallMeBack { a, b }| {
            let (conn, seen_tx) = (conn.clone(), seen_tx.clone());
            async move {
                let r = conn.call(&Sum { a, b }).await;
                let _ = seen_tx.send(r.is_err());
                Ok(SumResult { total: -1 })
            }
        })
    });
    let mut ask = AmpBox::new();
    ask.insert("_ask", "1");
    ask.insert("_command", "CallMeBack");
    ask.insert("a", "1");
    ask.insert("b", "2");
    peer.write_all(&ask.to_bytes().unwrap()).await.unwrap();
    // The server's callback arrives; the peer goes without answering it.
    let mut buf = [0u8; 256];
    let n = peer.read(&mut buf).await.unwrap();
    assert!(buf[..n].windows(3).any(|w| w == b"Sum"), "{:?}", &buf[..n]);
    drop(peer);
    let hour = std::time::Duration::from_secs(3600);
    let failed = tokio::time::timeout(hour, seen.recv()).await;
    assert_eq!(failed, Ok(Some(true)), "the callback failed");
    tokio::time::timeout(hour, server.closed())
        .await
        .expect("the connection closed");
}

/// Everything `peer` reads until the connection ends, as boxes.
async fn read_boxes_to_end(peer: &mut tokio::io::DuplexStream) -> Vec<AmpBox> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    peer.read_to_end(&mut got).await.unwrap();
    let mut buf = pb::amp::BytesMut::from(&got[..]);
    let mut codec = pb::amp::BoxCodec::default();
    let mut boxes = Vec::new();
    while let Some(b) = codec.decode(&mut buf).unwrap() {
        boxes.push(b);
    }
    assert!(buf.is_empty(), "a box cut short: {buf:?}");
    boxes
}

/// A box's tag (`_error` or `_answer`) and `total`, if it has them.
type Answered = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Each box's tag and `total` ([`Answered`]).
fn answers(boxes: &[AmpBox]) -> Vec<Answered> {
    boxes
        .iter()
        .map(|b| {
            (
                b.get("_error").or(b.get("_answer")).map(<[u8]>::to_vec),
                b.get("total").map(<[u8]>::to_vec),
            )
        })
        .collect()
}

fn raw_box(pairs: &[(&str, &str)]) -> pb::amp::Bytes {
    let mut b = AmpBox::new();
    for (k, v) in pairs {
        b.insert(k.to_string(), v.to_string());
    }
    b.to_bytes().unwrap()
}

/// As Twisted's `loseConnection` after a fatal error: the boxes read with the failing one are
/// still dispatched and their answers written before the connection closes; nothing read later
/// is. (Twisted 26.10, the same three boxes in one write: the `UNKNOWN` error for `1`, the
/// answer to `2`, then the close.)
#[tokio::test(start_paused = true)]
async fn boxes_read_with_a_fatal_one_are_still_answered_before_the_close() {
    use tokio::io::AsyncWriteExt;
    let sum = (Some(b"2".to_vec()), Some(b"5".to_vec()));
    let error_for_1 = (Some(b"1".to_vec()), None);
    for (first, want) in [
        // An undeclared failure (bad arguments): `UNKNOWN`, fatal.
        (
            raw_box(&[("_ask", "1"), ("_command", "Sum"), ("a", "x"), ("b", "1")]),
            vec![error_for_1.clone(), sum.clone()],
        ),
        // A declared fatal error.
        (
            raw_box(&[
                ("_ask", "1"),
                ("_command", "Divide"),
                ("numerator", "666"),
                ("denominator", "1"),
            ]),
            vec![error_for_1.clone(), sum.clone()],
        ),
        // A command without `_ask` that fails (no responder): nothing to answer it with.
        (raw_box(&[("_command", "Nope")]), vec![sum.clone()]),
    ] {
        let (server_io, mut peer) = tokio::io::duplex(64 * 1024);
        let server = AmpConnection::spawn_with(server_io, AmpConfig::default(), |_| math());
        let mut data = first.to_vec();
        data.extend_from_slice(&raw_box(&[
            ("_ask", "2"),
            ("_command", "Sum"),
            ("a", "2"),
            ("b", "3"),
        ]));
        peer.write_all(&data).await.unwrap();
        let boxes = read_boxes_to_end(&mut peer).await;
        let answered = answers(&boxes);
        assert_eq!(answered, want, "{boxes:?}");
        server.closed().await;
    }
}

/// An ask of ours made after the peer's end of input fails at once (`Disconnected`), with
/// nothing written for it, while the peer's own ask is still answered over the half-closed
/// connection.
#[tokio::test(start_paused = true)]
async fn an_ask_after_the_peers_end_of_input_fails_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server_io, mut peer) = tokio::io::duplex(64 * 1024);
    let (arrived_tx, arrived) = oneshot::channel();
    let (release, released) = oneshot::channel::<()>();
    let waiting = Mutex::new(Some((arrived_tx, released)));
    let server = AmpConnection::spawn(
        server_io,
        AmpConfig::default(),
        Locator::new().respond(move |Wait {}| {
            let (arrived_tx, released) = waiting.lock().unwrap().take().unwrap();
            let _ = arrived_tx.send(());
            async move {
                let _ = released.await;
                Ok(())
            }
        }),
    );
    let mut ask = AmpBox::new();
    ask.insert("_ask", "1");
    ask.insert("_command", "Wait");
    peer.write_all(&ask.to_bytes().unwrap()).await.unwrap();
    peer.shutdown().await.unwrap();
    arrived.await.unwrap();
    // Settled: the server has read the end of input.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let hour = std::time::Duration::from_secs(3600);
    let r = tokio::time::timeout(hour, server.call(&Sum { a: 1, b: 2 }))
        .await
        .expect("failed at once");
    assert_eq!(
        r,
        Err(AmpCallError::Disconnected(DisconnectReason::PeerClosed))
    );
    // The peer's ask is answered, and then the connection closes.
    release.send(()).unwrap();
    let mut written = Vec::new();
    tokio::time::timeout(hour, peer.read_to_end(&mut written))
        .await
        .expect("the connection closed")
        .unwrap();
    let mut answer = AmpBox::new();
    answer.insert("_answer", "1");
    assert_eq!(written, answer.to_bytes().unwrap());
    tokio::time::timeout(hour, server.closed())
        .await
        .expect("the connection closed");
}

/// As Twisted's `loseConnection` after a fatal error, the boxes read with the failing one are
/// dispatched and answered before the close, also when a responder among them still runs and
/// `max_in_flight_responders` lets no other start meanwhile: the close does not drop the
/// buffered boxes that wait for room. (Twisted, which has no such cap, answers `3` too.)
#[tokio::test(start_paused = true)]
async fn boxes_read_with_a_fatal_one_are_answered_even_while_waiting_for_room() {
    use tokio::io::AsyncWriteExt;
    let (server_io, mut peer) = tokio::io::duplex(64 * 1024);
    let server = AmpConnection::spawn_with(
        server_io,
        AmpConfig::default().max_in_flight_responders(1),
        |_| math().respond(|Wait {}| std::future::pending()),
    );
    let data = [
        raw_box(&[
            ("_ask", "1"),
            ("_command", "Divide"),
            ("numerator", "666"),
            ("denominator", "1"),
        ]),
        raw_box(&[("_ask", "2"), ("_command", "Wait")]),
        raw_box(&[("_ask", "3"), ("_command", "Sum"), ("a", "2"), ("b", "3")]),
    ]
    .concat();
    peer.write_all(&data).await.unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let boxes = tokio::time::timeout(hour, read_boxes_to_end(&mut peer))
        .await
        .expect("the connection closed");
    let answered = answers(&boxes);
    assert_eq!(
        answered,
        vec![
            (Some(b"1".to_vec()), None),
            (Some(b"3".to_vec()), Some(b"5".to_vec()))
        ],
        "{boxes:?}"
    );
    server.closed().await;
}

/// A StartTLS asked for in the same read as a fatal error is refused (`TLS_ERROR`, "connection
/// closing"), not begun: the connection is closing.
#[tokio::test(start_paused = true)]
async fn start_tls_read_with_a_fatal_error_is_refused_as_the_connection_closes() {
    use tokio::io::AsyncWriteExt;
    let (server_tls, _) = tls_configs();
    let (server_io, mut peer) = tokio::io::duplex(64 * 1024);
    let server = AmpConnection::spawn_with(
        server_io,
        AmpConfig::default().tls_server(server_tls),
        |_| math(),
    );
    let mut data = raw_box(&[("_ask", "1"), ("_command", "Sum"), ("a", "x"), ("b", "1")]).to_vec();
    data.extend_from_slice(&raw_box(&[("_ask", "2"), ("_command", "StartTLS")]));
    peer.write_all(&data).await.unwrap();
    let boxes = read_boxes_to_end(&mut peer).await;
    let errors: Vec<_> = boxes
        .iter()
        .map(|b| {
            (
                b.get("_error").map(<[u8]>::to_vec),
                b.get("_error_code").map(<[u8]>::to_vec),
                b.get("_error_description").map(<[u8]>::to_vec),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (
                Some(b"1".to_vec()),
                Some(b"UNKNOWN".to_vec()),
                Some(b"Unknown Error".to_vec())
            ),
            (
                Some(b"2".to_vec()),
                Some(b"TLS_ERROR".to_vec()),
                Some(b"connection closing".to_vec())
            ),
        ],
        "{boxes:?}"
    );
    server.closed().await;
}

#[derive(pb::AmpCommand, Clone)]
#[amp(response = Echoed)]
struct Echo {
    s: pb::amp::Bytes,
}

#[derive(pb::AmpFields, Debug, PartialEq)]
struct Echoed {
    s: pb::amp::Bytes,
}

/// Waits for every call in `calls` (within a bound of virtual time, which a healthy run does
/// not use) and returns the failures, by call.
async fn failures<T: Send + 'static>(
    mut calls: tokio::task::JoinSet<(usize, Result<T, String>)>,
) -> Vec<String> {
    let mut failed = Vec::new();
    let all = tokio::time::timeout(std::time::Duration::from_secs(600), async {
        while let Some(r) = calls.join_next().await {
            if let (i, Err(e)) = r.unwrap() {
                failed.push(format!("call {i}: {e}"));
            }
        }
    })
    .await;
    if all.is_err() {
        failed.push("the calls did not finish".into());
    }
    failed
}

/// Responders that call the peer back (as `spawn_with` invites) still get their answers once
/// `max_in_flight_responders` of them run: the connection holds the peer's further commands
/// back but reads on for the answers to its own calls. With the default cap, 1 024 concurrent
/// calls whose responders work for a second and then call back are all answered.
#[tokio::test(start_paused = true)]
async fn responders_that_call_back_do_not_deadlock_at_max_in_flight_responders() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let _server = AmpConnection::spawn_with(a, AmpConfig::default(), |conn| {
        let conn = conn.clone();
        Locator::new().respond(move |CallMeBack { a, b }| {
            let conn = conn.clone();
            async move {
                // A second's work (virtual time), then the call back.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                Ok(conn.call(&Sum { a, b }).await.unwrap())
            }
        })
    });
    let client = AmpConnection::spawn(b, AmpConfig::default(), math());
    let n = AmpConfig::default().max_in_flight_responders;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        calls.spawn(async move {
            let r = client.call(&CallMeBack { a: i as i64, b: 1 }).await;
            (
                i,
                match r {
                    Ok(SumResult { total }) if total == i as i64 + 1 => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            )
        });
    }
    let failed = failures(calls).await;
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

/// Two pb peers never both stop reading: 32 concurrent 60 kB echoes over a 64 KiB duplex fill
/// the client's output with calls and the server's with answers, and the client reads on for
/// the answers while its own output waits (the server holds nothing back: it calls nothing).
#[tokio::test(start_paused = true)]
async fn a_pb_client_making_many_large_calls_to_a_pb_server_does_not_deadlock() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let echo = Locator::new().respond(|Echo { s }| async move { Ok(Echoed { s }) });
    let _server = AmpConnection::spawn(a, AmpConfig::default(), echo);
    let client = AmpConnection::spawn(b, AmpConfig::default(), Locator::new());
    let value = pb::amp::Bytes::from(vec![b'x'; 60_000]);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (client, s) = (client.clone(), value.clone());
        calls.spawn(async move {
            (
                i,
                match client.call(&Echo { s: s.clone() }).await {
                    Ok(e) if e.s == s => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            )
        });
    }
    let started = tokio::time::Instant::now();
    let failed = failures(calls).await;
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(
        started.elapsed(),
        std::time::Duration::ZERO,
        "no timer was needed"
    );
}

/// A box as the wire carries it, pairs in the order given (a key may come twice).
fn wire_box(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// `max_held_bytes` bounds what held commands keep: a held command is copied out of its
/// frame and counted whole (name and tag too), so boxes of about 1 MB whose arguments are
/// nothing (their `_command` given 15 times, the last one winning) are not held by the
/// thousand while one call of ours awaits its answer.
#[tokio::test(start_paused = true)]
async fn max_held_bytes_bounds_what_held_commands_keep_in_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (victim_io, mut peer) = tokio::io::duplex(64 * 1024);
    let victim = AmpConnection::spawn(
        victim_io,
        AmpConfig::default()
            .max_in_flight_responders(1)
            .max_held_bytes(1024 * 1024),
        Locator::new().respond(|Wait {}| std::future::pending()),
    );
    // A call of ours awaits its answer (the peer never gives it): the connection reads on
    // while the peer's commands must wait.
    let ours = tokio::spawn({
        let victim = victim.clone();
        async move { victim.call(&Sum { a: 1, b: 2 }).await }
    });
    let mut buf = [0u8; 256];
    let n = peer.read(&mut buf).await.unwrap();
    assert!(buf[..n].windows(3).any(|w| w == b"Sum"));
    // One responder runs, at the cap.
    peer.write_all(&raw_box(&[("_ask", "1"), ("_command", "Wait")]))
        .await
        .unwrap();
    // Then commands that must wait, each a box of ~983 kB (15 `_command` values of 64 KiB,
    // the last one wins) with no argument.
    let big = vec![b'x'; 65_535];
    let mut one: Vec<(&[u8], &[u8])> = vec![(b"_ask", b"2")];
    for _ in 0..15 {
        one.push((b"_command", &big));
    }
    let one = wire_box(&one);
    assert!(one.len() < 1024 * 1024);
    let boxes = 24;
    let mut flood = Vec::with_capacity(one.len() * boxes);
    for _ in 0..boxes {
        flood.extend_from_slice(&one);
    }
    let read_all =
        tokio::time::timeout(std::time::Duration::from_secs(600), peer.write_all(&flood)).await;
    assert!(
        read_all.is_err(),
        "the connection read (and holds) {} bytes of commands held back, {} boxes, though \
         max_held_bytes is 1 MiB: {read_all:?}",
        flood.len(),
        boxes
    );
    drop(ours);
}

/// Two pb peers; the server lets `max_in_flight_responders` run and its `CallMeBack`
/// responder calls the client back (`Sum`). The client starts TLS while that callback is
/// being answered. Returns whether the client's `CallMeBack` and `start_tls` both ended
/// within 10 minutes of virtual time, and how.
async fn start_tls_while_a_callback_is_answered(max_running: usize) -> (String, String) {
    let (server_tls, client_tls) = tls_configs();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let _server = AmpConnection::spawn_with(
        a,
        AmpConfig::default()
            .tls_server(server_tls)
            .max_in_flight_responders(max_running),
        |conn| {
            let conn = conn.clone();
            Locator::new().respond(move |CallMeBack { a, b }| {
                let conn = conn.clone();
                async move { Ok(conn.call(&Sum { a, b }).await.unwrap()) }
            })
        },
    );
    let (started_tx, started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let client = AmpConnection::spawn(
        b,
        AmpConfig::default(),
        Locator::new().respond({
            let gate = gate.clone();
            move |Sum { a, b }| {
                let (gate, started_tx) = (gate.clone(), started_tx.clone());
                async move {
                    let _ = started_tx.send(());
                    gate.notified().await;
                    Ok(SumResult { total: a + b })
                }
            }
        }),
    );
    let mut started = started;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call(&CallMeBack { a: 1, b: 2 }).await }
    });
    // The server's callback is being answered by the client...
    started.recv().await.unwrap();
    // ...when the client asks for TLS (its StartTLS leaves at once; its later boxes, the
    // callback's answer among them, wait for the switch, as Twisted's do).
    let name = pb::amp::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::spawn({
        let client = client.clone();
        async move { client.start_tls(client_tls, name).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    gate.notify_one();
    let ten_minutes = std::time::Duration::from_secs(600);
    let call = tokio::time::timeout(ten_minutes, call).await;
    let tls = tokio::time::timeout(ten_minutes, tls).await;
    (format!("{call:?}"), format!("{tls:?}"))
}

/// StartTLS needs no responder, so it is answered at once even while the responders are at
/// `max_in_flight_responders`: the client (as Twisted's) holds every box after its StartTLS
/// until it is answered, the answer to the running responder's callback among them.
#[tokio::test(start_paused = true)]
async fn start_tls_during_a_callback_at_max_in_flight_responders_does_not_deadlock() {
    let below = start_tls_while_a_callback_is_answered(2).await;
    assert!(
        below.0.starts_with("Ok(Ok(Ok(") && below.1.starts_with("Ok(Ok(Ok("),
        "below the cap: {below:?}"
    );
    let at_cap = start_tls_while_a_callback_is_answered(1).await;
    assert!(
        at_cap.0.starts_with("Ok(Ok(Ok(") && at_cap.1.starts_with("Ok(Ok(Ok("),
        "at the cap: call {}, start_tls {}",
        at_cap.0,
        at_cap.1
    );
}
