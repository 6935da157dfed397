//! Responders registered by command name (Twisted's `CommandLocator` and `amp_*` methods).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use super::argument::AmpFields;
use super::codec::AmpBox;
use super::command::{AmpCommand, AmpError, RemoteError};
use pb_proto::hash::IdHasher;

/// What a responder produced for one incoming command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AmpReply {
    /// The answer's keys.
    Answer(AmpBox),
    /// An error answer (a declared error, or one a raw responder chose).
    Error(RemoteError),
    /// An undeclared failure: `UNKNOWN` is sent and the connection closes; the text is logged.
    Failed(String),
}

pub(crate) type ReplyFuture = Pin<Box<dyn Future<Output = AmpReply> + Send>>;
type Responder = Arc<dyn Fn(AmpBox) -> ReplyFuture + Send + Sync>;

/// The responders of one connection, by command name.
///
/// ```
/// use pb::amp::Locator;
///
/// #[derive(pb::AmpCommand)]
/// #[amp(response = SumResponse)]
/// struct Sum { a: i64, b: i64 }
///
/// #[derive(pb::AmpFields)]
/// struct SumResponse { total: i64 }
///
/// let locator = Locator::new()
///     .respond(|Sum { a, b }| async move { Ok(SumResponse { total: a + b }) })
///     .respond_raw("Ping", |args| async move { Ok(args) });
/// assert!(locator.contains("Sum") && locator.contains("Ping"));
/// ```
#[derive(Clone, Default)]
pub struct Locator {
    /// The names are ours (the peer only looks them up), so a cheap hash will do.
    responders: HashMap<Bytes, Responder, BuildHasherDefault<IdHasher>>,
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.responders.keys().map(|k| String::from_utf8_lossy(k)))
            .finish()
    }
}

impl Locator {
    /// A locator with no responders.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the responder of command `C`, replacing any earlier one for the same name.
    ///
    /// As in Twisted, `f` itself is called on the connection's task in the order the commands
    /// arrived. The future it returns is polled once right there; if it has to wait, it runs on
    /// in a task of its own, so answers may go out in any order. Put whatever must happen in
    /// arrival order before the `async` block.
    ///
    /// Arguments that do not parse, and responses that do not encode, become `UNKNOWN` and close
    /// the connection, as in Twisted; a declared error is sent with its code.
    pub fn respond<C, F, Fut>(mut self, f: F) -> Self
    where
        C: AmpCommand,
        F: Fn(C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Response, C::Error>> + Send + 'static,
    {
        let responder: Responder = Arc::new(move |args: AmpBox| {
            let cmd = match C::from_box(&args) {
                Ok(cmd) => cmd,
                Err(e) => {
                    let why = format!("bad arguments: {}", chain(&e));
                    return Box::pin(async move { AmpReply::Failed(why) }) as ReplyFuture;
                }
            };
            let fut = f(cmd);
            Box::pin(async move {
                match fut.await {
                    Ok(response) => {
                        let mut b = AmpBox::new();
                        match response.to_box(&mut b) {
                            Ok(()) => AmpReply::Answer(b),
                            Err(e) => AmpReply::Failed(format!("bad response: {}", chain(&e))),
                        }
                    }
                    Err(e) => AmpReply::Error(RemoteError {
                        code: Bytes::from_static(e.code()),
                        description: e.description(),
                        fatal: e.is_fatal(),
                    }),
                }
            }) as ReplyFuture
        });
        self.responders
            .insert(Bytes::from_static(C::NAME.as_bytes()), responder);
        self
    }

    /// Registers a responder that takes and returns raw boxes (Twisted's `amp_NAME` methods).
    pub fn respond_raw<F, Fut>(mut self, name: impl Into<Bytes>, f: F) -> Self
    where
        F: Fn(AmpBox) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<AmpBox, RemoteError>> + Send + 'static,
    {
        let responder: Responder = Arc::new(move |args: AmpBox| {
            let fut = f(args);
            Box::pin(async move {
                match fut.await {
                    Ok(b) => AmpReply::Answer(b),
                    Err(e) => AmpReply::Error(e),
                }
            }) as ReplyFuture
        });
        self.responders.insert(name.into(), responder);
        self
    }

    /// Whether a responder is registered for `name`.
    pub fn contains(&self, name: impl AsRef<[u8]>) -> bool {
        self.responders.contains_key(name.as_ref())
    }

    /// Whether no responder is registered.
    pub fn is_empty(&self) -> bool {
        self.responders.is_empty()
    }

    /// Calls the responder for `name` on `args` and returns the future of its reply, or returns `None` if there is none.
    pub fn dispatch(
        &self,
        name: &[u8],
        args: AmpBox,
    ) -> Option<impl Future<Output = AmpReply> + Send + 'static> {
        self.dispatch_boxed(name, args)
    }

    /// [`Locator::dispatch`] with the future's type named, for the driver to poll in place.
    pub(crate) fn dispatch_boxed(&self, name: &[u8], args: AmpBox) -> Option<ReplyFuture> {
        self.responders.get(name).map(|r| r(args))
    }
}

/// An error and its sources on one line, for logs.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
