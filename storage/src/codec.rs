//! The binary encoding of everything chorus stores or sends between nodes: bincode 2 over serde.
//!
//! Decoding never panics: a malformed or truncated buffer is a [`CodecError`].

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("decode: {0} trailing bytes")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    // The limit bounds what a malformed frame from a peer can make us allocate.
    bincode::config::standard().with_limit::<{ 256 * 1024 * 1024 }>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// The encoding of `value` after `prefix` zero bytes, which the caller fills in (a frame's
/// length): one allocation of the exact size, and no copy of the encoding afterwards.
pub fn encode_after<T: Serialize>(value: &T, prefix: usize) -> Result<Vec<u8>, CodecError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config())?;
    let mut out = Vec::with_capacity(prefix + size.bytes_written);
    out.resize(prefix, 0);
    bincode::serde::encode_into_writer(value, VecWriter(&mut out), config())?;
    Ok(out)
}

/// Appends to a vector that already has the room (see `encode_after`).
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// `#[serde(with = "codec::bytes")]` for a `Vec<u8>` field: a length, then the bytes (one byte
/// string, not a sequence of numbers), decoded by copying from the input. bincode decodes
/// an owned byte buffer by zero-filling a vector and then reading into it; for audio chunks,
/// decoded from every replicated or read-back log entry, that zero-fill was a pass over every
/// byte for nothing.
pub mod bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_bytes(CopyBytes)
    }

    struct CopyBytes;

    impl serde::de::Visitor<'_> for CopyBytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, QueueCommand, Request};

    #[test]
    fn garbage_and_truncated_input_is_an_error_not_a_panic() {
        let req = Request {
            dedupe_key: Some("k".into()),
            at_ms: 1,
            command: Command::Queue(QueueCommand::PlayNext),
        };
        let bytes = encode(&req).expect("encode");
        assert_eq!(decode::<Request>(&bytes).expect("decode"), req);
        for cut in 0..bytes.len() {
            assert!(
                decode::<Request>(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes"
            );
        }
        assert!(decode::<Request>(&[0xFF; 64]).is_err());
        // A length prefix claiming gigabytes must not allocate them.
        assert!(decode::<Vec<u8>>(&[0xFC, 0xFF, 0xFF, 0xFF, 0x7F]).is_err());
    }

    /// A byte field is a length and the bytes (one string, not a sequence of numbers); it reads
    /// back whole, and cut short it is an error.
    #[test]
    fn byte_fields_are_a_length_and_the_bytes() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Field(#[serde(with = "super::bytes")] Vec<u8>);
        for len in [0, 1, 250, 251, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let encoded = encode(&Field(data.clone())).expect("encode");
            assert!(
                encoded.ends_with(&data) && encoded.len() <= data.len() + 9,
                "{len} bytes"
            );
            assert_eq!(decode::<Field>(&encoded).expect("decode"), Field(data));
            assert!(decode::<Field>(&encoded[..encoded.len() - 1]).is_err());
        }
    }
}
