//! The tracing output of one call contains its span, with the connection, peer, request id,
//! object, method, outcome and duration, on both sides.

mod common;

use common::*;
use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::test]
async fn one_call_has_a_span_with_its_fields_on_both_sides() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (server, conn) = common::tcp_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = conn.root();
    assert_eq!(k.add(2, 3).await, Ok(5));
    assert_eq!(
        k.sqrt(-1).await,
        Err(pb::CallError::Remote(TestError::Negative(-1)))
    );
    // A call whose caller drops it (a `select!` of its own) ends `cancelled` on both sides:
    // the caller's span had neither outcome nor duration.
    let mut hung = Box::pin(k.hang());
    std::future::poll_fn(|cx| {
        assert!(hung.as_mut().poll(cx).is_pending(), "never answers");
        std::task::Poll::Ready(())
    })
    .await;
    drop(hung);
    // The cancel reaches the server before this call's answer comes back.
    assert_eq!(k.add(1, 1).await, Ok(2));
    conn.close().await;
    server.shutdown().await;

    let out = capture.text();
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("pb.call{")).collect();
    let find = |dir: &str, method: &str| {
        lines
            .iter()
            .find(|l| {
                l.contains(&format!("direction=\"{dir}\""))
                    && l.contains(&format!("method=\"{method}\""))
            })
            .unwrap_or_else(|| panic!("no {dir} span for {method} in:\n{out}"))
            .to_string()
    };
    let out_add = find("out", "add");
    let in_add = find("in", "add");
    for line in [&out_add, &in_add] {
        assert!(line.contains("request_id=1"), "{line}");
        assert!(line.contains("object=0"), "{line}");
        assert!(line.contains("outcome=\"ok\""), "{line}");
        assert!(line.contains("duration_us="), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert!(line.contains("connection="), "{line}");
    }
    assert!(find("out", "sqrt").contains("outcome=\"error\""));
    for dir in ["out", "in"] {
        let hang = find(dir, "hang");
        assert!(hang.contains("outcome=\"cancelled\""), "{hang}");
        assert!(hang.contains("duration_us="), "{hang}");
    }
    assert!(find("in", "sqrt").contains("request_id=2"));
    // Connection spans wrap the drivers.
    assert!(out.contains("pb.connection{"), "{out}");
}

#[tokio::test]
async fn a_panicking_handler_is_logged_with_its_message_and_method() {
    #[pb::remote]
    trait Fragile {
        async fn boom(&self) -> Result<(), String>;
    }
    struct F;
    impl Fragile for F {
        async fn boom(&self) -> Result<(), String> {
            panic!("the ledger is empty")
        }
    }
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (_server, client) = memory_pair(FragileRef::new(F)).await;
    let f: FragileRef = client.root();
    assert!(matches!(f.boom().await, Err(pb::CallError::Internal(m)) if m == "the handler failed"));

    let out = capture.text();
    let line = out
        .lines()
        .find(|l| l.contains("a call handler panicked"))
        .unwrap_or_else(|| panic!("no panic logged in:\n{out}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("the ledger is empty"), "{line}");
    assert!(line.contains("method=\"boom\""), "{line}");
}
