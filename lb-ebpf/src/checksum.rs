//! Incremental Internet checksum updates (RFC 1624, HC' = ~(~HC + ~m + m')). Values are summed
//! as they sit in memory; the one's-complement sum is byte-order independent (RFC 1071), so no
//! byte swapping is needed anywhere.

/// Running sum of (~old + new) over the changed words of a header.
#[derive(Clone, Copy, Default)]
pub struct Delta(u64);

impl Delta {
    #[inline(always)]
    pub fn word32(&mut self, old: u32, new: u32) {
        self.0 += (!old) as u64 + new as u64;
    }

    #[inline(always)]
    pub fn word16(&mut self, old: u16, new: u16) {
        self.0 += (!old) as u64 + new as u64;
    }

    #[inline(always)]
    pub fn plus(self, other: Delta) -> Delta {
        Delta(self.0 + other.0)
    }

    /// The checksum field after the change, given its value before.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold((!check) as u64 + self.0)
    }
}

#[inline(always)]
fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xFFFF_FFFF) + (sum >> 32);
    let sum = (sum & 0xFFFF) + (sum >> 16);
    let sum = (sum & 0xFFFF) + (sum >> 16);
    let sum = (sum & 0xFFFF) + (sum >> 16);
    sum as u16
}
