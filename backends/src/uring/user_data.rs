//! What a completion is for: `user_data` is tag (8 bits) | generation (24 bits) | slot
//! (32 bits). The tag names the operation; the key names the connection and which of the
//! slot's connections it was, so a stale completion never reaches a newer connection.
//!
//! Tags with the top bit set are not requests of the ring that reaps them — a doorbell
//! posted into a worker's ring with `MSG_RING` — so they never count as in flight.

use crate::table::Key;

/// The doorbell's tag, the same in the acceptor's ring (a failed `MSG_RING`) and in the
/// worker's (the posted completion).
pub const WAKE: u8 = 0x80;

/// A zero-copy send's tag: this bit pattern in the top two bits, its sequence number in
/// the low six (so it never looks like an [`Op`] or the doorbell).
pub const ZC_TAG: u8 = 0x40;
/// Sequence numbers a zero-copy tag has room for.
pub const ZC_SEQS: u8 = 64;

/// The sequence number of a zero-copy send's tag.
pub fn zc_seq(tag: u8) -> Option<u8> {
    (tag & 0xC0 == ZC_TAG).then_some(tag & (ZC_SEQS - 1))
}

/// The worker's operations, as `user_data` tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Recv = 1,
    Send = 2,
    Cancel = 3,
    Close = 4,
    /// The poll on the server's stop signal.
    Stop = 5,
    /// Installing the connection's descriptor in the ring's file table.
    Install = 6,
}

impl Op {
    pub fn from_tag(tag: u8) -> Option<Op> {
        [Op::Recv, Op::Send, Op::Cancel, Op::Close, Op::Stop, Op::Install].into_iter().find(|o| *o as u8 == tag)
    }
}

pub fn pack(tag: u8, key: Key) -> u64 {
    u64::from(tag) << 56 | key.pack()
}

pub fn tag(user_data: u64) -> u8 {
    (user_data >> 56) as u8
}

pub fn key(user_data: u64) -> Key {
    Key::unpack(user_data)
}

/// Whether a completion with this tag ends a request this ring submitted.
pub fn is_request(tag: u8) -> bool {
    tag & WAKE == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_wake_is_not_a_request() {
        let k = Key { slot: 123_456, gen: 0xAB_CDEF };
        let ud = pack(3, k);
        assert_eq!((tag(ud), key(ud)), (3, k));
        assert!(is_request(3) && !is_request(WAKE));
    }
}
