//! What a call may carry beside its target, method, references and arguments: the caller's
//! signature of the method, and the caller's trace context.

use std::fmt;

/// A method's signature as the caller sees it: a fingerprint of its parameter types and one of
/// its result type (0: not checked, as for a call that wants no answer). The callee compares
/// them with its own and refuses a call whose arguments would only decode by luck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature {
    /// The fingerprint of the parameters' types (never 0).
    pub params: u32,
    /// The fingerprint of the result's type, or 0 when the caller does not say.
    pub result: u32,
}

/// Bytes a signature takes on the wire.
pub(crate) const SIGNATURE_LEN: usize = 8;

impl Signature {
    pub(crate) fn to_bytes(self) -> [u8; SIGNATURE_LEN] {
        let mut b = [0; SIGNATURE_LEN];
        b[..4].copy_from_slice(&self.params.to_be_bytes());
        b[4..].copy_from_slice(&self.result.to_be_bytes());
        b
    }

    pub(crate) fn from_bytes(b: [u8; SIGNATURE_LEN]) -> Signature {
        let [a0, a1, a2, a3, r0, r1, r2, r3] = b;
        Signature {
            params: u32::from_be_bytes([a0, a1, a2, a3]),
            result: u32::from_be_bytes([r0, r1, r2, r3]),
        }
    }

    /// The fingerprint of a type's description: 32-bit FNV-1a, with 0 (which means "not
    /// said") moved to 1.
    pub fn fingerprint(description: &str) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in description.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h.max(1)
    }
}

/// A W3C trace context (`traceparent`, version 00): the trace a call belongs to and the
/// caller's span, so that the callee's span is its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace's id (not all zero).
    pub trace_id: [u8; 16],
    /// The caller's span id (not all zero).
    pub parent_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Bytes a trace context takes on the wire.
pub(crate) const TRACE_LEN: usize = 25;

impl TraceParent {
    pub(crate) fn to_bytes(self) -> [u8; TRACE_LEN] {
        let mut b = [0; TRACE_LEN];
        b[..16].copy_from_slice(&self.trace_id);
        b[16..24].copy_from_slice(&self.parent_id);
        b[24] = self.flags;
        b
    }

    /// `None` for the ids W3C calls invalid (all zero).
    pub(crate) fn from_bytes(b: [u8; TRACE_LEN]) -> Option<TraceParent> {
        let mut trace_id = [0; 16];
        trace_id.copy_from_slice(&b[..16]);
        let mut parent_id = [0; 8];
        parent_id.copy_from_slice(&b[16..24]);
        let t = TraceParent {
            trace_id,
            parent_id,
            flags: b[24],
        };
        t.is_valid().then_some(t)
    }

    /// Whether neither id is all zero (W3C's rule).
    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.parent_id != [0; 8]
    }

    /// Parse a `traceparent` header value (`00-<32 hex>-<16 hex>-<2 hex>`); `None` if it is
    /// not one, or names an invalid id.
    pub fn parse(s: &str) -> Option<TraceParent> {
        let mut parts = s.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let mut t = TraceParent {
            trace_id: [0; 16],
            parent_id: [0; 8],
            flags: 0,
        };
        hex_into(trace, &mut t.trace_id)?;
        hex_into(parent, &mut t.parent_id)?;
        let mut f = [0u8; 1];
        hex_into(flags, &mut f)?;
        t.flags = f[0];
        t.is_valid().then_some(t)
    }
}

fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// The `traceparent` header value.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// What a call carries beside its target, method, references and arguments, each optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CallExtras {
    /// The caller's signature of the method.
    pub signature: Option<Signature>,
    /// The caller's trace context.
    pub trace: Option<TraceParent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_text_round_trips_and_refuses_invalid_ids() {
        // The example of the W3C Trace Context recommendation.
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(s).expect("a valid traceparent");
        assert_eq!(t.flags, 1);
        assert_eq!(
            t.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(t.to_string(), s);
        assert_eq!(TraceParent::from_bytes(t.to_bytes()), Some(t));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        assert_eq!(TraceParent::from_bytes([0; TRACE_LEN]), None);
    }

    #[test]
    fn fingerprints_differ_by_type_and_are_never_zero() {
        assert_ne!(
            Signature::fingerprint("(String,)"),
            Signature::fingerprint("(Scary,)")
        );
        assert_ne!(Signature::fingerprint(""), 0);
        let s = Signature {
            params: 7,
            result: 0,
        };
        assert_eq!(Signature::from_bytes(s.to_bytes()), s);
    }
}
