//! The codec of the Gateway over views: prost, except that a body that does not decode is the
//! caller's fault (`INVALID_ARGUMENT`, saying what to fix), not tonic's default `INTERNAL`.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// [`ProstCodec`] with decode errors reported as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        RequestCodec(PhantomData)
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes a request message, or names what is wrong with it.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf;
        let received = buf.remaining();
        // prost's message names the field path and the wire problem, never a value.
        let message = U::decode(buf).map_err(|error| {
            Status::invalid_argument(format!(
                "the request is not a well-formed protobuf message of the contract ({error})"
            ))
        })?;
        // Decoding keeps the last of a repeated field and drops fields it does not know: what
        // the hub would act on is then not all the sender wrote. A request must re-encode to
        // its own length (each field once, only the contract's fields, as proto3 encoders
        // write them).
        if message.encoded_len() != received {
            return Err(Status::invalid_argument(
                "the request repeats a field or carries a field the contract does not define: \
                 send each field once, as the contract defines it",
            ));
        }
        Ok(Some(message))
    }
}
