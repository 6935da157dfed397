//! Twisted cred over PB: the portal a Twisted client logs in to (`PBClientFactory.login`),
//! and logging in to a Twisted portal from pb.
//!
//! The challenge-response is Twisted's MD5 one (see [`cred`](pb_proto::twisted::cred)): weak,
//! for compatibility only, preferably over TLS. The server must hold each password.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::codec::jelly::Failure;
use crate::link::Caller;
use crate::object::{
    BoxFuture, CallError, Dispatch, IncomingCall, Interface, ObjectRef, Reply, encode_result,
};
use pb_proto::twisted::cred;

/// A byte string (Python `bytes`) in a tuple of arguments.
#[derive(Serialize, Deserialize)]
struct ByteStr(#[serde(with = "crate::zero_copy::vec")] Vec<u8>);

/// Users and their passwords, for Twisted's challenge-response login. The passwords are held
/// as they are: this login needs a password equivalent on the server.
#[derive(Clone, Default)]
pub struct Credentials {
    users: HashMap<Vec<u8>, Vec<u8>>,
}

impl Credentials {
    /// No users.
    pub fn new() -> Self {
        Credentials::default()
    }

    /// Adds (or replaces) a user.
    pub fn user(mut self, name: impl Into<Vec<u8>>, password: impl Into<Vec<u8>>) -> Self {
        self.users.insert(name.into(), password.into());
        self
    }
}

type Realm = dyn Fn(Option<&str>, Option<ObjectRef>) -> ObjectRef + Send + Sync;

/// A portal served to Twisted PB clients: the root of each connection answers `login` and
/// `loginAnonymous` as Twisted's `_PortalRoot` does, and a successful login gets the avatar
/// the realm makes for the user (named, or `None` when anonymous) and the client's mind (its
/// `client` argument, a reference to call it back).
///
/// A wrong password and an unknown user fail alike, with
/// `twisted.cred.error.UnauthorizedLogin`; an unknown user is still given a challenge, so the
/// two cannot be told apart.
#[derive(Clone)]
pub struct Portal {
    credentials: Arc<Credentials>,
    realm: Arc<Realm>,
    anonymous: bool,
}

impl Portal {
    /// A portal checking `credentials`, whose avatars `realm` makes. Anonymous login is
    /// refused until [`Portal::allow_anonymous`].
    pub fn new<F>(credentials: Credentials, realm: F) -> Self
    where
        F: Fn(Option<&str>, Option<ObjectRef>) -> ObjectRef + Send + Sync + 'static,
    {
        Portal {
            credentials: Arc::new(credentials),
            realm: Arc::new(realm),
            anonymous: false,
        }
    }

    /// Whether `loginAnonymous` succeeds (Twisted's `AllowAnonymousAccess` checker).
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.anonymous = allow;
        self
    }

    /// A login object for one connection: serve it as that connection's root
    /// (`pb::twisted::serve_with(listener, move |_| portal.root(), config)`).
    pub fn root(&self) -> ObjectRef {
        ObjectRef::local(LoginRoot(self.clone()))
    }
}

struct LoginRoot(Portal);

static ROOT_INTERFACE: Interface = Interface {
    name: "twisted.spread.pb._PortalRoot",
    methods: &["login", "loginAnonymous"],
};

static CHALLENGER_INTERFACE: Interface = Interface {
    name: "twisted.spread.pb._PortalAuthChallenger",
    methods: &["respond"],
};

/// A failure of cred's `LoginFailed` subclass `class` (in `twisted.cred.error`), as a Twisted
/// portal sends it.
fn login_failed(class: &str, value: String) -> Failure {
    let type_name = format!("twisted.cred.error.{class}");
    Failure {
        parents: [
            type_name.as_str(),
            "twisted.cred.error.LoginFailed",
            "builtins.Exception",
            "builtins.BaseException",
            "builtins.object",
        ]
        .map(String::from)
        .to_vec(),
        type_name,
        value,
        traceback: "Traceback unavailable\n".to_owned(),
    }
}

fn unauthorized() -> Failure {
    login_failed("UnauthorizedLogin", String::new())
}

impl Dispatch for LoginRoot {
    fn interface(&self) -> &'static Interface {
        &ROOT_INTERFACE
    }

    fn dispatch(self: Arc<Self>, mut call: IncomingCall) -> BoxFuture<Reply> {
        Box::pin(async move {
            match call.method_bytes() {
                b"login" => {
                    let (ByteStr(user),) = call.decode_args()?;
                    let mut challenge = [0u8; cred::CHALLENGE_LEN];
                    if getrandom::getrandom(&mut challenge).is_err() {
                        let caller = call.into_caller();
                        return encode_result::<(), _>(
                            &caller,
                            Err(Failure::pb_error("no randomness for a challenge")),
                        );
                    }
                    let challenger = ObjectRef::local(Challenger {
                        portal: self.0.clone(),
                        user,
                        challenge,
                        used: Mutex::new(false),
                    });
                    let caller = call.into_caller();
                    encode_result::<_, Failure>(
                        &caller,
                        Ok((ByteStr(challenge.to_vec()), challenger)),
                    )
                }
                b"loginAnonymous" => {
                    let (mind,): (Option<ObjectRef>,) = call.decode_args()?;
                    let caller = call.into_caller();
                    let result = if self.0.anonymous {
                        Ok((self.0.realm)(None, mind))
                    } else {
                        // What a Twisted portal without an anonymous checker says.
                        Err(login_failed(
                            "UnhandledCredentials",
                            "No checker for twisted.cred.credentials.IAnonymous".to_owned(),
                        ))
                    };
                    encode_result(&caller, result)
                }
                _ => call.no_such_method(&ROOT_INTERFACE),
            }
        })
    }
}

struct Challenger {
    portal: Portal,
    user: Vec<u8>,
    challenge: [u8; cred::CHALLENGE_LEN],
    used: Mutex<bool>,
}

impl Dispatch for Challenger {
    fn interface(&self) -> &'static Interface {
        &CHALLENGER_INTERFACE
    }

    fn dispatch(self: Arc<Self>, mut call: IncomingCall) -> BoxFuture<Reply> {
        Box::pin(async move {
            if call.method_bytes() != b"respond" {
                return call.no_such_method(&CHALLENGER_INTERFACE);
            }
            let (ByteStr(response), mind): (ByteStr, Option<ObjectRef>) = call.decode_args()?;
            let caller: Caller = call.into_caller();
            // One response per challenge.
            let first = !std::mem::replace(
                &mut *self.used.lock().unwrap_or_else(|p| p.into_inner()),
                true,
            );
            // An unknown user is checked against a password nobody has, so that the work
            // and the answer are the same as for a wrong password.
            let password = self.portal.credentials.users.get(&self.user);
            let ok = cred::check(
                &self.challenge,
                password.map_or(&b"\0unknown user\0"[..], |p| &p[..]),
                &response,
            );
            let result = match std::str::from_utf8(&self.user) {
                Ok(name) if first && ok && password.is_some() => {
                    Ok((self.portal.realm)(Some(name), mind))
                }
                _ => Err(unauthorized()),
            };
            encode_result(&caller, result)
        })
    }
}

/// Logs in to a Twisted PB portal at `root` (a connection's root) as `user` with `password`,
/// offering `mind` for the server to call back; gives the avatar. A refused login is
/// `CallError::Remote` of the server's failure (`twisted.cred.error.UnauthorizedLogin`).
pub async fn login(
    root: &ObjectRef,
    user: &[u8],
    password: &[u8],
    mind: Option<ObjectRef>,
) -> Result<ObjectRef, CallError<Failure>> {
    let (ByteStr(challenge), challenger): (ByteStr, ObjectRef) =
        root.call("login", &(ByteStr(user.to_vec()),)).await?;
    let response = cred::respond(&challenge, password);
    challenger
        .call("respond", &(ByteStr(response.to_vec()), mind))
        .await
}

/// Logs in anonymously to a Twisted PB portal at `root`, offering `mind`.
pub async fn login_anonymous(
    root: &ObjectRef,
    mind: Option<ObjectRef>,
) -> Result<ObjectRef, CallError<Failure>> {
    root.call("loginAnonymous", &(mind,)).await
}
