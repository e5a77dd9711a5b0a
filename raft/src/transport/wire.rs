//! How a [`PeerRequest`] travels between nodes: the one remote message ractor_cluster carries,
//! [`PeerMsg`], holding an encoded request (`crate::protocol`, behind its wire format version)
//! and answered with an encoded [`PeerResponse`].

use ractor::RpcReplyPort;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use storage::codec;

use super::TransportError;
use crate::protocol::{self, PeerRequest, PeerResponse, WireError};

/// The one remote message: an encoded [`PeerRequest`] answered with an encoded [`PeerResponse`]
/// (both frames of `crate::protocol`, starting with the wire format version). Its serialisation
/// for ractor_cluster is written out below rather than derived: the derive copies the argument
/// into a new buffer to send it and again out of the received one, and bridges each reply port
/// through a task of its own; the bytes of a 4 MiB frame of audio are not copied at either end.
pub enum PeerMsg {
    Rpc(WireMessage, RpcReplyPort<Vec<u8>>),
}

/// The name [`PeerMsg::Rpc`] goes under on the wire.
const RPC_VARIANT: &str = "Rpc";

impl ractor::Message for PeerMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        let PeerMsg::Rpc(message, reply) = self;
        Ok(SerializedMessage::Call {
            variant: RPC_VARIANT.to_string(),
            args: message.0,
            reply,
            metadata: None,
        })
    }

    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match message {
            SerializedMessage::Call {
                variant,
                args,
                reply,
                ..
            } if variant == RPC_VARIANT => Ok(PeerMsg::Rpc(WireMessage(args), reply)),
            _ => Err(BoxedDowncastErr),
        }
    }
}

/// An encoded [`PeerRequest`] (`crate::protocol::encode`) as [`PeerMsg`] carries it, moved and
/// never copied. Its wire format version is checked where it is decoded, by the endpoint, so
/// that a frame of another version is answered with an error rather than dropped unanswered.
pub struct WireMessage(Vec<u8>);

impl WireMessage {
    pub(super) fn encode(req: &PeerRequest) -> Result<Self, codec::CodecError> {
        protocol::encode(req).map(Self)
    }
}

/// `peer`'s answer as the caller sees it: its `Malformed` (the peer could not read the request)
/// and an answer this node cannot read (another wire format version, or damage) are errors.
pub(super) fn read_answer(peer: u64, frame: &[u8]) -> Result<PeerResponse, TransportError> {
    match protocol::decode(frame) {
        Ok(PeerResponse::Malformed(m)) => Err(TransportError::Malformed(peer, m)),
        Ok(resp) => Ok(resp),
        Err(e) => Err(TransportError::Malformed(peer, e.to_string())),
    }
}

/// The request in `message`, or why this node cannot read it (for a peer of another wire format
/// version, both versions), to answer as `Malformed`.
pub(super) fn read_request(message: &WireMessage) -> Result<PeerRequest, String> {
    protocol::decode(&message.0).map_err(|e| {
        tracing::warn!(error = %e, "unreadable request from a peer");
        match e {
            WireError::Version(_) => e.to_string(),
            e => format!("cannot decode request: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request crosses ractor_cluster's serialisation unchanged: a frame of the wire format
    /// version, then the request.
    #[test]
    fn a_message_travels_unchanged_behind_the_wire_version() {
        let req = PeerRequest::ClientWrites(Vec::new());
        let (tx, _rx) = ractor::concurrency::oneshot();
        let msg = PeerMsg::Rpc(WireMessage::encode(&req).expect("encode"), tx.into());
        let Ok(SerializedMessage::Call { variant, args, .. }) = ractor::Message::serialize(msg)
        else {
            panic!("not serialised as a call");
        };
        let expected = [
            &[protocol::WIRE_VERSION][..],
            &codec::encode(&req).expect("encode"),
        ]
        .concat();
        assert_eq!((variant.as_str(), &args), (RPC_VARIANT, &expected));

        let (tx, _rx) = ractor::concurrency::oneshot();
        let back = <PeerMsg as ractor::Message>::deserialize(SerializedMessage::Call {
            variant,
            args,
            reply: tx.into(),
            metadata: None,
        });
        let Ok(PeerMsg::Rpc(message, _)) = back else {
            panic!("not deserialised");
        };
        assert!(matches!(
            read_request(&message),
            Ok(PeerRequest::ClientWrites(w)) if w.is_empty()
        ));
    }

    /// A request of another wire format version is answered `Malformed`, naming both versions;
    /// an answer of another version is an error for the caller, naming both too.
    #[test]
    fn a_message_of_another_wire_version_is_refused_with_both_versions() {
        let other = protocol::WIRE_VERSION + 1;
        let mut message = WireMessage::encode(&PeerRequest::Status).expect("encode");
        message.0[0] = other;
        let expected = format!(
            "peer speaks wire format v{other}, this node v{}",
            protocol::WIRE_VERSION
        );
        match read_request(&message) {
            Err(m) => assert_eq!(m, expected),
            r => panic!("not refused: {r:?}"),
        }

        let mut answer = protocol::encode(&PeerResponse::ReadIndex(Ok(3))).expect("encode");
        assert!(matches!(
            read_answer(7, &answer),
            Ok(PeerResponse::ReadIndex(Ok(3)))
        ));
        answer[0] = other;
        match read_answer(7, &answer) {
            Err(TransportError::Malformed(7, m)) => assert_eq!(m, expected),
            r => panic!("not refused: {r:?}"),
        }
        // The peer's own refusal reaches the caller as the same error.
        let refusal = protocol::encode(&PeerResponse::Malformed(expected.clone())).expect("encode");
        match read_answer(7, &refusal) {
            Err(TransportError::Malformed(7, m)) => assert_eq!(m, expected),
            r => panic!("not refused: {r:?}"),
        }
    }
}
