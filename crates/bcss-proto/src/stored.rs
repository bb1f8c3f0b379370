//! A `bcss.institution.v1.Delivery` already encoded (as the outbox stores it), sent as it is
//! with its attempt number: no decoding, no allocation, one copy into the call's buffer.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};

/// The `attempt` field's number in `Delivery`.
const ATTEMPT_FIELD: u32 = 13;

/// An encoded `Delivery` and the attempt it is sent as. Encodes as the stored bytes followed
/// by `attempt` (field 13): a later occurrence of a scalar field replaces an earlier one, so the
/// recipient reads this attempt whatever the stored bytes said.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredDelivery {
    /// The encoded `Delivery`, as accepted.
    pub encoded: Bytes,
    /// Which attempt this is, from 1.
    pub attempt: u32,
}

impl StoredDelivery {
    /// The delivery id (`Delivery` field 1), read from the encoded bytes without decoding the
    /// rest; empty when the bytes do not start with it (the outbox writes it first).
    pub fn delivery_id(&self) -> Bytes {
        let mut rest = self.encoded.clone();
        if rest.first() != Some(&0x0a) {
            return Bytes::new();
        }
        rest.advance(1);
        match prost::encoding::decode_varint(&mut rest) {
            Ok(len) if len as usize <= rest.len() => rest.slice(..len as usize),
            _ => Bytes::new(),
        }
    }
}

impl prost::Message for StoredDelivery {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.encoded);
        if self.attempt != 0 {
            prost::encoding::uint32::encode(ATTEMPT_FIELD, &self.attempt, buf);
        }
    }

    /// Never decoded by the hub: fields are skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.encoded.len()
            + if self.attempt != 0 {
                prost::encoding::uint32::encoded_len(ATTEMPT_FIELD, &self.attempt)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        self.encoded.clear();
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::institution::v1::Delivery;
    use prost::Message;

    /// Sent as stored plus an attempt, a delivery decodes as the delivery with that attempt,
    /// whatever attempt the stored bytes carried; its id is read without decoding.
    #[test]
    fn decodes_as_the_stored_delivery_with_the_attempt() {
        for (stored_attempt, attempt) in [(0, 1), (0, 0), (3, 4), (7, 300_000)] {
            let delivery = Delivery {
                delivery_id: "T-1/cpas-liege".into(),
                ticket: "T-1".into(),
                niss: "85073003328".into(),
                attempt: stored_attempt,
                ..Default::default()
            };
            let stored = StoredDelivery {
                encoded: delivery.encode_to_vec().into(),
                attempt,
            };
            let wire = stored.encode_to_vec();
            assert_eq!(wire.len(), stored.encoded_len());
            let received = Delivery::decode(wire.as_slice()).unwrap();
            let expected_attempt = if attempt == 0 {
                stored_attempt
            } else {
                attempt
            };
            assert_eq!(
                received,
                Delivery {
                    attempt: expected_attempt,
                    ..delivery.clone()
                }
            );
            assert_eq!(&stored.delivery_id()[..], b"T-1/cpas-liege");
        }
        let no_id = StoredDelivery {
            encoded: Delivery {
                ticket: "T-2".into(),
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
            attempt: 1,
        };
        assert!(no_id.delivery_id().is_empty());
    }
}
