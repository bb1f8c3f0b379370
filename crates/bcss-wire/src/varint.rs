//! Base-128 varints: decoding with bounds and overflow checks, encoding into a buffer.

use crate::walk::WireError;

/// Decodes a varint at the start of `buf`: its value and the number of bytes it used.
#[inline]
pub fn decode(buf: &[u8]) -> Result<(u64, usize), WireError> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return Err(WireError::VarintOverflow);
            }
            return Ok((value, i + 1));
        }
    }
    if buf.len() < 10 {
        Err(WireError::Truncated)
    } else {
        Err(WireError::VarintOverflow)
    }
}

/// Number of bytes `value` takes as a varint.
#[inline]
pub fn encoded_len(value: u64) -> usize {
    // 1 byte per started group of 7 bits, at least 1: ceil((highest bit + 1) / 7), computed
    // as (highest bit * 9 + 73) / 64 to avoid a division.
    let highest_bit = 63 - (value | 1).leading_zeros() as usize;
    (highest_bit * 9 + 73) >> 6
}

/// Appends `value` as a varint.
#[inline]
pub fn encode(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes `value` as a varint into `slot`, which must be exactly `encoded_len(value)` long.
#[inline]
pub fn encode_into(mut value: u64, slot: &mut [u8]) {
    let last = slot.len() - 1;
    for byte in &mut slot[..last] {
        *byte = (value as u8) | 0x80;
        value >>= 7;
    }
    slot[last] = value as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_lengths() {
        for value in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            encode(value, &mut out);
            assert_eq!(out.len(), encoded_len(value), "{value}");
            assert_eq!(decode(&out), Ok((value, out.len())), "{value}");
            let mut slot = vec![0; out.len()];
            encode_into(value, &mut slot);
            assert_eq!(slot, out);
        }
    }

    #[test]
    fn encoded_len_at_every_width() {
        for bits in 0..64 {
            for value in [1u64 << bits, (1u64 << bits) - 1, (1u64 << bits) | 1] {
                let mut out = Vec::new();
                encode(value, &mut out);
                assert_eq!(encoded_len(value), out.len(), "{value}");
            }
        }
        assert_eq!(encoded_len(u64::MAX), 10);
    }

    #[test]
    fn rejects_truncated_and_overlong() {
        assert_eq!(decode(&[]), Err(WireError::Truncated));
        assert_eq!(decode(&[0x80, 0x80]), Err(WireError::Truncated));
        assert_eq!(decode(&[0xff; 11]), Err(WireError::VarintOverflow));
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(WireError::VarintOverflow)
        );
    }
}
