//! The peer's frames: calls checked and turned into events, answers matched to our calls,
//! releases, cancels, revocations, pings and updates; limit violations counted.

use super::*;

impl Broker {
    pub(super) fn violation(&mut self) -> Result<(), ProtocolError> {
        self.violations += 1;
        if self.violations > self.limits.max_violations {
            return Err(ProtocolError::TooManyViolations {
                count: self.violations,
                max: self.limits.max_violations,
            });
        }
        Ok(())
    }

    /// Handle one frame body from the peer: a call to run comes back (a frame holds at most
    /// one).
    pub(crate) fn handle_frame(
        &mut self,
        body: Bytes,
        make: &dyn Fn(u64, u64) -> Arc<Imported>,
    ) -> Result<Option<CallEvent>, ProtocolError> {
        if self.state == State::Closed {
            return Ok(None);
        }
        if message::is_call(&body) {
            // The body is kept whole: the method name and arguments stay ranges of it.
            let head = message::decode_call_head(&body, &self.limits.message)?;
            return self.handle_call(head, body, make);
        }
        let message = Message::decode(body, &self.limits.message)?;
        self.handle_message(message, make).map(|()| None)
    }

    /// Handle a message that is not a call.
    pub(super) fn handle_message(
        &mut self,
        message: Message,
        make: &dyn Fn(u64, u64) -> Arc<Imported>,
    ) -> Result<(), ProtocolError> {
        match message {
            // `handle_frame` runs calls.
            Message::Call { .. } => Ok(()),
            Message::Answer {
                id,
                ok,
                refs,
                payload,
            } => {
                let (refs, error) = self.resolve(&refs, make);
                let over = self.imports.len() > self.limits.max_imports;
                let reply = if let Some(message) = error {
                    Err(Fault {
                        kind: FaultKind::BadAnswer,
                        message,
                    })
                } else if over {
                    Err(self.imports_over_limit())
                } else {
                    Ok(Outcome { ok, payload, refs })
                };
                if let Err(unwanted) = self.deliver(id, reply) {
                    tracing::debug!(id, "answer for a call no longer pending");
                    if let Ok(o) = unwanted {
                        self.bury(o.refs);
                    }
                    return Ok(());
                }
                if over { self.violation() } else { Ok(()) }
            }
            Message::Fault { id, kind, message } => {
                if self.deliver(id, Err(Fault { kind, message })).is_err() {
                    tracing::debug!(id, "fault for a call no longer pending");
                }
                Ok(())
            }
            Message::Release(items) => {
                for (id, count) in items {
                    if id == 0 {
                        continue;
                    }
                    let object = match self.exports.release(id, count) {
                        Released::NotExported => {
                            tracing::warn!(id, "peer released an object we do not export");
                            self.violation()?;
                            continue;
                        }
                        Released::Held { .. } => continue,
                        Released::Freed { token, over } => {
                            if over {
                                tracing::warn!(id, count, "peer released more than it was sent");
                            }
                            token
                        }
                    };
                    // Dropped, and its hook run, outside the lock: both may use this
                    // connection.
                    match &object.0 {
                        RefInner::Local(_) => self.unexported.push((object, id)),
                        RefInner::Remote(imp) => {
                            imp.dependents
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .retain(|(c, object)| !(*object == id && c.ptr_eq(&self.link)));
                            self.graveyard.push(object);
                        }
                    }
                }
                Ok(())
            }
            Message::Cancel { id } => {
                // Dropping the sender wakes the handler's cancellation branch.
                self.running.cancel(id);
                Ok(())
            }
            Message::Goodbye => {
                self.peer_goodbye = true;
                Ok(())
            }
            Message::Revoked { object } => {
                // The peer freed the object already: our handles must not release it again.
                if let Some(handle) = self.imports.revoke(object)
                    && let Some(imp) = handle.upgrade()
                {
                    imp.forget_count();
                    self.revoked.push(imp);
                }
                Ok(())
            }
            Message::Ping { nonce } => {
                self.write_message(&Message::Pong { nonce });
                Ok(())
            }
            // The driver notes that a frame arrived; nothing else to do.
            Message::Pong { .. } => Ok(()),
            Message::Limits(limits) => {
                tracing::debug!(?limits, "the peer's receive limits changed");
                self.peer = limits;
                Ok(())
            }
            Message::Update { object, payload } => {
                match self.imports.get(object).and_then(Weak::upgrade) {
                    Some(imp) => imp
                        .replica
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .deliver(payload),
                    // No loss: a later send of the cache carries a newer state, followed by
                    // the updates made since it was encoded (`Dispatch::on_resend`).
                    None => tracing::debug!(object, "update for a reference no longer held"),
                }
                Ok(())
            }
        }
    }

    pub(super) fn imports_over_limit(&self) -> Fault {
        Fault {
            kind: FaultKind::LimitExceeded,
            message: format!(
                "references from the peer exceed the limit max_imports = {}",
                self.limits.max_imports
            ),
        }
    }

    pub(super) fn handle_call(
        &mut self,
        head: CallHead,
        body: Bytes,
        make: &dyn Fn(u64, u64) -> Arc<Imported>,
    ) -> Result<Option<CallEvent>, ProtocolError> {
        let CallHead {
            id,
            target,
            answer,
            deadline_ms,
            method,
            refs: descs,
            payload_at,
        } = head;
        let (refs, error) = self.resolve(&descs, make);
        let mut violated = false;
        let refused = if self.state != State::Open {
            Some((
                FaultKind::ShuttingDown,
                "the peer is shutting down".to_string(),
            ))
        } else if let Some(message) = error {
            Some((FaultKind::NoSuchObject, message))
        } else if self.imports.len() > self.limits.max_imports {
            violated = true;
            let f = self.imports_over_limit();
            Some((f.kind, f.message))
        } else if self.running.in_flight() >= self.limits.max_in_flight_calls {
            violated = true;
            Some((
                FaultKind::LimitExceeded,
                format!(
                    "too many calls in flight (limit max_in_flight_calls = {})",
                    self.limits.max_in_flight_calls
                ),
            ))
        } else if answer && self.running.is_tracked(id) {
            return Err(ProtocolError::DuplicateRequest(id));
        } else {
            None
        };
        let object = if refused.is_some() {
            None
        } else if target == 0 {
            self.root.clone()
        } else {
            self.exports.get(target).cloned()
        };
        let refused = refused.or_else(|| {
            object
                .is_none()
                .then(|| (FaultKind::NoSuchObject, format!("no object {target}")))
        });
        if let Some((kind, message)) = refused {
            tracing::debug!(id, target, %message, "call refused");
            self.bury(refs);
            if answer {
                self.send_fault(id, kind, message);
            }
            return if violated {
                self.violation().map(|()| None)
            } else {
                Ok(None)
            };
        }
        let Some(object) = object else {
            return Ok(None);
        };
        // Entered in the running table only if the handler has to wait (`watch_cancel`): most
        // calls are answered before the next frame is handled.
        self.running.admit();
        Ok(Some(CallEvent {
            id,
            target,
            object,
            body,
            method,
            args_at: payload_at,
            refs,
            answer,
            deadline: deadline_ms.map(std::time::Duration::from_millis),
        }))
    }
}
