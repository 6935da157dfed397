//! Nodes over mutual TLS: both directions of every link carry calls, and each node knows which
//! peer is calling by its verified certificate.

use pb::dev::DevCa;
use pb::{Caller, ClientTls, Identity, Node, ServerTls};

#[pb::remote]
pub trait Who {
    /// The name on the caller's certificate, as this node verified it.
    async fn who_calls(&self, caller: Caller) -> Result<Option<String>, ()>;
    async fn name(&self) -> Result<String, ()>;
}

struct WhoImpl(&'static str);

impl Who for WhoImpl {
    async fn who_calls(&self, caller: Caller) -> Result<Option<String>, ()> {
        Ok(caller
            .identity::<Identity>()
            .and_then(|i| i.name().map(str::to_owned)))
    }
    async fn name(&self) -> Result<String, ()> {
        Ok(self.0.into())
    }
}

async fn tls_node(ca: &DevCa, name: &'static str) -> Node {
    let cert = ca.issue(&[name, "localhost"]).unwrap();
    let listen = ServerTls::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())
        .unwrap()
        .client_roots_pem(ca.cert_pem().as_bytes(), pb::ClientAuth::Required)
        .unwrap();
    let dial = ClientTls::from_roots_pem(ca.cert_pem().as_bytes())
        .unwrap()
        .client_cert_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())
        .unwrap()
        .server_name("localhost")
        .unwrap();
    Node::builder()
        .root(WhoRef::new(WhoImpl(name)))
        .listen_tls(listen)
        .dial_tls(dial)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
}

#[tokio::test]
async fn nodes_over_mutual_tls_know_who_calls() {
    let ca = DevCa::new("pb p2p test ca").unwrap();
    let alpha = tls_node(&ca, "alpha").await;
    let beta = tls_node(&ca, "beta").await;
    let to_alpha = beta.dial(alpha.local_addr()).await.unwrap();
    // beta -> alpha: alpha verified beta's certificate.
    let alpha_root: WhoRef = to_alpha.root();
    assert_eq!(alpha_root.name().await, Ok("alpha".into()));
    assert_eq!(alpha_root.who_calls().await, Ok(Some("beta".into())));
    // alpha -> beta over the same link: beta verified alpha's certificate when it dialed.
    let mut back = None;
    for _ in 0..10_000 {
        if let Some(c) = alpha.peers().into_iter().next() {
            back = Some(c);
            break;
        }
        tokio::task::yield_now().await;
    }
    let beta_root: WhoRef = back.expect("alpha sees beta").root();
    assert_eq!(beta_root.name().await, Ok("beta".into()));
    assert_eq!(beta_root.who_calls().await, Ok(Some("alpha".into())));
    // A node without a certificate from this CA is refused.
    let other_ca = DevCa::new("someone else").unwrap();
    let stranger = tls_node(&other_ca, "mallory").await;
    assert!(stranger.dial(alpha.local_addr()).await.is_err());
    for n in [alpha, beta, stranger] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_node_can_ask_dialing_peers_to_log_in() {
    let portal = pb::Portal::new(|login: pb::LoginRequest| async move {
        assert!(login.identity.name().is_none(), "an anonymous login");
        Ok(pb::Avatar::new(WhoRef::new(WhoImpl("avatar"))))
    })
    .allow_anonymous(true);
    let gate = Node::builder()
        .root(WhoRef::new(WhoImpl("gate")))
        .portal(portal)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let visitor = Node::builder()
        .root(WhoRef::new(WhoImpl("visitor")))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let session = visitor.open(gate.local_addr()).await.unwrap();
    // Before login, only the login object is reachable.
    let root: WhoRef = session.connection().root();
    assert!(root.name().await.is_err());
    // After login, the avatar.
    let avatar: WhoRef = session.login_anonymous().await.unwrap();
    assert_eq!(avatar.name().await, Ok("avatar".into()));
    // The gate still reaches the visitor's root over the same link.
    let back: WhoRef = gate.peers()[0].root();
    assert_eq!(back.name().await, Ok("visitor".into()));
    gate.shutdown().await;
    visitor.shutdown().await;
}
