//! The codec every pgfleet client and service is generated with: tonic-prost's,
//! except for what a body that does not decode becomes.
//!
//! tonic-prost answers a request that is not a valid protobuf message of its
//! type with INTERNAL, the code of a server fault, so a client's bad bytes
//! looked like pgfleet failing (found by the request fuzzer,
//! `crates/pgfleet-server/tests/it/fuzz_requests.rs`). Here it is
//! INVALID_ARGUMENT, with prost's reason in the message. The generated
//! clients use the same codec, so a response that does not decode is
//! INVALID_ARGUMENT on their side too.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};

/// tonic-prost's codec with [`ProstDecoder`] as its decoder.
#[derive(Debug, Clone)]
pub struct ProstCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(tonic_prost::ProstDecoder::default())
    }
}

/// tonic-prost's decoder; a message that does not decode is INVALID_ARGUMENT.
#[derive(Debug, Clone, Default)]
pub struct ProstDecoder<U>(tonic_prost::ProstDecoder<U>);

impl<U: Message + Default> Decoder for ProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // Decoding is the inner decoder's only failure: the bytes are not a `U`.
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!("the message does not decode: {}", status.message()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
