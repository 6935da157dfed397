//! The peer's frames: calls checked and handed back to run, answers matched to our calls,
//! releases, cancels, revocations, pings and updates; limit violations counted.

use super::*;

/// What makes the driver's objects for references the peer sends: given the peer's id and a
/// generation, the handle the import table keeps and the reference handed on. (Id 0 is the
/// peer's root, which the table does not keep.)
pub type MakeImport<'a, T> =
    dyn FnMut(u64, u64) -> (<T as Tokens>::Import, <T as Tokens>::Object) + 'a;

impl<T: Tokens> Broker<T> {
    /// Count a violation of the limits; too many close the connection.
    pub(super) fn violation(&mut self) -> Result<(), ProtocolError> {
        // Saturating: with `max_violations = u32::MAX` the connection is never closed for them.
        self.violations = self.violations.saturating_add(1);
        if self.violations > self.limits.max_violations {
            return Err(ProtocolError::TooManyViolations {
                count: self.violations,
                max: self.limits.max_violations,
            });
        }
        Ok(())
    }

    /// Handle one frame body from the peer. A call to run comes back (a frame holds at most
    /// one); everything else the frame causes is queued output and [`Event`]s. `make` makes
    /// the references to objects the peer sends for the first time.
    ///
    /// An error is a violation of the protocol: the connection must be closed.
    pub fn handle_frame(
        &mut self,
        frame: impl Into<Frame>,
        make: &mut MakeImport<'_, T>,
    ) -> Result<Option<Incoming<T::Object>>, ProtocolError> {
        self.handle(frame.into(), false, make)
    }

    /// The driver holds frame `body` back for now (its output to the peer is congested): a
    /// call is counted in our call window from now on, or, if it does not fit, refused at once
    /// (a `LimitExceeded` fault, and a violation) without being held. Returns whether to hold
    /// the frame, to be handled later with [`Broker::handle_held_frame`].
    pub fn hold_frame(&mut self, frame: &Frame) -> Result<bool, ProtocolError> {
        if self.state == State::Closed {
            return Ok(true);
        }
        if !message::is_call(&frame.body) || self.charge_call(frame.len()) {
            self.count_held(&frame.body, 1);
            self.held += 1;
            return Ok(true);
        }
        let head = message::decode_call_head(&frame.body, &self.limits.message)?;
        self.over_window(&head, frame.len())?;
        Ok(false)
    }

    /// Whether frame `body`, which may otherwise overtake frames held back
    /// ([`message::may_overtake`]), must wait behind them: a revocation or cache update of an
    /// object of the peer's that a held frame names (a held call that sends it, which the
    /// revocation or update must follow, as it did on the wire).
    pub fn must_follow_held(&self, body: &[u8]) -> bool {
        self.held_objects.as_ref().is_some_and(|held| {
            !held.is_empty() && message::object_of(body).is_some_and(|id| held.contains_key(&id))
        })
    }

    /// Held frame `body` leaves the line (it runs, or is dropped): it and the objects it names
    /// no longer count as held.
    fn unhold(&mut self, body: &[u8]) {
        self.held = self.held.saturating_sub(1);
        if self
            .held_objects
            .as_ref()
            .is_some_and(|held| !held.is_empty())
        {
            self.count_held(body, -1);
        }
    }

    /// Count (`delta` 1) or uncount (`delta` -1) the objects of the peer's that held frame
    /// `body` names: those its references send, or the one it revokes or
    /// updates. A call whose envelope does not decode names none (it is refused when handled).
    fn count_held(&mut self, body: &[u8], delta: isize) {
        let held = self.held_objects.get_or_insert_with(|| {
            Box::new(std::collections::HashMap::with_hasher(PeerKeys::new()))
        });
        let mut count = |id: u64| {
            let n = held.entry(id).or_insert(0);
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                held.remove(&id);
            }
        };
        if let Some(id) = message::object_of(body) {
            count(id);
        } else if message::is_call(body)
            && let Ok(head) = message::decode_call_head(body, &self.limits.message)
        {
            for r in &head.refs {
                if let RefDesc::Sender(id) = r {
                    count(*id);
                }
            }
        }
    }

    /// Handle a frame the driver held back ([`Broker::hold_frame`]), as
    /// [`Broker::handle_frame`] does.
    pub fn handle_held_frame(
        &mut self,
        frame: impl Into<Frame>,
        make: &mut MakeImport<'_, T>,
    ) -> Result<Option<Incoming<T::Object>>, ProtocolError> {
        let frame = frame.into();
        self.unhold(&frame.body);
        self.handle(frame, true, make)
    }

    fn handle(
        &mut self,
        frame: Frame,
        charged: bool,
        make: &mut MakeImport<'_, T>,
    ) -> Result<Option<Incoming<T::Object>>, ProtocolError> {
        if self.state == State::Closed {
            return Ok(None);
        }
        if message::is_call(&frame.body) {
            // The body is kept whole: the method name and arguments stay ranges of it.
            let head = message::decode_call_head(&frame.body, &self.limits.message)?;
            let len = frame.len();
            if !charged && !self.charge_call(len) {
                return self.over_window(&head, len).map(|()| None);
            }
            return self.handle_call(head, (frame, len), make);
        }
        let Frame { body, tail } = frame;
        let message = Message::decode(body, &self.limits.message)?;
        if tail.is_some() && !matches!(message, Message::Answer { .. }) {
            return Err(ProtocolError::Frame(FrameError::BadSplit(
                "a split frame that is neither a call nor an answer",
            )));
        }
        self.handle_message(message, tail, make).map(|()| None)
    }

    /// The peer cancelled call `frame`, which we hold back (read but not run, see
    /// [`Broker::hold_frame`]): it never runs. It leaves our call window, the references it
    /// carried are released, and a peer that counts its calls gets its last word on it (a
    /// `Cancelled` fault, as a cancelled running call gets).
    pub fn drop_held_call(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        if self.state == State::Closed {
            return Ok(());
        }
        self.unhold(&frame.body);
        let head = message::decode_call_head(&frame.body, &self.limits.message)?;
        self.release_unwanted(&head.refs);
        self.call_ended(frame.len(), head.answer);
        if head.answer && self.peer_hears_window {
            self.send_fault(
                head.id,
                Fault {
                    kind: FaultKind::Cancelled,
                    message: String::new(),
                },
            );
        }
        Ok(())
    }

    /// Count a call of `len` bytes in our call window, if it fits.
    #[inline]
    fn charge_call(&mut self, len: usize) -> bool {
        if self.call_bytes + len > self.limits.max_call_bytes {
            return false;
        }
        self.call_bytes += len;
        true
    }

    /// A call of the peer's counted in our window (`charge` bytes) ended here: it leaves the
    /// window, and one that gets no answer is credited to a peer that counts its calls.
    #[inline]
    pub(super) fn call_ended(&mut self, charge: usize, answer: bool) {
        self.call_bytes = self.call_bytes.saturating_sub(charge);
        if !answer && self.peer_hears_window {
            self.credit_due += charge as u64;
        }
    }

    /// A call of `len` bytes that does not fit in our window: refused, never held or run; the
    /// references it carries are released (the peer counted them as sent).
    fn over_window(&mut self, head: &CallHead, len: usize) -> Result<(), ProtocolError> {
        let message = format!(
            "the caller's calls in flight exceed the call window (limit max_call_bytes = {})",
            self.limits.max_call_bytes
        );
        tracing::warn!(
            id = head.id,
            len,
            call_bytes = self.call_bytes,
            "call refused: {message}"
        );
        self.release_unwanted(&head.refs);
        if head.answer {
            self.send_fault(head.id, Fault::limit(message));
        } else if self.peer_hears_window {
            // Never counted here, but counted by the peer: credited as if it had run.
            self.credit_due += len as u64;
        }
        self.violation()
    }

    /// Handle a message that is not a call.
    fn handle_message(
        &mut self,
        message: Message,
        tail: Option<Box<Bytes>>,
        make: &mut MakeImport<'_, T>,
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
                let payload = Arrived {
                    bytes: payload,
                    tail,
                };
                if refs.is_empty() {
                    // Most answers: one lookup.
                    let outcome = Outcome {
                        ok,
                        payload,
                        refs: Vec::new(),
                    };
                    return match self.deliver(id, Ok(outcome)) {
                        Ok(()) => Ok(()),
                        Err(_) => self.unwanted_answer(id),
                    };
                }
                // Matched to a call before any reference is imported: an answer nobody waits
                // for makes us hold nothing.
                if !self.pending.is_waiting(id) {
                    if !self.pending.was_issued(id) {
                        return self.unwanted_answer(id);
                    }
                    // Cancelled, most likely, with the answer crossing the cancel: the
                    // references' sends are released without being imported.
                    tracing::debug!(id, "answer for a call no longer pending");
                    self.release_unwanted(&refs);
                    let len = self.pending.close_cancelled(id);
                    self.free_window(len);
                    return Ok(());
                }
                if self.imports_would_exceed(&refs) {
                    self.release_unwanted(&refs);
                    let fault = self.imports_over_limit();
                    let _ = self.deliver(id, Err(fault));
                    return self.violation();
                }
                let (refs, error) = self.resolve(&refs, make);
                let reply = if let Some(message) = error {
                    self.bury(refs);
                    Err(Fault {
                        kind: FaultKind::BadAnswer,
                        message,
                    })
                } else {
                    Ok(Outcome { ok, payload, refs })
                };
                // Waiting, checked above.
                let _ = self.deliver(id, reply);
                Ok(())
            }
            Message::Fault { id, kind, message } => {
                match self.deliver(id, Err(Fault { kind, message })) {
                    Ok(()) => Ok(()),
                    Err(_) => self.unwanted_answer(id),
                }
            }
            Message::Release(items) => {
                for (id, count) in items {
                    if id == 0 {
                        continue;
                    }
                    match self.exports.release(id, count) {
                        Released::NotExported => {
                            tracing::warn!(id, "peer released an object we do not export");
                            self.violation()?;
                        }
                        Released::Revoked => {
                            tracing::debug!(id, "peer released an object we had revoked");
                        }
                        Released::Held { .. } => {}
                        Released::Freed { token, over } => {
                            if over {
                                tracing::warn!(id, count, "peer released more than it was sent");
                            }
                            self.events.push(Event::Unexported { id, object: token });
                        }
                    }
                }
                Ok(())
            }
            Message::Cancel { id } => {
                if let Some(watch) = self.running.cancel(id) {
                    self.events.push(Event::Cancelled(watch));
                }
                Ok(())
            }
            Message::Goodbye => {
                self.peer_goodbye = true;
                Ok(())
            }
            Message::Revoked { object } => {
                // The peer freed the object already: our handles must not release it again
                // (the slot is gone, so `release_imported` sends nothing for it).
                if let Some(handle) = self.imports.revoke(object) {
                    self.events.push(Event::Revoked(handle));
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
                self.set_peer(limits);
                Ok(())
            }
            Message::Credit { bytes } => {
                self.free_window(usize::try_from(bytes).unwrap_or(usize::MAX));
                Ok(())
            }
            Message::Update { object, payload } => {
                match self.imports.get(object) {
                    Some(import) => self.events.push(Event::Update {
                        import: import.clone(),
                        payload,
                    }),
                    // No loss: a later send of the cache carries a newer state, followed by
                    // the updates made since it was encoded.
                    None => tracing::debug!(object, "update for a reference no longer held"),
                }
                Ok(())
            }
        }
    }

    /// An answer or fault for call `id`, which is not waiting: one crossing our cancel is
    /// dropped; one for a call we never made is a violation.
    fn unwanted_answer(&mut self, id: u64) -> Result<(), ProtocolError> {
        if self.pending.was_issued(id) {
            tracing::debug!(id, "answer for a call no longer pending");
            Ok(())
        } else {
            tracing::warn!(id, "answer to a call never made");
            self.violation()
        }
    }

    fn imports_over_limit(&self) -> Fault {
        Fault::limit(format!(
            "references from the peer exceed the limit max_imports = {}",
            self.limits.max_imports
        ))
    }

    /// The peer's call `head` in `frame`, which counts `charge` bytes in our call window.
    fn handle_call(
        &mut self,
        head: CallHead,
        (Frame { body, tail }, charge): (Frame, usize),
        make: &mut MakeImport<'_, T>,
    ) -> Result<Option<Incoming<T::Object>>, ProtocolError> {
        let CallHead {
            id,
            target,
            answer,
            deadline_ms,
            extras,
            method,
            refs: descs,
            payload_at,
        } = head;
        if self.imports_would_exceed(&descs) {
            self.release_unwanted(&descs);
            self.call_ended(charge, answer);
            if answer {
                let fault = self.imports_over_limit();
                self.send_fault(id, fault);
            }
            return self.violation().map(|()| None);
        }
        let (refs, error) = self.resolve(&descs, make);
        let mut violated = false;
        let refused = if self.state != State::Open {
            Some(Fault {
                kind: FaultKind::ShuttingDown,
                message: "the peer is shutting down".to_string(),
            })
        } else if let Some(message) = error {
            Some(Fault {
                kind: FaultKind::NoSuchObject,
                message,
            })
        } else if self.running.in_flight() >= self.limits.max_in_flight_calls {
            violated = true;
            Some(Fault::limit(format!(
                "too many calls in flight (limit max_in_flight_calls = {})",
                self.limits.max_in_flight_calls
            )))
        } else if answer && self.running.is_tracked(id) {
            self.bury(refs);
            self.call_ended(charge, answer);
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
            object.is_none().then(|| Fault {
                kind: FaultKind::NoSuchObject,
                message: format!("no object {target}"),
            })
        });
        let (Some(object), None) = (object, &refused) else {
            let fault = refused.unwrap_or_else(|| Fault {
                kind: FaultKind::NoSuchObject,
                message: format!("no object {target}"),
            });
            tracing::debug!(id, target, message = %fault.message, "call refused");
            self.bury(refs);
            self.call_ended(charge, answer);
            if answer {
                self.send_fault(id, fault);
            }
            return if violated {
                self.violation().map(|()| None)
            } else {
                Ok(None)
            };
        };
        // Entered in the running table only if the handler has to wait (`watch`): most calls
        // are answered before the next frame is handled.
        self.running.admit();
        Ok(Some(Incoming {
            id,
            target,
            object,
            body,
            method,
            args_at: payload_at,
            refs,
            answer,
            deadline_ms,
            extras,
            charge,
            tail,
        }))
    }
}
