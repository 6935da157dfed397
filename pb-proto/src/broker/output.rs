//! What the broker queues for the peer: frames in the outbox, releases in batches that fit the
//! peer, and the checks that keep every message within the peer's receive limits.

use super::*;

/// The peer, in an error our caller reads.
pub(super) const PEER: &str = "the peer's";

/// The peer, in an error the peer reads about the answer to its call.
pub(super) const CALLER: &str = "the caller's";

/// Said of a limit that is the floor because the peer's hello has not arrived yet.
const PEER_NOT_KNOWN: &str =
    " (the floor every peer accepts: the peer's own limits are not known before its hello)";

impl<T: Tokens> Broker<T> {
    /// Whether the broker holds anything to send to the peer.
    #[inline]
    pub fn has_transmit(&self) -> bool {
        !self.out.is_empty()
            || (!self.releases.is_empty() && self.parked.is_empty())
            || self.credit_due != 0
    }

    /// Hand over the bytes to write, in order: whole chunks (large payloads, uncopied) are
    /// appended to `into`, and the output buffer, which follows them, is exchanged for `tail`
    /// (what `tail` held goes to `into` first, keeping the order), so the buffer's written
    /// allocation comes back for reuse without splitting a chunk off it. Returns how many
    /// bytes were handed over.
    pub fn poll_transmit(&mut self, into: &mut Vec<Bytes>, tail: &mut BytesMut) -> usize {
        if self.credit_due != 0 && self.state != State::Closed {
            let bytes = std::mem::take(&mut self.credit_due);
            self.write_message(&Message::Credit { bytes });
        }
        // Releases wait behind parked calls: a parked call may send back a reference whose
        // release would otherwise reach the peer first, and free what the call names.
        if !self.releases.is_empty() && self.parked.is_empty() && self.state != State::Closed {
            // Taken and given back, so the list keeps its capacity from batch to batch.
            let mut items = std::mem::take(&mut self.releases);
            // As many entries as the peer takes in one message, and in one frame (after the
            // envelope: tag and entry count).
            let room = self.send_frame_limit().0.saturating_sub(1 + 10);
            let per_frame = room / RELEASE_ENTRY_MAX;
            let per_message = self.peer.max_release_entries.min(per_frame).max(1);
            for batch in items.chunks(per_message) {
                self.out
                    .write_frame(|out| message::encode_release(out, batch));
            }
            // Unless a burst made it large: an idle connection keeps little.
            if items.capacity() <= KEEP_RELEASES {
                items.clear();
                self.releases = items;
            }
        }
        self.out.take_to(into, tail)
    }

    /// Queue bytes that are not a message (the hello of a dialed connection) before anything
    /// else is queued.
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.queue_raw(bytes);
    }

    /// Bytes queued for the peer and not yet handed over by [`Broker::poll_transmit`].
    #[inline]
    pub fn queued_bytes(&self) -> usize {
        self.out.len()
    }

    pub(super) fn write_message(&mut self, m: &Message) {
        self.out.write_frame(|out| m.encode(out));
    }

    pub(super) fn send_fault(&mut self, id: u64, fault: Fault) {
        self.write_message(&Message::Fault {
            id,
            kind: fault.kind,
            message: fault.message,
        });
    }

    /// The largest frame body we may send: ours, or the peer's if it is smaller (then
    /// `true`).
    #[inline]
    fn send_frame_limit(&self) -> (usize, bool) {
        if self.peer.max_frame_len < self.limits.max_frame_len {
            (self.peer.max_frame_len, true)
        } else {
            (self.limits.max_frame_len, false)
        }
    }

    /// Check a message of at most `len` bytes against the frame limit. `peer` names the peer
    /// in the error, from the point of view of whoever reads it: "the peer's" for our caller,
    /// "the caller's" for the peer that made the call an answer is for.
    #[inline]
    pub(super) fn frame_fits(&self, len: usize, peer: &str) -> Result<(), Fault> {
        let (max, theirs) = self.send_frame_limit();
        if len > max {
            let whose = if theirs { peer } else { "the" };
            let mut message =
                format!("message of {len} bytes exceeds {whose} limit max_frame_len = {max}");
            if theirs && !self.peer_known {
                message.push_str(PEER_NOT_KNOWN);
            }
            return Err(Fault::limit(message));
        }
        Ok(())
    }

    /// Check the number of references in a message against the peer's limit (see
    /// [`Broker::frame_fits`] for `peer`).
    #[inline]
    pub(super) fn refs_fit(&self, refs: usize, peer: &str) -> Result<(), Fault> {
        let max = self.peer.max_refs_per_message;
        if refs > max {
            let mut message = format!(
                "message with {refs} references exceeds {peer} limit max_refs_per_message = {max}"
            );
            if !self.peer_known {
                message.push_str(PEER_NOT_KNOWN);
            }
            return Err(Fault::limit(message));
        }
        Ok(())
    }

    /// Ask the peer for a sign of life (keep-alive): a ping with `nonce`, which the peer
    /// answers with a pong.
    pub fn send_ping(&mut self, nonce: u64) {
        if self.state != State::Closed {
            self.write_message(&Message::Ping { nonce });
        }
    }
}
