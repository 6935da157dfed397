//! References in messages: exports counted as they are sent, descriptors resolved as they
//! arrive, releases, revocations and cache updates.

use super::*;

/// The key an object is exported under: the address of its shared allocation.
pub(super) fn export_key(r: &ObjectRef) -> Option<usize> {
    match &r.0 {
        RefInner::Local(_) => r.local_key(),
        RefInner::Remote(imp) => Some(Arc::as_ptr(imp) as usize),
    }
}

impl Broker {
    /// Turn references about to be sent into wire descriptors, counting exports. Also returns
    /// the updates that must follow the message (caches that changed since they were encoded).
    pub(super) fn describe(&mut self, refs: &[ObjectRef]) -> Result<Described, Fault> {
        if refs.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        // Check the quota before touching any count, so a refused message changes nothing.
        let new_exports = self.count_new_exports(refs);
        if self.exports.len() + new_exports > self.limits.max_exports {
            return Err(Fault {
                kind: FaultKind::LimitExceeded,
                message: format!(
                    "exporting {new_exports} more objects would exceed the limit max_exports = {}",
                    self.limits.max_exports
                ),
            });
        }
        let mut descs = Vec::with_capacity(refs.len());
        let mut follow = Vec::new();
        for r in refs {
            if let Some(id) = self.is_ours_to_return(r) {
                descs.push(RefDesc::Receiver(id));
                continue;
            }
            let Some(key) = export_key(r) else { continue };
            if Some(key) == self.root_key {
                descs.push(RefDesc::Sender(0));
            } else {
                let sent = self.exports.send(key, || r.clone());
                let id = sent.id();
                descs.push(RefDesc::Sender(id));
                if let Sent::Again(_) = sent {
                    if let RefInner::Local(d) = &r.0
                        && let Some(update) = d.on_resend(self.conn_id)
                    {
                        follow.push(Follow::Update(id, update));
                    }
                    continue;
                }
                match &r.0 {
                    RefInner::Local(d) => {
                        let link = ExportLink {
                            conn: self.link.clone(),
                            connection: self.conn_id,
                            object: id,
                        };
                        if let Some(update) = d.on_export(&link) {
                            follow.push(Follow::Update(id, update));
                        }
                    }
                    RefInner::Remote(imp) => {
                        // A forward: if the object dies, the peer must hear of it.
                        imp.dependents
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((self.link.clone(), id));
                        if imp.is_dead() {
                            follow.push(Follow::Revoke(id));
                        }
                    }
                }
            }
        }
        Ok((descs, follow))
    }

    /// How many distinct objects in `refs` are not exported yet.
    pub(super) fn count_new_exports(&self, refs: &[ObjectRef]) -> usize {
        let new_key = |r: &ObjectRef| {
            if self.is_ours_to_return(r).is_some() {
                return None;
            }
            export_key(r)
                .filter(|&key| Some(key) != self.root_key && !self.exports.contains_key(key))
        };
        // Most messages carry one or two references: no set to allocate for those.
        if refs.len() <= 8 {
            let keys = refs.iter().map(&new_key);
            let mut seen = [None; 8];
            let mut count = 0;
            for key in keys.flatten() {
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

    /// Write what must follow a message.
    pub(super) fn write_updates(&mut self, follow: Vec<Follow>) {
        for f in follow {
            match f {
                Follow::Update(object, payload) => {
                    let start = self.out.begin_frame();
                    encode_update_head(self.out.buf(), object);
                    self.out.push_payload(start, payload);
                }
                Follow::Revoke(object) => {
                    let held = self.revoke_export(object);
                    self.graveyard.extend(held);
                }
            }
        }
    }

    /// Withdraw an export from the peer: it forwards to an object that is gone. Returns the
    /// object, for the caller to drop outside the lock.
    pub(crate) fn revoke_export(&mut self, object: u64) -> Option<ObjectRef> {
        if self.state == State::Closed {
            return None;
        }
        let withdrawn = self.exports.revoke(object)?;
        self.write_message(&Message::Revoked { object });
        Some(withdrawn)
    }

    /// References the peer revoked, to be marked dead outside the lock.
    pub(crate) fn take_revoked(&mut self) -> Vec<Arc<Imported>> {
        std::mem::take(&mut self.revoked)
    }

    /// Keep objects to be dropped once the lock is released: dropping one may run user code
    /// (its `Drop`) that uses this very connection.
    pub(super) fn bury(&mut self, refs: impl IntoIterator<Item = ObjectRef>) {
        self.graveyard.extend(refs);
    }

    /// The objects to drop now that the lock is being released.
    pub(crate) fn take_graveyard(&mut self) -> Graveyard {
        Graveyard {
            conn_id: self.conn_id,
            objects: std::mem::take(&mut self.graveyard),
            unexported: std::mem::take(&mut self.unexported),
        }
    }

    /// Queue a cache update for the peer; false if the object is no longer exported to it.
    pub(crate) fn send_update(&mut self, object: u64, payload: Bytes) -> bool {
        if self.state == State::Closed || !self.exports.contains(object) {
            return false;
        }
        self.write_updates(vec![Follow::Update(object, payload)]);
        true
    }

    /// A reference that points at the peer's own object on this connection goes back by id.
    pub(super) fn is_ours_to_return(&self, r: &ObjectRef) -> Option<u64> {
        match &r.0 {
            RefInner::Remote(imp) if imp.conn.id() == self.conn_id => Some(imp.id),
            _ => None,
        }
    }

    /// Turn received descriptors into references. Every descriptor is resolved even after an
    /// error, because the peer counted each of its objects as sent; dropping the result releases
    /// them again.
    pub(super) fn resolve(
        &mut self,
        descs: &[RefDesc],
        make: &dyn Fn(u64, u64) -> Arc<Imported>,
    ) -> (Vec<ObjectRef>, Option<String>) {
        let mut refs = Vec::with_capacity(descs.len());
        let mut error = None;
        for d in descs {
            match *d {
                RefDesc::Sender(0) => refs.push(ObjectRef(RefInner::Remote(make(0, 0)))),
                RefDesc::Sender(id) => {
                    // One lookup: the slot is reused, filled, or replaced if its handle died.
                    let handle = self.imports.receive(
                        id,
                        |weak| {
                            let h = weak.upgrade()?;
                            h.add_received();
                            Some(h)
                        },
                        |generation| {
                            let h = make(id, generation);
                            (Arc::downgrade(&h), h)
                        },
                    );
                    refs.push(ObjectRef(RefInner::Remote(handle)));
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

    /// Our last handle to an imported reference was dropped: tell the owner.
    pub(crate) fn release_imported(&mut self, id: u64, generation: u64, count: u64) {
        self.imports.release(id, generation);
        if self.state != State::Closed && count > 0 {
            self.releases.push((id, count));
        }
    }
}
