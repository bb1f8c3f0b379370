//! Reading one field at a time: key, wire type and the extent of the value, bounds-checked.

use crate::tree::WireType;
use crate::varint;

/// Why bytes are not a well-formed protobuf message (or not the one expected). Messages name
/// field numbers, never values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the message is truncated")]
    Truncated,
    #[error("a varint is longer than 10 bytes")]
    VarintOverflow,
    #[error("field number 0 is not allowed")]
    FieldZero,
    #[error("a field number is above 536870911, the largest protobuf allows")]
    FieldNumberTooLarge,
    #[error("unknown wire type {0}")]
    UnknownWireType(u8),
    #[error("groups (wire types 3 and 4) are not supported")]
    Group,
    #[error("a length prefix points past the end of the message")]
    LengthPastEnd,
    #[error("field {field} has wire type {found}, which its type does not allow")]
    WrongWireType { field: u32, found: u8 },
    #[error("field {field} is a string but its bytes are not UTF-8")]
    InvalidUtf8 { field: u32 },
    #[error("field {field} holds packed values that do not divide into whole values")]
    BadPacked { field: u32 },
}

/// One field as it sits in a buffer.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub number: u32,
    pub wire_type: WireType,
    /// Offset of the field's key: the field spans `start..end`.
    pub start: usize,
    /// Offset of the value (after the key, and after the length prefix for `Len`).
    pub value_start: usize,
    /// Offset one past the value.
    pub end: usize,
}

/// Reads the field starting at `pos`.
#[inline]
pub fn read_field(buf: &[u8], pos: usize) -> Result<Field, WireError> {
    let (key, key_len) = varint::decode(&buf[pos..])?;
    let number = key >> 3;
    if number == 0 {
        return Err(WireError::FieldZero);
    }
    if number > u64::from(u32::MAX >> 3) {
        return Err(WireError::FieldNumberTooLarge);
    }
    let wire_type = match key & 7 {
        0 => WireType::Varint,
        1 => WireType::I64,
        2 => WireType::Len,
        5 => WireType::I32,
        3 | 4 => return Err(WireError::Group),
        other => return Err(WireError::UnknownWireType(other as u8)),
    };
    let after_key = pos + key_len;
    let (value_start, end) = match wire_type {
        WireType::Varint => {
            let (_, n) = varint::decode(&buf[after_key..])?;
            (after_key, after_key + n)
        }
        WireType::I64 => (after_key, after_key + 8),
        WireType::I32 => (after_key, after_key + 4),
        WireType::Len => {
            let (len, n) = varint::decode(&buf[after_key..])?;
            let value_start = after_key + n;
            let remaining = (buf.len() - value_start) as u64;
            if len > remaining {
                return Err(WireError::LengthPastEnd);
            }
            (value_start, value_start + len as usize)
        }
    };
    if end > buf.len() {
        return Err(WireError::Truncated);
    }
    Ok(Field {
        number: number as u32,
        wire_type,
        start: pos,
        value_start,
        end,
    })
}
