//! Faults in the middle of a login and in the middle of a stream: the side that stays sees a
//! clean error (never a hang, never a silently truncated stream) and keeps nothing behind.
#![allow(clippy::unwrap_used)]

mod auth_support;

use std::sync::{Arc, Mutex};

use auth_support::{AccountRef, PASSWORD, portal};
use pb::proto::scram::{ChannelBinding, ScramClient};
use pb::stream::{self, Chunk, Stream};
use pb::{CallError, Client, Config, Connection, Portal, Refusal, Session, TableStats};

async fn pair(portal: &Portal) -> (Connection, Session) {
    let (a, b) = pb::transport::memory_pair();
    let config = Config::default();
    let server = portal.serve_connection(a, &config, None, None);
    let client = Client::builder().open_over(b);
    let (s, c) = tokio::join!(server, client);
    (s.unwrap(), c.unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_client_that_vanishes_mid_login_leaves_nothing_behind() {
    let (portal, seen) = portal(false);
    let (server, session) = pair(&portal).await;
    // The first SCRAM step, by hand; then the client is gone.
    let (_client, first) = ScramClient::new("alice", PASSWORD, ChannelBinding::None).unwrap();
    let login = session.connection().root_ref();
    let server_first = login
        .call::<_, String, Refusal>("scram_start", &(first,))
        .await
        .unwrap();
    assert!(server_first.starts_with("r="));
    session.connection().abort();
    server.closed().await;
    assert_eq!(server.stats().tables, TableStats::default());
    assert!(seen.identities().is_empty(), "no identity was granted");
    assert_eq!(seen.logouts(), 0);
    // The next client logs in as usual.
    let (_server, session) = pair(&portal).await;
    let me: AccountRef = session.login("alice", PASSWORD).await.unwrap();
    assert_eq!(me.whoami().await.unwrap(), "user alice");
}

#[tokio::test(start_paused = true)]
async fn a_server_that_vanishes_mid_login_fails_the_login_cleanly() {
    let (portal, seen) = portal(false);
    let (server, session) = pair(&portal).await;
    let (_client, first) = ScramClient::new("alice", PASSWORD, ChannelBinding::None).unwrap();
    let login = session.connection().root_ref();
    login
        .call::<_, String, Refusal>("scram_start", &(first,))
        .await
        .unwrap();
    server.abort();
    let finish = login
        .call::<_, String, Refusal>(
            "scram_finish",
            &("c=biws,r=x,p=AAAA".to_string(), None::<pb::ObjectRef>),
        )
        .await;
    assert_eq!(finish, Err(CallError::Disconnected));
    assert!(
        session
            .login::<AccountRef>("alice", PASSWORD)
            .await
            .is_err()
    );
    assert!(seen.identities().is_empty());
}

const CHUNKS: u32 = 1000;

#[pb::remote]
pub trait Files {
    async fn download(&self, chunks: u32) -> Result<Stream<Chunk>, ()>;
    /// Reads a stream to its end; the outcome is also recorded for the test.
    async fn upload(&self, data: Stream<Chunk>) -> Result<u32, String>;
}

#[derive(Default)]
struct FilesImpl {
    upload_outcome: Arc<Mutex<Option<Result<u32, String>>>>,
}

impl Files for FilesImpl {
    async fn download(&self, chunks: u32) -> Result<Stream<Chunk>, ()> {
        let (tx, rx) = stream::channel(4);
        tokio::spawn(async move {
            for i in 0..chunks {
                if tx.send(Chunk::from(vec![i as u8; 1024])).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
    async fn upload(&self, mut data: Stream<Chunk>) -> Result<u32, String> {
        let mut n = 0;
        let outcome = loop {
            match data.next().await {
                Some(Ok(_)) => n += 1,
                Some(Err(e)) => break Err(e.to_string()),
                None => break Ok(n),
            }
        };
        *self.upload_outcome.lock().unwrap() = Some(outcome.clone());
        outcome
    }
}

async fn files_pair(files: FilesImpl) -> (Connection, Connection) {
    let (a, b) = pb::transport::memory_pair();
    let config = Config::default();
    let s = Connection::establish(
        a,
        &config,
        pb::Side::Server,
        Some(FilesRef::new(files).into()),
        None,
    );
    let c = Connection::establish(b, &config, pb::Side::Client, None, None);
    tokio::try_join!(s, c).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_download_cut_mid_stream_ends_in_an_error_not_a_short_stream() {
    let (server, client) = files_pair(FilesImpl::default()).await;
    let files: FilesRef = client.root();
    let mut s = files.download(CHUNKS).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(s.next().await, Some(Ok(_))));
    }
    server.abort();
    let mut received = 3;
    let last = loop {
        match s.next().await {
            Some(Ok(_)) => received += 1,
            other => break other,
        }
    };
    assert!(received < CHUNKS);
    assert!(
        matches!(last, Some(Err(_))),
        "the stream ends with an error after {received} chunks, got {last:?}"
    );
    assert!(s.next().await.is_none(), "and then ends");
    client.closed().await;
    assert_eq!(client.stats().tables, TableStats::default());
}

#[tokio::test(start_paused = true)]
async fn an_upload_cut_mid_stream_ends_in_an_error_on_the_receiver() {
    let files = FilesImpl::default();
    let outcome = files.upload_outcome.clone();
    let (server, client) = files_pair(files).await;
    let f: FilesRef = client.root();
    let (tx, rx) = stream::channel(4);
    let call = tokio::spawn(async move { f.upload(rx).await });
    for i in 0..10u8 {
        tx.send(Chunk::from(vec![i; 1024])).await.unwrap();
    }
    assert!(
        auth_support_settle(|| server.stats().tables.in_flight_calls == 1).await,
        "the upload is running"
    );
    client.abort();
    assert_eq!(call.await.unwrap(), Err(CallError::Disconnected));
    server.closed().await;
    // The handler saw an error, not a clean end of a shorter stream (or was cancelled before it
    // could record anything).
    assert!(
        auth_support_settle(|| server.stats().tables.in_flight_calls == 0).await,
        "the handler ended"
    );
    let seen = outcome.lock().unwrap().clone();
    assert!(
        !matches!(seen, Some(Ok(_))),
        "a cut upload is never taken as complete: {seen:?}"
    );
    assert_eq!(server.stats().tables, TableStats::default());
}

async fn auth_support_settle(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..10_000 {
        if f() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    f()
}
