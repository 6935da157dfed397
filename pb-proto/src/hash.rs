//! Hashers for the tables keyed by ids: a fast one for ids we allocate ourselves, and one
//! keyed by a per-connection secret for ids the peer chooses.

/// A multiplicative (Fibonacci) hash for the ids and addresses we allocate ourselves: one
/// multiply instead of SipHash's rounds. Not for keys a peer chooses (what is stored in the
/// table must be ours; the peer may only look keys up).
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // The table picks buckets with the low bits, and a product's low bits depend only on
        // the key's low bits (all zero in aligned addresses): fold the high bits in.
        self.0 ^ (self.0 >> 32)
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The hash of the tables keyed by ids the peer chooses (its object ids, its request ids): the
/// key is mixed with a secret drawn for each connection and folded through two wide
/// multiplies, a few instructions against SipHash's 140 or so a lookup. Unlike SipHash this is
/// no keyed pseudo-random function that keeps its key secret from someone who sees its
/// outputs; but the peer never sees a hash, only how long its messages take, so it cannot aim
/// its ids at one bucket without the secret. The tables' sizes are bounded by the broker's limits
/// besides.
#[derive(Clone, Copy)]
pub struct PeerKeys {
    k0: u64,
    k1: u64,
}

impl PeerKeys {
    /// A new secret: the next two outputs of the thread's SplitMix64 sequence, whose start is
    /// drawn once per thread from the standard library's `RandomState` (seeded from the
    /// operating system). Every connection draws one, so it costs a few multiplies rather than
    /// two runs of SipHash; what it must be is unknown to the peer, which never sees a hash,
    /// and different for each connection.
    #[inline]
    pub fn new() -> PeerKeys {
        thread_local! {
            static STATE: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
        }
        STATE.with(|state| {
            let mut s = state.get().unwrap_or_else(|| {
                use std::hash::BuildHasher;
                std::hash::RandomState::new().hash_one(0u64)
            });
            let k0 = splitmix64(&mut s);
            let k1 = splitmix64(&mut s);
            state.set(Some(s));
            PeerKeys::with_secret(k0, k1)
        })
    }

    #[inline]
    fn with_secret(k0: u64, k1: u64) -> PeerKeys {
        // Never zero, which would give every key one hash.
        PeerKeys { k0, k1: k1 | 1 }
    }
}

impl Default for PeerKeys {
    /// A new secret, as [`PeerKeys::new`].
    #[inline]
    fn default() -> PeerKeys {
        PeerKeys::new()
    }
}

impl std::hash::BuildHasher for PeerKeys {
    type Hasher = PeerKeyHasher;

    #[inline]
    fn build_hasher(&self) -> PeerKeyHasher {
        PeerKeyHasher {
            h: self.k0,
            k1: self.k1,
        }
    }
}

/// The hasher of [`PeerKeys`].
pub struct PeerKeyHasher {
    h: u64,
    k1: u64,
}

impl std::hash::Hasher for PeerKeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // A second fold: after one, the bucket bits of ids that differ only above them (ids
        // in steps of a power of two) can collapse for some secrets.
        fold_mul(self.h, self.k1.rotate_left(32) | 1)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Keys of other types than `u64` (a server's per-address counts hash IP addresses):
        // the length first, so that zero padding cannot make two keys one.
        self.write_u64(bytes.len() as u64);
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.h = fold_mul(self.h ^ n, self.k1);
    }
}

/// The next output of SplitMix64 (Steele, Lea and Flood), whose state is `s`.
#[inline]
fn splitmix64(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The full 128-bit product of `a` and `b`, its halves folded into one word.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::PeerKeys;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    /// Id patterns a peer might choose: sequential, differing only in their high bits, in
    /// steps of a power of two, with the top bit set.
    fn patterns() -> [(&'static str, Vec<u64>); 4] {
        [
            ("sequential", (0..1024).collect()),
            ("high bits", (0..1024).map(|i| i << 40).collect()),
            ("stride 1024", (0..1024).map(|i| i * 1024).collect()),
            ("top bit set", (0..1024).map(|i| i | 1 << 63).collect()),
        ]
    }

    #[test]
    fn peer_chosen_ids_spread_over_the_buckets_whatever_their_pattern() {
        // 64 fixed secrets (so a weak mix cannot pass by luck) and a fresh one. A random
        // function fills about 1 - 1/e of 1 024 buckets (647, give or take 10) and nearly all
        // of the 128 tags hashbrown takes from the top 7 bits.
        let mut secrets: Vec<PeerKeys> = (0..64u64)
            .map(|i| {
                let mix = |x: u64| x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
                PeerKeys::with_secret(mix(2 * i + 1), mix(2 * i + 2))
            })
            .collect();
        secrets.push(PeerKeys::new());
        for h in secrets {
            for (name, keys) in patterns() {
                let buckets = keys.iter().map(|&k| h.hash_one(k) & 1023);
                let tags = keys.iter().map(|&k| h.hash_one(k) >> 57);
                let buckets = buckets.collect::<HashSet<_>>().len();
                let tags = tags.collect::<HashSet<_>>().len();
                assert!(buckets > 560, "{name}: {buckets} of 1024 buckets");
                assert!(tags > 110, "{name}: {tags} of 128 tags");
            }
        }
    }

    #[test]
    fn each_connection_draws_its_own_secret() {
        let (a, b) = (PeerKeys::new(), PeerKeys::new());
        assert_ne!(a.hash_one(42u64), b.hash_one(42u64));
        // Not the identity, and not the same for neighbours.
        assert_ne!(a.hash_one(42u64), 42);
        assert_ne!(a.hash_one(42u64), a.hash_one(43u64));
        // Many connections, on this thread and on another: no two alike.
        let here: Vec<u64> = (0..1000).map(|_| PeerKeys::new().hash_one(42u64)).collect();
        let there = std::thread::spawn(|| PeerKeys::new().hash_one(42u64))
            .join()
            .unwrap();
        let all: HashSet<u64> = here.iter().copied().chain([there]).collect();
        assert_eq!(all.len(), here.len() + 1);
    }
}
