//! What a request carries and how its echo is checked.

/// Fills `buf` with the payload of `request` on `thread`: distinct for every pair, so an
/// echo from another connection or an earlier request never matches.
pub fn fill_payload(buf: &mut [u8], thread: usize, request: u64) {
    let mut state = ((thread as u64) << 32) ^ request ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in buf.chunks_mut(8) {
        // splitmix64: cheap and well mixed.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// The first byte at which `got` differs from `sent`, if any.
pub fn first_difference(sent: &[u8], got: &[u8]) -> Option<usize> {
    if sent == got {
        return None;
    }
    sent.iter().zip(got).position(|(x, y)| x != y).or(Some(sent.len().min(got.len())))
}

/// Describes a mismatched echo of request `r`.
pub fn mismatch(r: u64, sent: &[u8], got: &[u8], at: usize) -> String {
    format!(
        "request {r}: echo mismatch at byte {at} of {} (sent {:#04x}, got {:#04x})",
        sent.len(),
        sent.get(at).copied().unwrap_or(0),
        got.get(at).copied().unwrap_or(0)
    )
}

/// The value at quantile `q` of sorted samples, by nearest rank; 0 when empty.
pub fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_differ_between_threads_and_requests_and_mismatches_are_found() {
        let (mut a, mut b, mut c) = ([0u8; 64], [0u8; 64], [0u8; 64]);
        fill_payload(&mut a, 1, 0);
        fill_payload(&mut b, 2, 0);
        fill_payload(&mut c, 1, 1);
        assert!(a != b && a != c);
        assert_eq!(first_difference(&a, &a), None);
        let mut d = a;
        d[17] ^= 1;
        assert_eq!(first_difference(&a, &d), Some(17));
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 0.5), 2);
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 0.99), 4);
    }
}
