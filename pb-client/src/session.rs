//! A connection opened for login: it remembers what the TLS layer under it offers for channel
//! binding, and logs in through the server's login object.

use pb_core::login::{
    METHOD_ANONYMOUS, METHOD_CERTIFICATE, METHOD_SCRAM_FINISH, METHOD_SCRAM_START, Refusal,
    ScramFinished,
};
use pb_core::scram::{ChannelBinding, ScramClient, ScramError};
use pb_core::{CallError, Connection, ObjectRef, Remote};

use crate::ClientError;

/// Logging in failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The server refused; [`Refusal::Denied`] covers both an unknown user and a wrong password.
    #[error("{0}")]
    Refused(Refusal),
    /// The server could not prove it holds the password's verifier: it is not the server the
    /// password was registered with (or a man in the middle). The avatar was dropped.
    #[error("the server could not prove that it knows the password verifier")]
    ServerNotAuthenticated,
    /// The SCRAM exchange failed on our side (for example the server asked for an iteration
    /// count outside the accepted range).
    #[error("scram exchange failed")]
    Scram(#[from] ScramError),
    /// A login call failed (connection lost, limit, ...). A refusal is reported as
    /// [`LoginError::Refused`], never here.
    #[error("login call failed")]
    Call(#[source] CallError<Refusal>),
    /// The connection to log in over could not be opened ([`crate::Client::login`] and
    /// [`crate::ClientBuilder::login`], which dial first).
    #[error("cannot open the connection to log in")]
    Connect(#[source] ClientError),
    /// The server's root is not a login portal: it has no login methods. A server offers
    /// logins by serving a `Portal` (`Server::serve_portal`); without one, call its root
    /// directly (`Client::connect`, `Connection::root`).
    #[error(
        "the server does not offer logins: its root has no login methods ({0}); serve a Portal (Server::serve_portal), or call the root without logging in"
    )]
    NotAPortal(String),
}

impl LoginError {
    /// The server's refusal, if that is what this is.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            LoginError::Refused(r) => Some(*r),
            _ => None,
        }
    }
}

impl From<CallError<Refusal>> for LoginError {
    fn from(e: CallError<Refusal>) -> Self {
        match e {
            CallError::Remote(r) => LoginError::Refused(r),
            CallError::NoSuchMethod(m) => LoginError::NotAPortal(m),
            other => LoginError::Call(other),
        }
    }
}

/// A pb connection opened by [`crate::ClientBuilder::open`], ready to log in.
///
/// **One login per connection:** once a login on this session has succeeded, the server refuses
/// any other on the same connection with [`Refusal::AlreadyLoggedIn`] (the avatar, and the
/// identity every call on the connection carries, are set once). To act as another user, open
/// another connection. A failed attempt may be retried on the same connection, up to the
/// server's failure limit (`LoginConfig::max_failures` in pb-server), after which it closes the
/// connection. For the common case, [`crate::Client::login`] opens the connection and logs in
/// in one call.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = pb::ClientTls::from_roots_pem_file("ca.crt")?.server_name("localhost")?;
/// let session = pb::Client::builder().tls(tls).open("127.0.0.1:8789").await?;
/// let avatar: pb::ObjectRef = session.login("ada", "correct horse").await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Session {
    conn: Connection,
    binding: ChannelBinding,
    max_iterations: u32,
    mind: Option<ObjectRef>,
}

impl Session {
    pub(crate) fn new(conn: Connection, binding: ChannelBinding, max_iterations: u32) -> Session {
        Session {
            conn,
            binding,
            max_iterations,
            mind: None,
        }
    }

    /// The pb connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The pb connection, giving up the session.
    pub fn into_connection(self) -> Connection {
        self.conn
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.binding, ChannelBinding::TlsExporter(_))
    }

    /// Hand `mind` to the server at login: an object of ours the server's realm may call back
    /// (Twisted's mind), for example to push events to this client.
    pub fn with_mind(mut self, mind: impl Into<ObjectRef>) -> Session {
        self.mind = Some(mind.into());
        self
    }

    /// Close the connection gracefully.
    pub async fn close(&self) {
        self.conn.close().await
    }

    /// Log in with a password (SCRAM-SHA-256, bound to the TLS channel when there is one) and
    /// get the avatar, typed as `R` (for example a generated `FooRef`). The password never
    /// leaves this process; the server proves it holds the user's verifier before this returns.
    ///
    /// One login per connection: after a success, another login on this session is refused
    /// with [`Refusal::AlreadyLoggedIn`].
    pub async fn login<R: Remote>(&self, username: &str, password: &str) -> Result<R, LoginError> {
        let root = self.conn.root_ref();
        let (client, first) = ScramClient::new(username, password, self.binding.clone())?;
        let server_first: String = root.call(METHOD_SCRAM_START, &(first,)).await?;
        let max = self.max_iterations;
        // PBKDF2 is deliberately slow: keep it off the runtime's worker threads.
        let (client, client_final) =
            tokio::task::spawn_blocking(move || client.handle_server_first(&server_first, max))
                .await
                .map_err(|_| {
                    LoginError::Call(CallError::Internal("the login computation failed".into()))
                })??;
        let finished: ScramFinished = root
            .call(METHOD_SCRAM_FINISH, &(client_final, self.mind.clone()))
            .await?;
        match client.handle_server_final(&finished.server_final) {
            Ok(()) => Ok(R::from_object_ref(finished.avatar)),
            Err(ScramError::ServerSignature) => Err(LoginError::ServerNotAuthenticated),
            Err(e) => Err(e.into()),
        }
    }

    /// Log in anonymously, if the server allows it. One login per connection, as for
    /// [`Session::login`].
    pub async fn login_anonymous<R: Remote>(&self) -> Result<R, LoginError> {
        let root = self.conn.root_ref();
        let avatar: ObjectRef = root.call(METHOD_ANONYMOUS, &(self.mind.clone(),)).await?;
        Ok(R::from_object_ref(avatar))
    }

    /// Log in as the identity of the TLS client certificate this connection presented, if the
    /// server accepts certificate logins. One login per connection, as for [`Session::login`].
    pub async fn login_with_certificate<R: Remote>(&self) -> Result<R, LoginError> {
        let root = self.conn.root_ref();
        let avatar: ObjectRef = root.call(METHOD_CERTIFICATE, &(self.mind.clone(),)).await?;
        Ok(R::from_object_ref(avatar))
    }
}
