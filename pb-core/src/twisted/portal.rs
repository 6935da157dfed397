//! Twisted cred over PB: the portal a Twisted client logs in to (`PBClientFactory.login`),
//! and logging in to a Twisted portal from pb.
//!
//! The challenge-response is Twisted's MD5 one (see [`cred`](pb_proto::twisted::cred)): weak,
//! for compatibility only, preferably over TLS. The server must hold each password.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec::jelly::Failure;
use crate::link::{Caller, Connection};
use crate::object::{
    BoxFuture, CallError, Dispatch, IncomingCall, Interface, ObjectRef, RefInner, Reply,
    encode_result,
};
use pb_proto::twisted::cred;

/// The challenges one connection may hold unanswered at once (each `login` makes one); a
/// login past them replaces the oldest, which can no longer be answered. Twisted keeps one
/// per `login` without bound; a few let a client log in several users at once on one
/// connection, as Twisted's `test_concurrentLogin` does.
pub const MAX_PENDING_CHALLENGES: usize = 4;

/// The defaults of the native login (pb-server's `LoginConfig`), which these settings share.
const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_FAILURES: u32 = 3;
const DEFAULT_FAILURE_DELAY: Duration = Duration::from_millis(500);

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
///
/// What an unauthenticated peer may cost is bounded, as the native login bounds it (Twisted
/// bounds none of it):
/// - each connection has one challenger object, whatever the number of `login`s, holding the
///   latest [`MAX_PENDING_CHALLENGES`] challenges; a username that is no user's is not kept;
/// - failed responses are answered after [`Portal::failure_delay`], doubled at each further
///   failure on the connection, and after [`Portal::max_failures`] of them the next login
///   step closes it;
/// - a connection served with this portal's root by [`serve_with`](super::serve_with) or
///   [`accept_io`](super::accept_io) that has not logged in after [`Portal::login_timeout`]
///   is closed.
#[derive(Clone)]
pub struct Portal {
    credentials: Arc<Credentials>,
    realm: Arc<Realm>,
    anonymous: bool,
    login_timeout: Duration,
    max_failures: u32,
    failure_delay: Duration,
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
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            max_failures: DEFAULT_MAX_FAILURES,
            failure_delay: DEFAULT_FAILURE_DELAY,
        }
    }

    /// Whether `loginAnonymous` succeeds (Twisted's `AllowAnonymousAccess` checker).
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.anonymous = allow;
        self
    }

    /// A connection that has not logged in by then is closed (default 30 s, as the native
    /// login's `LoginConfig::login_timeout`). Twisted has no such deadline.
    pub fn login_timeout(mut self, timeout: Duration) -> Self {
        self.login_timeout = timeout;
        self
    }

    /// Failed logins on one connection: the one that reaches this is refused, and the next
    /// login step closes the connection (default 3, as `LoginConfig::max_failures`). Twisted
    /// has no such limit.
    pub fn max_failures(mut self, n: u32) -> Self {
        self.max_failures = n;
        self
    }

    /// Wait before answering a failed login, doubled at each further failure on the
    /// connection (default 500 ms, as `LoginConfig::failure_delay`). Responses on one
    /// connection wait their turn, so sending several at once does not dodge it.
    pub fn failure_delay(mut self, delay: Duration) -> Self {
        self.failure_delay = delay;
        self
    }

    /// A login object for one connection: serve it as that connection's root
    /// (`pb::twisted::serve_with(listener, move |_| portal.root(), config)`).
    pub fn root(&self) -> ObjectRef {
        let (logged_in, _) = watch::channel(false);
        let state = Arc::new(LoginState {
            portal: self.clone(),
            attempts: tokio::sync::Mutex::new(Attempts::default()),
            logged_in,
        });
        ObjectRef::local(LoginRoot {
            state,
            challenger: OnceLock::new(),
        })
    }
}

/// Starts the deadline of a connection whose root is a portal's login object: closed unless
/// it logs in within the portal's `login_timeout`. Any other root is left alone.
pub(super) fn watch_login(conn: &Connection, root: Option<&ObjectRef>) {
    let Some(RefInner::Local(root)) = root.map(|r| &r.0) else {
        return;
    };
    let Some(login) = root
        .clone()
        .as_any()
        .and_then(|a| a.downcast::<LoginRoot>().ok())
    else {
        return;
    };
    let timeout = login.state.portal.login_timeout;
    let mut done = login.state.logged_in.subscribe();
    drop(login);
    let watched = conn.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = watched.closed() => {}
            _ = done.wait_for(|done| *done) => {}
            _ = tokio::time::sleep(timeout) => {
                tracing::info!(connection = watched.id(), peer = ?watched.peer_addr(), ?timeout, "twisted pb: no login before the deadline: closing");
                watched.abort();
            }
        }
    });
}

/// One connection's login: its failures and its unanswered challenges.
struct LoginState {
    portal: Portal,
    // Held across a whole response, delay included, so that responses sent at once on one
    // connection queue up instead of dodging the slowdown.
    attempts: tokio::sync::Mutex<Attempts>,
    logged_in: watch::Sender<bool>,
}

impl LoginState {
    /// Whether the connection has failed `max_failures` times: then it is closed, and the
    /// login step that asks gets no answer. (The failure that reaches the limit is answered:
    /// a Twisted connection closes at once, and would drop that answer.)
    fn spent(&self, attempts: &Attempts, conn: Option<&Connection>) -> bool {
        if attempts.failures < self.portal.max_failures {
            return false;
        }
        if let Some(conn) = conn {
            tracing::info!(connection = conn.id(), peer = ?conn.peer_addr(), failures = attempts.failures, "twisted pb: a login step after too many failures: closing");
            conn.abort();
        }
        true
    }
}

#[derive(Default)]
struct Attempts {
    failures: u32,
    /// Oldest first, at most [`MAX_PENDING_CHALLENGES`].
    pending: VecDeque<Pending>,
}

/// A challenge handed out and not answered yet.
struct Pending {
    challenge: [u8; cred::CHALLENGE_LEN],
    /// The user named, when there is such a user (an unknown name is not kept: it may be
    /// anything up to Banana's 640 KiB).
    user: Option<String>,
}

struct LoginRoot {
    state: Arc<LoginState>,
    /// The connection's one challenger, sent with every challenge.
    challenger: OnceLock<ObjectRef>,
}

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

    fn as_any(self: Arc<Self>) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        Some(self)
    }

    fn dispatch(self: Arc<Self>, mut call: IncomingCall) -> BoxFuture<Reply> {
        Box::pin(async move {
            match call.method_bytes() {
                b"login" => {
                    let (ByteStr(user),) = call.decode_args()?;
                    let caller = call.into_caller();
                    let mut challenge = [0u8; cred::CHALLENGE_LEN];
                    if getrandom::getrandom(&mut challenge).is_err() {
                        return encode_result::<(), _>(
                            &caller,
                            Err(Failure::pb_error("no randomness for a challenge")),
                        );
                    }
                    let state = &self.state;
                    let user = std::str::from_utf8(&user)
                        .ok()
                        .filter(|name| state.portal.credentials.users.contains_key(name.as_bytes()))
                        .map(str::to_owned);
                    {
                        let mut attempts = state.attempts.lock().await;
                        if state.spent(&attempts, caller.connection()) {
                            return encode_result::<(), _>(&caller, Err(unauthorized()));
                        }
                        if attempts.pending.len() >= MAX_PENDING_CHALLENGES {
                            attempts.pending.pop_front();
                        }
                        attempts.pending.push_back(Pending { challenge, user });
                    }
                    let challenger = self
                        .challenger
                        .get_or_init(|| {
                            ObjectRef::local(Challenger {
                                state: state.clone(),
                            })
                        })
                        .clone();
                    encode_result::<_, Failure>(
                        &caller,
                        Ok((ByteStr(challenge.to_vec()), challenger)),
                    )
                }
                b"loginAnonymous" => {
                    let (mind,): (Option<ObjectRef>,) = call.decode_args()?;
                    let caller = call.into_caller();
                    let portal = &self.state.portal;
                    if self
                        .state
                        .spent(&*self.state.attempts.lock().await, caller.connection())
                    {
                        return encode_result::<(), _>(&caller, Err(unauthorized()));
                    }
                    let result = if portal.anonymous {
                        self.state.logged_in.send_replace(true);
                        Ok((portal.realm)(None, mind))
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

/// A connection's challenger (Twisted's `_PortalAuthChallenger`, one per `login` there):
/// answers `respond` against the connection's unanswered challenges.
struct Challenger {
    state: Arc<LoginState>,
}

impl Challenger {
    /// The realm's avatar for a response to one of the challenges, or the refusal. A failure
    /// is counted toward `max_failures` and waits; it takes no challenge out (which one it
    /// answered is not known, and another login on the connection may be answering its own),
    /// so the challenges kept are bounded by `MAX_PENDING_CHALLENGES` alone.
    async fn respond(
        &self,
        response: &[u8],
        mind: Option<ObjectRef>,
        conn: Option<&Connection>,
    ) -> Result<ObjectRef, Failure> {
        let portal = &self.state.portal;
        let mut attempts = self.state.attempts.lock().await;
        if self.state.spent(&attempts, conn) {
            return Err(unauthorized());
        }
        // Each challenge is checked, as Twisted's challenger of it would; an unknown user
        // against a password nobody has, so that the work is the same as for a wrong one.
        let mut found = None;
        for (i, pending) in attempts.pending.iter().enumerate() {
            let password = pending
                .user
                .as_ref()
                .and_then(|name| portal.credentials.users.get(name.as_bytes()));
            let ok = cred::check(
                &pending.challenge,
                password.map_or(&b"\0unknown user\0"[..], |p| &p[..]),
                response,
            );
            if ok && password.is_some() && found.is_none() {
                found = Some(i);
            }
        }
        if let Some(name) = found
            .and_then(|i| attempts.pending.remove(i))
            .and_then(|p| p.user)
        {
            drop(attempts);
            self.state.logged_in.send_replace(true);
            return Ok((portal.realm)(Some(&name), mind));
        }
        attempts.failures = attempts.failures.saturating_add(1);
        let shift = attempts.failures.saturating_sub(1).min(16);
        tokio::time::sleep(portal.failure_delay.saturating_mul(1u32 << shift)).await;
        Err(unauthorized())
    }
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
            let result = self.respond(&response, mind, caller.connection()).await;
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
