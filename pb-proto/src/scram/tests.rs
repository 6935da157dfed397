//! Unit tests of `scram`.

use super::*;

// RFC 7677 section 3.
const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_verifier() -> ScramVerifier {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap_or_default();
    ScramVerifier::from_salt("pencil", &salt, 4096)
}

#[test]
fn rfc7677_client_side() {
    let (client, first) = ScramClient::with_nonce(
        "user",
        "pencil",
        ChannelBinding::None,
        "rOprNGfwEbeRWgbNEkqO".into(),
    );
    assert_eq!(first, CLIENT_FIRST);
    let (client, fin) = client.handle_server_first(SERVER_FIRST, 10_000).unwrap();
    assert_eq!(fin, CLIENT_FINAL);
    client.handle_server_final(SERVER_FINAL).unwrap();
}

#[test]
fn a_server_that_does_not_hold_the_verifier_is_refused() {
    let client = || {
        let (client, _) = ScramClient::with_nonce(
            "user",
            "pencil",
            ChannelBinding::None,
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        client.handle_server_first(SERVER_FIRST, 10_000).unwrap().0
    };
    // A well-formed signature that is not the one the password gives: a relay or an
    // impostor that never had the verifier.
    let forged = format!("v={}", B64.encode([0u8; 32]));
    assert_eq!(
        client().handle_server_final(&forged),
        Err(ScramError::ServerSignature)
    );
    // Garbage where the signature goes is an error too, never a success.
    assert!(matches!(
        client().handle_server_final("v=%%%"),
        Err(ScramError::Malformed(_))
    ));
    assert!(client().handle_server_final("e=other-error").is_err());
}

#[test]
fn rfc7677_server_side() {
    let first = parse_client_first(CLIENT_FIRST, &ChannelBinding::None).unwrap();
    let (server, sf) =
        first.challenge_with_nonce(&rfc_verifier(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    assert_eq!(sf, SERVER_FIRST);
    assert_eq!(
        server.handle_client_final(CLIENT_FINAL).unwrap(),
        SERVER_FINAL
    );
}

#[test]
fn wrong_password_and_fake_verifier_are_denied() {
    for verifier in [
        ScramVerifier::from_salt("other", b"salt", 4096),
        ScramVerifier::fake(b"secret", "user", 4096),
    ] {
        let (client, first) = ScramClient::new("user", "pencil", ChannelBinding::None).unwrap();
        let first = parse_client_first(&first, &ChannelBinding::None).unwrap();
        let (server, sf) = first.challenge(&verifier).unwrap();
        let (_, fin) = client.handle_server_first(&sf, 10_000).unwrap();
        assert_eq!(server.handle_client_final(&fin), Err(ScramError::Denied));
    }
}

#[test]
fn a_fake_verifier_takes_the_shape_it_is_given_and_is_the_same_each_time() {
    for salt_len in [0, 1, 10, 16, 32, 33, 100, 10_000] {
        let shape = VerifierShape {
            salt_len,
            iterations: 4096,
        };
        let v = ScramVerifier::fake_like(b"secret", "mallory", shape);
        assert_eq!(v.salt().len(), salt_len.min(MAX_FAKE_SALT));
        assert_eq!(v.iterations(), 4096);
        assert_eq!(v, ScramVerifier::fake_like(b"secret", "mallory", shape));
        assert_ne!(v, ScramVerifier::fake_like(b"secret", "eve", shape));
    }
    // The plain fake is the shape pb's own verifiers have.
    let real = ScramVerifier::with_iterations("pw", 4096).unwrap();
    assert_eq!(ScramVerifier::fake(b"s", "u", 4096).shape(), real.shape());
}

#[test]
fn channel_binding_must_match() {
    let v = ScramVerifier::from_salt("pw", b"salt", 4096);
    let a = ChannelBinding::TlsExporter([1; 32]);
    let b = ChannelBinding::TlsExporter([2; 32]);
    // Different exporter values: a relay between two TLS sessions.
    let (client, first) = ScramClient::new("u", "pw", a.clone()).unwrap();
    let (server, sf) = parse_client_first(&first, &b)
        .unwrap()
        .challenge(&v)
        .unwrap();
    let (_, fin) = client.handle_server_first(&sf, 10_000).unwrap();
    assert_eq!(
        server.handle_client_final(&fin),
        Err(ScramError::ChannelBinding)
    );
    // Downgrades either way are refused at once.
    let (_, first) = ScramClient::new("u", "pw", ChannelBinding::None).unwrap();
    assert_eq!(
        parse_client_first(&first, &a).unwrap_err(),
        ScramError::ChannelBinding
    );
    let (_, first) = ScramClient::new("u", "pw", a.clone()).unwrap();
    assert_eq!(
        parse_client_first(&first, &ChannelBinding::None).unwrap_err(),
        ScramError::ChannelBinding
    );
    // Same value on both sides: success.
    let (client, first) = ScramClient::new("u", "pw", a.clone()).unwrap();
    let (server, sf) = parse_client_first(&first, &a)
        .unwrap()
        .challenge(&v)
        .unwrap();
    let (client, fin) = client.handle_server_first(&sf, 10_000).unwrap();
    client
        .handle_server_final(&server.handle_client_final(&fin).unwrap())
        .unwrap();
}

#[test]
fn verifier_text_round_trip_and_usernames() {
    let v = ScramVerifier::from_salt("pw", b"0123456789abcdef", 4096);
    let parsed: ScramVerifier = v.to_string().parse().unwrap();
    assert_eq!(parsed, v);
    assert!(
        "SCRAM-SHA-256$10:AA==$AA==:AA=="
            .parse::<ScramVerifier>()
            .is_err()
    );
    let (_, first) = ScramClient::new("a,b=c", "pw", ChannelBinding::None).unwrap();
    let parsed = parse_client_first(&first, &ChannelBinding::None).unwrap();
    assert_eq!(parsed.username(), "a,b=c");
}

#[test]
fn garbage_never_panics() {
    for msg in [
        "",
        ",",
        "n,,",
        "n,,n=",
        "n,,n=a,r=",
        "p=x,,n=a,r=b",
        "n,,n==,r=x",
        "y,a=b,n=c,r=d",
    ] {
        let _ = parse_client_first(msg, &ChannelBinding::None);
    }
    let first = parse_client_first("n,,n=u,r=abc", &ChannelBinding::None).unwrap();
    let (server, _) = first.challenge_with_nonce(&rfc_verifier(), "xyz");
    assert!(
        server
            .handle_client_final("c=biws,r=abcxyz,p=AAAA")
            .is_err()
    );
    let (client, _) = ScramClient::new("u", "p", ChannelBinding::None).unwrap();
    assert!(client.handle_server_first("r=,s=,i=", 10_000).is_err());
}
