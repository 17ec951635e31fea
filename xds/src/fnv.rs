//! FNV-1a, 64 bits: stable across runs, builds and platforms (unlike `DefaultHasher`), for the
//! hashes that must agree between processes and releases: content hashes of rendered
//! configurations, which endpoint part a cluster goes to, consistent-hash load balancing.

/// The FNV-1a 64-bit offset basis: the hash of no bytes.
pub const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues hash `h` over `bytes` (start from [`OFFSET`]).
pub fn extend(mut h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// The hash of `bytes`.
pub fn hash(bytes: &[u8]) -> u64 {
    extend(OFFSET, bytes.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_streaming() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            extend(hash(b"foo"), b"bar".iter().copied()),
            hash(b"foobar")
        );
    }
}
