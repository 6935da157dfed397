//! Connections counted per source address, so that one address cannot take every slot.
//!
//! An address is an IPv4 address or an IPv6 /64 (what one host or one site typically holds; an
//! IPv4-mapped IPv6 address counts as its IPv4 address).

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use pb_proto::hash::PeerKeys;

/// The table of counts. Its keys are the peers' addresses, which they choose: hashed with a
/// secret of the server's (`PeerKeys`), a few multiplies rather than SipHash's rounds.
type Counts = Arc<DashMap<IpAddr, usize, PeerKeys>>;

/// The connections open per source address, and the most each may have (used by pb's
/// servers, native and AMP).
#[derive(Clone, Debug)]
pub struct PerAddress {
    max: usize,
    /// Addresses with at least one connection. Every accepted connection enters and leaves it,
    /// so it is sharded; each check-and-count, and each uncount-and-remove, holds its entry's
    /// shard for the whole step, so that the count never passes `max` and an address is never
    /// removed while it still has a connection.
    counts: Counts,
}

/// One connection's place in its address's count, given back when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    counts: Counts,
    key: IpAddr,
}

/// The address `ip` counts under.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = a.segments();
                s[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(s))
            }
        },
    }
}

impl PerAddress {
    /// At most `max` connections per address (at least 1).
    pub fn new(max: usize) -> PerAddress {
        PerAddress {
            max: max.max(1),
            counts: Arc::new(DashMap::with_hasher(PeerKeys::new())),
        }
    }

    /// A slot for one more connection from `ip`, unless its address has `max` already.
    pub fn enter(&self, ip: IpAddr) -> Option<AddressSlot> {
        let key = key(ip);
        match self.counts.entry(key) {
            Entry::Occupied(mut n) if *n.get() < self.max => *n.get_mut() += 1,
            Entry::Occupied(_) => return None,
            Entry::Vacant(v) => {
                v.insert(1);
            }
        }
        Some(AddressSlot {
            counts: self.counts.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Entry::Occupied(mut n) = self.counts.entry(self.key) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_by_host_and_ipv6_slash_64() {
        let per = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let s1 = per.enter(a).unwrap();
        let _s2 = per.enter(a).unwrap();
        assert!(per.enter(a).is_none(), "a third from one address");
        assert!(
            per.enter("10.0.0.2".parse().unwrap()).is_some(),
            "others still get in"
        );
        drop(s1);
        assert!(per.enter(a).is_some(), "a slot given back is free again");
        // One /64 is one address; the mapped form of an IPv4 address is that address.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _x = per.enter(v6("2001:db8:1:2::1")).unwrap();
        let _y = per.enter(v6("2001:db8:1:2:ffff::9")).unwrap();
        assert!(per.enter(v6("2001:db8:1:2::77")).is_none());
        assert!(per.enter(v6("2001:db8:1:3::1")).is_some());
        assert_eq!(key(v6("::ffff:10.0.0.9")), v6("10.0.0.9"));
        // Only the slots still held count: 10.0.0.1 and the /64.
        assert_eq!(per.counts.len(), 2);
    }

    #[test]
    fn concurrent_entries_never_pass_the_limit_and_leave_nothing_behind() {
        const MAX: usize = 3;
        let per = PerAddress::new(MAX);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (per, admitted, most) = (&per, &admitted, &most);
                s.spawn(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    let ip = if t % 2 == 0 { a } else { b };
                    for _ in 0..2_000 {
                        if let Some(slot) = per.enter(ip) {
                            let held = *per.counts.get(&key(ip)).unwrap();
                            assert!(held <= MAX, "{held} connections from one address");
                            most.fetch_max(held, SeqCst);
                            admitted.fetch_add(1, SeqCst);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert!(admitted.into_inner() > 0);
        assert!(most.into_inner() <= MAX);
        // Every slot was given back, and an address with none is not kept.
        assert!(per.counts.is_empty());
    }
}
