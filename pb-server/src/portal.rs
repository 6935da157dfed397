//! Login in Perspective Broker's shape: a [`Portal`] checks credentials, a [`Realm`] turns an
//! authenticated [`Identity`] into an [`Avatar`], and the avatar's logout hook runs once, when
//! the client releases the avatar or the connection ends.
//!
//! Until a connection logs in, its root is the portal's login object (interface
//! [`LOGIN_INTERFACE`]) and nothing else is reachable; frames are held to
//! [`LoginConfig::max_frame_len_before_login`], and [`LoginConfig::login_timeout`] closes a
//! connection that has not logged in.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pb_core::login::{
    LOGIN_INTERFACE, METHOD_ANONYMOUS, METHOD_CERTIFICATE, METHOD_SCRAM_FINISH, METHOD_SCRAM_START,
    Refusal, ScramFinished,
};
use pb_core::message::FaultKind;
use pb_core::scram::{
    self, ChannelBinding, ScramError, ScramServer, ScramVerifier, VerifierShape, parse_client_first,
};
use pb_core::{
    BoxFuture, Config, ConnectError, Connection, Dispatch, Fault, Identity, IncomingCall,
    Interface, ObjectRef, PeerCertificate, Remote, Reply, Side, encode_result,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};

use crate::tls::TlsInfo;

/// What the realm is told about a successful login.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoginRequest {
    /// Who logged in.
    pub identity: Identity,
    /// The client's mind: an object of the client's the realm may call back, if it sent one.
    pub mind: Option<ObjectRef>,
    /// The connection that logged in (the realm may, for example, `set_root` on it).
    pub connection: Connection,
    /// The verified TLS client certificate, whatever the way of logging in.
    pub peer_certificate: Option<PeerCertificate>,
}

impl LoginRequest {
    /// The client's mind, typed as `R` (for example a generated `FooRef`), if it sent one. As
    /// for any typed reference, nothing checks that the object implements `R`'s interface: a
    /// call to a method it lacks fails with `CallError::NoSuchMethod`.
    ///
    /// ```
    /// use pb::ObjectRef;
    /// use pb::{Avatar, LoginRequest, Portal};
    /// # fn chat_for(mind: Option<ObjectRef>) -> ObjectRef { panic!("the application supplies its avatar") }
    /// let portal = Portal::new(|login: LoginRequest| async move {
    ///     // With `#[pb::remote] trait Listener`, this is `login.mind_as::<ListenerRef>()`.
    ///     let mind = login.mind_as::<ObjectRef>();
    ///     Ok(Avatar::new(chat_for(mind)))
    /// });
    /// ```
    pub fn mind_as<R: Remote>(&self) -> Option<R> {
        self.mind.clone().map(R::from_object_ref)
    }
}

/// The avatar a realm hands out: the object through which a user acts, and what to do when the
/// user is gone.
pub struct Avatar {
    object: ObjectRef,
    logout: Option<Box<dyn FnOnce() + Send>>,
}

impl fmt::Debug for Avatar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Avatar")
            .field("object", &self.object)
            .field("logout", &self.logout.is_some())
            .finish()
    }
}

impl Avatar {
    /// An avatar served by `object` (for example a generated `FooRef::new(...)`).
    pub fn new(object: impl Into<ObjectRef>) -> Avatar {
        Avatar {
            object: object.into(),
            logout: None,
        }
    }

    /// Run `hook` exactly once when the session ends: when the client releases the avatar or
    /// the connection is lost, whichever comes first. It runs on a task of its own, so it may
    /// use the connection; to do async work, spawn a task from it.
    pub fn on_logout(mut self, hook: impl FnOnce() + Send + 'static) -> Avatar {
        self.logout = Some(Box::new(hook));
        self
    }
}

/// Turns authenticated identities into avatars (Twisted's `IRealm`).
///
/// Any `Fn(LoginRequest) -> impl Future<Output = Result<Avatar, Refusal>>` is a realm. A realm
/// of your own is an `async fn` under `#[pb::async_trait]` (the trait is used as `dyn Realm`,
/// which a plain `async fn` in a trait does not allow yet):
///
/// ```
/// use pb::{Avatar, LoginRequest, ObjectRef, Portal, Realm, Refusal};
///
/// struct Chat {
///     banned: Vec<String>,
///     lobby: ObjectRef,
/// }
///
/// #[pb::async_trait]
/// impl Realm for Chat {
///     async fn request_avatar(&self, login: LoginRequest) -> Result<Avatar, Refusal> {
///         let name = login.identity.name().unwrap_or_default();
///         if self.banned.iter().any(|b| b == name) {
///             return Err(Refusal::Denied);
///         }
///         Ok(Avatar::new(self.lobby.clone()))
///     }
/// }
/// # fn lobby() -> ObjectRef { panic!("the application supplies its avatar") }
/// # fn build() { let _ =
/// Portal::new(Chat { banned: vec!["mallory".into()], lobby: lobby() })
/// # ; }
/// ```
#[async_trait::async_trait]
pub trait Realm: Send + Sync + 'static {
    /// Make the avatar for a login. Refusing here (for example a banned user) answers the
    /// client with the given refusal.
    async fn request_avatar(&self, login: LoginRequest) -> Result<Avatar, Refusal>;
}

#[async_trait::async_trait]
impl<F, Fut> Realm for F
where
    F: Fn(LoginRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Avatar, Refusal>> + Send + 'static,
{
    async fn request_avatar(&self, login: LoginRequest) -> Result<Avatar, Refusal> {
        self(login).await
    }
}

/// Where the portal finds users' SCRAM verifiers (a database, a file, memory).
///
/// [`Verifiers`] keeps them in memory. A store of your own is an `async fn` under
/// `#[pb::async_trait]`:
///
/// ```
/// use std::collections::BTreeMap;
/// use pb::VerifierStore;
/// use pb::scram::ScramVerifier;
///
/// /// Verifiers kept as text, as a database would return them.
/// struct Table(BTreeMap<String, String>);
///
/// #[pb::async_trait]
/// impl VerifierStore for Table {
///     async fn verifier(&self, username: &str) -> Option<ScramVerifier> {
///         self.0.get(username)?.parse().ok()
///     }
/// }
/// # let _ = pb::Portal::new(|_: pb::LoginRequest| async { Err(pb::Refusal::Denied) })
/// #     .verifiers(Table(BTreeMap::new()));
/// ```
#[async_trait::async_trait]
pub trait VerifierStore: Send + Sync + 'static {
    /// The verifier of `username`, or `None` for an unknown user.
    async fn verifier(&self, username: &str) -> Option<ScramVerifier>;

    /// The shape (salt length, iteration count) most of this store's verifiers have, which an
    /// unknown user's fake verifier copies, so that a login challenge does not tell whether a
    /// user exists. `None` (the default, and a store with no users): the fake takes
    /// [`LoginConfig::fake_iterations`] and pb's salt length. A store should answer from
    /// memory: it is asked on every login of an unknown user.
    fn shape(&self) -> Option<VerifierShape> {
        None
    }
}

/// An in-memory [`VerifierStore`].
///
/// ```
/// use pb::scram::ScramVerifier;
/// let mut users = pb::Verifiers::new();
/// // Operators store the verifier's text (see examples/make_verifier.rs), never the password.
/// users.insert("ada", "SCRAM-SHA-256$4096:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".parse::<ScramVerifier>()?);
/// # Ok::<(), pb::scram::ScramError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Verifiers {
    users: HashMap<String, ScramVerifier>,
    /// How many verifiers have each shape.
    shapes: HashMap<VerifierShape, usize>,
}

impl Verifiers {
    /// No users.
    pub fn new() -> Verifiers {
        Verifiers::default()
    }

    /// Add or replace a user. A username no client can log in with (empty, or longer than
    /// [`scram::MAX_USERNAME_LEN`] bytes) is kept but never matched: [`Verifiers::add_user`]
    /// and [`Verifiers::insert_password`] refuse one.
    pub fn insert(&mut self, username: impl Into<String>, verifier: ScramVerifier) {
        *self.shapes.entry(verifier.shape()).or_default() += 1;
        if let Some(old) = self.users.insert(username.into(), verifier)
            && let Some(n) = self.shapes.get_mut(&old.shape())
        {
            *n -= 1;
            if *n == 0 {
                self.shapes.remove(&old.shape());
            }
        }
    }

    /// Add or replace a user from a password, at the default cost
    /// ([`scram::DEFAULT_ITERATIONS`] PBKDF2 iterations): the password is turned into a
    /// verifier at once and not kept. Fails for a username no client can log in with (empty,
    /// or longer than [`scram::MAX_USERNAME_LEN`] bytes), or if the system's random number
    /// generator does (the verifier's salt is random).
    ///
    /// PBKDF2 is slow on purpose: every login as this user costs the client those iterations
    /// once, and this call costs them too. A debug build computes them many times slower than
    /// an optimised one (optimising the hash crate in the application's manifest,
    /// `[profile.dev.package.sha2] opt-level = 3`, narrows that); tests that log in often can
    /// use [`Verifiers::insert_password`] with [`scram::MIN_ITERATIONS`].
    ///
    /// ```
    /// let mut users = pb::Verifiers::new();
    /// users.add_user("ada", "correct horse")?;
    /// # Ok::<(), pb::scram::ScramError>(())
    /// ```
    pub fn add_user(
        &mut self,
        username: impl Into<String>,
        password: &str,
    ) -> Result<(), ScramError> {
        let username = username.into();
        scram::check_username(&username)?;
        self.insert(username, ScramVerifier::new(password)?);
        Ok(())
    }

    /// Add or replace a user from a password at a cost of `iterations` (at least
    /// [`scram::MIN_ITERATIONS`]); [`Verifiers::add_user`] uses the default. The password is
    /// turned into a verifier at once and not kept.
    pub fn insert_password(
        &mut self,
        username: impl Into<String>,
        password: &str,
        iterations: u32,
    ) -> Result<(), ScramError> {
        let username = username.into();
        scram::check_username(&username)?;
        self.insert(
            username,
            ScramVerifier::with_iterations(password, iterations)?,
        );
        Ok(())
    }
}

#[async_trait::async_trait]
impl VerifierStore for Verifiers {
    async fn verifier(&self, username: &str) -> Option<ScramVerifier> {
        self.users.get(username).cloned()
    }

    /// The most common shape among the users (ties go to the larger shape, so the answer does
    /// not depend on the map's order).
    fn shape(&self) -> Option<VerifierShape> {
        self.shapes
            .iter()
            .max_by_key(|&(shape, n)| (*n, *shape))
            .map(|(shape, _)| *shape)
    }
}

/// Limits of the login phase. Every limit has a safe default.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// A connection that has not logged in by then is closed (default 30 s).
    pub login_timeout: Duration,
    /// Largest frame accepted before login (default 64 KiB, which is also the least: the floor
    /// every pb peer accepts); after login the connection's own `max_frame_len` applies, and the
    /// client is told so before the login's answer. The call window before login is four such
    /// frames (256 KiB by default); after login, the connection's own `max_call_bytes`.
    pub max_frame_len_before_login: usize,
    /// Failed logins tolerated on one connection; the next failure closes it (default 3).
    pub max_failures: u32,
    /// Wait before answering a failed login, doubled at each further failure (default 500 ms).
    pub failure_delay: Duration,
    /// Iterations announced for unknown users when the verifier store cannot say what its
    /// users' verifiers have ([`VerifierStore::shape`] is `None`: a store of your own that does
    /// not implement it, or one with no users); otherwise unknown users copy the store's most
    /// common salt length and iteration count, with no setting to keep in step (default
    /// [`scram::DEFAULT_ITERATIONS`]).
    pub fake_iterations: u32,
    /// Most connections of this portal that may be waiting to log in at once (default 256).
    /// More are closed as soon as they arrive: an unauthenticated peer gets no more than this.
    pub max_pending_logins: usize,
    /// Most of those from one source address, an IPv4 address or an IPv6 /64 (default 16), so
    /// that one address cannot hold every place of `max_pending_logins` and keep everyone else
    /// from logging in. More from that address are closed as soon as they arrive.
    pub max_pending_logins_per_address: usize,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            login_timeout: Duration::from_secs(30),
            max_frame_len_before_login: 64 * 1024,
            max_failures: 3,
            failure_delay: Duration::from_millis(500),
            fake_iterations: scram::DEFAULT_ITERATIONS,
            max_pending_logins: 256,
            max_pending_logins_per_address: 16,
        }
    }
}

struct PortalInner {
    realm: Arc<dyn Realm>,
    verifiers: Option<Arc<dyn VerifierStore>>,
    anonymous: bool,
    certificates: bool,
    config: LoginConfig,
    fake_secret: [u8; 32],
    pending: Arc<Semaphore>,
    /// Connections waiting to log in, per source address.
    pending_per_address: pb_core::transport::PerAddress,
}

/// Checks credentials and hands out avatars (Twisted's `Portal` with its checkers).
///
/// One login per connection: once a connection has logged in, its avatar and identity are set
/// for good, and any further login on it is refused with `Refusal::AlreadyLoggedIn` (the realm
/// is not asked). A client that wants another identity opens another connection.
///
/// ```
/// use pb::{Avatar, LoginRequest, Portal, Verifiers};
/// # fn avatar_for(_: &LoginRequest) -> pb::ObjectRef { panic!("the application supplies its avatar") }
/// let mut users = Verifiers::new();
/// users.add_user("ada", "correct horse")?;
/// let portal = Portal::new(|login: LoginRequest| async move {
///     Ok(Avatar::new(avatar_for(&login)).on_logout(|| println!("bye")))
/// })
/// .verifiers(users)
/// .allow_anonymous(false);
/// # Ok::<(), pb::scram::ScramError>(())
/// ```
#[derive(Clone)]
pub struct Portal {
    inner: Arc<PortalInner>,
}

impl fmt::Debug for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Portal")
            .field("passwords", &self.inner.verifiers.is_some())
            .field("anonymous", &self.inner.anonymous)
            .field("certificates", &self.inner.certificates)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Portal {
    /// A portal for `realm` that accepts no credentials yet: add checkers with
    /// [`Portal::verifiers`], [`Portal::allow_anonymous`] and [`Portal::allow_certificates`].
    pub fn new(realm: impl Realm) -> Portal {
        let mut fake_secret = [0u8; 32];
        if getrandom::getrandom(&mut fake_secret).is_err() {
            // Without randomness unknown users' fake salts become predictable; set a secret
            // with `Portal::fake_secret`. Loud, because it should never happen.
            tracing::error!(
                "the system random number generator failed: fake salts are predictable"
            );
        }
        Portal {
            inner: Arc::new(PortalInner {
                realm: Arc::new(realm),
                verifiers: None,
                anonymous: false,
                certificates: false,
                config: LoginConfig::default(),
                fake_secret,
                pending: Arc::new(pb_core::transport::permits(
                    LoginConfig::default().max_pending_logins,
                )),
                pending_per_address: pb_core::transport::PerAddress::new(
                    LoginConfig::default().max_pending_logins_per_address,
                ),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut PortalInner)) -> Portal {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            f(inner);
            return self;
        }
        // Shared already: copy what can be copied.
        let old = &self.inner;
        let mut inner = PortalInner {
            realm: old.realm.clone(),
            verifiers: old.verifiers.clone(),
            anonymous: old.anonymous,
            certificates: old.certificates,
            config: old.config.clone(),
            fake_secret: old.fake_secret,
            pending: old.pending.clone(),
            pending_per_address: old.pending_per_address.clone(),
        };
        f(&mut inner);
        Portal {
            inner: Arc::new(inner),
        }
    }

    /// Accept SCRAM-SHA-256 password logins checked against `store`.
    pub fn verifiers(self, store: impl VerifierStore) -> Portal {
        self.edit(|p| p.verifiers = Some(Arc::new(store)))
    }

    /// Accept anonymous logins (default: refused).
    pub fn allow_anonymous(self, allow: bool) -> Portal {
        self.edit(|p| p.anonymous = allow)
    }

    /// Accept logins as the identity of a verified TLS client certificate (default: refused).
    pub fn allow_certificates(self, allow: bool) -> Portal {
        self.edit(|p| p.certificates = allow)
    }

    /// The login phase's limits.
    pub fn config(self, config: LoginConfig) -> Portal {
        self.edit(|p| {
            p.pending = Arc::new(pb_core::transport::permits(config.max_pending_logins));
            p.pending_per_address =
                pb_core::transport::PerAddress::new(config.max_pending_logins_per_address);
            p.config = config;
        })
    }

    /// The secret from which unknown users' fake salts are derived. It is random per portal by
    /// default; keep it fixed across restarts so that probes cannot spot unknown users by their
    /// salts changing.
    pub fn fake_secret(self, secret: [u8; 32]) -> Portal {
        self.edit(|p| p.fake_secret = secret)
    }

    /// Serve one accepted transport: run the handshake with the login object as root, hold the
    /// frame limit low and start the login deadline. `tls` is what the TLS layer under `io`
    /// reported, if any. [`crate::Server::serve_portal`] calls this for every connection; tests
    /// may call it over an in-memory transport.
    pub async fn serve_connection<T>(
        &self,
        io: T,
        config: &Config,
        peer_addr: Option<SocketAddr>,
        tls: Option<TlsInfo>,
    ) -> Result<Connection, ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let login = &self.inner.config;
        let Ok(pending) = self.inner.pending.clone().try_acquire_owned() else {
            tracing::warn!(
                ?peer_addr,
                max = login.max_pending_logins,
                "connection refused: max_pending_logins reached"
            );
            return Err(ConnectError::Io(io::Error::other(
                "too many connections waiting to log in",
            )));
        };
        let from_address = match peer_addr {
            Some(addr) => match self.inner.pending_per_address.enter(addr.ip()) {
                Some(slot) => Some(slot),
                None => {
                    tracing::warn!(
                        ?peer_addr,
                        max = login.max_pending_logins_per_address,
                        "connection refused: max_pending_logins_per_address reached"
                    );
                    return Err(ConnectError::Io(io::Error::other(
                        "too many connections from this address waiting to log in",
                    )));
                }
            },
            None => None,
        };
        let mut pre = config.clone();
        pre.limits.max_frame_len = pre
            .limits
            .max_frame_len
            .min(login.max_frame_len_before_login);
        // The least window there is: four frames of the size just set.
        pre.limits.max_call_bytes = 0;
        let (done_tx, mut done_rx) = watch::channel(false);
        let root = LoginRoot {
            portal: self.inner.clone(),
            tls,
            max_frame_len_after: config.limits.max_frame_len,
            max_call_bytes_after: config.limits.max_call_bytes,
            logged_in: done_tx,
            attempt: tokio::sync::Mutex::new(Attempts::default()),
        };
        let conn = Connection::establish(
            io,
            &pre,
            Side::Server,
            Some(ObjectRef::local(root)),
            peer_addr,
        )
        .await?;
        let timeout = login.login_timeout;
        let watched = conn.clone();
        tokio::spawn(async move {
            // The connection counts as waiting to log in until this task ends.
            let _pending = (pending, from_address);
            tokio::select! {
                _ = watched.closed() => {}
                _ = done_rx.wait_for(|done| *done) => {}
                _ = tokio::time::sleep(timeout) => {
                    tracing::info!(connection = watched.id(), peer = ?watched.peer_addr(), ?timeout, "no login before the deadline: closing");
                    watched.abort();
                }
            }
        });
        Ok(conn)
    }
}

#[derive(Default)]
struct Attempts {
    failures: u32,
    scram: Option<(ScramServer, String, bool)>,
}

/// The per-connection login object: the connection's root until login.
struct LoginRoot {
    portal: Arc<PortalInner>,
    tls: Option<TlsInfo>,
    max_frame_len_after: usize,
    max_call_bytes_after: usize,
    logged_in: watch::Sender<bool>,
    // Held across a whole login step, delay included, so that parallel attempts on one
    // connection queue up instead of dodging the slowdown.
    attempt: tokio::sync::Mutex<Attempts>,
}

impl LoginRoot {
    fn binding(&self) -> ChannelBinding {
        self.tls
            .as_ref()
            .map_or(ChannelBinding::None, |t| t.channel_binding.clone())
    }

    fn peer_certificate(&self) -> Option<PeerCertificate> {
        self.tls.as_ref().and_then(|t| t.peer_certificate.clone())
    }

    /// Count a failure, wait, and say what to answer. Past the limit the connection is closed
    /// once the answer is out.
    async fn fail(&self, attempts: &mut Attempts, conn: Option<&Connection>) -> Refusal {
        attempts.failures = attempts.failures.saturating_add(1);
        attempts.scram = None;
        let config = &self.portal.config;
        let shift = attempts.failures.saturating_sub(1).min(16);
        let delay = config.failure_delay.saturating_mul(1u32 << shift);
        tokio::time::sleep(delay).await;
        if attempts.failures >= config.max_failures {
            if let Some(conn) = conn {
                tracing::info!(connection = conn.id(), peer = ?conn.peer_addr(), failures = attempts.failures, "too many failed logins: closing");
                let conn = conn.clone();
                // Closed from another task: a graceful close waits for this very call.
                tokio::spawn(async move { conn.close().await });
            }
            Refusal::TooManyAttempts
        } else {
            Refusal::Denied
        }
    }

    async fn scram_start(
        &self,
        client_first: String,
        conn: Option<Connection>,
    ) -> Result<String, Refusal> {
        let mut attempts = self.attempt.lock().await;
        if *self.logged_in.borrow() {
            return Err(Refusal::AlreadyLoggedIn);
        }
        let Some(store) = &self.portal.verifiers else {
            return Err(Refusal::NotOffered);
        };
        let first = match parse_client_first(&client_first, &self.binding()) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "bad scram client-first");
                return Err(self.fail(&mut attempts, conn.as_ref()).await);
            }
        };
        let username = first.username().to_owned();
        let (verifier, known) = match store.verifier(&username).await {
            Some(v) => (v, true),
            None => (
                match store.shape() {
                    Some(shape) => {
                        ScramVerifier::fake_like(&self.portal.fake_secret, &username, shape)
                    }
                    None => ScramVerifier::fake(
                        &self.portal.fake_secret,
                        &username,
                        self.portal.config.fake_iterations,
                    ),
                },
                false,
            ),
        };
        match first.challenge(&verifier) {
            Ok((server, server_first)) => {
                attempts.scram = Some((server, username, known));
                Ok(server_first)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot answer a login");
                Err(Refusal::Unavailable)
            }
        }
    }

    async fn scram_finish(
        &self,
        client_final: String,
        mind: Option<ObjectRef>,
        conn: Option<Connection>,
    ) -> Result<ScramFinished, Refusal> {
        let mut attempts = self.attempt.lock().await;
        if *self.logged_in.borrow() {
            return Err(Refusal::AlreadyLoggedIn);
        }
        let Some((server, username, known)) = attempts.scram.take() else {
            return Err(Refusal::Malformed);
        };
        // Unknown users go through the same proof check against their fake verifier, so both
        // kinds of failure cost the same and get the same answer after the same delay.
        let checked = server.handle_client_final(&client_final);
        let server_final = match checked {
            Ok(v) if known => v,
            Ok(_) | Err(_) => {
                if let Err(e) = &checked {
                    tracing::debug!(error = %e, "login failed");
                }
                return Err(self.fail(&mut attempts, conn.as_ref()).await);
            }
        };
        let avatar = self.complete(Identity::User(username), mind, conn).await?;
        Ok(ScramFinished {
            server_final,
            avatar,
        })
    }

    async fn other_login(
        &self,
        identity: Option<Identity>,
        mind: Option<ObjectRef>,
        conn: Option<Connection>,
    ) -> Result<ObjectRef, Refusal> {
        let _attempts = self.attempt.lock().await;
        if *self.logged_in.borrow() {
            return Err(Refusal::AlreadyLoggedIn);
        }
        let Some(identity) = identity else {
            return Err(Refusal::NotOffered);
        };
        self.complete(identity, mind, conn).await
    }

    /// The credentials are good: ask the realm, then open the connection up.
    async fn complete(
        &self,
        identity: Identity,
        mind: Option<ObjectRef>,
        conn: Option<Connection>,
    ) -> Result<ObjectRef, Refusal> {
        // Login is only meaningful on a connection; an in-process call has none.
        let Some(conn) = conn else {
            return Err(Refusal::Unavailable);
        };
        let request = LoginRequest {
            identity: identity.clone(),
            mind,
            connection: conn.clone(),
            peer_certificate: self.peer_certificate(),
        };
        // Recorded first, so that a realm may record identities of its own beside it.
        conn.set_identity(identity.clone());
        let avatar = match self.portal.realm.request_avatar(request).await {
            Ok(avatar) => avatar,
            Err(refusal) => {
                conn.forget_identity::<Identity>();
                return Err(refusal);
            }
        };
        conn.set_avatar(avatar.object.clone());
        conn.set_max_frame_len(self.max_frame_len_after);
        conn.set_max_call_bytes(self.max_call_bytes_after);
        self.logged_in.send_replace(true);
        tracing::info!(connection = conn.id(), peer = ?conn.peer_addr(), user = ?identity.name(), "logged in");
        Ok(ObjectRef::local(AvatarObject {
            inner: avatar.object,
            logout: Mutex::new(avatar.logout),
        }))
    }
}

impl Dispatch for LoginRoot {
    fn interface(&self) -> &'static Interface {
        &LOGIN_INTERFACE
    }

    fn dispatch(self: Arc<Self>, mut call: IncomingCall) -> BoxFuture<Reply> {
        let caller = call.caller().clone();
        let conn = caller.connection().cloned();
        Box::pin(async move {
            match call.method() {
                METHOD_SCRAM_START => {
                    let (client_first,): (String,) = call.decode_args()?;
                    encode_result(&caller, self.scram_start(client_first, conn).await)
                }
                METHOD_SCRAM_FINISH => {
                    let (client_final, mind): (String, Option<ObjectRef>) = call.decode_args()?;
                    encode_result(&caller, self.scram_finish(client_final, mind, conn).await)
                }
                METHOD_ANONYMOUS => {
                    let (mind,): (Option<ObjectRef>,) = call.decode_args()?;
                    let identity = self.portal.anonymous.then_some(Identity::Anonymous);
                    encode_result(&caller, self.other_login(identity, mind, conn).await)
                }
                METHOD_CERTIFICATE => {
                    let (mind,): (Option<ObjectRef>,) = call.decode_args()?;
                    let identity = self
                        .portal
                        .certificates
                        .then(|| self.peer_certificate().map(Identity::Certificate))
                        .flatten();
                    encode_result(&caller, self.other_login(identity, mind, conn).await)
                }
                // Most likely a call meant for the avatar, made before logging in.
                _ => Err(Fault {
                    kind: FaultKind::NoSuchMethod,
                    message: format!(
                        "{} has no method {:?}: this connection has not logged in, and before a login its root is the login object; log in first (Session::login) and call the avatar the login returns",
                        LOGIN_INTERFACE.name,
                        call.method()
                    ),
                }),
            }
        })
    }
}

static AVATAR_INTERFACE: Interface = Interface {
    name: "Avatar",
    methods: &[],
};

/// Wraps the realm's avatar object on its way to the client. The broker drops its export when
/// the client releases it and when the connection closes; the last drop runs the logout hook.
struct AvatarObject {
    inner: ObjectRef,
    logout: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Dispatch for AvatarObject {
    fn interface(&self) -> &'static Interface {
        self.inner.local_interface().unwrap_or(&AVATAR_INTERFACE)
    }

    fn dispatch(self: Arc<Self>, call: IncomingCall) -> BoxFuture<Reply> {
        self.inner.dispatch(call)
    }
}

impl Drop for AvatarObject {
    fn drop(&mut self) {
        let hook = LogoutHook(
            self.logout
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        // A release drops the export while the connection's tables are locked, so the hook
        // runs from a task of its own: it may then use the connection. Should the task never
        // run (the runtime shutting down), dropping it runs the hook.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let mut hook = hook;
                    hook.run();
                });
            }
            Err(_) => drop(hook),
        }
    }
}

/// A logout hook that runs exactly once: when asked, or else when dropped.
struct LogoutHook(Option<Box<dyn FnOnce() + Send>>);

impl LogoutHook {
    fn run(&mut self) {
        if let Some(hook) = self.0.take() {
            hook();
        }
    }
}

impl Drop for LogoutHook {
    fn drop(&mut self) {
        self.run();
    }
}
