//! References in messages: exports counted as they are sent, descriptors resolved as they
//! arrive, releases, revocations and cache updates.

use super::*;

impl<T: Tokens> Broker<T> {
    /// Turn references about to be sent into wire descriptors, counting exports; a first
    /// export is an [`Event::Exported`], a send of an object exported already an
    /// [`Event::Resent`] (either comes after the message in the events, as the driver's
    /// follow-up, a cache's catch-up say, comes after it on the wire).
    pub(super) fn describe(&mut self, refs: &[T::Object]) -> Result<Vec<RefDesc>, Fault> {
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        // Check the quota before touching any count, so a refused message changes nothing.
        let new_exports = self.count_new_exports(refs);
        if self.exports.len() + new_exports > self.limits.max_exports {
            return Err(Fault::limit(format!(
                "exporting {new_exports} more objects would exceed the limit max_exports = {}",
                self.limits.max_exports
            )));
        }
        let mut descs = Vec::with_capacity(refs.len());
        for r in refs {
            let key = match T::classify(r, self.conn_id) {
                Sending::Returned(id) => {
                    descs.push(RefDesc::Receiver(id));
                    continue;
                }
                Sending::Exported(key) => key,
            };
            if Some(key) == self.root_key {
                descs.push(RefDesc::Sender(0));
                continue;
            }
            let sent = self.exports.send(key, || r.clone());
            let id = sent.id();
            descs.push(RefDesc::Sender(id));
            let object = r.clone();
            self.events.push(match sent {
                Sent::New(_) => Event::Exported { id, object },
                Sent::Again(_) => Event::Resent { id, object },
            });
        }
        Ok(descs)
    }

    /// How many distinct objects in `refs` are not exported yet.
    fn count_new_exports(&self, refs: &[T::Object]) -> usize {
        let new_key = |r: &T::Object| {
            key_of::<T>(r, self.conn_id)
                .filter(|&key| Some(key) != self.root_key && !self.exports.contains_key(key))
        };
        // Most messages carry one or two references: no set to allocate for those.
        if refs.len() <= 8 {
            let mut seen = [None; 8];
            let mut count = 0;
            for key in refs.iter().filter_map(new_key) {
                if !seen[..count].contains(&Some(key)) {
                    seen[count] = Some(key);
                    count += 1;
                }
            }
            return count;
        }
        refs.iter()
            .filter_map(new_key)
            .collect::<std::collections::HashSet<usize>>()
            .len()
    }

    /// Withdraw the export `object` from the peer (it forwards to an object that is gone): the
    /// peer hears it is revoked, and the object comes back as an [`Event::Dropped`]. Returns
    /// whether it was exported.
    pub fn revoke_export(&mut self, object: u64) -> bool {
        if self.state == State::Closed {
            return false;
        }
        // Remembered among as many revoked ids as may be exported at once, so that releases
        // the peer sent before it heard of them are not taken for faults.
        let Some(withdrawn) = self.exports.revoke(object, self.limits.max_exports) else {
            return false;
        };
        self.queue_naming(object, |out| {
            out.write_frame(|buf| Message::Revoked { object }.encode(buf));
        });
        self.events.push(Event::Dropped(withdrawn));
        true
    }

    /// Queue a message naming our export `object` (an update, a revocation) with `write`.
    /// While a parked call sends the object, the message follows that call out (and any
    /// message waiting already, keeping their order), as releases wait behind parked calls:
    /// sent at once, it would reach a peer that does not hold the object yet, which drops it.
    fn queue_naming(&mut self, object: u64, write: impl FnOnce(&mut Outbox)) {
        let behind = if self.parked.is_empty() {
            None
        } else {
            self.parked
                .iter()
                .rposition(|call| !call.behind.is_empty() || call.exported.contains(&object))
        };
        match behind.and_then(|at| self.parked.get_mut(at)) {
            None => write(&mut self.out),
            Some(call) => {
                let mut frame = Outbox::new();
                write(&mut frame);
                call.behind.extend(frame.take_all());
            }
        }
    }

    /// Whether our object is exported to the peer under `object` (and the connection open).
    #[inline]
    pub fn is_exported(&self, object: u64) -> bool {
        self.state != State::Closed && self.exports.contains(object)
    }

    /// Keep objects for the driver to drop (as [`Event::Dropped`]): dropping one may run code
    /// that uses this very connection.
    pub(super) fn bury(&mut self, refs: impl IntoIterator<Item = T::Object>) {
        self.events.extend(refs.into_iter().map(Event::Dropped));
    }

    /// Whether an update whose payload is `len` bytes fits the peer's frame.
    pub fn update_fits(&self, len: usize) -> bool {
        self.frame_fits(UPDATE_HEAD_MAX.saturating_add(len), PEER)
            .is_ok()
    }

    /// Queue an update of a cache we own for the peer, which holds it as `object`. Returns
    /// false, queueing nothing, if the object is no longer exported to it, or if the update
    /// is larger than the peer accepts (then the replica falls behind and says so when the
    /// next update arrives).
    pub fn send_update(&mut self, object: u64, payload: Bytes) -> bool {
        if !self.is_exported(object) {
            return false;
        }
        if let Err(f) = self.frame_fits(UPDATE_HEAD_MAX + payload.len(), PEER) {
            tracing::error!(object, message = %f.message, "cache update not sent");
            return false;
        }
        self.queue_naming(object, |out| {
            let start = out.begin_frame();
            encode_update_head(out.buf(), object);
            out.push_payload(start, payload);
        });
        true
    }

    /// Whether importing the references `descs` names would take the import table over
    /// `max_imports` (counting each object not held yet once).
    pub(super) fn imports_would_exceed(&self, descs: &[RefDesc]) -> bool {
        let room = self.limits.max_imports.saturating_sub(self.imports.len());
        if descs.len() <= room {
            return false;
        }
        let mut new: Vec<u64> = descs
            .iter()
            .filter_map(|d| match *d {
                RefDesc::Sender(id) if id != 0 && self.imports.get(id).is_none() => Some(id),
                _ => None,
            })
            .collect();
        new.sort_unstable();
        new.dedup();
        new.len() > room
    }

    /// References the peer sent that we will not hold (an answer nobody waits for, or over
    /// our limits): each send goes back in a release at once, without a handle being made. A
    /// reference held already counts the receipt on its handle, which releases it with the
    /// rest.
    pub(super) fn release_unwanted(&mut self, descs: &[RefDesc]) {
        for d in descs {
            if let RefDesc::Sender(id) = *d
                && id != 0
                && self.state != State::Closed
            {
                match self.imports.get(id).and_then(T::receive_again) {
                    Some(held) => self.events.push(Event::Dropped(held)),
                    None => self.releases.push((id, 1)),
                }
            }
        }
    }

    /// Turn received descriptors into references. Every descriptor is resolved even after an
    /// error, because the peer counted each of its objects as sent; dropping the result releases
    /// them again.
    pub(super) fn resolve(
        &mut self,
        descs: &[RefDesc],
        make: &mut MakeImport<'_, T>,
    ) -> (Vec<T::Object>, Option<String>) {
        let mut refs = Vec::with_capacity(descs.len());
        let mut error = None;
        for d in descs {
            match *d {
                RefDesc::Sender(0) => refs.push(make(0, 0).1),
                RefDesc::Sender(id) => {
                    // One lookup: the slot is reused, filled, or replaced if its handle died.
                    let object = self
                        .imports
                        .receive(id, T::receive_again, |generation| make(id, generation));
                    refs.push(object);
                }
                RefDesc::Receiver(0) => match &self.root {
                    Some(root) => refs.push(root.clone()),
                    None => error = Some("the peer returned our root, but we serve none".into()),
                },
                RefDesc::Receiver(id) => match self.exports.get(id) {
                    Some(object) => refs.push(object.clone()),
                    None => {
                        error = Some(format!(
                            "the peer returned object {id}, which we never exported"
                        ))
                    }
                },
            }
        }
        (refs, error)
    }

    /// Our last handle of generation `generation` to the peer's object `id`, which received
    /// it `count` times, was dropped: the owner hears of it (in a release, with the next
    /// transmit). Nothing is sent for a reference the peer revoked, or once the connection is
    /// closed.
    pub fn release_imported(&mut self, id: u64, generation: u64, count: u64) {
        let release = self.imports.release(id, generation);
        if release != Release::Revoked && self.state != State::Closed && count > 0 {
            self.releases.push((id, count));
        }
    }
}
