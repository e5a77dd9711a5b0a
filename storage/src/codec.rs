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

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
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
}
