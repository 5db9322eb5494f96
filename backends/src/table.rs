//! A worker's connections: a slab of slots with generations, and the close bookkeeping
//! every backend does the same way (one row, the open counts, the slot freed).
//!
//! A [`Key`] names a slot *and* the generation of the connection in it. A slot is reused
//! for a new connection with the next generation, so an event or completion that was
//! meant for the slot's previous connection finds nothing instead of the wrong one.

use std::time::{Duration, Instant};

use crate::book::{CloseReason, ConnMeter, ThreadBook};
use crate::shared::Shared;

/// Generations wrap at 24 bits so a key fits, with an 8-bit tag, in 64 bits.
const GEN_MASK: u32 = 0xFF_FFFF;

/// A connection's slot and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub slot: u32,
    pub gen: u32,
}

impl Key {
    /// `gen` (24 bits) and `slot` (32 bits) in the low 56 bits of a `u64`.
    pub fn pack(self) -> u64 {
        u64::from(self.gen & GEN_MASK) << 32 | u64::from(self.slot)
    }

    /// The inverse of [`pack`](Self::pack) (bits above 56 are ignored).
    pub fn unpack(v: u64) -> Key {
        Key { slot: v as u32, gen: (v >> 32) as u32 & GEN_MASK }
    }
}

/// What the table needs to know about a connection: its meter.
pub trait Tracked {
    fn meter(&self) -> &ConnMeter;
}

struct Slot<T> {
    gen: u32,
    conn: Option<T>,
}

/// A worker's open connections.
pub struct ConnTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for ConnTable<T> {
    fn default() -> Self {
        ConnTable { slots: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T: Tracked> ConnTable<T> {
    /// Connections held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Puts the connection `make` builds (given its key) in a free slot.
    pub fn insert_with(&mut self, make: impl FnOnce(Key) -> T) -> Key {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot { gen: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        debug_assert!(s.conn.is_none(), "slot {slot} on the free list is in use");
        s.gen = s.gen.wrapping_add(1) & GEN_MASK;
        let key = Key { slot, gen: s.gen };
        s.conn = Some(make(key));
        self.len += 1;
        key
    }

    /// The connection `key` names, if it is still the one in its slot.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        let s = self.slots.get_mut(key.slot as usize)?;
        if s.gen == key.gen {
            s.conn.as_mut()
        } else {
            None
        }
    }

    /// Every connection's key (for shutdown and idle scans, which are rare).
    pub fn keys(&self) -> Vec<Key> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, s)| Key { slot: i as u32, gen: s.gen })
            .collect()
    }

    /// The keys of connections with no activity for `limit` as of `now`.
    pub fn idle_keys(&self, now: Instant, limit: Duration) -> Vec<Key> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.as_ref().is_some_and(|c| now.duration_since(c.meter().last_active) >= limit))
            .map(|(i, s)| Key { slot: i as u32, gen: s.gen })
            .collect()
    }

    /// Ends a connection: takes it out of its slot, books its one row for `reason`, and
    /// counts it out of the server's open connections. Returns it so the caller can
    /// release what it holds (its descriptor, with a counted close).
    pub fn close(&mut self, key: Key, reason: CloseReason, book: &mut ThreadBook, shared: &Shared) -> Option<T> {
        let s = self.slots.get_mut(key.slot as usize).filter(|s| s.gen == key.gen)?;
        let conn = s.conn.take()?;
        self.free.push(key.slot);
        self.len -= 1;
        book.closed(conn.meter(), reason);
        shared.closed_one();
        Some(conn)
    }

    /// Takes every connection out without booking anything (a worker that cannot wait for
    /// the kernel books them itself).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.len = 0;
        self.free.clear();
        self.slots.iter_mut().filter_map(|s| s.conn.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct C(ConnMeter);
    impl Tracked for C {
        fn meter(&self) -> &ConnMeter {
            &self.0
        }
    }

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_key() {
        let mut t = ConnTable::default();
        let meter = || C(ConnMeter::new("127.0.0.1:1".parse().unwrap(), 3));
        let a = t.insert_with(|_| meter());
        let shared = Shared::new(crate::config::ServerConfig::default(), crate::log::ConnLog::counting()).unwrap();
        shared.open.store(1, std::sync::atomic::Ordering::Relaxed);
        let mut book = ThreadBook::new(0);
        assert!(t.close(a, CloseReason::Eof, &mut book, &shared).is_some());
        let b = t.insert_with(|_| meter());
        assert_eq!(a.slot, b.slot);
        assert!(t.get_mut(a).is_none() && t.get_mut(b).is_some());
        assert!(t.close(a, CloseReason::Eof, &mut book, &shared).is_none(), "closed twice");
        assert_eq!(book.rows.len(), 1);
        assert_eq!(Key::unpack(b.pack()), b);
    }
}
