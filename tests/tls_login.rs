//! TLS over real TCP on 127.0.0.1: certificates from PEM files, refusal of untrusted servers,
//! mutual TLS identity on both ends of a link, clean errors for TLS/plaintext mismatches, and channel binding that
//! defeats a relaying man in the middle.
#![allow(clippy::unwrap_used)]

mod auth_support;

use std::net::SocketAddr;
use std::sync::Arc;

use auth_support::{AccountRef, NO_HANG, PASSWORD, portal, temp_dir};
use pb::dev::{DevCa, DevCert};
use pb::rustls;
use pb::{
    Caller, ClientAuth, ClientError, ClientTls, Identity, LoginError, Refusal, Server,
    ServerHandle, ServerTls,
};
use tokio::net::{TcpListener, TcpStream};

struct Pki {
    ca: DevCa,
    server: DevCert,
}

fn pki() -> Pki {
    let ca = DevCa::new("pb test ca").unwrap();
    let server = ca.issue(&["localhost", "127.0.0.1"]).unwrap();
    Pki { ca, server }
}

/// The server's TLS with client certificates from `client_ca` checked as `auth` says.
fn client_cert_tls(pki: &Pki, client_ca: &DevCa, auth: ClientAuth) -> ServerTls {
    ServerTls::from_pem(
        pki.server.cert_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
    )
    .unwrap()
    .client_roots_pem(client_ca.cert_pem().as_bytes(), auth)
    .unwrap()
}

async fn tls_server(tls: ServerTls, anonymous: bool) -> (ServerHandle, auth_support::Seen) {
    let (portal, seen) = portal(anonymous);
    let server = Server::builder()
        .tls(tls)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve_portal(portal);
    (server, seen)
}

fn trusting(ca: &DevCa) -> ClientTls {
    ClientTls::from_roots_pem(ca.cert_pem().as_bytes()).unwrap()
}

#[tokio::test]
async fn login_over_tls_with_certificates_from_pem_files() {
    let pki = pki();
    let dir = temp_dir("tls");
    let (cert, key) = pki.server.write_pem_files(&dir, "server").unwrap();
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, pki.ca.cert_pem()).unwrap();

    let (server, seen) = tls_server(ServerTls::from_pem_files(&cert, &key).unwrap(), false).await;
    let tls = ClientTls::from_roots_pem_file(&ca_file)
        .unwrap()
        .server_name("localhost")
        .unwrap();
    let session = pb::Client::builder()
        .tls(tls)
        .open(server.local_addr())
        .await
        .unwrap();
    assert!(session.is_tls());
    let me: AccountRef = session.login("alice", PASSWORD).await.unwrap();
    assert_eq!(me.whoami().await.unwrap(), "user alice");
    assert_eq!(seen.identities(), vec![Identity::User("alice".into())]);
    // Wrong passwords are refused over TLS too.
    let other = pb::Client::builder()
        .tls(trusting(&pki.ca))
        .open(server.local_addr())
        .await
        .unwrap();
    let err = other
        .login::<AccountRef>("alice", "nope")
        .await
        .unwrap_err();
    assert_eq!(err.refusal(), Some(Refusal::Denied));
    drop(me);
    session.close().await;
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_client_refuses_a_server_certificate_it_does_not_trust() {
    let pki = pki();
    let stranger = DevCa::new("someone else").unwrap();
    let tls = ServerTls::from_pem(
        pki.server.cert_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
    )
    .unwrap();
    let (server, seen) = tls_server(tls, true).await;
    let r = tokio::time::timeout(
        NO_HANG,
        pb::Client::builder()
            .tls(trusting(&stranger))
            .open(server.local_addr()),
    )
    .await
    .unwrap();
    assert!(
        matches!(r, Err(ClientError::UntrustedCertificate(_))),
        "{r:?}"
    );
    // A certificate for another name is refused as well.
    let r = pb::Client::builder()
        .tls(trusting(&pki.ca).server_name("elsewhere.example").unwrap())
        .open(server.local_addr())
        .await;
    assert!(
        matches!(r, Err(ClientError::UntrustedCertificate(_))),
        "{r:?}"
    );
    assert!(seen.identities().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_identity_reaches_the_realm_and_the_caller() {
    let pki = pki();
    let client_ca = DevCa::new("pb client ca").unwrap();
    let alice = client_ca.issue(&["alice.example"]).unwrap();
    let tls = client_cert_tls(&pki, &client_ca, ClientAuth::Optional);
    let (server, seen) = tls_server(tls, false).await;

    let with_cert = trusting(&pki.ca)
        .client_cert_pem(alice.cert_pem.as_bytes(), alice.key_pem.as_bytes())
        .unwrap();
    let session = pb::Client::builder()
        .tls(with_cert.clone())
        .open(server.local_addr())
        .await
        .unwrap();
    let me: AccountRef = session.login_with_certificate().await.unwrap();
    assert_eq!(me.whoami().await.unwrap(), "certificate alice.example");
    let logins = seen.logins.lock().unwrap().clone();
    match &logins[..] {
        [login] => {
            let Identity::Certificate(cert) = &login.identity else {
                panic!("expected a certificate identity, got {:?}", login.identity);
            };
            assert_eq!(cert.name(), Some("alice.example"));
            assert_eq!(login.peer_certificate.as_ref(), Some(cert));
        }
        other => panic!("expected one login, got {other:?}"),
    }

    // A password login over the same kind of connection also shows the realm the certificate.
    let session2 = pb::Client::builder()
        .tls(with_cert)
        .open(server.local_addr())
        .await
        .unwrap();
    let me2: AccountRef = session2.login("alice", PASSWORD).await.unwrap();
    assert_eq!(me2.whoami().await.unwrap(), "user alice");
    let last = seen.logins.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last.peer_certificate
            .and_then(|c| c.name().map(str::to_owned)),
        Some("alice.example".to_owned())
    );

    // Without a certificate, certificate login is not offered (client certificates are
    // optional here, so the connection itself is fine).
    let session3 = pb::Client::builder()
        .tls(trusting(&pki.ca))
        .open(server.local_addr())
        .await
        .unwrap();
    let err = session3
        .login_with_certificate::<AccountRef>()
        .await
        .unwrap_err();
    assert_eq!(err.refusal(), Some(Refusal::NotOffered));
    // A certificate from an authority the server does not trust is refused in the handshake.
    let mallory = DevCa::new("rogue")
        .unwrap()
        .issue(&["alice.example"])
        .unwrap();
    let rogue = trusting(&pki.ca)
        .client_cert_pem(mallory.cert_pem.as_bytes(), mallory.key_pem.as_bytes())
        .unwrap();
    let r = async {
        let s = pb::Client::builder()
            .tls(rogue)
            .open(server.local_addr())
            .await?;
        // TLS 1.3 reports a refused client certificate after the client's handshake ends.
        s.login_with_certificate::<AccountRef>()
            .await
            .map_err(|e| ClientError::Tls(std::io::Error::other(e)))
    };
    assert!(tokio::time::timeout(NO_HANG, r).await.unwrap().is_err());
    drop((me, me2));
    server.shutdown().await;
}

#[tokio::test]
async fn a_plaintext_client_against_a_tls_server_gets_a_clean_error() {
    let pki = pki();
    let tls = ServerTls::from_pem(
        pki.server.cert_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
    )
    .unwrap();
    let (server, _) = tls_server(tls, true).await;
    let r = tokio::time::timeout(NO_HANG, pb::Client::builder().open(server.local_addr()))
        .await
        .expect("no hang");
    assert!(matches!(r, Err(ClientError::ServerRequiresTls)), "{r:?}");
    // The plain `connect` does not wait for the server's hello: its calls fail cleanly,
    // naming the handshake error (the TLS alert where pb's hello should be).
    let conn = tokio::time::timeout(NO_HANG, pb::Client::connect(server.local_addr()))
        .await
        .expect("no hang")
        .expect("the tcp connect itself succeeds");
    let r = tokio::time::timeout(NO_HANG, conn.root_ref().call::<_, (), ()>("anything", &()))
        .await
        .expect("no hang");
    match r {
        Err(pb::CallError::Handshake(why)) => assert!(why.contains("not speaking pb"), "{why}"),
        other => panic!("expected a handshake error, got {other:?}"),
    }
    assert!(
        matches!(conn.close_reason(), Some(pb::CloseReason::Handshake(_))),
        "{:?}",
        conn.close_reason()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_tls_client_against_a_plaintext_server_gets_a_clean_error() {
    let pki = pki();
    let (portal, _) = portal(true);
    let server = Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve_portal(portal);
    let r = tokio::time::timeout(
        NO_HANG,
        pb::Client::builder()
            .tls(trusting(&pki.ca))
            .open(server.local_addr()),
    )
    .await
    .expect("no hang");
    assert!(matches!(r, Err(ClientError::ServerWithoutTls)), "{r:?}");
    server.shutdown().await;
}

/// A man in the middle with a certificate the client trusts: it terminates the client's TLS and
/// opens its own TLS session to the server, relaying bytes both ways.
async fn relay(pki: &Pki, upstream: SocketAddr) -> SocketAddr {
    let front = ServerTls::from_pem(
        pki.server.cert_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
    )
    .unwrap()
    .build()
    .unwrap();
    let back = trusting(&pki.ca).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (inbound, _) = listener.accept().await.unwrap();
        let mut inbound = tokio_rustls::TlsAcceptor::from(front)
            .accept(inbound)
            .await
            .unwrap();
        let outbound = TcpStream::connect(upstream).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(upstream.ip().into());
        let mut outbound = tokio_rustls::TlsConnector::from(Arc::clone(&back))
            .connect(name, outbound)
            .await
            .unwrap();
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    addr
}

#[tokio::test]
async fn channel_binding_defeats_a_relaying_man_in_the_middle() {
    let pki = pki();
    let tls = ServerTls::from_pem(
        pki.server.cert_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
    )
    .unwrap();
    let (server, seen) = tls_server(tls, true).await;
    let mitm = relay(&pki, server.local_addr()).await;
    let session = pb::Client::builder()
        .tls(trusting(&pki.ca))
        .open(mitm)
        .await
        .unwrap();
    let r = tokio::time::timeout(NO_HANG, session.login::<AccountRef>("alice", PASSWORD))
        .await
        .unwrap();
    assert!(
        matches!(r, Err(LoginError::Refused(Refusal::Denied))),
        "{r:?}"
    );
    assert!(seen.identities().is_empty());
    // The relay itself works: a login that is not bound to the channel goes through it.
    let guest: AccountRef = session.login_anonymous().await.unwrap();
    assert_eq!(guest.whoami().await.unwrap(), "anonymous");
    server.shutdown().await;
}

#[tokio::test]
async fn without_a_portal_the_client_certificate_is_the_callers_identity() {
    let pki = pki();
    let client_ca = DevCa::new("pb client ca").unwrap();
    let bob = client_ca.issue(&["bob.example"]).unwrap();
    let tls = client_cert_tls(&pki, &client_ca, ClientAuth::Required);
    let server = Server::builder()
        .tls(tls)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(AccountRef::new(auth_support::Me));
    let with_cert = trusting(&pki.ca)
        .client_cert_pem(bob.cert_pem.as_bytes(), bob.key_pem.as_bytes())
        .unwrap();
    let conn = pb::Client::builder()
        .tls(with_cert)
        .connect(server.local_addr())
        .await
        .unwrap();
    let root: AccountRef = conn.root();
    assert_eq!(root.whoami().await.unwrap(), "certificate bob.example");
    // Client certificates are required here: a client without one gets nowhere.
    let r = async {
        let conn = pb::Client::builder()
            .tls(trusting(&pki.ca))
            .connect(server.local_addr())
            .await
            .map_err(|e| e.to_string())?;
        conn.root::<AccountRef>()
            .whoami()
            .await
            .map_err(|e| e.to_string())
    };
    assert!(tokio::time::timeout(NO_HANG, r).await.unwrap().is_err());
    conn.close().await;
    server.shutdown().await;
}

#[pb::remote]
pub trait Who {
    /// The first name on the caller's verified certificate, as this end recorded it.
    async fn who_calls(&self, caller: Caller) -> Result<Option<String>, ()>;
}

struct WhoImpl;

impl Who for WhoImpl {
    async fn who_calls(&self, caller: Caller) -> Result<Option<String>, ()> {
        Ok(match caller.identity::<Identity>().as_deref() {
            Some(Identity::Certificate(c)) => c.name().map(str::to_owned),
            Some(other) => Some(format!("not a certificate: {other:?}")),
            None => None,
        })
    }
}

#[pb::remote]
pub trait CallsBack {
    /// Who calls, as the server sees it, and who calls `back`, as the client sees it.
    async fn call_back(
        &self,
        caller: Caller,
        back: WhoRef,
    ) -> Result<(Option<String>, Option<String>), ()>;
}

struct CallsBackImpl;

impl CallsBack for CallsBackImpl {
    async fn call_back(
        &self,
        caller: Caller,
        back: WhoRef,
    ) -> Result<(Option<String>, Option<String>), ()> {
        let here = WhoImpl.who_calls(caller).await?;
        Ok((here, back.who_calls().await.map_err(|_| ())?))
    }
}

#[tokio::test]
async fn the_dialing_side_knows_the_servers_verified_certificate() {
    use rustls::pki_types::pem::PemObject;
    let pki = pki();
    let client_ca = DevCa::new("pb client ca").unwrap();
    let bob = client_ca.issue(&["bob.example"]).unwrap();
    let tls = client_cert_tls(&pki, &client_ca, ClientAuth::Optional);
    let server = Server::builder()
        .tls(tls)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(CallsBackRef::new(CallsBackImpl));
    let server_der =
        rustls::pki_types::CertificateDer::from_pem_slice(pki.server.cert_pem.as_bytes()).unwrap();
    let with_cert = trusting(&pki.ca)
        .client_cert_pem(bob.cert_pem.as_bytes(), bob.key_pem.as_bytes())
        .unwrap();
    // Mutual TLS, then server-only TLS, dialed without and with waiting for the server's
    // hello: each end knows the other by the certificate it verified, and the server's calls
    // to the client's objects carry the server's.
    for (tls, client_name) in [
        (with_cert.clone(), Some("bob.example")),
        (trusting(&pki.ca), None),
    ] {
        let connect = pb::Client::builder()
            .tls(tls.clone())
            .connect(server.local_addr())
            .await
            .unwrap();
        let open = pb::Client::builder()
            .tls(tls)
            .open(server.local_addr())
            .await
            .unwrap()
            .into_connection();
        for conn in [connect, open] {
            let root: CallsBackRef = conn.root();
            let seen = root.call_back(WhoRef::new(WhoImpl)).await.unwrap();
            assert_eq!(
                seen,
                (client_name.map(str::to_owned), Some("localhost".to_owned()))
            );
            match conn.identity::<Identity>().as_deref() {
                Some(Identity::Certificate(cert)) => assert_eq!(cert.der(), &server_der),
                other => panic!("expected the server's certificate, got {other:?}"),
            }
            conn.close().await;
        }
    }
    // Plaintext: nothing verified, nothing recorded.
    let plain = Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(CallsBackRef::new(CallsBackImpl));
    let conn = pb::Client::connect(plain.local_addr()).await.unwrap();
    let seen = conn
        .root::<CallsBackRef>()
        .call_back(WhoRef::new(WhoImpl))
        .await;
    assert_eq!(seen, Ok((None, None)));
    conn.close().await;
    plain.shutdown().await;
    server.shutdown().await;
}

/// The TLS handshake and pb's hello share one `handshake_timeout`: a peer that takes most of it
/// in TLS and then sends no hello is cut when it ends (it used to get a second one for the
/// hello, holding its slot for nearly twice as long).
#[tokio::test(start_paused = true)]
async fn the_tls_handshake_and_the_hello_share_one_deadline() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    let pki = pki();
    let tls = ServerTls::from_pem(
        pki.server.cert_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
    )
    .unwrap();
    let config = pb::Config {
        handshake_timeout: Duration::from_secs(10),
        ..pb::Config::default()
    };
    let server = Server::builder()
        .config(config)
        .tls(tls)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(AccountRef::new(auth_support::Me));
    let client = trusting(&pki.ca).build().unwrap();
    let started = tokio::time::Instant::now();
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    // Most of the deadline passes before the TLS handshake starts.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let name = rustls::pki_types::ServerName::IpAddress(server.local_addr().ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .expect("the TLS handshake, within the deadline");
    // No pb hello: the server gives up at the deadline.
    let mut buf = [0u8; 64];
    let _ = tls.read(&mut buf).await;
    let cut = started.elapsed();
    assert!(cut <= Duration::from_secs(11), "cut after {cut:?}");
    server.shutdown().await;
}

/// A server that requires a client certificate, dialed without one: the calls fail naming the
/// TLS alert (TLS 1.3 finishes the client's side of the handshake first, so `connect` itself
/// succeeds), where they said the server was "not a pb server"; `open` reports it as
/// `ClientError::Tls`, as documented.
#[tokio::test]
async fn a_missing_client_certificate_is_named_as_the_cause() {
    let pki = pki();
    let client_ca = DevCa::new("pb client ca").unwrap();
    let (server, _seen) = tls_server(
        client_cert_tls(&pki, &client_ca, ClientAuth::Required),
        true,
    )
    .await;
    let conn = tokio::time::timeout(
        NO_HANG,
        pb::Client::builder()
            .tls(trusting(&pki.ca))
            .connect(server.local_addr()),
    )
    .await
    .unwrap()
    .unwrap();
    let r = tokio::time::timeout(NO_HANG, conn.root_ref().call::<_, u64, ()>("x", &()))
        .await
        .unwrap();
    match r {
        Err(pb::CallError::Handshake(m)) => assert!(m.contains("CertificateRequired"), "{m}"),
        other => panic!("{other:?}"),
    }
    let opened = tokio::time::timeout(
        NO_HANG,
        pb::Client::builder()
            .tls(trusting(&pki.ca))
            .open(server.local_addr()),
    )
    .await
    .unwrap();
    assert!(matches!(opened, Err(ClientError::Tls(_))), "{opened:?}");
    server.shutdown().await;
}
